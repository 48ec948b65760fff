import copy

import pytest

from afinar.data.formats import Example
from afinar.data.templates import IGNORE, collate, encode, encode_examples, with_system


def conversation(turns=1):
    messages = [{"role": "system", "content": "Eres un asistente."}]
    for i in range(turns):
        messages += [{"role": "user", "content": f"¿Qué hago con la quemadura {i}?"},
                     {"role": "assistant", "content": f"Enfría con agua corriente {i} minutos."}]
    return messages


def test_labels_only_on_assistant_and_end_with_eos(tokenizer):
    enc = encode(tokenizer, conversation())
    trained = [t for t, label in zip(enc.input_ids, enc.labels) if label != IGNORE]
    assert tokenizer.decode(trained) == "Enfría con agua corriente 0 minutos.<|im_end|>"
    last = max(i for i, label in enumerate(enc.labels) if label != IGNORE)
    assert enc.labels[last] == tokenizer.eos_token_id
    # Nothing of the system or user turns, nor the role header, is trained.
    header = tokenizer.apply_chat_template(conversation()[:-1], tokenize=False, add_generation_prompt=True)
    n_header = len(tokenizer(header, add_special_tokens=False).input_ids)
    assert all(label == IGNORE for label in enc.labels[:n_header])


def test_every_assistant_turn_is_closed_by_eos(tokenizer):
    enc = encode(tokenizer, conversation(turns=3))
    closed = [i for i, label in enumerate(enc.labels) if label == tokenizer.eos_token_id]
    assert len(closed) == 3
    for i in closed:  # the token after each trained eos is not trained (the "\n" and the next header)
        assert i + 1 == len(enc.labels) or enc.labels[i + 1] == IGNORE


def test_system_prompt_added_only_when_missing():
    user = [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]
    assert with_system(user, "S")[0] == {"role": "system", "content": "S"}
    assert with_system(conversation(), "otro")[0]["content"] == "Eres un asistente."


def test_padding_never_hides_eos_even_when_pad_is_eos(tokenizer):
    short, long = encode(tokenizer, conversation(1)), encode(tokenizer, conversation(2))
    batch = collate([short, long], pad_id=tokenizer.eos_token_id)  # the seeds' pad_token = eos_token
    for row in range(2):
        labels = batch["labels"][row]
        kept = labels[labels != IGNORE]
        assert int(kept[-1]) == tokenizer.eos_token_id
        assert int(batch["attention_mask"][row].sum()) == len((short, long)[row].input_ids)


def test_the_seeds_collator_would_hide_eos(tokenizer):
    """Documents the bug we avoid: DataCollatorForLanguageModeling with pad = eos masks every eos."""
    from transformers import DataCollatorForLanguageModeling

    seeds_tokenizer = copy.deepcopy(tokenizer)
    seeds_tokenizer.pad_token = seeds_tokenizer.eos_token
    naive = DataCollatorForLanguageModeling(tokenizer=seeds_tokenizer, mlm=False)
    enc = encode(seeds_tokenizer, conversation())
    assert tokenizer.eos_token_id in enc.input_ids
    labels = naive([{"input_ids": enc.input_ids}])["labels"][0]
    assert tokenizer.eos_token_id not in labels.tolist()


@pytest.mark.parametrize("policy, kept, dropped, truncated", [("drop", 1, 1, 0), ("truncate", 2, 0, 1)])
def test_overlength_policies_are_counted(tokenizer, policy, kept, dropped, truncated):
    short = Example("f.jsonl", 1, "chat", conversation(1)[1:])
    long = Example("f.jsonl", 2, "chat", conversation(6)[1:])
    limit = len(encode(tokenizer, short.messages).input_ids) + 2
    out, problems, stats = encode_examples(tokenizer, [short, long], None, limit, policy)
    assert (len(out), stats["dropped"], stats["truncated"], stats["too_long"]) == (kept, dropped, truncated, 1)
    assert [(p.line, p.code, p.severity) for p in problems] == [(2, "D010", "warning")]
    assert all(len(e.input_ids) <= limit for e in out)
    out, problems, _ = encode_examples(tokenizer, [short, long], None, limit, "error")
    assert problems[0].severity == "error"
