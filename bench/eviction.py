"""The figures of a cache on a finite disk (issue 15): pull throughput while the evictor runs
all the time, and what the in-memory index of the store costs per 100,000 blobs.

Run from bench.py (`--only eviction` runs these alone):

- **Eviction.** Images are pushed to the stand-in, several times more bytes than a small
  `cache.maxsize`, and a few clients pull them round-robin (manifest by tag, config, layers,
  every digest checked) through cistern with that budget, cistern without one and
  Distribution's proxy (which never evicts). `cache.keeprecent` is set to 1 s: with the
  default (5 min) everything pulled in the run would be protected and nothing could go.
- **Index memory.** A filesystem store with N blobs (and a link to each in some
  repositories, as cistern lays them out: src/storage/layout.rs) is written, cistern started
  on it, and its resident memory read once its log says the index is built, against cistern
  on an empty store.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time

from build_images import ACCEPT_ALL, MT_OCI_CONFIG, MT_OCI_LAYER_GZIP, MT_OCI_MANIFEST
from mirror import Mirror
from standin import StandIn, wait_until

from shared import MIB, figure, push_blob, status_mib

LAYERS_PER_IMAGE = 2
# How often the cache's size is read during the run, for its peak.
SAMPLE_EVERY = 0.2
# cistern's evictor looks every 5 s (src/cache/eviction/mod.rs); after the run it gets three
# looks to bring the cache within its budget.
SWEEP_DEADLINE = 15.0
INDEX_LOG_LINE = "storage index built"


def push_images(hub: StandIn, workdir: str, count: int, layer_mib: int) -> list[dict]:
    """`count` images `evict/app-NN:latest` of a config and LAYERS_PER_IMAGE incompressible
    layers each; returns what a client expects of each (digests and sizes)."""
    images = []
    for i in range(count):
        repo = f"evict/app-{i:02d}"
        token = hub.token(f"repository:{repo}:pull,push", creds=True)
        layers = []
        for n in range(LAYERS_PER_IMAGE):
            path = os.path.join(workdir, f"{i}-{n}")
            data = os.urandom(layer_mib * MIB)
            with open(path, "wb") as f:
                f.write(data)
            layers.append(("sha256:" + hashlib.sha256(data).hexdigest(), len(data)))
            push_blob(hub, token, repo, path, layers[-1][0])
            os.remove(path)
        config = json.dumps({"architecture": "amd64", "os": "linux", "bench": i,
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        config_path = os.path.join(workdir, f"{i}-config")
        with open(config_path, "wb") as f:
            f.write(config)
        config_blob = ("sha256:" + hashlib.sha256(config).hexdigest(), len(config))
        push_blob(hub, token, repo, config_path, config_blob[0])
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
            "config": {"mediaType": MT_OCI_CONFIG, "digest": config_blob[0], "size": config_blob[1]},
            "layers": [{"mediaType": MT_OCI_LAYER_GZIP, "digest": d, "size": s} for d, s in layers],
        }).encode()
        st, _, body = hub.request("PUT", f"/v2/{repo}/manifests/latest", token,
                                  headers={"Content-Type": MT_OCI_MANIFEST}, data=manifest)
        assert st == 201, (st, body)
        images.append({"repo": repo, "manifest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
                       "blobs": [config_blob, *layers]})
    return images


def fetch_verified(conn: http.client.HTTPConnection, path: str, digest: str, headers: dict) -> int:
    """GETs `path` on a kept-alive connection and checks the bytes against `digest`; returns
    their number. A wrong status or digest stops the run: a cache that serves the wrong bytes
    has no throughput worth printing."""
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    hasher, size = hashlib.sha256(), 0
    while chunk := response.read(MIB):
        hasher.update(chunk)
        size += len(chunk)
    if response.status != 200 or "sha256:" + hasher.hexdigest() != digest:
        raise RuntimeError(f"GET {path}: status {response.status}, {size} bytes, "
                           f"sha256:{hasher.hexdigest()} where {digest} was expected")
    return size


def pull(conn: http.client.HTTPConnection, image: dict) -> int:
    """What a client does: the manifest by tag, then its config and layers; bytes received."""
    repo = image["repo"]
    size = fetch_verified(conn, f"/v2/{repo}/manifests/latest", image["manifest"], {"Accept": ACCEPT_ALL})
    for digest, _ in image["blobs"]:
        size += fetch_verified(conn, f"/v2/{repo}/blobs/{digest}", digest, {})
    return size


def pull_round_robin(mirror: Mirror, images: list[dict], clients: int, seconds: float | None) -> tuple[int, int, float]:
    """`clients` clients, each pulling the images in turn from its own starting point, for
    `seconds` (each finishes the pull it is in), or once through its share when None.
    Returns (images pulled, bytes, seconds)."""
    started = time.monotonic()

    def client(i: int) -> tuple[int, int]:
        conn = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=60)
        first, pulls, size = i * len(images) // clients, 0, 0
        share = (i + 1) * len(images) // clients - first

        def more() -> bool:
            return time.monotonic() - started < seconds if seconds else pulls < share
        while more():
            size += pull(conn, images[(first + pulls) % len(images)])
            pulls += 1
        conn.close()
        return pulls, size

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(client, range(clients)))
    return sum(p for p, _ in done), sum(s for _, s in done), time.monotonic() - started


def cache_bytes(mirror: Mirror) -> float:
    """cistern_cache_bytes: the content the evictor found at its last check."""
    return mirror.metric_sum("cistern_cache_bytes")


def stored_bytes(mirror: Mirror) -> int:
    """The content on disk (blobs, configs, manifests), counted without asking cistern."""
    total = 0
    for directory, _, files in os.walk(os.path.join(mirror.storage, "blobs")):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # evicted while we walk
                total += os.path.getsize(os.path.join(directory, name))
    return total


class PeakSampler:
    """Every SAMPLE_EVERY seconds while the run lasts, the content on disk and
    cistern_cache_bytes (the size the evictor found at its last check): their largest values.
    The budget is checked every 5 s, so the cache may grow past it in between."""

    def __init__(self, mirror: Mirror):
        self.mirror, self.stop = mirror, threading.Event()
        self.peak_stored = self.peak_gauge = 0.0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.wait(SAMPLE_EVERY):
            self.peak_stored = max(self.peak_stored, stored_bytes(self.mirror))
            self.peak_gauge = max(self.peak_gauge, cache_bytes(self.mirror))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        return False


EVICTION_COUNTERS = ["cistern_evicted_images_total", "cistern_evicted_bytes_total"]


def measure_pulls(name: str, mirror: Mirror, hub: StandIn, images: list[dict], clients: int,
                  seconds: float, budget: int | None) -> dict:
    """One warm round, then the timed round-robin; for cistern also what its evictor did."""
    pull_round_robin(mirror, images, clients, None)
    is_cistern = name != "distribution"
    before = {c: mirror.metric_sum(c) for c in EVICTION_COUNTERS} if is_cistern else {}
    mark = hub.access_log_mark()
    with PeakSampler(mirror) if is_cistern else contextlib.nullcontext() as sampler:
        pulls, size, elapsed = pull_round_robin(mirror, images, clients, seconds)
    result = {"images_per_s": pulls / elapsed, "mib_per_s": size / MIB / elapsed,
              "upstream_mib": sum(e["size"] for e in hub.access_log_entries(mark)
                                  if e["method"] == "GET" and e["kind"] == "blob") / MIB}
    if not is_cistern:
        return result
    after = {c: mirror.metric_sum(c) for c in EVICTION_COUNTERS}
    result["evicted_images"] = after[EVICTION_COUNTERS[0]] - before[EVICTION_COUNTERS[0]]
    result["evicted_mib"] = (after[EVICTION_COUNTERS[1]] - before[EVICTION_COUNTERS[1]]) / MIB
    result["peak_stored_mib"] = sampler.peak_stored / MIB
    result["peak_gauge_mib"] = sampler.peak_gauge / MIB
    if budget is not None:
        assert mirror.metric_sum("cistern_cache_budget_bytes") == budget
        ended = time.monotonic()
        try:
            wait_until(lambda: stored_bytes(mirror) <= budget, SWEEP_DEADLINE, interval=SAMPLE_EVERY,
                       what="the content on disk within the budget", proc=mirror.proc)
            result["within_after_s"] = time.monotonic() - ended
        except TimeoutError:
            result["within_after_s"] = None
        # The gauge of the check that brought it there (or of the next one).
        wait_until(lambda: cache_bytes(mirror) <= budget, SWEEP_DEADLINE, interval=SAMPLE_EVERY,
                   what="cistern_cache_bytes within the budget", proc=mirror.proc)
        result["after_mib"] = cache_bytes(mirror) / MIB
    result["stored_mib"] = stored_bytes(mirror) / MIB
    return result


def eviction_figures(cistern: str, hub: StandIn, workdir: str, args) -> dict:
    budget = args.evict_budget_mib * MIB
    print(f"pushing {args.evict_images} images of {LAYERS_PER_IMAGE} x {args.evict_layer_mib} MiB "
          "to the stand-in...", file=sys.stderr)
    images = push_images(hub, workdir, args.evict_images, args.evict_layer_mib)
    credentials = (hub.user, hub.password)
    cache = {"maxsize": f"{args.evict_budget_mib}MiB", "keeprecent": args.evict_keeprecent}
    servers = {
        "distribution": lambda: Mirror.distribution(hub.registry_url, credentials=credentials),
        "cistern": lambda: Mirror.cistern(cistern, hub.registry_url, credentials=credentials),
        "cistern_budget": lambda: Mirror.cistern(cistern, hub.registry_url, credentials=credentials,
                                                 extra_config={"cache": cache}),
    }
    results = {}
    for name, make in servers.items():
        print(f"pulling round-robin through {name} for {args.evict_seconds} s...", file=sys.stderr)
        with make() as mirror:
            results[name] = measure_pulls(name, mirror, hub, images, args.evict_clients,
                                          args.evict_seconds, budget if name == "cistern_budget" else None)
    working_set = sum(s for image in images for _, s in image["blobs"])
    results["setup"] = {"images": len(images), "working_set_mib": working_set / MIB, "budget": budget,
                        "clients": args.evict_clients, "seconds": args.evict_seconds,
                        "keeprecent": args.evict_keeprecent}
    return results


def write_store(root: str, blobs: int, repositories: int):
    """`blobs` small content objects as cistern stores them, each linked from one of
    `repositories` repositories (`{"size":N}`, as cistern writes a link)."""
    blob_dirs = {f"{p:02x}": os.path.join(root, "blobs", "sha256", f"{p:02x}") for p in range(256)}
    for d in blob_dirs.values():
        os.makedirs(d, exist_ok=True)
    link_dirs = [os.path.join(root, "repositories", "bench", f"repo-{r:04d}", "_blobs", "sha256")
                 for r in range(repositories)]
    for d in link_dirs:
        os.makedirs(d, exist_ok=True)
    for i in range(blobs):
        data = b"cistern bench blob %d\n" % i
        hex_digest = hashlib.sha256(data).hexdigest()
        for path, content in [(f"{blob_dirs[hex_digest[:2]]}/{hex_digest}", data),
                              (f"{link_dirs[i % repositories]}/{hex_digest}", b'{"size":%d}' % len(data))]:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, content)
            os.close(fd)


def index_built(mirror: Mirror, deadline: float) -> dict:
    """Waits for the index's log line; returns its figures and cistern's resident memory then."""
    line = wait_until(lambda: next((text for text in mirror.log_text().splitlines() if INDEX_LOG_LINE in text), None),
                      deadline, what=INDEX_LOG_LINE, proc=mirror.proc, log=mirror.log)
    rss = status_mib(mirror.proc.pid, "VmRSS")

    def field(name: str) -> int:
        return int(re.search(rf'{name}"?[=:]\s*(\d+)', line).group(1))
    return {"rss_mib": rss, "content_objects": field("content_objects"), "build_s": field("elapsed_ms") / 1000}


def index_figures(cistern: str, hub: StandIn, workdir: str, blobs: int, repositories: int) -> dict:
    """cistern's resident memory once its index is built, on an empty store and on one of `blobs`."""
    # In memory when there is a tmpfs: writing 200,000 files took minutes on this VM's disk while
    # other builds ran. The index's memory does not depend on where the store is; its build
    # time lists the page cache either way, as a just-written store on disk would.
    root = tempfile.mkdtemp(prefix="cistern-bench-index-", dir="/dev/shm" if os.path.isdir("/dev/shm") else workdir)
    print(f"writing a store of {blobs:,} blobs linked from {repositories:,} repositories in {root}...",
          file=sys.stderr)
    figures = {}
    try:
        started = time.monotonic()
        write_store(root, blobs, repositories)
        written_s = time.monotonic() - started
        for name, driver in [("empty", None), ("full", f"  filesystem:\n    rootdirectory: {root}\n")]:
            with Mirror.cistern(cistern, hub.registry_url, storage_driver=driver) as mirror:
                figures[name] = index_built(mirror, 300)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert figures["full"]["content_objects"] == blobs, figures
    figures["setup"] = {"blobs": blobs, "repositories": repositories, "written_s": written_s}
    return figures


def report(eviction: dict, index: dict):
    setup = eviction["setup"]
    d, c, b = eviction["distribution"], eviction["cistern"], eviction["cistern_budget"]
    budget_mib = setup["budget"] / MIB
    print(f"\neviction: {setup['images']} images, {setup['working_set_mib']:.0f} MiB "
          f"({setup['working_set_mib'] / budget_mib:.1f}x the budget), pulled round-robin by {setup['clients']} "
          f"clients for {setup['seconds']} s after one warm round; cache.keeprecent {setup['keeprecent']} (the "
          "default 5m would keep everything this run pulls)")
    print(f"| measure | Distribution 2.8 proxy | cistern, no budget | cistern, maxsize {budget_mib:.0f} MiB "
          "| budget vs no budget | budget vs Distribution |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, key in [("pulls (images/s)", "images_per_s"), ("pulled (MiB/s)", "mib_per_s")]:
        print(f"| {label} | {figure(d[key])} | {figure(c[key])} | {figure(b[key])} "
              f"| {b[key] / c[key]:.2f}x | {b[key] / d[key]:.2f}x |")
    print(f"| blobs fetched from upstream during the run (MiB) | {figure(d['upstream_mib'])} "
          f"| {figure(c['upstream_mib'])} | {figure(b['upstream_mib'])} | | |")
    for label, key in [("images evicted during the run", "evicted_images"),
                       ("MiB evicted during the run", "evicted_mib"),
                       (f"most content on disk, read every {SAMPLE_EVERY} s (MiB)", "peak_stored_mib"),
                       ("largest cistern_cache_bytes an evictor check found (MiB)", "peak_gauge_mib")]:
        # Without a budget the evictor never checks, so the gauge stays unset.
        unbudgeted = "-" if key == "peak_gauge_mib" else figure(c[key])
        print(f"| {label} | - | {unbudgeted} | {figure(b[key])} | | |")
    within = b["within_after_s"]
    verdict = f"within the budget {within:.1f} s after the run" if within is not None else \
        f"NOT within the budget {SWEEP_DEADLINE:.0f} s after the run"
    print(f"| content on disk after the run (MiB) | - | {figure(c['stored_mib'])} "
          f"| {figure(b['stored_mib'])} ({verdict}) | | |")
    print(f"| cistern_cache_bytes after a sweep (MiB) | - | - | {figure(b['after_mib'])} | | |")

    setup, empty, full = index["setup"], index["empty"], index["full"]
    per_100k = (full["rss_mib"] - empty["rss_mib"]) * 100_000 / setup["blobs"]
    print(f"\nindex memory: {setup['blobs']:,} blobs and a link to each in {setup['repositories']:,} "
          f"repositories ({2 * setup['blobs']:,} files, written in {setup['written_s']:.1f} s)")
    print("| measure | empty store | this store | per 100,000 blobs (each with a link) |")
    print("|---|---:|---:|---:|")
    print(f"| VmRSS once the index is built (MiB) | {figure(empty['rss_mib'])} | {figure(full['rss_mib'])} "
          f"| {figure(per_100k)} |")
    print(f"| index build, from its log line (s) | {figure(empty['build_s'])} | {figure(full['build_s'])} "
          f"| {figure(full['build_s'] * 100_000 / setup['blobs'])} |")
