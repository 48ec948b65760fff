"""The chat format of a run: which template renders the conversations, and where a turn ends.

`data.template` in the recipe picks it: `auto` (the tokenizer's own), one of `NAMED` (the families our users train
and two formats of our guides for base models), or a `.jinja` file. `resolve` checks it against the tokenizer and
derives, from a rendered conversation, the one **end-of-turn** token that everything must agree on:

- the tokenizer's `eos_token` becomes it (so `config.eos_token_id`, `generation_config.eos_token_id`, the labels and
  every runtime read the same id; the family's other stop ids stay in the eos list, e.g. Qwen `[<|im_end|>,
  <|endoftext|>]`);
- training labels cover it after every assistant turn (data/templates.py);
- a marker that is not one token (the phi-2 guide's `<|end|>`) is followed by the real eos in the template, and is
  kept as a *stop string* for runtimes that see text (Ollama, chat).

Nothing here invents special tokens: a named template whose markers the base does not have as single tokens is
refused with the names that suit a base model (their markers are plain text plus the eos the base already knows).
Markers the base has but never trained (Llama 3.2 base's `<|eot_id|>`) are found by their near-zero embedding rows;
training starts them at the mean embedding and trains those rows (`untrained_tokens`, `warm_up_tokens`,
`trainable_token_indices`, used by train.py).
A template that reads the date (Llama 3's `strftime_now`) gets it pinned, so training text does not change from day
to day; the value is recorded.

The template travels inside the tokenizer (tokenizer_config.json and chat_template.jinja), so every later step
(`derive_format` on a saved folder) finds the same end of turn without another file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from afinar.errors import AfinarError
from afinar.models import load_tokenizer

# Meta's own fallback in the Llama 3.x template; pinned instead of the day of rendering.
PINNED_DATE = "26 Jul 2024"
_PIN = '{%- set date_string = "' + PINNED_DATE + '" %}'


@dataclass(frozen=True)
class NamedTemplate:
    name: str
    jinja: str
    summary: str  # Spanish, for the error that lists names
    # Special tokens the template needs as single tokens of the vocabulary (empty: works on any tokenizer).
    markers: tuple[str, ...] = ()
    # Role markers Ollama and chat stop on (the eos is always added); text, so they work multi-token too.
    stops: tuple[str, ...] = ()
    for_base: bool = False  # suits a base model (no markers the base has never seen trained)


CHATML = NamedTemplate(
    "chatml",
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}",
    "ChatML (<|im_start|>…<|im_end|>): Qwen2.5, SmolLM2",
    markers=("<|im_start|>", "<|im_end|>"), stops=("<|im_start|>", "<|im_end|>"),
)
# TinyLlama-1.1B-Chat-v1.0's tokenizer_config.json, verbatim (newlines after `}}` survive HF's trim_blocks).
ZEPHYR = NamedTemplate(
    "zephyr",
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}",
    "Zephyr (<|user|>… eos): TinyLlama-Chat; sirve también para un modelo base (solo usa su eos)",
    stops=("<|system|>", "<|user|>", "<|assistant|>"), for_base=True,
)
# Llama 3.2 Instruct's template without the tool branches; the date pinned (the two date lines stay, as Meta's).
LLAMA3 = NamedTemplate(
    "llama3",
    "{{- bos_token }}\n"
    "{%- if not date_string is defined %}{%- set date_string = \"" + PINNED_DATE + "\" %}{%- endif %}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set system_message = \"\" %}\n"
    "{%- endif %}\n"
    "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n"
    "{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n"
    "{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n"
    "{{- system_message }}\n"
    "{{- \"<|eot_id|>\" }}\n"
    "{%- for message in messages %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n",
    "Llama 3.2 Instruct (<|start_header_id|>…<|eot_id|>, fecha fija " + PINNED_DATE + ")",
    markers=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    stops=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
)
# Phi-3.5-mini-instruct's, without the final `eos_token` of a non-generation render (the turn ends at <|end|>).
PHI3 = NamedTemplate(
    "phi3",
    "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}",
    "Phi-3 (<|user|>…<|end|>): Phi-3 y Phi-3.5 Instruct",
    markers=("<|user|>", "<|assistant|>", "<|end|>"), stops=("<|end|>", "<|system|>", "<|user|>", "<|assistant|>"),
)
# Gemma's turns; a system message is folded into the first user turn, as Ollama's gemma templates do.
GEMMA = NamedTemplate(
    "gemma",
    "{{- bos_token }}"
    "{%- set ns = namespace(system='') %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}"
    "{%- set ns.system = ns.system + '\\n\\n' + message['content'] if ns.system else message['content'] %}"
    "{%- elif message['role'] == 'user' %}"
    "{{- '<start_of_turn>user\\n' }}"
    "{%- if ns.system %}{{- ns.system + '\\n' }}{%- set ns.system = '' %}{%- endif %}"
    "{{- message['content'] + '<end_of_turn>\\n' }}"
    "{%- else %}"
    "{{- '<start_of_turn>model\\n' + message['content'] + '<end_of_turn>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}",
    "Gemma (<start_of_turn>…<end_of_turn>)",
    markers=("<start_of_turn>", "<end_of_turn>"), stops=("<start_of_turn>", "<end_of_turn>"),
)
# The TinyLlama practice guide's "Usuario: …\nAsistente: …", closed by the base's own eos.
USUARIO_ASISTENTE = NamedTemplate(
    "usuario-asistente",
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{- message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'user' %}{{- 'Usuario: ' + message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'assistant' %}{{- 'Asistente: ' + message['content'] + eos_token + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- 'Asistente:' }}{%- endif %}",
    "«Usuario: …» / «Asistente: …» de la guía de TinyLlama; para modelos base (texto normal + su eos)",
    stops=("Usuario:",), for_base=True,
)
# The algorithms-tutor guide's phi-2 format: Phi-3's layout as plain text (none of these markers is a phi-2 token),
# each answer closed by `<|end|>` and then the real eos, so plain `generate` stops too.
TUTOR_PHI2 = NamedTemplate(
    "tutor-phi2",
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{- '<|system|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- elif message['role'] == 'user' %}{{- '<|user|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- elif message['role'] == 'assistant' %}{{- '<|assistant|>\\n' + message['content'] + '<|end|>\\n' + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}",
    "<|system|>/<|user|>/<|assistant|>…<|end|> de la guía del tutor de algoritmos (phi-2); para modelos base",
    stops=("<|end|>", "<|user|>", "<|system|>"), for_base=True,
)
NAMED = {t.name: t for t in (CHATML, ZEPHYR, LLAMA3, PHI3, GEMMA, USUARIO_ASISTENTE, TUTOR_PHI2)}
TEMPLATE_CHOICES = ("auto", *NAMED)

# What a conversation is rendered with to find the turns; these strings never occur in a real template.
_SYSTEM, _USER, _ANSWER, _USER2 = "AFINARSISTEMA", "AFINARPREGUNTA", "AFINARRESPUESTA", "AFINARSEGUIDA"
PROBE = [
    {"role": "system", "content": _SYSTEM},
    {"role": "user", "content": _USER},
    {"role": "assistant", "content": _ANSWER},
    {"role": "user", "content": _USER2},
]


@dataclass
class ChatFormat:
    """A template checked against a tokenizer, and its end of turn."""

    template: str  # the Jinja text the tokenizer carries
    name: str  # a NAMED key, "auto" (the tokenizer's own) or the .jinja path
    end_of_turn: str  # the single token that closes an assistant turn (the tokenizer's eos after `apply`)
    eos_token_ids: list[int]  # end_of_turn's id first, then the family's other stop ids
    stop_strings: tuple[str, ...] = ()  # text that ends an answer in runtimes that see text (role markers…)
    date_string: str | None = None  # the pinned date, when the template reads one
    family: str | None = None  # the NAMED template it renders like (Ollama's TEMPLATE comes from it)

    def record(self) -> dict:
        """What afinar_run.json keeps."""
        return {"name": self.name, "family": self.family, "end_of_turn": self.end_of_turn,
                "eos_token_ids": self.eos_token_ids, "stop_strings": list(self.stop_strings),
                "date_string": self.date_string}


def names_help() -> str:
    lines = [f"  {name}: {t.summary}" for name, t in NAMED.items()]
    return ("plantillas con nombre:\n" + "\n".join(lines) +
            "\n  o la ruta a un archivo .jinja. Para un modelo base: usuario-asistente, tutor-phi2 o zephyr.")


def check_spec(spec: str) -> str:
    """The recipe's value, checked without a tokenizer (for the schema)."""
    if spec in TEMPLATE_CHOICES or spec.endswith(".jinja"):
        return spec
    raise ValueError(f"plantilla desconocida '{spec}'; opciones: {', '.join(TEMPLATE_CHOICES)} o un archivo .jinja")


def pin_date(template: str) -> tuple[str, str | None]:
    """A template that reads today's date (`strftime_now`, Llama 3.1/3.2) gets a fixed one."""
    if "date_string" not in template or template.startswith(_PIN):
        return template, (PINNED_DATE if "date_string" in template else None)
    return _PIN + template, PINNED_DATE


def _render(tokenizer, template: str, messages: list[dict], generation: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                         add_generation_prompt=generation)


def _single_token(tokenizer, text: str) -> int | None:
    ids = tokenizer.convert_tokens_to_ids(text)
    if ids is None or ids == tokenizer.unk_token_id and text != tokenizer.unk_token:
        return None
    return ids if tokenizer.encode(text, add_special_tokens=False) == [ids] else None


def _special_tokens(tokenizer) -> set[str]:
    return set(tokenizer.all_special_tokens) | {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}


def _read_jinja(path: str, where: str) -> str:
    file = Path(path).expanduser()
    if not file.is_file():
        raise AfinarError("M010", "no existe el archivo de plantilla .jinja.", where=f"{where}: {path}")
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise AfinarError("M010", "el archivo de plantilla no es texto UTF-8.", where=f"{where}: {path}") from None


def _end_of_turn(tokenizer, template: str, where: str) -> tuple[str, tuple[str, ...]]:
    """The token that closes the assistant turn of a rendered probe conversation, and the text before it, if any,
    that is part of the marker (the phi-2 guide's `<|end|>` before eos)."""
    try:
        text = _render(tokenizer, template, PROBE)
        prompt = _render(tokenizer, template, PROBE[:2], generation=True)
    except Exception as exc:  # jinja raises many kinds (syntax, undefined, raise_exception)
        raise AfinarError("M011", f"la plantilla no sabe mostrar una conversación de sistema, usuario y asistente "
                                  f"({type(exc).__name__}: {str(exc)[:200]}).", where=where,
                          hint="prueba con una plantilla con nombre:\n" + names_help()) from None
    start = text.find(_ANSWER)
    if start < 0 or _USER not in prompt or not text.startswith(prompt):
        raise AfinarError("M012", "no se encuentra dónde empieza la respuesta del asistente en la plantilla (la "
                                  "conversación con el aviso de generación no es el principio de la conversación entera).",
                          where=where, hint="las plantillas de afinar sí lo cumplen:\n" + names_help())
    suffix = text[start + len(_ANSWER):]
    specials = _special_tokens(tokenizer)
    found = [(suffix.find(s), s) for s in specials if s and s in suffix]
    if found and _USER2 in suffix[:min(found)[0]]:
        found = []  # the next turn comes before any special token: the answer is never closed
    if not found:
        raise AfinarError("M013", "la plantilla no cierra la respuesta del asistente con ningún token especial "
                                  "(ni el eos del tokenizador): el modelo no podría aprender a terminar.", where=where,
                          hint="usa una plantilla que cierre el turno con el eos (usuario-asistente, tutor-phi2 o zephyr)")
    position, token = min(found, key=lambda f: (f[0], -len(f[1])))
    before = suffix[:position].strip()
    return token, ((before,) if before else ())


def resolve(tokenizer, spec: str = "auto", where: str = "data.template", generation_eos=None) -> ChatFormat:
    """Check the recipe's template against the tokenizer and derive its end of turn (nothing is changed yet)."""
    if spec == "auto":
        template = tokenizer.chat_template
        if isinstance(template, dict):
            template = template.get("default")
        if not template:
            raise AfinarError("M005", "este modelo no trae plantilla de chat (es un modelo base): indica en la receta "
                                      "`data.template` con el formato de las conversaciones.", where=where,
                              hint=names_help())
        name = "auto"
    elif spec in NAMED:
        named = NAMED[spec]
        missing = [m for m in named.markers if _single_token(tokenizer, m) is None]
        if missing:
            raise AfinarError(
                "M014", f"la plantilla '{spec}' necesita los tokens especiales {', '.join(missing)}, que este "
                        "tokenizador no tiene: añadirlos obligaría a entrenar sus embeddings desde cero.", where=where,
                hint="para un modelo base usa usuario-asistente, tutor-phi2 o zephyr (texto normal + el eos del "
                     "modelo), o la variante Instruct/Chat del modelo con data.template: auto")
        template, name = named.jinja, spec
    elif spec.endswith(".jinja"):
        template, name = _read_jinja(spec, where), spec
    else:
        raise AfinarError("M010", f"plantilla desconocida '{spec}'.", where=where, hint=names_help())
    template, date = pin_date(template)
    end, stops = _end_of_turn(tokenizer, template, where)
    end_id = _single_token(tokenizer, end)
    if end_id is None:
        raise AfinarError("M013", f"el fin de turno de la plantilla ({end}) no es un solo token de este tokenizador.",
                          where=where)
    family = family_of(tokenizer, template)
    extra = list(generation_eos if isinstance(generation_eos, list) else [generation_eos] if generation_eos is not None else [])
    ids = [end_id] + [i for i in [*extra, tokenizer.eos_token_id] if i is not None and i != end_id]
    ids = list(dict.fromkeys(ids))
    named_stops = NAMED[family].stops if family else ()
    stop_strings = tuple(dict.fromkeys([*stops, *named_stops]))
    return ChatFormat(template, name, end, ids, stop_strings, date, family)


def family_of(tokenizer, template: str) -> str | None:
    """The NAMED template this one renders like, with a system message (defaults and tool branches aside): how
    Qwen2.5's and SmolLM2's ChatML, TinyLlama's Zephyr or Llama 3.2's template get their Ollama TEMPLATE."""
    conversations = [PROBE, PROBE[:3], PROBE[:2]]
    eos = tokenizer.eos_token or ""

    def renders(jinja: str) -> list[str]:
        # Phi-3.5's own template ends a whole conversation with eos: not part of any turn, left out.
        return [_render(tokenizer, jinja, c).removesuffix(eos) for c in conversations] + [
            _render(tokenizer, jinja, PROBE[:2], generation=True)]

    try:
        own = renders(template)
    except Exception:  # noqa: BLE001 — an unrenderable template has no family
        return None
    # Those with markers of their own first: Phi-3 is Zephyr with <|end|> as eos, and should be called Phi-3.
    for name, named in sorted(NAMED.items(), key=lambda item: not item[1].markers):
        if any(_single_token(tokenizer, m) is None for m in named.markers):
            continue
        try:
            theirs = renders(pin_date(named.jinja)[0])
        except Exception:  # noqa: BLE001
            continue
        if theirs == own:
            return name
    return None


def apply(tokenizer, fmt: ChatFormat) -> None:
    """Make the tokenizer carry the format: its template, and its eos = the end of turn (pad = eos if it had none;
    labels come from positions, never from pad ids, so a pad equal to eos hides nothing)."""
    tokenizer.chat_template = fmt.template
    if tokenizer.eos_token != fmt.end_of_turn:
        tokenizer.eos_token = fmt.end_of_turn
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def folder_format(folder, tokenizer) -> ChatFormat:
    """The format of a folder afinar wrote (run, merged model, export): the template its tokenizer carries, and the
    stop ids of its generation_config.json (the end of turn first)."""
    return resolve(tokenizer, "auto", str(folder), generation_eos_of(folder))


@dataclass(frozen=True)
class Stops:
    """What ends an answer at inference: token ids (the end of turn, the family's other eos ids, role markers that
    are special tokens) and text (markers that are not one token, such as the phi-2 guide's `<|end|>`)."""

    ids: frozenset[int]
    strings: tuple[str, ...] = ()


def stops_of(tokenizer, folder=None) -> Stops:
    """The stops of a tokenizer afinar wrote (and of its folder's generation_config.json). A tokenizer whose
    template afinar cannot read (not written by afinar) still stops on its eos."""
    try:
        fmt = folder_format(folder, tokenizer) if folder is not None else resolve(tokenizer, "auto", "tokenizador")
    except AfinarError:
        return Stops(frozenset({tokenizer.eos_token_id} - {None}))
    ids, strings = set(fmt.eos_token_ids), []
    special = _special_tokens(tokenizer)
    for text in fmt.stop_strings:
        token = _single_token(tokenizer, text) if text in special else None
        if token is not None:
            ids.add(token)
        else:
            strings.append(text)
    return Stops(frozenset(ids), tuple(strings))


def named_stop_strings(template: str) -> tuple[str, ...]:
    """The text stops of one of our templates for base models (zephyr, usuario-asistente, tutor-phi2: their markers
    are plain text, such as tutor-phi2's `<|end|>`), recognised by its exact text as a GGUF carries it; for a runtime
    without the run's tokenizer. Templates whose markers are special tokens stop on those tokens: ()."""
    for named in NAMED.values():
        if not named.markers and template in (named.jinja, pin_date(named.jinja)[0]):
            return named.stops
    return ()


def cut_at_stop(text: str, strings: tuple[str, ...]) -> tuple[str, bool]:
    """`text` up to the first stop string, and whether one was there."""
    found = [i for i in (text.find(s) for s in strings if s) if i >= 0]
    return (text[:min(found)], True) if found else (text, False)


def set_turn_end(model, tokenizer, eos_token_ids: list[int]) -> None:
    """The stop ids (the end of turn first) as `eos_token_id` of the model's config and generation config (one id,
    or the list when the family has several), and the tokenizer's pad: what `save_pretrained` then writes to
    config.json and generation_config.json (merge, `method: full`, and beside an adapter, which PEFT saves without)."""
    eos = eos_token_ids if len(eos_token_ids) > 1 else eos_token_ids[0]
    model.config.eos_token_id = eos
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id


def generation_eos_of(path_or_id) -> list[int] | int | None:
    """`eos_token_id` of a model's generation_config.json (a folder, or a Hub id already cached), if any."""
    import json

    folder = Path(path_or_id)
    if folder.is_dir():
        path = folder / "generation_config.json"
        return json.loads(path.read_text(encoding="utf-8")).get("eos_token_id") if path.is_file() else None
    try:
        from transformers import GenerationConfig

        return GenerationConfig.from_pretrained(str(path_or_id)).eos_token_id
    except Exception:  # noqa: BLE001 — offline or none: the tokenizer's eos is enough
        return None


def recipe_tokenizer(base_path: str, template: str = "auto", where: str = "data.template"):
    """(tokenizer, format): the base's tokenizer carrying the recipe's chat format. Training, `inspect` and
    `validate` all render the data through this."""
    tokenizer = load_tokenizer(base_path)
    fmt = resolve(tokenizer, template, where, generation_eos_of(base_path))
    apply(tokenizer, fmt)
    return tokenizer, fmt


def check_turns_closed(tokenizer, where: str = "data.template") -> None:
    """One conversation with two answers, encoded as training will: each answer's labels must end on the end-of-turn
    token (trained, label ≠ -100), or the model would never learn to stop."""
    from afinar.data.templates import IGNORE, encode

    two_answers = [*PROBE, {"role": "assistant", "content": _ANSWER}]
    enc = encode(tokenizer, two_answers)
    closed = [i for i, (token, label) in enumerate(zip(enc.input_ids, enc.labels))
              if token == tokenizer.eos_token_id and label != IGNORE]
    if len(closed) != 2:
        raise AfinarError("M013", f"con esta plantilla el fin de turno ({tokenizer.eos_token}) se entrenaría "
                                  f"{len(closed)} veces en una conversación con 2 respuestas, no tras cada una.",
                          where=where, hint=names_help())


def untrained_tokens(model, tokenizer, fmt: ChatFormat) -> list[int]:
    """Ids of the template's special tokens whose embedding row (input, or output when untied) is (almost) zero next
    to the others: tokens the base has in its vocabulary but never trained, like Llama 3.2 base's `<|eot_id|>` and
    header tokens (unslothai/unsloth#915). LoRA on attention and MLP alone cannot teach rows it does not train: the
    model would never emit them, and so never stop."""
    import torch

    text = _render(tokenizer, fmt.template, PROBE)
    used = {t for t in _special_tokens(tokenizer) if t and t in text} | {fmt.end_of_turn}
    ids = sorted({i for t in used if (i := _single_token(tokenizer, t)) is not None})
    cold: set[int] = set()
    with torch.no_grad():
        for matrix in _embedding_matrices(model):
            norms = matrix.detach().float().norm(dim=1)
            typical = float(norms.median())
            cold |= {i for i in ids if i < len(norms) and float(norms[i]) < 1e-3 * typical}
    return sorted(cold)


def _embedding_matrices(model) -> list:
    """The input embeddings and the output head's weight (once when tied)."""
    matrices = [model.get_input_embeddings().weight, model.get_output_embeddings().weight]
    return list({id(m): m for m in matrices}.values())


def warm_up_tokens(model, ids: list[int]) -> None:
    """Untrained rows start from the mean of the trained ones (Unsloth's `fix_untrained_tokens`), in the input
    embeddings and the output head: from zero, the output row would need many steps before the token is ever
    likely, and an input row of zeros carries nothing."""
    import torch

    with torch.no_grad():
        for matrix in _embedding_matrices(model):
            keep = torch.ones(matrix.shape[0], dtype=torch.bool, device=matrix.device)
            keep[ids] = False
            matrix[ids] = matrix[keep].float().mean(dim=0).to(matrix.dtype)


def trainable_token_indices(model, ids: list[int]) -> dict[str, list[int]]:
    """PEFT's `trainable_token_indices` that trains these rows: the input embeddings, and the output head too when
    it is not tied to them (tied heads follow the embeddings in PEFT)."""
    names = {id(module): name.rsplit(".", 1)[-1] for name, module in model.named_modules()}
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    out = {names[id(model.get_input_embeddings())]: ids}
    if not tied:
        out[names[id(model.get_output_embeddings())]] = ids
    return out
