"""Every notebook in notebooks/ runs top to bottom and draws its figure (what CI checks through `make
test-all`; `make test` runs the quickstart, the others are marked `slow`).

Each notebook is executed with nbclient in a fresh kernel of this interpreter (the venv's
`python3` kernel; the first injected cell asserts it), with a temporary working directory, so
any stray file lands there. Notebooks check the emulator's planted truth with assertions, so a
broken pipeline fails here as a `CellExecutionError` that names the cell. The figures are kept:
`notebooks/figures/<name>.png` (gitignored), or `$NP_NOTEBOOK_FIGURES/<name>.png`.

Also checked: the committed notebooks carry no outputs and match `notebooks/build_notebooks.py`,
their generator. The same notebooks run under nbmake too: `pytest --nbmake notebooks/`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_there_are_notebooks() -> None:
    assert [p.stem for p in NOTEBOOKS] == [
        "01_quickstart", "02_days_of_week_circle", "03_feature_splitting",
        "04_copy_suppression_null_space", "05_bulk_dump_analysis",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip the outputs of {cell.id}"


def test_notebooks_match_their_generator(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("build_notebooks", NOTEBOOK_DIR / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0, "notebooks/*.ipynb differ from build_notebooks.py: run it"


#: Run by the fast suite too: the sync-and-read notebook. The others (10-30 s each: a kernel, torch,
#: umap-learn's numba compile) are `slow`, so `make test-all` (CI) runs them; their planted truths
#: (the week's circle, split families, the tree, the null space, exports) are each asserted by a
#: fast test of the geometry API or the importer as well.
FAST_NOTEBOOKS = {"01_quickstart"}


@pytest.mark.parametrize("path", [p if p.stem in FAST_NOTEBOOKS else pytest.param(p, marks=pytest.mark.slow)
                                  for p in NOTEBOOKS], ids=lambda p: p.stem)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = Path(os.environ.get("NP_NOTEBOOK_FIGURES") or NOTEBOOK_DIR / "figures").resolve()
    figure = figures / f"{path.stem}.png"
    figure.unlink(missing_ok=True)
    # The kernel inherits this environment: where to keep the figure, and nothing of the user's.
    monkeypatch.setenv("NP_NOTEBOOK_FIGURES", str(figures))
    monkeypatch.setenv("NP_MIRROR_HOME", str(tmp_path / "home"))  # the notebook sets its own; belt and braces
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # a notebook that fails before its clean-up leaves WORK here
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    # Kernel specs from this venv first (a user-level "python3" spec could name another interpreter).
    monkeypatch.setenv("JUPYTER_PATH", str(Path(sys.prefix) / "share" / "jupyter"))

    nb = nbformat.read(path, as_version=4)
    # jupyter_client starts "python" kernels with sys.executable: make sure that is this venv.
    nb.cells.insert(0, nbformat.v4.new_code_cell(
        f"import sys\nassert sys.prefix == {sys.prefix!r}, sys.prefix", id="check-kernel"))
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
    )
    started = time.perf_counter()
    client.execute()
    print(f"{path.name}: {time.perf_counter() - started:.1f} s")

    data = figure.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000, f"{figure} is not the figure {path.name} should draw"
