"""Command line: maps names to the typed functions that do the work. No heavy imports here (instant --help)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from afinar import __version__
from afinar.errors import AfinarError

# Set in the child `afinar train` runs the training in (see _supervise).
SUPERVISED = "AFINAR_SUPERVISED"


def _cmd_validate(args) -> int:
    from afinar.data.tables import parse_columnas
    from afinar.data.validate import validate

    return validate(args.path, base=args.base, max_length=args.max_length, columnas=parse_columnas(args.columnas),
                    hoja=args.hoja)


def _cmd_inspect(args) -> int:
    from afinar.data.preflight import inspect
    from afinar.data.tables import parse_columnas

    return inspect(
        args.path,
        base=args.base,
        max_length=args.max_length,
        output=args.salida,
        show_examples=args.mostrar_ejemplos,
        progress=not args.sin_progreso,
        columnas=parse_columnas(args.columnas),
        hoja=args.hoja,
    )


def _cmd_convertir(args) -> int:
    from afinar.data.tables import convert, parse_columnas

    return convert(args.entrada, args.salida, columnas=parse_columnas(args.columnas), hoja=args.hoja,
                   sep=args.separador, encoding=args.codificacion, overwrite=args.overwrite)


def _cmd_eval(args) -> int:
    from afinar.evaluate.report import check_gates, print_summary
    from afinar.evaluate.run import REPORT_DIR, evaluate_run

    if bool(args.juez) != bool(args.juez_modelo):
        raise AfinarError("J004", "el juez necesita la URL y el modelo: --juez URL --juez-modelo NOMBRE")
    judge = {"url": args.juez, "model": args.juez_modelo, "allow_remote": args.permitir_remoto} if args.juez else None
    metrics = evaluate_run(
        args.run,
        split=args.split,
        n=args.n,
        passes=("greedy",) if args.solo_greedy else ("greedy", "sampled"),
        base=args.base,
        all_checkpoints=args.todos_los_checkpoints,
        forgetting_threshold=args.umbral_olvido,
        max_new_tokens=args.max_new_tokens,
        show_examples=args.mostrar_ejemplos,
        progress=not args.sin_progreso,
        keypoints=args.claves,
        judge=judge,
        engine=args.motor,
    )
    print_summary(metrics)
    print(f"Informe: {metrics['run']}/{REPORT_DIR}/index.html (y metrics.json)")
    # Built-in gate: a tuned model that gives more dangerous answers than its base never passes.
    failed = int(metrics["verdict"]["more_dangerous"])
    if failed:
        print("✗ el afinado da más respuestas peligrosas que el modelo base (sale con 1)")
    for gate, passed, value in check_gates(metrics, args.exigir or []):
        print(f"{'✓' if passed else '✗'} {gate} (valor: {value})")
        failed += not passed
    return 1 if failed else 0


def _cmd_export(args) -> int:
    if args.verificar:
        from afinar.export.archive import verify_zip

        manifest = verify_zip(args.verificar, progress=not args.sin_progreso)
        print(f"✓ {args.verificar}: {len(manifest['files'])} archivos coinciden con su SHA-256 del manifiesto")
        return 0
    if not args.run or not (args.formato or args.ollama_crear):
        raise AfinarError("X004", "indica la ejecución y el formato: afinar export RUN --formato gguf|onnx|safetensors|zip|ollama|todo")
    from afinar.export.run import export

    export(args.run, args.formato or [], output=args.output, dtype=args.dtype, quants=args.cuantizacion, overwrite=args.overwrite,
           progress=not args.sin_progreso, ollama_name=args.ollama_crear)
    return 0


def _cmd_push(args) -> int:
    from afinar.export.hub import push

    push(args.source, args.repo, private=args.privado, dry_run=args.dry_run, progress=not args.sin_progreso)
    return 0


def _cmd_import_smc(args) -> int:
    from afinar.data.smc import import_smc, print_summary

    summary = import_smc(
        args.salida,
        inputs=args.entrada,
        specialities=args.especialidad,
        types=args.tipo,
        max_examples=args.max_ejemplos,
        overwrite=args.overwrite,
        progress=not args.sin_progreso,
    )
    print_summary(summary, args.salida)
    return 0


def _cmd_train(args) -> int:
    from afinar.train import train

    overrides = {
        "train.max_steps": args.max_steps,
        "train.max_minutes": args.minutos,
        "train.epochs": args.epochs,
        "train.lr": args.lr,
        "train.batch_size": args.batch_size,
        "train.grad_accum": args.grad_accum,
        "train.tokens_per_batch": args.tokens_per_batch,
        "train.seed": args.seed,
        "train.precision": args.precision,
        "data.max_length": args.max_length,
        "model.base": args.base,
        "output_dir": args.output,
    }
    if _supervise():
        return _supervised_train(args, overrides)
    train(args.recipe, overrides=overrides, resume=args.resume, overwrite=args.overwrite, progress=not args.sin_progreso,
          force=args.force)
    return 0


def _supervise() -> bool:
    """`afinar train` runs the training in a child process it watches, so that a kill by the system (Linux's
    out-of-memory killer sends SIGKILL, which no process can catch) still ends with the plan's explanation. Not
    under a launcher (accelerate launch, torchrun): those watch their processes themselves."""
    launched = any(k in os.environ for k in ("LOCAL_RANK", "WORLD_SIZE", "ACCELERATE_NUM_PROCESSES"))
    return os.name == "posix" and not launched and not os.environ.get(SUPERVISED)


def _supervised_train(args, overrides: dict) -> int:
    import signal
    import subprocess

    from afinar.config import apply_overrides, load_recipe
    from afinar.planning.estimate import decimal
    from afinar.runs import PLAN
    from afinar.training import checkpoint_dirs

    run_dir = apply_overrides(load_recipe(args.recipe), overrides).run_dir()  # R00x here, before any child
    started = time.time()
    child = subprocess.Popen([sys.executable, "-m", "afinar", *args.argv], env={**os.environ, SUPERVISED: "1"},
                             preexec_fn=_die_with_parent)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the child too: it answers for both
    try:
        code = child.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    if code != -signal.SIGKILL:
        return code if code >= 0 else 128 - code
    plan_file = run_dir / PLAN
    explained, hint = "", "baja train.tokens_per_batch o data.max_length, o activa train.gradient_checkpointing"
    if plan_file.is_file() and plan_file.stat().st_mtime >= started:  # this run's plan, not an older run's
        saved = json.loads(plan_file.read_text(encoding="utf-8"))
        memory = saved["memory"]
        explained = (f" El plan calculaba un pico de {decimal(memory['total_gb'])} GiB para "
                     f"{decimal(saved['device']['available_gb'])} GiB disponibles ({memory['verdict']}).")
        if saved.get("suggestions"):
            hint = "; ".join(f"{s['change']} (−{decimal(s['saves_gb'])} GiB)" for s in saved["suggestions"])
    kept = checkpoint_dirs(run_dir)
    hint += ("; la ejecución conserva su último checkpoint (" + kept[-1].name + "): continúa con --resume "
             "(--forzar si cambias la receta)") if kept else "; no había checkpoint todavía"
    error = AfinarError("T017", "el sistema detuvo el entrenamiento (SIGKILL), casi siempre por falta de memoria "
                        "(el «OOM killer» de Linux)." + explained, where=str(run_dir), hint=hint)
    print(f"error {error.render()}", file=sys.stderr)
    return 137


def _die_with_parent() -> None:
    """In the child, before it runs: Linux sends it SIGKILL if the supervising `afinar train` dies (kill -9 of the
    command a user started must stop the training, not leave it running alone)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _cmd_plan(args) -> int:
    from afinar.plan import plan

    overrides = {"train.tokens_per_batch": args.tokens_per_batch, "data.max_length": args.max_length,
                 "model.base": args.base}
    if args.gradient_checkpointing is not None:
        overrides["train.gradient_checkpointing"] = args.gradient_checkpointing
    plan(args.recipe, device=args.dispositivo, calibrate=args.calibrar, as_json=args.json, overrides=overrides,
         bases=args.bases)
    return 0


def _cmd_merge(args) -> int:
    from afinar.merge import merge

    merge(args.run, output=args.output, dtype=args.dtype, overwrite=args.overwrite)
    return 0


def _cmd_chat(args) -> int:
    from afinar.inference.chat import chat

    chat(
        args.model,
        prompt=args.prompt,
        system_prompt=args.system,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        engine=args.motor,
    )
    return 0


def _cmd_serve(args) -> int:
    from afinar.inference.server import Limits, serve

    limits = Limits(max_body_bytes=args.max_body_kb * 1024, max_prompt_tokens=args.max_prompt_tokens,
                    max_tokens=args.max_tokens, timeout_s=args.timeout)
    serve(args.sources, host=args.host, port=args.port, engine=args.motor, api_key=args.api_key, cors=args.cors,
          limits=limits, log_content=args.log_contenido, with_base=args.con_base)
    return 0


def _cmd_demo(args) -> int:
    from afinar.demo import demo

    demo(output=args.output, epochs=args.epochs, max_steps=args.max_steps, minutes=args.minutos)
    return 0


def _cmd_estudio(args) -> int:
    from afinar.studio.launch import estudio

    estudio(port=args.puerto, open_browser=not args.no_abrir, host=args.host, folder=args.carpeta,
            max_upload_mb=args.max_subida_mb, new_token=args.token_nuevo, desktop_shortcut=args.acceso_directo)
    return 0


def _cmd_borradores(args) -> int:
    if args.exportar_revisados:
        from afinar.drafts.store import write_reviewed

        if args.documentos or not args.salida:
            raise AfinarError("B012", "para exportar los revisados: afinar borradores --exportar-revisados "
                                      "BORRADORES.jsonl --salida DATOS.jsonl (sin documentos)")
        count = write_reviewed(args.exportar_revisados, args.salida)
        if not count:
            print("No hay borradores revisados todavía (aceptados o corregidos): revísalos en el estudio "
                  "(afinar estudio → Datos → Borradores). No se escribió nada.")
            return 1
        print(f"✓ {count} ejemplos revisados en {args.salida} (pregunta/respuesta): ya puedes entrenar con ellos")
        return 0
    if not args.documentos or not args.profesor or not args.modelo:
        raise AfinarError("B012", "indica los documentos, el profesor y su modelo: afinar borradores DOCUMENTOS… "
                                  "--profesor URL --modelo NOMBRE",
                          hint="por ejemplo, con Ollama: --profesor http://127.0.0.1:11434/v1 --modelo qwen2.5:7b")
    from afinar.drafts.run import drafts, print_summary

    try:
        summary = drafts(args.documentos, args.profesor, args.modelo, args.salida or "borradores.jsonl",
                         per_passage=args.por_pasaje, allow_remote=args.permitir_remoto, timeout=args.tiempo_limite,
                         retries=args.reintentos, price_in=args.precio_entrada, price_out=args.precio_salida,
                         max_passages=args.max_pasajes, progress=not args.sin_progreso)
    except KeyboardInterrupt:
        print("\ninterrumpido: lo hecho queda guardado; vuelve a lanzar la misma orden para continuar", file=sys.stderr)
        return 130
    print_summary(summary)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="afinar",
        description="Afina un LLM pequeño con tus ejemplos JSONL: valida, entrena LoRA, fusiona y conversa.",
    )
    parser.add_argument("--version", action="version", version=f"afinar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="ORDEN")

    p = sub.add_parser("validate", help="comprueba una receta, un JSONL o una hoja de cálculo sin entrenar")
    p.add_argument("path", help="receta .yaml, datos .jsonl o una tabla (.csv, .tsv, .xlsx, .ods, .parquet, .json)")
    p.add_argument("--base", help="modelo cuyo tokenizador mide las longitudes (con un archivo de datos)")
    p.add_argument("--max-length", type=int, help="longitud máxima en tokens (con un archivo de datos)")
    p.add_argument("--columnas", metavar="CAMPO=COLUMNA,…", help="con una tabla: qué columna es cada campo, p. ej. "
                   '"pregunta=Consulta del paciente,respuesta=Respuesta" (por defecto se reconocen por su nombre)')
    p.add_argument("--hoja", metavar="NOMBRE", help="con un .xlsx/.ods: la hoja, por nombre o número (por defecto la primera)")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("inspect", help="informe previo de los datos (HTML + JSON): longitudes, duplicados, idioma, datos personales")
    p.add_argument("path", help="receta .yaml, datos .jsonl o una tabla (.csv, .tsv, .xlsx, .ods, .parquet, .json)")
    p.add_argument("--columnas", metavar="CAMPO=COLUMNA,…", help="con una tabla: qué columna es cada campo, p. ej. "
                   '"pregunta=Consulta del paciente,respuesta=Respuesta" (por defecto se reconocen por su nombre)')
    p.add_argument("--hoja", metavar="NOMBRE", help="con un .xlsx/.ods: la hoja, por nombre o número (por defecto la primera)")
    p.add_argument("--base", help="modelo cuyo tokenizador mide las longitudes (por defecto el de la receta o smollm2-135m)")
    p.add_argument("--max-length", type=int, help="longitud máxima en tokens (por defecto la de la receta o 512)")
    p.add_argument("--salida", help="carpeta del informe (por defecto runs/<receta>/informe_datos)")
    p.add_argument("--mostrar-ejemplos", action="store_true", help="muestra el texto de 3 ejemplos con los tokens entrenados marcados")
    p.add_argument("--sin-progreso", action="store_true", help="sin barra de progreso")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("convertir", help="convierte datos entre JSONL y hojas de cálculo (.csv, .tsv, .xlsx, .ods, "
                       ".parquet) sin perder nada de lo que se entrena")
    p.add_argument("entrada", metavar="ENTRADA", help="datos .jsonl, .json o una tabla")
    p.add_argument("salida", metavar="SALIDA", help=".jsonl (lo que ve el entrenamiento) o .csv, .tsv, .xlsx, .ods, "
                   ".parquet (columnas pregunta, respuesta, y contexto, sistema, claves, peligros si hay)")
    p.add_argument("--columnas", metavar="CAMPO=COLUMNA,…", help="con una tabla de entrada: qué columna es cada campo")
    p.add_argument("--hoja", metavar="NOMBRE", help="con un .xlsx/.ods de entrada: la hoja, por nombre o número")
    p.add_argument("--separador", choices=[";", ",", "tab", "|"], default=";",
                   help="separador del .csv de salida (por defecto ';', el de Excel en español)")
    p.add_argument("--codificacion", choices=["utf-8-sig", "utf-8", "cp1252"], default="utf-8-sig",
                   help="codificación del .csv/.tsv de salida (por defecto utf-8-sig, que Excel reconoce; cp1252 para "
                        "programas antiguos)")
    p.add_argument("--sobrescribir", "--overwrite", dest="overwrite", action="store_true",
                   help="reemplaza SALIDA si ya existe")
    p.set_defaults(func=_cmd_convertir)

    p = sub.add_parser("eval", help="contraste base vs afinado, comprobaciones de dominio, guardia contra el olvido e informe")
    p.add_argument("run", help="carpeta de la ejecución (runs/<nombre>)")
    p.add_argument("--split", help="'val' (la validación de la receta), un archivo .jsonl o un dataset incluido "
                   "(afinar:primeros_auxilios_evaluacion); por defecto evaluation.set de la receta, o 'val'")
    p.add_argument("--claves", metavar="ARCHIVO", help="claves y peligros aparte: {\"linea\": N, \"claves\": [[…]], \"peligros\": […]} "
                   "por línea (por defecto DATOS.claves.jsonl si existe)")
    p.add_argument("--juez", metavar="URL", help="servidor compatible con OpenAI (Ollama, llama.cpp, afinar serve) que "
                   "también valora cada respuesta, p. ej. http://127.0.0.1:11434/v1")
    p.add_argument("--juez-modelo", metavar="NOMBRE", help="modelo del juez (p. ej. qwen2.5:7b en Ollama)")
    p.add_argument("--permitir-remoto", action="store_true", help="deja usar un juez que no está en este equipo: "
                   "preguntas y respuestas SALEN del equipo")
    p.add_argument("--n", type=int, default=5, help="preguntas a generar con cada modelo (por defecto 5)")
    p.add_argument("--base", help="modelo base sobre el que cargar el adaptador (por defecto el del entrenamiento)")
    p.add_argument("--todos-los-checkpoints", action="store_true", help="evalúa cada checkpoint guardado y nombra el mejor")
    p.add_argument("--umbral-olvido", type=float, default=0.10, help="subida máxima de la pérdida en español general (0.10 = 10 %%)")
    p.add_argument("--exigir", action="append", metavar="CONDICIÓN", help='p. ej. "checks.epicrisis>=0.8"; sale con 1 si no se cumple')
    p.add_argument("--solo-greedy", action="store_true", help="sin la pasada con el muestreo de la receta (la mitad de tiempo)")
    p.add_argument("--motor", choices=["auto", "transformers", "llama.cpp"], default="auto",
                   help="quién escribe las respuestas: llama.cpp (GGUF f16 de base y afinado: las mismas respuestas "
                        "voraces, ~3× más rápido) si está instalado, si no transformers")
    p.add_argument("--max-new-tokens", type=int, help="tope de tokens por respuesta (por defecto el de la receta)")
    p.add_argument("--mostrar-ejemplos", action="store_true", help="muestra preguntas y referencias de tus datos en el informe")
    p.add_argument("--sin-progreso", action="store_true")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("export", help="exporta una ejecución (safetensors, gguf, ollama, onnx, zip) y prueba cada archivo")
    p.add_argument("run", nargs="?", help="carpeta de la ejecución (runs/<nombre>)")
    p.add_argument("--formato", nargs="+", choices=["safetensors", "gguf", "ollama", "onnx", "zip", "todo"],
                   help="uno o varios formatos; todo = todos")
    p.add_argument("--output", help="carpeta destino (por defecto RUN/export)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp16", help="precisión del safetensors exportado")
    p.add_argument("--cuantizacion", nargs="+", choices=["f16", "q8_0", "q4_k_m", "q5_k_m", "q6_k"], default=["q8_0"],
                   help="GGUF además del f16 (por defecto q8_0; q4_k_m para modelos de 1B o más)")
    p.add_argument("--verificar", metavar="ZIP", help="comprueba un zip exportado contra su manifiesto SHA-256")
    p.add_argument("--ollama-crear", metavar="NOMBRE",
                   help="además crea el modelo en Ollama (ollama create NOMBRE -f Modelfile; incluye --formato ollama)")
    p.add_argument("--sobrescribir", "--overwrite", dest="overwrite", action="store_true")
    p.add_argument("--sin-progreso", action="store_true")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("push", help="sube una ejecución o su exportación al Hub de Hugging Face, con tarjeta del modelo")
    p.add_argument("source", help="runs/<nombre> o su carpeta export/")
    p.add_argument("--repo", required=True, help="usuario/nombre en el Hub")
    p.add_argument("--privado", action="store_true", help="crea el repositorio como privado")
    p.add_argument("--dry-run", action="store_true", help="solo lista lo que se subiría (no necesita red ni token)")
    p.add_argument("--sin-progreso", action="store_true")
    p.set_defaults(func=_cmd_push)

    p = sub.add_parser("import", help="convierte un corpus externo en ejemplos de chat JSONL")
    importers = p.add_subparsers(dest="source", required=True, metavar="FUENTE")
    p = importers.add_parser("smc", help="Spanish Medical Corpus (somosnlp/SMC): preguntas y casos clínicos")
    p.add_argument("--salida", required=True, help="archivo .jsonl a escribir")
    p.add_argument("--entrada", nargs="+", help="archivos .parquet o .jsonl locales con el esquema de SMC (sin esto, lee del Hub)")
    p.add_argument("--especialidad", nargs="+", help="solo estas especialidades (columna speciallity)")
    p.add_argument("--tipo", nargs="+", choices=["question", "clinic_case"], help="solo estos tipos (por defecto ambos)")
    p.add_argument("--max-ejemplos", type=int, help="para de leer al llegar a N ejemplos")
    p.add_argument("--sobrescribir", "--overwrite", dest="overwrite", action="store_true")
    p.add_argument("--sin-progreso", action="store_true")
    p.set_defaults(func=_cmd_import_smc)

    p = sub.add_parser("train", help="entrena un adaptador LoRA según la receta")
    p.add_argument("recipe", help="receta .yaml (ver recipes/)")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--minutos", "--minutes", type=float,
                   help="presupuesto de tiempo: los pasos que quepan en N minutos en este equipo (train.max_minutes)")
    p.add_argument("--epochs", type=float)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--tokens-per-batch", type=int, help="tokens por micro-lote (memoria acotada; train.tokens_per_batch)")
    p.add_argument("--max-length", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--base", help="modelo base: smollm2-135m, carpeta, .gguf, id del Hub u ollama:NOMBRE[:etiqueta] (un modelo ya descargado en Ollama)")
    p.add_argument("--output", help="carpeta de la ejecución (por defecto runs/<nombre>)")
    p.add_argument("--resume", action="store_true", help="continúa desde el último checkpoint completo")
    p.add_argument("--forzar", "--force", dest="force", action="store_true",
                   help="entrena aunque el plan diga que no cabe; con --resume, continúa aunque la receta cambiara "
                        "lote, semilla, datos o LoRA")
    p.add_argument("--sobrescribir", "--overwrite", dest="overwrite", action="store_true", help="borra la carpeta de salida si existe")
    p.add_argument("--sin-progreso", action="store_true", help="sin barra de progreso (registros de CI)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("plan", help="antes de entrenar: ¿cabe en este equipo (o en esa GPU) y cuánto tarda?")
    p.add_argument("recipe", help="receta .yaml (ver recipes/)")
    p.add_argument("--dispositivo", "--device",
                   help="cpu, cuda, o una GPU de la tabla: rtx2060, rtx3050-4gb, rtx3050-8gb, rtx3060, rtx4060, t4, "
                        "l4, a100-40gb, a100-80gb, h100 (por defecto: este equipo)")
    p.add_argument("--calibrar", dest="calibrar", action="store_true", default=None,
                   help="mide pasos reales en este equipo (por defecto cuando el dispositivo es este equipo)")
    p.add_argument("--no-calibrar", dest="calibrar", action="store_false",
                   help="solo la fórmula (segundos): sin cargar el modelo")
    p.add_argument("--json", action="store_true", help="el plan en JSON (memory.total_gb, time.step_seconds…)")
    p.add_argument("--tokens-per-batch", type=int)
    p.add_argument("--max-length", type=int)
    p.add_argument("--base", help="modelo base: smollm2-135m, carpeta, .gguf, id del Hub (solo su config.json) u ollama:NOMBRE[:etiqueta]")
    p.add_argument("--gradient-checkpointing", dest="gradient_checkpointing", action="store_true", default=None)
    p.add_argument("--sin-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    p.add_argument("--bases", action="store_true",
                   help="además, las bases que podrías usar (incluida, GGUF y Ollama locales, las de las guías en el "
                        "Hub): si caben y cuánto tardaría la receta con cada una, sin descargar nada")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("merge", help="fusiona el adaptador en un modelo safetensors independiente")
    p.add_argument("run", help="carpeta de la ejecución (runs/<nombre>)")
    p.add_argument("--output", help="carpeta destino (por defecto RUN/merged)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--sobrescribir", "--overwrite", dest="overwrite", action="store_true")
    p.set_defaults(func=_cmd_merge)

    p = sub.add_parser("chat", help="conversa con una ejecución (base + adaptador) o un modelo fusionado")
    p.add_argument("model", help="ejecución, modelo fusionado, o exportación (GGUF, carpeta ONNX, RUN/export)")
    p.add_argument("--prompt", help="una sola pregunta, sin modo interactivo")
    p.add_argument("--system", help="mensaje de sistema (por defecto, el de la receta)")
    p.add_argument("--temperature", type=float, help="0 = greedy (por defecto el de la receta, 0.6)")
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--motor", choices=["auto", "transformers", "llama.cpp", "onnxruntime"], default="auto",
                   help="auto: transformers para ejecuciones, llama.cpp para GGUF, onnxruntime para ONNX")
    p.set_defaults(func=_cmd_chat)

    p = sub.add_parser("serve", help="API compatible con OpenAI y página de chat (una o varias personalidades)")
    p.add_argument("sources", nargs="+", metavar="RUN|EXPORT",
                   help="ejecuciones sobre la misma base (cada una, una personalidad), o un modelo fusionado o exportado")
    p.add_argument("--host", default="127.0.0.1", help="otra dirección que 127.0.0.1 exige --api-key")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--motor", choices=["auto", "transformers", "llama.cpp", "onnxruntime"], default="auto")
    p.add_argument("--api-key", help="clave Bearer exigida en /v1 (o la variable AFINAR_API_KEY)")
    p.add_argument("--cors", nargs="+", default=[], metavar="ORIGEN", help="orígenes web permitidos (sin comodín)")
    p.add_argument("--max-body-kb", type=int, default=256, help="tamaño máximo de una petición (413 si se pasa)")
    p.add_argument("--max-prompt-tokens", type=int, default=2048, help="tokens máximos de la conversación (400)")
    p.add_argument("--max-tokens", type=int, default=1024, help="max_tokens máximo por petición (400)")
    p.add_argument("--timeout", type=float, default=120.0, help="segundos máximos generando por petición")
    p.add_argument("--log-contenido", action="store_true", help="escribe los mensajes en el registro (por defecto no)")
    p.add_argument("--con-base", action="store_true",
                   help="sirve también el modelo base como personalidad 'base', para comparar lado a lado "
                        "(no con exportaciones GGUF/ONNX)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("demo", help="entrena la receta de enfermería en el modelo incluido, compara y fusiona")
    p.add_argument("--output", default=os.path.join("runs", "demo-enfermeria"))
    p.add_argument("--epochs", type=float)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--minutos", "--minutes", type=float,
                   help="minutos de entrenamiento (por defecto 5; los pasos que quepan en este equipo)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("estudio", help="la aplicación web local, en español: datos, modelo, entrenar, evaluar, exportar y usar")
    p.add_argument("--puerto", type=int, default=7860)
    p.add_argument("--no-abrir", action="store_true", help="no abre el navegador (imprime la dirección)")
    p.add_argument("--host", default="127.0.0.1", help="otra dirección que 127.0.0.1 expone el estudio a tu red (con token)")
    p.add_argument("--carpeta", default="afinar-estudio", help="dónde guarda datos, recetas y ejecuciones")
    p.add_argument("--max-subida-mb", type=int, default=50, help="tamaño máximo de un archivo subido")
    p.add_argument("--token-nuevo", action="store_true", help="otro token para esta carpeta: los enlaces y accesos "
                   "recordados dejan de valer")
    p.add_argument("--acceso-directo", action="store_true", help="escribe un acceso directo en el escritorio que abre "
                   "el estudio de esta carpeta sin terminal")
    p.set_defaults(func=_cmd_estudio)

    p = sub.add_parser("borradores", help="borradores de preguntas y respuestas sacados de tus documentos (PDF, "
                       "DOCX, TXT, MD) por un modelo profesor, para revisarlos")
    p.add_argument("documentos", nargs="*", metavar="DOCUMENTOS", help="archivos .pdf, .docx, .txt, .md o carpetas")
    p.add_argument("--profesor", metavar="URL", help="servidor compatible con OpenAI que escribe los borradores "
                   "(Ollama: http://127.0.0.1:11434/v1, llama.cpp, afinar serve)")
    p.add_argument("--modelo", metavar="NOMBRE", help="modelo del profesor (p. ej. qwen2.5:7b en Ollama)")
    p.add_argument("--salida", help="archivo de borradores (por defecto borradores.jsonl); con --exportar-revisados, "
                   "el JSONL de entrenamiento")
    p.add_argument("--por-pasaje", type=int, default=3, help="preguntas por pasaje (por defecto 3)")
    p.add_argument("--permitir-remoto", action="store_true", help="deja usar un profesor que no está en este equipo: "
                   "los pasajes SALEN del equipo (los que tienen posibles datos personales no se envían)")
    p.add_argument("--tiempo-limite", type=float, default=120.0, help="segundos máximos por llamada (por defecto 120)")
    p.add_argument("--reintentos", type=int, default=3, help="reintentos de una llamada fallida (por defecto 3)")
    p.add_argument("--precio-entrada", type=float, default=0.0, help="precio por millón de tokens de entrada (coste)")
    p.add_argument("--precio-salida", type=float, default=0.0, help="precio por millón de tokens de salida (coste)")
    p.add_argument("--max-pasajes", type=int, help="solo los N primeros pasajes (para probar)")
    p.add_argument("--exportar-revisados", metavar="BORRADORES", help="escribe en --salida los borradores aceptados o "
                   "corregidos como ejemplos pregunta/respuesta para entrenar")
    p.add_argument("--sin-progreso", action="store_true", help="sin barra de progreso")
    p.set_defaults(func=_cmd_borradores)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except AfinarError as exc:
        print(f"error {exc.render()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrumpido (si había checkpoints, continúa con: afinar train RECETA --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
