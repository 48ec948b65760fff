"""`afinar export` (safetensors + zip) on a tiny trained run."""
import json
import zipfile
from collections import namedtuple

import pytest

from afinar.cli import main
from afinar.errors import AfinarError
from afinar.export.run import export
from tests.conftest import train_tiny_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_base):
    return train_tiny_run(
        tmp_path_factory.mktemp("export"), tiny_base, "tiny-export", 16, {"max_steps": 2, "seed": 5},
        generation={"temperature": 0.6, "top_p": 0.9, "max_new_tokens": 64},
    )


def test_safetensors_and_zip(run_dir, tokenizer, capsys):
    written = export(run_dir, ["safetensors", "zip"], dtype="fp32", progress=False)
    merged, archive = written["safetensors"], written["zip"]
    gen = json.loads((merged / "generation_config.json").read_text(encoding="utf-8"))
    assert gen["eos_token_id"] == tokenizer.eos_token_id and gen["do_sample"] and gen["temperature"] == 0.6
    assert json.loads((merged / "afinar_merge.json").read_text(encoding="utf-8"))["ok"]
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
    assert {"model.safetensors", "tokenizer.json", "generation_config.json", "afinar_manifest.json"} <= names
    printed = capsys.readouterr().out
    assert "recargado con transformers" in printed and "verificado" in printed
    assert main(["export", "--verificar", str(archive), "--sin-progreso"]) == 0
    assert "coinciden" in capsys.readouterr().out
    assert main(["export", str(run_dir), "--formato", "zip", "--dtype", "fp32"]) == 2  # exists, no --sobrescribir
    assert "X003" in capsys.readouterr().err


def test_bad_inputs(run_dir, tmp_path, capsys, monkeypatch):
    merged = export(run_dir, ["safetensors"], output=tmp_path / "e", dtype="fp32", progress=False)["safetensors"]
    with pytest.raises(AfinarError) as info:
        export(merged, ["safetensors"], progress=False)
    assert info.value.code == "X002"
    assert main(["export", str(run_dir)]) == 2 and "X004" in capsys.readouterr().err
    # not enough disk: said before writing, nothing left behind
    from afinar import merge as merge_module

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(merge_module.shutil, "disk_usage", lambda path: usage(10, 10, 1000))
    with pytest.raises(AfinarError) as info:
        export(run_dir, ["safetensors"], output=tmp_path / "lleno", dtype="fp32", progress=False)
    assert info.value.code == "G005" and "MB" in info.value.message
    assert not (tmp_path / "lleno" / "safetensors-fp32").exists()


def test_every_format_from_the_cli(smol_export, capsys):
    summary = json.loads((smol_export / "afinar_export.json").read_text(encoding="utf-8"))
    exports = summary["exports"]
    assert set(exports) == {"safetensors", "zip", "gguf-f16", "gguf-q8_0", "ollama", "onnx"}
    for item in exports.values():
        assert (smol_export / item["ruta"]).exists() and item["bytes"] > 0
    assert exports["gguf-f16"]["comprobado"]["primeros_tokens_iguales"] == 16
    assert exports["onnx"]["comprobado"]["fp32"]["max_abs"] <= 1e-3
    assert exports["ollama"]["comprobado"]["from"] == "mini-q8_0.gguf"
    assert (smol_export / "gguf" / "Modelfile").read_text(encoding="utf-8").startswith("# Generado por afinar")
    assert summary["ok"] is True and summary["no_escritos"] == {}
    # Nothing half-done or scratch left beside the exports.
    assert not [p for p in smol_export.rglob(".*")]


def test_every_tokenizer_written_carries_the_template_in_tokenizer_config(smol_run, smol_export):
    """Transformers.js, Ollama's safetensors import and older llama.cpp read the template only from there."""
    from afinar.models import template_in_config

    exports = json.loads((smol_export / "afinar_export.json").read_text(encoding="utf-8"))["exports"]
    folders = [smol_run, smol_export / exports["safetensors"]["ruta"], smol_export / exports["onnx"]["ruta"]]
    for folder in folders:
        assert template_in_config(folder), folder
    with zipfile.ZipFile(smol_export / exports["zip"]["ruta"]) as z:
        config = json.loads(z.read("tokenizer_config.json"))
        assert config["chat_template"] == z.read("chat_template.jinja").decode("utf-8")


def test_a_failed_format_does_not_discard_the_others(run_dir, tmp_path, capsys):
    """`todo` on a run whose tokenizer llama.cpp cannot convert: GGUF fails (and Ollama, which needs it), the rest is
    written and checked, the summary says what is missing and why, and the command exits ≠ 0."""
    out = tmp_path / "todo"
    assert main(["export", str(run_dir), "--formato", "todo", "--dtype", "fp32", "--output", str(out),
                 "--sin-progreso"]) == 2
    err = capsys.readouterr().err
    assert "X005" in err and "gguf (X023)" in err and "ollama (X005)" in err
    summary = json.loads((out / "afinar_export.json").read_text(encoding="utf-8"))
    assert summary["ok"] is False and set(summary["exports"]) == {"safetensors", "zip", "onnx"}
    assert summary["no_escritos"]["gguf"]["codigo"] == "X023"
    assert "depende de gguf" in summary["no_escritos"]["ollama"]["motivo"]
    for item in summary["exports"].values():
        assert (out / item["ruta"]).exists()
    assert (out / "onnx" / "onnx" / "model.onnx").is_file()
    assert not list(out.rglob("*.gguf")) and not [p for p in out.rglob(".*")]


def test_a_failed_int8_keeps_the_onnx_folder_and_fails_the_command(run_dir, tmp_path, monkeypatch, capsys):
    from afinar.export import onnx as onnx_export

    def refuse(path, ref):
        raise AfinarError("X034", "el ONNX INT8 no empieza la respuesta con el mismo token que torch.", where=str(path))

    monkeypatch.setattr(onnx_export, "check_generation", refuse)
    out = tmp_path / "int8"
    assert main(["export", str(run_dir), "--formato", "onnx", "--output", str(out), "--sin-progreso"]) == 2
    assert "X034" in capsys.readouterr().err
    summary = json.loads((out / "afinar_export.json").read_text(encoding="utf-8"))
    assert summary["exports"]["onnx"]["comprobado"]["int8"]["escrito"] is False
    assert summary["no_escritos"]["onnx-int8"]["codigo"] == "X034"
    assert (out / "onnx" / "onnx" / "model.onnx").is_file() and not (out / "onnx" / "onnx" / "model_quantized.onnx").exists()


def test_second_export_refuses_to_overwrite(smol_run, smol_export, capsys):
    assert main(["export", str(smol_run), "--formato", "gguf", "--sin-progreso"]) == 2
    err = capsys.readouterr().err
    assert "X003" in err and "mini-f16.gguf" in err


def test_gguf_refusals_leave_nothing(run_dir, tmp_path, monkeypatch):
    # The tiny test tokenizer is one llama.cpp cannot reproduce: refused, no GGUF, no scratch merge left.
    with pytest.raises(AfinarError) as info:
        export(run_dir, ["gguf"], output=tmp_path / "g", progress=False)
    assert info.value.code == "X023"
    assert not [p for p in (tmp_path / "g").rglob("*") if p.suffix in (".gguf", ".tmp") or p.name.startswith(".")]


def test_no_room_for_gguf_is_said_before_converting(smol_tokenizer_base, tmp_path, monkeypatch):
    from afinar import atomic
    from afinar.export.gguf import export_gguf
    from afinar.export.reference import greedy_reference

    reference = greedy_reference(smol_tokenizer_base, None, 1.0, 4)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: usage(10, 10, 1000))
    with pytest.raises(AfinarError) as info:
        export_gguf(smol_tokenizer_base, tmp_path / "g", "x", ["q8_0"], reference, progress=False)
    assert info.value.code == "X012" and "MB" in info.value.message
    assert list((tmp_path / "g").iterdir()) == []


def test_a_run_without_tokenizer_is_refused_before_writing(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "sin-tokenizador"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("tokenizer*", "chat_template.jinja", "special_tokens*", "export"))
    assert main(["export", str(copy), "--formato", "safetensors", "onnx", "--sin-progreso"]) == 2
    err = capsys.readouterr().err
    assert "M008" in err and "tokenizador" in err and "Traceback" not in err
    assert not (copy / "export").exists()
