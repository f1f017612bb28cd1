"""vnetd: a host network agent for KVM hypervisors.

Control planes send jobs over RabbitMQ; vnetd converges bridges, TAP devices and
libvirt networks on the host through netlink and libvirt's API, replies to every
job and publishes what happens on the host.
"""

__version__ = "0.1.0"
