"""The AMQP side: topology, the job consumer and reply publishing.

Knows nothing of netlink or libvirt: it decodes and validates messages, hands
commands to the dispatcher and turns each outcome into a reply and an ack,
reject or requeue, in exactly one place (`outcome.py`).
"""
