"""The op table of docs/contract.md, written from the ops' specs.

`python -m vnetd.contract.optable` prints it; tests/unit/test_op_spec.py checks
that the docs carry exactly this text between the op-table markers.
"""

from __future__ import annotations

from vnetd.contract.commands import OPS, OpTable

BEGIN = "<!-- op-table:begin (python -m vnetd.contract.optable) -->"
END = "<!-- op-table:end -->"


def _names(fields: tuple[str, ...]) -> str:
    return ", ".join(f"`{f}`" for f in fields) or "—"


def render(ops: OpTable = OPS) -> str:
    """A markdown table: one row per op, from its OpSpec alone."""
    rows = [
        BEGIN,
        "| op | what it does | read-only | locks (exclusive / shared) | leases | subject |",
        "|---|---|---|---|---|---|",
    ]
    for op in sorted(ops):
        spec = ops[op].op_spec
        locks = "—"
        if spec.exclusive or spec.shared:
            locks = f"{spec.space}: {_names(spec.exclusive)} / {_names(spec.shared)}"
        leases = _names(spec.leases)
        if spec.hold:
            leases += f" (+ `{spec.hold}`)"
        subject = f"`{spec.subject}`" if spec.subject else "—"
        rows.append(f"| `{op}` | {spec.summary} | {'yes' if spec.read_only else 'no'} "
                    f"| {locks} | {leases} | {subject} |")
    rows.append(END)
    return "\n".join(rows)


if __name__ == "__main__":
    print(render())
