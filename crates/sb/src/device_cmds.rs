//! `sb device …`: the device registry.

use crate::client_cmds::{fmt_time, logged_in, output};
use anyhow::Context;

pub async fn device(cmd: crate::cli::DeviceCmd, json: bool) -> anyhow::Result<()> {
    use crate::cli::DeviceCmd;
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
                    println!(
                        "{}  {:<20} {:<12} {}{}",
                        d.id,
                        d.name,
                        d.group,
                        d.last_seen_at_ms
                            .map(|t| format!("seen {}", fmt_time(t)))
                            .unwrap_or_else(|| "never seen".into()),
                        if d.revoked { "  REVOKED" } else { "" }
                    );
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
        DeviceCmd::Revoke { device } => {
            let d = client.device_revoke(&device).await?;
            output(json, &d, || {
                println!("{} revoked: disconnected, and refused from now on", d.name)
            })
        }
    }
}
