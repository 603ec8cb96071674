"""A pull-through mirror process for the end-to-end tests: cistern, or CNCF Distribution in proxy mode.

Both read the same Distribution-format config.yml (the kind a registry:2 proxy user already has),
rendered by `proxy_config()`. That is the compatibility promise: one file, either server.

    from mirror import Mirror
    with Mirror.cistern(binary, upstream_url, credentials=("cistern", "cistern-secret")) as m:
        m.url            # http://127.0.0.1:PORT
        m.host           # 127.0.0.1:PORT
        m.log_text()     # everything the mirror wrote
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

from standin import REGISTRY_BIN, free_port, http_request, spawn, terminate_pid, wait_until

# Distribution's own example configuration (cmd/registry/config-example.yml) with a proxy
# section added, as a registry:2 mirror user would write it. Keys cistern does not implement
# (log.fields, storage.cache) are deliberately kept: they must only cause a warning.
PROXY_CONFIG_TEMPLATE = """\
version: 0.1
log:
  level: info
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
{storage}http:
  addr: {addr}
  headers:
    X-Content-Type-Options: [nosniff]
  debug:
    addr: {debug_addr}
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
proxy:
  remoteurl: {remote_url}
{credentials}"""


def proxy_config(storage: str, addr: str, debug_addr: str, remote_url: str,
                 credentials: tuple[str, str] | None, storage_driver: str | None = None,
                 extra: dict | None = None) -> str:
    """The config file; `storage_driver` (indented YAML under `storage:`) replaces the directory.

    `extra` adds top-level keys, each value written as JSON (which YAML reads as flow style), e.g.
    {"registries": {"ghcr.io": {"remoteurl": "http://127.0.0.1:5001"}}}.
    """
    creds = ""
    if credentials:
        user, password = credentials
        creds = f"  username: {user}\n  password: {password}\n"
    driver = storage_driver or f"  filesystem:\n    rootdirectory: {storage}\n"
    text = PROXY_CONFIG_TEMPLATE.format(storage=driver, addr=addr, debug_addr=debug_addr,
                                        remote_url=remote_url, credentials=creds)
    return text + "".join(f"{key}: {json.dumps(value)}\n" for key, value in (extra or {}).items())


class Mirror:
    """One mirror process on a free loopback port with its own storage; a context manager."""

    def __init__(self, name: str, argv_for_config, upstream_url: str, credentials=None, env=None,
                 storage_driver: str | None = None, extra_config: dict | None = None):
        self.name = name
        self.workdir = tempfile.mkdtemp(prefix=f"cistern-e2e-{name}-", dir="/tmp")
        self.storage = os.path.join(self.workdir, "storage")
        self.config_path = os.path.join(self.workdir, "config.yml")
        self.log = os.path.join(self.workdir, f"{name}.log")
        self._argv_for_config = argv_for_config
        self.upstream_url = upstream_url
        self.credentials = credentials
        self.env = env
        self.storage_driver = storage_driver
        self.extra_config = extra_config
        self.proc = None
        self.port = None
        self.debug_port = None

    @classmethod
    def cistern(cls, binary: str, upstream_url: str, credentials=None, storage_driver=None,
                extra_config: dict | None = None, extra_env: dict | None = None) -> "Mirror":
        """`extra_config`: cistern's extensions as top-level keys (see proxy_config), e.g. registries;
        `extra_env`: variables for the process, e.g. REGISTRY_ overrides (none are inherited)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        env.setdefault("RUST_BACKTRACE", "1")
        env.update(extra_env or {})
        return cls("cistern", lambda config: [binary, "--config", config], upstream_url, credentials, env,
                   storage_driver, extra_config)

    @classmethod
    def distribution(cls, upstream_url: str, credentials=None) -> "Mirror":
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        env["OTEL_TRACES_EXPORTER"] = "none"
        return cls("distribution", lambda config: [REGISTRY_BIN, "serve", config], upstream_url, credentials, env)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def debug_url(self) -> str:
        """The debug listener: metrics and health."""
        return f"http://127.0.0.1:{self.debug_port}"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self) -> "Mirror":
        os.makedirs(self.storage, exist_ok=True)
        last_error = None
        for _attempt in range(5):  # another process may take the free port before we bind it
            self.port = free_port()
            self.debug_port = free_port()
            with open(self.config_path, "w") as f:
                f.write(proxy_config(self.storage, self.host, f"127.0.0.1:{self.debug_port}",
                                     self.upstream_url, self.credentials, self.storage_driver,
                                     self.extra_config))
            self.proc = spawn(self._argv_for_config(self.config_path), self.log, env=self.env, detach=False)
            try:
                wait_until(lambda: http_request(f"{self.url}/v2/", timeout=2)[0] == 200, 30,
                           what=f"{self.name} /v2/ on {self.url}", proc=self.proc, log=self.log)
                return self
            except RuntimeError as e:
                last_error = e
                if "address already in use" not in self.log_text().lower():
                    self.stop()
                    raise
                terminate_pid(self.proc.pid, proc=self.proc)
        self.stop()
        raise RuntimeError(f"{self.name} did not start: {last_error}")

    def stop(self):
        if self.proc is not None:
            terminate_pid(self.proc.pid, proc=self.proc)
            self.proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_text(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def metrics(self) -> list[tuple[str, dict, float]]:
        """Every sample of the Prometheus text on the debug listener: (name, labels, value)."""
        status, _, body = http_request(f"{self.debug_url}/metrics")
        assert status == 200, status
        return parse_prometheus(body.decode())

    def metric_sum(self, name: str, **labels) -> float:
        """The sum of the samples of `name` whose labels include `labels`."""
        return sum(value for sample, have, value in self.metrics()
                   if sample == name and all(have.get(k) == v for k, v in labels.items()))

    def get(self, path: str, headers=None, method: str = "GET"):
        """(status, headers, body) of a request to the mirror."""
        return http_request(f"{self.url}{path}", method=method, headers=headers)


_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[tuple[str, dict, float]]:
    """Samples of a Prometheus text exposition (comments skipped, label values unescaped)."""
    samples = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = {k: bytes(v, "utf-8").decode("unicode_escape") for k, v in _LABEL.findall(m.group("labels") or "")}
        samples.append((m.group("name"), labels, float(m.group("value"))))
    return samples
