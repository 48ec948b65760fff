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
