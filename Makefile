# The README's two commands. Each one installs what it needs (idempotent) and then runs.
.PHONY: curate test lint

curate:
	./scripts/setup.sh
	.venv/bin/synpref curate --config examples/default/synpref.toml

# Two test processes (pytest-xdist): most tests run one Python thread, so one process leaves a
# core idle. Tests that share a slow session fixture stay in one process (tests/conftest.py).
TEST_PROCESSES ?= 2

test:
	./scripts/setup.sh --test-services
	.venv/bin/python -m pytest tests -n $(TEST_PROCESSES) --dist loadgroup

lint:
	.venv/bin/ruff check .
