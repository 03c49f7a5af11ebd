"""`np-mirror neighbors` and `np-mirror geometry ...`: the shape of feature space, joined with meaning."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import open_mirror
from .options import DbOpt, DeviceOpt, Dtype, DtypeOpt, FormatOpt
from .output import Format, hint, rows_out

geometry_app = typer.Typer(
    help="Geometry of SAE decoders (needs `np-mirror weights add` first); results are stored as tables "
    "(neighbors, matches, coordinates, clusters, head_features) that SQL joins with explanations.",
    no_args_is_help=True,
)


def _parse_features(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise typer.BadParameter(f"takes comma-separated integers, got {text!r}") from None


def _check_features(value: Optional[str]) -> Optional[str]:
    """Refuse `--features 1,x` while parsing, before the mirror is opened."""
    if value is not None:
        _parse_features(value)
    return value


def _check_out(value: Optional[Path]) -> Optional[Path]:
    """Refuse a plot path of another kind while parsing, before any work is done."""
    if value is not None and value.suffix.lower() not in (".png", ".html"):
        raise typer.BadParameter(f"a plot is written as .png or .html, got {value.name!r}")
    return value


class Engine(str, enum.Enum):
    """Where all-pairs runs: this process, or a Ray cluster."""

    local = "local"
    ray = "ray"


LimitOpt = Annotated[int, typer.Option("--limit", min=0, help="Rows printed (0: all); every row is stored.")]
FeaturesOpt = Annotated[Optional[str], typer.Option("--features", help="Comma-separated feature indices.", show_default=False, callback=_check_features)]
WhereOpt = Annotated[Optional[str], typer.Option("--where", help="SQL condition on the features table, e.g. \"top_explanation ILIKE '%day%'\".", show_default=False)]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Write a plot: .png (matplotlib) or .html (plotly, works offline).", show_default=False, callback=_check_out)]


def _check_device(device: Optional[str]) -> None:
    """A device asked for must be present here (`--device cuda` on a machine without CUDA is bad
    input, exit 2), checked before the mirror is opened, even where a stored table would answer."""
    if device is not None:
        from npclient.geometry.device import pick_device

        pick_device(device)


def _features(text: Optional[str]) -> Optional[list[int]]:
    return None if text is None else _parse_features(text)


class _Bar:
    """A rich progress bar on stderr for long geometry work."""

    def __init__(self, label: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                  console=Console(stderr=True), transient=True)
        self._task = None

    def __enter__(self) -> "_Bar":
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, done: int, total: int) -> None:
        if self._task is None:
            self._task = self._progress.add_task("", total=total)
        self._progress.update(self._task, completed=done, total=total)


def neighbors(
    feature_id: Annotated[str, typer.Argument(metavar="MODEL/SOURCE/INDEX", help="Feature id, e.g. gpt2-small/7-res-jb/2592.", show_default=False)],
    k: Annotated[int, typer.Option("-k", min=1, help="How many neighbours.")] = 10,
    against: Annotated[Optional[str], typer.Option("--against", help="Search another source's decoder (same d_in).", show_default=False)] = None,
    db: DbOpt = None,
    fmt: FormatOpt = Format.table,
    device: DeviceOpt = None,
) -> None:
    """Nearest decoder directions of one feature, by exact cosine, with their explanations."""
    from npclient import FeatureId
    from npclient.geometry import api

    fid = FeatureId.parse(feature_id)
    _check_device(device)
    with open_mirror(db, read_only=False) as mirror:
        table = api.neighbors(mirror, fid, k, against=against, device=device)
    rows_out(table.to_pylist(), fmt, ["rank", "index", "cosine", "explanation"])


EngineOpt = Annotated[Engine, typer.Option("--engine", help="local: this process; ray: resident actors on a Ray cluster "
                                           "(pip install 'np-mirror[ray]'), one per GPU, else one per CPU.")]
AddressOpt = Annotated[Optional[str], typer.Option("--address", help="The Ray cluster: auto (the one running on this "
                                                   "machine) or its HOST:PORT; default: a new local cluster.",
                                                   show_default=False)]
SUMMARY = ["source", "rows", "units_written", "units_skipped", "seconds"]


def _outcome_row(o) -> dict:  # noqa: ANN001 - an AllPairsOutcome
    return {"source": str(o.source), "rows": o.rows, "units_written": o.units_written if o.dataset else None,
            "units_skipped": o.units_skipped if o.dataset else None, "seconds": round(o.seconds, 3)}


def _outcome_line(o) -> str:  # noqa: ANN001 - an AllPairsOutcome
    where = (f"{o.units_written} units written, {o.units_skipped} already committed in {o.dataset}" if o.dataset
             else "table neighbors")
    return f"{o.source}: {o.rows:,} rows ({where}) in {o.seconds:.2f} s"


@geometry_app.command("allpairs")
def allpairs(
    source: Annotated[Optional[str], typer.Argument(metavar="MODEL/SOURCE", help="Source, e.g. gpt2-small/7-res-jb "
                                                    "(or --all-with-weights).", show_default=False)] = None,
    k: Annotated[int, typer.Option("-k", min=1, help="Neighbours per feature (self first).")] = 25,
    db: DbOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = Dtype.float32,
    fmt: FormatOpt = Format.table,
    limit: LimitOpt = 30,
    engine: EngineOpt = Engine.local,
    address: AddressOpt = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="Write the neighbours into this shared Parquet "
                                                   "dataset (folder or s3://BUCKET/PREFIX) as `neighbors` units with "
                                                   "commit markers, instead of the mirror's table.",
                                                   show_default=False)] = None,
    unit_features: Annotated[int, typer.Option("--unit-features", min=1, help="With --dataset: feature rows per unit "
                                               "(one file and one marker each).")] = 4096,
    all_with_weights: Annotated[bool, typer.Option("--all-with-weights", help="Every source of the mirror with "
                                                   "attached weights, one after another (on the same cluster with "
                                                   "--engine ray); prints a line per source and a summary.")] = False,
) -> None:
    """Every feature's k nearest neighbours, stored in the `neighbors` table (or --dataset); the first rows are printed.

    Both engines give the same result (at the same --dtype: bfloat16/float16 select in low
    precision and rescore in float32). On CPUs with AMX, float32 takes its candidates from a
    bfloat16 pass and rescores them exactly: the same answer, faster. With --dataset the mirror is only read (its attached
    decoders): each unit is DATASET/neighbors/model=M/source=S/part-START-STOP.parquet (index,
    rank, neighbor_index, cosine), its marker recording k, dtype and the decoder's identity; a
    rerun skips committed units and rewrites any other in the same place.
    """
    from npclient.errors import InvalidOptionError
    from npclient.geometry import jobs

    if all_with_weights and source is not None:
        raise InvalidOptionError("name a source or ask for all sources with weights, not both", option="all_with_weights")
    if not all_with_weights and source is None:
        raise InvalidOptionError("name a source (MODEL/SOURCE), or ask for all sources with weights",
                                 option="all_with_weights")
    jobs.check_engine(engine.value, device=device, address=address)
    _check_device(device)
    loc = None
    if dataset is not None:
        from npclient.dataset import open_location

        loc = open_location(dataset)
    options = dict(engine=engine.value, device=device, dtype=dtype.value, address=address, dataset=loc,
                   unit_features=unit_features)
    with open_mirror(db, read_only=loc is not None) as mirror:
        if all_with_weights:
            outcomes = jobs.all_pairs_with_weights(mirror, k, on_source=lambda o: hint(_outcome_line(o)), **options)
            total = sum(o.rows for o in outcomes)
            hint(f"{len(outcomes)} sources, {total:,} rows, {sum(o.seconds for o in outcomes):.2f} s"
                 + (f" (job {outcomes[0].job_id})" if loc is not None else ""))
            rows_out([_outcome_row(o) for o in outcomes], fmt, SUMMARY)
            return
        with _Bar("all pairs") as bar:
            outcome = jobs.all_pairs(mirror, source, k, progress=bar, **options)
        if loc is not None:
            hint(_outcome_line(outcome) + f" (job {outcome.job_id})")
            rows_out([_outcome_row(outcome)], fmt, SUMMARY)
            return
        from npclient.geometry import api

        table = api.stored_neighbors(mirror, source, limit=limit or None)
    hint(f"{outcome.rows:,} rows in table neighbors for {source}; e.g. np-mirror sql \"SELECT * FROM neighbors n JOIN features f ON ...\"")
    rows_out(table.to_pylist(), fmt, ["index", "explanation", "rank", "neighbor_index", "neighbor_explanation", "cosine"])


@geometry_app.command("match")
def match(
    source_a: Annotated[Optional[str], typer.Argument(metavar="MODEL/SOURCE", help="Source whose features are matched.", show_default=False)] = None,
    source_b: Annotated[Optional[str], typer.Argument(metavar="MODEL/SOURCE", help="Source searched (e.g. a wider SAE of the same layer).", show_default=False)] = None,
    k: Annotated[int, typer.Option("-k", min=1, help="Matches per feature.")] = 1,
    db: DbOpt = None,
    fmt: FormatOpt = Format.table,
    limit: Annotated[int, typer.Option("--limit", min=0, help="Rows printed (0: all); every match is stored in `matches`.")] = 30,
    device: DeviceOpt = None,
    pairs: Annotated[Optional[str], typer.Option("--pairs", help="Many pairs instead of A B: A1:B1,A2:B2 (each "
                                                 "MODEL/SOURCE), e.g. layer 6 against 7, 16k width against 65k.",
                                                 show_default=False)] = None,
    adjacent: Annotated[Optional[str], typer.Option("--adjacent", metavar="MODEL", help="Many pairs: every two "
                                                    "sources of MODEL with weights on adjacent layers of one set "
                                                    "(6-res-jb:7-res-jb, 7-res-jb:8-res-jb, ...).",
                                                    show_default=False)] = None,
    engine: EngineOpt = Engine.local,
    address: AddressOpt = None,
) -> None:
    """For each feature of A its best decoder matches in B: feature splitting across widths.

    One pair (A B, local engine) prints the matches with both explanations. Many pairs
    (--pairs or --adjacent), or --engine ray (each pair one call on the cluster's resident
    workers, its result the local one), print one line per pair; every match is stored in
    `matches` (`np-mirror sql "SELECT * FROM matches WHERE against = 'MODEL/SOURCE'"`).
    """
    from npclient.errors import InvalidOptionError
    from npclient.geometry import api, jobs

    given = sum(x is not None for x in (pairs, adjacent)) + (source_a is not None)
    if given != 1 or (source_a is not None) != (source_b is not None):
        raise InvalidOptionError("give two sources A B, or --pairs A1:B1,..., or --adjacent MODEL (one of them)",
                                 option="pairs")
    jobs.check_engine(engine.value, device=device, address=address)
    _check_device(device)
    chosen = jobs.parse_pairs(pairs) if pairs is not None else None
    with open_mirror(db, read_only=False) as mirror:
        if adjacent is not None:
            chosen = jobs.adjacent_layer_pairs(mirror, adjacent)
        if chosen is None and engine is Engine.local:
            with _Bar("matching") as bar:
                table = api.match(mirror, source_a, source_b, k, device=device, progress=bar)
            rows = table.to_pylist()
            rows_out(rows[:limit] if limit else rows, fmt, ["index", "explanation", "rank", "match_index", "match_explanation", "cosine"])
            return
        chosen = chosen if chosen is not None else [(source_a, source_b)]

        def line(o) -> None:  # noqa: ANN001 - a MatchOutcome
            mean = "n/a" if o.mean_top_cosine is None else f"{o.mean_top_cosine:.4f}"
            hint(f"{o.source} -> {o.against}: {o.rows:,} rows in matches, mean best cosine {mean}")

        outcomes = jobs.match_pairs(mirror, chosen, k, engine=engine.value, device=device, address=address, on_pair=line)
    hint(f"{len(outcomes)} pairs, {sum(o.rows for o in outcomes):,} rows in table matches")
    rows_out([{"source": str(o.source), "against": str(o.against), "rows": o.rows, "mean_top_cosine": o.mean_top_cosine}
              for o in outcomes], fmt, ["source", "against", "rows", "mean_top_cosine"])


@geometry_app.command("nullspace")
def nullspace(
    source: Annotated[str, typer.Argument(metavar="MODEL/SOURCE", help="Source whose features are tested.", show_default=False)],
    matrix: Annotated[Path, typer.Option("--matrix", help="A d_in x r matrix (e.g. a head's W_K): .npy, or .safetensors with --tensor.", show_default=False)],
    tensor: Annotated[Optional[str], typer.Option("--tensor", help="Tensor name inside a .safetensors file (e.g. W_K).", show_default=False)] = None,
    ov_tensor: Annotated[Optional[str], typer.Option("--ov-tensor", help="Also test suppression by this d_in x d_in OV map from the same file.", show_default=False)] = None,
    threshold: Annotated[float, typer.Option("--threshold", help="A feature is invisible when at most this fraction of its squared norm lies in the matrix's column space (a random direction has about r/d_in).")] = 0.01,
    db: DbOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Features a head cannot see (null space of W_K), and those its OV map suppresses."""
    from npclient.geometry import api

    M = _load_matrix(matrix, tensor, "'--tensor'")
    ov = _load_matrix(matrix, ov_tensor, "'--ov-tensor'") if ov_tensor else None
    name = f"{matrix.name}:{tensor}" if tensor else matrix.name
    with open_mirror(db, read_only=False) as mirror:
        table = api.head_features(mirror, source, M, name=name, threshold=threshold, ov=ov)
    rows_out(table.to_pylist(), fmt, ["index", "colspace_fraction", "invisible", "suppression", "suppressed", "explanation"])


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _load_matrix(path: Path, tensor: Optional[str], tensor_flag: str):
    """`--matrix` as an array: a .npy file, or one tensor of a .safetensors file. A file that
    cannot serve is bad input (exit 2), said with the flag to change."""
    import numpy as np

    if not path.is_file():
        raise typer.BadParameter(f"no such file: {path}", param_hint="'--matrix'")
    if path.suffix == ".npy":
        try:
            return np.load(path)
        except (OSError, ValueError, EOFError) as exc:  # truncated, not a .npy, or pickled objects
            raise typer.BadParameter(f"{path} is not a readable .npy array: {_first_line(exc)}", param_hint="'--matrix'") from None
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            tensors = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several kinds
            raise typer.BadParameter(f"{path} is not a readable safetensors file: {_first_line(exc)}", param_hint="'--matrix'") from None
        if tensor is None or tensor not in tensors:
            what = "name a tensor" if tensor is None else f"no tensor {tensor!r}"
            raise typer.BadParameter(f"{what}; {path.name} has: {', '.join(sorted(tensors))}", param_hint=tensor_flag)
        return tensors[tensor]
    raise typer.BadParameter(f"a .npy or .safetensors file is needed, got {path.name}", param_hint="'--matrix'")


def _selection(mirror, source: str, features: Optional[str], where: Optional[str]):
    from npclient.errors import InvalidOptionError
    from npclient.geometry import api

    chosen = api.select_features(mirror, source, features=_features(features), where=where)
    if len(chosen) < 2:
        raise InvalidOptionError(f"the selection has {len(chosen)} feature(s); at least 2 are needed",
                                 option="where" if where is not None else "features")
    return chosen


@geometry_app.command("pca")
def pca(
    source: Annotated[str, typer.Argument(metavar="MODEL/SOURCE", show_default=False, help="Source, e.g. gpt2-small/7-res-jb.")],
    features: FeaturesOpt = None,
    where: WhereOpt = None,
    out: OutOpt = None,
    db: DbOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """PCA of a feature set's decoder rows (the days of the week lie on a circle), stored in `coordinates`."""
    from npclient.geometry import api

    with open_mirror(db, read_only=False) as mirror:
        chosen = _selection(mirror, source, features, where)
        result, table = api.pca(mirror, source, chosen)
    ratio = ", ".join(f"{v:.3f}" for v in list(result.explained_variance_ratio)[:2])
    hint(f"explained variance ratio: {ratio}")
    rows_out(table.to_pylist(), fmt, ["index", "x", "y", "explanation"])
    if out is not None:
        from npclient.geometry.plots import plot_pca

        plot_pca(result, table.column("explanation").to_pylist(), out)
        hint(f"wrote {out}")


@geometry_app.command("umap")
def umap(
    source: Annotated[str, typer.Argument(metavar="MODEL/SOURCE", show_default=False, help="Source, e.g. gpt2-small/7-res-jb.")],
    features: FeaturesOpt = None,
    where: WhereOpt = None,
    k: Annotated[int, typer.Option("-k", min=2, help="Neighbours in the kNN graph (self included).")] = 15,
    out: OutOpt = None,
    db: DbOpt = None,
    fmt: FormatOpt = Format.table,
    limit: LimitOpt = 30,
) -> None:
    """UMAP of a source's decoder (or a subset), on our exact cosine kNN graph, stored in `coordinates`."""
    from npclient.geometry import api

    with open_mirror(db, read_only=False) as mirror:
        chosen = _selection(mirror, source, features, where) if (features or where) else None
        with _Bar("umap") as bar:
            table = api.umap(mirror, source, features=chosen, k=k, progress=bar)
        stored = mirror.features(source, ["index", "max_act_approx"]) if out is not None else None  # the plot's colours
    hint(f"{table.num_rows:,} points in table coordinates (method 'umap')")
    rows = table.to_pylist()
    rows_out(rows[:limit] if limit else rows, fmt, ["index", "x", "y", "explanation"])
    if out is not None:
        import numpy as np

        from npclient.geometry.plots import plot_umap

        coords = np.column_stack([table.column("x").to_numpy(), table.column("y").to_numpy()])
        index = table.column("index").to_pylist()
        max_act = dict(zip(stored.column("index").to_pylist(), stored.column("max_act_approx").to_pylist()))
        colors = [max_act.get(i) for i in index]
        known = all(isinstance(c, (int, float)) for c in colors)
        plot_umap(coords, table.column("explanation").to_pylist(), out, features=index,
                  colors=colors if known else None,
                  title=f"UMAP of {len(index):,} features of {source}" + (", coloured by max activation" if known else ""))
        if not known:
            hint("np-mirror: points not coloured: some features have no stored max activation")
        hint(f"wrote {out}")


@geometry_app.command("cluster")
def cluster(
    source: Annotated[str, typer.Argument(metavar="MODEL/SOURCE", show_default=False, help="Source, e.g. gpt2-small/7-res-jb.")],
    features: FeaturesOpt = None,
    where: WhereOpt = None,
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="Cut the tree at this cosine distance.", show_default=False)] = None,
    n_clusters: Annotated[Optional[int], typer.Option("--clusters", min=1, help="Or cut it into this many clusters.", show_default=False)] = None,
    out: OutOpt = None,
    db: DbOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Hierarchical clustering (cosine, average linkage) of a feature set; refuses sets over 5,000."""
    from npclient.geometry import api

    if threshold is None and n_clusters is None:
        threshold = 0.5
    with open_mirror(db, read_only=False) as mirror:
        chosen = _selection(mirror, source, features, where)
        result, table = api.cluster(mirror, source, chosen, threshold=threshold, n_clusters=n_clusters)
    rows_out(sorted(table.to_pylist(), key=lambda r: (r["label"], r["index"])), fmt, ["label", "index", "explanation"])
    if out is not None:
        from npclient.geometry.plots import plot_dendrogram

        plot_dendrogram(result, table.column("explanation").to_pylist(), out)
        hint(f"wrote {out}")
