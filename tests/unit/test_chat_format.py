"""data.template: named templates, the end of turn derived from a render, and the refusals (data/chat_format.py)."""
import copy

import pytest

from afinar.config import recipe_from_dict
from afinar.data import chat_format
from afinar.data.templates import IGNORE, encode
from afinar.errors import AfinarError

CONVERSATION = [
    {"role": "system", "content": "Eres un tutor."},
    {"role": "user", "content": "¿Qué es una pila?"},
    {"role": "assistant", "content": "Una estructura LIFO."},
    {"role": "user", "content": "¿Y una cola?"},
    {"role": "assistant", "content": "FIFO."},
]


def without_template(tokenizer):
    """The conftest tokenizer as a base model: no chat template, eos <|endoftext|> (phi-2's)."""
    base = copy.deepcopy(tokenizer)
    base.chat_template = None
    base.eos_token = "<|endoftext|>"
    return base


def trained_text(tokenizer, enc) -> list[str]:
    """The trained stretches of an encoding, decoded (special tokens kept)."""
    pieces, run = [], []
    for token, label in zip(enc.input_ids, enc.labels):
        if label != IGNORE:
            run.append(token)
        elif run:
            pieces.append(tokenizer.decode(run))
            run = []
    if run:
        pieces.append(tokenizer.decode(run))
    return pieces


def test_base_model_without_template_needs_one(tokenizer):
    with pytest.raises(AfinarError) as info:
        chat_format.resolve(without_template(tokenizer), "auto")
    assert info.value.code == "M005"
    assert "usuario-asistente" in info.value.hint and "tutor-phi2" in info.value.hint


def test_tutor_phi2_closes_each_answer_with_marker_and_real_eos(tokenizer):
    base = without_template(tokenizer)
    fmt = chat_format.resolve(base, "tutor-phi2")
    # <|end|> is plain text for this tokenizer: it becomes a stop string, and the real eos ends the turn.
    assert fmt.end_of_turn == "<|endoftext|>" and fmt.eos_token_ids == [base.convert_tokens_to_ids("<|endoftext|>")]
    assert "<|end|>" in fmt.stop_strings and fmt.family == "tutor-phi2"
    chat_format.apply(base, fmt)
    enc = encode(base, CONVERSATION)
    assert trained_text(base, enc) == ["Una estructura LIFO.<|end|>\n<|endoftext|>", "FIFO.<|end|>\n<|endoftext|>"]
    text = base.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert text == "<|system|>\nEres un tutor.<|end|>\n<|user|>\n¿Qué es una pila?<|end|>\n<|assistant|>\n"


def test_usuario_asistente_is_the_tinyllama_guides_format(tokenizer):
    base = without_template(tokenizer)
    fmt = chat_format.resolve(base, "usuario-asistente")
    chat_format.apply(base, fmt)
    assert base.apply_chat_template(CONVERSATION[1:3], tokenize=False) == \
        "Usuario: ¿Qué es una pila?\nAsistente: Una estructura LIFO.<|endoftext|>\n"
    assert trained_text(base, encode(base, CONVERSATION)) == [" Una estructura LIFO.<|endoftext|>", " FIFO.<|endoftext|>"]


def test_named_template_needing_tokens_the_base_lacks_is_refused(tokenizer):
    for name in ("llama3", "phi3", "gemma"):
        with pytest.raises(AfinarError) as info:
            chat_format.resolve(without_template(tokenizer), name)
        assert info.value.code == "M014" and "usuario-asistente" in info.value.hint
    # ChatML's markers exist in this tokenizer: accepted, and the end of turn becomes the eos.
    base = without_template(tokenizer)
    fmt = chat_format.resolve(base, "chatml")
    chat_format.apply(base, fmt)
    assert base.eos_token == "<|im_end|>" and fmt.eos_token_ids[0] == base.eos_token_id
    assert base.convert_tokens_to_ids("<|endoftext|>") in fmt.eos_token_ids  # the base's own eos still stops


def test_auto_template_derives_end_of_turn_and_family(tokenizer):
    fmt = chat_format.resolve(copy.deepcopy(tokenizer), "auto", generation_eos=[0])
    assert fmt.end_of_turn == "<|im_end|>" and fmt.family == "chatml"
    assert fmt.eos_token_ids == [tokenizer.convert_tokens_to_ids("<|im_end|>"), 0]


@pytest.mark.parametrize(("jinja", "code"), [
    ("{% for m in messages %}{{ m['content'] }}{% endfor %}{{ raise_exception('no') }}", "M011"),
    ("{% for m in messages %}{% if m['role'] != 'assistant' %}{{ m['content'] }}{% endif %}{% endfor %}", "M012"),
    ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
     "{% if add_generation_prompt %}assistant: {% endif %}", "M013"),
    ("{% for m in messages %}{{ m['content'] }", "M011"),
])
def test_bad_jinja_files_are_refused(tokenizer, tmp_path, jinja, code):
    path = tmp_path / "mia.jinja"
    path.write_text(jinja, encoding="utf-8")
    with pytest.raises(AfinarError) as info:
        chat_format.resolve(copy.deepcopy(tokenizer), str(path))
    assert info.value.code == code


def test_jinja_file_is_used(tokenizer, tmp_path):
    path = tmp_path / "mia.jinja"
    path.write_text(chat_format.TUTOR_PHI2.jinja, encoding="utf-8")
    fmt = chat_format.resolve(without_template(tokenizer), str(path))
    assert fmt.name == str(path) and fmt.family == "tutor-phi2" and fmt.end_of_turn == "<|endoftext|>"
    with pytest.raises(AfinarError) as info:
        chat_format.resolve(tokenizer, str(tmp_path / "no.jinja"))
    assert info.value.code == "M010"


def test_unknown_template_name_is_a_recipe_error(tiny_recipe):
    tiny_recipe["data"]["template"] = "chatlm"
    with pytest.raises(AfinarError) as info:
        recipe_from_dict(tiny_recipe)
    assert info.value.code == "R001" and "chatml" in info.value.message and "tutor-phi2" in info.value.message


def test_date_is_pinned():
    dated = "{% if not date_string is defined %}{% set date_string = strftime_now('%d %b %Y') %}{% endif %}{{ date_string }}"
    pinned, date = chat_format.pin_date(dated)
    assert date == chat_format.PINNED_DATE and chat_format.pin_date(pinned) == (pinned, date)
    import jinja2

    assert jinja2.Template(pinned).render(strftime_now=lambda f: "hoy") == chat_format.PINNED_DATE
    assert chat_format.pin_date("{{ messages }}") == ("{{ messages }}", None)


def test_untrained_marker_rows_are_found_and_warmed_up(tokenizer):
    import torch

    from tests.conftest import make_tiny_model

    model = make_tiny_model(tokenizer)
    fmt = chat_format.resolve(copy.deepcopy(tokenizer), "auto")
    assert chat_format.untrained_tokens(model, tokenizer, fmt) == []  # random rows: all "trained"
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        model.get_output_embeddings().weight[end] = 0
    assert chat_format.untrained_tokens(model, tokenizer, fmt) == [end]
    chat_format.warm_up_tokens(model, [end])
    for matrix in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        others = torch.cat([matrix[:end], matrix[end + 1:]])
        torch.testing.assert_close(matrix[end], others.mean(dim=0))
    # An untied head trains its row too; a tied one follows the embeddings in PEFT.
    assert chat_format.trainable_token_indices(model, [end]) == {"embed_tokens": [end], "lm_head": [end]}


def test_bad_template_stops_training_before_anything_is_written(tiny_recipe, tmp_path, capfd):
    """From the command line: a Spanish message with its code, exit 2, no run folder. (`afinar train` trains in a
    child process it supervises: its messages reach the terminal's stderr, hence capfd.)"""
    import yaml

    from afinar.cli import main

    bad = tmp_path / "rota.jinja"
    bad.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}", encoding="utf-8")
    tiny_recipe["data"]["template"] = "rota.jinja"  # relative to the recipe file
    recipe = tmp_path / "receta.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe), encoding="utf-8")
    assert main(["train", str(recipe)]) == 2
    assert "M013" in capfd.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_template_that_closes_only_some_answers_is_refused(tokenizer):
    """Resolve sees one answer closed; the check with two answers sees the second one is not."""
    only_first = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] }}"
                  "{% if m['role'] != 'assistant' or loop.index0 == 2 %}{{ '<|im_end|>' }}{% endif %}{{ '\n' }}"
                  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    base = copy.deepcopy(tokenizer)
    base.chat_template = only_first
    chat_format.apply(base, chat_format.resolve(base, "auto"))
    with pytest.raises(AfinarError) as info:
        chat_format.check_turns_closed(base)
    assert info.value.code in ("T001", "M013")
    chat_format.check_turns_closed(tokenizer)  # ChatML closes every answer


def test_a_gguf_alone_knows_its_text_stops():
    """A GGUF copied without its run carries only the template: the plain-text markers of ours still stop it."""
    assert chat_format.named_stop_strings(chat_format.TUTOR_PHI2.jinja) == ("<|end|>", "<|user|>", "<|system|>")
    assert chat_format.named_stop_strings(chat_format.USUARIO_ASISTENTE.jinja) == ("Usuario:",)
    assert chat_format.named_stop_strings(chat_format.CHATML.jinja) == ()  # <|im_end|> is a token: llama.cpp's EOG
    assert chat_format.named_stop_strings("{{ otra }}") == ()
