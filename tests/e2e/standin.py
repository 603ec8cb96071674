#!/usr/bin/env python3
"""Local Docker Hub stand-in: token server + Distribution registry on loopback.

CLI
    tests/e2e/standin.py start [--workdir DIR] [--seed] [--extra-images] ...
    tests/e2e/standin.py status [--workdir DIR]
    tests/e2e/standin.py stop   [--workdir DIR] [--keep]
    tests/e2e/standin.py run    [--seed] ...     # foreground; Ctrl-C stops everything
    tests/e2e/standin.py token --scope repository:library/alpine:pull [--creds]

`start` leaves both servers running in the background and writes
DIR/standin.json and DIR/standin.env (default DIR: /tmp/cistern-e2e-standin)
describing URLs, ports, credentials, PIDs and log files.  `stop` reads that file
and terminates exactly those PIDs (checked against /proc/PID/cmdline).

Python
    import sys; sys.path.insert(0, "tests/e2e")
    from standin import StandIn
    with StandIn() as hub:          # temp workdir, removed on exit
        hub.seed()                  # build + push the test images (build_images.py)
        hub.registry_host           # "127.0.0.1:PORT"
        mark = hub.access_log_mark()
        ...
        hub.count_requests(since=mark, kind="manifest", method="GET")
        hub.token_stats()["tokens_issued"]
"""

from __future__ import annotations

import argparse
import atexit
import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # sibling modules: token_server, build_images, dockerd
    sys.path.insert(0, HERE)
TOKEN_SERVER = os.path.join(HERE, "token_server.py")
REGISTRY_BIN = os.environ.get("CISTERN_E2E_REGISTRY_BIN", "/usr/bin/docker-registry")
DEFAULT_WORKDIR = "/tmp/cistern-e2e-standin"
STATE_NAME = "standin.json"
ENV_NAME = "standin.env"

SERVICE = "registry.docker.io"
ISSUER = "cistern-e2e-token-server"
USER = "cistern"
PASSWORD = "cistern-secret"

# --------------------------------------------------------------------------
# small shared helpers (also used by dockerd.py and build_images.py)
# --------------------------------------------------------------------------

_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **kw):  # pragma: no cover - trivial
        return None


_NO_PROXY_NO_REDIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def http_request(url, method="GET", headers=None, data=None, timeout=10.0, follow_redirects=True):
    """Loopback HTTP request without proxies; returns (status, headers, body) and never raises on HTTP errors."""
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    opener = _NO_PROXY_OPENER if follow_redirects else _NO_PROXY_NO_REDIRECT
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def free_port(host="127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout=30.0, interval=0.05, what="condition", proc=None, log=None):
    """Poll predicate() until truthy; fail early if `proc` (Popen or pid) died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = predicate()
        except Exception:  # noqa: BLE001 - keep polling on transient errors
            result = None
        if result:
            return result
        if proc is not None and not _alive(proc):
            raise RuntimeError(f"process died while waiting for {what}" + _log_tail(log))
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + _log_tail(log))
        time.sleep(interval)  # poll interval, not a wait-for-readiness sleep


def _log_tail(path, lines=30) -> str:
    if not path or not os.path.exists(path):
        return ""
    with open(path, "rb") as f:
        tail = f.read().decode("utf-8", "replace").splitlines()[-lines:]
    return f"\n--- last lines of {path} ---\n" + "\n".join(tail)


def _alive(proc) -> bool:
    if isinstance(proc, subprocess.Popen):
        return proc.poll() is None
    try:
        with open(f"/proc/{int(proc)}/stat") as f:
            return f.read().split(") ", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def proc_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [p.decode("utf-8", "replace") for p in f.read().split(b"\0") if p]
    except OSError:
        return []


def _pdeathsig():
    """preexec_fn: SIGTERM the child when the parent dies (Linux only)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        pass


def spawn(argv, log_path, stdout_path=None, env=None, detach=True):
    """Start a background process in its own session, output to files."""
    out = open(stdout_path or log_path, "ab")
    err = out if not stdout_path else open(log_path, "ab")
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            start_new_session=True,
            preexec_fn=None if detach else _pdeathsig,
            close_fds=True,
        )
    finally:
        out.close()
        if err is not out:
            err.close()


def terminate_pid(pid, marker=None, timeout=15.0, proc=None, sig=signal.SIGTERM) -> bool:
    """SIGTERM pid (only if its cmdline contains `marker`), SIGKILL after timeout.

    Returns True if something was signalled.  Never touches other processes.
    """
    if not pid:
        return False
    pid = int(pid)
    if proc is None:
        cmd = proc_cmdline(pid)
        if not cmd or (marker and not any(marker in part for part in cmd)):
            return False  # gone, or PID reused by something else
    elif proc.poll() is not None:
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return True
        elif not _alive(pid):
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    if proc is not None:
        proc.wait(timeout=10)
    else:
        wait_until(lambda: not _alive(pid), timeout=10, what=f"pid {pid} to die")
    return True


def basic_auth(user, password) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --------------------------------------------------------------------------
# access log of Distribution (gorilla combined log format on the registry's stdout)
# --------------------------------------------------------------------------

_ACCESS_RE = re.compile(
    r'^(?P<remote>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] '
    r'"(?P<method>[A-Z]+) (?P<uri>\S+) (?P<proto>[^"]+)" (?P<status>\d{3}) (?P<size>\d+|-)'
    r'(?: "(?P<referer>[^"]*)" "(?P<ua>[^"]*)")?'
)
_V2_RE = re.compile(
    r"^/v2/(?:(?P<catalog>_catalog)|(?P<name>.+?)/(?:"
    r"(?P<manifests>manifests)/(?P<mref>[^/]+)|"
    r"(?P<uploads>blobs/uploads)(?:/(?P<uuid>[^/]*))?|"
    r"(?P<blobs>blobs)/(?P<digest>[^/]+)|"
    r"(?P<tags>tags/list)))?/?$"
)


def classify_path(path: str) -> dict:
    path = urllib.parse.urlsplit(path).path
    if path in ("/v2", "/v2/"):
        return {"kind": "base", "name": None, "reference": None}
    m = _V2_RE.match(path)
    if not m:
        return {"kind": "other", "name": None, "reference": None}
    if m.group("catalog"):
        return {"kind": "catalog", "name": None, "reference": None}
    if m.group("manifests"):
        return {"kind": "manifest", "name": m.group("name"), "reference": m.group("mref")}
    if m.group("uploads"):
        return {"kind": "upload", "name": m.group("name"), "reference": m.group("uuid")}
    if m.group("blobs"):
        return {"kind": "blob", "name": m.group("name"), "reference": m.group("digest")}
    if m.group("tags"):
        return {"kind": "tags", "name": m.group("name"), "reference": None}
    return {"kind": "other", "name": None, "reference": None}


def parse_access_log(path: str, since: int = 0) -> list[dict]:
    """Entries of Distribution's access log, from line index `since` on."""
    entries = []
    if not os.path.exists(path):
        return entries
    with open(path, "rb") as f:
        lines = f.read().decode("utf-8", "replace").splitlines()
    for idx, line in enumerate(lines):
        if idx < since:
            continue
        m = _ACCESS_RE.match(line)
        if not m:
            continue
        e = {
            "line": idx,
            "remote": m.group("remote"),
            "time": m.group("time"),
            "method": m.group("method"),
            "path": m.group("uri"),
            "status": int(m.group("status")),
            "size": 0 if m.group("size") == "-" else int(m.group("size")),
            "user_agent": m.group("ua") or "",
        }
        e.update(classify_path(e["path"]))
        entries.append(e)
    return entries


def _line_count(path) -> int:
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        return f.read().count(b"\n")


# --------------------------------------------------------------------------
# the stand-in
# --------------------------------------------------------------------------

REGISTRY_CONFIG_TEMPLATE = """\
# generated by tests/e2e/standin.py
version: 0.1
log:
  level: {log_level}
  formatter: text
  fields:
    service: cistern-e2e-standin
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: {secret}
  headers:
    X-Content-Type-Options: [nosniff]
{auth}"""

REGISTRY_AUTH_TEMPLATE = """\
auth:
  token:
    realm: {realm}
    service: {service}
    issuer: {issuer}
    rootcertbundle: {cert}
"""


class StandIn:
    """Token server + Distribution registry.  Use as a context manager or start()/stop()."""

    def __init__(
        self,
        workdir: str | None = None,
        *,
        user: str = USER,
        password: str = PASSWORD,
        service: str = SERVICE,
        issuer: str = ISSUER,
        expires_in: int = 300,
        registry_port: int = 0,
        token_port: int = 0,
        key_mode: str = "both",
        strict_anonymous: bool = False,
        log_level: str = "info",
        keep_workdir: bool | None = None,
        detach: bool = False,
        token_auth: bool = True,
    ):
        """token_auth=False: Distribution alone, anonymous pulls and pushes, no token server
        (a registry without auth, as an internal one often is)."""
        self._own_workdir = workdir is None
        self.workdir = os.path.abspath(workdir) if workdir else tempfile.mkdtemp(prefix="cistern-standin-")
        self.keep_workdir = (not self._own_workdir) if keep_workdir is None else keep_workdir
        self.user, self.password = user, password
        self.service, self.issuer = service, issuer
        self.expires_in = expires_in
        self.requested_registry_port, self.requested_token_port = registry_port, token_port
        self.key_mode, self.strict_anonymous = key_mode, strict_anonymous
        self.log_level = log_level
        self.detach = detach
        self.token_auth = token_auth
        self.token_proc = self.registry_proc = None
        self.token_pid = self.registry_pid = None
        self.token_port = self.registry_port = None
        self.images: dict = {}
        self._atexit_registered = False

    # ---- paths -------------------------------------------------------------
    def path(self, *parts) -> str:
        return os.path.join(self.workdir, *parts)

    @property
    def state_file(self) -> str:
        return self.path(STATE_NAME)

    @property
    def env_file(self) -> str:
        return self.path(ENV_NAME)

    @property
    def cert_file(self) -> str:
        return self.path("token", "cert.pem")

    @property
    def key_file(self) -> str:
        """The token signing key (test-only, generated per stand-in)."""
        return self.path("token", "key.pem")

    @property
    def access_log(self) -> str:
        return self.path("registry", "access.log")

    @property
    def registry_log(self) -> str:
        return self.path("registry", "registry.log")

    @property
    def token_log(self) -> str:
        return self.path("token", "token.log")

    @property
    def registry_config(self) -> str:
        return self.path("registry", "config.yml")

    @property
    def storage_dir(self) -> str:
        return self.path("registry", "storage")

    @property
    def registry_host(self) -> str:
        return f"127.0.0.1:{self.registry_port}"

    @property
    def registry_url(self) -> str:
        return f"http://{self.registry_host}"

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.token_port}"

    @property
    def realm(self) -> str:
        return f"{self.token_url}/token"

    # ---- lifecycle -----------------------------------------------------------
    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self):
        if os.path.exists(self.state_file):
            old = _load_state(self.state_file)
            if any(
                _alive(p) and _owned(p, self.workdir)
                for p in (old.get("registry", {}).get("pid"), old.get("token_server", {}).get("pid"))
                if p
            ):
                raise RuntimeError(f"a stand-in is already running from {self.workdir}; stop it first")
        os.makedirs(self.path("token"), exist_ok=True)
        os.makedirs(self.storage_dir, exist_ok=True)
        if not self.detach and not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        try:
            if self.token_auth:
                self._start_token_server()
            self._start_registry()
            self.write_state()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_token_server(self):
        port_file = self.path("token", "port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        argv = [
            sys.executable, TOKEN_SERVER,
            "--port", str(self.requested_token_port),
            "--port-file", port_file,
            "--cert-out", self.cert_file,
            "--key-file", self.key_file,
            "--service", self.service,
            "--issuer", self.issuer,
            "--user", self.user,
            "--password", self.password,
            "--expires-in", str(self.expires_in),
            "--key-mode", self.key_mode,
        ]
        if self.strict_anonymous:
            argv.append("--strict-anonymous")
        self.token_proc = spawn(argv, self.token_log, detach=self.detach)
        self.token_pid = self.token_proc.pid

        def port_ready():
            with open(port_file) as f:
                return int(f.read().strip())

        self.token_port = wait_until(port_ready, 30, what="token server port file",
                                     proc=self.token_proc, log=self.token_log)
        wait_until(lambda: http_request(f"{self.token_url}/healthz", timeout=2)[0] == 200, 30,
                   what="token server /healthz", proc=self.token_proc, log=self.token_log)

    def _start_registry(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        env["OTEL_TRACES_EXPORTER"] = "none"
        last_err = None
        for _attempt in range(5):
            port = self.requested_registry_port or free_port()
            auth = REGISTRY_AUTH_TEMPLATE.format(realm=self.realm, service=self.service, issuer=self.issuer,
                                                 cert=self.cert_file) if self.token_auth else ""
            with open(self.registry_config, "w") as f:
                f.write(REGISTRY_CONFIG_TEMPLATE.format(
                    log_level=self.log_level,
                    storage=self.storage_dir,
                    port=port,
                    secret=secrets.token_hex(16),
                    auth=auth,
                ))
            self.registry_proc = spawn(
                [REGISTRY_BIN, "serve", self.registry_config],
                self.registry_log, stdout_path=self.access_log, env=env, detach=self.detach,
            )
            self.registry_pid = self.registry_proc.pid
            self.registry_port = port
            try:
                def ready():
                    st, hdrs, _ = http_request(f"http://127.0.0.1:{port}/v2/", timeout=2)
                    if not self.token_auth:
                        return st == 200
                    return st == 401 and "Bearer" in (hdrs.get("WWW-Authenticate") or "")

                wait_until(ready, 30, what="registry /v2/", proc=self.registry_proc, log=self.registry_log)
                return
            except RuntimeError as e:  # died: maybe lost the port race
                last_err = e
                if self.requested_registry_port or "address already in use" not in str(e):
                    raise
        raise RuntimeError(f"registry failed to start: {last_err}")

    def stop(self):
        """Stop everything this object (or the state file it was loaded from) started."""
        stopped = []
        if self.registry_pid:
            if terminate_pid(self.registry_pid, marker=self.workdir, proc=self.registry_proc):
                stopped.append(("registry", self.registry_pid))
            self.registry_pid = self.registry_proc = None
        if self.token_pid:
            if terminate_pid(self.token_pid, marker=self.workdir, proc=self.token_proc):
                stopped.append(("token_server", self.token_pid))
            self.token_pid = self.token_proc = None
        if os.path.exists(self.state_file):
            try:
                os.unlink(self.state_file)
            except OSError:
                pass
        if not self.keep_workdir and os.path.isdir(self.workdir):
            shutil.rmtree(self.workdir, ignore_errors=True)
        return stopped

    # ---- description -----------------------------------------------------
    def describe(self) -> dict:
        return {
            "workdir": self.workdir,
            "state_file": self.state_file,
            "env_file": self.env_file,
            "service": self.service,
            "issuer": self.issuer,
            "user": self.user,
            "password": self.password,
            "expires_in": self.expires_in,
            "registry": {
                "host": self.registry_host,
                "url": self.registry_url,
                "port": self.registry_port,
                "pid": self.registry_pid,
                "binary": REGISTRY_BIN,
                "version": registry_version(),
                "config": self.registry_config,
                "storage": self.storage_dir,
                "access_log": self.access_log,
                "log": self.registry_log,
            },
            "token_server": {
                "url": self.token_url,
                "realm": self.realm,
                "port": self.token_port,
                "pid": self.token_pid,
                "cert": self.cert_file,
                "key": self.key_file,
                "stats_url": f"{self.token_url}/stats",
                "log": self.token_log,
                "key_mode": self.key_mode,
                "strict_anonymous": self.strict_anonymous,
            },
            "images": self.images,
        }

    def write_state(self):
        d = self.describe()
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(d, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, self.state_file)
        env = {
            "STANDIN_WORKDIR": self.workdir,
            "STANDIN_STATE": self.state_file,
            "STANDIN_REGISTRY_HOST": self.registry_host,
            "STANDIN_REGISTRY_URL": self.registry_url,
            "STANDIN_REGISTRY_PORT": str(self.registry_port),
            "STANDIN_REGISTRY_PID": str(self.registry_pid),
            "STANDIN_ACCESS_LOG": self.access_log,
            "STANDIN_REGISTRY_LOG": self.registry_log,
            "STANDIN_TOKEN_URL": self.token_url,
            "STANDIN_TOKEN_REALM": self.realm,
            "STANDIN_TOKEN_PORT": str(self.token_port),
            "STANDIN_TOKEN_PID": str(self.token_pid),
            "STANDIN_TOKEN_CERT": self.cert_file,
            "STANDIN_SERVICE": self.service,
            "STANDIN_ISSUER": self.issuer,
            "STANDIN_USER": self.user,
            "STANDIN_PASSWORD": self.password,
        }
        with open(self.env_file + ".tmp", "w") as f:
            for k, v in env.items():
                f.write(f"{k}={_shquote(v)}\n")
        os.replace(self.env_file + ".tmp", self.env_file)

    @classmethod
    def load(cls, state_path_or_workdir: str = DEFAULT_WORKDIR) -> "StandIn":
        """Attach to a stand-in started elsewhere (e.g. by `standin.py start`)."""
        p = state_path_or_workdir
        if os.path.isdir(p):
            p = os.path.join(p, STATE_NAME)
        d = _load_state(p)
        s = cls(d["workdir"], user=d["user"], password=d["password"], service=d["service"],
                issuer=d["issuer"], expires_in=d["expires_in"], keep_workdir=True, detach=True,
                key_mode=d["token_server"].get("key_mode", "both"),
                strict_anonymous=d["token_server"].get("strict_anonymous", False))
        s.registry_port, s.registry_pid = d["registry"]["port"], d["registry"]["pid"]
        s.token_port, s.token_pid = d["token_server"]["port"], d["token_server"]["pid"]
        s.images = d.get("images", {})
        return s

    # ---- client helpers ------------------------------------------------------
    def token(self, scope: str | list[str], creds: tuple[str, str] | bool | None = None) -> str:
        """Fetch a token like a client would. creds=True uses the configured user."""
        if creds is True:
            creds = (self.user, self.password)
        scopes = [scope] if isinstance(scope, str) else list(scope)
        q = urllib.parse.urlencode([("service", self.service)] + [("scope", s) for s in scopes])
        headers = {"Authorization": basic_auth(*creds)} if creds else {}
        st, _, body = http_request(f"{self.realm}?{q}", headers=headers)
        if st != 200:
            raise PermissionError(f"token server answered {st}: {body[:200]!r}")
        return json.loads(body)["token"]

    def request(self, method: str, path: str, token: str | None = None, headers=None, data=None):
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        return http_request(self.registry_url + path, method=method, headers=h, data=data,
                            follow_redirects=False)

    def forge_token(self, access=None, key_mode: str | None = None, **claims) -> str:
        """Sign arbitrary claims with the stand-in's real key (for expired /
        wrong-audience / wrong-issuer / over-privileged token tests).

        hub.forge_token([{"type": "repository", "name": "library/alpine", "actions": ["pull"]}],
                        exp=int(time.time()) - 3600)
        """
        import token_server

        now = int(time.time())
        body = {"iss": self.issuer, "sub": "", "aud": self.service, "exp": now + self.expires_in,
                "nbf": now, "iat": now, "jti": secrets.token_hex(16), "access": access or []}
        body.update(claims)
        return token_server.Signer(self.key_file, self.cert_file).jwt(body, key_mode or self.key_mode)

    def token_stats(self, reset: bool = False) -> dict:
        st, _, body = http_request(f"{self.token_url}/stats" + ("?reset=1" if reset else ""))
        if st != 200:
            raise RuntimeError(f"/stats answered {st}")
        return json.loads(body)

    def reset_token_stats(self):
        http_request(f"{self.token_url}/stats/reset", method="POST", data=b"")

    def access_log_mark(self) -> int:
        return _line_count(self.access_log)

    def access_log_entries(self, since: int = 0) -> list[dict]:
        return parse_access_log(self.access_log, since)

    def count_requests(self, since: int = 0, kind: str | None = None, method: str | None = None,
                       name: str | None = None, status: int | None = None) -> int:
        n = 0
        for e in self.access_log_entries(since):
            if kind and e["kind"] != kind:
                continue
            if method and e["method"] != method:
                continue
            if name and e["name"] != name:
                continue
            if status and e["status"] != status:
                continue
            n += 1
        return n

    def seed(self, extra: bool = False, **kw) -> dict:
        """Build and push the test images (see build_images.py)."""
        import build_images  # local module

        self.images.update(build_images.seed(self, extra=extra, **kw))
        if os.path.exists(self.state_file):
            self.write_state()
        return self.images


def _shquote(v: str) -> str:
    import shlex

    return shlex.quote(str(v))


def _load_state(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _owned(pid, marker) -> bool:
    return any(marker in part for part in proc_cmdline(int(pid)))


_REGISTRY_VERSION = None


def registry_version() -> str:
    global _REGISTRY_VERSION
    if _REGISTRY_VERSION is None:
        try:
            out = subprocess.run([REGISTRY_BIN, "--version"], capture_output=True, text=True, timeout=20)
            _REGISTRY_VERSION = out.stdout.strip().split()[-1]
        except Exception:  # noqa: BLE001
            _REGISTRY_VERSION = "unknown"
    return _REGISTRY_VERSION


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def _add_common(p):
    p.add_argument("--workdir", default=DEFAULT_WORKDIR,
                   help=f"state/log/storage directory (default {DEFAULT_WORKDIR})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("start", "run"):
        p = sub.add_parser(name, help="start in background" if name == "start" else "run in foreground")
        _add_common(p)
        p.add_argument("--user", default=USER)
        p.add_argument("--password", default=PASSWORD)
        p.add_argument("--expires-in", type=int, default=300)
        p.add_argument("--registry-port", type=int, default=0)
        p.add_argument("--token-port", type=int, default=0)
        p.add_argument("--issuer", default=ISSUER)
        p.add_argument("--key-mode", choices=("x5c", "kid", "both"), default="both")
        p.add_argument("--strict-anonymous", action="store_true")
        p.add_argument("--log-level", default="info")
        p.add_argument("--seed", action="store_true", help="build + push the test images")
        p.add_argument("--extra-images", action="store_true",
                       help="with --seed: also the 40-layer and the big-layer images")
    p = sub.add_parser("stop", help="stop a stand-in started with `start`")
    _add_common(p)
    p.add_argument("--keep", action="store_true", help="keep the workdir (logs, storage)")
    p = sub.add_parser("status", help="print the description and liveness")
    _add_common(p)
    p = sub.add_parser("token", help="fetch a token from a running stand-in")
    _add_common(p)
    p.add_argument("--scope", action="append", required=True)
    p.add_argument("--creds", action="store_true", help="use the configured user")
    args = ap.parse_args(argv)

    if args.cmd in ("start", "run"):
        hub = StandIn(
            args.workdir, user=args.user, password=args.password, expires_in=args.expires_in,
            registry_port=args.registry_port, token_port=args.token_port, issuer=args.issuer,
            key_mode=args.key_mode, strict_anonymous=args.strict_anonymous, log_level=args.log_level,
            keep_workdir=(args.cmd == "start"), detach=(args.cmd == "start"),
        )
        if args.cmd == "start":
            hub.start()
            try:
                if args.seed:
                    hub.seed(extra=args.extra_images)
            except BaseException:
                hub.stop()
                raise
            print(json.dumps(hub.describe(), indent=2, sort_keys=True))
            print(f"# state: {hub.state_file}\n# env:   {hub.env_file}", file=sys.stderr)
            return 0
        # run: foreground until SIGINT/SIGTERM
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with hub:
            if args.seed:
                hub.seed(extra=args.extra_images)
            print(json.dumps(hub.describe(), indent=2, sort_keys=True), flush=True)
            try:
                while _alive(hub.registry_proc) and _alive(hub.token_proc):
                    time.sleep(0.5)
                print("a stand-in process exited; stopping", file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                return 0
    state = os.path.join(args.workdir, STATE_NAME)
    if args.cmd == "stop":
        if not os.path.exists(state):
            print(f"no stand-in state at {state}", file=sys.stderr)
            return 0
        hub = StandIn.load(state)
        hub.keep_workdir = args.keep
        for what, pid in hub.stop():
            print(f"stopped {what} pid {pid}")
        return 0
    if args.cmd == "status":
        if not os.path.exists(state):
            print(f"no stand-in state at {state}", file=sys.stderr)
            return 1
        d = _load_state(state)
        d["registry"]["alive"] = bool(d["registry"]["pid"]) and _alive(d["registry"]["pid"])
        d["token_server"]["alive"] = bool(d["token_server"]["pid"]) and _alive(d["token_server"]["pid"])
        print(json.dumps(d, indent=2, sort_keys=True))
        return 0 if d["registry"]["alive"] and d["token_server"]["alive"] else 1
    if args.cmd == "token":
        hub = StandIn.load(state)
        print(hub.token(args.scope, creds=True if args.creds else None))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
