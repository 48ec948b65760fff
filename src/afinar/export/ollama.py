"""An Ollama `Modelfile` beside the GGUF, whose TEMPLATE renders exactly what the model was trained on.

The TEMPLATE comes from the run's chat format (data/chat_format.py): for each family afinar knows (`family_of`),
Ollama's own Go template where Ollama has one (chatml, zephyr, phi-3, gemma-instruct; their stops from Ollama's
`template/<name>.json`), and afinar's where it has none or differs (Llama 3.2 with its dated system header, the
two formats of our guides). It is checked at export time by rendering known conversations both ways: with the
tokenizer's own Jinja template, and with the Modelfile the way Ollama does it (SYSTEM prepended as a system message
when the chat has none, consecutive turns of one role merged, then the Go template; export/gotemplate.py runs it).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from afinar.atomic import atomic_write_text
from afinar.config import GenerationSection
from afinar.data.chat_format import PINNED_DATE, PROBE, family_of
from afinar.errors import AfinarError
from afinar.export import gotemplate
from afinar.models import load_tokenizer
from afinar.ollama_store import OllamaModel, is_ollama_spec, parse_name

# Ollama's template/<name>.gotmpl, verbatim (tests/data/ollama holds them with Ollama's expected renders).
CHATML_GO = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)
ZEPHYR_GO = (
    "{{- range .Messages }}<|{{ .Role }}|>\n"
    "{{ .Content }}</s>\n"
    "{{ end }}<|assistant|>\n"
)
PHI3_GO = (
    "{{- range .Messages }}<|{{ .Role }}|>\n"
    "{{ .Content }}<|end|>\n"
    "{{ end }}<|assistant|>\n"
)
GEMMA_GO = (
    '{{- $system := "" }}\n'
    "{{- range .Messages }}\n"
    '{{- if eq .Role "system" }}\n'
    "{{- if not $system }}{{ $system = .Content }}\n"
    '{{- else }}{{ $system = printf "%s\\n\\n%s" $system .Content }}\n'
    "{{- end }}\n"
    "{{- continue }}\n"
    '{{- else if eq .Role "user" }}<start_of_turn>user\n'
    "{{- if $system }}\n"
    "{{ $system }}\n"
    '{{- $system = "" }}\n'
    "{{- end }}\n"
    '{{- else if eq .Role "assistant" }}<start_of_turn>model\n'
    "{{- end }}\n"
    "{{ .Content }}<end_of_turn>\n"
    "{{ end }}<start_of_turn>model\n"
)
# Ollama's llama3-instruct has no system header when a chat has no system message, and no date lines; Llama 3.2's
# own template (and afinar's `llama3`) always writes both. This one renders what the model was trained on.
LLAMA3_GO = (
    "<|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\n"
    "Today Date: " + PINNED_DATE + "\n\n"
    "{{ if .System }}{{ .System }}{{ end }}<|eot_id|>\n"
    '{{- range .Messages }}{{ if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n'
    "{{ .Content }}<|eot_id|>\n"
    "{{- end }}{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
USUARIO_ASISTENTE_GO = (
    "{{- range .Messages }}"
    '{{- if eq .Role "system" }}{{ .Content }}\n\n'
    '{{ else if eq .Role "user" }}Usuario: {{ .Content }}\n'
    '{{ else if eq .Role "assistant" }}Asistente: {{ .Content }}{EOS}\n'
    "{{ end }}"
    "{{- end }}Asistente:"
)
TUTOR_PHI2_GO = (
    "{{- range .Messages }}<|{{ .Role }}|>\n"
    "{{ .Content }}<|end|>\n"
    '{{ if eq .Role "assistant" }}{EOS}{{ end }}'
    "{{- end }}<|assistant|>\n"
)
# family → (Go template with {EOS} for the tokenizer's eos, Ollama's stops; the eos is always added).
GO_TEMPLATES = {
    "chatml": (CHATML_GO, ("<|im_start|>", "<|im_end|>")),
    "zephyr": (ZEPHYR_GO.replace("</s>", "{EOS}"), ("<|system|>", "<|user|>", "<|assistant|>")),
    "llama3": (LLAMA3_GO, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    "phi3": (PHI3_GO, ("<|end|>", "<|system|>", "<|user|>", "<|assistant|>")),
    "gemma": (GEMMA_GO, ("<start_of_turn>", "<end_of_turn>")),
    "usuario-asistente": (USUARIO_ASISTENTE_GO, ("Usuario:",)),
    "tutor-phi2": (TUTOR_PHI2_GO, ("<|end|>", "<|user|>", "<|system|>")),
}
# Used to check the translation: two user turns in a row (Ollama merges them), an answer, a follow-up.
KNOWN_CONVERSATION = [
    {"role": "user", "content": "Hola."},
    {"role": "user", "content": "¿Qué hago ante una quemadura?"},
    {"role": "assistant", "content": "Enfríala con agua corriente 20 minutos.\nNo uses hielo."},
    {"role": "user", "content": "¿Y si sale ampolla?"},
]


def _render(tokenizer, messages: list[dict]) -> str:
    """The prompt the model sees, without a leading BOS: llama.cpp and Ollama add it themselves from the GGUF."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    written = "bos_token" in (tokenizer.chat_template or "")  # Llama 3 and Gemma write it; ChatML's <|im_start|> is text
    return text[len(bos):] if written and bos and text.startswith(bos) else text


def default_system(tokenizer, family: str | None = None) -> str | None:
    """The system prompt the template inserts by itself when a chat has none (SmolLM2, Qwen2.5 do), if any: the
    text a system message would need to render the same."""
    family = family or family_of(tokenizer, tokenizer.chat_template)
    if family is None:
        return None
    user = [PROBE[1]]
    alone = _render(tokenizer, user)
    with_marker = _render(tokenizer, [PROBE[0], *user])
    before, _, after = with_marker.partition(PROBE[0]["content"])
    if alone == with_marker.replace(PROBE[0]["content"], "") or not (alone.startswith(before) and alone.endswith(after)):
        return None
    found = alone[len(before): len(alone) - len(after)]
    return found if found and _render(tokenizer, [{"role": "system", "content": found}, *user]) == alone else None


def _quote(value: str, what: str) -> str:
    if '"""' in value:
        raise AfinarError("X040", f"el {what} contiene comillas triples, que un Modelfile no puede llevar.")
    return f'"""{value}"""'


def go_template(family: str, eos: str) -> tuple[str, tuple[str, ...]]:
    """The family's Go TEMPLATE and its stops (the eos last), with the tokenizer's eos written in."""
    template, stops = GO_TEMPLATES[family]
    return template.replace("{EOS}", eos), tuple(dict.fromkeys([*stops, eos]))


def modelfile_text(gguf_name: str, system: str | None, gen: GenerationSection, family: str = "chatml",
                   eos: str = "<|im_end|>") -> str:
    template, stops = go_template(family, eos)
    lines = [
        "# Generado por afinar. Crear el modelo: ollama create NOMBRE -f Modelfile",
        f"# Plantilla: {family} (la misma con la que se entrenó; comprobada al exportar)",
        f"FROM ./{gguf_name}",
        f"TEMPLATE {_quote(template, 'plantilla')}",
    ]
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    lines += [
        f"PARAMETER temperature {gen.temperature:g}",
        f"PARAMETER top_p {gen.top_p:g}",
        f"PARAMETER repeat_penalty {gen.repetition_penalty:g}",
        f"PARAMETER num_predict {gen.max_new_tokens}",
    ]
    if system:
        lines.append(f"SYSTEM {_quote(system, 'mensaje de sistema')}")
    return "\n".join(lines) + "\n"


def parse_modelfile(text: str) -> dict:
    """TEMPLATE, SYSTEM, FROM and PARAMETERs of a Modelfile (the subset afinar writes)."""
    out: dict = {"parameters": []}
    for m in re.finditer(r'^(TEMPLATE|SYSTEM)\s+"""(.*?)"""', text, flags=re.DOTALL | re.MULTILINE):
        out[m.group(1).lower()] = m.group(2)
    for m in re.finditer(r"^(FROM|PARAMETER)\s+(.+)$", text, flags=re.MULTILINE):
        if m.group(1) == "FROM":
            out["from"] = m.group(2).strip()
        else:
            out["parameters"].append(m.group(2).strip())
    return out


def _merge_same_role(messages: list[dict]) -> list[dict]:
    """Consecutive turns of one role become one, joined by a blank line (Ollama's `collate`)."""
    merged: list[dict] = []
    for message in messages:
        if merged and merged[-1]["role"] == message["role"]:
            merged[-1] = {**merged[-1], "content": merged[-1]["content"] + "\n\n" + message["content"]}
        else:
            merged.append(dict(message))
    return merged


def ollama_prompt(modelfile: str, messages: list[dict]) -> str:
    """The prompt Ollama's chat endpoint builds from a Modelfile and a conversation."""
    parsed = parse_modelfile(modelfile)
    if parsed.get("system") and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": parsed["system"]}, *messages]
    return execute(parsed.get("template", "{{ .Prompt }}"), messages)


def execute(template: str, messages: list[dict]) -> str:
    """Ollama's `Template.Execute` for a chat: consecutive turns of one role merged, the system turns joined as
    `.System`, the messages as `.Messages`."""
    collated = [{"Role": m["role"], "Content": m["content"]} for m in _merge_same_role(messages)]
    system = "\n\n".join(m["Content"] for m in collated if m["Role"] == "system")
    return render_go_template(template, {"Messages": collated, "System": system})


def check_modelfile(modelfile: str, tokenizer, system: str | None) -> None:
    """Known conversations (ours, and one with a system message of its own) rendered by the Modelfile as Ollama
    would and by the tokenizer's template must be the same text."""
    from afinar.data.templates import with_system

    chats = [KNOWN_CONVERSATION, [{"role": "system", "content": "Otro sistema."}, *KNOWN_CONVERSATION[1:]]]
    for chat in chats:
        expected = _render(tokenizer, with_system(_merge_same_role(chat), system))
        if ollama_prompt(modelfile, chat) != expected:
            raise AfinarError("X041", "la plantilla del Modelfile no reproduce la del modelo afinado; no se escribe.")


def require_family(tokenizer) -> str:
    family = family_of(tokenizer, tokenizer.chat_template) if tokenizer.chat_template else None
    if family is None:
        raise AfinarError("X040", "no sé traducir a Ollama esta plantilla de chat: no se parece a ninguna de las que "
                                  "afinar conoce (" + ", ".join(GO_TEMPLATES) + ").",
                          hint="usa el GGUF directamente con llama.cpp (lleva la plantilla dentro), escribe el "
                               "TEMPLATE a mano, o entrena con data.template: una de esas")
    return family


def write_modelfile(folder: Path, gguf_name: str, tokenizer, system: str | None, gen: GenerationSection,
                    family: str | None = None) -> Path:
    """The checked Modelfile; `family`: the tokenizer's, when the caller already knows it (`require_family`)."""
    family = family or require_family(tokenizer)
    system = system if system is not None else default_system(tokenizer, family)
    text = modelfile_text(gguf_name, system, gen, family, tokenizer.eos_token)
    check_modelfile(text, tokenizer, system)
    return atomic_write_text(folder / "Modelfile", text)


def render_go_template(template: str, data: dict) -> str:
    return gotemplate.render(template, data)


CREATE_TIMEOUT_S = 1800  # `ollama create` copies and hashes the GGUF into Ollama's store: minutes on big models


def ollama_model_name(base: str | None, default: str) -> str:
    """The name to suggest for `ollama create`: NAME-afinado when the run's base came from Ollama (`ollama:NAME`)."""
    if is_ollama_spec(base):
        try:
            return parse_name(base).tuned()
        except AfinarError:
            return default
    return default


def create_command(name: str, modelfile: Path) -> str:
    return f"cd {modelfile.parent} && ollama create {name} -f {modelfile.name}"


def require_ollama(name: str) -> str:
    """The `ollama` program for `--ollama-crear NAME` (X042 without it, or with a name Ollama would refuse)."""
    import shutil

    try:
        parse_name(name)
    except AfinarError as exc:
        raise AfinarError("X042", f"--ollama-crear: {exc.message}", hint=exc.hint) from None
    program = shutil.which("ollama")
    if program is None:
        raise AfinarError("X042", "pediste --ollama-crear pero el programa `ollama` no está en el PATH.",
                          hint="instala Ollama (https://ollama.com/download) o exporta sin --ollama-crear y crea el "
                               "modelo después con `ollama create`")
    return program


def create_in_ollama(modelfile: Path, name: str, timeout: float = CREATE_TIMEOUT_S) -> None:
    """`ollama create NAME -f Modelfile` in the Modelfile's folder (its FROM is relative); X043 with the command's last
    line of error output if it fails. What was written stays either way."""
    import subprocess

    program = require_ollama(name)
    again = f"los archivos escritos se quedan; repite a mano: {create_command(name, modelfile)}"
    try:
        done = subprocess.run([program, "create", name, "-f", modelfile.name], cwd=modelfile.parent,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise AfinarError("X043", f"`ollama create {name}` no terminó en {timeout:g} s.", where=str(modelfile),
                          hint=again) from None
    except OSError as exc:
        raise AfinarError("X043", f"no se pudo ejecutar `ollama` ({exc.strerror or exc}).", where=str(modelfile),
                          hint=again) from None
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or done.stdout or "").splitlines() if line.strip()]
        last = lines[-1][:300] if lines else "sin detalle"
        hint = again
        if "connect" in last.lower() or "running" in last.lower():
            hint = f"¿está Ollama en marcha (ollama serve o la aplicación)? {again}"
        raise AfinarError("X043", f"`ollama create {name}` falló (código {done.returncode}): {last}",
                          where=str(modelfile), hint=hint)


# --- the Ollama template against the GGUF's own -------------------------------------------------------------------

_RESPONSE = re.compile(r"\{\{-?\s*\.Response\s*-?\}\}")
_warned: set[str] = set()


def ollama_render(template: str, messages: list[dict]) -> str:
    """The prompt Ollama builds for a chat (template/template.go `Execute`): `.Messages` templates get the collated
    chat; older ones (`.System`/`.Prompt`/`.Response`) are run once per exchange, the last one cut at `.Response`."""
    if re.search(r"\.Messages\b", template):
        return execute(template, messages)
    merged = _merge_same_role(messages)
    cut = _RESPONSE.search(template)
    last = template[:cut.start()] if cut else template
    out, values = [], {"System": "", "Prompt": "", "Response": ""}
    for message in merged:
        role, content = message["role"], message["content"]
        if (role == "system" and (values["Prompt"] or values["Response"])) or (role == "user" and values["Response"]):
            out.append(render_go_template(template if cut else template + "{{ .Response }}", values))
            values = {"System": "", "Prompt": "", "Response": ""}
        if key := {"system": "System", "user": "Prompt", "assistant": "Response"}.get(role):
            values[key] = content
    out.append(render_go_template(last, values))
    return "".join(out)


def template_differences(template: str, tokenizer) -> list[tuple[str, str]]:
    """(Ollama's prompt, the tokenizer's) for each known conversation on which they differ; a conversation the
    tokenizer's Jinja refuses (Gemma's and its system role) is skipped. ValueError when the Go template cannot be run."""
    chats = [KNOWN_CONVERSATION, [{"role": "system", "content": "Eres un asistente."}, *KNOWN_CONVERSATION[1:]]]
    found = []
    for chat in chats:
        try:
            expected = _render(tokenizer, _merge_same_role(chat))
        except Exception:  # noqa: BLE001 — jinja's TemplateError (raise_exception) and friends
            continue
        got = ollama_render(template, chat)
        if got != expected:
            found.append((got, expected))
    return found


def _first_difference(a: str, b: str) -> str:
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"desde el carácter {i}: Ollama {a[i:i + 40]!r}, GGUF {b[i:i + 40]!r}"


def check_template(model: OllamaModel, folder: str | os.PathLike) -> list[tuple[str, str]]:
    """Warn (once per GGUF) when the Ollama TEMPLATE does not render the GGUF's own chat template's prompts: training
    uses the GGUF's; the Modelfile `afinar export` writes carries the one the model was trained with."""
    if model.template is None or model.digest in _warned:
        return []
    tokenizer = load_tokenizer(folder)
    if not tokenizer.chat_template:
        return []
    _warned.add(model.digest)
    tail = ("Se entrena con la plantilla del GGUF, y el Modelfile que escribe `afinar export --formato ollama` lleva la "
            "plantilla con la que se entrenó (no la de Ollama).")
    try:
        found = template_differences(model.template, tokenizer)
    except ValueError as exc:
        print(f"  aviso: no se pudo comparar la plantilla de Ollama de {model.name} con la del GGUF ({exc}). {tail}")
        return []
    if found:
        print(f"  aviso: la plantilla de Ollama de {model.name} no da el mismo texto que la plantilla de chat del GGUF "
              f"({_first_difference(*found[0])}); suele ser solo espacios o el mensaje de sistema por defecto. {tail}")
    return found
