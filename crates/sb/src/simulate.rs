//! `sb device simulate`: simulated devices against a real server, for demos and load.
//!
//! Each registers (or takes a fresh secret if it exists), connects over MQTT 5, and then acts
//! as the topic conventions say a device does: telemetry (`temperature`, `humidity`,
//! `battery`) and a health report every interval, answers to commands (`echo` returns its
//! payload, `reboot` succeeds, anything else is a 404), and every twin delta applied and
//! reported.

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
}

pub async fn simulate(
    count: usize,
    prefix: String,
    group: String,
    interval: Duration,
    mqtt: Option<String>,
) -> anyhow::Result<()> {
    let (_, client) = logged_in()?;
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
        tasks.push(tokio::spawn(async move {
            // A device that loses its connection comes back after a pause.
            loop {
                if let Err(e) =
                    run_device(&addr, &secret.id, &secret.secret, i, interval, &stats).await
                {
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
                "  connected {}, telemetry {}, commands {}, twin updates {}",
                stats.connected.load(Ordering::Relaxed),
                stats.telemetry.load(Ordering::Relaxed),
                stats.commands.load(Ordering::Relaxed),
                stats.twin_updates.load(Ordering::Relaxed),
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
    id: &str,
    secret: &str,
    n: usize,
    interval: Duration,
    stats: &Stats,
) -> anyhow::Result<()> {
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
    let result = loop {
        let mut out = BytesMut::new();
        tokio::select! {
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
                            on_message(id, &p, &mut pkid, &mut out, stats);
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

fn on_message(id: &str, p: &Publish, pkid: &mut u16, out: &mut BytesMut, stats: &Stats) {
    let v = Version::V5;
    if p.topic.ends_with("/twin/delta") {
        let delta = serde_json::from_slice::<serde_json::Value>(&p.payload)
            .ok()
            .map(|d| d["delta"].to_string())
            .unwrap_or_else(|| "{}".into());
        codec::encode(
            &publish(format!("devices/{id}/twin/reported"), delta, pkid),
            v,
            out,
        );
        stats.twin_updates.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // devices/<id>/commands/<method>/<command id>
    let mut parts = p.topic.split('/').skip(3);
    let (Some(method), Some(command)) = (parts.next(), parts.next()) else {
        return;
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
}
