"""Keyword search over stored explanations: ONE ranking, used by `Mirror.search` and by
`np-mirror serve`'s `POST /api/explanation/search`, so the notebook and the local Neuronpedia
never disagree on what comes first.

Offline on purpose: no embedding model, no DuckDB extension. Candidates are descriptions that
contain a word of the query (`ILIKE`, the words of `wire.words`), or that match the query as a
case-insensitive RE2 regular expression with `regex`. The score is the cosine of the two word
sets (as the emulator ranks), plus 1 when the whole query appears verbatim; ties go by the order
of the sources asked for, then feature index, then explanation rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import pyarrow as pa

from .. import wire
from .database import Database

__all__ = ["ExplanationHit", "rank_explanations", "search_table", "SEARCH_SCHEMA", "MAX_QUERY_WORDS"]

#: Only the first words (sorted) of a long query become ILIKE candidates: a bound on the SQL.
MAX_QUERY_WORDS = 16


@dataclass(frozen=True)
class ExplanationHit:
    """One explanation that matched, with its score (higher is better)."""

    score: float
    model_id: str
    source: str
    index: int
    rank: int
    description: Optional[str]
    explanation_model_name: Optional[str]
    type_name: Optional[str]


def db_text(text: str) -> str:
    """`text` as DuckDB can take it: a lone surrogate (valid in a JSON string, not in UTF-8) is `?`."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _like_pattern(word: str) -> str:
    return "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def rank_explanations(db: Database, query: str, *, model_id: Optional[str] = None,
                      sources: Optional[Sequence[str]] = None, regex: bool = False) -> list[ExplanationHit]:
    """Every explanation matching `query`, best first (see the module's docstring for the rule).

    `model_id` None searches every model; `sources` None searches every source (ties then go
    by model, then source name), else only those, ties in the order given. An invalid regular
    expression raises `duckdb.Error` (the callers word it).
    """
    q = wire.words(query)
    where: list[str] = []
    params: list[Any] = []
    if model_id is not None:
        where.append("model_id = ?")
        params.append(db_text(model_id))
    order: dict[str, int] = {}
    if sources is not None:
        for n, layer in enumerate(sources):
            order.setdefault(layer, n)
        if not order:
            return []
        where.append("source IN (" + ", ".join("?" for _ in order) + ")")
        params.extend(db_text(s) for s in order)
    if regex:
        where.append("regexp_matches(description, ?, 'i')")
        params.append(db_text(query))
    else:
        terms = sorted(q)[:MAX_QUERY_WORDS]
        if not terms:
            return []
        where.append("(" + " OR ".join("description ILIKE ? ESCAPE '\\'" for _ in terms) + ")")
        params.extend(_like_pattern(t) for t in terms)
    sql = ("SELECT model_id, source, \"index\", rank, description, type_name, explanation_model_name "
           "FROM explanations WHERE " + " AND ".join(where))
    with db.connect() as cur:
        rows = cur.execute(sql, params).fetchall()
    if sources is None:  # no order asked for: by model, then source name
        for n, key in enumerate(sorted({(r[0], r[1]) for r in rows})):
            order.setdefault(f"{key[0]}\0{key[1]}", n)
    phrase = query.strip().lower()
    scored: list[tuple[float, int, int, int, ExplanationHit]] = []
    for model, source, index, rank, desc, type_name, explainer in rows:
        text = desc or ""
        ws = wire.words(text)
        common = len(q & ws)
        score = common / math.sqrt(len(q) * len(ws)) if common else 0.0
        if phrase and phrase in text.lower():
            score += 1.0
        if score <= 0 and not regex:
            continue
        place = order.get(source if sources is not None else f"{model}\0{source}", 0)
        scored.append((-score, place, index, rank,
                       ExplanationHit(score, model, source, index, rank, desc, explainer, type_name)))
    scored.sort(key=lambda h: h[:4])
    return [h[4] for h in scored]


#: `Mirror.search`'s columns: where each hit is, the explanation, and its score.
SEARCH_SCHEMA = pa.schema([
    ("model_id", pa.string()), ("source", pa.string()), ("index", pa.int64()), ("explanation_rank", pa.int32()),
    ("description", pa.string()), ("explanation_model_name", pa.string()), ("type_name", pa.string()),
    ("score", pa.float64()),
])


def search_table(hits: Sequence[ExplanationHit]) -> pa.Table:
    """Hits as Arrow, in their order (`SEARCH_SCHEMA`)."""
    return pa.table({
        "model_id": [h.model_id for h in hits], "source": [h.source for h in hits], "index": [h.index for h in hits],
        "explanation_rank": [h.rank for h in hits], "description": [h.description for h in hits],
        "explanation_model_name": [h.explanation_model_name for h in hits], "type_name": [h.type_name for h in hits],
        "score": [h.score for h in hits],
    }, schema=SEARCH_SCHEMA)
