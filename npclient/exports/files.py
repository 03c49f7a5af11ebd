"""Which folders of a dump on disk are sources, which batch files they hold, and whose they are.

A source folder holds `features/`, `activations/` and `explanations*/` batches
(`batch-N.jsonl.gz`, sorted numerically); its id comes from its own files, never from the
path alone (see `source_id_of`). No SQL here: the store imports what this module finds.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Optional

from ..errors import ExportError, InvalidIdError
from ..ids import SourceId
from ..models import SourceInfo

__all__ = ["PART_KINDS", "find_source_dirs", "source_id_of", "part_files", "source_info", "name_id"]

PART_KINDS = ("features", "activations", "explanations")
_BATCH = re.compile(r"^batch-(\d+)\.jsonl\.gz$")
#: Folders next to the sources of a model that are not sources (layout.NON_SOURCE_FOLDERS).
_NOT_SOURCES = frozenset({"headvis", "jlens"})


def _batches(folder: Path) -> list[tuple[int, Path]]:
    out = []
    for p in folder.glob("batch-*.jsonl.gz"):
        m = _BATCH.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)  # numerically: batch-2 before batch-10


def part_files(source_dir: Path) -> list[tuple[str, int, Path]]:
    files: list[tuple[str, int, Path]] = []
    for kind in ("features", "activations"):
        files += [(kind, n, p) for n, p in _batches(source_dir / kind)]
    for folder in sorted(source_dir.glob("explanations*")):
        if folder.is_dir():
            files += [("explanations", n, p) for n, p in _batches(folder)]
    return files


def _has_batches(folder: Path) -> bool:
    return folder.is_dir() and folder.name not in _NOT_SOURCES and bool(part_files(folder))


def source_info(source_dir: Path) -> Optional[SourceInfo]:
    meta = source_dir / "source.jsonl"
    if not meta.is_file():
        return None
    try:
        line = meta.read_bytes().splitlines()[0]
        return SourceInfo.model_validate(json.loads(line))  # json: a metadata row may hold NaN
    except (IndexError, ValueError):
        return None


def _first_record(source_dir: Path) -> Optional[dict]:
    for _, _, path in part_files(source_dir):
        try:
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                line = fh.readline()
            record = json.loads(line) if line.strip() else None
        except (OSError, EOFError, ValueError):
            continue
        if isinstance(record, dict):
            return record
    return None


def source_id_of(source_dir: Path, fallback: Optional[SourceId] = None) -> Optional[SourceId]:
    """Which source a folder of batches holds, from what the folder says about itself.

    `source.jsonl` (its `modelId` and `id`, the Source row export-data.py writes), else the first
    record of a batch (`modelId` and `layer`), else `fallback` (e.g. the names of the folders of
    a `v1/{model}/{source}` tree). A folder named `~/Downloads/0-res-jb` or `/tmp/whatever`
    is imported under the id its files carry.
    """
    candidates: list[tuple[object, object]] = []
    info = source_info(source_dir)
    if info is not None:
        candidates.append((info.model_id, info.id))
    record = _first_record(source_dir)
    if record is not None:
        candidates.append((record.get("modelId"), record.get("layer")))
    for model_id, source in candidates:
        if isinstance(model_id, str) and isinstance(source, str):
            try:
                return SourceId(model_id, source)
            except InvalidIdError:
                continue
    return fallback


def name_id(model: str, source: str) -> Optional[SourceId]:
    try:
        return SourceId(model, source)
    except InvalidIdError:
        return None


def find_source_dirs(root: Path) -> list[tuple[SourceId, Path]]:
    """Source folders under a dump: `root` itself, `root/{source}`, or `root/[v1/]{model}/{source}`.

    A folder holding `features/`, `activations/` or `explanations*/` batches is a source; its
    id comes from its own files (`source_id_of`), folder names being the last resort. Below the
    root, only folders named like sources (`0-res-jb`) or carrying a `source.jsonl` count:
    `headvis/`, `jlens/` and the like are skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise ExportError(f"{root} is not a directory")
    if (root / "v1").is_dir():
        root = root / "v1"

    def is_source(d: Path) -> bool:
        # Sources start with their layer number (`0-res-jb`); `headvis/`, `jlens/` do not.
        named = bool(re.match(r"^[0-9]+-", d.name)) or (d / "source.jsonl").is_file()
        return named and _has_batches(d)

    found: list[tuple[SourceId, Path]] = []

    def add(folder: Path, fallback: Optional[SourceId]) -> None:
        sid = source_id_of(folder, fallback)
        if sid is None:
            raise ExportError(f"cannot tell which source {folder} holds: no source.jsonl, no readable batch record")
        found.append((sid, folder))

    if _has_batches(root):
        add(root, name_id(root.parent.name, root.name))
    else:
        for first in sorted(p for p in root.iterdir() if p.is_dir()):
            if is_source(first):
                add(first, name_id(root.name, first.name))
                continue
            for second in sorted(p for p in first.iterdir() if p.is_dir()):
                if is_source(second):  # headvis/, jlens/ and the like have no batches: skipped
                    add(second, name_id(first.name, second.name))
    if not found:
        raise ExportError(f"no Neuronpedia export source folders under {root}")
    return found
