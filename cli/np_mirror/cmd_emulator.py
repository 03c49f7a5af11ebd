"""`np-mirror emulator`: a local Neuronpedia for offline work, demos and tests."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .errors import fail


def emulator(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (3000 is where the official client looks with USE_LOCALHOST=true; 0 picks a free one).")] = 3000,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic features (same seed, same bytes).")] = 0,
    d_sae: Annotated[Optional[int], typer.Option("--d-sae", help="Features per SAE source [default: the emulator's catalog].")] = None,
    latency: Annotated[float, typer.Option(help="Seconds each API request waits before answering.")] = 0.0,
    fault_rate: Annotated[float, typer.Option("--fault-rate", help="Fraction of API requests that fail (500s, resets, truncated or malformed bodies, slow replies).")] = 0.0,
    hole_rate: Annotated[float, typer.Option("--hole-rate", help="Fraction of feature indices that 404 forever.")] = 0.0,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Rate limit: requests per window per client IP (off unless given).")] = None,
    window: Annotated[float, typer.Option("--window", help="Rate-limit window in seconds.")] = 3600.0,
    s3_port: Annotated[int, typer.Option("--s3-port", help="Port of the bulk-export bucket (a read-only S3 subset); 0 picks a free one.")] = 0,
    no_exports: Annotated[bool, typer.Option("--no-exports", help="Do not serve bulk exports.")] = False,
    write_export: Annotated[Optional[Path], typer.Option("--write-export", help="Write the emulator's sources in the real export layout under DIR, then exit.", show_default=False)] = None,
    write_sae: Annotated[Optional[Path], typer.Option("--write-sae", metavar="DIR", help="Also write each SAE source's decoder as an sae_lens folder DIR/MODEL/SOURCE (row i is feature i), and print the `np-mirror weights add` line for it.", show_default=False)] = None,
) -> None:
    """Serve a Neuronpedia emulator on 127.0.0.1 until Ctrl-C.

    It answers the real routes (/api/feature, /api/features, /api/model/list, ...) with
    deterministic synthetic features, and imitates the real rate limiter and failures.
    Point np-mirror at it with NEURONPEDIA_BASE_URL=http://127.0.0.1:PORT. It also serves
    its sources as bulk exports from a read-only S3 subset (ListObjectsV2, GET with Range):
    NP_MIRROR_EXPORTS_URL is printed at start. `--write-sae DIR` writes the SAEs behind its
    features, so `np-mirror weights add` and geometry work offline too.
    """
    from npclient.testing import EmulatorConfig, EmulatorServer, FaultConfig, RateLimitConfig

    if d_sae is not None and d_sae < 1:
        raise fail("--d-sae must be >= 1")
    if latency < 0:
        raise fail(f"--latency must be >= 0 seconds, got {latency:g}")
    if not 0 <= fault_rate <= 1:
        raise fail(f"--fault-rate must be in [0, 1], got {fault_rate:g}")
    if not 0 <= hole_rate < 1:
        raise fail(f"--hole-rate must be in [0, 1), got {hole_rate:g}")
    if limit is not None and (limit < 1 or not window > 0):
        raise fail(f"--limit must be >= 1 and --window > 0, got {limit} per {window:g} s")
    try:  # the emulator's configs check their values (rates in [0, 1], a window > 0, ...): bad input
        config = EmulatorConfig(seed=seed, latency_s=latency, hole_rate=hole_rate, faults=FaultConfig(rate=fault_rate, seed=seed))
        if d_sae is not None:
            config = config.replace(sources=tuple(s if s.kind != "sae" else type(s)(s.model_id, s.source_id, d_sae=d_sae, d_in=s.d_in) for s in config.sources))
        if limit is not None:
            config = config.replace(rate_limit=RateLimitConfig(api_limit=limit, window_s=window))
    except ValueError as exc:
        raise fail(f"bad input: {str(exc).splitlines()[0]} (see `np-mirror emulator --help`)") from None
    if write_export is not None:
        from npclient.testing import EmulatorState
        from npclient.testing.emulator.exports import write_export as write

        state = EmulatorState(config)
        files = write(state, write_export)
        typer.echo(f"wrote {len(files)} export files under {write_export}", err=True)
        if write_sae is not None:
            for line in _write_saes(state, write_sae):
                typer.echo(f"  {line}", err=True)
        return
    try:
        server = EmulatorServer(config, port=port).start()
    except (OSError, RuntimeError) as exc:
        raise fail(f"cannot serve on 127.0.0.1:{port}: {exc}")
    _stop_on_sigterm()
    s3 = None
    export_root: Optional[Path] = None
    try:
        attach = _write_saes(server.state, write_sae) if write_sae is not None else []
        if not no_exports:
            import tempfile

            from npclient.testing.emulator.exports import write_export as write
            from npclient.testing.emulator.s3 import S3Server

            export_root = Path(tempfile.mkdtemp(prefix="np-emulator-exports-"))
            write(server.state, export_root)
            try:
                s3 = S3Server(export_root, port=s3_port).start()
            except (OSError, RuntimeError) as exc:
                raise fail(f"cannot serve the exports on 127.0.0.1:{s3_port}: {exc}")
        typer.echo(f"Neuronpedia emulator on {server.url}  (Ctrl-C to stop)", err=True)
        for spec in server.state.sources():
            typer.echo(f"  {spec.model_id}/{spec.source_id}  {spec.d_sae if spec.kind == 'sae' else spec.n_vectors} {'features' if spec.kind == 'sae' else 'vectors'}", err=True)
        if attach:
            typer.echo(f"  SAE folders written under {write_sae}; attach one with:", err=True)
            for line in attach:
                typer.echo(f"  {line}", err=True)
        typer.echo(f"  export NEURONPEDIA_BASE_URL={server.url}", err=True)
        if s3 is not None:
            typer.echo(f"  export NP_MIRROR_EXPORTS_URL={s3.bucket_url}", err=True)
        while server.running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if s3 is not None:
            s3.stop()
        if export_root is not None:
            import shutil

            shutil.rmtree(export_root, ignore_errors=True)


def _write_saes(state: Any, root: Path) -> list[str]:
    """Write every plantable SAE source as `root/MODEL/SOURCE`; return the commands that attach them."""
    from npclient.testing.saes import can_plant, write_emulator_sae

    if root.exists() and not root.is_dir():
        raise fail(f"--write-sae: {root} exists and is not a folder")
    lines: list[str] = []
    for spec in state.sources():
        if spec.kind != "sae" or not can_plant(spec.d_sae, spec.d_in):
            continue
        try:
            folder = write_emulator_sae(root / spec.model_id / spec.source_id, state, spec.model_id, spec.source_id)
        except OSError as exc:
            raise fail(f"--write-sae: cannot write under {root}: {exc.strerror or exc}") from None
        lines.append(f"np-mirror weights add {spec.model_id}/{spec.source_id} --path {folder}")
    return lines


def _stop_on_sigterm() -> None:
    """`kill PID` stops the emulator as Ctrl-C does, so its temporary export folder is deleted."""
    import signal
    import threading

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
