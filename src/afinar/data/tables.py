"""Spreadsheets and tables as training data (.csv, .tsv, .xlsx, .ods, .parquet, a .json array) and `afinar convertir`.

Reading: `read_table` opens the file with a well-kept reader (pandas; openpyxl for .xlsx, odfpy for .ods, pyarrow for
.parquet; `csv.Sniffer` only guesses the delimiter), every cell as text ("3,5" stays "3,5", "NA" stays "NA"), skips a
title row above the header and keeps the row numbers a spreadsheet app shows → `Table`. `table_examples` maps columns
to fields (`detect_columns`, or the recipe's `columnas`), builds one record per row ({"pregunta", "respuesta",
"contexto", …}, or {"messages"} when there is a system column) and parses it with `records.parse_record`: the code a
JSONL line goes through, so a JSONL and its table give identical messages.
Writing: `convert` reads any data file and writes JSONL or a table (`write_table`), always whole (temp file + rename,
`afinar.atomic`): a problem in the input, a multi-turn conversation or a character the encoding cannot hold is
reported before anything is written.

Problems name file, sheet, row and column (with its letter), never a cell's text: it may be patient data. Header names
and sheet names are shown: the fix needs them.
"""
from __future__ import annotations

import argparse
import codecs
import csv
import datetime
import difflib
import io
import json
import re
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from afinar.atomic import atomic_open
from afinar.data.records import (
    TABLE_SUFFIXES,
    Example,
    Problem,
    detect_format,
    drafts_warning,
    is_skipped_draft,
    jsonl_records,
    numbered_records,
    parse_record,
)
from afinar.errors import AfinarError

__all__ = [
    "FIELDS",
    "TABLE_SUFFIXES",
    "Table",
    "convert",
    "detect_columns",
    "example_row",
    "is_table",
    "jsonl_lines",
    "parse_columnas",
    "read_table",
    "table_examples",
    "write_table",
]

FIELDS = ("pregunta", "respuesta", "sistema", "contexto", "claves", "peligros")
WRITABLE = (".csv", ".tsv", ".xlsx", ".ods", ".parquet")

# Header names (normalized: lowercase, no accents or punctuation) that mean each field, Spanish and English.
SYNONYMS = {
    "pregunta": ("pregunta", "preguntas", "consulta", "consultas", "instruccion", "instruction", "question", "prompt"),
    "respuesta": ("respuesta", "respuestas", "output", "answer", "response", "completion", "salida"),
    "contexto": ("contexto", "context", "input", "entrada", "caso", "datos del caso"),
    "sistema": ("sistema", "system", "system prompt", "instrucciones del sistema", "mensaje del sistema",
                "mensaje de sistema"),
    "claves": ("claves", "puntos clave", "key points", "keypoints"),
    "peligros": ("peligros", "dangers"),
}
STATE = "estado"  # the review state of drafts exported from `afinar borradores` (records.DRAFT_USED/DRAFT_SKIPPED)
HEADER_SCAN = 10  # the header is looked for in the first rows: a title and a blank line often sit above it
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # an encrypted .xlsx (or an old .xls) is an OLE file, not a zip


@dataclass
class Table:
    path: Path
    sheet: str | None  # the sheet read (None: a file without sheets)
    sheets: list[str]
    header_row: int  # as the spreadsheet app shows it (0: no header row, e.g. a .json array)
    columns: list[str]  # header names as written
    rows: list[tuple[int, dict[str, str]]]  # (row number as the spreadsheet app shows it, {column: cell text})
    letters: dict[str, str] = field(default_factory=dict)  # column → its letter (A, B, …) where the file has them

    def column(self, name: str) -> str:
        """«Respuesta» (C): how a problem names a column."""
        letter = self.letters.get(name)
        return f"«{name}»" + (f" ({letter})" if letter else "")


class TableError(AfinarError):
    """A whole-file problem (unreadable file, unknown sheet, no header, columns not found): raised by `read_table` and
    `detect_columns`, collected as a `Problem` (with file, sheet and row) by `table_examples`."""

    def __init__(self, path, code: str, message: str, sheet: str | None = None, row: int | None = None,
                 hint: str | None = None):
        self.problem = Problem(str(path), row, code, message + (f" — sugerencia: {hint}" if hint else ""),
                               "error", sheet)
        super().__init__(code, message, where=self.problem.place(), hint=hint)


def is_table(path) -> bool:
    return Path(path).suffix.lower() in TABLE_SUFFIXES


def normalize(name) -> str:
    """«Pregunta:», «PREGUNTA», «pregunta » and «Pregúnta» are the same header."""
    text = unicodedata.normalize("NFKD", str(name).lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return re.sub(r"[\W_]+", " ", text).strip()


KNOWN = {syn for names in SYNONYMS.values() for syn in names} | {STATE}


def _letter(index: int) -> str:
    """0 → A, 25 → Z, 26 → AA: the column letters of a spreadsheet."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def _cell_text(value) -> str:
    """A cell as the text a person sees: 3.0 → "3" (Excel stores every number as a float), a date as 07/12/2026."""
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "VERDADERO" if value else "FALSO"
    if isinstance(value, float):
        if value != value:
            return ""
        return str(int(value)) if value.is_integer() else repr(float(value))
    if isinstance(value, datetime.datetime):
        return value.strftime("%d/%m/%Y" if value.time() == datetime.time() else "%d/%m/%Y %H:%M")
    if isinstance(value, datetime.date):
        return value.strftime("%d/%m/%Y")
    if hasattr(value, "tolist"):  # a list column of a parquet file comes back as a numpy array
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return "; ".join(" | ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v) for v in value)
    return str(value)


# --- reading --------------------------------------------------------------------------------------------------------


def _decode(data: bytes) -> str:
    """Strict UTF-8 (with or without the BOM Excel writes) first; then cp1252 (what Excel's «CSV» saves on Windows);
    latin-1 last, which decodes any byte."""
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def _sniff(text: str) -> str:
    """The delimiter `csv.Sniffer` sees; when it sees none, the most frequent one in the first line (";" if none)."""
    try:
        return csv.Sniffer().sniff(text[:65536], delimiters=";,\t|").delimiter
    except csv.Error:
        first = next((line for line in text.splitlines() if line.strip()), "")
        counts = {d: first.count(d) for d in ";,\t|"}
        return max(counts, key=counts.get) if max(counts.values()) else ";"


def _read_csv(path: Path, data: bytes) -> list[list[str]]:
    """The cells of a .csv/.tsv. The sniffed delimiter first; if its rows show no header afinar knows (a decimal
    comma or a title line can fool the sniffer), the first other delimiter whose rows do."""
    text = _decode(data)
    if path.suffix.lower() == ".tsv":
        return _parse_csv(path, text, "\t")
    sniffed = _sniff(text)
    grid = _parse_csv(path, text, sniffed)  # a broken quote breaks every delimiter: its error stands
    if _named_header(grid) is not None:
        return grid
    for sep in [d for d in ";,\t|" if d != sniffed]:
        try:
            other = _parse_csv(path, text, sep)
        except TableError:
            continue
        if _named_header(other) is not None:
            return other
    return grid


def _parse_csv(path: Path, text: str, sep: str) -> list[list[str]]:
    import pandas as pd

    names = None
    for _ in range(100):
        try:
            frame = pd.read_csv(io.StringIO(text), sep=sep, header=None, names=names, dtype=str, keep_default_na=False,
                                na_filter=False, skip_blank_lines=False, quotechar='"', engine="c")
            return [[_cell_text(v) for v in row] for row in frame.itertuples(index=False, name=None)]
        except pd.errors.EmptyDataError:
            return []
        except pd.errors.ParserError as exc:
            message = str(exc)
            # A row wider than the first one (a title row above the header): read again with room for it.
            wider = re.search(r"Expected \d+ fields in line \d+, saw (\d+)", message)
            if wider and (names is None or int(wider.group(1)) > len(names)):
                names = list(range(int(wider.group(1))))
                continue
            quote = re.search(r"inside string starting at row (\d+)", message)
            if quote:
                raise TableError(path, "D022", f"unas comillas (\") se abren en la fila {int(quote.group(1)) + 1} y no "
                                 "se cierran", row=int(quote.group(1)) + 1,
                                 hint="cierra las comillas de esa celda o vuelve a exportar el CSV desde la hoja de "
                                      "cálculo") from None
            raise TableError(path, "D022", "el CSV está mal formado (pandas no puede separar sus columnas)",
                             hint="ábrelo en Excel o LibreOffice y guárdalo de nuevo como CSV") from None
    raise TableError(path, "D022", "el CSV está mal formado (filas con números de columnas muy distintos)")


def pick_sheet(sheets: list[str], hoja, path) -> str:
    """The sheet `hoja` names (its name, or its 1-based number); the first when None."""
    if hoja is None:
        return sheets[0]
    if isinstance(hoja, int) and not isinstance(hoja, bool):
        if 1 <= hoja <= len(sheets):
            return sheets[hoja - 1]
    else:
        text = str(hoja).strip()
        match = next((s for s in sheets if s == text), None) or next(
            (s for s in sheets if s.strip().casefold() == text.casefold()), None)
        if match is not None:
            return match
        if text.isdigit() and 1 <= int(text) <= len(sheets):
            return sheets[int(text) - 1]
    listed = ", ".join(f"{i}: «{s}»" for i, s in enumerate(sheets, start=1))
    raise TableError(path, "D024", f"no existe la hoja «{hoja}»; hojas del archivo: {listed}",
                     hint="en la receta, hoja: con el nombre o el número de una de ellas")


def _read_xlsx(path: Path, data: bytes, hoja) -> tuple[list[list[str]], str, list[str]]:
    if data[:8] == OLE_MAGIC:
        raise TableError(path, "D021", "el archivo está protegido con contraseña (o es un .xls antiguo de Excel "
                         "97-2003 con otra extensión)", hint="ábrelo en Excel o LibreOffice, quita la contraseña y "
                         "guárdalo como .xlsx")
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise TableError(path, "D020", "no es un .xlsx válido (un .xlsx es un zip y este no lo es: ¿dañado, a medio "
                         "descargar o de otro tipo?)", hint="ábrelo en Excel o LibreOffice y guárdalo como .xlsx")
    import openpyxl

    try:
        book = openpyxl.load_workbook(io.BytesIO(data), data_only=True)
    except Exception as exc:  # openpyxl raises many types for a damaged file; none is the user's fault to debug
        raise TableError(path, "D020", f"no se puede leer el .xlsx ({type(exc).__name__})",
                         hint="ábrelo en Excel o LibreOffice y guárdalo de nuevo como .xlsx") from None
    sheets = list(book.sheetnames)
    name = pick_sheet(sheets, hoja, path)
    values = list(book[name].iter_rows(min_row=1, min_col=1, values_only=True))
    if any(v is None for row in values for v in row):
        _check_formulas(path, data, name, values)
    return [[_cell_text(v) for v in row] for row in values], name, sheets


def _check_formulas(path: Path, data: bytes, name: str, values: list[tuple]) -> None:
    """A file written by a program (not by Excel or LibreOffice) can hold formulas without their computed values:
    `data_only=True` then reads None where the sheet shows a number or a text. Refuse instead of training on blanks."""
    import openpyxl

    book = openpyxl.load_workbook(io.BytesIO(data), data_only=False)
    cells = []
    for r, row in enumerate(book[name].iter_rows(min_row=1, min_col=1, max_row=len(values)), start=1):
        for c, cell in enumerate(row):
            formula = cell.value
            is_formula = (isinstance(formula, str) and formula.startswith("=")) or type(formula).__name__ in (
                "ArrayFormula", "DataTableFormula")
            if is_formula and (c >= len(values[r - 1]) or values[r - 1][c] is None):
                cells.append(f"{_letter(c)}{r}")
    if cells:
        shown = ", ".join(cells[:10]) + (f" y {len(cells) - 10} más" if len(cells) > 10 else "")
        raise TableError(path, "D023", f"{len(cells)} celdas tienen fórmulas sin el valor calculado guardado "
                         f"({shown}): se leerían vacías", sheet=name,
                         hint="ábrelo y guárdalo en Excel o LibreOffice para que guarde los valores")


def _read_ods(path: Path, data: bytes, hoja) -> tuple[list[list[str]], str, list[str]]:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise TableError(path, "D020", "no es un .ods válido (un .ods es un zip y este no lo es: ¿dañado o de otro "
                         "tipo?)", hint="ábrelo en LibreOffice y guárdalo como .ods")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        manifest = archive.read("META-INF/manifest.xml") if "META-INF/manifest.xml" in archive.namelist() else b""
    if b"encryption-data" in manifest:
        raise TableError(path, "D021", "el archivo está protegido con contraseña",
                         hint="ábrelo en LibreOffice, quita la contraseña (Archivo → Propiedades) y guárdalo")
    import pandas as pd

    try:
        book = pd.ExcelFile(io.BytesIO(data), engine="odf")
        sheets = list(book.sheet_names)
        name = pick_sheet(sheets, hoja, path)
        frame = pd.read_excel(book, sheet_name=name, header=None, dtype=object, keep_default_na=False, na_filter=False)
    except TableError:
        raise
    except Exception as exc:
        raise TableError(path, "D020", f"no se puede leer el .ods ({type(exc).__name__})",
                         hint="ábrelo en LibreOffice y guárdalo de nuevo como .ods") from None
    return [[_cell_text(v) for v in row] for row in frame.itertuples(index=False, name=None)], name, sheets


def _json_items(path: Path, data: bytes) -> list:
    try:
        items = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise TableError(path, "D013", "el .json no está en UTF-8") from None
    except json.JSONDecodeError as exc:
        raise TableError(path, "D001", f"JSON inválido (línea {exc.lineno}, columna {exc.colno})") from None
    if not isinstance(items, list):
        raise TableError(path, "D033", "el .json debe ser una lista [{…}, {…}] de ejemplos",
                         hint="para un ejemplo por línea usa un archivo .jsonl")
    return items


def _as_table(path: Path, grid: list[list[str]], sheet: str | None, sheets: list[str]) -> Table:
    """Header row found, empty trailing rows and columns dropped, blank rows skipped (their numbers still count)."""
    while grid and not any(c.strip() for c in grid[-1]):
        grid.pop()
    header = _header_index(grid)
    if header is None:
        raise TableError(path, "D025", "no hay una fila de encabezados (una fila con al menos dos nombres de columna, "
                         "p. ej. «Pregunta» y «Respuesta»)", sheet=sheet,
                         hint="escribe los nombres de las columnas en la primera fila")
    width = max((max((i for i, c in enumerate(row) if c.strip()), default=-1) + 1 for row in grid), default=0)
    names, letters, keep = [], {}, []
    for j in range(width):
        name = grid[header][j].strip() if j < len(grid[header]) else ""
        if not name:
            if not any(j < len(row) and row[j].strip() for row in grid[header + 1:]):
                continue  # an empty column: nothing to read
            name = f"Columna {_letter(j)}"
        if name in names:
            name = f"{name} ({_letter(j)})"
        names.append(name)
        letters[name] = _letter(j)
        keep.append(j)
    rows = []
    for index in range(header + 1, len(grid)):
        row = grid[index]
        cells = {name: (row[j] if j < len(row) else "") for name, j in zip(names, keep)}
        if any(v.strip() for v in cells.values()):
            rows.append((index + 1, cells))
    return Table(path, sheet, sheets, header + 1, names, rows, letters)


def _named_header(grid: list[list[str]]) -> int | None:
    """The first of the first rows whose cells (two or more) look like names and include one afinar knows."""
    for index, row in enumerate(grid[:HEADER_SCAN]):
        cells = [c.strip() for c in row if c.strip()]
        names = all(len(c) <= 80 and "\n" not in c and not re.fullmatch(r"[\d\s.,:%/-]+", c) for c in cells)
        if len(cells) >= 2 and names and any(normalize(c) in KNOWN for c in cells):
            return index
    return None


def _header_index(grid: list[list[str]]) -> int | None:
    """A row of known names (`_named_header`); else the first row with two cells or more (a title merged across the
    header has one)."""
    named = _named_header(grid)
    if named is not None:
        return named
    return next((i for i, row in enumerate(grid) if sum(1 for c in row if c.strip()) >= 2), None)


def read_table(path, sheet: str | int | None = None) -> Table:
    """The table of a spreadsheet (its first sheet, or `sheet`: name or 1-based number), every cell as text.
    Whole-file problems raise `TableError` (an `AfinarError`) naming file and sheet."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise TableError(path, "D032", f"no es una tabla ({', '.join(TABLE_SUFFIXES)})")
    if not path.is_file():
        raise TableError(path, "D011", "no existe el archivo")
    data = path.read_bytes()
    if suffix in (".xlsx", ".ods"):
        grid, name, sheets = (_read_xlsx if suffix == ".xlsx" else _read_ods)(path, data, sheet)
        return _as_table(path, grid, name, sheets)
    if sheet not in (None, 1, "1"):
        raise TableError(path, "D024", f"un archivo {suffix} no tiene hojas: quita 'hoja' (o usa un .xlsx/.ods)")
    if suffix in (".csv", ".tsv"):
        return _as_table(path, _read_csv(path, data), None, [])
    if suffix == ".parquet":
        import pandas as pd

        try:
            frame = pd.read_parquet(io.BytesIO(data))
        except Exception as exc:
            raise TableError(path, "D020", f"no se puede leer el .parquet ({type(exc).__name__})") from None
        columns = [str(c) for c in frame.columns]
        rows = [(i + 2, {c: _cell_text(v) for c, v in zip(columns, row)})  # row 1 would be the header
                for i, row in enumerate(frame.itertuples(index=False, name=None))]
        return Table(path, None, [], 1, columns, [r for r in rows if any(v.strip() for v in r[1].values())])
    items = _json_items(path, data)
    columns = list(dict.fromkeys(str(k) for item in items if isinstance(item, dict) for k in item))
    bad = [i for i, item in enumerate(items, start=1) if not isinstance(item, dict)]
    if bad:
        raise TableError(path, "D033", f"el elemento {bad[0]} no es un objeto {{…}}", row=bad[0])
    rows = [(i, {c: _cell_text(item.get(c)) for c in columns}) for i, item in enumerate(items, start=1)]
    return Table(path, None, [], 0, columns, [r for r in rows if any(v.strip() for v in r[1].values())])


# --- columns → fields -----------------------------------------------------------------------------------------------


def _matches(columns: list[str]) -> dict[str, list[str]]:
    return {f: [c for c in columns if normalize(c) in SYNONYMS[f]] for f in FIELDS}


def _guess(columns: list[str], mapping: dict[str, str]) -> dict[str, str]:
    """The best candidates for a missing pregunta/respuesta, for the recipe line an error shows: a header that
    contains a synonym («Consulta del paciente»), else the first columns nobody took."""
    guess = dict(mapping)
    for f in ("pregunta", "respuesta"):
        if f in guess:
            continue
        free = [c for c in columns if c not in guess.values()]
        contains = [c for c in free if any(re.search(rf"\b{re.escape(s)}\b", normalize(c)) for s in SYNONYMS[f])]
        if contains or free:
            guess[f] = (contains or free)[0]
    return guess


def recipe_line(mapping: dict[str, str]) -> str:
    """columnas: {pregunta: "Consulta del paciente", respuesta: "Respuesta"}: valid YAML to paste into a source."""
    order = sorted(mapping, key=FIELDS.index)
    return "columnas: {" + ", ".join(f"{f}: {json.dumps(mapping[f], ensure_ascii=False)}" for f in order) + "}"


def _hint(mapping: dict[str, str]) -> str:
    cli = ",".join(f"{f}={mapping[f]}" for f in sorted(mapping, key=FIELDS.index))
    return f"añade a la fuente de la receta `{recipe_line(mapping)}` o, en la línea de órdenes, --columnas \"{cli}\""


def _found(columns: list[str]) -> str:
    return ", ".join(f"«{c}»" for c in columns) or "ninguna"


def detect_columns(columns: list[str], path=None, given: dict[str, str] | None = None, sheet: str | None = None,
                   all_columns: list[str] | None = None, unused: set[str] | frozenset = frozenset()) -> dict[str, str]:
    """field → column, by the normalized header and its Spanish and English synonyms; pregunta and respuesta are
    required. Ambiguous (two columns for one field: D027) or missing (D026): a `TableError` listing the columns found
    and the recipe line to add, with the best guesses. `given` (already mapped by the recipe) is kept as is; the
    fields in `unused` (`columnas: {contexto: null}`, «— ninguna —» in the studio) are never detected."""
    given = dict(given or {})
    listed = all_columns or columns
    free = [c for c in columns if c not in given.values()]
    mapping = dict(given)
    for f, found in _matches(free).items():
        if f in given or f in unused or not found:
            continue
        if len(found) > 1:
            pick = dict(mapping, **{f: found[0]})
            raise TableError(path or "<tabla>", "D027", f"las columnas {_found(found)} pueden ser todas '{f}'; "
                             f"columnas encontradas: {_found(listed)}", sheet=sheet, hint=_hint(_guess(listed, pick)))
        mapping[f] = found[0]
    missing = [f for f in ("pregunta", "respuesta") if f not in mapping]
    if missing:
        what = " ni ".join(f"'{f}'" for f in missing)
        raise TableError(path or "<tabla>", "D026", f"no se reconoce la columna de {what}; columnas encontradas: "
                         f"{_found(listed)}", sheet=sheet, hint=_hint(_guess(listed, mapping)))
    return mapping


def _mapping(table: Table, columnas: dict | None) -> dict[str, str]:
    given, unused = {}, set()
    for f, name in (columnas or {}).items():
        if not name:  # the person said this field has no column: not even a header that looks like it
            unused.add(f)
            continue
        if f not in FIELDS:
            raise TableError(table.path, "D028", f"'{f}' no es un campo de 'columnas'; campos: {', '.join(FIELDS)}",
                             sheet=table.sheet)
        match = name if name in table.columns else next(
            (c for c in table.columns if normalize(c) == normalize(name)), None)
        if match is None:
            close = difflib.get_close_matches(str(name), table.columns, n=1, cutoff=0.5)
            raise TableError(table.path, "D028", f"'columnas' pone {f}: «{name}», y no hay ninguna columna así; "
                             f"columnas encontradas: {_found(table.columns)}", sheet=table.sheet,
                             hint=f"¿quisiste decir «{close[0]}»?" if close else None)
        if match in given.values():
            taken = next(k for k, v in given.items() if v == match)
            raise TableError(table.path, "D028", f"'columnas' pone la columna «{match}» para '{taken}' y para '{f}': "
                             "cada columna es un solo campo", sheet=table.sheet)
        given[f] = match
    return detect_columns(table.columns, table.path, given, table.sheet, table.columns, unused)


# --- rows → examples ------------------------------------------------------------------------------------------------


def split_points(text: str, alternatives: bool) -> list:
    """A `claves` cell: key points separated by ";" or line breaks, the alternatives of one by "|" (a list of lists);
    a `peligros` cell: dangers separated by ";" or line breaks (a list). Empty points (a trailing ";") are dropped."""
    points = [p.strip() for p in re.split(r"[;\n]", text) if p.strip()]
    return [[a.strip() for a in p.split("|")] for p in points] if alternatives else points


def join_points(value, alternatives: bool) -> str:
    """The inverse of `split_points`, for writing a table."""
    if not value:
        return ""
    if isinstance(value, str):
        return value
    if alternatives:
        return "; ".join(" | ".join([v] if isinstance(v, str) else v) for v in value)
    return "; ".join(value)


def _table_records(table: Table, mapping: dict[str, str], problems: list) -> list[tuple[Example, dict]]:
    src = str(table.path)
    state = next((c for c in table.columns if normalize(c) == STATE and c not in mapping.values()), None)
    pairs, skipped = [], 0
    for row, cells in table.rows:
        values = {f: cells[c] for f, c in mapping.items()}
        if not any(v.strip() for v in values.values()):
            continue  # a pre-numbered template row with nothing written in it
        source = {"pregunta": values["pregunta"], "respuesta": values["respuesta"],
                  "contexto": values.get("contexto", "")}
        if state is not None:
            source[STATE] = cells[state]
            if is_skipped_draft(source):
                skipped += 1
                continue
        empty = [f for f in ("pregunta", "respuesta") if not values[f].strip()]
        for f in empty:
            problems.append(Problem(src, row, "D005", f"la columna {table.column(mapping[f])} está vacía",
                                    sheet=table.sheet))
        if empty:
            continue
        record = _record(values, "sistema" in mapping)
        if state is not None:
            record[STATE] = cells[state]
        if values.get("claves", "").strip():
            record["claves"] = split_points(values["claves"], alternatives=True)
        if values.get("peligros", "").strip():
            record["peligros"] = split_points(values["peligros"], alternatives=False)
        found: list[Problem] = []
        example = parse_record(record, "auto", src, row, found)
        for p in found:
            column = next((mapping.get(k) or state for k in ("claves", "peligros", STATE) if f"'{k}" in p.message),
                          None)
            prefix = f"columna {table.column(column)}: " if column else ""
            problems.append(Problem(src, row, p.code, prefix + p.message, p.severity, table.sheet))
        if example is not None:
            pairs.append((example, source))
    if skipped:
        problems.append(drafts_warning(src, skipped, table.sheet))
    return pairs


def _record(values: dict[str, str], has_system: bool) -> dict:
    """The record a row stands for. Without a system column, the {"pregunta", "respuesta", "contexto"} a JSONL line
    has; with one, {"messages"} joined exactly as `records._from_instruction` joins pregunta and contexto."""
    question, answer, context = values["pregunta"], values["respuesta"], values.get("contexto", "")
    if not has_system:
        return {"pregunta": question, "respuesta": answer} | ({"contexto": context} if context.strip() else {})
    user = question.strip() + ("\n" + context.strip() if context.strip() else "")
    system = values.get("sistema", "")
    messages = [{"role": "system", "content": system}] if system.strip() else []
    return {"messages": messages + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def _records(path, columnas: dict | None, hoja, problems: list, fmt: str = "auto") -> list[tuple[Example, dict]]:
    """(example, the record it came from) for every valid row of a table or line of a JSONL; problems for the rest."""
    path = Path(path)
    if not is_table(path):
        return jsonl_records(path, fmt, problems)
    try:
        if path.suffix.lower() == ".json" and not columnas and path.is_file():
            if hoja not in (None, 1, "1"):
                raise TableError(path, "D024", "un archivo .json no tiene hojas: quita 'hoja'")
            items = _json_items(path, path.read_bytes())
            if any(isinstance(item, dict) and detect_format(item) for item in items):
                # Records already in a known format: each goes through `parse_record` unchanged, as a JSONL line.
                return numbered_records(enumerate(items, start=1), str(path), fmt, problems)
        table = read_table(path, hoja)
        mapping = _mapping(table, columnas)
    except TableError as exc:
        problems.append(exc.problem)
        return []
    return _table_records(table, mapping, problems)


def table_examples(path, columnas: dict | None = None, hoja=None, problems: list | None = None,
                   fmt: str = "auto") -> list[Example]:
    """Every valid example of a table (`Example.line`: the row number; `Example.where`: "file:row"); problems (never
    raised) for the rest, each with file, sheet, row and column. `columnas`: field → column name for the fields the
    header does not name recognizably; `hoja`: sheet name or 1-based number (None: the first)."""
    problems = [] if problems is None else problems
    if not Path(path).is_file():
        problems.append(Problem(str(path), None, "D011", "no existe el archivo"))
        return []
    return [example for example, _ in _records(path, columnas, hoja, problems, fmt)]


# --- examples → rows ------------------------------------------------------------------------------------------------


def example_row(example: Example) -> dict | None:
    """{pregunta, respuesta, sistema, contexto, claves, peligros} (all text; claves as "a | b; c") of a single-turn
    example, ready for `write_table`; None for a multi-turn conversation, which no single row can hold."""
    messages = example.messages
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    turns = messages[1:] if system else messages
    if len(turns) != 2:
        return None
    return {"pregunta": turns[0]["content"], "respuesta": turns[1]["content"], "sistema": system, "contexto": "",
            "claves": join_points(example.claves, True), "peligros": join_points(example.peligros, False)}


def _split_context(example: Example, source: dict | None, row: dict) -> dict:
    """Keep the context in its own column when the source had it apart (and joining them gives the same message)."""
    if not isinstance(source, dict):
        return row
    for question_key, context_key in (("pregunta", "contexto"), ("instruction", "input")):
        question, context = source.get(question_key), source.get(context_key)
        if isinstance(context, (dict, list)) and context:
            context = json.dumps(context, ensure_ascii=False, separators=(",", ":"))  # as records serialises it
        if isinstance(question, str) and isinstance(context, str) and context.strip():
            if question.strip() + "\n" + context.strip() == row["pregunta"]:
                return row | {"pregunta": question.strip(), "contexto": context.strip()}
    return row


def _jsonl_line(example: Example, source: dict | None) -> dict:
    """What training sees, as one JSONL line: {"pregunta", "respuesta"[, "contexto"]} or {"messages"} (a system
    message or several turns), plus claves/peligros as lists. Both parse back to the same messages."""
    row = example_row(example)
    if row is None or row["sistema"]:
        line = {"messages": example.messages}
    else:
        row = _split_context(example, source, row)
        line = {"pregunta": row["pregunta"], "respuesta": row["respuesta"]}
        if row["contexto"]:
            line["contexto"] = row["contexto"]
    if example.claves:
        line["claves"] = example.claves
    if example.peligros:
        line["peligros"] = example.peligros
    return line


def jsonl_lines(source, columnas: dict | None = None, hoja=None, problems: list | None = None) -> list[dict]:
    """What training sees of a data file (a table, a .json array or a JSONL), one JSONL object per valid example
    (`_jsonl_line`); problems (never raised) for the rest. `afinar convertir` and the studio's «Usar estas columnas»
    write these."""
    problems = [] if problems is None else problems
    return [_jsonl_line(example, record) for example, record in _records(source, columnas, hoja, problems)]


def _cells(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    optional = ("contexto", "sistema", "claves", "peligros")
    columns = ["pregunta", "respuesta"] + [f for f in optional if any(r.get(f) for r in rows)]
    text = {"claves": lambda v: join_points(v, True), "peligros": lambda v: join_points(v, False)}
    return columns, [[text.get(f, lambda v: v or "")(r.get(f)) for f in columns] for r in rows]


def _unwritable(columns: list[str], cells: list[list[str]], suffix: str, encoding: str) -> list[tuple[int, str]]:
    """(row index, field) of every cell the output cannot hold: a character the CSV encoding lacks, or a control
    character .xlsx forbids."""
    bad = []
    if suffix in (".csv", ".tsv"):
        for i, row in enumerate(cells):
            for name, value in zip(columns, row):
                try:
                    value.encode(encoding)
                except UnicodeEncodeError:
                    bad.append((i, name))
    elif suffix in (".xlsx", ".ods"):  # both are XML inside a zip: XML forbids most control characters
        from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

        bad = [(i, name) for i, row in enumerate(cells) for name, value in zip(columns, row)
               if ILLEGAL_CHARACTERS_RE.search(value)]
    return bad


def _refuse_unwritable(bad: list[tuple[int, str]], places: list[str], path: Path, suffix: str, encoding: str):
    shown = ", ".join(f"{places[i]} ({name})" for i, name in bad[:10]) + (
        f" y {len(bad) - 10} más" if len(bad) > 10 else "")
    if suffix in (".csv", ".tsv"):
        raise AfinarError("D030", f"la codificación {encoding} no puede guardar algún carácter de: {shown}; "
                          "no se ha escrito nada", where=str(path),
                          hint="usa --codificacion utf-8-sig (Excel también la abre) o cambia esos caracteres")
    raise AfinarError("D030", f"hay caracteres de control que un {suffix} no admite en: {shown}; no se ha escrito nada",
                      where=str(path), hint="quita esos caracteres o escribe un .csv")


def write_table(rows: list[dict], path, sep: str = ";", encoding: str = "utf-8-sig") -> None:
    """A table with the columns pregunta, respuesta (+ contexto, sistema, claves, peligros when a row has them), all
    cells as text, written whole or not at all. `sep`/`encoding` apply to .csv (a .tsv is tab-separated); .xlsx,
    .ods and .parquet are Unicode. Rows: dicts with `FIELDS` keys (claves/peligros as text or lists)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITABLE:
        raise AfinarError("D032", f"no sé escribir una tabla {suffix or 'sin extensión'}; usa "
                          f"{', '.join(WRITABLE)}", where=str(path))
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise AfinarError("D032", f"codificación desconocida '{encoding}'; usa utf-8-sig o cp1252") from None
    columns, cells = _cells(rows)
    bad = _unwritable(columns, cells, suffix, encoding)
    if bad:
        _refuse_unwritable(bad, [f"fila {i + 2}" for i in range(len(cells))], path, suffix, encoding)
    with atomic_open(path, "wb") as handle:
        handle.write(_table_bytes(columns, cells, suffix, sep, encoding))


def _table_bytes(columns: list[str], cells: list[list[str]], suffix: str, sep: str, encoding: str) -> bytes:
    import pandas as pd

    if suffix == ".xlsx":
        return _xlsx_bytes(columns, cells)
    frame = pd.DataFrame(cells, columns=columns, dtype=str)
    buffer = io.BytesIO()
    if suffix == ".ods":
        frame.to_excel(buffer, engine="odf", index=False, sheet_name="Ejemplos")
    elif suffix == ".parquet":
        frame.to_parquet(buffer, index=False)
    else:
        # \r\n between rows, as Excel writes them; a line break inside a cell stays \n inside its quotes.
        text = frame.to_csv(sep="\t" if suffix == ".tsv" else sep, index=False, lineterminator="\r\n")
        return text.encode(encoding)
    return buffer.getvalue()


def _xlsx_bytes(columns: list[str], cells: list[list[str]]) -> bytes:
    from openpyxl import Workbook
    from openpyxl.styles import Alignment, Font

    book = Workbook()
    sheet = book.active
    sheet.title = "Ejemplos"
    sheet.append(columns)
    for row in cells:
        sheet.append(row)
    wrap = Alignment(wrap_text=True, vertical="top")
    for row in sheet.iter_rows(min_row=2):
        for cell in row:
            if cell.data_type == "f":
                cell.data_type = "s"  # an answer that starts with "=" is text, not a formula to run
            cell.alignment = wrap
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    for index, name in enumerate(columns):
        sheet.column_dimensions[_letter(index)].width = 60 if name in ("pregunta", "respuesta", "contexto") else 30
    sheet.freeze_panes = "A2"
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


# --- afinar convertir -----------------------------------------------------------------------------------------------


def parse_columnas(text: str | None) -> dict[str, str] | None:
    """--columnas "pregunta=Consulta del paciente,respuesta=Respuesta" → {field: column}. A comma inside a column
    name is kept: only a comma followed by a field name and "=" separates."""
    if not text:
        return None
    mapping = {}
    for part in re.split(r",\s*(?=\w+\s*=)", text.strip()):
        name, equal, column = part.partition("=")
        name = name.strip().lower()
        if not equal or name not in FIELDS or not column.strip():
            raise AfinarError("D028", f"--columnas: «{part.strip()}» no es CAMPO=COLUMNA con un campo de: "
                              f"{', '.join(FIELDS)}", hint='p. ej. --columnas "pregunta=Consulta,respuesta=Respuesta"')
        mapping[name] = column.strip()
    return mapping


def convert(source, output, columnas: dict | None = None, hoja=None, sep: str = ";", encoding: str = "utf-8-sig",
            overwrite: bool = False, out=print) -> int:
    """`afinar convertir ENTRADA SALIDA`: any data file (JSONL, .json, a table) → .jsonl (what training sees) or a
    table (.csv, .tsv, .xlsx, .ods, .parquet). An input with errors is reported like `afinar validate` and nothing is
    written (exit code 1); refusals that concern the command itself raise `AfinarError`."""
    source, output = Path(source), Path(output)
    suffix = output.suffix.lower()
    if suffix not in (".jsonl", *WRITABLE):
        raise AfinarError("D032", f"no sé escribir archivos {suffix or 'sin extensión'}; SALIDA debe ser .jsonl, "
                          f"{', '.join(WRITABLE)}", where=str(output))
    if sep == "tab":
        sep = "\t"
    if len(sep) != 1:
        raise AfinarError("D032", "el separador debe ser un solo carácter (p. ej. ';', ',' o tab)")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise AfinarError("D032", f"codificación desconocida '{encoding}'; usa utf-8-sig o cp1252") from None
    if not source.is_file():
        raise AfinarError("D011", "no existe el archivo.", where=str(source))
    if output.exists() and output.resolve() == source.resolve():
        raise AfinarError("D031", "la salida es el mismo archivo que la entrada.", where=str(output))
    if output.exists() and not overwrite:
        raise AfinarError("D031", "ya existe; no se ha tocado.", where=str(output), hint="usa --sobrescribir para "
                          "reemplazarlo")
    if (columnas or hoja is not None) and not is_table(source):
        raise AfinarError("D029", "--columnas y --hoja solo valen para una hoja de cálculo o tabla de entrada.",
                          where=str(source))
    problems: list[Problem] = []
    pairs = _records(source, columnas, hoja, problems)
    errors = [p for p in problems if p.severity == "error"]
    for problem in errors + [p for p in problems if p.severity != "error"]:
        out(problem.render())
    if errors:
        out(f"{len(errors)} errores: no se escribe nada. Corrígelos y comprueba con: afinar validate {source}")
        return 1
    if not pairs:
        raise AfinarError("D012", "el archivo no contiene ningún ejemplo que convertir.", where=str(source))
    row_word = "fila" if is_table(source) and source.suffix.lower() != ".json" else (
        "elemento" if is_table(source) else "línea")
    skipped: list[int] = []
    if suffix == ".jsonl":
        text = "".join(json.dumps(_jsonl_line(e, s), ensure_ascii=False) + "\n" for e, s in pairs)
        with atomic_open(output, "wb") as handle:
            handle.write(text.encode("utf-8"))
        written = len(pairs)
    else:
        rows, places = [], []
        for example, src in pairs:
            row = example_row(example)
            if row is None:
                skipped.append(example.line)
                continue
            rows.append(_split_context(example, src, row))
            places.append(f"{row_word} {example.line}")
        if skipped:
            listed = ", ".join(map(str, skipped[:30])) + (f" y {len(skipped) - 30} más" if len(skipped) > 30 else "")
            out(Problem(str(source), None, "D034", f"{len(skipped)} conversaciones de varios turnos no caben en una "
                        f"fila y se omiten ({row_word}s {listed})", "warning").render())
        if not rows:
            raise AfinarError("D034", "todas las conversaciones tienen varios turnos: ninguna cabe en una fila; "
                              "convierte a .jsonl", where=str(source))
        columns, cells = _cells(rows)
        bad = _unwritable(columns, cells, suffix, encoding)
        if bad:
            _refuse_unwritable(bad, places, source, suffix, encoding)
        write_table(rows, output, sep, encoding)
        written = len(rows)
    notes = [f"{len(skipped)} conversaciones de varios turnos omitidas"] if skipped else []
    warnings = len(problems) - len(errors)
    notes += [f"{warnings} avisos"] if warnings else []
    out(f"{source} → {output}: {written} ejemplos escritos" + (f" ({'; '.join(notes)})" if notes else "") + ".")
    return 0


def convert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="ENTRADA", help="datos .jsonl, .json o una tabla")
    p.add_argument("output", metavar="SALIDA", help=".jsonl (lo que ve el entrenamiento) o .csv, .tsv, .xlsx, .ods, "
                   ".parquet (columnas pregunta, respuesta, y contexto, sistema, claves, peligros si hay)")
    p.add_argument("--columnas", type=parse_columnas, metavar="CAMPO=COLUMNA,…",
                   help="con una tabla de entrada: qué columna es cada campo")
    p.add_argument("--hoja", metavar="NOMBRE",
                   help="con un .xlsx/.ods de entrada: la hoja, por nombre o número")
    p.add_argument("--separador", dest="sep", choices=[";", ",", "tab", "|"],
                   help="separador del .csv de salida (por defecto ';', el de Excel en español)")
    p.add_argument("--codificacion", dest="encoding", choices=["utf-8-sig", "utf-8", "cp1252"],
                   help="codificación del .csv/.tsv de salida (por defecto utf-8-sig, que Excel reconoce; cp1252 para "
                        "programas antiguos)")
    p.add_argument("--sobrescribir", "--overwrite", dest="overwrite", action="store_true",
                   help="reemplaza SALIDA si ya existe")
