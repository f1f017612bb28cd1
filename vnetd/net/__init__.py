"""The kernel side: typed models of links and the only code that speaks netlink.

`backend.py` is the Protocol handlers depend on; `netlink.py` implements it with
pyroute2 (the only module here that imports it); `tun.py` and `netns.py` do what
rtnetlink cannot (TAP creation is an ioctl on /dev/net/tun) inside the target
network namespace.
"""
