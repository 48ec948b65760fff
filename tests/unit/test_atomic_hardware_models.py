import os
import sys

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


def test_qlora_on_cpu_without_bitsandbytes_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # QLoRA on a CPU works with it (test_qlora_cpu.py)
    with pytest.raises(AfinarError) as err:
        hardware.detect("auto", "4bit")
    assert err.value.code == "H004" and ".[qlora]\"" in err.value.hint
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


def test_torch_kept_to_avx2_kernels_means_no_native_bf16(monkeypatch):
    import torch

    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):  # a run emulating AVX2 (bench --sin-bf16) sets them
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)  # a CPU that has it …
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert hardware.cpu_supports_bf16()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")  # … ATEN_CPU_CAPABILITY=avx2
    assert not hardware.cpu_supports_bf16()


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


def test_saved_tokenizer_carries_the_template_in_both_files(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    from afinar.models import save_tokenizer, stored_chat_templates

    save_tokenizer(tokenizer, tmp_path)
    stored = stored_chat_templates(tmp_path)
    assert stored["jinja"] == stored["config"] == tokenizer.chat_template
    messages = [{"role": "user", "content": "Hola"}]
    assert AutoTokenizer.from_pretrained(tmp_path).apply_chat_template(messages, tokenize=False) == \
        tokenizer.apply_chat_template(messages, tokenize=False)
    # Only the config (an older transformers, Transformers.js): the .jinja file is written from it.
    (tmp_path / "chat_template.jinja").unlink()
    from afinar.models import embed_chat_template

    embed_chat_template(tmp_path)
    assert stored_chat_templates(tmp_path) == stored


def test_named_templates_are_stored_as_the_config_list(tokenizer, tmp_path):
    import copy
    import json

    from afinar.models import save_tokenizer

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = {"default": tokenizer.chat_template, "tool_use": "{{ messages[0]['content'] }}"}
    save_tokenizer(tok, tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == [{"name": "default", "template": tokenizer.chat_template},
                                       {"name": "tool_use", "template": "{{ messages[0]['content'] }}"}]


def test_folder_without_tokenizer_or_template_is_a_clear_error(tokenizer, tmp_path):
    import json

    from afinar.models import embed_chat_template

    with pytest.raises(AfinarError) as info:
        embed_chat_template(tmp_path)
    assert info.value.code == "M008" and "tokenizer_config.json" in info.value.message
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink()
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(AfinarError) as info:
        embed_chat_template(tmp_path)
    assert info.value.code == "M009" and "plantilla" in info.value.message
