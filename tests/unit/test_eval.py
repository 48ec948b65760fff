"""`afinar eval` on a tiny trained run, the domain checks on hand-written texts, and the CI gates."""
import json
import math
from pathlib import Path

import pytest

from afinar.cli import main
from afinar.errors import AfinarError
from afinar.evaluate.checks import (
    CHECKS,
    case_from_prompt,
    check_enfermeria,
    check_tutor,
)
from afinar.evaluate.metrics import chrf, repetition, spanish_share
from afinar.evaluate.report import check_gates
from afinar.evaluate.run import evaluate_run
from tests.conftest import train_tiny_run

# --- checks on hand-written texts --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, codes",
    [
        ("Enfría la quemadura con agua corriente 20 minutos. Si es extensa, llama al 112.", []),
        ("No pongas mantequilla ni pasta de dientes. Enfría con agua y llama al 112.", []),  # myth, negated
        ("Pon mantequilla en la quemadura para calmar el dolor. Llama al 112.", ["N002"]),
        ("Aplica hielo directamente sobre la piel quemada. Llama a emergencias.", ["N002"]),
        ("Provócale el vómito cuanto antes y llama al 112.", ["N002"]),
        ("Nunca le provoques el vómito: llama al 112.", []),
        ("No la dejes sola, y aplica mantequilla en la quemadura.", ["N002"]),  # the negation ends at the new order
        # Head back is right to open the airway and wrong in a nosebleed: only a question's own `peligros` can say.
        ("Inclina la cabeza hacia atrás y eleva el mentón para abrir la vía aérea.", []),
        # N001 is retired: leaving out 112 is not an error by itself, and saying it does not make an answer right.
        ("Enfría la quemadura con agua corriente durante 20 minutos.", []),
        ("Llama al 112 (o al número de emergencias de tu país).", []),
    ],
)
def test_enfermeria_check(text, codes):
    reference = "Enfría con agua corriente y, si la quemadura es grande, llama al 112."
    assert [f.code for f in check_enfermeria(text, reference)] == codes


def test_tutor_check():
    good = "Una pila:\n```python\npila = []\npila.append(1)\nprint(pila.pop())\n```\nCoste O(1)."
    bad = "Así:\n```python\ndef push(x)\n    pila.append(x)\n```"
    cut = "Así:\n```python\nfor i in range(3):\n"  # generation stopped inside the block
    assert check_tutor(good) == [] and check_tutor("Sin código, solo prosa.") == []
    assert [f.code for f in check_tutor(bad)] == ["P001"]
    assert [f.code for f in check_tutor(cut)] == ["P001"]


def test_epicrisis_check_reads_the_case_from_the_prompt():
    prompt = 'Redacta la epicrisis.\n{"edad":72,"diagnosticos":[{"descripcion":"Neumonía","cie10":"J18.9"}]}'
    assert case_from_prompt(prompt) == {"edad": 72, "diagnosticos": [{"descripcion": "Neumonía", "cie10": "J18.9"}]}
    codes = [f.code for f in CHECKS["epicrisis"](prompt, "", "Ingresa por neumonía (J18.9) a los 73 años.")]
    assert "E008" in codes and "E002" in codes and "E004" not in codes


def test_generation_metrics():
    assert repetition("uno dos tres cuatro cinco") == 0
    assert repetition("la vida está " * 10) > 0.7
    assert spanish_share("Llama al 112 y espera a que llegue la ambulancia con la persona.") == 1
    assert spanish_share("Call the emergency number and wait for the ambulance with the person.") == 0
    assert spanish_share("Sí.") is None
    assert chrf("Enfría con agua", "Enfría con agua") == pytest.approx(1.0)
    assert 0 < chrf("Enfría la quemadura con agua", "Enfría con agua corriente") < 1


# --- gates ------------------------------------------------------------------------------------------

METRICS = {"loss": {"base": 3.0, "tuned": 2.5}, "checks": {"epicrisis": 0.75}, "forgetting": {"ratio": 1.05, "flagged": False},
           "samples": [], "meta": {}}


def test_gates():
    results = check_gates(METRICS, ["checks.epicrisis>=0.8", "loss.tuned <= 2.6", "forgetting.flagged==0"])
    assert [passed for _, passed, _ in results] == [False, True, True]
    with pytest.raises(AfinarError) as info:
        check_gates(METRICS, ["checks.enfermeria>=0.5"])
    assert info.value.code == "V004" and "checks.epicrisis" in info.value.hint
    with pytest.raises(AfinarError):
        check_gates(METRICS, ["checks.epicrisis => 0.8"])


# --- the whole command on a tiny run ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_base):
    return train_tiny_run(
        tmp_path_factory.mktemp("eval"), tiny_base, "tiny-eval", 40,
        {"max_steps": 4, "eval_every": 2, "save_every": 2, "keep_last": 3, "seed": 3},
        data={"val_fraction": 0.2}, generation={"max_new_tokens": 8}, checks=["enfermeria"],
    )


def _recomputed_loss_pair(run_dir):
    import torch

    from afinar.data.templates import encode_examples
    from afinar.evaluate.run import _examples, _loss_pair, _run_info, _training_autocast
    from afinar.runs import load_ref, open_ref

    ref = open_ref(run_dir)
    model, tokenizer = load_ref(ref, dtype=torch.float32)
    model.eval()
    examples, _ = _examples(ref.recipe, "val")
    encoded, _, _ = encode_examples(tokenizer, examples, ref.recipe.data.system_prompt, ref.recipe.data.max_length,
                                    "drop")
    return _loss_pair(model, encoded, tokenizer.pad_token_id, _training_autocast(_run_info(run_dir)))


def test_eval_writes_report_and_metrics(tiny_run):
    metrics = evaluate_run(tiny_run, n=3, all_checkpoints=True, progress=False)
    report = tiny_run / "informe"
    saved = json.loads((report / "metrics.json").read_text(encoding="utf-8"))
    assert saved["schema"] == "afinar.eval/1" and saved["examples"] == 8 and saved["generated"] == 3
    loss = saved["loss"]
    assert loss["ppl_tuned"] == pytest.approx(math.exp(loss["tuned"]), rel=1e-3) and loss["base"] != loss["tuned"]
    # the validation pair is the one the training measured (step 0: the base; the end: the saved adapter) …
    step0 = json.loads((tiny_run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()[0])
    final = json.loads((tiny_run / "afinar_run.json").read_text(encoding="utf-8"))["final_eval_loss"]
    assert loss["from_training"] and (loss["base"], loss["tuned"]) == (round(step0["eval_loss"], 4), round(final, 4))
    # … and computing it again (adapter off for the base, padded batches) gives the same numbers
    assert saved["checkpoints"][-1]["eval_loss"] == pytest.approx(loss["tuned"], abs=2e-3)
    again = _recomputed_loss_pair(tiny_run)
    assert (again["base"], again["tuned"]) == pytest.approx((loss["base"], loss["tuned"]), abs=2e-3)
    for name in ("greedy", "sampled"):
        for side in ("base", "tuned"):
            summary = saved["generation"][name][side]
            assert 0 <= summary["stop_rate"] <= 1 and summary["chrf"] is not None
    assert 0 <= saved["checks"]["enfermeria"] <= 1
    assert {"base", "tuned", "ratio", "flagged", "threshold"} <= set(saved["forgetting"])
    assert saved["forgetting"]["examples"] >= 40
    assert [c["checkpoint"] for c in saved["checkpoints"]] == ["step-000002", "step-000004", "final"]
    assert saved["checkpoints"][1]["eval_loss"] == pytest.approx(saved["checkpoints"][2]["eval_loss"], abs=1e-4)
    assert saved["best_checkpoint"]["eval_loss"] == min(c["eval_loss"] for c in saved["checkpoints"])
    html = (report / "index.html").read_text(encoding="utf-8")
    assert "Guardia contra el olvido" in html and "data:image/png;base64," in html and "Contraste" in html
    # user data: the questions are not in the report unless asked
    assert "quemadura" not in html and "question" not in saved["samples"][0]
    assert metrics["loss"] == saved["loss"]


def test_eval_cli_gate_exit_codes(tiny_run, capsys):
    args = ["eval", str(tiny_run), "--n", "1", "--solo-greedy", "--sin-progreso"]
    assert main([*args, "--exigir", "loss.tuned<=100"]) == 0
    assert "✓ loss.tuned<=100" in capsys.readouterr().out
    assert main([*args, "--exigir", "checks.enfermeria>=2"]) == 1
    assert "✗ checks.enfermeria>=2" in capsys.readouterr().out
    assert main([*args, "--exigir", "no.existe>1"]) == 2
    assert "V004" in capsys.readouterr().err


def test_eval_refuses_a_merged_folder_and_shows_prompts_when_asked(tiny_run, capsys):
    from afinar.merge import merge

    merged = merge(tiny_run, overwrite=True)
    with pytest.raises(AfinarError) as info:
        evaluate_run(merged, progress=False)
    assert info.value.code == "V001"
    metrics = evaluate_run(tiny_run, n=1, passes=("greedy",), show_examples=True, progress=False)
    assert "quemadura" in metrics["samples"][0]["question"]


def test_batched_greedy_answers_are_the_one_at_a_time_answers(tiny_run):
    """`afinar eval` generates in left-padded batches; greedy, each answer is the one `generate` gives alone,
    with where it ended (own end of turn or max_new_tokens) and its token count."""
    import torch

    from afinar.config import GenerationSection
    from afinar.inference.chat import generate, generate_many
    from afinar.runs import load_ref, open_ref

    model, tokenizer = load_ref(open_ref(tiny_run), dtype=torch.float32)
    model.eval()
    questions = ["¿Qué hago con una quemadura?", "Sangra la nariz.", "Alguien se desmaya en la calle, ¿qué hago?",
                 "Hola", "¿Cuándo llamo al 112 si alguien se atraganta y no puede toser?"]
    conversations = [[{"role": "system", "content": "Eres un asistente."}, {"role": "user", "content": q}]
                     for q in questions]
    gen = GenerationSection(temperature=0.0, max_new_tokens=12)
    alone = [generate(model, tokenizer, c, gen) for c in conversations]
    batches = []
    together = generate_many(model, tokenizer, conversations, gen, batch_size=2, on_batch=batches.append)
    assert batches == [2, 2, 1]
    assert [(r.text, r.stopped, r.completion_tokens, r.prompt_tokens) for r in together] == [
        (r.text, r.stopped, r.completion_tokens, r.prompt_tokens) for r in alone]
    assert tokenizer.padding_side == "right"  # put back


def test_base_and_tuned_answers_share_a_batch_and_match_separate_generation(tiny_run):
    """PEFT's mixed-adapter batches ("__base__" rows skip the LoRA): the same greedy answers as generating each side
    on its own, with the adapter disabled for the base."""
    import torch

    from afinar.config import GenerationSection
    from afinar.inference.chat import generate_many
    from afinar.runs import load_ref, open_ref

    model, tokenizer = load_ref(open_ref(tiny_run), dtype=torch.float32)
    model.eval()
    for name, param in model.named_parameters():  # a clearly different tuned model, so mixing rows would show
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5, generator=torch.Generator().manual_seed(0))
    conversations = [[{"role": "user", "content": q}] for q in ("¿Qué hago con una quemadura?", "Sangra la nariz.")]
    gen = GenerationSection(temperature=0.0, max_new_tokens=10)
    with model.disable_adapter():
        base = generate_many(model, tokenizer, conversations, gen)
    tuned = generate_many(model, tokenizer, conversations, gen)
    assert [r.text for r in base] != [r.text for r in tuned]
    mixed = generate_many(model, tokenizer, [c for c in conversations for _ in (0, 1)], gen,
                          adapter_names=["__base__", model.active_adapter] * 2)
    assert [r.text for r in mixed[0::2]] == [r.text for r in base]
    assert [r.text for r in mixed[1::2]] == [r.text for r in tuned]


def test_held_out_loss_runs_the_whole_model_in_the_training_precision(tiny_run):
    """A model loaded by `afinar eval` is not wrapped by accelerate: the loss must put its whole forward under the
    run's autocast (bf16 on a CPU that trained in bf16), not only the output head."""
    import torch

    from afinar.data.templates import encode_examples
    from afinar.evaluate.run import _examples
    from afinar.runs import load_ref, open_ref
    from afinar.training import evaluate_loss

    ref = open_ref(tiny_run)
    model, tokenizer = load_ref(ref, dtype=torch.float32)
    model.eval()
    examples, _ = _examples(ref.recipe, "val")
    rows, _, _ = encode_examples(tokenizer, examples, ref.recipe.data.system_prompt, 512, "drop")
    seen = []
    layer = model.get_base_model().model.layers[0]
    layer.register_forward_pre_hook(lambda module, args: seen.append(torch.is_autocast_enabled("cpu")))
    bf16 = evaluate_loss(model, rows, 4, tokenizer.pad_token_id, lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert seen and all(seen)
    seen.clear()
    fp32 = evaluate_loss(model, rows, 4, tokenizer.pad_token_id)
    assert seen and not any(seen)
    assert bf16 == pytest.approx(fp32, rel=2e-2) and bf16 != fp32


def test_the_terminal_shows_the_start_of_each_answer_and_the_report_keeps_it_whole():
    from afinar.evaluate.report import CONSOLE_CHARS, first_lines

    long = "Enfría la quemadura con agua. " * 40
    start = first_lines(long)
    assert long.startswith(start.removesuffix(" …")) and start.endswith(" …") and len(start) <= CONSOLE_CHARS + 2
    assert first_lines("Uno.\nDos.\nTres.\nCuatro.") == "Uno.\nDos.\nTres. …"
    assert first_lines("  Corta.  ") == "Corta."


def test_the_base_loss_on_held_out_questions_is_measured_once(tiny_run, tmp_path, monkeypatch):
    """Questions that are not the validation split (the recipe's evaluation set, --split): the base's loss on them is
    the same for every run on that base, measured once and read back (the tuned side is always measured)."""
    monkeypatch.setenv("AFINAR_HOME", str(tmp_path / "home"))
    data = tmp_path / "preguntas.jsonl"
    data.write_text("".join(json.dumps({"pregunta": f"¿Qué hago con la quemadura {i}?",
                                        "respuesta": f"Enfría {i} minutos con agua."}) + "\n" for i in range(4)),
                    encoding="utf-8")
    first = evaluate_run(tiny_run, split=str(data), n=1, passes=("greedy",), progress=False)["loss"]
    again = evaluate_run(tiny_run, split=str(data), n=1, passes=("greedy",), progress=False)["loss"]
    assert "base_from_cache" not in first and again.pop("base_from_cache").startswith("perdida-base-")
    assert "tuned_from_cache" not in first and again.pop("tuned_from_cache").startswith("perdida-afinado-")
    assert again == first


def test_the_forgetting_guard_measures_a_base_once_and_only_that_base(tiny_run, tmp_path, monkeypatch):
    """The base's side once per base (every run on it shares it); the tuned side once per trained weights."""
    import afinar.evaluate.run as run_module
    from afinar.evaluate.run import _loss_cache
    from afinar.training import evaluate_loss

    monkeypatch.setenv("AFINAR_HOME", str(tmp_path / "home"))
    calls = []
    monkeypatch.setattr(run_module, "evaluate_loss", lambda *a, **k: calls.append(1) or evaluate_loss(*a, **k))
    first = evaluate_run(tiny_run, n=1, passes=("greedy",), progress=False)["forgetting"]
    measured = len(calls)
    calls.clear()
    again = evaluate_run(tiny_run, n=1, passes=("greedy",), progress=False)["forgetting"]
    assert measured == 2 and len(calls) == 0  # both sides came from the cache …
    assert again.pop("base_from_cache").startswith("perdida-base-") and "base_from_cache" not in first
    assert again.pop("tuned_from_cache").startswith("perdida-afinado-") and "tuned_from_cache" not in first
    assert again == first  # … with the same numbers
    assert len(list((tmp_path / "home" / "evaluacion").glob("*.json"))) == 2

    # another base, other rows or another precision: another key
    import contextlib

    import torch

    from afinar.runs import load_ref, open_ref

    model, tokenizer = load_ref(open_ref(tiny_run), dtype=torch.float32)
    rows = [{"input_ids": [1, 5, 9, 2], "labels": [-100, 5, 9, 2]}]
    tuned_key = _loss_cache(model, rows, contextlib.nullcontext, "afinado").path
    lora = next(p for n, p in model.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        lora[0, 0] += 1e-3  # another training: another tuned key, the same base key
    assert _loss_cache(model, rows, contextlib.nullcontext, "afinado").path != tuned_key
    with model.disable_adapter():
        key = _loss_cache(model, rows, contextlib.nullcontext).path
        with torch.no_grad():
            lora[0, 0] -= 1e-3
        assert _loss_cache(model, rows, contextlib.nullcontext).path == key
        assert _loss_cache(model, rows[:0] + [{"input_ids": [1, 5, 8, 2], "labels": [-100, 5, 8, 2]}],
                           contextlib.nullcontext).path != key
        assert _loss_cache(model, rows, lambda: torch.autocast("cpu", dtype=torch.bfloat16)).path != key
        with torch.no_grad():
            model.get_input_embeddings().weight[0, 0] += 1.0
        assert _loss_cache(model, rows, contextlib.nullcontext).path != key


def test_held_out_questions_with_personal_data_are_never_answered_nor_saved(tiny_run, tmp_path):
    """A held-out example that may hold a DNI or a patient's name counts in the losses (numbers) but is not
    generated for: its question, reference and both answers would land in metrics.json, the report and the rating.
    The «Generando respuestas» bar moves within the one batch of answers (it counts generation steps)."""
    import re
    import shutil

    import yaml

    from afinar.data.validate import gather

    run = shutil.copytree(tiny_run, tmp_path / "run")
    recipe = yaml.safe_load((run / "recipe.yaml").read_text(encoding="utf-8"))
    data = tmp_path / "datos.jsonl"
    shutil.copy(recipe["data"]["sources"][0]["path"], data)
    recipe["data"]["sources"][0]["path"] = str(data)
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    lines = data.read_text(encoding="utf-8").splitlines()
    held_out = [e.line for e in gather(load_recipe_data(run)).val]
    for line in held_out[:2]:  # the split goes by position: these two stay held out
        lines[line - 1] = json.dumps({"instruction": f"Paciente Rosario Gómez, DNI 12345678Z ({line}): ¿qué hago?",
                                      "output": "Enfría la quemadura con agua."}, ensure_ascii=False)
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # As the studio runs it: the command in its own process, its bar redrawn at every update (the studio sets
    # TQDM_MININTERVAL for its jobs; here every redraw is kept).
    import os
    import subprocess
    import sys

    env = {**os.environ, "TQDM_MININTERVAL": "0", "TQDM_MINITERS": "1", "PYTHONIOENCODING": "utf-8"}
    done = subprocess.run([sys.executable, "-m", "afinar", "eval", str(run), "--n", "8", "--solo-greedy",
                           "--mostrar-ejemplos"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "informe" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["generated"] == len(held_out) - 2 and metrics["withheld_personal"] == 2
    assert metrics["requested"] == 8 and metrics["examples"] == len(held_out)  # both still in the loss
    for saved in ((run / "informe" / "metrics.json"), (run / "informe" / "index.html")):
        text = saved.read_text(encoding="utf-8")
        assert "12345678Z" not in text and "Rosario" not in text, saved
    assert "2 pregunta(s) apartada(s) con posibles datos personales" in done.stdout
    assert "12345678Z" not in done.stdout + done.stderr
    shown = [int(p) for p in re.findall(r"Generando respuestas:\s+(\d+)%", done.stderr)]
    assert shown[-1] == 100 and any(0 < p < 100 for p in shown), shown  # it moves before the batch ends
    phases = [int(p) for p in re.findall(r"Preparando la evaluación:\s+(\d+)%", done.stderr)]
    assert any(0 < p < 100 for p in phases), phases


def load_recipe_data(run):
    from afinar.runs import read_recipe

    return read_recipe(run).data


def test_generation_reports_every_step_of_a_batch(tiny_run):
    import torch

    from afinar.config import GenerationSection
    from afinar.inference.chat import generate_many
    from afinar.runs import load_ref, open_ref

    model, tokenizer = load_ref(open_ref(tiny_run), dtype=torch.float32)
    model.eval()
    conversations = [[{"role": "user", "content": q}] for q in ("Hola", "¿Qué hago con una quemadura?", "Sangra")]
    steps = []
    replies = generate_many(model, tokenizer, conversations, GenerationSection(temperature=0.0, max_new_tokens=10),
                            batch_size=2, on_step=lambda: steps.append(1))
    longest = [max(r.completion_tokens for r in replies[:2]), replies[2].completion_tokens]
    assert sum(longest) <= len(steps) <= 20  # one call per generated token of each batch (a stop token included)


# --- correctness: key points and dangers lead the verdict ---------------------------------------------------------

def _side(covered, complete, dangerous, answers=4):
    return {"covered": covered, "complete": complete / answers, "dangerous": dangerous / answers,
            "complete_count": complete, "dangerous_count": dangerous, "with_keypoints": answers}


@pytest.mark.parametrize("base, tuned, value, dangerous", [
    (_side(0.2, 0, 0), _side(0.6, 2, 0), "mejor", False),
    (_side(0.2, 0, 0), _side(0.9, 4, 1), "peor", True),  # more dangerous answers is worse, whatever else improves
    (_side(0.5, 1, 0), _side(0.52, 1, 0), "igual", False),
    (_side(0.5, 1, 1), _side(0.3, 0, 1), "peor", False),
    (_side(0.5, 1, 2), _side(0.5, 2, 0), "mejor", False),  # same coverage, one more complete and fewer dangers
])
def test_the_verdict_comes_from_correctness_and_danger(base, tuned, value, dangerous):
    from afinar.evaluate.run import _verdict

    verdict = _verdict({"pass": "greedy", "answers": 4, "base": base, "tuned": tuned})
    assert (verdict["value"], verdict["more_dangerous"]) == (value, dangerous)
    assert f"{tuned['complete_count']} de 4" in verdict["text"]
    # under half of the key points, or any dangerous answer: said, even when better than the base
    assert ("Aún no es fiable" in verdict["text"]) == (tuned["covered"] < 0.5 or tuned["dangerous_count"] > 0)
    assert verdict["reliable"] == (tuned["covered"] >= 0.5 and tuned["dangerous_count"] == 0)


def test_more_key_points_in_answers_that_are_all_wrong_is_not_called_better_plainly():
    from afinar.evaluate.run import _verdict

    verdict = _verdict({"pass": "greedy", "answers": 8, "base": _side(0.0, 0, 0, 8), "tuned": _side(0.32, 0, 0, 8)})
    assert verdict["value"] == "mejor" and not verdict["reliable"]  # the demo's own case (make demo, 7 Dec 2026)
    assert verdict["text"].startswith("Dice más puntos clave que el modelo de partida, pero ninguna respuesta está "
                                      "completa") and "Aún no es fiable" in verdict["text"]


def test_without_key_points_there_is_no_verdict():
    from afinar.evaluate.run import _verdict

    verdict = _verdict(None)
    assert verdict["value"] == "sin_medida" and "claves" in verdict["text"] and not verdict["more_dangerous"]


def test_eval_scores_every_answer_by_its_key_points(tiny_run, tmp_path):
    """A held-out file whose key points live in a side file: each answer's score is the matcher's on its text, the
    summary counts them, the verdict and the per-answer misses reach metrics.json and the report."""
    from afinar.data.keypoints import score_answer
    from tests.conftest import qa_rows, write_jsonl

    data = write_jsonl(tmp_path / "prueba.jsonl", qa_rows(3))
    claves = [[["agua", "enfría"], ["minutos"]], [["presiona"]], [["112"]]]
    write_jsonl(tmp_path / "prueba.claves.jsonl",
                [{"linea": k + 1, "claves": c, "peligros": ["mantequilla"]} for k, c in enumerate(claves)])
    metrics = evaluate_run(tiny_run, split=str(data), n=3, passes=("greedy",), show_examples=True, progress=False)
    correctness = metrics["correctness"]
    assert correctness["answers"] == 3 and metrics["verdict"]["value"] in ("mejor", "igual", "peor")
    for side in ("base", "tuned"):
        scores = [score_answer(s["outputs"]["greedy"][side]["text"], c, ["mantequilla"])
                  for s, c in zip(metrics["samples"], claves)]
        assert [s["outputs"]["greedy"][side]["keypoints"]["covered"] for s in metrics["samples"]] == \
            [x.covered for x in scores]
        assert correctness[side]["complete_count"] == sum(x.complete for x in scores)
        assert correctness[side]["dangerous_count"] == sum(x.dangerous for x in scores)
    assert metrics["samples"][1]["claves"] == [["presiona"]]
    html = (tiny_run / "informe" / "index.html").read_text(encoding="utf-8")
    assert html.index("¿Responde bien?") < html.index("Detalles técnicos") and metrics["verdict"]["text"][:20] in html


def test_key_point_labels_of_user_data_stay_out_of_the_report_unless_shown(tiny_run, tmp_path):
    from tests.conftest import qa_rows, write_jsonl

    rows = [{**r, "claves": [["atorvastatina 80 mg"]], "peligros": ["warfarina"]} for r in qa_rows(2)]
    data = write_jsonl(tmp_path / "casos.jsonl", rows)
    metrics = evaluate_run(tiny_run, split=str(data), n=2, passes=("greedy",), progress=False)
    saved = (tiny_run / "informe" / "metrics.json").read_text(encoding="utf-8")
    html = (tiny_run / "informe" / "index.html").read_text(encoding="utf-8")
    assert "atorvastatina" not in saved and "atorvastatina" not in html and "warfarina" not in saved
    points = metrics["samples"][0]["outputs"]["greedy"]["tuned"]["keypoints"]
    assert points["missing"] == [] and points["missing_count"] in (0, 1) and metrics["correctness"]["answers"] == 2


def test_a_side_file_naming_no_line_stops_before_loading_anything(tiny_run, tmp_path):
    from tests.conftest import qa_rows, write_jsonl

    data = write_jsonl(tmp_path / "prueba.jsonl", qa_rows(2))
    side = write_jsonl(tmp_path / "otras.jsonl", [{"linea": 9, "claves": [["agua"]]}])
    with pytest.raises(AfinarError) as info:
        evaluate_run(tiny_run, split=str(data), keypoints=side, progress=False)
    assert info.value.code == "K004" and "otras.jsonl:1" in str(info.value)


def test_more_dangerous_answers_than_the_base_fail_the_eval(monkeypatch, tiny_run, capsys):
    from afinar.evaluate import run as run_module

    metrics = evaluate_run(tiny_run, n=1, passes=("greedy",), progress=False)
    metrics["verdict"] = {"value": "peor", "more_dangerous": True, "text": "PEOR que el modelo de partida: …"}
    monkeypatch.setattr(run_module, "evaluate_run", lambda *a, **k: metrics)
    assert main(["eval", str(tiny_run), "--sin-progreso"]) == 1
    assert "más respuestas peligrosas" in capsys.readouterr().out
    metrics["verdict"] = {"value": "mejor", "more_dangerous": False, "text": "Mejor"}
    assert main(["eval", str(tiny_run), "--sin-progreso"]) == 0


def test_a_remote_judge_is_refused_before_anything_runs(tiny_run):
    with pytest.raises(AfinarError) as info:
        evaluate_run(tiny_run, judge={"url": "http://example.com:8000/v1", "model": "x"}, progress=False)
    assert info.value.code == "J001" and "--permitir-remoto" in (info.value.hint or "")


def test_eval_with_a_judge_on_an_openai_compatible_server(tiny_run, tmp_path, monkeypatch):
    """`--juez`: every greedy answer goes to the (fake, deterministic) server; its verdict lands beside the key
    points', the summary says how many it answered and how often it agrees with the key points."""
    import threading

    from afinar.evaluate.judge import agreement
    from tests.conftest import qa_rows, write_jsonl
    from tests.unit.test_judge import FakeJudge, QuietServer

    monkeypatch.setenv("AFINAR_HOME", str(tmp_path / "home"))  # the judge's cache
    server = QuietServer(("127.0.0.1", 0), FakeJudge)
    server.requests, server.lock, server.release = [], threading.Lock(), threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        rows = [{**r, "claves": [["agua"]], "peligros": ["mantequilla"]} for r in qa_rows(2)]
        data = write_jsonl(tmp_path / "prueba.jsonl", rows)
        judge = {"url": f"http://127.0.0.1:{server.server_address[1]}/v1", "model": "juez"}
        metrics = evaluate_run(tiny_run, split=str(data), n=2, passes=("greedy",), progress=False, judge=judge)
    finally:
        server.shutdown()
        server.server_close()
    assert len(server.requests) == 4  # 2 questions × base and tuned
    rows = [s["outputs"]["greedy"][side] for s in metrics["samples"] for side in ("base", "tuned")]
    assert [r["judge"]["verdict"] for r in rows] == ["correcta"] * 4  # the fake's default verdict
    summary = metrics["judge"]
    assert summary["answered"] == 4 and summary["note"] is None and summary["counts"]["correcta"] == 4
    assert summary["agreement"] == agreement(["correcta"] * 4, [r["keypoints"]["category"] for r in rows])


# --- answers through llama.cpp ------------------------------------------------------------------------------------


def test_llama_cpp_penalty_is_the_transformers_one():
    """The logits processor `afinar eval` gives llama.cpp: transformers' repetition penalty, token for token (every id
    of the prompt and of the answer so far; positive logits divided, negative multiplied)."""
    import numpy as np
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor

    from afinar.inference.engines.llamacpp import transformers_penalty

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, size=30)  # repeats included
    scores = rng.normal(size=50).astype(np.float32)
    expected = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor(ids)[None], torch.tensor(scores)[None])[0].numpy()
    np.testing.assert_allclose(transformers_penalty(1.3)(ids, scores.copy()), expected, rtol=1e-6)


def test_eval_through_llama_cpp_gives_the_transformers_answers(smol_run, tiny_run, tmp_path, monkeypatch):
    """`--motor llama.cpp`: base and tuned as GGUF f16 (the tuned one merged in memory) give the greedy answers of
    transformers, up to f16 rounding; the base is converted once and cached. `auto` on a model llama.cpp's converter
    refuses (the tiny test tokenizer's pre-tokenizer) answers with transformers instead of failing."""
    pytest.importorskip("llama_cpp")
    monkeypatch.setenv("AFINAR_HOME", str(tmp_path / "home"))
    kwargs = dict(n=4, passes=("greedy",), show_examples=True, progress=False, max_new_tokens=12)
    reference = evaluate_run(smol_run, engine="transformers", **kwargs)
    fast = evaluate_run(smol_run, engine="llama.cpp", **kwargs)
    assert reference["meta"]["engine"] == "transformers" and fast["meta"]["engine"] == "llama.cpp (GGUF f16)"
    same = {side: sum(a["outputs"]["greedy"][side]["text"] == b["outputs"]["greedy"][side]["text"]
                      for a, b in zip(reference["samples"], fast["samples"])) for side in ("base", "tuned")}
    answered = len(fast["samples"])  # the run's held-out questions (2 of its 16 rows)
    assert answered >= 2 and same == {"base": answered, "tuned": answered}, same  # initialised away from near-ties
    cached = list((tmp_path / "home" / "evaluacion" / "gguf").glob("*.gguf"))
    assert len(cached) == 1
    note = json.loads(cached[0].with_name(cached[0].name + ".json").read_text(encoding="utf-8"))
    assert Path(note["source"]).is_dir()  # the folder it came from: deleted with it (below)
    stamp = cached[0].stat().st_mtime_ns
    again = evaluate_run(smol_run, engine="auto", **kwargs)  # installed: llama.cpp, the base not converted again
    assert again["meta"]["engine"] == "llama.cpp (GGUF f16)" and cached[0].stat().st_mtime_ns == stamp
    assert evaluate_run(tiny_run, engine="auto", **kwargs)["meta"]["engine"] == "transformers"
    with pytest.raises(AfinarError) as err:  # asked for by name: the converter's own error
        evaluate_run(tiny_run, engine="llama.cpp", **kwargs)
    assert err.value.code == "X023"


def test_eval_engine_choice(tiny_run, monkeypatch):
    from afinar.evaluate import llamacpp
    from afinar.runs import open_ref

    ref = open_ref(tiny_run)
    with pytest.raises(AfinarError) as err:
        llamacpp.choose_engine("vllm", ref)
    assert err.value.code == "V006"
    assert llamacpp.choose_engine("transformers", ref) == "transformers"
    monkeypatch.setattr(llamacpp.extras, "available", lambda extra: False)
    assert llamacpp.choose_engine("auto", ref) == "transformers"  # not installed: transformers, no error
    with pytest.raises(AfinarError) as err:
        llamacpp.choose_engine("llama.cpp", ref)
    assert err.value.code == "X020" or "llama" in err.value.message


def test_conversions_of_bases_that_are_gone_are_deleted(tmp_path):
    """~/.cache/afinar/evaluacion/gguf keeps one f16 conversion per base (0.3–2 GB each): when a conversion's base
    folder no longer exists, the next conversion deletes it; those of bases still there, and files without a note
    (older afinar), stay."""
    from afinar.evaluate import llamacpp

    folder, kept_base = tmp_path / "gguf", tmp_path / "base-kept"
    folder.mkdir()
    kept_base.mkdir()
    for name, source in (("gone", tmp_path / "base-deleted"), ("kept", kept_base)):
        (folder / f"{name}-f16.gguf").write_bytes(b"GGUF")
        (folder / f"{name}-f16.gguf.json").write_text(json.dumps({"source": str(source)}), encoding="utf-8")
    (folder / "old-f16.gguf").write_bytes(b"GGUF")
    llamacpp._forget_gone_bases(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["kept-f16.gguf", "kept-f16.gguf.json", "old-f16.gguf"]
