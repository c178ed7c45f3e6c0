# Entry points. `make demo` and `make test` are the README's two commands; both install
# whatever is missing first (deploy/install.sh, idempotent, downloads cached in var/cache/).
SHELL := /bin/bash
PY := .venv/bin/python
STACK := $(PY) -m deploy.stack

.PHONY: install up down status clean demo test test-unit check

install:
	@bash deploy/install.sh

up: install
	@$(STACK) up

down:
	@if [ -x $(PY) ]; then $(STACK) down; fi

status:
	@$(STACK) status

clean:
	@if [ -x $(PY) ]; then $(STACK) clean; else rm -rf var; fi

demo: up
	@$(PY) -m deploy.demo

# The whole suite: unit tests, then integration and e2e tests against a stack of their own
# (on free ports, in var/test-stack, stopped at the end). STACK_ENV=var/stack.env reuses
# a running stack instead.
test: install
	@$(PY) -m pytest

test-unit: install
	@$(PY) -m pytest tests/unit

check: install
	@.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy deploy indexer auth orthanc-plugins tests bench
