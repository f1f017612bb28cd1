"""Watchers: listen to the kernel (netlink) and libvirt and turn changes into events.

Callbacks only enqueue; the work happens in the watcher's own task.
"""
