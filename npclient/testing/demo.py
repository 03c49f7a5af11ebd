"""The offline demo scenario behind `np-mirror demo`: the main job, end to end, on the emulator.

A Neuronpedia emulator and its bulk exports (an S3 stand-in with one batch truncated and one
missing) on 127.0.0.1; an exports-first sync of a source set that fills the gaps from the API
through injected faults and the rate limiter; a rerun once the bucket healed; status, show and
SQL; then the emulator's SAE attached and the planted geometry found again (the week's circle,
the tree, a head's null space). Nothing leaves the machine.

`run_demo` writes nothing to the terminal itself: the caller passes the output callbacks (the
CLI passes its own `hint`, tables, feature view and progress display). Its temporary files (the
bucket, the download cache, the SAE folder) live in folders of their own under `scratch`
(default: the system's temporary folder, `$TMPDIR`) and are deleted when it ends, also on an
error or Ctrl-C; the mirror and the figures stay where `db` and `figures` say.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Optional

__all__ = ["run_demo"]

Say = Callable[[str], None]
Table = Callable[[Sequence[Mapping[str, Any]], Optional[Sequence[str]]], None]
#: A sync progress display: a context manager with `update(progress)` and `summary(summary)`.
DisplayFactory = Callable[[], AbstractContextManager[Any]]

class _NoDisplay:
    """The progress display when the caller passes none: shows nothing."""

    def __enter__(self) -> "_NoDisplay":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, progress: Any) -> None:
        return None

    def summary(self, summary: Any) -> None:
        return None


def run_demo(
    db: Optional[Path] = None,
    figures: Optional[Path] = None,
    *,
    fault_rate: float = 0.05,
    say: Say = print,
    table: Optional[Table] = None,
    show_feature: Optional[Callable[[Any], None]] = None,
    display: Optional[DisplayFactory] = None,
    scratch_root: Optional[Path] = None,
) -> None:
    """Run the demo: `db` is the mirror it builds (default `$NP_MIRROR_HOME/demo.duckdb`),
    `figures` where the plots go (default `$NP_MIRROR_HOME/demo-figures`), `fault_rate` the
    failures the emulator injects while the demo syncs, `scratch_root` where its temporary
    folders go (default `$TMPDIR`; each is deleted at the end, whatever happens).

    Output goes through the callbacks: `say(line)` for each step, `table(rows, columns)` for
    tables (columns None: all), `show_feature(feature)` for the feature shown, and `display()`
    for each sync's progress display. Without them: `print`, rows printed one a line, the
    feature's id and top activation, no progress display.
    """
    from .. import NeuronpediaClient, RetryPolicy, aio
    from ..exports import ExportBucket
    from ..ids import SourceSetId
    from ..metacache import MetaCache
    from ..mirror import Mirror
    from ..http.pacing import Budget
    from ..paths import home
    from ..sync import run_sync
    from .emulator import EmulatorConfig, EmulatorServer, FaultConfig, RateLimitConfig
    from .emulator.exports import ExportQuirks, write_export
    from .emulator.s3 import S3Faults, S3Server

    table = table or _print_rows(say)
    show_feature = show_feature or (lambda f: say(f"{f.model_id}/{f.layer}/{f.index}: max activation {f.max_act_approx}"))
    display = display or _NoDisplay

    path = db or home() / "demo.duckdb"
    figures = figures or home() / "demo-figures"
    config = EmulatorConfig(
        hole_rate=0.01,
        faults=FaultConfig(rate=fault_rate, seed=1, slow_s=2.0),
        rate_limit=RateLimitConfig(api_limit=600, window_s=60.0),
    )
    target = SourceSetId("gpt2-small", "res-jb")
    scratch: list[Path] = []
    try:
        bucket_root = _scratch(scratch, "np-demo-bucket-", scratch_root)
        cache = _scratch(scratch, "np-demo-exports-", scratch_root)
        with EmulatorServer(config) as server, Mirror(path, linger_s=0) as mirror:
            write_export(server.state, bucket_root, quirks=ExportQuirks(batch_size=256))
            # One activations batch arrives truncated, one explanations batch is missing: the API fills the gap.
            faults = S3Faults(truncated={"v1/gpt2-small/1-res-jb/activations/batch-1.jsonl.gz": 5000},
                              missing=frozenset({"v1/gpt2-small/0-res-jb/explanations/batch-0.jsonl.gz"}))
            s3 = S3Server(bucket_root, faults=faults).start()
            try:
                say(f"1. Neuronpedia emulator on {server.url} (faults {fault_rate:.0%}, 600 requests/min limit)")
                say(f"   and its bulk exports on {s3.bucket_url} (one batch truncated, one missing)")
                say(f"2. np-mirror sync {target} --db {path}   (exports first, then the API for the gaps)")

                async def run_once() -> Any:
                    client = NeuronpediaClient(server.url, budget=Budget(limit=540, window_s=60.0, burst=20),
                                               retry=RetryPolicy(initial_wait_s=0.05, max_wait_s=1.0))
                    async with client, ExportBucket(s3.bucket_url) as bucket:
                        with display() as shown:
                            summary = await run_sync([target], db=mirror.db, client=client, meta=MetaCache(enabled=False),
                                                     progress=shown.update, exports=bucket, exports_cache=cache)
                        shown.summary(summary)
                        return summary

                first = aio.run(run_once())
                say("3. Rerun, the bucket healed: only the failed files and features are asked for")
                s3.faults = S3Faults()
                second = aio.run(run_once())
            finally:
                s3.stop()
            say(f"   first run {first.requests} requests, rerun {second.requests} requests")
            say("4. np-mirror status")
            table(mirror.status(), ["source", "present", "total", "explained", "explanations", "failed", "origins"])
            monday = mirror.sql(
                "SELECT feature_key FROM features WHERE top_explanation = 'Monday' ORDER BY feature_key LIMIT 1"
            ).column("feature_key").to_pylist()
            if monday:
                say(f"5. np-mirror show {monday[0]}")
                show_feature(mirror.feature(monday[0]))
            say("6. np-mirror sql: the days-of-the-week features and their decoder neighbours")
            table(
                mirror.sql(
                    """SELECT feature_key, top_explanation, round(max_act_approx, 2) AS max_act,
                              topk_cos_sim_indices[2:4] AS nearest
                       FROM features WHERE top_explanation IN ('Monday','Tuesday','Wednesday','Thursday','Friday','Saturday','Sunday')
                       ORDER BY source, "index\""""
                ).to_pylist(),
                None,
            )
            _geometry_tour(mirror, server.state, figures, _scratch(scratch, "np-demo-sae-", scratch_root), say, table)
            say(f"Done. The mirror is at {path}; query it with `np-mirror sql --db {path} \"...\"`.")
    finally:
        for folder in scratch:
            shutil.rmtree(folder, ignore_errors=True)


def _scratch(made: list[Path], prefix: str, root: Optional[Path] = None) -> Path:
    """A new temporary folder (under `root`, default `$TMPDIR`), remembered in `made` so that
    the demo deletes it at the end."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    made.append(folder)
    return folder


def _print_rows(say: Say) -> Table:
    def table(rows: Sequence[Mapping[str, Any]], columns: Optional[Sequence[str]]) -> None:
        for row in rows:
            say("  ".join(f"{k}={row[k]}" for k in (columns or list(row))))

    return table


def _geometry_tour(mirror: Any, state: Any, figures: Path, sae_dir: Path, say: Say, table: Table) -> None:
    """Attach the emulator's SAE and answer the planted questions, each checked against the truth."""
    import numpy as np
    from safetensors.numpy import load_file

    from ..geometry import api
    from ..geometry.plots import plot_dendrogram, plot_pca
    from ..geometry.subspace import circular_order
    from ..ids import SourceId
    from .saes import make_emulator_sae

    figures.mkdir(parents=True, exist_ok=True)
    sid = SourceId("gpt2-small", "0-res-jb")
    sae = make_emulator_sae(sae_dir, state, sid.model_id, sid.source)
    say(f"7. np-mirror weights add {sid} --path <the emulator's SAE>   (row i of W_dec is feature i)")
    record = mirror.attach_weights(sid, path=sae.path / "sae_weights.safetensors", tensor="W_dec")
    say(f"   {record.d_sae} x {record.d_in} decoder attached")

    monday = sae.days[0]
    say(f"8. np-mirror neighbors {sid}/{monday} -k 5")
    table(api.neighbors(mirror, f"{sid}/{monday}", 5).to_pylist(), ["rank", "index", "cosine", "explanation"])

    say("9. np-mirror geometry pca --where \"top_explanation IN ('Monday', ...)\": the week is a circle")
    days = api.select_features(mirror, sid, where="top_explanation IN ('Monday','Tuesday','Wednesday','Thursday','Friday','Saturday','Sunday')")
    result, coords_table = api.pca(mirror, sid, days)
    labels = coords_table.column("explanation").to_pylist()
    coords = np.column_stack([coords_table.column("x").to_numpy(), coords_table.column("y").to_numpy()])
    walk = [labels[i] for i in circular_order(coords)]
    start = walk.index("Monday")
    say("   around the circle: " + " -> ".join(walk[start:] + walk[:start]))
    plot_pca(result, labels, figures / "days_pca.png")

    tree = [sae.tree_root] + [c for cs in sae.tree.values() for c in cs]
    chosen = np.array(sorted(set(tree) | set(sae.noise[:8])))
    say(f"10. np-mirror geometry cluster --features <{len(chosen)} features> --threshold 0.5")
    cres, ctable = api.cluster(mirror, sid, chosen, threshold=0.5)
    label_of = dict(zip(ctable.column("index").to_pylist(), ctable.column("label").to_pylist()))
    same = len({label_of[i] for i in tree}) == 1
    say(f"   the planted tree ({len(tree)} features) falls in {'one cluster' if same else 'several clusters'}")
    plot_dendrogram(cres, ctable.column("explanation").to_pylist(), figures / "tree_dendrogram.png")

    say("11. np-mirror geometry nullspace --matrix attention_head.safetensors --tensor W_K --ov-tensor W_OV")
    head = load_file(str(sae.head_path))
    found = api.head_features(mirror, sid, head["W_K"], name="demo-head:W_K", ov=head["W_OV"])
    invisible = {r["index"] for r in found.to_pylist() if r["invisible"]}
    suppressed = {r["index"] for r in found.to_pylist() if r["suppressed"]}
    say(f"   invisible to W_K: {sorted(invisible)} (planted: {sorted(sae.null_space)})")
    say(f"   suppressed by OV: {sorted(suppressed)} (planted: {sorted(sae.suppressed)})")
    say(f"   plots written to {figures}")
