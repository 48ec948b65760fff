"""Question/answer drafts written by a teacher model from documents, then reviewed by a person (`afinar borradores`).

documents.py reads PDF, DOCX, TXT and MD into passages; teacher.py asks an OpenAI-compatible model for question/answer
pairs on each passage; store.py keeps the drafts file and the reviewer's decisions; run.py is the command.

Error codes (AfinarError.code) of this package; messages never carry the documents' text, only files and pages.
"""
from __future__ import annotations

CODES = {
    "B001": "el documento no existe",
    "B002": "tipo de documento no admitido (se leen .pdf, .docx, .txt y .md)",
    "B003": "PDF protegido con contraseña",
    "B004": "PDF dañado o ilegible",
    "B005": "PDF escaneado: ninguna página tiene texto (hace falta OCR)",
    "B006": "el .docx no es un documento de Word (.docx) válido",
    "B007": "documento vacío o con demasiado poco texto",
    "B008": "el texto no está en UTF-8",
    "B009": "el profesor está en otra máquina y falta --permitir-remoto",
    "B010": "la URL del profesor no es válida",
    "B011": "falta un paquete de Python (openai, pypdf o python-docx)",
    "B012": "opción no válida",
    "B013": "archivo de borradores inexistente o ilegible",
    "B014": "no hay ningún borrador con ese id",
    "B015": "revisión no válida",
    "B016": "el profesor no responde (lo hecho queda guardado para continuar)",
    "B017": "el progreso guardado es de otra orden (otro modelo o número de preguntas por pasaje)",
}
