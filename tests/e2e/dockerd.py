#!/usr/bin/env python3
"""Start/stop a private, throw-away dockerd for end-to-end pulls.

The daemon gets its own data-root, exec-root, socket, pidfile and config file
under one work directory, vfs storage (no overlay/kernel needs), no iptables
and no bridge, so it can run next to (or without) a system dockerd and needs no
network beyond loopback.  dockerd 20.10 spawns its own managed containerd
under EXEC_ROOT/containerd when /run/containerd/containerd.sock is absent.

CLI
    tests/e2e/dockerd.py start [--workdir DIR] [--insecure-registry 127.0.0.1:PORT]...
                               [--registry-mirror http://127.0.0.1:MIRRORPORT]...
                               [--login REGISTRY=USER:PASS]...
    tests/e2e/dockerd.py docker [--workdir DIR] -- pull alpine
    tests/e2e/dockerd.py stop  [--workdir DIR] [--keep]

    (default DIR /tmp/cistern-e2e-dockerd; DIR/dockerd.json describes it;
     run the client yourself with: DOCKER_CONFIG=DIR/client docker -H unix://DIR/docker.sock ...)

Python
    from dockerd import Dockerd
    with Dockerd(registry_mirrors=["http://127.0.0.1:%d" % mirror_port],
                 insecure_registries=["127.0.0.1:%d" % mirror_port]) as d:
        d.login("https://index.docker.io/v1/", "cistern", "cistern-secret")  # for private/*
        d.docker("pull", "alpine")
        d.docker("image", "inspect", "alpine", capture=True)

Credentials: `docker login` for docker.io would contact the real Docker Hub, so
login() writes DIR/client/config.json ("auths") directly; the CLI then sends the
credentials (X-Registry-Auth) with every pull, and dockerd presents them to
whatever token realm the registry or mirror challenges with.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from standin import _alive, proc_cmdline, spawn, terminate_pid, wait_until  # noqa: E402

DEFAULT_WORKDIR = "/tmp/cistern-e2e-dockerd"
STATE_NAME = "dockerd.json"
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
BLACKHOLE_PROXY = "http://127.0.0.1:1"  # nothing listens there: connection refused


def offline_client_env() -> dict:
    """The environment for a registry client (skopeo, ctr) that must never reach the internet.

    Clients fall back to Docker Hub itself when a mirror fails; through the blackhole proxy that
    fallback fails at once and locally, while loopback (the mirror) is never proxied.
    """
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(HTTP_PROXY=BLACKHOLE_PROXY, HTTPS_PROXY=BLACKHOLE_PROXY,
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    return env
DOCKERD_BIN = os.environ.get("CISTERN_E2E_DOCKERD", shutil.which("dockerd") or "/usr/sbin/dockerd")
# Prefer the Debian client matching the 20.10 daemon; any newer CLI negotiates the API down.
DOCKER_BIN = os.environ.get(
    "CISTERN_E2E_DOCKER", "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else (shutil.which("docker") or "docker")
)


def _unix_http_get(sock_path: str, path: str, timeout=2.0) -> int:
    """Tiny HTTP/1.0 GET over a unix socket; returns the status code."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


class Dockerd:
    def __init__(
        self,
        workdir: str | None = None,
        *,
        insecure_registries=(),
        registry_mirrors=(),
        extra_args=(),
        debug: bool = False,
        block_internet: bool = True,
        keep_workdir: bool | None = None,
        detach: bool = False,
        start_timeout: float = 60.0,
    ):
        self._own_workdir = workdir is None
        # keep paths short: unix socket paths are limited to 108 bytes
        self.workdir = os.path.abspath(workdir) if workdir else tempfile.mkdtemp(prefix="cistern-dockerd-", dir="/tmp")
        self.keep_workdir = (not self._own_workdir) if keep_workdir is None else keep_workdir
        self.insecure_registries = list(insecure_registries)
        self.registry_mirrors = list(registry_mirrors)
        self.extra_args = list(extra_args)
        self.debug = debug
        self.block_internet = block_internet
        self.detach = detach
        self.start_timeout = start_timeout
        self.proc = None
        self.pid = None

    # ---- paths ---------------------------------------------------------------
    def path(self, *p):
        return os.path.join(self.workdir, *p)

    @property
    def socket(self):
        return self.path("docker.sock")

    @property
    def host(self):
        return f"unix://{self.socket}"

    @property
    def data_root(self):
        return self.path("data")

    @property
    def exec_root(self):
        return self.path("exec")

    @property
    def pidfile(self):
        return self.path("docker.pid")

    @property
    def log(self):
        return self.path("dockerd.log")

    @property
    def client_config_dir(self):
        return self.path("client")

    @property
    def state_file(self):
        return self.path(STATE_NAME)

    def argv(self) -> list[str]:
        a = [
            DOCKERD_BIN,
            "--config-file", self.path("daemon.json"),  # do not read /etc/docker/daemon.json
            "--data-root", self.data_root,
            "--exec-root", self.exec_root,
            "--host", self.host,
            "--pidfile", self.pidfile,
            "--storage-driver", "vfs",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
            "--bridge", "none",
            "--userland-proxy=false",
            "--max-concurrent-downloads", "3",
        ]
        if self.debug:
            a.append("--debug")
        for r in self.insecure_registries:
            a += ["--insecure-registry", r]
        for m in self.registry_mirrors:
            a += ["--registry-mirror", m]
        return a + self.extra_args

    # ---- lifecycle -------------------------------------------------------------
    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self):
        if os.path.exists(self.pidfile):
            with open(self.pidfile) as f:
                old = f.read().strip()
            if old and _alive(int(old)) and any(self.workdir in p for p in proc_cmdline(int(old))):
                raise RuntimeError(f"a dockerd is already running from {self.workdir} (pid {old})")
        for d in (self.data_root, self.exec_root, self.client_config_dir):
            os.makedirs(d, exist_ok=True)
        with open(self.path("daemon.json"), "w") as f:
            f.write("{}\n")
        cfg = os.path.join(self.client_config_dir, "config.json")
        if not os.path.exists(cfg):
            with open(cfg, "w") as f:
                json.dump({"auths": {}}, f)
        env = dict(os.environ)
        for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy", "DOCKER_HOST"):
            env.pop(k, None)
        env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        if self.block_internet:
            # dockerd falls back to registry-1.docker.io whenever a mirror fails or
            # denies a pull.  Send every non-loopback request to a closed loopback
            # port so that fallback fails fast and locally (Go never proxies
            # loopback addresses, so 127.0.0.1 registries/mirrors are unaffected).
            env.update(HTTP_PROXY=BLACKHOLE_PROXY, HTTPS_PROXY=BLACKHOLE_PROXY,
                       http_proxy=BLACKHOLE_PROXY, https_proxy=BLACKHOLE_PROXY)
        try:
            self.proc = spawn(self.argv(), self.log, env=env, detach=self.detach)
            self.pid = self.proc.pid
            wait_until(lambda: os.path.exists(self.socket) and _unix_http_get(self.socket, "/_ping") == 200,
                       self.start_timeout, interval=0.1, what="dockerd /_ping", proc=self.proc, log=self.log)
            self.write_state()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        stopped = False
        if self.pid:
            # dockerd shuts its managed containerd down itself on SIGTERM
            stopped = terminate_pid(self.pid, marker=self.workdir, proc=self.proc, timeout=30)
        # a managed containerd can outlive a SIGKILLed dockerd: stop it too (only ours)
        cpid_file = os.path.join(self.exec_root, "containerd", "containerd.pid")
        if os.path.exists(cpid_file):
            try:
                with open(cpid_file) as f:
                    cpid = int(f.read().strip() or 0)
            except (OSError, ValueError):
                cpid = 0
            if cpid and _alive(cpid):
                terminate_pid(cpid, marker=self.exec_root, timeout=15)
        self.pid = self.proc = None
        self._unmount_all()
        if not self.keep_workdir and os.path.isdir(self.workdir):
            shutil.rmtree(self.workdir, ignore_errors=True)
        elif os.path.exists(self.state_file):
            os.unlink(self.state_file)
        return stopped

    def _unmount_all(self):
        """Lazy-unmount anything dockerd left mounted below the work dir (normally nothing)."""
        try:
            with open("/proc/self/mountinfo") as f:
                mps = [line.split()[4] for line in f]
        except OSError:
            return
        for mp in sorted((m for m in mps if m.startswith(self.workdir + "/")), key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], capture_output=True)

    def write_state(self):
        d = {
            "workdir": self.workdir, "pid": self.pid, "host": self.host, "socket": self.socket,
            "data_root": self.data_root, "exec_root": self.exec_root, "pidfile": self.pidfile,
            "log": self.log, "client_config_dir": self.client_config_dir, "argv": self.argv(),
            "docker_bin": DOCKER_BIN, "dockerd_bin": DOCKERD_BIN,
            "insecure_registries": self.insecure_registries, "registry_mirrors": self.registry_mirrors,
            "block_internet": self.block_internet,
        }
        with open(self.state_file, "w") as f:
            json.dump(d, f, indent=2)
            f.write("\n")

    @classmethod
    def load(cls, workdir: str = DEFAULT_WORKDIR) -> "Dockerd":
        with open(os.path.join(workdir, STATE_NAME)) as f:
            d = json.load(f)
        obj = cls(d["workdir"], insecure_registries=d["insecure_registries"],
                  registry_mirrors=d["registry_mirrors"], keep_workdir=True, detach=True)
        obj.pid = d["pid"]
        return obj

    # ---- client --------------------------------------------------------------
    def env(self) -> dict:
        e = dict(os.environ)
        e["DOCKER_HOST"] = self.host
        e["DOCKER_CONFIG"] = self.client_config_dir
        return e

    def docker(self, *args, capture: bool = False, check: bool = True, timeout: float = 600):
        """Run the docker CLI against this daemon; returns CompletedProcess."""
        res = subprocess.run([DOCKER_BIN, "-H", self.host, *args], env=self.env(),
                             capture_output=capture, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise subprocess.CalledProcessError(res.returncode, res.args, res.stdout, res.stderr)
        return res

    def login(self, registry: str, user: str, password: str):
        """Store credentials for `registry` in the client config (no network)."""
        cfg_path = os.path.join(self.client_config_dir, "config.json")
        os.makedirs(self.client_config_dir, exist_ok=True)
        cfg = {"auths": {}}
        if os.path.exists(cfg_path):
            with open(cfg_path) as f:
                cfg = json.load(f)
        cfg.setdefault("auths", {})[registry] = {
            "auth": base64.b64encode(f"{user}:{password}".encode()).decode()
        }
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=2)

    def logout(self, registry: str):
        cfg_path = os.path.join(self.client_config_dir, "config.json")
        if os.path.exists(cfg_path):
            with open(cfg_path) as f:
                cfg = json.load(f)
            cfg.get("auths", {}).pop(registry, None)
            with open(cfg_path, "w") as f:
                json.dump(cfg, f, indent=2)

    def images(self) -> list[dict]:
        out = self.docker("images", "--digests", "--format", "{{json .}}", capture=True).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def remove_all_images(self):
        ids = self.docker("images", "-aq", capture=True).stdout.split()
        if ids:
            self.docker("rmi", "-f", *sorted(set(ids)), capture=True, check=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("start")
    p.add_argument("--workdir", default=DEFAULT_WORKDIR)
    p.add_argument("--insecure-registry", action="append", default=[])
    p.add_argument("--registry-mirror", action="append", default=[])
    p.add_argument("--login", action="append", default=[],
                   help="REGISTRY=USER:PASS (REGISTRY 'docker.io' means https://index.docker.io/v1/)")
    p.add_argument("--debug", action="store_true")
    p.add_argument("--allow-internet", action="store_true",
                   help="do not point dockerd's HTTP(S)_PROXY at a closed loopback port")
    p = sub.add_parser("stop")
    p.add_argument("--workdir", default=DEFAULT_WORKDIR)
    p.add_argument("--keep", action="store_true")
    p = sub.add_parser("docker", help="run the docker CLI against it: dockerd.py docker -- ARGS")
    p.add_argument("--workdir", default=DEFAULT_WORKDIR)
    p.add_argument("args", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)

    if args.cmd == "start":
        d = Dockerd(args.workdir, insecure_registries=args.insecure_registry,
                    registry_mirrors=args.registry_mirror, debug=args.debug, keep_workdir=True, detach=True,
                    block_internet=not args.allow_internet)
        d.start()
        for item in args.login:
            reg, _, cred = item.partition("=")
            user, _, pw = cred.partition(":")
            d.login(DOCKER_HUB_AUTH_KEY if reg in ("docker.io", "index.docker.io") else reg, user, pw)
        print(json.dumps({"pid": d.pid, "host": d.host, "workdir": d.workdir, "log": d.log,
                          "docker": f"DOCKER_CONFIG={d.client_config_dir} {DOCKER_BIN} -H {d.host}"}, indent=2))
        return 0
    if args.cmd == "stop":
        if not os.path.exists(os.path.join(args.workdir, STATE_NAME)):
            print(f"no dockerd state in {args.workdir}", file=sys.stderr)
            return 0
        d = Dockerd.load(args.workdir)
        d.keep_workdir = args.keep
        print("stopped" if d.stop() else "was not running")
        return 0
    if args.cmd == "docker":
        d = Dockerd.load(args.workdir)
        rest = args.args[1:] if args.args[:1] == ["--"] else args.args
        return d.docker(*rest, check=False).returncode
    return 2


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
