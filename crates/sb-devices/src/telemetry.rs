//! Telemetry: what a device publishes to `devices/<id>/telemetry`, as samples.
//!
//! A JSON object's numeric (and boolean) fields become one series each, named after the field
//! (nested objects join their keys with `_`); `ts` or `timestamp` (Unix milliseconds), if
//! present, stamps them. Anything else is read as InfluxDB line protocol (millisecond
//! timestamps), one series per field as on `/api/v2/write`. Every series is labelled with the
//! device: `device_id`, `device` (its name), `group`, and its tags.

use sb_monitor::line_protocol::{self, Precision, sanitize};
use sb_store::devices::DeviceRecord;
use sb_tsdb::{Labels, METRIC_NAME, Point};

/// Decodes one telemetry payload; at most `fields_max` samples.
pub fn decode(
    payload: &[u8],
    device: &DeviceRecord,
    now_ms: i64,
    fields_max: usize,
) -> Result<Vec<(Labels, Point)>, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "telemetry is not UTF-8".to_string())?;
    let trimmed = text.trim_start();
    let raw: Vec<(Vec<(String, String)>, Point)> = if trimmed.starts_with('{') {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("telemetry JSON: {e}"))?;
        let serde_json::Value::Object(map) = &value else {
            return Err("telemetry JSON must be an object".into());
        };
        let t = ["ts", "timestamp"]
            .iter()
            .find_map(|k| map.get(*k).and_then(serde_json::Value::as_i64))
            .unwrap_or(now_ms);
        let mut out = Vec::new();
        flatten("", &value, t, &mut out, fields_max)?;
        out
    } else {
        line_protocol::parse(text, Precision::Milliseconds, now_ms)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(labels, p)| {
                let pairs = labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                (pairs, p)
            })
            .collect()
    };
    if raw.len() > fields_max {
        return Err(format!(
            "{} fields in one message; at most {fields_max} (mqtt.telemetry_fields_max)",
            raw.len()
        ));
    }
    Ok(raw
        .into_iter()
        .map(|(mut pairs, p)| {
            // The device's identity wins over anything the payload says.
            pairs.retain(|(k, _)| !matches!(k.as_str(), "device_id" | "device" | "group"));
            for (k, v) in &device.tags {
                let k = sanitize(k, false);
                pairs.retain(|(existing, _)| *existing != k);
                pairs.push((k, v.clone()));
            }
            pairs.push(("device_id".into(), device.id.to_string()));
            pairs.push(("device".into(), device.name.clone()));
            pairs.push(("group".into(), device.group.clone()));
            (Labels::new(pairs), p)
        })
        .collect())
}

fn flatten(
    prefix: &str,
    v: &serde_json::Value,
    t: i64,
    out: &mut Vec<(Vec<(String, String)>, Point)>,
    max: usize,
) -> Result<(), String> {
    let serde_json::Value::Object(map) = v else {
        return Ok(());
    };
    for (k, v) in map {
        if prefix.is_empty() && matches!(k.as_str(), "ts" | "timestamp") {
            continue;
        }
        let name = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}_{k}")
        };
        let value = match v {
            serde_json::Value::Number(n) => n.as_f64(),
            serde_json::Value::Bool(b) => Some(f64::from(u8::from(*b))),
            serde_json::Value::Object(_) => {
                flatten(&name, v, t, out, max)?;
                None
            }
            _ => None,
        };
        if let Some(x) = value {
            if out.len() >= max {
                return Err(format!(
                    "more than {max} fields in one message (mqtt.telemetry_fields_max)"
                ));
            }
            out.push((
                vec![(METRIC_NAME.to_string(), sanitize(&name, true))],
                (t, x),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sb_core::{DeviceId, UnixMillis, UserId};

    fn dev() -> DeviceRecord {
        DeviceRecord {
            id: DeviceId::new_at(UnixMillis(1)),
            name: "t1".into(),
            group: "sensors".into(),
            tags: vec![("floor".into(), "2".into())],
            secret_hash: [0; 32],
            owner: UserId::new_at(UnixMillis(1)),
            created_at: UnixMillis(1),
            revoked_at: None,
            last_seen_at: None,
            health: None,
            health_at: None,
        }
    }

    #[test]
    fn json_and_line_protocol_become_labelled_series() {
        let d = dev();
        let got = decode(
            br#"{"temperature": 21.5, "ok": true, "power": {"v": 3.3}, "note": "x", "ts": 5000}"#,
            &d,
            9,
            16,
        )
        .unwrap();
        let names: Vec<String> = got
            .iter()
            .map(|(l, _)| l.get(METRIC_NAME).unwrap().to_string())
            .collect();
        assert_eq!(names, vec!["ok", "power_v", "temperature"]);
        let (labels, point) = &got[2];
        assert_eq!(*point, (5000, 21.5));
        assert_eq!(labels.get("device_id"), Some(d.id.to_string().as_str()));
        assert_eq!(labels.get("group"), Some("sensors"));
        assert_eq!(labels.get("floor"), Some("2"));
        let got = decode(b"env,room=a temp=22.5 7000", &d, 9, 16).unwrap();
        assert_eq!(got[0].0.get(METRIC_NAME), Some("env_temp"));
        assert_eq!(got[0].0.get("room"), Some("a"));
        assert_eq!(got[0].1, (7000, 22.5));
        assert!(decode(br#"{"a":1,"b":2,"c":3}"#, &d, 9, 2).is_err());
        assert!(decode(b"[1,2]", &d, 9, 2).is_err());
        assert!(decode(&[0xff, 0xfe], &d, 9, 2).is_err());
    }
}
