#!/usr/bin/env python3
"""Build deterministic test images locally (OCI image layouts) and push them to the stand-in.

Nothing is downloaded: every layer is a tar+gzip built here from fixed content
(fixed mtimes/owners, gzip mtime 0), so digests are stable from run to run on
the same zlib.  Images (all linux):

  library/alpine:latest    OCI image index: amd64 + arm64/v8, different layers
                           (pushed with `skopeo copy --all --preserve-digests`)
  library/busybox:latest   Docker v2 schema 2 manifest, amd64
                           (`skopeo copy --format v2s2`)
  library/multi:v2s2       Docker manifest list (v2s2 list) of amd64 + arm64/v8
                           (`skopeo copy --all --format v2s2` of an OCI index)
  private/secret:1.0       OCI image manifest, amd64, only with credentials
  with --extra:
  library/layers40:latest  40 small layers (v2s2)
  library/big:latest       one big layer of incompressible data (--big-mib, default 256)

Usage
  build_images.py --state /tmp/cistern-e2e-standin/standin.json [--extra]
  build_images.py --registry 127.0.0.1:PORT --user U --password P [--extra]
  build_images.py --build-only --out DIR [--extra]

The result (repository, tag, pushed manifest digest and media type, per-platform
manifests with config and layer digests) is printed as JSON, written to
OUT/images.json and, with --state, merged into the stand-in description.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from standin import basic_auth, http_request  # noqa: E402

BUILD_VERSION = "3"  # bump to invalidate cached layouts
MTIME = 1704067200  # 2024-01-01T00:00:00Z
CREATED = "2024-01-01T00:00:00Z"

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT_ALL = ", ".join([MT_OCI_INDEX, MT_OCI_MANIFEST, MT_DOCKER_LIST, MT_DOCKER_MANIFEST])

SKOPEO = os.environ.get("CISTERN_E2E_SKOPEO", "skopeo")


# --------------------------------------------------------------------------
# deterministic layers
# --------------------------------------------------------------------------


class _HashingWriter:
    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def write(self, b):
        self.h.update(b)
        self.n += len(b)
        self.f.write(b)
        return len(b)

    def flush(self):
        self.f.flush()


class _PseudoRandomReader:
    """Deterministic incompressible bytes, streamed."""

    def __init__(self, seed: str, size: int):
        self.rng = random.Random(seed)
        self.left = size

    def read(self, n=-1):
        if n is None or n < 0 or n > self.left:
            n = self.left
        self.left -= n
        return self.rng.randbytes(n)


def _parents(path):
    parts = path.strip("/").split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def write_layer(blobs_dir: str, files: dict, compresslevel: int = 6) -> dict:
    """files: {"path": bytes | ("random", seed, size) | ("mode", 0o755, bytes) | None(dir)}.

    Writes the gzip blob into blobs_dir (sha256/<hex>) and returns
    {"digest", "size", "diff_id", "uncompressed_size"}.
    """
    os.makedirs(os.path.join(blobs_dir, "sha256"), exist_ok=True)
    tmp = os.path.join(blobs_dir, f".layer.tmp.{os.getpid()}")
    entries = {}
    for path, spec in files.items():
        for d in _parents(path):
            entries.setdefault(d, None)
        entries[path.strip("/")] = spec
    with open(tmp, "wb") as raw:
        comp = _HashingWriter(raw)
        with gzip.GzipFile(filename="", fileobj=comp, mode="wb", compresslevel=compresslevel, mtime=0) as gz:
            uncomp = _HashingWriter(gz)
            with tarfile.open(fileobj=uncomp, mode="w|", format=tarfile.GNU_FORMAT) as tar:
                for path in sorted(entries):
                    spec = entries[path]
                    ti = tarfile.TarInfo(path)
                    ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = MTIME, 0, 0, "root", "root"
                    if spec is None:
                        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                        tar.addfile(ti)
                        continue
                    mode = 0o644
                    if isinstance(spec, tuple) and spec[0] == "mode":
                        _, mode, spec = spec
                    ti.mode = mode
                    if isinstance(spec, tuple) and spec[0] == "random":
                        _, seed, size = spec
                        ti.size = size
                        tar.addfile(ti, _PseudoRandomReader(seed, size))
                    else:
                        data = spec if isinstance(spec, bytes) else str(spec).encode()
                        ti.size = len(data)
                        tar.addfile(ti, io.BytesIO(data))
    digest = "sha256:" + comp.h.hexdigest()
    os.replace(tmp, os.path.join(blobs_dir, "sha256", comp.h.hexdigest()))
    return {"digest": digest, "size": comp.n, "diff_id": "sha256:" + uncomp.h.hexdigest(),
            "uncompressed_size": uncomp.n}


def write_blob(blobs_dir: str, data: bytes) -> dict:
    hexd = hashlib.sha256(data).hexdigest()
    os.makedirs(os.path.join(blobs_dir, "sha256"), exist_ok=True)
    with open(os.path.join(blobs_dir, "sha256", hexd), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + hexd, "size": len(data)}


def canonical(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


# --------------------------------------------------------------------------
# image specs
# --------------------------------------------------------------------------


def _os_release(name):
    return (f'NAME="cistern test {name}"\nID=cistern-test\nVERSION_ID=1.0\n'
            f'PRETTY_NAME="cistern e2e test image {name}"\n').encode()


def _platform_layers(repo: str, tag: str, arch: str, variant: str | None, origin: str | None = None) -> list[dict]:
    """Two layers naming the image. With `origin` (a registry host) the second layer names it too,
    while the first stays the same: the same name on two registries is then two different images
    sharing a base layer."""
    plat = f"linux/{arch}" + (f"/{variant}" if variant else "")
    ident = f"{repo}:{tag} {plat}\n"
    short = repo.split("/")[-1]
    second = f"{origin}/{ident}" if origin else ident
    return [
        {
            "etc/os-release": _os_release(short),
            "etc/cistern-image": ident.encode(),
            "bin/": None,
            "tmp/": None,
            "hello.txt": f"hello from {ident}".encode(),
        },
        {
            "data/README": f"second layer of {second}".encode(),
            "data/arch.txt": f"{plat}\n".encode(),
            "data/script.sh": ("mode", 0o755, f"#!/bin/sh\necho {short} {plat}\n".encode()),
        },
    ]


def image_specs(extra: bool = False, big_mib: int = 256) -> list[dict]:
    amd64, arm64 = ("amd64", None), ("arm64", "v8")
    specs = [
        {"repo": "library/alpine", "tag": "latest", "push": "oci-index", "private": False,
         "platforms": [amd64, arm64]},
        {"repo": "library/busybox", "tag": "latest", "push": "v2s2", "private": False,
         "platforms": [amd64]},
        {"repo": "library/multi", "tag": "v2s2", "push": "v2s2-list", "private": False,
         "platforms": [amd64, arm64]},
        {"repo": "private/secret", "tag": "1.0", "push": "oci", "private": True,
         "platforms": [amd64]},
    ]
    if extra:
        specs.append({
            "repo": "library/layers40", "tag": "latest", "push": "v2s2", "private": False,
            "platforms": [amd64],
            "layers": [{f"layer{i:02d}/file.txt": f"layer {i} of library/layers40\n".encode()}
                       for i in range(40)],
        })
        specs.append({
            "repo": "library/big", "tag": "latest", "push": "v2s2", "private": False,
            "platforms": [amd64], "compresslevel": 1,
            "layers": [
                {"etc/cistern-image": b"library/big:latest linux/amd64\n"},
                {"data/big.bin": ("random", "cistern-big-layer", big_mib * 1024 * 1024)},
            ],
        })
    return specs


def same_name_specs(origin: str, push: str) -> list[dict]:
    """`owner/app:1.0` as the registry `origin` holds it: every registry has an image of that name,
    each a different one (its second layer and config name `origin`), all sharing the base layer.
    push "oci-index" makes it an OCI index of amd64 + arm64/v8, else one amd64 manifest."""
    platforms = [("amd64", None), ("arm64", "v8")] if push in ("oci-index", "v2s2-list") else [("amd64", None)]
    return [{"repo": "owner/app", "tag": "1.0", "push": push, "private": False, "platforms": platforms,
             "origin": origin}]


def _layout_dirname(repo, tag):
    return f"{repo.replace('/', '_')}_{tag}"


def build_image(spec: dict, out: str) -> dict:
    """Build one image as an OCI layout at out/<repo_tag>; returns build metadata."""
    d = os.path.join(out, _layout_dirname(spec["repo"], spec["tag"]))
    stamp_path = os.path.join(d, "cistern-build.json")
    key = hashlib.sha256(repr((BUILD_VERSION, spec)).encode()).hexdigest()
    if os.path.exists(stamp_path):
        with open(stamp_path) as f:
            stamp = json.load(f)
        if stamp.get("key") == key:
            return stamp["meta"]
    if os.path.exists(d):
        shutil.rmtree(d)
    blobs = os.path.join(d, "blobs")
    os.makedirs(blobs)
    platforms = []
    for arch, variant in spec["platforms"]:
        layer_files = spec.get("layers") or _platform_layers(spec["repo"], spec["tag"], arch, variant,
                                                             spec.get("origin"))
        layers = [write_layer(blobs, files, spec.get("compresslevel", 6)) for files in layer_files]
        config = {
            "architecture": arch,
            "os": "linux",
            "created": CREATED,
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/bin/sh"],
                "Labels": {"org.cistern.e2e.image": (f"{spec['origin']}/" if spec.get("origin") else "")
                           + f"{spec['repo']}:{spec['tag']}"},
            },
            "rootfs": {"type": "layers", "diff_ids": [l["diff_id"] for l in layers]},
            "history": [{"created": CREATED, "created_by": f"cistern e2e build_images.py layer {i}"}
                        for i in range(len(layers))],
        }
        if variant:
            config["variant"] = variant
        cfg = write_blob(blobs, canonical(config))
        manifest = {
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": {"mediaType": MT_OCI_CONFIG, **cfg},
            "layers": [{"mediaType": MT_OCI_LAYER_GZIP, "digest": l["digest"], "size": l["size"]}
                       for l in layers],
        }
        man = write_blob(blobs, canonical(manifest))
        platform = {"architecture": arch, "os": "linux"}
        if variant:
            platform["variant"] = variant
        platforms.append({"platform": platform, "manifest": man, "config": cfg, "layers": layers})
    if len(platforms) > 1:
        index = {
            "schemaVersion": 2,
            "mediaType": MT_OCI_INDEX,
            "manifests": [{"mediaType": MT_OCI_MANIFEST, **p["manifest"], "platform": p["platform"]}
                          for p in platforms],
        }
        top = {"mediaType": MT_OCI_INDEX, **write_blob(blobs, canonical(index))}
    else:
        top = {"mediaType": MT_OCI_MANIFEST, **platforms[0]["manifest"]}
    layout_index = {
        "schemaVersion": 2,
        "manifests": [{**top, "annotations": {"org.opencontainers.image.ref.name": spec["tag"]}}],
    }
    with open(os.path.join(d, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(d, "index.json"), "w") as f:
        json.dump(layout_index, f)
    meta = {"layout": d, "oci_ref": f"oci:{d}:{spec['tag']}", "top": top, "platforms": platforms}
    with open(stamp_path, "w") as f:
        json.dump({"key": key, "meta": meta}, f)
    return meta


# --------------------------------------------------------------------------
# pushing + reading back
# --------------------------------------------------------------------------


def skopeo_copy(src: str, dest: str, user: str, password: str, mode: str, digestfile: str) -> list[str]:
    argv = [SKOPEO, "--insecure-policy", "copy", "--quiet",
            "--dest-creds", f"{user}:{password}", "--dest-tls-verify=false",
            "--digestfile", digestfile]
    if mode == "oci-index":
        argv += ["--all", "--preserve-digests"]
    elif mode == "oci":
        argv += ["--preserve-digests"]
    elif mode == "v2s2":
        argv += ["--format", "v2s2"]
    elif mode == "v2s2-list":
        argv += ["--all", "--format", "v2s2"]
    else:
        raise ValueError(mode)
    argv += [src, dest]
    env = dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    res = subprocess.run(argv, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"skopeo failed ({res.returncode}): {' '.join(argv)}\n{res.stdout}\n{res.stderr}")
    return argv


class RegistryClient:
    """Minimal Distribution API client following the Bearer challenge with Basic creds."""

    def __init__(self, host: str, user: str | None = None, password: str | None = None):
        self.base = f"http://{host}"
        self.user, self.password = user, password
        self.tokens: dict[str, str] = {}

    def _token(self, challenge: str) -> str:
        params = dict(
            (k.strip(), v.strip('"'))
            for k, v in (p.split("=", 1) for p in _split_challenge(challenge.split(" ", 1)[1]))
        )
        q = urllib.parse.urlencode({k: v for k, v in params.items() if k in ("service", "scope")})
        headers = {"Authorization": basic_auth(self.user, self.password)} if self.user else {}
        st, _, body = http_request(f"{params['realm']}?{q}", headers=headers)
        if st != 200:
            raise PermissionError(f"token request failed: {st} {body[:200]!r}")
        return json.loads(body)["token"]

    def get(self, name: str, path: str, accept: str = ACCEPT_ALL, method="GET"):
        url = f"{self.base}/v2/{name}/{path}"
        headers = {"Accept": accept}
        if name in self.tokens:
            headers["Authorization"] = f"Bearer {self.tokens[name]}"
        st, hdrs, body = http_request(url, method=method, headers=headers, follow_redirects=True)
        if st == 401 and "Bearer" in (hdrs.get("WWW-Authenticate") or ""):
            self.tokens[name] = self._token(hdrs["WWW-Authenticate"])
            headers["Authorization"] = f"Bearer {self.tokens[name]}"
            st, hdrs, body = http_request(url, method=method, headers=headers)
        return st, hdrs, body

    def manifest(self, name: str, ref: str):
        st, hdrs, body = self.get(name, f"manifests/{ref}")
        if st != 200:
            raise RuntimeError(f"GET manifest {name}:{ref} -> {st} {body[:300]!r}")
        return hdrs.get("Content-Type"), hdrs.get("Docker-Content-Digest"), body


def _split_challenge(s: str):
    out, cur, q = [], "", False
    for ch in s:
        if ch == '"':
            q = not q
        if ch == "," and not q:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        out.append(cur)
    return out


def describe_pushed(client: RegistryClient, repo: str, tag: str) -> dict:
    mt, digest, body = client.manifest(repo, tag)
    doc = json.loads(body)
    info = {"digest": digest, "media_type": mt, "size": len(body)}
    if mt in (MT_OCI_INDEX, MT_DOCKER_LIST):
        plats = {}
        for m in doc["manifests"]:
            p = m.get("platform", {})
            key = "/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)
            cmt, cdig, cbody = client.manifest(repo, m["digest"])
            plats[key] = _single(json.loads(cbody), cmt, cdig, len(cbody))
        info["platforms"] = plats
    else:
        info["platforms"] = {"linux/amd64": _single(doc, mt, digest, len(body))}
    return info


def _single(doc, mt, digest, size):
    return {
        "digest": digest,
        "media_type": mt,
        "size": size,
        "config": doc["config"]["digest"],
        "layers": [{"digest": l["digest"], "size": l["size"], "media_type": l["mediaType"]}
                   for l in doc["layers"]],
    }


def docker_hub_ref(repo: str, tag: str) -> str:
    """How `docker pull` spells it against docker.io (library/ prefix dropped)."""
    short = repo[len("library/"):] if repo.startswith("library/") else repo
    return f"{short}:{tag}"


def seed(target, extra: bool = False, out: str | None = None, big_mib: int = 256,
         only: list[str] | None = None, verbose: bool = True, specs: list[dict] | None = None) -> dict:
    """Build + push all images (or `specs`, e.g. same_name_specs()).  `target` is a StandIn (or
    anything with registry_host, user, password, workdir)."""
    host, user, password = target.registry_host, target.user, target.password
    out = out or os.path.join(target.workdir, "oci")
    os.makedirs(out, exist_ok=True)
    client = RegistryClient(host, user, password)
    result = {}
    for spec in specs if specs is not None else image_specs(extra, big_mib):
        ref = f"{spec['repo']}:{spec['tag']}"
        if only and ref not in only and spec["repo"] not in only:
            continue
        built = build_image(spec, out)
        digestfile = os.path.join(out, _layout_dirname(spec["repo"], spec["tag"]) + ".digest")
        argv = skopeo_copy(built["oci_ref"], f"docker://{host}/{ref}", user, password, spec["push"], digestfile)
        with open(digestfile) as f:
            skopeo_digest = f.read().strip()
        pushed = describe_pushed(client, spec["repo"], spec["tag"])
        if pushed["digest"] != skopeo_digest:
            raise RuntimeError(f"{ref}: registry digest {pushed['digest']} != skopeo {skopeo_digest}")
        result[ref] = {
            "repository": spec["repo"],
            "tag": spec["tag"],
            "private": spec["private"],
            "push_mode": spec["push"],
            "docker_ref": docker_hub_ref(spec["repo"], spec["tag"]),
            "standin_ref": f"{host}/{ref}",
            "skopeo": " ".join("USER:PASS" if a == f"{user}:{password}" else a for a in argv),
            "built": {"layout": built["layout"], "top": built["top"],
                      "diff_ids": {"/".join(v for v in (p["platform"]["os"], p["platform"]["architecture"],
                                                       p["platform"].get("variant")) if v):
                                   [l["diff_id"] for l in p["layers"]] for p in built["platforms"]}},
            **pushed,
        }
        if verbose:
            print(f"pushed {ref:28s} {pushed['media_type']:58s} {pushed['digest']}", file=sys.stderr)
    with open(os.path.join(out, "images.json"), "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state", help="stand-in description (standin.json); default target")
    ap.add_argument("--registry", help="HOST:PORT of the registry (instead of --state)")
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--out", help="where to build OCI layouts (default STANDIN_WORKDIR/oci)")
    ap.add_argument("--extra", action="store_true", help="also the 40-layer and the big image")
    ap.add_argument("--big-mib", type=int, default=256)
    ap.add_argument("--only", action="append", help="REPO or REPO:TAG; repeatable")
    ap.add_argument("--build-only", action="store_true", help="build the OCI layouts, do not push")
    args = ap.parse_args(argv)

    if args.build_only:
        out = args.out or "/tmp/cistern-e2e-images"
        os.makedirs(out, exist_ok=True)
        metas = {f"{s['repo']}:{s['tag']}": build_image(s, out) for s in image_specs(args.extra, args.big_mib)}
        print(json.dumps(metas, indent=2, sort_keys=True))
        return 0

    hub = None
    if args.registry:
        class _T:  # minimal target
            registry_host = args.registry
            user = args.user
            password = args.password
            workdir = args.out or "/tmp/cistern-e2e-images"
        target = _T()
    else:
        from standin import DEFAULT_WORKDIR, StandIn

        hub = StandIn.load(args.state or DEFAULT_WORKDIR)
        if args.user:
            hub.user = args.user
        if args.password:
            hub.password = args.password
        target = hub
    images = seed(target, extra=args.extra, out=args.out, big_mib=args.big_mib, only=args.only)
    if hub is not None:
        hub.images.update(images)
        hub.write_state()
    print(json.dumps(images, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
