# voxlm: every target does its own set-up on a fresh machine; a second call skips what is done.
#   make demo   the main job on bundled data
#   make test   cargo test + pytest (what CI runs)
#   make bench  benchmarks against the reference tools -> bench/RESULTS.md
#   make lint   cargo fmt --check, clippy -D warnings, ruff, mypy stubtest on _core

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION := 2.11.0
STAMP_TORCH := $(VENV)/.torch-$(TORCH_VERSION)
STAMP_DEPS := $(VENV)/.deps-installed
STAMP_JAVA := $(VENV)/.java-present
EXT := python/voxlm/_core.abi3.so
RUST_SRC := $(shell find src -name '*.rs') Cargo.toml Cargo.lock pyproject.toml
# torch-sys finds libtorch through the venv's torch; tests find it at run time the same way.
BUILD_ENV := LIBTORCH_USE_PYTORCH=1 VIRTUAL_ENV=$(CURDIR)/$(VENV) PATH=$(CURDIR)/$(VENV)/bin:$$PATH
TORCH_LIB = $(shell $(PY) -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")

.PHONY: all setup build demo test test-rust test-py bench lint fuzz clean clean-build

all: build

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP_TORCH): | $(VENV)/bin/python
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	touch $@

# constraints.txt pins the reference libraries the parity tests were run against
$(STAMP_DEPS): requirements-dev.txt constraints.txt $(STAMP_TORCH)
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt torch==$(TORCH_VERSION)
	touch $@

# pycocoevalcap's METEOR and PTB tokenizer run Java.
$(STAMP_JAVA):
	@command -v java >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq default-jre-headless; }
	@mkdir -p $(VENV) && touch $@

setup: $(STAMP_DEPS) $(STAMP_JAVA)

$(EXT): $(RUST_SRC) $(STAMP_DEPS)
	$(BUILD_ENV) maturin develop --release --quiet
	@ls python/voxlm/_core*.so >/dev/null && touch $@

build: $(EXT)

demo: build
	$(PY) -m voxlm demo

test-rust: $(STAMP_DEPS)
	$(BUILD_ENV) LD_LIBRARY_PATH=$(TORCH_LIB) cargo test --release

test-py: build $(STAMP_JAVA)
	$(PY) -m pytest -q

test: test-rust test-py

# property-based fuzzing of the NIfTI header and gzip paths, safetensors buffers and config.json,
# DICOM and MetaImage
# (100k inputs each; test-rust runs them with their own smaller defaults)
fuzz: $(STAMP_DEPS)
	$(BUILD_ENV) LD_LIBRARY_PATH=$(TORCH_LIB) VOXLM_FUZZ_CASES=$${VOXLM_FUZZ_CASES:-100000} cargo test --release --test fuzz_nifti --test fuzz_safetensors --test fuzz_dicom --test fuzz_metaimage

bench: build
	$(PY) bench/run_all.py

# ruff's config (pyproject.toml) includes E501 (lines of at most 100 characters) for the whole
# tree; ruff format keeps the layout
lint: build
	cargo fmt --check
	$(BUILD_ENV) cargo clippy --release --features python -- -D warnings
	$(BUILD_ENV) cargo clippy --release --all-targets -- -D warnings
	$(VENV)/bin/ruff check python tests bench
	$(VENV)/bin/ruff format --check python tests bench
	$(BUILD_ENV) LD_LIBRARY_PATH=$(TORCH_LIB) $(PY) -m mypy.stubtest voxlm._core

clean-build:
	rm -f python/voxlm/_core*.so
	cargo clean

clean: clean-build
	rm -rf $(VENV)
