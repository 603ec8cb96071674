"""Helpers both parts of the benchmark use: pushing to the stand-in, reading a process's memory,
printing a figure."""

from __future__ import annotations

import http.client
import os
import urllib.parse

from standin import StandIn

MIB = 1 << 20


def push_blob(hub: StandIn, token: str, repo: str, path: str, digest: str):
    """One blob from a file into `repo` on the stand-in, streamed (the big layer is 512 MiB)."""
    st, headers, body = hub.request("POST", f"/v2/{repo}/blobs/uploads/", token, data=b"")
    assert st == 202, (st, body)
    location = urllib.parse.urljoin(hub.registry_url + "/", headers["Location"])
    url = urllib.parse.urlsplit(location + ("&" if "?" in location else "?") + f"digest={digest}")
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=300)
    with open(path, "rb") as f:
        conn.request("PUT", f"{url.path}?{url.query}", body=f, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream",
            "Content-Length": str(os.path.getsize(path))})
    response = conn.getresponse()
    assert response.status == 201, (response.status, response.read()[:300])


def status_mib(pid: int, field: str) -> float:
    """A memory line of /proc/PID/status in MiB: `VmHWM` (peak resident) or `VmRSS` (now)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def figure(value: float) -> str:
    """Three significant digits or more: cold times are fractions of a second."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"
