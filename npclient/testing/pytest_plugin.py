"""pytest fixtures for code that talks to Neuronpedia: `pytest_plugins = ["npclient.testing.pytest_plugin"]`.

`np_emulator` is a live emulator on 127.0.0.1 (a real socket, so the code under test runs
its real HTTP stack); `np_emulator_factory(config)` starts more with other settings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Optional

import pytest

from .emulator import EmulatorConfig, EmulatorServer


@pytest.fixture
def np_emulator_factory() -> Iterator[Callable[..., EmulatorServer]]:
    started: list[EmulatorServer] = []

    def start(config: Optional[EmulatorConfig] = None, **changes: object) -> EmulatorServer:
        cfg = (config or EmulatorConfig()).replace(**changes) if changes else (config or EmulatorConfig())
        server = EmulatorServer(cfg).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def np_emulator(np_emulator_factory: Callable[..., EmulatorServer]) -> EmulatorServer:
    return np_emulator_factory()
