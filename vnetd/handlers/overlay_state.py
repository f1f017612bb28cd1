"""What vnetd last wrote to each VXLAN device's FDB and neighbour table.

`fdb.converge` records the state it is about to write *before* it writes it,
so the neighbour watcher can tell vnetd's own changes (expected) from changes
made outside vnetd (someone deleted an entry: drift, published as an event).
After a restart the watcher fills it from the kernel, which holds what vnetd
wrote (the entries carry vnetd's marker).
"""

from __future__ import annotations

from dataclasses import dataclass, field

Key = tuple[str, str]
"""(table, key): ("remotes", dst), ("fdb", mac), ("neighbours", ip)."""
State = dict[Key, str | None]
"""Key -> value: None for a remote, the VTEP for a MAC, the MAC for an IP."""


@dataclass
class OverlayState:
    devices: dict[int, State] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)

    def set(self, index: int, name: str, state: State, tables: set[str]) -> None:
        """Replace the rows of `tables` of device `index` (other tables kept)."""
        kept = {k: v for k, v in self.devices.get(index, {}).items() if k[0] not in tables}
        self.devices[index] = {**kept, **state}
        self.names[index] = name

    def forget(self, index: int) -> None:
        self.devices.pop(index, None)
        self.names.pop(index, None)
