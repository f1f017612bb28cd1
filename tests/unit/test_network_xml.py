"""Network XML built from each kind's spec, compared with the XML libvirt documents and
prints back (`virsh net-dumpxml --inactive`, without uuid and generated mac); raw XML safety."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest
from pydantic import TypeAdapter

from vnetd.contract.network import NetworkSpec
from vnetd.virt import xml

SPEC: TypeAdapter[Any] = TypeAdapter(NetworkSpec)


def canon(text: str) -> str:
    return ET.canonicalize(text, strip_text=True)


def built(name: str, spec: dict[str, Any]) -> str:
    return xml.to_string(xml.build(name, SPEC.validate_python(spec)))


# Each case: the spec, and the XML as libvirt 9.0 formats it (libvirt's element order).
CASES: dict[str, tuple[dict[str, Any], str]] = {
    "isolated": (
        {"kind": "isolated", "bridge": {"name": "virbr-iso", "stp": True, "delay": 0},
         "mtu": 1450, "domain": "iso.test",
         "ipv4": {"address": "192.168.150.1", "prefix": 24, "dhcp": {
             "ranges": [{"start": "192.168.150.10", "end": "192.168.150.99"}],
             "hosts": [{"mac": "52:54:00:aa:bb:01", "name": "vm1", "ip": "192.168.150.5"}]}},
         "ipv6": {"address": "fd00:150::1", "prefix": 64}},
        """<network><name>n</name>
          <bridge name='virbr-iso' stp='on' delay='0'/>
          <mtu size='1450'/>
          <domain name='iso.test'/>
          <ip address='192.168.150.1' prefix='24'>
            <dhcp>
              <range start='192.168.150.10' end='192.168.150.99'/>
              <host mac='52:54:00:aa:bb:01' name='vm1' ip='192.168.150.5'/>
            </dhcp>
          </ip>
          <ip family='ipv6' address='fd00:150::1' prefix='64'/>
        </network>"""),
    "nat": (
        {"kind": "nat", "bridge": {"name": "virbr-nat1", "stp": False, "mac": "52:54:00:01:02:03"},
         "dev": "eth0", "ports": {"start": 1024, "end": 65535},
         "ipv4": {"address": "192.168.122.1", "prefix": 24}},
        """<network><name>n</name>
          <forward mode='nat' dev='eth0'><nat><port start='1024' end='65535'/></nat></forward>
          <bridge name='virbr-nat1' stp='off' delay='0'/>
          <mac address='52:54:00:01:02:03'/>
          <ip address='192.168.122.1' prefix='24'/>
        </network>"""),
    "route": (
        {"kind": "route", "dev": "eth1", "bridge": {"name": "virbr-rt"},
         "ipv4": {"address": "10.20.0.1", "prefix": 16}},
        """<network><name>n</name>
          <forward mode='route' dev='eth1'/>
          <bridge name='virbr-rt' stp='on' delay='0'/>
          <ip address='10.20.0.1' prefix='16'/>
        </network>"""),
    "open": (
        {"kind": "open", "bridge": {"name": "virbr-open"},
         "ipv4": {"address": "10.30.0.1", "prefix": 24}},
        """<network><name>n</name>
          <forward mode='open'/>
          <bridge name='virbr-open' stp='on' delay='0'/>
          <ip address='10.30.0.1' prefix='24'/>
        </network>"""),
    "bridge": (
        {"kind": "bridge", "bridge": "br0"},
        """<network><name>n</name><forward mode='bridge'/><bridge name='br0'/></network>"""),
    "macvtap-bridge": (
        {"kind": "macvtap", "devices": ["eth1", "eth2"]},
        """<network><name>n</name>
          <forward dev='eth1' mode='bridge'><interface dev='eth1'/><interface dev='eth2'/></forward>
        </network>"""),
    "macvtap-vepa": (
        {"kind": "macvtap", "mode": "vepa", "devices": ["eth1"]},
        """<network><name>n</name><forward dev='eth1' mode='vepa'><interface dev='eth1'/></forward>
        </network>"""),
    "macvtap-private": (
        {"kind": "macvtap", "mode": "private", "devices": ["eth1"]},
        """<network><name>n</name>
          <forward dev='eth1' mode='private'><interface dev='eth1'/></forward></network>"""),
    "macvtap-passthrough": (
        {"kind": "macvtap", "mode": "passthrough", "devices": ["eth3", "eth4"]},
        """<network><name>n</name>
          <forward dev='eth3' mode='passthrough'>
            <interface dev='eth3'/><interface dev='eth4'/></forward>
        </network>"""),
    "hostdev-pf": (
        {"kind": "hostdev", "pf": "enp3s0f0"},
        """<network><name>n</name>
          <forward mode='hostdev' managed='yes'><pf dev='enp3s0f0'/></forward></network>"""),
    "hostdev-vfs": (
        {"kind": "hostdev", "managed": False, "vfs": ["0000:04:10.1", "0000:04:10.3"]},
        """<network><name>n</name>
          <forward mode='hostdev' managed='no'>
            <address type='pci' domain='0x0000' bus='0x04' slot='0x10' function='0x1'/>
            <address type='pci' domain='0x0000' bus='0x04' slot='0x10' function='0x3'/>
          </forward></network>"""),
    "ovs": (
        {"kind": "ovs", "bridge": "ovsbr0", "vlan": {"tags": [42]},
         "portgroups": [{"name": "web", "default": True, "vlan": {"tags": [10]}},
                        {"name": "trunk", "vlan": {"tags": [10, 20], "trunk": True}},
                        {"name": "plain"}]},
        """<network><name>n</name>
          <forward mode='bridge'/>
          <bridge name='ovsbr0'/>
          <vlan><tag id='42'/></vlan>
          <virtualport type='openvswitch'/>
          <portgroup name='web' default='yes'><vlan><tag id='10'/></vlan></portgroup>
          <portgroup name='trunk'><vlan trunk='yes'><tag id='10'/><tag id='20'/></vlan></portgroup>
          <portgroup name='plain'/>
        </network>"""),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_spec_builds_libvirts_xml(case: str) -> None:
    spec, expected = CASES[case]
    assert canon(built("n", spec)) == canon(expected)


@pytest.mark.parametrize("case", sorted(CASES))
def test_kind_read_back_from_xml(case: str) -> None:
    spec, expected = CASES[case]
    assert xml.kind_of(ET.fromstring(expected)) == spec["kind"]


def test_marker_goes_into_metadata_after_name_and_is_found() -> None:
    root = xml.build("n", SPEC.validate_python(CASES["nat"][0]),
                     uuid="0c8b2b3c-0000-4000-8000-000000000001")
    marked = xml.with_marker(root, "1.2.3")
    tags = [child.tag for child in marked]
    assert tags[:4] == ["name", "uuid", "metadata", "forward"]
    m = xml.marker_of(marked)
    assert m is not None
    assert m.version == "1.2.3"
    assert m.digest == xml.digest(root)
    text = xml.to_string(marked)
    assert 'xmlns:vnetd="https://vnetd.dev/xmlns/network/1"' in text
    # The marker survives a round trip through text (as libvirt stores it).
    assert xml.marker_of(xml.parse_safe(text)) == m
    assert xml.marker_of(root) is None


def test_digest_ignores_uuid_and_marker_but_not_content() -> None:
    spec = SPEC.validate_python(CASES["isolated"][0])
    a = xml.build("n", spec)
    b = xml.build("n", spec, uuid="0c8b2b3c-0000-4000-8000-000000000002")
    assert xml.digest(a) == xml.digest(b) == xml.digest(xml.with_marker(a, "x"))
    other = SPEC.validate_python({**CASES["isolated"][0], "mtu": 1400})
    assert xml.digest(xml.build("n", other)) != xml.digest(a)
    assert xml.digest(xml.build("m", spec)) != xml.digest(a)


def test_a_client_marker_is_replaced_not_trusted() -> None:
    raw = ("<network><name>n</name><metadata><vnetd:network xmlns:vnetd='https://vnetd.dev/"
           "xmlns/network/1' digest='forged'/><x:other xmlns:x='urn:x'/></metadata></network>")
    root = xml.with_marker(xml.parse_network(raw, "n"), "v")
    markers = root.findall(f"metadata/{xml.MARKER}")
    assert len(markers) == 1
    assert markers[0].get("digest") != "forged"
    assert root.find("metadata/{urn:x}other") is not None


def test_builder_escapes_what_it_is_given() -> None:
    # Values go through ElementTree, never string formatting: markup stays text.
    root = xml.build("n", SPEC.validate_python({"kind": "bridge", "bridge": "br0"}))
    root.find("name").text = "a'<b>&"  # type: ignore[union-attr]
    text = xml.to_string(root)
    assert "&lt;b&gt;&amp;" in text
    assert xml.parse_safe(text).findtext("name") == "a'<b>&"


# ------------------------------------------------------------------ raw XML safety
BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;">]>
<network><name>&lol2;</name></network>"""
XXE = """<?xml version="1.0"?>
<!DOCTYPE network [<!ENTITY xxe SYSTEM "file:///etc/shadow">]>
<network><name>n</name><description>&xxe;</description></network>"""


@pytest.mark.parametrize("text", [BILLION_LAUGHS, XXE, "<!doctype network><network/>",
                                  "<network><name>n</name></network><!ENTITY x 'y'>",
                                  "<!  DOCTYPE x><network/>"])
def test_dtd_and_entities_are_refused(text: str) -> None:
    # Declarations expat reads as such are refused by name; the misplaced or misspelt
    # ones are not declarations at all, so expat refuses them as malformed.
    with pytest.raises(xml.XmlError, match=r"DOCTYPE or ENTITY|malformed XML"):
        xml.parse_network(text, "n")


def test_undeclared_entity_is_malformed() -> None:
    with pytest.raises(xml.XmlError, match="malformed"):
        xml.parse_network("<network><name>&xxe;</name></network>", "n")


def test_size_bound() -> None:
    big = "<network><name>n</name><description>" + "a" * 70_000 + "</description></network>"
    with pytest.raises(xml.XmlError, match="larger than"):
        xml.parse_network(big, "n")


@pytest.mark.parametrize(("text", "problem"), [
    ("<net><name>n</name></net>", "root element"),
    ("<network><name>other</name></network>", "must be exactly"),
    ("<network></network>", "must be exactly"),
    ("<network><name>n</name><name>n</name></network>", "must be exactly"),
    ("<network><name>n</name>", "malformed"),
    ("not xml", "malformed"),
])
def test_raw_xml_structure(text: str, problem: str) -> None:
    with pytest.raises(xml.XmlError, match=problem):
        xml.parse_network(text, "n")


def test_raw_xml_accepted_and_name_normalised() -> None:
    root = xml.parse_network("<network><name> n </name><bridge name='b1'/></network>", "n")
    assert root.findtext("name") == "n"
    assert xml.kind_of(root) == "isolated"
    assert xml.bridge_of(root) == "b1"
