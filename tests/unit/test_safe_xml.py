"""One safe XML parser: every path that reads XML in vnetd refuses a DTD (so any entity).

Each path is checked with entity-bearing documents (internal, external, parameter,
nested, and one in UTF-16 that no byte pattern sees) and, so the check can fail,
with a benign document that it reads.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.unit.fakes import FakeNet
from tests.unit.test_network_handlers import FakeVirt
from vnetd.contract.commands import parse_request
from vnetd.contract.errors import InvalidArgument, Unavailable
from vnetd.handlers.context import Context
from vnetd.handlers.dispatch import Dispatcher
from vnetd.handlers.network import view
from vnetd.handlers.policy import Policy
from vnetd.handlers.registry import build_registry
from vnetd.virt.backend import DomainDefinitions, NetworkState
from vnetd.virt.domain import interfaces_of, read_interfaces
from vnetd.virt.references import (
    LibvirtReferences,
    domain_references,
    expires_of,
    network_references,
)
from vnetd.virt.xml import MARKER, NS, XmlError, parse_network, parse_safe

BENIGN_NET = "<network><name>n1</name><bridge name='virbr9'/></network>"
BENIGN_DOMAIN = ("<domain type='kvm'><name>vm1</name><devices>"
                 "<interface type='bridge'><source bridge='br0'/><target dev='tap0'/>"
                 "</interface></devices></domain>")


def _utf16(doc: str) -> str:
    """A document expat reads as UTF-16LE (from its first bytes) while every char is
    ASCII or NUL: `<!DOCTYPE` never appears as bytes, which fooled a pattern check."""
    return ('<?xml version="1.0" encoding="UTF-16LE"?>' + doc).encode("utf-16-le").decode(
        "latin-1")


def evil(root: str, inner: str) -> list[str]:
    """Documents whose `inner` content refers to entity `x`, declared in many ways."""
    body = f"<{root}>{inner}</{root}>"
    laughs = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 6))
    return [
        f'<!DOCTYPE {root} [<!ENTITY x "virbr-evil">]>{body}',
        f'<!DOCTYPE {root} [<!ENTITY x SYSTEM "file:///etc/hostname">]>{body}',
        f'<!DOCTYPE {root} [<!ENTITY l0 "lol">{laughs}<!ENTITY x "&l5;">]>{body}',
        f'<!DOCTYPE {root} [<!ENTITY % p SYSTEM "http://127.0.0.1:9/p.dtd"> %p;]>{body}',
        f'<!DOCTYPE {root} SYSTEM "http://127.0.0.1:9/x.dtd">{body}',
        f'<!DOCTYPE {root} [<!ENTITY x PUBLIC "-//x//x" "http://127.0.0.1:9/x">]>{body}',
        _utf16(f'<!DOCTYPE {root} [<!ENTITY x "virbr-evil">]>{body}'),
    ]


EVIL_NETS = evil("network", "<name>n1</name><bridge name='&x;'/>")
EVIL_DOMAINS = evil("domain", "<name>vm1</name><devices><interface type='bridge'>"
                              "<source bridge='&x;'/><target dev='tap0'/></interface></devices>")
REFUSED = re.compile(r"DOCTYPE or ENTITY|malformed")


def test_the_utf16_document_is_what_it_claims() -> None:
    """The disguised document really declares and uses an entity: stdlib expat, with no
    check in front, expands it (so refusing it below is the safe parser's doing)."""
    import xml.etree.ElementTree as ET

    parser = ET.XMLParser()  # the unsafe baseline, on a test string
    parser.feed(EVIL_NETS[-1].encode("latin-1"))
    assert parser.close().find("bridge").get("name") == "virbr-evil"  # type: ignore[union-attr]
    assert b"<!DOCTYPE" not in EVIL_NETS[-1].encode("utf-8")


@pytest.mark.parametrize("doc", EVIL_NETS)
def test_parse_safe_and_parse_network_refuse(doc: str) -> None:
    with pytest.raises(XmlError, match=REFUSED):
        parse_safe(doc)
    with pytest.raises(XmlError, match=REFUSED):
        parse_network(doc, "n1")


def test_benign_documents_parse() -> None:
    assert parse_safe(BENIGN_NET).find("bridge").get("name") == "virbr9"  # type: ignore[union-attr]
    assert parse_network(BENIGN_NET, "n1").findtext("name") == "n1"
    assert [i.target for i in read_interfaces(BENIGN_DOMAIN)] == ["tap0"]


def test_size_is_bounded() -> None:
    with pytest.raises(XmlError, match="larger than"):
        parse_safe(BENIGN_NET, max_bytes=len(BENIGN_NET) - 1)


@pytest.mark.parametrize("doc", EVIL_NETS)
async def test_network_define_with_raw_xml_refuses_before_any_effect(doc: str) -> None:
    virt = FakeVirt()
    ctx = Context(host_id="hv1", net=FakeNet(), policy=Policy(), version="t", virt=virt)
    dispatcher = Dispatcher(build_registry(), ctx)
    with pytest.raises(InvalidArgument, match=REFUSED):
        await dispatcher.execute(parse_request(
            {"op": "network.define", "args": {"name": "n1", "xml": doc}}))
    assert virt.calls == []


def _state(xml: str, persistent: bool = True) -> NetworkState:
    return NetworkState("n1", "00000000-0000-4000-8000-000000000001", True, persistent, False,
                        xml)


@pytest.mark.parametrize("doc", EVIL_NETS)
def test_what_libvirt_returns_is_refused_too(doc: str) -> None:
    with pytest.raises(XmlError, match=REFUSED):  # network.list / net views
        view(_state(doc))
    with pytest.raises(Unavailable, match="unreadable"):  # cleanup: keep everything
        network_references([_state(doc)])
    marked = doc.replace("</network>", f"<metadata><vnetd:network xmlns:vnetd='{NS}' "
                                       "expires='1'/></metadata></network>")
    assert expires_of(_state(marked, persistent=False)) is None


def test_benign_libvirt_documents_are_read() -> None:
    assert view(_state(BENIGN_NET))["name"] == "n1"
    assert network_references([_state(BENIGN_NET)]) == {"virbr9": "network n1"}
    marked = BENIGN_NET.replace("</network>", f"<metadata><vnetd:network xmlns:vnetd='{NS}' "
                                              "expires='7'/></metadata></network>")
    assert MARKER.endswith("}network")
    assert expires_of(_state(marked, persistent=False)) == 7.0


@pytest.mark.parametrize("doc", EVIL_DOMAINS)
async def test_domain_definitions_are_refused_and_cleanup_keeps_everything(doc: str) -> None:
    assert interfaces_of(doc) == ()  # domain events: no interfaces
    with pytest.raises(XmlError, match=REFUSED):
        read_interfaces(doc)
    with pytest.raises(Unavailable, match="domain vm1 is unreadable"):
        domain_references("vm1", doc)
    virt = FakeVirt(definitions=[DomainDefinitions("vm1", (BENIGN_DOMAIN, doc))])
    with pytest.raises(Unavailable, match="unreadable"):
        await LibvirtReferences(lambda: virt).referenced_interfaces()


async def test_references_read_every_definition_through_the_protocol() -> None:
    nxt = BENIGN_DOMAIN.replace("tap0", "tap1").replace("br0", "br1")
    virt = FakeVirt(definitions=[DomainDefinitions("vm1", (BENIGN_DOMAIN, nxt))])
    await virt.define("n1", BENIGN_NET)
    refs = await LibvirtReferences(lambda: virt).referenced_interfaces()
    assert refs == {"virbr9": "network n1", "tap0": "domain vm1", "br0": "domain vm1",
                    "tap1": "domain vm1", "br1": "domain vm1"}


# Calls that parse XML; only vnetd/virt/xml.py may make them.
_PARSERS = re.compile(r"\b(fromstring|XMLParser|XMLPullParser|iterparse|ParserCreate|"
                      r"minidom|sax|lxml|ET\.parse|ET\.XML|fromstringlist)\b")


def test_no_other_module_parses_xml() -> None:
    root = Path(__file__).parents[2] / "vnetd"
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "virt" / "xml.py":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _PARSERS.search(line.split("#", 1)[0]):
                offenders.append(f"{path.relative_to(root.parent)}:{n}: {line.strip()}")
    assert offenders == [], "parse XML with vnetd.virt.xml.parse_safe:\n" + "\n".join(offenders)
    assert _PARSERS.search("ET.fromstring(x)")  # the pattern sees what it must
