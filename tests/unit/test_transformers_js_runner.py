"""The Transformers.js harness says why it cannot run instead of failing with a traceback."""
import shutil

import pytest

from tests.transformers_js import runner


def test_npm_without_its_registry_is_a_clear_skip(tmp_path, monkeypatch):
    if shutil.which("npm") is None:
        pytest.skip("falta 'npm' (paquete de Debian 'npm')")
    monkeypatch.setenv("AFINAR_NODE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")  # nothing listens on the discard port
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))  # not the machine's warm cache
    with pytest.raises(pytest.skip.Exception) as info:
        runner.install()
    assert "npm no pudo instalar @huggingface/transformers" in str(info.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing half-installed


def test_missing_node_names_the_package(monkeypatch):
    monkeypatch.setattr(runner.shutil, "which", lambda tool: None)
    with pytest.raises(pytest.skip.Exception) as info:
        runner.install()
    assert "'node'" in str(info.value) and "nodejs" in str(info.value)
