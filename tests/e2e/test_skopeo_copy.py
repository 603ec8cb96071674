"""skopeo with a `[[registry.mirror]]` naming cistern: every platform, byte for byte."""

from __future__ import annotations

import hashlib
import os

import pytest

from conftest import UpstreamCounter, expected_cold_fetches
from mirror import Mirror
from skopeo import copy_direct, copy_through_mirror, tree_sha256, write_registries_conf

IMAGES = ["library/alpine:latest", "library/busybox:latest", "library/multi:v2s2", "private/secret:1.0",
          "library/layers40:latest", "library/big:latest"]


@pytest.fixture(scope="module")
def registries_conf(cistern, tmp_path_factory):
    return write_registries_conf(str(tmp_path_factory.mktemp("skopeo") / "registries.conf"), cistern.host)


@pytest.fixture(scope="module")
def direct_copies(hub, tmp_path_factory):
    """{image: {file: sha256}} of each image copied straight from the stand-in."""
    out = {}
    for image in IMAGES:
        dest = str(tmp_path_factory.mktemp("direct"))
        copy_direct(hub.registry_host, image, dest, (hub.user, hub.password))
        out[image] = tree_sha256(dest)
    return out


def test_copy_through_mirror_is_byte_identical(registries_conf, direct_copies, hub, tmp_path):
    fetched: set = set()
    for image in IMAGES:
        dest = str(tmp_path / image.replace("/", "_"))
        counter = UpstreamCounter(hub)
        copy_through_mirror(registries_conf, image, dest)
        counts = counter.by_kind()
        expected = expected_cold_fetches(hub.images[image], platforms=None, already=fetched)
        assert {k: counts[k] for k in expected} == expected, f"{image}: upstream saw {dict(counts)}"

        with open(os.path.join(dest, "manifest.json"), "rb") as f:
            assert "sha256:" + hashlib.sha256(f.read()).hexdigest() == hub.images[image]["digest"]
        assert tree_sha256(dest) == direct_copies[image], f"{image}: bytes differ from the direct copy"


def test_warm_copy_asks_upstream_nothing(registries_conf, direct_copies, hub, tmp_path):
    counter = UpstreamCounter(hub)
    for image in IMAGES:
        dest = str(tmp_path / image.replace("/", "_"))
        copy_through_mirror(registries_conf, image, dest)
        assert tree_sha256(dest) == direct_copies[image], image
    assert counter.entries() == []


def test_missing_image_fails(registries_conf, cistern, tmp_path):
    result = copy_through_mirror(registries_conf, "library/doesnotexist:latest", str(tmp_path / "x"), check=False)
    assert result.returncode != 0
    # skopeo names the mirror's answer before trying docker.io itself (blackholed here)
    mirror_said = "manifest unknown: manifest latest is unknown to repository library/doesnotexist"
    assert f"Mirrors also failed: [{cistern.host}/library/doesnotexist:latest" in result.stderr, result.stderr
    assert mirror_said in result.stderr, result.stderr


def test_offline_mirror_serves_cached_copies_without_upstream(cistern_bin, cistern, registries_conf,
                                                               direct_copies, hub, tmp_path):
    """A second cistern on the first one's storage, offline (REGISTRY_PROXY_OFFLINE=true) and with
    an upstream no lookup can find: skopeo copies every cached image byte for byte, and a miss
    names the offline switch."""
    for image in IMAGES:  # cached, whatever ran before
        copy_through_mirror(registries_conf, image, str(tmp_path / ("warm_" + image.replace("/", "_"))))
    counter = UpstreamCounter(hub)
    same_storage = f"  filesystem:\n    rootdirectory: {cistern.storage}\n"
    with Mirror.cistern(cistern_bin, "http://upstream.invalid:5000", storage_driver=same_storage,
                        extra_env={"REGISTRY_PROXY_OFFLINE": "true"}) as offline:
        conf = write_registries_conf(str(tmp_path / "offline.conf"), offline.host)
        for image in IMAGES:
            dest = str(tmp_path / ("offline_" + image.replace("/", "_")))
            copy_through_mirror(conf, image, dest)
            assert tree_sha256(dest) == direct_copies[image], f"{image}: bytes differ offline"
        result = copy_through_mirror(conf, "library/doesnotexist:latest", str(tmp_path / "x"), check=False)
        assert result.returncode != 0
        assert "proxy.offline" in result.stderr, result.stderr
        assert offline.metric_sum("cistern_upstream_offline", registry="docker.io") == 1
        assert offline.metric_sum("cistern_upstream_requests_total") == 0
        assert "registry OFFLINE" in offline.log_text()
    assert counter.entries() == []
