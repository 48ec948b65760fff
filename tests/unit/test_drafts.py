"""`afinar borradores` (afinar.drafts): documents → passages → drafts from a teacher → review.

A fake OpenAI-compatible server in a thread plays the teacher (good JSON, fenced JSON, prose, a 500, a hang, a
server that goes down); the documents are written by the tests (fpdf2, pypdf, python-docx)."""
import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from afinar.cli import main
from afinar.drafts import CODES
from afinar.drafts import run as run_module
from afinar.drafts.documents import (
    DOCUMENT_SUFFIXES,
    MIN_ALONE_WORDS,
    Passage,
    group_paragraphs,
    read_document,
    read_passages,
)
from afinar.drafts.run import check_teacher_url, drafts, summary_lines
from afinar.drafts.store import (
    counts,
    drafts_files,
    log_path,
    progress_path,
    read_drafts,
    review,
    reviewed_examples,
    write_reviewed,
)
from afinar.drafts.teacher import FIRMER, parse_pairs
from afinar.errors import AfinarError

SECRET = "La clave del armario de estupefacientes es ornitorrinco azul."
FIRST_AID = (
    "Ante una quemadura térmica, enfría la zona con agua corriente a temperatura ambiente durante veinte minutos. "
    "No apliques hielo, pasta de dientes ni pomadas caseras, porque empeoran la lesión. Retira anillos y pulseras "
    "antes de que aparezca la hinchazón. Cubre la quemadura con un apósito estéril y húmedo, sin apretar."
)
FIRST_AID_2 = (
    "Si la quemadura afecta a la cara, las manos, los pies o los genitales, o es más grande que la palma de la mano "
    "del paciente, deriva siempre al servicio de urgencias. Vigila la respiración si hubo humo en un lugar cerrado. "
    "En niños pequeños y ancianos, consulta al médico aunque la quemadura parezca leve."
)
CHOKING = (
    "En un atragantamiento con tos eficaz, anima a la persona a seguir tosiendo y no le des golpes. Si la tos deja "
    "de ser eficaz, da cinco golpes entre los omóplatos y después cinco compresiones abdominales, alternando hasta "
    "que expulse el objeto o pierda la consciencia. Si pierde la consciencia, llama al 112 y empieza la RCP."
)

LONG = " ".join([FIRST_AID, FIRST_AID_2, CHOKING])  # ~165 words: two never fit in one passage (220)


# --- the fake teacher ---------------------------------------------------------------------------------------------

def completion(content: str, usage=True) -> dict:
    body = {"id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": "profesor",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}
    if usage:
        body["usage"] = {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140}
    return body


def pairs_for(body: dict, n: int = 2) -> list[dict]:
    """Pairs that name the passage they came from by a hash of its text (not the text itself)."""
    user = body["messages"][-1]["content"]
    passage = re.search(r"<<<\n(.*)\n>>>", user, re.S).group(1)
    tag = abs(hash(passage)) % 10**8
    return [{"pregunta": f"¿Pregunta {i} del pasaje {tag}?", "respuesta": f"Respuesta {i} del pasaje {tag}."}
            for i in range(1, n + 1)]


class FakeTeacher(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send(self, status: int, payload, headers=None):
        data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        model = body["model"]
        with server.lock:
            server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            seen = len(server.requests)
        if self.path != "/v1/chat/completions":
            return self.send(404, {"error": {"message": "no"}})
        if server.fail_after is not None and seen > server.fail_after:
            return self.send(503, {"error": {"message": "caído"}})
        firmer = FIRMER in body["messages"][-1]["content"]
        if model == "bueno":
            return self.send(200, completion(json.dumps(pairs_for(body), ensure_ascii=False)))
        if model == "vallas":
            return self.send(200, completion("Claro, aquí tienes:\n```json\n" + json.dumps(
                {"preguntas": pairs_for(body, 3)}, ensure_ascii=False) + "\n```\nEspero que sirva."))
        if model == "prosa":
            return self.send(200, completion("Este pasaje habla de primeros auxilios y es muy interesante."))
        if model == "prosa-luego-bien":
            content = json.dumps(pairs_for(body, 1)) if firmer else "Vale, ahora te las escribo."
            return self.send(200, completion(content, usage=False))
        if model == "vacio":
            return self.send(200, completion("[]"))
        if model == "falla-una-vez" and seen == 1:
            return self.send(500, {"error": {"message": "caído"}}, headers={"retry-after-ms": "10"})
        if model == "falla-una-vez":
            return self.send(200, completion(json.dumps(pairs_for(body))))
        if model == "lento":
            server.release.wait(10)
            return self.send(200, completion(json.dumps(pairs_for(body))))
        return self.send(404, {"error": {"message": "modelo desconocido"}})


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address):
        pass


@pytest.fixture(scope="module")
def server():
    srv = QuietServer(("127.0.0.1", 0), FakeTeacher)
    srv.requests, srv.lock, srv.release, srv.fail_after = [], threading.Lock(), threading.Event(), None
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def url(server):
    server.requests.clear()
    server.fail_after = None
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


def sent_texts(server) -> list[str]:
    return [r["body"]["messages"][-1]["content"] for r in server.requests]


def make(documents, url, model, output, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("retries", 0)
    kw.setdefault("timeout", 10)
    return drafts([str(d) for d in documents], url, model, str(output), **kw)


# --- documents written by the tests -------------------------------------------------------------------------------

def write_pdf(path: Path, pages: list[list[str]]) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    for number, paragraphs in enumerate(pages, start=1):
        pdf.add_page()
        pdf.multi_cell(0, 6, f"Protocolo de primeros auxilios - página {number}")
        for paragraph in paragraphs:
            pdf.ln(4)
            pdf.multi_cell(0, 6, paragraph)
    pdf.output(str(path))
    return path


def write_image_pdf(path: Path, text_pages: int = 0) -> Path:
    from fpdf import FPDF
    from PIL import Image

    image = Image.new("RGB", (60, 40), (200, 30, 30))
    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    for _ in range(text_pages):
        pdf.add_page()
        pdf.multi_cell(0, 6, FIRST_AID)
    pdf.add_page()
    pdf.image(image, x=10, y=10, w=60)
    pdf.output(str(path))
    return path


@pytest.fixture
def pdf(tmp_path):
    return write_pdf(tmp_path / "quemaduras.pdf", [[FIRST_AID, FIRST_AID_2], [CHOKING, SECRET + " " + FIRST_AID_2]])


@pytest.fixture
def docx_file(tmp_path):
    import docx

    document = docx.Document()
    document.add_heading("Atragantamiento", level=1)
    document.add_paragraph(CHOKING)
    document.add_heading("Quemaduras", level=1)
    document.add_paragraph(FIRST_AID)
    table = document.add_table(rows=3, cols=2)
    for row, (a, b) in zip(table.rows, [("Grado", "Qué hacer en el centro de salud"),
                                        ("Primer grado", "agua corriente veinte minutos y crema hidratante"),
                                        ("Segundo grado", "apósito estéril húmedo y derivar a enfermería")]):
        row.cells[0].text, row.cells[1].text = a, b
    path = tmp_path / "apuntes.docx"
    document.save(str(path))
    return path


def text_file(tmp_path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- reading documents --------------------------------------------------------------------------------------------

def test_pdf_passages_keep_their_page_and_accents(pdf):
    document = read_document(pdf)
    assert document.pages == 2 and document.pages_without_text == []
    passages = document.passages
    assert {p.page for p in passages} == {1, 2}
    assert all(p.file == "quemaduras.pdf" and p.section is None for p in passages)
    assert [p.index for p in passages] == list(range(len(passages)))
    page1 = " ".join(p.text for p in passages if p.page == 1)
    page2 = " ".join(p.text for p in passages if p.page == 2)
    assert "quemadura térmica" in page1 and "omóplatos" not in page1  # never crosses a page
    assert "omóplatos" in page2 and "ornitorrinco" in page2
    assert "página" not in page1 + page2  # the running head of every page is not content
    assert "enfría la zona con agua corriente" in " ".join(page1.split())  # a line break is not a paragraph
    assert [p.id for p in read_passages(pdf)] == [p.id for p in passages]  # stable
    assert len({p.id for p in passages}) == len(passages)
    small = read_passages(pdf, max_words=40)  # paragraphs split at sentence ends, still by page
    assert len(small) > len(passages) and all(p.words <= 60 for p in small)
    assert all(p.text.rstrip().endswith((".", "?", "!")) for p in small if p.words > 25)


def test_a_pdf_heading_starts_the_passage_of_its_section(tmp_path):
    """A PDF has no marked sections: «2. Atragantamiento» must open the passage about choking, not dangle at the end of
    the one about burns (the teacher would then see a title without its text)."""
    path = write_pdf(tmp_path / "secciones.pdf", [["1. Quemaduras", FIRST_AID, FIRST_AID_2, "2. Atragantamiento",
                                                   CHOKING]])
    passages = read_passages(path)
    assert len(passages) == 2 and passages[1].text.startswith("2. Atragantamiento\n\n")
    assert passages[1].section == "2. Atragantamiento"
    assert "1. Quemaduras\n\n" in passages[0].text  # with the page's running head above it: too short alone
    assert "omóplatos" in passages[-1].text and "omóplatos" not in passages[-2].text
    assert not any(p.text.rstrip().endswith("Atragantamiento") for p in passages)


def test_docx_headings_become_sections_and_tables_are_read(docx_file):
    passages = read_passages(docx_file)
    assert [p.section for p in passages] == ["Atragantamiento", "Quemaduras"]
    assert all(p.page is None and p.file == "apuntes.docx" for p in passages)
    assert "omóplatos" in passages[0].text
    assert "Primer grado | agua corriente veinte minutos" in passages[1].text  # the table, row by row
    assert "Atragantamiento" not in passages[0].text  # the heading is the section, not text


def test_txt_and_markdown(tmp_path):
    md = text_file(tmp_path, "guia.md", f"# Guía de aula\n\n## Quemaduras\n\n{FIRST_AID}\n\n- **No** pongas hielo\n"
                                        f"- Retira anillos\n\n## Atragantamiento\n\n{CHOKING}\n\n42\n")
    passages = read_passages(md)
    assert [p.section for p in passages] == ["Quemaduras", "Atragantamiento"]
    assert "• No pongas hielo" in passages[0].text and "**" not in passages[0].text
    assert not passages[1].text.endswith("42")  # a page number (no letters): dropped
    txt = text_file(tmp_path, "notas.txt", f"{FIRST_AID}\r\n\r\n{CHOKING}\r\n\r\n3\r\n")
    passages = read_passages(txt, max_words=60)
    assert [p.section for p in passages] == [None, None]
    assert passages[0].text == " ".join(FIRST_AID.split()) and passages[1].text.startswith("En un atragantamiento")
    long = text_file(tmp_path, "largo.txt", " ".join([FIRST_AID, CHOKING] * 4))  # one huge paragraph
    pieces = read_passages(long, max_words=100)
    assert len(pieces) >= 3 and all(p.words <= 100 for p in pieces)
    assert all(p.text.endswith(".") for p in pieces)  # cut at sentence ends


def test_grouping_merges_and_drops_fragments():
    assert group_paragraphs(["Página 3"]) == []  # alone and tiny: dropped
    assert group_paragraphs(["Una frase corta de ocho palabras aquí mismo."]) == [
        "Una frase corta de ocho palabras aquí mismo."]  # alone but not tiny: kept
    out = group_paragraphs(["Título", FIRST_AID, "Fin."], max_words=60)
    assert len(out) == 1 and out[0].startswith("Título") and out[0].endswith("Fin.")
    assert MIN_ALONE_WORDS < 25 and DOCUMENT_SUFFIXES == (".pdf", ".docx", ".txt", ".md")


def error_of(call) -> AfinarError:
    with pytest.raises(AfinarError) as info:
        call()
    assert info.value.code in CODES
    return info.value


def test_documents_that_cannot_be_read(tmp_path, pdf):
    from pypdf import PdfReader, PdfWriter

    locked = tmp_path / "cerrado.pdf"
    writer = PdfWriter(clone_from=PdfReader(str(pdf)))
    writer.encrypt("secreto", algorithm="RC4-128")
    writer.write(str(locked))
    error = error_of(lambda: read_passages(locked))
    assert error.code == "B003" and error.where == "cerrado.pdf" and "contraseña" in error.message

    owner_only = tmp_path / "solo-permisos.pdf"  # opens without a password: read (only its owner restricted it)
    writer = PdfWriter(clone_from=PdfReader(str(pdf)))
    writer.encrypt(user_password="", owner_password="dueño", algorithm="RC4-128")
    writer.write(str(owner_only))
    assert [p.text for p in read_passages(owner_only)] == [p.text for p in read_passages(pdf)]

    error = error_of(lambda: read_passages(write_image_pdf(tmp_path / "escaneado.pdf")))
    assert error.code == "B005" and error.where == "escaneado.pdf"
    assert "parece escaneado" in error.message and "OCR" in error.message

    mixed = read_document(write_image_pdf(tmp_path / "mixto.pdf", text_pages=1))
    assert mixed.pages == 2 and mixed.pages_without_text == [2] and {p.page for p in mixed.passages} == {1}

    fake = text_file(tmp_path, "falso.docx", "esto no es un Word")
    assert error_of(lambda: read_passages(fake)).code == "B006"
    assert error_of(lambda: read_passages(text_file(tmp_path, "viejo.doc", "x"))).code == "B002"
    assert "docx" in error_of(lambda: read_passages(tmp_path / "viejo.doc")).hint
    assert error_of(lambda: read_passages(text_file(tmp_path, "vacio.txt", ""))).code == "B007"
    assert error_of(lambda: read_passages(text_file(tmp_path, "poco.md", "# Título\n\nHola.\n"))).code == "B007"
    assert error_of(lambda: read_passages(tmp_path / "no-existe.pdf")).code == "B001"
    (tmp_path / "latin1.txt").write_bytes(FIRST_AID.encode("latin-1"))
    assert error_of(lambda: read_passages(tmp_path / "latin1.txt")).code == "B008"
    (tmp_path / "roto.pdf").write_bytes(b"%PDF-1.4\nbasura")
    assert error_of(lambda: read_passages(tmp_path / "roto.pdf")).code == "B004"


# --- the teacher's replies ----------------------------------------------------------------------------------------

GOOD = [{"pregunta": "¿Cuánto enfrío?", "respuesta": "Veinte minutos."}, {"pregunta": "¿Hielo?", "respuesta": "No."}]


@pytest.mark.parametrize("text, expected", [
    (json.dumps(GOOD), GOOD),
    ("```json\n" + json.dumps(GOOD) + "\n```", GOOD),
    ("Aquí tienes:\n" + json.dumps(GOOD) + "\nEspero que sirva.", GOOD),
    (json.dumps({"preguntas": GOOD}), GOOD),
    (json.dumps({"pregunta": "¿Cuánto enfrío?", "respuesta": "Veinte minutos."}), GOOD[:1]),
    (json.dumps([{"Question": "¿Cuánto enfrío?", "Answer": "Veinte minutos."}]), GOOD[:1]),
    (json.dumps(GOOD)[:-30], GOOD[:1]),  # cut short by max_tokens: the complete objects
    (json.dumps(GOOD + GOOD), GOOD),  # duplicates dropped
    ("[]", []),
    # Labelled lines, as small local models write them whatever the prompt asks: numbered, bold, wrapped, P:/R:.
    ("Aquí tienes:\n1. **Pregunta:** ¿Cuánto enfrío?\n   **Respuesta:** Veinte\n   minutos.\n\n2. Pregunta: ¿Hielo?\n"
     "Respuesta: No.", GOOD),
    ("P: ¿Cuánto enfrío?\nR: Veinte minutos.", GOOD[:1]),
])
def test_parse_pairs(text, expected):
    assert parse_pairs(text) == (expected, None)


@pytest.mark.parametrize("text", [None, "", "Este pasaje habla de quemaduras.", '{"resumen": "quemaduras"}',
                                  '[{"pregunta": "", "respuesta": "x"}]', '["una", "lista"]',
                                  "Pregunta: ¿Cuánto enfrío?\n(sin respuesta)", "Respuesta: veinte minutos."])
def test_parse_pairs_refuses_what_is_not_pairs(text):
    pairs, reason = parse_pairs(text)
    assert pairs == [] and reason


def test_parse_pairs_keeps_at_most_k():
    assert parse_pairs(json.dumps(GOOD), k=1) == (GOOD[:1], None)


# --- the command --------------------------------------------------------------------------------------------------

def test_drafts_keep_their_passage_and_the_call_log_has_no_text(url, server, pdf, tmp_path):
    output = tmp_path / "borradores.jsonl"
    passages = read_passages(pdf)
    summary = make([pdf], url, "bueno", output)
    assert len(server.requests) == len(passages) == summary["sent"] == summary["passages"]
    body = server.requests[0]["body"]
    assert server.requests[0]["path"] == "/v1/chat/completions" and body["temperature"] <= 0.3
    system, user = body["messages"]
    assert system["role"] == "system" and '"pregunta"' in system["content"] and "SOLO" in system["content"]
    assert passages[0].text in user["content"] and "hasta 3 preguntas" in user["content"]

    saved = read_drafts(output)
    assert len(saved) == 2 * len(passages) == summary["new_drafts"] == summary["total_drafts"]
    by_passage = {p.id: p for p in passages}
    for draft in saved:
        passage = by_passage[draft["fuente"]["pasaje"]]
        assert draft["estado"] == "sin revisar" and draft["id"].startswith(passage.id + "-")
        assert draft["fuente"] == {"archivo": "quemaduras.pdf", "pagina": passage.page, "seccion": None,
                                   "pasaje": passage.id, "texto": passage.text}
        assert draft["profesor"] == {"modelo": "bueno", "url": url}
        assert draft["pregunta"].startswith("¿Pregunta") and "datos_personales" not in draft
    assert {d["fuente"]["pagina"] for d in saved} == {1, 2}
    assert not progress_path(output).exists()  # done: no progress file left
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    calls = [json.loads(line) for line in log_path(output).read_text(encoding="utf-8").splitlines()]
    assert len(calls) == len(passages)
    assert calls[0]["tokens_entrada"] == 100 and calls[0]["tokens_salida"] == 40 and calls[0]["peticiones"] == 1
    assert calls[0]["coste"] == 0 and calls[0]["resultado"] == "ok" and calls[0]["archivo"] == "quemaduras.pdf"
    assert "ornitorrinco" not in log_path(output).read_text(encoding="utf-8")
    assert summary["prompt_tokens"] == 100 * len(passages) and summary["cost"] == 0
    text = "\n".join(summary_lines(summary))
    assert "local: sin coste" in text and "afinar estudio → Datos → Borradores" in text


def test_fenced_json_in_a_dict_and_prices(url, docx_file, tmp_path):
    output = tmp_path / "b.jsonl"
    summary = make([docx_file], url, "vallas", output, per_passage=2, price_in=1.0, price_out=10.0)
    saved = read_drafts(output)
    assert len(saved) == 2 * 2  # 3 offered, 2 asked for
    assert {d["fuente"]["seccion"] for d in saved} == {"Atragantamiento", "Quemaduras"}
    assert summary["cost"] == pytest.approx(2 * (100 * 1.0 + 40 * 10.0) / 1e6)
    assert "según los precios indicados" in "\n".join(summary_lines(summary))


def test_prose_is_asked_once_more_then_skipped(url, server, tmp_path):
    doc = text_file(tmp_path, "notas.txt", FIRST_AID)
    summary = make([doc], url, "prosa", tmp_path / "b.jsonl")
    assert len(server.requests) == 2 and FIRMER in sent_texts(server)[1] and FIRMER not in sent_texts(server)[0]
    assert summary["new_drafts"] == 0 and len(summary["skipped_no_pairs"]) == 1
    skipped = summary["skipped_no_pairs"][0]
    assert skipped["archivo"] == "notas.txt" and "preguntas con su respuesta" in skipped["motivo"]
    assert "prueba con un modelo mayor" in "\n".join(summary_lines(summary))
    assert not (tmp_path / "b.jsonl").exists()  # nothing to write
    server.requests.clear()
    summary = make([doc], url, "prosa-luego-bien", tmp_path / "c.jsonl")
    assert len(server.requests) == 2 and summary["new_drafts"] == 1 and summary["prompt_tokens"] == 0
    server.requests.clear()
    summary = make([doc], url, "vacio", tmp_path / "d.jsonl")
    assert len(server.requests) == 1 and "no encontró preguntas" in summary["skipped_no_pairs"][0]["motivo"]


def test_a_500_is_retried_and_a_hang_times_out(url, server, tmp_path):
    doc = text_file(tmp_path, "notas.txt", FIRST_AID)
    summary = make([doc], url, "falla-una-vez", tmp_path / "b.jsonl", retries=2)
    assert len(server.requests) == 2 and summary["new_drafts"] == 2 and not summary["errors"]
    assert json.loads(log_path(tmp_path / "b.jsonl").read_text(encoding="utf-8"))["peticiones"] == 2
    started = time.monotonic()
    summary = make([doc], url, "lento", tmp_path / "c.jsonl", timeout=0.5)
    assert time.monotonic() - started < 5
    assert summary["errors"] == [{"archivo": "notas.txt", "pagina": None, "seccion": None,
                                  "motivo": "el profesor tardó más de 0.5 s"}]
    assert summary["progress_kept"] and progress_path(tmp_path / "c.jsonl").exists()  # asked again next time
    assert "se reintentan" in "\n".join(summary_lines(summary))


def test_remote_teachers_need_the_flag_and_bad_urls_are_refused(server, url, pdf, tmp_path):
    error = error_of(lambda: make([pdf], "http://example.com:8000/v1", "bueno", tmp_path / "b.jsonl"))
    assert error.code == "B009" and "--permitir-remoto" in error.hint and "saldrían de este equipo" in error.message
    assert error_of(lambda: make([pdf], "127.0.0.1:8000", "bueno", tmp_path / "b.jsonl")).code == "B010"
    assert server.requests == [] and not (tmp_path / "b.jsonl").exists()
    assert check_teacher_url("http://example.com", allow_remote=True) is True  # remote, allowed
    assert check_teacher_url("http://localhost:11434/v1", allow_remote=False) is False
    assert check_teacher_url(url, allow_remote=False) is False


def test_a_bad_document_stops_everything_before_any_call(url, server, pdf, tmp_path):
    fake = text_file(tmp_path, "falso.docx", "no es Word")
    assert error_of(lambda: make([pdf, fake], url, "bueno", tmp_path / "b.jsonl")).code == "B006"
    assert server.requests == [] and not (tmp_path / "b.jsonl").exists()
    assert not progress_path(tmp_path / "b.jsonl").exists() and not log_path(tmp_path / "b.jsonl").exists()
    assert error_of(lambda: make([pdf], url, "bueno", tmp_path / "b.jsonl", per_passage=0)).code == "B012"


PII_TEXT = ("Llamar a la paciente María López al 612 345 678 antes de la cura de la quemadura. La cura se hace cada "
            "dos días con apósito de plata y se revisa el borde de la herida por si aparecen signos de infección.")


def test_personal_data_is_never_sent_to_a_remote_teacher(url, server, tmp_path, monkeypatch):
    doc = text_file(tmp_path, "curas.txt", f"{LONG}\n\n{PII_TEXT} {CHOKING} {FIRST_AID_2}\n")
    assert len(read_passages(doc)) == 2
    # On this machine: sent, and its drafts are flagged for the reviewer.
    summary = make([doc], url, "bueno", tmp_path / "local.jsonl")
    assert len(server.requests) == 2 and not summary["skipped_pii"]
    flagged = [d for d in read_drafts(tmp_path / "local.jsonl") if "datos_personales" in d]
    assert len(flagged) == 2 and flagged[0]["datos_personales"] == ["nombre", "telefono"]
    assert summary["flagged_pii"] == 1 and "marca «datos_personales»" in "\n".join(summary_lines(summary))
    assert "612 345 678" in flagged[0]["fuente"]["texto"]  # the reviewer sees the passage, on this disk
    # "Remote": the fake server is on 127.0.0.1, so the loopback check is made to say no (what a remote host gives).
    server.requests.clear()
    monkeypatch.setattr(run_module, "is_loopback", lambda host: False)
    summary = make([doc], url, "bueno", tmp_path / "remoto.jsonl", allow_remote=True)
    assert len(server.requests) == 1 and not any("612" in t or "López" in t for t in sent_texts(server))
    assert summary["skipped_pii"] == [{"archivo": "curas.txt", "pagina": None, "seccion": None,
                                       "tipos": ["nombre", "telefono"]}]
    assert not [d for d in read_drafts(tmp_path / "remoto.jsonl") if "datos_personales" in d]
    text = "\n".join(summary_lines(summary))
    assert "datos personales" in text and "teléfono" in text and "612" not in text and "López" not in text
    assert "sin calcular" in text  # remote with no prices: not «sin coste»


def many_passages(tmp_path, n=6) -> Path:
    paragraphs = [f"Sesión {i}: {LONG}" for i in range(n)]
    return text_file(tmp_path, "curso.txt", "\n\n".join(paragraphs))


def test_a_server_that_goes_down_then_a_rerun_continues(url, server, tmp_path):
    doc = many_passages(tmp_path)
    output = tmp_path / "b.jsonl"
    total = len(read_passages(doc))
    assert total == 6
    server.fail_after = 2
    error = error_of(lambda: make([doc], url, "bueno", output))
    assert error.code == "B016" and "misma orden" in error.hint
    assert len(server.requests) == 5  # 2 good, then 3 failures in a row and it stops
    assert not output.exists()  # no half-written drafts file
    lines = progress_path(output).read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {"cabecera": {"modelo": "bueno", "por_pasaje": 3}} and len(lines) == 3
    server.requests.clear()
    server.fail_after = None
    summary = make([doc], url, "bueno", output)
    assert len(server.requests) == total - 2 and summary["already_done"] == 2
    assert len(read_drafts(output)) == 2 * total and not progress_path(output).exists()
    assert len({d["id"] for d in read_drafts(output)}) == 2 * total


def test_ctrl_c_keeps_what_was_done(url, server, tmp_path, monkeypatch):
    from afinar.drafts.teacher import Teacher

    doc = many_passages(tmp_path)
    output = tmp_path / "b.jsonl"
    real_ask, calls = Teacher.ask, []

    def ask(self, *args, **kw):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_ask(self, *args, **kw)

    monkeypatch.setattr(Teacher, "ask", ask)
    with pytest.raises(KeyboardInterrupt):
        make([doc], url, "bueno", output)
    assert not output.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(progress_path(output).read_text(encoding="utf-8").splitlines()) == 1 + 3
    monkeypatch.setattr(Teacher, "ask", real_ask)
    server.requests.clear()
    make([doc], url, "bueno", output)
    assert len(server.requests) == 3 and len(read_drafts(output)) == 12
    # the same progress with another model is refused, not mixed
    progress_path(output).write_text(json.dumps({"cabecera": {"modelo": "otro", "por_pasaje": 3}}) + "\n")
    error = error_of(lambda: make([doc, text_file(tmp_path, "mas.txt", CHOKING)], url, "bueno", output))
    assert error.code == "B017" and "borra" in error.hint


def test_a_rerun_never_loses_reviews(url, server, tmp_path):
    doc = text_file(tmp_path, "notas.txt", FIRST_AID)
    output = tmp_path / "b.jsonl"
    make([doc], url, "bueno", output)
    first, second = read_drafts(output)
    review(output, first["id"], "aceptar")
    review(output, second["id"], "corregir", respuesta="Corregida por la enfermera.")
    server.requests.clear()
    again = make([doc], url, "bueno", output)
    assert server.requests == [] and again["new_drafts"] == 0 and again["kept_reviewed"] == 2
    more = text_file(tmp_path, "mas.txt", CHOKING)
    summary = make([doc, more], url, "bueno", output)
    assert len(server.requests) == 1 and summary["new_drafts"] == 2 and summary["kept_drafts"] == 2
    saved = read_drafts(output)
    assert [d["estado"] for d in saved] == ["aceptado", "corregido", "sin revisar", "sin revisar"]
    assert saved[1]["respuesta"] == "Corregida por la enfermera."
    assert "se conservan los 2 que ya había, 2 de ellos revisados" in "\n".join(summary_lines(summary))
    output.write_text("{roto\n", encoding="utf-8")  # a broken drafts file is not overwritten
    assert error_of(lambda: make([doc], url, "bueno", output)).code == "B013"
    assert output.read_text(encoding="utf-8") == "{roto\n"


# --- review -------------------------------------------------------------------------------------------------------

@pytest.fixture
def drafts_file(url, tmp_path):
    output = tmp_path / "b.jsonl"
    make([text_file(tmp_path, "notas.txt", f"{LONG}\n\nRepaso. {LONG}")], url, "bueno", output,
         max_passages=1)
    make([tmp_path / "notas.txt"], url, "bueno", output)  # the rest, appended
    return output


def test_review_accept_correct_discard_undo(drafts_file, tmp_path):
    a, b, c, d = read_drafts(drafts_file)
    assert counts(drafts_file) == {"sin revisar": 4, "aceptado": 0, "corregido": 0, "descartado": 0, "total": 4}
    assert review(drafts_file, a["id"], "aceptar")["estado"] == "aceptado"
    corrected = review(drafts_file, b["id"], "corregir", pregunta="¿Cuánto tiempo enfrío una quemadura?",
                       respuesta="Veinte minutos con agua corriente.")
    assert corrected["estado"] == "corregido"
    assert corrected["original"] == {"pregunta": b["pregunta"], "respuesta": b["respuesta"]}
    again = review(drafts_file, b["id"], "corregir", respuesta="Veinte minutos.")  # a second edit keeps the first original
    assert again["original"]["respuesta"] == b["respuesta"] and again["pregunta"].startswith("¿Cuánto tiempo")
    assert review(drafts_file, b["id"], "aceptar")["estado"] == "corregido"  # accepting an edited one
    assert review(drafts_file, c["id"], "descartar")["estado"] == "descartado"
    back = review(drafts_file, d["id"], "corregir", respuesta=d["respuesta"] + " Más.")
    assert back["estado"] == "corregido"
    assert review(drafts_file, d["id"], "corregir", respuesta=d["respuesta"])["estado"] == "aceptado"
    assert "original" not in read_drafts(drafts_file)[3]
    assert counts(drafts_file) == {"sin revisar": 0, "aceptado": 2, "corregido": 1, "descartado": 1, "total": 4}
    assert reviewed_examples(drafts_file) == [
        {"pregunta": a["pregunta"], "respuesta": a["respuesta"]},
        {"pregunta": "¿Cuánto tiempo enfrío una quemadura?", "respuesta": "Veinte minutos."},
        {"pregunta": d["pregunta"], "respuesta": d["respuesta"]},
    ]
    undone = review(drafts_file, b["id"], "deshacer")
    assert undone["estado"] == "sin revisar" and "original" not in undone
    assert (undone["pregunta"], undone["respuesta"]) == (b["pregunta"], b["respuesta"])
    saved = read_drafts(drafts_file)
    assert [x["fuente"] for x in saved] == [x["fuente"] for x in (a, b, c, d)]  # nothing else changed

    assert error_of(lambda: review(drafts_file, "no-existe", "aceptar")).code == "B014"
    assert error_of(lambda: review(drafts_file, a["id"], "corregir", respuesta="  ")).code == "B015"
    assert error_of(lambda: review(drafts_file, a["id"], "corregir")).code == "B015"
    assert error_of(lambda: review(drafts_file, a["id"], "aprobar")).code == "B015"
    assert error_of(lambda: review(tmp_path / "no.jsonl", a["id"], "aceptar")).code == "B013"


def test_review_is_atomic(drafts_file, monkeypatch):
    from afinar.drafts import store

    before = drafts_file.read_bytes()
    first = read_drafts(drafts_file)[0]
    real_dumps, calls = json.dumps, []

    def failing(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disco lleno")
        return real_dumps(*args, **kw)

    monkeypatch.setattr(store.json, "dumps", failing)
    with pytest.raises(OSError):
        review(drafts_file, first["id"], "aceptar")
    monkeypatch.setattr(store.json, "dumps", real_dumps)
    assert drafts_file.read_bytes() == before  # the old file, whole
    assert not [p for p in drafts_file.parent.iterdir() if p.name.endswith(".tmp")]


def test_write_reviewed_is_training_data(drafts_file, tmp_path):
    from afinar.data.formats import load_examples

    assert write_reviewed(drafts_file, tmp_path / "datos.jsonl") == 0 and not (tmp_path / "datos.jsonl").exists()
    first, second = read_drafts(drafts_file)[:2]
    review(drafts_file, first["id"], "aceptar")
    review(drafts_file, second["id"], "descartar")
    assert write_reviewed(drafts_file, tmp_path / "datos.jsonl") == 1
    lines = [json.loads(x) for x in (tmp_path / "datos.jsonl").read_text(encoding="utf-8").splitlines()]
    assert lines == [{"pregunta": first["pregunta"], "respuesta": first["respuesta"]}]
    problems = []
    examples = load_examples(tmp_path / "datos.jsonl", problems=problems)  # what training reads
    assert len(examples) == 1 and not [p for p in problems if p.severity == "error"]
    assert error_of(lambda: write_reviewed(drafts_file, drafts_file)).code == "B012"


# --- privacy and the command line ---------------------------------------------------------------------------------

def test_no_passage_text_in_the_terminal_or_logs(url, server, pdf, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    output = tmp_path / "b.jsonl"
    assert main(["borradores", str(pdf), "--profesor", url, "--modelo", "bueno", "--salida", str(output),
                 "--reintentos", "0"]) == 0
    make([pdf], url, "lento", tmp_path / "c.jsonl", timeout=0.3, progress=True)  # failures, with the bar
    make([pdf], url, "prosa", tmp_path / "d.jsonl", progress=True)
    scanned = write_image_pdf(tmp_path / "escaneado.pdf")
    assert main(["borradores", str(pdf), str(scanned), "--profesor", url, "--modelo", "bueno"]) == 2
    out = capsys.readouterr()
    everything = out.out + out.err + caplog.text
    assert "Borradores: preguntando al profesor" in out.err and "Documentos: 1 (quemaduras.pdf)" in out.out
    assert "B005" in out.err and "escaneado.pdf" in out.err
    for secret in ("ornitorrinco", "estupefacientes", "omóplatos", "quemadura térmica", "Protocolo de primeros",
                   "Pregunta 1 del pasaje"):
        assert secret not in everything
        assert secret not in log_path(output).read_text(encoding="utf-8")
    assert "ornitorrinco" in output.read_text(encoding="utf-8")  # only the drafts file keeps it, for the reviewer


def test_cli(url, pdf, tmp_path, capsys):
    output = tmp_path / "b.jsonl"
    assert main(["borradores", str(pdf), "--profesor", url, "--modelo", "bueno", "--salida", str(output),
                 "--por-pasaje", "1", "--max-pasajes", "2", "--sin-progreso"]) == 0
    saved = read_drafts(output)
    assert len(saved) == 2  # 2 passages, 1 question each (the fake offers 2)
    out = capsys.readouterr().out
    assert "Pasajes: 2" in out and "Borradores nuevos: 2" in out and "Siguiente paso" in out
    assert main(["borradores", "--exportar-revisados", str(output), "--salida", str(tmp_path / "d.jsonl")]) == 1
    assert "No hay borradores revisados" in capsys.readouterr().out
    review(output, saved[0]["id"], "aceptar")
    assert main(["borradores", "--exportar-revisados", str(output), "--salida", str(tmp_path / "d.jsonl")]) == 0
    assert "1 ejemplos revisados" in capsys.readouterr().out
    assert main(["borradores", str(pdf), "--modelo", "bueno"]) == 2
    assert "B012" in capsys.readouterr().err
    assert main(["borradores", str(pdf), "--profesor", "http://example.com", "--modelo", "x"]) == 2
    assert "B009" in capsys.readouterr().err


def test_passage_id_depends_on_the_place_and_text():
    a = Passage("a.pdf", 1, None, 0, "texto")
    assert a.id == Passage("/otra/carpeta/a.pdf", 1, None, 0, "texto").id  # the name, not the folder
    assert len({a.id, Passage("a.pdf", 2, None, 0, "texto").id, Passage("a.pdf", 1, None, 1, "texto").id,
                Passage("a.pdf", 1, None, 0, "texto!").id, Passage("b.pdf", 1, None, 0, "texto").id}) == 5


def test_a_folder_of_documents_and_the_api_key(url, server, tmp_path, monkeypatch, docx_file):
    folder = tmp_path / "docs"
    folder.mkdir()
    text_file(folder, "a.txt", LONG)
    text_file(folder, "b.md", f"# Tema\n\n{CHOKING}")
    text_file(folder, "~$bloqueo.docx", "archivo de bloqueo de Word")  # skipped, like .ocultos and other types
    text_file(folder, "notas.odt", "x")
    monkeypatch.setenv("AFINAR_PROFESOR_API_KEY", "clave-del-profesor")
    summary = make([folder, docx_file], url, "bueno", tmp_path / "b.jsonl")
    assert summary["documents"] == ["a.txt", "b.md", "apuntes.docx"] and summary["passages"] == 4
    assert {r["auth"] for r in server.requests} == {"Bearer clave-del-profesor"}
    empty = tmp_path / "vacia"
    empty.mkdir()
    assert error_of(lambda: make([empty], url, "bueno", tmp_path / "c.jsonl")).code == "B001"


def test_without_the_openai_package(url, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openai", None)  # import fails as if not installed
    doc = text_file(tmp_path, "notas.txt", LONG)
    error = error_of(lambda: make([doc], url, "bueno", tmp_path / "b.jsonl"))
    assert error.code == "B011" and "pip install openai" in error.hint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notas.txt"]  # nothing written


def test_drafts_files_are_neither_the_progress_nor_the_log(tmp_path):
    """The studio lists a folder's drafts files: a run's hidden progress file and its call log are not drafts."""
    output = tmp_path / "protocolo.jsonl"
    write_drafts_file = output.write_text('{"id": "a-1", "estado": "sin revisar", "pregunta": "p", "respuesta": "r"}\n',
                                          encoding="utf-8")
    assert write_drafts_file
    progress_path(output).write_text("{}\n", encoding="utf-8")
    log_path(output).write_text("{}\n", encoding="utf-8")
    assert drafts_files(tmp_path) == [output]
