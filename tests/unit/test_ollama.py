"""The Ollama Modelfile: its Go template renders what the model was trained on."""
import json
from pathlib import Path

import pytest

from afinar.config import GenerationSection
from afinar.errors import AfinarError
from afinar.export import ollama

# What Ollama sends to the model for KNOWN_CONVERSATION with SYSTEM "Eres un asistente." (written out by hand).
EXPECTED = (
    "<|im_start|>system\nEres un asistente.<|im_end|>\n"
    "<|im_start|>user\nHola.\n\n¿Qué hago ante una quemadura?<|im_end|>\n"
    "<|im_start|>assistant\nEnfríala con agua corriente 20 minutos.\nNo uses hielo.<|im_end|>\n"
    "<|im_start|>user\n¿Y si sale ampolla?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def test_modelfile_renders_a_known_conversation(tokenizer, tmp_path):
    gen = GenerationSection(temperature=0.3, top_p=0.8, repetition_penalty=1.15, max_new_tokens=200)
    path = ollama.write_modelfile(tmp_path, "m-q8_0.gguf", tokenizer, "Eres un asistente.", gen)
    text = path.read_text(encoding="utf-8")
    assert ollama.ollama_prompt(text, ollama.KNOWN_CONVERSATION) == EXPECTED
    parsed = ollama.parse_modelfile(text)
    assert parsed["from"] == "./m-q8_0.gguf" and parsed["system"] == "Eres un asistente."
    assert {'stop "<|im_end|>"', 'stop "<|im_start|>"', "temperature 0.3", "top_p 0.8", "repeat_penalty 1.15",
            "num_predict 200"} <= set(parsed["parameters"])
    # A system message in the chat replaces SYSTEM, as in Ollama.
    chat = [{"role": "system", "content": "Otro."}, {"role": "user", "content": "Hola."}]
    assert ollama.ollama_prompt(text, chat) == tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)


def test_template_default_system_prompt_becomes_system(tokenizer, tmp_path):
    """SmolLM2's template adds its own system prompt when a chat has none; the Modelfile must do the same."""
    smol_like = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nEres SmolLM.<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    tokenizer = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<|im_end|>",
                                    chat_template=smol_like)
    assert ollama.default_system(tokenizer) == "Eres SmolLM."
    text = ollama.write_modelfile(tmp_path, "m.gguf", tokenizer, None, GenerationSection()).read_text(encoding="utf-8")
    assert ollama.parse_modelfile(text)["system"] == "Eres SmolLM."
    assert ollama.ollama_prompt(text, [{"role": "user", "content": "Hola."}]) == tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hola."}], tokenize=False, add_generation_prompt=True)


def test_non_chatml_and_broken_translation_are_refused(tokenizer, tmp_path):
    llama3 = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<|im_end|>",
                                 chat_template="{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}")
    with pytest.raises(AfinarError) as info:
        ollama.write_modelfile(tmp_path, "m.gguf", llama3, None, GenerationSection())
    assert info.value.code == "X040"
    broken = ollama.modelfile_text("m.gguf", "Eres un asistente.", GenerationSection()).replace("{{ .Role }}\n", "{{ .Role }}")
    with pytest.raises(AfinarError) as info:
        ollama.check_modelfile(broken, tokenizer, "Eres un asistente.")
    assert info.value.code == "X041"
    with pytest.raises(AfinarError) as info:
        ollama.modelfile_text("m.gguf", 'con """ dentro', GenerationSection())
    assert info.value.code == "X040"
    assert not (tmp_path / "Modelfile").exists()


@pytest.mark.parametrize(
    ("template", "data", "expected"),
    [
        ("a  {{- .X -}}  b", {"X": "1"}, "a1b"),
        ("{{ if .X }}sí{{ else }}no{{ end }}", {"X": ""}, "no"),
        ("{{ range .L }}[{{ .N }}|{{ $.T }}]{{ else }}vacío{{ end }}", {"L": [{"N": 1}, {"N": 2}], "T": "t"}, "[1|t][2|t]"),
        ("{{ range .L }}x{{ else }}vacío{{ end }}", {"L": []}, "vacío"),
        ("{{ .Falta }}-", {}, "<no value>-"),  # Go prints a missing map key this way
        ('{{ $x := "a" }}{{ range .L }}{{ $x = printf "%s%d" $x . }}{{ if eq . 2 }}{{ break }}{{ end }}{{ end }}{{ $x }}',
         {"L": [1, 2, 3]}, "a12"),
        ("{{ range $i, $m := .L }}{{ if and (eq $i 1) $.T }}[{{ $m }}]{{ else if not $i }}0{{ end }}{{ end }}",
         {"L": ["x", "y"], "T": "t"}, "0[y]"),
        ("{{ len (slice .L 1) }}", {"L": [1, 2, 3]}, "2"),
    ],
)
def test_go_template_subset_follows_go_rules(template, data, expected):
    assert ollama.render_go_template(template, data) == expected


def test_go_template_refuses_what_it_does_not_know():
    with pytest.raises(ValueError):
        ollama.render_go_template("{{ upper .X }}", {"X": "a"})
    with pytest.raises(ValueError):
        ollama.render_go_template('{{ template "x" }}', {})
    with pytest.raises(ValueError):
        ollama.render_go_template("{{ if .X }}sin cerrar", {"X": 1})


# --- Ollama's own templates and expected renders (tests/data/ollama, from Ollama's template/testdata) -------------

GOLDEN = Path(__file__).parent.parent / "data" / "ollama"
# template/template_test.go's three conversations, named as the expected files are.
OLLAMA_CHATS = {
    "user": [{"role": "user", "content": "Hello, how are you?"}],
    "user-assistant-user": [
        {"role": "user", "content": "Hello, how are you?"},
        {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
        {"role": "user", "content": "I'd like to show off how chat templating works!"},
    ],
    "system-user-assistant-user": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello, how are you?"},
        {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
        {"role": "user", "content": "I'd like to show off how chat templating works!"},
    ],
}


def golden(name: str, chat: str) -> str:
    return (GOLDEN / name / chat).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(p.name for p in GOLDEN.iterdir() if p.is_dir()))
@pytest.mark.parametrize("chat", OLLAMA_CHATS)
def test_interpreter_renders_ollamas_own_templates_as_ollama(name, chat):
    """Our Go interpreter, on Ollama's own templates, gives Ollama's expected text byte for byte."""
    template = (GOLDEN / name / "template.gotmpl").read_text(encoding="utf-8")
    assert ollama.execute(template, OLLAMA_CHATS[chat]) == golden(name, chat)


@pytest.mark.parametrize(("family", "theirs"), [("chatml", "chatml"), ("zephyr", "zephyr"), ("phi3", "phi-3"),
                                                 ("gemma", "gemma-instruct")])
def test_modelfile_templates_are_ollamas_own(family, theirs):
    template, stops = ollama.go_template(family, "</s>" if family == "zephyr" else "<eos>")
    assert template == (GOLDEN / theirs / "template.gotmpl").read_text(encoding="utf-8")
    assert set(json.loads((GOLDEN / theirs / "params.json").read_text())["stop"]) <= set(stops)


DATED = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"


@pytest.mark.parametrize(("named", "family", "theirs"), [
    ("chatml", "qwen2", "chatml"), ("zephyr", "tinyllama", "zephyr"), ("phi3", "phi3", "phi-3"),
    ("gemma", "gemma", "gemma-instruct"), ("llama3", "llama3", "llama3-instruct")])
@pytest.mark.parametrize("chat", OLLAMA_CHATS)
def test_named_templates_render_what_ollamas_templates_do(named, family, theirs, chat):
    """afinar's named Jinja templates (what the model is trained on) give Ollama's expected text for Ollama's
    conversations. Llama 3: Llama 3.2's template always writes a system header with two date lines, which Ollama's
    llama3-instruct lacks (our Modelfile writes them: LLAMA3_GO)."""
    from afinar.data.chat_format import NAMED, apply, resolve
    from tests.families import make_family_tokenizer

    tokenizer = make_family_tokenizer(family)
    apply(tokenizer, resolve(tokenizer, named))
    ours = ollama._render(tokenizer, OLLAMA_CHATS[chat])
    expected = golden(theirs, chat)
    if named == "llama3":
        header = "<|start_header_id|>system<|end_header_id|>\n\n"
        expected = (expected.replace(header, header + DATED, 1) if expected.startswith(header)
                    else header + DATED + "<|eot_id|>" + expected)
    assert ours == expected
    assert NAMED[named].jinja  # the template really is afinar's, not the tokenizer's own
    modelfile = ollama.modelfile_text("m.gguf", None, GenerationSection(), named, tokenizer.eos_token)
    assert ollama.ollama_prompt(modelfile, OLLAMA_CHATS[chat]) == ours


@pytest.mark.parametrize(("family", "expected"), [("tinyllama", "zephyr"), ("qwen2", "chatml"), ("llama3", "llama3"),
                                                  ("phi3", "phi3")])
def test_modelfile_for_each_familys_own_template(family, expected, tmp_path):
    """The real templates of the guides' models (in their tokenizers) get a checked Modelfile: Zephyr for TinyLlama,
    ChatML with Qwen's default system prompt, Llama 3.2 with its dated header, Phi-3.5."""
    from afinar.data.chat_format import apply, resolve
    from tests.families import make_family_tokenizer

    tokenizer = make_family_tokenizer(family)
    fmt = resolve(tokenizer, "auto")
    apply(tokenizer, fmt)
    assert fmt.family == expected
    text = ollama.write_modelfile(tmp_path, "m.gguf", tokenizer, None, GenerationSection()).read_text(encoding="utf-8")
    parsed = ollama.parse_modelfile(text)
    assert f"# Plantilla: {expected}" in text and f'stop "{tokenizer.eos_token}"' in parsed["parameters"]
    if family == "qwen2":
        assert parsed["system"] == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    else:
        assert "system" not in parsed
    for chat in OLLAMA_CHATS.values():
        assert ollama.ollama_prompt(text, chat) == ollama._render(tokenizer, chat)
