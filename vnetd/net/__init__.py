"""The kernel side: typed models of links and the only code that speaks netlink.

`backend.py` is the Protocol handlers depend on; `netlink.py` implements it with
pyroute2 (the only module here that imports it) and the raw fast path
`fastlink.py`; `rtnl.py` is the one codec of rtnetlink messages (used by
`fastlink.py` and the event socket `monitor.py`); `tun.py` and `netns.py` do what
rtnetlink cannot (TAP creation is an ioctl on /dev/net/tun) inside the target
network namespace.
"""
