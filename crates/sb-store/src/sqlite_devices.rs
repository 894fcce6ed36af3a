//! [`DevicesStore`] on the SQLite backend.

use crate::devices::*;
use crate::sqlite::parse_id;
use crate::{Result, SqliteStore, StoreError};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, params};
use sb_core::{CommandId, DeviceId, RolloutId, UnixMillis};

const COLS: &str = "id, name, group_name, tags, secret_hash, owner, created_at, revoked_at, \
     last_seen_at, health, health_at";

fn device_at(row: &Row<'_>) -> rusqlite::Result<DeviceRecord> {
    let tags: String = row.get(3)?;
    let hash: Vec<u8> = row.get(4)?;
    Ok(DeviceRecord {
        id: parse_id(row.get(0)?)?,
        name: row.get(1)?,
        group: row.get(2)?,
        tags: serde_json::from_str(&tags).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
        })?,
        secret_hash: hash.try_into().map_err(|_| {
            rusqlite::Error::FromSqlConversionFailure(
                4,
                rusqlite::types::Type::Blob,
                "a secret hash is 32 bytes".into(),
            )
        })?,
        owner: parse_id(row.get(5)?)?,
        created_at: UnixMillis(row.get(6)?),
        revoked_at: row.get::<_, Option<i64>>(7)?.map(UnixMillis),
        last_seen_at: row.get::<_, Option<i64>>(8)?.map(UnixMillis),
        health: row.get(9)?,
        health_at: row.get::<_, Option<i64>>(10)?.map(UnixMillis),
    })
}

const COMMAND_COLS: &str = "id, device_id, method, payload, state, created_by, created_at, \
     expires_at, timeout_ms, sent_at, finished_at, status, result";

fn command_at(row: &Row<'_>) -> rusqlite::Result<CommandRecord> {
    Ok(CommandRecord {
        id: parse_id(row.get(0)?)?,
        device_id: parse_id(row.get(1)?)?,
        method: row.get(2)?,
        payload: row.get(3)?,
        state: row.get(4)?,
        created_by: parse_id(row.get(5)?)?,
        created_at: UnixMillis(row.get(6)?),
        expires_at: UnixMillis(row.get(7)?),
        timeout_ms: row.get(8)?,
        sent_at: row.get::<_, Option<i64>>(9)?.map(UnixMillis),
        finished_at: row.get::<_, Option<i64>>(10)?.map(UnixMillis),
        status: row.get(11)?,
        result: row.get(12)?,
    })
}

#[async_trait]
impl DevicesStore for SqliteStore {
    async fn create_device(&self, d: DeviceRecord) -> Result<()> {
        self.write("create_device", move |c| {
            let tags = serde_json::to_string(&d.tags).unwrap_or_else(|_| "[]".into());
            let n = c.execute(
                "INSERT OR IGNORE INTO devices (id, name, group_name, tags, secret_hash, owner, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    d.id.to_string(),
                    d.name,
                    d.group,
                    tags,
                    d.secret_hash.to_vec(),
                    d.owner.to_string(),
                    d.created_at.0
                ],
            )?;
            if n == 0 {
                return Err(StoreError::Conflict("a device with this name exists"));
            }
            Ok(())
        })
        .await
    }

    async fn device(&self, id: DeviceId) -> Result<Option<DeviceRecord>> {
        self.read("device", move |c| {
            Ok(c.query_row(
                &format!("SELECT {COLS} FROM devices WHERE id = ?1"),
                [id.to_string()],
                device_at,
            )
            .optional()?)
        })
        .await
    }

    async fn device_by_name(&self, name: &str) -> Result<Option<DeviceRecord>> {
        let name = name.to_string();
        self.read("device_by_name", move |c| {
            Ok(c.query_row(
                &format!("SELECT {COLS} FROM devices WHERE name = ?1"),
                [name],
                device_at,
            )
            .optional()?)
        })
        .await
    }

    async fn devices(&self) -> Result<Vec<DeviceRecord>> {
        self.read("devices", move |c| {
            let mut stmt =
                c.prepare_cached(&format!("SELECT {COLS} FROM devices ORDER BY name"))?;
            let rows = stmt.query_map([], device_at)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn set_device_secret(&self, id: DeviceId, secret_hash: [u8; 32]) -> Result<()> {
        self.write("set_device_secret", move |c| {
            let n = c.execute(
                "UPDATE devices SET secret_hash = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id.to_string(), secret_hash.to_vec()],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })
        .await
    }

    async fn revoke_device(&self, id: DeviceId, at: UnixMillis) -> Result<()> {
        self.write("revoke_device", move |c| {
            let n = c.execute(
                "UPDATE devices SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
                params![id.to_string(), at.0],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })
        .await
    }

    async fn device_health(&self, id: DeviceId, report: String, at: UnixMillis) -> Result<()> {
        self.write("device_health", move |c| {
            c.execute(
                "UPDATE devices SET health = ?2, health_at = ?3, last_seen_at = ?3 WHERE id = ?1",
                params![id.to_string(), report, at.0],
            )?;
            Ok(())
        })
        .await
    }

    async fn device_seen(&self, id: DeviceId, at: UnixMillis) -> Result<()> {
        self.write("device_seen", move |c| {
            c.execute(
                "UPDATE devices SET last_seen_at = ?2 WHERE id = ?1",
                params![id.to_string(), at.0],
            )?;
            Ok(())
        })
        .await
    }

    async fn put_command(&self, c: CommandRecord) -> Result<()> {
        self.write("put_command", move |conn| {
            conn.execute(
                &format!(
                    "INSERT OR REPLACE INTO device_commands ({COMMAND_COLS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
                ),
                params![
                    c.id.to_string(),
                    c.device_id.to_string(),
                    c.method,
                    c.payload,
                    c.state,
                    c.created_by.to_string(),
                    c.created_at.0,
                    c.expires_at.0,
                    c.timeout_ms,
                    c.sent_at.map(|t| t.0),
                    c.finished_at.map(|t| t.0),
                    c.status,
                    c.result
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn command(&self, id: CommandId) -> Result<Option<CommandRecord>> {
        self.read("command", move |c| {
            Ok(c.query_row(
                &format!("SELECT {COMMAND_COLS} FROM device_commands WHERE id = ?1"),
                [id.to_string()],
                command_at,
            )
            .optional()?)
        })
        .await
    }

    async fn open_commands(&self) -> Result<Vec<CommandRecord>> {
        self.read("open_commands", move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COMMAND_COLS} FROM device_commands WHERE state IN ('queued', 'sent') ORDER BY id"
            ))?;
            let rows = stmt.query_map([], command_at)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn twin(&self, device: DeviceId) -> Result<Option<TwinRecord>> {
        self.read("twin", move |c| {
            Ok(c.query_row(
                "SELECT device_id, desired, desired_meta, desired_version, reported, reported_meta, \
                 reported_version FROM device_twins WHERE device_id = ?1",
                [device.to_string()],
                |r| {
                    Ok(TwinRecord {
                        device_id: parse_id(r.get(0)?)?,
                        desired: r.get(1)?,
                        desired_meta: r.get(2)?,
                        desired_version: r.get(3)?,
                        reported: r.get(4)?,
                        reported_meta: r.get(5)?,
                        reported_version: r.get(6)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    async fn put_twin(&self, t: TwinRecord, expect_desired: i64) -> Result<()> {
        self.write("put_twin", move |c| {
            let tx = c.savepoint()?;
            let current: Option<i64> = tx
                .query_row(
                    "SELECT desired_version FROM device_twins WHERE device_id = ?1",
                    [t.device_id.to_string()],
                    |r| r.get(0),
                )
                .optional()?;
            if current.unwrap_or(0) != expect_desired {
                return Err(StoreError::Conflict("the twin changed since that version"));
            }
            tx.execute(
                "INSERT OR REPLACE INTO device_twins (device_id, desired, desired_meta, \
                 desired_version, reported, reported_meta, reported_version) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    t.device_id.to_string(),
                    t.desired,
                    t.desired_meta,
                    t.desired_version,
                    t.reported,
                    t.reported_meta,
                    t.reported_version
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn create_firmware(&self, f: FirmwareRecord) -> Result<()> {
        self.write("create_firmware", move |c| {
            let n = c.execute(
                "INSERT OR IGNORE INTO firmware (version, size, sha256, blob, signature, public_key, \
                 created_by, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    f.version,
                    f.size as i64,
                    f.sha256,
                    f.blob.to_vec(),
                    f.signature,
                    f.public_key,
                    f.created_by.to_string(),
                    f.created_at.0
                ],
            )?;
            if n == 0 {
                return Err(StoreError::Conflict("that firmware version exists"));
            }
            Ok(())
        })
        .await
    }

    async fn firmware(&self, version: &str) -> Result<Option<FirmwareRecord>> {
        let version = version.to_string();
        self.read("firmware", move |c| {
            Ok(c.query_row(
                &format!("SELECT {FIRMWARE_COLS} FROM firmware WHERE version = ?1"),
                [version],
                firmware_at,
            )
            .optional()?)
        })
        .await
    }

    async fn firmwares(&self) -> Result<Vec<FirmwareRecord>> {
        self.read("firmwares", move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {FIRMWARE_COLS} FROM firmware ORDER BY created_at DESC"
            ))?;
            let rows = stmt.query_map([], firmware_at)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn set_device_cert(
        &self,
        id: DeviceId,
        sha256: String,
        issued_at: UnixMillis,
        expires_at: UnixMillis,
    ) -> Result<()> {
        self.write("set_device_cert", move |c| {
            let live: bool = c
                .query_row(
                    "SELECT revoked_at IS NULL FROM devices WHERE id = ?1",
                    [id.to_string()],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(false);
            if !live {
                return Err(StoreError::NotFound);
            }
            c.execute(
                "INSERT OR REPLACE INTO device_certs (device_id, sha256, issued_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![id.to_string(), sha256, issued_at.0, expires_at.0],
            )?;
            Ok(())
        })
        .await
    }

    async fn device_by_cert(&self, sha256: &str) -> Result<Option<(DeviceId, UnixMillis)>> {
        let sha256 = sha256.to_string();
        self.read("device_by_cert", move |c| {
            let row = c
                .query_row(
                    "SELECT device_id, expires_at FROM device_certs WHERE sha256 = ?1",
                    [sha256],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
                )
                .optional()?;
            match row {
                Some((id, exp)) => Ok(Some((parse_id(id)?, UnixMillis(exp)))),
                None => Ok(None),
            }
        })
        .await
    }

    async fn create_rollout(&self, r: RolloutRecord, targets: Vec<RolloutTarget>) -> Result<()> {
        self.write("create_rollout", move |c| {
            let tx = c.savepoint()?;
            tx.execute(
                &format!(
                    "INSERT INTO firmware_rollouts ({ROLLOUT_COLS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
                ),
                params![
                    r.id.to_string(),
                    r.version,
                    r.group,
                    r.state,
                    r.batch_size,
                    r.max_failures,
                    r.step_timeout_ms,
                    r.current_batch,
                    r.reason,
                    r.created_by.to_string(),
                    r.created_at.0,
                    r.updated_at.0
                ],
            )?;
            put_targets(&tx, &targets)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn update_rollout(&self, r: RolloutRecord, targets: Vec<RolloutTarget>) -> Result<()> {
        self.write("update_rollout", move |c| {
            let tx = c.savepoint()?;
            let n = tx.execute(
                "UPDATE firmware_rollouts SET state = ?2, current_batch = ?3, reason = ?4, \
                 updated_at = ?5, max_failures = ?6 WHERE id = ?1",
                params![
                    r.id.to_string(),
                    r.state,
                    r.current_batch,
                    r.reason,
                    r.updated_at.0,
                    r.max_failures
                ],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            put_targets(&tx, &targets)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn rollout(&self, id: RolloutId) -> Result<Option<(RolloutRecord, Vec<RolloutTarget>)>> {
        self.read("rollout", move |c| {
            let Some(r) = c
                .query_row(
                    &format!("SELECT {ROLLOUT_COLS} FROM firmware_rollouts WHERE id = ?1"),
                    [id.to_string()],
                    rollout_at,
                )
                .optional()?
            else {
                return Ok(None);
            };
            let targets = targets_of(c, id)?;
            Ok(Some((r, targets)))
        })
        .await
    }

    async fn rollouts(&self) -> Result<Vec<RolloutRecord>> {
        self.read("rollouts", move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {ROLLOUT_COLS} FROM firmware_rollouts ORDER BY id DESC"
            ))?;
            let rows = stmt.query_map([], rollout_at)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn open_rollouts(&self) -> Result<Vec<(RolloutRecord, Vec<RolloutTarget>)>> {
        self.read("open_rollouts", move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {ROLLOUT_COLS} FROM firmware_rollouts \
                 WHERE state IN ('running', 'halted') ORDER BY id"
            ))?;
            let rows = stmt
                .query_map([], rollout_at)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let targets = targets_of(c, r.id)?;
                out.push((r, targets));
            }
            Ok(out)
        })
        .await
    }
}

const ROLLOUT_COLS: &str = "id, version, group_name, state, batch_size, max_failures, \
     step_timeout_ms, current_batch, reason, created_by, created_at, updated_at";

fn rollout_at(row: &Row<'_>) -> rusqlite::Result<RolloutRecord> {
    Ok(RolloutRecord {
        id: parse_id(row.get(0)?)?,
        version: row.get(1)?,
        group: row.get(2)?,
        state: row.get(3)?,
        batch_size: row.get(4)?,
        max_failures: row.get(5)?,
        step_timeout_ms: row.get(6)?,
        current_batch: row.get(7)?,
        reason: row.get(8)?,
        created_by: parse_id(row.get(9)?)?,
        created_at: UnixMillis(row.get(10)?),
        updated_at: UnixMillis(row.get(11)?),
    })
}

fn put_targets(tx: &rusqlite::Savepoint<'_>, targets: &[RolloutTarget]) -> Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR REPLACE INTO firmware_rollout_devices (rollout_id, device_id, name, batch, \
         state, reason, since) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for t in targets {
        stmt.execute(params![
            t.rollout_id.to_string(),
            t.device_id.to_string(),
            t.name,
            t.batch,
            t.state,
            t.reason,
            t.since.0
        ])?;
    }
    Ok(())
}

fn targets_of(c: &rusqlite::Connection, id: RolloutId) -> Result<Vec<RolloutTarget>> {
    let mut stmt = c.prepare_cached(
        "SELECT rollout_id, device_id, name, batch, state, reason, since \
         FROM firmware_rollout_devices WHERE rollout_id = ?1 ORDER BY batch, name",
    )?;
    let rows = stmt.query_map([id.to_string()], |row| {
        Ok(RolloutTarget {
            rollout_id: parse_id(row.get(0)?)?,
            device_id: parse_id(row.get(1)?)?,
            name: row.get(2)?,
            batch: row.get(3)?,
            state: row.get(4)?,
            reason: row.get(5)?,
            since: UnixMillis(row.get(6)?),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

const FIRMWARE_COLS: &str =
    "version, size, sha256, blob, signature, public_key, created_by, created_at";

fn firmware_at(row: &Row<'_>) -> rusqlite::Result<FirmwareRecord> {
    let blob: Vec<u8> = row.get(3)?;
    Ok(FirmwareRecord {
        version: row.get(0)?,
        size: row.get::<_, i64>(1)? as u64,
        sha256: row.get(2)?,
        blob: blob.try_into().map_err(|_| {
            rusqlite::Error::FromSqlConversionFailure(
                3,
                rusqlite::types::Type::Blob,
                "a blob id is 32 bytes".into(),
            )
        })?,
        signature: row.get(4)?,
        public_key: row.get(5)?,
        created_by: parse_id(row.get(6)?)?,
        created_at: UnixMillis(row.get(7)?),
    })
}
