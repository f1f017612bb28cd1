"""Open vSwitch through OVSDB: the OvsBackend Protocol and its IDL adapter.

Only vnetd.ovs.idl and vnetd.ovs.rows import the `ovs` library; handlers see
the Protocol in vnetd.ovs.backend. The daemon never runs ovs-vsctl.
"""
