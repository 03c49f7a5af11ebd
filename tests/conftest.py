import pytest

from helpers import require_browser

pytest_plugins = ["npclient.testing.pytest_plugin"]


@pytest.fixture
def browser():
    """(chromium, chromedriver) for the headless-browser tests; skips, naming what is missing
    (chromium, chromedriver or selenium), where they cannot run."""
    return require_browser()


@pytest.fixture(scope="session")
def ray_cluster():
    """The session's one local Ray cluster (2 CPUs, 2 logical GPUs, no dashboard), shared by every
    Ray test in this process: starting one costs seconds. Logical GPUs let the one-actor-per-GPU
    paths be scheduled too (their actors run on the CPU here, as there is no CUDA)."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="warning", configure_logging=True)
    yield ray
    if started:
        from npclient.distributed.pool import shutdown_workers

        shutdown_workers()
        ray.shutdown()
