# vnetd: README commands. `make run` = command 1, `make test` = command 2.
.PHONY: setup run test lint unit clean-lab bench

setup:
	scripts/setup.sh --test

run:
	scripts/run.sh

# Whole suite inside a throw-away lab namespace with a private RabbitMQ.
# Extra pytest arguments: make test ARGS='-k lab -x'
test:
	scripts/test.sh $(ARGS)

lint: setup
	scripts/lint.sh

# Unit tests only: no lab, no broker, no root-namespace changes.
unit: setup
	.venv/bin/python -m pytest tests/unit -m "not integration" $(ARGS)

# Benchmark in a lab of its own (namespaces + private RabbitMQ): bench/results/latest.{json,md},
# PNG plots. Quick mode (< 60 s): make bench ARGS=--quick
bench: setup
	.venv/bin/python -m bench $(ARGS)

# Delete leftover lab/test namespaces, their brokers and .lab/ dirs of finished runs.
clean-lab:
	scripts/lab.sh sweep
