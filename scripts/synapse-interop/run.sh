#!/usr/bin/env bash
# Interop check against a real Synapse on loopback: runs one Synapse (via the peer scripts in
# ../shared/tools/synapse, or $SYNAPSE_TOOLS) and one release Cairn, then checks federation both
# ways with check.py, then runs the matrix-sdk encrypted-DM test against it. Usage (from the
# repository root):
#   cargo build --release -p cairn && scripts/synapse-interop/run.sh
# Ports: Synapse localhost:8481 (client 8008), Cairn localhost:8490 (client 8491).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TOOLS="${SYNAPSE_TOOLS:-$ROOT/../shared/tools/synapse}"
WORK="$(mktemp -d)"
trap 'kill "$CAIRN_PID" 2>/dev/null || true; "$TOOLS/stop.sh" interop-hs >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

"$TOOLS/start.sh" interop-hs 8481 8008
cat > "$WORK/cairn.toml" <<TOML
server_name = "localhost:8490"
data_dir = "$WORK/cairn"
[listeners]
client = "127.0.0.1:8491"
federation = "127.0.0.1:8490"
[registration]
open = true
[federation]
verify_tls = false
TOML
RUST_LOG="${RUST_LOG:-info,cairn_federation=debug,sqlx=warn}" "$ROOT/target/release/cairn" serve --config "$WORK/cairn.toml" > "$WORK/cairn.log" 2>&1 &
CAIRN_PID=$!
for _ in $(seq 100); do
  curl -sf http://127.0.0.1:8491/_matrix/client/versions >/dev/null && break
  sleep 0.1
done
python3 "$(dirname "$0")/check.py" http://127.0.0.1:8008 localhost:8481 http://127.0.0.1:8491 localhost:8490 \
  || { echo "--- cairn log"; grep -v migration "$WORK/cairn.log" | tail -40; exit 1; }
# matrix-sdk users, one on each server, in encrypted DMs that each side creates.
CAIRN_INTEROP_SYNAPSE=http://127.0.0.1:8008 cargo test -p e2e-tests --test with_synapse -- --ignored
