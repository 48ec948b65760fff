"""`afinar push`: what would go to the Hub, the model card, and a token that never shows."""
import pytest

from afinar.cli import main
from afinar.errors import AfinarError
from afinar.export import hub

SECRET = "hf_PruebaSecretaNoMostrar0123456789"


def _all_text(folder):
    for path in folder.rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000:
            yield path, path.read_bytes()


def test_dry_run_lists_the_repo_layout_and_never_shows_the_token(smol_export, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    assert main(["push", str(smol_export), "--repo", "ana/mini-enfermeria", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    in_repo = {line.split()[0] for line in out.splitlines() if line.startswith("  ")}
    assert {"model.safetensors", "config.json", "tokenizer.json", "generation_config.json", "onnx/model.onnx",
            "onnx/model_quantized.onnx", "gguf/mini-f16.gguf", "gguf/mini-q8_0.gguf", "gguf/Modelfile",
            "README.md"} <= in_repo
    assert not {"afinar_merge.json", "afinar_manifest.json"} & in_repo and not any(n.endswith(".zip") for n in in_repo)
    assert "no se ha subido nada" in out
    assert SECRET not in out + err
    for path, data in _all_text(smol_export.parent):
        assert SECRET.encode() not in data, path
    card = (smol_export / "README_hub.md").read_text(encoding="utf-8")
    for needle in ("## Receta", "## Datos", "## Archivos y cómo se comprobaron", "## Uso previsto y límites", "datos.jsonl",
                   "gguf-q8_0"):
        assert needle in card
    # The card describes data by file name, size and hash: no example text (it may be patient data).
    assert "quemadura" not in card


def test_run_without_export_goes_up_as_an_adapter(smol_run, tmp_path):
    import shutil

    run_dir = shutil.copytree(smol_run, tmp_path / "run", ignore=shutil.ignore_patterns("export"))
    uploads, _ = hub.plan(run_dir)
    names = {u.in_repo for u in uploads}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "recipe.yaml"} <= names


def test_bad_repo_missing_token_and_masked_failures(smol_export, monkeypatch, tmp_path):
    with pytest.raises(AfinarError) as info:
        hub.push(smol_export, "sin-barra", dry_run=True)
    assert info.value.code == "X050"
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(AfinarError) as info:
        hub.push(smol_export, "ana/mini", progress=False)
    assert info.value.code == "X051" and "HF_TOKEN" in info.value.hint

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: SECRET)

    def refuse(self, *args, **kwargs):
        raise RuntimeError(f"401 Unauthorized: token {SECRET} inválido; otro hf_abcdefghijklmnop")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", refuse)
    with pytest.raises(AfinarError) as info:
        hub.push(smol_export, "ana/mini", progress=False)
    assert info.value.code == "X052" and "401" in info.value.message
    assert SECRET not in str(info.value) and "hf_abcdefghijklmnop" not in str(info.value)
