"""The public contract: command models, reply envelopes, error codes, events.

This package is the bottom layer. It imports nothing else from vnetd and no
adapter library: everything here is pure data and validation. What an op is
(its model and its OpSpec) is declared in vnetd.contract.base's terms by each op
module; `commands.build_op_table` lists them all (`commands.OPS`).
"""

from vnetd.contract import cleanup as cleanup
from vnetd.contract import commands as commands
from vnetd.contract import network as network
from vnetd.contract import overlay as overlay
