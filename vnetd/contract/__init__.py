"""The public contract: command models, reply envelopes and error codes.

This package is the bottom layer. It imports nothing else from vnetd and no
adapter library: everything here is pure data and validation.
"""
