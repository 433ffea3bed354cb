//! What the agent remembers per tree between runs, written crash-safe (temp, fsync, rename).
//!
//! The last snapshot is kept in a compact binary form with a BLAKE3 trailer; the rest (release in
//! force, authorized overlay, open unauthorized changes) as JSON. A missing, corrupt or
//! other-version state is not fatal: the tree is re-baselined against its manifest, which
//! re-reports what differs from the approved state.

use std::collections::BTreeMap;
use std::path::Path;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::table::{Observed, Reader, Table, get_xattrs, put_bytes, put_xattrs};
use crate::judge::diff::State;
use crate::scan::snapshot::{Kind, Meta};
use crate::util::pathbytes::RelPath;

/// An unauthorized change still open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenChange {
    /// Its event's sequence number.
    pub seq: u64,
    /// Start of its observation window.
    pub t0: Timestamp,
    /// When it was observed.
    pub observed_at: Timestamp,
}

/// A persisted approved state (serde form of [`State`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDto {
    kind: Kind,
    size: Option<u64>,
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
    blake3: Option<String>,
    target: Option<String>,
    /// The attribute set in the binary form of `snapshot.bin` (hex); absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    xattrs: Option<String>,
}

impl From<&State> for StateDto {
    fn from(s: &State) -> Self {
        StateDto {
            kind: s.kind,
            size: s.size,
            mode: s.mode,
            uid: s.uid,
            gid: s.gid,
            blake3: s.blake3.map(hex::encode),
            target: s.target.as_ref().map(hex::encode),
            xattrs: s.xattrs.as_ref().map(|x| {
                let mut out = Vec::new();
                put_xattrs(&mut out, x);
                hex::encode(out)
            }),
        }
    }
}

impl StateDto {
    fn to_state(&self) -> Option<State> {
        Some(State {
            kind: self.kind,
            size: self.size,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            blake3: match &self.blake3 {
                Some(h) => Some(crate::judge::manifest::parse_hash(h).ok()?),
                None => None,
            },
            target: match &self.target {
                Some(t) => Some(hex::decode(t).ok()?),
                None => None,
            },
            xattrs: match &self.xattrs {
                Some(h) => {
                    let bytes = hex::decode(h).ok()?;
                    let mut r = Reader { b: &bytes, pos: 0 };
                    let x = get_xattrs(&mut r)?;
                    if r.pos != bytes.len() {
                        return None;
                    }
                    Some(x)
                }
                None => None,
            },
        })
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    version: u32,
    release: Option<String>,
    manifest_created_at: Option<Timestamp>,
    /// The exclusions of the manifest in force (older files: none).
    #[serde(default)]
    manifest_exclude: Vec<String>,
    last_scan: Option<Timestamp>,
    last_full_rehash: Option<Timestamp>,
    overlay: Vec<(String, Option<StateDto>)>,
    open: Vec<(String, Vec<OpenChange>)>,
    /// The snapshot file generation this state builds on.
    #[serde(default)]
    generation: u64,
    /// Whether the tree was ever observed (older files: inferred from the files present).
    #[serde(default)]
    observed: Option<bool>,
    /// A first manifest came into force after a baseline: paths from this one (hex) on are still
    /// to be judged against it, in a window starting at `rejudge_t0`.
    #[serde(default)]
    rejudge: Option<String>,
    #[serde(default)]
    rejudge_t0: Option<Timestamp>,
    /// Snapshot changes since that file was written: path → encoded entry (hex), or gone.
    #[serde(default)]
    delta: Vec<(String, Option<String>)>,
    /// Paths (hex) whose deploy landed since that file was written: the delta keeps only a
    /// path's latest observation, which need not be the one that landed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    landed: Vec<String>,
    /// The events of the last committed pass, spooled after this state was saved: a restart
    /// spools the ones the spool does not have yet (a crash between the two writes).
    #[serde(default)]
    outbox: Vec<crate::event::ChangeEvent>,
}

/// The manifest in force, apart from its entries (they are in the table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InForce {
    /// Its release id.
    pub release: String,
    /// When it was built: a first observation window starts there.
    pub created_at: Timestamp,
    /// BLAKE3 of its bytes: the same file seen again is neither verified nor parsed again.
    pub digest: [u8; 32],
}

/// A judgement of a baseline against its first manifest, still under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejudge {
    /// Paths from this one on are still to be judged.
    pub from: RelPath,
    /// Start of their observation window, fixed when the judgement began.
    pub t0: Timestamp,
}

/// Everything the agent tracks for one tree.
#[derive(Debug, Default)]
pub struct TreeState {
    /// Release id of the manifest in force.
    pub release: Option<String>,
    /// Its `created_at`: only a newer manifest is a deploy.
    pub manifest_created_at: Option<Timestamp>,
    /// Its exclusions: the tree's effective exclusions are these plus the config's.
    pub manifest_exclude: Vec<String>,
    /// When the last observation finished.
    pub last_scan: Option<Timestamp>,
    /// When the last full rehash finished.
    pub last_full_rehash: Option<Timestamp>,
    /// Authorized changes on top of the manifest (`None` = authorized removal).
    pub overlay: BTreeMap<RelPath, Option<State>>,
    /// Unauthorized changes still open, by path.
    pub open: BTreeMap<RelPath, Vec<OpenChange>>,
    /// Approved and last observed state per path; shared with the scanner as its stat cache,
    /// so it is never copied.
    pub table: std::sync::Arc<Table>,
    /// Whether the tree was ever observed (before that, a path's previous state is the approved
    /// one).
    pub observed: bool,
    /// Paths still to be judged against the approved state by full scans (a first manifest for
    /// a tree observed without one); moves on as passes commit them.
    pub rejudge: Option<Rejudge>,
    /// BLAKE3 of the manifest whose approved states are in the table (saved with it).
    pub approved_from: Option<[u8; 32]>,
    /// The approved states changed: the next save rewrites `snapshot.bin`.
    rewrite: bool,
    /// Observations not yet in `snapshot.bin` (saved in `state.json`).
    pub delta: BTreeMap<RelPath, Option<Observed>>,
    /// Deploys landed since `snapshot.bin` was written (saved in `state.json`).
    pub landed: std::collections::BTreeSet<RelPath>,
    /// Generation of `snapshot.bin`.
    pub generation: u64,
    /// Events of the last committed pass (see [`Persisted::outbox`]).
    pub outbox: Vec<crate::event::ChangeEvent>,
}

/// Above this many snapshot changes, a save rewrites `snapshot.bin` instead of growing the delta.
const COMPACT_AT: usize = 4096;

impl TreeState {
    /// Loads a tree's state; `Err` carries why it had to be rebuilt (the caller logs it).
    ///
    /// Every save writes exactly one file: `state.json` (small: the delta since the snapshot
    /// file) or `snapshot.bin` (everything, when the delta grew large). The newer one wins.
    pub fn load(dir: &Path) -> Result<TreeState, String> {
        let json_path = dir.join("state.json");
        let snap_path = dir.join("snapshot.bin");
        let json: Option<Persisted> = match std::fs::read_to_string(&json_path) {
            Ok(t) => Some(
                serde_json::from_str(&t).map_err(|e| format!("{}: {e}", json_path.display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("{}: {e}", json_path.display())),
        };
        let bin = match std::fs::read(&snap_path) {
            Ok(bytes) => {
                Some(decode_file(&bytes).map_err(|why| format!("{}: {why}", snap_path.display()))?)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("{}: {e}", snap_path.display())),
        };
        let (p, bin) = match (json, bin) {
            (None, None) => return Ok(TreeState::default()),
            (Some(p), None) if p.generation == 0 => (p, None),
            (Some(_), None) => {
                return Err(format!("{}: snapshot.bin is missing", json_path.display()));
            }
            (None, Some(mut f)) => (std::mem::take(&mut f.persisted), Some(f)),
            (Some(p), Some(mut f)) => {
                if f.persisted.generation > p.generation {
                    // Crash after the snapshot file was written, before state.json followed it.
                    (std::mem::take(&mut f.persisted), Some(f))
                } else if f.persisted.generation == p.generation {
                    (p, Some(f))
                } else {
                    return Err(format!(
                        "{}: generation {} is ahead of snapshot.bin",
                        json_path.display(),
                        p.generation
                    ));
                }
            }
        };
        if p.version != 1 {
            return Err(format!(
                "{}: state version {} is not 1",
                json_path.display(),
                p.version
            ));
        }
        let bad = |what: &str| format!("{}: bad {what}", json_path.display());
        let path = |h: &str| {
            hex::decode(h)
                .map(RelPath::from_bytes)
                .map_err(|_| bad("path"))
        };
        let mut overlay = BTreeMap::new();
        for (k, v) in p.overlay {
            let state = match v {
                Some(d) => Some(d.to_state().ok_or_else(|| bad("overlay entry"))?),
                None => None,
            };
            overlay.insert(path(&k)?, state);
        }
        let mut open = BTreeMap::new();
        for (k, v) in p.open {
            open.insert(path(&k)?, v);
        }
        let mut delta = BTreeMap::new();
        for (k, v) in p.delta {
            let entry = match v {
                Some(h) => {
                    let bytes = hex::decode(h).map_err(|_| bad("delta entry"))?;
                    let mut r = Reader { b: &bytes, pos: 0 };
                    let (_, o) = decode_entry(&mut r).ok_or_else(|| bad("delta entry"))?;
                    Some(o)
                }
                None => None,
            };
            delta.insert(path(&k)?, entry);
        }
        let observed = p.observed.unwrap_or(bin.is_some() || !delta.is_empty());
        let (mut table, approved_from) = match bin {
            Some(f) => (f.table, f.approved_from),
            None => (Table::default(), None),
        };
        for (k, v) in &delta {
            table.set_observed(k, v.clone());
        }
        let mut landed = std::collections::BTreeSet::new();
        for k in p.landed {
            let k = path(&k)?;
            table.set_landed(&k);
            landed.insert(k);
        }
        table.settle();
        Ok(TreeState {
            release: p.release,
            manifest_created_at: p.manifest_created_at,
            manifest_exclude: p.manifest_exclude,
            last_scan: p.last_scan,
            last_full_rehash: p.last_full_rehash,
            overlay,
            open,
            table: std::sync::Arc::new(table),
            observed,
            rejudge: match (p.rejudge, p.rejudge_t0) {
                (Some(h), Some(t0)) => Some(Rejudge {
                    from: path(&h)?,
                    t0,
                }),
                (None, None) => None,
                _ => return Err(bad("rejudge")),
            },
            approved_from,
            rewrite: false,
            delta,
            landed,
            generation: p.generation,
            outbox: p.outbox,
        })
    }

    fn persisted(&self, with_delta: bool) -> Persisted {
        Persisted {
            version: 1,
            release: self.release.clone(),
            manifest_created_at: self.manifest_created_at,
            manifest_exclude: self.manifest_exclude.clone(),
            last_scan: self.last_scan,
            last_full_rehash: self.last_full_rehash,
            overlay: self
                .overlay
                .iter()
                .map(|(k, v)| (hex::encode(k.as_bytes()), v.as_ref().map(StateDto::from)))
                .collect(),
            open: self
                .open
                .iter()
                .map(|(k, v)| (hex::encode(k.as_bytes()), v.clone()))
                .collect(),
            generation: self.generation,
            observed: Some(self.observed),
            rejudge: self
                .rejudge
                .as_ref()
                .map(|r| hex::encode(r.from.as_bytes())),
            rejudge_t0: self.rejudge.as_ref().map(|r| r.t0),
            delta: if with_delta {
                self.delta
                    .iter()
                    .map(|(k, v)| {
                        let enc = v.as_ref().map(|o| {
                            let mut out = Vec::new();
                            encode_entry(&mut out, k.as_bytes(), o);
                            hex::encode(out)
                        });
                        (hex::encode(k.as_bytes()), enc)
                    })
                    .collect()
            } else {
                Vec::new()
            },
            landed: if with_delta {
                self.landed
                    .iter()
                    .map(|k| hex::encode(k.as_bytes()))
                    .collect()
            } else {
                Vec::new()
            },
            outbox: self.outbox.clone(),
        }
    }

    /// Records what is at `path` now, in the table and in the delta saved next.
    pub fn observe(&mut self, path: &RelPath, observed: Option<Observed>) {
        // When the next save rewrites snapshot.bin anyway (first save, or a delta that outgrew
        // state.json), the delta would only be thrown away: a first scan of a big tree would
        // otherwise hold a second copy of every observation.
        let rewrite = self.generation == 0 || self.rewrite || self.delta.len() > COMPACT_AT;
        if rewrite {
            self.rewrite = true;
            self.delta.clear();
            self.landed.clear();
        } else {
            self.delta.insert(path.clone(), observed.clone());
        }
        if std::sync::Arc::make_mut(&mut self.table).set_observed(path, observed) && !rewrite {
            self.landed.insert(path.clone());
        }
        self.observed = true;
    }

    /// The manifest in force: there is one when its approved states are in the table.
    pub fn in_force(&self) -> Option<InForce> {
        Some(InForce {
            release: self.release.clone()?,
            created_at: self.manifest_created_at?,
            digest: self.approved_from?,
        })
    }

    /// Puts a manifest's approved states in force (`digest`: BLAKE3 of its bytes); `deploy`: it
    /// replaces an earlier manifest, so what it approves anew is still to land (see
    /// [`super::table::Row::fresh`]).
    pub fn approve(
        &mut self,
        entries: Vec<crate::judge::manifest::ManifestEntry>,
        digest: [u8; 32],
        deploy: bool,
    ) {
        std::sync::Arc::make_mut(&mut self.table).replace_approved(entries, deploy);
        self.approved_from = Some(digest);
        self.rewrite = true;
    }

    /// Saves atomically: one file per save (see [`TreeState::load`]).
    pub fn save(&mut self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let never_written = self.generation == 0 && self.observed;
        if never_written || self.rewrite {
            self.generation += 1;
            let p = self.persisted(false);
            super::spool::write_atomic(
                &dir.join("snapshot.bin"),
                &encode_file(self.generation, &p, self.approved_from, &self.table),
            )?;
            self.delta.clear();
            self.landed.clear();
            self.rewrite = false;
        }
        let p = self.persisted(true);
        super::spool::write_atomic(
            &dir.join("state.json"),
            serde_json::to_string(&p)
                .expect("state serializes")
                .as_bytes(),
        )
    }
}

const FILE_MAGIC: &[u8; 8] = b"DWSNAP4\n";
/// Earlier layouts, rebuilt, not read: one entry per observed path and no approved states (1, 2);
/// no extended attributes (3: read as "none", every path with attributes would be reported).
const OLD_MAGICS: [&[u8; 8]; 3] = [b"DWSNAP1\n", b"DWSNAP2\n", b"DWSNAP3\n"];

/// What `snapshot.bin` holds.
#[derive(Debug)]
struct SnapshotFile {
    persisted: Persisted,
    /// BLAKE3 of the manifest whose approved states the table holds.
    approved_from: Option<[u8; 32]>,
    table: Table,
}

/// The snapshot file: magic | generation | state JSON (length-prefixed) | approved-from digest
/// (flag byte, 32 bytes) | table | BLAKE3 of everything before.
fn encode_file(
    generation: u64,
    p: &Persisted,
    approved_from: Option<[u8; 32]>,
    table: &Table,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(FILE_MAGIC);
    out.extend_from_slice(&generation.to_le_bytes());
    put_bytes(
        &mut out,
        serde_json::to_string(p)
            .expect("state serializes")
            .as_bytes(),
    );
    out.push(u8::from(approved_from.is_some()));
    out.extend_from_slice(&approved_from.unwrap_or_default());
    table.encode(&mut out);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

fn decode_file(bytes: &[u8]) -> Result<SnapshotFile, &'static str> {
    if OLD_MAGICS.iter().any(|m| bytes.starts_with(*m)) {
        return Err("written by an older driftwatch (re-baselining)");
    }
    if bytes.len() < 16 + 32 || &bytes[..8] != FILE_MAGIC {
        return Err("not a driftwatch snapshot");
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return Err("checksum mismatch (damaged)");
    }
    let corrupt = "corrupt snapshot";
    let mut r = Reader { b: body, pos: 8 };
    let generation = r.u64().ok_or(corrupt)?;
    let mut persisted: Persisted =
        serde_json::from_slice(&r.bytes().ok_or(corrupt)?).map_err(|_| corrupt)?;
    persisted.generation = generation;
    let has = r.u8().ok_or(corrupt)?;
    let digest: [u8; 32] = r.take(32).and_then(|d| d.try_into().ok()).ok_or(corrupt)?;
    let table = Table::decode(&mut r).ok_or(corrupt)?;
    if r.pos != body.len() || has > 1 {
        return Err(corrupt);
    }
    Ok(SnapshotFile {
        persisted,
        approved_from: (has == 1).then_some(digest),
        table,
    })
}

fn encode_entry(out: &mut Vec<u8>, path: &[u8], e: &Observed) {
    put_bytes(out, path);
    let m = &e.meta;
    out.push(m.kind.code());
    for v in [m.size, m.ino, m.dev, m.nlink] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for v in [m.mode, m.uid, m.gid] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for v in [m.mtime_ns, m.ctime_ns] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let flags = u8::from(e.blake3.is_some())
        | (u8::from(e.target.is_some()) << 1)
        | (u8::from(e.problem.is_some()) << 2)
        | (u8::from(e.xattrs.is_some()) << 3);
    out.push(flags);
    if let Some(h) = &e.blake3 {
        out.extend_from_slice(h);
    }
    if let Some(t) = &e.target {
        put_bytes(out, t);
    }
    if let Some(p) = &e.problem {
        put_bytes(out, p.as_bytes());
    }
    if let Some(x) = &e.xattrs {
        put_xattrs(out, x);
    }
}

fn decode_entry(r: &mut Reader<'_>) -> Option<(RelPath, Observed)> {
    let path = RelPath::from_bytes(r.bytes()?);
    let kind = Kind::from_code(r.take(1)?[0])?;
    let (size, ino, dev, nlink) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
    let (mode, uid, gid) = (r.u32()?, r.u32()?, r.u32()?);
    let (mtime_ns, ctime_ns) = (r.i64()?, r.i64()?);
    let flags = r.take(1)?[0];
    let blake3 = if flags & 1 != 0 {
        Some(r.take(32)?.try_into().ok()?)
    } else {
        None
    };
    let target = if flags & 2 != 0 {
        Some(r.bytes()?)
    } else {
        None
    };
    let problem = if flags & 4 != 0 {
        Some(String::from_utf8(r.bytes()?).ok()?)
    } else {
        None
    };
    let xattrs = if flags & 8 != 0 {
        Some(get_xattrs(r)?)
    } else {
        None
    };
    if flags & !0xf != 0 {
        return None;
    }
    let meta = Meta {
        kind,
        size,
        mode,
        uid,
        gid,
        mtime_ns,
        ctime_ns,
        ino,
        dev,
        nlink,
    };
    Some((
        path,
        Observed {
            meta,
            blake3,
            target,
            problem,
            xattrs,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(hash: Option<[u8; 32]>) -> Observed {
        Observed {
            meta: Meta {
                kind: Kind::File,
                size: 3,
                mode: 0o644,
                uid: 1,
                gid: 2,
                mtime_ns: -5,
                ctime_ns: 7,
                ino: 9,
                dev: 10,
                nlink: 1,
            },
            blake3: hash,
            target: Some(b"\xfft".to_vec()),
            problem: Some("denied".into()),
            xattrs: crate::scan::xattr::Xattrs::from_pairs(vec![
                (b"security.capability".to_vec(), vec![1, 0, 0, 2]),
                (b"user.\xff".to_vec(), vec![]),
            ]),
        }
    }

    fn rows(t: &Table) -> Vec<(Vec<u8>, Observed)> {
        let mut out = Vec::new();
        t.walk_from(b"", |p, r| {
            out.push((p.to_vec(), r.observed.unwrap()));
            true
        });
        out
    }

    #[test]
    fn snapshot_file_round_trips_and_refuses_damage_and_old_versions() {
        let want = vec![
            (RelPath::from_bytes(b"a\xff".to_vec()), obs(Some([3; 32]))),
            (RelPath::from_bytes(b"b\nc".to_vec()), obs(None)),
        ];
        let p = Persisted {
            version: 1,
            ..Persisted::default()
        };
        let bytes = encode_file(7, &p, Some([9; 32]), &Table::from_observed(want.clone()));
        let back = decode_file(&bytes).unwrap();
        assert_eq!(back.persisted.generation, 7);
        assert_eq!(back.approved_from, Some([9; 32]));
        let got: Vec<(RelPath, Observed)> = rows(&back.table)
            .into_iter()
            .map(|(p, o)| (RelPath::from_bytes(p), o))
            .collect();
        assert_eq!(got, want);
        let mut bad = bytes.clone();
        bad[20] ^= 1;
        assert_eq!(decode_file(&bad).err(), Some("checksum mismatch (damaged)"));
        assert!(decode_file(&bytes[..bytes.len() - 1]).is_err());
        let mut old = bytes.clone();
        old[..8].copy_from_slice(b"DWSNAP2\n");
        assert!(decode_file(&old).unwrap_err().contains("older driftwatch"));
    }

    #[test]
    fn state_round_trips_and_corrupt_state_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = TreeState {
            release: Some("r1".into()),
            ..TreeState::default()
        };
        let p = RelPath::from_bytes(b"x".to_vec());
        s.open.insert(
            p.clone(),
            vec![OpenChange {
                seq: 4,
                t0: Timestamp::UNIX_EPOCH,
                observed_at: Timestamp::UNIX_EPOCH,
            }],
        );
        s.overlay.insert(p.clone(), None);
        s.observed = true;
        s.save(dir.path()).unwrap();
        let back = TreeState::load(dir.path()).unwrap();
        assert_eq!(back.release.as_deref(), Some("r1"));
        assert_eq!(back.open[&p][0].seq, 4);
        assert_eq!(back.overlay[&p], None);
        assert!(back.observed);
        std::fs::write(dir.path().join("state.json"), "{not json").unwrap();
        assert!(TreeState::load(dir.path()).is_err());
    }

    #[test]
    fn delta_saves_and_compaction_survive_a_crash_between_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = TreeState::default();
        s.observe(
            &RelPath::from_bytes(b"a".to_vec()),
            Some(obs(Some([1; 32]))),
        );
        s.save(dir.path()).unwrap();
        assert_eq!(s.generation, 1, "the first save writes the snapshot file");
        // A small change goes to state.json only.
        s.observe(&RelPath::from_bytes(b"b".to_vec()), Some(obs(None)));
        s.outbox = vec![];
        s.save(dir.path()).unwrap();
        assert_eq!(s.generation, 1);
        let back = TreeState::load(dir.path()).unwrap();
        assert_eq!(rows(&back.table), rows(&s.table));
        // A crash after a compaction wrote snapshot.bin but before state.json followed: the newer
        // snapshot file wins, with the state embedded in it.
        let old_json = std::fs::read(dir.path().join("state.json")).unwrap();
        s.release = Some("r9".into());
        for i in 0..(COMPACT_AT + 1) {
            s.observe(&RelPath::from_bytes(format!("x{i}")), Some(obs(None)));
        }
        s.observe(&RelPath::from_bytes(b"a".to_vec()), None);
        s.save(dir.path()).unwrap();
        assert_eq!(s.generation, 2);
        std::fs::write(dir.path().join("state.json"), old_json).unwrap();
        let back = TreeState::load(dir.path()).unwrap();
        assert_eq!(back.release.as_deref(), Some("r9"));
        assert_eq!(rows(&back.table), rows(&s.table));
        assert!(back.table.get(b"a").is_none());
    }
}
