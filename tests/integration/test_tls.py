"""amqps:// with peer verification: the right CA connects, a wrong CA or host name is
a clear error at start with exit status 78.

The test makes two CAs with the `openssl` CLI (Debian's openssl package), a
server certificate for localhost/127.0.0.1 signed by the first, and a private
broker node with a TLS listener (`listeners.ssl.default` in its rabbitmq.conf).
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import LabBroker
from tests.support.daemon import DaemonProcess
from tests.support.env import Lab
from vnetd.client import VnetClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PORT, TLS_PORT = 5691, 5692


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)


def make_server_cert(d: Path, ca: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", "server.key", "-out", "server.csr", cwd=d)
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem", cwd=d)


@pytest.fixture(scope="module")
def tls_broker(lab: Lab) -> Iterator[dict[str, Any]]:
    base = lab.dir / "tls-broker"
    certs = base / "certs"
    certs.mkdir(parents=True)
    make_ca(certs, "ca")
    make_ca(certs, "otherca")
    make_server_cert(certs, "ca")
    (base / "rabbitmq.conf").write_text(
        f"listeners.ssl.default = {TLS_PORT}\n"
        f"ssl_options.cacertfile = {certs}/ca.pem\n"
        f"ssl_options.certfile = {certs}/server.pem\n"
        f"ssl_options.keyfile = {certs}/server.key\n"
        "ssl_options.verify = verify_none\n"
        "ssl_options.fail_if_no_peer_cert = false\n")
    node = LabBroker(netns=lab.netns, node=f"tls-{lab.suffix}@localhost", port=PORT,
                     dist_port=PORT + 20000, base=base)
    node.start(90.0)
    try:
        yield {"node": node, "certs": certs}
    finally:
        node.stop()
        shutil.rmtree(base, ignore_errors=True)


def _daemon(lab: Lab, netns: str, url: str, ca: Path) -> DaemonProcess:
    host_id = DaemonProcess.new_host_id(lab.suffix)
    return DaemonProcess(host_id=host_id, amqp_url=f"amqp://guest:guest@127.0.0.1:{PORT}/",
                         netns=netns, workdir=lab.dir / "daemons" / host_id,
                         extra={"amqp": {"url": url, "ca_file": str(ca)}})


async def _exit_of(d: DaemonProcess, timeout: float = 60.0) -> int | None:
    await d.start(wait_ready=False)
    assert d.proc is not None
    try:
        return await asyncio.wait_for(asyncio.to_thread(d.proc.wait), timeout)
    finally:
        await d.stop()


async def test_the_right_ca_connects(lab: Lab, tls_broker: dict[str, Any], netns: str) -> None:
    certs = tls_broker["certs"]
    d = _daemon(lab, netns, f"amqps://guest:guest@localhost:{TLS_PORT}/", certs / "ca.pem")
    try:
        await d.start()  # ready: it answers host.health (asked over the plain port)
        assert "broker_connected" in d.log_text()
        context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        async with VnetClient(f"amqps://guest:guest@localhost:{TLS_PORT}/",
                              ssl_context=context) as client:
            reply = await client.call(d.host_id, "host.health", timeout=30)
            assert reply.ok, reply
            assert reply.result["broker_node"] == f"localhost:{TLS_PORT}"
    finally:
        await d.stop()


async def test_a_wrong_ca_is_a_config_error(lab: Lab, tls_broker: dict[str, Any],
                                            netns: str) -> None:
    d = _daemon(lab, netns, f"amqps://guest:guest@localhost:{TLS_PORT}/",
                tls_broker["certs"] / "otherca.pem")
    assert await _exit_of(d) == 78
    assert "certificate was refused" in d.log_text(), d.log_tail()


async def test_a_wrong_host_name_is_a_config_error(lab: Lab, tls_broker: dict[str, Any],
                                                   netns: str) -> None:
    # 127.0.0.2 is loopback too, but not a name in the server's certificate
    d = _daemon(lab, netns, f"amqps://guest:guest@127.0.0.2:{TLS_PORT}/",
                tls_broker["certs"] / "ca.pem")
    assert await _exit_of(d) == 78
    assert "certificate was refused" in d.log_text(), d.log_tail()
    assert "127.0.0.2" in d.log_text()
