//! The embedded backend: one SQLite file in WAL mode, one writer connection and a small pool of
//! readers. Calls run on tokio's blocking pool. With `Durability::Full` SQLite syncs the WAL on
//! every commit, so a returned write is on disk.

use crate::audit::{GENESIS, chain_hash};
use crate::*;
use rusqlite::{Connection, OptionalExtension, Row, params};
use sb_core::config::{Durability, StoreConfig};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
/// Never edit a shipped entry: append a new one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) STRICT;

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE COLLATE NOCASE,
    display_name  TEXT NOT NULL DEFAULT '',
    status_text   TEXT NOT NULL DEFAULT '',
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'user')),
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE sessions (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash   BLOB NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    last_used_at INTEGER NOT NULL,
    client       TEXT NOT NULL,
    ip           TEXT NOT NULL,
    revoked_at   INTEGER
) STRICT;
CREATE INDEX sessions_by_user ON sessions(user_id);

CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    token_hash   BLOB NOT NULL UNIQUE,
    scopes       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    last_used_at INTEGER,
    revoked_at   INTEGER
) STRICT;
CREATE INDEX api_tokens_by_user ON api_tokens(user_id);

CREATE TABLE invites (
    id         TEXT PRIMARY KEY,
    token_hash BLOB NOT NULL UNIQUE,
    created_by TEXT NOT NULL REFERENCES users(id),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_by    TEXT REFERENCES users(id),
    used_at    INTEGER
) STRICT;

CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    ip        TEXT NOT NULL,
    detail    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
) STRICT;
CREATE INDEX audit_by_actor ON audit(actor, seq);
CREATE INDEX audit_by_action ON audit(action, seq);

-- Append-only: the server never edits or removes audit records. (Someone with the file can
-- still drop these triggers; the hash chain is what detects that.)
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
"#,
    r#"
CREATE TABLE rooms (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('group', 'direct')),
    name       TEXT NOT NULL,
    topic      TEXT NOT NULL DEFAULT '',
    public     INTEGER NOT NULL,
    created_by TEXT NOT NULL REFERENCES users(id),
    created_at INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL DEFAULT 0,
    -- For direct rooms: the two user ids, sorted, so each pair has one room.
    dm_key     TEXT UNIQUE
) STRICT;
CREATE UNIQUE INDEX rooms_group_name ON rooms(name COLLATE NOCASE) WHERE kind = 'group';

CREATE TABLE room_members (
    room_id   TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    user_id   TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role      TEXT NOT NULL CHECK (role IN ('member', 'moderator', 'owner')),
    joined_at INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX room_members_by_user ON room_members(user_id);

CREATE TABLE room_bans (
    room_id   TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    user_id   TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    banned_by TEXT NOT NULL REFERENCES users(id),
    banned_at INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE messages (
    room_id    TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    sender     TEXT NOT NULL REFERENCES users(id),
    body       TEXT NOT NULL,
    reply_to   INTEGER,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (room_id, seq),
    UNIQUE (room_id, sender, message_id)
) STRICT, WITHOUT ROWID;
"#,
    r#"
-- Full-text index of message bodies, written in the same transaction as the message.
CREATE VIRTUAL TABLE messages_fts USING fts5(
    body,
    room_id UNINDEXED,
    seq UNINDEXED,
    tokenize = 'unicode61 remove_diacritics 2'
);
"#,
    r#"
-- How far each member has read in each room (only ever moves forward).
CREATE TABLE read_markers (
    room_id    TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id)
) STRICT, WITHOUT ROWID;
"#,
    r#"
-- When a user's last connection closed (presence "last seen").
ALTER TABLE users ADD COLUMN last_seen_at INTEGER;
"#,
    r#"
-- Edits, deletions and reactions are entries in the room's sequence too, pointing at a message.
ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'message'
    CHECK (kind IN ('message', 'edit', 'delete', 'reaction', 'unreaction'));
ALTER TABLE messages ADD COLUMN target INTEGER;
ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN edited_at INTEGER;
"#,
    r#"
-- Deleting from the search index removes the terms too, not just the row.
INSERT INTO messages_fts (messages_fts, rank) VALUES ('secure-delete', 1);
"#,
    r#"
-- Files attached to rooms; the bytes live in the blob store under `blob` (BLAKE3).
CREATE TABLE attachments (
    id           TEXT PRIMARY KEY,
    room_id      TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    uploader     TEXT NOT NULL REFERENCES users(id),
    blob         TEXT NOT NULL,
    name         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size         INTEGER NOT NULL,
    created_at   INTEGER NOT NULL
) STRICT;
CREATE INDEX attachments_by_room ON attachments(room_id);
ALTER TABLE messages ADD COLUMN attachments TEXT NOT NULL DEFAULT '[]';
"#,
    r#"
-- End-to-end encrypted rooms (MLS). The server sees only opaque bytes: key packages, the
-- room's handshake messages in epoch order, Welcomes for invited devices, and ciphertext.
ALTER TABLE rooms ADD COLUMN encrypted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rooms ADD COLUMN mls_epoch INTEGER NOT NULL DEFAULT 0;

CREATE TABLE mls_key_packages (
    id          INTEGER PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    device      TEXT NOT NULL,
    package     BLOB NOT NULL,
    last_resort INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX mls_key_packages_by_device ON mls_key_packages(user_id, device, last_resort);

CREATE TABLE mls_handshakes (
    room_id    TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    epoch      INTEGER NOT NULL,
    sender     TEXT NOT NULL REFERENCES users(id),
    message    BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (room_id, epoch)
) STRICT, WITHOUT ROWID;

CREATE TABLE mls_welcomes (
    id         INTEGER PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    device     TEXT NOT NULL,
    room_id    TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    epoch      INTEGER NOT NULL,
    welcome    BLOB NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX mls_welcomes_by_device ON mls_welcomes(user_id, device);
"#,
    r#"
-- Files: spaces, files by path, versions as chunk lists (content in the blob store), uploads
-- in progress, and each space's change feed.
CREATE TABLE spaces (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    owner      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    personal   INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE UNIQUE INDEX spaces_personal ON spaces(owner) WHERE personal = 1;

CREATE TABLE files (
    id          TEXT PRIMARY KEY,
    space_id    TEXT NOT NULL REFERENCES spaces(id) ON DELETE CASCADE,
    path        TEXT NOT NULL,
    head        INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    blake3      TEXT NOT NULL,
    modified_at INTEGER NOT NULL,
    deleted_at  INTEGER,
    UNIQUE (space_id, path)
) STRICT;

CREATE TABLE file_versions (
    file_id    TEXT NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    version    INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    blake3     TEXT NOT NULL,
    chunks     BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL REFERENCES users(id),
    device     TEXT NOT NULL,
    PRIMARY KEY (file_id, version)
) STRICT, WITHOUT ROWID;

CREATE TABLE file_uploads (
    id           TEXT PRIMARY KEY,
    space_id     TEXT NOT NULL REFERENCES spaces(id) ON DELETE CASCADE,
    path         TEXT NOT NULL,
    base_version INTEGER,
    size         INTEGER NOT NULL,
    blake3       TEXT NOT NULL,
    chunks       BLOB NOT NULL,
    created_by   TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    device       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
) STRICT;
CREATE INDEX file_uploads_by_expiry ON file_uploads(expires_at);

CREATE TABLE space_members (
    space_id TEXT NOT NULL REFERENCES spaces(id) ON DELETE CASCADE,
    user_id  TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    writable INTEGER NOT NULL,
    PRIMARY KEY (space_id, user_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE file_links (
    token_hash BLOB PRIMARY KEY,
    space_id   TEXT NOT NULL REFERENCES spaces(id) ON DELETE CASCADE,
    path       TEXT NOT NULL,
    version    INTEGER,
    created_by TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE file_changes (
    space_id TEXT NOT NULL REFERENCES spaces(id) ON DELETE CASCADE,
    seq      INTEGER NOT NULL,
    path     TEXT NOT NULL,
    file_id  TEXT NOT NULL,
    version  INTEGER NOT NULL,
    deleted  INTEGER NOT NULL,
    at       INTEGER NOT NULL,
    PRIMARY KEY (space_id, seq)
) STRICT, WITHOUT ROWID;
"#,
    r#"
-- Devices: the registry, with the SHA-256 of each device's secret.
CREATE TABLE devices (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    group_name   TEXT NOT NULL,
    tags         TEXT NOT NULL,
    secret_hash  BLOB NOT NULL,
    owner        TEXT NOT NULL REFERENCES users(id),
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER,
    last_seen_at INTEGER
) STRICT;
"#,
    r#"
-- MQTT: persistent sessions, the QoS 1/2 messages queued or in flight for them, retained
-- messages (the same columns, without a client).
CREATE TABLE mqtt_sessions (
    client_id   TEXT PRIMARY KEY,
    version     INTEGER NOT NULL,
    expiry_secs INTEGER NOT NULL,
    subs        TEXT NOT NULL
) STRICT;
CREATE TABLE mqtt_messages (
    client_id   TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    pkid        INTEGER NOT NULL,
    released    INTEGER NOT NULL,
    topic       TEXT NOT NULL,
    payload     BLOB NOT NULL,
    qos         INTEGER NOT NULL,
    retain      INTEGER NOT NULL,
    properties  BLOB NOT NULL,
    expires_at  INTEGER,
    from_client TEXT NOT NULL,
    PRIMARY KEY (client_id, seq)
) STRICT, WITHOUT ROWID;
CREATE TABLE mqtt_retained (
    client_id   TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    pkid        INTEGER NOT NULL,
    released    INTEGER NOT NULL,
    topic       TEXT PRIMARY KEY,
    payload     BLOB NOT NULL,
    qos         INTEGER NOT NULL,
    retain      INTEGER NOT NULL,
    properties  BLOB NOT NULL,
    expires_at  INTEGER,
    from_client TEXT NOT NULL
) STRICT;
"#,
    r#"
-- Commands (direct methods) to devices, and what became of them.
CREATE TABLE device_commands (
    id          TEXT PRIMARY KEY,
    device_id   TEXT NOT NULL REFERENCES devices(id),
    method      TEXT NOT NULL,
    payload     TEXT NOT NULL,
    state       TEXT NOT NULL,
    created_by  TEXT NOT NULL REFERENCES users(id),
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    timeout_ms  INTEGER NOT NULL,
    sent_at     INTEGER,
    finished_at INTEGER,
    status      INTEGER,
    result      TEXT
) STRICT;
CREATE INDEX device_commands_open ON device_commands(state) WHERE state IN ('queued', 'sent');
"#,
    r#"
-- Device twins: desired and reported documents with per-field timestamps and versions.
CREATE TABLE device_twins (
    device_id        TEXT PRIMARY KEY REFERENCES devices(id),
    desired          TEXT NOT NULL,
    desired_meta     TEXT NOT NULL,
    desired_version  INTEGER NOT NULL,
    reported         TEXT NOT NULL,
    reported_meta    TEXT NOT NULL,
    reported_version INTEGER NOT NULL
) STRICT;
"#,
    r#"
-- A device's last health report.
ALTER TABLE devices ADD COLUMN health TEXT;
ALTER TABLE devices ADD COLUMN health_at INTEGER;
"#,
    r#"
-- Firmware images (their bytes are a blob) with the operator's signature.
CREATE TABLE firmware (
    version    TEXT PRIMARY KEY,
    size       INTEGER NOT NULL,
    sha256     TEXT NOT NULL,
    blob       BLOB NOT NULL,
    signature  TEXT NOT NULL,
    public_key TEXT NOT NULL,
    created_by TEXT NOT NULL REFERENCES users(id),
    created_at INTEGER NOT NULL
) STRICT;
"#,
    r#"
-- Firmware rollouts and the state of each of their devices.
CREATE TABLE firmware_rollouts (
    id             TEXT PRIMARY KEY,
    version        TEXT NOT NULL REFERENCES firmware(version),
    group_name     TEXT NOT NULL,
    state          TEXT NOT NULL,
    batch_size     INTEGER NOT NULL,
    max_failures   INTEGER NOT NULL,
    step_timeout_ms INTEGER NOT NULL,
    current_batch  INTEGER NOT NULL,
    reason         TEXT,
    created_by     TEXT NOT NULL REFERENCES users(id),
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
) STRICT;
CREATE INDEX firmware_rollouts_open ON firmware_rollouts(state);
CREATE TABLE firmware_rollout_devices (
    rollout_id TEXT NOT NULL REFERENCES firmware_rollouts(id),
    device_id  TEXT NOT NULL REFERENCES devices(id),
    name       TEXT NOT NULL,
    batch      INTEGER NOT NULL,
    state      TEXT NOT NULL,
    reason     TEXT,
    since      INTEGER NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
) STRICT;
"#,
    r#"
-- QoS 2 packet ids a persistent MQTT session's client sent and has not released yet.
CREATE TABLE mqtt_incoming (
    client_id TEXT NOT NULL,
    pkid      INTEGER NOT NULL,
    PRIMARY KEY (client_id, pkid)
) STRICT;
-- Each device's current client certificate (from the device CA), by its SHA-256.
CREATE TABLE device_certs (
    device_id  TEXT PRIMARY KEY REFERENCES devices(id),
    sha256     TEXT NOT NULL UNIQUE,
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;
"#,
    r#"
-- The web console's saved dashboards, one row per user and name.
CREATE TABLE dashboards (
    user_id    TEXT NOT NULL REFERENCES users(id),
    name       TEXT NOT NULL,
    body       TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, name)
) STRICT;
"#,
];

const SETUP_TOKEN_KEY: &str = "setup_token_hash";

/// Called with an operation's name and how long it took, queueing included.
pub type Observer = Arc<dyn Fn(&'static str, Duration) + Send + Sync>;

pub struct SqliteStore {
    inner: Arc<Inner>,
    observer: Option<Observer>,
}

struct Inner {
    writes: tokio::sync::mpsc::Sender<Job>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

/// A write run inside the group transaction; it reports whether it succeeded and how to
/// answer its caller.
type GroupJob = Box<dyn FnOnce(&mut Connection) -> (bool, Finisher) + Send>;

/// Tells a waiting caller how its write ended, once the group's commit is known.
type Finisher = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// A write, run on the writer thread. `InGroup` jobs share one transaction (each in its own
/// savepoint) and one commit; `Alone` jobs (checkpoints) run outside any transaction.
enum Job {
    InGroup(GroupJob),
    Alone(Box<dyn FnOnce(&mut Connection) + Send>),
}

/// The writer thread: takes every queued write (up to `group_max`), runs them in one
/// transaction and commits once, so concurrent writers share one fsync. A job that fails is
/// rolled back to its savepoint without touching the others. Callers hear back only after the
/// commit, so nothing is acknowledged before it is durable.
fn writer_loop(mut conn: Connection, mut jobs: tokio::sync::mpsc::Receiver<Job>, group_max: usize) {
    let mut pending: Option<Job> = None;
    loop {
        let Some(first) = pending.take().or_else(|| jobs.blocking_recv()) else {
            return;
        };
        let first = match first {
            Job::Alone(f) => {
                f(&mut conn);
                continue;
            }
            Job::InGroup(f) => f,
        };
        let mut group = vec![first];
        while group.len() < group_max {
            match jobs.try_recv() {
                Ok(Job::InGroup(f)) => group.push(f),
                Ok(alone) => {
                    pending = Some(alone);
                    break;
                }
                Err(_) => break,
            }
        }
        run_group(&mut conn, group);
    }
}

fn run_group(conn: &mut Connection, group: Vec<GroupJob>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        // Nothing ran; dropping the jobs tells each caller its write was abandoned.
        tracing::error!(error = %e, writes = group.len(), "could not begin a write transaction");
        return;
    }
    let mut finishers = Vec::with_capacity(group.len());
    for job in group {
        let outcome = conn
            .execute_batch("SAVEPOINT job")
            .map_err(backend)
            .and_then(|()| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(conn)))
                    .map_err(|_| StoreError::Backend("a store write panicked".into()))
            });
        match outcome {
            Ok((ok, finish)) => {
                let end = if ok {
                    "RELEASE job"
                } else {
                    "ROLLBACK TO job; RELEASE job"
                };
                if let Err(e) = conn.execute_batch(end) {
                    tracing::error!(error = %e, "closing a savepoint failed");
                }
                finishers.push(finish);
            }
            // The job is gone (its caller sees a closed channel); undo whatever it did.
            Err(e) => {
                tracing::error!(error = %e, "store write failed");
                let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
            }
        }
    }
    let commit = conn.execute_batch("COMMIT").map_err(backend);
    if commit.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    for finish in finishers {
        finish(commit.as_ref().err());
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        backend(e)
    }
}

fn open_connection(path: &Path, config: &StoreConfig) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_millis(config.busy_timeout_ms))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let sync = match config.durability {
        Durability::Full => "FULL",
        Durability::Relaxed => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Deleted and overwritten content is zeroed on disk, not left in free pages: a deleted
    // chat message must really be gone.
    conn.pragma_update(None, "secure_delete", "ON")?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let applied: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let applied = usize::try_from(applied).map_err(backend)?;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "database schema version {applied} is newer than this binary knows ({}); upgrade sb",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "applied store migration");
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub fn open(path: &Path, config: &StoreConfig) -> Result<Self> {
        let mut writer = open_connection(path, config)?;
        migrate(&mut writer)?;
        let readers = (0..config.read_connections.max(1))
            .map(|_| open_connection(path, config).map(Mutex::new))
            .collect::<Result<Vec<_>>>()?;
        let (writes, jobs) = tokio::sync::mpsc::channel(config.write_queue_max.max(1));
        let group_max = config.group_commit_max.max(1);
        std::thread::Builder::new()
            .name("sb-store-writer".into())
            .spawn(move || writer_loop(writer, jobs, group_max))
            .map_err(backend)?;
        Ok(Self {
            inner: Arc::new(Inner {
                writes,
                readers,
                next_reader: AtomicUsize::new(0),
            }),
            observer: None,
        })
    }

    /// Reports each operation's name and duration to `observer` (for metrics).
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    fn observe(&self, op: &'static str, started: Instant) {
        if let Some(o) = &self.observer {
            o(op, started.elapsed());
        }
    }

    pub(crate) async fn write<R, F>(&self, op: &'static str, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
    {
        let started = Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job::InGroup(Box::new(move |conn: &mut Connection| {
            let result = f(conn);
            let ok = result.is_ok();
            let finish: Finisher = Box::new(move |commit_error| {
                let out = match (result, commit_error) {
                    (Ok(_), Some(e)) => Err(StoreError::Backend(format!("commit failed: {e}"))),
                    (r, _) => r,
                };
                let _ = tx.send(out);
            });
            (ok, finish)
        }));
        self.inner
            .writes
            .send(job)
            .await
            .map_err(|_| StoreError::Backend("the store writer has stopped".into()))?;
        let r = rx
            .await
            .map_err(|_| StoreError::Backend("the store write was abandoned".into()))?;
        self.observe(op, started);
        r
    }

    /// Runs `f` alone on the writer, outside any transaction (for checkpoints).
    async fn write_alone<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job::Alone(Box::new(move |conn: &mut Connection| {
            let _ = tx.send(f(conn));
        }));
        self.inner
            .writes
            .send(job)
            .await
            .map_err(|_| StoreError::Backend("the store writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("the store write was abandoned".into()))?
    }

    pub(crate) async fn read<R, F>(&self, op: &'static str, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let inner = self.inner.clone();
        let started = Instant::now();
        let r = tokio::task::spawn_blocking(move || {
            let i = inner.next_reader.fetch_add(1, Ordering::Relaxed) % inner.readers.len();
            let conn = inner.readers[i].lock().unwrap_or_else(|e| e.into_inner());
            f(&conn)
        })
        .await
        .map_err(backend)?;
        self.observe(op, started);
        r
    }
}

// --- row mapping ---

pub(crate) fn parse_id<T: std::str::FromStr>(s: String) -> rusqlite::Result<T> {
    s.parse().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("bad id {s:?}").into(),
        )
    })
}

fn hash32(v: Vec<u8>) -> rusqlite::Result<[u8; 32]> {
    v.try_into().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Blob,
            "hash is not 32 bytes".into(),
        )
    })
}

const USER_COLS: &str = "u.id, u.username, u.display_name, u.status_text, u.password_hash, u.role, u.disabled, u.created_at";

fn user_at(row: &Row<'_>, o: usize) -> rusqlite::Result<UserRecord> {
    let role: String = row.get(o + 5)?;
    Ok(UserRecord {
        id: parse_id(row.get(o)?)?,
        username: row.get(o + 1)?,
        display_name: row.get(o + 2)?,
        status_text: row.get(o + 3)?,
        password_hash: row.get(o + 4)?,
        role: Role::parse(&role).unwrap_or(Role::User),
        disabled: row.get(o + 6)?,
        created_at: UnixMillis(row.get(o + 7)?),
    })
}

const SESSION_COLS: &str = "s.id, s.user_id, s.token_hash, s.created_at, s.expires_at, s.last_used_at, s.client, s.ip, s.revoked_at";
const SESSION_NCOLS: usize = 9;

fn session_at(row: &Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        id: parse_id(row.get(0)?)?,
        user_id: parse_id(row.get(1)?)?,
        token_hash: hash32(row.get(2)?)?,
        created_at: UnixMillis(row.get(3)?),
        expires_at: UnixMillis(row.get(4)?),
        last_used_at: UnixMillis(row.get(5)?),
        client: row.get(6)?,
        ip: row.get(7)?,
        revoked_at: row.get::<_, Option<i64>>(8)?.map(UnixMillis),
    })
}

const TOKEN_COLS: &str = "t.id, t.user_id, t.name, t.token_hash, t.scopes, t.created_at, t.expires_at, t.last_used_at, t.revoked_at";
const TOKEN_NCOLS: usize = 9;

fn token_at(row: &Row<'_>) -> rusqlite::Result<ApiTokenRecord> {
    let scopes: String = row.get(4)?;
    Ok(ApiTokenRecord {
        id: parse_id(row.get(0)?)?,
        user_id: parse_id(row.get(1)?)?,
        name: row.get(2)?,
        token_hash: hash32(row.get(3)?)?,
        scopes: serde_json::from_str(&scopes).unwrap_or_default(),
        created_at: UnixMillis(row.get(5)?),
        expires_at: row.get::<_, Option<i64>>(6)?.map(UnixMillis),
        last_used_at: row.get::<_, Option<i64>>(7)?.map(UnixMillis),
        revoked_at: row.get::<_, Option<i64>>(8)?.map(UnixMillis),
    })
}

fn invite_at(row: &Row<'_>) -> rusqlite::Result<InviteRecord> {
    Ok(InviteRecord {
        id: parse_id(row.get(0)?)?,
        token_hash: hash32(row.get(1)?)?,
        created_by: parse_id(row.get(2)?)?,
        created_at: UnixMillis(row.get(3)?),
        expires_at: UnixMillis(row.get(4)?),
        used_by: row.get::<_, Option<String>>(5)?.map(parse_id).transpose()?,
    })
}

fn audit_at(row: &Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        seq: row.get(0)?,
        entry: AuditEntry {
            at: UnixMillis(row.get(1)?),
            actor: row.get(2)?,
            action: row.get(3)?,
            target: row.get(4)?,
            ip: row.get(5)?,
            detail: row.get(6)?,
        },
        prev_hash: row.get(7)?,
        hash: row.get(8)?,
    })
}

fn changed(n: usize) -> Result<()> {
    if n == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}

pub(crate) fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
        || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

fn live_session_ids(tx: &Connection, user: &str, keep: Option<&str>) -> Result<Vec<SessionId>> {
    let mut stmt = tx.prepare(
        "SELECT id FROM sessions WHERE user_id = ?1 AND revoked_at IS NULL AND id IS NOT ?2",
    )?;
    let ids = stmt
        .query_map(params![user, keep], |r| parse_id(r.get(0)?))?
        .collect::<rusqlite::Result<Vec<SessionId>>>()?;
    Ok(ids)
}

#[async_trait]
impl Store for SqliteStore {
    async fn set_setup_token(&self, token_hash: [u8; 32]) -> Result<bool> {
        self.write("set_setup_token", move |c| {
            let tx = c.savepoint()?;
            let users: i64 = tx.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?;
            if users > 0 {
                return Ok(false);
            }
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                params![SETUP_TOKEN_KEY, &token_hash[..]],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn user_count(&self) -> Result<u64> {
        self.read("user_count", |c| {
            let n: i64 = c.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    async fn create_user(
        &self,
        user: UserRecord,
        admission: Admission,
        now: UnixMillis,
    ) -> Result<()> {
        self.write("create_user", move |c| {
            let tx = c.savepoint()?;
            let uid = user.id.to_string();
            let insert = tx.execute(
                "INSERT INTO users (id, username, display_name, status_text, password_hash, role, disabled, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![uid, user.username, user.display_name, user.status_text,
                        user.password_hash, user.role.as_str(), user.disabled, user.created_at.0],
            );
            match insert {
                Err(e) if is_unique_violation(&e) => return Err(StoreError::Conflict("username")),
                other => other?,
            };
            match admission {
                Admission::Open => {}
                Admission::Invite { token_hash } => {
                    let n = tx.execute(
                        "UPDATE invites SET used_by = ?1, used_at = ?2
                         WHERE token_hash = ?3 AND used_by IS NULL AND expires_at > ?2",
                        params![uid, now.0, &token_hash[..]],
                    )?;
                    if n != 1 {
                        return Err(StoreError::AdmissionRejected);
                    }
                }
                Admission::Setup { token_hash } => {
                    let n = tx.execute(
                        "DELETE FROM meta WHERE key = ?1 AND value = ?2",
                        params![SETUP_TOKEN_KEY, &token_hash[..]],
                    )?;
                    if n != 1 {
                        return Err(StoreError::AdmissionRejected);
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>> {
        self.read("user_by_id", move |c| {
            Ok(c.query_row(
                &format!("SELECT {USER_COLS} FROM users u WHERE u.id = ?1"),
                [id.to_string()],
                |r| user_at(r, 0),
            )
            .optional()?)
        })
        .await
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<UserRecord>> {
        let username = username.to_string();
        self.read("user_by_username", move |c| {
            Ok(c.query_row(
                &format!("SELECT {USER_COLS} FROM users u WHERE u.username = ?1"),
                [username],
                |r| user_at(r, 0),
            )
            .optional()?)
        })
        .await
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>> {
        self.read("list_users", |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {USER_COLS} FROM users u ORDER BY u.created_at, u.id"
            ))?;
            let rows = stmt.query_map([], |r| user_at(r, 0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn update_profile(
        &self,
        id: UserId,
        display_name: &str,
        status_text: &str,
    ) -> Result<()> {
        let (d, s) = (display_name.to_string(), status_text.to_string());
        self.write("update_profile", move |c| {
            changed(c.execute(
                "UPDATE users SET display_name = ?2, status_text = ?3 WHERE id = ?1",
                params![id.to_string(), d, s],
            )?)
        })
        .await
    }

    async fn set_role(&self, id: UserId, role: Role) -> Result<()> {
        self.write("set_role", move |c| {
            changed(c.execute(
                "UPDATE users SET role = ?2 WHERE id = ?1",
                params![id.to_string(), role.as_str()],
            )?)
        })
        .await
    }

    async fn set_disabled(&self, id: UserId, disabled: bool) -> Result<()> {
        self.write("set_disabled", move |c| {
            changed(c.execute(
                "UPDATE users SET disabled = ?2 WHERE id = ?1",
                params![id.to_string(), disabled],
            )?)
        })
        .await
    }

    async fn change_password(
        &self,
        id: UserId,
        password_hash: &str,
        keep: Option<SessionId>,
        now: UnixMillis,
    ) -> Result<Vec<SessionId>> {
        let hash = password_hash.to_string();
        self.write("change_password", move |c| {
            let tx = c.savepoint()?;
            let uid = id.to_string();
            changed(tx.execute(
                "UPDATE users SET password_hash = ?2 WHERE id = ?1",
                params![uid, hash],
            )?)?;
            let keep = keep.map(|k| k.to_string());
            let revoked = live_session_ids(&tx, &uid, keep.as_deref())?;
            tx.execute(
                "UPDATE sessions SET revoked_at = ?3
                 WHERE user_id = ?1 AND revoked_at IS NULL AND id IS NOT ?2",
                params![uid, keep, now.0],
            )?;
            tx.commit()?;
            Ok(revoked)
        })
        .await
    }

    async fn insert_session(&self, s: SessionRecord) -> Result<()> {
        self.write("insert_session", move |c| {
            c.execute(
                "INSERT INTO sessions (id, user_id, token_hash, created_at, expires_at, last_used_at, client, ip, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![s.id.to_string(), s.user_id.to_string(), &s.token_hash[..], s.created_at.0,
                        s.expires_at.0, s.last_used_at.0, s.client, s.ip, s.revoked_at.map(|t| t.0)],
            )?;
            Ok(())
        })
        .await
    }

    async fn session_by_token_hash(
        &self,
        hash: [u8; 32],
    ) -> Result<Option<(SessionRecord, UserRecord)>> {
        self.read("session_by_token_hash", move |c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {SESSION_COLS}, {USER_COLS} FROM sessions s JOIN users u ON u.id = s.user_id
                     WHERE s.token_hash = ?1"
                ),
                [&hash[..]],
                |r| Ok((session_at(r)?, user_at(r, SESSION_NCOLS)?)),
            )
            .optional()?)
        })
        .await
    }

    async fn list_sessions(&self, user: UserId) -> Result<Vec<SessionRecord>> {
        self.read("list_sessions", move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {SESSION_COLS} FROM sessions s WHERE s.user_id = ?1 ORDER BY s.created_at, s.id"
            ))?;
            let rows = stmt.query_map([user.to_string()], session_at)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn session_by_id(&self, id: SessionId) -> Result<Option<SessionRecord>> {
        self.read("session_by_id", move |c| {
            Ok(c.query_row(
                &format!("SELECT {SESSION_COLS} FROM sessions s WHERE s.id = ?1"),
                [id.to_string()],
                session_at,
            )
            .optional()?)
        })
        .await
    }

    async fn revoke_session(&self, id: SessionId, now: UnixMillis) -> Result<bool> {
        self.write("revoke_session", move |c| {
            let n = c.execute(
                "UPDATE sessions SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id.to_string(), now.0],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn revoke_user_sessions(&self, user: UserId, now: UnixMillis) -> Result<Vec<SessionId>> {
        self.write("revoke_user_sessions", move |c| {
            let tx = c.savepoint()?;
            let uid = user.to_string();
            let ids = live_session_ids(&tx, &uid, None)?;
            tx.execute(
                "UPDATE sessions SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL",
                params![uid, now.0],
            )?;
            tx.commit()?;
            Ok(ids)
        })
        .await
    }

    async fn touch_session(&self, id: SessionId, now: UnixMillis) -> Result<()> {
        self.write("touch_session", move |c| {
            c.execute(
                "UPDATE sessions SET last_used_at = max(last_used_at, ?2) WHERE id = ?1",
                params![id.to_string(), now.0],
            )?;
            Ok(())
        })
        .await
    }

    async fn prune_sessions(&self, cutoff: UnixMillis) -> Result<u64> {
        self.write("prune_sessions", move |c| {
            let n = c.execute(
                "DELETE FROM sessions WHERE expires_at < ?1 OR revoked_at < ?1",
                [cutoff.0],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn insert_token(&self, t: ApiTokenRecord) -> Result<()> {
        let scopes = serde_json::to_string(&t.scopes).map_err(backend)?;
        self.write("insert_token", move |c| {
            c.execute(
                "INSERT INTO api_tokens (id, user_id, name, token_hash, scopes, created_at, expires_at, last_used_at, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![t.id.to_string(), t.user_id.to_string(), t.name, &t.token_hash[..], scopes,
                        t.created_at.0, t.expires_at.map(|x| x.0), t.last_used_at.map(|x| x.0),
                        t.revoked_at.map(|x| x.0)],
            )?;
            Ok(())
        })
        .await
    }

    async fn token_by_hash(&self, hash: [u8; 32]) -> Result<Option<(ApiTokenRecord, UserRecord)>> {
        self.read("token_by_hash", move |c| {
            Ok(c.query_row(
                &format!(
                    "SELECT {TOKEN_COLS}, {USER_COLS} FROM api_tokens t JOIN users u ON u.id = t.user_id
                     WHERE t.token_hash = ?1"
                ),
                [&hash[..]],
                |r| Ok((token_at(r)?, user_at(r, TOKEN_NCOLS)?)),
            )
            .optional()?)
        })
        .await
    }

    async fn list_tokens(&self, user: UserId) -> Result<Vec<ApiTokenRecord>> {
        self.read("list_tokens", move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {TOKEN_COLS} FROM api_tokens t WHERE t.user_id = ?1 ORDER BY t.created_at, t.id"
            ))?;
            let rows = stmt.query_map([user.to_string()], token_at)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn token_by_id(&self, id: TokenId) -> Result<Option<ApiTokenRecord>> {
        self.read("token_by_id", move |c| {
            Ok(c.query_row(
                &format!("SELECT {TOKEN_COLS} FROM api_tokens t WHERE t.id = ?1"),
                [id.to_string()],
                token_at,
            )
            .optional()?)
        })
        .await
    }

    async fn revoke_token(&self, id: TokenId, now: UnixMillis) -> Result<bool> {
        self.write("revoke_token", move |c| {
            let n = c.execute(
                "UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id.to_string(), now.0],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn touch_token(&self, id: TokenId, now: UnixMillis) -> Result<()> {
        self.write("touch_token", move |c| {
            c.execute(
                "UPDATE api_tokens SET last_used_at = max(coalesce(last_used_at, 0), ?2) WHERE id = ?1",
                params![id.to_string(), now.0],
            )?;
            Ok(())
        })
        .await
    }

    async fn insert_invite(&self, i: InviteRecord) -> Result<()> {
        self.write("insert_invite", move |c| {
            c.execute(
                "INSERT INTO invites (id, token_hash, created_by, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![i.id.to_string(), &i.token_hash[..], i.created_by.to_string(), i.created_at.0, i.expires_at.0],
            )?;
            Ok(())
        })
        .await
    }

    async fn list_invites(&self) -> Result<Vec<InviteRecord>> {
        self.read("list_invites", |c| {
            let mut stmt = c.prepare(
                "SELECT id, token_hash, created_by, created_at, expires_at, used_by FROM invites ORDER BY created_at, id",
            )?;
            let rows = stmt.query_map([], invite_at)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn put_dashboard(&self, d: DashboardRecord, max: usize) -> Result<bool> {
        self.write("put_dashboard", move |c| {
            let user = d.user_id.to_string();
            let exists: bool = c.query_row(
                "SELECT EXISTS (SELECT 1 FROM dashboards WHERE user_id = ?1 AND name = ?2)",
                params![user, d.name],
                |r| r.get(0),
            )?;
            if !exists {
                let n: i64 = c.query_row(
                    "SELECT count(*) FROM dashboards WHERE user_id = ?1",
                    params![user],
                    |r| r.get(0),
                )?;
                if n as usize >= max {
                    return Ok(false);
                }
            }
            c.execute(
                "INSERT INTO dashboards (user_id, name, body, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user_id, name) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
                params![user, d.name, d.body, d.updated_at.0],
            )?;
            Ok(true)
        })
        .await
    }

    async fn dashboards(&self, user: UserId) -> Result<Vec<DashboardRecord>> {
        self.read("dashboards", move |c| {
            let mut stmt = c.prepare(
                "SELECT name, body, updated_at FROM dashboards WHERE user_id = ?1 ORDER BY name",
            )?;
            let rows = stmt.query_map(params![user.to_string()], |r| {
                Ok(DashboardRecord {
                    user_id: user,
                    name: r.get(0)?,
                    body: r.get(1)?,
                    updated_at: UnixMillis(r.get(2)?),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn delete_dashboard(&self, user: UserId, name: &str) -> Result<bool> {
        let name = name.to_string();
        self.write("delete_dashboard", move |c| {
            let n = c.execute(
                "DELETE FROM dashboards WHERE user_id = ?1 AND name = ?2",
                params![user.to_string(), name],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn append_audit(&self, entry: AuditEntry) -> Result<AuditRecord> {
        self.write("append_audit", move |c| {
            let tx = c.savepoint()?;
            let last: Option<(i64, String)> = tx
                .query_row(
                    "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let (seq, prev_hash) = match last {
                Some((seq, hash)) => (seq + 1, hash),
                None => (1, GENESIS.to_string()),
            };
            let hash = chain_hash(&prev_hash, seq, &entry);
            tx.execute(
                "INSERT INTO audit (seq, at, actor, action, target, ip, detail, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    seq,
                    entry.at.0,
                    entry.actor,
                    entry.action,
                    entry.target,
                    entry.ip,
                    entry.detail,
                    prev_hash,
                    hash
                ],
            )?;
            tx.commit()?;
            Ok(AuditRecord {
                seq,
                entry,
                prev_hash,
                hash,
            })
        })
        .await
    }

    async fn query_audit(&self, f: AuditFilter) -> Result<Vec<AuditRecord>> {
        self.read("query_audit", move |c| {
            let prefix = f.action_prefix.map(|p| {
                let escaped = p
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_");
                format!("{escaped}%")
            });
            let mut stmt = c.prepare(
                "SELECT seq, at, actor, action, target, ip, detail, prev_hash, hash FROM audit
                 WHERE (?1 IS NULL OR actor = ?1)
                   AND (?2 IS NULL OR action LIKE ?2 ESCAPE '\\')
                   AND (?3 IS NULL OR at >= ?3)
                   AND (?4 IS NULL OR at < ?4)
                   AND seq > coalesce(?5, 0)
                 ORDER BY seq LIMIT ?6",
            )?;
            let limit = i64::try_from(f.limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(
                params![
                    f.actor,
                    prefix,
                    f.since.map(|t| t.0),
                    f.until.map(|t| t.0),
                    f.after_seq,
                    limit
                ],
                audit_at,
            )?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn flush(&self) -> Result<()> {
        self.write_alone(|c| {
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }
}
