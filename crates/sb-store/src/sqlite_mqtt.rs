//! [`MqttStore`] on the SQLite backend.

use crate::mqtt::*;
use crate::{Result, SqliteStore};
use async_trait::async_trait;
use rusqlite::{Row, params};

const MSG_COLS: &str = "client_id, seq, pkid, released, topic, payload, qos, retain, properties, expires_at, from_client";

fn message_at(row: &Row<'_>) -> rusqlite::Result<MessageRow> {
    Ok(MessageRow {
        client_id: row.get(0)?,
        seq: row.get::<_, i64>(1)? as u64,
        pkid: row.get::<_, i64>(2)? as u16,
        released: row.get(3)?,
        topic: row.get(4)?,
        payload: row.get(5)?,
        qos: row.get::<_, i64>(6)? as u8,
        retain: row.get(7)?,
        properties: row.get(8)?,
        expires_at_ms: row.get(9)?,
        from_client: row.get(10)?,
    })
}

fn insert(c: &rusqlite::Connection, table: &str, m: &MessageRow) -> rusqlite::Result<()> {
    c.execute(
        &format!("INSERT OR REPLACE INTO {table} ({MSG_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
        params![
            m.client_id,
            m.seq as i64,
            i64::from(m.pkid),
            m.released,
            m.topic,
            m.payload,
            i64::from(m.qos),
            m.retain,
            m.properties,
            m.expires_at_ms,
            m.from_client
        ],
    )?;
    Ok(())
}

#[async_trait]
impl MqttStore for SqliteStore {
    async fn save_session(&self, s: SessionRow) -> Result<()> {
        self.write("mqtt_save_session", move |c| {
            let subs = serde_json::to_string(&s.subs).unwrap_or_else(|_| "[]".into());
            c.execute(
                "INSERT OR REPLACE INTO mqtt_sessions (client_id, version, expiry_secs, subs) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    s.client_id,
                    i64::from(s.version),
                    i64::from(s.expiry_secs),
                    subs
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn delete_session(&self, client_id: &str) -> Result<()> {
        let id = client_id.to_string();
        self.write("mqtt_delete_session", move |c| {
            c.execute("DELETE FROM mqtt_messages WHERE client_id = ?1", [&id])?;
            c.execute("DELETE FROM mqtt_incoming WHERE client_id = ?1", [&id])?;
            c.execute("DELETE FROM mqtt_sessions WHERE client_id = ?1", [&id])?;
            Ok(())
        })
        .await
    }

    async fn append_messages(
        &self,
        rows: Vec<MessageRow>,
        incoming: Option<(String, u16)>,
    ) -> Result<()> {
        self.write("mqtt_append", move |c| {
            let tx = c.savepoint()?;
            for m in &rows {
                insert(&tx, "mqtt_messages", m)?;
            }
            if let Some((client, pkid)) = incoming {
                tx.execute(
                    "INSERT OR IGNORE INTO mqtt_incoming (client_id, pkid) VALUES (?1, ?2)",
                    params![client, i64::from(pkid)],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn release_incoming(&self, client_id: &str, pkid: u16) -> Result<()> {
        let id = client_id.to_string();
        self.write("mqtt_release_incoming", move |c| {
            c.execute(
                "DELETE FROM mqtt_incoming WHERE client_id = ?1 AND pkid = ?2",
                params![id, i64::from(pkid)],
            )?;
            Ok(())
        })
        .await
    }

    async fn mark_message(
        &self,
        client_id: &str,
        seq: u64,
        pkid: u16,
        released: bool,
    ) -> Result<()> {
        let id = client_id.to_string();
        self.write("mqtt_mark", move |c| {
            c.execute(
                "UPDATE mqtt_messages SET pkid = ?3, released = ?4 WHERE client_id = ?1 AND seq = ?2",
                params![id, seq as i64, i64::from(pkid), released],
            )?;
            Ok(())
        })
        .await
    }

    async fn remove_message(&self, client_id: &str, seq: u64) -> Result<()> {
        let id = client_id.to_string();
        self.write("mqtt_remove", move |c| {
            c.execute(
                "DELETE FROM mqtt_messages WHERE client_id = ?1 AND seq = ?2",
                params![id, seq as i64],
            )?;
            Ok(())
        })
        .await
    }

    async fn set_retained(&self, topic: &str, row: Option<MessageRow>) -> Result<()> {
        let topic = topic.to_string();
        self.write("mqtt_retain", move |c| {
            match row {
                Some(m) => insert(c, "mqtt_retained", &m)?,
                None => {
                    c.execute("DELETE FROM mqtt_retained WHERE topic = ?1", [&topic])?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn load_mqtt(&self) -> Result<(Vec<SessionRow>, Vec<MessageRow>, Vec<MessageRow>)> {
        self.read("mqtt_load", |c| {
            let mut stmt =
                c.prepare("SELECT client_id, version, expiry_secs, subs FROM mqtt_sessions")?;
            let sessions = stmt
                .query_map([], |r| {
                    let subs: String = r.get(3)?;
                    Ok(SessionRow {
                        client_id: r.get(0)?,
                        version: r.get::<_, i64>(1)? as u8,
                        expiry_secs: r.get::<_, i64>(2)? as u32,
                        subs: serde_json::from_str(&subs).map_err(|e| {
                            rusqlite::Error::FromSqlConversionFailure(
                                3,
                                rusqlite::types::Type::Text,
                                e.into(),
                            )
                        })?,
                        incoming: Vec::new(),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut sessions = sessions;
            let mut stmt = c.prepare("SELECT client_id, pkid FROM mqtt_incoming")?;
            let incoming = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for (client, pkid) in incoming {
                if let Some(s) = sessions.iter_mut().find(|s| s.client_id == client) {
                    s.incoming.push(pkid as u16);
                }
            }
            let mut stmt = c.prepare(&format!(
                "SELECT {MSG_COLS} FROM mqtt_messages ORDER BY client_id, seq"
            ))?;
            let messages = stmt
                .query_map([], message_at)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut stmt = c.prepare(&format!("SELECT {MSG_COLS} FROM mqtt_retained"))?;
            let retained = stmt
                .query_map([], message_at)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((sessions, messages, retained))
        })
        .await
    }
}
