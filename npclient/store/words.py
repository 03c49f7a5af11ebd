"""Each explanation's number of distinct search words (`explanations.n_words`), in SQL and in
Python: the one splitter is `wire.words` (`[a-z0-9]+` of the lower-cased text). DuckDB's `lower`
and Python's agree on ASCII text only, so `n_words` is NULL for any other description, and the
search (`store/search.py`) scores those rows in Python instead."""

from __future__ import annotations

from typing import Optional

from .. import wire

__all__ = ["N_WORDS_SQL", "word_count"]

#: `{d}` is the description's expression (the migration, the importer's typed reader, the writer).
N_WORDS_SQL = ("CASE WHEN strlen({d}) = length({d}) "
               "THEN CAST(len(list_distinct(regexp_extract_all(lower({d}), '[a-z0-9]+'))) AS INTEGER) END")


def word_count(description: Optional[str]) -> Optional[int]:
    """`N_WORDS_SQL` in Python: the distinct words of an ASCII description, else None."""
    if description is None or not description.isascii():
        return None
    return len(wire.words(description))
