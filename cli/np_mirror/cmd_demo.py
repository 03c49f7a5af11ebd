"""`np-mirror demo`: the main job, offline, on the bundled emulator."""

from __future__ import annotations

from npclient import aio
from pathlib import Path
from typing import Annotated, Optional

import typer

from .output import Format, hint, rows_out


def demo(
    db: Annotated[Optional[Path], typer.Option("--db", help="Where to build the demo mirror [default: $NP_MIRROR_HOME/demo.duckdb].", show_default=False)] = None,
    fault_rate: Annotated[float, typer.Option("--fault-rate", help="Failures the emulator injects while the demo syncs.")] = 0.05,
    out: Annotated[Optional[Path], typer.Option("--out", help="Where to write the plots [default: $NP_MIRROR_HOME/demo-figures].", show_default=False)] = None,
) -> None:
    """Start the Neuronpedia emulator, sync a source set exports-first, attach its SAE, ask geometry questions.

    Nothing leaves this machine: the emulator serves on 127.0.0.1 with realistic payloads,
    its rate limiter and injected failures.
    """
    from npclient import NeuronpediaClient, RetryPolicy
    from npclient.ids import SourceSetId
    from npclient.metacache import MetaCache
    from npclient.mirror import Mirror
    from npclient.pacing import Budget
    from npclient.paths import home
    from npclient.sync import run_sync
    import tempfile

    from npclient.exports import ExportBucket
    from npclient.testing import EmulatorConfig, EmulatorServer, FaultConfig, RateLimitConfig
    from npclient.testing.emulator.exports import ExportQuirks, write_export
    from npclient.testing.emulator.s3 import S3Faults, S3Server

    from .feature_view import render_feature
    from .progress import SyncDisplay

    path = db or home() / "demo.duckdb"
    figures = out or home() / "demo-figures"
    config = EmulatorConfig(
        hole_rate=0.01,
        faults=FaultConfig(rate=fault_rate, seed=1, slow_s=2.0),
        rate_limit=RateLimitConfig(api_limit=600, window_s=60.0),
    )
    target = SourceSetId("gpt2-small", "res-jb")
    bucket_root = Path(tempfile.mkdtemp(prefix="np-demo-bucket-"))
    cache = Path(tempfile.mkdtemp(prefix="np-demo-exports-"))
    with EmulatorServer(config) as server, Mirror(path, linger_s=0) as mirror:
        write_export(server.state, bucket_root, quirks=ExportQuirks(batch_size=256))
        # One activations batch arrives truncated, one explanations batch is missing: the API fills the gap.
        faults = S3Faults(truncated={"v1/gpt2-small/1-res-jb/activations/batch-1.jsonl.gz": 5000},
                          missing=frozenset({"v1/gpt2-small/0-res-jb/explanations/batch-0.jsonl.gz"}))
        s3 = S3Server(bucket_root, faults=faults).start()
        hint(f"1. Neuronpedia emulator on {server.url} (faults {fault_rate:.0%}, 600 requests/min limit)")
        hint(f"   and its bulk exports on {s3.bucket_url} (one batch truncated, one missing)")
        hint(f"2. np-mirror sync {target} --db {path}   (exports first, then the API for the gaps)")

        async def run_once():
            client = NeuronpediaClient(server.url, budget=Budget(limit=540, window_s=60.0, burst=20),
                                       retry=RetryPolicy(initial_wait_s=0.05, max_wait_s=1.0))
            async with client, ExportBucket(s3.bucket_url) as bucket:
                with SyncDisplay() as display:
                    summary = await run_sync([target], db=mirror.db, client=client, meta=MetaCache(enabled=False),
                                             progress=display.update, exports=bucket, exports_cache=cache)
                display.summary(summary)
                return summary

        first = aio.run(run_once())
        hint("3. Rerun, the bucket healed: only the failed files and features are asked for")
        s3.faults = S3Faults()
        second = aio.run(run_once())
        s3.stop()
        hint(f"   first run {first.requests} requests, rerun {second.requests} requests")
        hint("4. np-mirror status")
        rows_out(mirror.status(), Format.table, ["source", "present", "total", "activations", "explanations", "failed", "origins"])
        monday = mirror.sql(
            "SELECT feature_key FROM features WHERE top_explanation = 'Monday' ORDER BY feature_key LIMIT 1"
        ).column("feature_key").to_pylist()
        if monday:
            hint(f"5. np-mirror show {monday[0]}")
            render_feature(mirror.feature(monday[0]), 3)
        hint("6. np-mirror sql: the days-of-the-week features and their decoder neighbours")
        rows_out(
            mirror.sql(
                """SELECT feature_key, top_explanation, round(max_act_approx, 2) AS max_act,
                          topk_cos_sim_indices[2:4] AS nearest
                   FROM features WHERE top_explanation IN ('Monday','Tuesday','Wednesday','Thursday','Friday','Saturday','Sunday')
                   ORDER BY source, "index\""""
            ).to_pylist(),
            Format.table,
        )
        _geometry_tour(mirror, server.state, figures)
        hint(f"Done. The mirror is at {path}; query it with `np-mirror sql --db {path} \"...\"`.")
    import shutil

    shutil.rmtree(bucket_root, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    raise typer.Exit(0)


def _geometry_tour(mirror, state, figures: Path) -> None:
    """Attach the emulator's SAE and answer the planted questions, each checked against the truth."""
    import tempfile

    from npclient.geometry import api
    from npclient.geometry.plots import plot_dendrogram, plot_pca
    from npclient.geometry.subspace import circular_order
    from npclient.ids import SourceId
    from npclient.testing.saes import make_emulator_sae
    from npclient.weights import attach

    figures.mkdir(parents=True, exist_ok=True)
    sid = SourceId("gpt2-small", "0-res-jb")
    sae = make_emulator_sae(Path(tempfile.mkdtemp(prefix="np-demo-sae-")), state, sid.model_id, sid.source)
    hint(f"7. np-mirror weights add {sid} --path <the emulator's SAE>   (row i of W_dec is feature i)")
    record = attach(mirror.db, sid, path=sae.path / "sae_weights.safetensors", tensor="W_dec")
    hint(f"   {record.d_sae} x {record.d_in} decoder attached")

    monday = sae.days[0]
    hint(f"8. np-mirror neighbors {sid}/{monday} -k 5")
    rows_out(api.neighbors(mirror, f"{sid}/{monday}", 5).to_pylist(), Format.table, ["rank", "index", "cosine", "explanation"])

    hint("9. np-mirror geometry pca --where \"top_explanation IN ('Monday', ...)\": the week is a circle")
    days = api.select_features(mirror, sid, where="top_explanation IN ('Monday','Tuesday','Wednesday','Thursday','Friday','Saturday','Sunday')")
    result, table = api.pca(mirror, sid, days)
    labels = table.column("explanation").to_pylist()
    import numpy as np

    coords = np.column_stack([table.column("x").to_numpy(), table.column("y").to_numpy()])
    walk = [labels[i] for i in circular_order(coords)]
    start = walk.index("Monday")
    hint("   around the circle: " + " -> ".join(walk[start:] + walk[:start]))
    plot_pca(result, labels, figures / "days_pca.png")

    tree = [sae.tree_root] + [c for cs in sae.tree.values() for c in cs]
    chosen = np.array(sorted(set(tree) | set(sae.noise[:8])))
    hint(f"10. np-mirror geometry cluster --features <{len(chosen)} features> --threshold 0.5")
    cres, ctable = api.cluster(mirror, sid, chosen, threshold=0.5)
    label_of = dict(zip(ctable.column("index").to_pylist(), ctable.column("label").to_pylist()))
    same = len({label_of[i] for i in tree}) == 1
    hint(f"   the planted tree ({len(tree)} features) falls in {'one cluster' if same else 'several clusters'}")
    plot_dendrogram(cres, ctable.column("explanation").to_pylist(), figures / "tree_dendrogram.png")

    hint("11. np-mirror geometry nullspace --matrix attention_head.safetensors --tensor W_K --ov-tensor W_OV")
    from safetensors.numpy import load_file

    head = load_file(str(sae.head_path))
    found = api.head_features(mirror, sid, head["W_K"], name="demo-head:W_K", ov=head["W_OV"])
    invisible = {r["index"] for r in found.to_pylist() if r["invisible"]}
    suppressed = {r["index"] for r in found.to_pylist() if r["suppressed"]}
    hint(f"   invisible to W_K: {sorted(invisible)} (planted: {sorted(sae.null_space)})")
    hint(f"   suppressed by OV: {sorted(suppressed)} (planted: {sorted(sae.suppressed)})")
    hint(f"   plots written to {figures}")
