"""Keyword search over stored explanations: ONE ranking, used by `Mirror.search` and by
`np-mirror serve`'s `POST /api/explanation/search` and source page, so the notebook and the
local Neuronpedia never disagree on what comes first.

Offline on purpose: no embedding model, no DuckDB extension. Candidates are descriptions that
contain a word of the query (`ILIKE`, the words of `wire.words`), or that match the query as a
case-insensitive RE2 regular expression with `regex`. The score is the cosine of the two word
sets (as the emulator ranks), plus 1 when the whole query appears verbatim; ties go by the order
of the sources asked for, then feature index, then explanation rank.

Callers want a page and a count, never all 65,536 hits of a common word in a 1M-feature source:
so the score, the order and the count are computed in DuckDB and only the page comes back. That
needs each description's number of distinct words, stored at write time in `explanations.n_words`
(`store/words.py`: NULL unless the text is ASCII, where DuckDB's splitting and Python's agree).
Rows with a NULL `n_words` (non-ASCII descriptions, rows a writer left without it) are scored
here in Python by the same rule and merged in: one ranking, computed where it is cheapest.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import duckdb
import pyarrow as pa

from .. import wire
from .database import Database

__all__ = ["ExplanationHit", "SearchPage", "search_page", "search_table", "SEARCH_SCHEMA",
           "MAX_QUERY_WORDS"]

#: Only the first words (sorted) of a long query become ILIKE candidates: a bound on the SQL.
MAX_QUERY_WORDS = 16
#: Up to this many query words, each is matched by its own RE2 pattern (cheaper than splitting
#: every candidate); a longer query splits each candidate once.
_WORD_PATTERNS_UP_TO = 8


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


@dataclass(frozen=True)
class SearchPage:
    """The hits asked for, best first; how many matched in all; the first features hit (when asked)."""

    hits: list[ExplanationHit]
    total: int
    features: list[ExplanationHit]


def db_text(text: str) -> str:
    """`text` as DuckDB can take it: a lone surrogate (valid in a JSON string, not in UTF-8) is `?`."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _like_pattern(word: str) -> str:
    return "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class _Query:
    """One search's SQL pieces: the candidate rows, the score, and the order, with parameters."""

    def __init__(self, query: str, model_id: Optional[str], sources: Optional[Sequence[str]], regex: bool) -> None:
        self.q = wire.words(query)
        self.regex = regex
        self.phrase = query.strip().lower()
        self.by_source: Optional[dict[str, int]] = None
        self.where: list[str] = []
        self.params: list[Any] = []
        self.empty = False
        if model_id is not None:
            self.where.append("model_id = ?")
            self.params.append(db_text(model_id))
        if sources is not None:
            self.by_source = {}
            for n, layer in enumerate(sources):
                self.by_source.setdefault(layer, n)
            if not self.by_source:
                self.empty = True
            self.where.append("source IN (" + ", ".join("?" for _ in self.by_source) + ")")
            self.params.extend(db_text(s) for s in self.by_source)
        if regex:
            self.where.append("regexp_matches(description, ?, 'i')")
            self.params.append(db_text(query))
        else:
            terms = sorted(self.q)[:MAX_QUERY_WORDS]
            if not terms:
                self.empty = True
            self.where.append("(" + " OR ".join("description ILIKE ? ESCAPE '\\'" for _ in terms) + ")")
            self.params.extend(_like_pattern(t) for t in terms)

    # ---- the SQL path (n_words known) ------------------------------------------------------
    def score_sql(self) -> tuple[str, list[Any]]:
        """The score of a row whose `n_words` is known, exactly as `score` computes it."""
        params: list[Any] = []
        if not self.q:
            common = "0"
        elif len(self.q) <= _WORD_PATTERNS_UP_TO:  # (?i) on ASCII text is lower() without the copy
            common = " + ".join("CAST(regexp_matches(description, ?) AS INTEGER)" for _ in self.q)
            params.extend(f"(?i)(?:^|[^a-z0-9]){w}(?:[^a-z0-9]|$)" for w in sorted(self.q))  # words are [a-z0-9]+
        else:
            common = "len(list_intersect(regexp_extract_all(lower(description), '[a-z0-9]+'), ?::VARCHAR[]))"
            params.append(sorted(self.q))
        cosine = f"CASE WHEN n_words > 0 THEN ({common}) / sqrt(? * n_words) ELSE 0.0 END" if self.q else "0.0"
        if self.q:
            params.append(len(self.q))
        if self.phrase and self.phrase.isascii():  # on ASCII text, ILIKE is `in text.lower()`
            bonus = "CASE WHEN description ILIKE ? ESCAPE '\\' THEN 1.0 ELSE 0.0 END"
            params.append(_like_pattern(self.phrase))
        elif self.phrase and self.phrase == db_text(self.phrase):
            bonus = "CASE WHEN contains(lower(description), ?) THEN 1.0 ELSE 0.0 END"
            params.append(self.phrase)
        else:  # nothing to find verbatim (empty, or text DuckDB cannot hold)
            bonus = "0.0"
        return f"({cosine}) + ({bonus})", params

    def place_sql(self) -> tuple[str, list[Any]]:
        """The tie-break after the score: the order of the sources asked for, else the source name
        (after the model: see `order`)."""
        if self.by_source is None:
            return "source", []
        cases = " ".join("WHEN ? THEN ?" for _ in self.by_source)
        params: list[Any] = []
        for layer, n in self.by_source.items():
            params += [db_text(layer), n]
        return f"CASE source {cases} END", params

    @property
    def key_sql(self) -> str:
        """`key` in SQL (ascending), over the columns of `_sql_ranked`."""
        if self.by_source is None:
            return '-score, model_id, place, "index", rank'
        return '-score, place, "index", rank, model_id'

    # ---- the Python path (n_words NULL) ------------------------------------------------------
    def score(self, description: Optional[str]) -> float:
        text = description or ""
        ws = wire.words(text)
        common = len(self.q & ws)
        value = common / math.sqrt(len(self.q) * len(ws)) if common else 0.0
        if self.phrase and self.phrase in text.lower():
            value += 1.0
        return value

    def key(self, hit: ExplanationHit) -> tuple:
        place: Any = (self.by_source.get(hit.source, 0) if self.by_source is not None else (hit.model_id, hit.source))
        return (-hit.score, place, hit.index, hit.rank, hit.model_id)


_HIT_COLUMNS = 'model_id, source, "index", rank, description, explanation_model_name, type_name'


def _hit(row: tuple, score: float) -> ExplanationHit:
    model, source, index, rank, desc, explainer, type_name = row
    return ExplanationHit(float(score), model, source, int(index), int(rank), desc, explainer, type_name)


def _python_hits(cur: Any, qy: _Query) -> list[ExplanationHit]:
    """Every matching row the SQL path cannot score (`n_words` NULL), scored and sorted here."""
    rows = cur.execute(f"SELECT {_HIT_COLUMNS} FROM explanations WHERE {' AND '.join(qy.where)} AND n_words IS NULL",
                       qy.params).fetchall()
    hits = []
    for row in rows:
        score = qy.score(row[4])
        if score > 0 or qy.regex:
            hits.append(_hit(row, score))
    hits.sort(key=qy.key)
    return hits


def _sql_ranked(cur: Any, qy: _Query, wanted: int, features: int) -> tuple[list[ExplanationHit], list[ExplanationHit], int]:
    """For the rows whose `n_words` is known: the best `wanted` hits, the best hit of each of the
    first `features` features, and how many rows matched in all, from one scan of the candidates
    (scored once, kept for the three answers: a top-N, a count, a top-N of per-feature minima)."""
    score, score_params = qy.score_sql()
    place, place_params = qy.place_sql()
    keep = "" if qy.regex else "WHERE score > 0"
    key = qy.key_sql
    inner = (f'SELECT rowid AS r, model_id, "index", rank, {place} AS place, {score} AS score '
             f"FROM explanations WHERE {' AND '.join(qy.where)} AND n_words IS NOT NULL")
    parts = [f"(SELECT 0 AS part, r, score FROM s ORDER BY {key} LIMIT ?)",
             "(SELECT 1, NULL, count(*) FROM s)"]
    limits = [wanted]
    if features > 0:  # each feature's best row (the least key), the features in that order
        parts.append(f"(SELECT 2, r, score FROM (SELECT arg_min(r, k) AS r, arg_min(score, k) AS score, min(k) AS k "
                     f'FROM (SELECT r, score, model_id, "index", ({key}) AS k FROM s) GROUP BY model_id, "index" '
                     "ORDER BY k LIMIT ?))")
        limits.append(features)
    sql = f"WITH h AS MATERIALIZED ({inner}), s AS (SELECT * FROM h {keep}) " + " UNION ALL ".join(parts)
    rows = cur.execute(sql, [*place_params, *score_params, *qy.params, *limits]).fetchall()
    total = next(int(score) for part, _, score in rows if part == 1)
    wanted_rows = [(part, r, score) for part, r, score in rows if part != 1]
    if not wanted_rows:
        return [], [], total
    details = {row[0]: row[1:] for row in cur.execute(
        f"SELECT rowid, {_HIT_COLUMNS} FROM explanations WHERE rowid IN (SELECT unnest(?::BIGINT[]))",
        [sorted({r for _, r, _ in wanted_rows})]).fetchall()}
    page = sorted((_hit(details[r], s) for part, r, s in wanted_rows if part == 0), key=qy.key)
    firsts = sorted((_hit(details[r], s) for part, r, s in wanted_rows if part == 2), key=qy.key)
    return page, firsts, total


def _first_per_feature(hits: Sequence[ExplanationHit], limit: int) -> list[ExplanationHit]:
    seen: set[tuple[str, int]] = set()
    out = []
    for hit in hits:
        if (hit.model_id, hit.index) not in seen:
            seen.add((hit.model_id, hit.index))
            out.append(hit)
            if len(out) >= limit:
                break
    return out


def search_page(db: Database, query: str, *, model_id: Optional[str] = None, sources: Optional[Sequence[str]] = None,
                regex: bool = False, offset: int = 0, limit: Optional[int] = None, features: int = 0) -> SearchPage:
    """Hits `offset` to `offset + limit` (all from `offset` when `limit` is None), best first, the
    count of every hit, and with `features` the best hit of each of the first `features` features
    (the source page's map rings): see the module's docstring for the rule.

    `model_id` None searches every model; `sources` None searches every source (ties then go
    by model, then source name), else only those, ties in the order given. An invalid regular
    expression raises `duckdb.Error` (the callers word it).
    """
    qy = _Query(query, model_id, sources, regex)
    if qy.empty:
        return SearchPage([], 0, [])
    with db.connect() as cur:
        cur.execute("BEGIN TRANSACTION")  # one snapshot: the rowids of the ranking are the rows fetched
        try:
            if limit is None:
                wanted = int(cur.execute(f"SELECT count(*) FROM explanations WHERE {' AND '.join(qy.where)}",
                                         qy.params).fetchall()[0][0])
            else:
                wanted = offset + limit
            page, firsts, total = _sql_ranked(cur, qy, wanted, features)
            slow = _python_hits(cur, qy)
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")
    if slow:
        page = sorted([*page, *slow], key=qy.key)[:wanted]
        firsts = _first_per_feature(sorted([*firsts, *slow], key=qy.key), features)
    return SearchPage(page[offset:], total + len(slow), firsts)


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
