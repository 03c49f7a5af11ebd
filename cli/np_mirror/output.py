"""One output sink: data on stdout as a table, CSV or JSON; hints and progress on stderr."""

from __future__ import annotations

import csv
import enum
import io
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson


class Format(str, enum.Enum):
    table = "table"
    csv = "csv"
    json = "json"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    return str(value)


def rows_out(rows: Sequence[Mapping[str, Any]], fmt: Format, columns: Sequence[str] | None = None, title: str | None = None) -> None:
    cols = list(columns) if columns is not None else (list(rows[0].keys()) if rows else [])
    if fmt is Format.json:
        sys.stdout.write(
            orjson.dumps([{c: r.get(c) for c in cols} for r in rows], option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode() + "\n"
        )
        return
    if fmt is Format.csv:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(cols)
        for r in rows:
            writer.writerow([_cell(r.get(c)) for c in cols])
        sys.stdout.write(buf.getvalue())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for c in cols:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*[_cell(r.get(c)) for c in cols])
    Console().print(table)


def json_out(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")


def lines_out(lines: Iterable[str]) -> None:
    for line in lines:
        sys.stdout.write(line + "\n")


def hint(message: str) -> None:
    print(message, file=sys.stderr)
