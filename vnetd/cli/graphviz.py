"""Runs Graphviz's `dot` for `vnetctl show --format svg`.

Client-side only: vnetctl draws on the operator's machine. This is the one module
of the package that starts a program, and nothing under service/ or the daemon's
layers imports it (tests/unit/test_no_shell.py names it as the one exception).
"""

from __future__ import annotations

import shutil
import subprocess

TIMEOUT = 60.0


class GraphvizMissing(Exception):
    """`dot` is not installed (or failed)."""


def render_dot(text: str, fmt: str) -> str:
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizMissing("Graphviz's `dot` is not installed: apt install graphviz "
                              "(or use --format dot and render it elsewhere)")
    proc = subprocess.run([exe, f"-T{fmt}"], input=text, capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    if proc.returncode != 0:
        raise GraphvizMissing(f"dot -T{fmt} failed: {proc.stderr.strip()}")
    return proc.stdout
