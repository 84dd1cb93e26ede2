# One command each: `make test` (set up + run the tests), `make demo` (set up + segment the bundled sample).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: venv test demo bench clean

$(STAMP): pyproject.toml requirements/pinned.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements/pinned.txt
	$(PIP) install --quiet --no-deps -e '.[test,train]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q Testing

demo: $(STAMP)
	$(PY) -m LiverTumorSegLib demo --out demo-output

clean:
	rm -rf $(VENV) build *.egg-info demo-output
