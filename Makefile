# Two commands for a fresh machine (Debian/Ubuntu, as root or with sudo):
#   make run      set up, then run the quick suite on the embedded default preset and print the results
#   make test     set up, then run the test suite
# and, for the whole grid (every attack and defense, hours on 2 CPU cores):
#   make run-all
VENV ?= .venv
PYTHON ?= python3
APT_PACKAGES = dataset-fashion-mnist wordnet-base chromium
SUDO = $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# The quick suite is what `cleanbench run` runs without --attacks/--defenses (benchmark/cli/support.py): the
# paper's BadNet against no defense, finetuning and CleanCLIP, one seed; well within 15 minutes on 2 CPU cores,
# setup included (benchmarks/results/make-run-2026-11-30.md).

.PHONY: setup run run-all test

$(VENV)/.installed: pyproject.toml
	@if command -v apt-get >/dev/null; then \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	else echo "no apt-get: install Fashion-MNIST yourself and pass --data-dir"; fi
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

run: setup
	$(VENV)/bin/cleanbench run --out results

run-all: setup
	$(VENV)/bin/cleanbench run --attacks all --defenses all --seeds 0 --out results

test: setup
	$(VENV)/bin/python -m pytest -q -n auto --dist loadfile  # one worker per core, each test file on one worker
