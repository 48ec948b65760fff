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
    assert "G003" in capsys.readouterr().err  # the merged folder is there already


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
