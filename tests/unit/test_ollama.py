"""The Ollama Modelfile: its Go template renders what the model was trained on."""
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
        ("{{ .Falta }}-", {}, "-"),
    ],
)
def test_go_template_subset_follows_go_rules(template, data, expected):
    assert ollama.render_go_template(template, data) == expected


def test_go_template_refuses_what_it_does_not_know():
    with pytest.raises(ValueError):
        ollama.render_go_template("{{ len .Messages }}", {"Messages": []})
    with pytest.raises(ValueError):
        ollama.render_go_template("{{ if .X }}sin cerrar", {"X": 1})
