#!/usr/bin/env bash
# Build the benchmark corpora for bench/run.sh under $CORPORA.
#
# Adapted from the project's shared benchmark material (shared/bench/make-corpora.sh,
# which produced the peer baselines in shared/reference/peers.md). The many-small
# and few-large generators are copied unchanged, so at SCALE=full the trees are
# byte-identical to the reference ones; the changes are:
#   - the third corpus is called `source` and defaults to a copy of the local
#     cargo registry sources (a real Rust source tree that is always at hand);
#     with WEBAPP_MIRROR set it is the OpenCart snapshot, like shared's `webapp`;
#   - SCALE=small builds tiny trees so that run.sh can be smoke-tested in seconds;
#   - the completion markers record the parameters a tree was built with, so a
#     tree built at another scale (or with another seed) is rebuilt, never reused.
#
#   many-small  ~200k small random files (100 B - 8 KiB, log-uniform), nested
#               like node_modules; deterministic (seeded)
#   few-large   20 files of 64-256 MiB each, AES-128-CTR keystream; deterministic
#   source      real source tree: $WEBAPP_MIRROR @ $WEBAPP_COMMIT when set, else the
#               crates under $CARGO_HOME/registry/src (sorted by name; complete
#               extractions only); file mtimes are kept as they are in the source
#
# Idempotent: a corpus whose marker $CORPORA/.<name>.complete holds the same
# parameters is skipped (markers live outside the trees so the trees hold only
# corpus files). Delete the marker to force a rebuild, e.g. to pick up new
# crates in the registry.
#
# Knobs (env): CORPORA, SCALE (full|small), SMALL_FILES, LARGE_FILES, LARGE_MIN_MIB,
#   LARGE_MAX_MIB, SEED (20240601), SOURCE_MAX_FILES (0 = all), CORPUS_LIST,
#   WEBAPP_MIRROR (bare git dir), WEBAPP_COMMIT (HEAD), CARGO_HOME
set -euo pipefail

SCALE=${SCALE:-full}
case $SCALE in
  full)  : "${SMALL_FILES:=200000}" "${LARGE_FILES:=20}" "${LARGE_MIN_MIB:=64}" \
           "${LARGE_MAX_MIB:=256}" "${SOURCE_MAX_FILES:=0}"
         : "${CORPORA:=/tmp/driftwatch-corpora}" ;;
  small) : "${SMALL_FILES:=2000}" "${LARGE_FILES:=3}" "${LARGE_MIN_MIB:=8}" \
           "${LARGE_MAX_MIB:=8}" "${SOURCE_MAX_FILES:=2000}"
         : "${CORPORA:=/tmp/driftwatch-corpora-small}" ;;
  *) echo "make-corpora: SCALE must be full or small, not '$SCALE'" >&2; exit 2 ;;
esac
SEED=${SEED:-20240601}
CORPUS_LIST=${CORPUS_LIST:-"many-small few-large source"}
WEBAPP_MIRROR=${WEBAPP_MIRROR:-}
WEBAPP_COMMIT=${WEBAPP_COMMIT:-HEAD}
REGISTRY_SRC=${REGISTRY_SRC:-${CARGO_HOME:-$HOME/.cargo}/registry/src}
FIXED_MTIME=${FIXED_MTIME:-202401010000.00}   # touch -t format, for determinism

mkdir -p "$CORPORA"

# Marker = the parameters the tree was built from; a mismatch means rebuild.
marker()      { echo "$CORPORA/.$1.complete"; }
is_built()    { [ -f "$(marker "$1")" ] && [ "$(cat "$(marker "$1")")" = "$2" ]; }
mark_built()  { printf '%s' "$2" > "$(marker "$1")"; }

# ---------------------------------------------------------------- source
build_source() {
  local d="$CORPORA/source" params
  if [ -n "$WEBAPP_MIRROR" ]; then
    params="webapp mirror=$WEBAPP_MIRROR commit=$WEBAPP_COMMIT max=$SOURCE_MAX_FILES"
  else
    params="cargo-registry src=$REGISTRY_SRC max=$SOURCE_MAX_FILES"
  fi
  if is_built source "$params"; then echo "source: present, skipping ($params)"; return; fi
  rm -rf "$d.tmp" "$(marker source)"; mkdir -p "$d.tmp"
  if [ -n "$WEBAPP_MIRROR" ]; then
    extract_webapp "$d.tmp"
  else
    copy_registry "$d.tmp"
  fi
  rm -rf "$d"; mv "$d.tmp" "$d"; mark_built source "$params"
}

copy_registry() {  # copy_registry DEST: whole crates, in name order, up to SOURCE_MAX_FILES
  local out=$1 idx crate n=0 total=0
  [ -d "$REGISTRY_SRC" ] || { echo "source: no cargo registry at $REGISTRY_SRC (run a cargo build first, or set WEBAPP_MIRROR)" >&2; return 1; }
  : > "$CORPORA/source.source"
  for idx in "$REGISTRY_SRC"/*/; do
    # LC_ALL=C sort: the same registry gives the same tree on every machine
    while IFS= read -r crate; do
      # cargo writes .cargo-ok only after a crate is fully extracted: skip a crate
      # that a concurrent build is still unpacking
      [ -f "$crate/.cargo-ok" ] || continue
      if [ "$SOURCE_MAX_FILES" -gt 0 ] && [ "$total" -ge "$SOURCE_MAX_FILES" ]; then break 2; fi
      n=$(find "$crate" -type f | wc -l)
      mkdir -p "$out/$(basename "$idx")"
      cp -a "$crate" "$out/$(basename "$idx")/"   # -a keeps the crates' real mtimes
      echo "$(basename "$crate") $n" >> "$CORPORA/source.source"
      total=$((total + n))
    done < <(find "$idx" -mindepth 1 -maxdepth 1 -type d | LC_ALL=C sort)
  done
  touch -t "$FIXED_MTIME" "$out" "$out"/*/
  echo "source: copied $(wc -l < "$CORPORA/source.source") crates, $total files from $REGISTRY_SRC"
}

extract_webapp() {  # extract_webapp DEST (same extractor as shared/bench/make-corpora.sh)
  local out=$1 commit
  if ! git --git-dir="$WEBAPP_MIRROR" rev-parse --verify -q "$WEBAPP_COMMIT^{commit}" >/dev/null 2>&1; then
    echo "source: WEBAPP_MIRROR=$WEBAPP_MIRROR is not a git dir with $WEBAPP_COMMIT" >&2
    return 1
  fi
  commit=$(git --git-dir="$WEBAPP_MIRROR" rev-parse "$WEBAPP_COMMIT^{commit}")
  echo "source: extracting $WEBAPP_MIRROR @ $commit"
  # Equivalent of `git archive $commit | tar -x`, except that blobs absent from
  # the snapshot (large dev-tool blobs can be missing from a snapshot) are
  # skipped instead of aborting. Files get the commit time as mtime (like git
  # archive) -> deterministic trees. SOURCE_MAX_FILES > 0 keeps the first N
  # blobs in tree order.
  python3 - "$WEBAPP_MIRROR" "$commit" "$out" "$SOURCE_MAX_FILES" > "$CORPORA/source.source" <<'PY'
import os, subprocess, sys, threading
gd, commit, out, maxf = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
git = ["git", "--git-dir=" + gd]
ctime = int(subprocess.check_output(git + ["show", "-s", "--format=%ct", commit]))
ents = []
for rec in subprocess.check_output(git + ["ls-tree", "-r", "-z", commit]).split(b"\0"):
    if not rec: continue
    meta, path = rec.split(b"\t", 1)
    mode, typ, sha = meta.split()
    if typ == b"blob": ents.append((mode, sha, path))
if maxf > 0: ents = ents[:maxf]
p = subprocess.Popen(git + ["cat-file", "--batch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
def feed():  # feed stdin from a thread so the two pipes cannot deadlock
    p.stdin.write(b"".join(sha + b"\n" for _, sha, _ in ents)); p.stdin.close()
threading.Thread(target=feed, daemon=True).start()
skipped, n = [], 0
for mode, sha, path in ents:
    hdr = p.stdout.readline().split()
    if hdr[1] == b"missing":
        skipped.append(path.decode()); continue
    data = p.stdout.read(int(hdr[2])); p.stdout.read(1)
    dst = os.path.join(out, path.decode())
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if mode == b"120000":
        os.symlink(data, dst)
    else:
        with open(dst, "wb") as f: f.write(data)
        os.chmod(dst, 0o755 if mode == b"100755" else 0o644)
        os.utime(dst, (ctime, ctime))
    n += 1
p.wait()
print(f"{gd} {commit} files={n} skipped_absent_from_snapshot={len(skipped)} {' '.join(skipped)}")
PY
  find "$out" -type d -exec touch -d "@$(git --git-dir="$WEBAPP_MIRROR" show -s --format=%ct "$commit")" {} +
  cat "$CORPORA/source.source"
}

# ---------------------------------------------------------------- many-small
build_many_small() {
  local d="$CORPORA/many-small" params="files=$SMALL_FILES seed=$SEED"
  if is_built many-small "$params"; then echo "many-small: present, skipping ($params)"; return; fi
  rm -rf "$d.tmp" "$(marker many-small)"; mkdir -p "$d.tmp"
  echo "many-small: generating $SMALL_FILES files (seed $SEED)"
  python3 - "$d.tmp" "$SMALL_FILES" "$SEED" <<'PY'
import math, os, random, sys
root, nfiles, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
FIXED = 1704067200  # 2024-01-01T00:00:00Z
names = ["index.js", "index.d.ts", "package.json", "README.md", "LICENSE",
         "utils.js", "main.js", "cli.js", "types.d.ts", "helpers.js", "core.js",
         "parse.js", "format.js", "constants.js", "errors.js", "browser.js",
         "index.mjs", "index.cjs", "CHANGELOG.md", "polyfill.js", "map.js.map"]
subdirs = ["lib", "dist", "src", "test", "esm", "cjs", "build", "types",
           "internal", "utils", "plugins", "locale", "bin", "helpers"]
written = 0
pkg = 0
dirs_made = set()
def mk(p):
    if p not in dirs_made:
        os.makedirs(p, exist_ok=True); dirs_made.add(p)
def size():
    # log-uniform 100 B .. 8 KiB (source trees skew small)
    return int(math.exp(rng.uniform(math.log(100), math.log(8192))))
def emit(dirpath, count):
    global written
    mk(dirpath)
    for i in range(count):
        if written >= nfiles: return
        base = names[i % len(names)] if i < len(names) else f"mod{i:03d}.js"
        p = os.path.join(dirpath, base)
        with open(p, "wb") as f:
            f.write(rng.randbytes(size()))
        os.utime(p, (FIXED, FIXED))
        written += 1
def package(path, depth):
    # a package: some files at top, a few subdirs, maybe nested node_modules
    emit(path, rng.randint(2, 8))
    for sd in rng.sample(subdirs, rng.randint(1, 4)):
        sub = os.path.join(path, sd)
        emit(sub, rng.randint(1, 25))
        if rng.random() < 0.3:
            emit(os.path.join(sub, rng.choice(subdirs)), rng.randint(1, 12))
    if depth < 4 and rng.random() < 0.35:
        for _ in range(rng.randint(1, 4)):
            if written >= nfiles: return
            package(os.path.join(path, "node_modules", f"dep-{rng.randrange(10**6):06d}"), depth + 1)
top = os.path.join(root, "node_modules")
while written < nfiles:
    scope = f"@scope{pkg % 37:02d}" if rng.random() < 0.15 else ""
    package(os.path.join(top, scope, f"pkg-{pkg:05d}"), 0)
    pkg += 1
print(f"many-small: {written} files in {len(dirs_made)} dirs, {pkg} top-level packages")
PY
  # deterministic directory mtimes too
  find "$d.tmp" -type d -exec touch -t "$FIXED_MTIME" {} +
  rm -rf "$d"; mv "$d.tmp" "$d"; mark_built many-small "$params"
}

# ---------------------------------------------------------------- few-large
build_few_large() {
  local d="$CORPORA/few-large"
  local params="files=$LARGE_FILES mib=$LARGE_MIN_MIB-$LARGE_MAX_MIB seed=$SEED"
  if is_built few-large "$params"; then echo "few-large: present, skipping ($params)"; return; fi
  rm -rf "$d.tmp" "$(marker few-large)"; mkdir -p "$d.tmp"
  echo "few-large: generating $LARGE_FILES files of ${LARGE_MIN_MIB}-${LARGE_MAX_MIB} MiB"
  local sizes
  sizes=$(python3 -c "
import random,sys
r=random.Random($SEED)
print(' '.join(str(r.randint($LARGE_MIN_MIB,$LARGE_MAX_MIB)) for _ in range($LARGE_FILES)))")
  local i=0 mib key f
  for mib in $sizes; do
    f="$d.tmp/blob-$(printf %02d "$i").bin"
    # deterministic pseudo-random content: AES-128-CTR keystream, key = f(seed, i)
    # (`|| true`: head closing the pipe makes openssl fail with EPIPE; the size
    # check below is what proves the file is complete)
    key=$(printf '%s-%d' "$SEED" "$i" | sha256sum | cut -c1-32)
    openssl enc -aes-128-ctr -nosalt -K "$key" -iv 00000000000000000000000000000000 \
        -in /dev/zero 2>/dev/null | head -c $((mib * 1048576)) > "$f" || true
    [ "$(stat -c %s "$f")" -eq $((mib * 1048576)) ]
    touch -t "$FIXED_MTIME" "$f"
    i=$((i + 1))
  done
  rm -rf "$d"; mv "$d.tmp" "$d"; mark_built few-large "$params"
}

for c in $CORPUS_LIST; do
  case $c in
    many-small) build_many_small ;;
    few-large)  build_few_large ;;
    source)     build_source ;;
    *) echo "make-corpora: unknown corpus '$c'" >&2; exit 2 ;;
  esac
done

echo
echo "corpus sizes (regular files) under $CORPORA:"
printf '%-12s %10s %16s %10s\n' corpus files bytes MiB
for c in $CORPUS_LIST; do
  [ -d "$CORPORA/$c" ] || continue
  find "$CORPORA/$c" -type f -printf '%s\n' |
    awk -v c="$c" '{n++; s+=$1} END {printf "%-12s %10d %16.0f %10.1f\n", c, n, s, s/1048576}'
done | tee "$CORPORA/sizes.txt"
