"""The daemon does its work over netlink and libvirt's API only: no subprocess, no shell."""

from __future__ import annotations

import ast
from pathlib import Path

import vnetd

FORBIDDEN_MODULES = {"subprocess", "pty"}
# vnetctl draws pictures with Graphviz's `dot` on the operator's machine: the one client-side
# module that may start a program. Nothing of the daemon imports vnetd.cli (import-linter).
CLIENT_SIDE = {"cli/graphviz.py"}
FORBIDDEN_CALLS = {("os", "system"), ("os", "popen"), ("asyncio", "create_subprocess_exec"),
                   ("asyncio", "create_subprocess_shell")}


def _violations(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names
                      if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
                found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and (
                (node.value.id, node.attr) in FORBIDDEN_CALLS
                or (node.value.id == "os" and node.attr.startswith(("exec", "spawn")))):
            found.append(f"{node.value.id}.{node.attr}")
    return [f"{path}:{v}" for v in found]


def test_no_module_of_the_daemon_runs_a_process() -> None:
    root = Path(vnetd.__file__).parent
    files = sorted(f for f in root.rglob("*.py")
                   if f.relative_to(root).as_posix() not in CLIENT_SIDE)
    assert len(files) > 20  # the scan really covers the package
    violations = [v for f in files for v in _violations(f)]
    assert violations == []


def test_the_scan_would_catch_one(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import subprocess\nimport os\nos.system('ip link')\n")
    assert len(_violations(bad)) == 2
