//! [`ChatStore`] on the SQLite backend (same file and writer as the rest).

use crate::chat::*;
use crate::sqlite::{is_unique_violation, parse_id};
use crate::{Result, SqliteStore, StoreError};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, params};
use sb_core::{AttachmentId, RoomId, RoomRole, UnixMillis, UserId};

const ROOM_COLS: &str = "r.id, r.kind, r.name, r.topic, r.public, r.created_by, r.created_at, \
     r.last_seq, r.encrypted, r.mls_epoch";
const ROOM_NCOLS: usize = 10;

fn room_at(row: &Row<'_>) -> rusqlite::Result<RoomRecord> {
    let kind: String = row.get(1)?;
    Ok(RoomRecord {
        id: parse_id(row.get(0)?)?,
        kind: if kind == "direct" {
            RoomKind::Direct
        } else {
            RoomKind::Group
        },
        name: row.get(2)?,
        topic: row.get(3)?,
        public: row.get(4)?,
        created_by: parse_id(row.get(5)?)?,
        created_at: UnixMillis(row.get(6)?),
        last_seq: row.get(7)?,
        encrypted: row.get(8)?,
        mls_epoch: row.get(9)?,
    })
}

fn role_of(s: String) -> RoomRole {
    RoomRole::parse(&s).unwrap_or(RoomRole::Member)
}

const MSG_COLS: &str = "room_id, seq, message_id, sender, body, reply_to, created_at, kind, target, deleted, edited_at, attachments";

fn message_at(row: &Row<'_>) -> rusqlite::Result<MessageRecord> {
    let kind: String = row.get(7)?;
    Ok(MessageRecord {
        room_id: parse_id(row.get(0)?)?,
        seq: row.get(1)?,
        message_id: row.get(2)?,
        sender: parse_id(row.get(3)?)?,
        body: row.get(4)?,
        reply_to: row.get(5)?,
        created_at: UnixMillis(row.get(6)?),
        kind: MessageKind::parse(&kind).unwrap_or_default(),
        target: row.get(8)?,
        deleted: row.get(9)?,
        edited_at: row.get::<_, Option<i64>>(10)?.map(UnixMillis),
        attachments: {
            let ids: String = row.get(11)?;
            serde_json::from_str::<Vec<String>>(&ids)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|s| s.parse().ok())
                .collect()
        },
    })
}

/// Applies an edit or delete to its target inside the append's transaction.
fn apply_to_target(c: &Connection, msg: &NewMessage, rid: &str) -> Result<()> {
    let Some(target) = msg.target else {
        return Ok(());
    };
    let live = "room_id = ?1 AND seq = ?2 AND kind = 'message' AND deleted = 0";
    let n = match msg.kind {
        MessageKind::Message => return Ok(()),
        MessageKind::Edit => {
            let n = c.execute(
                &format!("UPDATE messages SET body = ?3, edited_at = ?4 WHERE {live}"),
                params![rid, target, msg.body, msg.at.0],
            )?;
            c.execute(
                "UPDATE messages_fts SET body = ?3 WHERE room_id = ?1 AND seq = ?2",
                params![rid, target, msg.body],
            )?;
            n
        }
        MessageKind::Delete => {
            let n = c.execute(
                &format!("UPDATE messages SET body = '', deleted = 1 WHERE {live}"),
                params![rid, target],
            )?;
            c.execute(
                "UPDATE messages SET body = '' WHERE room_id = ?1 AND kind = 'edit' AND target = ?2",
                params![rid, target],
            )?;
            c.execute(
                "DELETE FROM messages_fts WHERE room_id = ?1 AND seq = ?2",
                params![rid, target],
            )?;
            n
        }
        MessageKind::Reaction | MessageKind::Unreaction => c
            .query_row(
                &format!("SELECT count(*) FROM messages WHERE {live}"),
                params![rid, target],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as usize)?,
    };
    if n == 1 {
        Ok(())
    } else {
        Err(StoreError::NotFound)
    }
}

fn insert_room(c: &Connection, room: &RoomRecord, dm_key: Option<&str>) -> Result<()> {
    let r = c.execute(
        "INSERT INTO rooms (id, kind, name, topic, public, created_by, created_at, last_seq, dm_key, encrypted)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9)",
        params![
            room.id.to_string(),
            room.kind.as_str(),
            room.name,
            room.topic,
            room.public,
            room.created_by.to_string(),
            room.created_at.0,
            dm_key,
            room.encrypted
        ],
    );
    match r {
        Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict("room name")),
        other => other.map(|_| ()).map_err(Into::into),
    }
}

fn insert_member(
    c: &Connection,
    room: RoomId,
    user: UserId,
    role: RoomRole,
    at: UnixMillis,
) -> Result<()> {
    c.execute(
        "INSERT INTO room_members (room_id, user_id, role, joined_at) VALUES (?1, ?2, ?3, ?4)",
        params![room.to_string(), user.to_string(), role.as_str(), at.0],
    )?;
    Ok(())
}

fn room_by_id(c: &Connection, room: &str) -> Result<Option<RoomRecord>> {
    Ok(c.query_row(
        &format!("SELECT {ROOM_COLS} FROM rooms r WHERE r.id = ?1"),
        [room],
        room_at,
    )
    .optional()?)
}

/// Turns user text into an FTS5 query that matches all its words: each word is quoted, so
/// FTS5 operators and punctuation in the input are taken literally and never a syntax error.
fn fts_query(text: &str) -> String {
    text.split_whitespace()
        .take(16)
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" ")
}

#[async_trait]
impl ChatStore for SqliteStore {
    async fn create_room(&self, room: RoomRecord) -> Result<()> {
        self.write("create_room", move |c| {
            let tx = c.savepoint()?;
            insert_room(&tx, &room, None)?;
            insert_member(
                &tx,
                room.id,
                room.created_by,
                RoomRole::Owner,
                room.created_at,
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn direct_room(
        &self,
        a: UserId,
        b: UserId,
        new_id: RoomId,
        at: UnixMillis,
    ) -> Result<(RoomRecord, bool)> {
        self.write("direct_room", move |c| {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let key = format!("{lo}:{hi}");
            let tx = c.savepoint()?;
            let existing = tx
                .query_row(
                    &format!("SELECT {ROOM_COLS} FROM rooms r WHERE r.dm_key = ?1"),
                    [&key],
                    room_at,
                )
                .optional()?;
            if let Some(room) = existing {
                return Ok((room, false));
            }
            let room = RoomRecord {
                id: new_id,
                kind: RoomKind::Direct,
                name: key.clone(),
                topic: String::new(),
                public: false,
                created_by: a,
                created_at: at,
                last_seq: 0,
                encrypted: false,
                mls_epoch: 0,
            };
            insert_room(&tx, &room, Some(&key))?;
            insert_member(&tx, room.id, a, RoomRole::Member, at)?;
            if b != a {
                insert_member(&tx, room.id, b, RoomRole::Member, at)?;
            }
            tx.commit()?;
            Ok((room, true))
        })
        .await
    }

    async fn room_access(&self, room: RoomId, user: UserId) -> Result<Option<RoomAccess>> {
        self.read("room_access", move |c| {
            let (rid, uid) = (room.to_string(), user.to_string());
            let Some(room) = room_by_id(c, &rid)? else {
                return Ok(None);
            };
            let role: Option<String> = c
                .query_row(
                    "SELECT role FROM room_members WHERE room_id = ?1 AND user_id = ?2",
                    [&rid, &uid],
                    |r| r.get(0),
                )
                .optional()?;
            let banned = c
                .query_row(
                    "SELECT 1 FROM room_bans WHERE room_id = ?1 AND user_id = ?2",
                    [&rid, &uid],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            Ok(Some(RoomAccess {
                room,
                role: role.map(role_of),
                banned,
            }))
        })
        .await
    }

    async fn rooms_of(&self, user: UserId) -> Result<Vec<MyRoom>> {
        self.read("rooms_of", move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {ROOM_COLS}, m.role, coalesce(rm.seq, 0)
                 FROM rooms r JOIN room_members m ON m.room_id = r.id
                 LEFT JOIN read_markers rm ON rm.room_id = r.id AND rm.user_id = m.user_id
                 WHERE m.user_id = ?1 ORDER BY r.created_at, r.id"
            ))?;
            let rows = stmt.query_map([user.to_string()], |r| {
                Ok(MyRoom {
                    room: room_at(r)?,
                    role: role_of(r.get(ROOM_NCOLS)?),
                    read_seq: r.get(ROOM_NCOLS + 1)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn mark_read(&self, room: RoomId, user: UserId, seq: i64, at: UnixMillis) -> Result<i64> {
        self.write("mark_read", move |c| {
            let marker: i64 = c.query_row(
                "INSERT INTO read_markers (room_id, user_id, seq, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (room_id, user_id) DO UPDATE
                   SET seq = max(seq, excluded.seq), updated_at = excluded.updated_at
                 RETURNING seq",
                params![room.to_string(), user.to_string(), seq, at.0],
                |r| r.get(0),
            )?;
            Ok(marker)
        })
        .await
    }

    async fn read_markers(&self, room: RoomId) -> Result<Vec<ReadMarker>> {
        self.read("read_markers", move |c| {
            let mut stmt = c.prepare(
                "SELECT rm.user_id, u.username, rm.seq, rm.updated_at
                 FROM read_markers rm
                 JOIN room_members m ON m.room_id = rm.room_id AND m.user_id = rm.user_id
                 JOIN users u ON u.id = rm.user_id
                 WHERE rm.room_id = ?1 ORDER BY u.username",
            )?;
            let rows = stmt.query_map([room.to_string()], |r| {
                Ok(ReadMarker {
                    user_id: parse_id(r.get(0)?)?,
                    username: r.get(1)?,
                    seq: r.get(2)?,
                    updated_at: UnixMillis(r.get(3)?),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn public_rooms(&self) -> Result<Vec<RoomRecord>> {
        self.read("public_rooms", |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {ROOM_COLS} FROM rooms r WHERE r.public = 1 AND r.kind = 'group'
                 ORDER BY r.name COLLATE NOCASE"
            ))?;
            let rows = stmt.query_map([], room_at)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn add_member(
        &self,
        room: RoomId,
        user: UserId,
        role: RoomRole,
        members_max: usize,
        at: UnixMillis,
    ) -> Result<MemberChange> {
        self.write("add_member", move |c| {
            let tx = c.savepoint()?;
            let (rid, uid) = (room.to_string(), user.to_string());
            let banned = tx
                .query_row(
                    "SELECT 1 FROM room_bans WHERE room_id = ?1 AND user_id = ?2",
                    [&rid, &uid],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if banned {
                return Ok(MemberChange::Banned);
            }
            let count: i64 = tx.query_row(
                "SELECT count(*) FROM room_members WHERE room_id = ?1",
                [&rid],
                |r| r.get(0),
            )?;
            if usize::try_from(count).unwrap_or(usize::MAX) >= members_max {
                return Ok(MemberChange::RoomFull);
            }
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO room_members (room_id, user_id, role, joined_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![rid, uid, role.as_str(), at.0],
            )?;
            tx.commit()?;
            Ok(if inserted == 1 {
                MemberChange::Added
            } else {
                MemberChange::AlreadyMember
            })
        })
        .await
    }

    async fn remove_member(&self, room: RoomId, user: UserId) -> Result<bool> {
        self.write("remove_member", move |c| {
            let n = c.execute(
                "DELETE FROM room_members WHERE room_id = ?1 AND user_id = ?2",
                [room.to_string(), user.to_string()],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn set_member_role(&self, room: RoomId, user: UserId, role: RoomRole) -> Result<bool> {
        self.write("set_member_role", move |c| {
            let n = c.execute(
                "UPDATE room_members SET role = ?3 WHERE room_id = ?1 AND user_id = ?2",
                params![room.to_string(), user.to_string(), role.as_str()],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn ban(&self, room: RoomId, user: UserId, by: UserId, at: UnixMillis) -> Result<()> {
        self.write("ban", move |c| {
            let tx = c.savepoint()?;
            let (rid, uid) = (room.to_string(), user.to_string());
            tx.execute(
                "DELETE FROM room_members WHERE room_id = ?1 AND user_id = ?2",
                [&rid, &uid],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO room_bans (room_id, user_id, banned_by, banned_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![rid, uid, by.to_string(), at.0],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn members(&self, room: RoomId) -> Result<Vec<MemberRecord>> {
        self.read("members", move |c| {
            let mut stmt = c.prepare(
                "SELECT m.user_id, u.username, m.role, m.joined_at, u.last_seen_at
                 FROM room_members m JOIN users u ON u.id = m.user_id
                 WHERE m.room_id = ?1 ORDER BY m.joined_at, u.username",
            )?;
            let rows = stmt.query_map([room.to_string()], |r| {
                Ok(MemberRecord {
                    user_id: parse_id(r.get(0)?)?,
                    username: r.get(1)?,
                    role: role_of(r.get(2)?),
                    joined_at: UnixMillis(r.get(3)?),
                    last_seen_at: r.get::<_, Option<i64>>(4)?.map(UnixMillis),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn message(&self, room: RoomId, seq: i64) -> Result<Option<MessageRecord>> {
        self.read("message", move |c| {
            Ok(c.query_row(
                &format!("SELECT {MSG_COLS} FROM messages WHERE room_id = ?1 AND seq = ?2"),
                params![room.to_string(), seq],
                message_at,
            )
            .optional()?)
        })
        .await
    }

    async fn insert_attachment(&self, a: AttachmentRecord) -> Result<()> {
        self.write("insert_attachment", move |c| {
            c.execute(
                "INSERT INTO attachments (id, room_id, uploader, blob, name, content_type, size, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    a.id.to_string(),
                    a.room_id.to_string(),
                    a.uploader.to_string(),
                    a.blob,
                    a.name,
                    a.content_type,
                    i64::try_from(a.size).unwrap_or(i64::MAX),
                    a.created_at.0
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn attachment_blobs(&self) -> Result<Vec<String>> {
        self.read("attachment_blobs", |c| {
            let mut stmt = c.prepare_cached("SELECT DISTINCT blob FROM attachments")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
        })
        .await
    }

    async fn attachment(&self, room: RoomId, id: AttachmentId) -> Result<Option<AttachmentRecord>> {
        self.read("attachment", move |c| {
            Ok(c.query_row(
                "SELECT id, room_id, uploader, blob, name, content_type, size, created_at
                 FROM attachments WHERE id = ?1 AND room_id = ?2",
                [id.to_string(), room.to_string()],
                |r| {
                    Ok(AttachmentRecord {
                        id: parse_id(r.get(0)?)?,
                        room_id: parse_id(r.get(1)?)?,
                        uploader: parse_id(r.get(2)?)?,
                        blob: r.get(3)?,
                        name: r.get(4)?,
                        content_type: r.get(5)?,
                        size: u64::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
                        created_at: UnixMillis(r.get(7)?),
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    async fn add_key_packages(
        &self,
        user: UserId,
        device: &str,
        packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        max_per_device: usize,
    ) -> Result<usize> {
        let device = device.to_string();
        self.write("add_key_packages", move |c| {
            let tx = c.savepoint()?;
            let uid = user.to_string();
            if let Some(lr) = last_resort {
                tx.execute(
                    "DELETE FROM mls_key_packages WHERE user_id = ?1 AND device = ?2 AND last_resort = 1",
                    params![uid, device],
                )?;
                tx.execute(
                    "INSERT INTO mls_key_packages (user_id, device, package, last_resort) VALUES (?1, ?2, ?3, 1)",
                    params![uid, device, lr],
                )?;
            }
            for p in packages {
                tx.execute(
                    "INSERT INTO mls_key_packages (user_id, device, package, last_resort) VALUES (?1, ?2, ?3, 0)",
                    params![uid, device, p],
                )?;
            }
            // Keep the newest `max_per_device`.
            tx.execute(
                "DELETE FROM mls_key_packages WHERE user_id = ?1 AND device = ?2 AND last_resort = 0
                 AND id NOT IN (SELECT id FROM mls_key_packages WHERE user_id = ?1 AND device = ?2
                                AND last_resort = 0 ORDER BY id DESC LIMIT ?3)",
                params![uid, device, i64::try_from(max_per_device).unwrap_or(i64::MAX)],
            )?;
            let n: i64 = tx.query_row(
                "SELECT count(*) FROM mls_key_packages WHERE user_id = ?1 AND device = ?2 AND last_resort = 0",
                params![uid, device],
                |r| r.get(0),
            )?;
            tx.commit()?;
            Ok(usize::try_from(n).unwrap_or(0))
        })
        .await
    }

    async fn claim_key_packages(&self, user: UserId) -> Result<Vec<(String, Vec<u8>)>> {
        self.write("claim_key_packages", move |c| {
            let tx = c.savepoint()?;
            let uid = user.to_string();
            let devices: Vec<String> = {
                let mut stmt = tx.prepare(
                    "SELECT DISTINCT device FROM mls_key_packages WHERE user_id = ?1 ORDER BY device",
                )?;
                stmt.query_map([&uid], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?
            };
            let mut out = Vec::new();
            for device in devices {
                let regular: Option<(i64, Vec<u8>)> = tx
                    .query_row(
                        "SELECT id, package FROM mls_key_packages
                         WHERE user_id = ?1 AND device = ?2 AND last_resort = 0 ORDER BY id LIMIT 1",
                        params![uid, device],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                let package = match regular {
                    Some((id, p)) => {
                        tx.execute("DELETE FROM mls_key_packages WHERE id = ?1", [id])?;
                        Some(p)
                    }
                    None => tx
                        .query_row(
                            "SELECT package FROM mls_key_packages
                             WHERE user_id = ?1 AND device = ?2 AND last_resort = 1",
                            params![uid, device],
                            |r| r.get(0),
                        )
                        .optional()?,
                };
                if let Some(p) = package {
                    out.push((device, p));
                }
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn append_handshake(
        &self,
        room: RoomId,
        epoch: i64,
        sender: UserId,
        message: Vec<u8>,
        welcomes: Vec<NewWelcome>,
        at: UnixMillis,
    ) -> Result<HandshakeOutcome> {
        self.write("append_handshake", move |c| {
            let tx = c.savepoint()?;
            let rid = room.to_string();
            let current: i64 = tx
                .query_row("SELECT mls_epoch FROM rooms WHERE id = ?1", [&rid], |r| {
                    r.get(0)
                })
                .optional()?
                .ok_or(StoreError::NotFound)?;
            if current != epoch {
                return Ok(HandshakeOutcome::Stale { current });
            }
            tx.execute(
                "INSERT INTO mls_handshakes (room_id, epoch, sender, message, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![rid, epoch, sender.to_string(), message, at.0],
            )?;
            for w in welcomes {
                tx.execute(
                    "INSERT INTO mls_welcomes (user_id, device, room_id, epoch, welcome, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![w.user.to_string(), w.device, rid, epoch, w.welcome, at.0],
                )?;
            }
            tx.execute(
                "UPDATE rooms SET mls_epoch = mls_epoch + 1 WHERE id = ?1",
                [&rid],
            )?;
            tx.commit()?;
            Ok(HandshakeOutcome::Accepted)
        })
        .await
    }

    async fn handshakes_after(
        &self,
        room: RoomId,
        epoch: i64,
        limit: usize,
    ) -> Result<Vec<HandshakeRecord>> {
        self.read("handshakes_after", move |c| {
            let mut stmt = c.prepare(
                "SELECT room_id, epoch, sender, message, created_at FROM mls_handshakes
                 WHERE room_id = ?1 AND epoch >= ?2 ORDER BY epoch LIMIT ?3",
            )?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![room.to_string(), epoch, limit], |r| {
                Ok(HandshakeRecord {
                    room_id: parse_id(r.get(0)?)?,
                    epoch: r.get(1)?,
                    sender: parse_id(r.get(2)?)?,
                    message: r.get(3)?,
                    created_at: UnixMillis(r.get(4)?),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn take_welcomes(&self, user: UserId, device: &str) -> Result<Vec<WelcomeRecord>> {
        let device = device.to_string();
        self.write("take_welcomes", move |c| {
            let tx = c.savepoint()?;
            let uid = user.to_string();
            let out = {
                let mut stmt = tx.prepare(
                    "SELECT room_id, epoch, welcome FROM mls_welcomes
                     WHERE user_id = ?1 AND device = ?2 ORDER BY id",
                )?;
                stmt.query_map(params![uid, device], |r| {
                    Ok(WelcomeRecord {
                        room_id: parse_id(r.get(0)?)?,
                        epoch: r.get(1)?,
                        welcome: r.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?
            };
            tx.execute(
                "DELETE FROM mls_welcomes WHERE user_id = ?1 AND device = ?2",
                params![uid, device],
            )?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn co_members(&self, user: UserId) -> Result<Vec<UserId>> {
        self.read("co_members", move |c| {
            let mut stmt = c.prepare(
                "SELECT DISTINCT b.user_id FROM room_members a
                 JOIN room_members b ON b.room_id = a.room_id
                 WHERE a.user_id = ?1 AND b.user_id != ?1",
            )?;
            let rows = stmt.query_map([user.to_string()], |r| parse_id(r.get(0)?))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn set_last_seen(&self, user: UserId, at: UnixMillis) -> Result<()> {
        self.write("set_last_seen", move |c| {
            c.execute(
                "UPDATE users SET last_seen_at = ?2 WHERE id = ?1",
                params![user.to_string(), at.0],
            )?;
            Ok(())
        })
        .await
    }

    async fn append_message(&self, msg: NewMessage) -> Result<Appended> {
        self.write("append_message", move |c| {
            let tx = c.savepoint()?;
            let rid = msg.room_id.to_string();
            let sender = msg.sender.to_string();
            let attachments_json = serde_json::to_string(
                &msg.attachments
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| StoreError::Backend(e.to_string()))?;
            let existing = tx
                .query_row(
                    &format!(
                        "SELECT {MSG_COLS} FROM messages
                         WHERE room_id = ?1 AND sender = ?2 AND message_id = ?3"
                    ),
                    [&rid, &sender, &msg.message_id],
                    message_at,
                )
                .optional()?;
            if let Some(m) = existing {
                return Ok(Appended::Duplicate(m));
            }
            let (seq, encrypted): (i64, bool) = tx
                .query_row(
                    "UPDATE rooms SET last_seq = last_seq + 1 WHERE id = ?1 RETURNING last_seq, encrypted",
                    [&rid],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?
                .ok_or(StoreError::NotFound)?;
            tx.execute(
                &format!(
                    "INSERT INTO messages ({MSG_COLS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, NULL, ?10)"
                ),
                params![
                    rid,
                    seq,
                    msg.message_id,
                    sender,
                    msg.body,
                    msg.reply_to,
                    msg.at.0,
                    msg.kind.as_str(),
                    msg.target,
                    attachments_json
                ],
            )?;
            apply_to_target(&tx, &msg, &rid)?;
            // Encrypted rooms hold ciphertext: nothing to index.
            if msg.kind == MessageKind::Message && !encrypted {
                tx.execute(
                    "INSERT INTO messages_fts (body, room_id, seq) VALUES (?1, ?2, ?3)",
                    params![msg.body, rid, seq],
                )?;
            }
            tx.commit()?;
            Ok(Appended::New(MessageRecord {
                room_id: msg.room_id,
                seq,
                message_id: msg.message_id,
                sender: msg.sender,
                body: msg.body,
                reply_to: msg.reply_to,
                created_at: msg.at,
                kind: msg.kind,
                target: msg.target,
                deleted: false,
                edited_at: None,
                attachments: msg.attachments,
            }))
        })
        .await
    }

    async fn messages_after(
        &self,
        room: RoomId,
        after: i64,
        limit: usize,
    ) -> Result<Vec<MessageRecord>> {
        self.read("messages_after", move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {MSG_COLS} FROM messages WHERE room_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
            ))?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![room.to_string(), after, limit], message_at)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn search(
        &self,
        user: UserId,
        query: &str,
        room: Option<RoomId>,
        limit: usize,
    ) -> Result<Vec<(MessageRecord, RoomRole)>> {
        let query = fts_query(query);
        self.read("search", move |c| {
            if query.is_empty() {
                return Ok(Vec::new());
            }
            let mut stmt = c.prepare(
                "SELECT m.room_id, m.seq, m.message_id, m.sender, m.body, m.reply_to, m.created_at,
                        m.kind, m.target, m.deleted, m.edited_at, m.attachments, rm.role
                 FROM messages_fts f
                 JOIN room_members rm ON rm.room_id = f.room_id AND rm.user_id = ?2
                 JOIN messages m ON m.room_id = f.room_id AND m.seq = f.seq
                 WHERE messages_fts MATCH ?1 AND (?3 IS NULL OR f.room_id = ?3)
                 ORDER BY f.rank LIMIT ?4",
            )?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(
                params![query, user.to_string(), room.map(|r| r.to_string()), limit],
                |r| Ok((message_at(r)?, role_of(r.get(12)?))),
            )?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn messages_before(
        &self,
        room: RoomId,
        before: i64,
        limit: usize,
    ) -> Result<Vec<MessageRecord>> {
        self.read("messages_before", move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {MSG_COLS} FROM messages WHERE room_id = ?1 AND seq < ?2
                 ORDER BY seq DESC LIMIT ?3"
            ))?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt.query_map(params![room.to_string(), before, limit], message_at)?;
            let mut v = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            v.reverse();
            Ok(v)
        })
        .await
    }
}
