"""One output sink: data on stdout as a table, CSV or JSON; hints and progress on stderr.

Tables are plain text, one line per row, so they read the same in a terminal, a pipe or a
log: ids and timestamps are never cut, numbers are right-aligned with thousands separators,
and when the rows are wider than the screen (100 columns when stdout is not a terminal, or
$COLUMNS) the free text gives way first: explanations are cut at the end, paths and hashes in
the middle, so the part that tells them apart stays. CSV and JSON carry every value in full.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import enum
import io
import math
import re
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from npclient.tokens import visible_token

#: Width of a table when stdout is not a terminal and $COLUMNS is unset.
PIPE_WIDTH = 100
GAP = "  "
ELLIPSIS = "\u2026"


class Format(str, enum.Enum):
    table = "table"
    csv = "csv"
    json = "json"


def width() -> int:
    """Columns to fit: $COLUMNS, else the terminal's, else PIPE_WIDTH."""
    return max(20, shutil.get_terminal_size((PIPE_WIDTH, 24)).columns)


# ---- cells -----------------------------------------------------------------------------------

#: Integer columns that name something (a feature index, a rank): no thousands separators, so
#: `gpt2-small/0-res-jb/24576` can be typed from what is shown.
_ID_NUMBERS = {"index", "rank", "label", "pid", "seq", "batch", "layers", "run_id", "match_index"}
_ID_NAMES = {"source", "source_id", "model", "model_id", "set", "set_name", "feature", "feature_id", "feature_key",
             "id", "run", "host"}
_HASH_NAMES = {"sha256", "sha", "hash", "etag", "digest"}
_PATH_NAMES = {"path", "from", "file", "dir", "url", "key"}
_ID_VALUE = re.compile(r"^[\w.+-]+/[\w.+-]+(/\d+)?$")
_HASH_VALUE = re.compile(r"^[0-9a-f]{24,}$")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, decimal.Decimal)) and not isinstance(value, bool)


def _number(value: Any, plain: bool) -> str:
    if isinstance(value, (int, decimal.Decimal)):  # DuckDB's DECIMAL comes back as Decimal: kept exact
        return str(value) if plain else f"{value:,}"
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value == int(value) and abs(value) < 1e15 and plain:
        return str(int(value))
    if abs(value) >= 1e15 or (value != 0 and abs(value) < 1e-4):
        return f"{value:.3e}"
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    return f"{value:.4g}"


def _stamp(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M")  # to the minute in a table; CSV and JSON keep it all
    return value.isoformat()


def _cell(value: Any) -> str:
    """A value as CSV writes it: in full, floats to 4 significant digits."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    return str(value)


def _kind(name: str, values: list[Any]) -> str:
    """How a column is drawn: `number`, `fixed` (ids, timestamps: never cut), `hash`, `path`
    (cut in the middle) or `text` (cut at the end)."""
    present = [v for v in values if v is not None and v != ""]
    lowered = name.lower()
    if not present:
        return "fixed"  # nothing to cut: as wide as its header
    numbers = [v for v in present if _is_number(v)]
    # a count column may say "unknown" where the size is not known: still a number column
    if numbers and all(_is_number(v) or (isinstance(v, str) and len(v) <= 10) for v in present):
        return "number"
    if present and all(isinstance(v, (dt.date, dt.time)) for v in present):
        return "fixed"
    if lowered.endswith("_at") or lowered in {"last_fetched", "first_seen", "last_seen"}:
        return "fixed"
    if lowered in _HASH_NAMES or (present and all(isinstance(v, str) and _HASH_VALUE.match(v) for v in present)):
        return "hash"
    if lowered in _ID_NAMES or lowered.endswith("_id"):
        return "fixed"
    if present and all(isinstance(v, str) and _ID_VALUE.match(v) for v in present):
        return "fixed"
    if lowered in _PATH_NAMES or lowered.endswith(("_path", "_dir", "_file", "_url")):
        return "path"
    return "text"


def _shown(value: Any, kind: str, name: str) -> str:
    if value is None:
        return ""
    if kind == "number" and _is_number(value):
        return _number(value, plain=name.lower() in _ID_NUMBERS or name.lower().endswith("_index"))
    if isinstance(value, (dt.date, dt.time)):
        return _stamp(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return visible_token(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode())
    return visible_token(value)


# ---- fitting ---------------------------------------------------------------------------------


def cells(text: str) -> int:
    """Terminal columns `text` takes (wide characters count two)."""
    if text.isascii():
        return len(text)
    from rich.cells import cell_len

    return cell_len(text)


def _take(text: str, room: int, from_end: bool = False) -> str:
    """The longest start (or end) of `text` that fits `room` columns."""
    if room <= 0:
        return ""
    out, used = [], 0
    for ch in (reversed(text) if from_end else text):
        w = cells(ch)
        if used + w > room:
            break
        out.append(ch)
        used += w
    return "".join(reversed(out) if from_end else out)


def shorten(text: str, room: int, middle: bool = False) -> str:
    """`text` cut to `room` columns with an ellipsis: at the end, or in the middle (paths,
    hashes: their start and their end tell them apart)."""
    if cells(text) <= room:
        return text
    if room <= 1:
        return ELLIPSIS[:room]
    if middle:
        left = room // 2
        return _take(text, left) + ELLIPSIS + _take(text, room - 1 - left, from_end=True)
    return _take(text, room - 1) + ELLIPSIS


def pad(text: str, room: int, right: bool = False) -> str:
    fill = " " * max(0, room - cells(text))
    return fill + text if right else text + fill


#: Narrowest a cut column gets; hashes keep 13 columns (6 + … + 6) unless the line needs less.
_MIN_CUT = {"text": 12, "path": 16, "hash": 9}
_HASH_ROOM = 13


def _fit_widths(natural: list[int], kinds: list[str], headers: list[int], total: int) -> list[int]:
    """Column widths within `total` columns: fixed and number columns keep theirs; the widest
    cuttable column gives way first, down to its floor (`_MIN_CUT`, or its header), then, if
    the line is still too long, down to a few columns each."""
    widths = [min(n, _HASH_ROOM) if k == "hash" else n for n, k in zip(natural, kinds)]
    room = total - len(GAP) * (len(widths) - 1)
    cuttable = [i for i, k in enumerate(kinds) if k in _MIN_CUT]
    for floor in ({i: max(_MIN_CUT[kinds[i]], headers[i]) for i in cuttable}, {i: 4 for i in cuttable}):
        while sum(widths) > room:
            candidates = [i for i in cuttable if widths[i] > floor[i]]
            if not candidates:
                break
            widest = max(candidates, key=lambda i: widths[i])
            runner_up = max((widths[i] for i in candidates if i != widest), default=0)
            target = max(floor[widest], runner_up, widths[widest] - (sum(widths) - room))
            widths[widest] = min(target, widths[widest] - 1)
    return widths


def table_lines(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], total: int | None = None) -> list[str]:
    """`rows` as aligned plain-text lines (header, rule, one line per row) within `total` columns."""
    total = width() if total is None else total
    cols = list(columns)
    kinds = [_kind(c, [r.get(c) for r in rows]) for c in cols]
    body = [[_shown(r.get(c), k, c) for c, k in zip(cols, kinds)] for r in rows]
    headers = [cells(c) for c in cols]
    natural = [max([headers[j], *(cells(line[j]) for line in body)]) for j in range(len(cols))]
    widths = _fit_widths(natural, kinds, headers, total)

    def line(values: list[str], header: bool = False) -> str:
        parts = []
        for j, text in enumerate(values):
            if cells(text) > widths[j]:
                text = shorten(text, widths[j], middle=kinds[j] in ("path", "hash") and not header)
            parts.append(pad(text, widths[j], right=kinds[j] == "number"))
        return GAP.join(parts).rstrip()

    out = [line(cols, header=True), GAP.join("-" * w for w in widths)]
    out.extend(line(values) for values in body)
    return out


# ---- sinks -----------------------------------------------------------------------------------


def rows_out(rows: Sequence[Mapping[str, Any]], fmt: Format, columns: Sequence[str] | None = None, title: str | None = None) -> None:
    """Print `rows` (only `columns`, in that order; default: the first row's keys) as `fmt`."""
    cols = list(columns) if columns is not None else (list(rows[0].keys()) if rows else [])
    if fmt is Format.json:
        sys.stdout.write(
            orjson.dumps([{c: r.get(c) for c in cols} for r in rows], default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode() + "\n"
        )
        return
    if fmt is Format.csv:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(cols)
        for r in rows:
            writer.writerow([_cell(r.get(c)) for c in cols])
        sys.stdout.write(buf.getvalue())
        return
    lines = ([title] if title else []) + table_lines(rows, cols)
    sys.stdout.write("\n".join(lines) + "\n")


def _json_default(value: Any) -> Any:
    """What orjson cannot write itself: DECIMAL as a number, anything else (UUID, bytes...) as text."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return str(value)


def json_out(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, default=_json_default, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")


def lines_out(lines: Iterable[str]) -> None:
    for line in lines:
        sys.stdout.write(line + "\n")


def hint(message: str) -> None:
    print(message, file=sys.stderr)
