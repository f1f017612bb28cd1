"""Assembles the daemon from its parts and runs its lifecycle.

Start: config, logging, kernel backend, broker, topology, consumer, then READY.
Stop: STOPPING, cancel the consumer, drain jobs in flight within a bound, close.
"""
