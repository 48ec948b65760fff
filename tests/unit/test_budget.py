"""The time budget (`--minutos`, train.max_minutes): the plan's arithmetic alone, then real tiny trainings."""
import json

import pytest

from afinar.budget import RESERVE_SECONDS, SAFETY, out_of_time, plan_steps
from afinar.config import recipe_from_dict
from afinar.errors import AfinarError
from afinar.train import train
from afinar.training import checkpoint_dirs, read_metrics


def cost(steps, step_s, eval_s, every):
    """What `steps` steps take: their time, an evaluation every `every`, the final one, the reserve."""
    return steps * step_s + (steps // every) * eval_s + eval_s + RESERVE_SECONDS


@pytest.mark.parametrize("remaining, step_s, eval_s, every", [
    (600, 3.0, 10.0, 20), (360, 9.1, 25.0, 5), (100, 0.5, 0.0, 50), (42, 3.0, 4.0, 1), (3600, 2.7, 60.0, 7),
])
def test_plan_takes_the_most_steps_that_fit(remaining, step_s, eval_s, every):
    steps = plan_steps(remaining, step_s, eval_s, every, cap=10**6)
    assert steps >= 1
    assert cost(steps, step_s, eval_s, every) <= remaining * SAFETY
    assert cost(steps + 1, step_s, eval_s, every) > remaining * SAFETY  # one more would not fit


def test_plan_never_exceeds_the_recipe_epochs_and_may_be_zero():
    assert plan_steps(3600, 1.0, 0.0, 50, cap=88) == 88
    assert plan_steps(10, 30.0, 0.0, 50, cap=88) == 0  # not one step
    assert plan_steps(40, 1.0, 40.0, 50, cap=88) == 0  # the final evaluation alone does not fit


def test_out_of_time_counts_the_step_the_evaluation_and_the_reserve():
    assert not out_of_time(now=0, deadline=100, step_s=50, eval_s=40)
    assert out_of_time(now=0, deadline=100, step_s=50, eval_s=50)


def run(recipe_dict, **kwargs):
    return train(recipe_from_dict(recipe_dict), progress=False, **kwargs)


def budget_recipe(tiny_recipe, minutes=2.0, epochs=2):
    train_section = {k: v for k, v in tiny_recipe["train"].items() if k != "max_steps"}
    return dict(tiny_recipe, train={**train_section, "epochs": epochs, "max_minutes": minutes})


def test_a_generous_budget_trains_the_recipe_epochs(tiny_recipe, capsys):
    """Tiny steps take milliseconds: the plan is capped by the recipe's 2 epochs, and says so."""
    run_dir = run(budget_recipe(tiny_recipe))
    info = json.loads((run_dir / "afinar_run.json").read_text())
    budget = info["budget"]
    assert budget["steps"] == budget["planned_steps"] == info["steps"] >= 2
    assert budget["step_seconds_planned"] > 0 and budget["eval_seconds"] > 0
    out = capsys.readouterr().out
    assert f"≈ {budget['planned_steps']} pasos (el máximo de la receta: sus épocas)" in out
    metrics = read_metrics(run_dir)
    assert metrics[-1]["step"] == info["steps"] and "eval_loss" in metrics[-1]
    assert [r["step"] for r in metrics if "loss" in r] == list(range(1, info["steps"] + 1))


def test_a_run_out_of_time_ends_cleanly_and_resumes_its_plan(tiny_recipe, monkeypatch, capsys):
    """The machine turns slower than measured: the loop stops at a step boundary, with the held-out loss, the
    final checkpoint and the artifacts; --resume continues the same plan (same total, same schedule)."""
    import afinar.train_stages as train_module

    recipe = budget_recipe(tiny_recipe)
    calls = {"n": 0}

    def slow_after_three(*args):
        calls["n"] += 1
        return calls["n"] > 3

    monkeypatch.setattr(train_module, "out_of_time", slow_after_three)
    run_dir = run(recipe)
    info = json.loads((run_dir / "afinar_run.json").read_text())
    assert info["steps"] == 3 < info["budget"]["planned_steps"]
    assert "fin en el paso 3 de" in capsys.readouterr().out
    assert checkpoint_dirs(run_dir)[-1].name == "step-000003"
    assert (run_dir / "adapter_model.safetensors").is_file()
    last = read_metrics(run_dir)[-1]
    assert last["step"] == 3 and "eval_loss" in last  # the final held-out loss, although 3 is no eval step

    monkeypatch.setattr(train_module, "out_of_time", lambda *args: False)
    resumed = json.loads((run(recipe, resume=True) / "afinar_run.json").read_text())
    assert resumed["steps"] == resumed["budget"]["planned_steps"] == info["budget"]["planned_steps"]
    uninterrupted = read_metrics(run(dict(recipe, output_dir=str(run_dir.parent / "entera"))))
    steps = [r for r in read_metrics(run_dir) if "loss" in r]
    assert [r["lr"] for r in steps] == pytest.approx([r["lr"] for r in uninterrupted if "loss" in r], rel=1e-9)


def test_budget_errors_stop_before_writing(tiny_recipe, tmp_path):
    with pytest.raises(AfinarError) as err:
        run(dict(budget_recipe(tiny_recipe), train={**budget_recipe(tiny_recipe)["train"], "max_steps": 5}))
    assert err.value.code == "T011"
    with pytest.raises(AfinarError) as err:
        run(budget_recipe(tiny_recipe, minutes=0.001))  # 60 ms: loading alone takes longer
    assert err.value.code == "T012" and "no alcanza ni para un paso" in err.value.message
    assert not (tmp_path / "run").exists()


def test_timing_the_optimizer_step_changes_nothing():
    import torch

    from afinar.train_stages import optimizer_step_seconds as _optimizer_step_seconds

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    twin = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    twin.load_state_dict(model.state_dict())
    timed = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    fresh = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    seconds = _optimizer_step_seconds(timed, list(model.parameters()))
    assert seconds > 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # bitwise the same weights
    assert not timed.state and timed.param_groups[0]["lr"] == 1e-2 and all(p.grad is None for p in model.parameters())
    # the next real step is the one a fresh optimizer takes (bias correction from step 1, same moments)
    x = torch.randn(5, 8)
    for net, optimizer in ((model, timed), (twin, fresh)):
        for _ in range(2):
            net(x).square().sum().backward()
            optimizer.step()
            optimizer.zero_grad()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
