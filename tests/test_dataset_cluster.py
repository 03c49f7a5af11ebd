"""Issue 15, section 4: a node lost in the middle of `dataset sync --engine ray`.

A `ray.cluster_utils.Cluster` of two nodes (one CPU each) runs in a subprocess of its own (it
cannot share a process with the session's cluster). The first unit that lands on the second
node says so through a file and then holds; the driver, seeing that file (a chosen point, not a
sleep), removes the node, so the unit in flight there dies with it. Ray retries it on the head
node. Afterwards: no temp file, no duplicate key, and every table equal to the local engine's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("ray")

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(r'''
    import json, os, sys, threading, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    import duckdb, ray
    from ray.cluster_utils import Cluster

    from helpers import LIGHT
    from npclient import SourceId
    from npclient.dataset import open_location, verify
    from npclient.dataset.location import TEMP_NAME
    from npclient.dataset.sync import dataset_sync
    from npclient.distributed.dataset_sync import ray_runner, run_task
    from npclient.mirror import Mirror
    from npclient.testing import EmulatorConfig, EmulatorState, SourceSpec
    from npclient.testing.emulator.exports import ExportQuirks, write_export
    from npclient.testing.emulator.s3 import S3Server

    tmp = Path(sys.argv[1])
    SRC = SourceId("gpt2-small", "3-res-jb")
    state = EmulatorState(EmulatorConfig(sources=(SourceSpec(SRC.model_id, SRC.source, d_sae=400),), hole_rate=0.03,
                                         seed=7, **LIGHT))
    write_export(state, tmp / "bucket", quirks=ExportQuirks(batch_size=32, explanation_ties="per_page"), compresslevel=1)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    second = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="warning")
    doomed = second.node_id
    signal = tmp / "signal"
    signal.mkdir()

    def held(what, kwargs, fault, flag_dir):
        """The first unit on the doomed node says so, then holds until the node is gone."""
        if what == "unit" and ray.get_runtime_context().get_node_id() == doomed:
            try:
                fd = os.open(signal / "held", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                while True:
                    time.sleep(0.05)
        return run_task(what, kwargs, fault, flag_dir)

    def remover():
        while not (signal / "held").exists():
            time.sleep(0.05)  # waits for the chosen point; the result does not depend on how long
        cluster.remove_node(second)

    thread = threading.Thread(target=remover, daemon=True)
    thread.start()
    with S3Server(tmp / "bucket") as s3:
        summary = dataset_sync(str(tmp / "ray"), sources=[SRC], engine="ray", exports_url=s3.bucket_url,
                               cache=tmp / "cache", unit_features=128, runner=ray_runner(body=held), api=False)
        thread.join(timeout=60)
        nodes_alive = sum(1 for n in ray.nodes() if n["Alive"])
        ray.shutdown()
        cluster.shutdown()
        local = dataset_sync(str(tmp / "local"), sources=[SRC], exports_url=s3.bucket_url, cache=tmp / "cache2",
                             unit_features=128, workers=1, api=False)

    def contents(ds):
        out = {}
        con = duckdb.connect()
        for t, key in (("features", "feature_key"), ("activations", "feature_key, rank"),
                       ("explanations", "feature_key, rank")):
            rel = f"read_parquet('{ds}/{t}/*/*/*.parquet')"
            cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {rel}").fetchall()
                    if r[0] not in ("fetched_at", "run_id")]
            q = ", ".join(f'"{c}"' for c in cols)
            rows = [repr(r) for r in con.execute(f"SELECT {q} FROM {rel} ORDER BY {key}").fetchall()]
            dups = con.execute(f"SELECT count(*) FROM (SELECT {key} FROM {rel} GROUP BY ALL HAVING count(*) > 1)").fetchall()[0][0]
            out[t] = (rows, dups)
        return out

    got, ref = contents(tmp / "ray"), contents(tmp / "local")
    print(json.dumps({
        "exit_code": summary.exit_code, "held_pid": int((signal / "held").read_text()), "workers": sorted(summary.workers),
        "nodes_alive": nodes_alive, "units": summary.units,
        "temps": [str(p) for p in (tmp / "ray").rglob("*") if TEMP_NAME.match(p.name)],
        "verify": verify(open_location(tmp / "ray")).problems,
        "dups": {t: v[1] for t, v in got.items()},
        "equal": {t: got[t][0] == ref[t][0] for t in got},
        "rows": {t: len(got[t][0]) for t in got},
        "local_exit": local.exit_code,
    }))
''')


def test_a_node_removed_mid_job_leaves_the_local_result(tmp_path):
    from pathlib import Path

    tests = Path(__file__).parent
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(tests)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["exit_code"] == 0 and out["local_exit"] == 0
    assert out["nodes_alive"] == 1  # the node really went
    assert out["held_pid"] not in out["workers"]  # the unit it held was finished by a retry elsewhere
    assert out["temps"] == [] and out["verify"] == []
    assert out["dups"] == {"features": 0, "activations": 0, "explanations": 0}
    assert out["equal"] == {"features": True, "activations": True, "explanations": True}
    assert out["rows"]["features"] > 350 and out["rows"]["explanations"] > 0
