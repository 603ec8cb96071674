"""One cistern in front of several registries (issue 14): containerd, skopeo and dockerd pull images of
the same name from different registries, and each gets its own registry's bytes.

The upstreams are local Distribution instances standing in for registries named in cistern's
`registries:` section: `ghcr.io` (with its own token server, service and credentials) and `quay.io`
(no auth), besides the Docker Hub stand-in as the default upstream. Each holds a different
`owner/app:1.0` (they share only a base layer), so serving one registry's content for another's
name would show as a wrong digest, and so would a blob served under a registry that never
confirmed it. A fourth registry, `unlisted`, is not in cistern's config: cistern must refuse it
without asking anything upstream, and containerd then falls back to it directly.

Each client gets a fresh cistern (so its cold pull is really cold) and pulls every registry's image
once cold and once warm; the per-registry upstream request counts are printed at the end of the run.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import re

import pytest

from build_images import same_name_specs
from conftest import MEASUREMENTS, UpstreamCounter
from containerd import Containerd
from dockerd import Dockerd
from mirror import Mirror
from skopeo import copy_direct, copy_with_conf, tree_sha256, write_registries_conf_with_paths
from standin import StandIn

GHCR_CREDENTIALS = ("ghcr-user", "ghcr-secret")

# What every client pulls, in this order: (registry as clients name it, repository, tag).
PULLS = [
    ("docker.io", "library/alpine", "latest"),  # an OCI index
    ("docker.io", "owner/app", "1.0"),          # an OCI manifest
    ("ghcr.io", "owner/app", "1.0"),            # an OCI index of amd64 + arm64/v8
    ("quay.io", "owner/app", "1.0"),            # a Docker v2s2 manifest
]
UPSTREAM_REQUESTS = "cistern_upstream_requests_total"


class Registry:
    """An upstream registry: the host clients name it by and its Distribution stand-in."""

    def __init__(self, host: str, standin: StandIn):
        self.host = host
        self.standin = standin

    def image(self, repository: str, tag: str) -> dict:
        return self.standin.images[f"{repository}:{tag}"]


@pytest.fixture(scope="module")
def registries(hub):
    """{host: Registry} of docker.io, ghcr.io, quay.io and the unconfigured `unlisted`."""
    with contextlib.ExitStack() as stack:
        ghcr = stack.enter_context(StandIn(service="ghcr.io", user=GHCR_CREDENTIALS[0],
                                           password=GHCR_CREDENTIALS[1]))
        quay = stack.enter_context(StandIn(token_auth=False))
        unlisted = stack.enter_context(StandIn(token_auth=False))
        for host, standin, push in [("docker.io", hub, "oci"), ("ghcr.io", ghcr, "oci-index"),
                                    ("quay.io", quay, "v2s2"), ("unlisted", unlisted, "v2s2-list")]:
            standin.seed(specs=same_name_specs(host, push), verbose=False)
        out = {"docker.io": Registry("docker.io", hub), "ghcr.io": Registry("ghcr.io", ghcr),
               "quay.io": Registry("quay.io", quay), "unlisted": Registry(unlisted.registry_host, unlisted)}
        apps = [r.image("owner/app", "1.0") for r in out.values()]
        assert len({app["digest"] for app in apps}) == 4, "each registry holds a different owner/app:1.0"
        assert shared_base_layer(out), "and all of them share one base layer"
        yield out


def shared_base_layer(registries) -> str:
    """The one layer every registry's owner/app:1.0 has (same bytes, same digest)."""
    layers = [{layer["digest"] for layer in r.image("owner/app", "1.0")["platforms"]["linux/amd64"]["layers"]}
              for r in registries.values()]
    (shared,) = set.intersection(*layers)
    return shared


class Upstreams:
    """Requests every upstream registry received since this was made (the access logs)."""

    def __init__(self, registries: dict[str, Registry]):
        self.counters = {host: UpstreamCounter(r.standin) for host, r in registries.items()}

    def entries(self, host: str) -> list[dict]:
        return self.counters[host].entries()

    def by_kind(self, host: str) -> collections.Counter:
        return self.counters[host].by_kind()

    def totals(self) -> dict[str, int]:
        return {host: len(counter.entries()) for host, counter in self.counters.items()}

    def snapshot(self) -> dict[str, collections.Counter]:
        """{host: requests by kind} so far."""
        return {host: counter.by_kind() for host, counter in self.counters.items()}


def check_cold_pull(registries, upstreams: Upstreams, host: str, repository: str, tag: str, platforms,
                    client_has: set | None):
    """The registry pulled from saw exactly the requests for its own image; every other registry none.

    `client_has`: the blobs the client already holds and so does not ask for (containerd and dockerd
    keep content by digest: the base layer every owner/app shares is asked for once), updated here;
    None for a client that asks for everything every time (skopeo to a new directory).
    """
    for other in registries:
        if other != host:
            assert upstreams.entries(other) == [], f"{host}/{repository}: {other} was asked {upstreams.entries(other)}"
    entries = [e for e in upstreams.entries(host) if e["kind"] != "base"]
    image = registries[host].image(repository, tag)
    children = [image["platforms"][p] for p in (platforms or image["platforms"])]
    is_list = children[0]["digest"] != image["digest"]
    assert {e["name"] for e in entries} == {repository}, entries
    # the top manifest once (by digest after a HEAD of the tag, or by tag), then each child wanted
    manifests = [e["reference"] for e in entries if e["kind"] == "manifest" and e["method"] == "GET"]
    assert len(manifests) == 1 + (len(children) if is_list else 0), (host, entries)
    assert set(manifests) <= {tag, image["digest"], *(c["digest"] for c in children)}, (host, manifests)
    # each blob of its own image asked for exactly once (GET, or HEAD where cistern already holds the
    # bytes by digest from another registry and only needs this registry to confirm it)
    blobs = sorted(e["reference"] for e in entries if e["kind"] == "blob")
    own = {d for c in children for d in (c["config"], *(layer["digest"] for layer in c["layers"]))}
    wanted = sorted(own - client_has if client_has is not None else own)
    assert blobs == wanted, f"{host}/{repository}: blobs asked {blobs}, expected {wanted}"
    if client_has is not None:
        client_has.update(own)
    assert all(e["status"] == 200 for e in entries), entries
    return entries


def upstream_metrics(cistern: Mirror, registries) -> dict[str, float]:
    """cistern_upstream_requests_total by its `registry` label (the host as clients name it)."""
    return {host: cistern.metric_sum(UPSTREAM_REQUESTS, registry=r.host) for host, r in registries.items()}


def check_metrics_match_access_logs(cistern: Mirror, registries, before: dict[str, float], upstreams: Upstreams):
    """cistern_upstream_requests_total{registry} moved as much as each registry's access log."""
    after = upstream_metrics(cistern, registries)
    moved = {host: after[host] - before[host] for host in registries}
    assert moved == upstreams.totals(), (moved, upstreams.totals())


def measure(client: str, phase: str, per_pull: list[tuple[str, dict[str, collections.Counter]]]):
    """One line per pull (Upstreams.snapshot() after it): requests each upstream registry received."""
    for ref, kinds in per_pull:
        counts = ", ".join(f"{host}={sum(v.values())}" for host, v in kinds.items() if host != "unlisted")
        detail = "; ".join(f"{host}: " + ", ".join(f"{k} {n}" for k, n in sorted(v.items()))
                           for host, v in kinds.items() if v)
        MEASUREMENTS.append(f"upstream requests, {client:10s} {phase:4s} {ref:36s} {counts}"
                            + (f"  ({detail})" if detail else ""))


def mirror_for(cistern_bin, hub, registries, password_from_env: bool = False) -> Mirror:
    """A cold cistern: Docker Hub as the default upstream, ghcr.io and quay.io listed. ghcr.io's
    password is in the file, or with `password_from_env` in REGISTRY_REGISTRIES_GHCR_IO_PASSWORD."""
    ghcr, quay = registries["ghcr.io"].standin, registries["quay.io"].standin
    ghcr_section = {"remoteurl": ghcr.registry_url, "username": GHCR_CREDENTIALS[0]}
    env = {}
    if password_from_env:
        env["REGISTRY_REGISTRIES_GHCR_IO_PASSWORD"] = GHCR_CREDENTIALS[1]
    else:
        ghcr_section["password"] = GHCR_CREDENTIALS[1]
    config = {"registries": {"ghcr.io": ghcr_section, "quay.io": {"remoteurl": quay.registry_url}}}
    return Mirror.cistern(cistern_bin, hub.registry_url, credentials=(hub.user, hub.password),
                          extra_config=config, extra_env=env)


# ------------------------------------------------------------------------------------------------
# containerd with certs.d/_default/hosts.toml: every registry through cistern, `?ns=<host>`
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def containerd_setup(cistern_bin, hub, registries):
    with contextlib.ExitStack() as stack:
        cistern = stack.enter_context(mirror_for(cistern_bin, hub, registries))
        node = stack.enter_context(Containerd())
        node.use_mirror_for_every_registry(cistern.host)
        yield cistern, node



def test_containerd_default_hosts_pulls_each_registrys_own_image(containerd_setup, registries, hub):
    cistern, node = containerd_setup
    node_has: set = set()
    ghcr_tokens = registries["ghcr.io"].standin
    ghcr_tokens.reset_token_stats()
    hub_rejected = hub.token_stats()["rejected"]
    measured = []
    for host, repository, tag in PULLS:
        upstreams = Upstreams(registries)
        before = upstream_metrics(cistern, registries)
        node.pull(f"{host}/{repository}:{tag}")
        check_cold_pull(registries, upstreams, host, repository, tag, ["linux/amd64"], node_has)
        # containerd resolves the tag with HEAD; cistern asks upstream with one HEAD
        assert upstreams.by_kind(host)["HEAD manifest"] == 1, upstreams.entries(host)
        check_metrics_match_access_logs(cistern, registries, before, upstreams)
        measured.append((f"{host}/{repository}:{tag}", upstreams.snapshot()))
    measure("containerd", "cold", measured)

    digests = node.image_digests()
    for host, repository, tag in PULLS:
        assert digests[f"{host}/{repository}:{tag}"] == registries[host].image(repository, tag)["digest"]

    # containerd 1.6.20 names the registry in every request it sends the mirror (so far all of them
    # came from containerd), with the repository as the registry knows it
    paths = [p for p in re.findall(r"path=(/v2/\S+)", cistern.log_text()) if "/manifests/" in p or "/blobs/" in p]
    named = collections.Counter(p.split("?ns=")[1] for p in paths if "?ns=" in p)
    assert sum(named.values()) == len(paths) and set(named) == {"docker.io", "ghcr.io", "quay.io"}, paths
    assert all(p.startswith(("/v2/library/alpine/", "/v2/owner/app/")) for p in paths), paths
    # ... and cistern names it back (distribution spec, 2025-11)
    status, headers, _ = cistern.get("/v2/owner/app/manifests/1.0?ns=ghcr.io", method="HEAD")
    assert (status, headers.get("OCI-Namespace")) == (200, "ghcr.io")

    # ghcr.io's credentials went to ghcr.io's realm, and no registry's credentials anywhere else
    stats = ghcr_tokens.token_stats()
    assert stats["by_user"] == {GHCR_CREDENTIALS[0]: stats["tokens_issued"]}, stats
    assert stats["tokens_issued"] >= 1 and stats["rejected"] == 0, stats
    assert hub.token_stats()["rejected"] == hub_rejected
    assert GHCR_CREDENTIALS[1] not in cistern.log_text()


def test_containerd_unlisted_registry_gets_404_and_falls_back_to_itself(containerd_setup, registries):
    cistern, node = containerd_setup
    unlisted = registries["unlisted"]
    host = unlisted.standin.registry_host
    # the node is set up as for any registry: the mirror first, the registry itself as the server
    node.write_hosts(host, f'server = "http://{host}"\n\n[host."http://{cistern.host}"]\n'
                           '  capabilities = ["pull", "resolve"]\n')
    upstreams = Upstreams(registries)
    before = cistern.metric_sum(UPSTREAM_REQUESTS)
    result = node.pull(f"{host}/owner/app:1.0")

    assert f'response was http.StatusNotFound" host="{cistern.host}"' in result.stderr, result.stderr
    assert node.image_digests()[f"{host}/owner/app:1.0"] == unlisted.image("owner/app", "1.0")["digest"]
    assert cistern.metric_sum(UPSTREAM_REQUESTS) == before, "cistern asked an upstream about an unlisted registry"
    for other in ("docker.io", "ghcr.io", "quay.io"):
        assert upstreams.entries(other) == [], other
    agents = {e["user_agent"].split("/")[0] for e in upstreams.entries("unlisted")}
    assert agents == {"containerd"}, "only containerd itself, never cistern, talked to the unlisted registry"
    # what containerd was told
    status, _, body = cistern.get(f"/v2/owner/app/manifests/1.0?ns={host}")
    error = json.loads(body)["errors"][0]
    assert (status, error["code"]) == (404, "NAME_UNKNOWN"), (status, body)
    assert host in error["message"] and "not mirrored" in error["message"], error
    MEASUREMENTS.append(f"upstream requests, containerd cold {host + '/owner/app:1.0':36s} (not listed) "
                        f"cistern sent {cistern.metric_sum(UPSTREAM_REQUESTS) - before:.0f}; containerd "
                        f"fell back and sent the registry {len(upstreams.entries('unlisted'))} itself")


def test_containerd_warm_pulls_cost_no_upstream_request(containerd_setup, registries):
    cistern, node = containerd_setup
    measured = []
    with Containerd() as second:  # a second node: nothing cached on the client side
        second.use_mirror_for_every_registry(cistern.host)
        for host, repository, tag in PULLS:
            upstreams = Upstreams(registries)
            second.pull(f"{host}/{repository}:{tag}")
            measured.append((f"{host}/{repository}:{tag}", upstreams.snapshot()))
            assert upstreams.totals() == dict.fromkeys(registries, 0), (host, repository, upstreams.totals())
        assert second.image_digests() == {ref: d for ref, d in node.image_digests().items()
                                          if not ref.startswith(registries["unlisted"].host)}
    measure("containerd", "warm", measured)


# ------------------------------------------------------------------------------------------------
# skopeo with registries.conf mirrors `location = "127.0.0.1:PORT/ghcr.io"` (path prefix, no ns)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def skopeo_setup(cistern_bin, hub, registries, tmp_path_factory):
    with mirror_for(cistern_bin, hub, registries) as cistern:
        conf = write_registries_conf_with_paths(str(tmp_path_factory.mktemp("skopeo") / "registries.conf"),
                                                cistern.host, ["ghcr.io", "quay.io"])
        direct = {}
        for host, repository, tag in PULLS:
            dest = str(tmp_path_factory.mktemp("direct"))
            copy_direct(registries[host].standin.registry_host, f"{repository}:{tag}", dest, None)
            direct[(host, repository, tag)] = tree_sha256(dest)
        yield cistern, conf, direct


def copy_and_compare(conf, direct, key, dest):
    host, repository, tag = key
    copy_with_conf(conf, f"{host}/{repository}:{tag}", dest)
    with open(os.path.join(dest, "manifest.json"), "rb") as f:
        assert "sha256:" + hashlib.sha256(f.read()).hexdigest() == direct_digest(direct, key)
    assert tree_sha256(dest) == direct[key], f"{host}/{repository}:{tag}: bytes differ from the registry's own"


def direct_digest(direct, key) -> str:
    return "sha256:" + direct[key]["manifest.json"]


def test_skopeo_path_prefix_copies_each_registrys_image_byte_exact(skopeo_setup, registries, tmp_path):
    cistern, conf, direct = skopeo_setup
    base = shared_base_layer(registries)
    base_requests = []
    measured = []
    for key in PULLS:
        host, repository, tag = key
        assert direct_digest(direct, key) == registries[host].image(repository, tag)["digest"]
        upstreams = Upstreams(registries)
        before = upstream_metrics(cistern, registries)
        copy_and_compare(conf, direct, key, str(tmp_path / f"{host}_{repository.replace('/', '_')}"))
        entries = check_cold_pull(registries, upstreams, host, repository, tag, None, None)  # --all: all platforms
        base_requests += [(host, e["method"]) for e in entries if e["kind"] == "blob" and e["reference"] == base]
        check_metrics_match_access_logs(cistern, registries, before, upstreams)
        measured.append((f"{host}/{repository}:{tag}", upstreams.snapshot()))
    measure("skopeo", "cold", measured)
    # The base layer all owner/app images share is downloaded once and stored once; every other
    # registry is still asked to confirm it holds it before cistern serves it under that registry.
    assert base_requests == [("docker.io", "GET"), ("ghcr.io", "HEAD"), ("quay.io", "HEAD")], base_requests
    # skopeo names the registry as the first path segment, never with ns
    paths = re.findall(r"path=(/v2/\S+)", cistern.log_text())
    assert any(p.startswith("/v2/ghcr.io/owner/app/manifests/") for p in paths), paths
    assert any(p.startswith("/v2/quay.io/owner/app/manifests/") for p in paths), paths
    assert not any("ns=" in p for p in paths), paths


def test_skopeo_warm_copies_cost_no_upstream_request(skopeo_setup, registries, tmp_path):
    cistern, conf, direct = skopeo_setup
    measured = []
    for key in PULLS:
        host, repository, tag = key
        upstreams = Upstreams(registries)
        copy_and_compare(conf, direct, key, str(tmp_path / f"{host}_{repository.replace('/', '_')}"))
        measured.append((f"{host}/{repository}:{tag}", upstreams.snapshot()))
        assert upstreams.totals() == dict.fromkeys(registries, 0), (key, upstreams.totals())
    measure("skopeo", "warm", measured)


# ------------------------------------------------------------------------------------------------
# dockerd: rewritten names (127.0.0.1:PORT/ghcr.io/owner/app:1.0) and, unchanged, registry-mirrors
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerd_setup(cistern_bin, hub, registries):
    with contextlib.ExitStack() as stack:
        cistern = stack.enter_context(mirror_for(cistern_bin, hub, registries, password_from_env=True))
        docker = stack.enter_context(Dockerd(registry_mirrors=[cistern.url], insecure_registries=[cistern.host]))
        yield cistern, docker


def docker_ref(cistern: Mirror, host: str, repository: str, tag: str) -> str:
    """Docker Hub images by their usual name (through registry-mirrors), others rewritten."""
    if host == "docker.io":
        return f"{repository.removeprefix('library/')}:{tag}"
    return f"{cistern.host}/{host}/{repository}:{tag}"


def check_docker_images(docker: Dockerd, cistern: Mirror, registries):
    for host, repository, tag in PULLS:
        ref = docker_ref(cistern, host, repository, tag)
        image = registries[host].image(repository, tag)
        inspected = json.loads(docker.docker("image", "inspect", ref, capture=True).stdout)[0]
        # the image ID is the config digest of the registry's own amd64 image
        assert inspected["Id"] == image["platforms"]["linux/amd64"]["config"], ref
        assert f"{ref.rsplit(':', 1)[0]}@{image['digest']}" in inspected["RepoDigests"], inspected["RepoDigests"]


def test_dockerd_pulls_rewritten_names_and_hub_via_registry_mirrors(dockerd_setup, registries):
    cistern, docker = dockerd_setup
    ghcr_tokens_before = registries["ghcr.io"].standin.token_stats()
    docker_has: set = set()
    measured = []
    for host, repository, tag in PULLS:
        upstreams = Upstreams(registries)
        before = upstream_metrics(cistern, registries)
        docker.docker("pull", docker_ref(cistern, host, repository, tag), capture=True)
        check_cold_pull(registries, upstreams, host, repository, tag, ["linux/amd64"], docker_has)
        assert upstreams.by_kind(host)["HEAD manifest"] == 1, upstreams.entries(host)
        check_metrics_match_access_logs(cistern, registries, before, upstreams)
        measured.append((f"{host}/{repository}:{tag}", upstreams.snapshot()))
    measure("dockerd", "cold", measured)
    check_docker_images(docker, cistern, registries)
    # this cistern read ghcr.io's password from REGISTRY_REGISTRIES_GHCR_IO_PASSWORD (its tokens were
    # issued to the user, none anonymously), and never logs it
    ghcr_tokens = registries["ghcr.io"].standin.token_stats()
    assert ghcr_tokens["by_user"].get(GHCR_CREDENTIALS[0], 0) > ghcr_tokens_before["by_user"].get(GHCR_CREDENTIALS[0], 0)
    assert (ghcr_tokens["anonymous"], ghcr_tokens["rejected"]) == (ghcr_tokens_before["anonymous"],
                                                                  ghcr_tokens_before["rejected"]), ghcr_tokens
    assert GHCR_CREDENTIALS[1] not in cistern.log_text()


def test_dockerd_warm_pulls_cost_no_upstream_request(dockerd_setup, registries):
    cistern, docker = dockerd_setup
    docker.remove_all_images()
    assert docker.images() == []
    measured = []
    for host, repository, tag in PULLS:
        upstreams = Upstreams(registries)
        docker.docker("pull", docker_ref(cistern, host, repository, tag), capture=True)
        measured.append((f"{host}/{repository}:{tag}", upstreams.snapshot()))
        assert upstreams.totals() == dict.fromkeys(registries, 0), (host, repository, upstreams.totals())
    measure("dockerd", "warm", measured)
    check_docker_images(docker, cistern, registries)


def test_dockerd_rewritten_name_of_an_unlisted_registry_is_refused(dockerd_setup, registries):
    """No fallback for a rewritten name: the mirror is the registry dockerd talks to."""
    cistern, docker = dockerd_setup
    upstreams = Upstreams(registries)
    before = cistern.metric_sum(UPSTREAM_REQUESTS)
    result = docker.docker("pull", f"{cistern.host}/unlisted.example/owner/app:1.0", capture=True, check=False)
    assert result.returncode != 0
    assert "registry unlisted.example is not mirrored here" in result.stderr, result.stderr
    assert cistern.metric_sum(UPSTREAM_REQUESTS) == before
    assert upstreams.totals() == dict.fromkeys(registries, 0), upstreams.totals()
