"""The settings model and its loader."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)


class ConfigError(Exception):
    """A configuration problem; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AmqpSettings(_Section):
    url: SecretStr = Field(default=SecretStr("amqp://guest:guest@127.0.0.1:5672/"),
                           description="Broker URL (amqp:// or amqps://); its password is masked")
    urls: tuple[SecretStr, ...] = Field(
        default=(), description="Several broker URLs (the nodes of a cluster); when given, "
        "`url` is not used: the daemon connects to any and on loss moves to the next")
    quorum_initial_group_size: int = Field(
        default=3, ge=1, le=99,
        description="Replicas of the host queue (a quorum queue) on a cluster; "
        "RabbitMQ caps it to the nodes there are, so one broker works as is")
    allowed_senders: tuple[str, ...] = Field(
        default=(), description="When set, only jobs whose `user_id` property (RabbitMQ "
        "checks it against the sender's login) is one of these are run; others: forbidden")
    ca_file: str = Field(default="", description="amqps://: the CA bundle that verifies the "
                         "broker ('' = the system's trust store)")
    cert_file: str = Field(default="", description="amqps://: client certificate (optional)")
    key_file: str = Field(default="", description="amqps://: the client certificate's key")
    verify_peer: bool = Field(default=True, description="amqps://: verify the broker's "
                              "certificate and host name (turn off only to debug)")
    prefetch: int = Field(default=128, ge=1, le=10_000, description="Jobs in flight at most")
    delivery_limit: int = Field(default=5, ge=1, le=1000,
                                description="Deliveries of one job before it is dead-lettered")
    dedupe_window_seconds: float = Field(
        default=600, ge=0, le=86_400,
        description="How long a reply is kept to answer a resent message_id without redoing it")
    dedupe_max_entries: int = Field(default=100_000, ge=0, le=10_000_000)
    reconnect_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    state_dir: str = Field(
        default="/run/vnetd",
        description="Where the crash flight recorder lives (per host_id); must survive restarts")
    quarantine_after_crashes: int = Field(
        default=2, ge=0, le=100,
        description="Dead-letter a job that crashed the daemon this often running alone; 0 = off")
    drain_timeout_seconds: float = Field(
        default=20.0, gt=0, le=600,
        description="On stop, how long jobs in flight may take before they are left for redelivery")
    retry_delay_seconds: float = Field(
        default=5.0, gt=0, le=3600,
        description="A job without reply_to that met `unavailable` is run again after this delay")
    retry_attempts: int = Field(
        default=60, ge=1, le=10_000,
        description="Attempts in all of such a job before it is dead-lettered with the reason")


    def broker_urls(self) -> list[str]:
        """The URLs to connect to, in order: `urls`, else `url`."""
        return [u.get_secret_value() for u in self.urls] or [self.url.get_secret_value()]


class NetlinkSettings(_Section):
    netns: str = Field(default="",
                       description="Network namespace to manage ('' = the daemon's own)")
    rcvbuf_bytes: int = Field(default=4 * 1024 * 1024, ge=32 * 1024, le=1 << 30,
                              description="Receive buffer of the event watcher's netlink socket")


class LibvirtSettings(_Section):
    enabled: bool = True
    uri: str = Field(default="qemu:///system", min_length=1)
    adopt_unowned: bool = Field(
        default=False, description="Allow destroy/undefine of networks vnetd did not define")
    reconnect_max_seconds: float = Field(default=30.0, gt=0, le=3600)


class OvsSettings(_Section):
    enabled: bool = Field(
        default=False,
        description="Manage Open vSwitch bridges and ports through OVSDB (needs ovsdb-server)")
    db: str = Field(default="unix:/var/run/openvswitch/db.sock",
                    pattern=r"^(unix:/\S+|tcp:\S+:\d+|ssl:\S+:\d+)$",
                    description="OVSDB remote of the local ovsdb-server")
    datapath_type: Literal["system", "netdev"] = Field(
        default="system",
        description="Datapath of the bridges vnetd creates: system (kernel module) or netdev")
    foreign_bridges: tuple[str, ...] = Field(
        default=(), description="Glob patterns of OVS bridges vnetd did not create that it may "
        "still attach its ports to (e.g. br-int); it never changes or deletes them")
    apply_timeout_seconds: float = Field(
        default=10.0, gt=0, le=300,
        description="How long a change may take ovs-vswitchd to apply before the job answers "
        "unavailable (and is retried)")
    probe_interval_seconds: float = Field(default=5.0, ge=0, le=600,
                                          description="OVSDB keepalive; 0 = off")


class PolicySettings(_Section):
    attachable: tuple[str, ...] = Field(
        default=(), description="Glob patterns of unowned interfaces that may join owned bridges")
    protected: tuple[str, ...] = Field(
        default=("lo",), description="Glob patterns of interfaces never touched")
    protect_default_route: bool = Field(
        default=True, description="Also protect every interface that carries a default route")


class EventsSettings(_Section):
    enabled: bool = True
    exchange: str = "vnetd.events"
    heartbeat_seconds: float = Field(default=30.0, gt=0, le=3600)
    buffer_size: int = Field(default=100_000, ge=10, le=10_000_000,
                             description="Events kept while the broker is unreachable")


class CleanupSettings(_Section):
    interval_seconds: float = Field(default=0, ge=0, le=86_400 * 7,
                                    description="Periodic sweep interval; 0 = no periodic sweep")
    tap_grace_seconds: float = Field(default=600, ge=0)
    bridge_grace_seconds: float = Field(default=600, ge=0)
    lease_seconds: float = Field(
        default=60, ge=1, le=86_400,
        description="A device a job created or used is kept at least this long after the job")
    taps: bool = True
    bridges: bool = True
    networks: bool = True
    ovs_bridges: bool = Field(default=True,
                              description="Owned OVS bridges without ports (bridge grace)")
    half_created: bool = Field(
        default=True, description="Bridges/VXLANs left in the creation group by a cut-short job")
    half_created_grace_seconds: float = Field(default=300, ge=0)


class MetricsSettings(_Section):
    enabled: bool = False
    address: str = "127.0.0.1"
    port: int = Field(default=9477, ge=1, le=65535)


class LogSettings(_Section):
    format: Literal["json", "console", "journal", "auto"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VNETD_", env_nested_delimiter="__", extra="forbid", frozen=True,
        case_sensitive=False)

    host_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=200,
                         pattern=r"^[A-Za-z0-9_.\-]+$")
    amqp: AmqpSettings = AmqpSettings()
    netlink: NetlinkSettings = NetlinkSettings()
    libvirt: LibvirtSettings = LibvirtSettings()
    ovs: OvsSettings = OvsSettings()
    policy: PolicySettings = PolicySettings()
    events: EventsSettings = EventsSettings()
    cleanup: CleanupSettings = CleanupSettings()
    metrics: MetricsSettings = MetricsSettings()
    log: LogSettings = LogSettings()

    @field_validator("netlink", mode="after")
    @classmethod
    def _netns_name(cls, value: NetlinkSettings) -> NetlinkSettings:
        if value.netns and ("/" in value.netns or value.netns in (".", "..")):
            raise ValueError("netns must be a name under /run/netns, not a path")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _TOML_FILE.get("path")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    def public_dict(self) -> dict[str, Any]:
        """The effective config with secrets masked (for check-config and logs)."""
        data = self.model_dump(mode="json")
        data["amqp"]["url"] = _mask_url(self.amqp.url.get_secret_value())
        data["amqp"]["urls"] = [_mask_url(u.get_secret_value()) for u in self.amqp.urls]
        return data


_TOML_FILE: dict[str, Path] = {}


def _mask_url(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]  # as written: keeps [v6] brackets and the port
    netloc = f"{parts.username}:****@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def load_settings(path: str | Path | None) -> Settings:
    """Load and validate; raises ConfigError with the offending key named."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        _TOML_FILE["path"] = p
    else:
        _TOML_FILE.pop("path", None)
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            key = ".".join(str(x) for x in err["loc"])
            problems.append(f"{key}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from exc
    except SettingsError as exc:  # an environment value that does not parse
        raise ConfigError(f"invalid configuration from the environment: {exc}") from exc
    except ValueError as exc:  # TOML syntax errors surface as ValueError subclasses
        raise ConfigError(f"cannot read {path}: {exc}") from exc

