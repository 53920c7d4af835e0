# The README's two commands. Each one installs what it needs (idempotent) and then runs.
.PHONY: curate test lint

curate:
	./scripts/setup.sh
	.venv/bin/synpref curate --config examples/default/synpref.toml

test:
	./scripts/setup.sh --test-services
	.venv/bin/python -m pytest tests

lint:
	.venv/bin/ruff check .
