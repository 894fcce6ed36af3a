//! Runs the alerting rules on a timer and delivers their notifications: to the log, and to
//! each configured webhook in Alertmanager's payload format, with retries (at least once, with
//! the notification's dedup key as `Idempotency-Key` so receivers can drop repeats).

use crate::AppState;
use sb_monitor::alerts::Notification;
use std::sync::Arc;
use std::time::Duration;

/// Evaluation looks at least this often whether a group is due.
const TICK_MAX: Duration = Duration::from_secs(1);
/// Waits between tries of one delivery: this, doubling, up to [`RETRY_DELAY_MAX`].
const RETRY_DELAY: Duration = Duration::from_millis(500);
const RETRY_DELAY_MAX: Duration = Duration::from_secs(60);
/// One webhook call may take this long.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

fn http_client() -> anyhow::Result<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(WEBHOOK_TIMEOUT)
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

pub fn spawn(st: Arc<AppState>) -> anyhow::Result<()> {
    let client = http_client()?;
    let slots = Arc::new(tokio::sync::Semaphore::new(
        st.config.monitoring.alert_queue_max.max(1),
    ));
    tokio::spawn(async move {
        loop {
            let tick = st
                .monitor
                .shortest_rule_interval_ms()
                .map(|ms| Duration::from_millis(ms.max(1) as u64).min(TICK_MAX))
                .unwrap_or(TICK_MAX);
            tokio::select! {
                _ = st.shutdown.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
            let (notes, errors) = match st.monitor.evaluate_rules(crate::now().0).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(error = %e, "rule evaluation failed");
                    continue;
                }
            };
            for e in errors {
                tracing::warn!(rule_error = %e, "a rule could not be evaluated");
            }
            for n in notes {
                tracing::info!(
                    group = %n.group_key, status = n.status, alerts = n.alerts.len(),
                    dedup_key = %n.dedup_key, summary = %n.summary(), "alert notification"
                );
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(dedup_key = %n.dedup_key, "alert queue full (monitoring.alert_queue_max); notification dropped");
                    continue;
                };
                let (client, st) = (client.clone(), st.clone());
                tokio::spawn(async move {
                    deliver(&client, &st, &n).await;
                    drop(permit);
                });
            }
        }
    });
    Ok(())
}

/// Posts the notification in the configured chat room, as the token's owner. The dedup key is
/// the message id, so a retry after an unclear outcome stores nothing twice.
async fn post_to_chat(st: &AppState, n: &Notification) -> Result<(), String> {
    let m = &st.config.monitoring;
    let Some(token) = &m.alert_chat_token else {
        return Err("alert_chat_room is set but alert_chat_token is not".into());
    };
    let room: sb_core::RoomId = m
        .alert_chat_room
        .parse()
        .map_err(|_| format!("alert_chat_room {:?} is not a room id", m.alert_chat_room))?;
    let now = crate::now();
    let origin = sb_auth::Origin {
        ip: std::net::Ipv4Addr::LOCALHOST.into(),
        client: "switchboard alerting".into(),
    };
    let subject = st
        .auth
        .authenticate(token.expose(), origin.ip, now)
        .await
        .map_err(|e| e.to_string())?;
    let max = st.config.chat.message_size_bytes_max;
    let mut body = n.summary();
    if body.len() > max {
        let mut cut = max.saturating_sub(3);
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
        body.push_str("...");
    }
    let cx = sb_auth::Ctx {
        subject: &subject,
        origin: &origin,
        now,
    };
    st.chat
        .send(
            cx,
            room,
            sb_chat::Outgoing {
                message_id: &n.dedup_key,
                body: &body,
                reply_to: None,
                kind: Default::default(),
                target: None,
                attachments: &[],
            },
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn deliver(client: &reqwest::Client, st: &AppState, n: &Notification) {
    let attempts = st.config.monitoring.alert_delivery_attempts_max.max(1);
    if !st.config.monitoring.alert_chat_room.is_empty() {
        let mut delay = RETRY_DELAY;
        for attempt in 1..=attempts {
            match post_to_chat(st, n).await {
                Ok(()) => break,
                Err(e) if attempt == attempts => {
                    tracing::warn!(error = %e, dedup_key = %n.dedup_key, "could not post the notification in the chat room; giving up");
                }
                Err(_) => {
                    tokio::select! {
                        _ = st.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(RETRY_DELAY_MAX);
                }
            }
        }
    }
    for url in &st.config.monitoring.alert_webhooks {
        let mut delay = RETRY_DELAY;
        for attempt in 1..=attempts {
            let sent = client
                .post(url)
                .header("Idempotency-Key", &n.dedup_key)
                .json(n)
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().is_success() => break,
                Ok(resp) if attempt == attempts => {
                    tracing::warn!(%url, status = resp.status().as_u16(), dedup_key = %n.dedup_key, "webhook refused the notification; giving up");
                }
                Err(e) if attempt == attempts => {
                    tracing::warn!(%url, error = %e, dedup_key = %n.dedup_key, "webhook unreachable; giving up");
                }
                _ => {
                    tokio::select! {
                        _ = st.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(RETRY_DELAY_MAX);
                }
            }
        }
    }
}

/// Reloads the rules when the process gets SIGHUP.
pub fn reload_on_sighup(st: Arc<AppState>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; use `sb alerts reload`");
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = st.shutdown.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            match st.monitor.reload_rules(None).await {
                Ok((groups, rules)) => tracing::info!(groups, rules, "rules reloaded (SIGHUP)"),
                Err(e) => {
                    tracing::error!(error = %e, "rule reload failed; the previous rules stay in force")
                }
            }
        }
    });
}
