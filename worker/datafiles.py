"""Stream dataset uploads into canonical JSON Lines, and read them back.

CSV, TSV, JSON Lines, Parquet, CoNLL and plain-text uploads are validated row by row while they stream, so a
large upload never sits in memory and a bad row is reported by number with what to fix. What a row
must hold depends on the task the data is for: a `RowSchema` (text and label here; each task module
in `worker/ml/tasks/` has its own) checks each row and counts what the dataset's stats show. The
canonical file holds one JSON object per row, every value a string or null except the structured
values a schema keeps (token and tag lists, answers), so later stages read one format.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import itertools
import json
import math
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

FORMATS = ("csv", "tsv", "jsonl", "parquet", "conll", "squad", "text")
EXTENSION_FORMATS = {
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".txt": "text",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".conll": "conll", ".bio": "conll", ".iob": "conll", ".iob2": "conll",
}
CONLL_DOCSTART = "-DOCSTART-"
MAX_FIELD_CHARS = 64 * 1024 * 1024
MAX_LINE_BYTES = 64 * 1024 * 1024
COPY_CHUNK_BYTES = 1024 * 1024
PARQUET_BATCH_ROWS = 2048
TEXT_SPOOL_BYTES = 8 * 1024 * 1024
_UTF8_BOM = b"\xef\xbb\xbf"
_MAPPING_HINT = "Map your columns with text_column=... label_column=... (or the task's <role>_column=...)"
_FIX_HINTS = {
    "malformed_csv": "A field that holds the delimiter, a double quote or a line break must be "
    'wrapped in double quotes, with quotes inside it doubled ("").',
    "malformed_json": 'Each line must hold one JSON object, e.g. {"text": "...", "label": "..."}; '
    "a single JSON array is not JSON Lines.",
    "malformed_parquet": "Write the file again with pyarrow or pandas (DataFrame.to_parquet).",
    "not_utf8": "Save the file with UTF-8 encoding and upload it again.",
    "malformed_conll": "Each line holds a token and its tag separated by a tab or spaces (the tag "
    "last), with a blank line between sentences.",
}

Row = dict[str, Any]


class DataFileError(Exception):
    """A dataset file cannot be used as uploaded; the message says what to fix."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


@dataclass(frozen=True)
class IngestResult:
    """What ingest learned about an upload while writing its canonical copy."""

    row_count: int
    sha256: str
    columns: list[str]
    stats: dict[str, Any]


def detect_format(filename: str | None, declared: str | None, by_extension: dict[str, str] | None = None) -> str:
    """Return the upload's format: the declared one, else the one its file extension names.

    `by_extension` overrides the usual meaning of some extensions (a task's .json is SQuAD).
    """
    extensions = EXTENSION_FORMATS | (by_extension or {})
    if declared:
        name = declared.strip().lower().lstrip(".")
        fmt = name if name in FORMATS else extensions.get("." + name)
        problem = f"Format '{declared}' is not supported"
    else:
        fmt = extensions.get(Path(filename or "").suffix.lower())
        problem = f"Cannot tell the format of '{filename or ''}' from its name"
    if fmt is None:
        raise DataFileError(
            "unsupported_format",
            f"{problem}; upload a .csv, .tsv, .jsonl, .parquet, .conll or .txt file, or declare the format "
            f"as one of {', '.join(FORMATS)}.",
            {"filename": filename, "format": declared, "supported": list(FORMATS)},
        )
    return fmt


class RowSchema(Protocol):
    """What the rows of a dataset for one task must hold; checks a row, keeps count for the stats."""

    columns: dict[str, str]  # role -> column name, e.g. {"text": "review", "label": "sentiment"}

    def check_first(self, first: Row) -> None:
        """Refuse an upload whose first row lacks a mapped column."""

    def check(self, raw: Row, row: int, line: int | None) -> dict[str, Any]:
        """Return the row's checked values by column, or raise DataFileError naming the row."""

    def summary(self) -> dict[str, Any]:
        """Return the dataset's stats (label or tag counts, lengths)."""


def ingest(
    src: BinaryIO, *, fmt: str, dest: Path, schema: RowSchema | None = None,
    text_column: str = "text", label_column: str | None = None, target_src: BinaryIO | None = None,
) -> IngestResult:
    """Validate an upload row by row against `schema` and write it to dest as canonical JSON Lines.

    Without a schema the rows are text with an optional label (`TextRows`). With `target_src`, `src`
    and it are a parallel pair of plain-text files, line N of one the translation of line N of the
    other; they fill the schema's first two columns.
    """
    schema = schema or TextRows(text_column, label_column)
    reader = _HashingReader(src)
    if target_src is not None:
        rows = _parallel_rows(_text_lines(reader), _text_lines(_HashingReader(target_src)),
                              list(schema.columns.values())[:2])
    else:
        rows = _open_rows(fmt, reader, src)
    columns: dict[str, None] = {}
    count = 0
    with open(dest, "w", encoding="utf-8", newline="\n") as out:
        try:
            for count, (raw, line) in enumerate(rows, 1):
                if count == 1:
                    schema.check_first(raw)
                for key in raw:
                    columns.setdefault(key)
                out.write(_canonical_line(raw, columns, schema.check(raw, count, line)))
        except _BadBytes as exc:
            line, offset = exc.args
            problem = f"Line {line} (near data row {count + 1}, byte {offset}) is not UTF-8."
            raise _malformed("not_utf8", problem, row=count + 1, line=line, byte_offset=offset)
    if count == 0:
        raise DataFileError("empty_file", "The file has no data rows; add at least one row.")
    return IngestResult(count, reader.hexdigest(), list(columns), schema.summary())


class TextRows:
    """Rows of text with an optional label: text classification, and unlabelled text to run models on."""

    def __init__(self, text_column: str = "text", label_column: str | None = None, max_label_chars: int = 200):
        self.columns = {"text": text_column} | ({"label": label_column} if label_column else {})
        self._text, self._label, self._max_label_chars = text_column, label_column, max_label_chars
        self._lengths: Counter[int] = Counter()
        self._labels: Counter[str] | None = Counter() if label_column is not None else None

    def check_first(self, first: Row) -> None:
        check_columns(first, {"text_column": self._text, "label_column": self._label})

    def check(self, raw: Row, row: int, line: int | None) -> dict[str, Any]:
        text = row_text(raw, row, line, self._text, required=self._label is not None)
        checked = {self._text: text}
        self._lengths[len(text)] += 1
        if self._label is not None:
            label = _row_label(raw, row, line, self._label, self._max_label_chars)
            checked[self._label] = label
            self._labels[label] += 1
        return checked

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self._labels is not None:
            out["label_distribution"] = ranked_counts(self._labels)
        out["num_labels"] = len(self._labels or ())
        out["text_length_chars"] = length_summary(self._lengths)
        return out


class TextPairRows:
    """Rows of two texts, both required: source and target, document and summary, prompt and completion."""

    def __init__(self, columns: dict[str, str]) -> None:
        self.columns = dict(columns)
        self._lengths = {role: Counter() for role in columns}

    def check_first(self, first: Row) -> None:
        check_columns(first, {f"{role}_column": column for role, column in self.columns.items()})

    def check(self, raw: Row, row: int, line: int | None) -> dict[str, Any]:
        checked = {}
        for role, column in self.columns.items():
            checked[column] = row_text(raw, row, line, column, required=True)
            self._lengths[role][len(checked[column])] += 1
        return checked

    def summary(self) -> dict[str, Any]:
        return {f"{role}_length_chars": length_summary(lengths) for role, lengths in self._lengths.items() if lengths}


def ranked_counts(counts: Counter[str]) -> dict[str, int]:
    """Return counts most frequent first (ties by name), as stored in a dataset's stats."""
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def iter_rows(path: Path, start: int = 0, only: Iterable[int] | None = None) -> Iterator[tuple[int, Row]]:
    """Yield (0-based index, row) for each row of a canonical file, from index start on.

    With `only` (ascending indexes, read lazily), yield just those rows; the lines between them are
    skipped unparsed, so picking a few rows out of millions costs a scan of the file, not its parsing.
    """
    if only is not None:
        yield from _rows_at(path, (index for index in only if index >= start))
        return
    with open(path, encoding="utf-8", newline="\n") as lines:
        for index, line in enumerate(lines):
            if index >= start:
                yield index, json.loads(line)


def _rows_at(path: Path, indexes: Iterator[int]) -> Iterator[tuple[int, Row]]:
    want = next(indexes, None)
    with open(path, "rb") as lines:  # canonical files end lines with b"\n" alone
        for index, line in enumerate(lines):
            if want is None:
                return
            if index == want:
                yield index, json.loads(line)
                want, previous = next(indexes, None), want
                if want is not None and want <= previous:
                    raise ValueError(f"row indexes must ascend: {want} after {previous}")
    if want is not None:
        raise ValueError(f"row {want} is past the end of {path.name}")


def count_rows(path: Path) -> int:
    """Return the number of rows in a canonical file."""
    count = 0
    with open(path, "rb") as data:
        while chunk := data.read(COPY_CHUNK_BYTES):
            count += chunk.count(b"\n")
    return count


class _HashingReader:
    """Read a binary stream while hashing every byte that passes."""

    def __init__(self, src: BinaryIO) -> None:
        self._src = src
        self._sha256 = hashlib.sha256()
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        return self._seen(self._src.read(size))

    def readline(self, size: int = -1) -> bytes:
        return self._seen(self._src.readline(size))

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()

    def _seen(self, data: bytes) -> bytes:
        self._sha256.update(data)
        self.bytes_read += len(data)
        return data


class _BadBytes(Exception):
    """Signal bytes that are not UTF-8 (args: line, byte offset); ingest names their row."""


def _open_rows(fmt: str, reader: _HashingReader, src: BinaryIO) -> Iterator[tuple[Row, int | None]]:
    """Return an iterator of (raw row, first line number or None) for the given format."""
    fmt = detect_format(None, fmt)
    if fmt in ("csv", "tsv"):
        return _csv_rows(_text_lines(reader), delimiter="," if fmt == "csv" else "\t")
    if fmt == "jsonl":
        return _jsonl_rows(_text_lines(reader))
    if fmt == "conll":
        return _conll_rows(_text_lines(reader))
    if fmt == "squad":
        return _squad_rows(reader)
    if fmt == "text":
        return _plain_text_rows(_text_lines(reader))
    return _parquet_rows(reader, src)


def _text_lines(reader: _HashingReader) -> Iterator[str]:
    """Yield the decoded lines of a UTF-8 stream, dropping a leading byte order mark."""
    number = 0
    while raw := reader.readline(MAX_LINE_BYTES + 1):
        start = reader.bytes_read - len(raw)
        number += 1
        if len(raw) > MAX_LINE_BYTES:
            raise DataFileError(
                "line_too_long",
                f"Line {number} is longer than {MAX_LINE_BYTES} bytes; check the file's format.",
                {"line": number},
            )
        skip = len(_UTF8_BOM) if start == 0 and raw.startswith(_UTF8_BOM) else 0
        try:
            text = raw[skip:].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _BadBytes(number, start + skip + exc.start) from None
        yield text


def _csv_rows(lines: Iterable[str], delimiter: str) -> Iterator[tuple[Row, int]]:
    """Yield each CSV record as a dict keyed by the header, with the line it starts on."""
    csv.field_size_limit(MAX_FIELD_CHARS)
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    header = _csv_header(reader)
    row = 0
    while True:
        line = reader.line_num + 1
        try:
            record = next(reader, None)
        except csv.Error as exc:
            problem = f"Row {row + 1} (line {line}) is not valid: {exc}."
            raise _malformed("malformed_csv", problem, row=row + 1, line=line) from None
        if record is None:
            return
        if not record:
            continue
        row += 1
        if len(record) != len(header):
            problem = f"Row {row} (line {line}) has {len(record)} fields, not {len(header)}."
            raise _malformed("malformed_csv", problem, row=row, line=line)
        yield dict(zip(header, record)), line


def _csv_header(reader: Iterator[list[str]]) -> list[str]:
    """Read the header record, skipping blank lines, and check its names are unique."""
    try:
        header = next((record for record in reader if record), None)
    except csv.Error as exc:
        raise _malformed("malformed_csv", f"The header line is not valid: {exc}.") from None
    if header is None:
        raise DataFileError("empty_file", "The file is empty; upload a header line and data rows.")
    names = [name.strip() for name in header]
    _check_unique(names, "malformed_csv")
    return names


def _malformed(code: str, problem: str, **details: Any) -> DataFileError:
    """Build the error for a file that cannot be parsed, with how to fix it."""
    return DataFileError(code, f"{problem} {_FIX_HINTS[code]}", details)


def _jsonl_rows(lines: Iterable[str]) -> Iterator[tuple[Row, int]]:
    """Yield each non-blank line parsed as a JSON object, with its line number."""
    row = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        row += 1
        try:
            value = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            problem = f"is not valid JSON ({exc.msg}, column {exc.colno})"
            raise _not_json(problem, row, number) from None
        if not isinstance(value, dict):
            raise _not_json(f"holds a JSON {type(value).__name__}, not an object", row, number)
        yield value, number


def _not_json(problem: str, row: int, line: int) -> DataFileError:
    """Build the error for a JSON Lines line that is not one JSON object."""
    return _malformed("malformed_json", f"Line {line} (row {row}) {problem}.", row=row, line=line)


def _conll_rows(lines: Iterable[str]) -> Iterator[tuple[Row, int]]:
    """Yield each sentence of a CoNLL column file as {"tokens": [...], "tags": [...]}, with its first line.

    The token is the first field of a line and the tag the last (CoNLL-2003's middle columns are
    ignored); a blank or whitespace-only line ends a sentence; `-DOCSTART-` lines are skipped.
    """
    tokens: list[str] = []
    tags: list[str] = []
    first = 0
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            if tokens:
                yield {"tokens": tokens, "tags": tags}, first
            tokens, tags = [], []
            continue
        if fields[0] == CONLL_DOCSTART:
            continue
        if len(fields) < 2:
            problem = f"Line {number} holds one field ({fields[0]!r}), not a token and its tag."
            raise _malformed("malformed_conll", problem, line=number)
        if not tokens:
            first = number
        tokens.append(fields[0])
        tags.append(fields[-1])
    if tokens:
        yield {"tokens": tokens, "tags": tags}, first


def _plain_text_rows(lines: Iterable[str]) -> Iterator[tuple[Row, int]]:
    """Yield each document of a plain-text file as {"text": ...}, with its first line.

    Blank (or whitespace-only) lines separate documents, and the lines of one are joined with a
    newline; a file with no blank line between its lines holds one document per line. Until the first
    separating blank line the lines wait in a spooled file (on disk past a few MB), so a large file of
    one document per line is never held in memory.
    """
    spool = tempfile.SpooledTemporaryFile(max_size=TEXT_SPOOL_BYTES, mode="w+", encoding="utf-8", newline="\n")
    first, paragraphs, blank_after = 0, False, False
    with spool:
        for number, line in enumerate(lines, 1):
            text = line.rstrip("\r\n")
            if not text.strip():
                blank_after = first > 0
                continue
            if blank_after:  # a blank line between two texts: documents are paragraphs
                paragraphs, blank_after = True, False
                yield {"text": _spooled_paragraph(spool)}, first
                first = 0
            first = first or number
            spool.write(text + "\n")
        if paragraphs:
            if first:
                yield {"text": _spooled_paragraph(spool)}, first
            return
        spool.seek(0)
        for offset, text in enumerate(spool):
            yield {"text": text.rstrip("\n")}, first + offset


def _spooled_paragraph(spool) -> str:
    """Return the spooled lines as one text and empty the spool."""
    spool.seek(0)
    text = spool.read().rstrip("\n")
    spool.seek(0)
    spool.truncate()
    return text


def _squad_rows(reader: _HashingReader) -> Iterator[tuple[Row, None]]:
    """Yield one row per question of a SQuAD v1.1 document: id, title, question, context, answers."""
    raw = reader.read()
    try:
        document = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise _BadBytes(raw[: exc.start].count(b"\n") + 1, exc.start) from None
    except json.JSONDecodeError as exc:
        raise DataFileError("malformed_squad", f"The file is not valid JSON ({exc.msg}, line {exc.lineno}); a SQuAD "
                            'file is one JSON document {"data": [{"title", "paragraphs": [...]}]}.', {"line": exc.lineno})
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise DataFileError("malformed_squad", 'A SQuAD file holds {"data": [...]}, a list of articles with '
                            "their paragraphs and questions; upload JSON Lines for one question per line.")
    for article in document["data"]:
        for paragraph in article.get("paragraphs", []) if isinstance(article, dict) else []:
            for qa in paragraph.get("qas", []):
                yield {"id": qa.get("id"), "title": article.get("title"), "question": qa.get("question"),
                       "context": paragraph.get("context"), "answers": qa.get("answers", [])}, None


def _parallel_rows(sources: Iterator[str], targets: Iterator[str], columns: list[str]) -> Iterator[tuple[Row, int]]:
    """Yield {source column: line, target column: line} for each pair of lines of two parallel files."""
    number = 0
    for number, (source, target) in enumerate(itertools.zip_longest(sources, targets), 1):
        if source is None or target is None:
            longer, shorter = ("target", "source") if source is None else ("source", "target")
            raise DataFileError(
                "parallel_mismatch",
                f"The {longer} file has more lines than the {shorter} file: line {number} has no partner. "
                "Parallel files hold one sentence per line, line N of one translating line N of the other.",
                {"line": number},
            )
        yield {columns[0]: source.rstrip("\r\n"), columns[1]: target.rstrip("\r\n")}, number


def _parquet_rows(reader: _HashingReader, src: BinaryIO) -> Iterator[tuple[Row, None]]:
    """Yield each Parquet row as a dict of Python values, batch by batch."""
    import pyarrow
    import pyarrow.parquet as pq

    data = _hashed_seekable(reader, src)
    try:
        try:
            parquet = pq.ParquetFile(data)
        except (pyarrow.ArrowException, OSError) as exc:
            problem = f"The file is not a readable Parquet file ({exc})."
            raise _malformed("malformed_parquet", problem) from None
        _check_unique(parquet.schema_arrow.names, "malformed_parquet")
        row = 0
        try:
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                for record in batch.to_pylist():
                    row += 1
                    yield record, None
        except (pyarrow.ArrowException, OSError) as exc:
            problem = f"Rows from {row + 1} on cannot be read ({exc})."
            raise _malformed("malformed_parquet", problem, row=row + 1) from None
    finally:
        if data is not src:
            data.close()


def _hashed_seekable(reader: _HashingReader, src: BinaryIO) -> BinaryIO:
    """Hash the whole upload and return a seekable file positioned at its start."""
    if src.seekable() and src.tell() == 0:
        while reader.read(COPY_CHUNK_BYTES):
            pass
        src.seek(0)
        data = src
    else:
        data = tempfile.TemporaryFile()
        while chunk := reader.read(COPY_CHUNK_BYTES):
            data.write(chunk)
        data.seek(0)
    if reader.bytes_read == 0:
        raise DataFileError("empty_file", "The file is empty; upload a Parquet file with rows.")
    return data


def _check_unique(names: list[str], code: str) -> None:
    """Refuse a header or schema that names a column twice."""
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise DataFileError(
            code,
            f"The columns {', '.join(map(repr, duplicates))} appear more than once; "
            "give every column a distinct name.",
            {"columns": duplicates},
        )


def check_columns(first: Row, mapping: dict[str, str | None]) -> None:
    """Refuse an upload whose first row lacks a mapped column (mapping: form field -> column)."""
    available = list(first)
    for role, name in mapping.items():
        if name is not None and name not in first:
            raise DataFileError(
                "missing_column",
                f"Column '{name}' ({role}) is not in the file. Available columns: "
                f"{', '.join(available) or '(none)'}. {_MAPPING_HINT}",
                {"column": name, "role": role, "available_columns": available},
            )


def cell_error(
    code: str, problem: str, row: int, line: int | None, column: str, **extra: Any
) -> DataFileError:
    """Build the error for one cell, naming its row (and line, where the file has lines)."""
    where = f"Row {row}" if line is None or line == row else f"Row {row} (line {line})"
    details: dict[str, Any] = {"row": row, "column": column, **extra}
    if line is not None:
        details["line"] = line
    return DataFileError(code, f"{where}: column '{column}' {problem}", details)


def row_text(raw: Row, row: int, line: int | None, column: str, *, required: bool) -> str:
    """Return the row's text, refusing a structured value, and a blank one where `required`.

    Training data needs every text; a blank row in data to classify is kept and reported by the
    batch job in its error file, so one bad row never rejects a 200,000-row upload.
    """
    value = raw.get(column)
    if isinstance(value, (list, tuple, dict)):
        problem = "holds a list or object; the text must be a single string."
        raise cell_error("bad_text", problem, row, line, column)
    text = to_text(value)
    if (text is None or not text.strip()) and not required:
        return text or ""
    if text is None or not text.strip():
        problem = "is missing or blank; fill in the text or remove the row."
        raise cell_error("empty_text", problem, row, line, column)
    return text


def _row_label(raw: Row, row: int, line: int | None, column: str, max_chars: int) -> str:
    """Return the row's label, stripped, refusing a missing, structured or overlong value."""
    value = raw.get(column)
    if isinstance(value, (list, tuple, dict)):
        problem = ("holds a list or object; give one label per row, as a string or number (for several labels "
                   "per row, upload with task=multi-label-classification).")
        raise cell_error("bad_label", problem, row, line, column)
    label = (to_text(value) or "").strip()
    if not label:
        problem = "has no label; label every row, or upload without a label_column."
        raise cell_error("bad_label", problem, row, line, column)
    if len(label) > max_chars:
        problem = (
            f"holds a {len(label)}-character label; labels may have at most {max_chars} "
            f"characters. Is label_column pointing at the text? {_MAPPING_HINT}"
        )
        raise cell_error("bad_label", problem, row, line, column, max_chars=max_chars)
    return label


def to_text(value: Any) -> str | None:
    """Convert a source value to its canonical string; None stays None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    if isinstance(value, bytes):
        # Parquet binary columns are rare; keep them readable rather than fail the upload.
        return value.decode("utf-8", errors="replace")
    return str(value)


def _canonical_line(raw: Row, columns: dict[str, None], checked: dict[str, str]) -> str:
    """Return one canonical JSON line: every column seen so far, values as strings or null."""
    out: dict[str, str | None] = dict.fromkeys(columns)
    for key, value in raw.items():
        out[key] = to_text(value)
    out.update(checked)
    return json.dumps(out, ensure_ascii=False) + "\n"


def length_summary(histogram: Counter[int]) -> dict[str, Any]:
    """Return min, nearest-rank percentiles, max and mean of a length histogram, and its counts in
    doubling bins (`edges` [0, 8, 16, 32, ...] up to past the longest; bin i holds edges[i] <= length < edges[i+1])."""
    ordered = sorted(histogram.items())
    total = sum(histogram.values())
    summary: dict[str, float | int] = {"min": ordered[0][0]}
    for name, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        rank, seen = max(1, math.ceil(fraction * total)), 0
        for length, count in ordered:
            seen += count
            if seen >= rank:
                summary[name] = length
                break
    summary["max"] = ordered[-1][0]
    summary["mean"] = round(sum(length * count for length, count in ordered) / total, 2)
    edges = [0, 8]
    while edges[-1] <= summary["max"]:
        edges.append(edges[-1] * 2)
    counts = [0] * (len(edges) - 1)
    for length, count in ordered:
        counts[bisect.bisect_right(edges, length) - 1] += count
    summary["histogram"] = {"edges": edges, "counts": counts}
    return summary
