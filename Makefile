# django-tasks-q -- developer and CI entry points.
#   make test [PYTEST_ARGS="..."]   whole suite against real servers (CI=true: missing servers fail)
#   make test-lowest                unit, spine, transport and interop tests on the lowest supported
#                                   dependencies (constraints/lowest.txt); `make test` runs the newest
#   make demo                       the testproject demo on the embedded default broker
#   make venv | servers | clean

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.ONESHELL:

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# two test processes (one per core); each file stays in one, so its module-scoped workers start once
PYTEST_ARGS ?= -n 2 --dist loadfile
LOWEST_VENV := .venv-lowest
# what runs against both ends of the supported range (docs/installation.md#supported-versions)
RANGE_TESTS := tests/unit tests/integration/test_transport_redis.py tests/integration/test_transport_django.py \
               tests/integration/test_transport_amqp.py \
               tests/integration/test_spine.py tests/interop

.PHONY: venv servers test test-lowest demo bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Redis, RabbitMQ and PostgreSQL binaries for the session fixtures in tests/servers.py
# (and Chromium + ChromeDriver for the dashboard's browser test),
# which run their own private instances; the system services are never started.
servers:
	@pkgs=""
	command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || pkgs="$$pkgs redis-server"
	command -v rabbitmq-server >/dev/null || [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || pkgs="$$pkgs rabbitmq-server"
	command -v initdb >/dev/null || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || pkgs="$$pkgs postgresql"
	command -v chromium >/dev/null || pkgs="$$pkgs chromium"
	command -v chromedriver >/dev/null || pkgs="$$pkgs chromium-driver"
	[ -n "$$pkgs" ] || exit 0
	if ! command -v apt-get >/dev/null || [ "$$(id -u)" != 0 ]; then
		echo "make servers: missing$$pkgs; not installing (needs root on Debian)." \
		     "Tests that need them will fail." >&2
		exit 0
	fi
	# Keep apt from starting the system services.
	[ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; }
	echo "make servers: installing$$pkgs"
	export DEBIAN_FRONTEND=noninteractive
	apt-get -o DPkg::Lock::Timeout=600 update -qq
	apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $$pkgs

# house style first (ruff.toml): a lint failure is a test failure
test: venv servers
	$(PY) -m ruff check django_tasks_q tests bench testproject
	CI=$${CI:-} $(PY) -m pytest $(PYTEST_ARGS)

$(LOWEST_VENV)/.installed: setup.cfg pyproject.toml constraints/lowest.txt
	[ -x $(LOWEST_VENV)/bin/python ] || $(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/python -m pip install -q -c constraints/lowest.txt -e '.[test]'
	touch $@

test-lowest: $(LOWEST_VENV)/.installed servers
	CI=$${CI:-} $(LOWEST_VENV)/bin/python -m pytest $(RANGE_TESTS) $(PYTEST_ARGS)

demo: venv
	$(PY) testproject/demo.py

# django-tasks-q next to Celery, Huey, RQ and Dramatiq on private Redis and RabbitMQ servers (bench/README.md)
bench: venv servers
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(LOWEST_VENV) db.sqlite3 db.sqlite3-*
