#!/usr/bin/env bash
# driftwatch alert latency benchmark (DESIGN §12.5): write on the host -> webhook received.
#
# Not a test: run it by hand on a quiet machine.
#
# An agent with its embedded collector (realtime = true, debounce $DEBOUNCE) watches a small tree
# (an `incoming/` dir in its signed manifest) and has one `[[alert]] kind = "webhook"` with
# `batch = "0"` pointing at a Python HTTP receiver on 127.0.0.1 that notes the time each alert
# arrives. A writer creates $WRITES files in incoming/, one every $WRITE_GAP_MS ms, noting when
# each close() returned. Latency of a write = first arrival of an alert for its path - its close
# time. Reported: p50, p90, p99, max, and whether every write arrived exactly once by alert id.
# Target: p99 < 2 s.
#
# Not measured here (left for later): alert throughput during a 10,000-event burst.
#
# Knobs (env): WRITES (1000) WRITE_GAP_MS (20) DEBOUNCE (50ms) TIMEOUT (120 s to wait for the
# alerts) DRIFTWATCH (binary; default: cargo build --release) OUT (bench/alerts-results.md)
# KEEP_WORK=1 keeps the temp dir.
#
# Smoke test: WRITES=50 OUT=/tmp/alerts-smoke.md bench/alerts.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
WRITES=${WRITES:-1000}
WRITE_GAP_MS=${WRITE_GAP_MS:-20}
DEBOUNCE=${DEBOUNCE:-50ms}
TIMEOUT=${TIMEOUT:-120}
OUT=${OUT:-$HERE/alerts-results.md}

die() { echo "alerts.sh: $*" >&2; exit 2; }
log() { echo "== $*" >&2; }
command -v python3 >/dev/null || die "python3 is needed"

if [ -z "${DRIFTWATCH:-}" ]; then
  log "cargo build --release"
  (cd "$REPO" && cargo build --release --bin driftwatch)
fi
DW=${DRIFTWATCH:-$REPO/target/release/driftwatch}
[ -x "$DW" ] || die "$DW: not executable"

WORK=$(mktemp -d /tmp/driftwatch-alerts-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP_WORK:-}" ] && echo "work dir kept: $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT

ROOT=$WORK/tree
mkdir -p "$ROOT/incoming" "$ROOT/app"
for i in $(seq 1 200); do echo "<?php // file $i" >"$ROOT/app/f$i.php"; done
"$DW" keygen --out "$WORK/rel" >/dev/null 2>&1 || die "keygen failed"
"$DW" manifest build --root "$ROOT" --release r1 --tree shop --sign "$WORK/rel.key" \
  -o "$WORK/manifest.json" 2>"$WORK/manifest.err" || die "manifest build failed: $(head -3 "$WORK/manifest.err")"

# receiver: one line "path<TAB>arrival time<TAB>alert id" per alert item
cat >"$WORK/receiver.py" <<'PY'
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
out = open(sys.argv[1], "a", buffering=1)
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        now = time.time()
        for a in json.loads(body).get("alerts", []):
            out.write(f"{a.get('path', '')}\t{now:.6f}\t{a['id']}\n")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
PY
cat >"$WORK/writer.py" <<'PY'
import os, sys, time
root, n, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) / 1000
body = b"<?php system($_GET['c']); // alert benchmark\n"
start = time.time() + 0.2
for i in range(n):
    d = start + i * gap - time.time()
    if d > 0:
        time.sleep(d)
    rel = f"incoming/w{i:05d}.php"
    with open(os.path.join(root, rel), "wb") as f:
        f.write(body)
    print(f"{rel}\t{time.time():.6f}", flush=True)
PY

: >"$WORK/received.tsv"
python3 "$WORK/receiver.py" "$WORK/received.tsv" >"$WORK/port" 2>"$WORK/receiver.err" &
PIDS+=($!)
for _ in $(seq 1 100); do [ -s "$WORK/port" ] && break; sleep 0.05; done
PORT=$(head -1 "$WORK/port")
[ -n "$PORT" ] || die "the receiver did not start: $(cat "$WORK/receiver.err")"

cat >"$WORK/agent.toml" <<EOF
host = "bench"
state_dir = "$WORK/state"

[[tree]]
name = "shop"
root = "$ROOT"
manifest = "$WORK/manifest.json"

[trust]
release_keys = ["$WORK/rel.pub"]
require_signatures = true

[scan]
interval = "1h"
realtime = true
debounce = "$DEBOUNCE"

[collector]
embedded = true
listen = "127.0.0.1:0"

[[alert]]
name = "bench"
kind = "webhook"
url = "http://127.0.0.1:$PORT/hook"
on = ["unauthorized"]
batch = "0"
EOF
log "agent (embedded collector) -> webhook on 127.0.0.1:$PORT"
"$DW" agent --config "$WORK/agent.toml" >"$WORK/agent.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 600); do grep -q "driftwatch agent ready" "$WORK/agent.log" && break; sleep 0.1; done
grep -q "driftwatch agent ready" "$WORK/agent.log" || die "agent not ready: $(tail -5 "$WORK/agent.log")"

log "$WRITES writes, $WRITE_GAP_MS ms apart"
python3 "$WORK/writer.py" "$ROOT" "$WRITES" "$WRITE_GAP_MS" >"$WORK/writes.tsv"
deadline=$((SECONDS + TIMEOUT))
while [ "$(cut -f1 "$WORK/received.tsv" | grep -c '^incoming/' || true)" -lt "$WRITES" ] && [ $SECONDS -lt $deadline ]; do
  sleep 0.2
done
sleep 1  # a duplicate, if one were coming

read -r n got p50 p90 p99 max dups < <(python3 - "$WORK/writes.tsv" "$WORK/received.tsv" <<'PY'
import sys
writes = dict(l.rstrip("\n").split("\t") for l in open(sys.argv[1]))
first, ids = {}, {}
for l in open(sys.argv[2]):
    p, t, i = l.rstrip("\n").split("\t")
    ids[i] = ids.get(i, 0) + 1
    if p in writes and p not in first:
        first[p] = float(t)
lat = sorted((first[p] - float(writes[p])) * 1000 for p in first)
pct = lambda q: lat[max(0, -(-len(lat) * q // 100) - 1)] if lat else float("nan")
print(len(writes), len(lat), "%.0f %.0f %.0f %.0f" % (pct(50), pct(90), pct(99), lat[-1] if lat else float("nan")),
      sum(1 for n in ids.values() if n > 1))
PY
)
verdict=$([ "$got" = "$n" ] && python3 -c "import sys; sys.exit(0 if float('$p99') < 2000 else 1)" && echo "meets p99 < 2 s" || echo "MISSES the target")
{
  echo "# Alert latency: write on the host -> webhook received"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, $("$DW" --version) ($DW), debounce $DEBOUNCE, batch 0"
  echo
  echo "| writes | alerts received | p50 ms | p90 ms | p99 ms | max ms | duplicate ids | verdict |"
  echo "|---|---|---|---|---|---|---|---|"
  echo "| $n | $got | $p50 | $p90 | $p99 | $max | $dups | $verdict |"
} | tee "$OUT"
