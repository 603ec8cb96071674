"""dockerd with `--registry-mirror http://cistern`: what a CI runner or a dind service does."""

from __future__ import annotations

import json

import pytest

from conftest import UpstreamCounter, expected_cold_fetches
from dockerd import Dockerd
from standin import http_request

# Pulled in this order; the private image needs the credentials cistern holds (the daemon has none).
IMAGES = ["library/alpine:latest", "library/busybox:latest", "library/multi:v2s2", "private/secret:1.0",
          "library/layers40:latest", "library/big:latest"]


@pytest.fixture(scope="module")
def docker(cistern):
    with Dockerd(registry_mirrors=[cistern.url]) as daemon:
        yield daemon


def image_ids(docker, hub) -> dict[str, str]:
    """{image: (Id, RepoDigests)} as dockerd reports them."""
    out = {}
    for image in IMAGES:
        ref = hub.images[image]["docker_ref"]
        inspected = json.loads(docker.docker("image", "inspect", ref, capture=True).stdout)[0]
        out[image] = (inspected["Id"], inspected["RepoDigests"])
    return out


def test_cold_pull_of_every_image_fetches_each_blob_once(docker, cistern, hub):
    fetched: set = set()
    for image in IMAGES:
        counter = UpstreamCounter(hub)
        docker.docker("pull", hub.images[image]["docker_ref"], capture=True)
        counts = counter.by_kind()
        counts.pop("GET base", None)  # cistern probes /v2/ once for the auth challenge
        expected = expected_cold_fetches(hub.images[image], already=fetched)
        # dockerd HEADs the tag first; cistern answers that with one upstream HEAD, no download.
        assert counts == {"HEAD manifest": 1, **expected}, f"{image}: upstream saw {dict(counts)}"
        assert {e["user_agent"].split("/")[0] for e in counter.entries()} == {"cistern"}
        assert counter.tokens_issued() <= 1, f"{image}: one token per repository scope"

    for image, (image_id, repo_digests) in image_ids(docker, hub).items():
        pushed = hub.images[image]
        # the config digest is the image ID: the exact bytes went through
        assert image_id == pushed["platforms"]["linux/amd64"]["config"], image
        # the manifest (or index) digest dockerd verified is the one pushed upstream
        short = pushed["docker_ref"].rsplit(":", 1)[0]
        assert f"{short}@{pushed['digest']}" in repo_digests, (image, repo_digests)


def test_private_image_is_denied_without_credentials_upstream(hub):
    """The stand-in really guards private/secret: the pull above worked with cistern's credentials."""
    token = hub.token("repository:private/secret:pull", creds=None)
    status, _, _ = hub.request("GET", "/v2/private/secret/manifests/1.0", token=token)
    assert status == 401


def test_warm_pull_after_rmi_asks_upstream_nothing(docker, hub):
    before = image_ids(docker, hub)
    docker.remove_all_images()
    assert docker.images() == []

    counter = UpstreamCounter(hub)
    for image in IMAGES:
        docker.docker("pull", hub.images[image]["docker_ref"], capture=True)

    assert counter.entries() == [], "a warm pull within tagttl must not reach upstream at all"
    assert counter.tokens_issued() == 0
    assert image_ids(docker, hub) == before


@pytest.mark.parametrize("ref, repository, tag", [
    ("doesnotexist:latest", "library/doesnotexist", "latest"),  # no such repository upstream
    ("alpine:nope", "library/alpine", "nope"),                  # a repository without that tag
])
def test_pulling_a_missing_image_fails_with_cisterns_message(docker, cistern, hub, ref, repository, tag):
    counter = UpstreamCounter(hub)
    result = docker.docker("pull", ref, capture=True, check=False)
    assert result.returncode != 0
    assert counter.by_kind()["HEAD manifest"] + counter.by_kind()["GET manifest"] >= 1, "cistern asked upstream"

    # dockerd reports cistern's OCI error, which names the tag and the repository. It then falls
    # back to registry-1.docker.io, as it does after any mirror error; offline that fails as well,
    # so the CLI prints the fallback's error (with internet it would print Docker Hub's).
    message = f"manifest unknown: manifest {tag} is unknown to repository {repository}"
    with open(docker.log, encoding="utf-8", errors="replace") as f:
        assert message in f.read(), f"dockerd log lacks {message!r}; CLI said {result.stderr!r}"
    status, _, body = http_request(f"{cistern.url}/v2/{repository}/manifests/{tag}")
    assert status == 404
    assert json.loads(body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"
