"""Possible personal data in free text: Spanish DNI/NIE, Chilean RUT, phone numbers, e-mails, names after
"paciente". Matches are reported by kind and place only; the matched value is never returned to callers
that print, so a report cannot leak what it found.
"""
from __future__ import annotations

import re

_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"
_DNI = re.compile(r"(?<![\w])(\d{8})[-\s]?([A-Za-z])(?![\w])")
_NIE = re.compile(r"(?<![\w])([XYZxyz])[-\s]?(\d{7})[-\s]?([A-Za-z])(?![\w])")
_RUT = re.compile(r"(?<![\w.])(\d{1,2}\.\d{3}\.\d{3}|\d{7,8})-([\dkK])(?![\w])")
_PHONE = re.compile(
    r"(?<![\w+])(?:(?:\+|00)\d{2,3}[\s.-]?)?(?:[6789]\d{2}[\s.-]?\d{3}[\s.-]?\d{3}|[6789]\d{2}(?:[\s.-]\d{2}){3})(?![\w])"
    r"|(?<![\w+])(?:\+|00)\d{2,3}[\s.-]?\d(?:[\s.-]?\d){7,11}(?![\w])"
)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_CAP = r"[A-ZÁÉÍÓÚÑ][a-záéíóúñü]+"
_NAME = re.compile(r"(?i:\b(?:paciente|pacienta|sr\.|sra\.|señor|señora)\s+)(" + _CAP + r"(?:\s+" + _CAP + r")*)")
# Capitalised words that follow "paciente" without being a name.
_NOT_NAMES = {
    "Con", "De", "Del", "En", "Que", "Se", "El", "La", "Los", "Las", "Un", "Una", "Al", "Ingresa", "Ingresó",
    "Presenta", "Refiere", "Masculino", "Femenino", "Varón", "Mujer", "Hombre", "Adulto", "Adulta",
    "Anciano", "Anciana", "Joven", "Diabético", "Diabética", "Hipertenso", "Hipertensa", "No", "Sin", "Es",
    "Está", "Fue", "Tiene", "Acude", "Consulta", "Estable", "Afebril", "Consciente", "Y", "O", "Para", "Por",
    "Pediátrico", "Pediátrica",
}
KINDS = {
    "dni": "DNI",
    "nie": "NIE",
    "rut": "RUT",
    "telefono": "teléfono",
    "email": "correo electrónico",
    "nombre": "nombre tras «paciente»",
}


def _dni_ok(number: str, letter: str) -> bool:
    return _DNI_LETTERS[int(number) % 23] == letter.upper()


def _rut_ok(body: str, check: str) -> bool:
    digits = [int(d) for d in body.replace(".", "")][::-1]
    total = sum(d * (2 + i % 6) for i, d in enumerate(digits))
    expected = 11 - total % 11
    return {11: "0", 10: "K"}.get(expected, str(expected)) == check.upper()


def find_pii(text: str) -> list[str]:
    """Kinds of personal data found in `text` (one entry per match), never the values."""
    found = []
    found += ["dni" for m in _DNI.finditer(text) if _dni_ok(m.group(1), m.group(2))]
    found += ["nie" for m in _NIE.finditer(text) if _dni_ok(str("XYZ".index(m.group(1).upper())) + m.group(2), m.group(3))]
    found += ["rut" for m in _RUT.finditer(text) if _rut_ok(m.group(1), m.group(2))]
    found += ["telefono" for _ in _PHONE.finditer(text)]
    found += ["email" for _ in _EMAIL.finditer(text)]
    for m in _NAME.finditer(text):
        if m.group(1).split()[0] not in _NOT_NAMES:
            found.append("nombre")
    return found


def kinds_in(messages: list[dict]) -> set[str]:
    """The kinds of personal data (keys of KINDS) in an example's messages."""
    return {kind for m in messages for kind in find_pii(m["content"])}


def has_pii(messages: list[dict]) -> bool:
    """Whether any message of an example may hold personal data (such an example is trained on, but its text is
    never shown, evaluated by text or saved in a report)."""
    return bool(kinds_in(messages))
