"""The error contract (issue 13, item 5): typed input errors in the library, none of them naming a
command-line flag; the CLI answers typed input errors with exit 2 and anything else with exit 1,
one line each, and shows the traceback only with --debug or NP_MIRROR_DEBUG=1."""

from __future__ import annotations

import ast
import contextlib
import re
from pathlib import Path

import pytest

import npclient.errors as errors
from np_mirror import errors as cli_errors
from np_mirror.app import main

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "npclient"

# ---- the error classes -------------------------------------------------------------------------

INPUT_ERRORS = [
    errors.InvalidIdError,
    errors.UnknownSourceError,
    errors.InvalidOptionError,
    errors.InvalidPathError,
    errors.FeatureOutOfRange,
    errors.WeightsRequestError,
]


@pytest.mark.parametrize("kind", INPUT_ERRORS, ids=lambda k: k.__name__)
def test_every_input_error_is_an_nperror_and_a_valueerror(kind):
    assert issubclass(kind, errors.NPError) and issubclass(kind, ValueError)
    assert kind.__name__ in errors.__all__
    assert kind.__name__ in (errors.__doc__ or ""), "keep the tree drawing in npclient/errors.py up to date"


def test_every_input_error_in_the_tree_is_listed_here():
    found = {
        obj for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, (errors.InvalidIdError, errors.InvalidOptionError))
    }
    assert found == set(INPUT_ERRORS)


def test_typed_errors_keep_the_types_callers_caught_before():
    exc = errors.FeatureOutOfRange("feature 9 is out of range for 3 rows", option="features")
    assert isinstance(exc, IndexError) and isinstance(exc, ValueError) and exc.option == "features"
    req = errors.WeightsRequestError("dtype must be one of float32", option="dtype")
    assert isinstance(req, errors.WeightsError) and isinstance(req, errors.InvalidOptionError) and req.option == "dtype"
    assert errors.InvalidPathError("no such file: x").option is None


# ---- scanning the library's source ---------------------------------------------------------------

#: The modules whose raise sites are typed (issue 13, item 5).
TYPED_MODULES = sorted(
    [*LIB.glob("geometry/*.py"), *LIB.glob("weights/*.py"), *LIB.glob("store/*.py"),
     LIB / "ids.py", LIB / "wire.py", LIB / "serve" / "app.py"]
)
BARE = {"ValueError", "TypeError", "KeyError", "IndexError"}

#: (module, enclosing function) -> why a bare built-in error is right there.
BARE_ALLOWED = {
    ("npclient/wire.py", "refuse"): "json.loads's parse_constant hook; parse_json turns it into WireError(not_json)",
    ("npclient/wire.py", "_no_body"): "inside parse_json's try: turned into WireError(not_json), never leaves the module",
}

#: Modules whose messages still name flags, with why (their owners type them; strike when done).
FLAG_PENDING: dict[str, str] = {}


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _raises(path: Path):
    """(enclosing function name or '<module>', the Raise node) for every raise in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, child.name)
            else:
                if isinstance(child, ast.Raise):
                    found.append((where, child))
                visit(child, where)

    visit(tree, "<module>")
    return found


def _raised_name(node: ast.Raise) -> str | None:
    exc = node.exc
    if isinstance(exc, ast.Call):
        exc = exc.func
    return exc.id if isinstance(exc, ast.Name) else None


def test_the_typed_modules_raise_no_bare_builtin_errors():
    assert len(TYPED_MODULES) > 20
    bare, used = [], set()
    for path in TYPED_MODULES:
        for where, node in _raises(path):
            name = _raised_name(node)
            if name not in BARE:
                continue
            key = (_rel(path), where)
            if key in BARE_ALLOWED:
                used.add(key)
                continue
            bare.append(f"{_rel(path)}:{node.lineno} in {where}(): raise {name}")
    assert not bare, "raise a typed error (npclient/errors.py) instead:\n" + "\n".join(bare)
    assert used == set(BARE_ALLOWED), f"stale allow-list entries: {set(BARE_ALLOWED) - used}"


FLAG = re.compile(r"--[A-Za-z]")


def _pending(rel: str) -> bool:
    return any(rel == p or rel.startswith(p.rstrip("/") + "/") for p in FLAG_PENDING)


def test_no_library_error_message_names_a_command_line_flag():
    named = []
    for path in sorted(LIB.rglob("*.py")):
        rel = _rel(path)
        if _pending(rel):
            continue
        for _, node in _raises(path):
            if node.exc is None:
                continue
            for part in ast.walk(node.exc):
                if isinstance(part, ast.Constant) and isinstance(part.value, str) and FLAG.search(part.value):
                    named.append(f"{rel}:{node.lineno}: {part.value.strip()[:80]!r}")
    assert not named, "say what the argument means, and give `option=` for the CLI's flag:\n" + "\n".join(named)


# ---- typed errors from the library ---------------------------------------------------------------


def test_geometry_arguments_raise_typed_errors():
    import numpy as np

    from npclient.geometry import device, subspace

    with pytest.raises(errors.InvalidOptionError) as info:
        device.pick_device("gpu")
    assert info.value.option == "device"
    with pytest.raises(errors.InvalidOptionError) as info:
        device.resolve_dtype("float64")
    assert info.value.option == "dtype"
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(errors.InvalidOptionError, match="no CUDA GPU"):
            device.pick_device("cuda")
    W = np.eye(4, dtype=np.float32)
    with pytest.raises(errors.FeatureOutOfRange) as out:
        subspace.pca(W, [0, 9])
    assert isinstance(out.value, IndexError) and out.value.option == "features"
    with pytest.raises(errors.InvalidOptionError) as info:
        subspace.cluster(W, [0, 1, 2], threshold=0.5, n_clusters=2)
    assert info.value.option == "n_clusters"


def test_serve_refuses_at_startup(tmp_path):
    from npclient.serve import create_app

    with pytest.raises(errors.MirrorNotFound):
        create_app(tmp_path / "missing.duckdb")
    (tmp_path / "m.duckdb").write_bytes(b"")
    with pytest.raises(errors.InvalidOptionError) as info:
        create_app(tmp_path / "m.duckdb", allowed_hosts="localhost")
    assert info.value.option == "allowed_hosts"


# ---- the CLI -------------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NP_MIRROR_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NP_MIRROR_DEBUG", raising=False)

    def run(*args: str) -> tuple[int, str]:
        code = main(list(args))
        return code, capsys.readouterr().err

    return run


@pytest.fixture
def neighbors_raises(monkeypatch):
    """`np-mirror neighbors` whose library call raises what the test gives (no mirror opened)."""
    from np_mirror import cmd_geometry

    from npclient.geometry import api

    monkeypatch.setattr(cmd_geometry, "open_mirror", lambda *a, **k: contextlib.nullcontext(None))

    def arm(exc: BaseException) -> None:
        def boom(*args: object, **kwargs: object) -> None:
            raise exc

        monkeypatch.setattr(api, "neighbors", boom)

    return arm


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_a_typed_library_error_is_bad_input_and_gets_the_flag(cli, neighbors_raises):
    neighbors_raises(errors.InvalidOptionError("k must be >= 1, got 0", option="k"))
    code, err = cli("neighbors", "gpt2-small/0-res-jb/1")
    assert code == 2
    assert one_line(err) == "np-mirror: bad input: -k must be >= 1, got 0"
    # an option the command does not have: the message as it is, no invented flag
    neighbors_raises(errors.InvalidOptionError("method must be one of average, ward", option="method"))
    code, err = cli("neighbors", "gpt2-small/0-res-jb/1")
    assert code == 2 and one_line(err) == "np-mirror: bad input: method must be one of average, ward"
    neighbors_raises(errors.FeatureOutOfRange("feature 9 is out of range for 3 rows", option="features"))
    code, err = cli("neighbors", "gpt2-small/0-res-jb/1", "--device", "cpu")
    assert code == 2 and "feature 9 is out of range" in one_line(err)
    neighbors_raises(errors.InvalidOptionError("unknown device 'gpu': use cuda, cuda:N, mps or cpu", option="device"))
    code, err = cli("neighbors", "gpt2-small/0-res-jb/1")
    assert code == 2 and one_line(err).startswith("np-mirror: bad input: --device: unknown device 'gpu'")


@pytest.mark.parametrize("exc, shown", [
    (KeyError("boom"), "KeyError: 'boom'"),
    (ValueError("operands could not be broadcast together"), "ValueError: operands could not be broadcast together"),
    (TypeError("unsupported operand"), "TypeError: unsupported operand"),
    (ZeroDivisionError("division by zero"), "ZeroDivisionError: division by zero"),
])
def test_an_unexpected_exception_is_exit_1_with_a_hint_not_bad_input(cli, neighbors_raises, exc, shown):
    neighbors_raises(exc)
    code, err = cli("neighbors", "gpt2-small/0-res-jb/1")
    assert code == 1
    assert one_line(err) == (f"np-mirror: unexpected error: {shown} "
                             "(rerun with --debug for the traceback, and please report it)")
    assert "bad input" not in err


@pytest.mark.parametrize("how", ["before", "after", "env"])
def test_debug_shows_the_traceback(cli, neighbors_raises, monkeypatch, how):
    neighbors_raises(KeyError("boom"))
    args = ["neighbors", "gpt2-small/0-res-jb/1"]
    if how == "before":
        args = ["--debug", *args]
    elif how == "after":
        args = [*args, "--debug"]
    else:
        monkeypatch.setenv("NP_MIRROR_DEBUG", "1")
    code, err = cli(*args)
    assert code == 1
    assert "Traceback (most recent call last)" in err and "KeyError: 'boom'" in err
    assert err.strip().splitlines()[-1].startswith("np-mirror: unexpected error: KeyError: 'boom'")
    # and for a typed error too, still exit 2
    neighbors_raises(errors.InvalidOptionError("k must be >= 1, got 0", option="k"))
    code, err = cli(*args)
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1] == "np-mirror: bad input: -k must be >= 1, got 0"


def test_debug_is_forgotten_between_runs(cli, neighbors_raises):
    neighbors_raises(KeyError("boom"))
    cli("--debug", "neighbors", "gpt2-small/0-res-jb/1")
    code, err = cli("neighbors", "gpt2-small/0-res-jb/1")
    assert code == 1 and "Traceback" not in err


def test_a_system_error_is_exit_1_without_asking_for_a_report(cli, neighbors_raises):
    neighbors_raises(PermissionError(13, "Permission denied", "/root/x.png"))
    code, err = cli("neighbors", "gpt2-small/0-res-jb/1")
    line = one_line(err)
    assert code == 1 and line.startswith("np-mirror: system error: PermissionError:") and "report" not in line


@pytest.mark.parametrize("args, shown", [
    (["neighbors", "gpt2-small/0-res-jb/1", "-k", "0"], "Invalid value for '-k'"),
    (["geometry", "umap", "gpt2-small/0-res-jb", "-k", "1"], "Invalid value for '-k'"),
    (["geometry", "pca", "gpt2-small/0-res-jb", "--features", "1,x"], "Invalid value for '--features'"),
    (["geometry", "pca", "gpt2-small/0-res-jb", "--features", "1,2", "--out", "x.jpg"], "Invalid value for '--out'"),
    (["geometry", "cluster", "gpt2-small/0-res-jb", "--clusters", "0"], "Invalid value for '--clusters'"),
    (["sync", "gpt2-small/0-res-jb", "--concurrency", "0"], "Invalid value for '--concurrency'"),
    (["sync", "gpt2-small/0-res-jb", "--rate", "-1"], "Invalid value for '--rate'"),
    (["sync", "gpt2-small/0-res-jb", "--no-such-flag"], "No such option: --no-such-flag"),
    (["sync"], "Missing argument"),
    (["no-such-command"], "No such command"),
])
def test_usage_errors_are_one_line_and_exit_2(cli, args, shown):
    code, err = cli(*args)
    assert code == 2
    line = one_line(err)
    assert shown in line and line.endswith("--help`)"), line


def test_matrix_files_that_cannot_serve_are_bad_input(cli, tmp_path):
    import numpy as np

    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not an array")
    good = tmp_path / "m.npy"
    np.save(good, np.eye(3))
    for matrix, shown in [(tmp_path / "missing.npy", "no such file"), (bad, "not a readable .npy array"),
                          (tmp_path / "m.txt", "a .npy or .safetensors file is needed")]:
        if matrix.suffix == ".txt":
            matrix.write_text("1 2 3")
        code, err = cli("geometry", "nullspace", "gpt2-small/0-res-jb", "--matrix", str(matrix),
                        "--db", str(tmp_path / "m.duckdb"))
        assert code == 2 and shown in one_line(err) and "'--matrix'" in err


def test_an_import_path_that_does_not_exist_is_bad_input(cli, tmp_path):
    code, err = cli("import", str(tmp_path / "nowhere"), "--db", str(tmp_path / "m.duckdb"))
    assert code == 2 and one_line(err) == f"np-mirror: bad input: no such file or folder: {tmp_path / 'nowhere'}"
    assert not (tmp_path / "m.duckdb").exists()


def test_a_missing_mirror_names_the_db_flag(cli, tmp_path):
    code, err = cli("status", "--db", str(tmp_path / "missing.duckdb"))
    line = one_line(err)
    assert code == 2 and "no mirror at" in line and line.endswith("--db FILE names another mirror")


def test_no_arguments_print_the_help(cli, capsys):
    code, err = cli()
    assert code == 2 and "Usage: np-mirror" in err and "--debug" in err and "Traceback" not in err


def test_the_mapping_table():
    import typer

    cases = [
        (errors.InvalidIdError("x"), 2, "invalid id"),
        (errors.UnknownSourceError("x"), 2, "unknown source"),
        (errors.InvalidOptionError("x"), 2, "bad input"),
        (errors.InvalidPathError("x"), 2, "bad input"),
        (errors.FeatureOutOfRange("x"), 2, "bad input"),
        (errors.WeightsRequestError("x"), 2, "bad input"),
        (errors.QueryError("x"), 2, "SQL error"),
        (errors.NotAMirrorError("x"), 2, "not a mirror"),
        (errors.MirrorNotFound("x"), 2, "mirror error"),
        (errors.WeightsError("x"), 2, "weights"),
        (errors.ExportError("x"), 2, "export"),
        (errors.MirrorBusyError("x"), 1, "mirror busy"),
        (errors.StoreError("x"), 1, "mirror error"),
        (errors.NotFound(404, "http://h/api"), 1, "API error"),
        (errors.NPTransportError("x"), 1, "network error"),
        (errors.PayloadError("x"), 1, "error"),
        (typer.BadParameter("x"), 2, "bad input"),
        (FileNotFoundError(2, "No such file or directory", "x"), 1, "system error"),
        (ValueError("x"), 1, "unexpected error"),
        (KeyError("x"), 1, "unexpected error"),
        (RuntimeError("x"), 1, "unexpected error"),
    ]
    cli_errors.begin()
    for exc, code, prefix in cases:
        got, line = cli_errors.classify(exc)
        assert (got, line.split(": ")[1]) == (code, prefix), (exc, line)
