"""A private containerd for end-to-end pulls with `ctr`, the way a Kubernetes node pulls.

The daemon gets its own root, state and socket under one work directory and no CRI plugin, so it
runs beside any system containerd (and beside the one dockerd manages). Pulls go through a
hosts.toml that names the mirror as an `http://` host for docker.io, exactly as a node is set up
with `config_path = "/etc/containerd/certs.d"`; containerd then adds `?ns=docker.io` to every
request it sends the mirror.

    with Containerd() as c:
        c.pull("docker.io/library/alpine:latest", mirror="127.0.0.1:5000")
        c.image_digests()   # {"docker.io/library/alpine:latest": "sha256:..."}
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from dockerd import offline_client_env
from standin import spawn, terminate_pid, wait_until

CONTAINERD_BIN = shutil.which("containerd") or "/usr/bin/containerd"
CTR_BIN = shutil.which("ctr") or "/usr/bin/ctr"
NAMESPACE = "cistern-e2e"

CONFIG_TEMPLATE = """\
version = 2
root = "{root}"
state = "{state}"
# Only image pulling is needed: no Kubernetes CRI, no tracing or metrics listeners.
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.tracing.processor.v1.otlp",
                    "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""
"""

# Every request goes to the mirror; if the mirror fails containerd would fall back to Docker Hub,
# which the blackhole proxy turns into an immediate local error instead of an internet request.
HOSTS_TEMPLATE = """\
server = "https://registry-1.docker.io"

[host."http://{mirror}"]
  capabilities = ["pull", "resolve"]
"""

# certs.d/_default/hosts.toml: every registry without a directory of its own goes to the mirror
# first, then to the registry itself (https://<host>; blackholed here like Docker Hub).
DEFAULT_HOSTS_TEMPLATE = """\
[host."http://{mirror}"]
  capabilities = ["pull", "resolve"]
"""


class Containerd:
    def __init__(self):
        # short path: unix socket paths are limited to 108 bytes
        self.workdir = tempfile.mkdtemp(prefix="cistern-ctrd-", dir="/tmp")
        self.socket = os.path.join(self.workdir, "containerd.sock")
        self.config = os.path.join(self.workdir, "config.toml")
        self.hosts_dir = os.path.join(self.workdir, "certs.d")
        self.log = os.path.join(self.workdir, "containerd.log")
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self) -> "Containerd":
        with open(self.config, "w") as f:
            f.write(CONFIG_TEMPLATE.format(root=os.path.join(self.workdir, "root"),
                                           state=os.path.join(self.workdir, "state"), socket=self.socket))
        self.proc = spawn([CONTAINERD_BIN, "--config", self.config], self.log, detach=False)
        try:
            wait_until(lambda: os.path.exists(self.socket) and self.ctr("version", check=False).returncode == 0,
                       30, interval=0.1, what="containerd socket", proc=self.proc, log=self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        if self.proc is not None:
            terminate_pid(self.proc.pid, proc=self.proc)
            self.proc = None
        subprocess.run(["umount", "-R", "-l", self.workdir], capture_output=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def ctr(self, *args, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        res = subprocess.run([CTR_BIN, "--address", self.socket, "--namespace", NAMESPACE, *args],
                             env=offline_client_env(), capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def use_mirror(self, mirror_host: str):
        """Write certs.d/docker.io/hosts.toml naming the mirror (host:port) as an http:// host."""
        self.write_hosts("docker.io", HOSTS_TEMPLATE.format(mirror=mirror_host))

    def use_mirror_for_every_registry(self, mirror_host: str):
        """Write certs.d/_default/hosts.toml: the mirror for every registry (1.6.20 reads it too)."""
        self.write_hosts("_default", DEFAULT_HOSTS_TEMPLATE.format(mirror=mirror_host))

    def write_hosts(self, registry_host: str, text: str):
        """certs.d/<registry_host>/hosts.toml (a host:port directory is spelled as is)."""
        d = os.path.join(self.hosts_dir, registry_host)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "hosts.toml"), "w") as f:
            f.write(text)

    def pull(self, ref: str, check: bool = True) -> subprocess.CompletedProcess:
        """`ctr images pull` through the hosts dir, unpacked with the native snapshotter."""
        return self.ctr("images", "pull", "--hosts-dir", self.hosts_dir, "--snapshotter", "native", ref,
                        check=check)

    def image_digests(self) -> dict[str, str]:
        """{reference: digest} of the images this containerd holds."""
        lines = self.ctr("images", "ls").stdout.splitlines()[1:]
        return {cols[0]: cols[2] for cols in (line.split() for line in lines) if len(cols) >= 3}
