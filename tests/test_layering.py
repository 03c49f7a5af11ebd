"""The import rules the design rests on, checked on the code rather than stated in prose."""

from __future__ import annotations

import ast
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
    for rel in ("npclient/client.py", "npclient/testing/emulator/routes.py", "npclient/serve/api.py"):
        assert "npclient.wire" in _imports(ROOT / rel), rel
