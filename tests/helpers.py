"""Shared test helpers: small emulator configs, table comparisons, a brute-force top-k oracle,
the browser check of the page tests and the official client's port."""

from __future__ import annotations

import fcntl
import importlib.util
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np
import pytest

from npclient.testing import EmulatorConfig, SourceSpec

SRC = ("gpt2-small", "0-res-jb")
#: Payloads a few KB instead of ~40 KB (the default: 20-24 activations of 64-128 tokens), for
#: tests where the number of features and batches matters, not the size of each one.
LIGHT = {"n_activations": (3, 6), "tokens_per_activation": (8, 24)}


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


# --------------------------------------------------------------------------- headless Chromium

#: Where Debian's `chromium` and `chromium-driver` packages put them (what `.ci/run` installs).
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMEDRIVER_NAMES = ("chromedriver",)


def _which(names: tuple[str, ...]) -> Path | None:
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None)
        if found:
            return Path(found)
    return None


def browser_missing() -> str | None:
    """Why the headless-browser tests cannot run here (None: they can): chromium, chromedriver
    and selenium must all be present, each missing piece named."""
    chromium, driver = _which(CHROMIUM_NAMES), _which(CHROMEDRIVER_NAMES)
    if chromium is None and driver is None:
        return "needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver): neither found"
    if chromium is None:
        return f"needs chromium: chromedriver found ({driver}) but no chromium (Debian: apt-get install chromium)"
    if driver is None:
        return f"needs chromedriver: chromium found ({chromium}) but no chromedriver (Debian: apt-get install chromium-driver)"
    if importlib.util.find_spec("selenium") is None:
        return "needs selenium (pip install -e '.[dev]'): chromium and chromedriver found"
    return None


def require_browser() -> tuple[Path, Path]:
    """(chromium, chromedriver), or skip the calling test with the reason `browser_missing` gives."""
    reason = browser_missing()
    if reason is not None:
        pytest.skip(reason)
    chromium, driver = _which(CHROMIUM_NAMES), _which(CHROMEDRIVER_NAMES)
    assert chromium is not None and driver is not None
    return chromium, driver


# --------------------------------------------------------------------------- the official client's port

#: The official `neuronpedia` package hardcodes http://localhost:3000/api (USE_LOCALHOST=true).
OFFICIAL_CLIENT_PORT = 3000
_PORT_LOCK = Path(tempfile.gettempdir()) / f"np-mirror-tests-port-{OFFICIAL_CLIENT_PORT}.lock"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    with socket.socket() as s:  # nobody listening on localhost's other family either
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) != 0


@contextmanager
def official_client_port(wait_s: float = 120.0) -> Iterator[int]:
    """Port 3000, held for the calling test alone: tests that need it (in this run's workers or in
    another pytest run on the machine) take turns through a file lock; skips if something else
    holds the port."""
    with open(_PORT_LOCK, "a+") as fh:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.skip(f"port {OFFICIAL_CLIENT_PORT} stayed in use by another test run for {wait_s:.0f} s")
                time.sleep(0.1)
        try:
            if not _port_free(OFFICIAL_CLIENT_PORT):
                pytest.skip(f"port {OFFICIAL_CLIENT_PORT} is taken: the official client hardcodes "
                            f"http://localhost:{OFFICIAL_CLIENT_PORT}/api with USE_LOCALHOST=true")
            yield OFFICIAL_CLIENT_PORT
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def synced_mirror_with_sae(tmp: Path, src, d_sae: int = 512, d_in: int = 64):
    """An emulator serving `src` alone (d_sae x d_in), synced into a fresh Mirror at tmp/m.duckdb,
    and the emulator's SAE (its planted decoder) attached to the mirror from bare safetensors
    (no sae_lens import). Returns (server, mirror, sae); the caller stops the server."""
    from npclient import NeuronpediaClient
    from npclient.aio import run
    from npclient.mirror import Mirror
    from npclient.sync import run_sync
    from npclient.testing import EmulatorServer
    from npclient.testing.saes import make_emulator_sae
    from npclient.weights import attach

    spec = SourceSpec(src.model_id, src.source, d_sae=d_sae, d_in=d_in)
    server = EmulatorServer(EmulatorConfig(sources=(spec,))).start()
    try:
        mirror = Mirror(tmp / "m.duckdb", linger_s=0)

        async def sync():
            async with NeuronpediaClient(server.url, budget=None) as client:
                await run_sync([src], db=mirror.db, client=client)

        run(sync())
        sae = make_emulator_sae(tmp / "sae", server.state, src.model_id, src.source)
        attach(mirror.db, src, path=sae.path / "sae_weights.safetensors", tensor="W_dec", root=tmp / "weights")
    except BaseException:
        server.stop()
        raise
    return server, mirror, sae


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """One `np-mirror` command line in this process: (exit code, stdout, stderr), never a traceback."""
    from np_mirror.app import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


def mirror_neighbors(mirror, sid) -> list[dict]:
    """A source's rows of the mirror's all-pairs `neighbors` table, by feature and rank."""
    return mirror.sql("""SELECT "index", rank, neighbor_index, cosine FROM neighbors
                         WHERE model_id = ? AND source = ? ORDER BY "index", rank""",
                      [sid.model_id, sid.source]).to_pylist()
