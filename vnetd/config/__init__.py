"""Daemon configuration: loaded once at start, frozen, grouped by concern.

Sources, strongest first: `VNETD_<SECTION>__<KEY>` environment variables, the
TOML file, the defaults here. `config/vnetd.toml` in the repository documents
every key. A bad value raises ConfigError naming the key; the CLI exits 78.
"""

from vnetd.config.locate import find_config
from vnetd.config.settings import ConfigError, Settings, load_settings

__all__ = ["ConfigError", "Settings", "find_config", "load_settings"]
