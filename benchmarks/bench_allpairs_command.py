"""`np-mirror geometry allpairs` as a user runs it, against faiss `IndexFlatIP` as a user would write it (issue 15, section 5).

Both sides are timed from spawn to exit, as subprocesses, in the same run, at the same thread
count (`--threads`, default 2: OMP_NUM_THREADS/MKL_NUM_THREADS for both, and
`faiss.omp_set_num_threads` in the faiss script):

- ours: `np-mirror geometry allpairs MODEL/SOURCE -k 25 --db M.duckdb` exactly as typed:
  interpreter start-up and imports (typer, npclient, numba; on an AMX CPU not torch, whose MKL
  the command loads with ctypes: `geometry/cpu_allpairs.py`), opening the mirror, reading
  the attached decoder (the `.npy` copy `weights add` made, memory-mapped), numba loading its
  cached kernels, the exact all-pairs search, writing the `neighbors` table (k rows per feature)
  and printing the first 30 rows joined with both features' explanations.
- faiss: `python faiss_allpairs.py DECODER.npy OUT`: interpreter start-up, `import numpy,
  faiss`, `np.load` of the same decoder file, normalising the rows, `IndexFlatIP` add +
  search k=25, and `np.save` of the result (distances float32 and ids int64): the same
  neighbours, written to a file a user would then load, not to a queryable table. Where
  faiss's bundled OpenBLAS falls back to its generic kernels on this CPU, the faiss side gets
  OPENBLAS_CORETYPE set (`--openblas-coretype`; printed), so faiss runs at its real speed.

Once, before the rounds (not timed in the ratio): a mirror with an N-feature source written
through the store's writer (each feature has an explanation, so the printed join is real) and
a random N x D float32 decoder attached from a bare safetensors file; one warm-up run of each
side (numba's on-disk cache and the OS page cache as a user's second run finds them). Then
rounds alternate which side runs first; the ratio is ours/faiss, the median of the per-round
ratios and best/best (goal <= 0.9 at 24,576 x 768). Where the time goes in ours comes from one
extra, instrumented run of the same command in-process (functions wrapped with timers; not in
the ratio); its exit time is the subprocess wall clock minus the in-process end. The load
average before and after is printed: the machine may be shared. Never asserts on time.

    .venv/bin/python benchmarks/bench_allpairs_command.py [--features 24576] [--d 768] [--k 25]
        [--rounds 5] [--threads 2] [--keep DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from machine import REPO, cpu_model, git_head, usable_cores, versions

MODEL, SOURCE = "bench-model", "0-allpairs"

FAISS_SCRIPT = '''\
import sys, time
t0 = time.perf_counter()
import numpy as np
import faiss
faiss.omp_set_num_threads(int(sys.argv[3]))
t1 = time.perf_counter()
W = np.load(sys.argv[1])
t2 = time.perf_counter()
W = W / np.linalg.norm(W, axis=1, keepdims=True)
index = faiss.IndexFlatIP(W.shape[1])
index.add(W)
D, I = index.search(W, int(sys.argv[4]))
t3 = time.perf_counter()
np.save(sys.argv[2] + ".D.npy", D)
np.save(sys.argv[2] + ".I.npy", I)
t4 = time.perf_counter()
print("PHASES " + repr({"imports": t1 - t0, "load": t2 - t1, "normalise+add+search": t3 - t2,
                        "write .npy": t4 - t3, "end": t4 - t0}), file=sys.stderr)
'''

# The same command in-process, with timers around its steps (the per-phase view; not in the ratio).
PROFILE_SCRIPT = '''\
import sys, time
from machine import time_calls  # benchmarks/ is on PYTHONPATH for this script; not in the timed imports
T0 = time.perf_counter()
marks = {}
def timed(owner, name, label):
    time_calls(owner, name, label, marks)
from np_mirror.app import main  # not run(): it ends the process without returning
marks["imports: CLI (typer, npclient)"] = time.perf_counter() - T0
t = time.perf_counter()
import npclient.geometry.api, npclient.geometry.jobs as jobs, npclient.geometry.cpu_allpairs as cpu
import npclient.mirror as mm, npclient.store.results as res
marks["imports: mirror, geometry (duckdb, pyarrow; not torch)"] = time.perf_counter() - t
timed(mm.Mirror, "decoder_array", "read the decoder (mmap)")
timed(mm.Mirror, "decoder", "read the decoder (mmap)")
for label in ("read the decoder (mmap)", "torch-free all-pairs (numba, MKL, kernels, search)",
              "  of which numba's import and MKL's load (no import torch)"):
    marks[label] = 0.0  # printed in the order they run, a part under what holds it
timed(cpu, "all_pairs_arrays", "torch-free all-pairs (numba, MKL, kernels, search)")
timed(cpu, "available", "  of which numba's import and MKL's load (no import torch)")
timed(jobs, "compute_all_pairs", "all_pairs_topk (the torch path: import torch + search)")
timed(res, "save_neighbors", "write the neighbors table")
timed(npclient.geometry.api, "stored_neighbors", "read back 30 rows + explanations")
sys.argv = ["np-mirror", *sys.argv[1:]]
t = time.perf_counter()
try:
    main()
except SystemExit:
    pass
marks["command (after imports)"] = time.perf_counter() - t
marks["end"] = time.perf_counter() - T0
heavy = [m for m in ("torch", "pandas", "scipy", "pyarrow.dataset", "sae_lens", "ray") if m in sys.modules]
print("PHASES " + repr(marks), file=sys.stderr)
print("LOADED " + ",".join(heavy), file=sys.stderr)
import atexit, os  # end as the command's run() ends (exit handlers, no module teardown)
sys.stdout.flush(); sys.stderr.flush(); atexit._run_exitfuncs(); os._exit(0)
'''


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _env(home: Path, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(NP_MIRROR_HOME=str(home), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), COLUMNS="200")
    return env


def openblas_core_for_faiss(env: dict[str, str], choice: str) -> tuple[Optional[str], str]:
    """The OPENBLAS_CORETYPE to give the faiss side, and what faiss's own OpenBLAS picks alone.

    faiss-cpu bundles its own OpenBLAS (0.3.15 in 1.15.1), whose CPU detection falls back to the
    generic "Prescott" kernels on CPUs it does not know (this project's Xeon reports AVX-512
    but an unnamed model): its GEMM is then ~4x slower and faiss looks slow for a reason that
    has nothing to do with faiss. "auto" sets SkylakeX (AVX-512) or Haswell (AVX2) in that case;
    "none" leaves it."""
    p = subprocess.run([sys.executable, "-c", "import faiss"], capture_output=True, text=True,
                       env={**env, "OPENBLAS_VERBOSE": "2"})
    cores = [line.split(":", 1)[1].strip() for line in (p.stdout + p.stderr).splitlines() if line.startswith("Core:")]
    detected = cores[-1] if cores else "unknown"
    if choice != "auto":
        return (None if choice == "none" else choice), detected
    if detected != "Prescott":
        return None, detected
    flags = ""
    with contextlib.suppress(OSError):
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    return ("SkylakeX" if " avx512f" in flags else "Haswell" if " avx2" in flags else None), detected


def _spawn(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds from spawn to exit, and stderr; a failure stops the benchmark."""
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return wall, p.stderr


def _phases(stderr: str) -> dict[str, float]:
    import ast

    for line in stderr.splitlines():
        if line.startswith("PHASES "):
            return ast.literal_eval(line[len("PHASES "):])
    return {}


def build(root: Path, n: int, d: int) -> tuple[Path, Path, float]:
    """The mirror (N features with explanations) and its attached decoder; seconds taken."""
    import numpy as np
    from safetensors.numpy import save_file

    from npclient.store.database import Database
    from npclient.testing.bigsource import write_big_source
    from npclient.weights import attach

    t = time.perf_counter()
    db_path = root / "mirror.duckdb"
    db = Database(db_path)
    try:
        sid = write_big_source(db_path, MODEL, SOURCE, n, acts_every=1 << 30, db=db)
        W = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
        save_file({"W_dec": W}, str(root / "sae.safetensors"))
        record = attach(db, sid, path=root / "sae.safetensors", tensor="W_dec", root=root / "weights")
    finally:
        db.close()
    return db_path, Path(record.decoder_path), time.perf_counter() - t


def agreement(db_path: Path, faiss_ids: Path, k: int) -> float:
    """Fraction of features whose k neighbours (self included) are the same set on both sides."""
    import duckdb
    import numpy as np

    con = duckdb.connect(str(db_path), read_only=True)
    try:
        ours = con.execute('SELECT neighbor_index FROM neighbors WHERE model_id = ? AND source = ? '
                           'ORDER BY "index", rank', [MODEL, SOURCE]).fetchnumpy()["neighbor_index"]
    finally:
        con.close()
    ours = np.asarray(ours).reshape(-1, k)
    theirs = np.load(faiss_ids)
    return float(np.mean([set(a) == set(b) for a, b in zip(ours.tolist(), theirs.tolist())]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=24_576, help="rows of the decoder (features of the source)")
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--k", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="threads for both sides (torch/MKL and faiss's OpenMP)")
    ap.add_argument("--keep", type=Path, default=None, help="build the mirror here and keep it (reused if present)")
    ap.add_argument("--openblas-coretype", default="auto", help="OPENBLAS_CORETYPE for the faiss side: auto (fix "
                    "the generic fallback of faiss's bundled OpenBLAS), none, or a core name such as SkylakeX")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    n, d, k = args.features, args.d, args.k
    exe = Path(sys.executable).with_name("np-mirror")
    tmp = tempfile.TemporaryDirectory(prefix="bench-allpairs-") if args.keep is None else None
    root = Path(tmp.name) if tmp is not None else args.keep
    root.mkdir(parents=True, exist_ok=True)
    print("## bench_allpairs_command")
    print(f"- cpu: {cpu_model()}; {usable_cores()} usable cores; threads for both sides: {args.threads}")
    print(f"- {', '.join(versions(['torch', 'numpy', 'numba', 'duckdb', 'faiss-cpu']))}; git HEAD {git_head()}")
    print(f"- load average before: {_load()}")
    try:
        db_path = root / "mirror.duckdb"
        decoder = root / "weights" / MODEL / SOURCE / "decoder.npy"
        if db_path.exists() and decoder.exists():
            import numpy as np

            shape = np.load(decoder, mmap_mode="r").shape
            if shape != (n, d):
                raise SystemExit(f"{root} holds a {shape[0]:,} x {shape[1]} decoder, not {n:,} x {d}: use another --keep")
            print(f"- reusing the mirror in {root}")
        else:
            db_path, decoder, built = build(root, n, d)
            print(f"- built once (not timed below): {n:,} features with explanations, a {n:,} x {d} float32 "
                  f"decoder attached, in {built:.1f} s")
        env = _env(root / "home", args.threads)
        core, detected = openblas_core_for_faiss(env, args.openblas_coretype)
        faiss_env = {**env, "OPENBLAS_CORETYPE": core} if core else env
        print(f"- faiss's bundled OpenBLAS picks the {detected} kernels here"
              + (f"; the faiss side runs with OPENBLAS_CORETYPE={core}" if core else ""))
        (root / "faiss_allpairs.py").write_text(FAISS_SCRIPT)
        (root / "profile_command.py").write_text(PROFILE_SCRIPT)
        command = ["geometry", "allpairs", f"{MODEL}/{SOURCE}", "-k", str(k), "--db", str(db_path)]
        sides = {
            "ours": [str(exe), *command],
            "faiss": [sys.executable, str(root / "faiss_allpairs.py"), str(decoder), str(root / "faiss"),
                      str(args.threads), str(k)],
        }
        print(f"\nours:  np-mirror {' '.join(command)}")
        print("       (start-up + imports, mirror open, decoder mmap, numba cached kernel, all-pairs, "
              f"DuckDB write of {n * k:,} rows, 30 rows printed with explanations)")
        print(f"faiss: python faiss_allpairs.py decoder.npy out {args.threads} {k}")
        print("       (start-up + import numpy/faiss, np.load of the same decoder.npy, normalise, "
              "IndexFlatIP add + search, np.save of D and I)")
        envs = {"ours": env, "faiss": faiss_env}
        warm = {name: _spawn(cmd, envs[name])[0] for name, cmd in sides.items()}
        print(f"warm-up run (not counted): ours {warm['ours']:.2f} s, faiss {warm['faiss']:.2f} s")

        times: dict[str, list[float]] = {"ours": [], "faiss": []}
        faiss_phases: list[dict[str, float]] = []
        for r in range(args.rounds):
            order = ["ours", "faiss"] if r % 2 == 0 else ["faiss", "ours"]
            for name in order:
                wall, err = _spawn(sides[name], envs[name])
                times[name].append(wall)
                if name == "faiss":
                    faiss_phases.append(_phases(err))
            print(f"  round {r + 1}: ours {times['ours'][-1]:.2f} s, faiss {times['faiss'][-1]:.2f} s, "
                  f"ratio {times['ours'][-1] / times['faiss'][-1]:.3f}")

        prof_env = {**env, "PYTHONPATH": str(REPO / "benchmarks") + os.pathsep + env["PYTHONPATH"]}  # its timers
        prof_wall, prof_err = _spawn([sys.executable, str(root / "profile_command.py"), *command], prof_env)
        phases = _phases(prof_err)
        if phases:
            phases["start-up + exit (interpreter teardown)"] = prof_wall - phases["end"]
        heavy = next((line[len("LOADED "):] for line in prof_err.splitlines() if line.startswith("LOADED ")), "")
        print(f"\nwhere ours spends its time (one instrumented run, {prof_wall:.2f} s spawn to exit; "
              f"also imported: {heavy or 'none of torch, pandas, scipy, pyarrow.dataset, sae_lens, ray'}):")
        if phases:
            inside = ("read the decoder (mmap)", "torch-free all-pairs (numba, MKL, kernels, search)",
                      "all_pairs_topk (the torch path: import torch + search)",
                      "write the neighbors table", "read back 30 rows + explanations")
            phases["  of which the rest (parsing, mirror open, lazy imports, printing)"] = (
                phases["command (after imports)"] - sum(phases.get(key, 0.0) for key in inside))
        for key, val in phases.items():
            if key != "end":
                print(f"  {key:<66}{val:7.3f} s")
        fastest = min(range(len(times["faiss"])), key=times["faiss"].__getitem__) if times["faiss"] else None
        best_faiss = dict(faiss_phases[fastest]) if fastest is not None and faiss_phases[fastest] else {}
        if best_faiss:
            best_faiss["start-up + exit (interpreter teardown)"] = times["faiss"][fastest] - best_faiss["end"]
        print(f"faiss's own phases (its fastest round, {times['faiss'][fastest]:.2f} s spawn to exit):"
              if fastest is not None else "faiss: no round")
        for key, val in best_faiss.items():
            if key != "end":
                print(f"  {key:<66}{val:7.3f} s")

        med = {name: statistics.median(v) for name, v in times.items()}
        best = {name: min(v) for name, v in times.items()}
        per_round = [o / f for o, f in zip(times["ours"], times["faiss"])]
        ratio_med, ratio_best = statistics.median(per_round), best["ours"] / best["faiss"]
        same = agreement(db_path, root / "faiss.I.npy", k)
        print(f"\nours:  median {med['ours']:.2f} s, best {best['ours']:.2f} s")
        print(f"faiss: median {med['faiss']:.2f} s, best {best['faiss']:.2f} s")
        print(f"ratio ours/faiss: {ratio_med:.3f} median of rounds, {ratio_best:.3f} best/best (goal <= 0.9)")
        print(f"agreement: {same:.4%} of features have the same {k} neighbours (self included) on both sides")
        print(f"load average after: {_load()}")
        if args.json:
            args.json.write_text(json.dumps({
                "features": n, "d": d, "k": k, "threads": args.threads, "times": times, "median": med, "best": best,
                "ratio_median_of_rounds": ratio_med, "ratio_best": ratio_best, "phases_ours": phases,
                "phases_faiss": faiss_phases, "same_neighbours": same, "warm_up": warm,
                "faiss_openblas": {"detected": detected, "coretype_set": core}}, indent=2))
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
