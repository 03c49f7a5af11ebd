"""The README's "Try it offline" section, run command by command as a new user would.

The fenced ```bash blocks between the "## Try it offline" heading and the next `## ` heading are
the walk. Each line is one command, run by bash in the shell state the lines before left
(exported variables and the working directory carry over, as in one terminal). A command that
ends in `&` (the emulator, `serve`) is started in the background in its own process group; the
walk goes on once it is ready: the emulator when it has printed its `export` lines, a server
when its port accepts connections. `kill %...` stops the background commands (SIGTERM, as the
user's shell sends it) and checks that they exit cleanly. Every other command must exit 0 with
no traceback.

Ports: the README uses fixed ones (readable, and what its `export` lines show). The emulator is
started here on port 0 (the system picks free ones) and the README's numbers are replaced, in
every later command, by the ports it printed; `serve` gets a port that was free a moment ago,
and another if it loses the race. HOME and TMPDIR point into the test's folder, so nothing
escapes it; at the end TMPDIR must be empty (the emulator deleted its export folder, the walk
its mirror).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
HEADING = "## Try it offline"
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
READY_TIMEOUT_S = 120.0
COMMAND_TIMEOUT_S = 300.0
#: What some steps must print besides exiting 0 (by the command's start).
EXPECT = {
    "np-mirror status": ("gpt2-small/0-res-jb",),
    "np-mirror show": ("Monday",),
    "np-mirror sql": DAYS,
    "np-mirror geometry pca": DAYS,
    "curl": ('"modelId":"gpt2-small"', '"index":"135"'),
    "np-mirror cache prune --dry-run": ("would delete",),
    "np-mirror cache prune": ("deleted",),
}


def offline_commands(text: str) -> list[str]:
    """The commands of the section, in order (a line ending in a backslash continues)."""
    assert HEADING in text, f"README has no {HEADING!r} section"
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    commands: list[str] = []
    for block in re.findall(r"^```bash\n(.*?)^```", section, flags=re.S | re.M):
        pending = ""
        for line in block.splitlines():
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1].strip() + " "
                continue
            line = (pending + line.strip()).strip()
            pending = ""
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _ports(command: str) -> dict[str, int]:
    return {flag: int(n) for flag, n in re.findall(r"(--port|--s3-port)[ =](\d+)", command)}


@dataclass
class Background:
    command: str
    proc: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Walk:
    """One terminal: its environment, working directory, background jobs and port renames."""

    tmp: Path
    env: dict[str, str]
    cwd: Path
    ports: dict[int, int] = field(default_factory=dict)  # README port -> the one in use
    jobs: list[Background] = field(default_factory=list)
    printed: list[str] = field(default_factory=list)  # what background commands printed

    def rename_ports(self, command: str) -> str:
        for theirs, ours in self.ports.items():
            command = re.sub(rf"(?<![0-9]){theirs}(?![0-9])", str(ours), command)
        return command

    # ---- foreground ----------------------------------------------------------------------
    def run(self, command: str) -> str:
        state = self.tmp / "state"
        script = (f"set -o pipefail\n{command}\n__rc=$?\n"
                  f"env -0 > {state}.env\npwd > {state}.pwd\nexit $__rc\n")
        done = subprocess.run(["bash", "-c", script], env=self.env, cwd=self.cwd, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S)
        out = done.stdout + done.stderr
        assert done.returncode == 0, f"`{command}` exited {done.returncode}:\n{out[-3000:]}"
        assert "Traceback" not in out, f"`{command}` printed a traceback:\n{out[-3000:]}"
        raw = Path(f"{state}.env").read_bytes().split(b"\0")
        self.env = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
        for name in ("_", "SHLVL", "OLDPWD", "PWD", "__rc"):
            self.env.pop(name, None)
        self.cwd = Path(Path(f"{state}.pwd").read_text().strip())
        return out

    # ---- background ----------------------------------------------------------------------
    def start(self, command: str) -> Background:
        log = self.tmp / f"job-{len(self.jobs)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(["bash", "-c", command], env=self.env, cwd=self.cwd, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        job = Background(command, proc, log)
        self.jobs.append(job)
        return job

    def wait_ready(self, job: Background, *, until_printed: str | None, ports: list[int]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            printed = until_printed is None or until_printed in job.output()
            if printed and all(_accepts(p) for p in ports):
                return
            if job.proc.poll() is not None:
                raise RuntimeError(f"`{job.command}` exited {job.proc.returncode} before it was ready:\n{job.output()[-3000:]}")
            assert time.monotonic() < deadline, f"`{job.command}` not ready after {READY_TIMEOUT_S:.0f} s:\n{job.output()[-3000:]}"
            time.sleep(0.1)

    def stop_all(self, *, check: bool) -> None:
        """SIGTERM to each job's process group (what `kill %1` sends), then wait for it."""
        for job in self.jobs:
            if job.proc.poll() is None:
                os.killpg(job.proc.pid, signal.SIGTERM)
        for job in self.jobs:
            try:
                job.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(job.proc.pid, signal.SIGKILL)
                job.proc.wait(timeout=30)
                if check:
                    raise AssertionError(f"`{job.command}` did not stop on SIGTERM:\n{job.output()[-3000:]}")
            if check:  # 0, or killed by the SIGTERM after a clean shutdown (uvicorn re-raises it)
                assert job.proc.returncode in (0, -signal.SIGTERM), \
                    f"`{job.command}` exited {job.proc.returncode}:\n{job.output()[-3000:]}"
                assert "Traceback" not in job.output(), job.output()[-3000:]
            self.printed.append(job.output())
        self.jobs = []


def _start_emulator(walk: Walk, command: str) -> str:
    """Start it on ports the system picks, map the README's ports to those, return its output."""
    readme_ports = _ports(command)
    command = re.sub(r"(--port|--s3-port)([ =])\d+", r"\g<1>\g<2>0", command)
    job = walk.start(command)
    walk.wait_ready(job, until_printed="export NP_MIRROR_EXPORTS_URL=", ports=[])
    out = job.output()
    urls = dict(re.findall(r"export (NEURONPEDIA_BASE_URL|NP_MIRROR_EXPORTS_URL)=http://127\.0\.0\.1:(\d+)", out))
    assert set(urls) == {"NEURONPEDIA_BASE_URL", "NP_MIRROR_EXPORTS_URL"}, out
    walk.ports[readme_ports["--port"]] = int(urls["NEURONPEDIA_BASE_URL"])
    walk.ports[readme_ports["--s3-port"]] = int(urls["NP_MIRROR_EXPORTS_URL"])
    walk.wait_ready(job, until_printed=None, ports=[int(p) for p in urls.values()])
    return out


def _start_server(walk: Walk, command: str) -> None:
    """A background command with `--port N`: on a free port (another one if it loses the race)."""
    readme_port = _ports(command)["--port"]
    for _ in range(5):
        port = _free_port()
        job = walk.start(re.sub(r"--port([ =])\d+", rf"--port\g<1>{port}", command))
        try:
            walk.wait_ready(job, until_printed=None, ports=[port])
        except RuntimeError:
            walk.jobs.remove(job)  # exited: the port was taken in between
            continue
        walk.ports[readme_port] = port
        return
    raise AssertionError(f"`{command}` could not start on a free port:\n{job.output()[-3000:]}")


@pytest.mark.slow  # about a minute: the emulator writes its exports, sae_lens and torch load (`make test-all`, CI)
def test_the_readme_offline_walk_runs_end_to_end(tmp_path):
    commands = offline_commands(README.read_text())
    assert any(c.startswith("np-mirror emulator") and c.endswith("&") for c in commands)
    home, tmpdir, work = tmp_path / "home", tmp_path / "tmp", tmp_path / "work"
    for d in (home, tmpdir, work):
        d.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NEURONPEDIA_", "NP_MIRROR_", "USE_LOCALHOST", "PYTEST_", "COV_"))}
    env.update(HOME=str(home), TMPDIR=str(tmpdir), HF_HUB_OFFLINE="1", COLUMNS="120",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    walk = Walk(tmp_path, env, work)
    emulator_out = ""
    try:
        for raw in commands:
            command = walk.rename_ports(raw)
            if command.startswith("kill %"):
                walk.stop_all(check=True)
            elif command.endswith("&"):
                command = command[:-1].rstrip()
                if command.startswith("np-mirror emulator"):
                    emulator_out = _start_emulator(walk, command)
                else:
                    _start_server(walk, command)
            else:
                if command.startswith("export ") and emulator_out:
                    # The README's export lines are the ones the emulator printed (ports renamed).
                    assert command in emulator_out, f"the emulator printed no `{command}`:\n{emulator_out}"
                if command.startswith("np-mirror weights add") and emulator_out:
                    home_dir = walk.env["NP_MIRROR_HOME"]
                    assert command.replace('"$NP_MIRROR_HOME', home_dir).replace('"', "") in emulator_out
                started = time.monotonic()
                out = walk.run(command)
                if os.environ.get("NP_README_WALK_TIMES"):
                    print(f"{time.monotonic() - started:6.1f} s  {command[:90]}")
                prefix = max((p for p in EXPECT if command.startswith(p)), key=len, default=None)
                for needle in EXPECT.get(prefix, ()):
                    assert needle in out, f"`{command}` did not print {needle!r}:\n{out[-3000:]}"
        assert not walk.jobs, "the section leaves background commands running (no `kill %...`)"
    finally:
        walk.stop_all(check=False)
    # The walk threw its mirror away and the emulator deleted its export folder. (torch keeps its
    # compiler cache, `torchinductor_<user>`, in the temporary folder on purpose: not ours.)
    assert sorted(p.name for p in tmpdir.iterdir() if not p.name.startswith("torchinductor_")) == []
    assert not (home / ".cache" / "np-mirror").exists()


def test_the_walk_parser_reads_the_section():
    """The parser sees what a reader sees: blocks in order, comments and blank lines left out."""
    text = ("intro\n## Try it offline\nsome prose\n```bash\nexport A=1   # a comment\n\n# only a comment\n"
            "np-mirror emulator --port 3100 \\\n  --s3-port 3101 &\n```\n```python\nprint(1)\n```\n"
            "```bash\nnp-mirror status\n```\n## Next\n```bash\nnot this\n```\n")
    assert offline_commands(text) == ["export A=1   # a comment", "np-mirror emulator --port 3100 --s3-port 3101 &",
                                      "np-mirror status"]
    assert _ports("np-mirror emulator --port 3100 --s3-port 3101 &") == {"--port": 3100, "--s3-port": 3101}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
