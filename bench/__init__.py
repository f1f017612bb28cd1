"""vnetd's benchmark: `make bench` (full) or `python -m bench --quick` (under a minute).

Runs vnetd and its baselines side by side in a lab of its own (network namespaces and a
private RabbitMQ, like scripts/test.sh) and writes bench/results/latest.{json,md} and
PNG plots. See docs/benchmark.md.
"""
