"""The import rules the design rests on, checked on the code rather than stated in prose."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "npclient"


def _imports(path: Path) -> set[str]:
    """Absolute names a module imports (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_no_production_module_imports_the_emulator():
    """npclient.testing is a test stand-in: nothing outside it may import it (the CLI's demo
    and emulator commands may, lazily, since they exist to run it)."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "testing" in path.relative_to(PACKAGE).parts:
            continue
        if any(name == "npclient.testing" or name.startswith("npclient.testing.") for name in _imports(path)):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_the_emulator_and_serve_share_the_contract():
    """wire.py is the one statement of Neuronpedia's contract: the client, the emulator's routes
    and serve's API all import it."""
    for rel in ("npclient/http/client.py", "npclient/testing/emulator/routes.py", "npclient/serve/api.py"):
        assert "npclient.wire" in _imports(ROOT / rel), rel


#: A statement that changes a mirror or writes files from it, at the start of a line (our SQL is
#: upper-case by convention; prose that happens to say "update ... from" is not SQL).
_SQL_WRITE = re.compile(
    r"(^|\n)\s*(INSERT (OR REPLACE )?INTO|DELETE FROM|UPDATE \w+ SET|CREATE (TEMP |UNIQUE )?(TABLE|INDEX|SEQUENCE)"
    r"|DROP TABLE|ALTER TABLE|COPY \()"
)


def _strings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append(node.value)
        elif isinstance(node, ast.JoinedStr):
            out.append("".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)))
    return out


def _production_modules() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if "testing" not in p.relative_to(PACKAGE).parts]


def test_only_the_store_writes_sql():
    """Statements that change a mirror (or write files from it) live in npclient/store/ only."""
    offenders = []
    for path in _production_modules() + sorted((ROOT / "cli").rglob("*.py")):
        if path.is_relative_to(PACKAGE / "store"):
            continue
        for text in _strings(path):
            if _SQL_WRITE.search(text):
                offenders.append(f"{path.relative_to(ROOT)}: {text.strip()[:60]!r}")
    assert offenders == []


def test_geometry_serve_and_the_cli_reach_the_mirror_through_mirror():
    """No connection, no `Database`, no `mirror.db` outside the store and the Mirror handle:
    geometry, serve and the CLI use `Mirror` (and `Mirror.store`'s typed calls)."""
    offenders = []
    places = [*(PACKAGE / "geometry").rglob("*.py"), *(PACKAGE / "serve").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]
    for path in sorted(places):
        names = _imports(path)
        if any(n.startswith("npclient.store.database") or n == "npclient.store.Database" for n in names):
            offenders.append(f"{path.relative_to(ROOT)} imports the store's Database")
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "db":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} uses .db")
            if isinstance(node, ast.Attribute) and node.attr in ("connect", "transaction") and \
                    isinstance(node.value, ast.Attribute) and node.value.attr == "db":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} opens a connection")
    assert offenders == []


def test_no_production_module_is_over_700_lines():
    long = {str(p.relative_to(ROOT)): n for p in _production_modules()
            if (n := len(p.read_text().splitlines())) > 700}
    assert long == {}


DEPRECATED_PATHS = {"npclient.client", "npclient.pacing", "npclient.retry", "npclient.transport", "npclient.exports.s3",
                    "npclient.exports.plan", "npclient.exports.source_sync", "npclient.exports.importer",
                    "npclient.exports.parquet", "npclient.geometry.results"}


def test_nothing_in_the_package_imports_a_deprecated_path():
    """The old module paths exist for users' imports only; the package, the CLI, the notebooks'
    builder and the tests use the new places (one path per thing)."""
    offenders = []
    for path in sorted([*PACKAGE.rglob("*.py"), *(ROOT / "cli").rglob("*.py"), *(ROOT / "tests").glob("*.py"),
                        ROOT / "notebooks" / "build_notebooks.py"]):
        if ".".join(path.relative_to(ROOT).with_suffix("").parts) in DEPRECATED_PATHS:
            continue
        if path.name == "test_http_errors.py":  # checks that the old paths still work
            continue
        text = path.read_text()
        if any(name in DEPRECATED_PATHS for name in _imports(path)) or any(f"from {p} import" in text for p in DEPRECATED_PATHS):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
