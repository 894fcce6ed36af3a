//! Two-way sync of a local folder with a folder in a file space.
//!
//! Three states meet for every path: the **local** file (its size and mtime, and its BLAKE3
//! when those differ from what was last synced), the **remote** file as the server's change
//! feed last described it (kept in the index, with the feed's cursor), and the **base**: what
//! both sides held when the path was last in sync. A side changed when it differs from the
//! base; what to do follows from which sides changed:
//!
//! | local    | remote   | action                                                        |
//! |----------|----------|---------------------------------------------------------------|
//! | changed  | same     | upload (compare-and-set on the remote version seen), or delete |
//! | same     | changed  | download (only chunks no local file has), or delete locally   |
//! | changed  | changed  | same content: record it; a delete and an edit: the edit wins; |
//! |          |          | two edits: the local one is kept as a conflict copy           |
//!
//! Nothing is written in place: a download goes to a temp file under `.sb-sync/tmp`, is
//! checked against its BLAKE3 and then renamed over the destination, and only if the
//! destination is still what the scan saw. A remote change is compare-and-set, so an edit made
//! elsewhere meanwhile is never overwritten or deleted: it is deferred to the next pass, which
//! sees both changes. The index is updated after each step, so a sync killed at any point
//! picks up where it was: a step done but not recorded is recognised by its content.

use crate::{Client, ClientError, Result};
use rusqlite::{Connection, OptionalExtension, params};
use sb_proto::FileChunks;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The folder, at the root of a synced folder, that holds the index and temp files. Never
/// synced.
pub const STATE_DIR: &str = ".sb-sync";

/// Passes per run at most: a pass defers what changed under it, and the next one settles it.
const PASSES_MAX: usize = 4;

/// Files moved at once.
const PARALLEL_FILES: usize = 4;

/// Something a sync did, as it happens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncEvent {
    Uploaded {
        path: String,
        bytes_sent: u64,
    },
    Downloaded {
        path: String,
        bytes_fetched: u64,
    },
    DeletedLocal {
        path: String,
    },
    DeletedRemote {
        path: String,
    },
    /// Both sides edited `path`: the remote content keeps the name, the local one is `copy`.
    Conflict {
        path: String,
        copy: String,
    },
    /// Changed while being synced; the next pass takes it up.
    Deferred {
        path: String,
        reason: String,
    },
    /// Cannot be synced (the server refused it); left alone.
    Skipped {
        path: String,
        reason: String,
    },
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    pub uploaded: usize,
    pub downloaded: usize,
    pub deleted_local: usize,
    pub deleted_remote: usize,
    /// Conflict copies made, by path.
    pub conflicts: Vec<String>,
    /// Paths that could not be synced, with why.
    pub skipped: Vec<(String, String)>,
    /// Content bytes that crossed the network each way.
    pub bytes_sent: u64,
    pub bytes_fetched: u64,
    /// Files in sync at the end.
    pub files: usize,
    pub passes: usize,
}

impl SyncReport {
    fn note(&mut self, e: &SyncEvent) {
        match e {
            SyncEvent::Uploaded { bytes_sent, .. } => {
                self.uploaded += 1;
                self.bytes_sent += bytes_sent;
            }
            SyncEvent::Downloaded { bytes_fetched, .. } => {
                self.downloaded += 1;
                self.bytes_fetched += bytes_fetched;
            }
            SyncEvent::DeletedLocal { .. } => self.deleted_local += 1,
            SyncEvent::DeletedRemote { .. } => self.deleted_remote += 1,
            SyncEvent::Conflict { copy, .. } => self.conflicts.push(copy.clone()),
            SyncEvent::Deferred { .. } => {}
            SyncEvent::Skipped { path, reason } => {
                self.skipped.push((path.clone(), reason.clone()))
            }
        }
    }
}

/// A local file as the scan found it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Local {
    size: u64,
    mtime_ns: i64,
    blake3: String,
}

/// A remote file as the change feed described it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Remote {
    version: i64,
    size: u64,
    blake3: String,
}

/// What both sides held when a path was last in sync.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Base {
    size: u64,
    mtime_ns: i64,
    blake3: String,
    version: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// Both sides agree: remember it (with the local file's current size and mtime).
    Record,
    /// Both sides deleted it.
    Forget,
    Upload {
        base_version: i64,
    },
    Download,
    DeleteLocal,
    DeleteRemote {
        version: i64,
    },
    Conflict,
}

/// What to do with one path, from its three states.
fn decide(local: Option<&Local>, remote: Option<&Remote>, base: Option<&Base>) -> Option<Step> {
    let local_changed = match (local, base) {
        (Some(l), Some(b)) => l.blake3 != b.blake3,
        (None, None) => false,
        _ => true,
    };
    let remote_changed = match (remote, base) {
        (Some(r), Some(b)) => r.version != b.version || r.blake3 != b.blake3,
        (None, None) => false,
        _ => true,
    };
    match (local_changed, remote_changed) {
        (false, false) => match (local, base) {
            // Same content, touched: keep the new mtime so it is not hashed again.
            (Some(l), Some(b)) if (l.size, l.mtime_ns) != (b.size, b.mtime_ns) => {
                Some(Step::Record)
            }
            _ => None,
        },
        (true, false) => Some(match (local, remote) {
            (Some(_), r) => Step::Upload {
                base_version: r.map_or(0, |r| r.version),
            },
            (None, Some(r)) => Step::DeleteRemote { version: r.version },
            (None, None) => Step::Forget,
        }),
        (false, true) => Some(match remote {
            Some(_) => Step::Download,
            None if local.is_some() => Step::DeleteLocal,
            None => Step::Forget,
        }),
        (true, true) => Some(match (local, remote) {
            (None, None) => Step::Forget,
            (Some(l), Some(r)) if l.blake3 == r.blake3 => Step::Record,
            // An edit beats a delete.
            (None, Some(_)) => Step::Download,
            (Some(_), None) => Step::Upload { base_version: 0 },
            (Some(_), Some(_)) => Step::Conflict,
        }),
    }
}

/// `name.sync-conflict-<UTC timestamp>-<device>.ext`, beside the original.
pub fn conflict_name(rel: &str, at_secs: i64, device: &str) -> String {
    let (dir, name) = match rel.rsplit_once('/') {
        Some((d, n)) => (format!("{d}/"), n),
        None => (String::new(), rel),
    };
    // A leading dot is part of the name, not an extension.
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let device: String = device
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let (y, mo, d, h, mi, s) = utc(at_secs);
    format!("{dir}{stem}.sync-conflict-{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}-{device}{ext}")
}

/// Civil UTC time of a Unix timestamp (days-from-civil inverted, proleptic Gregorian).
fn utc(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

fn local_err(path: &Path, e: impl std::fmt::Display) -> ClientError {
    ClientError::Local(format!("{}: {e}", path.display()))
}

fn db_err(e: rusqlite::Error) -> ClientError {
    ClientError::Local(format!("sync index: {e}"))
}

fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Size and mtime of a regular file, `None` if there is none.
fn stat(path: &Path) -> Option<(u64, i64)> {
    let m = std::fs::symlink_metadata(path).ok()?;
    m.is_file().then(|| (m.len(), mtime_ns(&m)))
}

fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path)?)?;
    Ok(h.finalize().to_hex().to_string())
}

/// Every regular file under `root` by `/`-separated relative path, with size and mtime.
/// Skips the state folder, downloads in progress, symbolic links and names that are not UTF-8.
fn scan(root: &Path) -> std::io::Result<BTreeMap<String, (u64, i64)>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            // A folder removed while scanning has nothing in it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !prefix.is_empty() => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if prefix.is_empty() && name == STATE_DIR {
                continue;
            }
            let rel = format!("{prefix}{name}");
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if meta.is_dir() {
                stack.push((entry.path(), format!("{rel}/")));
            } else if meta.is_file() && !name.ends_with(".sb-part") {
                out.insert(rel, (meta.len(), mtime_ns(&meta)));
            }
        }
    }
    Ok(out)
}

/// Removes the empty folders between `rel`'s parent and the root.
fn prune_empty_dirs(root: &Path, rel: &str) {
    let mut rel = rel;
    while let Some((parent, _)) = rel.rsplit_once('/') {
        if std::fs::remove_dir(root.join(parent)).is_err() {
            break;
        }
        rel = parent;
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS base (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    blake3 TEXT NOT NULL, version INTEGER NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS remote (
    path TEXT PRIMARY KEY, version INTEGER NOT NULL, size INTEGER NOT NULL,
    blake3 TEXT NOT NULL) STRICT;
";

/// One local folder kept in sync with one remote folder. Holds a lock on the folder while it
/// lives: two syncs of one folder at once are refused.
pub struct Syncer {
    client: Client,
    space: Option<String>,
    root: PathBuf,
    /// The remote folder, normalised, without a trailing `/` (empty for the space's root).
    remote: String,
    device: String,
    db: Mutex<Connection>,
    _lock: std::fs::File,
}

impl Syncer {
    /// Opens (or sets up) the sync of `local` with `remote` in `space` (the caller's own when
    /// `None`). A folder set up for another remote folder or space is refused.
    pub fn open(
        client: Client,
        local: &Path,
        remote: &str,
        space: Option<String>,
        device: &str,
    ) -> Result<Self> {
        std::fs::create_dir_all(local).map_err(|e| local_err(local, e))?;
        let root = local.canonicalize().map_err(|e| local_err(local, e))?;
        if !root.is_dir() {
            return Err(local_err(&root, "not a folder"));
        }
        let remote = remote.trim_end_matches('/').to_string();
        if !remote.is_empty() && !remote.starts_with('/') {
            return Err(ClientError::Local(format!(
                "the remote folder is a path from the root of the space, like /{remote}"
            )));
        }
        let state = root.join(STATE_DIR);
        let tmp = state.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| local_err(&tmp, e))?;
        let lock_path = state.join("lock");
        let lock = std::fs::File::create(&lock_path).map_err(|e| local_err(&lock_path, e))?;
        if lock.try_lock().is_err() {
            return Err(ClientError::Local(format!(
                "another sync of {} is running; wait for it, or stop it",
                root.display()
            )));
        }
        // Downloads a killed sync left behind are of no use: their content is fetched again.
        for entry in std::fs::read_dir(&tmp).map_err(|e| local_err(&tmp, e))? {
            let path = entry.map_err(|e| local_err(&tmp, e))?.path();
            std::fs::remove_file(&path).map_err(|e| local_err(&path, e))?;
        }
        let db = Connection::open(state.join("index.db")).map_err(db_err)?;
        db.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .map_err(db_err)?;
        db.execute_batch(SCHEMA).map_err(db_err)?;
        let target = format!("{}:{}", space.as_deref().unwrap_or(""), remote);
        let existing: Option<String> = db
            .query_row("SELECT value FROM meta WHERE key = 'target'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db_err)?;
        match existing {
            Some(t) if t != target => {
                return Err(ClientError::Local(format!(
                    "{} is synced with {t} (space:folder), not {target}; to sync it with \
                     another folder, remove {} first",
                    root.display(),
                    state.display()
                )));
            }
            Some(_) => {}
            None => {
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('target', ?1), ('cursor', '0')",
                    [&target],
                )
                .map_err(db_err)?;
            }
        }
        Ok(Self {
            client,
            space,
            root,
            remote,
            device: device.to_string(),
            db: Mutex::new(db),
            _lock: lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remote_path(&self, rel: &str) -> String {
        format!("{}/{rel}", self.remote)
    }

    fn rel<'a>(&self, remote_path: &'a str) -> Option<&'a str> {
        remote_path
            .strip_prefix(self.remote.as_str())?
            .strip_prefix('/')
    }

    fn cursor(&self) -> Result<i64> {
        let v: String = self
            .db()
            .query_row("SELECT value FROM meta WHERE key = 'cursor'", [], |r| {
                r.get(0)
            })
            .map_err(db_err)?;
        Ok(v.parse().unwrap_or(0))
    }

    /// Reads the change feed from the cursor to its end into the remote table.
    async fn pull_changes(&self) -> Result<()> {
        loop {
            let after = self.cursor()?;
            let page = self
                .client
                .files_changes(self.space.as_deref(), after)
                .await?;
            let Some(last) = page.last().map(|c| c.seq) else {
                return Ok(());
            };
            let mut db = self.db();
            let tx = db.transaction().map_err(db_err)?;
            for c in &page {
                let Some(rel) = self.rel(&c.path) else {
                    continue;
                };
                if c.deleted {
                    tx.execute("DELETE FROM remote WHERE path = ?1", [rel])
                } else {
                    tx.execute(
                        "INSERT OR REPLACE INTO remote (path, version, size, blake3) \
                         VALUES (?1, ?2, ?3, ?4)",
                        params![rel, c.version, c.size as i64, c.blake3],
                    )
                }
                .map_err(db_err)?;
            }
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'cursor'",
                [last.to_string()],
            )
            .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
        }
    }

    fn load_base(&self) -> Result<BTreeMap<String, Base>> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT path, size, mtime_ns, blake3, version FROM base")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Base {
                        size: r.get::<_, i64>(1)? as u64,
                        mtime_ns: r.get(2)?,
                        blake3: r.get(3)?,
                        version: r.get(4)?,
                    },
                ))
            })
            .map_err(db_err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(db_err)
    }

    fn load_remote(&self) -> Result<BTreeMap<String, Remote>> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT path, version, size, blake3 FROM remote")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Remote {
                        version: r.get(1)?,
                        size: r.get::<_, i64>(2)? as u64,
                        blake3: r.get(3)?,
                    },
                ))
            })
            .map_err(db_err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(db_err)
    }

    fn set_base(
        &self,
        rel: &str,
        size: u64,
        mtime_ns: i64,
        blake3: &str,
        version: i64,
    ) -> Result<()> {
        self.db()
            .execute(
                "INSERT OR REPLACE INTO base (path, size, mtime_ns, blake3, version) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![rel, size as i64, mtime_ns, blake3, version],
            )
            .map_err(db_err)?;
        Ok(())
    }

    fn set_remote(&self, rel: &str, version: i64, size: u64, blake3: &str) -> Result<()> {
        self.db()
            .execute(
                "INSERT OR REPLACE INTO remote (path, version, size, blake3) VALUES (?1, ?2, ?3, ?4)",
                params![rel, version, size as i64, blake3],
            )
            .map_err(db_err)?;
        Ok(())
    }

    fn forget(&self, rel: &str, remote_too: bool) -> Result<()> {
        let db = self.db();
        db.execute("DELETE FROM base WHERE path = ?1", [rel])
            .map_err(db_err)?;
        if remote_too {
            db.execute("DELETE FROM remote WHERE path = ?1", [rel])
                .map_err(db_err)?;
        }
        Ok(())
    }

    /// The local files, hashed where size or mtime differ from the base.
    async fn scan_local(&self, base: &BTreeMap<String, Base>) -> Result<BTreeMap<String, Local>> {
        let root = self.root.clone();
        let base: HashMap<String, (u64, i64, String)> = base
            .iter()
            .map(|(k, b)| (k.clone(), (b.size, b.mtime_ns, b.blake3.clone())))
            .collect();
        tokio::task::spawn_blocking(move || -> Result<BTreeMap<String, Local>> {
            let mut out = BTreeMap::new();
            for (rel, (size, mtime_ns)) in scan(&root).map_err(|e| local_err(&root, e))? {
                let blake3 = match base.get(&rel) {
                    Some((s, m, h)) if (*s, *m) == (size, mtime_ns) => h.clone(),
                    _ => match hash_file(&root.join(&rel)) {
                        Ok(h) => h,
                        // Gone since the scan: absent.
                        Err(_) => continue,
                    },
                };
                out.insert(
                    rel,
                    Local {
                        size,
                        mtime_ns,
                        blake3,
                    },
                );
            }
            Ok(out)
        })
        .await
        .map_err(|e| ClientError::Local(e.to_string()))?
    }

    /// Syncs until both sides agree (or `PASSES_MAX` passes), reporting each step to `event`
    /// and the bytes of each transfer to `bytes(path, done, total)`.
    pub async fn run(
        &self,
        event: &(dyn Fn(&SyncEvent) + Send + Sync),
        bytes: &(dyn Fn(&str, u64, u64) + Send + Sync),
    ) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        for pass in 1..=PASSES_MAX {
            report.passes = pass;
            let deferred = self.pass(&mut report, event, bytes).await?;
            if !deferred {
                break;
            }
        }
        report.files = self.load_base()?.len();
        Ok(report)
    }

    /// One pass; true if something was deferred to the next.
    async fn pass(
        &self,
        report: &mut SyncReport,
        event: &(dyn Fn(&SyncEvent) + Send + Sync),
        bytes: &(dyn Fn(&str, u64, u64) + Send + Sync),
    ) -> Result<bool> {
        self.pull_changes().await?;
        let base = self.load_base()?;
        let remote = self.load_remote()?;
        let local = self.scan_local(&base).await?;
        let paths: BTreeSet<&String> = local
            .keys()
            .chain(remote.keys())
            .chain(base.keys())
            .collect();
        let mut steps: Vec<(&str, Step)> = paths
            .into_iter()
            .filter_map(|p| {
                decide(local.get(p), remote.get(p), base.get(p)).map(|s| (p.as_str(), s))
            })
            .collect();
        // In phases: uploads first and local deletions last, so that a file renamed elsewhere
        // is assembled from its old copy here before that copy is removed. Within a phase,
        // `PARALLEL_FILES` at a time.
        let phase = |s: &Step| match s {
            Step::Record | Step::Forget => 0,
            Step::Conflict => 1,
            Step::Upload { .. } => 2,
            Step::Download => 3,
            Step::DeleteRemote { .. } => 4,
            Step::DeleteLocal => 5,
        };
        steps.sort_by_key(|(_, s)| phase(s));
        // Where each content is already present locally, for downloads.
        let by_hash: HashMap<&str, &str> = local
            .iter()
            .map(|(p, l)| (l.blake3.as_str(), p.as_str()))
            .collect();
        let cx = PassCx {
            local: &local,
            remote: &remote,
            by_hash: &by_hash,
            bytes,
        };
        use futures_util::StreamExt;
        let mut deferred = false;
        for group in steps.chunk_by(|x, y| phase(&x.1) == phase(&y.1)) {
            let mut results = futures_util::stream::iter(group.iter().cloned())
                .map(|(rel, step)| {
                    let cx = &cx;
                    async move { (rel, self.apply(cx, rel, step).await) }
                })
                .buffered(PARALLEL_FILES);
            while let Some((rel, r)) = results.next().await {
                let e = match r {
                    Ok(Some(e)) => e,
                    Ok(None) => continue,
                    Err(e) => match classify(&e) {
                        Outcome::Defer => SyncEvent::Deferred {
                            path: rel.to_string(),
                            reason: e.to_string(),
                        },
                        Outcome::Skip => SyncEvent::Skipped {
                            path: rel.to_string(),
                            reason: e.to_string(),
                        },
                        Outcome::Fail => return Err(e),
                    },
                };
                deferred |= matches!(e, SyncEvent::Deferred { .. } | SyncEvent::Conflict { .. });
                report.note(&e);
                event(&e);
            }
        }
        Ok(deferred)
    }

    async fn apply(&self, cx: &PassCx<'_>, rel: &str, step: Step) -> Result<Option<SyncEvent>> {
        let abs = self.root.join(rel);
        match step {
            Step::Record => {
                let (l, r) = (&cx.local[rel], &cx.remote[rel]);
                self.set_base(rel, l.size, l.mtime_ns, &l.blake3, r.version)?;
                Ok(None)
            }
            Step::Forget => {
                self.forget(rel, false)?;
                Ok(None)
            }
            Step::Upload { base_version } => self.upload(cx, rel, base_version).await.map(Some),
            Step::Download => self.download(cx, rel, None).await.map(Some),
            Step::DeleteLocal => {
                let l = &cx.local[rel];
                if stat(&abs) != Some((l.size, l.mtime_ns)) {
                    return Ok(Some(changed_here(rel)));
                }
                std::fs::remove_file(&abs).map_err(|e| local_err(&abs, e))?;
                prune_empty_dirs(&self.root, rel);
                self.forget(rel, false)?;
                Ok(Some(SyncEvent::DeletedLocal {
                    path: rel.to_string(),
                }))
            }
            Step::DeleteRemote { version } => {
                match self
                    .client
                    .files_remove(self.space.as_deref(), &self.remote_path(rel), Some(version))
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.status() == Some(404) => {}
                    Err(e) => return Err(e),
                }
                self.forget(rel, true)?;
                Ok(Some(SyncEvent::DeletedRemote {
                    path: rel.to_string(),
                }))
            }
            Step::Conflict => {
                let l = &cx.local[rel];
                let at = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                let mut copy = conflict_name(rel, at, &self.device);
                let mut n = 1;
                while self.root.join(&copy).exists() || cx.remote.contains_key(&copy) {
                    n += 1;
                    copy = conflict_name(rel, at, &format!("{}-{n}", self.device));
                }
                if stat(&abs) != Some((l.size, l.mtime_ns)) {
                    return Ok(Some(changed_here(rel)));
                }
                let copy_abs = self.root.join(&copy);
                std::fs::rename(&abs, &copy_abs).map_err(|e| local_err(&abs, e))?;
                // The local edit is safe under its new name; the next pass uploads it, and
                // the remote content comes down under the original name.
                self.download(cx, rel, Some(&copy_abs)).await?;
                Ok(Some(SyncEvent::Conflict {
                    path: rel.to_string(),
                    copy,
                }))
            }
        }
    }

    async fn upload(&self, cx: &PassCx<'_>, rel: &str, base_version: i64) -> Result<SyncEvent> {
        let abs = self.root.join(rel);
        let l = &cx.local[rel];
        let progress = |done, total| (cx.bytes)(rel, done, total);
        let (info, stats) = self
            .client
            .put_file(
                self.space.as_deref(),
                &abs,
                &self.remote_path(rel),
                Some(base_version),
                &self.device,
                &progress,
            )
            .await?;
        // Recorded with the size and mtime the scan saw: if the file changed during the
        // upload, the next pass sees it differ and uploads the change.
        self.set_remote(rel, info.version, info.size, &info.blake3)?;
        self.set_base(rel, l.size, l.mtime_ns, &info.blake3, info.version)?;
        Ok(SyncEvent::Uploaded {
            path: rel.to_string(),
            bytes_sent: stats.bytes_sent,
        })
    }

    /// Brings the remote file at `rel` down, taking the chunks a local file already has from
    /// there (one with the same content, else the file it replaces, else `also`), through a
    /// temp file renamed into place once its hash checks out and only if the destination is
    /// unchanged since the scan.
    async fn download(&self, cx: &PassCx<'_>, rel: &str, also: Option<&Path>) -> Result<SyncEvent> {
        let r = &cx.remote[rel];
        let dest = self.root.join(rel);
        let expect = stat(&dest);
        let mut sources = Vec::new();
        if let Some(p) = cx.by_hash.get(r.blake3.as_str()) {
            sources.push(self.root.join(p));
        } else if expect.is_some() {
            sources.push(dest.clone());
        }
        sources.extend(also.map(Path::to_path_buf));
        let tmp = self
            .root
            .join(STATE_DIR)
            .join("tmp")
            .join(uuid::Uuid::new_v4().to_string());
        let progress = |done, total| (cx.bytes)(rel, done, total);
        let fetched = self
            .client
            .fetch_version(
                self.space.as_deref(),
                &self.remote_path(rel),
                r.version,
                &tmp,
                &sources,
                &progress,
            )
            .await;
        let fetched = match fetched {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if stat(&dest) != expect {
            let _ = std::fs::remove_file(&tmp);
            return Ok(changed_here(rel));
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| local_err(parent, e))?;
        }
        std::fs::rename(&tmp, &dest).map_err(|e| local_err(&dest, e))?;
        let (size, mtime) = stat(&dest).ok_or_else(|| local_err(&dest, "vanished"))?;
        self.set_base(rel, size, mtime, &r.blake3, r.version)?;
        Ok(SyncEvent::Downloaded {
            path: rel.to_string(),
            bytes_fetched: fetched,
        })
    }
}

/// Why a watching sync runs again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    Start,
    LocalChange,
    RemoteChange,
    Poll,
}

impl Syncer {
    /// Syncs, then again whenever a file here changes (inotify, via `notify`), whenever the
    /// server announces a change to the space (over `/v1/ws`), and at least every `poll`.
    /// Runs until the task is dropped; a failed run (the server unreachable, say) is reported
    /// to `on_run` and retried on the next wake.
    pub async fn watch(
        &self,
        poll: std::time::Duration,
        event: &(dyn Fn(&SyncEvent) + Send + Sync),
        bytes: &(dyn Fn(&str, u64, u64) + Send + Sync),
        on_run: &(dyn Fn(Wake, std::result::Result<&SyncReport, &ClientError>) + Send + Sync),
    ) -> Result<()> {
        use futures_util::StreamExt;
        use notify::Watcher;
        let (tx, mut local_changes) = tokio::sync::mpsc::channel::<()>(1);
        let state_dir = self.root.join(STATE_DIR);
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res
                && ev.paths.iter().any(|p| !p.starts_with(&state_dir))
            {
                let _ = tx.try_send(());
            }
        })
        .map_err(|e| local_err(&self.root, e))?;
        watcher
            .watch(&self.root, notify::RecursiveMode::Recursive)
            .map_err(|e| local_err(&self.root, e))?;
        let mut ws: Option<crate::WsStream> = None;
        let mut wake = Wake::Start;
        loop {
            match self.run(event, bytes).await {
                Ok(report) => on_run(wake, Ok(&report)),
                Err(e) => on_run(wake, Err(&e)),
            }
            if ws.is_none() {
                ws = self.watch_remote().await.ok();
            }
            let deadline = tokio::time::sleep(poll);
            tokio::pin!(deadline);
            wake = loop {
                let frame = async {
                    match ws.as_mut() {
                        Some(w) => w.next().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = &mut deadline => break Wake::Poll,
                    Some(()) = local_changes.recv() => {
                        // Let a burst of writes settle into one run.
                        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                        while local_changes.try_recv().is_ok() {}
                        break Wake::LocalChange;
                    }
                    msg = frame => match msg {
                        Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                            if let Ok(sb_proto::ServerFrame::FilesChanged { .. }) =
                                serde_json::from_str::<sb_proto::ServerFrame>(&t)
                            {
                                break Wake::RemoteChange;
                            }
                        }
                        // Pings are answered by tungstenite as it reads.
                        Some(Ok(_)) => {}
                        // The connection ended: reconnect after the next run, which also
                        // catches up on whatever was missed meanwhile.
                        Some(Err(_)) | None => {
                            ws = None;
                            break Wake::Poll;
                        }
                    },
                }
            };
        }
    }

    /// A `/v1/ws` connection announcing this space's changes.
    async fn watch_remote(&self) -> Result<crate::WsStream> {
        use futures_util::{SinkExt, StreamExt};
        let mut ws = self.client.ws_connect().await?;
        let req = sb_proto::ClientFrame::FilesWatch {
            id: "sync".into(),
            space: self.space.clone(),
        };
        let text = serde_json::to_string(&req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        ws.send(tokio_tungstenite::tungstenite::Message::Text(text.into()))
            .await
            .map_err(|e| ClientError::WebSocket(e.to_string()))?;
        // Wait for the answer, so changes after this point are announced.
        while let Some(msg) = ws.next().await {
            let msg = msg.map_err(|e| ClientError::WebSocket(e.to_string()))?;
            if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                match serde_json::from_str::<sb_proto::ServerFrame>(&t) {
                    Ok(sb_proto::ServerFrame::FilesWatching { .. }) => return Ok(ws),
                    Ok(sb_proto::ServerFrame::Error { message, .. }) => {
                        return Err(ClientError::WebSocket(message));
                    }
                    _ => {}
                }
            }
        }
        Err(ClientError::WebSocket(
            "closed before files_watching".into(),
        ))
    }
}

struct PassCx<'a> {
    local: &'a BTreeMap<String, Local>,
    remote: &'a BTreeMap<String, Remote>,
    by_hash: &'a HashMap<&'a str, &'a str>,
    bytes: &'a (dyn Fn(&str, u64, u64) + Send + Sync),
}

fn changed_here(rel: &str) -> SyncEvent {
    SyncEvent::Deferred {
        path: rel.to_string(),
        reason: "changed here during the sync".into(),
    }
}

enum Outcome {
    Defer,
    Skip,
    Fail,
}

/// A step's error: a race with another change is retried next pass; a path the server
/// refuses is skipped; anything else (the server unreachable, a broken index) stops the run.
fn classify(e: &ClientError) -> Outcome {
    match e {
        ClientError::Api { status: 409, .. } | ClientError::Api { status: 404, .. } => {
            Outcome::Defer
        }
        ClientError::Api {
            status: 400 | 403 | 413,
            ..
        } => Outcome::Skip,
        // A local file that vanished or could not be read: the next pass sees what it is now.
        ClientError::Local(_) => Outcome::Defer,
        _ => Outcome::Fail,
    }
}

impl Client {
    /// One version's chunk list.
    pub async fn files_chunks(
        &self,
        space: Option<&str>,
        path: &str,
        version: Option<i64>,
    ) -> Result<FileChunks> {
        let mut q = format!(
            "/v1/files/chunks?path={}{}",
            crate::files::enc(path),
            crate::files::space_param(space)
        );
        if let Some(v) = version {
            q.push_str(&format!("&version={v}"));
        }
        self.call(reqwest::Method::GET, &q, Self::NO_BODY).await
    }

    /// Writes version `version` of `remote` to `out`, taking every chunk that one of the
    /// `sources` (local files) also has from there and only the rest from the server (by
    /// Range). Checks the result's BLAKE3 and fsyncs it. Returns the bytes fetched.
    pub async fn fetch_version(
        &self,
        space: Option<&str>,
        remote: &str,
        version: i64,
        out: &Path,
        sources: &[PathBuf],
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<u64> {
        let want = self.files_chunks(space, remote, Some(version)).await?;
        // Chunk ids of the local sources, with where they are.
        let srcs = sources.to_vec();
        let have: HashMap<String, (PathBuf, u64)> = tokio::task::spawn_blocking(move || {
            let mut have = HashMap::new();
            for src in srcs {
                // A source that cannot be read is simply not used.
                if let Ok((_, _, chunks)) = crate::files::manifest(&src) {
                    for (off, c) in chunks {
                        have.entry(c.id).or_insert((src.clone(), off));
                    }
                }
            }
            have
        })
        .await
        .map_err(|e| ClientError::Local(e.to_string()))?;
        // Runs of the target: copied from a local file, or fetched (adjacent chunks joined).
        enum Run {
            Copy(PathBuf, u64, u64),
            Fetch(u64, u64),
        }
        let mut runs: Vec<Run> = Vec::new();
        let mut at = 0u64;
        for c in &want.chunks {
            let len = u64::from(c.len);
            match (have.get(&c.id), runs.last_mut()) {
                (Some((p, off)), _) => runs.push(Run::Copy(p.clone(), *off, len)),
                (None, Some(Run::Fetch(start, n))) if *start + *n == at => *n += len,
                (None, _) => runs.push(Run::Fetch(at, len)),
            }
            at += len;
        }
        let to_fetch: u64 = runs
            .iter()
            .map(|r| match r {
                Run::Fetch(_, n) => *n,
                Run::Copy(..) => 0,
            })
            .sum();
        progress(0, to_fetch);
        let mut file = std::fs::File::create(out).map_err(|e| local_err(out, e))?;
        let mut fetched = 0u64;
        let content = format!(
            "/v1/files/content?path={}{}&version={version}",
            crate::files::enc(remote),
            crate::files::space_param(space)
        );
        for run in runs {
            match run {
                Run::Copy(src, off, len) => {
                    let mut buf = vec![0u8; len as usize];
                    let mut f = std::fs::File::open(&src).map_err(|e| local_err(&src, e))?;
                    f.seek(SeekFrom::Start(off))
                        .and_then(|_| f.read_exact(&mut buf))
                        .map_err(|e| local_err(&src, e))?;
                    file.write_all(&buf).map_err(|e| local_err(out, e))?;
                }
                Run::Fetch(start, len) => {
                    let range = format!("bytes={start}-{}", start + len - 1);
                    let mut resp = self
                        .raw_with_headers(
                            reqwest::Method::GET,
                            &content,
                            &[("range", range.as_str())],
                            Vec::new(),
                        )
                        .await?;
                    let status = resp.status().as_u16();
                    if !resp.status().is_success() {
                        return Self::decode(resp).await;
                    }
                    if status != 206 && !(start == 0 && len == want.size) {
                        return Err(ClientError::Protocol(format!(
                            "asked for {range} of {remote}, got HTTP {status}"
                        )));
                    }
                    let mut got = 0u64;
                    while let Some(b) = resp.chunk().await.map_err(|e| self.transport_error(e))? {
                        got += b.len() as u64;
                        if got > len {
                            return Err(ClientError::Protocol(format!(
                                "more than {range} of {remote} came back"
                            )));
                        }
                        file.write_all(&b).map_err(|e| local_err(out, e))?;
                        fetched += b.len() as u64;
                        progress(fetched, to_fetch);
                    }
                    if got != len {
                        return Err(ClientError::Protocol(format!(
                            "{range} of {remote} was cut short; sync again"
                        )));
                    }
                }
            }
        }
        file.sync_all().map_err(|e| local_err(out, e))?;
        drop(file);
        let check = out.to_path_buf();
        let hash = tokio::task::spawn_blocking(move || hash_file(&check))
            .await
            .map_err(|e| ClientError::Local(e.to_string()))?
            .map_err(|e| local_err(out, e))?;
        if hash != want.blake3 {
            return Err(ClientError::Local(format!(
                "{remote} version {version} did not come out as its hash (a local copy changed \
                 while it was read?)"
            )));
        }
        Ok(fetched)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn l(h: &str) -> Local {
        Local {
            size: 1,
            mtime_ns: 1,
            blake3: h.into(),
        }
    }
    fn r(v: i64, h: &str) -> Remote {
        Remote {
            version: v,
            size: 1,
            blake3: h.into(),
        }
    }
    fn b(v: i64, h: &str) -> Base {
        Base {
            size: 1,
            mtime_ns: 1,
            blake3: h.into(),
            version: v,
        }
    }

    #[test]
    fn each_combination_of_changes_has_its_step() {
        use Step::*;
        type Case = (Option<Local>, Option<Remote>, Option<Base>, Option<Step>);
        let cases: &[Case] = &[
            (Some(l("a")), Some(r(1, "a")), Some(b(1, "a")), None),
            (None, None, None, None),
            (
                Some(l("b")),
                Some(r(1, "a")),
                Some(b(1, "a")),
                Some(Upload { base_version: 1 }),
            ),
            (Some(l("b")), None, None, Some(Upload { base_version: 0 })),
            (
                None,
                Some(r(1, "a")),
                Some(b(1, "a")),
                Some(DeleteRemote { version: 1 }),
            ),
            (
                Some(l("a")),
                Some(r(2, "b")),
                Some(b(1, "a")),
                Some(Download),
            ),
            (None, Some(r(1, "a")), None, Some(Download)),
            (Some(l("a")), None, Some(b(1, "a")), Some(DeleteLocal)),
            (None, None, Some(b(1, "a")), Some(Forget)),
            (Some(l("c")), Some(r(2, "c")), Some(b(1, "a")), Some(Record)),
            (Some(l("c")), Some(r(1, "c")), None, Some(Record)),
            // An edit beats a delete, on either side.
            (None, Some(r(2, "b")), Some(b(1, "a")), Some(Download)),
            (
                Some(l("b")),
                None,
                Some(b(1, "a")),
                Some(Upload { base_version: 0 }),
            ),
            (
                Some(l("b")),
                Some(r(2, "c")),
                Some(b(1, "a")),
                Some(Conflict),
            ),
            (Some(l("b")), Some(r(1, "c")), None, Some(Conflict)),
        ];
        for (lo, re, ba, want) in cases {
            assert_eq!(
                decide(lo.as_ref(), re.as_ref(), ba.as_ref()),
                *want,
                "{lo:?} {re:?} {ba:?}"
            );
        }
        // Touched but the same content: only the base's mtime moves.
        let touched = Local {
            mtime_ns: 2,
            ..l("a")
        };
        assert_eq!(
            decide(Some(&touched), Some(&r(1, "a")), Some(&b(1, "a"))),
            Some(Record)
        );
    }

    #[test]
    fn conflict_names_keep_the_extension_and_folder() {
        // 2026-11-26 17:21:11 UTC
        let at = 1_795_713_671;
        assert_eq!(
            conflict_name("docs/report.pdf", at, "my laptop"),
            "docs/report.sync-conflict-20261126-172111-my_laptop.pdf"
        );
        assert_eq!(
            conflict_name("Makefile", at, "b"),
            "Makefile.sync-conflict-20261126-172111-b"
        );
        assert_eq!(
            conflict_name(".env", at, "b"),
            ".env.sync-conflict-20261126-172111-b"
        );
        assert_eq!(utc(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(utc(951_782_400), (2000, 2, 29, 0, 0, 0));
    }

    #[test]
    fn the_scan_skips_state_partial_downloads_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join(".sb-sync/tmp")).unwrap();
        std::fs::write(root.join(".sb-sync/tmp/x"), b"x").unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/c.txt"), b"hello").unwrap();
        std::fs::write(root.join("top.txt"), b"").unwrap();
        std::fs::write(root.join("big.iso.sb-part"), b"partial").unwrap();
        std::os::unix::fs::symlink(root.join("top.txt"), root.join("link")).unwrap();
        let found = scan(root).unwrap();
        assert_eq!(
            found.keys().map(String::as_str).collect::<Vec<_>>(),
            vec!["a/b/c.txt", "top.txt"]
        );
        assert_eq!(found["a/b/c.txt"].0, 5);
    }
}
