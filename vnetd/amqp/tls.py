"""TLS to the broker: peer verification on by default, a clear error when it fails."""

from __future__ import annotations

import ssl
from typing import Protocol


class TlsOptions(Protocol):
    """The `[amqp]` keys that make the TLS context (vnetd.config's AmqpSettings)."""

    @property
    def ca_file(self) -> str: ...
    @property
    def cert_file(self) -> str: ...
    @property
    def key_file(self) -> str: ...
    @property
    def verify_peer(self) -> bool: ...

    def broker_urls(self) -> list[str]: ...


class BrokerTlsError(Exception):
    """TLS to the broker cannot work as configured (bad CA, certificate, host name).

    Not a temporary failure: retrying cannot fix it, so the daemon stops at start
    with the exit status of a configuration error."""


def tls_context(opts: TlsOptions) -> ssl.SSLContext | None:
    """The client context for amqps:// URLs; None when no URL uses TLS."""
    if not any(u.startswith("amqps://") for u in opts.broker_urls()):
        return None
    try:
        context = ssl.create_default_context(cafile=opts.ca_file or None)
        if opts.cert_file:
            context.load_cert_chain(opts.cert_file, opts.key_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise BrokerTlsError(f"[amqp] TLS files cannot be used: {exc}") from exc
    if not opts.verify_peer:  # an explicit choice in the config, never a fallback
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def explain(exc: BaseException) -> BrokerTlsError | None:
    """A TLS failure found in a connection error (or its causes), as a clear error."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return BrokerTlsError(
                f"the broker's certificate was refused: {seen.verify_message} "
                "(check [amqp] ca_file and that the URL's host name is in the certificate)")
        if isinstance(seen, ssl.SSLError):
            return BrokerTlsError(f"TLS to the broker failed: {seen}")
        seen = seen.__cause__ or seen.__context__
    return None
