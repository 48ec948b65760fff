"""`afinar plan` (issue 15): the traced step against what PyTorch really keeps, the step-time fit, the verdict, the
target, the plan itself (JSON, a table GPU, calibrated), and training's use of it: refusing a run that does not fit,
an out-of-memory turned into T016, step times in the metrics, and a SIGKILL of the supervised child turned into
T017."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from afinar.cli import main
from afinar.config import recipe_from_dict
from afinar.errors import AfinarError
from afinar.hardware import Hardware
from afinar.planning import estimate as estimate_module
from afinar.planning.memory import GIB, MemoryEstimate, Part
from afinar.planning.timing import fit_step_time
from afinar.training import checkpoint_dirs, read_metrics

ROOT = Path(__file__).resolve().parents[2]
CPU = Hardware("cpu", "fp32", "test")


@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    """A fresh AFINAR_HOME: the step traces are really computed (no cached ones) and the user's cache is untouched."""
    monkeypatch.setenv("AFINAR_HOME", str(tmp_path / "home"))


def recipe_file(tiny_recipe: dict, folder: Path, **train) -> Path:
    tiny_recipe["train"].update(train)
    path = folder / "receta.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe, allow_unicode=True), encoding="utf-8")
    return path


# --- 1. the traced step against the real one --------------------------------------------------------------------


def real_forward(model, head, rows, width, per_row, labelled, count=True):
    """trace_step's micro-batch on real tensors: (bytes of the storages saved for the backward or still held by the
    step's outputs, excluding weights and buffers, when `count`; the loss; the final hidden states, which
    trace_step also keeps alive through the backward)."""
    import contextlib

    from afinar.attention import packed_attention_active
    from afinar.training import (
        CE_CHUNK,
        _frozen_head_cross_entropy,
        _head_returns_hidden,
    )

    inputs = {"input_ids": torch.randint(0, 300, (rows, width))}
    if packed_attention_active(model):
        size = width // per_row
        bounds = [(start, min(start + size, width), 0) for start in range(0, width, size)]
        inputs["position_ids"] = torch.cat([torch.arange(e - s) for s, e, _ in bounds]).repeat(rows, 1)
        inputs["afinar_segments"] = [bounds] * rows
    known = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in known:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    hooks = torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor) if count else contextlib.nullcontext()
    with hooks:
        with _head_returns_hidden(head):
            hidden = model(**inputs, use_cache=False).logits
        # as token_loss_sum: the labelled rows copied out, the full output left to be freed
        hidden = hidden.reshape(-1, hidden.shape[-1])[torch.arange(labelled)]
        loss = _frozen_head_cross_entropy(hidden, torch.randint(0, 300, (labelled,)), head.weight, CE_CHUNK)
    keep(loss)
    return sum(saved.values()), loss, None


def test_traced_step_matches_what_torch_really_keeps(tiny_recipe, tiny_base):
    from transformers import AutoConfig

    from afinar.models import load_model
    from afinar.planning.trace import _peak_tracker, empty_training_model, trace_step
    from afinar.training import output_head, prepare_for_training

    config = AutoConfig.from_pretrained(tiny_base)
    rows, width, per_row, labelled = 4, 128, 2, 400
    traces = {}
    for gc in (False, True):
        tiny_recipe["train"]["gradient_checkpointing"] = gc
        recipe = recipe_from_dict(tiny_recipe)
        fake, empty, empty_head = empty_training_model(config, recipe, CPU)
        traces[gc] = trace = trace_step(fake, empty, empty_head, CPU, rows, width, per_row, labelled)
        assert trace.tokens == rows * width and trace.peak >= trace.saved > 0
        model = prepare_for_training(load_model(str(tiny_base)), recipe, CPU)
        model.train()
        head = output_head(model)
        assert head is not None
        if not gc:  # checkpointing installs its own saved-tensor hooks: the real count is only possible without it
            real_saved, loss, _ = real_forward(model, head, rows, width, per_row, labelled)
            assert trace.saved == pytest.approx(real_saved, rel=0.10), (trace, real_saved)
            loss.backward()
            grads = sum(p.grad.nbytes for p in model.parameters() if p.requires_grad)
            assert 0 < grads <= trace.after
        # Fake tensors allocate as real ones: the same tracker on the real model gives the same peak.
        tracker = _peak_tracker()([*model.parameters(), *model.buffers()])
        with tracker:
            _, loss, _hidden = real_forward(model, head, rows, width, per_row, labelled, count=False)
            loss.backward()
        assert tracker.peak == pytest.approx(trace.peak, rel=0.02)
    assert traces[True].peak < traces[False].peak
    assert traces[True].saved < traces[False].saved / 2


# --- 2. step time, 3. verdict, 4. target ------------------------------------------------------------------------


def test_fit_recovers_a_line_and_falls_back_to_the_origin():
    fit = fit_step_time([(100, 0.5 + 0.01 * 100), (300, 0.5 + 0.01 * 300), (500, 0.5 + 0.01 * 500)], optimizer=0.2)
    assert fit.fixed == pytest.approx(0.5) and fit.per_token == pytest.approx(0.01)
    assert fit.seconds(1000, micro_batches=2) == pytest.approx(2 * 0.5 + 10 + 0.2)
    same = fit_step_time([(200, 1.0), (200, 1.2)])  # one token count: the line through the origin
    assert same.fixed == 0 and same.per_token == pytest.approx(2.2 / 400)
    negative = fit_step_time([(100, 0.5), (400, 3.5)])  # a = -0.5: noise, refitted through the origin
    assert negative.fixed == 0 and negative.per_token == pytest.approx(4.0 / 500)
    assert negative.seconds(100) == pytest.approx(0.8)


@pytest.mark.parametrize("used, verdict", [(50, "cabe"), (85, "cabe"), (86, "justo"), (100, "justo"),
                                           (101, "no cabe")])
def test_verdict_thresholds(used, verdict):
    parts = [Part("weights", "Pesos", used * GIB - GIB), Part("activations", "Activaciones", GIB)]
    assert MemoryEstimate(parts, 0, 128 * GIB, 100 * GIB).verdict == verdict
    assert MemoryEstimate(parts, 0, 128 * GIB, 100 * GIB).total == used * GIB


def test_loading_and_the_measured_peak_decide_the_total():
    parts = [Part("weights", "Pesos", 10 * GIB)]
    assert MemoryEstimate(parts, 90 * GIB, 128 * GIB, 100 * GIB).verdict == "justo"  # the load peak wins
    measured = MemoryEstimate(parts, 0, 128 * GIB, 100 * GIB, measured={"peak_bytes": 120 * GIB})
    assert measured.total == 120 * GIB and measured.verdict == "no cabe"
    # a measurement below the formula does not lower the prediction (the heap grows after the first steps)
    below = MemoryEstimate(parts, 0, 128 * GIB, 100 * GIB, measured={"peak_bytes": 5 * GIB})
    assert below.total == 10 * GIB == below.formula_total


def test_resolve_target(tiny_recipe):
    from afinar.planning.estimate import resolve_target

    tiny_recipe["train"]["precision"] = "auto"
    recipe = recipe_from_dict(tiny_recipe)
    with pytest.raises(AfinarError) as unknown:
        resolve_target("rtx306", recipe)
    assert unknown.value.code == "L001" and "rtx3060" in unknown.value.hint
    if not torch.cuda.is_available():
        with pytest.raises(AfinarError) as no_gpu:
            resolve_target("cuda", recipe)
        assert no_gpu.value.code == "L002"
    t4, l4 = resolve_target("T4", recipe), resolve_target("l4", recipe)
    assert (t4.precision, l4.precision) == ("fp16", "bf16")
    assert t4.kind == "gpu" and not t4.local and t4.available_bytes < t4.memory_bytes
    local = resolve_target(None, recipe)
    assert local.local and local.kind in ("cpu", "cuda") and local.available_bytes > 0


# --- 5. the plan ------------------------------------------------------------------------------------------------


def test_plan_json_is_all_stdout_and_a_table_gpu_fits(tiny_recipe, tmp_path, capsys):
    from afinar.plan import plan

    path = recipe_file(tiny_recipe, tmp_path)
    result = plan(path, calibrate=False, as_json=True)
    out = json.loads(capsys.readouterr().out)  # nothing else on stdout
    assert out["memory"]["total_gb"] > 0 and out["time"]["step_seconds"] > 0 and out["time"]["steps"] == 6
    assert out["memory"]["verdict"] in ("cabe", "justo", "no cabe") and out["memory"]["parts_gb"]["activations"] > 0
    assert out == json.loads(json.dumps(result.to_json(), ensure_ascii=False))
    assert not result.calibrated and result.target.local

    on_t4 = plan(path, device="t4")
    table = capsys.readouterr().out
    assert on_t4.step_seconds > 0 and on_t4.memory.verdict == "cabe" and not on_t4.calibrated
    assert "T4" in table and "Qué cambiar" not in table  # suggestions are shown only when it does not fit
    assert "CABE" in table and not Path(tiny_recipe["output_dir"]).exists()
    with pytest.raises(AfinarError) as remote:
        plan(path, device="t4", calibrate=True)
    assert remote.value.code == "L003"


def test_calibrated_plan_measures_real_steps_and_writes_nothing(tiny_recipe, tmp_path, capsys):
    from afinar.plan import plan

    result = plan(recipe_file(tiny_recipe, tmp_path), as_json=True)  # this machine: calibrated by default
    out = json.loads(capsys.readouterr().out)
    assert result.calibrated and out["time"]["calibrated"]
    assert len(result.fit.samples) == 2 and all(tokens > 0 and seconds > 0 for tokens, seconds in result.fit.samples)
    assert result.step_seconds > 0 and result.memory.measured["peak_bytes"] > 0
    assert not Path(tiny_recipe["output_dir"]).exists()


# --- 6-8. training with the plan -------------------------------------------------------------------------------


def test_train_refuses_a_run_that_does_not_fit(tiny_recipe, monkeypatch):
    from afinar.train import train

    monkeypatch.setattr(estimate_module, "ram_bytes", lambda: (GIB, 2**20))
    tiny_recipe["train"].update(max_steps=2, eval_every=2)
    recipe = recipe_from_dict(tiny_recipe)
    with pytest.raises(AfinarError) as refused:
        train(recipe, progress=False)
    assert refused.value.code == "T015" and "--forzar" in refused.value.hint
    assert not Path(tiny_recipe["output_dir"]).exists()
    run_dir = train(recipe, progress=False, force=True)
    assert (run_dir / "adapter_model.safetensors").is_file()
    assert json.loads((run_dir / "plan.json").read_text())["memory"]["verdict"] == "no cabe"


def test_out_of_memory_in_the_loop_is_t016_naming_the_last_checkpoint(tiny_recipe, tmp_path, monkeypatch, capsys):
    import afinar.train as train_module

    real = train_module.token_loss_sum
    loop_calls = []

    def third_step_runs_out(*args, **kwargs):
        if sys._getframe(1).f_code.co_name == "train":  # the loop itself (calibration runs in calibrate())
            loop_calls.append(1)
            if len(loop_calls) > 2 * tiny_recipe["train"]["grad_accum"]:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "token_loss_sum", third_step_runs_out)
    monkeypatch.setenv("AFINAR_SUPERVISED", "1")  # main() trains in this process
    path = recipe_file(tiny_recipe, tmp_path, save_every=1, eval_every=100, keep_last=3)
    assert main(["train", str(path), "--sin-progreso"]) == 2
    err = capsys.readouterr().err
    assert "T016" in err and "paso 3" in err and "Traceback" not in err
    assert "step-000002" in err and "--resume" in err
    run_dir = Path(tiny_recipe["output_dir"])
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step-000001", "step-000002"]
    assert len(loop_calls) == 5


def test_metrics_and_run_info_carry_the_plan(tiny_recipe):
    from afinar.train import train

    run_dir = train(recipe_from_dict(tiny_recipe), progress=False)
    steps = [r for r in read_metrics(run_dir) if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 7))
    assert all(r["step_seconds"] > 0 for r in steps)
    info = json.loads((run_dir / "afinar_run.json").read_text())
    assert info["plan"]["step_seconds"] > 0 and info["plan"]["memory_gb"] > 0 and info["plan"]["formula_memory_gb"] > 0
    assert info["memory_peak_gb"] > 0
    saved = json.loads((run_dir / "plan.json").read_text())
    assert saved["time"]["calibrated"] and saved["memory"]["total_gb"] == info["plan"]["memory_gb"]


# --- 9-10. the command line -------------------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == pid]


def _ppid(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and SIGKILL supervision")
def test_sigkill_of_the_training_child_is_t017(tiny_recipe, tmp_path):
    path = recipe_file(tiny_recipe, tmp_path, max_steps=200, save_every=1, keep_last=1, eval_every=1000)
    run_dir = Path(tiny_recipe["output_dir"])
    env = {k: v for k, v in os.environ.items() if k != "AFINAR_SUPERVISED"}
    env["OMP_NUM_THREADS"] = "1"
    parent = subprocess.Popen([str(ROOT / ".venv" / "bin" / "python"), "-m", "afinar", "train", str(path),
                               "--sin-progreso"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while parent.poll() is None and not checkpoint_dirs(run_dir) and time.time() < deadline:
            time.sleep(0.1)
        assert parent.poll() is None, parent.stderr.read()[-2000:]
        assert checkpoint_dirs(run_dir), "no checkpoint within 180 s"
        children = children_of(parent.pid)
        assert len(children) == 1, children
        os.kill(children[0], signal.SIGKILL)
        assert parent.wait(timeout=60) == 137
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    err = parent.stderr.read()
    assert "T017" in err and "SIGKILL" in err and "checkpoint" in err and "El plan calculaba" in err, err
    assert "step-0" in err and "Traceback" not in err


def test_cli_plan_unknown_device_is_l001(tiny_recipe, tmp_path, capsys):
    assert main(["plan", str(recipe_file(tiny_recipe, tmp_path)), "--dispositivo", "nada"]) == 2
    err = capsys.readouterr().err
    assert "L001" in err and "t4" in err


@pytest.mark.parametrize("calibrate", ["--calibrar", "--no-calibrar"])
def test_cli_plan_hub_base_offline_is_m003(tiny_recipe, tmp_path, capsys, monkeypatch, calibrate):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["plan", str(recipe_file(tiny_recipe, tmp_path)), "--base", "some-org/some-model-that-does-not-exist",
            calibrate]
    assert main(args) == 2
    assert "M003" in capsys.readouterr().err
    assert not Path(tiny_recipe["output_dir"]).exists()


def test_cli_plan_bases_prints_the_catalog(tiny_recipe, tmp_path, capsys, monkeypatch):
    import afinar.bases as bases

    monkeypatch.setattr(bases, "HUB_BASES", ())
    monkeypatch.setattr(bases, "local_gguf_files", lambda folders=None: [])
    monkeypatch.setattr(bases, "ollama_models", lambda: [])
    tiny_recipe["model"]["base"] = "smollm2-135m"
    assert main(["plan", str(recipe_file(tiny_recipe, tmp_path)), "--no-calibrar", "--bases"]) == 0
    out = capsys.readouterr().out
    assert "Bases posibles para esta receta" in out and "→ smollm2-135m" in out
    assert main(["plan", str(recipe_file(tiny_recipe, tmp_path)), "--no-calibrar", "--bases", "--json"]) == 0
    catalog = json.loads(capsys.readouterr().out)["bases"]
    assert [c["key"] for c in catalog] == ["smollm2-135m"] and catalog[0]["current"] and catalog[0]["step_seconds"] > 0


def test_bf16_is_off_where_torch_or_onednn_is_held_to_avx2(monkeypatch):
    from afinar.hardware import cpu_supports_bf16

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not cpu_supports_bf16()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not cpu_supports_bf16()


def test_durations_round_to_the_minute_before_splitting_hours():
    from afinar.planning.estimate import minutes

    assert minutes(7180) == "2 h 00 min"  # 1 h 59,7 min: once printed as "1 h 60 min" in the bases' table
    assert minutes(4020) == "1 h 07 min" and minutes(3599) == "1 h 00 min"
    assert minutes(125) == "2 min 05 s" and minutes(42) == "42 s"
