import subprocess
import sys

from afinar.cli import build_parser, main


def test_help_does_not_import_heavy_libraries():
    code = "import sys; from afinar.cli import build_parser; build_parser(); print(sorted(m for m in ('torch','transformers','peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_command_is_mapped():
    parser = build_parser()
    for command in ("validate", "train", "plan", "merge", "chat", "demo"):
        args = parser.parse_args([command, "x"] if command != "demo" else [command])
        assert callable(args.func)


def test_user_errors_exit_2_in_spanish(tmp_path, capsys):
    assert main(["train", str(tmp_path / "no-existe.yaml")]) == 2
    err = capsys.readouterr().err
    assert "R004" in err and "no existe el archivo de receta" in err
    assert "Traceback" not in err


def test_validate_jsonl_exit_code(tmp_path, capsys):
    good = tmp_path / "ok.jsonl"
    good.write_text('{"instruction": "¿Qué hago?", "output": "Llama al 112."}\n', encoding="utf-8")
    bad = tmp_path / "mal.jsonl"
    bad.write_text('{"instruction": "¿Qué hago?"}\n', encoding="utf-8")
    assert main(["validate", str(good)]) == 0
    assert main(["validate", str(bad)]) == 1
    assert "mal.jsonl:1: D004" in capsys.readouterr().out


def test_validate_recipe_offline_hub_base_still_checks_the_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "d.jsonl").write_text('{"instruction": "¿Qué hago?", "output": "Llama al 112."}\n{"instruction": 1}\n', encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nmodel:\n  base: afinar-pruebas/no-existe\ndata:\n  sources:\n    - path: d.jsonl\n", encoding="utf-8")
    assert main(["validate", str(recipe)]) == 1
    out = capsys.readouterr().out
    assert "d.jsonl:2: D006" in out
    (tmp_path / "d.jsonl").write_text('{"instruction": "¿Qué hago?", "output": "Llama al 112."}\n', encoding="utf-8")
    assert main(["validate", str(recipe)]) == 0
    assert "aviso: sin tokenizador" in capsys.readouterr().out
