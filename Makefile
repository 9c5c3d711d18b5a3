# Everything a fresh machine needs: `make run` serves the bundled model, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
HOST ?= 127.0.0.1
PORT ?= 8000
# Debian packages the tests run for real: Redis for the shared state store, promtool for the Prometheus configs,
# nginx for the compose file's session-hash proxy, docker-compose to validate the compose file (no engine needed),
# chromium and chromium-driver for the playground's browser tests (Selenium, headless), buildah and debootstrap to
# build and run the container image without a Docker engine (`make image`, tests/deploy/test_image_build.py).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint system-deps venv dev train export evaluate bench bench-deps clean image

$(VENV)/.serve: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

# torch is installed first and pinned: the CPU build of 2.13.0 installs without CUDA packages.
# The Python client is its own distribution (clients/python): the tests and the bench's load generator use it.
$(VENV)/.dev: pyproject.toml clients/python/pyproject.toml $(VENV)/.serve
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q -e clients/python
	touch $@

venv: $(VENV)/.serve
dev: $(VENV)/.dev

system-deps:
	@missing=""; command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx-light"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v buildah >/dev/null || missing="$$missing buildah"; \
	command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing="$$missing debootstrap"; \
	[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || missing="$$missing chromium chromium-driver"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; command -v curl >/dev/null || missing="$$missing curl"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The CPU image lstm-serve:<version>: `docker build` where a Docker engine answers, otherwise buildah on a local
# Debian base (deploy/image/build.sh says how; IMAGE_BUILDER=docker|buildah chooses).
image:
	deploy/image/build.sh

run: venv
	$(PY) -m service --host $(HOST) --port $(PORT)

test: system-deps dev
	$(PY) -m pytest

lint: dev
	$(VENV)/bin/ruff check service model tests clients
	$(VENV)/bin/ruff format --check service model tests clients
	$(VENV)/bin/mypy

train: dev
	$(VENV)/bin/lstm-serve train --out build/shakespeare-lstm.pt

export: dev
	$(VENV)/bin/lstm-serve export --checkpoint build/shakespeare-lstm.pt

evaluate: venv
	$(VENV)/bin/lstm-serve evaluate

# The benchmark's C load clients: wrk drives predict, curl --parallel the SSE streams.
bench-deps:
	@missing=""; command -v wrk >/dev/null || missing="$$missing wrk"; command -v curl >/dev/null || missing="$$missing curl"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

bench: bench-deps dev
	$(VENV)/bin/lstm-serve bench

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
