//! What the agent knows of each path of a tree, compactly: its approved state (the manifest in
//! force) and its last observed state (which is also the stat cache). One row per path.
//!
//! DESIGN §11 allows 200 bytes per tracked path, and the paths of a deep `node_modules`-like tree
//! average 78 bytes. So the rows live in a *base* of one sorted, front-coded path arena (each path
//! keeps only what differs from the one before it, with a whole path every [`BLOCK`] rows for the
//! binary search), fixed-size records, and one pool of content hashes in which a file whose
//! observed content is its approved content uses a single slot. Changes go to a small sorted
//! *delta* that is merged into a new base when it grows; reads look at the delta first.
//!
//! Extended attributes (crate::scan::xattr) live beside the records, not in them: a pool of distinct
//! attribute sets (interned, so a tree labelled with one SELinux context holds one set) and a
//! list of `(row, observed set, approved set)` sorted by row, in which only paths that have
//! attributes appear (12 bytes each). A path without attributes costs nothing more.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use crate::judge::diff::State;
use crate::judge::manifest::ManifestEntry;
use crate::scan::snapshot::{CachedFile, Entry, Kind, Meta, StatCache};
use crate::scan::xattr::{XattrName, Xattrs};
use crate::util::pathbytes::RelPath;

/// Rows per front-coding block: a lookup decodes at most this many paths after its binary search.
const BLOCK: usize = 16;
/// A delta larger than this is merged into the base after a pass.
const MERGE_AT: usize = 4096;
/// A delta this large is merged at once, mid-pass: a first scan changes every row, and a delta
/// row costs several times a base row.
const MERGE_NOW_AT: usize = 65_536;
/// No hash (an index into the hash pool).
const NO_HASH: u32 = u32::MAX;

/// A path's last observed state, without the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Its metadata (`nlink` saturated at `u32::MAX`, as the table keeps it).
    pub meta: Meta,
    /// Content hash (readable regular files).
    pub blake3: Option<[u8; 32]>,
    /// Link target (symlinks).
    pub target: Option<Vec<u8>>,
    /// Why it could not be fully examined.
    pub problem: Option<String>,
    /// Extended attributes and ACLs.
    pub xattrs: Option<Xattrs>,
}

impl Observed {
    /// The observed part of a scanned entry.
    pub fn of(e: &Entry) -> Observed {
        Observed {
            meta: normalized(e.meta),
            blake3: e.blake3,
            target: e.target.clone(),
            problem: e.problem.clone(),
            xattrs: e.xattrs.clone(),
        }
    }

    /// Whether `e` is exactly what was observed (every stat field, hash, target and problem).
    pub fn matches(&self, e: &Entry) -> bool {
        self.meta == normalized(e.meta)
            && self.blake3 == e.blake3
            && self.target == e.target
            && self.problem == e.problem
            && self.xattrs == e.xattrs
    }

    /// The compared state (no mtime: a touch is not a change).
    pub fn state(&self) -> State {
        State::from_parts(
            &self.meta,
            self.blake3,
            self.target.as_deref(),
            self.xattrs.as_ref(),
        )
    }

    /// The entry at `path`.
    pub fn into_entry(self, path: RelPath) -> Entry {
        Entry {
            path,
            meta: self.meta,
            blake3: self.blake3,
            target: self.target,
            problem: self.problem,
            xattrs: self.xattrs,
        }
    }
}

/// The table keeps the hard link count in 32 bits: more links than that do not exist.
fn normalized(m: Meta) -> Meta {
    Meta {
        nlink: m.nlink.min(u64::from(u32::MAX)),
        ..m
    }
}

/// Everything the table holds for one path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    /// Approved by the manifest in force (the authorized overlay is kept apart, in the state).
    pub approved: Option<State>,
    /// Last observed (`None`: not there, or never looked at).
    pub observed: Option<Observed>,
    /// A deploy is still to land here: the manifest in force approves a state the previous
    /// manifest did not, and the path has not been observed in it since (DESIGN §12.1). Reaching
    /// the approved state is then a `release:` change, however long after the manifest.
    pub fresh: bool,
}

impl Row {
    fn is_empty(&self) -> bool {
        self.approved.is_none() && self.observed.is_none()
    }
}

/// The approved and observed state of every path of one tree.
#[derive(Debug, Clone, Default)]
pub struct Table {
    base: Base,
    /// Rows changed since the base was built; an empty row deletes the path.
    delta: BTreeMap<RelPath, Row>,
}

/// Fixed-size part of a base row. Field order keeps it free of padding (80 bytes).
#[derive(Debug, Clone, Copy)]
struct Rec {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    app_size: u64,
    /// Index into `Base::devs`: a tree spans few devices.
    dev: u32,
    nlink: u32,
    uid: u32,
    gid: u32,
    app_uid: u32,
    app_gid: u32,
    hash: u32,
    app_hash: u32,
    /// `st_mode & 0o7777` (scans and manifests never hold more).
    mode: u16,
    app_mode: u16,
    /// `None`: not observed.
    kind: Option<Kind>,
    /// `None`: not approved.
    app_kind: Option<Kind>,
    flags: u8,
}

const APP_SIZE: u8 = 1;
const APP_UID: u8 = 2;
const APP_GID: u8 = 4;
/// The row has an entry in `Base::extras`.
const EXTRA: u8 = 8;
/// [`Row::fresh`]. A high bit: older snapshot files never set it.
const FRESH: u8 = 0x80;
/// The row has an entry in `Base::xrows`.
const XATTRS: u8 = 16;
/// No attribute set (an index into `Base::xsets`).
const NO_XSET: u32 = u32::MAX;

/// The attribute sets of one row that has any: indices into `Base::xsets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct XRow {
    row: u32,
    observed: u32,
    approved: u32,
}

/// The rare variable-sized parts of a row: symlink targets and problems.
#[derive(Debug, Clone, Default)]
struct Extra {
    target: Option<Vec<u8>>,
    problem: Option<String>,
    app_target: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Default)]
struct Base {
    /// Per row: varint shared-prefix length, varint suffix length, suffix bytes.
    arena: Vec<u8>,
    /// Arena offset of each block's first row, whose path is stored whole.
    blocks: Vec<usize>,
    recs: Vec<Rec>,
    hashes: Vec<[u8; 32]>,
    devs: Vec<u64>,
    extras: BTreeMap<u32, Extra>,
    /// Distinct attribute sets.
    xsets: Vec<Xattrs>,
    /// Rows with attributes, sorted by row.
    xrows: Vec<XRow>,
}

impl Base {
    fn block_first(&self, b: usize) -> &[u8] {
        let mut pos = self.blocks[b];
        let _shared = varint(&self.arena, &mut pos);
        let len = varint(&self.arena, &mut pos);
        &self.arena[pos..pos + len]
    }

    /// A cursor on the first row whose path is `>= start`.
    fn seek(&self, start: &[u8]) -> Cursor<'_> {
        let first_greater = partition(self.blocks.len(), |b| self.block_first(b) <= start);
        let block = first_greater.saturating_sub(1);
        let mut c = Cursor::at_block(self, block);
        while c.path().is_some_and(|p| p < start) {
            c.step();
        }
        c
    }

    fn find(&self, path: &[u8]) -> Option<usize> {
        let c = self.seek(path);
        (c.path() == Some(path)).then_some(c.row)
    }

    fn row(&self, i: usize) -> Row {
        let r = &self.recs[i];
        let extra = if r.flags & EXTRA != 0 {
            self.extras.get(&(i as u32))
        } else {
            None
        };
        let hash = |h: u32| (h != NO_HASH).then(|| self.hashes[h as usize]);
        let xrow = if r.flags & XATTRS != 0 {
            self.xrows
                .binary_search_by_key(&(i as u32), |x| x.row)
                .ok()
                .map(|k| self.xrows[k])
        } else {
            None
        };
        let xset = |pick: fn(&XRow) -> u32| {
            let k = pick(xrow.as_ref()?);
            (k != NO_XSET).then(|| self.xsets[k as usize].clone())
        };
        let observed = r.kind.map(|kind| Observed {
            meta: Meta {
                kind,
                size: r.size,
                mode: u32::from(r.mode),
                uid: r.uid,
                gid: r.gid,
                mtime_ns: r.mtime_ns,
                ctime_ns: r.ctime_ns,
                ino: r.ino,
                dev: self.devs[r.dev as usize],
                nlink: u64::from(r.nlink),
            },
            blake3: hash(r.hash),
            target: extra.and_then(|x| x.target.clone()),
            problem: extra.and_then(|x| x.problem.clone()),
            xattrs: xset(|x| x.observed),
        });
        let approved = r.app_kind.map(|kind| State {
            kind,
            size: (r.flags & APP_SIZE != 0).then_some(r.app_size),
            mode: u32::from(r.app_mode),
            uid: (r.flags & APP_UID != 0).then_some(r.app_uid),
            gid: (r.flags & APP_GID != 0).then_some(r.app_gid),
            blake3: hash(r.app_hash),
            target: extra.and_then(|x| x.app_target.clone()),
            xattrs: xset(|x| x.approved),
        });
        Row {
            approved,
            observed,
            fresh: r.flags & FRESH != 0,
        }
    }

    /// The observed attribute set of row `i`.
    fn observed_xattrs(&self, i: usize) -> Option<Xattrs> {
        if self.recs[i].flags & XATTRS == 0 {
            return None;
        }
        let k = self
            .xrows
            .binary_search_by_key(&(i as u32), |x| x.row)
            .ok()?;
        let set = self.xrows[k].observed;
        (set != NO_XSET).then(|| self.xsets[set as usize].clone())
    }

    /// The stat-cache facts of row `i`, read straight from its record.
    fn cached_file(&self, i: usize) -> Option<CachedFile> {
        let r = &self.recs[i];
        (r.kind == Some(Kind::File) && r.hash != NO_HASH && r.flags & EXTRA == 0).then(|| {
            CachedFile {
                size: r.size,
                mtime_ns: r.mtime_ns,
                ctime_ns: r.ctime_ns,
                ino: r.ino,
                dev: self.devs[r.dev as usize],
                blake3: self.hashes[r.hash as usize],
                xattrs: self.observed_xattrs(i),
            }
        })
    }
}

/// The first index in `0..n` for which `pred` is false (`pred` holds for a prefix of the range).
fn partition(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Reads the rows of a base in order, decoding the front-coded paths.
struct Cursor<'a> {
    base: &'a Base,
    /// Index of the current row (`recs.len()`: past the end).
    row: usize,
    /// Arena offset of the next row's path.
    next: usize,
    path: Vec<u8>,
}

impl<'a> Cursor<'a> {
    fn at_block(base: &'a Base, block: usize) -> Cursor<'a> {
        let mut c = Cursor {
            base,
            row: block * BLOCK,
            next: base.blocks.get(block).copied().unwrap_or(base.arena.len()),
            path: Vec::new(),
        };
        c.decode();
        c
    }

    fn decode(&mut self) {
        if self.row >= self.base.recs.len() {
            return;
        }
        let a = &self.base.arena;
        let shared = varint(a, &mut self.next);
        let len = varint(a, &mut self.next);
        self.path.truncate(shared);
        self.path.extend_from_slice(&a[self.next..self.next + len]);
        self.next += len;
    }

    fn path(&self) -> Option<&[u8]> {
        (self.row < self.base.recs.len()).then_some(self.path.as_slice())
    }

    fn step(&mut self) {
        self.row += 1;
        self.decode();
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint(a: &[u8], pos: &mut usize) -> usize {
    let mut v = 0usize;
    let mut shift = 0;
    loop {
        let b = a[*pos];
        *pos += 1;
        v |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

/// Writes a new base from rows given in strictly increasing path order.
#[derive(Default)]
struct Builder {
    base: Base,
    prev: Vec<u8>,
    dev_index: HashMap<u64, u32>,
    /// Interned attribute sets by (digest, whether names are known): a set without names (from
    /// a manifest that recorded only the digest) must not stand in for one with them.
    xset_index: HashMap<([u8; 32], bool), u32>,
}

impl Builder {
    fn push(&mut self, path: &[u8], row: &Row) {
        if row.is_empty() {
            return;
        }
        debug_assert!(
            self.base.recs.is_empty() || self.prev.as_slice() < path,
            "rows out of order"
        );
        let b = &mut self.base;
        let i = b.recs.len();
        let shared = if i.is_multiple_of(BLOCK) {
            b.blocks.push(b.arena.len());
            0
        } else {
            self.prev
                .iter()
                .zip(path)
                .take_while(|(x, y)| x == y)
                .count()
        };
        put_varint(&mut b.arena, shared);
        put_varint(&mut b.arena, path.len() - shared);
        b.arena.extend_from_slice(&path[shared..]);
        self.prev.clear();
        self.prev.extend_from_slice(path);

        let mut r = Rec {
            size: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            ino: 0,
            app_size: 0,
            dev: 0,
            nlink: 0,
            uid: 0,
            gid: 0,
            app_uid: 0,
            app_gid: 0,
            hash: NO_HASH,
            app_hash: NO_HASH,
            mode: 0,
            app_mode: 0,
            kind: None,
            app_kind: None,
            flags: 0,
        };
        let mut extra = Extra::default();
        if let Some(o) = &row.observed {
            let m = &o.meta;
            let next_dev = b.devs.len() as u32;
            let dev = *self.dev_index.entry(m.dev).or_insert(next_dev);
            if dev == next_dev {
                b.devs.push(m.dev);
            }
            r.kind = Some(m.kind);
            r.size = m.size;
            r.mtime_ns = m.mtime_ns;
            r.ctime_ns = m.ctime_ns;
            r.ino = m.ino;
            r.dev = dev;
            r.nlink = u32::try_from(m.nlink).unwrap_or(u32::MAX);
            r.uid = m.uid;
            r.gid = m.gid;
            r.mode = (m.mode & 0o7777) as u16;
            if let Some(h) = o.blake3 {
                r.hash = b.hashes.len() as u32;
                b.hashes.push(h);
            }
            extra.target = o.target.clone();
            extra.problem = o.problem.clone();
        }
        if let Some(a) = &row.approved {
            r.app_kind = Some(a.kind);
            if let Some(s) = a.size {
                r.flags |= APP_SIZE;
                r.app_size = s;
            }
            if let Some(u) = a.uid {
                r.flags |= APP_UID;
                r.app_uid = u;
            }
            if let Some(g) = a.gid {
                r.flags |= APP_GID;
                r.app_gid = g;
            }
            r.app_mode = (a.mode & 0o7777) as u16;
            if let Some(h) = a.blake3 {
                // The usual case: the file is as approved, one slot serves both.
                r.app_hash = if r.hash != NO_HASH && b.hashes[r.hash as usize] == h {
                    r.hash
                } else {
                    b.hashes.push(h);
                    (b.hashes.len() - 1) as u32
                };
            }
            extra.app_target = a.target.clone();
        }
        if row.fresh {
            r.flags |= FRESH;
        }
        let observed_x = row.observed.as_ref().and_then(|o| o.xattrs.as_ref());
        let approved_x = row.approved.as_ref().and_then(|a| a.xattrs.as_ref());
        if observed_x.is_some() || approved_x.is_some() {
            r.flags |= XATTRS;
            let x = XRow {
                row: i as u32,
                observed: self.intern(observed_x),
                approved: self.intern(approved_x),
            };
            self.base.xrows.push(x);
        }
        let b = &mut self.base;
        if extra.target.is_some() || extra.problem.is_some() || extra.app_target.is_some() {
            r.flags |= EXTRA;
            b.extras.insert(i as u32, extra);
        }
        b.recs.push(r);
    }

    fn intern(&mut self, x: Option<&Xattrs>) -> u32 {
        let Some(x) = x else { return NO_XSET };
        let next = self.base.xsets.len() as u32;
        let k = *self
            .xset_index
            .entry((x.digest, !x.names.is_empty()))
            .or_insert(next);
        if k == next {
            self.base.xsets.push(x.clone());
        }
        k
    }

    fn finish(mut self) -> Base {
        let b = &mut self.base;
        b.xsets.shrink_to_fit();
        b.xrows.shrink_to_fit();
        b.arena.shrink_to_fit();
        b.blocks.shrink_to_fit();
        b.recs.shrink_to_fit();
        b.hashes.shrink_to_fit();
        self.base
    }
}

impl Table {
    /// A table of observations only (a loaded snapshot), sorted or not.
    pub fn from_observed(mut rows: Vec<(RelPath, Observed)>) -> Table {
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.dedup_by(|a, b| a.0 == b.0);
        let mut b = Builder::default();
        for (p, o) in rows {
            b.push(
                p.as_bytes(),
                &Row {
                    approved: None,
                    observed: Some(o),
                    fresh: false,
                },
            );
        }
        Table {
            base: b.finish(),
            delta: BTreeMap::new(),
        }
    }

    /// The row of `path`, if the table has one.
    pub fn get(&self, path: &[u8]) -> Option<Row> {
        match self.delta.get(path) {
            Some(r) => (!r.is_empty()).then(|| r.clone()),
            None => self.base.find(path).map(|i| self.base.row(i)),
        }
    }

    /// What was last observed at `path`.
    pub fn observed(&self, path: &[u8]) -> Option<Observed> {
        self.get(path)?.observed
    }

    /// What the manifest in force approves at `path`.
    pub fn approved(&self, path: &[u8]) -> Option<State> {
        self.get(path)?.approved
    }

    /// Records what is at `path` now (`None`: nothing). A deploy still to land there has landed
    /// once the path is observed in its approved state: returns whether that happened now.
    pub fn set_observed(&mut self, path: &RelPath, observed: Option<Observed>) -> bool {
        let mut row = self.get(path.as_bytes()).unwrap_or_default();
        row.observed = observed;
        let landed =
            row.fresh && same_state(&row.approved, &row.observed.as_ref().map(Observed::state));
        row.fresh &= !landed;
        self.delta.insert(path.clone(), row);
        if self.delta.len() >= MERGE_NOW_AT {
            self.merge();
        }
        landed
    }

    /// Marks the deploy at `path` landed (replaying a saved state).
    pub fn set_landed(&mut self, path: &RelPath) {
        if let Some(mut row) = self.get(path.as_bytes())
            && row.fresh
        {
            row.fresh = false;
            self.delta.insert(path.clone(), row);
        }
    }

    /// Puts a new manifest's approved states in force; observations are kept. With `deploy`
    /// (the manifest replaces an earlier one), every path whose approved state changed and is
    /// not already observed in it becomes [`Row::fresh`]; without, no row is.
    pub fn replace_approved(&mut self, mut approved: Vec<ManifestEntry>, deploy: bool) {
        approved.sort_by(|a, b| a.path.cmp(&b.path));
        approved.dedup_by(|a, b| a.path == b.path);
        let mut b = Builder::default();
        let mut next = approved.into_iter().peekable();
        let new_path = |state: State| Row {
            fresh: deploy,
            ..approved_only(state)
        };
        self.walk_from(b"", |p, row| {
            while let Some(a) = next.next_if(|a| a.path.as_bytes() < p) {
                b.push(a.path.as_bytes(), &new_path(a.state));
            }
            let approved = next.next_if(|a| a.path.as_bytes() == p).map(|a| a.state);
            let observed_state = row.observed.as_ref().map(Observed::state);
            // Still to land: a new approved state, or one the last deploy did not reach yet.
            let fresh = deploy
                && (row.fresh || !same_state(&row.approved, &approved))
                && !same_state(&approved, &observed_state);
            b.push(
                p,
                &Row {
                    approved,
                    observed: row.observed,
                    fresh,
                },
            );
            true
        });
        for a in next {
            b.push(a.path.as_bytes(), &new_path(a.state));
        }
        self.base = b.finish();
        self.delta.clear();
    }

    /// Merges the delta into a new base when it has grown large.
    pub fn settle(&mut self) {
        if self.delta.len() > MERGE_AT {
            self.merge();
        }
    }

    fn merge(&mut self) {
        self.base = self.merged();
        self.delta.clear();
    }

    /// A new base holding every row, the delta's included.
    fn merged(&self) -> Base {
        let mut b = Builder::default();
        self.walk_from(b"", |p, row| {
            b.push(p, &row);
            true
        });
        b.finish()
    }

    /// Calls `f` with every row whose path is `>= start`, in path order, until it returns false.
    pub fn walk_from(&self, start: &[u8], mut f: impl FnMut(&[u8], Row) -> bool) {
        let mut c = self.base.seek(start);
        let mut d = self
            .delta
            .range::<[u8], _>((Bound::Included(start), Bound::Unbounded))
            .peekable();
        loop {
            let from_delta = match (c.path(), d.peek()) {
                (None, None) => return,
                (Some(p), Some((dp, _))) => {
                    if dp.as_bytes() == p {
                        // The delta replaces the base row.
                        c.step();
                        true
                    } else {
                        dp.as_bytes() < p
                    }
                }
                (None, Some(_)) => true,
                (Some(_), None) => false,
            };
            let go_on = if from_delta {
                let (p, row) = d.next().expect("peeked");
                row.is_empty() || f(p.as_bytes(), row.clone())
            } else {
                let row = self.base.row(c.row);
                let go_on = f(c.path().expect("checked"), row);
                c.step();
                go_on
            };
            if !go_on {
                return;
            }
        }
    }

    /// Paths observed strictly below directory `dir` (a real-time update found it gone or changed).
    pub fn observed_below(&self, dir: &RelPath) -> Vec<RelPath> {
        let prefix = [dir.as_bytes(), b"/"].concat();
        let mut out = Vec::new();
        self.walk_from(&prefix, |p, row| {
            if !p.starts_with(&prefix) {
                return false;
            }
            if row.observed.is_some() {
                out.push(RelPath::from_bytes(p));
            }
            true
        });
        out
    }

    /// Appends the whole table (delta included) in binary form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        if self.delta.is_empty() {
            self.base.encode(out);
        } else {
            self.merged().encode(out);
        }
    }

    /// Reads a table written by [`Table::encode`]; `None` when anything is out of place.
    pub(super) fn decode(r: &mut Reader<'_>) -> Option<Table> {
        Some(Table {
            base: Base::decode(r)?,
            delta: BTreeMap::new(),
        })
    }
}

/// Reads the little-endian, length-prefixed binary forms of the state files.
pub(super) struct Reader<'a> {
    pub(super) b: &'a [u8],
    pub(super) pos: usize,
}

impl Reader<'_> {
    pub(super) fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.b.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    pub(super) fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    pub(super) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    pub(super) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    pub(super) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    pub(super) fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    pub(super) fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        Some(self.take(n)?.to_vec())
    }
    /// A count of items that take at least `min` bytes each (no huge allocation from a bad count).
    fn count(&mut self, min: usize) -> Option<usize> {
        let n = usize::try_from(self.u64()?).ok()?;
        (n.checked_mul(min)? <= self.b.len() - self.pos).then_some(n)
    }
}

/// Appends `b` with a 32-bit length prefix.
pub(super) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

const NO_KIND: u8 = u8::MAX;

fn put_opt(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            out.push(1);
            put_bytes(out, b);
        }
        None => out.push(0),
    }
}

fn opt(r: &mut Reader<'_>) -> Option<Option<Vec<u8>>> {
    match r.u8()? {
        0 => Some(None),
        1 => Some(Some(r.bytes()?)),
        _ => None,
    }
}

impl Base {
    fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.arena.len() + self.recs.len() * 80 + self.hashes.len() * 32);
        out.extend_from_slice(&(self.arena.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.arena);
        out.extend_from_slice(&(self.recs.len() as u64).to_le_bytes());
        for r in &self.recs {
            for v in [
                r.size,
                r.mtime_ns as u64,
                r.ctime_ns as u64,
                r.ino,
                r.app_size,
            ] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            for v in [
                r.dev, r.nlink, r.uid, r.gid, r.app_uid, r.app_gid, r.hash, r.app_hash,
            ] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&r.mode.to_le_bytes());
            out.extend_from_slice(&r.app_mode.to_le_bytes());
            out.push(r.kind.map_or(NO_KIND, Kind::code));
            out.push(r.app_kind.map_or(NO_KIND, Kind::code));
            out.push(r.flags);
        }
        out.extend_from_slice(&(self.hashes.len() as u64).to_le_bytes());
        for h in &self.hashes {
            out.extend_from_slice(h);
        }
        out.extend_from_slice(&(self.devs.len() as u64).to_le_bytes());
        for d in &self.devs {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&(self.extras.len() as u64).to_le_bytes());
        for (i, x) in &self.extras {
            out.extend_from_slice(&i.to_le_bytes());
            put_opt(out, x.target.as_deref());
            put_opt(out, x.problem.as_ref().map(String::as_bytes));
            put_opt(out, x.app_target.as_deref());
        }
        out.extend_from_slice(&(self.xsets.len() as u64).to_le_bytes());
        for x in &self.xsets {
            put_xattrs(out, x);
        }
        out.extend_from_slice(&(self.xrows.len() as u64).to_le_bytes());
        for x in &self.xrows {
            for v in [x.row, x.observed, x.approved] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }

    /// Reads a base written by [`Base::encode`], checking every index and the path order, so a
    /// damaged file is refused here instead of misbehaving later.
    fn decode(r: &mut Reader<'_>) -> Option<Base> {
        let len = usize::try_from(r.u64()?).ok()?;
        let arena = r.take(len)?.to_vec();
        let n = r.count(67)?;
        let mut recs = Vec::with_capacity(n);
        for _ in 0..n {
            let kind = |c: u8| match c {
                NO_KIND => Some(None),
                c => Kind::from_code(c).map(Some),
            };
            recs.push(Rec {
                size: r.u64()?,
                mtime_ns: r.i64()?,
                ctime_ns: r.i64()?,
                ino: r.u64()?,
                app_size: r.u64()?,
                dev: r.u32()?,
                nlink: r.u32()?,
                uid: r.u32()?,
                gid: r.u32()?,
                app_uid: r.u32()?,
                app_gid: r.u32()?,
                hash: r.u32()?,
                app_hash: r.u32()?,
                mode: r.u16()?,
                app_mode: r.u16()?,
                kind: kind(r.u8()?)?,
                app_kind: kind(r.u8()?)?,
                flags: r.u8()?,
            });
        }
        let n = r.count(32)?;
        let mut hashes = Vec::with_capacity(n);
        for _ in 0..n {
            hashes.push(r.take(32)?.try_into().ok()?);
        }
        let n = r.count(8)?;
        let mut devs = Vec::with_capacity(n);
        for _ in 0..n {
            devs.push(r.u64()?);
        }
        let n = r.count(7)?;
        let mut extras = BTreeMap::new();
        for _ in 0..n {
            let i = r.u32()?;
            let x = Extra {
                target: opt(r)?,
                problem: opt(r)?.map(String::from_utf8).transpose().ok()?,
                app_target: opt(r)?,
            };
            extras.insert(i, x);
        }
        if extras.keys().any(|i| *i as usize >= recs.len()) {
            return None;
        }
        let n = r.count(36)?;
        let mut xsets = Vec::with_capacity(n);
        for _ in 0..n {
            xsets.push(get_xattrs(r)?);
        }
        let n = r.count(12)?;
        let mut xrows: Vec<XRow> = Vec::with_capacity(n);
        for _ in 0..n {
            let x = XRow {
                row: r.u32()?,
                observed: r.u32()?,
                approved: r.u32()?,
            };
            // Strictly increasing rows, in range; each set index in range and on a side the
            // row has; at least one side.
            let set_ok = |k: u32, side: bool| k == NO_XSET || (side && (k as usize) < xsets.len());
            let rec = recs.get(x.row as usize)?;
            let ok = xrows.last().is_none_or(|p| p.row < x.row)
                && set_ok(x.observed, rec.kind.is_some())
                && set_ok(x.approved, rec.app_kind.is_some())
                && (x.observed != NO_XSET || x.approved != NO_XSET);
            if !ok {
                return None;
            }
            xrows.push(x);
        }
        // Every index in range, the extra flag exactly where there are extras.
        for (i, rec) in recs.iter().enumerate() {
            let hash_ok = |h: u32| h == NO_HASH || (h as usize) < hashes.len();
            let ok = hash_ok(rec.hash)
                && hash_ok(rec.app_hash)
                && (rec.kind.is_none() || (rec.dev as usize) < devs.len())
                && (rec.kind.is_some() || rec.app_kind.is_some())
                && (rec.flags & EXTRA != 0) == extras.contains_key(&(i as u32))
                && (rec.flags & XATTRS != 0)
                    == xrows.binary_search_by_key(&(i as u32), |x| x.row).is_ok();
            if !ok {
                return None;
            }
        }
        // The paths: in bounds, blocks where they belong, strictly increasing.
        let mut blocks = Vec::with_capacity(recs.len().div_ceil(BLOCK));
        let (mut pos, mut prev, mut path) = (0usize, Vec::new(), Vec::new());
        for i in 0..recs.len() {
            if i % BLOCK == 0 {
                blocks.push(pos);
            }
            let shared = checked_varint(&arena, &mut pos)?;
            let len = checked_varint(&arena, &mut pos)?;
            if shared > prev.len() || (i % BLOCK == 0 && shared != 0) {
                return None;
            }
            path.clear();
            path.extend_from_slice(&prev[..shared]);
            path.extend_from_slice(arena.get(pos..pos.checked_add(len)?)?);
            pos += len;
            if i > 0 && path <= prev {
                return None;
            }
            std::mem::swap(&mut prev, &mut path);
        }
        (pos == arena.len()).then_some(Base {
            arena,
            blocks,
            recs,
            hashes,
            devs,
            extras,
            xsets,
            xrows,
        })
    }
}

/// Appends an attribute set: digest, name count, then each name (length-prefixed) and its
/// 8-byte short digest. Shared with the state file's delta entries.
pub(super) fn put_xattrs(out: &mut Vec<u8>, x: &Xattrs) {
    out.extend_from_slice(&x.digest);
    out.extend_from_slice(&(x.names.len() as u32).to_le_bytes());
    for n in x.names.iter() {
        put_bytes(out, &n.name);
        out.extend_from_slice(&n.value);
    }
}

/// Reads a set written by [`put_xattrs`]; names must be non-empty and strictly increasing.
pub(super) fn get_xattrs(r: &mut Reader<'_>) -> Option<Xattrs> {
    let digest: [u8; 32] = r.take(32)?.try_into().ok()?;
    let n = r.u32()? as usize;
    // Each name takes at least 4 + 1 + 8 bytes: a bad count cannot allocate much.
    if n.checked_mul(13)? > r.b.len() - r.pos {
        return None;
    }
    let mut names: Vec<XattrName> = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.bytes()?;
        let value: [u8; 8] = r.take(8)?.try_into().ok()?;
        if name.is_empty() || names.last().is_some_and(|p| p.name >= name) {
            return None;
        }
        names.push(XattrName { name, value });
    }
    Some(Xattrs::new(digest, names))
}

/// As [`varint`], but `None` past the end or beyond 64 bits.
fn checked_varint(a: &[u8], pos: &mut usize) -> Option<usize> {
    let mut v = 0usize;
    for shift in (0..64).step_by(7) {
        let b = *a.get(*pos)?;
        *pos += 1;
        v |= usize::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn approved_only(state: State) -> Row {
    Row {
        approved: Some(state),
        observed: None,
        fresh: false,
    }
}

/// Whether `actual` is in the `expected` state (absent is absent), judged the way a change is:
/// what `expected` leaves unset (owners of a manifest built without them) is not compared.
fn same_state(expected: &Option<State>, actual: &Option<State>) -> bool {
    match (expected, actual) {
        (None, None) => true,
        (Some(e), Some(a)) => crate::judge::diff::compare(e, a).is_none(),
        _ => false,
    }
}

impl StatCache for Table {
    fn cached_file(&self, path: &RelPath) -> Option<CachedFile> {
        match self.delta.get(path.as_bytes()) {
            Some(row) => {
                let o = row.observed.as_ref()?;
                (o.meta.kind == Kind::File && o.problem.is_none() && o.target.is_none())
                    .then_some(())?;
                Some(CachedFile {
                    size: o.meta.size,
                    mtime_ns: o.meta.mtime_ns,
                    ctime_ns: o.meta.ctime_ns,
                    ino: o.meta.ino,
                    dev: o.meta.dev,
                    blake3: o.blake3?,
                    xattrs: o.xattrs.clone(),
                })
            }
            None => self.base.cached_file(self.base.find(path.as_bytes())?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(size: u64, hash: Option<[u8; 32]>) -> Observed {
        Observed {
            meta: Meta {
                kind: Kind::File,
                size,
                mode: 0o644,
                uid: 1,
                gid: 2,
                mtime_ns: 3,
                ctime_ns: 4,
                ino: size,
                dev: 77,
                nlink: 1,
            },
            blake3: hash,
            target: None,
            problem: None,
            xattrs: None,
        }
    }

    fn path(s: &str) -> RelPath {
        RelPath::from_bytes(s.as_bytes())
    }

    fn rows(t: &Table) -> Vec<(String, Row)> {
        let mut out = Vec::new();
        t.walk_from(b"", |p, r| {
            out.push((String::from_utf8_lossy(p).into_owned(), r));
            true
        });
        out
    }

    #[test]
    fn record_has_no_padding() {
        assert_eq!(size_of::<Rec>(), 80);
    }

    #[test]
    fn lookups_and_order_across_blocks() {
        let names: Vec<String> = (0..100)
            .map(|i| format!("a/dir{}/f{i:03}", i % 7))
            .collect();
        let t = Table::from_observed(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (path(n), obs(i as u64, Some([i as u8; 32]))))
                .collect(),
        );
        let mut sorted = names.clone();
        sorted.sort();
        let got: Vec<String> = rows(&t).into_iter().map(|(p, _)| p).collect();
        assert_eq!(got, sorted);
        for (i, n) in names.iter().enumerate() {
            let o = t.observed(n.as_bytes()).unwrap();
            assert_eq!(o, obs(i as u64, Some([i as u8; 32])), "{n}");
        }
        assert!(t.get(b"a/dir0/f0000").is_none());
        assert!(t.get(b"").is_none());
        assert!(t.get(b"zzz").is_none());
        assert_eq!(rows(&t).len(), 100);
    }

    #[test]
    fn delta_overrides_base_and_deletes_until_merged() {
        let mut t = Table::from_observed(vec![
            (path("a"), obs(1, Some([1; 32]))),
            (path("b"), obs(2, None)),
            (path("c"), obs(3, None)),
        ]);
        t.set_observed(&path("b"), None);
        t.set_observed(&path("bb"), Some(obs(9, None)));
        t.set_observed(&path("a"), Some(obs(5, Some([5; 32]))));
        let seen: Vec<(String, u64)> = rows(&t)
            .into_iter()
            .map(|(p, r)| (p, r.observed.unwrap().meta.size))
            .collect();
        let want = vec![("a".into(), 5), ("bb".into(), 9), ("c".into(), 3)];
        assert_eq!(seen, want);
        assert!(t.get(b"b").is_none());
        // Merging keeps the same content.
        for i in 0..=MERGE_AT {
            t.set_observed(&path(&format!("z{i:05}")), Some(obs(i as u64, None)));
        }
        let before = rows(&t);
        t.settle();
        assert!(t.delta.is_empty());
        assert_eq!(rows(&t), before);
    }

    #[test]
    fn approved_and_observed_share_a_hash_slot_and_survive_a_new_manifest() {
        let mut t = Table::from_observed(vec![
            (path("same"), obs(1, Some([1; 32]))),
            (path("edited"), obs(2, Some([2; 32]))),
            (path("extra"), obs(3, Some([3; 32]))),
        ]);
        let approve = |p: &str, h: u8| ManifestEntry {
            path: path(p),
            state: State {
                kind: Kind::File,
                size: Some(1),
                mode: 0o644,
                uid: None,
                gid: Some(2),
                blake3: Some([h; 32]),
                target: None,
                xattrs: None,
            },
        };
        t.replace_approved(
            vec![approve("same", 1), approve("edited", 9), approve("gone", 4)],
            false,
        );
        assert_eq!(
            t.base.hashes.len(),
            5,
            "same: one slot; edited: two; extra, gone: one each"
        );
        assert_eq!(t.approved(b"gone").unwrap().blake3, Some([4; 32]));
        assert!(t.observed(b"gone").is_none());
        assert_eq!(t.approved(b"edited").unwrap().uid, None);
        assert_eq!(t.approved(b"edited").unwrap().gid, Some(2));
        assert!(t.approved(b"extra").is_none());
        assert_eq!(t.observed(b"extra").unwrap().blake3, Some([3; 32]));
        // A new manifest replaces the approved column and drops rows that are neither.
        t.replace_approved(vec![approve("same", 1)], false);
        assert!(t.get(b"gone").is_none());
        assert_eq!(rows(&t).len(), 3);
    }

    #[test]
    fn symlinks_problems_and_odd_bytes_round_trip() {
        let mut link = obs(0, None);
        link.meta.kind = Kind::Symlink;
        link.target = Some(b"../\xff".to_vec());
        let mut broken = obs(0, None);
        broken.problem = Some("cannot read: denied".into());
        broken.meta.nlink = u64::MAX;
        let t = Table::from_observed(vec![
            (RelPath::from_bytes(b"l\xfe\n".to_vec()), link.clone()),
            (path("p"), broken.clone()),
        ]);
        assert_eq!(t.observed(b"l\xfe\n"), Some(link));
        let back = t.observed(b"p").unwrap();
        assert_eq!(back.meta.nlink, u64::from(u32::MAX));
        assert!(back.matches(&broken.clone().into_entry(path("p"))));
        assert!(
            t.cached_file(&path("p")).is_none(),
            "a problem is never a cache hit"
        );
    }

    #[test]
    fn stat_cache_reads_base_and_delta() {
        let mut t = Table::from_observed(vec![(path("a"), obs(1, Some([1; 32])))]);
        assert_eq!(t.cached_file(&path("a")).unwrap().blake3, [1; 32]);
        t.set_observed(&path("a"), Some(obs(2, Some([2; 32]))));
        assert_eq!(t.cached_file(&path("a")).unwrap().size, 2);
        assert!(t.cached_file(&path("b")).is_none());
    }

    #[test]
    fn binary_form_round_trips_and_damage_is_refused() {
        let mut link = obs(0, None);
        link.meta.kind = Kind::Symlink;
        link.target = Some(b"t".to_vec());
        let mut t = Table::from_observed(
            (0..40)
                .map(|i| (path(&format!("d/f{i:02}")), obs(i, Some([i as u8; 32]))))
                .chain([(path("l"), link)])
                .collect(),
        );
        t.replace_approved(
            vec![ManifestEntry {
                path: path("d/f03"),
                state: obs(3, Some([3; 32])).state(),
            }],
            false,
        );
        t.set_observed(&path("d/new"), Some(obs(99, None)));
        let mut out = Vec::new();
        t.encode(&mut out);
        let back = Table::decode(&mut Reader { b: &out, pos: 0 }).unwrap();
        assert_eq!(rows(&back), rows(&t));
        // Any single damaged byte is refused or reads back as a well-formed table: never a panic.
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x55;
            if let Some(t) = Table::decode(&mut Reader { b: &bad, pos: 0 }) {
                rows(&t);
                t.cached_file(&path("d/f03"));
            }
        }
        assert!(
            Table::decode(&mut Reader {
                b: &out[..out.len() - 1],
                pos: 0
            })
            .is_none()
        );
    }

    #[test]
    fn a_deploy_is_fresh_until_it_lands_and_survives_encoding() {
        let entry = |p: &str, size: u64| ManifestEntry {
            path: path(p),
            state: obs(size, Some([size as u8; 32])).state(),
        };
        let fresh = |t: &Table, p: &str| t.get(p.as_bytes()).is_some_and(|r| r.fresh);
        let mut t = Table::from_observed(vec![
            (path("same"), obs(1, Some([1; 32]))),
            (path("edited"), obs(2, Some([2; 32]))),
            (path("gone"), obs(3, Some([3; 32]))),
        ]);
        t.replace_approved(
            vec![entry("same", 1), entry("edited", 2), entry("gone", 3)],
            false,
        );
        assert!(
            !fresh(&t, "same") && !fresh(&t, "edited"),
            "a first manifest deploys nothing"
        );
        // r2: edited changes, gone goes, new comes; same stays as it was.
        t.replace_approved(
            vec![entry("same", 1), entry("edited", 9), entry("new", 5)],
            true,
        );
        assert!(!fresh(&t, "same"));
        assert!(fresh(&t, "edited") && fresh(&t, "new") && fresh(&t, "gone"));
        // Something else lands at `edited` first: still to land.
        assert!(!t.set_observed(&path("edited"), Some(obs(7, Some([7; 32])))));
        assert!(fresh(&t, "edited"));
        let mut bytes = Vec::new();
        t.encode(&mut bytes);
        let mut back = Table::decode(&mut Reader { b: &bytes, pos: 0 }).unwrap();
        assert!(
            fresh(&back, "edited") && fresh(&back, "new"),
            "the flag is saved"
        );
        assert!(back.set_observed(&path("edited"), Some(obs(9, Some([9; 32])))));
        assert!(!fresh(&back, "edited"), "landed");
        assert!(
            back.set_observed(&path("gone"), None),
            "a removal lands too"
        );
        back.set_landed(&path("new"));
        assert!(!fresh(&back, "new"));
        // A later manifest that keeps `edited` as it is does not make it fresh again...
        back.replace_approved(vec![entry("edited", 9), entry("new", 5)], true);
        assert!(!fresh(&back, "edited"));
        // ...but one whose deploy never landed stays to land under the next manifest.
        back.replace_approved(vec![entry("edited", 10), entry("new", 5)], true);
        back.replace_approved(vec![entry("edited", 10), entry("new", 5)], true);
        assert!(fresh(&back, "edited"));
    }

    #[test]
    fn xattrs_sit_beside_the_records_interned_and_round_trip() {
        let label = Xattrs::from_pairs(vec![(
            b"security.selinux".to_vec(),
            b"system_u:object_r:httpd_sys_content_t:s0".to_vec(),
        )]);
        let cap = Xattrs::from_pairs(vec![(b"security.capability".to_vec(), vec![1, 0, 0, 2])]);
        let with = |size: u64, x: &Option<Xattrs>| Observed {
            xattrs: x.clone(),
            ..obs(size, Some([size as u8; 32]))
        };
        let mut t = Table::from_observed(
            (0..40)
                .map(|i| (path(&format!("f{i:02}")), with(i, &label)))
                .chain([(path("plain"), obs(99, Some([9; 32])))])
                .collect(),
        );
        // One set for forty paths with the same label; a path without attributes is not listed.
        assert_eq!(t.base.xsets.len(), 1);
        assert_eq!(t.base.xrows.len(), 40);
        assert_eq!(t.observed(b"f07").unwrap().xattrs, label);
        assert_eq!(t.observed(b"plain").unwrap().xattrs, None);
        // Approved without the capability, observed with it: both sides kept, names included.
        t.replace_approved(
            vec![ManifestEntry {
                path: path("f03"),
                state: with(3, &label).state(),
            }],
            false,
        );
        t.set_observed(&path("f03"), Some(with(3, &cap)));
        t.settle();
        t.merge();
        let row = t.get(b"f03").unwrap();
        assert_eq!(row.approved.unwrap().xattrs, label);
        let seen = row.observed.unwrap().xattrs.unwrap();
        assert_eq!(seen.names[0].name, b"security.capability");
        assert_eq!(t.base.xsets.len(), 2);
        assert_eq!(
            t.cached_file(&path("f03")).unwrap().xattrs,
            cap,
            "the stat cache keeps the attributes seen with the stamp"
        );
        assert_eq!(t.cached_file(&path("plain")).unwrap().xattrs, None);

        let mut out = Vec::new();
        t.encode(&mut out);
        let back = Table::decode(&mut Reader { b: &out, pos: 0 }).unwrap();
        assert_eq!(rows(&back), rows(&t));
        assert_eq!(
            back.observed(b"f03").unwrap().xattrs.unwrap().names,
            seen.names
        );
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x55;
            if let Some(t) = Table::decode(&mut Reader { b: &bad, pos: 0 }) {
                rows(&t);
            }
        }
        assert!(
            Table::decode(&mut Reader {
                b: &out[..out.len() - 4],
                pos: 0
            })
            .is_none()
        );
    }

    #[test]
    fn observed_below_stops_at_the_prefix() {
        let t = Table::from_observed(
            ["d", "d/a", "d/b/c", "d0", "d-x", "e"]
                .iter()
                .map(|p| (path(p), obs(1, None)))
                .collect(),
        );
        let got: Vec<String> = t
            .observed_below(&path("d"))
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(got, vec!["d/a", "d/b/c"]);
    }
}
