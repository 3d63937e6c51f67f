# xaiserve — the two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PROTO_SRC := $(wildcard protos/xaiserve/v1/*.proto)
# The exact versions CI and the CPU image install (`make lock` regenerates both lock files).
LOCK ?= requirements/cpu.txt
UV_COMPILE := $(VENV)/bin/uv pip compile --quiet --universal --python-version 3.11 \
	--no-emit-package xaiserve --no-emit-package xaiserve-client --custom-compile-command "make lock"

.PHONY: help venv oip-server demo test test-fast lint proto lock wheels bench serve clean

help:
	@echo "make demo   - set up, start the server on the bundled model, explain through the SDK, write images + table"
	@echo "make test   - set up and run the whole test suite"
	@echo "make lint   - ruff + mypy + import-linter (imports point down)"
	@echo "make proto  - regenerate gRPC stubs (and the shipped protos) from protos/"
	@echo "make lock   - re-resolve requirements/*.txt after a dependency change in a pyproject"
	@echo "make wheels - build the xaiserve-client and xaiserve wheels into dist/"
	@echo "make bench  - run the benchmarks under bench/ (minutes)"

venv: $(STAMP)

# Both distributions, editable, with the dev tools, at the locked versions.
$(STAMP): pyproject.toml clients/python/pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(LOCK) -e './clients/python[plot]' -e '.[cpu,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m xaiserve_client.demo --out demo-output

# The OIP server the "oip" tests talk to (KServe, in its own venv: it pins protobuf<7).
oip-server: $(STAMP)
	$(PY) -c "from tests.oip_support import ensure_server_venv; ensure_server_venv()"

test: $(STAMP) oip-server
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q

test-fast: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -m "not slow" -x

lint: $(STAMP)
	$(PY) -m ruff check service clients tests bench tools
	$(PY) -m mypy service/xaiserve clients/python/xaiserve_client
	$(VENV)/bin/lint-imports

proto: $(STAMP)
	$(PY) tools/gen_proto.py

# Keeps the versions already locked unless a pyproject range excludes them; add --upgrade (or
# --upgrade-package NAME) to UV_COMPILE's arguments by hand to move to newer releases.
# CPU first; the GPU lock is constrained by it, so both images share every common version.
lock: $(STAMP)
	$(UV_COMPILE) -o requirements/cpu.txt requirements/cpu.in
	$(UV_COMPILE) -c requirements/cpu.txt -o requirements/gpu.txt requirements/gpu.in

wheels: $(STAMP)
	rm -rf dist
	$(PY) tools/build_wheels.py --out dist

serve: $(STAMP)
	$(VENV)/bin/xaiserve serve

bench: $(STAMP)
	for b in bench/[a-z]*.py; do echo "== $$b"; OMP_WAIT_POLICY=PASSIVE $(PY) $$b --quick || exit 1; done

clean:
	rm -rf demo-output dist build .pytest_cache .mypy_cache .ruff_cache
