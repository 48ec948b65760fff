"""What the studio offers in its forms: presets, shipped datasets, checks, export formats, the fix for each data error,
how to use each export, and the recipe the Modelo step writes (an ordinary afinar recipe, validated like any other)."""
from __future__ import annotations

import copy
import time
from pathlib import Path

from afinar.config import DEFAULT_SYSTEM_PROMPT, Recipe, dump_recipe, recipe_from_dict
from afinar.errors import AfinarError
from afinar.studio.workspace import Workspace, checked_name

# The presets start from the demo's settings (recipes/enfermeria_demo.yaml: measured on a 2-core CPU, the best of the
# variants in its header for a few minutes of training) and give more time and care as they go. The plan card says
# before starting what each means on this machine.
PRESETS = {
    "rapido": {
        "etiqueta": "Rápido (unos 5 min)",
        "ayuda": "Para probar el camino entero: 5 minutos de entrenamiento en este equipo.",
        "receta": {"lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
                   "train": {"epochs": 3, "max_minutes": 5, "lr": 3.0e-3, "batch_size": 2, "eval_every": 1000000,
                             "save_every": 50}},
    },
    "equilibrado": {
        "etiqueta": "Equilibrado (hasta 20 min)",
        "ayuda": "Más pasos y validación cada 50: la opción para un primer modelo de verdad.",
        "receta": {"lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
                   "train": {"epochs": 3, "max_minutes": 20, "lr": 2.0e-3, "batch_size": 2, "eval_every": 50,
                             "save_every": 50}},
    },
    "cuidadoso": {
        "etiqueta": "Cuidadoso (hasta 60 min)",
        "ayuda": "Tasa de aprendizaje más baja y más épocas: aprende más despacio y olvida menos.",
        "receta": {"lora": {"r": 32, "alpha": 64, "dropout": 0.05, "target_modules": "all-linear"},
                   "train": {"epochs": 5, "max_minutes": 60, "lr": 1.0e-3, "batch_size": 4, "eval_every": 50,
                             "save_every": 50, "keep_last": 3}},
    },
}

# The shipped datasets a user can start from, with the domain checks that suit each.
SHIPPED_DATASETS = {
    "primeros_auxilios": {"etiqueta": "Primeros auxilios (enfermería)", "comprobaciones": ["enfermeria"]},
    "epicrisis": {"etiqueta": "Epicrisis (informes de alta)", "comprobaciones": ["epicrisis"]},
    "ciencias_biologia": {"etiqueta": "Ciencias: biología", "comprobaciones": []},
    "tutor_algoritmos": {"etiqueta": "Tutor de algoritmos", "comprobaciones": ["tutor"]},
}
CHECKS = {"enfermeria": "Enfermería: avisa al 112 cuando hace falta, no receta dosis…",
          "epicrisis": "Epicrisis: secciones del informe de alta",
          "tutor": "Tutor: explica paso a paso sin dar solo la solución"}
EXPORT_FORMATS = ["safetensors", "gguf", "ollama", "onnx", "zip"]

# For each data error code, what to do about it (the message already names file, line and field).
FIXES = {
    "D001": "Revisa comillas, comas y llaves de esa línea: cada línea debe ser un objeto JSON completo.",
    "D002": "Cada línea debe ser un objeto entre llaves {…}, no una lista ni un texto suelto.",
    "D003": 'Usa {"messages": [{"role": "user", …}, {"role": "assistant", …}]} o {"instruction": …, "output": …}.',
    "D004": "Añade el campo que falta (el mensaje dice cuál).",
    "D005": "Escribe el contenido del campo o borra el ejemplo.",
    "D006": "El campo debe ser un texto entre comillas.",
    "D007": "Los roles válidos son system, user y assistant.",
    "D008": "La conversación debe alternar user y assistant y terminar con assistant.",
    "D009": "Es una copia exacta de otro ejemplo: se ignora; bórrala si no la quieres.",
    "D010": "Acorta la respuesta o sube la longitud máxima en las opciones avanzadas.",
    "D011": "Vuelve a subir el archivo.",
    "D012": "El archivo no tiene ejemplos válidos: revisa los errores de las primeras líneas.",
    "D013": "Guarda el archivo con codificación UTF-8.",
    "D014": "La misma pregunta está en entrenamiento y validación: quita una de las dos.",
    "D015": "Hacen falta más ejemplos (o una fracción de validación distinta).",
}


def fix_for(code: str) -> str | None:
    return FIXES.get(code)


def _merge(into: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


def build_recipe(form: dict, data_path: str, workspace: Workspace) -> tuple[Recipe, str]:
    """The Modelo step's form → (validated recipe, its YAML text). Paths are relative to the studio's folder so the
    folder can be copied elsewhere and `afinar train recetas/NAME.yaml` run from it."""
    name = checked_name(form["nombre"], "ejecución")
    preset = PRESETS[form.get("preajuste") or "rapido"]
    shipped = SHIPPED_DATASETS.get(data_path.removeprefix("afinar:"), {}) if data_path.startswith("afinar:") else {}
    checks = form.get("comprobaciones")
    data = {
        "name": name,
        "description": form.get("descripcion") or f"Escrita por afinar estudio ({preset['etiqueta']}).",
        "model": {"base": form.get("base") or "smollm2-135m"},
        "data": {"sources": [{"path": data_path}], "system_prompt": form.get("sistema") or DEFAULT_SYSTEM_PROMPT,
                 "max_length": 512, "template": form.get("plantilla") or "auto"},
        "checks": checks if checks is not None else shipped.get("comprobaciones", []),
        "output_dir": f"ejecuciones/{name}",
    }
    _merge(data, copy.deepcopy(preset["receta"]))  # a copy: the preset itself stays as it is
    for dotted, value in (form.get("avanzado") or {}).items():
        if value is None or value == "":
            continue
        keys = str(dotted).split(".")
        if keys[0] in ("name", "output_dir") or len(keys) > 3:
            raise AfinarError("E016", f"opción avanzada no permitida: {dotted}")
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise AfinarError("E016", f"opción avanzada no válida: {dotted}")
        node[keys[-1]] = value
    if data["train"].get("max_minutes") in (0, "0"):  # «sin límite de tiempo»
        data["train"].pop("max_minutes")
    recipe = recipe_from_dict(data, f"recetas/{name}.yaml")  # R001 with every problem, in Spanish
    header = (f"# Receta escrita por afinar estudio el {time.strftime('%d/%m/%Y %H:%M')} (preajuste {preset['etiqueta']}).\n"
              f"# Entrenar sin el estudio, desde {workspace.root}:\n#   afinar train recetas/{name}.yaml\n"
              f"#   afinar plan recetas/{name}.yaml     # ¿cabe y cuánto tarda?\n")
    text = header + dump_recipe(recipe)
    return recipe, text


def export_usage(kind: str, path: Path, run_dir: Path, root: Path) -> list[dict]:
    """The exact lines to use an export where people use it ({etiqueta, texto}), paths relative to the studio folder."""
    shown = path.relative_to(root) if path.is_relative_to(root) else path
    name = run_dir.name.lower().replace("_", "-")
    if kind == "safetensors":
        return [{"etiqueta": "Conversar en la terminal", "texto": f"afinar chat {shown}"},
                {"etiqueta": "Python (transformers)", "texto":
                 f"from transformers import pipeline\nchat = pipeline('text-generation', '{shown}')\n"
                 "print(chat([{'role': 'user', 'content': 'Hola'}], max_new_tokens=200)[0]['generated_text'])"}]
    if kind.startswith("gguf"):
        return [{"etiqueta": "Conversar (llama.cpp)", "texto": f"afinar chat {shown}"},
                {"etiqueta": "LM Studio", "texto": f"Carga el archivo {shown} en LM Studio («My Models» → importar)."}]
    if kind == "ollama":
        return [{"etiqueta": "Crear el modelo en Ollama", "texto": f"cd {shown.parent} && ollama create {name} -f Modelfile"},
                {"etiqueta": "Usarlo", "texto": f"ollama run {name}"}]
    if kind == "onnx":
        return [{"etiqueta": "Transformers.js (navegador o Node)", "texto":
                 "import { pipeline, env } from '@huggingface/transformers';\n"
                 f"env.localModelPath = '{shown.parent}/';\nenv.allowRemoteModels = false;\n"
                 f"const chat = await pipeline('text-generation', '{shown.name}', {{ dtype: 'fp32' }});\n"
                 "const out = await chat([{ role: 'user', content: 'Hola' }], { max_new_tokens: 200 });\n"
                 "console.log(out[0].generated_text.at(-1).content);"},
                {"etiqueta": "Conversar (onnxruntime)", "texto": f"afinar chat {shown}"}]
    if kind == "zip":
        return [{"etiqueta": "Comprobar el zip tras copiarlo", "texto": f"afinar export --verificar {shown}"}]
    return [{"etiqueta": "Archivo", "texto": str(shown)}]
