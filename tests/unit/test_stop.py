"""«Detener y guardar»: a stop request file in the run folder ends training at a step boundary with every artifact
and a checkpoint (exit code 0), and --resume continues to the planned total."""
import json
import time

import pytest
import yaml
from safetensors.torch import load_file

from afinar.runs import ADAPTER_WEIGHTS, RUN_INFO, STOP_REQUEST
from afinar.training import checkpoint_dirs, read_metrics
from tests.unit.test_kill import cli, recipe_file
from tests.unit.test_train_merge import run

MANY = "100000"  # far more steps than the test waits for: only the stop request ends these runs


def stop_recipe(folder, tiny_base, output):
    """test_kill's recipe without its checkpoint every step: the only checkpoint is the one the stop writes."""
    path = recipe_file(folder, tiny_base, output)
    recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    recipe["train"].update(save_every=100000, eval_every=100000)
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def logged_steps(run_dir) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir) if "loss" in r]


def wait_for_step(process, run_dir, step: int, timeout=120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if max(logged_steps(run_dir), default=0) >= step:
            return
        assert process.poll() is None, f"training ended before step {step}: {process.stderr.read()[-2000:]}"
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"no step {step} logged in {timeout} s")


def stop_and_wait(process, run_dir) -> dict:
    (run_dir / STOP_REQUEST).touch()
    assert process.wait(timeout=120) == 0, process.stderr.read()[-2000:]
    return json.loads((run_dir / RUN_INFO).read_text())


def checkpoint_step(run_dir) -> int:
    return json.loads((checkpoint_dirs(run_dir)[-1] / "trainer_state.json").read_text())["step"]


def test_stop_request_saves_everything_and_resume_continues(tmp_path, tiny_base):
    run_dir = tmp_path / "detenida"
    recipe = stop_recipe(tmp_path, tiny_base, run_dir)
    first = cli(str(recipe), "--max-steps", MANY)  # the command as a user (or the studio) runs it: supervised
    wait_for_step(first, run_dir, 3)
    info = stop_and_wait(first, run_dir)
    assert info["stopped"] is True and info["planned_steps"] == int(MANY)
    stopped_at = info["steps"]
    assert 3 <= stopped_at < int(MANY)
    assert checkpoint_step(run_dir) == stopped_at
    for name in (ADAPTER_WEIGHTS, "adapter_config.json", "tokenizer.json", "recipe.yaml", "metrics.jsonl",
                 "data_fingerprint.json", "loss.png"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / STOP_REQUEST).exists()
    assert logged_steps(run_dir)[-1] == stopped_at
    last = read_metrics(run_dir)[-1]
    assert last["step"] == stopped_at and "eval_loss" in last  # the held-out loss where it stopped

    second = cli(str(recipe), "--max-steps", MANY, "--resume")
    wait_for_step(second, run_dir, stopped_at + 2)
    resumed = stop_and_wait(second, run_dir)
    assert resumed["stopped"] is True and resumed["planned_steps"] == int(MANY)
    assert resumed["steps"] > stopped_at + 1 and checkpoint_step(run_dir) == resumed["steps"]
    assert not (run_dir / STOP_REQUEST).exists()
    steps = logged_steps(run_dir)
    assert steps == list(range(1, resumed["steps"] + 1))  # strictly increasing, none repeated or missing
    evals = [r["step"] for r in read_metrics(run_dir) if "eval_loss" in r]
    assert evals == [0, stopped_at, resumed["steps"]]


def test_a_stale_stop_request_does_not_stop_the_next_run(tmp_path, tiny_base, monkeypatch):
    monkeypatch.setenv("AFINAR_SUPERVISED", "1")  # the training in this very process (what the supervisor's child runs)
    run_dir = tmp_path / "restos"
    recipe = stop_recipe(tmp_path, tiny_base, run_dir)
    run_dir.mkdir()
    (run_dir / STOP_REQUEST).touch()  # left over: the folder still counts as empty
    new = cli(str(recipe), "--max-steps", "3")
    assert new.wait(timeout=300) == 0, new.stderr.read()[-2000:]
    info = json.loads((run_dir / RUN_INFO).read_text())
    assert info["steps"] == info["planned_steps"] == 3 and info["stopped"] is False
    assert not (run_dir / STOP_REQUEST).exists()

    (run_dir / STOP_REQUEST).touch()
    more = cli(str(recipe), "--max-steps", "5", "--resume")
    assert more.wait(timeout=300) == 0, more.stderr.read()[-2000:]
    info = json.loads((run_dir / RUN_INFO).read_text())
    assert info["steps"] == 5 and info["stopped"] is False
    assert logged_steps(run_dir) == [1, 2, 3, 4, 5]


def test_stop_then_resume_gives_the_uninterrupted_run(tiny_recipe, tmp_path, monkeypatch, capsys):
    """The stop request as the interruption of test_train_merge's resume test: same losses, same final adapter."""
    import afinar.train_stages as train_module

    tiny_recipe["train"].update(max_steps=10, eval_every=5)
    full_dir = run(tiny_recipe)
    stopped = dict(tiny_recipe, output_dir=str(tmp_path / "detenida"))
    stop_file = tmp_path / "detenida" / STOP_REQUEST
    real_append = train_module.append_metrics

    def request_stop_after_step_4(run_dir, record):
        real_append(run_dir, record)
        if record.get("step") == 4 and "loss" in record:
            stop_file.touch()

    monkeypatch.setattr(train_module, "append_metrics", request_stop_after_step_4)
    run_dir = run(stopped)
    monkeypatch.setattr(train_module, "append_metrics", real_append)
    info = json.loads((run_dir / RUN_INFO).read_text())
    assert info["stopped"] is True and info["steps"] == 4 and info["planned_steps"] == 10
    assert "Detenido a petición en el paso 4 de 10" in capsys.readouterr().out
    assert not stop_file.exists()

    run(stopped, resume=True)
    info = json.loads((run_dir / RUN_INFO).read_text())
    assert info["stopped"] is False and info["steps"] == 10
    full, resumed = read_metrics(full_dir), read_metrics(run_dir)
    assert logged_steps(run_dir) == list(range(1, 11))
    assert [r["loss"] for r in resumed if "loss" in r] == pytest.approx([r["loss"] for r in full if "loss" in r], rel=1e-5)
    assert resumed[-1]["eval_loss"] == pytest.approx(full[-1]["eval_loss"], rel=1e-5)
    a, b = load_file(str(full_dir / ADAPTER_WEIGHTS)), load_file(str(run_dir / ADAPTER_WEIGHTS))
    assert a.keys() == b.keys()
    for key in a:
        assert b[key].numpy() == pytest.approx(a[key].numpy(), rel=1e-5, abs=1e-7), key
