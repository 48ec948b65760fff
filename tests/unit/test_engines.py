"""The three engines answer alike: transformers (base + adapter), llama.cpp (the GGUF export), onnxruntime (ONNX)."""
import numpy as np
import pytest

from afinar.cli import main
from afinar.data.templates import with_system
from afinar.errors import AfinarError
from afinar.inference.engines import (
    LlamaCppEngine,
    OnnxEngine,
    Reply,
    Sampling,
    load_engine,
    pick,
)

QUESTION = [{"role": "user", "content": "¿Qué hago con una quemadura?"}]


@pytest.fixture(scope="module")
def engines(smol_run, smol_export):
    return {
        "transformers": load_engine([smol_run]),
        "llama.cpp": load_engine([smol_export]),
        "onnxruntime": load_engine([smol_export / "onnx"]),
        "onnx-fp32": OnnxEngine(smol_export / "onnx", next(iter(load_engine([smol_export / "onnx"]).personalities.values())),
                                quantized=False),
    }


def _ask(engine, sampling):
    model_id, personality = next(iter(engine.personalities.items()))
    return engine.complete(model_id, with_system(QUESTION, personality.system_prompt), sampling)


def test_auto_choice_and_one_personality_each(engines):
    assert {k: e.name for k, e in engines.items()} == {
        "transformers": "transformers", "llama.cpp": "llama.cpp", "onnxruntime": "onnxruntime", "onnx-fp32": "onnxruntime"}
    assert isinstance(engines["llama.cpp"], LlamaCppEngine)
    # chat trims old turns against each model's own window (the tiny model was built with 512 positions)
    assert engines["transformers"].context == engines["onnxruntime"].context == 512
    for engine in engines.values():
        assert list(engine.personalities) == ["mini"]
        assert engine.personalities["mini"].system_prompt == "Eres un asistente."


def test_greedy_answers_agree_across_engines(engines):
    greedy = Sampling(temperature=0.0, repetition_penalty=1.0, max_tokens=12)
    replies = {name: _ask(engine, greedy) for name, engine in engines.items()}
    reference = replies["transformers"]
    assert reference.completion_tokens == 12 and reference.text
    # fp32 ONNX runs the same arithmetic: the same text. The f16 GGUF: the same start (see export checks); a random
    # model's later tokens are near-ties that f16 rounding may flip, and its "words" run several tokens long.
    assert replies["onnx-fp32"].text == reference.text
    assert replies["llama.cpp"].text.split()[:2] == reference.text.split()[:2]
    for reply in replies.values():
        assert reply.prompt_tokens == reference.prompt_tokens and not reply.stopped


def test_streaming_pieces_add_up_and_seed_repeats(engines):
    for name in ("llama.cpp", "onnxruntime"):
        engine = engines[name]
        sampled = Sampling(temperature=0.9, top_p=0.9, top_k=50, max_tokens=10, seed=7)
        items = list(engine.stream("mini", with_system(QUESTION, "Eres un asistente."), sampled))
        assert isinstance(items[-1], Reply) and all(isinstance(i, str) for i in items[:-1])
        assert "".join(items[:-1]).strip() == items[-1].text
        again = _ask(engine, sampled)
        assert again.text == items[-1].text, name
        other = _ask(engine, Sampling(temperature=0.9, top_p=0.9, top_k=50, max_tokens=10, seed=8))
        assert other.text != again.text, name


def test_pick_follows_transformers_order():
    rng = np.random.default_rng(0)
    logits = np.array([1.0, 3.0, 2.9, -1.0])
    assert pick(logits, set(), Sampling(temperature=0.0, repetition_penalty=1.0), rng) == 1
    # the penalty divides positive logits of tokens already seen: 3.0/1.5 = 2.0 < 2.9
    assert pick(logits, {1}, Sampling(temperature=0.0, repetition_penalty=1.5), rng) == 2
    draws = {pick(logits, set(), Sampling(temperature=1.0, top_k=2, top_p=1.0, repetition_penalty=1.0), rng) for _ in range(200)}
    assert draws == {1, 2}
    draws = {pick(logits, set(), Sampling(temperature=1.0, top_p=0.4, repetition_penalty=1.0), rng) for _ in range(100)}
    assert draws == {1}


def test_chat_on_each_engine_from_the_cli(smol_run, smol_export, capsys):
    for source in (smol_run, smol_export, smol_export / "onnx"):
        assert main(["chat", str(source), "--prompt", "Hola", "--max-new-tokens", "4", "--temperature", "0"]) == 0
        assert capsys.readouterr().out.strip()


def test_engine_mismatches_are_clear(smol_run, smol_export, tiny_base):
    with pytest.raises(AfinarError) as info:
        load_engine([smol_run], "llama.cpp")
    assert info.value.code == "S012"
    with pytest.raises(AfinarError) as info:
        load_engine([smol_export, smol_run])
    assert info.value.code == "S011"
    with pytest.raises(AfinarError) as info:
        load_engine([smol_run], "vllm")
    assert info.value.code == "S012"
    engine = load_engine([smol_run])
    with pytest.raises(AfinarError) as info:
        engine.get("otro")
    assert info.value.code == "S010"


def test_time_limit_cuts_the_answer(engines):
    for name, engine in engines.items():
        reply = _ask(engine, Sampling(temperature=0.0, max_tokens=200, timeout_s=1e-6))
        assert reply.completion_tokens < 200 and not reply.stopped, name


# --- llama.cpp: many answers decoded together (afinar eval) ---------------------------------------------------------


def _prompt_ids(engine, questions):
    return [engine._ids(with_system([{"role": "user", "content": q}], "Eres un asistente.")) for q in questions]


QUESTIONS = ["¿Qué hago con una quemadura?", "¿Y si sangra mucho la nariz de un niño pequeño?", "¿Fiebre?"]


def test_answers_decoded_together_are_the_answers_decoded_alone(engines, monkeypatch):
    """One llama.cpp batch per token for all answers: each answer is the one it gets alone (its own sequence, its
    own positions), whatever the prompts' lengths and each answer's limit; greedy and seeded sampling alike."""
    from afinar.inference.engines import llamacpp

    engine = engines["llama.cpp"]
    prompts = _prompt_ids(engine, QUESTIONS)
    assert len({len(p) for p in prompts}) == 3
    greedy = [Sampling(temperature=0.0, repetition_penalty=1.3, max_tokens=limit) for limit in (12, 5, 9)]
    sampled = [Sampling(temperature=0.9, top_p=0.9, top_k=50, max_tokens=10, seed=seed) for seed in (1, 2, 3)]
    finished = []
    together = {name: engine.answer_many("mini", prompts, samplings, on_answer=lambda: finished.append(1))
                for name, samplings in (("greedy", greedy), ("sampled", sampled))}
    assert len(finished) == 6  # the progress bar moves once per answer
    assert [r.completion_tokens for r in together["greedy"]] == [12, 5, 9]
    assert all(not r.stopped and r.text for r in together["greedy"])
    assert [r.prompt_tokens for r in together["greedy"]] == [len(p) for p in prompts]
    monkeypatch.setattr(llamacpp, "MAX_SEQUENCES", 1)
    for name, samplings in (("greedy", greedy), ("sampled", sampled)):
        alone = engine.answer_many("mini", prompts, samplings)
        assert [r.text for r in alone] == [r.text for r in together[name]], name
    # seeded: the same seed, the same answer; another seed, another
    other = engine.answer_many("mini", prompts[:1], [Sampling(temperature=0.9, top_p=0.9, top_k=50, max_tokens=10,
                                                              seed=8)])
    assert other[0].text != together["sampled"][0].text


def test_answers_together_end_at_a_stop_token_or_a_stop_string(engines, monkeypatch):
    engine = engines["llama.cpp"]
    prompts = _prompt_ids(engine, QUESTIONS[:2])
    greedy = [Sampling(temperature=0.0, repetition_penalty=1.3, max_tokens=12)] * 2
    (first, _), (second, _) = engine._decode_together(prompts, greedy, ())
    text = engine._decode(first)
    # A stop token: the first answer's third token ends it there (stopped, two tokens); the other goes on.
    monkeypatch.setattr(engine, "eos", engine.eos | {first[2]})
    ended, going = engine.answer_many("mini", prompts, greedy)
    assert (ended.completion_tokens, ended.stopped, ended.text) == (2, True, engine._decode(first[:2]).strip())
    if first[2] not in second:
        assert going.completion_tokens == 12 and not going.stopped
    monkeypatch.undo()
    # A stop string (a marker that is not one token): the answer is cut before it, stopped, the token kept.
    k = next(k for k in range(2, 11) if (piece := engine._decode(first[:k + 1])[len(engine._decode(first[:k])):])
             .strip() and "\ufffd" not in piece and piece not in engine._decode(first[:k]))
    marker = engine._decode(first[:k + 1])[len(engine._decode(first[:k])):]  # the text of its token k + 1
    monkeypatch.setattr(engine, "_stop_strings", lambda model_id: (marker,))
    reply = engine.answer_many("mini", prompts[:1], greedy[:1])[0]
    assert (reply.stopped, reply.completion_tokens, reply.text) == (True, k + 1, engine._decode(first[:k]).strip())
    assert text.strip().startswith(reply.text)


def test_answers_together_in_groups_that_fit_the_kv_budget(engines, monkeypatch):
    from afinar.inference.engines import llamacpp

    engine = engines["llama.cpp"]
    prompts = _prompt_ids(engine, QUESTIONS)
    greedy = [Sampling(temperature=0.0, max_tokens=6)] * 3
    assert engine._group_size(prompts, greedy) == 3 or engine._group_size(prompts, greedy) == llamacpp.MAX_SEQUENCES
    expected = [r.text for r in engine.answer_many("mini", prompts, greedy)]
    monkeypatch.setattr(llamacpp, "KV_BUDGET", 1)  # no room for two: one answer per group
    assert engine._group_size(prompts, greedy) == 1
    assert [r.text for r in engine.answer_many("mini", prompts, greedy)] == expected
