"""Shared fixtures of the real-client suite: the Docker Hub stand-in, the cistern binary, counters.

Run through `cargo test --release` (tests/real_clients.rs sets CISTERN_BIN), or directly:
    CISTERN_BIN=target/release/cistern python3 -m pytest tests/e2e
Every tool must be present and runnable: a missing one fails the suite, it is never skipped.
"""

from __future__ import annotations

import collections
import ctypes
import os
import shutil
import signal
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from mirror import Mirror  # noqa: E402
from build_images import ACCEPT_ALL as ACCEPT_ALL_MANIFESTS  # noqa: E402
from standin import StandIn  # noqa: E402

# Die with whoever started us (cargo's test thread): the daemons below die with us in turn.
ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

REQUIRED_TOOLS = {
    "dockerd": "docker.io", "docker": "docker.io", "containerd": "containerd", "ctr": "containerd",
    "skopeo": "skopeo", "docker-registry": "docker-registry", "curl": "curl", "chromium": "chromium",
}


def pytest_sessionstart(session):
    missing = [f"{tool} (apt package {pkg})" for tool, pkg in REQUIRED_TOOLS.items() if not shutil.which(tool)]
    problems = []
    if missing:
        problems.append("missing tools: " + ", ".join(missing))
    if os.geteuid() != 0:
        problems.append("dockerd and containerd need root; this runs as uid %d" % os.geteuid())
    if problems:
        raise pytest.UsageError(
            "REAL-CLIENT TESTS CANNOT RUN ON THIS MACHINE: " + "; ".join(problems)
            + ". Install with `sudo tests/e2e/install.sh` and run as root (CI does both)."
        )


@pytest.fixture(scope="session")
def cistern_bin() -> str:
    path = os.environ.get("CISTERN_BIN") or os.path.join(HERE, "..", "..", "target", "release", "cistern")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no cistern binary at {path}: build it (cargo build --release) or set CISTERN_BIN")
    return os.path.abspath(path)


@pytest.fixture(scope="session")
def hub():
    """The local Docker Hub: Distribution with token auth, seeded with every test image."""
    with StandIn(expires_in=300) as standin:
        standin.seed(extra=True, verbose=False)
        yield standin


@pytest.fixture(scope="module")
def cistern(cistern_bin, hub):
    """A fresh cistern (empty storage) with the stand-in as upstream and its credentials stored."""
    with Mirror.cistern(cistern_bin, hub.registry_url, credentials=(hub.user, hub.password)) as mirror:
        yield mirror


# Lines a test measured for people rather than asserted (e.g. upstream requests per registry),
# printed at the end of the run, captured output or not.
MEASUREMENTS: list[str] = []


def pytest_terminal_summary(terminalreporter):
    if MEASUREMENTS:
        terminalreporter.section("measured")
        for line in MEASUREMENTS:
            terminalreporter.write_line(line)


class UpstreamCounter:
    """Requests the stand-in received since the counter was made, by (kind, method)."""

    def __init__(self, hub: StandIn):
        self.hub = hub
        self.mark = hub.access_log_mark()
        self.tokens_before = hub.token_stats()["tokens_issued"] if hub.token_auth else 0

    def entries(self) -> list[dict]:
        return self.hub.access_log_entries(since=self.mark)

    def by_kind(self) -> collections.Counter:
        return collections.Counter(f"{e['method']} {e['kind']}" for e in self.entries())

    def tokens_issued(self) -> int:
        return self.hub.token_stats()["tokens_issued"] - self.tokens_before


def expected_cold_fetches(image: dict, platforms=("linux/amd64",), already: set | None = None) -> dict:
    """Upstream GETs a mirror needs for these platforms of an image it does not hold yet.

    `already` collects the blobs fetched so far, so layers shared between images count once.
    """
    already = set() if already is None else already
    children = [image["platforms"][p] for p in (platforms or image["platforms"])]
    is_list = children[0]["digest"] != image["digest"]
    blobs = {digest for child in children for digest in (child["config"], *(l["digest"] for l in child["layers"]))}
    new_blobs = blobs - already
    already.update(blobs)
    return {"GET manifest": 1 + (len(children) if is_list else 0), "GET blob": len(new_blobs)}


def push_tag(hub: StandIn, repository: str, existing: str, new_tag: str):
    """Tag an existing manifest upstream under another name (as `docker push` of a retag would)."""
    token = hub.token(f"repository:{repository}:pull,push", creds=True)
    status, headers, body = hub.request("GET", f"/v2/{repository}/manifests/{existing}", token=token,
                                        headers={"Accept": ACCEPT_ALL_MANIFESTS})
    assert status == 200, status
    status, _, answer = hub.request("PUT", f"/v2/{repository}/manifests/{new_tag}", token=token,
                                    headers={"Content-Type": headers["Content-Type"]}, data=body)
    assert status == 201, (status, answer)
