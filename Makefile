# Two entry points: `make demo` (the default study) and `make test` (the suite).
# Both install into a project-local .venv once; a second run reuses it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.detune-installed

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)

.PHONY: demo test install clean browser

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned to the build this machine keeps on disk (no multi-GB download).
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/detune tune configs/quick.yaml

test: $(STAMP)
	$(PY) -m pytest

# Chromium for the MLflow UI test (tests/test_ui_browser.py skips without one). Never fails: no apt, no browser.
browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; } \
		|| echo "warning: could not install chromium with apt; tests/test_ui_browser.py will skip" >&2

clean:
	rm -rf $(VENV) runs mlflow.db mlflow.db.lock
