#!/usr/bin/env python3
"""cistern against CNCF Distribution's proxy: same machine, same upstream, same data, one run.

Started here: the local Docker Hub stand-in of tests/e2e (Distribution with token auth and an
ES256 token server), Distribution in proxy mode (Debian's docker-registry, filesystem storage)
and cistern, both with the stand-in's credentials, and nginx serving the big blob with sendfile
as the ceiling. Then the figures of a cache on a finite disk (bench/eviction.py): pull
throughput while evicting, and the index's memory per 100,000 blobs. Run through bench/run.sh,
which installs the tools and builds cistern.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))

from build_images import ACCEPT_ALL, MT_OCI_CONFIG, MT_OCI_LAYER_GZIP, MT_OCI_MANIFEST  # noqa: E402
from mirror import Mirror  # noqa: E402
from standin import StandIn, free_port, http_request, spawn, terminate_pid, wait_until  # noqa: E402

import eviction  # noqa: E402
from shared import MIB, figure, push_blob, status_mib  # noqa: E402
REPO = "bench/app"
# Rounds of the 512 MiB downloads; the median is shown.
BIG_ROUNDS = 3


def random_file(path: str, size: int) -> str:
    """Incompressible bytes (compression would flatter nobody); returns the digest."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 8 * MIB))
            digest.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return "sha256:" + digest.hexdigest()


def push_image(hub: StandIn, workdir: str, cold_samples: int) -> dict:
    """bench/app:latest (a small config and a 512 MiB layer), a 64 MiB blob for the herd and
    `cold_samples` 64 MiB blobs each fetched cold once per mirror."""
    token = hub.token(f"repository:{REPO}:pull,push", creds=True)
    blobs = {}
    cold = [f"cold{i}" for i in range(cold_samples)]
    for name, size in [("big", 512 * MIB), ("herd", 64 * MIB)] + [(c, 64 * MIB) for c in cold]:
        path = os.path.join(workdir, name)
        blobs[name] = (random_file(path, size), size, path)
        push_blob(hub, token, REPO, path, blobs[name][0])
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    config_path = os.path.join(workdir, "config")
    with open(config_path, "wb") as f:
        f.write(config)
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    push_blob(hub, token, REPO, config_path, config_digest)
    big_digest, big_size, _ = blobs["big"]
    manifest = (
        '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"%s","digest":"%s","size":%d},'
        '"layers":[{"mediaType":"%s","digest":"%s","size":%d}]}'
        % (MT_OCI_MANIFEST, MT_OCI_CONFIG, config_digest, len(config), MT_OCI_LAYER_GZIP, big_digest, big_size)
    ).encode()
    st, _, body = hub.request("PUT", f"/v2/{REPO}/manifests/latest", token,
                              headers={"Content-Type": MT_OCI_MANIFEST}, data=manifest)
    assert st == 201, (st, body)
    return {"config": config_digest, "blobs": blobs, "cold": [blobs[c] for c in cold]}


def wrk(url: str, accept: str | None, seconds: int) -> tuple[float, float]:
    """(requests/s, p99 ms) with 16 connections."""
    argv = ["wrk", "-t2", "-c16", f"-d{seconds}s", "--latency", url]
    if accept:
        argv[1:1] = ["-H", f"Accept: {accept}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()
    p99_ms = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        raise RuntimeError(f"{url}: {non_2xx.group(1)} failed responses\n{out}")
    return rps, p99_ms


def download(url: str, headers: dict | None = None) -> int:
    """Bytes of one GET, read and dropped as fast as the client can."""
    argv = ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download}", url]
    for name, value in (headers or {}).items():
        argv[1:1] = ["-H", f"{name}: {value}"]
    return int(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


def parallel_downloads(url: str, streams: int, headers: dict | None = None) -> tuple[float, float]:
    """(MB/s over all streams, seconds) of `streams` simultaneous GETs."""
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        total = sum(pool.map(lambda _: download(url, headers), range(streams)))
    elapsed = time.monotonic() - started
    return total / MIB / elapsed, elapsed


class Nginx:
    """nginx serving one directory with sendfile: the ceiling for a warm blob."""

    def __init__(self, root: str, workdir: str):
        self.port = free_port()
        self.conf = os.path.join(workdir, "nginx.conf")
        with open(self.conf, "w") as f:
            # `user root`: the workers must read the 0700 temporary directory this runs in.
            f.write(f"""user root;
worker_processes 2;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path {workdir}/nginx-body;
  proxy_temp_path {workdir}/nginx-proxy;
  fastcgi_temp_path {workdir}/nginx-fastcgi;
  uwsgi_temp_path {workdir}/nginx-uwsgi;
  scgi_temp_path {workdir}/nginx-scgi;
  server {{ listen 127.0.0.1:{self.port}; root {root}; }}
}}
""")
        self.proc = spawn(["nginx", "-c", self.conf, "-g", "daemon off;"], os.path.join(workdir, "nginx.log"),
                          detach=False)
        wait_until(lambda: http_request(f"http://127.0.0.1:{self.port}/missing")[0] == 404, 10,
                   what="nginx", proc=self.proc)

    def stop(self):
        terminate_pid(self.proc.pid, proc=self.proc)


def measure(mirrors: dict, hub: StandIn, image: dict, seconds: int, ceiling_url: str) -> tuple[dict, dict]:
    """Every figure of every server, one measure at a time for all of them (and the cold blobs
    one blob at a time), so a machine whose pace changes during the run weighs on all alike.
    Returns the figures per server and the references: nginx's MB/s and the direct cold time."""
    results = {name: {} for name in mirrors}
    urls = {name: {
        "manifest": f"{m.url}/v2/{REPO}/manifests/latest",
        "config": f"{m.url}/v2/{REPO}/blobs/{image['config']}",
        "big": f"{m.url}/v2/{REPO}/blobs/{image['blobs']['big'][0]}",
    } for name, m in mirrors.items()}
    for url in urls.values():
        # Warm: each once through the mirror, so the figures below are cache hits.
        assert http_request(url["manifest"], headers={"Accept": ACCEPT_ALL})[0] == 200
        assert http_request(url["config"])[0] == 200
        assert download(url["big"]) == image["blobs"]["big"][1]
    for name in mirrors:
        results[name]["manifest"] = wrk(urls[name]["manifest"], ACCEPT_ALL, seconds)
    for name in mirrors:
        results[name]["config"] = wrk(urls[name]["config"], None, seconds)

    reference = {}
    download(ceiling_url)  # into the page cache, as the mirrors' copies are
    for streams, key in [(1, "big1"), (8, "big8")]:
        # Rounds of nginx and every mirror in turn, and the median of each: this VM's pace
        # changes from one second to the next, and a single round measured that as often as
        # the servers.
        rates = {name: [] for name in ["nginx", *mirrors]}
        for _ in range(BIG_ROUNDS):
            rates["nginx"].append(parallel_downloads(ceiling_url, streams)[0])
            for name in mirrors:
                rates[name].append(parallel_downloads(urls[name]["big"], streams)[0])
        reference[key] = statistics.median(rates["nginx"])
        for name in mirrors:
            results[name][key] = statistics.median(rates[name])
    for name, m in mirrors.items():
        results[name]["rss"] = status_mib(m.proc.pid, "VmHWM")

    upstream_auth = {"Authorization": f"Bearer {hub.token(f'repository:{REPO}:pull', creds=True)}"}
    cold = {name: [] for name in ["direct", *mirrors]}
    order = list(mirrors)
    for digest, size, _ in image["cold"]:
        cold["direct"].append(timed_download(hub.registry_url, digest, size, upstream_auth))
        for name in order:
            settle(mirrors)
            cold[name].append(timed_download(mirrors[name].url, digest, size))
        # Each server goes first in turn, so neither always follows the other's fill.
        order.append(order.pop(0))
    print("cold samples:", {name: [round(t, 3) for t in times] for name, times in cold.items()},
          file=sys.stderr)
    reference["cold"] = statistics.median(cold["direct"])
    for name in mirrors:
        results[name]["cold"] = statistics.median(cold[name])

    cold_digests = [digest for digest, _, _ in image["cold"]]
    for name in mirrors:
        results[name]["cold_gets"] = upstream_blob_gets(hub, name, cold_digests) / len(cold_digests)

    herd_digest = image["blobs"]["herd"][0]
    for name, m in mirrors.items():
        settle(mirrors)
        results[name]["herd_time"] = parallel_downloads(f"{m.url}/v2/{REPO}/blobs/{herd_digest}", 20)[1]
    for name in mirrors:
        results[name]["herd_gets"] = upstream_blob_gets(hub, name, [herd_digest])
    return results, reference


def upstream_blob_gets(hub: StandIn, server: str, digests: list) -> int:
    """GETs of these blobs the stand-in saw from one server, told apart by user agent (a
    server may still be fetching when the next one starts)."""
    ours = server == "cistern"
    return sum(
        1 for e in hub.access_log_entries()
        if e["method"] == "GET" and e["kind"] == "blob" and any(d in e.get("path", "") for d in digests)
        and e["user_agent"].startswith("cistern/") == ours)


def settle(mirrors: dict):
    """Waits until no server is still busy with an earlier fill (Distribution finishes storing a
    blob after its client got the last byte) and the disk has what was written: a cold figure
    must not pay for another server's work."""
    os.sync()

    def cpu_ticks() -> int:
        total = 0
        for m in mirrors.values():
            with open(f"/proc/{m.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        return total

    before = cpu_ticks()
    for _ in range(200):
        time.sleep(0.05)
        now = cpu_ticks()
        if now - before <= 1:  # at most a tick (10 ms) in 50 ms: idle
            return
        before = now


def timed_download(base_url: str, digest: str, size: int, headers: dict | None = None) -> float:
    """Seconds for one whole GET of a blob."""
    started = time.monotonic()
    assert download(f"{base_url}/v2/{REPO}/blobs/{digest}", headers) == size
    return time.monotonic() - started


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores, {cpu}, Linux {platform.release()}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cistern", default=os.path.join(ROOT, "target/release/cistern"))
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--only", choices=["cistern", "distribution", "eviction"],
                        help="measure one server (and skip the eviction figures), or only the eviction "
                             "and index-memory figures")
    parser.add_argument("--cold-samples", type=int, default=5, help="cold 64 MiB blobs, the median is shown")
    parser.add_argument("--evict-seconds", type=int, default=10, help="length of each round-robin pull run")
    parser.add_argument("--evict-clients", type=int, default=4, help="clients pulling at once")
    parser.add_argument("--evict-images", type=int, default=64, help="images in the working set")
    parser.add_argument("--evict-layer-mib", type=int, default=2, help=f"size of each of an image's "
                        f"{eviction.LAYERS_PER_IMAGE} layers")
    parser.add_argument("--evict-budget-mib", type=int, default=32, help="cache.maxsize of the evicting cistern")
    parser.add_argument("--evict-keeprecent", default="250ms",
                        help="its cache.keeprecent: shorter than the time between two pulls of one image")
    parser.add_argument("--index-blobs", type=int, default=100_000, help="blobs in the store whose index is measured")
    parser.add_argument("--index-repositories", type=int, default=1_000, help="repositories linking them")
    args = parser.parse_args()
    for tool in ("wrk", "nginx", "curl", "docker-registry"):
        if not shutil.which(tool):
            sys.exit(f"bench needs {tool}: run bench/run.sh, which installs it")

    serving = args.only != "eviction"
    evicting = args.only in (None, "eviction")
    workdir = tempfile.mkdtemp(prefix="cistern-bench-")
    try:
        with StandIn(expires_in=3600) as hub:
            if serving:
                results, reference = serving_figures(hub, workdir, args)
            if evicting:
                evicted = eviction.eviction_figures(args.cistern, hub, workdir, args)
                index = eviction.index_figures(args.cistern, hub, workdir, args.index_blobs,
                                               args.index_repositories)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nmachine: {machine()}")
    if serving:
        report(results, reference)
    if evicting:
        eviction.report(evicted, index)


def serving_figures(hub: StandIn, workdir: str, args) -> tuple[dict, dict]:
    """The table of serving figures: warm and cold, both servers side by side."""
    print(f"pushing 512 MiB + {args.cold_samples + 1} x 64 MiB of test blobs to the stand-in...",
          file=sys.stderr)
    image = push_image(hub, workdir, args.cold_samples)
    os.sync()  # the pushed GiB written back now, not during the measurements
    credentials = (hub.user, hub.password)
    servers = {
        "distribution": lambda: Mirror.distribution(hub.registry_url, credentials=credentials),
        "cistern": lambda: Mirror.cistern(args.cistern, hub.registry_url, credentials=credentials),
    }
    with contextlib.ExitStack() as running:
        mirrors = {name: running.enter_context(make()) for name, make in servers.items()
                   if not args.only or name == args.only}
        nginx = Nginx(workdir, workdir)
        running.callback(nginx.stop)
        print(f"measuring {', '.join(mirrors)}...", file=sys.stderr)
        return measure(mirrors, hub, image, args.seconds, f"http://127.0.0.1:{nginx.port}/big")


def report(results: dict, reference: dict):
    ceiling, direct = (reference["big1"], reference["big8"]), reference["cold"]
    nan = float("nan")
    missing = {k: (nan, nan) if isinstance(v, tuple) else nan for k, v in next(iter(results.values())).items()}
    d, c = results.get("distribution", missing), results.get("cistern", missing)
    rows = [
        ("manifest by tag, warm, 16 conns (req/s)", d["manifest"][0], c["manifest"][0], "higher", ">= 50x"),
        ("  p99 latency (ms)", d["manifest"][1], c["manifest"][1], "lower", "< 5 ms"),
        ("small blob (config), warm, 16 conns (req/s)", d["config"][0], c["config"][0], "higher", ">= 20x"),
        ("  p99 latency (ms)", d["config"][1], c["config"][1], "lower", ""),
        (f"512 MiB warm, 1 stream, median of {BIG_ROUNDS} (MB/s; nginx {ceiling[0]:.0f})", d["big1"], c["big1"], "higher",
         f">= 0.95 nginx: {c['big1'] / ceiling[0]:.2f}"),
        (f"512 MiB warm, 8 streams, median of {BIG_ROUNDS} (MB/s; nginx {ceiling[1]:.0f})", d["big8"], c["big8"], "higher",
         f">= 0.95 nginx: {c['big8'] / ceiling[1]:.2f}"),
        (f"64 MiB cold, median (s; direct {direct:.3f})", d["cold"], c["cold"], "lower",
         f"<= 1.2x direct: {c['cold'] / direct:.2f}x"),
        ("  upstream GETs per cold blob", d["cold_gets"], c["cold_gets"], "lower", ""),
        ("20 clients on one cold 64 MiB blob (s)", d["herd_time"], c["herd_time"], "lower", ""),
        ("  upstream GETs", d["herd_gets"], c["herd_gets"], "lower", "1"),
        ("peak RSS while serving (MiB)", d["rss"], c["rss"], "lower", "< 64 MiB"),
    ]
    print("| measure | Distribution 2.8 proxy | cistern | cistern vs Distribution | target |")
    print("|---|---:|---:|---:|---|")
    for label, dv, cv, better, target in rows:
        if better == "higher":
            ratio = f"{cv / dv:.1f}x" if dv else "-"
        else:
            ratio = f"{dv / cv:.1f}x better" if cv else "-"
        print(f"| {label} | {figure(dv)} | {figure(cv)} | {ratio} | {target} |")


if __name__ == "__main__":
    main()
