"""containerd (`ctr images pull --hosts-dir`) with cistern as the docker.io mirror, as on a k8s node."""

from __future__ import annotations

import re

import pytest

from conftest import UpstreamCounter, expected_cold_fetches
from containerd import Containerd

IMAGES = ["library/alpine:latest", "library/busybox:latest", "library/multi:v2s2", "private/secret:1.0",
          "library/layers40:latest", "library/big:latest"]


@pytest.fixture(scope="module")
def node(cistern):
    with Containerd() as containerd:
        containerd.use_mirror(cistern.host)
        yield containerd


def pull_all(containerd: Containerd):
    for image in IMAGES:
        containerd.pull(f"docker.io/{image}")


def test_cold_pull_fetches_each_blob_once(node, cistern, hub):
    fetched: set = set()
    for image in IMAGES:
        counter = UpstreamCounter(hub)
        node.pull(f"docker.io/{image}")
        counts = counter.by_kind()
        counts.pop("GET base", None)
        expected = expected_cold_fetches(hub.images[image], already=fetched)
        assert counts == {"HEAD manifest": 1, **expected}, f"{image}: upstream saw {dict(counts)}"

    digests = node.image_digests()
    for image in IMAGES:
        assert digests[f"docker.io/{image}"] == hub.images[image]["digest"], image


def test_every_request_carried_the_namespace(node, cistern):
    """containerd names the registry it mirrors with `?ns=docker.io`, and cistern accepted it."""
    requests = re.findall(r"path=(/v2/\S+)", cistern.log_text())
    content = [path for path in requests if "/manifests/" in path or "/blobs/" in path]
    assert content, "cistern logged no manifest or blob request"
    assert all(path.endswith("?ns=docker.io") for path in content), content


def test_second_node_pulls_everything_without_upstream(node, cistern, hub):
    counter = UpstreamCounter(hub)
    with Containerd() as second:
        second.use_mirror(cistern.host)
        pull_all(second)
        assert second.image_digests() == node.image_digests()
    assert counter.entries() == []
    assert counter.tokens_issued() == 0


def test_missing_image_fails_with_not_found(node, cistern):
    result = node.pull("docker.io/library/doesnotexist:latest", check=False)
    assert result.returncode != 0
    # ctr shows cistern's 404, then tries Docker Hub itself (blackholed here), as after any mirror error
    assert f'response was http.StatusNotFound" host="{cistern.host}"' in result.stderr, result.stderr

