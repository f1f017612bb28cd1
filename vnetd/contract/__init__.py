"""The public contract: command models, reply envelopes, error codes, events.

This package is the bottom layer. It imports nothing else from vnetd and no
adapter library: everything here is pure data and validation. Importing it
loads every op module, so the op table (`commands.OPS`) is complete.
"""

from vnetd.contract import cleanup as cleanup
from vnetd.contract import commands as commands
from vnetd.contract import network as network
from vnetd.contract import overlay as overlay
