"""SAE weights: attach from a folder, the registry (offline HF cache) and bare safetensors.

sae_lens is imported once per session (~10 s, by the first test that loads through it);
everything else here is small (d_in 64, d_sae 512).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from npclient.errors import CorruptWeights, WeightsError, WeightsMismatch
from npclient.ids import SourceId
from npclient.store.catalog import save_source
from npclient.store.database import Database
from npclient.testing.saes import make_sae, write_hf_cache
from npclient.weights import (
    attach,
    decoder,
    decoder_array,
    decoder_norms,
    get_weights,
    list_weights,
    lookup,
    neuronpedia_id,
    registry_index,
    resolve,
)

SRC = "gpt2-small/0-res-jb"
HEAVY = ("torch", "sae_lens", "transformer_lens")


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return make_sae(tmp_path_factory.mktemp("sae"), neuronpedia_id=SRC, n_nan=1,
                    model_name="gpt2-small", hook_name="blocks.0.hook_resid_pre")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("NP_MIRROR_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def db(tmp_path, home):
    database = Database(tmp_path / "mirror.duckdb")
    yield database
    database.close()


def known(db: Database, source: str, feature_count: int, release=None, sae_id=None) -> None:
    from npclient.models import SourceInfo

    info = None
    if release is not None:
        info = SourceInfo.model_validate({"id": SourceId.parse(source).source, "modelId": SourceId.parse(source).model_id,
                                          "saelensRelease": release, "saelensSaeId": sae_id})
    save_source(db, SourceId.parse(source), info, feature_count, "test")


def nothing_attached(db: Database, source: str, home: Path) -> None:
    assert get_weights(db, source) is None
    assert all(r.source_id != SourceId.parse(source) for r in list_weights(db))
    folder = home / "weights" / SourceId.parse(source).model_id / SourceId.parse(source).source
    assert not folder.exists() or list(folder.iterdir()) == []  # no copy, no temporary file left


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---- the synthetic SAE ---------------------------------------------------------------------------


def test_synthetic_sae_is_sae_lens_format_with_its_truth(syn):
    from safetensors.numpy import load_file
    from sae_lens import SAE

    sae = SAE.load_from_disk(syn.path)
    assert sae.cfg.architecture() == "standard" and (sae.cfg.d_sae, sae.cfg.d_in) == (512, 64)
    assert sae.cfg.metadata.neuronpedia_id == SRC
    assert np.array_equal(sae.W_dec.detach().numpy(), syn.W_dec, equal_nan=True)
    wide = SAE.load_from_disk(syn.wide_path)
    assert wide.cfg.d_sae == 1024 and np.array_equal(wide.W_dec.detach().numpy(), syn.W_dec_wide)

    W = np.nan_to_num(syn.W_dec.astype(np.float64))
    unit = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)
    # days and months: circles in their planes, in order (neighbours in the order are nearest)
    for idx, plane in ((syn.days, syn.days_plane), (syn.months, syn.months_plane)):
        assert np.linalg.norm(W[idx] @ plane.T.astype(np.float64), axis=1).min() > 0.999
        n = len(idx)
        for k in range(n):
            sims = unit[idx] @ unit[idx[k]]
            sims[k] = -2
            assert set(np.argsort(sims)[-2:]) == {(k - 1) % n, (k + 1) % n}
    for parent, children in syn.tree.items():
        assert all(unit[parent] @ unit[c] > 0.85 for c in children)
    # head: null space of W_K, suppressed by OV
    K, OV = syn.head.W_K.astype(np.float64), syn.head.W_OV.astype(np.float64)
    key_norm = np.linalg.norm(W @ K, axis=1)
    assert key_norm[syn.null_space].max() < 1e-5 and key_norm[syn.noise].min() > 0.05
    score = np.einsum("ij,jk,ik->i", W, OV, W)
    assert np.allclose(score[syn.suppressed], -syn.head.suppression_gain, atol=1e-4)
    assert score[syn.noise].min() > -1.0
    head = load_file(str(syn.head_path))
    assert head["W_Q"].shape == head["W_K"].shape == (64, syn.head.d_head) and head["W_OV"].shape == (64, 64)
    # families: each wide member's nearest narrow feature is its parent, by a wide margin
    wide_unit = syn.W_dec_wide / np.linalg.norm(syn.W_dec_wide, axis=1, keepdims=True)
    sims = wide_unit.astype(np.float64) @ unit.T
    for parent, members in syn.families.items():
        for m in members:
            assert int(np.argmax(sims[m])) == parent and sims[m, parent] > 0.9
            assert np.sort(sims[m])[-2] < 0.7
    assert syn.labels[syn.days[0]] == "Monday" and syn.labels[syn.months[11]] == "December"


# ---- attaching ---------------------------------------------------------------------------------


def test_attach_from_folder(db, home, syn):
    import torch

    known(db, SRC, 512)
    rec = attach(db, SRC, path=syn.path)
    assert (rec.loader, rec.architecture, rec.d_sae, rec.d_in, rec.dtype) == ("folder", "standard", 512, 64, "float32")
    assert rec.neuronpedia_id == SRC and rec.hook_name == "blocks.0.hook_resid_pre"
    assert rec.sha256 == sha256(syn.path / "sae_weights.safetensors")
    assert (rec.nan_rows, rec.zero_rows) == (1, 1)
    assert Path(rec.decoder_path).parent == home / "weights" / "gpt2-small" / "0-res-jb"
    W = decoder(db, SRC)
    assert isinstance(W, torch.Tensor) and W.shape == (512, 64) and W.dtype == torch.float32
    assert np.array_equal(W.numpy(), syn.W_dec, equal_nan=True)
    assert decoder(db, SourceId.parse(SRC), dtype="float16").dtype == torch.float16
    norms = decoder_norms(db, SRC)
    ok = [i for i in range(512) if i not in syn.nan_rows]
    assert np.allclose(norms[ok], np.linalg.norm(syn.W_dec[ok], axis=1), atol=1e-5)
    assert [r.source_id for r in list_weights(db)] == [SourceId.parse(SRC)]
    # the wide SAE, kept in bfloat16 (stored as raw bf16 bits, viewed back as torch.bfloat16)
    rec = attach(db, "gpt2-small/0-res-wide", path=syn.wide_path, dtype="bfloat16")
    Wb = decoder(db, "gpt2-small/0-res-wide")
    assert rec.d_sae == 1024 and Wb.dtype == torch.bfloat16
    assert torch.allclose(Wb.float(), torch.from_numpy(syn.W_dec_wide), atol=1e-2)
    assert len(list_weights(db)) == 2
    # without torch: the float32 copy as numpy (memory-mapped, copy-on-write); bf16 has no numpy dtype
    A = decoder_array(db, SRC)
    assert A.dtype == np.float32 and np.array_equal(A, syn.W_dec, equal_nan=True)
    A[0] = 5.0  # a write stays in this process
    assert np.array_equal(decoder_array(db, SRC), syn.W_dec, equal_nan=True)
    assert decoder_array(db, "gpt2-small/0-res-wide") is None


def test_attach_from_registry_through_offline_hf_cache(db, home, syn, tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads these once, at import (sae_lens imported it already): set both.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    entry = lookup(SRC)
    assert (entry.release, entry.sae_id, entry.repo_id, entry.path) == (
        "gpt2-small-res-jb", "blocks.0.hook_resid_pre", "jbloom/GPT2-Small-SAEs-Reformatted", "blocks.0.hook_resid_pre")
    snapshot = write_hf_cache(cache, entry.repo_id, entry.path, syn.path)
    known(db, SRC, 512)

    rec = attach(db, SRC)  # no path: sae_lens's registry, then SAE.from_pretrained offline
    assert (rec.loader, rec.release, rec.sae_id, rec.d_sae) == ("registry", "gpt2-small-res-jb", "blocks.0.hook_resid_pre", 512)
    assert rec.sha256 == sha256(snapshot / "sae_weights.safetensors")
    assert Path(rec.source_path).resolve() == (snapshot / "sae_weights.safetensors").resolve()
    assert np.array_equal(decoder(db, SRC).numpy(), syn.W_dec, equal_nan=True)

    # the same release and sae id given explicitly, for a source the registry maps elsewhere
    with pytest.raises(WeightsMismatch, match="gpt2-small/0-res-jb"):
        attach(db, "gpt2-small/3-res-jb", release="gpt2-small-res-jb", sae_id="blocks.0.hook_resid_pre")
    nothing_attached(db, "gpt2-small/3-res-jb", home)
    # not in the cache, offline: one line, nothing attached
    with pytest.raises(WeightsError, match="not in the Hugging Face cache"):
        attach(db, "gpt2-small/1-res-jb")
    nothing_attached(db, "gpt2-small/1-res-jb", home)


def test_registry_mapping_against_installed_sae_lens(db):
    entry = lookup("gpt2-small/7-res-jb")
    assert (entry.release, entry.sae_id) == ("gpt2-small-res-jb", "blocks.7.hook_resid_pre")
    assert neuronpedia_id("gpt2-small-res-jb", "blocks.7.hook_resid_pre") == "gpt2-small/7-res-jb"
    gemma = lookup(SourceId.parse("gemma-2-2b/12-gemmascope-res-16k"))
    assert (gemma.release, gemma.sae_id) == ("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical")
    index = registry_index()
    assert len(index) > 2000
    assert all(neuronpedia_id(e.release, e.sae_id) == np_id for np_id, e in index.items())
    assert neuronpedia_id("gpt2-small-res-jb", "no-such-sae") is None and lookup("nope/0-none") is None
    # fallback: the source's saelensRelease / saelensSaeId in the mirror
    known(db, "my-model/3-res-custom", 100, release="my-release", sae_id="blocks.3")
    res = resolve("my-model/3-res-custom", db)
    assert (res.release, res.sae_id, res.via) == ("my-release", "blocks.3", "mirror")
    assert resolve("gpt2-small/7-res-jb", db).via == "registry"
    with pytest.raises(WeightsError, match="release and sae_id"):
        resolve("my-model/4-res-custom", db)


def test_attach_bare_safetensors_with_and_without_transpose(db, home, syn, tmp_path):
    import torch

    path = tmp_path / "bare.safetensors"
    save_file({"decoder": syn.W_dec, "decoder_T": np.ascontiguousarray(syn.W_dec.T), "bias": np.zeros(64, np.float32)}, str(path))
    known(db, SRC, 512)
    known(db, "gpt2-small/1-res-jb", 512)
    rec = attach(db, SRC, path=path, tensor="decoder")
    assert (rec.loader, rec.tensor_name, rec.transposed, rec.sha256) == ("safetensors", "decoder", False, sha256(path))
    assert np.array_equal(decoder(db, SRC).numpy(), syn.W_dec, equal_nan=True)
    rec = attach(db, "gpt2-small/1-res-jb", path=path, tensor="decoder_T", transpose=True, dtype="float16")
    assert (rec.d_sae, rec.d_in, rec.transposed, rec.dtype) == (512, 64, True, "float16")
    W = decoder(db, "gpt2-small/1-res-jb", dtype=torch.float32)
    assert np.allclose(W.numpy(), syn.W_dec, atol=1e-3, equal_nan=True)
    assert (rec.nan_rows, rec.zero_rows) == (1, 1)
    # without --transpose, a d_in x d_sae tensor is refused, with a hint
    with pytest.raises(WeightsMismatch, match="with transpose"):
        attach(db, "gpt2-small/1-res-jb", path=path, tensor="decoder_T")
    assert get_weights(db, "gpt2-small/1-res-jb").transposed  # the earlier attach is untouched


def test_rejections_attach_nothing(db, home, syn, tmp_path):
    target = "gpt2-small/2-res-jb"
    good = tmp_path / "good.safetensors"
    save_file({"W_dec": syn.W_dec, "other": syn.W_dec[:10]}, str(good))
    blob = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(blob[: len(blob) - 1000])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"\0" * 64)
    broken_folder = tmp_path / "broken_sae"
    broken_folder.mkdir()
    (broken_folder / "cfg.json").write_bytes((syn.path / "cfg.json").read_bytes())
    weights = (syn.path / "sae_weights.safetensors").read_bytes()
    (broken_folder / "sae_weights.safetensors").write_bytes(weights[: len(weights) // 2])

    cases = [
        (dict(path=good), WeightsMismatch, "1000 features but the decoder has 512 rows"),
        (dict(path=truncated), CorruptWeights, "truncated"),
        (dict(path=garbage), CorruptWeights, "not JSON"),
        (dict(path=broken_folder), CorruptWeights, "truncated"),
        (dict(path=good, tensor="W_decoder"), WeightsError, "has no tensor 'W_decoder'"),
        (dict(path=good, dtype="float64"), WeightsError, "dtype must be one of"),
        (dict(path=tmp_path / "missing"), WeightsError, "no such file"),
    ]
    known(db, target, 1000)
    for kwargs, kind, message in cases:
        with pytest.raises(kind, match=message):
            attach(db, target, **kwargs)
        nothing_attached(db, target, home)
    # an id in the weights' own config that is not the target
    known(db, "gpt2-small/5-res-jb", 512)
    with pytest.raises(WeightsMismatch, match=f"these weights are {SRC}"):
        attach(db, "gpt2-small/5-res-jb", path=syn.path)
    nothing_attached(db, "gpt2-small/5-res-jb", home)
    # a failed re-attach leaves the attached decoder as it was
    known(db, SRC, 512)
    first = attach(db, SRC, path=good)
    with pytest.raises(CorruptWeights):
        attach(db, SRC, path=truncated)
    assert get_weights(db, SRC).sha256 == first.sha256
    assert np.array_equal(decoder(db, SRC).numpy(), syn.W_dec, equal_nan=True)
    assert sorted(p.name for p in Path(first.decoder_path).parent.iterdir()) == ["decoder.npy", "norms.npy"]


# ---- CLI ---------------------------------------------------------------------------------------


def test_weights_cli_add_and_list(tmp_path, home, syn):
    import orjson
    from typer.testing import CliRunner

    from np_mirror.cmd_weights import weights_app
    from np_mirror.errors import EXIT_BAD_INPUT, handle

    dbfile = str(tmp_path / "cli.duckdb")
    runner = CliRunner()
    result = runner.invoke(weights_app, ["add", SRC, "--path", str(syn.path / "sae_weights.safetensors"), "--db", dbfile])
    assert result.exit_code == 0, result.output
    result = runner.invoke(weights_app, ["list", "--db", dbfile, "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = orjson.loads(result.stdout)
    assert [(r["source_id"], r["d_sae"], r["d_in"], r["nan_rows"], r["zero_rows"]) for r in rows] == [(SRC, 512, 64, 1, 1)]
    result = runner.invoke(weights_app, ["add", SRC, "--path", str(syn.path / "sae_weights.safetensors"), "--tensor", "nope", "--db", dbfile])
    assert isinstance(result.exception, WeightsError)
    assert handle(result.exception) == EXIT_BAD_INPUT  # the app's one error handler: one line, exit 2


def _loaded_after(code: str) -> list[str]:
    probe = "\nimport sys\nprint('LOADED=' + ','.join(m for m in %r if m in sys.modules))" % (HEAVY,)
    out = subprocess.run([sys.executable, "-c", code + probe], capture_output=True, text=True, check=True)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("LOADED=")][-1]
    return [m for m in line[len("LOADED="):].split(",") if m]


def test_weights_cli_help_and_list_do_not_import_torch_or_sae_lens(tmp_path):
    dbfile = tmp_path / "light.duckdb"
    Database(dbfile).close()
    with Database(dbfile).connect():
        pass
    code = (
        "import npclient.weights, npclient.testing.saes\n"
        "from np_mirror.cmd_weights import weights_app\n"
        f"for argv in (['--help'], ['add', '--help'], ['list', '--help'], ['list', '--db', {str(dbfile)!r}]):\n"
        "    try:\n        weights_app(argv)\n    except SystemExit as e:\n        assert not e.code, (argv, e.code)\n"
    )
    assert _loaded_after(code) == []
