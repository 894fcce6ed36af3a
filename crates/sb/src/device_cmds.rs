//! `sb device …`: the device registry.

use crate::client_cmds::{fmt_time, logged_in, output};
use anyhow::Context;

pub async fn device(cmd: crate::cli::DeviceCmd, json: bool) -> anyhow::Result<()> {
    use crate::cli::DeviceCmd;
    if let DeviceCmd::Simulate {
        count,
        prefix,
        group,
        interval,
        mqtt,
    } = cmd
    {
        let every = crate::client_cmds::parse_duration(&interval).context("--interval, e.g. 5s")?;
        return crate::simulate::simulate(count, prefix, group, every, mqtt).await;
    }
    let (_, client) = logged_in()?;
    let show_secret = |s: &sb_proto::DeviceSecret, json: bool| {
        output(json, s, || {
            println!("device {} ({})", s.name, s.id);
            println!("  MQTT user name: {}", s.id);
            println!("  MQTT password:  {}", s.secret);
            eprintln!("  the secret is shown only now; keep it on the device");
        })
    };
    match cmd {
        DeviceCmd::Register { name, group, tags } => {
            let mut map = std::collections::BTreeMap::new();
            for t in tags {
                let (k, v) = t
                    .split_once('=')
                    .with_context(|| format!("--tag {t}: use key=value"))?;
                map.insert(k.to_string(), v.to_string());
            }
            let s = client
                .device_register(&sb_proto::DeviceRegister {
                    name,
                    group,
                    tags: map,
                })
                .await?;
            show_secret(&s, json)
        }
        DeviceCmd::List => {
            let list = client.devices().await?;
            output(json, &list, || {
                if list.is_empty() {
                    println!("(no devices; `sb device register NAME` adds one)");
                }
                for d in &list {
                    let state = if d.revoked {
                        "REVOKED".to_string()
                    } else if d.online {
                        format!("online, {}", d.health)
                    } else {
                        format!(
                            "offline, {}",
                            d.last_seen_at_ms
                                .map(|t| format!("seen {}", fmt_time(t)))
                                .unwrap_or_else(|| "never seen".into())
                        )
                    };
                    println!("{}  {:<20} {:<12} {state}", d.id, d.name, d.group);
                }
            })
        }
        DeviceCmd::Show { device } => {
            let d = client.device(&device).await?;
            output(json, &d, || {
                println!("{} ({})", d.name, d.id);
                println!("  group {:?}, owner {}", d.group, d.owner);
                for (k, v) in &d.tags {
                    println!("  {k}={v}");
                }
                if d.revoked {
                    println!("  REVOKED");
                }
            })
        }
        DeviceCmd::Rotate { device } => {
            let s = client.device_rotate(&device).await?;
            show_secret(&s, json)
        }
        DeviceCmd::Call {
            device,
            method,
            payload,
            timeout,
            expires,
        } => {
            let payload: serde_json::Value =
                serde_json::from_str(&payload).context("--payload must be JSON")?;
            let secs = |s: &str| {
                crate::client_cmds::parse_duration(s)
                    .map(|d| d.as_secs())
                    .context("a duration like 30s or 10m")
            };
            let req = sb_proto::CommandCreate {
                method,
                payload,
                timeout_secs: Some(secs(&timeout)?),
                expires_in_secs: expires.as_deref().map(secs).transpose()?,
                wait: true,
            };
            let mut c = client.device_call(&device, &req).await?;
            while matches!(c.state.as_str(), "queued" | "sent") {
                eprintln!("  {} {}…", c.state, c.id);
                c = client.device_command(&device, &c.id, Some(25)).await?;
            }
            output(json, &c, || {
                println!(
                    "{} {}: {}{}",
                    c.method,
                    c.id,
                    c.state,
                    c.status
                        .map(|s| format!(" (status {s})"))
                        .unwrap_or_default()
                );
                if let Some(r) = &c.result {
                    println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
                }
            })?;
            match c.state.as_str() {
                "succeeded" => Ok(()),
                "timed_out" => anyhow::bail!(
                    "the device did not answer within {timeout}; is it subscribed to devices/<id>/commands/#?"
                ),
                "expired" => {
                    anyhow::bail!("the device did not come online before the command expired")
                }
                other => anyhow::bail!("the command {other}"),
            }
        }
        DeviceCmd::Twin { device } => {
            let t = client.device_twin(&device).await?;
            output(json, &t, || print_twin(&t))
        }
        DeviceCmd::Configure {
            device,
            settings,
            version,
        } => {
            let mut desired = serde_json::Map::new();
            for kv in settings {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("{kv}: use key=value"))?;
                let v = serde_json::from_str(v)
                    .unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
                desired.insert(k.to_string(), v);
            }
            let t = client
                .device_configure(&device, &sb_proto::TwinPatch { desired, version })
                .await?;
            output(json, &t, || print_twin(&t))
        }
        DeviceCmd::Simulate { .. } => unreachable!("handled above"),
        DeviceCmd::Revoke { device } => {
            let d = client.device_revoke(&device).await?;
            output(json, &d, || {
                println!("{} revoked: disconnected, and refused from now on", d.name)
            })
        }
    }
}

fn print_twin(t: &sb_proto::TwinInfo) {
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    println!(
        "desired (version {}):\n{}",
        t.desired_version,
        pretty(&t.desired)
    );
    println!(
        "reported (version {}):\n{}",
        t.reported_version,
        pretty(&t.reported)
    );
    if t.delta.as_object().is_some_and(|d| !d.is_empty()) {
        println!("not applied yet:\n{}", pretty(&t.delta));
    }
}
