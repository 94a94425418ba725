"""Streaming reads: records or column batches from a file of any size, in bounded memory.

* ``iter_json_array``: the elements of a top-level JSON array one at a time, parsed with
  ``json.JSONDecoder.raw_decode`` over a sliding text buffer read in 1 MiB chunks;
* ``iter_jsonl``: one JSON value per line;
* ``column_batches``: Arrow columns of a CSV (``pyarrow.csv.open_csv``), Parquet
  (``iter_batches``) or JSON/JSONL file, a batch at a time.

A file cut short (a JSON array without its end, a last JSONL line without its newline) yields
the whole records before the cut and a ``TraceWarning`` naming the byte where it was cut; with
no whole record before the cut it is an ``InputError``.  ``progress(done)`` is called with the
bytes read so far.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
import warnings
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from traces.errors import InputError, TraceWarning

CHUNK_BYTES = 1 << 20
BATCH_ROWS = 65_536
Progress = Callable[[int], None]


def sniff(path: Path) -> tuple[str, list[str]]:
    """(kind, keys): kind is parquet, json, jsonl or csv; keys are the Parquet columns, the CSV
    header, or the keys of the first JSON record."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    if not head.strip():
        raise InputError("empty file; expected a workload", source=str(path))
    if head.startswith(b"PAR1") or path.suffix.lower() == ".parquet":
        try:
            return "parquet", pq.read_schema(path).names
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"not a readable Parquet file ({exc})", source=str(path)) from None
    first, suffix = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1], path.suffix.lower()
    if first == b"[":
        try:
            record = next(iter_json_array(path), None)
        except InputError:
            record = None  # the reader will say what is wrong
        return "json", list(record) if isinstance(record, dict) else []
    if first == b"{" and suffix != ".json":
        with open(path, "rb") as handle:
            try:
                record = json.loads(handle.readline())
            except ValueError:
                record = None
        if isinstance(record, dict) or suffix == ".jsonl":
            return "jsonl", list(record) if isinstance(record, dict) else []
    if first == b"{" or suffix == ".json":
        return "json", []  # a JSON document that is not a list of records
    line = head.decode("utf-8-sig", errors="replace").splitlines()[0]
    return "csv", [cell.strip().strip('"') for cell in line.split(",")]


class _Text:
    """A sliding window of decoded text over a file: ``text[pos:]`` is what is left to parse."""

    def __init__(self, path: Path, progress: Progress | None):
        self.path, self.progress = path, progress
        self.handle = open(path, "rb")
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.text, self.pos, self.base, self.eof = "", 0, 0, False

    def more(self, at_least: int = 0) -> bool:
        """Drop the parsed text and append the next chunk; False at the end of the file."""
        if self.eof:
            return False
        self.base += len(self.text[: self.pos].encode())
        self.text, self.pos = self.text[self.pos :], 0
        start = self.handle.tell()
        raw = self.handle.read(max(CHUNK_BYTES, at_least))
        self.eof = not raw
        try:
            self.text += self.decoder.decode(raw, final=self.eof)
        except UnicodeDecodeError as exc:
            if not (self.eof and exc.reason == "unexpected end of data"):  # (else: cut inside a character)
                raise InputError(f"not UTF-8 text (byte {start + exc.start})", source=str(self.path)) from None
        if self.progress:
            self.progress(start + len(raw))
        return not self.eof

    def peek(self) -> str:
        """The next character that is not whitespace ('' at the end of the file)."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n\ufeff":
                self.pos += 1
            if self.pos < len(self.text) or not self.more():
                return self.text[self.pos : self.pos + 1]

    def size(self) -> int:
        return self.path.stat().st_size

    def byte(self, pos: int) -> int:
        """The byte offset in the file of text position ``pos``."""
        return self.base + len(self.text[:pos].encode())

    def close(self) -> None:
        self.handle.close()


def iter_json_array(path, progress: Progress | None = None, expected: str = "a JSON list of records"):
    """Yield the elements of the JSON array in ``path`` one at a time (see the module doc)."""
    buf, decode = _Text(Path(path), progress), json.JSONDecoder().raw_decode
    source = str(path)
    try:
        if buf.peek() != "[":
            raise InputError(f"expected {expected}", source=source)
        buf.pos += 1
        count = 0
        while True:
            char = buf.peek()
            if char == "]":
                return
            if count:
                if not char:
                    return _truncated(source, buf.size(), count, buf.size())
                if char != ",":
                    at = buf.byte(buf.pos)
                    raise InputError(
                        f"invalid JSON at byte {at}: Expecting ',' delimiter", source=source, row=count + 1
                    )
                buf.pos += 1
                char = buf.peek()
            start = buf.byte(buf.pos)
            while True:
                try:
                    value, end = decode(buf.text, buf.pos)
                except json.JSONDecodeError as exc:
                    tail, unterminated = buf.text[exc.pos :], exc.msg.startswith("Unterminated string")
                    if not buf.eof and (unterminated or len(tail) < 64):
                        buf.more(at_least=len(buf.text))  # the record may go on in the next chunk
                        continue
                    if buf.eof and (unterminated or _partial_token(tail)):
                        return _truncated(source, buf.size(), count, start)
                    raise InputError(
                        f"invalid JSON at byte {buf.byte(exc.pos)}: {exc.msg}", source=source, row=count + 1
                    ) from None
                if end == len(buf.text) and not buf.eof:
                    buf.more(at_least=len(buf.text))  # a number or literal may go on in the next chunk
                    continue
                break
            buf.pos = end
            count += 1
            yield value
    finally:
        buf.close()


def _partial_token(tail: str) -> bool:
    """Whether the text after a decoding error can be a value cut short (``tr``, ``-1.``, ``\\u00``)."""
    return len(tail) < 16 and not re.search(r'[\s,:"\[\]{}]', tail)


def _truncated(source: str, size: int, whole: int, start: int) -> None:
    """A file cut at byte ``size`` after ``whole`` whole records: warn, or fail if there are none."""
    if not whole:
        raise InputError(
            f"truncated JSON at byte {size}: the file ends before the end of its first record", source=source
        )
    warnings.warn(
        f"{source}: truncated JSON at byte {size}: the file ends inside record {whole + 1} "
        f"(from byte {start}); kept the {whole} whole records before the cut",
        TraceWarning,
        stacklevel=3,
    )


def iter_jsonl(path, progress: Progress | None = None) -> Iterator[tuple[int, object]]:
    """Yield (line number, value) for each non-blank line of a JSON Lines file."""
    source, offset, count = str(path), 0, 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
                if not line.endswith(b"\n"):
                    return _truncated(source, offset, count, start)
                where = f"byte {start + exc.pos}" if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
                reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                raise InputError(f"invalid JSON ({where}): {reason}", source=source, row=number) from None
            count += 1
            if progress and count % 8192 == 0:
                progress(offset)
            yield number, value
    if progress:
        progress(offset)


def iter_records(path: Path, kind: str, columns=None, progress: Progress | None = None, expected: str = ""):
    """Yield (row, record) from a JSON array, JSON Lines or Parquet file (``columns`` of Parquet)."""
    if kind == "json":
        yield from enumerate(iter_json_array(path, progress, expected or "a JSON list of records"), start=1)
    elif kind == "jsonl":
        yield from iter_jsonl(path, progress)
    elif kind == "parquet":
        row = 0
        for batch in _parquet_batches(path, columns, progress, rows=4096):
            for record in batch.to_pylist():
                row += 1
                yield row, record
    else:
        raise InputError(f"expected JSON, JSON Lines or Parquet records, not {kind.upper()}", source=str(path))


def column_batches(path: Path, kind: str, columns: list[str], header: list[str], progress=None):
    """Yield {column: values} batches (Arrow arrays, or lists for JSON) of ``columns`` of a file."""
    if kind == "parquet":
        for batch in _parquet_batches(path, columns, progress, rows=BATCH_ROWS):
            yield {name: batch.column(name) for name in columns}
    elif kind == "csv":
        yield from _csv_batches(path, columns, header, progress)
    else:
        records = iter_records(path, kind, progress=progress)
        while batch := [record for _, record in islice(records, BATCH_ROWS)]:
            for k, record in enumerate(batch):
                if not isinstance(record, dict):
                    raise InputError("expected a JSON object", source=str(path), row=k + 1)
            yield {name: [record.get(name) for record in batch] for name in columns}


def _parquet_batches(path: Path, columns, progress, rows: int):
    try:
        file = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering reads far ahead: memory grows
        total, done, size = file.metadata.num_rows, 0, path.stat().st_size
        for batch in file.iter_batches(batch_size=rows, columns=columns):
            done += batch.num_rows
            if progress:
                progress(size * done // max(total, 1))
            yield batch
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"not a readable Parquet file ({exc})", source=str(path)) from None


def _csv_batches(path: Path, columns: list[str], header: list[str], progress):
    read = pcsv.ReadOptions(column_names=header, skip_rows=1, block_size=CHUNK_BYTES, use_threads=False)
    parse = pcsv.ParseOptions(newlines_in_values=True)
    convert = pcsv.ConvertOptions(
        include_columns=columns, column_types={c: pa.string() for c in columns}, strings_can_be_null=False
    )
    with open(path, "rb") as handle:
        try:
            for batch in pcsv.open_csv(handle, read_options=read, parse_options=parse, convert_options=convert):
                if progress:
                    progress(handle.tell())
                yield {name: batch.column(name) for name in columns}
        except pa.ArrowInvalid as exc:
            if "UTF8" in str(exc):
                raise InputError("not UTF-8 text", source=str(path)) from None
            raise InputError(f"malformed CSV: {exc}", source=str(path), row=_ragged_row(path, len(header))) from None


def _ragged_row(path: Path, width: int) -> int | None:
    """The 1-based data row whose number of cells differs from the header's."""
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        for row, cells in enumerate(csv.reader(handle)):
            if row and cells and len(cells) != width:
                return row
    return None
