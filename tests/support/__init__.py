"""Test support: lab namespaces, a raw AMQP RPC client, the daemon under test, the lab broker.

Nothing here imports ``vnetd``: the tests talk to the daemon only through its documented
AMQP contract and look at the kernel with ``ip -j``.
"""
