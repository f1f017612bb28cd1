"""Job handlers: one module per resource, each an idempotent "ensure".

Handlers receive validated command models and a Context; they know nothing of
AMQP and reach the kernel and libvirt only through the typed backends.
"""
