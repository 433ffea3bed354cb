#!/usr/bin/env bash
# driftwatch agent benchmark (DESIGN §11): re-scan with the stat cache, memory per tracked path,
# real-time write -> spooled event latency, idle CPU.
#
# Not a test: run it by hand on a quiet machine (see bench/README.md, "Agent").
#
#  1. Re-scan of an unchanged tree ($CORPORA/many-small, 200,000 files) with the stat cache:
#     `driftwatch scan --config scan.toml --format json` is run once untimed (it hashes everything
#     and writes the state) and once more untimed (must report no event), then hyperfine times it
#     (warm cache) beside the metadata floor `find DIR -type f -printf '%s %T@\n'` in the same run.
#     Target: scan <= 1.5x find.
#  2. Memory: `driftwatch agent` on the tree (realtime = false, then realtime = true), VmRSS from
#     /proc/PID/status once it printed `driftwatch agent ready` and then used no CPU for a whole
#     second (it may scan again right after ready: see README), minus the VmRSS of the same
#     agent on an empty tree, divided by the paths tracked (files + dirs, from its `scan finished`
#     line). Each mode twice: first start (fresh state dir: the first scan hashes everything) and
#     restart (the state is loaded, the first scan uses the stat cache).
#     Target: <= 200 bytes per path.
#  3. Real time: an agent (realtime = true, debounce $DEBOUNCE) on a small tree ($LAT_FILES files
#     plus an empty dir `incoming/`, all in its signed manifest); a writer creates $WRITES files in
#     incoming/, one every $WRITE_GAP_MS ms, recording when each close() returned; the latency of
#     a write is the timestamp of the agent's first `drift ... path=incoming/wNNNNN.txt` log line
#     minus that time. The line is logged after the event was appended to the spool and fsynced
#     (and after its evidence copy), so it bounds "spooled" from above. Target: p99 < 1 s.
#     With BIG_WRITES > 0 the same is done on a copy of the big tree (cp -a into the temp dir: the
#     corpus itself is never written), $BIG_WRITES writes $BIG_GAP_MS ms apart.
#  4. Idle CPU: the realtime = true agent on the big tree, restarted, ready, settled, nothing changing:
#     utime+stime from /proc/PID/stat before and after $IDLE_SECS s. Target: no CPU.
#
# Knobs (env):
#   SCALE=full|small     corpus size (small: 2,000 files; smoke test); CORPORA as make-corpora.sh
#   WHAT=all|rescan|rss|latency|idle   one part only (rss and idle share agents: `rss` includes idle
#                        unless IDLE_SECS=0)
#   RUNS (10)            hyperfine runs of each command (plus 1 warm-up)
#   WRITES (1000) WRITE_GAP_MS (20) DEBOUNCE (50ms) LAT_FILES (2000)   real-time test
#   BIG_WRITES (100, 0 = skip) BIG_GAP_MS (250)   real-time test on the big tree
#   IDLE_SECS (60)       idle window
#   READY_TIMEOUT (900)  seconds to wait for `agent ready`
#   DRIFTWATCH           use this binary instead of `cargo build --release`
#   OUT                  markdown report (default bench/agent-results.md)
#   KEEP_WORK=1          keep the temp dir (configs, state dirs, agent logs, hyperfine JSON)
#
# Smoke test (about a minute once built):
#   SCALE=small WRITES=100 IDLE_SECS=5 BIG_WRITES=20 OUT=/tmp/agent-smoke.md bench/agent.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

SCALE=${SCALE:-full}
case $SCALE in
  full)  export CORPORA=${CORPORA:-/tmp/driftwatch-corpora} ;;
  small) export CORPORA=${CORPORA:-/tmp/driftwatch-corpora-small} ;;
  *) echo "agent.sh: SCALE must be full or small, not '$SCALE'" >&2; exit 2 ;;
esac
export SCALE
WHAT=${WHAT:-all}
RUNS=${RUNS:-10}
WRITES=${WRITES:-1000}
WRITE_GAP_MS=${WRITE_GAP_MS:-20}
DEBOUNCE=${DEBOUNCE:-50ms}
LAT_FILES=${LAT_FILES:-2000}
BIG_WRITES=${BIG_WRITES:-100}
BIG_GAP_MS=${BIG_GAP_MS:-250}
IDLE_SECS=${IDLE_SECS:-60}
READY_TIMEOUT=${READY_TIMEOUT:-900}
OUT=${OUT:-$HERE/agent-results.md}
DW=${DRIFTWATCH:-}

case $WHAT in all|rescan|rss|latency|idle) ;; *) echo "agent.sh: WHAT must be all, rescan, rss, latency or idle" >&2; exit 2 ;; esac
for v in RUNS WRITES WRITE_GAP_MS LAT_FILES READY_TIMEOUT; do
  [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || { echo "agent.sh: $v must be a positive integer, not '${!v}'" >&2; exit 2; }
done
for v in BIG_WRITES BIG_GAP_MS IDLE_SECS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "agent.sh: $v must be a non-negative integer, not '${!v}'" >&2; exit 2; }
done
for t in hyperfine python3 awk find; do
  command -v $t >/dev/null || { echo "agent.sh: needs $t (apt-get install hyperfine)" >&2; exit 2; }
done
want() { [ "$WHAT" = all ] || [ "$WHAT" = "$1" ] || { [ "$1" = idle ] && [ "$WHAT" = rss ]; } || { [ "$1" = rss ] && [ "$WHAT" = idle ]; }; }

WORK=$(mktemp -d /tmp/driftwatch-agent-bench.XXXXXX)
APID=
cleanup() {
  stop_agent
  if [ "${KEEP_WORK:-0}" = 1 ]; then echo "work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
T0=$(date +%s)
log() { printf '\n== %s  (%ss)\n' "$*" "$(( $(date +%s) - T0 ))" >&2; }
die() { echo "agent.sh: $*" >&2; exit 1; }

# ------------------------------------------------------------------ build, corpus, keys
if [ -z "$DW" ]; then
  log "cargo build --release"
  (cd "$REPO" && cargo build --release --bin driftwatch)
fi
DW=${DW:-$REPO/target/release/driftwatch}
[ -x "$DW" ] || die "$DW: not executable"

log "corpus many-small under $CORPORA (SCALE=$SCALE)"
CORPUS_LIST=many-small bash "$HERE/make-corpora.sh" >&2
TREE=$CORPORA/many-small
[ -d "$TREE" ] || die "missing corpus $TREE"

"$DW" keygen --out "$WORK/rel" >/dev/null 2>&1 || die "driftwatch keygen failed"
sign_manifest() {  # $1 = root, $2 = tree name, $3 = output
  "$DW" manifest build --root "$1" --release r1 --tree "$2" --sign "$WORK/rel.key" -o "$3" \
    2>"$3.err" || die "manifest build of $1 failed: $(head -3 "$3.err")"
}
log "signed manifests"
sign_manifest "$TREE" big "$WORK/big.manifest.json"
mkdir -p "$WORK/empty"
sign_manifest "$WORK/empty" empty "$WORK/empty.manifest.json"

write_config() {  # $1 = file, $2 = tree name, $3 = root, $4 = manifest, $5 = state dir, $6 = realtime, [$7 = debounce]
  cat >"$1" <<EOF
host = "bench"
state_dir = "$5"

[[tree]]
name = "$2"
root = "$3"
manifest = "$4"

[trust]
release_keys = ["$WORK/rel.pub"]

[scan]
interval = "1h"
realtime = $6
debounce = "${7:-50ms}"
EOF
}

# ------------------------------------------------------------------ helpers
# Machine load while measuring: 1-minute load average and whether a compiler is running.
load_now() {
  local la busy
  la=$(cut -d' ' -f1 /proc/loadavg)
  busy=0
  for n in rustc cargo cc1 cc1plus ld; do busy=$((busy + $(pgrep -c -x "$n" || true))); done
  echo "load ${la}, ${busy} compiler processes"
}
# CPU seconds (user+sys+irq) the whole machine has been busy so far (all cores).
busy_now() { awk -v hz="$(getconf CLK_TCK)" '/^cpu / { printf "%.2f", ($2 + $3 + $4 + $7 + $8 + $9) / hz; exit }' /proc/stat; }
other_cpu() {  # $1 busy before, $2 busy after, $3 our CPU-s, $4 wall s
  awk -v a="$1" -v b="$2" -v o="$3" -v w="$4" 'BEGIN { x = b - a - o; if (x < 0) x = 0;
    if (w < 0.5) print "window too short to sample other CPU use";
    else printf "other processes %.2f CPU-s in %.1f s (%.2f cores)", x, w, x / w }'
}
now() { date +%s.%N; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a - b }'; }
# CPU seconds (user+sys) a process has used so far (fields 14, 15; the name has no spaces).
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
# Context switches of all its threads so far: how often it woke up.
switches_of() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { n += $2 } END { print n + 0 }'; }
# "VmRSS VmHWM RssAnon" in KiB.
mem_of() { awk '/^VmRSS:/ { r = $2 } /^VmHWM:/ { h = $2 } /^RssAnon:/ { a = $2 } END { print r, h, a }' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }

start_agent() {  # $1 = config, $2 = log; sets APID, READY_S (seconds to ready)
  local t0 i
  t0=$(now)
  "$DW" agent --config "$1" 2>"$2" &
  APID=$!
  for i in $(seq 1 $((READY_TIMEOUT * 10))); do
    if grep -q '^driftwatch agent ready' "$2"; then
      READY_S=$(minus "$(now)" "$t0")
      return 0
    fi
    kill -0 "$APID" 2>/dev/null || { tail -n 20 "$2" >&2; APID=; die "agent exited before ready (log: $2)"; }
    sleep 0.1
  done
  die "agent not ready within $READY_TIMEOUT s (log: $2)"
}
stop_agent() {
  if [ -n "$APID" ]; then
    kill -TERM "$APID" 2>/dev/null || true
    wait "$APID" 2>/dev/null || true
    APID=
  fi
}
# Waits until the agent used no CPU for a whole second (at most 120 s): the overflow of the
# kernel's inotify queue while the watches are being set up makes it scan again right after
# `ready` (see README). Sets SETTLE_S.
settle() {
  local t0 i a b
  t0=$(now)
  for i in $(seq 1 120); do
    a=$(cpu_of "$APID"); sleep 1; b=$(cpu_of "$APID")
    [ "$a" = "$b" ] && break
  done
  SETTLE_S=$(minus "$(now)" "$t0")
}
# "N full scans[, inotify queue overflowed at start]" from an agent log.
scans_of() {
  local n o=""
  n=$(grep -c 'scan finished' "$1" || true)
  grep -q 'real-time events lost' "$1" && o=", inotify queue overflow logged ($(sed -n 's/.*reason=\(.*\)/\1/p' "$1" | head -n1))"
  echo "$n full scan(s) since start$o"
}
# "files dirs" of the agent's last `scan finished` line.
scanned_of() { sed -n 's/.*scan finished.* files=\([0-9]*\) dirs=\([0-9]*\).*/\1 \2/p' "$1" | tail -n1; }

ROWS=()   # markdown table rows
row() { ROWS+=("| $1 | \`$2\` | $3 | $4 | $5 |"); }
CMDS=()   # full command lines for the report
NF=$(find "$TREE" -type f | wc -l)
ND=$(find "$TREE" -type d | wc -l)
log "tree $TREE: $NF files, $ND dirs"
warm() { find "$1" -printf '%s %T@\n' >/dev/null; }

# ------------------------------------------------------------------ 1. re-scan with the stat cache
if want rescan; then
  log "re-scan: first scan (hashes everything), then hyperfine"
  S=$WORK/state-scan; C=$WORK/scan.toml
  write_config "$C" big "$TREE" "$WORK/big.manifest.json" "$S" false
  warm "$TREE"
  t=$(now)
  rc=0; "$DW" scan --config "$C" --format json >"$WORK/scan1.json" 2>"$WORK/scan1.err" || rc=$?
  FIRST_S=$(minus "$(now)" "$t")
  [ "$rc" = 0 ] || die "first scan exited $rc (expected 0 on the unchanged tree): $(head -3 "$WORK/scan1.err")"
  rc=0; "$DW" scan --config "$C" --format json >"$WORK/scan2.json" 2>"$WORK/scan2.err" || rc=$?
  [ "$rc" = 0 ] || die "second scan exited $rc: $(head -3 "$WORK/scan2.err")"
  EV2=$(python3 -c 'import json,sys; print(sum(len(t["events"]) for t in json.load(open(sys.argv[1]))))' "$WORK/scan2.json")
  [ "$EV2" = 0 ] || die "the re-scan of the unchanged tree reported $EV2 events (expected 0)"
  SNAP=$(mib "$(du -k "$S/trees/big/snapshot.bin" 2>/dev/null | cut -f1 || echo 0)")
  MAN=$(mib "$(du -k "$WORK/big.manifest.json" | cut -f1)")
  warm "$TREE"
  LB=$(load_now); B0=$(busy_now); W0=$(now)
  hyperfine --style basic -N --warmup 1 --runs "$RUNS" --export-json "$WORK/rescan.json" \
    --command-name "driftwatch scan" "$DW scan --config $C --format json" \
    --command-name "find -printf" "find $TREE -type f -printf '%s %T@\n'" >"$WORK/rescan.log" 2>&1 ||
    { cat "$WORK/rescan.log" >&2; die "hyperfine failed"; }
  B1=$(busy_now); W1=$(now); LA=$(load_now)
  cat "$WORK/rescan.log" >&2
  # median, mean, stddev, user+sys mean, and the CPU hyperfine accounts for all runs
  read -r SC_MED SC_MEAN SC_SD SC_CPU F_MED F_MEAN F_SD F_CPU OURS < <(python3 - "$WORK/rescan.json" "$RUNS" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]; n = int(sys.argv[2]) + 1
s, f = r[0], r[1]
ours = (s["user"] + s["system"] + f["user"] + f["system"]) * n
print(*("%.3f" % x for x in (s["median"], s["mean"], s["stddev"], s["user"] + s["system"],
                             f["median"], f["mean"], f["stddev"], f["user"] + f["system"], ours)))
PY
)
  # the scan's own figure (walk + judgement, without process start, state load, manifest parse, state save)
  for i in 1 2 3; do "$DW" scan --config "$C" --format json >"$WORK/scan-in.json" 2>/dev/null || true; done
  IN_S=$(python3 -c 'import json,sys; print("%.3f" % json.load(open(sys.argv[1]))[0]["scanned"]["seconds"])' "$WORK/scan-in.json")
  RATIO=$(awk -v a="$SC_MED" -v b="$F_MED" 'BEGIN { printf "%.2f", a / b }')
  VERDICT=$(awk -v r="$RATIO" 'BEGIN { print (r <= 1.5) ? "met" : "NOT met" }')
  MACH="before: $LB; after: $LA; $(other_cpu "$B0" "$B1" "$OURS" "$(minus "$W1" "$W0")")"
  row "re-scan of the unchanged tree, stat cache ($NF files, $ND dirs)" "driftwatch scan --config scan.toml --format json" \
      "**${SC_MED} s** median (mean $SC_MEAN ± $SC_SD s, CPU $SC_CPU s/run); **${RATIO}×** the floor. In-process scan (walk + judgement, \`scanned.seconds\`) $IN_S s (the rest: start, state load ($SNAP snapshot.bin), manifest read and hashed to see it is the one in force ($MAN), state save)" \
      "≤ 1.5× floor: $VERDICT" "$MACH"
  row "metadata floor (same hyperfine run)" "find \$D -type f -printf '%s %T@\\n'" \
      "**${F_MED} s** median (mean $F_MEAN ± $F_SD s, CPU $F_CPU s/run)" "-" "(same run)"
  row "first scan (fresh state: hashes everything; once, informational)" "driftwatch scan --config scan.toml --format json" \
      "$FIRST_S s" "-" "$LB"
  CMDS+=("# 1. re-scan (scan.toml: realtime = false, state_dir fresh; two untimed scans first)"
         "hyperfine -N --warmup 1 --runs $RUNS 'driftwatch scan --config scan.toml --format json' \"find $TREE -type f -printf '%s %T@\\n'\"")
fi

# ------------------------------------------------------------------ 2. memory per path (+ 4. idle CPU)
IDLE_DONE=0
if want rss || want idle; then
  for rt in false true; do
    log "memory: realtime = $rt, empty tree"
    write_config "$WORK/empty-$rt.toml" empty "$WORK/empty" "$WORK/empty.manifest.json" "$WORK/state-empty-$rt" "$rt"
    start_agent "$WORK/empty-$rt.toml" "$WORK/empty-$rt.log"
    settle
    read -r E_RSS E_HWM E_ANON < <(mem_of "$APID")
    stop_agent
    echo "empty tree: VmRSS $E_RSS KiB, VmHWM $E_HWM KiB, RssAnon $E_ANON KiB" >&2
    C=$WORK/big-$rt.toml
    write_config "$C" big "$TREE" "$WORK/big.manifest.json" "$WORK/state-big-$rt" "$rt"
    for start in first restart; do
      log "memory: realtime = $rt, $NF files, $start start"
      warm "$TREE"
      LB=$(load_now)
      start_agent "$C" "$WORK/big-$rt-$start.log"
      settle
      read -r RSS HWM ANON < <(mem_of "$APID")
      SCANS=$(scans_of "$WORK/big-$rt-$start.log")
      LA=$(load_now)
      read -r F D < <(scanned_of "$WORK/big-$rt-$start.log")
      [ -n "${F:-}" ] || die "no 'scan finished' line in $WORK/big-$rt-$start.log"
      P=$((F + D))
      BPP=$(awk -v a="$RSS" -v b="$E_RSS" -v p="$P" 'BEGIN { printf "%.0f", (a - b) * 1024 / p }')
      BPP_ANON=$(awk -v a="$ANON" -v b="$E_ANON" -v p="$P" 'BEGIN { printf "%.0f", (a - b) * 1024 / p }')
      VERDICT=$(awk -v b="$BPP" 'BEGIN { print (b <= 200) ? "met" : "NOT met" }')
      echo "VmRSS $RSS KiB, VmHWM $HWM KiB, RssAnon $ANON KiB, $P paths: $BPP bytes/path" >&2
      if [ $start = first ]; then what="first start (fresh state: first scan hashes everything)"; else what="restart (state loaded, stat cache)"; fi
      row "agent RSS per path, realtime = $rt, $what" "driftwatch agent --config big-$rt.toml" \
          "**$BPP bytes/path** (VmRSS $(mib "$RSS") − $(mib "$E_RSS") on an empty tree, over $P paths = $F files + $D dirs; RssAnon alone: $BPP_ANON bytes/path; peak VmHWM $(mib "$HWM"); ready after $READY_S s, read once idle, $SETTLE_S s later: $SCANS)" \
          "≤ 200 bytes/path: $VERDICT" "before: $LB; at reading: $LA"
      if [ "$rt" = true ] && [ "$start" = restart ] && want idle && [ "$IDLE_SECS" -gt 0 ]; then
        log "idle CPU: $IDLE_SECS s, nothing changing"
        LB=$(load_now)
        C0=$(cpu_of "$APID"); X0=$(switches_of "$APID"); B0=$(busy_now); W0=$(now)
        sleep "$IDLE_SECS"
        C1=$(cpu_of "$APID"); X1=$(switches_of "$APID"); B1=$(busy_now); W1=$(now)
        LA=$(load_now)
        CPU=$(minus "$C1" "$C0"); WALL=$(minus "$W1" "$W0")
        PCT=$(awk -v c="$CPU" -v w="$WALL" 'BEGIN { printf "%.3f", c * 100 / w }')
        WAKE=$(awk -v a="$X0" -v b="$X1" -v w="$WALL" 'BEGIN { printf "%.1f", (b - a) / w }')
        VERDICT=$(awk -v c="$CPU" -v w="$WALL" 'BEGIN { print (c / w < 0.001) ? "met (< 0.1 % of a core)" : "NOT met" }')
        row "idle agent CPU, realtime = true, $P paths, ${IDLE_SECS} s with nothing changing" "driftwatch agent --config big-true.toml" \
            "**$CPU CPU-s = $PCT %** of one core over $WALL s (utime+stime, 10 ms ticks); $WAKE context switches/s (all threads)" \
            "no CPU: $VERDICT" "before: $LB; after: $LA; $(other_cpu "$B0" "$B1" "$CPU" "$WALL")"
        IDLE_DONE=1
      fi
      stop_agent
    done
  done
  CMDS+=("# 2. memory (big-\$rt.toml / empty-\$rt.toml: realtime = false | true; VmRSS read after 'agent ready', once the agent used no CPU for 1 s)"
         "driftwatch agent --config big-false.toml   # then again on the same state dir (restart); same for big-true.toml"
         "driftwatch agent --config empty-false.toml  # baseline: an empty tree with its signed (empty) manifest")
  [ "$IDLE_DONE" = 1 ] && CMDS+=("# 4. idle: utime+stime of the restarted big-true.toml agent, $IDLE_SECS s apart")
fi

# ------------------------------------------------------------------ 3. real-time latency
# writer: N files into DIR, one every GAP ms; prints "relpath<TAB>close time" per write
cat >"$WORK/writer.py" <<'PY'
import os, sys, time
root, sub, n, gap = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]) / 1000
body = b"<?php // written by the driftwatch agent benchmark\n" * 8
start = time.time() + 0.2
for i in range(n):
    d = start + i * gap - time.time()
    if d > 0:
        time.sleep(d)
    rel = f"{sub}/w{i:05d}.txt" if sub else f"w{i:05d}.txt"
    with open(os.path.join(root, rel), "wb") as f:
        f.write(body)
    print(f"{rel}\t{time.time():.6f}", flush=True)
PY
# analysis: per written path, the first `drift ... path=P` line carrying the content written (the
# blake3 of the path's last event: a pass can catch a file between create and write, and report it
# empty first); prints one summary line
cat >"$WORK/latency.py" <<'PY'
import re, sys
from datetime import datetime
writes = dict(l.rstrip("\n").split("\t") for l in open(sys.argv[1]))
line = re.compile(r'^(\S+)\s+\w+\s+drift\s.*?\bpath=(\S+)(?:.*?\bblake3="?([0-9a-f]*))?')
events = {}
for l in open(sys.argv[2], errors="replace"):
    m = line.match(l)
    if m and m.group(2) in writes:
        t = datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
        events.setdefault(m.group(2), []).append((t, m.group(3) or ""))
lat = []
for p, evs in events.items():
    final = evs[-1][1]
    t = next(t for t, h in evs if h == final)
    lat.append((t - float(writes[p])) * 1000)
lat.sort()
def pct(q):
    return lat[max(0, -(-len(lat) * q // 100) - 1)] if lat else float("nan")
# engine passes: events logged less than 5 ms apart come from the same pass
times = sorted(t for evs in events.values() for t, _ in evs)
starts = [t for i, t in enumerate(times) if i == 0 or t - times[i - 1] > 0.005]
gaps = sorted(b - a for a, b in zip(starts, starts[1:]))
gap = gaps[len(gaps) // 2] * 1000 if gaps else float("nan")
print(len(writes), len(lat), "%.0f %.0f %.0f %.0f %.0f" % (pct(50), pct(90), pct(99), lat[-1] if lat else float("nan"), lat[0] if lat else float("nan")),
      sum(1 for e in events.values() if len(e) > 1), len(starts), "%.0f" % gap)
PY
latency_run() {  # $1 = label, $2 = config, $3 = root, $4 = subdir ('' = root), $5 = writes, $6 = gap ms, $7 = log tag
  local C=$2 LOGF=$WORK/$7.log
  start_agent "$C" "$LOGF"
  settle
  LB=$(load_now); C0=$(cpu_of "$APID"); B0=$(busy_now); W0=$(now)
  python3 "$WORK/writer.py" "$3" "$4" "$5" "$6" >"$WORK/$7.writes"
  # wait (up to 60 s) until every write has its event, or the log stops growing for 10 s
  local i seen last=-1 still=0
  for i in $(seq 1 600); do
    seen=$(grep -c ' drift ' "$LOGF" || true)
    [ "$seen" -ge "$5" ] && break
    if [ "$seen" = "$last" ]; then still=$((still + 1)); [ $still -ge 100 ] && break; else still=0; fi
    last=$seen
    sleep 0.1
  done
  C1=$(cpu_of "$APID"); B1=$(busy_now); W1=$(now); LA=$(load_now)
  stop_agent
  local n got p50 p90 p99 max min multi passes pgap verdict
  read -r n got p50 p90 p99 max min multi passes pgap < <(python3 "$WORK/latency.py" "$WORK/$7.writes" "$LOGF")
  echo "$1: $got/$n events; p50 $p50 ms, p90 $p90 ms, p99 $p99 ms, max $max ms, min $min ms; $multi paths with >1 event; $passes passes, median $pgap ms apart" >&2
  verdict=$(awk -v p="$p99" -v g="$got" -v n="$n" 'BEGIN { print (g == n && p < 1000) ? "met" : "NOT met" }')
  [ "$got" = "$n" ] || verdict="$verdict ($((n - got)) writes never reported)"
  row "$1" "python3 writer.py ROOT ${4:-.} $5 $6   # agent: $(basename "$C")" \
      "**p50 $p50 ms, p99 $p99 ms**, p90 $p90 ms, max $max ms, min $min ms; $got/$n writes reported in $passes engine passes (median $pgap ms apart)$([ "$multi" -gt 0 ] && echo "; $multi caught between create and write (reported empty, then modified: timed to the second event)")" \
      "p99 < 1 s: $verdict" "before: $LB; after: $LA; agent CPU $(minus "$C1" "$C0") s; $(other_cpu "$B0" "$B1" "$(minus "$C1" "$C0")" "$(minus "$W1" "$W0")") (incl. the writer)"
}
if want latency; then
  log "real time: $LAT_FILES-file tree, $WRITES writes $WRITE_GAP_MS ms apart, debounce $DEBOUNCE"
  R=$WORK/rt
  python3 - "$R" "$LAT_FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
os.makedirs(os.path.join(root, "incoming"))
for i in range(n):
    d = os.path.join(root, f"d{i // 100:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}.php"), "wb") as f:
        f.write(b"<?php echo %d;\n" % i * (1 + i % 50))
PY
  sign_manifest "$R" rt "$WORK/rt.manifest.json"
  write_config "$WORK/rt.toml" rt "$R" "$WORK/rt.manifest.json" "$WORK/state-rt" true "$DEBOUNCE"
  latency_run "write → spooled event, $LAT_FILES-file tree, $WRITES new files $WRITE_GAP_MS ms apart, debounce $DEBOUNCE" \
    "$WORK/rt.toml" "$R" incoming "$WRITES" "$WRITE_GAP_MS" rt
  CMDS+=("# 3. real time (rt.toml: realtime = true, debounce = \"$DEBOUNCE\"; latency = agent's 'drift ... path=' log time - close() time)"
         "driftwatch agent --config rt.toml & python3 writer.py $R incoming $WRITES $WRITE_GAP_MS")
  if [ "$BIG_WRITES" -gt 0 ]; then
    log "real time on a copy of the big tree: $BIG_WRITES writes $BIG_GAP_MS ms apart"
    # a real copy: hard links (cp -al) would change the link count and ctime of every corpus file
    if cp -a "$TREE" "$WORK/bigcopy" 2>"$WORK/cp.err"; then
      write_config "$WORK/bigcopy.toml" big "$WORK/bigcopy" "$WORK/big.manifest.json" "$WORK/state-bigcopy" true "$DEBOUNCE"
      latency_run "write → spooled event, $NF-file tree (a copy), $BIG_WRITES new files $BIG_GAP_MS ms apart, debounce $DEBOUNCE" \
        "$WORK/bigcopy.toml" "$WORK/bigcopy" "" "$BIG_WRITES" "$BIG_GAP_MS" bigcopy
      CMDS+=("cp -a $TREE bigcopy; driftwatch agent --config bigcopy.toml & python3 writer.py bigcopy '' $BIG_WRITES $BIG_GAP_MS")
    else
      echo "cp -a failed ($(head -1 "$WORK/cp.err")): skipping the big-tree latency" >&2
    fi
  fi
fi

# ------------------------------------------------------------------ report
{
  echo "## driftwatch agent benchmark ($(date -u +%FT%TZ), $(nproc) cores, $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo '+uncommitted'), SCALE=$SCALE)"
  echo
  echo "Tree: \`$TREE\` ($NF files, $ND dirs). Binary: \`$DW\`."
  echo
  echo "| what | command | result | target | machine while measuring |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "Commands (configs: \`host\`, \`state_dir\`, one \`[[tree]]\` with its signed manifest, \`[trust] release_keys\`, \`[scan] interval = \"1h\"\`, no \`[collector]\`: events stay in the spool):"
  echo
  echo '```sh'
  printf '%s\n' "${CMDS[@]}"
  echo '```'
} | tee "$OUT"
echo "report written to $OUT" >&2
