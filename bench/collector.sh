#!/usr/bin/env bash
# driftwatch collector benchmark (DESIGN §11): ingestion rate and KPI query time.
#
# Not a test: run it by hand on a quiet machine (see bench/README.md, "Collector").
#
#  1. Ingestion: a real `driftwatch collector` (SQLite in a temp dir, listen 127.0.0.1:0),
#     one agent token per simulated host, then `loadgen ingest` posts EVENTS events as batches
#     of BATCH from HOSTS hosts with CONCURRENCY requests in flight over keep-alive connections,
#     and checks through GET /api/v1/hosts (reader token) that every event was stored
#     (each host's last_seq = events sent, missing_seqs = 0, replays = 0).
#     Target: >= 20,000 events/s on 2 cores.
#  2. KPI: `loadgen seed` writes KPI_HOSTS hosts x KPI_DAYS days of history straight into a
#     SQLite file through the library; a collector is started on (a copy of) it and curl times
#     GET /api/v1/kpi?from=<KPI_DAYS days ago>&to=<yesterday>&by=day, fleet rows and
#     &group=host, each as the first call (which seals the days into chained KPI rows) and a
#     second call (sealed). Target: < 1 s.
#     With KPI_DAILY=1 (default) a third copy is sealed through the day before yesterday
#     in-process first (what a daily dashboard view or a /metrics scrape does), so its first
#     call only seals yesterday: the steady-state cost of a first call of the day.
#
# Knobs (env):
#   WHAT=all|ingest|kpi   which part(s) to run (default all)
#   HOSTS (200) EVENTS (200000) BATCH (500) CONCURRENCY (8)
#   KPI_HOSTS (1000) KPI_DAYS (365) KPI_EVENTS_PER_DAY (2, mean per host-day)
#   KPI_DAILY (1)        also time the "first call of the day" case
#   DRIFTWATCH, LOADGEN  use these binaries instead of `cargo build --release`
#   OUT                  markdown report (default bench/collector-results.md)
#   KEEP_WORK=1          keep the temp dir (databases, configs, collector logs, KPI answers)
#
# Smoke test (about a minute once built):
#   HOSTS=20 EVENTS=20000 KPI_HOSTS=50 KPI_DAYS=30 OUT=/tmp/collector-smoke.md bench/collector.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

WHAT=${WHAT:-all}
HOSTS=${HOSTS:-200}
EVENTS=${EVENTS:-200000}
BATCH=${BATCH:-500}
CONCURRENCY=${CONCURRENCY:-8}
KPI_HOSTS=${KPI_HOSTS:-1000}
KPI_DAYS=${KPI_DAYS:-365}
KPI_EVENTS_PER_DAY=${KPI_EVENTS_PER_DAY:-2}
KPI_DAILY=${KPI_DAILY:-1}
OUT=${OUT:-$HERE/collector-results.md}
DW=${DRIFTWATCH:-}
LG=${LOADGEN:-}

case $WHAT in all|ingest|kpi) ;; *) echo "collector.sh: WHAT must be all, ingest or kpi" >&2; exit 2 ;; esac
for v in HOSTS EVENTS BATCH CONCURRENCY KPI_HOSTS KPI_DAYS KPI_EVENTS_PER_DAY; do
  [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || { echo "collector.sh: $v must be a positive integer, not '${!v}'" >&2; exit 2; }
done
for t in curl awk; do command -v $t >/dev/null || { echo "collector.sh: needs $t" >&2; exit 2; }; done

WORK=$(mktemp -d /tmp/driftwatch-collector-bench.XXXXXX)
CPID=
cleanup() {
  stop_collector
  if [ "${KEEP_WORK:-0}" = 1 ]; then echo "work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
T0=$(date +%s)
log() { printf '\n== %s  (%ss)\n' "$*" "$(( $(date +%s) - T0 ))" >&2; }
die() { echo "collector.sh: $*" >&2; exit 1; }

# ------------------------------------------------------------------ build
if [ -z "$DW" ] || [ -z "$LG" ]; then
  log "cargo build --release --bin driftwatch --example loadgen"
  (cd "$REPO" && cargo build --release --bin driftwatch --example loadgen)
fi
DW=${DW:-$REPO/target/release/driftwatch}
LG=${LG:-$REPO/target/release/examples/loadgen}
[ -x "$DW" ] || die "$DW: not executable"
[ -x "$LG" ] || die "$LG: not executable"

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
# "other processes: X CPU-s in Y s": machine CPU not used by the collector (nor, for ingestion,
# the load generator); for KPI calls it includes curl.
other_cpu() {  # $1 busy before, $2 busy after, $3 our CPU-s, $4 wall s
  # /proc/stat ticks are 10 ms and the sampling itself costs a few: short windows say nothing.
  awk -v a="$1" -v b="$2" -v o="$3" -v w="$4" 'BEGIN { x = b - a - o; if (x < 0) x = 0;
    if (w < 0.5) print "window too short to sample other CPU use";
    else printf "other processes %.2f CPU-s in %.2f s (%.2f cores)", x, w, x / w }'
}

# CPU seconds (user+sys) a process has used so far.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }

# Peak resident memory of a process so far (VmHWM), in MiB.
rss_of() { awk '/^VmHWM:/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$1/status"; }

write_config() {  # $1 = config path, $2 = db path
  cat >"$1" <<EOF
listen = "127.0.0.1:0"
storage = "sqlite://$2"
max_body = "64MiB"
silent_after = "2d"
[trust]
require_signatures = false
[limits]
requests_per_minute = 1000000
request_timeout = "300s"
EOF
}

start_collector() {  # $1 = config, $2 = log; sets CPID and URL
  DRIFTWATCH_LOG=warn "$DW" collector --config "$1" 2>"$2" &
  CPID=$!
  local i
  for i in $(seq 1 300); do
    URL=$(sed -n 's/^driftwatch collector listening on \(http:[^ ]*\).*/\1/p' "$2" | head -n1)
    [ -n "$URL" ] && return 0
    kill -0 "$CPID" 2>/dev/null || { cat "$2" >&2; die "collector exited"; }
    sleep 0.1
  done
  die "collector did not report its address within 30 s (log: $2)"
}

stop_collector() {
  if [ -n "$CPID" ]; then
    kill -TERM "$CPID" 2>/dev/null || true
    wait "$CPID" 2>/dev/null || true
    CPID=
  fi
}

token() {  # $1 = config, $2.. = token create args; prints the secret
  "$DW" token create --config "$1" "${@:2}" 2>/dev/null
}

ROWS=()   # markdown table rows
row() { ROWS+=("| $1 | $2 | $3 | $4 |"); }

# ------------------------------------------------------------------ 1. ingestion
ING_CMD=
if [ "$WHAT" != kpi ]; then
  log "ingestion: $HOSTS hosts, $EVENTS events, batches of $BATCH, concurrency $CONCURRENCY"
  D=$WORK/ingest; mkdir -p "$D"
  write_config "$D/collector.toml" "$D/collector.db"
  : >"$D/tokens.txt"
  for i in $(seq 0 $((HOSTS - 1))); do
    h=$(printf 'host-%04d' "$i")
    echo "$h $(token "$D/collector.toml" --role agent --host "$h")" >>"$D/tokens.txt"
  done
  token "$D/collector.toml" --role reader --label bench >"$D/reader.txt"
  start_collector "$D/collector.toml" "$D/collector.log"
  echo "collector $URL (pid $CPID)" >&2
  LOAD_BEFORE=$(load_now)
  CPU0=$(cpu_of "$CPID"); BUSY0=$(busy_now); W0=$(date +%s.%N)
  ING_CMD="loadgen ingest --url \$URL --tokens tokens.txt --reader-token-file reader.txt --events $EVENTS --batch $BATCH --concurrency $CONCURRENCY"
  set +e
  RES=$("$LG" ingest --url "$URL" --tokens "$D/tokens.txt" --reader-token-file "$D/reader.txt" \
          --events "$EVENTS" --batch "$BATCH" --concurrency "$CONCURRENCY")
  RC=$?
  set -e
  CPU1=$(cpu_of "$CPID"); BUSY1=$(busy_now); W1=$(date +%s.%N)
  LOAD_AFTER=$(load_now)
  RSS=$(rss_of "$CPID")
  stop_collector
  echo "$RES" >&2
  get() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$RES"; }
  RATE=$(get events_per_s); SECS=$(get seconds); STORED=$(get stored); VER=$(get verified)
  [ -n "$RATE" ] || die "loadgen ingest failed (exit $RC)"
  CPU=$(awk -v a="$CPU0" -v b="$CPU1" 'BEGIN { printf "%.2f", b - a }')
  OURS=$(awk -v c="$CPU" -v l="$(get loadgen_cpu_s)" 'BEGIN { printf "%.2f", c + l }')
  OTHER=$(other_cpu "$BUSY0" "$BUSY1" "$OURS" "$(awk -v a="$W0" -v b="$W1" 'BEGIN { print b - a }')")
  US_PER_EV=$(awk -v c="$CPU" -v n="$STORED" 'BEGIN { if (n > 0) printf "%.1f", c * 1e6 / n; else print "-" }')
  VERDICT=$(awk -v r="$RATE" 'BEGIN { print (r >= 20000) ? "met" : "NOT met" }')
  [ "$RC" = 0 ] && [ "$VER" = ok ] || VERDICT="FAILED (exit $RC, verified=$VER)"
  DBSIZE=$(du -sh "$D" | cut -f1)
  row "ingestion: $STORED events, $HOSTS hosts, batch $BATCH, concurrency $CONCURRENCY" \
      "**$RATE events/s** ($SECS s; batch p50 $(get p50_ms) ms, p99 $(get p99_ms) ms; collector CPU $CPU s = $US_PER_EV µs/event, peak RSS $RSS; loadgen CPU $(get loadgen_cpu_s) s incl. building the bodies; store $DBSIZE)" \
      "≥ 20,000 events/s: $VERDICT; stored = sent: $VER" "before: $LOAD_BEFORE; after: $LOAD_AFTER; $OTHER"
fi

# ------------------------------------------------------------------ 2. KPI query
SEED_CMD=
if [ "$WHAT" != ingest ]; then
  D=$WORK/kpi; mkdir -p "$D"
  TO=$(date -u -d yesterday +%F)
  FROM=$(date -u -d "$TO - $((KPI_DAYS - 1)) days" +%F)
  BEFORE_TO=$(date -u -d "$TO - 1 day" +%F)
  log "KPI: seeding $KPI_HOSTS hosts x $KPI_DAYS days ($FROM .. $TO)"
  SEED_CMD="loadgen seed --db kpi.db --hosts $KPI_HOSTS --days $KPI_DAYS --end $TO --events-per-day $KPI_EVENTS_PER_DAY"
  SEED=$("$LG" seed --db "$D/seed.db" --hosts "$KPI_HOSTS" --days "$KPI_DAYS" --end "$TO" --events-per-day "$KPI_EVENTS_PER_DAY")
  echo "$SEED" >&2
  SEED_SIZE=$(du -h "$D/seed.db" | cut -f1)
  row "seed (library, no HTTP)" "$(sed -n 's/.*host_days_reported=\([0-9]*\).*events=\([0-9]*\) seconds=\([0-9.]*\).*/\1 host-days, \2 events in \3 s/p' <<<"$SEED"), $SEED_SIZE" "-" "-"

  # Time one KPI request; prints "seconds bytes rows"
  kpi_call() {  # $1 = query string, $2 = answer file
    local w code secs size
    w=$(curl -sS -o "$2" -w '%{http_code} %{time_total} %{size_download}' -H "Authorization: Bearer $READER" "$URL/api/v1/kpi?$1")
    read -r code secs size <<<"$w"
    [ "$code" = 200 ] || { head -c 300 "$2" >&2; die "GET /api/v1/kpi?$1: HTTP $code"; }
    local rows
    rows=$(grep -o '"period"' "$2" | wc -l)
    echo "$secs $size $rows"
  }
  kpi_rows() {  # $1 = label, $2 = db copy, $3 = query, $4 = what the first call seals
    write_config "$D/$2.toml" "$D/$2.db"
    READER=$(token "$D/$2.toml" --role reader --label bench)
    start_collector "$D/$2.toml" "$D/$2.log"
    local n la r1 r2 s1 s2 verdict
    for n in 1 2; do
      la=$(load_now)
      c0=$(cpu_of "$CPID"); b0=$(busy_now)
      r1=$(kpi_call "$3" "$D/$2.answer$n.json")
      c1=$(cpu_of "$CPID"); b1=$(busy_now)
      read -r s1 size rows <<<"$r1"
      la="$la; $(other_cpu "$b0" "$b1" "$(awk -v a="$c0" -v b="$c1" 'BEGIN { print b - a }')" "$s1")"
      verdict=$(awk -v s="$s1" 'BEGIN { print (s < 1.0) ? "met" : "NOT met" }')
      if [ $n = 1 ]; then what="first call ($4)"; else what="second call (sealed)"; fi
      row "KPI $1, $what" "**$(printf '%.3f' "$s1") s** ($rows rows, $(awk -v b="$size" 'BEGIN { printf "%.1f MiB", b / 1048576 }') JSON)" "< 1 s: $verdict" "$la"
      echo "KPI $1 call $n: $s1 s, $rows rows, $size bytes" >&2
    done
    echo "collector peak RSS after both calls: $(rss_of "$CPID")" >&2
    row "KPI $1: collector peak RSS" "$(rss_of "$CPID")" "-" "-"
    stop_collector
  }
  Q_FLEET="from=$FROM&to=$TO&by=day"
  Q_HOST="from=$FROM&to=$TO&by=day&group=host"
  cp "$D/seed.db" "$D/fleet.db"
  cp "$D/seed.db" "$D/host.db"
  if [ "$KPI_DAILY" = 1 ]; then cp "$D/seed.db" "$D/daily.db"; fi
  log "KPI: fleet rows"
  kpi_rows "fleet, by day" fleet "$Q_FLEET" "seals $KPI_DAYS days"
  log "KPI: per-host rows"
  kpi_rows "group=host, by day" host "$Q_HOST" "seals $KPI_DAYS days"
  if [ "$KPI_DAILY" = 1 ]; then
    log "KPI: first call of the day (seal through $BEFORE_TO in-process first)"
    SEAL=$("$LG" seal --db "$D/daily.db" --through "$BEFORE_TO")
    echo "$SEAL" >&2
    row "in-process seal of $((KPI_DAYS - 1)) days (\`loadgen seal\`)" "$(sed -n 's/.*seconds=\([0-9.]*\).*/\1 s/p' <<<"$SEAL")" "-" "$(load_now)"
    kpi_rows "group=host, by day, days before yesterday already sealed" daily "$Q_HOST" "seals yesterday only"
  fi
fi

# ------------------------------------------------------------------ report
{
  echo "## driftwatch collector benchmark ($(date -u +%FT%TZ), $(nproc) cores, $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet 2>/dev/null || echo '+dirty'))"
  echo
  echo "| what | result | target | machine while measuring |"
  echo "|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "Commands (\`loadgen\` = \`target/release/examples/loadgen\`):"
  echo
  echo '```sh'
  [ -n "$ING_CMD" ] && echo "$ING_CMD"
  if [ -n "$SEED_CMD" ]; then
    echo "$SEED_CMD"
    echo "curl -w '%{time_total}' -H 'Authorization: Bearer \$READER' \"\$URL/api/v1/kpi?$Q_FLEET\""
    echo "curl -w '%{time_total}' -H 'Authorization: Bearer \$READER' \"\$URL/api/v1/kpi?$Q_HOST\""
    [ "$KPI_DAILY" = 1 ] && echo "loadgen seal --db daily.db --through $BEFORE_TO   # then the group=host call again"
  fi
  echo '```'
} | tee "$OUT"
echo "report written to $OUT" >&2
