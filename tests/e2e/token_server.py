#!/usr/bin/env python3
"""A tiny stand-in for auth.docker.io (Docker registry v2 token authentication).

    GET  /token?service=registry.docker.io&scope=repository:NAME:pull[,push]
    POST /token      (OAuth2 form: grant_type=password|refresh_token, ...)
    GET  /stats      JSON counters (tokens issued, per scope, per user, ...)
    POST /stats/reset  (or GET /stats?reset=1) zero the counters
    GET  /healthz    "ok"

Access policy (mimics Docker Hub):
  * anonymous: "pull" on every repository NOT under "private/"; for "private/*"
    an anonymous request still gets 200 with a token whose access list is empty
    (that is what Docker Hub does; the registry then answers 401
    insufficient_scope). --strict-anonymous turns that into a 401 instead.
  * Basic USER:PASSWORD matching --user/--password: pull, push, delete and "*"
    on every repository, "*" on registry:catalog.
  * Basic with wrong credentials: 401 {"details": "incorrect username or password"}.

Tokens are ES256 JWTs.  The header carries the signing certificate (self-signed,
base64 DER) in "x5c" and the libtrust fingerprint of the key in "kid"
(--key-mode selects x5c / kid / both).  Claims: iss, sub, aud (= service), exp,
nbf, iat, jti, access=[{type, name, actions}].

The certificate is written as PEM to --cert-out (Distribution's
auth.token.rootcertbundle).  --port 0 picks a free port; the chosen port is
printed ("LISTENING http://127.0.0.1:PORT") and written to --port-file.

Needs the "cryptography" package (tests/e2e/requirements.txt).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as _dt
import hashlib
import json
import os
import secrets
import signal
import sys
import threading
import time
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

DEFAULT_SERVICE = "registry.docker.io"
DEFAULT_ISSUER = "cistern-e2e-token-server"
DEFAULT_USER = "cistern"
DEFAULT_PASSWORD = "cistern-secret"
PRIVATE_PREFIX = "private/"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def libtrust_key_id(public_key) -> str:
    """docker/libtrust fingerprint: base32(sha256(DER SPKI)[:30]) in 4-char groups."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii")
    return ":".join(b32[i : i + 4] for i in range(0, len(b32), 4))


def utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def iso8601(ts: _dt.datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Signer:
    """ES256 key + self-signed certificate."""

    def __init__(self, key_file: str | None = None, cert_file: str | None = None):
        """Load/persist the key in key_file; reuse the certificate in cert_file
        when it holds the same public key (so tokens forged later carry the
        exact certificate that is in Distribution's rootcertbundle)."""
        key = None
        if key_file and os.path.exists(key_file):
            with open(key_file, "rb") as f:
                key = serialization.load_pem_private_key(f.read(), password=None)
        if key is None:
            key = ec.generate_private_key(ec.SECP256R1())
            if key_file:
                _atomic_write(
                    key_file,
                    key.private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    ),
                    mode=0o600,
                )
        self.key = key
        self.cert = None
        pub_der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if cert_file and os.path.exists(cert_file):
            with open(cert_file, "rb") as f:
                existing = x509.load_pem_x509_certificate(f.read())
            if existing.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ) == pub_der:
                self.cert = existing
        if self.cert is None:
            self.cert = self._self_signed(key)
        self.cert_der = self.cert.public_bytes(serialization.Encoding.DER)
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self.kid = libtrust_key_id(key.public_key())

    @staticmethod
    def _self_signed(key):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cistern e2e token signer")])
        now = utc_now()
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(days=1))
            .not_valid_after(now + _dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )

    def jwt(self, claims: dict, key_mode: str = "both") -> str:
        header: dict = {"typ": "JWT", "alg": "ES256"}
        if key_mode in ("kid", "both"):
            header["kid"] = self.kid
        if key_mode in ("x5c", "both"):
            header["x5c"] = [base64.b64encode(self.cert_der).decode("ascii")]
        signing_input = (
            b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        der_sig = self.key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der_sig)
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JWS: raw R||S
        return signing_input + "." + b64url(sig)


def parse_scope(scope: str):
    """'repository:name[:port/..]:pull,push' -> (type, name, [actions]); None if malformed.

    The name may itself contain ':' (registry host with port), so the type is up
    to the first ':' and the actions after the last one.  A resource class such as
    'repository(plugin)' is reduced to its type.
    """
    first = scope.find(":")
    last = scope.rfind(":")
    if first <= 0 or last == first:
        return None
    rtype = scope[:first]
    if "(" in rtype:
        rtype = rtype[: rtype.index("(")]
    name = scope[first + 1 : last]
    actions = [a for a in scope[last + 1 :].split(",") if a]
    if not name:
        return None
    return rtype, name, actions


class State:
    def __init__(self, args):
        self.args = args
        self.signer = Signer(args.key_file, args.cert_out)
        self.lock = threading.Lock()
        self.reset()
        # refresh tokens handed out via POST /token (offline access)
        self.refresh_tokens: dict[str, str] = {}

    def reset(self):
        with getattr(self, "lock", threading.Lock()):
            self.started = time.time()
            self.requests = 0
            self.tokens_issued = 0
            self.anonymous = 0
            self.authenticated = 0
            self.rejected = 0
            self.by_scope: Counter = Counter()
            self.by_repository: Counter = Counter()
            self.by_user: Counter = Counter()
            self.by_method: Counter = Counter()

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "tokens_issued": self.tokens_issued,
                "requests": self.requests,
                "anonymous": self.anonymous,
                "authenticated": self.authenticated,
                "rejected": self.rejected,
                "by_scope": dict(self.by_scope),
                "by_repository": dict(self.by_repository),
                "by_user": dict(self.by_user),
                "by_method": dict(self.by_method),
                "since": self.started,
            }

    def grant(self, user: str | None, rtype: str, name: str, actions: list[str]) -> list[str]:
        if user is not None:
            if rtype == "repository":
                allowed = {"pull", "push", "delete", "*"}
            elif rtype == "registry" and name == "catalog":
                allowed = {"*"}
            else:
                allowed = set()
        else:
            if rtype == "repository" and not name.startswith(PRIVATE_PREFIX):
                allowed = {"pull"}
            else:
                allowed = set()
        return [a for a in actions if a in allowed]

    def issue(self, user: str | None, service: str, scopes: list[str], client_id: str | None):
        access = []
        for scope in scopes:
            parsed = parse_scope(scope)
            if parsed is None:
                continue
            rtype, name, actions = parsed
            granted = self.grant(user, rtype, name, actions)
            access.append({"type": rtype, "name": name, "actions": granted})
        now = int(time.time())
        expires_in = self.args.expires_in
        claims = {
            "iss": self.args.issuer,
            "sub": user or "",
            "aud": service,  # Distribution 2.8 requires a plain string here
            "exp": now + expires_in,
            "nbf": now,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        token = self.signer.jwt(claims, self.args.key_mode)
        with self.lock:
            self.tokens_issued += 1
            if user is None:
                self.anonymous += 1
            else:
                self.authenticated += 1
                self.by_user[user] += 1
            for scope in scopes:
                self.by_scope[scope] += 1
            for entry in access:
                if entry["type"] == "repository":
                    self.by_repository[entry["name"]] += 1
        return token, claims


def _atomic_write(path: str, data: bytes, mode: int = 0o644):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


class Handler(BaseHTTPRequestHandler):
    server_version = "cistern-e2e-token/1"
    protocol_version = "HTTP/1.1"
    state: State  # set on the class by main()

    # ---- helpers ---------------------------------------------------------
    def log_message(self, fmt, *args):
        if self.state.args.quiet:
            return
        sys.stderr.write(
            "%s - [%s] %s\n" % (self.address_string(), self.log_date_time_string(), fmt % args)
        )

    def _send_json(self, status: int, obj, extra_headers=None):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _basic_credentials(self):
        """None -> no Authorization header; (user, pw) otherwise; ('', None) if unparsable."""
        header = self.headers.get("Authorization")
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return ("", None)
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return ("", None)
        user, sep, pw = decoded.partition(":")
        if not sep:
            return ("", None)
        return (user, pw)

    def _check(self, user, pw) -> bool:
        a = self.state.args
        return secrets.compare_digest(user, a.user) and secrets.compare_digest(pw or "", a.password)

    def _reject(self, why: str):
        with self.state.lock:
            self.state.rejected += 1
        self._send_json(
            401,
            {"details": why},
            {"WWW-Authenticate": 'Basic realm="cistern-e2e-token-server"'},
        )

    def _respond_token(self, user, service, scopes, client_id, offline=False):
        a = self.state.args
        if not service:
            service = a.service  # lenient: a missing service means ours
        if service != a.service:
            # Docker Hub ignores unknown services only partially; be strict so
            # a misconfigured mirror notices.
            with self.state.lock:
                self.state.rejected += 1
            self._send_json(400, {"details": f"unknown service {service!r}, expected {a.service!r}"})
            return
        if user is None and a.strict_anonymous:
            for scope in scopes:
                p = parse_scope(scope)
                if p and p[0] == "repository" and p[1].startswith(PRIVATE_PREFIX):
                    self._reject("authentication required")
                    return
        token, claims = self.state.issue(user, service, scopes, client_id)
        issued = _dt.datetime.fromtimestamp(claims["iat"], _dt.timezone.utc)
        body = {
            "token": token,
            "access_token": token,
            "expires_in": a.expires_in,
            "issued_at": iso8601(issued),
        }
        if offline and user is not None:
            rt = secrets.token_urlsafe(24)
            with self.state.lock:
                self.state.refresh_tokens[rt] = user
            body["refresh_token"] = rt
        self._send_json(200, body)

    # ---- routes ----------------------------------------------------------
    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        with self.state.lock:
            self.state.requests += 1
            self.state.by_method[f"GET {url.path}"] += 1
        if url.path == "/healthz":
            self._send_json(200, {"ok": True})
            return
        if url.path == "/stats":
            snap = self.state.snapshot()
            if query.get("reset", ["0"])[0] in ("1", "true"):
                self.state.reset()
            self._send_json(200, snap)
            return
        if url.path == "/cert.pem":
            body = self.state.signer.cert_pem
            self.send_response(200)
            self.send_header("Content-Type", "application/x-pem-file")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if url.path != "/token":
            self._send_json(404, {"details": "not found"})
            return

        creds = self._basic_credentials()
        user = None
        if creds is not None:
            if not self._check(*creds):
                self._reject("incorrect username or password")
                return
            user = creds[0]
        service = query.get("service", [""])[0]
        scopes = []
        for s in query.get("scope", []):
            scopes.extend(x for x in s.split(" ") if x)
        offline = query.get("offline_token", ["false"])[0] == "true"
        self._respond_token(user, service, scopes, query.get("client_id", [None])[0], offline)

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        with self.state.lock:
            self.state.requests += 1
            self.state.by_method[f"POST {url.path}"] += 1
        if url.path == "/stats/reset":
            self.state.reset()
            self._send_json(200, {"ok": True})
            return
        if url.path != "/token":
            self._send_json(404, {"details": "not found"})
            return
        # OAuth2 flow as used by containerd / docker login (grant_type=password
        # or refresh_token).  Form-encoded body.
        form = urllib.parse.parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
        grant = form.get("grant_type", [""])[0]
        user = None
        if grant == "password":
            u = form.get("username", [""])[0]
            p = form.get("password", [""])[0]
            if not self._check(u, p):
                self._reject("incorrect username or password")
                return
            user = u
        elif grant == "refresh_token":
            rt = form.get("refresh_token", [""])[0]
            with self.state.lock:
                user = self.state.refresh_tokens.get(rt)
            if user is None:
                self._reject("invalid refresh token")
                return
        else:
            # Anonymous OAuth is not part of the protocol; Docker Hub answers 400 here.
            self._send_json(400, {"details": f"unsupported grant_type {grant!r}"})
            return
        scopes = []
        for s in form.get("scope", []):
            scopes.extend(x for x in s.split(" ") if x)
        offline = form.get("access_type", [""])[0] == "offline"
        self._respond_token(user, form.get("service", [""])[0], scopes,
                            form.get("client_id", [None])[0], offline)


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    p.add_argument("--port-file", help="write the chosen port here (atomically) once listening")
    p.add_argument("--cert-out", required=True, help="write the signing certificate (PEM) here")
    p.add_argument("--key-file", help="load/persist the EC private key here (default: fresh key)")
    p.add_argument("--service", default=DEFAULT_SERVICE)
    p.add_argument("--issuer", default=DEFAULT_ISSUER)
    p.add_argument("--user", default=DEFAULT_USER)
    p.add_argument("--password", default=DEFAULT_PASSWORD)
    p.add_argument("--expires-in", type=int, default=300, help="token lifetime in seconds")
    p.add_argument("--key-mode", choices=("x5c", "kid", "both"), default="both",
                   help="how the JWT header identifies the signing key")
    p.add_argument("--strict-anonymous", action="store_true",
                   help="401 anonymous requests for private/* instead of an empty-access token")
    p.add_argument("--quiet", action="store_true", help="no per-request log on stderr")
    return p


def main(argv=None) -> int:
    args = build_arg_parser().parse_args(argv)
    state = State(args)
    _atomic_write(args.cert_out, state.signer.cert_pem)
    Handler.state = state
    httpd = ThreadingHTTPServer((args.host, args.port), Handler)
    httpd.daemon_threads = True
    port = httpd.server_address[1]
    if args.port_file:
        _atomic_write(args.port_file, f"{port}\n".encode())
    print(f"LISTENING http://{args.host}:{port}", flush=True)

    def _terminate(*_):
        # shutdown() blocks until serve_forever returns, so run it off-thread
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
