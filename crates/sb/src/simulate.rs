//! `sb device simulate`: simulated devices against a real server, for demos and load.
//!
//! Each registers (or takes a fresh secret if it exists), connects over MQTT 5, and then acts
//! as the topic conventions say a device does: telemetry (`temperature`, `humidity`,
//! `battery`) and a health report every interval, answers to commands (`echo` returns its
//! payload, `reboot` succeeds, anything else is a 404), and every twin delta applied and
//! reported.
//!
//! Firmware: when desired `firmware` names a version it does not run, a device reports
//! `downloading` on `devices/<id>/firmware/status`, downloads the image with its own
//! credentials (resuming with Range after a broken transfer), reports `downloaded`, checks the
//! SHA-256 and the operator's Ed25519 signature (`failed` with the reason if either does not
//! hold), then `verified`, `updating` and `updated`, and reports the firmware in its twin.

use crate::client_cmds::logged_in;
use anyhow::{Context, bail};
use bytes::BytesMut;
use sb_mqtt::codec::{
    self, Ack, Connect, Packet, Properties, Publish, QoS, SubOptions, Subscribe, Version,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Default)]
struct Stats {
    connected: AtomicU64,
    telemetry: AtomicU64,
    commands: AtomicU64,
    twin_updates: AtomicU64,
    firmware_updated: AtomicU64,
    firmware_failed: AtomicU64,
}

/// What the simulated devices trust for firmware.
#[derive(Clone, Default)]
pub struct FirmwareTrust {
    /// The operator key (hex) signatures must verify with; `None`: the announced one.
    pub key: Option<String>,
    /// Damage each image after download (a demo of the signature check).
    pub corrupt: bool,
}

/// One simulated device: what it needs to act, shared across its reconnects.
struct Device {
    id: String,
    secret: String,
    n: usize,
    client: sb_client::Client,
    trust: FirmwareTrust,
    /// The firmware version it runs, and the one it is updating to.
    firmware: std::sync::Mutex<(Option<String>, Option<String>)>,
}

pub async fn simulate(
    count: usize,
    prefix: String,
    group: String,
    interval: Duration,
    mqtt: Option<String>,
    trust: FirmwareTrust,
) -> anyhow::Result<()> {
    let (_, client) = logged_in()?;
    if trust.key.is_none() {
        eprintln!(
            "  the devices trust the firmware key the server announces; --firmware-key pins the operator's"
        );
    }
    let addr = match mqtt {
        Some(a) => a,
        None => format!(
            "{}:1883",
            client
                .base_url()
                .host_str()
                .context("the server URL has no host")?
        ),
    };
    let stats = Arc::new(Stats::default());
    let mut tasks = Vec::new();
    for i in 1..=count {
        let name = format!("{prefix}-{i:04}");
        // Registered now, or a fresh secret for one registered before.
        let secret = match client
            .device_register(&sb_proto::DeviceRegister {
                name: name.clone(),
                group: group.clone(),
                tags: [("simulated".to_string(), "true".to_string())].into(),
            })
            .await
        {
            Ok(s) => s,
            Err(e) if e.status() == Some(409) => client.device_rotate(&name).await?,
            Err(e) => return Err(e).with_context(|| format!("registering {name}")),
        };
        let (addr, stats) = (addr.clone(), stats.clone());
        let device = Arc::new(Device {
            id: secret.id.clone(),
            secret: secret.secret.clone(),
            n: i,
            client: client.clone(),
            trust: trust.clone(),
            firmware: std::sync::Mutex::new((None, None)),
        });
        tasks.push(tokio::spawn(async move {
            // A device that loses its connection comes back after a pause.
            loop {
                if let Err(e) = run_device(&addr, &device, interval, &stats).await {
                    eprintln!("  {}: {e:#}; reconnecting in 2 s", secret.name);
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }));
    }
    eprintln!("  {count} simulated devices on mqtt://{addr}; Ctrl-C stops");
    let mut report = tokio::time::interval(Duration::from_secs(5));
    report.tick().await;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = report.tick() => eprintln!(
                "  connected {}, telemetry {}, commands {}, twin updates {}, firmware updated {} failed {}",
                stats.connected.load(Ordering::Relaxed),
                stats.telemetry.load(Ordering::Relaxed),
                stats.commands.load(Ordering::Relaxed),
                stats.twin_updates.load(Ordering::Relaxed),
                stats.firmware_updated.load(Ordering::Relaxed),
                stats.firmware_failed.load(Ordering::Relaxed),
            ),
        }
    }
    for t in tasks {
        t.abort();
    }
    Ok(())
}

fn publish(topic: String, payload: String, pkid: &mut u16) -> Packet {
    *pkid = pkid.wrapping_add(1).max(1);
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic,
        pkid: *pkid,
        payload: payload.into_bytes().into(),
        properties: Properties::default(),
    })
}

async fn run_device(
    addr: &str,
    device: &Arc<Device>,
    interval: Duration,
    stats: &Arc<Stats>,
) -> anyhow::Result<()> {
    let (id, secret, n) = (device.id.as_str(), device.secret.as_str(), device.n);
    let mut s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr} (is the server started with --mqtt?)"))?;
    let v = Version::V5;
    let mut out = BytesMut::new();
    codec::encode(
        &Packet::Connect(Box::new(Connect {
            version: v,
            clean_start: true,
            keep_alive: 60,
            client_id: format!("sim-{id}"),
            will: None,
            username: Some(id.to_string()),
            password: Some(secret.as_bytes().to_vec().into()),
            properties: Properties::default(),
        })),
        v,
        &mut out,
    );
    codec::encode(
        &Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![
                (
                    format!("devices/{id}/commands/#"),
                    SubOptions::qos(QoS::AtLeastOnce),
                ),
                (
                    format!("devices/{id}/twin/delta"),
                    SubOptions::qos(QoS::AtLeastOnce),
                ),
                // Retained: what is desired of it, on every connect.
                (
                    format!("devices/{id}/twin/desired"),
                    SubOptions::qos(QoS::AtLeastOnce),
                ),
            ],
            properties: Properties::default(),
        }),
        v,
        &mut out,
    );
    s.write_all(&out).await?;
    let mut buf = BytesMut::new();
    let mut pkid: u16 = 1;
    let mut tick = tokio::time::interval(interval);
    let mut temperature = 18.0 + (n % 7) as f64;
    let mut battery = 1.0f64;
    let mut connected = false;
    // Firmware updates run beside the connection and publish through it; dropped with it.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let mut updates = tokio::task::JoinSet::new();
    let result = loop {
        let mut out = BytesMut::new();
        tokio::select! {
            Some((topic, body)) = rx.recv() => {
                codec::encode(&publish(topic, body, &mut pkid), v, &mut out);
            }
            Some(_) = updates.join_next(), if !updates.is_empty() => {}
            _ = tick.tick(), if connected => {
                // A gentle random walk.
                let r = (rand::random::<f64>() - 0.5) * 0.4;
                temperature += r;
                battery = (battery - 0.0005).max(0.0);
                let body = format!(
                    r#"{{"temperature":{temperature:.2},"humidity":{:.1},"battery":{battery:.3}}}"#,
                    45.0 + r * 10.0
                );
                codec::encode(&publish(format!("devices/{id}/telemetry"), body, &mut pkid), v, &mut out);
                codec::encode(
                    &publish(format!("devices/{id}/health"), format!(r#"{{"battery":{battery:.3}}}"#), &mut pkid),
                    v,
                    &mut out,
                );
                stats.telemetry.fetch_add(1, Ordering::Relaxed);
            }
            r = s.read_buf(&mut buf) => {
                if r? == 0 {
                    break Ok(());
                }
                while let Some(p) = codec::decode(&mut buf, Some(v), 1 << 20)? {
                    match p {
                        Packet::ConnAck(a) if a.code != 0 => bail!("refused (reason {:#x})", a.code),
                        Packet::ConnAck(_) => {
                            connected = true;
                            stats.connected.fetch_add(1, Ordering::Relaxed);
                        }
                        Packet::Publish(p) => {
                            if p.qos == QoS::AtLeastOnce {
                                codec::encode(&Packet::PubAck(Ack::new(p.pkid, 0)), v, &mut out);
                            }
                            if let Some(firmware) = on_message(id, &p, &mut pkid, &mut out, stats) {
                                let mut state = device.firmware.lock().unwrap_or_else(|e| e.into_inner());
                                let version = firmware["version"].as_str().map(str::to_string);
                                if version.is_some() && version != state.0 && version != state.1 {
                                    state.1 = version;
                                    updates.spawn(update_firmware(device.clone(), firmware, tx.clone(), stats.clone()));
                                }
                            }
                        }
                        Packet::Disconnect(d) => bail!("disconnected by the server (reason {:#x})", d.code),
                        _ => {}
                    }
                }
            }
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
        }
    };
    if connected {
        stats.connected.fetch_sub(1, Ordering::Relaxed);
    }
    result
}

/// Answers a message; returns the desired `firmware` if one came with it.
fn on_message(
    id: &str,
    p: &Publish,
    pkid: &mut u16,
    out: &mut BytesMut,
    stats: &Stats,
) -> Option<serde_json::Value> {
    let v = Version::V5;
    for (suffix, field) in [("/twin/delta", "delta"), ("/twin/desired", "desired")] {
        if !p.topic.ends_with(suffix) {
            continue;
        }
        let mut doc = serde_json::from_slice::<serde_json::Value>(&p.payload)
            .ok()
            .map(|d| d[field].clone())
            .filter(|d| d.is_object())
            .unwrap_or_else(|| serde_json::json!({}));
        // Settings are applied at once; firmware is reported once installed.
        let firmware = doc.as_object_mut().and_then(|m| m.remove("firmware"));
        if doc.as_object().is_some_and(|m| !m.is_empty()) {
            codec::encode(
                &publish(format!("devices/{id}/twin/reported"), doc.to_string(), pkid),
                v,
                out,
            );
            stats.twin_updates.fetch_add(1, Ordering::Relaxed);
        }
        return firmware.filter(|f| f.is_object());
    }
    // devices/<id>/commands/<method>/<command id>
    let mut parts = p.topic.split('/').skip(3);
    let (Some(method), Some(command)) = (parts.next(), parts.next()) else {
        return None;
    };
    let payload = String::from_utf8_lossy(&p.payload);
    let answer = match method {
        "echo" => format!(r#"{{"status":200,"result":{payload}}}"#),
        "reboot" => r#"{"status":200,"result":{"rebooted":true}}"#.to_string(),
        other => format!(r#"{{"status":404,"result":"no method {other}"}}"#),
    };
    let topic = p
        .properties
        .response_topic
        .clone()
        .unwrap_or_else(|| format!("devices/{id}/responses/{command}"));
    codec::encode(&publish(topic, answer, pkid), v, out);
    stats.commands.fetch_add(1, Ordering::Relaxed);
    None
}

/// Downloads, checks and "installs" the firmware a rollout announced, reporting each step.
async fn update_firmware(
    device: Arc<Device>,
    firmware: serde_json::Value,
    publish: tokio::sync::mpsc::UnboundedSender<(String, String)>,
    stats: Arc<Stats>,
) {
    let id = &device.id;
    let version = firmware["version"].as_str().unwrap_or("").to_string();
    let report = |state: &str, reason: Option<String>| {
        let mut body = serde_json::json!({"version": version, "state": state});
        if let Some(r) = reason {
            body["reason"] = r.into();
        }
        let _ = publish.send((format!("devices/{id}/firmware/status"), body.to_string()));
    };
    let outcome = async {
        report("downloading", None);
        let url = firmware["url"]
            .as_str()
            .ok_or("the announcement has no url")?;
        let mut image = device
            .client
            .firmware_download_as_device(url, id, &device.secret, 5)
            .await
            .map_err(|e| format!("download: {e}"))?;
        let middle = image.len() / 2;
        if device.trust.corrupt
            && let Some(b) = image.get_mut(middle)
        {
            *b ^= 0x10;
        }
        report("downloaded", None);
        let key = device
            .trust
            .key
            .clone()
            .or_else(|| firmware["public_key"].as_str().map(str::to_string))
            .ok_or("no key to check the signature with")?;
        let signature = firmware["signature"].as_str().unwrap_or("");
        sb_devices::firmware::verify(&image, signature, &key)
            .map_err(|e| format!("the image is refused: {e}"))?;
        if firmware["sha256"].as_str() != Some(sb_devices::firmware::sha256_hex(&image).as_str()) {
            return Err("the image's SHA-256 is not the announced one".to_string());
        }
        report("verified", None);
        report("updating", None);
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok::<(), String>(())
    }
    .await;
    let mut state = device.firmware.lock().unwrap_or_else(|e| e.into_inner());
    state.1 = None;
    match outcome {
        Ok(()) => {
            state.0 = Some(version.clone());
            report("updated", None);
            let _ = publish.send((
                format!("devices/{id}/twin/reported"),
                serde_json::json!({"firmware": firmware}).to_string(),
            ));
            stats.firmware_updated.fetch_add(1, Ordering::Relaxed);
        }
        Err(reason) => {
            report("failed", Some(reason));
            stats.firmware_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}
