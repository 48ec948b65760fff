"""What the studio offers in its forms: presets, shipped datasets, checks, export formats, the fix for each data error,
how to use each export, and the recipe the Modelo step writes (an ordinary afinar recipe, validated like any other)."""
from __future__ import annotations

import copy
import time
from pathlib import Path

from afinar.config import DEFAULT_SYSTEM_PROMPT, Recipe, dump_recipe, recipe_from_dict
from afinar.errors import AfinarError
from afinar.models import EMBEDDED
from afinar.studio.workspace import Workspace, checked_name

# The presets start from the demo's settings (recipes/enfermeria_demo.yaml) and give more time and care as they go.
# Re-measured by key points and dangers (bench/demo_settings.py, its header): on the embedded base no variant of
# learning rate, NEFTune or data gives a single complete answer, so none is better than these where it matters; the
# evaluation step says so for each run. The plan card says before starting what each means on this machine.
PRESETS = {
    "rapido": {
        "etiqueta": "Rápido (hasta 5 min)",
        "ayuda": "Para probar el camino entero: 3 pasadas por tus ejemplos, y nunca más de 5 minutos (con pocos "
                 "ejemplos acaba antes: el plan dice cuánto).",
        "receta": {"lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
                   "train": {"epochs": 3, "max_minutes": 5, "lr": 3.0e-3, "batch_size": 2, "eval_every": 1000000,
                             "save_every": 50}},
    },
    "equilibrado": {
        "etiqueta": "Equilibrado (hasta 20 min)",
        "ayuda": "3 pasadas, y cada 50 pasos mide cómo le va con los ejemplos apartados: la opción para un primer "
                 "modelo de verdad.",
        "receta": {"lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
                   "train": {"epochs": 3, "max_minutes": 20, "lr": 2.0e-3, "batch_size": 2, "eval_every": 50,
                             "save_every": 50}},
    },
    "cuidadoso": {
        "etiqueta": "Cuidadoso (hasta 60 min)",
        "ayuda": "Aprende más despacio y con 5 pasadas: cambia menos de golpe y olvida menos lo que ya sabía.",
        "receta": {"lora": {"r": 32, "alpha": 64, "dropout": 0.05, "target_modules": "all-linear"},
                   "train": {"epochs": 5, "max_minutes": 60, "lr": 1.0e-3, "batch_size": 4, "eval_every": 50,
                             "save_every": 50, "keep_last": 3}},
    },
}

# The shipped datasets a user can start from, with the domain checks that suit each and the held-out questions with
# key points the evaluation answers (what lets it say whether the answers are right).
SHIPPED_DATASETS = {
    "primeros_auxilios": {"etiqueta": "Primeros auxilios (enfermería)", "comprobaciones": ["enfermeria"],
                          "evaluacion": "afinar:primeros_auxilios_evaluacion"},
    "epicrisis": {"etiqueta": "Epicrisis (informes de alta)", "comprobaciones": ["epicrisis"],
                  "evaluacion": "afinar:epicrisis_evaluacion"},
    "ciencias_biologia": {"etiqueta": "Ciencias: biología", "comprobaciones": [],
                          "evaluacion": "afinar:ciencias_biologia_evaluacion"},
    "tutor_algoritmos": {"etiqueta": "Tutor de algoritmos", "comprobaciones": ["tutor"],
                         "evaluacion": "afinar:tutor_algoritmos_evaluacion"},
}
# The bases the guides our users follow train (and the embedded one). Parameter counts are the models' own names;
# the download is their bf16 weights on the Hub (2 bytes a parameter). What each needs in memory and time on this
# machine is the plan card's job (afinar plan), once the recipe is saved.
BASES = [
    {"id": "smollm2-135m", "nombre": "SmolLM2-135M (incluido, sin internet)", "parametros_m": 135, "descarga_gb": 0,
     "plantilla": "auto", "nota": "Muy pequeño: aprende el formato y a terminar las respuestas, no conocimiento "
     "fiable. Sirve para probar el camino; sus respuestas no son consejos."},
    {"id": "Qwen/Qwen2.5-0.5B-Instruct", "nombre": "Qwen2.5-0.5B-Instruct", "parametros_m": 494, "descarga_gb": 1.0,
     "plantilla": "auto", "nota": "El más pequeño con español aceptable; cabe en casi cualquier portátil."},
    {"id": "Qwen/Qwen2.5-1.5B-Instruct", "nombre": "Qwen2.5-1.5B-Instruct", "parametros_m": 1544, "descarga_gb": 3.1,
     "plantilla": "auto", "nota": "Mejor español y más conocimiento; en un procesador sin tarjeta gráfica, lento."},
    {"id": "meta-llama/Llama-3.2-1B-Instruct", "nombre": "Llama-3.2-1B-Instruct", "parametros_m": 1236,
     "descarga_gb": 2.5, "plantilla": "auto", "nota": "El de la guía de ciencias. Meta pide aceptar su licencia en "
     "Hugging Face e iniciar sesión antes de descargarlo."},
    {"id": "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "nombre": "TinyLlama-1.1B-Chat", "parametros_m": 1100,
     "descarga_gb": 2.2, "plantilla": "auto", "nota": "El de la guía TinyLlama Nurse; su español es flojo."},
    {"id": "microsoft/phi-2", "nombre": "Phi-2 (modelo base, sin conversación)", "parametros_m": 2780,
     "descarga_gb": 5.6, "plantilla": "tutor-phi2", "nota": "El de la guía del tutor de algoritmos; grande para un "
     "portátil sin tarjeta gráfica."},
]
EMBEDDED_BASES = set(EMBEDDED)  # «no usar como consejo» while a run starts from one of these

CHECKS = {"enfermeria": "Enfermería: ningún consejo peligroso (mantequilla en una quemadura, provocar el vómito…)",
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
    "D016": "Varía esa frase o quítala de parte de las respuestas: el modelo aprenderá a repetirla en todas.",
    "K001": 'claves: una lista de listas de alternativas, p. ej. [["presiona", "aprieta"], ["112"]]; peligros: una lista de textos.',
    "K002": "Borra la alternativa vacía o escribe la palabra que falta.",
    "K003": "Escribe la acción o el dato concreto («presiona la herida»), no palabras que salen en cualquier texto.",
    "K004": "El número de «linea» debe ser el de un ejemplo del archivo de datos.",
}


def fix_for(code: str) -> str | None:
    return FIXES.get(code)


# Words that mark each domain in the examples' text (folded: lower case, no accents). A check is suggested when at
# least a quarter of the examples use one of them: the page ticks it and says why; the person can untick it.
DOMAIN_WORDS = {
    "enfermeria": ("112", "quemadura", "herida", "hemorragia", "sangr", "fractura", "desmay", "atragant", "reanima",
                   "rcp", "intoxica", "convulsi", "primeros auxilios", "picadura", "torcedura", "esguince"),
    "epicrisis": ("epicrisis", "informe de alta", "diagnostico", "ingreso", "tratamiento al alta", "evolucion"),
    "tutor": ("algoritmo", "complejidad", "recursi", "pseudocodigo", "ordenamiento", "bucle", "big o"),
}


def suggest_checks(examples) -> list[str]:
    """The domain checks whose words appear in at least a quarter of the examples (never the text itself)."""
    import unicodedata

    if not examples:
        return []

    def folded(example) -> str:
        text = " ".join(m["content"] for m in example.messages).lower()
        return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))

    texts = [folded(e) for e in examples]
    found = [check for check, words in DOMAIN_WORDS.items()
             if sum(any(w in t for w in words) for t in texts) >= max(1, len(texts) / 4)]
    if "epicrisis" in found:  # discharge summaries mention emergencies and bleeding too, and must give doses
        found = [check for check in found if check != "enfermeria"]
    return found


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
    if shipped.get("evaluacion"):
        data["evaluation"] = {"set": shipped["evaluacion"]}
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
