"""Two cistern replicas on one S3 bucket (moto), each behind its own dockerd: what one cached,
the other serves without asking upstream."""

from __future__ import annotations

import json

import pytest

from conftest import UpstreamCounter
from dockerd import Dockerd
from mirror import Mirror
from standin import http_request

IMAGES = ["library/alpine:latest", "library/busybox:latest", "library/multi:v2s2", "private/secret:1.0"]


@pytest.fixture(scope="module")
def bucket():
    """`storage:` YAML for a fresh bucket on an in-process moto S3 server."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{server._server.server_port}"
        status, _, _ = http_request(f"{endpoint}/cistern", method="PUT", data=b"")
        assert status == 200
        yield ("  s3:\n    bucket: cistern\n    region: us-east-1\n"
               f"    regionendpoint: {endpoint}\n    accesskey: test\n    secretkey: test\n"
               "    rootdirectory: /mirror\n")
    finally:
        server.stop()


def pull_all(docker, hub) -> dict[str, str]:
    ids = {}
    for image in IMAGES:
        ref = hub.images[image]["docker_ref"]
        docker.docker("pull", ref, capture=True)
        ids[image] = json.loads(docker.docker("image", "inspect", ref, capture=True).stdout)[0]["Id"]
    return ids


def test_a_pull_through_replica_a_then_b_reaches_upstream_once(cistern_bin, hub, bucket):
    creds = (hub.user, hub.password)
    with Mirror.cistern(cistern_bin, hub.registry_url, creds, storage_driver=bucket) as a, \
            Mirror.cistern(cistern_bin, hub.registry_url, creds, storage_driver=bucket) as b:
        assert "storage=s3://cistern/mirror" in a.log_text()
        counter = UpstreamCounter(hub)
        with Dockerd(registry_mirrors=[a.url]) as docker_a:
            through_a = pull_all(docker_a, hub)
        assert counter.by_kind()["GET blob"] > 0

        counter = UpstreamCounter(hub)
        with Dockerd(registry_mirrors=[b.url]) as docker_b:
            through_b = pull_all(docker_b, hub)
        assert counter.entries() == [], "replica B served what replica A cached"
        assert through_b == through_a
        for image in IMAGES:
            assert through_a[image] == hub.images[image]["platforms"]["linux/amd64"]["config"]
