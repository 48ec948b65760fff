"""Go's text/template, the part Ollama's chat templates use, in Python: to check a Modelfile's TEMPLATE at export.

Ollama renders a chat with Go's text/template; afinar checks that the TEMPLATE it writes renders exactly what the
model was trained on (export/ollama.py). There is no Go here, so this interpreter runs the templates; it is held to
Go's semantics by running Ollama's own templates (chatml, llama3-instruct, zephyr, phi-3, gemma-instruct,
gemma3-instruct) on the conversations of Ollama's template tests and comparing with Ollama's expected renders
(tests/data/ollama, tests/unit/test_ollama.py).

Covered: text with `{{- ` / ` -}}` trimming, comments, fields (`.Role`, `$.System`), variables (`$x := …`,
`$x = …`, scoped like Go's), `if` / `else if` / `else`, `range` (with `$i, $m :=`), `break`, `continue`,
parenthesised commands and pipelines with `|`, and the functions `and or not eq ne lt le gt ge len slice index
printf print`. Anything else is refused with ValueError, never silently rendered wrong.
"""
from __future__ import annotations

import re

_ACTION = re.compile(r"\{\{(-[ \t\r\n])?(.*?)([ \t\r\n]-)?\}\}", flags=re.DOTALL)
_TOKEN = re.compile(r'''\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<raw>`[^`]*`)|(?P<num>-?\d+)|(?P<decl>:=)|(?P<punct>[()|,=])'''
                    r'''|(?P<var>\$[\w]*(?:\.[\w]+)*)|(?P<field>(?:\.[\w]+)+|\.)|(?P<ident>[A-Za-z_]\w*))''')
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}
_NO_VALUE = "<no value>"


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


def _lex(source: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", a)], with trim markers applied to the neighbouring text and comments dropped."""
    out: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for m in _ACTION.finditer(source):
        text = source[pos:m.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        out.append(("text", text))
        action = m.group(2).strip()
        if not (action.startswith("/*") and action.endswith("*/")):
            out.append(("action", action))
        trim_next = bool(m.group(3))
        pos = m.end()
    tail = source[pos:]
    out.append(("text", tail.lstrip(" \t\r\n") if trim_next else tail))
    return out


def _tokens(action: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(action):
        if action[pos:].strip() == "":
            break
        m = _TOKEN.match(action, pos)
        if not m or m.end() == pos:
            raise ValueError(f"no entiendo la acción de plantilla {{{{ {action} }}}}")
        kind = m.lastgroup
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


def _string(token: str) -> str:
    if token.startswith("`"):
        return token[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), token[1:-1])


# --- parsing ------------------------------------------------------------------------------------------------------


def _parse_pipeline(tokens: list, i: int = 0, closing: str | None = None):
    """(pipeline, next index). A pipeline: optional declaration, then commands joined by `|`."""
    decl: tuple | None = None
    if len(tokens) > i + 1 and tokens[i][0] == "var" and tokens[i + 1] in (("decl", ":="), ("punct", "="), ("punct", ",")):
        names = [tokens[i][1]]
        j = i + 1
        if tokens[j] == ("punct", ","):
            names.append(tokens[j + 1][1])
            j += 2
        decl = (tokens[j][1], names)  # (":=" or "=", [vars])
        i = j + 1
    commands, command = [], []
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "punct" and value == ")" and closing == ")":
            break
        if kind == "punct" and value == "|":
            commands.append(command)
            command = []
            i += 1
            continue
        if kind == "punct" and value == "(":
            inner, i = _parse_pipeline(tokens, i + 1, ")")
            command.append(("pipe", inner))
            i += 1  # the ")"
            continue
        command.append((kind, value))
        i += 1
    commands.append(command)
    if any(not c for c in commands):
        raise ValueError("tubería vacía en la plantilla")
    return (decl, commands), i


def _parse(items: list, i: int = 0, stop: tuple[str, ...] = ()):
    nodes: list = []
    while i < len(items):
        kind, value = items[i]
        i += 1
        if kind == "text":
            if value:
                nodes.append(("text", value))
            continue
        word = value.split(None, 1)[0] if value else ""
        rest = value[len(word):].strip()
        if word in stop:
            return nodes, i, word, rest
        if word == "if":
            branches, otherwise = [], []
            condition = rest
            while True:
                body, i, ended, after = _parse(items, i, ("else", "end"))
                branches.append((_parse_pipeline(_tokens(condition))[0], body))
                if ended == "end":
                    break
                if after.startswith("if "):  # {{ else if … }}
                    condition = after[3:]
                    continue
                otherwise, i, ended, _ = _parse(items, i, ("end",))
                break
            nodes.append(("if", branches, otherwise))
        elif word == "range":
            body, i, ended, _ = _parse(items, i, ("else", "end"))
            otherwise: list = []
            if ended == "else":
                otherwise, i, _, _ = _parse(items, i, ("end",))
            nodes.append(("range", _parse_pipeline(_tokens(rest))[0], body, otherwise))
        elif word in ("break", "continue") and not rest:
            nodes.append((word,))
        elif word in ("with", "define", "template", "block"):
            raise ValueError(f"acción de plantilla no admitida: {{{{ {value} }}}}")
        else:
            nodes.append(("pipe", _parse_pipeline(_tokens(value))[0]))
    if stop:
        raise ValueError("plantilla sin cerrar (falta {{ end }})")
    return nodes, i, None, ""


# --- evaluation -------------------------------------------------------------------------------------------------


def _truth(value) -> bool:
    if value is None or value is False:
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value != 0
    if isinstance(value, (str, list, tuple, dict)):
        return len(value) > 0
    return True


def _field(value, path: str):
    for part in [p for p in path.split(".") if p]:
        if isinstance(value, dict):
            value = value.get(part)
        else:
            raise ValueError(f"no hay campo {part} en un valor de tipo {type(value).__name__}")
    return value


def _printf(fmt: str, *args) -> str:
    values = iter(args)
    return re.sub(r"%([svd%])", lambda m: "%" if m.group(1) == "%" else _show(next(values)), fmt)


def _show(value) -> str:
    if value is None:
        return _NO_VALUE
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _eq(first, *others) -> bool:
    return any(first == other for other in others)


def _and(*args):
    for arg in args:
        if not _truth(arg):
            return arg
    return args[-1]


def _or(*args):
    for arg in args:
        if _truth(arg):
            return arg
    return args[-1]


FUNCTIONS = {
    "and": _and, "or": _or, "not": lambda x: not _truth(x), "eq": _eq, "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b, "le": lambda a, b: a <= b, "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,
    "len": len, "slice": lambda x, *ij: x[slice(*ij)] if len(ij) != 1 else x[ij[0]:],
    "index": lambda x, *keys: _index(x, keys), "printf": _printf, "print": lambda *a: "".join(_show(x) for x in a),
}


def _index(value, keys):
    for key in keys:
        value = value[key] if not isinstance(value, dict) else value.get(key)
    return value


class _Scope:
    def __init__(self, root):
        self.frames: list[dict] = [{"$": root}]

    def get(self, name: str):
        for frame in reversed(self.frames):
            if name in frame:
                return frame[name]
        raise ValueError(f"variable no definida: {name}")

    def assign(self, name: str, value) -> None:
        for frame in reversed(self.frames):
            if name in frame:
                frame[name] = value
                return
        raise ValueError(f"variable no definida: {name}")


def _operand(token, dot, scope: _Scope):
    kind, value = token
    if kind == "field":
        return dot if value == "." else _field(dot, value)
    if kind == "var":
        name, _, path = value.partition(".")
        return _field(scope.get(name), path)
    if kind in ("str", "raw"):
        return _string(value)
    if kind == "num":
        return int(value)
    if kind == "ident" and value in ("true", "false", "nil"):
        return {"true": True, "false": False, "nil": None}[value]
    if kind == "pipe":
        return _pipeline(value, dot, scope)
    raise ValueError(f"no sé evaluar {value!r} en la plantilla")


def _pipeline(pipeline, dot, scope: _Scope):
    decl, commands = pipeline
    result, has_result = None, False
    for command in commands:
        head = command[0]
        if head[0] == "ident" and head[1] not in ("true", "false", "nil"):
            if head[1] not in FUNCTIONS:
                raise ValueError(f"función de plantilla no admitida: {head[1]}")
            args = [_operand(t, dot, scope) for t in command[1:]] + ([result] if has_result else [])
            result = FUNCTIONS[head[1]](*args)
        else:
            if len(command) > 1 or has_result:
                raise ValueError("argumentos de más en la plantilla")
            result = _operand(head, dot, scope)
        has_result = True
    if decl is not None:
        op, names = decl
        if op == ":=":
            scope.frames[-1][names[-1]] = result
        else:
            scope.assign(names[-1], result)
        return None
    return result


def _run(nodes: list, dot, scope: _Scope, out: list[str]) -> None:
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "pipe":
            value = _pipeline(node[1], dot, scope)
            if node[1][0] is None:
                out.append(_show(value))
        elif kind == "if":
            for condition, body in node[1]:
                scope.frames.append({})
                try:
                    if _truth(_pipeline((None, condition[1]), dot, scope)):
                        _run(body, dot, scope, out)
                        break
                finally:
                    scope.frames.pop()
            else:
                scope.frames.append({})
                try:
                    _run(node[2], dot, scope, out)
                finally:
                    scope.frames.pop()
        elif kind == "range":
            decl, commands = node[1]
            items = _pipeline((None, commands), dot, scope)
            pairs = list(items.items()) if isinstance(items, dict) else list(enumerate(items or []))
            names = decl[1] if decl else []
            for key, item in pairs:
                frame = {}
                if len(names) == 2:
                    frame[names[0]], frame[names[1]] = key, item
                elif names:
                    frame[names[0]] = item
                scope.frames.append(frame)
                try:
                    _run(node[2], item, scope, out)
                except _Continue:
                    pass
                except _Break:
                    break
                finally:
                    scope.frames.pop()
            if not pairs:
                _run(node[3], dot, scope, out)
        elif kind == "break":
            raise _Break
        elif kind == "continue":
            raise _Continue


def render(template: str, data: dict) -> str:
    """`template` executed on `data` (a dict; lists of dicts inside) as Go's text/template would."""
    nodes, _, _, _ = _parse(_lex(template))
    out: list[str] = []
    _run(nodes, data, _Scope(data), out)
    return "".join(out)
