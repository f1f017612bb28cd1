"""Where the tools find their config file: one rule for `vnetd` and `vnetctl`.

Strongest first: the `--config` flag, the `VNETD_CONFIG` environment variable,
the checkout's `config/vnetd.toml` (when vnetd runs from a source checkout, as
README command 1 does), then `/etc/vnetd/vnetd.toml` (an installed host).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "VNETD_CONFIG"
SYSTEM_CONFIG = Path("/etc/vnetd/vnetd.toml")


def checkout_config() -> Path | None:
    """config/vnetd.toml of the source tree this package was imported from, if any.

    A tree is a checkout when pyproject.toml sits beside the package: an
    installed wheel (site-packages) has none, so it never picks up a stray file.
    """
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "config" / "vnetd.toml").is_file():
        return root / "config" / "vnetd.toml"
    return None


def candidates(flag: str | None = None) -> list[tuple[str, Path]]:
    """Every place looked at, in order, with how it was chosen (for messages)."""
    found: list[tuple[str, Path]] = []
    if flag:
        found.append(("--config", Path(flag)))
    if os.environ.get(ENV_VAR):
        found.append((ENV_VAR, Path(os.environ[ENV_VAR])))
    checkout = checkout_config()
    if checkout is not None:
        found.append(("checkout", checkout))
    found.append(("system", SYSTEM_CONFIG))
    return found


def find_config(flag: str | None = None) -> Path | None:
    """The config file to use, or None when there is none anywhere.

    An explicit choice (flag or environment) is returned even when the file is
    missing, so that the caller reports *that* file instead of silently using
    another one.
    """
    for how, path in candidates(flag):
        if how in ("--config", ENV_VAR) or path.is_file():
            return path
    return None
