"""Command-line entry points: `vnetd` (the daemon and admin commands) and `vnetctl`."""
