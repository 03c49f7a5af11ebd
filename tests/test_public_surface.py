import subprocess
import sys

import npclient

HEAVY = ("torch", "sae_lens", "umap", "transformer_lens", "ray")


def test_exported_members():
    exported = set(npclient.__all__)
    public = {name for name in dir(npclient) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(npclient, name)).__name__ == "module"}
    assert public - modules - {"annotations"} == exported
    assert npclient.__all__ == sorted(npclient.__all__)


def _loaded_after(code: str) -> list[str]:
    probe = "\nimport sys\nprint('LOADED=' + ','.join(m for m in %r if m in sys.modules))" % (HEAVY,)
    out = subprocess.run([sys.executable, "-c", code + probe], capture_output=True, text=True, check=True)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("LOADED=")][-1]
    return [m for m in line[len("LOADED="):].split(",") if m]


def test_import_npclient_stays_light():
    assert _loaded_after("import npclient") == []


def test_cli_help_stays_light():
    code = (
        "import sys\n"
        "from np_mirror.app import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
    )
    assert _loaded_after(code) == []
    from np_mirror.app import app

    names = [c.name for c in app.registered_commands]
    assert "fetch" in names and "emulator" in names
    # One process for every command's --help (a process each cost ~0.5 s): after each, nothing heavy
    # may have been loaded, so the first command that loads one is named.
    code_subs = (
        "import sys\nfrom np_mirror.app import main\n"
        f"for sub in {names!r}:\n"
        "    try:\n        main([sub, '--help'])\n    except SystemExit:\n        pass\n"
        f"    heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "    print('AFTER', sub, ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code_subs], capture_output=True, text=True, check=True)
    after = dict(ln.split(" ", 2)[1:] for ln in out.stdout.splitlines() if ln.startswith("AFTER ") and ln.count(" ") == 2)
    assert sorted(after) == sorted(names), out.stdout[-2000:]
    assert {sub: loaded for sub, loaded in after.items() if loaded} == {}
