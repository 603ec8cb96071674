#!/usr/bin/env bash
# Benchmark cistern against CNCF Distribution's proxy (Debian's docker-registry) on one
# machine, same upstream, same data. One command from a fresh clone (needs root for apt):
#   bash bench/run.sh
# Prints a table of both servers with ratios, then the eviction and index-memory figures
# (`--only eviction` for those alone); see README.md "Benchmark".
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null || ! command -v docker-registry >/dev/null; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk nginx-light docker-registry curl
fi
python3 -c 'import cryptography' 2>/dev/null || pip install -q cryptography
cargo build --release
exec python3 bench/bench.py --cistern target/release/cistern "$@"
