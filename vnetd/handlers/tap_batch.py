"""Many tap.ensure of one batch at once: read together, created together.

A run of `tap.ensure` commands in a batch (each on a TAP of its own) is read in
one round trip (every TAP and every bridge they name); each command is checked
on that state exactly as `tap.ensure` checks it; the new TAPs are then created
by `NetBackend.add_taps`, which pipelines them in the kernel (creations back to
back, all the marking requests in one write). Anything else (a TAP that exists,
an MTU to check against an overlay) runs through the one-command handler, in its
place in the batch, after the creations before it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from vnetd.contract.commands import TapEnsure
from vnetd.contract.errors import VnetdError
from vnetd.handlers.context import Context
from vnetd.handlers.port import require_owned_bridge
from vnetd.handlers.tap import plan_ensure, tap_spec
from vnetd.handlers.views import link_view
from vnetd.net.model import Link, LinkChange, TapSpec

Outcome = dict[str, Any] | VnetdError | None
"""A command's result, its error, or None: not run (after a failure, stop_on_error)."""
OneByOne = Callable[[TapEnsure], Awaitable[dict[str, Any]]]


async def ensure_many(cmds: list[TapEnsure], ctx: Context, stop_on_error: bool,
                      one: OneByOne) -> list[Outcome]:
    """The outcome of each command, in order; `one` runs a command by itself."""
    names = [cmd.name for cmd in cmds]
    bridges = sorted({cmd.bridge for cmd in cmds if cmd.bridge is not None})
    links = await ctx.net.get_links(names + bridges)
    taps = dict(zip(names, links[:len(names)], strict=True))
    found = dict(zip(bridges, links[len(names):], strict=True))
    out: list[Outcome] = [None] * len(cmds)
    todo: list[tuple[int, TapSpec, LinkChange, Link | None]] = []

    async def flush() -> bool:
        """Create the TAPs planned so far; False when the batch must stop."""
        if not todo:
            return True
        made = await ctx.net.add_taps([(spec, change) for _, spec, change, _ in todo],
                                      stop_on_error)
        go_on = True
        for (i, _, _, bridge), link in zip(todo, made, strict=True):
            if isinstance(link, Link):
                out[i] = {**link_view(link, bridge.name if bridge is not None else None),
                          "created": True, "changed": True}
            elif link is None:  # not run: an earlier one failed (stop_on_error)
                go_on = False
            else:
                out[i] = link
                go_on = go_on and not stop_on_error
        todo.clear()
        return go_on

    for i, cmd in enumerate(cmds):
        if taps[cmd.name] is None and cmd.mtu is None:
            try:
                ctx.policy.check_protected(cmd.name, "create or change")
                bridge = None if cmd.bridge is None else require_owned_bridge(
                    ctx, found[cmd.bridge], cmd.bridge)
            except VnetdError as exc:
                if not await flush():
                    return out
                out[i] = exc
                if stop_on_error:
                    return out
                continue
            todo.append((i, tap_spec(cmd), plan_ensure(cmd, None, bridge).change, bridge))
            continue
        if not await flush():
            return out
        try:
            out[i] = await one(cmd)
        except VnetdError as exc:
            out[i] = exc
            if stop_on_error:
                return out
    await flush()
    return out
