#!/usr/bin/env bash
# Idempotent installer for the cistern e2e "local Docker Hub stand-in".
# Target: a fresh Debian 12 (bookworm) machine, run as root.
#   tests/e2e/install.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: must run as root" >&2
    exit 1
fi

# chromium: the status page's browser test (driven by Playwright, never its own browser download).
PKGS=(docker.io docker-registry skopeo containerd curl ca-certificates python3 python3-pip chromium)

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
else
    echo "install.sh: apt packages already installed"
fi

# Debian's docker-registry package enables a system service on :5000 and docker.io
# may enable the system dockerd. The e2e stand-in runs its own instances on free
# ports; stop the packaged services if a service manager is running so they do
# not hold ports or state (harmless when there is no systemd, e.g. in containers).
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
fi

PY="${PYTHON:-python3}"
# pip is a no-op (and needs no network) when the requirements are already met.
# Debian 12's system Python is "externally managed" (PEP 668): retry with
# --break-system-packages there; a pyenv/venv Python takes the first branch.
if ! "$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r "$HERE/requirements.txt"; then
    "$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --break-system-packages -r "$HERE/requirements.txt"
fi

echo "install.sh: versions:"
/usr/bin/docker-registry --version || true
skopeo --version || true
dockerd --version || true
containerd --version || true
chromium --version || true
"$PY" -c 'import cryptography, pytest, moto, importlib.metadata as m; print("cryptography", cryptography.__version__, "pytest", pytest.__version__, "moto", moto.__version__, "playwright", m.version("playwright"))'
