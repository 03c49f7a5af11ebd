"""`np-mirror demo` leaves nothing behind but the mirror and the figures it was asked for.

Its bucket, download cache and SAE folder are temporary folders of its own; they must be gone
when it ends, after a full run and after an error half-way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from npclient.testing.demo import run_demo


class Stop(Exception):
    """Raised by the output callback: an error in the middle of the demo."""


def test_the_demo_deletes_its_temporary_folders_on_an_error(tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    seen: list[str] = []

    def say(line: str) -> None:
        seen.append(line)
        if line.startswith("1. "):  # the emulator and its bucket are up, the cache made: fail now
            assert len(list(scratch.iterdir())) == 2  # bucket + download cache, both under scratch_root
            raise Stop(line)

    with pytest.raises(Stop):
        run_demo(tmp_path / "demo.duckdb", tmp_path / "figures", say=say, scratch_root=scratch)
    assert seen and list(scratch.iterdir()) == []


@pytest.mark.slow  # the whole demo: two syncs of a source set through faults, then the geometry (~40 s)
def test_a_full_demo_run_leaves_only_the_mirror_and_the_figures(tmp_path):
    tmpdir, home = tmp_path / "tmp", tmp_path / "home"
    tmpdir.mkdir()
    home.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir), "NP_MIRROR_HOME": str(home)}
    db, figures = tmp_path / "demo.duckdb", tmp_path / "figures"
    done = subprocess.run([str(Path(sys.executable).parent / "np-mirror"), "demo", "--db", str(db), "--out", str(figures)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    [walk] = [line.split(": ", 1)[1].split(" -> ") for line in done.stderr.splitlines() if "around the circle:" in line]
    week = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
    assert walk in (week, week[:1] + week[:0:-1])  # the planted circle, either way round
    assert db.exists() and (figures / "days_pca.png").exists()
    assert sorted(p.name for p in tmpdir.iterdir()) == []
    # --db and --out: under NP_MIRROR_HOME only the decoder attached to the demo mirror (its
    # `weights` row points there; it is the mirror's, not a temporary file)
    assert sorted(p.name for p in home.iterdir()) == ["weights"]
