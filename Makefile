# xaiserve — the two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PROTO_SRC := $(wildcard protos/xaiserve/v1/*.proto)

.PHONY: help venv demo test test-fast lint proto bench serve clean

help:
	@echo "make demo   - set up, start the server on the bundled model, explain through the SDK, write images + table"
	@echo "make test   - set up and run the whole test suite"
	@echo "make lint   - ruff + mypy + import-linter (imports point down)"
	@echo "make proto  - regenerate gRPC stubs from protos/"
	@echo "make bench  - run the benchmarks under bench/ (minutes)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m xaiserve_client.demo --out demo-output

test: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q

test-fast: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -m "not slow" -x

lint: $(STAMP)
	$(PY) -m ruff check service clients tests bench
	$(PY) -m mypy service/xaiserve clients/python/xaiserve_client
	$(VENV)/bin/lint-imports

proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I protos --python_out=service --pyi_out=service \
		--grpc_python_out=service $(PROTO_SRC)
	touch service/xaiserve/v1/__init__.py

serve: $(STAMP)
	$(VENV)/bin/xaiserve serve

bench: $(STAMP)
	for b in bench/[a-z]*.py; do echo "== $$b"; OMP_WAIT_POLICY=PASSIVE $(PY) $$b --quick || exit 1; done

clean:
	rm -rf demo-output .pytest_cache .mypy_cache .ruff_cache
