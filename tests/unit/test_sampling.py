"""The one decode loop (inference/sampling.py) on a scripted runtime: no model, a character vocabulary."""
import numpy as np
import pytest

from afinar.inference.sampling import (
    Reply,
    Sampling,
    collect,
    generate,
    greedy_decode,
    sample_tokens,
)

PIECES = ["<eos>", "Ho", "la", " ", "F", "I", "N", "FI", "<", "|", "!", "x", "é"]
EOS = 0
GREEDY = Sampling(temperature=0.0, repetition_penalty=1.0, max_tokens=50)


def ids(*pieces: str) -> list[int]:
    return [PIECES.index(p) for p in pieces]


def decode(tokens: list[int]) -> str:
    return "".join(PIECES[t] for t in tokens if t != EOS)


def scripted(tokens: list[int]):
    """A runtime whose next token is always the next of `tokens` (then the stop token); records every call."""
    calls: list[list[int]] = []

    def step(new_ids: list[int]):
        calls.append(list(new_ids))
        logits = np.zeros(len(PIECES), dtype=np.float32)
        logits[tokens[len(calls) - 1] if len(calls) <= len(tokens) else EOS] = 5.0
        return logits

    return step, calls


def stream(tokens, stop_strings=(), sampling=GREEDY):
    step, calls = scripted(tokens)
    items = list(generate(step, [1, 2], {EOS}, sampling, decode, stop_strings))
    assert isinstance(items[-1], Reply) and all(isinstance(i, str) and i for i in items[:-1])
    return items[:-1], items[-1], calls


def test_greedy_decode_stops_at_the_stop_token_or_the_limit():
    step, calls = scripted(ids("Ho", "la", "!"))
    assert greedy_decode(step, [1], {EOS}, 10) == (ids("Ho", "la", "!"), True)
    assert calls[0] == [1] and calls[1:] == [[t] for t in ids("Ho", "la", "!")]
    step, calls = scripted(ids("Ho", "la", "!"))
    assert greedy_decode(step, [1], {EOS}, 2) == (ids("Ho", "la"), False)


def test_closing_the_token_generator_stops_the_runtime():
    step, calls = scripted(ids("Ho", "la", "!"))
    tokens = sample_tokens(step, [1], {EOS}, GREEDY)
    assert next(tokens) == ids("Ho")[0]
    tokens.close()
    assert len(calls) == 1  # only the prompt was fed
    assert collect(iter([])) == ([], False)


def test_pieces_add_up_to_the_reply_without_stop_strings():
    pieces, reply, _ = stream(ids("Ho", "la", " ", "F", "I", "N", "!"))
    assert pieces == ["Ho", "la", " ", "F", "I", "N", "!"]
    assert reply == Reply("Hola FIN!", 2, 7, True)


def test_a_stop_string_cuts_the_answer_and_counts_as_stopped():
    pieces, reply, calls = stream(ids("Ho", "la", " ", "F", "I", "N", "!", "x"), stop_strings=("FIN",))
    assert "".join(pieces) == "Hola " and not any("F" in p for p in pieces)
    assert reply == Reply("Hola", 2, 6, True)  # the token that completed "FIN" is counted
    assert len(calls) == 6  # the runtime is not asked for a token after the stop string


def test_a_stop_string_inside_one_token_and_across_tokens():
    pieces, reply, _ = stream(ids("Ho", "FI", "N", "x"), stop_strings=("IN",))
    assert pieces == ["Ho", "F"] and reply.text == "HoF" and reply.stopped
    pieces, reply, _ = stream(ids("Ho", "la", "FI", "x"), stop_strings=("la",))
    assert pieces == ["Ho"] and reply.text == "Ho" and reply.completion_tokens == 2


def test_a_held_back_start_is_released_when_it_turns_out_not_to_be_a_stop_string():
    pieces, reply, _ = stream(ids("Ho", "<", "!", "<", "|", "x"), stop_strings=("<|",))
    assert pieces == ["Ho", "<!"]
    assert reply == Reply("Ho<!", 2, 5, True)
    # cut by max_tokens while holding a possible start: released at the end, nothing lost
    pieces, reply, _ = stream(ids("Ho", "F", "I", "x"), stop_strings=("FIN",),
                              sampling=Sampling(temperature=0.0, repetition_penalty=1.0, max_tokens=3))
    assert pieces == ["Ho", "FI"] and reply == Reply("HoFI", 2, 3, False)


def test_the_earliest_of_several_stop_strings_wins_and_empty_ones_are_ignored():
    pieces, reply, _ = stream(ids("Ho", "la", "!", "x"), stop_strings=("", "!", "ola"))
    assert pieces == ["H"] and reply.text == "H" and reply.completion_tokens == 2
    pieces, reply, _ = stream(ids("F", "I", "N", "Ho"), stop_strings=("FIN",))
    assert pieces == [] and reply == Reply("", 2, 3, True)


def test_half_a_character_is_never_streamed():
    step, _ = scripted(ids("Ho", "é", "x"))

    def split_decode(tokens):  # the "é" token alone is half of a UTF-8 character until the next token arrives
        text = decode(tokens)
        return text[:-1] + "\ufffd" if tokens[-1] == ids("é")[0] else text

    items = list(generate(step, [1], {EOS}, GREEDY, split_decode, ("x!",)))
    # nothing after the "é" token; "x" held back (it may begin "x!") and released when the answer ends
    assert items[:-1] == ["Ho", "é", "x"] and items[-1].text == "Hoéx"


@pytest.mark.parametrize("seed", [0, 1])
def test_sampling_repeats_with_a_seed(seed):
    logits = np.linspace(0.0, 1.0, len(PIECES), dtype=np.float32)
    sampled = Sampling(temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0, max_tokens=8, seed=seed)
    runs = [collect(sample_tokens(lambda new: logits, [1], {EOS}, sampled))[0] for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) <= 8
