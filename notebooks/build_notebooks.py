"""Write the notebooks of `notebooks/` from the cell sources below (outputs stripped).

    .venv/bin/python notebooks/build_notebooks.py           # (re)write every notebook
    .venv/bin/python notebooks/build_notebooks.py --check   # exit 1 if a notebook differs from this file

Edit the cells here, not in the .ipynb files: the notebooks are generated, committed without
outputs, and `tests/test_notebooks.py` executes each one (and checks that they match this
file). Every notebook is self-contained and offline: it starts the bundled Neuronpedia
emulator, writes the emulator's synthetic SAE to a temporary folder, and checks the planted
truth with assertions, so a broken pipeline fails the notebook. Each one ends with a figure
in `notebooks/figures/<name>.png` (or `$NP_NOTEBOOK_FIGURES/<name>.png`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from textwrap import dedent

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def md(text: str) -> tuple[str, str]:
    return ("markdown", dedent(text).strip("\n"))


def code(text: str) -> tuple[str, str]:
    return ("code", dedent(text).strip("\n"))


def setup_cell(tag: str, extra_imports: str = "") -> tuple[str, str]:
    """The first code cell of every notebook: a private NP_MIRROR_HOME and the figures folder."""
    head = dedent(
        f'''
        import os
        import shutil
        import tempfile
        from pathlib import Path

        # Everything this notebook writes goes under WORK (deleted in the last cell): the mirror, the
        # synthetic SAE, downloaded exports. NP_MIRROR_HOME points there too, so the notebook never
        # touches your real mirror (~/.cache/np-mirror).
        WORK = Path(tempfile.mkdtemp(prefix="np-nb-{tag}-"))
        os.environ["NP_MIRROR_HOME"] = str(WORK / "home")
        # The figure is kept: notebooks/figures/ when run from notebooks/ (gitignored).
        FIGURES = Path(os.environ.get("NP_NOTEBOOK_FIGURES", "figures")).resolve()
        FIGURES.mkdir(parents=True, exist_ok=True)
        '''
    ).strip("\n")
    return ("code", head + "\n" + dedent(extra_imports).rstrip("\n"))


def cleanup_cell(*stops: str) -> tuple[str, str]:
    lines = "\n".join(stops)
    return ("code", "# Tidy up: stop the local servers and delete WORK (the figure stays in FIGURES).\n"
            + lines + "\nshutil.rmtree(WORK, ignore_errors=True)")


def _show_helper() -> str:
    return '''
    def show(table, n=10):
        """An Arrow table as a pandas DataFrame when pandas is installed (pretty in Jupyter), else as Arrow."""
        try:
            return table.slice(0, n).to_pandas()
        except ImportError:
            return table.slice(0, n)
    '''


# ---------------------------------------------------------------------------------------------------
# 01 quickstart
# ---------------------------------------------------------------------------------------------------

NB01 = [
    md(
        """
        # 01 · Quickstart: mirror a source, then read it like a database

        [Neuronpedia](https://www.neuronpedia.org) hosts explanations, top activations and decoder
        neighbours for millions of sparse-autoencoder (SAE) features. `np-mirror` keeps the parts you
        care about in a local DuckDB file, so a study reads features with SQL, Arrow or pandas instead of
        one HTTP request per question.

        This notebook runs **offline**: it starts the bundled Neuronpedia emulator (same routes and payload
        shapes as the real site, seeded synthetic data) and shows, in one kernel:

        1. `Mirror.sync`: mirror one SAE (`gpt2-small/0-res-jb`, 256 features here), then rerun it for free;
        2. `Mirror.status()`, `Mirror.feature(...)`: what `np-mirror status` and `np-mirror show` print;
        3. SQL over explanations, and the same data as Arrow, pandas and plain DuckDB;
        4. reading right after syncing, with no reopen and no second process.

        The emulator's SAE has planted features with known explanations (the days of the week, the months,
        a small concept tree, ...), so the cells below can *assert* what they find.
        """
    ),
    md(
        """
        ### On the real site: one line changes

        ```python
        mirror = Mirror()              # $NP_MIRROR_HOME/mirror.duckdb, default ~/.cache/np-mirror
        mirror.sync(SRC)               # instead of mirror.sync(SRC, base_url=server.url, exports=False)
        ```

        Leave `NEURONPEDIA_BASE_URL` unset (it defaults to `https://www.neuronpedia.org`); the default pacing
        keeps to 90% of Neuronpedia's 25,000 requests per hour. On the real site `sync` reads the public bulk
        exports first and asks the API only for the gaps (here there is no bucket, hence `exports=False`);
        from a shell it is `np-mirror sync gpt2-small/0-res-jb`.
        """
    ),
    setup_cell("01", "\nimport duckdb\nimport numpy as np\n\nfrom npclient import BlockingClient, Mirror, SourceId\nfrom npclient.testing import EmulatorConfig, EmulatorServer, SourceSpec\n" + dedent(_show_helper())),
    md(
        """
        ## 1. A local Neuronpedia

        `EmulatorServer` serves on `127.0.0.1` on a free port. Its SAE sources with at least 58 features carry
        the planted decoder; `topkCosSimIndices` are computed from that decoder by brute force.
        """
    ),
    code(
        """
        SRC = SourceId("gpt2-small", "0-res-jb")
        D_SAE = 256
        server = EmulatorServer(EmulatorConfig(sources=(SourceSpec(SRC.model_id, SRC.source, d_sae=D_SAE, d_in=64),))).start()
        print("emulator on", server.url)
        """
    ),
    md(
        """
        ## 2. Sync

        `Mirror.sync` works in a script and inside Jupyter's running event loop alike. It plans
        first (the feature count comes from the source listing), then fetches in batches of 25 features
        (`POST /api/features`) and commits every ~200 features.
        """
    ),
    code(
        """
        mirror = Mirror(WORK / "mirror.duckdb")

        summary = mirror.sync(SRC, base_url=server.url, exports=False)

        part = summary.sources[0]
        print(f"fetched {part.fetched} features in {summary.requests} requests, {summary.seconds:.2f} s; failed: {summary.failed}")
        assert part.fetched == D_SAE and summary.failed == 0
        """
    ),
    md(
        """
        **Resumable.** A rerun asks only for what is missing; for a complete source that is nothing at all,
        not even the source listing (the mirror knows the source's size).
        """
    ),
    code(
        """
        again = mirror.sync(SRC, base_url=server.url, exports=False)
        print("rerun:", again.requests, "requests,", again.sources[0].already_present, "features already present")
        assert again.requests == 0 and again.sources[0].already_present == D_SAE
        """
    ),
    md("## 3. `status`: what the mirror holds, per source"),
    code(
        """
        status = mirror.status()
        row = status[0]
        assert (row["source"], row["present"], row["total"], row["failed"]) == (str(SRC), D_SAE, D_SAE, 0)
        try:
            import pandas as pd
            display(pd.DataFrame(status))
        except ImportError:
            print(status)
        """
    ),
    md(
        """
        ## 4. `show`: one feature, exactly as the server sent it

        `Mirror.feature(id)` returns the same `Feature` object the client returns (`.raw` is the JSON body).
        Find the feature explained as "Monday" (`features(where=...)` takes a SQL condition on the `features`
        table), then read it; `activations(id, top=N)` gives its strongest examples as a table, top-first.
        """
    ),
    code(
        '''
        monday_index = mirror.features(SRC, ["index"], where="top_explanation = 'Monday'").column("index").to_pylist()
        assert len(monday_index) == 1, monday_index
        feature = mirror.feature(f"{SRC}/{monday_index[0]}")

        print(feature.id, "·", feature.top_explanation, "· max activation ≈", feature.max_act_approx)
        for e in feature.explanations:
            print(f"  explanation: {e.description!r} ({e.explanation_model_name})")
        # POST /api/features sends activations unordered; the mirror ranks them: rank 0 is the largest max_value.
        strongest = mirror.activations(feature.id, top=3)
        display(show(strongest.select(["rank", "max_value", "max_value_token_index", "activation_id"])))
        top = next(a for a in feature.activations if a.id == strongest.column("activation_id")[0].as_py())
        assert top.max_value == max(a.max_value for a in feature.activations if a.max_value is not None)
        peak = top.max_value_token_index
        window = range(max(0, peak - 8), min(len(top.tokens), peak + 4))
        print("  top activation:", "".join(f"[[{top.tokens[i]}]]" if i == peak else top.tokens[i] for i in window).replace("\\n", "\\\\n"))

        assert feature.top_explanation == "Monday"
        assert feature.raw["index"] in (monday_index[0], str(monday_index[0]))
        assert len(feature.activations) >= 20
        assert int(np.nanargmax(np.array(top.values, dtype=float))) == peak
        '''
    ),
    md(
        """
        The mirror answers what the live API answers. `BlockingClient` is the synchronous facade of the
        client (it runs its own loop in a thread, so it works inside Jupyter too); `get_feature` uses the
        single-feature GET endpoint, which also returns explanation scores (the batched POST that `sync` uses
        trims explanations, as Neuronpedia does, and sends activations in no particular order).
        """
    ),
    code(
        """
        with BlockingClient(server.url, budget=None) as live:
            fresh = live.get_feature(feature.id)
        assert fresh.top_explanation == feature.top_explanation
        assert fresh.max_act_approx == feature.max_act_approx
        assert sorted(a.id for a in fresh.activations) == sorted(a.id for a in feature.activations)
        print("live API and mirror agree on", feature.id)
        """
    ),
    md(
        """
        ## 5. Search the explanations; decoder neighbours without weights

        Every explanation is a row (`explanations`: `description`, `explanation_model_name`, `type_name`, ...);
        every feature carries its `top_explanation`. `Mirror.search` is a keyword search over all explanations,
        offline and ranked exactly as `np-mirror serve`'s explanation search ranks; "day" finds the seven
        day-of-the-week features, each also through its second explanation. `Mirror.neighbors` gives a feature's
        nearest decoder directions: from attached weights when there are some (notebook 02), else from the
        `topkCosSim` lists Neuronpedia sends with each feature, and the `origin` column says which.
        """
    ),
    code(
        '''
        hits = mirror.search("day", source=SRC, limit=None)
        display(show(hits.select(["index", "description", "score"]), n=14))
        days = mirror.features(SRC, ["index", "top_explanation"], where='"index" IN (SELECT unnest(?))',
                               params=[hits.column("index").to_pylist()])
        DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
        assert sorted(days.column("top_explanation").to_pylist()) == sorted(DAYS)

        near = mirror.neighbors(feature.id, k=4)
        assert set(near.column("origin").to_pylist()) == {"stored topkCosSim"}
        assert near.column("explanation")[0].as_py() == "Monday" and set(near.column("explanation").to_pylist()[1:3]) == {"Sunday", "Tuesday"}
        show(near)
        '''
    ),
    md(
        """
        ## 6. Arrow, pandas and DuckDB

        `Mirror.features(source)` and `Mirror.sql(...)` return `pyarrow.Table`s: zero-copy into pandas
        (`.to_pandas()`), Polars (`polars.from_arrow`) or DuckDB, which queries an Arrow table in a Python
        variable by its name.
        """
    ),
    code(
        '''
        feats = mirror.features(SRC, columns=["index", "top_explanation", "max_act_approx", "frac_nonzero", "n_activations"])
        print(feats.num_rows, "rows;", feats.schema)
        assert feats.num_rows == D_SAE

        busiest = duckdb.sql(
            """SELECT top_explanation, count(*) AS features, round(avg(max_act_approx), 2) AS mean_max_act
               FROM feats WHERE top_explanation IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5"""
        ).to_arrow_table()
        show(busiest)
        '''
    ),
    md(
        """
        ## 7. Figure: the source at a glance, and the Monday feature's top activation

        Left: the distribution of each feature's maximum activation, with the seven day features marked.
        Right: the Monday feature's strongest example, token by token (the peak token is the one Neuronpedia
        highlights).
        """
    ),
    code(
        """
        import matplotlib.pyplot as plt

        max_act = feats.column("max_act_approx").to_numpy(zero_copy_only=False)
        day_rows = mirror.features(SRC, ["top_explanation", "max_act_approx"], where="top_explanation IN (SELECT unnest(?))",
                                   params=[DAYS]).to_pylist()

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1, 1.6]})
        ax1.hist(max_act[np.isfinite(max_act)], bins=40, color="#9db4c0")
        for r in day_rows:
            ax1.axvline(r["max_act_approx"], color="#c2473a", lw=1)
        ax1.set(title=f"{SRC}: max activation of {D_SAE} features\\n(red: the seven day features)",
                xlabel="max_act_approx", ylabel="features")

        lo, hi = max(0, peak - 14), min(len(top.tokens), peak + 6)
        vals = np.nan_to_num(np.array(top.values[lo:hi], dtype=float))
        ax2.bar(range(hi - lo), vals, color=["#c2473a" if i + lo == peak else "#5b8db8" for i in range(hi - lo)])
        ax2.set_xticks(range(hi - lo), [repr(t)[1:-1][:10] for t in top.tokens[lo:hi]], rotation=70, fontsize=8)
        ax2.set(title=f"{feature.id} ({feature.top_explanation}): top activation, peak token in red", ylabel="activation")
        fig.tight_layout()
        fig.savefig(FIGURES / "01_quickstart.png", dpi=110)
        plt.show()
        assert (FIGURES / "01_quickstart.png").stat().st_size > 0
        """
    ),
    cleanup_cell("mirror.close()", "server.stop()"),
]


# ---------------------------------------------------------------------------------------------------
# 02 days of the week
# ---------------------------------------------------------------------------------------------------

_SYNC_AND_ATTACH = '''
SRC = SourceId("gpt2-small", "0-res-jb")
D_SAE = {d_sae}
server = EmulatorServer(EmulatorConfig(sources=(SourceSpec(SRC.model_id, SRC.source, d_sae=D_SAE, d_in=64),))).start()
mirror = Mirror(WORK / "mirror.duckdb")
summary = mirror.sync(SRC, base_url=server.url, exports=False)
assert summary.failed == 0 and summary.sources[0].fetched == D_SAE

# The same SAE as weights: `make_emulator_sae` writes the decoder the emulator serves, row for row,
# as a sae_lens folder (cfg.json + sae_weights.safetensors), plus a wider sibling and a toy attention head.
sae = make_emulator_sae(WORK / "sae", server.state, SRC.model_id, SRC.source)
# A bare safetensors file + tensor name attaches without importing sae_lens (~10 s); the folder works too.
record = mirror.attach_weights(SRC, path=sae.path / "sae_weights.safetensors", tensor="W_dec")
print(f"synced {{D_SAE}} features; attached a {{record.d_sae}} x {{record.d_in}} decoder ({{record.zero_rows}} all-zero row)")
'''

_REAL_WEIGHTS_MD = """
### On the real site: one line changes

```python
mirror.sync(SRC)                                  # instead of mirror.sync(SRC, base_url=server.url, exports=False)
mirror.attach_weights(SRC)                        # sae_lens registry -> Hugging Face, instead of path=...
```

or from a shell: `np-mirror sync gpt2-small/7-res-jb` then `np-mirror weights add gpt2-small/7-res-jb`
(the registry lookup maps the Neuronpedia id to sae_lens's release and SAE id; the download is cached, so
it works offline afterwards). Leave `NEURONPEDIA_BASE_URL` unset and use `Mirror()` for your real mirror.
Everything after the set-up cell is unchanged — only the planted-truth assertions are specific to the emulator.
"""

_GEOM_IMPORTS = """
import matplotlib.pyplot as plt
import numpy as np

from npclient import Mirror, SourceId
from npclient.geometry.api import {api}
from npclient.testing import EmulatorConfig, EmulatorServer, SourceSpec
from npclient.testing.saes import make_emulator_sae
"""

NB02 = [
    md(
        """
        # 02 · The days of the week lie on a circle

        **The result.** Engels, Michaud, Liao, Gurnee & Tegmark,
        [*Not All Language Model Features Are Linear*](https://arxiv.org/abs/2405.14860) (2024), found SAE features
        for the days of the week and the months of the year in GPT-2 small and Mistral 7B whose decoder directions
        lie on a **circle** in a 2-D subspace, *in calendar order*: a multi-dimensional feature, not seven unrelated
        directions. They found them by clustering SAE features by decoder similarity and looking at the
        activations each cluster reconstructs in their top principal components; the weights-only view used here,
        a PCA of the decoder rows themselves, shows the same circle for the planted SAE.

        **Here.** Neuronpedia's explanations give a shortcut to the cluster: search for "day" in the explanations,
        take those features' decoder rows, run PCA. The emulator's SAE has the circle planted (Monday..Sunday at
        angles 2πk/7 in one plane), so the notebook checks that the pipeline — explanations from the mirror,
        weights attached to the same source, PCA — recovers the order.

        **Controls.** A PCA draws whatever subspace it is handed, so the picture alone proves little. As in the
        public discussion of this result, compare with (a) a PCA over *all* decoder rows, where the week's plane
        is one of many and the days shrink to a speck inside the cloud; and (b) the same PCA on seven random
        features, which also draws a ring of sorts, but in no meaningful order and with much less variance in two
        components. The evidence is the *order* and the *variance explained*, not the ring shape.
        """
    ),
    md(_REAL_WEIGHTS_MD),
    setup_cell("02", _GEOM_IMPORTS.format(api="pca, select_features") + "from npclient.geometry.subspace import circular_order\n"),
    md("## 1. Mirror the source and attach its decoder"),
    code(_SYNC_AND_ATTACH.format(d_sae=512)),
    md(
        """
        ## 2. Find the features by explanation text

        `select_features` takes a SQL condition on the `features` table: the same query works on a real
        mirror (where it would also catch "birthday" or "Friday night"; read the explanations it returns).
        """
    ),
    code(
        """
        DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
        days = select_features(mirror, SRC, where="top_explanation ILIKE '%day%'")
        explained = mirror.features(SRC, ["index", "top_explanation"], where="top_explanation ILIKE '%day%'")
        print(explained.to_pylist())
        assert sorted(explained.column("top_explanation").to_pylist()) == sorted(DAYS)
        assert sorted(days.tolist()) == sorted(sae.days)  # the planted features, found through their explanations
        """
    ),
    md(
        """
        ## 3. Decoder neighbours

        On a circle of seven, each day's nearest directions are its two calendar neighbours
        (cos 2π/7 ≈ 0.62), and the next ones are already at cos 4π/7 ≈ −0.22. `Mirror.neighbors` returns the
        cosine neighbours joined with their explanations, here computed from the attached decoder
        (`origin` says "weights"; without weights it reads Neuronpedia's stored `topkCosSim` lists).
        """
    ),
    code(
        """
        monday = next(r["index"] for r in explained.to_pylist() if r["top_explanation"] == "Monday")
        near = mirror.neighbors(f"{SRC}/{monday}", k=4)
        print(near.to_pylist())
        assert set(near.column("origin").to_pylist()) == {"weights"}
        ex = near.column("explanation").to_pylist()
        assert ex[0] == "Monday" and set(ex[1:3]) == {"Tuesday", "Sunday"}
        assert abs(near.column("cosine")[1].as_py() - np.cos(2 * np.pi / 7)) < 0.05
        """
    ),
    md(
        """
        ## 4. PCA of the seven decoder rows

        `pca` centres the rows and keeps the top two components (stored in the mirror's `coordinates` table,
        with explanations joined). `circular_order` sorts the points by angle around their centre.
        """
    ),
    code(
        """
        result, coords = pca(mirror, SRC, days)
        labels = coords.column("explanation").to_pylist()
        xy = np.column_stack([coords.column("x").to_numpy(), coords.column("y").to_numpy()])
        walk = [labels[i] for i in circular_order(xy)]
        start = walk.index("Monday")
        walk = walk[start:] + walk[:start]
        evr = result.explained_variance_ratio
        print("around the circle:", " -> ".join(walk))
        print(f"explained variance: PC1 {evr[0]:.1%}, PC2 {evr[1]:.1%}")
        assert walk in (DAYS, [DAYS[0]] + DAYS[:0:-1])   # calendar order, either way round
        assert evr[:2].sum() > 0.95
        """
    ),
    md(
        """
        ## 5. Control (a): PCA over all decoder rows

        The global top components are the directions along which the whole dictionary varies most. The
        week's plane is not among them: projected onto PC1/PC2 of all rows, the days keep only a few percent of
        their spread. (A linear projection of a circle is an ellipse, so the cyclic order survives, squashed;
        but nothing singles those seven points out of the cloud: you have to know which features to look at.)
        """
    ),
    code(
        """
        W = mirror.decoder(SRC).float().numpy()
        every = np.arange(W.shape[0])
        global_pca, _ = pca(mirror, SRC, every)
        Xd = W[days] - W[days].mean(axis=0)
        in_global_plane = Xd @ global_pca.components.T
        kept = float((in_global_plane**2).sum() / (Xd**2).sum())
        global_walk = [labels[i] for i in circular_order(in_global_plane)]
        print(f"all {len(every)} rows: PC1 {global_pca.explained_variance_ratio[0]:.1%}, PC2 {global_pca.explained_variance_ratio[1]:.1%} of the variance")
        print(f"the days keep {kept:.1%} of their spread in that plane (order there: {global_walk})")
        assert global_pca.explained_variance_ratio[:2].sum() < 0.2
        assert kept < 0.35
        """
    ),
    md(
        """
        ## 6. Control (b): seven random features

        Seven points always have a 2-D PCA picture. For unrelated directions it is a ragged ring that keeps
        roughly 2/6 of the variance (six dimensions spanned by seven centred points); the days keep almost all of it.
        """
    ),
    code(
        """
        rng = np.random.default_rng(0)
        noise = np.array(sorted(rng.choice(sae.noise, size=7, replace=False)))
        random_result, random_coords = pca(mirror, SRC, noise)
        random_xy = np.column_stack([random_coords.column("x").to_numpy(), random_coords.column("y").to_numpy()])
        print(f"random features {noise.tolist()}: PC1+PC2 = {random_result.explained_variance_ratio[:2].sum():.1%} of the variance")
        assert random_result.explained_variance_ratio[:2].sum() < 0.7 < evr[:2].sum()
        """
    ),
    md(
        """
        ## 7. Figure

        Left: the seven day features in their own PCA plane, joined in calendar order — an ordered circle.
        Middle: every decoder row on the global top two components (grey), the days in red: a speck in the cloud.
        Right: seven random features in their own PCA plane, joined in index order.
        (`npclient.geometry.plots.plot_pca(result, labels, "days.png")` draws the left panel alone, as PNG or HTML;
        so does `np-mirror geometry pca gpt2-small/0-res-jb --where "..." --out days.png`.)
        """
    ),
    code(
        """
        def ring(ax, pts, names, order, title, color):
            loop = list(order) + [order[0]]
            ax.plot(pts[loop, 0], pts[loop, 1], "-", color=color, alpha=0.5)
            ax.scatter(pts[:, 0], pts[:, 1], s=60, color=color, zorder=3)
            for (x, y), name in zip(pts, names):
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
            ax.set_title(title, fontsize=10)
            ax.set_aspect("equal", adjustable="datalim")

        fig, axes = plt.subplots(1, 3, figsize=(16, 5.2))
        by_day = [labels.index(d) for d in DAYS]
        ring(axes[0], xy, labels, by_day,
             f"days, own PCA: PC1+PC2 = {evr[:2].sum():.0%} of variance\\njoined Monday → Sunday", "#c2473a")
        axes[0].set(xlabel="PC1", ylabel="PC2")

        all_xy = global_pca.coords
        axes[1].scatter(all_xy[:, 0], all_xy[:, 1], s=6, color="#b8b8b8", label=f"all {len(every)} features")
        day_xy = all_xy[np.searchsorted(global_pca.features, days)]
        axes[1].scatter(day_xy[:, 0], day_xy[:, 1], s=40, color="#c2473a", label="the seven days", zorder=3)
        for (x, y), name in zip(day_xy, labels):
            axes[1].annotate(name[:3], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        axes[1].set_title(f"all rows, global PCA: the days keep {kept:.0%} of their spread", fontsize=10)
        axes[1].set(xlabel="global PC1", ylabel="global PC2")
        axes[1].legend(loc="lower right", fontsize=8)

        ring(axes[2], random_xy, [f"#{i}" for i in noise], list(range(7)),
             f"7 random features, own PCA: PC1+PC2 = {random_result.explained_variance_ratio[:2].sum():.0%}", "#5b8db8")
        axes[2].set(xlabel="PC1", ylabel="PC2")
        fig.suptitle(f"{SRC}: the week is a circle in one plane of the decoder (after Engels et al. 2024)")
        fig.tight_layout()
        fig.savefig(FIGURES / "02_days_of_week_circle.png", dpi=110)
        plt.show()
        """
    ),
    cleanup_cell("mirror.close()", "server.stop()"),
]


# ---------------------------------------------------------------------------------------------------
# 03 feature splitting
# ---------------------------------------------------------------------------------------------------

NB03 = [
    md(
        """
        # 03 · Feature splitting across two SAE widths

        **The phenomenon.** Train SAEs of increasing width on the same activations and features *split*: one
        feature of a small dictionary becomes a family of more specific features in a larger one, whose decoder
        directions stay close to the parent's (Bricken et al., [*Towards Monosemanticity*](https://transformer-circuits.pub/2023/monosemantic-features),
        2023; Templeton et al., *Scaling Monosemanticity*, 2024). Matching decoder directions across widths
        recovers the families, and lets a new, unexplained dictionary borrow the explanations of an old one.

        **Here.** The narrow SAE (256 features) is the source on "Neuronpedia" (the emulator): synced with its
        explanations. The wide SAE (512 features) exists only as weights, like an SAE you just trained. Eight
        narrow features were planted as parents, each split into 2 or 3 wide children (cosine ≈ 0.96 with the
        parent). `match` finds them in both directions; a UMAP coloured by family and a table of parent →
        children with explanations show the result.
        """
    ),
    md(
        """
        ### On the real site: one line changes

        ```python
        mirror.sync(NARROW)                   # instead of mirror.sync(NARROW, base_url=server.url, exports=False)
        mirror.attach_weights(NARROW)         # sae_lens registry, instead of path=...; same for WIDE
        ```

        For example `np-mirror weights add gpt2-small/8-res_fs768-jb` and `.../8-res_fs24576-jb` (the
        feature-splitting SAEs of Joseph Bloom on GPT-2 small layer 8, with Neuronpedia dashboards for both
        widths). Leave `NEURONPEDIA_BASE_URL` unset and use `Mirror()` for your real mirror.
        """
    ),
    setup_cell("03", _GEOM_IMPORTS.format(api="match") + "import duckdb\nfrom npclient.geometry.subspace import umap_embed\n" + dedent(_show_helper())),
    md("## 1. The narrow SAE, mirrored with explanations; both widths attached"),
    code(
        _SYNC_AND_ATTACH.format(d_sae=256)
        + '''
WIDE = SourceId("gpt2-small", "0-reswide-jb")   # weights only: not on the server, no explanations
mirror.attach_weights(WIDE, path=sae.wide_path / "sae_weights.safetensors", tensor="W_dec")
print("wide SAE:", sae.d_sae_wide, "features")
'''
    ),
    md(
        """
        ## 2. Match the widths

        `match(mirror, A, B, k)` gives every feature of A its k best decoder matches in B (cosine), with the
        explanations of both sides joined in when the mirror has them. Two directions answer two questions:

        * **wide → narrow, k=1**: each wide feature's parent — and so a borrowed explanation;
        * **narrow → wide, k=3**: how many wide features sit close to each narrow feature.
        """
    ),
    code(
        """
        NARROW = SRC
        up = match(mirror, WIDE, NARROW, k=1)                # every wide feature -> its best narrow feature
        down = match(mirror, NARROW, WIDE, k=3)              # every narrow feature -> its 3 best wide features
        print(up.num_rows, "wide features matched;", down.num_rows, "narrow (feature, rank) pairs")
        # The wide features have no explanation of their own; `match_explanation` is their narrow match's.
        show(up.drop_columns(["explanation"]).sort_by([("cosine", "descending")]), 6)
        """
    ),
    md(
        """
        ## 3. Parent → children

        A family is a narrow feature with at least two wide features whose best match it is, at high cosine.
        Random directions in 64 dimensions rarely exceed cosine 0.5 with each other, so 0.8 separates cleanly;
        on a real SAE look at the histogram of match cosines first. DuckDB groups the Arrow table in place.
        """
    ),
    code(
        '''
        THRESHOLD = 0.8
        families = duckdb.sql(
            f"""SELECT match_index AS parent, any_value(match_explanation) AS parent_explanation,
                       list("index" ORDER BY cosine DESC) AS children,
                       list(round(cosine, 3) ORDER BY cosine DESC) AS cosines
                FROM up WHERE cosine > {THRESHOLD}
                GROUP BY match_index HAVING count(*) >= 2 ORDER BY parent"""
        ).to_arrow_table()
        found = {r["parent"]: sorted(r["children"]) for r in families.to_pylist()}
        print(f"{len(found)} families found")
        assert found == {p: sorted(c) for p, c in sae.families.items()}      # exactly the planted split
        for parent, children in sae.families.items():                      # and from the parent's side
            best = [r["match_index"] for r in down.to_pylist() if r["index"] == parent]
            assert set(best[: len(children)]) == set(children), (parent, best, children)
        show(families, 8)
        '''
    ),
    md(
        """
        The children have no explanation of their own (the wide SAE is not on Neuronpedia), but each inherits
        its parent's as a candidate label — a cheap first pass at explaining a new dictionary, to be refined
        with the children's own activations. Features that did not split match nothing closely:
        """
    ),
    code(
        """
        cos = up.column("cosine").to_numpy()
        family_members = {c for cs in sae.families.values() for c in cs}
        in_family = np.isin(up.column("index").to_numpy(), sorted(family_members))
        print(f"best-match cosine: family children {cos[in_family].min():.2f}..{cos[in_family].max():.2f}; "
              f"other wide features at most {np.nanmax(cos[~in_family]):.2f}")
        assert cos[in_family].min() > 0.9 and np.nanmax(cos[~in_family]) < THRESHOLD
        """
    ),
    md(
        """
        ## 4. UMAP of both widths, coloured by family

        UMAP (via umap-learn, on our exact cosine k-NN graph) of the parents, their children and some unrelated
        features of both SAEs. Kept small: umap-learn compiles with numba on first use, which takes seconds. For
        one whole source, `npclient.geometry.api.umap(mirror, source)` stores the layout in the mirror.
        """
    ),
    code(
        """
        Wn = mirror.decoder(NARROW).float().numpy()
        Ww = mirror.decoder(WIDE).float().numpy()
        rng = np.random.default_rng(0)
        parents = sorted(sae.families)
        children = sorted(family_members)
        narrow_noise = sorted(rng.choice(sae.noise, size=30, replace=False).tolist())
        wide_other = sorted(rng.choice(np.setdiff1d(np.arange(Ww.shape[0]), children), size=60, replace=False).tolist())

        X = np.vstack([Wn[parents], Wn[narrow_noise], Ww[children], Ww[wide_other]])
        width = ["narrow"] * (len(parents) + len(narrow_noise)) + ["wide"] * (len(children) + len(wide_other))
        family_of = {p: k for k, p in enumerate(parents)} | {c: k for k, p in enumerate(parents) for c in sae.families[p]}
        family = ([family_of[p] for p in parents] + [-1] * len(narrow_noise)
                  + [family_of[c] for c in children] + [-1] * len(wide_other))
        family = np.array(family)

        import warnings
        warnings.filterwarnings("ignore", message="IProgress not found")   # tqdm without ipywidgets: harmless
        emb = umap_embed(X, k=10, seed=0)
        spread = np.median(np.linalg.norm(emb[:, None] - emb[None], axis=-1))
        for k in range(len(parents)):
            members = emb[family == k]
            size = np.linalg.norm(members[:, None] - members[None], axis=-1).max()
            assert size < 0.5 * spread, (k, size, spread)   # each family is a tight clump
        print(f"{len(X)} points; every family's diameter is under half the median distance ({spread:.2f})")
        """
    ),
    md(
        """
        ## 5. Figure

        Left: the UMAP; each family (parent ★ and its children ●) in one colour, unrelated features grey.
        Right: cosine between the eight parents and their children — block structure is the split.
        """
    ),
    code(
        """
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 6.4), gridspec_kw={"width_ratios": [1.25, 1]})
        colors = plt.get_cmap("tab10")
        explanation_of = {r["parent"]: r["parent_explanation"] for r in families.to_pylist()}
        other = family < 0
        ax1.scatter(emb[other, 0], emb[other, 1], s=14, color="#c8c8c8", label="unrelated features")
        for k, p in enumerate(parents):
            is_k = family == k
            narrow_k = is_k & (np.array(width) == "narrow")
            wide_k = is_k & (np.array(width) == "wide")
            name = explanation_of.get(p) or "(no explanation)"
            ax1.scatter(emb[wide_k, 0], emb[wide_k, 1], s=36, color=colors(k), zorder=3)
            ax1.scatter(emb[narrow_k, 0], emb[narrow_k, 1], s=200, marker="*", color=colors(k), edgecolor="k",
                        linewidth=0.6, label=f"#{p} {name[:28]}", zorder=4)
        ax1.set(title="UMAP of narrow (★) and wide (●) decoder rows, coloured by family", xlabel="UMAP 1", ylabel="UMAP 2")
        ax1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)

        Wn_unit = Wn[parents] / np.linalg.norm(Wn[parents], axis=1, keepdims=True)
        Ww_unit = Ww[children] / np.linalg.norm(Ww[children], axis=1, keepdims=True)
        order = [c for p in parents for c in sae.families[p]]
        C = Wn_unit @ (Ww[order] / np.linalg.norm(Ww[order], axis=1, keepdims=True)).T
        im = ax2.imshow(C, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        ax2.set_yticks(range(len(parents)), [f"narrow #{p}" for p in parents], fontsize=8)
        ax2.set_xticks(range(len(order)), [f"#{c}" for c in order], rotation=90, fontsize=7)
        ax2.set(title="cosine(parent, wide child)", xlabel="wide children, grouped by parent")
        fig.colorbar(im, ax=ax2, shrink=0.8)
        fig.suptitle(f"Feature splitting: {NARROW} ({sae.d_sae}) → {WIDE} ({sae.d_sae_wide})")
        fig.tight_layout()
        fig.savefig(FIGURES / "03_feature_splitting.png", dpi=110)
        plt.show()
        """
    ),
    cleanup_cell("mirror.close()", "server.stop()"),
]


# ---------------------------------------------------------------------------------------------------
# 04 copy suppression / null space
# ---------------------------------------------------------------------------------------------------

NB04 = [
    md(
        """
        # 04 · What a head cannot see, and what it suppresses

        **The story.** McDougall, Conmy, Rushing, McGrath & Nanda,
        [*Copy Suppression: Comprehensively Understanding an Attention Head*](https://arxiv.org/abs/2310.04625) (2023),
        explain GPT-2 small's head L10H7: when an earlier token is being predicted, the head attends back to it
        (its QK circuit) and writes the *negative* of that token (its OV circuit), suppressing naive copying. Read
        in an SAE's feature basis, a head's weights answer two questions about every feature direction `d`:

        * **Can the head attend to it?** Keys are `x @ W_K`. A feature in the **null space of `W_K`**
          (`d @ W_K = 0`) produces no key at all: whatever the query, the head cannot select a position for it.
        * **Does the head suppress it?** The OV map writes `d @ W_OV`; a **suppression score**
          `-(d · d W_OV)/|d|²` of 1 or more means the head writes back at least `-d`.

        **Here.** The emulator's SAE comes with a toy head (`d_head` 16, `d_in` 64) with both properties planted
        on disjoint feature sets: six features in the null space of `W_K`, six that `W_OV` maps to `-2 d`.
        `head_features` should find exactly those — and answer whether the head suppresses what it cannot see.
        (In real copy suppression it must not: a head can only suppress what its keys let it attend to.)
        """
    ),
    md(
        """
        ### On the real site: one line changes

        ```python
        mirror.sync(SRC)                      # instead of mirror.sync(SRC, base_url=server.url, exports=False)
        mirror.attach_weights(SRC)            # e.g. gpt2-small/10-res-jb from the sae_lens registry
        ```

        and take the head from the model, e.g. with TransformerLens: `W_K = model.W_K[10, 7]` (768 × 64),
        `W_OV = model.W_V[10, 7] @ model.W_O[10, 7]` (768 × 768), both in the `x @ W` layout used here, or
        `np-mirror geometry nullspace gpt2-small/10-res-jb --matrix head.safetensors --tensor W_K --ov-tensor W_OV`.
        Leave `NEURONPEDIA_BASE_URL` unset and use `Mirror()` for your real mirror.
        """
    ),
    setup_cell("04", _GEOM_IMPORTS.format(api="head_features") + "from safetensors.numpy import load_file\n" + dedent(_show_helper())),
    md("## 1. Mirror the source, attach its decoder, load the head"),
    code(
        _SYNC_AND_ATTACH.format(d_sae=256)
        + '''
head = load_file(str(sae.head_path))        # W_Q, W_K, W_V (d_in x d_head), W_O (d_head x d_in), W_OV (d_in x d_in)
W_K, W_OV = head["W_K"], head["W_OV"]
print({name: tuple(t.shape) for name, t in head.items()})
print("rank of W_K:", np.linalg.matrix_rank(W_K), "of", W_K.shape[0], "dimensions: a random direction keeps",
      f"{np.linalg.matrix_rank(W_K) / W_K.shape[0]:.0%} of its norm² in W_K's column space")
'''
    ),
    md(
        """
        ## 2. Ask the mirror

        `head_features` measures, for every feature, the share of its squared norm in the column space of
        `W_K` (near 0: invisible) and its suppression score under `W_OV`; it stores both for every feature in
        the `head_features` table and returns the features that are invisible or suppressed, with explanations.
        """
    ),
    code(
        """
        flagged = head_features(mirror, SRC, W_K, name="toy-head:W_K", threshold=0.01, ov=W_OV)
        show(flagged, 12)
        """
    ),
    code(
        '''
        invisible = set(flagged.filter(flagged.column("invisible")).column("index").to_pylist())
        suppressed = set(flagged.filter(flagged.column("suppressed")).column("index").to_pylist())
        print("invisible to W_K:", sorted(invisible), " planted:", sorted(sae.null_space))
        print("suppressed by OV:", sorted(suppressed), " planted:", sorted(sae.suppressed))
        assert invisible == set(sae.null_space)
        assert suppressed == set(sae.suppressed)
        '''
    ),
    md(
        """
        ## 3. Check it the long way

        The definitions, straight from the weights: an invisible feature gives a zero key, so its attention score
        `(q W_Q)·(d W_K)` is zero for any query; a suppressed feature comes back as about `-2 d`.
        """
    ),
    code(
        """
        W = mirror.decoder(SRC).float().numpy()
        queries = np.random.default_rng(0).standard_normal((100, W.shape[1])).astype(np.float32)
        scores = (queries @ head["W_Q"]) @ (W @ W_K).T                      # (queries, features)
        null = sorted(sae.null_space)
        others = [i for i in range(W.shape[0]) if i not in null and np.linalg.norm(W[i]) > 0]
        print(f"|attention score| on invisible features ≤ {np.abs(scores[:, null]).max():.1e}; "
              f"typical on the others {np.median(np.abs(scores[:, others])):.2f}")
        assert np.abs(scores[:, null]).max() < 1e-4 < np.median(np.abs(scores[:, others]))

        sup = sorted(sae.suppressed)
        out = W[sup] @ W_OV
        gain = -(out * W[sup]).sum(axis=1) / (W[sup] ** 2).sum(axis=1)
        print("OV self-gain of the suppressed features:", np.round(gain, 3))
        assert np.allclose(out, -2.0 * W[sup], atol=1e-4)
        """
    ),
    md(
        """
        ## 4. Does the head suppress what it cannot see?

        The full per-feature table is in the mirror; join it with explanations in SQL. The two sets are
        disjoint: every suppressed feature is visible to the head's keys (near the chance level of 25% of its
        norm² in `W_K`'s column space), and the invisible features get a suppression score near zero.
        """
    ),
    code(
        '''
        table = mirror.sql(
            """SELECT h."index", h.colspace_fraction, h.invisible, h.suppression, h.suppressed, f.top_explanation
               FROM head_features h JOIN features f ON f.model_id = h.model_id AND f.source = h.source AND f."index" = h."index"
               WHERE h.model_id = ? AND h.source = ? AND h.matrix = 'toy-head:W_K' ORDER BY h."index\\"""",
            [SRC.model_id, SRC.source],
        )
        rows = table.to_pylist()
        assert len(rows) == D_SAE
        both = invisible & suppressed
        sup_visibility = [r["colspace_fraction"] for r in rows if r["index"] in suppressed]
        inv_scores = [r["suppression"] for r in rows if r["index"] in invisible]
        print("invisible and suppressed:", sorted(both) or "none")
        print(f"suppressed features: colspace fraction {min(sup_visibility):.2f}..{max(sup_visibility):.2f} (visible)")
        print(f"invisible features: suppression score {min(inv_scores):+.3f}..{max(inv_scores):+.3f}")
        assert not both and min(sup_visibility) > 0.05 and max(abs(s) for s in inv_scores) < 0.5
        show(table.sort_by([("suppression", "descending")]), 8)
        '''
    ),
    md(
        """
        ## 5. Figure

        Every feature of the SAE: x, the share of its direction the head's keys can read (chance level dashed);
        y, how strongly the OV map writes it back negated. The planted sets sit alone in their corners.
        """
    ),
    code(
        """
        frac = np.array([np.nan if r["colspace_fraction"] is None else r["colspace_fraction"] for r in rows])
        supp = np.array([np.nan if r["suppression"] is None else r["suppression"] for r in rows])
        idx = np.array([r["index"] for r in rows])
        is_null, is_sup = np.isin(idx, null), np.isin(idx, sup)
        rest = ~is_null & ~is_sup

        fig, ax = plt.subplots(figsize=(8.5, 5.8))
        ax.scatter(frac[rest], supp[rest], s=12, color="#b8b8b8", label=f"other features ({rest.sum()})")
        ax.scatter(frac[is_null], supp[is_null], s=60, color="#c2473a", marker="s", label="planted: null space of W_K")
        ax.scatter(frac[is_sup], supp[is_sup], s=60, color="#3a6fc2", marker="D", label="planted: suppressed by W_OV")
        chance = np.linalg.matrix_rank(W_K) / W_K.shape[0]
        ax.axvline(chance, color="k", ls=":", lw=1)
        ax.text(chance, ax.get_ylim()[1] * 0.95, " chance (rank/d_in)", fontsize=8, va="top")
        ax.axvline(0.01, color="#c2473a", ls="--", lw=0.8)
        ax.axhline(1.0, color="#3a6fc2", ls="--", lw=0.8)
        ax.set(xlabel="share of |d|² in the column space of W_K (0: the head cannot attend to it)",
               ylabel="suppression score  −(d · d W_OV) / |d|²",
               title=f"{SRC} × toy head: invisible to QK vs suppressed by OV")
        ax.legend(fontsize=8, loc="center right")
        fig.tight_layout()
        fig.savefig(FIGURES / "04_copy_suppression_null_space.png", dpi=110)
        plt.show()
        """
    ),
    cleanup_cell("mirror.close()", "server.stop()"),
]


# ---------------------------------------------------------------------------------------------------
# 05 bulk dump
# ---------------------------------------------------------------------------------------------------

NB05 = [
    md(
        """
        # 05 · A bulk dump: import, query, geometry, Parquet

        Neuronpedia publishes every source as gzip JSONL batches in a public S3 bucket
        (`s3://neuronpedia-datasets/v1/{model}/{source}/features|activations|explanations/batch-N.jsonl.gz`).
        Exports cost no API rate limit, so they are the way to mirror whole sources — millions of
        features — and the way to work with a dump someone already downloaded.

        **Here.** The emulator writes its sources in exactly that layout, with the real exports' quirks
        (indices as strings *or* ints, embeddings as lists *or* `"[...]"` strings, unknown extra fields,
        non-source folders like `headvis/`). Then:

        1. `Mirror.import_`: a dump on disk into the mirror (DuckDB's own JSON reader, one transaction per batch);
        2. SQL over it, and geometry — the months of the year, which lie on a circle like the days (Engels et al. 2024);
        3. `Mirror.export_parquet`: the mirror as hive-partitioned Parquet, read back with plain DuckDB;
        4. the same data from a bucket: `Mirror.sync(..., exports_url=url)`, exports first.
        """
    ),
    md(
        """
        ### On the real site: one line changes

        ```python
        mirror.sync(L1)                # the public bucket and API, instead of base_url=server.url, exports_url=s3.bucket_url
        ```

        or, from a shell: `aws s3 sync --no-sign-request s3://neuronpedia-datasets/v1/gpt2-small/0-res-jb ./dump/v1/gpt2-small/0-res-jb`
        then `np-mirror import ./dump/v1`; or simply `np-mirror sync gpt2-small/0-res-jb` (exports first), and
        `np-mirror weights add gpt2-small/0-res-jb` for the decoder. `np-mirror export --parquet DIR` writes the Parquet.
        """
    ),
    setup_cell(
        "05",
        _GEOM_IMPORTS.format(api="pca, select_features")
        + "import duckdb\nfrom npclient.geometry.subspace import circular_order\n"
        "from npclient.testing.emulator.exports import ExportQuirks, write_export\nfrom npclient.testing.emulator.s3 import S3Server\n"
        + dedent(_show_helper()),
    ),
    md(
        """
        ## 1. A dump on disk

        Two sources of the emulator, written as the bucket lays them out, with batches of 64 records and a
        third of the indices as ints.
        """
    ),
    code(
        """
        L0, L1 = SourceId("gpt2-small", "0-res-jb"), SourceId("gpt2-small", "1-res-jb")
        D_SAE = 256
        config = EmulatorConfig(sources=tuple(SourceSpec(s.model_id, s.source, d_sae=D_SAE, d_in=64) for s in (L0, L1)))
        server = EmulatorServer(config).start()
        quirks = ExportQuirks(batch_size=64, index_as_int_fraction=0.3, embedding_style="mixed")
        DUMP = WORK / "dump"
        files = write_export(server.state, DUMP, sources=[str(L0)], quirks=quirks)
        print(len(files), "files, e.g.:")
        for f in files[:: max(1, len(files) // 8)]:
            print(f"  {f.relative_to(DUMP)}  ({f.stat().st_size:,} bytes)")
        """
    ),
    md(
        """
        ## 2. Import

        `Mirror.import_` finds every source folder under the root (non-source folders are skipped), imports each
        batch in one transaction and records it in `export_files`: a rerun skips what is already in.
        """
    ),
    code(
        """
        mirror = Mirror(WORK / "mirror.duckdb")
        reports = mirror.import_(DUMP)
        for r in reports:
            print(r.source, "imported files:", r.imported, "rows:", r.rows, "failed:", r.failed or "none")
        assert [r.source for r in reports] == [L0] and all(r.ok for r in reports)
        assert reports[0].rows["features"] == D_SAE

        rerun = mirror.import_(DUMP)
        print("rerun skipped", rerun[0].skipped, "files, imported", sum(rerun[0].rows.values()), "rows")
        assert sum(rerun[0].rows.values()) == 0

        status = mirror.status()
        print(status)
        assert status[0]["present"] == D_SAE and status[0]["origins"] == "export"
        """
    ),
    md(
        """
        ## 3. SQL over the dump

        The imported rows are typed (`features`, `activations`, `explanations`, `origin = 'export'`) and each
        feature's record is kept whole (`features.export_raw`). `Mirror.feature` rebuilds a `Feature` from them.
        """
    ),
    code(
        '''
        per_explainer = mirror.sql(
            """SELECT explanation_model_name, count(*) AS explanations, count(DISTINCT "index") AS features
               FROM explanations WHERE model_id = ? AND source = ? GROUP BY 1 ORDER BY 2 DESC""",
            [L0.model_id, L0.source],
        )
        show(per_explainer)
        '''
    ),
    code(
        '''
        MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
                  "September", "October", "November", "December"]
        months_sql = "top_explanation IN (" + ", ".join(f"'{m}'" for m in MONTHS) + ")"  # a condition on `features`
        month_rows = mirror.features(L0, ["index", "top_explanation", "max_act_approx", "n_activations", "origin"],
                                     where=months_sql)
        assert sorted(month_rows.column("top_explanation").to_pylist()) == sorted(MONTHS)
        march_index = next(r["index"] for r in month_rows.to_pylist() if r["top_explanation"] == "March")
        march = mirror.feature(f"{L0}/{march_index}")
        print(march.id, march.top_explanation, len(march.activations), "activations, origin",
              month_rows.column("origin")[0].as_py())
        assert march.top_explanation in MONTHS and len(march.activations) >= 20
        # the same activations as a table, top-first: imported features are ranked like fetched ones
        march_acts = mirror.activations(march.id)
        assert march_acts.column("activation_id").to_pylist() == [a.id for a in march.activations]
        show(month_rows, 12)
        '''
    ),
    md(
        """
        ## 4. Geometry over the dump: the months circle

        Attach the decoder (the emulator's SAE, written as a sae_lens folder) and run PCA on the twelve month
        features. As with the days (notebook 02), the order around the circle is the calendar's.
        """
    ),
    code(
        """
        sae = make_emulator_sae(WORK / "sae", server.state, L0.model_id, L0.source)
        mirror.attach_weights(L0, path=sae.path / "sae_weights.safetensors", tensor="W_dec")
        months = select_features(mirror, L0, where=months_sql)
        assert sorted(months.tolist()) == sorted(sae.months)
        result, coords = pca(mirror, L0, months)
        labels = coords.column("explanation").to_pylist()
        xy = np.column_stack([coords.column("x").to_numpy(), coords.column("y").to_numpy()])
        walk = [labels[i] for i in circular_order(xy)]
        walk = walk[walk.index("January"):] + walk[: walk.index("January")]
        print(" -> ".join(walk), f"({result.explained_variance_ratio[:2].sum():.1%} of the variance in 2 components)")
        assert walk in (MONTHS, [MONTHS[0]] + MONTHS[:0:-1])
        """
    ),
    md(
        """
        ## 5. The mirror as Parquet, read back with plain DuckDB

        `Mirror.export_parquet` writes `features/`, `activations/` and `explanations/`, each partitioned
        `model=/source=/` — readable by DuckDB, Polars, pandas or Spark without np-mirror.
        """
    ),
    code(
        '''
        PARQUET = WORK / "parquet"
        written = mirror.export_parquet(PARQUET)
        print("rows written:", written)

        con = duckdb.connect()   # a fresh in-memory DuckDB: nothing of np-mirror involved
        counts = {t: con.execute(f"SELECT count(*) FROM read_parquet('{PARQUET}/{t}/**/*.parquet', hive_partitioning = true)").fetchall()[0][0]
                  for t in ("features", "activations", "explanations")}
        in_mirror = {t: mirror.sql(f"SELECT count(*) AS n FROM {t}").column("n")[0].as_py() for t in counts}
        print("read back:", counts)
        assert counts == written == in_mirror

        month_peaks = con.sql(
            f"""SELECT f.top_explanation AS month, f.model, f.source, max(a.max_value) AS top_activation
                FROM read_parquet('{PARQUET}/features/**/*.parquet', hive_partitioning = true) f
                JOIN read_parquet('{PARQUET}/activations/**/*.parquet', hive_partitioning = true) a USING (feature_key)
                WHERE {months_sql.replace("top_explanation", "f.top_explanation")} GROUP BY ALL ORDER BY top_activation DESC"""
        ).to_arrow_table()
        assert month_peaks.num_rows == 12
        show(month_peaks, 5)
        '''
    ),
    md(
        """
        ## 6. The same exports from a bucket

        `Mirror.sync` with an `exports_url` lists the source's export, downloads it into
        `$NP_MIRROR_HOME/exports/` (resumable, verified against the ETags), imports it, and sends the API only
        what the export lacked. Here the emulator's S3 stand-in serves layer 1 from a local folder.
        """
    ),
    code(
        """
        BUCKET = WORK / "bucket"
        write_export(server.state, BUCKET, sources=[str(L1)], quirks=quirks)
        s3 = S3Server(BUCKET).start()
        summary = mirror.sync(L1, base_url=server.url, exports_url=s3.bucket_url)
        part = summary.sources[0]
        print(f"{L1}: {part.imported} features from the export, {part.fetched} from the API, {summary.requests} API requests")
        assert part.imported == D_SAE and part.fetched == 0 and summary.failed == 0
        print(mirror.status())
        """
    ),
    md(
        """
        ## 7. Figure

        Left: the months around their circle, from the imported dump. Right: the cosines between the twelve
        month directions, in calendar order — a circulant band (cos 2πk/12 for months k apart), the same
        circle seen as a matrix: neighbours similar, opposite months (January/July) anti-aligned.
        """
    ),
    code(
        '''
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.4), gridspec_kw={"width_ratios": [1, 1.1]})
        in_order = [labels.index(m) for m in MONTHS]
        loop = in_order + [in_order[0]]
        ax1.plot(xy[loop, 0], xy[loop, 1], "-", color="#3a6fc2", alpha=0.5)
        ax1.scatter(xy[:, 0], xy[:, 1], s=60, color="#3a6fc2", zorder=3)
        for (x, y), name in zip(xy, labels):
            ax1.annotate(name[:3], (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
        ax1.set_aspect("equal", adjustable="datalim")
        ax1.set(title=f"{L0} (imported dump): the months, PCA of decoder rows\\njoined January → December",
                xlabel=f"PC1 ({result.explained_variance_ratio[0]:.0%})", ylabel=f"PC2 ({result.explained_variance_ratio[1]:.0%})")

        W = mirror.decoder(L0).float().numpy()
        index_of = dict(zip(labels, coords.column("index").to_pylist()))
        M = W[[index_of[m] for m in MONTHS]]
        M = M / np.linalg.norm(M, axis=1, keepdims=True)
        C = M @ M.T
        offsets = np.abs(np.subtract.outer(np.arange(12), np.arange(12)))
        assert np.allclose(C, np.cos(2 * np.pi * offsets / 12), atol=0.05)   # the planted circle, exactly
        im = ax2.imshow(C, cmap="RdBu_r", vmin=-1, vmax=1)
        ax2.set_xticks(range(12), [m[:3] for m in MONTHS], rotation=90)
        ax2.set_yticks(range(12), [m[:3] for m in MONTHS])
        ax2.set_title("cosine between month decoder directions")
        fig.colorbar(im, ax=ax2, shrink=0.85)
        fig.tight_layout()
        fig.savefig(FIGURES / "05_bulk_dump_analysis.png", dpi=110)
        plt.show()
        '''
    ),
    cleanup_cell("s3.stop()", "mirror.close()", "server.stop()"),
]


NOTEBOOKS = {
    "01_quickstart": NB01,
    "02_days_of_week_circle": NB02,
    "03_feature_splitting": NB03,
    "04_copy_suppression_null_space": NB04,
    "05_bulk_dump_analysis": NB05,
}


def build(name: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, source) in enumerate(cells):
        cell = new_markdown_cell(source) if kind == "markdown" else new_code_cell(source)
        cell["id"] = f"{name[:2]}-{i:02d}"  # stable ids: regenerating gives the same file
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    return nbformat.writes(build(name, NOTEBOOKS[name])) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if a notebook is out of date")
    parser.add_argument("--out", type=Path, default=HERE, help="where to write the notebooks (default: this folder)")
    args = parser.parse_args(argv)
    stale = []
    for name in NOTEBOOKS:
        path = args.out / f"{name}.ipynb"
        text = render(name)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
            print("wrote", path)
    if stale:
        print("out of date (run notebooks/build_notebooks.py):", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
