"""Rule checks for generated text that need no model: the same functions check shipped data and model output.

Epicrisis rules follow the checklist of the epicrisis guide users follow: starts with "Ingresa por", CIE-10
and ATC codes in parentheses, no markdown, 80-200 words, and nothing (code, drug, number) that is not in
the input. Findings name the rule and the offending token, never the surrounding text.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from afinar.data.duplicates import fold
from afinar.data.keypoints import dangers_in, sentences

# CIE-10: letter, two digits, optional .digit(s) (J18.9, I10, S72.00). ATC: level 5 (C09AA05) down to level 3 (J01C).
CIE10 = re.compile(r"(?<![\w.])([A-Z]\d{2}(?:\.\d{1,2})?)(?![\w])")
ATC = re.compile(r"(?<![\w])([A-V]\d{2}[A-Z](?:[A-Z](?:\d{2})?)?)(?![\w])")
NUMBER = re.compile(r"(?<![\w.,])(\d+(?:[.,]\d+)?)")
MARKDOWN = re.compile(r"\*\*|__|`|^\s*#|^\s*[-*•+]\s|^\s*\d+\.\s|\[|\]", re.MULTILINE)

# International non-proprietary names a discharge text might mention; if one appears in the output but not in
# the input, the model invented a drug. Spanish spellings, compared without accents.
DRUGS = frozenset({
    "paracetamol", "ibuprofeno", "naproxeno", "diclofenaco", "ketorolaco", "metamizol", "dexketoprofeno",
    "tramadol", "morfina", "fentanilo", "oxicodona", "tapentadol", "codeina", "buprenorfina", "acido",
    "acetilsalicilico", "clopidogrel", "ticagrelor", "prasugrel", "apixaban", "rivaroxaban", "edoxaban",
    "dabigatran", "acenocumarol", "warfarina", "heparina", "enoxaparina", "bemiparina", "fondaparinux",
    "amoxicilina", "ampicilina", "cloxacilina", "piperacilina", "tazobactam", "clavulanico", "cefazolina",
    "cefuroxima", "ceftriaxona", "cefotaxima", "ceftazidima", "cefepima", "cefixima", "meropenem", "imipenem",
    "ertapenem", "azitromicina", "claritromicina", "eritromicina", "levofloxacino", "ciprofloxacino",
    "moxifloxacino", "doxiciclina", "vancomicina", "linezolid", "daptomicina", "gentamicina", "amikacina",
    "tobramicina", "clindamicina", "metronidazol", "cotrimoxazol", "trimetoprima", "sulfametoxazol",
    "nitrofurantoina", "fosfomicina", "rifampicina", "isoniazida", "pirazinamida", "etambutol", "fluconazol",
    "voriconazol", "caspofungina", "aciclovir", "valaciclovir", "oseltamivir", "omeprazol", "esomeprazol",
    "pantoprazol", "lansoprazol", "ranitidina", "famotidina", "metoclopramida", "ondansetron", "domperidona",
    "loperamida", "lactulosa", "macrogol", "senosidos", "bisacodilo", "mesalazina", "budesonida", "prednisona",
    "prednisolona", "metilprednisolona", "dexametasona", "hidrocortisona", "insulina", "glargina", "detemir",
    "degludec", "aspart", "lispro", "metformina", "sitagliptina", "linagliptina", "vildagliptina",
    "empagliflozina", "dapagliflozina", "canagliflozina", "gliclazida", "glimepirida", "liraglutida",
    "semaglutida", "dulaglutida", "pioglitazona", "enalapril", "lisinopril", "ramipril", "captopril",
    "perindopril", "losartan", "valsartan", "candesartan", "irbesartan", "olmesartan", "telmisartan",
    "sacubitrilo", "amlodipino", "nifedipino", "diltiazem", "verapamilo", "bisoprolol", "carvedilol", "metoprolol",
    "atenolol", "propranolol", "nebivolol", "furosemida", "torasemida", "hidroclorotiazida", "clortalidona",
    "indapamida", "espironolactona", "eplerenona", "digoxina", "amiodarona", "dronedarona", "flecainida",
    "ivabradina", "nitroglicerina", "mononitrato", "isosorbide", "ranolazina", "atorvastatina", "simvastatina",
    "rosuvastatina", "pravastatina", "ezetimiba", "fenofibrato", "levotiroxina", "tiamazol", "carbimazol",
    "alendronato", "risedronato", "denosumab", "calcio", "colecalciferol", "vitamina", "hierro", "sulfato",
    "ferroso", "folico", "cianocobalamina", "salbutamol", "terbutalina", "ipratropio", "tiotropio", "bromuro",
    "formoterol", "salmeterol", "vilanterol", "fluticasona", "beclometasona", "montelukast", "teofilina",
    "acetilcisteina", "levetiracetam", "valproico", "valproato", "fenitoina", "carbamazepina", "lamotrigina",
    "lacosamida", "topiramato", "gabapentina", "pregabalina", "clonazepam", "diazepam", "lorazepam", "alprazolam",
    "midazolam", "zolpidem", "haloperidol", "quetiapina", "risperidona", "olanzapina", "aripiprazol", "sertralina",
    "escitalopram", "citalopram", "fluoxetina", "paroxetina", "venlafaxina", "duloxetina", "mirtazapina",
    "trazodona", "amitriptilina", "litio", "donepezilo", "rivastigmina", "memantina", "levodopa", "carbidopa",
    "alopurinol", "febuxostat", "colchicina", "tamsulosina", "finasterida", "oxibutinina", "mirabegron",
    "tacrolimus", "ciclosporina", "micofenolato", "azatioprina", "metotrexato", "hidroxicloroquina", "potasio",
    "magnesio", "bicarbonato", "noradrenalina", "adrenalina", "dobutamina", "dopamina", "naloxona", "flumazenilo",
    "tenecteplasa", "alteplasa",
})
_MULTIWORD = {"acido acetilsalicilico", "acido folico", "sulfato ferroso", "acido valproico"}
_DRUG_PARTS = {"acido", "sulfato", "vitamina", "calcio", "potasio", "magnesio", "bicarbonato", "hierro", "bromuro"}


@dataclass(frozen=True)
class Finding:
    code: str
    message: str

    def render(self) -> str:
        return f"{self.code}: {self.message}"


def _flatten(value) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _numbers(text: str) -> set[str]:
    text = ATC.sub(" ", CIE10.sub(" ", text))
    return {n.replace(",", ".") for n in NUMBER.findall(text)}


def _drugs(text: str) -> set[str]:
    words = re.findall(r"[a-z]+", fold(text))
    found = {w for w in words if w in DRUGS and w not in _DRUG_PARTS}
    joined = " ".join(words)
    found |= {m for m in _MULTIWORD if m in joined}
    return found


def check_epicrisis(case: dict | str, text: str) -> list[Finding]:
    """All rule violations of an epicrisis `text` written from the structured `case` (dict or its JSON)."""
    source = _flatten(case)
    body = text.strip()
    findings: list[Finding] = []
    if not body.startswith("Ingresa por"):
        findings.append(Finding("E001", "no empieza por «Ingresa por»"))
    words = len(body.split())
    if not 80 <= words <= 200:
        findings.append(Finding("E002", f"tiene {words} palabras (se esperan 80–200)"))
    if MARKDOWN.search(body):
        findings.append(Finding("E003", "contiene formato markdown (negritas, listas, corchetes o encabezados)"))

    for kind, pattern, code_missing, code_extra in (("CIE-10", CIE10, "E004", "E005"), ("ATC", ATC, "E006", "E007")):
        wanted = set(pattern.findall(source))
        written = set(pattern.findall(body))
        in_parens = {c for c in written if re.search(r"\(\s*" + re.escape(c) + r"\s*\)", body)}
        for code in sorted(wanted - in_parens):
            findings.append(Finding(code_missing, f"el código {kind} {code} de la entrada no aparece entre paréntesis"))
        for code in sorted(written - wanted):
            findings.append(Finding(code_extra, f"el código {kind} {code} no está en la entrada"))

    for number in sorted(_numbers(body) - _numbers(source)):
        findings.append(Finding("E008", f"el número {number} no está en la entrada"))
    for drug in sorted(_drugs(body) - _drugs(source)):
        findings.append(Finding("E009", f"el fármaco «{drug}» no está en la entrada"))
    return findings


# --- enfermería ------------------------------------------------------------------------------------

# Advice that current first-aid guidance (ERC/ILCOR 2021, Cruz Roja) calls harmful in any situation, as key-point
# phrases (afinar.data.keypoints: word families, negation scope: «no pongas mantequilla» is the right advice). What
# is harmful only in one situation (head back in a nosebleed, but not to open the airway) belongs to that question's
# `peligros`.
DANGEROUS = {
    "mantequilla, aceite o pasta de dientes en una quemadura": ["mantequilla", "pasta de dientes", "aceite en la quemadura"],
    "hielo directo sobre la piel": ["hielo directamente", "hielo directo sobre la piel"],
    "provocar el vómito": ["provocar el vómito", "inducir el vómito", "hacerle vomitar"],
    "succionar el veneno": ["succionar el veneno", "chupar el veneno", "sorber el veneno"],
    "meter algo en la boca durante una convulsión": ["mete algo en la boca", "pon algo entre los dientes",
                                                     "introduce un objeto en la boca"],
    "alcohol para entrar en calor": ["alcohol para entrar en calor", "alcohol para calentar"],
}


def check_enfermeria(output: str, reference: str = "") -> list[Finding]:
    """N002: advice that is harmful in any first-aid situation, said without negating it.

    (N001, «la referencia manda llamar al 112 y la respuesta no», was retired: a sentence the model repeats after
    every answer satisfied it. Whether an answer is right is measured by each question's `claves` and `peligros`.)"""
    parsed = sentences(output)
    return [Finding("N002", f"consejo peligroso: {label}") for label, phrases in DANGEROUS.items()
            if dangers_in(parsed, phrases)]


# --- tutor -----------------------------------------------------------------------------------------

CODE_BLOCK = re.compile(r"```(?:python|py)\s*\n(.*?)(?:```|$)", re.DOTALL)


def check_tutor(output: str) -> list[Finding]:
    """P001: a Python code block that does not parse (an unclosed block at the end counts as cut)."""
    import ast

    findings = []
    for index, block in enumerate(CODE_BLOCK.findall(output), start=1):
        try:
            ast.parse(block)
        except SyntaxError as exc:
            findings.append(Finding("P001", f"el bloque de código {index} no es Python válido (línea {exc.lineno})"))
    return findings


def case_from_prompt(prompt: str) -> dict | str:
    """The structured input of an epicrisis prompt (instruction + compact JSON); the raw text if it is not JSON."""
    start = prompt.find("{")
    if start >= 0:
        try:
            return json.loads(prompt[start:])
        except json.JSONDecodeError:
            pass
    return prompt


# name in a recipe's `checks:` → function(prompt, reference, output) -> findings
CHECKS = {
    "epicrisis": lambda prompt, reference, output: check_epicrisis(case_from_prompt(prompt), output),
    "enfermeria": lambda prompt, reference, output: check_enfermeria(output, reference),
    "tutor": lambda prompt, reference, output: check_tutor(output),
}
