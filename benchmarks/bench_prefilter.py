"""The float32 CPU all-pairs with and without its bfloat16 candidate pass, side by side in one run.

`all_pairs_topk(W, k, prefilter="bfloat16")` (bf16 GEMMs, `slots(k)` candidates a row, exact
rescoring, whole-row fallback) against `prefilter="none"` (float32 GEMMs into the same heap
scan), in-process, warm (one untimed call each first: numba's cached kernels, oneDNN's JIT),
rounds alternating which runs first. Prints each side's median, the ratio bf16/float32, the
phases of one bf16 run, and whether both answers are equal (indices; values within 2e-7).
Meant for CPUs with AMX (`amx_bf16`); elsewhere the bf16 side is slower, which this shows too.
Never asserts on time.

    .venv/bin/python benchmarks/bench_prefilter.py [--features 24576] [--d 768] [--k 25] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from machine import cpu_model, git_head, time_calls, usable_cores, versions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=24_576)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--k", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    import torch

    from npclient.geometry import prefilter as pf
    from npclient.geometry import symmetric as sym

    print("## bench_prefilter")
    print(f"- cpu: {cpu_model()}; {usable_cores()} usable cores; torch threads {torch.get_num_threads()}; "
          f"AMX bf16: {pf.amx_bf16()}")
    print(f"- {', '.join(versions(['torch', 'numpy', 'numba']))}; git HEAD {git_head()}")
    W = np.random.default_rng(0).standard_normal((args.features, args.d), dtype=np.float32)
    print(f"- {args.features:,} x {args.d} float32 (Gaussian rows), k = {args.k}; candidates a row: "
          f"{pf.slots(args.k - 1, args.features - 1)}")

    def run(mode: str):
        t = time.perf_counter()
        out = sym.all_pairs_topk(W, args.k, prefilter=mode)
        return time.perf_counter() - t, out

    _, ref = run("none")
    _, low = run("bfloat16")
    same_idx = float((ref.indices == low.indices).float().mean())
    dv = float((ref.values - low.values).abs().max())
    times: dict[str, list[float]] = {"none": [], "bfloat16": []}
    for r in range(args.rounds):
        order = ("none", "bfloat16") if r % 2 == 0 else ("bfloat16", "none")
        for mode in order:
            times[mode].append(run(mode)[0])
        print(f"  round {r + 1}: float32 {times['none'][-1]:.3f} s, bf16 candidates {times['bfloat16'][-1]:.3f} s")

    gemm_and_scan = "bf16 GEMMs + heap scan (slots a row)"
    exact = "bounds, candidates, exact rescoring (incl. whole rows)"
    phases: dict[str, float] = dict.fromkeys([gemm_and_scan, exact, "  of which rows recomputed whole"], 0.0)
    time_calls(sym, "_symmetric_heap", gemm_and_scan, phases)
    time_calls(sym, "exact_from_candidates", exact, phases)
    time_calls(pf, "_whole_rows", "  of which rows recomputed whole", phases)
    rows_whole: list[int] = []
    whole = pf._whole_rows

    def count_rows(Uc, products, rows, *a):
        rows_whole.append(int(rows.size))
        return whole(Uc, products, rows, *a)

    pf._whole_rows = count_rows
    run("bfloat16")
    print("\nphases of one bf16 run:")
    for label, s in phases.items():
        print(f"  {label:58s} {s:.3f} s")
    print(f"  rows recomputed whole: {sum(rows_whole):,} of {args.features:,}")
    a, b = statistics.median(times["none"]), statistics.median(times["bfloat16"])
    print(f"\nfloat32: median {a:.3f} s; bf16 candidates: median {b:.3f} s; ratio bf16/float32 {b / a:.3f}")
    print(f"answers: indices equal {same_idx:.6%}, values max |diff| {dv:.2e} (float32 GEMM vs exact rescoring)")


if __name__ == "__main__":
    main()
