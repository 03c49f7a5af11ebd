"""Shared test helpers: small emulator configs, table comparisons, a brute-force top-k oracle."""

from __future__ import annotations

import duckdb
import numpy as np

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


def brute_topk(w: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference for `topkCosSim*`: float64 full matrix, self first, undefined
    cosines (zero rows) last, ties by index."""
    w = w.astype(np.float64)
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        sims = (w / norms) @ (w / norms).T
    key = np.nan_to_num(sims, nan=-np.inf)
    np.fill_diagonal(key, np.inf)
    idx = np.array([np.lexsort((np.arange(len(w)), -row))[:k] for row in key])
    return idx, np.take_along_axis(sims, idx, axis=1)
