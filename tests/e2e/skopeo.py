"""skopeo copies through a mirror, as podman, buildah and skopeo users configure one.

skopeo ignores any mirror environment variable: the mirror is a `[[registry.mirror]]` entry in a
registries.conf passed with `--registries-conf`. If the mirror fails, skopeo falls back to
docker.io itself, which the blackhole proxy turns into an immediate local error.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

from dockerd import offline_client_env

SKOPEO_BIN = shutil.which("skopeo") or "/usr/bin/skopeo"

REGISTRIES_CONF_TEMPLATE = """\
unqualified-search-registries = ["docker.io"]

[[registry]]
prefix = "docker.io"
location = "docker.io"

[[registry.mirror]]
location = "{mirror}"
insecure = true
"""


REGISTRY_ENTRY_TEMPLATE = """
[[registry]]
location = "{registry}"

[[registry.mirror]]
location = "{mirror}"
insecure = true
"""


def write_registries_conf(path: str, mirror_host: str) -> str:
    with open(path, "w") as f:
        f.write(REGISTRIES_CONF_TEMPLATE.format(mirror=mirror_host))
    return path


def write_registries_conf_with_paths(path: str, mirror_host: str, registries: list[str]) -> str:
    """docker.io mirrored at `mirror_host`, each other registry at `mirror_host/<registry>`, as
    podman, CRI-O and skopeo users point one mirror at several registries."""
    with open(path, "w") as f:
        f.write(REGISTRIES_CONF_TEMPLATE.format(mirror=mirror_host))
        for registry in registries:
            f.write(REGISTRY_ENTRY_TEMPLATE.format(registry=registry, mirror=f"{mirror_host}/{registry}"))
    return path


def skopeo(*args, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    res = subprocess.run([SKOPEO_BIN, "--insecure-policy", *args], env=offline_client_env(),
                         capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def copy_through_mirror(registries_conf: str, name_and_tag: str, dest_dir: str, check: bool = True):
    """`skopeo copy --all docker://docker.io/NAME:TAG dir:DEST` with the mirror configured."""
    return skopeo("--registries-conf", registries_conf, "copy", "--all",
                  f"docker://docker.io/{name_and_tag}", f"dir:{dest_dir}", check=check)


def copy_with_conf(registries_conf: str, reference: str, dest_dir: str, check: bool = True):
    """`skopeo copy --all docker://REFERENCE dir:DEST` (a fully qualified reference, e.g.
    ghcr.io/owner/app:1.0) with the registries.conf's mirrors."""
    return skopeo("--registries-conf", registries_conf, "copy", "--all", f"docker://{reference}",
                  f"dir:{dest_dir}", check=check)


def copy_direct(registry_host: str, name_and_tag: str, dest_dir: str, credentials: tuple[str, str] | None):
    """The same copy straight from a registry (the reference to compare against)."""
    creds = ["--src-creds", f"{credentials[0]}:{credentials[1]}"] if credentials else []
    return skopeo("copy", "--all", "--src-tls-verify=false", *creds,
                  f"docker://{registry_host}/{name_and_tag}", f"dir:{dest_dir}")


def tree_sha256(root: str) -> dict[str, str]:
    """{relative path: sha256 of its bytes} of every file below root."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            out[os.path.relpath(path, root)] = h.hexdigest()
    return out
