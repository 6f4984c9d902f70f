# The few targets a newcomer needs. `make run` and `make test` set everything up on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_SRC := $(shell find protos -name '*.proto' | sort)
ARGS ?=
PYTEST_ARGS ?=
MYPY_PATHS := nurture services gateway cli

.PHONY: run test suite setup protos check-protos lint unit integration bench fuzz clean mutate typecount

$(STAMP): pyproject.toml
	$(PY) -c 'import sys; assert sys.version_info[:2] in ((3, 11), (3, 12)), "Python 3.11 or 3.12 is required"'
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## Regenerate Python code, .pyi stubs included, from protos/ into the import path nurture.api.*
protos: $(STAMP)
	rm -rf nurture/api
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO_SRC)
	find nurture/api -type d -exec touch {}/__init__.py \;

## Fails when the committed generated code differs from what protos/ produce
check-protos: protos
	git add -N nurture/api
	git diff --exit-code --stat -- nurture/api || (echo "generated code is stale: run make protos and commit" && exit 1)

run: $(STAMP)
	$(BIN)/nurture up $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy $(MYPY_PATHS)  # nurture/ under --strict's checks: pyproject.toml's overrides

## The suite on $(TEST_WORKERS) pytest-xdist workers, a file per worker at a time (a file's module fixtures, e.g. an
## e2e mesh, start once), files handed out in collection order: tests/e2e and the kill tests first, the many
## short unit files last to even out the end (xdist's default reorder, most tests first, left the few long e2e
## files for the end). TEST_WORKERS=0 runs it in this one process. docs/TESTING.md
## The API fuzz test runs after them in a process of its own: its items (one per API operation, made by
## schemathesis at collection) share one node id, and xdist runs such items once, not once per operation.
## PYTEST_ARGS go to both runs; when they deselect every fuzz item (the fuzz test is `slow`), pytest's
## "no tests ran" (exit 5) is not a failure.
TEST_WORKERS ?= 2
SUITE := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --ignore=tests/fuzz \
	$(PYTEST_ARGS) && { $(BIN)/python -m pytest -q tests/fuzz $(PYTEST_ARGS); fuzz=$$?; test $$fuzz -eq 0 -o $$fuzz -eq 5; }

## mypy (12 s of CPU from a cold cache) runs beside the suite, which mostly waits on processes and sockets;
## its report is printed after the suite's, and either failing fails the target.
test: $(STAMP) check-protos
	$(BIN)/ruff check .
	@types=$$(mktemp); $(BIN)/mypy $(MYPY_PATHS) >$$types 2>&1 & mypy=$$!; \
	$(SUITE); suite=$$?; \
	wait $$mypy; typed=$$?; echo "mypy $(MYPY_PATHS):"; cat $$types; rm -f $$types; \
	test $$suite -eq 0 && test $$typed -eq 0

## The suite alone, as `make test` runs it (no lint): .ci/run's PostgreSQL pass, after `make test`
suite: $(STAMP)
	$(SUITE)

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

## Fuzz the whole HTTP API from its own OpenAPI document for longer than `make test` does
fuzz: $(STAMP)
	NURTURE_FUZZ_EXAMPLES=$${NURTURE_FUZZ_EXAMPLES:-300} $(BIN)/python -m pytest -q -p no:cacheprovider \
		-o timeout=3600 tests/fuzz $(PYTEST_ARGS)

## Mutation testing of the promise-carrying modules (mutmut; about an hour on 2 cores; not part of `make test`).
## Prints per-module figures and one JSON line (mutants, killed, mutation_score). MUTATE_ARGS="--minutes 20 nurture/rules.py"
MUTATE_ARGS ?=
mutate: $(STAMP)
	$(BIN)/python tools/mutate.py $(MUTATE_ARGS)

## Untyped seams per package (Any, dict[str, Any], long positional tuples, journey step .get): issue #14
typecount: $(STAMP)
	$(BIN)/python tools/typecount.py

bench: $(STAMP)
	for b in bench/[a-z]*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache mutants mutants-logs
