import argparse
import inspect
import json
import subprocess
import sys
import time

import pytest

from afinar.cli import COMMANDS, GROUPS, build_parser, command_function, main, parse_args

# Command functions that take `**options` pass them on to this function: its parameters are theirs too.
PASSES_ON = {"eval": "afinar.evaluate.run:evaluate_run", "export": "afinar.export.run:export",
             "import smc": "afinar.data.smc:import_smc", "train": "afinar.train:train", "plan": "afinar.plan:plan",
             "borradores": "afinar.drafts.run:drafts", "demo": "afinar.demo:demo"}


def _imported_after(code: str) -> list[str]:
    """The afinar modules and heavy libraries a fresh interpreter has imported after running `code`."""
    probe = (f"import sys\ntry:\n    {code}\nexcept SystemExit:\n    pass\n"
             "import json; print(json.dumps(sorted(m for m in sys.modules if m.startswith('afinar') or m in "
             "('torch', 'transformers', 'peft', 'fastapi'))), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(done.stderr.strip().splitlines()[-1])


def test_help_does_not_import_heavy_libraries():
    code = "import sys; from afinar.cli import build_parser; build_parser(); print(sorted(m for m in ('torch','transformers','peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_imports_no_command_module_and_a_command_s_help_only_its_own():
    command_modules = {module for module, _, _ in COMMANDS.values()}
    imported = _imported_after("from afinar.cli import main; main(['--help'])")
    assert imported and not set(imported) & command_modules, imported  # `afinar --help`: the table, no module
    imported = _imported_after("from afinar.cli import main; main(['import', '--help'])")
    assert not set(imported) & command_modules, imported
    for name in ("validate", "import smc", "merge"):  # its module, none of the others', nothing heavy
        imported = _imported_after(f"from afinar.cli import main; main({name.split()!r} + ['--help'])")
        assert COMMANDS[name][0] in imported
        assert not set(imported) & {"torch", "transformers", "peft", "fastapi"}, name
        assert not set(imported) & {"afinar.evaluate.run", "afinar.export.run", "afinar.inference.server",
                                    "afinar.studio.launch", "afinar.train"}, name


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _options(name: str) -> list[argparse.Action]:
    """The actions of command `name`'s own parser, as `afinar NAME` builds it."""
    parser = build_parser(name)
    for word in name.split():
        parser = _subcommands(parser)[word]
    return [a for a in parser._actions if a.dest != "help"]


def _parameters(function) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(function).parameters)


def test_every_command_is_mapped():
    """COMMANDS is every subcommand, and each command's options set parameters of its function: a flag without a
    parameter, or a renamed parameter, fails here. Parameters without a default are required options."""
    import importlib

    leaves = set()
    for name, sub in _subcommands(build_parser(*COMMANDS)).items():
        leaves |= {f"{name} {source}" for source in _subcommands(sub)} if name in GROUPS else {name}
    assert leaves == set(COMMANDS)
    assert {"validate", "inspect", "train", "plan", "eval", "merge", "export", "push", "import smc", "chat", "serve",
            "demo", "estudio", "convertir", "borradores"} <= leaves
    for name in COMMANDS:
        function, _ = command_function(name)
        parameters = _parameters(function)
        passes_on = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
        assert passes_on == (name in PASSES_ON), name
        if passes_on:
            module, target = PASSES_ON[name].split(":")
            parameters = {**_parameters(getattr(importlib.import_module(module), target)), **parameters}
        options = _options(name)
        assert options, name
        assert {a.dest for a in options} <= set(parameters), (name, {a.dest for a in options} - set(parameters))
        required = {n for n, p in parameters.items() if p.default is p.empty
                    and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n != "argv"}
        always = {a.dest for a in options if a.required}
        assert required <= always, (name, required - always)
    assert vars(parse_args(["estudio", "--no-abrir", "--puerto", "7999"])) == {
        "command": "estudio", "open_browser": False, "port": 7999}


def test_options_leave_the_defaults_to_the_function():
    """No default is written twice: an option not given is not passed (argparse.SUPPRESS), so the function's own
    default applies. Required options and positionals are always given."""
    for name in COMMANDS:
        for action in _options(name):
            assert action.required or action.default is argparse.SUPPRESS, (name, action.option_strings, action.default)


def test_options_become_the_function_s_arguments(monkeypatch):
    import afinar.inference.server as server
    import afinar.plan as plan_module

    seen = {}
    monkeypatch.setattr(plan_module, "plan", lambda **kw: seen.update(kw))
    assert main(["plan", "r.yaml", "--device", "t4", "--no-calibrar", "--max-length", "64",
                 "--sin-gradient-checkpointing"]) == 0
    assert seen == {"recipe": "r.yaml", "device": "t4", "calibrate": False,
                    "overrides": {"data.max_length": 64, "train.gradient_checkpointing": False}}
    seen.clear()
    monkeypatch.setattr(server, "serve", lambda **kw: seen.update(kw))
    assert main(["serve", "runs/x", "--max-body-kb", "3", "--timeout", "6", "--motor", "llama.cpp"]) == 0
    assert seen == {"sources": ["runs/x"], "engine": "llama.cpp",
                    "limits": server.Limits(max_body_bytes=3 * 1024, timeout_s=6.0)}


def test_a_malformed_option_value_is_a_spanish_error(capsys):
    assert main(["validate", "datos.csv", "--columnas", "nada"]) == 2  # parse_columnas, as the option's type
    assert "D028" in capsys.readouterr().err
    assert main(["export"]) == 2
    assert "X004" in capsys.readouterr().err


def test_estudio_on_a_busy_port_says_so_in_spanish(tmp_path, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["estudio", "--puerto", str(port), "--no-abrir", "--carpeta", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "E050" in err and "ocupado" in err and f"--puerto {port + 1}" in err
    assert not (tmp_path / "e").exists()  # refused before making anything


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


def test_estudio_prints_its_address_and_serves_only_with_its_token(tmp_path):
    import os
    import socket
    import urllib.error
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "afinar", "estudio", "--no-abrir", "--puerto", str(port),
                                "--carpeta", str(tmp_path / "estudio")], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        first = process.stdout.readline()
        assert first.startswith(f"afinar estudio: http://127.0.0.1:{port}/?token="), first
        url = first.split(": ", 1)[1].strip()
        assert len(url.split("token=")[1]) >= 32  # a fresh random token, not a fixed one
        for _ in range(100):  # the address is printed just before uvicorn listens
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    assert answer.status == 200 and "afinar estudio" in answer.read().decode()
                break
            except urllib.error.URLError as exc:
                if isinstance(exc, urllib.error.HTTPError):
                    raise
                time.sleep(0.1)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
        assert refused.value.code == 401
        assert (tmp_path / "estudio" / "datos").is_dir() and (tmp_path / "estudio" / "ejecuciones").is_dir()
    finally:
        process.terminate()
        process.wait(10)


def test_estudio_token_belongs_to_the_folder_and_a_second_launch_opens_the_running_one(tmp_path):
    """The way back in without a terminal: the same folder keeps its token (0600 file) across launches, so the
    browser's cookie keeps working; launching again while it runs takes the person to it instead of failing."""
    import os
    import socket
    import stat
    import urllib.request

    from afinar.studio.launch import TOKEN_FILE, folder_token

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = tmp_path / "estudio"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "afinar", "estudio", "--no-abrir", "--puerto", str(port), "--carpeta", str(folder)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    try:
        url = process.stdout.readline().split(": ", 1)[1].strip()
        token = url.split("token=")[1]
        assert (folder / TOKEN_FILE).read_text().strip() == token
        assert stat.S_IMODE((folder / TOKEN_FILE).stat().st_mode) == 0o600
        for _ in range(100):  # until it listens
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                time.sleep(0.1)
        again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
        assert again.returncode == 0, again.stderr
        assert again.stdout.startswith(f"afinar estudio ya está abierto: http://127.0.0.1:{port}/?token={token}")
    finally:
        process.terminate()
        process.wait(10)
    assert folder_token(folder) == token  # a later launch on the folder reuses it
    assert folder_token(folder, new=True) != token  # --token-nuevo: every old link and cookie stops working


def test_estudio_desktop_shortcut_runs_the_studio_of_that_folder(tmp_path):
    from afinar.studio.launch import shortcut

    for platform, name in (("linux", "afinar-estudio.desktop"), ("win32", "afinar estudio.cmd"),
                           ("darwin", "afinar estudio.command")):
        home = tmp_path / platform
        (home / "Desktop").mkdir(parents=True)
        path = shortcut(tmp_path / "mi estudio", 7861, home=home, platform=platform)
        assert path == home / "Desktop" / name
        text = path.read_text()
        assert sys.executable in text and "estudio" in text and "--puerto" in text and "7861" in text
        assert str(tmp_path / "mi estudio") in text
    assert "Exec=" in (tmp_path / "linux" / "Desktop" / "afinar-estudio.desktop").read_text()


def test_export_offers_every_gguf_quantisation_the_exporter_knows():
    from afinar.export.gguf import QUANTS

    export = _subcommands(build_parser("export"))["export"]
    option = next(a for a in export._actions if "--cuantizacion" in a.option_strings)
    assert tuple(option.choices) == QUANTS
