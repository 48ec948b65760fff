"""Read a person's documents (PDF, DOCX, TXT, Markdown) into passages: whole paragraphs grouped up to ~max_words.

A passage never crosses a PDF page (its page is where the reviewer looks) nor a heading of a DOCX or Markdown file
(its section). A paragraph longer than max_words is cut at sentence ends; fragments shorter than MIN_WORDS (running
heads, page numbers, a lone title) join the passage before them on the same page or section, or are dropped when
they are alone and shorter than MIN_ALONE_WORDS.

Errors name the file (and page), never the text: documents can hold patient or pupil data.
"""
from __future__ import annotations

import hashlib
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from afinar.errors import AfinarError

DOCUMENT_SUFFIXES = (".pdf", ".docx", ".txt", ".md")
MAX_WORDS = 220
MIN_WORDS = 25  # a fragment shorter than this is merged into its neighbour
MIN_ALONE_WORDS = 8  # ...or, alone on its page or section, dropped below this (page numbers, running heads)

_OCR_HINT = ("pásalo por un OCR (por ejemplo «ocrmypdf entrada.pdf salida.pdf», o «Guardar como texto» en un "
             "programa con reconocimiento de texto) y vuelve a intentarlo con el PDF resultante")


@dataclass
class Passage:
    """A piece of a document sent to the teacher. `file`: the document's name; `page`: 1-based (PDF only);
    `section`: the heading above it (DOCX, Markdown); `index`: its order in the document, from 0."""

    file: str
    page: int | None
    section: str | None
    index: int
    text: str

    @property
    def id(self) -> str:
        """Stable across runs: the same document gives the same ids (a hash of name, page, order and text)."""
        key = f"{Path(self.file).name}\x00{self.page}\x00{self.index}\x00{self.text}"
        return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]

    @property
    def words(self) -> int:
        return len(self.text.split())

    def place(self) -> str:
        """Where it is, for messages: «protocolo.pdf, página 3» (no text)."""
        return self.file + (f", página {self.page}" if self.page is not None else "") + (
            f", sección «{self.section}»" if self.section else "")


@dataclass
class Document:
    file: str
    passages: list[Passage]
    pages: int | None = None  # PDF only
    pages_without_text: list[int] = field(default_factory=list)  # PDF pages with no text (images, blank)


# --- splitting ----------------------------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?…:;])\s+(?=[¿¡\"«(\[]?[A-ZÁÉÍÓÚÑÜ0-9•\-–])")


def _sentences(paragraph: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(paragraph) if s.strip()]


def _split_long(paragraph: str, max_words: int) -> list[str]:
    """A paragraph longer than max_words cut into pieces at sentence ends (a single longer sentence: at words)."""
    pieces: list[str] = []
    current: list[str] = []
    count = 0
    for sentence in _sentences(paragraph):
        words = sentence.split()
        while len(words) > max_words:  # one sentence longer than a passage
            if current:
                pieces.append(" ".join(current))
                current, count = [], 0
            pieces.append(" ".join(words[:max_words]))
            words = words[max_words:]
        if count + len(words) > max_words and current:
            pieces.append(" ".join(current))
            current, count = [], 0
        if words:
            current.append(" ".join(words))
            count += len(words)
    if current:
        pieces.append(" ".join(current))
    return pieces


def group_paragraphs(paragraphs: list[str], max_words: int = MAX_WORDS, find_headings: bool = False) -> list[str]:
    """Whole paragraphs joined up to ~max_words; long ones split at sentence ends; tiny fragments merged or dropped.
    `find_headings` (a PDF, whose sections nobody marked): a short line followed by a paragraph starts a passage."""
    units: list[str] = []
    for paragraph in paragraphs:
        paragraph = " ".join(paragraph.split())
        if not paragraph or (not re.search(r"[^\W\d_]", paragraph) and len(paragraph.split()) < MIN_ALONE_WORDS):
            continue  # no letter at all: a page number, "- 3 -", a rule of dashes
        units.extend(_split_long(paragraph, max_words) if len(paragraph.split()) > max_words else [paragraph])
    # A heading («5. Hemorragias») goes with the paragraph after it, and starts a passage when the one being filled
    # already says enough: otherwise it would dangle at the end of the previous section's passage.
    headed: list[tuple[str, bool]] = []  # (unit, starts a section)
    waiting = False  # the last unit is a heading still without its paragraph
    for unit in units:
        heading = find_headings and _looks_like_heading(unit)
        if waiting and not heading:
            headed[-1] = (headed[-1][0] + "\n\n" + unit, True)
        else:
            headed.append((unit, False))
        waiting = heading
    chunks: list[list[str]] = []
    count = 0
    for unit, starts_section in headed:
        n = len(unit.split())
        if chunks and count + n <= max_words and not (starts_section and count >= MIN_WORDS):
            chunks[-1].append(unit)
            count += n
        else:
            chunks.append([unit])
            count = n
    texts = ["\n\n".join(chunk) for chunk in chunks]
    out: list[str] = []
    for i, text in enumerate(texts):
        n = len(text.split())
        if n >= MIN_WORDS:
            out.append(text)
        elif out and len(out[-1].split()) + n <= max_words * 1.5:
            out[-1] += "\n\n" + text  # a short tail joins the passage before it
        elif i + 1 < len(texts) and len(texts[i + 1].split()) + n <= max_words * 1.5:
            texts[i + 1] = text + "\n\n" + texts[i + 1]  # a short head joins the passage after it
        elif n >= MIN_ALONE_WORDS:
            out.append(text)
        # else: a page number, a running head alone: dropped
    return out


def _looks_like_heading(paragraph: str) -> bool:
    """A short line that ends no sentence: a title or a numbered section name."""
    return len(paragraph.split()) <= 12 and not re.search(r"[.:;,?!»)\]]$", paragraph)


# --- readers ------------------------------------------------------------------------------------------------------

def _missing(package: str, pip_name: str) -> AfinarError:
    return AfinarError("B011", f"leer este documento necesita el paquete {package}, que no está instalado.",
                       hint=f"en la carpeta de afinar: .venv/bin/pip install {pip_name}")


def _pdf_paragraphs(text: str) -> list[str]:
    """A PDF page's text (lines as laid out) into paragraphs. PDFs rarely keep blank lines, so a line clearly
    shorter than the page's full lines also ends a paragraph (the last line of a paragraph, a heading); words
    hyphenated at the end of a line are joined again."""
    text = re.sub(r"(\w)-\n(?=[a-záéíóúñü])", r"\1", text.replace("\r\n", "\n").replace("\r", "\n"))
    lines = [" ".join(line.split()) for line in text.split("\n")]
    lengths = sorted(len(line) for line in lines if line)
    full = lengths[int(len(lengths) * 0.9)] if lengths else 0
    paragraphs: list[str] = []
    current: list[str] = []
    for line in lines:
        # A heading right under a paragraph whose last line happens to fill the width: the sentence ended, and a
        # short line that ends none starts something new.
        if current and line and current[-1].endswith((".", "?", "!")) and _looks_like_heading(line) \
                and len(line) < 0.6 * full:
            paragraphs.append(" ".join(current))
            current = []
        if line:
            current.append(line)
        if current and (not line or len(line) < 0.75 * full):
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return paragraphs


def _without_digits(line: str) -> str:
    return " ".join(re.sub(r"\d+", "#", line).split())


def _running_lines(pages: list[str]) -> set[str]:
    """Running heads and footers («Protocolo … - página 3»): a first or last line of a page that, its numbers aside,
    comes back on other pages. Not content: a passage would open with it, and the teacher would ask about it."""
    seen: dict[str, int] = {}
    for text in pages:
        lines = [line for line in text.split("\n") if line.strip()]
        for line in {_without_digits(line) for line in lines[:1] + lines[-1:]}:
            seen[line] = seen.get(line, 0) + 1
    return {line for line, count in seen.items() if count >= 2} if len(pages) >= 2 else set()


def _read_pdf(path: Path, max_words: int) -> Document:
    try:
        import pypdf
        from pypdf.errors import DependencyError
    except ImportError:
        raise _missing("pypdf", "pypdf") from None
    import logging

    name = path.name
    pypdf_log = logging.getLogger("pypdf")
    level = pypdf_log.level
    pypdf_log.setLevel(logging.ERROR)  # pypdf's warnings about odd PDFs are noise here (and may quote content)
    try:
        try:
            reader = pypdf.PdfReader(str(path))
            if reader.is_encrypted:
                # Chosen: a PDF encrypted with an EMPTY user password (only printing/copying restricted by its owner)
                # opens in any viewer without asking: it is read. One that asks for a password is refused (B003).
                try:
                    opened = reader.decrypt("")
                except DependencyError:  # AES needs the cryptography package
                    raise AfinarError("B011", "el PDF está cifrado (AES) y descifrarlo necesita el paquete "
                                              "cryptography, que no está instalado.", where=name,
                                      hint="en la carpeta de afinar: .venv/bin/pip install cryptography; o guarda "
                                           "una copia del PDF sin protección") from None
                except NotImplementedError:
                    opened = 0
                if not opened:
                    raise AfinarError("B003", "el PDF está protegido con contraseña: no se puede leer su texto.",
                                      where=name, hint="ábrelo con su contraseña y guárdalo (o imprímelo a PDF) sin "
                                                       "protección, y usa esa copia")
            pages = list(reader.pages)
        except AfinarError:
            raise
        except Exception as exc:
            raise AfinarError("B004", f"no se pudo abrir el PDF ({type(exc).__name__}): está dañado o no es un PDF.",
                              where=name, hint="ábrelo en un visor de PDF y, si se ve bien, guárdalo otra vez "
                                               "(Imprimir → Guardar como PDF)") from None
        if not pages:
            raise AfinarError("B007", "el PDF no tiene páginas.", where=name)
        passages: list[Passage] = []
        without_text: list[int] = []
        texts = []
        for number, page in enumerate(pages, start=1):
            try:
                texts.append(page.extract_text() or "")
            except Exception as exc:
                raise AfinarError("B004", f"no se pudo leer el texto de la página {number} ({type(exc).__name__}).",
                                  where=name) from None
        running = _running_lines(texts)
        for number, text in enumerate(texts, start=1):
            text = "\n".join(line for line in text.split("\n") if _without_digits(line) not in running)
            if len(text.split()) == 0:
                without_text.append(number)
                continue
            for chunk in group_paragraphs(_pdf_paragraphs(text), max_words, find_headings=True):
                first = chunk.split("\n\n", 1)[0]  # a passage that opens with a heading is that section
                section = first if "\n\n" in chunk and _looks_like_heading(first) else None
                passages.append(Passage(name, number, section, len(passages), chunk))
    finally:
        pypdf_log.setLevel(level)
    if len(without_text) == len(pages):
        raise AfinarError("B005", f"parece escaneado: no tiene texto en ninguna de sus {len(pages)} páginas; "
                                  "pásalo por un OCR.", where=name, hint=_OCR_HINT)
    if not passages:
        raise AfinarError("B007", "el PDF tiene demasiado poco texto para escribir preguntas.", where=name)
    return Document(name, passages, pages=len(pages), pages_without_text=without_text)


def _is_heading(paragraph) -> int | None:
    """The heading level of a DOCX paragraph (Title → 0, Heading N / Título N → N), else None."""
    try:
        style = (paragraph.style.name or "") if paragraph.style is not None else ""
    except (KeyError, ValueError, AttributeError):
        return None
    lower = style.lower()
    if lower in ("title", "título", "titulo"):
        return 0
    match = re.match(r"(heading|título|titulo|encabezado)\s*(\d)", lower)
    return int(match.group(2)) if match else None


def _read_docx(path: Path, max_words: int) -> Document:
    name = path.name
    try:
        with zipfile.ZipFile(path) as archive:
            has_body = "word/document.xml" in archive.namelist()
    except (zipfile.BadZipFile, OSError):
        has_body = False
    if not has_body:
        raise AfinarError("B006", "no es un documento de Word .docx (quizá un .doc antiguo o un archivo renombrado).",
                          where=name, hint="ábrelo en Word o LibreOffice y guárdalo como .docx, o expórtalo a PDF")
    try:
        import docx
        from docx.table import Table
        from docx.text.paragraph import Paragraph
    except ImportError:
        raise _missing("python-docx", "python-docx") from None
    try:
        document = docx.Document(str(path))
        blocks = list(document.iter_inner_content())
    except Exception as exc:
        raise AfinarError("B006", f"el .docx está dañado ({type(exc).__name__}).", where=name,
                          hint="ábrelo en Word o LibreOffice y guárdalo otra vez como .docx") from None
    sections: list[tuple[str | None, list[str]]] = [(None, [])]
    for block in blocks:
        if isinstance(block, Paragraph):
            text = " ".join(block.text.split())
            if not text:
                continue
            if _is_heading(block) is not None:
                sections.append((text, []))
            else:
                sections[-1][1].append(text)
        elif isinstance(block, Table):
            for row in block.rows:
                cells: list[str] = []
                for cell in row.cells:
                    text = " ".join(cell.text.split())
                    if text and (not cells or cells[-1] != text):  # merged cells repeat their text
                        cells.append(text)
                if cells:
                    sections[-1][1].append(" | ".join(cells))
    return _document_from_sections(name, sections, max_words)


def _document_from_sections(name: str, sections: list[tuple[str | None, list[str]]], max_words: int) -> Document:
    passages: list[Passage] = []
    for section, paragraphs in sections:
        for chunk in group_paragraphs(paragraphs, max_words):
            passages.append(Passage(name, None, section, len(passages), chunk))
    if not passages:
        raise AfinarError("B007", "el documento está vacío o tiene demasiado poco texto para escribir preguntas.",
                          where=name)
    return Document(name, passages)


_MD_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_MD_SETEXT = re.compile(r"^\s{0,3}(=+|-+)\s*$")


def _read_text(path: Path, max_words: int, markdown: bool) -> Document:
    name = path.name
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise AfinarError("B008", "el archivo no está en UTF-8.", where=name,
                          hint="ábrelo en un editor y guárdalo con la codificación UTF-8") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    sections: list[tuple[str | None, list[str]]] = [(None, [])]
    paragraph: list[str] = []

    def close() -> None:
        if paragraph:
            sections[-1][1].append(" ".join(" ".join(paragraph).split()))
            paragraph.clear()

    in_fence = False
    for line in text.split("\n"):
        if markdown and line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
            close()
            continue
        if markdown and not in_fence:
            heading = _MD_HEADING.match(line)
            if heading:
                close()
                sections.append((heading.group(2).strip() or None, []))
                continue
            if _MD_SETEXT.match(line) and len(paragraph) == 1:  # "Título\n=====" headings
                title = paragraph.pop()
                sections.append((title.strip(), []))
                continue
            line = re.sub(r"^\s{0,3}(?:[*+-]|\d+[.)])\s+", "• ", line)  # list items keep a bullet
            line = re.sub(r"[*_`]{1,3}([^*_`]+)[*_`]{1,3}", r"\1", line)  # **bold**, _italics_, `code`
            line = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", line)  # [text](url) → text
        if not line.strip():
            close()
        elif line.lstrip().startswith("• ") and paragraph:
            paragraph.append("\n" + line.strip())
        else:
            paragraph.append(line.strip())
    close()
    return _document_from_sections(name, sections, max_words)


def read_document(path: str | Path, max_words: int = MAX_WORDS) -> Document:
    """A document's passages, and for a PDF its pages and the pages without text. Raises AfinarError (B001–B008)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise AfinarError("B001", "no existe ese documento" + (" (es una carpeta)" if path.is_dir() else "") + ".",
                          where=str(path))
    if suffix not in DOCUMENT_SUFFIXES:
        hint = {".doc": "guárdalo como .docx o PDF desde Word o LibreOffice",
                ".odt": "guárdalo como .docx o PDF desde LibreOffice",
                ".rtf": "guárdalo como .docx, PDF o .txt"}.get(suffix, "conviértelo a PDF, .docx, .txt o .md")
        raise AfinarError("B002", f"no se leen archivos «{suffix or 'sin extensión'}»: solo "
                                  f"{', '.join(DOCUMENT_SUFFIXES)}.", where=path.name, hint=hint)
    if path.stat().st_size == 0:
        raise AfinarError("B007", "el documento está vacío (0 bytes).", where=path.name)
    if suffix == ".pdf":
        return _read_pdf(path, max_words)
    if suffix == ".docx":
        return _read_docx(path, max_words)
    return _read_text(path, max_words, markdown=suffix == ".md")


def read_passages(path: str | Path, max_words: int = MAX_WORDS) -> list[Passage]:
    """The passages of one document (see read_document)."""
    return read_document(path, max_words).passages


def expand(paths: list[str | Path]) -> list[Path]:
    """The documents named, with a folder standing for the documents directly inside it (sorted)."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in DOCUMENT_SUFFIXES
                           and not p.name.startswith((".", "~$")))
            if not found:
                raise AfinarError("B001", f"la carpeta no tiene documentos ({', '.join(DOCUMENT_SUFFIXES)}).",
                                  where=str(path))
            out.extend(found)
        else:
            out.append(path)
    return out
