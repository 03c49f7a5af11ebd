"""GPU check of the geometry engine: device info, CPU/GPU agreement, the all-pairs benchmark.

Steps, each in its own child process with its own time limit (a crash, a CUDA error or a
timeout costs that step only; what a step measured before it stopped is kept):

  info         torch/CUDA versions, the GPU's name, memory and SM count, import time.
  agree        24,576 x 768 float32 (with zero, NaN, Inf and duplicate rows), all-pairs top-25
               on CUDA against the CPU engine (`feature_topk(..., device="cpu")`) and a float64
               numpy brute force on 2,048 sampled rows: max |delta value|, index agreement,
               mismatches outside near-ties (reference values within 1e-6); and bfloat16 on
               CUDA: recall@25 against CPU float32, rescored values against float64.
  bench_bf16   131,072 x 2,304 bfloat16 all-pairs top-25 through `all_pairs_topk` (goal: < 1 s),
               after a warm-up on 16,384 rows: wall time (torch.cuda.synchronize around it),
               time of the block loop, peak GPU memory; the large-GEMM peak of the dtype; a naive
               faiss-free baseline (normalise, chunked U @ U.T, torch.topk) in the same process,
               its time, memory, ratio and the overlap of its neighbour sets with ours.
  bench_fp32   the same in float32 (TF32 off).
  bench_geometry  `benchmarks/bench_geometry.py --child cuda full` (its CUDA part: GEMM peaks,
               131,072 x 2,304 bf16 and fp32, 1,048,576 x 2,304 bf16), only if time is left.

Figures go to OUT/gpu_check.json (OUT: --out, else $OUT, else ./gpu_check_out), rewritten
after every step. Times are never asserted on. `--dry-run`: tiny sizes, CPU allowed (the
"GPU" side is then CPU with `selection="dense"`, the selection CUDA uses), to test the script.

    python3 benchmarks/gpu_check.py [--dry-run] [--out DIR] [--budget SECONDS] [--only STEP,...]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STEPS = ("info", "agree", "bench_bf16", "bench_fp32", "bench_geometry")
# (cap in seconds, least time worth starting it with)
LIMITS = {"info": (45, 10), "agree": (75, 20), "bench_bf16": (90, 25), "bench_fp32": (60, 25),
          "bench_geometry": (150, 75)}
DRY_LIMITS = {"info": (60, 5), "agree": (120, 5), "bench_bf16": (120, 5), "bench_fp32": (120, 5),
              "bench_geometry": (60, 5)}
TIE = 1e-6


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def emit(res: dict) -> None:
    """A step's figures so far (the parent keeps the last RESULT line it saw)."""
    print("RESULT " + json.dumps(res, default=float), flush=True)


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- step helpers


def _target(dry: bool):
    """(device, selection kwargs, is_cuda): CUDA; in a dry run without CUDA, CPU with the
    selection CUDA uses."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda"), {}, True
    if not dry:
        raise SystemExit("no CUDA device (torch.cuda.is_available() is False)")
    return torch.device("cpu"), {"selection": "dense"}, False


def _sync(is_cuda: bool) -> None:
    if is_cuda:
        import torch

        torch.cuda.synchronize()


def _timed(fn, is_cuda: bool):
    _sync(is_cuda)
    t0 = time.perf_counter()
    out = fn()
    _sync(is_cuda)
    return out, time.perf_counter() - t0


def _peak_reset(is_cuda: bool) -> float:
    if not is_cuda:
        return 0.0
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated() / 1e9


def _peak_gb(is_cuda: bool) -> float | None:
    if not is_cuda:
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 1e9


def compare_topk(v, i, rv, ri, *, skip: int = 0, tie: float = TIE) -> dict:
    """Figures of `(v, i)` (n x k) against a reference `(rv, ri)` holding k or k+1 columns (the
    extra one spots near-ties at the k-th place); `skip` leading columns are left out."""
    import numpy as np

    k = v.shape[1]
    nxt = rv[:, k:k + 1].astype(np.float64) if rv.shape[1] > k else np.full((v.shape[0], 1), np.nan)
    rv, ri = rv[:, :k], ri[:, :k]
    nan_r, nan_g = np.isnan(rv), np.isnan(v)
    cols = np.concatenate([rv.astype(np.float64), nxt], 1)
    with np.errstate(invalid="ignore"):
        d = np.abs(np.diff(cols, axis=1))
    d = np.where(np.isnan(d), np.inf, d)
    gap = d.copy()
    gap[:, 1:] = np.minimum(gap[:, 1:], d[:, :-1])
    sure = (gap > tie) | nan_r
    sl = (slice(None), slice(skip, None))
    both = ~nan_r & ~nan_g
    dv = np.abs(v.astype(np.float64) - rv.astype(np.float64))[both]
    rows = [set(a.tolist()) == set(b.tolist()) for a, b in zip(i[sl], ri[sl])]
    return {
        "rows": int(v.shape[0]),
        "nan_pattern_equal": bool((nan_r == nan_g).all()),
        "max_abs_delta_value": float(dv.max()) if dv.size else 0.0,
        "mean_abs_delta_value": float(dv.mean()) if dv.size else 0.0,
        "positions_same_index": float((i[sl] == ri[sl]).mean()),
        "rows_identical": float((i[sl] == ri[sl]).all(1).mean()),
        "rows_same_set": float(np.mean(rows)),
        "index_mismatches_outside_near_ties": int((sure[sl] & (i[sl] != ri[sl])).sum()),
        "near_tie_positions": int((~sure[sl]).sum()),
    }


def recall(i, ri, ok) -> float:
    """Mean over rows of |got & want| / |want|, on the entries `ok` (valid, non-NaN)."""
    import numpy as np

    fr = []
    for a, b, m in zip(i, ri, ok):
        want = set(b[m].tolist())
        if want:
            fr.append(len(set(a[m].tolist()) & want) / len(want))
    return float(np.mean(fr)) if fr else float("nan")


# --------------------------------------------------------------------------- steps


def step_info(dry: bool) -> dict:
    t0 = time.perf_counter()
    import numpy as np
    import torch

    res: dict = {"python": platform.python_version(), "torch": torch.__version__,
                 "torch_cuda": torch.version.cuda, "numpy": np.__version__,
                 "import_torch_s": time.perf_counter() - t0, "cpu_count": os.cpu_count(),
                 "cuda_available": torch.cuda.is_available()}
    t1 = time.perf_counter()
    import npclient.geometry  # noqa: F401  (the carried wheels make `import npclient` work)

    res["import_npclient_geometry_s"] = time.perf_counter() - t1
    import importlib.metadata as md

    vers = {}
    for dist in ("numba", "pytest", "hypothesis", "pydantic", "pydantic_core", "orjson", "starlette",
                 "uvicorn", "tenacity", "typing_extensions", "anyio", "click", "h11", "httpx", "pyarrow"):
        try:
            vers[dist] = md.version(dist)
        except md.PackageNotFoundError:
            vers[dist] = None
    res["packages"] = vers
    if torch.cuda.is_available():
        t2 = time.perf_counter()
        torch.zeros(1, device="cuda")
        torch.cuda.synchronize()
        res["cuda_init_s"] = time.perf_counter() - t2
        p = torch.cuda.get_device_properties(0)
        res.update({
            "device": torch.cuda.get_device_name(0), "capability": f"{p.major}.{p.minor}",
            "sm_count": p.multi_processor_count, "total_memory_gb": p.total_memory / 1e9,
            "device_count": torch.cuda.device_count(), "cudnn": torch.backends.cudnn.version(),
        })
        free, total = torch.cuda.mem_get_info()
        res["free_memory_gb"] = free / 1e9
    log(json.dumps(res, indent=1, default=str))
    return res


def step_agree(dry: bool) -> dict:
    import numpy as np
    import torch

    from npclient.geometry import all_pairs_topk, feature_topk

    dev, sel, is_cuda = _target(dry)
    n, d, k, m = (2048, 64, 25, 256) if dry else (24_576, 768, 25, 2048)
    res: dict = {"n": n, "d": d, "k": k, "sampled_rows": m, "device": str(dev), **sel}
    rng = np.random.default_rng(0)
    W = rng.standard_normal((n, d), dtype=np.float32)
    zero, nan_r, inf_r = [7, n - 1], [123], [n // 2]
    W[zero] = 0
    W[nan_r] = np.nan
    W[inf_r, 3] = np.inf
    W[n - 5] = 3.0 * W[11]  # an exact tie in cosine
    special = sorted(set(zero + nan_r + inf_r + [11, n - 5]))
    sample = np.array(sorted(set(rng.choice(n, m - len(special), replace=False).tolist()) | set(special)))
    res["sampled_rows"] = int(len(sample))
    res["invalid_rows"] = zero + nan_r + inf_r
    Wt = torch.from_numpy(W).to(dev)

    all_pairs_topk(Wt[:1024], k, device=dev, **sel)  # warm-up (kernels, TF32 flag)
    g32, t = _timed(lambda: all_pairs_topk(Wt, k, device=dev, **sel), is_cuda)
    res["gpu_float32_s"] = t
    log(f"agree: all_pairs_topk {n:,} x {d} float32 on {dev}: {t:.3f} s")
    gb16, t = _timed(lambda: all_pairs_topk(Wt, k, device=dev, dtype="bfloat16", **sel), is_cuda)
    res["gpu_bfloat16_s"] = t
    log(f"agree: all_pairs_topk {n:,} x {d} bfloat16 on {dev}: {t:.3f} s")
    emit(res)

    # the CPU engine on the sampled rows (its float32 answer), one column more for near-ties
    t0 = time.perf_counter()
    cpu = feature_topk(W, sample, k + 1, device="cpu")
    res["cpu_feature_topk_s"] = time.perf_counter() - t0
    v, i = g32.values[sample].numpy(), g32.indices[sample].numpy()
    rv, ri = cpu.numpy()
    res["float32_gpu_vs_cpu"] = c = compare_topk(v, i, rv, ri)
    c["self_first"] = bool((g32.indices[:, 0] == torch.arange(n)).all())
    c["invalid_rows_exact"] = bool(all(  # itself, then the other rows in index order, all NaN
        g32.indices[r].tolist() == [r] + [x for x in range(k) if x != r][: k - 1]
        and bool(torch.isnan(g32.values[r]).all()) for r in res["invalid_rows"]))
    log(f"agree: float32 GPU vs CPU engine, {len(sample)} rows: {json.dumps(c)}")
    emit(res)

    # an independent float64 brute force of the sampled valid rows (self left out)
    t0 = time.perf_counter()
    W64 = W.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        U = W64 / np.linalg.norm(W64, axis=1, keepdims=True)
    bad = ~np.isfinite(U).all(1)
    U[bad] = 0.0
    vs = np.array([r for r in sample if not bad[r]])
    ref_v = np.empty((len(vs), k), np.float64)
    ref_i = np.empty((len(vs), k), np.int64)
    cols = np.arange(n)
    for s in range(0, len(vs), 256):
        rows = vs[s:s + 256]
        S = U[rows] @ U.T
        S[:, bad] = -np.inf
        S[np.arange(len(rows)), rows] = -np.inf
        part = np.argpartition(-S, k, axis=1)[:, : k + 1]
        for j, (r, p) in enumerate(zip(rows, part)):
            o = p[np.lexsort((cols[p], -S[j, p]))][:k]
            ref_i[s + j], ref_v[s + j] = o, S[j, o]
    res["float64_brute_s"] = time.perf_counter() - t0
    pos = np.searchsorted(sample, vs)
    res["float32_gpu_vs_float64"] = c64 = compare_topk(v[pos, 1:], i[pos, 1:], ref_v, ref_i)
    log(f"agree: float32 GPU vs float64 brute force, {len(vs)} valid rows: {json.dumps(c64)}")
    cpu_pos = compare_topk(rv[pos, 1:k], ri[pos, 1:k], ref_v, ref_i)
    res["float32_cpu_vs_float64"] = cpu_pos
    emit(res)

    # bfloat16 on the GPU against CPU float32 (recall) and float64 (rescored values)
    bv, bi = gb16.values[sample].numpy(), gb16.indices[sample].numpy()
    ok = ~np.isnan(rv[:, :k])
    ok[:, 0] = False  # self
    exact = np.einsum("rd,rjd->rj", U[sample], U[bi])
    fin = ~np.isnan(bv)
    res["bfloat16_gpu"] = cb = {
        "recall_at_k_vs_cpu_float32": recall(bi[:, 1:], ri[:, 1:k], ok[:, 1:]),
        "nan_pattern_equal_to_float32": bool((np.isnan(bv) == np.isnan(rv[:, :k])).all()),
        "max_abs_value_vs_float64_exact": float(np.abs(bv[fin] - exact[fin]).max()) if fin.any() else 0.0,
    }
    log(f"agree: bfloat16 GPU vs CPU float32: {json.dumps(cb)}")
    res["ok"] = bool(c["nan_pattern_equal"] and c["index_mismatches_outside_near_ties"] == 0
                     and c["max_abs_delta_value"] <= 1e-5 and c["self_first"] and c["invalid_rows_exact"]
                     and c64["index_mismatches_outside_near_ties"] == 0 and cb["recall_at_k_vs_cpu_float32"] >= 0.97)
    log(f"agree: {'OK' if res['ok'] else 'DISAGREES'}")
    return res


def _naive_topk(W, k: int, dt, chunk: int):
    """The faiss-free baseline: normalise, then chunked U[s:e] @ U.T and torch.topk (self
    included, no handling of zero/NaN rows or ties)."""
    import torch

    U = torch.nn.functional.normalize(W.float(), dim=1).to(dt)
    n = U.shape[0]
    vals = torch.empty((n, k), dtype=dt, device=W.device)
    idx = torch.empty((n, k), dtype=torch.int64, device=W.device)
    for s in range(0, n, chunk):
        S = U[s:s + chunk] @ U.T
        tv, ti = torch.topk(S, k, dim=1)
        vals[s:s + chunk], idx[s:s + chunk] = tv, ti
        del S
    return vals.cpu(), idx.cpu()


def _gemm_peak(dev, dt, d: int, m: int, is_cuda: bool) -> float:
    import torch

    A = torch.randn(m, d, device=dev, dtype=dt)
    B = torch.randn(m, d, device=dev, dtype=dt)
    A @ B.T
    best = min(_timed(lambda: A @ B.T, is_cuda)[1] for _ in range(5))
    return 2 * m * m * d / best / 1e12


def step_bench(name: str, dry: bool) -> dict:
    import numpy as np
    import torch

    from npclient.geometry import all_pairs_topk

    dev, sel, is_cuda = _target(dry)
    dt = torch.bfloat16 if name == "bfloat16" else torch.float32
    n, d, k, warm_n, chunk = (4096, 128, 25, 512, 1024) if dry else (131_072, 2304, 25, 16_384, 8192)
    res: dict = {"n": n, "d": d, "k": k, "dtype": name, "device": str(dev), **sel,
                 "goal": "< 1 s for bfloat16" if name == "bfloat16" else None}
    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator(device=dev).manual_seed(0)
    W = torch.randn(n, d, device=dev, generator=g).to(dt)
    res["input_gb"] = W.numel() * W.element_size() / 1e9

    _, t = _timed(lambda: all_pairs_topk(W[:warm_n], k, device=dev, dtype=name, **sel), is_cuda)
    res["warmup_s"] = t
    log(f"bench {name}: warm-up {warm_n:,} rows: {t:.3f} s")
    base = _peak_reset(is_cuda)
    marks: dict = {}

    def progress(done: int, total: int) -> None:
        if done == total:  # the block loop is queued: wait for it, the rest is rescore + host sort
            _sync(is_cuda)
            marks["blocks"] = time.perf_counter()

    runs = []
    top = None
    for rep in range(2):
        t0 = time.perf_counter()
        top, t = _timed(lambda: all_pairs_topk(W, k, device=dev, dtype=name, progress=progress, **sel), is_cuda)
        runs.append({"seconds": t, "block_loop_s": marks.get("blocks", t0) - t0})
        log(f"bench {name}: all_pairs_topk {n:,} x {d}: {t:.3f} s (block loop {runs[-1]['block_loop_s']:.3f} s)")
        res.update({"runs": runs, "seconds": min(r["seconds"] for r in runs),
                    "peak_gpu_mem_gb": _peak_gb(is_cuda), "gpu_mem_before_gb": base})
        emit(res)
        if t > 5:
            break
    res["tflops"] = float(n) * n * d / res["seconds"] / 1e12  # the symmetric half of 2 n^2 d
    if name == "bfloat16" and not dry:
        res["goal_met"] = res["seconds"] < 1.0
    res["self_first"] = bool((top.indices[:, 0] == torch.arange(n)).all())
    res["any_nan"] = bool(torch.isnan(top.values).any())
    emit(res)

    peak = _gemm_peak(dev, dt, d, 2048 if dry else 16_384, is_cuda)
    res["gemm_peak_tflops"] = peak
    res["fraction_of_gemm_peak"] = res["tflops"] / peak
    log(f"bench {name}: {res['tflops']:.0f} TFLOP/s = {res['fraction_of_gemm_peak']:.0%} of the GEMM peak ({peak:.0f})")
    emit(res)

    _naive_topk(W[:warm_n], k, dt, chunk)
    base = _peak_reset(is_cuda)
    (nv, ni), t = _timed(lambda: _naive_topk(W, k, dt, chunk), is_cuda)
    rows = np.random.default_rng(1).choice(n, min(n, 4096), replace=False)
    a, b = top.indices[rows].numpy(), ni[rows].numpy()
    res["naive"] = {"seconds": t, "chunk_rows": chunk, "peak_gpu_mem_gb": _peak_gb(is_cuda),
                    "gpu_mem_before_gb": base,
                    "same_set_as_ours_rows": float(np.mean([set(x) == set(y) for x, y in zip(a.tolist(), b.tolist())])),
                    "overlap_with_ours": float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist())]))}
    res["ours_over_naive"] = res["seconds"] / t
    log(f"bench {name}: naive chunked matmul + torch.topk: {t:.3f} s; ours/naive {res['ours_over_naive']:.2f}; "
        f"neighbour overlap {res['naive']['overlap_with_ours']:.4f}")
    return res


def step_bench_geometry(dry: bool, timeout: float) -> dict:
    """The CUDA part of bench_geometry.py, as that script runs it (its child mode)."""
    cmd = [sys.executable, str(HERE / "bench_geometry.py"), "--child", "cuda", "quick" if dry else "full"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT "):])
            log(json.dumps(res, indent=1))
            return res
    raise RuntimeError(f"bench_geometry child failed ({p.returncode}): {p.stdout[-2000:]}\n{p.stderr[-4000:]}")


# --------------------------------------------------------------------------- parent


class Report:
    def __init__(self, out: Path, dry: bool, budget: float) -> None:
        self.path = out / "gpu_check.json"
        self.data: dict = {"script": "benchmarks/gpu_check.py", "dry_run": dry, "budget_s": budget,
                           "started_utc": now_utc(), "host": platform.node(), "steps": {}}
        out.mkdir(parents=True, exist_ok=True)
        self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.path)


_RUNNING: list = []


def _on_term(signum, frame) -> None:
    """`timeout` (or the device tool) stopping the parent: take the running step with it."""
    for p in _RUNNING:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    sys.exit(128 + signum)


def run_step(name: str, dry: bool, timeout: float) -> dict:
    """Run one step in a child process (own session, killed whole on timeout), echoing its
    output; returns {ok, seconds, returncode, result (its last RESULT), error}."""
    cmd = [sys.executable, "-u", str(Path(__file__).resolve()), "--step", name, "--step-timeout", str(int(timeout))]
    if dry:
        cmd.append("--dry-run")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(REPO)) if p)
    t0 = time.perf_counter()
    # its own process group (not a new session: the device machine ends a command's leftover
    # processes unless they started a session), so a timeout kills the step and its children
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                         process_group=0, cwd=str(REPO))
    _RUNNING[:] = [p]
    last: list[dict] = []
    tail: list[str] = []

    def reader() -> None:
        assert p.stdout is not None
        for line in p.stdout:
            if line.startswith("RESULT "):
                try:
                    last.append(json.loads(line[len("RESULT "):]))
                except ValueError:
                    pass
                continue
            print(f"[{name}] {line}", end="", flush=True)
            tail.append(line)
            del tail[:-40]

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    timed_out = False
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        rc = p.wait()
    th.join(10)
    _RUNNING.clear()
    out = {"ok": rc == 0 and not timed_out, "seconds": round(time.perf_counter() - t0, 3), "returncode": rc,
           "timeout_s": round(timeout, 1), "timed_out": timed_out, "result": last[-1] if last else None}
    if not out["ok"]:
        out["error"] = ("timed out after %.0f s" % timeout) if timed_out else "".join(tail[-15:])
    return out


def child(name: str, dry: bool, timeout: float) -> None:
    try:
        if name == "info":
            res = step_info(dry)
        elif name == "agree":
            res = step_agree(dry)
        elif name == "bench_bf16":
            res = step_bench("bfloat16", dry)
        elif name == "bench_fp32":
            res = step_bench("float32", dry)
        elif name == "bench_geometry":
            res = step_bench_geometry(dry, max(5.0, timeout - 5))
        else:
            raise SystemExit(f"unknown step {name}")
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        os._exit(1)
    emit(res)


def summarize(steps: dict) -> dict:
    s: dict = {}
    info = (steps.get("info") or {}).get("result") or {}
    s["device"] = info.get("device") or ("no CUDA" if info else None)
    s["torch"] = info.get("torch")
    ag = (steps.get("agree") or {}).get("result") or {}
    if ag:
        s["agreement_ok"] = ag.get("ok")
        f = ag.get("float32_gpu_vs_cpu") or {}
        s["agree_float32_max_abs_delta_value"] = f.get("max_abs_delta_value")
        s["agree_float32_index_mismatches_outside_near_ties"] = f.get("index_mismatches_outside_near_ties")
        s["agree_bfloat16_recall"] = (ag.get("bfloat16_gpu") or {}).get("recall_at_k_vs_cpu_float32")
    for key in ("bench_bf16", "bench_fp32"):
        b = (steps.get(key) or {}).get("result") or {}
        if b.get("seconds") is not None:
            tag = f"{b['dtype']}_{b['n']}x{b['d']}"
            s[f"{tag}_seconds"] = b["seconds"]
            s[f"{tag}_peak_gpu_mem_gb"] = b.get("peak_gpu_mem_gb")
            if "naive" in b:
                s[f"{tag}_naive_seconds"] = b["naive"]["seconds"]
                s[f"{tag}_ours_over_naive"] = b.get("ours_over_naive")
            if "goal_met" in b:
                s["goal_bf16_under_1s"] = "met" if b["goal_met"] else "missed"
    s["failed_steps"] = [k for k, v in steps.items() if not v.get("ok") and not v.get("skipped")]
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes, CPU allowed (tests the script)")
    ap.add_argument("--out", help="folder for gpu_check.json (default $OUT, else ./gpu_check_out)")
    ap.add_argument("--budget", type=float, default=float(os.environ.get("GPU_CHECK_PY_BUDGET_S", 180)),
                    help="seconds for all steps together (default 180)")
    ap.add_argument("--only", help="comma-separated steps to run (default all): " + ",".join(STEPS))
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--step-timeout", type=float, default=600, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        child(args.step, args.dry_run, args.step_timeout)
        return

    signal.signal(signal.SIGTERM, _on_term)
    deadline = time.monotonic() + args.budget
    out = Path(args.out or os.environ.get("OUT") or (REPO / "gpu_check_out"))
    rep = Report(out, args.dry_run, args.budget)
    steps = STEPS if not args.only else tuple(s for s in args.only.split(",") if s)
    limits = DRY_LIMITS if args.dry_run else LIMITS
    log(f"gpu_check: {'dry run, ' if args.dry_run else ''}budget {args.budget:.0f} s, steps {', '.join(steps)}; "
        f"figures in {rep.path}")
    for name in steps:
        cap, least = limits.get(name, (60, 5))
        left = deadline - time.monotonic()
        if left < least:
            rep.data["steps"][name] = {"ok": False, "skipped": f"not started: {left:.0f} s left, needs {least}"}
            log(f"== {name}: skipped ({left:.0f} s left)")
            rep.write()
            continue
        timeout = min(cap, left)
        log(f"== {name} (limit {timeout:.0f} s) {now_utc()}")
        res = run_step(name, args.dry_run, timeout)
        rep.data["steps"][name] = res
        log(f"== {name}: {'ok' if res['ok'] else 'FAILED'} in {res['seconds']:.1f} s")
        rep.data["summary"] = summarize(rep.data["steps"])
        rep.write()
    rep.data["finished_utc"] = now_utc()
    rep.data["summary"] = summarize(rep.data["steps"])
    rep.write()
    log("summary: " + json.dumps(rep.data["summary"], indent=1, default=str))
    sys.exit(0 if not rep.data["summary"]["failed_steps"] else 1)


if __name__ == "__main__":
    main()
