"""Command line: maps names to the typed functions that do the work. No heavy imports here (instant --help).

Each command is one row of COMMANDS: its module, its function and its help line. Its options are defined once, in
that module, right after the function, by `<function>_arguments(parser)`: each option's dest is a parameter of the
function, and every command's parser has argument_default=SUPPRESS, so an option not given is not passed and the
function's own default applies. Only the chosen command's module is imported (`afinar --help` imports none)."""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from afinar import __version__
from afinar.errors import AfinarError

# name → (module, function, help). "import smc" is `smc` under the group `import` (GROUPS).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "validate": ("afinar.data.validate", "validate",
                 "comprueba una receta, un JSONL o una hoja de cálculo sin entrenar"),
    "inspect": ("afinar.data.preflight", "inspect",
                "informe previo de los datos (HTML + JSON): longitudes, duplicados, idioma, datos personales"),
    "convertir": ("afinar.data.tables", "convert",
                  "convierte datos entre JSONL y hojas de cálculo (.csv, .tsv, .xlsx, .ods, .parquet) sin perder "
                  "nada de lo que se entrena"),
    "eval": ("afinar.evaluate.run", "eval_command",
             "contraste base vs afinado, comprobaciones de dominio, guardia contra el olvido e informe"),
    "export": ("afinar.export.run", "export_command",
               "exporta una ejecución (safetensors, gguf, ollama, onnx, zip) y prueba cada archivo"),
    "push": ("afinar.export.hub", "push",
             "sube una ejecución o su exportación al Hub de Hugging Face, con tarjeta del modelo"),
    "import smc": ("afinar.data.smc", "import_smc_command",
                   "Spanish Medical Corpus (somosnlp/SMC): preguntas y casos clínicos"),
    "train": ("afinar.train", "train_command", "entrena un adaptador LoRA según la receta"),
    "plan": ("afinar.plan", "plan_command", "antes de entrenar: ¿cabe en este equipo (o en esa GPU) y cuánto tarda?"),
    "merge": ("afinar.merge", "merge", "fusiona el adaptador en un modelo safetensors independiente"),
    "chat": ("afinar.inference.chat", "chat", "conversa con una ejecución (base + adaptador) o un modelo fusionado"),
    "serve": ("afinar.inference.server", "serve",
              "API compatible con OpenAI y página de chat (una o varias personalidades)"),
    "demo": ("afinar.demo", "demo_command", "entrena la receta de enfermería en el modelo incluido, compara y fusiona"),
    "estudio": ("afinar.studio.launch", "estudio",
                "la aplicación web local, en español: datos, modelo, entrenar, evaluar, exportar y usar"),
    "borradores": ("afinar.drafts.run", "drafts_command",
                   "borradores de preguntas y respuestas sacados de tus documentos (PDF, DOCX, TXT, MD) por un "
                   "modelo profesor, para revisarlos"),
}
# A group's commands are its sources: `afinar import smc …`.
GROUPS = {"import": ("FUENTE", "convierte un corpus externo en ejemplos de chat JSONL")}


class OptionNameFormatter(argparse.HelpFormatter):
    """An option's value is named after the option (`--por-pasaje POR_PASAJE`), as argparse does when the dest is the
    option's own name: here the dest is the function's parameter (per_passage)."""

    def _get_default_metavar_for_optional(self, action: argparse.Action) -> str:
        return action.option_strings[0].lstrip("-").replace("-", "_").upper()


def command_function(name: str) -> tuple[Callable, Callable[[argparse.ArgumentParser], None]]:
    """The function of command `name` and the one that adds its options (`<function>_arguments`), imported now."""
    module_name, function, _ = COMMANDS[name]
    module = importlib.import_module(module_name)
    return getattr(module, function), getattr(module, f"{function}_arguments")


def build_parser(*load: str) -> argparse.ArgumentParser:
    """The top-level parser, with every command and its help line; only the commands in `load` get their options
    (which imports their modules)."""
    parser = argparse.ArgumentParser(
        prog="afinar",
        description="Afina un LLM pequeño con tus ejemplos JSONL: valida, entrena LoRA, fusiona y conversa.",
    )
    parser.add_argument("--version", action="version", version=f"afinar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="ORDEN")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, (_, _, help_line) in COMMANDS.items():
        group, _, source = name.partition(" ")
        if source and group not in groups:
            metavar, group_help = GROUPS[group]
            groups[group] = sub.add_parser(group, help=group_help).add_subparsers(
                dest=f"{group}_command", required=True, metavar=metavar)
        # An option not given is not passed: the function's own default applies (no default written twice).
        p = (groups[group] if source else sub).add_parser(source or name, help=help_line,
                                                          argument_default=argparse.SUPPRESS,
                                                          formatter_class=OptionNameFormatter)
        if name in load:
            command_function(name)[1](p)
    return parser


def chosen_command(argv: Sequence[str]) -> str | None:
    """The command named in `argv` (a key of COMMANDS), or None: the first word that is not an option (the
    top-level options take no value), and for a group the next one."""
    words = (a for a in argv if not a.startswith("-"))
    name = next(words, None)
    if name in GROUPS:
        name = f"{name} {next(words, '')}"
    return name if name in COMMANDS else None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Two phases: find the command in `argv`, then parse with only that command's options loaded."""
    name = chosen_command(argv)
    return build_parser(*([name] if name else [])).parse_args(argv)


def _call(fn: Callable, namespace: argparse.Namespace, argv: list[str]) -> int:
    """Calls the command's function with the parsed options as keyword arguments (those not given are absent, so
    the function's defaults apply). A function with an `argv` parameter also gets the command line (`afinar train`
    runs itself again in a supervised child). Its exit code: what it returns if that is an int, else 0."""
    import inspect

    routing = {"command", *(f"{group}_command" for group in GROUPS)}  # which command: not options
    options = {k: v for k, v in vars(namespace).items() if k not in routing}
    if "argv" in inspect.signature(fn).parameters:
        options["argv"] = argv
    result = fn(**options)
    return result if type(result) is int else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        # Parsed inside the try: a `type=` such as parse_columnas raises AfinarError for a malformed value.
        namespace = parse_args(argv)
        return _call(command_function(chosen_command(argv))[0], namespace, argv)
    except AfinarError as exc:
        print(f"error {exc.render()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrumpido (si había checkpoints, continúa con: afinar train RECETA --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
