"""Shared test helpers: small emulator configs and table comparisons."""

from __future__ import annotations

import duckdb

from npclient.testing import EmulatorConfig, SourceSpec

SRC = ("gpt2-small", "0-res-jb")


def small_config(d_sae: int = 1000, **kw) -> EmulatorConfig:
    return EmulatorConfig(sources=(SourceSpec(*SRC, d_sae=d_sae), SourceSpec("gpt2-small", "1-res-jb", d_sae=200)), **kw)


TABLE_KEYS = {
    "features": "feature_key",
    "activations": "feature_key, rank",
    "explanations": "feature_key, rank",
    "raw_chunks": "feature_key, seq",
    "failures": "feature_key",
}
BOOKKEEPING = {"fetched_at", "run_id", "first_seen", "last_seen", "attempts"}


def table_contents(path: str) -> dict[str, list[tuple]]:
    """Every mirrored table by key, without timestamps and run bookkeeping."""
    con = duckdb.connect(path, read_only=True)
    try:
        out = {}
        for table, key in TABLE_KEYS.items():
            cols = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall() if r[0] not in BOOKKEEPING]
            quoted = ", ".join('"' + c + '"' for c in cols)
            out[table] = con.execute(f"SELECT {quoted} FROM {table} ORDER BY {key}").fetchall()
        return out
    finally:
        con.close()
