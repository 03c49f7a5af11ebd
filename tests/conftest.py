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


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1 with one empty bucket; the AWS variables point at it."""
    pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    import logging
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
            mp.setenv(key, value)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="np-data")
        try:
            yield endpoint
        finally:
            server.stop()
