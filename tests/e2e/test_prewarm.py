"""Pre-warming with real clients: images listed in `cache.prewarm`, or sent with
`cistern prewarm`, are cached before anyone pulls them, so dockerd's first pull through the
mirror asks the Docker Hub stand-in nothing at all."""

from __future__ import annotations

import subprocess

import pytest

from conftest import UpstreamCounter
from dockerd import Dockerd
from mirror import Mirror
from standin import wait_until

TOKEN = "prewarm-e2e-admin-token-0123456789"
LISTED = ["library/alpine:latest", "library/multi:v2s2"]
WARMED_NOW = "library/busybox:latest"


@pytest.fixture(scope="module")
def warm_mirror(cistern_bin, hub):
    """A fresh cistern whose pre-warm list names LISTED (checked once, at start)."""
    extra = {
        "cache": {"prewarm": {"images": [hub.images[i]["docker_ref"] for i in LISTED], "interval": 0}},
        "admin": {"token": TOKEN},
    }
    with Mirror.cistern(cistern_bin, hub.registry_url, credentials=(hub.user, hub.password),
                        extra_config=extra) as mirror:
        wait_until(lambda: mirror.metric_sum("cistern_prewarm_runs_total") >= 1, timeout=120,
                   what="the pre-warm run at start")
        yield mirror


@pytest.fixture(scope="module")
def docker(warm_mirror):
    with Dockerd(registry_mirrors=[warm_mirror.url]) as daemon:
        yield daemon


def test_listed_images_pull_through_dockerd_with_no_upstream_request(warm_mirror, docker, hub):
    assert warm_mirror.metric_sum("cistern_prewarm_errors_total") == 0
    counter = UpstreamCounter(hub)
    for image in LISTED:
        docker.docker("pull", hub.images[image]["docker_ref"], capture=True)
    assert counter.entries() == [], "pre-warmed: the first pull asks upstream nothing"


def test_cistern_prewarm_warms_an_image_into_the_running_mirror(cistern_bin, warm_mirror, docker, hub):
    ref = hub.images[WARMED_NOW]["docker_ref"]
    done = subprocess.run([cistern_bin, "--config", warm_mirror.config_path, "prewarm", "-f", "-"],
                          input=f"# from docker compose config --images\n{ref}\n", text=True,
                          capture_output=True, timeout=300, env=warm_mirror.env)
    assert done.returncode == 0, done.stderr
    assert "ok " in done.stdout and "done: 1 checked" in done.stdout, done.stdout

    counter = UpstreamCounter(hub)
    docker.docker("pull", ref, capture=True)
    assert counter.entries() == [], "warmed now: the pull asks upstream nothing"
