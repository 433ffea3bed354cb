#!/usr/bin/env bash
# driftwatch benchmark: the core hashing path against its peers, in ONE run.
#
# Not a test: run it by hand (see bench/README.md). DESIGN §11 sets the targets
# as ratios to peers measured in the same run, because these machines drift by
# up to 2x between runs; a driftwatch figure alone means nothing.
#
# Per corpus (bench/make-corpora.sh builds them), with a warm page cache and
# hyperfine medians, it times:
#   driftwatch manifest build   and   driftwatch check (against that manifest)
#   b3sum (one process, own threads) and b3sum-xP (P single-threaded processes)
#   sha256sum, the metadata floor (find -printf), the read floor (perl sysread)
#   aide --init / --check with a sha256-only rule (unless SKIP_AIDE=1)
# and prints a markdown table per corpus plus the §11 ratios; the same goes to $OUT.
#
# Knobs (env):
#   SCALE=full|small   small = tiny corpora (2,000 files, 3 x 8 MiB) for a smoke test
#   CORPORA            corpus dir (default /tmp/driftwatch-corpora, -small for SCALE=small)
#   CORPUS_LIST        default "many-small few-large source"
#   DRIFTWATCH=path    use this binary instead of `cargo build --release`
#   RUNS (5)           timed runs per cheap tool, after 1 warm-up run
#   AIDE_RUNS (1)      timed runs per AIDE phase (no warm-up: AIDE is slow)
#   SKIP_AIDE=1        do not run AIDE (nor install it)
#   P (nproc)          parallelism of the xargs pipelines and of AIDE's workers
#   XARGS_N (500)      files per xargs batch (capped, see xargs_n below)
#   OUT                markdown report (default bench/results.md)
#   KEEP_WORK=1        keep the temp dir with hyperfine JSON, scripts, manifests
#   WEBAPP_MIRROR      bare git dir of a web app to use as the `source` corpus
#   B3SUM_VERSION      b3sum version to `cargo install` if missing (default: latest)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

export SCALE=${SCALE:-full}
case $SCALE in
  full)  export CORPORA=${CORPORA:-/tmp/driftwatch-corpora} ;;
  small) export CORPORA=${CORPORA:-/tmp/driftwatch-corpora-small} ;;
  *) echo "run.sh: SCALE must be full or small, not '$SCALE'" >&2; exit 2 ;;
esac
export CORPUS_LIST=${CORPUS_LIST:-"many-small few-large source"}
RUNS=${RUNS:-5}
AIDE_RUNS=${AIDE_RUNS:-1}
SKIP_AIDE=${SKIP_AIDE:-0}
P=${P:-$(nproc)}
XARGS_N=${XARGS_N:-500}
OUT=${OUT:-$HERE/results.md}
DRIFTWATCH=${DRIFTWATCH:-}
B3SUM_VERSION=${B3SUM_VERSION:-}

# cargo install puts b3sum here; make sure a fresh install is found
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

WORK=$(mktemp -d /tmp/driftwatch-bench.XXXXXX)
cleanup() { if [ "${KEEP_WORK:-0}" = 1 ]; then echo "work dir kept: $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
mkdir -p "$WORK/raw" "$WORK/cmd" "$WORK/aide" "$WORK/dw"
T0=$(date +%s)

log() { printf '\n== %s  (%ss)\n' "$*" "$(( $(date +%s) - T0 ))" >&2; }
die() { echo "run.sh: $*" >&2; exit 2; }

# ------------------------------------------------------------------ setup
ensure_tools() {  # install missing peers; a no-op when everything is there
  local pkgs=()
  command -v hyperfine >/dev/null || pkgs+=(hyperfine)
  [ -x /usr/bin/time ]            || pkgs+=(time)       # peak RSS of each run
  command -v openssl >/dev/null   || pkgs+=(openssl)    # few-large content
  command -v perl >/dev/null      || pkgs+=(perl)       # read floor
  if [ "$SKIP_AIDE" != 1 ]; then command -v aide >/dev/null || pkgs+=(aide); fi
  if [ ${#pkgs[@]} -gt 0 ]; then
    log "apt-get install ${pkgs[*]}"
    # --no-install-recommends: aide recommends aide-common (cron jobs, mail
    # setup), which a benchmark does not need
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  fi
  if ! command -v b3sum >/dev/null; then
    log "cargo install b3sum"
    cargo install b3sum --locked ${B3SUM_VERSION:+--version "$B3SUM_VERSION"}
  fi
}

build_driftwatch() {  # sets DW
  if [ -n "$DRIFTWATCH" ]; then
    DW=$(realpath "$DRIFTWATCH")
  else
    log "cargo build --release"
    (cd "$REPO" && cargo build --release --quiet)
    DW="${CARGO_TARGET_DIR:-$REPO/target}/release/driftwatch"
  fi
  [ -x "$DW" ] || die "no driftwatch binary at $DW"
  # both benchmarked commands must exist (DESIGN §4); fail before any timing.
  # Grep the help for --root: a binary that ignores its arguments exits 0 too.
  "$DW" manifest build --help 2>&1 | grep -q -- --root && "$DW" check --help 2>&1 | grep -q -- --manifest ||
    die "$DW has no 'manifest build' / 'check' subcommand yet (set DRIFTWATCH= to another binary)"
}

# ------------------------------------------------------------------ helpers
warm() {  # pull a corpus into the page cache; the guest pages out idle pages
          # after ~60 s, so this runs right before every tool
  find "$1" -type f -print0 | xargs -0 -r -P"$P" -n "$XARGS_N" cat > /dev/null
}

xargs_n() {  # batch size: XARGS_N, but at least ~8 batches per worker, else a
             # corpus of 20 large files lands in one process and runs serially
             # (the same cap shared/bench/peers.sh used for the reference figures)
  local n=$(( $1 / (8 * P) ))
  [ "$n" -lt 1 ] && n=1
  [ "$n" -gt "$XARGS_N" ] && n=$XARGS_N
  echo "$n"
}

mkscript() {  # mkscript NAME 'shell text' -> path of a bash script running it.
              # A script per command (as peers.sh does) keeps hyperfine's command
              # line simple (-N, no shell quoting) and adds pipefail, so a failing
              # stage of a pipeline fails the run instead of being timed.
  local f="$WORK/cmd/$1.sh"
  printf '#!/bin/bash\nset -o pipefail\n%s\n' "$2" > "$f"
  echo "$f"
}

# bench CORPUS ID RUNS WARMUP SCRIPT [EXTRA_HYPERFINE_ARGS...]
# Times `bash SCRIPT` and appends one line to raw/index.tsv. A failing tool is
# recorded as failed and the run goes on: one broken peer must not throw away
# the half hour already measured.
bench() {
  local c=$1 id=$2 runs=$3 warmup=$4 script=$5; shift 5
  local raw="$WORK/raw/$c.$id" status=ok
  warm "$CORPORA/$c"
  echo "   $c / $id" >&2
  # GNU time around the script: hyperfine reports CPU but not memory
  if ! hyperfine --style basic -N --runs "$runs" --warmup "$warmup" "$@" \
        --export-json "$raw.json" --command-name "$id" \
        "/usr/bin/time -f %M -a -o $raw.rss bash $script" > "$raw.log" 2>&1; then
    status=failed
    echo "   FAILED (see below); continuing" >&2
    tail -n 5 "$raw.log" | sed 's/^/     /' >&2
  fi
  printf '%s\t%s\t%s\t%s\n' "$c" "$id" "$status" "$(tail -n +3 "$script")" >> "$WORK/raw/index.tsv"
}

aide_conf() {  # aide_conf CORPUS -> config path. Copied from shared/bench/peers.sh
               # (variant aide-sha256): 0.18 syntax, sha256 only, P workers
  local c=$1 conf="$WORK/aide/$1.conf"
  cat > "$conf" <<EOF
# AIDE $(aide --version 2>&1 | head -1) config for benchmark (0.18 syntax)
database_in=file:$WORK/aide/$c.db
database_out=file:$WORK/aide/$c.db.new
gzip_dbout=no
report_url=stdout
log_level=warning
# default is 1 worker; use all cores like the xargs -P peers
num_workers=$P
FIM = sha256
$CORPORA/$c FIM
EOF
  aide --config-check -c "$conf" >/dev/null
  echo "$conf"
}

# ------------------------------------------------------------------ per corpus
bench_corpus() {
  local c=$1 D="$CORPORA/$1"
  [ -d "$D" ] || die "missing corpus $D"
  local nf nb nd n fx
  read -r nf nb < <(find "$D" -type f -printf '%s\n' | awk '{n++; s+=$1} END {printf "%d %.0f\n", n, s}')
  nd=$(find "$D" -type d | wc -l)
  printf '%s\t%s\t%s\t%s\n' "$c" "$nf" "$nb" "$nd" >> "$WORK/raw/corpora.tsv"
  n=$(xargs_n "$nf")
  fx="find $D -type f -print0 | xargs -0"
  log "corpus $c: $nf files, $nb bytes, $nd dirs (xargs -P$P -n $n)"

  # floors and hashers, then driftwatch right after its anchor (b3sum-xP),
  # so the ratios compare runs minutes apart at most
  # metadata floor; -type f as in shared/bench/peers.sh, whose figure (0.60 s on
  # many-small) is the §11 anchor
  bench "$c" stat  "$RUNS" 1 "$(mkscript "$c.stat" "find $D -type f -printf '%s %T@\n' > /dev/null")"
  # read floor: perl sysread with one reused 256 KiB buffer (GNU cat mmaps a
  # fresh buffer per file, which makes it slower than hashing on small files)
  printf '%s\n' 'my $b; for my $f (@ARGV) { open(my $h, "<:raw", $f) or next; 1 while sysread($h, $b, 262144); close $h }' > "$WORK/cmd/readfloor.pl"
  bench "$c" read  "$RUNS" 1 "$(mkscript "$c.read" "$fx -P$P -n $n perl $WORK/cmd/readfloor.pl")"
  bench "$c" b3sum "$RUNS" 1 "$(mkscript "$c.b3sum" "$fx b3sum > /dev/null")"
  bench "$c" b3sum-xP "$RUNS" 1 "$(mkscript "$c.b3sum-xP" "$fx -P$P -n $n b3sum --num-threads 1 > /dev/null")"
  bench "$c" dw-build "$RUNS" 1 \
    "$(mkscript "$c.dw-build" "$DW manifest build --root $D --release bench -o $WORK/dw/$c.bench.json")"

  # check needs a manifest: build it once, outside the tree (a manifest inside
  # the tree would itself be drift). Run check once untimed to learn its exit
  # code; hyperfine's -i (ignore failures) only if driftwatch reports drift.
  local manifest="$WORK/dw/$c.manifest.json" ignore=() rc=0
  "$DW" manifest build --root "$D" --release bench -o "$manifest" 2> "$WORK/dw/$c.build.err" ||
    die "driftwatch manifest build failed on $D: $(head -3 "$WORK/dw/$c.build.err")"
  [ -s "$manifest" ] || die "driftwatch manifest build wrote no manifest to $manifest"
  "$DW" check --root "$D" --manifest "$manifest" --format json > "$WORK/dw/$c.check.json" 2> "$WORK/dw/$c.check.err" || rc=$?
  echo "$rc" > "$WORK/dw/$c.check.rc"
  if [ "$rc" -ne 0 ]; then
    echo "   WARNING: driftwatch check on an unchanged tree exited $rc (expected 0):" >&2
    head -3 "$WORK/dw/$c.check.err" | sed 's/^/     /' >&2
    [ "$rc" -eq 1 ] && ignore=(-i)   # 1 = drift reported: still time it, flagged
  fi
  bench "$c" dw-check "$RUNS" 1 \
    "$(mkscript "$c.dw-check" "$DW check --root $D --manifest $manifest --format json > /dev/null")" "${ignore[@]}"

  bench "$c" sha256sum "$RUNS" 1 "$(mkscript "$c.sha256sum" "$fx -P$P -n $n sha256sum > /dev/null")"

  if [ "$SKIP_AIDE" != 1 ]; then
    local conf; conf=$(aide_conf "$c")
    bench "$c" aide-init "$AIDE_RUNS" 0 "$(mkscript "$c.aide-init" "aide --init -c $conf > /dev/null")"
    mv -f "$WORK/aide/$c.db.new" "$WORK/aide/$c.db"
    bench "$c" aide-check "$AIDE_RUNS" 0 "$(mkscript "$c.aide-check" "aide --check -c $conf > /dev/null")"
  fi
}

# ------------------------------------------------------------------ report
environment() {  # key=value lines for the report header
  ver() { "$@" 2>&1 | head -1; }
  echo "date=$(date -u +%FT%TZ)"
  echo "nproc=$(nproc)"
  echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "kernel=$(uname -r)"
  echo "fs=$(findmnt -no FSTYPE,SOURCE --target "$CORPORA" | tr -s ' ')"
  echo "driftwatch=$DW ($(ver "$DW" --version); git $(git -C "$REPO" rev-parse -q --verify --short HEAD || echo none)$(git -C "$REPO" diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ', uncommitted changes'))"
  echo "b3sum=$(ver b3sum --version)"
  echo "sha256sum=$(ver sha256sum --version)"
  echo "aide=$( [ "$SKIP_AIDE" = 1 ] && echo skipped || ver aide --version)"
  echo "hyperfine=$(ver hyperfine --version)"
  echo "params=SCALE=$SCALE RUNS=$RUNS AIDE_RUNS=$AIDE_RUNS P=$P XARGS_N=$XARGS_N SKIP_AIDE=$SKIP_AIDE CORPORA=$CORPORA"
  echo "elapsed=$(( $(date +%s) - T0 ))s"
}

report() {
  environment > "$WORK/raw/env.txt"
  mkdir -p "$(dirname "$OUT")"
  python3 - "$WORK" "$OUT" "$CORPORA" <<'PY'
import json, math, os, sys
work, out, corpora = sys.argv[1:4]
raw = os.path.join(work, "raw")
env = dict(l.rstrip("\n").split("=", 1) for l in open(f"{raw}/env.txt"))
corp = {}
for l in open(f"{raw}/corpora.tsv"):
    c, nf, nb, nd = l.rstrip("\n").split("\t")
    corp[c] = dict(files=int(nf), bytes=int(nb), dirs=int(nd))

LABEL = {
    "stat": "metadata floor (`find -printf`)",
    "read": "read floor (perl sysread, xargs -P)",
    "b3sum": "b3sum (one process, own threads)",
    "b3sum-xP": "b3sum-xP (xargs -P, 1 thread each)",
    "dw-build": "**driftwatch manifest build**",
    "dw-check": "**driftwatch check**",
    "sha256sum": "sha256sum (xargs -P)",
    "aide-init": "aide --init (sha256)",
    "aide-check": "aide --check (sha256)",
}
res = {}  # (corpus, id) -> dict
for l in open(f"{raw}/index.tsv"):
    c, tid, status, cmd = l.rstrip("\n").split("\t", 3)
    r = dict(status=status, cmd=cmd, median=math.nan)
    base = f"{raw}/{c}.{tid}"
    if status == "ok":
        j = json.load(open(base + ".json"))["results"][0]
        t = j["times"]
        r.update(median=j["median"], lo=min(t), hi=max(t), runs=len(t),
                 cpu=j["user"] + j["system"],
                 exit=" ".join(map(str, sorted(set(j.get("exit_codes") or [0])))))
        rss = [int(x) for x in open(base + ".rss").read().split() if x.isdigit()]
        r["rss"] = max(rss) / 1024 if rss else math.nan
    res[(c, tid)] = r

def med(c, tid):
    return res.get((c, tid), {}).get("median", math.nan)

def f(x, d=3):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{d}f}"

# DESIGN §11 targets, as ratios of medians from this run.
# (name, numerator, denominator, "<=" or ">=", target, corpora it applies to)
RATIOS = [
    ("manifest build ÷ b3sum-xP pipeline", "dw-build", "b3sum-xP", "<=", 1.0, None),
    ("check ÷ b3sum-xP pipeline", "dw-check", "b3sum-xP", "<=", 1.0, None),
    ("manifest build ÷ read floor", "dw-build", "read", "<=", 1.1, {"many-small"}),
    ("aide --init ÷ manifest build", "aide-init", "dw-build", ">=", 10.0, None),
    ("aide --check ÷ check", "aide-check", "dw-check", ">=", 25.0, None),
]

L = ["# driftwatch benchmark: core hashing path vs peers\n",
     f"Generated by `bench/run.sh` on {env['date']} in {env['elapsed']} ({env['params']}).",
     "Warm page cache (re-warmed before every tool); wall time is the median of the timed "
     "runs. Only the ratios are meaningful: the machines drift by up to 2× between runs.\n"]
if "SCALE=small" in env["params"]:
    L.append("**SCALE=small: a smoke test of the script. Process start-up dominates these timings, "
             "so the verdicts below mean nothing.**\n")
for k in ["nproc", "cpu", "kernel", "fs", "driftwatch", "b3sum", "sha256sum", "aide", "hyperfine"]:
    L.append(f"- **{k}**: {env[k]}")
L.append("")
for c, info in corp.items():
    L.append(f"## {c}\n")
    L.append(f"{info['files']:,} files, {info['dirs']:,} dirs, "
             f"{info['bytes'] / 2**20:,.1f} MiB (mean {info['bytes'] / max(info['files'], 1) / 1024:,.1f} KiB/file)\n")
    L.append("| tool | runs | wall s (median) | min–max s | CPU s | peak RSS MiB | files/s | MB/s | exit |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for tid in LABEL:
        r = res.get((c, tid))
        if r is None:
            continue
        if r["status"] != "ok":
            L.append(f"| {LABEL[tid]} | — | FAILED | | | | | | |")
            continue
        m = r["median"]
        L.append(f"| {LABEL[tid]} | {r['runs']} | {f(m)} | {f(r['lo'])}–{f(r['hi'])} | {f(r['cpu'], 2)} | "
                 f"{f(r['rss'], 1)} | {f(info['files'] / m, 0)} | {f(info['bytes'] / 1e6 / m, 0)} | {r['exit']} |")
    L.append("")
    L.append("| ratio (DESIGN §11) | value | target | verdict |")
    L.append("|---|---:|---|---|")
    for name, num, den, op, target, only in RATIOS:
        v = med(c, num) / med(c, den) if med(c, den) else math.nan
        applies = only is None or c in only
        if math.isnan(v):
            verdict = "n/a"
        elif not applies:
            verdict = "info (target is for small files)"
        else:
            ok = v <= target if op == "<=" else v >= target
            verdict = "**met**" if ok else "**MISSED**"
        L.append(f"| {name} | {f(v, 2)} | {'≤' if op == '<=' else '≥'} {target:g} | {verdict} |")
    rc_file = f"{work}/dw/{c}.check.rc"
    if os.path.exists(rc_file) and open(rc_file).read().strip() != "0":
        L.append(f"\n**Warning**: `driftwatch check` exited {open(rc_file).read().strip()} on the "
                 "unchanged tree (expected 0); its timing was taken with hyperfine `-i`.")
    try:  # sanity: did check see every file? (a walker that skips dotfiles would not)
        scanned = json.load(open(f"{work}/dw/{c}.check.json"))["scanned"]["files"]
        if scanned != info["files"]:
            L.append(f"\n**Warning**: `driftwatch check` scanned {scanned:,} files; `find` sees {info['files']:,}.")
    except Exception:
        pass
    L.append("")
L.append("## Commands\n")
L.append("`$D` is the corpus; each runs as a bash script with `set -o pipefail`.\n")
seen = set()
for (c, tid), r in res.items():
    if tid in seen:
        continue
    seen.add(tid)
    cmd = r["cmd"].replace(f"{corpora}/{c}", "$D").replace(work, "$WORK")
    L.append(f"- {tid} ({c}): `{cmd}`")
L.append("")
open(out, "w").write("\n".join(L))
print("\n".join(L))
PY
}

# ------------------------------------------------------------------ main
ensure_tools
build_driftwatch
log "corpora under $CORPORA (SCALE=$SCALE)"
bash "$HERE/make-corpora.sh"
: > "$WORK/raw/index.tsv"
: > "$WORK/raw/corpora.tsv"
for c in $CORPUS_LIST; do
  bench_corpus "$c"
done
report
log "report written to $OUT"
