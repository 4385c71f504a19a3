# The two set-up commands of the README. Each creates .venv on first use (Python >= 3.10 on PATH as python3).
#   make demo   generation with the embedded default model (runtime only: numpy, onnxruntime, tokenizers)
#   make serve  `ortdecode serve` on the embedded default model (runtime + the serve extra), port 8080
#   make test   the test suite (adds torch, transformers, Optimum, pytest, Ray; the CPU torch build, < 2.14)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo serve test bench model mutation clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[cpu]"
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[cpu,export,test,serve,ray]"
	touch $(VENV)/.runtime $(VENV)/.serve $@

demo: $(VENV)/.runtime
	$(BIN)/ortdecode generate "spell out: 4521" "to digits: nine hundred ninety-nine thousand nine hundred ninety-nine" "ordinal: 21" "spell out: 700019"

$(VENV)/.serve: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[cpu,serve]"
	touch $(VENV)/.runtime $@

serve: $(VENV)/.serve
	$(BIN)/ortdecode serve

test: $(VENV)/.dev
	$(BIN)/python -m pytest -q

$(VENV)/.bench: pyproject.toml | $(VENV)/.dev
	$(BIN)/python -m pip install --quiet -e ".[cpu,export,test,serve,ray,bench]"
	touch $@

bench: $(VENV)/.bench
	$(BIN)/python -m benchmarks.run

# Break the decoding code on purpose, one change at a time; report in tests/mutation/REPORT.md. Not in CI (slow).
mutation: $(VENV)/.dev
	$(BIN)/python -m tests.mutation.run

model: $(VENV)/.bench
	$(BIN)/python -m models.numbers

clean:
	rm -rf $(VENV) .pytest_cache
