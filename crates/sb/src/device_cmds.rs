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
        firmware_key,
        corrupt_firmware,
    } = cmd
    {
        let every = crate::client_cmds::parse_duration(&interval).context("--interval, e.g. 5s")?;
        let firmware = crate::simulate::FirmwareTrust {
            key: firmware_key,
            corrupt: corrupt_firmware,
        };
        return crate::simulate::simulate(count, prefix, group, every, mqtt, firmware).await;
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
                    let firmware = d.firmware.as_deref().unwrap_or("-");
                    println!(
                        "{}  {:<20} {:<12} {firmware:<10} {state}",
                        d.id, d.name, d.group
                    );
                }
            })
        }
        DeviceCmd::Show { device } => {
            let d = client.device(&device).await?;
            output(json, &d, || {
                println!("{} ({})", d.name, d.id);
                println!("  group {:?}, owner {}", d.group, d.owner);
                if let Some(f) = &d.firmware {
                    println!("  firmware {f}");
                }
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
        DeviceCmd::Cert { device, out } => {
            let c = client.device_certificate(&device).await?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let cert = out.join(format!("{}.crt", c.name));
            let key = out.join(format!("{}.key", c.name));
            let ca = out.join("device-ca.crt");
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&key)
                    .with_context(|| format!("creating {}", key.display()))?;
                f.write_all(c.private_key_pem.as_bytes())?;
            }
            std::fs::write(&cert, &c.certificate_pem)?;
            std::fs::write(&ca, &c.ca_pem)?;
            output(json, &c, || {
                println!("{}: certificate {}", c.name, cert.display());
                println!(
                    "{}: private key {} (keep it on the device only)",
                    c.name,
                    key.display()
                );
                println!("device CA: {}", ca.display());
                eprintln!(
                    "  connect to a TLS listener with them and no password, e.g. mosquitto_pub --cert {} --key {} --cafile SERVER_CERT …",
                    cert.display(),
                    key.display()
                );
            })
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

/// Shows a rollout's progress until it is no longer running; an error if it halted.
async fn follow(
    client: &sb_client::Client,
    r: &sb_proto::RolloutInfo,
    json: bool,
) -> anyhow::Result<()> {
    eprintln!(
        "  rollout {} of {}: {} devices, {} batches of {}, at most {} failures",
        r.id, r.version, r.devices_total, r.batches, r.batch_size, r.max_failures
    );
    let mut last = String::new();
    let r = loop {
        let r = client.rollout(&r.id).await?;
        let line = format!(
            "  batch {}/{}: {} updated, {} failed, {} in progress, {} pending",
            r.current_batch, r.batches, r.updated, r.failed, r.in_progress, r.pending
        );
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        if r.state != "running" {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    output(json, &r, || print_rollout(&r))?;
    if r.state == "halted" {
        anyhow::bail!(
            "the rollout halted: {}; see `sb firmware rollouts {}` for each device, then \
             `sb firmware resume {} --max-failures N` or `sb firmware cancel {}`",
            r.reason.as_deref().unwrap_or(""),
            r.id,
            r.id,
            r.id
        );
    }
    Ok(())
}

fn print_rollout(r: &sb_proto::RolloutInfo) {
    println!(
        "rollout {} of {} over {}: {}{}",
        r.id,
        r.version,
        r.group,
        r.state,
        r.reason
            .as_deref()
            .map(|x| format!(" ({x})"))
            .unwrap_or_default()
    );
    println!(
        "  batch {}/{} of {}; {} updated, {} failed (at most {}), {} in progress, {} pending",
        r.current_batch,
        r.batches,
        r.batch_size,
        r.updated,
        r.failed,
        r.max_failures,
        r.in_progress,
        r.pending
    );
    for d in &r.devices {
        println!(
            "  {:>3}  {:<24} {:<12} {}",
            d.batch,
            d.name,
            d.state,
            d.reason.as_deref().unwrap_or("")
        );
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

fn default_key_path() -> anyhow::Result<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".config")))
        .context("set HOME or XDG_CONFIG_HOME")?;
    Ok(base.join("switchboard").join("firmware-signing.key"))
}

pub async fn firmware(cmd: crate::cli::FirmwareCmd, json: bool) -> anyhow::Result<()> {
    use crate::cli::FirmwareCmd;
    use std::io::Write;
    match cmd {
        FirmwareCmd::Keygen { out } => {
            let path = match out {
                Some(p) => p,
                None => default_key_path()?,
            };
            if path.exists() {
                anyhow::bail!(
                    "{} exists; devices trust its public key, so it is not replaced (move it away first)",
                    path.display()
                );
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let (seed, public) = sb_devices::firmware::keygen();
            let mut f = {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("creating {}", path.display()))?
            };
            writeln!(f, "{seed}")?;
            f.sync_all()?;
            #[derive(serde::Serialize)]
            struct Out<'a> {
                key_file: String,
                public_key: &'a str,
            }
            let out = Out {
                key_file: path.display().to_string(),
                public_key: &public,
            };
            output(json, &out, || {
                println!("signing key: {} (keep it safe and private)", path.display());
                println!("public key:  {public}");
                eprintln!(
                    "  give devices the public key; list it in mqtt.firmware_keys to accept only it"
                );
            })
        }
        FirmwareCmd::Upload { file, version, key } => {
            let (_, client) = logged_in()?;
            let key_path = match key {
                Some(k) => k,
                None => default_key_path()?,
            };
            let seed = std::fs::read_to_string(&key_path).with_context(|| {
                format!(
                    "reading the signing key {} (make one with `sb firmware keygen`)",
                    key_path.display()
                )
            })?;
            let image =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let signature =
                sb_devices::firmware::sign(seed.trim(), &image).map_err(anyhow::Error::msg)?;
            let public =
                sb_devices::firmware::public_key(seed.trim()).map_err(anyhow::Error::msg)?;
            eprintln!(
                "  signed {} ({} bytes); uploading…",
                file.display(),
                image.len()
            );
            let f = client
                .firmware_upload(&version, image, &signature, &public)
                .await?;
            output(json, &f, || {
                println!(
                    "firmware {} uploaded: {} bytes, sha256 {}",
                    f.version, f.size, f.sha256
                )
            })
        }
        FirmwareCmd::Rollout {
            version,
            group,
            batch,
            max_failures,
            step_timeout,
            wait,
        } => {
            let (_, client) = logged_in()?;
            let step_timeout_secs = step_timeout
                .map(|s| crate::client_cmds::parse_duration(&s).context("--step-timeout, e.g. 10m"))
                .transpose()?
                .map(|d| d.as_secs().max(1));
            let r = client
                .rollout_create(&sb_proto::RolloutCreate {
                    version,
                    group,
                    batch,
                    max_failures,
                    step_timeout_secs,
                })
                .await?;
            if !wait {
                return output(json, &r, || {
                    println!(
                        "rollout {} of {} started over {} devices of {}: {} batches of {}, at most {} failures",
                        r.id,
                        r.version,
                        r.devices_total,
                        r.group,
                        r.batches,
                        r.batch_size,
                        r.max_failures
                    );
                    eprintln!("  follow it with `sb firmware rollouts {}`", r.id);
                });
            }
            follow(&client, &r, json).await
        }
        FirmwareCmd::Resume {
            id,
            max_failures,
            wait,
        } => {
            let (_, client) = logged_in()?;
            let r = client.rollout_resume(&id, max_failures.as_deref()).await?;
            if wait {
                return follow(&client, &r, json).await;
            }
            output(json, &r, || print_rollout(&r))
        }
        FirmwareCmd::Rollouts { id: Some(id) } => {
            let (_, client) = logged_in()?;
            let r = client.rollout(&id).await?;
            output(json, &r, || print_rollout(&r))
        }
        FirmwareCmd::Rollouts { id: None } => {
            let (_, client) = logged_in()?;
            let list = client.rollouts().await?;
            output(json, &list, || {
                for r in &list {
                    println!(
                        "{}  {:<12} {:<12} {:<10} {}/{} updated, {} failed",
                        r.id, r.version, r.group, r.state, r.updated, r.devices_total, r.failed
                    );
                }
            })
        }
        FirmwareCmd::Cancel { id } => {
            let (_, client) = logged_in()?;
            let r = client.rollout_cancel(&id).await?;
            output(json, &r, || print_rollout(&r))
        }
        FirmwareCmd::List => {
            let (_, client) = logged_in()?;
            let list = client.firmwares().await?;
            output(json, &list, || {
                for f in &list {
                    println!(
                        "{:<16} {:>12} bytes  sha256 {}",
                        f.version, f.size, f.sha256
                    );
                }
            })
        }
    }
}
