"""The planner's step trace (fake tensors, no weights) against the same step on the real model, for every family.

Both sides are counted by the same storage tracker (planning/trace.py), so what is compared is the fake path itself:
the meta → fake conversion (tied heads stay tied), the model as `prepare_for_training` makes it, the loss and the
backward. The bench (bench/plan_accuracy.py) compares the plan with the process's real memory."""
import pytest

from afinar.config import recipe_from_dict
from afinar.hardware import Hardware
from afinar.planning.trace import _peak_tracker, empty_training_model, trace_step
from tests.families import FAMILIES, make_family_model, make_family_tokenizer

ROWS, WIDTH, EXAMPLES, LABELLED = 1, 96, 3, 40


def recipe(gc: bool, targets="all-linear", dropout=0.1):
    return recipe_from_dict({
        "name": "traza", "data": {"sources": [{"path": "x.jsonl"}]},
        "lora": {"r": 4, "target_modules": targets, "dropout": dropout},
        "train": {"gradient_checkpointing": gc, "precision": "fp32"},
    })


def real_step(model, head, hw) -> tuple[int, int]:
    """(peak, saved) of the same micro-batch on real tensors: a packed row of 3 examples, 40 labelled positions."""
    import torch

    from afinar.training import token_loss_sum

    size = WIDTH // EXAMPLES
    positions = torch.arange(size).repeat(EXAMPLES).view(1, WIDTH)
    ids = torch.randint(3, 60, (ROWS, WIDTH))
    labels = torch.full_like(ids, -100)
    labels[0, 1 : LABELLED + 1] = ids[0, 1 : LABELLED + 1]  # targets[:, :LABELLED] carry a label
    tracker = _peak_tracker()([*model.parameters(), *model.buffers()])
    with tracker:
        loss, n = token_loss_sum(model, {"input_ids": ids, "labels": labels, "position_ids": positions}, head)
        saved = tracker.current
        loss.backward()
    assert n == LABELLED
    return tracker.peak, saved


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("gc", [False, True])
def test_trace_matches_the_real_step(family, gc):
    import torch

    from afinar.training import output_head, prepare_for_training

    hw = Hardware("cpu", "fp32", "prueba")
    targets = ["qkv_proj", "o_proj"] if family == "phi3" else "all-linear"
    plan_recipe = recipe(gc, targets)
    torch.manual_seed(0)
    real = prepare_for_training(make_family_model(family, make_family_tokenizer(family)), plan_recipe, hw)
    real.train()
    real_peak, real_saved = real_step(real, output_head(real), hw)

    fake, model, head = empty_training_model(real.config, plan_recipe, hw)
    assert (head is None) == (output_head(real) is None)
    traced = trace_step(fake, model, head, hw, ROWS, WIDTH, EXAMPLES, LABELLED)
    # Dropout masks and the exact labelled positions differ a little: within 10 %.
    assert traced.peak == pytest.approx(real_peak, rel=0.10)
    assert traced.saved == pytest.approx(real_saved, rel=0.10)
    assert traced.after > 0


def test_checkpointing_keeps_less_and_the_tied_head_stays_tied():
    from afinar.planning.memory import weight_bytes
    from tests.families import family_config

    hw = Hardware("cpu", "fp32", "prueba")
    config = family_config("qwen2", make_family_tokenizer("qwen2"))
    traces = {}
    for gc in (False, True):
        fake, model, head = empty_training_model(config, recipe(gc), hw)
        traces[gc] = trace_step(fake, model, head, hw, ROWS, WIDTH, EXAMPLES, LABELLED)
    assert traces[True].saved < traces[False].saved / 2
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight  # qwen2 tiny: tied
    frozen = {id(p): p for p in model.parameters() if not p.requires_grad}.values()
    assert weight_bytes(model, quantized=False) == sum(p.numel() * 4 for p in frozen)


def test_planning_leaves_the_global_generator_alone(tmp_path, monkeypatch):
    """train() seeds, then plans: tracing (LoRA init, dropout on fake tensors) must not shift the run's draws."""
    import torch

    from afinar.planning.estimate import DataShape, Target, _traces
    from tests.families import family_config

    monkeypatch.setenv("AFINAR_HOME", str(tmp_path))  # an empty trace cache: the trace really runs
    config = family_config("qwen2", make_family_tokenizer("qwen2"))
    shape = DataShape(rows=ROWS, width=WIDTH, examples_per_row=EXAMPLES, labelled=LABELLED, tokens_per_step=WIDTH,
                      micro_batches_per_step=1, steps_per_epoch=1, total_steps=1, mean_example_tokens=32,
                      labelled_fraction=0.4, examples=3)
    torch.manual_seed(3)
    before = torch.get_rng_state()
    traces = _traces(config, recipe(False), Target("cpu", "cpu", "fp32", 2**30, 2**30, True), shape)
    assert "no_gc" in traces and "gc" in traces
    assert torch.equal(torch.get_rng_state(), before)
