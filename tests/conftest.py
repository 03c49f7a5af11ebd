import pytest

from helpers import require_browser

pytest_plugins = ["npclient.testing.pytest_plugin"]


@pytest.fixture
def browser():
    """(chromium, chromedriver) for the headless-browser tests; skips, naming what is missing
    (chromium, chromedriver or selenium), where they cannot run."""
    return require_browser()
