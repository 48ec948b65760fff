import os

import pytest

from afinar import hardware
from afinar.atomic import atomic_dir, atomic_write_text
from afinar.errors import AfinarError
from afinar.models import load_tokenizer, resolve_base


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "modelo"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "pesos.safetensors").write_bytes(b"medio")
        raise RuntimeError("corte de luz")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_only_when_allowed(tmp_path):
    target = tmp_path / "modelo"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(FileExistsError), atomic_dir(target) as tmp:
        (tmp / "a").write_text("2")
    assert (target / "a").read_text() == "1"
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "a").write_text("3")
    assert (target / "a").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["modelo"]


def test_atomic_write_text(tmp_path):
    path = atomic_write_text(tmp_path / "sub" / "x.json", "{}")
    assert path.read_text() == "{}" and [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_qlora_on_cpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(AfinarError) as err:
        hardware.detect("auto", "4bit")
    assert err.value.code == "H001" and "GPU" in err.value.message
    with pytest.raises(AfinarError) as err:
        hardware.detect("fp16")
    assert err.value.code == "H003"


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_cpu_precision_follows_the_instruction_set(monkeypatch, native, expected):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda: native)
    chosen = hardware.detect("auto")
    assert (chosen.device, chosen.precision) == ("cpu", expected)
    assert chosen.reason  # the user is told why
    assert hardware.detect("fp32").precision == "fp32"


def test_base_resolution_errors(tmp_path):
    with pytest.raises(AfinarError) as err:
        resolve_base(str(tmp_path / "no-existe.gguf"))
    assert err.value.code == "M002"
    (tmp_path / "vacia").mkdir()
    with pytest.raises(AfinarError) as err:
        resolve_base(str(tmp_path / "vacia"))
    assert err.value.code == "M002" and "config.json" in err.value.message
    with pytest.raises(AfinarError) as err:
        resolve_base("esto no es un modelo")
    assert err.value.code == "M002"


def test_local_folder_and_hub_id_pass_through(tiny_base):
    assert resolve_base(str(tiny_base)) == str(tiny_base)
    assert resolve_base("Qwen/Qwen2.5-1.5B-Instruct") == "Qwen/Qwen2.5-1.5B-Instruct"


def test_offline_hub_id_gives_a_spanish_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AfinarError) as err:
        load_tokenizer("afinar-pruebas/modelo-que-no-existe")
    assert err.value.code == "M003" and "conexión" in err.value.message


def test_artifacts_get_the_usual_permissions_not_mkstemps_private_ones(tmp_path):
    umask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_dir(tmp_path / "carpeta") as tmp:
            (tmp / "x").write_text("x", encoding="utf-8")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "carpeta").stat().st_mode & 0o777 == 0o755
