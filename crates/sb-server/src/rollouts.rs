//! Firmware rollouts: one version sent to a group's devices batch by batch, halting itself
//! once more devices fail than it allows.
//!
//! A device of the current batch is told through its twin: desired `firmware` becomes
//! `{"version","url","size","sha256","signature","public_key","rollout"}` (the url is the
//! server's `/v1/firmware/<v>/image`, downloaded with HTTP Basic `id:secret` and resumed with
//! Range). The device reports its progress as `{"version":…,"state":…,"reason":…}` on
//! `devices/<id>/firmware/status`, state one of downloading, downloaded, verified, updating,
//! updated or failed (a device verifies the operator's signature before installing, and
//! reports `failed` if it does not hold). Reports only move a device forward; one that stays
//! in a state (told included) past the step timeout has failed.
//!
//! After each change: if failures are past `max_failures` the rollout halts (devices not yet
//! told are never told; those in flight still report); when every device of the batch has
//! updated or failed, the next batch is told; after the last, the rollout is completed.
//! Every change is stored before it is acted on, and running rollouts resume after a restart.

use crate::twins::Twins;
use sb_auth::{Action, Auth, Ctx, Resource};
use sb_core::config::MqttConfig;
use sb_core::{DeviceId, RolloutId, UnixMillis};
use sb_devices::DevicesError;
use sb_proto::{RolloutCreate, RolloutDevice, RolloutInfo};
use sb_store::devices::{DevicesStore, FirmwareRecord, RolloutRecord, RolloutTarget};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// A device's progress, in order; `failed` may come from any of them.
const PROGRESS: [&str; 7] = [
    "pending",
    "notified",
    "downloading",
    "downloaded",
    "verified",
    "updating",
    "updated",
];

fn rank(state: &str) -> Option<usize> {
    PROGRESS.iter().position(|s| *s == state)
}

fn is_final(state: &str) -> bool {
    matches!(state, "updated" | "failed")
}

/// Parses a count (`5`) or a share (`10%`) of `n` devices; shares round up or down.
pub fn parse_share(s: &str, n: usize, round_up: bool) -> Result<usize, String> {
    let s = s.trim();
    if let Some(p) = s.strip_suffix('%') {
        let p: f64 = p
            .trim()
            .parse()
            .ok()
            .filter(|p: &f64| (0.0..=100.0).contains(p))
            .ok_or_else(|| format!("{s:?} is not a share from 0% to 100%"))?;
        let exact = n as f64 * p / 100.0;
        // A hair of slack so 10% of 30 is 3, not 3.0000000000000004 rounded up to 4.
        Ok(if round_up {
            (exact - 1e-9).ceil().max(0.0) as usize
        } else {
            (exact + 1e-9).floor() as usize
        })
    } else {
        s.parse()
            .map_err(|_| format!("{s:?} is neither a count (5) nor a share (10%)"))
    }
}

/// What one evaluation changed: devices to store, and devices to tell now.
#[derive(Debug, Default, PartialEq)]
struct Step {
    rollout_changed: bool,
    changed: Vec<usize>,
    notify: Vec<usize>,
}

/// Advances a rollout as far as it goes at `now`: step timeouts, the failure threshold, and
/// the next batches. Pure: it only changes the records it is given.
fn evaluate(r: &mut RolloutRecord, targets: &mut [RolloutTarget], now: UnixMillis) -> Step {
    let mut step = Step::default();
    if !matches!(r.state.as_str(), "running" | "halted") {
        return step;
    }
    for (i, t) in targets.iter_mut().enumerate() {
        if t.state != "pending" && !is_final(&t.state) && now.0 - t.since.0 > r.step_timeout_ms {
            t.reason = Some(format!(
                "no progress for {} s: stuck in {}",
                r.step_timeout_ms / 1000,
                t.state
            ));
            t.state = "failed".into();
            t.since = now;
            step.changed.push(i);
        }
    }
    let failed = targets.iter().filter(|t| t.state == "failed").count();
    if r.state == "running" && failed > r.max_failures as usize {
        r.state = "halted".into();
        r.reason = Some(format!(
            "{failed} devices failed, more than the {} allowed",
            r.max_failures
        ));
        step.rollout_changed = true;
    }
    if r.state != "running" {
        return step;
    }
    let batches = targets.iter().map(|t| t.batch + 1).max().unwrap_or(0);
    loop {
        for (i, t) in targets.iter_mut().enumerate() {
            if t.batch == r.current_batch && t.state == "pending" {
                t.state = "notified".into();
                t.since = now;
                step.changed.push(i);
                step.notify.push(i);
            }
        }
        if targets
            .iter()
            .any(|t| t.batch == r.current_batch && !is_final(&t.state))
        {
            break;
        }
        step.rollout_changed = true;
        if r.current_batch + 1 < batches {
            r.current_batch += 1;
        } else {
            r.state = "completed".into();
            break;
        }
    }
    step
}

pub fn info(r: &RolloutRecord, targets: &[RolloutTarget], with_devices: bool) -> RolloutInfo {
    let count = |f: &dyn Fn(&str) -> bool| targets.iter().filter(|t| f(&t.state)).count() as u32;
    RolloutInfo {
        id: r.id.to_string(),
        version: r.version.clone(),
        group: r.group.clone(),
        state: r.state.clone(),
        reason: r.reason.clone(),
        batch_size: r.batch_size,
        max_failures: r.max_failures,
        step_timeout_secs: (r.step_timeout_ms / 1000) as u64,
        current_batch: r.current_batch + 1,
        batches: targets.iter().map(|t| t.batch + 1).max().unwrap_or(0),
        devices_total: targets.len() as u32,
        pending: count(&|s| s == "pending"),
        in_progress: count(&|s| s != "pending" && !is_final(s)),
        updated: count(&|s| s == "updated"),
        failed: count(&|s| s == "failed"),
        created_at_ms: r.created_at.0,
        updated_at_ms: r.updated_at.0,
        devices: if with_devices {
            targets
                .iter()
                .map(|t| RolloutDevice {
                    device_id: t.device_id.to_string(),
                    name: t.name.clone(),
                    batch: t.batch + 1,
                    state: t.state.clone(),
                    reason: t.reason.clone(),
                    since_ms: t.since.0,
                })
                .collect()
        } else {
            Vec::new()
        },
    }
}

struct Open {
    rollout: RolloutRecord,
    targets: Vec<RolloutTarget>,
    firmware: FirmwareRecord,
}

pub struct Rollouts {
    store: Arc<dyn DevicesStore>,
    twins: Arc<Twins>,
    auth: Arc<Auth>,
    /// Rollouts running or halted (in-flight devices of a halted one still report).
    open: Mutex<HashMap<RolloutId, Open>>,
    cfg: MqttConfig,
}

impl Rollouts {
    pub fn new(
        store: Arc<dyn DevicesStore>,
        twins: Arc<Twins>,
        auth: Arc<Auth>,
        cfg: MqttConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            twins,
            auth,
            open: Mutex::new(HashMap::new()),
            cfg,
        })
    }

    /// Picks up rollouts running or halted at the last stop, tells again the devices told
    /// then (a twin change that is already there changes nothing), and starts the clock that
    /// applies step timeouts.
    pub async fn restore(self: &Arc<Self>) -> Result<usize, DevicesError> {
        let open = self.store.open_rollouts().await?;
        let n = open.len();
        for (rollout, targets) in open {
            let Some(firmware) = self.store.firmware(&rollout.version).await? else {
                tracing::error!(rollout = %rollout.id, "a rollout's firmware is gone; left alone");
                continue;
            };
            let told: Vec<RolloutTarget> = targets
                .iter()
                .filter(|t| t.state == "notified")
                .cloned()
                .collect();
            let id = rollout.id;
            self.open.lock().await.insert(
                id,
                Open {
                    rollout,
                    targets,
                    firmware: firmware.clone(),
                },
            );
            self.tell(id, &firmware, told).await;
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(me) = me.upgrade() else { return };
                let ids: Vec<RolloutId> = me.open.lock().await.keys().copied().collect();
                for id in ids {
                    me.advance(id).await;
                }
            }
        });
        Ok(n)
    }

    pub async fn create(
        &self,
        cx: Ctx<'_>,
        req: &RolloutCreate,
    ) -> Result<RolloutInfo, DevicesError> {
        self.auth
            .authorize(cx, Action::Create, &Resource::Rollouts)
            .await?;
        let firmware = self.store.firmware(&req.version).await?.ok_or_else(|| {
            DevicesError::NotFound(format!(
                "no firmware {} (upload it with sb firmware upload)",
                req.version
            ))
        })?;
        let mut devices: Vec<_> = self
            .store
            .devices()
            .await?
            .into_iter()
            .filter(|d| d.group == req.group && d.revoked_at.is_none())
            .collect();
        if devices.is_empty() {
            return Err(DevicesError::Invalid(format!(
                "the group {:?} has no devices",
                req.group
            )));
        }
        if devices.len() > self.cfg.rollout_devices_max {
            return Err(DevicesError::Invalid(format!(
                "the group has {} devices; a rollout holds at most {} (mqtt.rollout_devices_max)",
                devices.len(),
                self.cfg.rollout_devices_max
            )));
        }
        devices.sort_by(|a, b| a.name.cmp(&b.name));
        let n = devices.len();
        let batch = parse_share(&req.batch, n, true)
            .map_err(|e| DevicesError::Invalid(format!("--batch: {e}")))?
            .clamp(1, n);
        let max_failures = parse_share(&req.max_failures, n, false)
            .map_err(|e| DevicesError::Invalid(format!("--max-failures: {e}")))?
            .min(n);
        let step_timeout = req
            .step_timeout_secs
            .unwrap_or(self.cfg.rollout_step_timeout_secs);
        if !(1..=30 * 86_400).contains(&step_timeout) {
            return Err(DevicesError::Invalid(
                "the step timeout is from 1 s to 30 days".into(),
            ));
        }
        {
            let open = self.open.lock().await;
            if let Some(o) = open
                .values()
                .find(|o| o.rollout.group == req.group && o.rollout.state == "running")
            {
                return Err(DevicesError::Conflict(format!(
                    "rollout {} of {} is running over the group {}; wait for it or cancel it",
                    o.rollout.id, o.rollout.version, req.group
                )));
            }
        }
        let now = cx.now;
        let rollout = RolloutRecord {
            id: RolloutId::new_at(now),
            version: req.version.clone(),
            group: req.group.clone(),
            state: "running".into(),
            batch_size: batch as u32,
            max_failures: max_failures as u32,
            step_timeout_ms: step_timeout as i64 * 1000,
            current_batch: 0,
            reason: None,
            created_by: cx.subject.user_id,
            created_at: now,
            updated_at: now,
        };
        let targets: Vec<RolloutTarget> = devices
            .iter()
            .enumerate()
            .map(|(i, d)| RolloutTarget {
                rollout_id: rollout.id,
                device_id: d.id,
                name: d.name.clone(),
                batch: (i / batch) as u32,
                state: "pending".into(),
                reason: None,
                since: now,
            })
            .collect();
        self.store
            .create_rollout(rollout.clone(), targets.clone())
            .await?;
        self.auth
            .record(
                cx,
                "firmware.rollout",
                rollout.id.to_string(),
                serde_json::json!({"version": req.version, "group": req.group,
                    "devices": n, "batch": batch, "max_failures": max_failures}),
            )
            .await?;
        let id = rollout.id;
        self.open.lock().await.insert(
            id,
            Open {
                rollout,
                targets,
                firmware,
            },
        );
        self.advance(id).await;
        self.get(cx, id).await
    }

    pub async fn get(&self, cx: Ctx<'_>, id: RolloutId) -> Result<RolloutInfo, DevicesError> {
        self.auth
            .authorize(cx, Action::Read, &Resource::Rollouts)
            .await?;
        let (r, targets) = self
            .store
            .rollout(id)
            .await?
            .ok_or_else(|| DevicesError::NotFound(format!("no rollout {id}")))?;
        Ok(info(&r, &targets, true))
    }

    /// Every rollout, newest first, without the device lists.
    pub async fn list(&self, cx: Ctx<'_>) -> Result<Vec<RolloutInfo>, DevicesError> {
        self.auth
            .authorize(cx, Action::Read, &Resource::Rollouts)
            .await?;
        let mut out = Vec::new();
        for r in self.store.rollouts().await? {
            if let Some((r, targets)) = self.store.rollout(r.id).await? {
                out.push(info(&r, &targets, false));
            }
        }
        Ok(out)
    }

    /// Stops a running or halted rollout: devices not yet told never are.
    pub async fn cancel(&self, cx: Ctx<'_>, id: RolloutId) -> Result<RolloutInfo, DevicesError> {
        self.auth
            .authorize(cx, Action::Update, &Resource::Rollouts)
            .await?;
        {
            let mut open = self.open.lock().await;
            let Some(o) = open.get_mut(&id) else {
                return match self.store.rollout(id).await? {
                    Some((r, _)) => Err(DevicesError::Conflict(format!(
                        "rollout {id} is {} already",
                        r.state
                    ))),
                    None => Err(DevicesError::NotFound(format!("no rollout {id}"))),
                };
            };
            let mut r = o.rollout.clone();
            r.state = "cancelled".into();
            r.reason = Some(format!("cancelled by {}", cx.subject.username));
            r.updated_at = cx.now;
            self.store.update_rollout(r, Vec::new()).await?;
            open.remove(&id);
        }
        self.auth
            .record(
                cx,
                "firmware.rollout.cancel",
                id.to_string(),
                serde_json::json!({}),
            )
            .await?;
        self.get(cx, id).await
    }

    /// Lets a halted rollout go on with a larger failure budget (a count or share of the
    /// group; by default as many more failures as it first allowed).
    pub async fn resume(
        &self,
        cx: Ctx<'_>,
        id: RolloutId,
        max_failures: Option<&str>,
    ) -> Result<RolloutInfo, DevicesError> {
        self.auth
            .authorize(cx, Action::Update, &Resource::Rollouts)
            .await?;
        {
            let mut open = self.open.lock().await;
            let o = match open.get_mut(&id) {
                Some(o) if o.rollout.state == "halted" => o,
                Some(o) => {
                    return Err(DevicesError::Conflict(format!(
                        "rollout {id} is {}, not halted",
                        o.rollout.state
                    )));
                }
                None => {
                    return match self.store.rollout(id).await? {
                        Some((r, _)) => Err(DevicesError::Conflict(format!(
                            "rollout {id} is {}, not halted",
                            r.state
                        ))),
                        None => Err(DevicesError::NotFound(format!("no rollout {id}"))),
                    };
                }
            };
            let n = o.targets.len();
            let failed = o.targets.iter().filter(|t| t.state == "failed").count();
            let budget = match max_failures {
                Some(s) => parse_share(s, n, false)
                    .map_err(|e| DevicesError::Invalid(format!("--max-failures: {e}")))?,
                None => failed + o.rollout.max_failures as usize,
            };
            if budget < failed {
                return Err(DevicesError::Invalid(format!(
                    "{failed} devices have failed already; allow at least that many"
                )));
            }
            let mut r = o.rollout.clone();
            r.state = "running".into();
            r.reason = None;
            r.max_failures = budget.min(n) as u32;
            r.updated_at = cx.now;
            self.store.update_rollout(r.clone(), Vec::new()).await?;
            o.rollout = r;
        }
        self.auth
            .record(
                cx,
                "firmware.rollout.resume",
                id.to_string(),
                serde_json::json!({"max_failures": max_failures}),
            )
            .await?;
        self.advance(id).await;
        self.get(cx, id).await
    }

    /// A device's progress report (`devices/<id>/firmware/status`).
    pub async fn on_status(&self, device: DeviceId, payload: &[u8]) {
        let Ok(Value::Object(report)) = serde_json::from_slice::<Value>(payload) else {
            tracing::debug!(%device, "a firmware status that is not a JSON object");
            return;
        };
        let state = report.get("state").and_then(Value::as_str).unwrap_or("");
        if state != "failed" && rank(state).is_none_or(|r| r < 2) {
            tracing::debug!(%device, state, "a firmware status with an unknown state");
            return;
        }
        let version = report.get("version").and_then(Value::as_str);
        let reason = report.get("reason").map(|r| match r {
            Value::String(s) => s.chars().take(500).collect(),
            other => other.to_string().chars().take(500).collect(),
        });
        let now = crate::now();
        let mut hit = None;
        {
            let mut open = self.open.lock().await;
            for o in open.values_mut() {
                if version.is_some_and(|v| v != o.rollout.version) {
                    continue;
                }
                let Some(t) = o.targets.iter_mut().find(|t| t.device_id == device) else {
                    continue;
                };
                let forward = match (rank(&t.state), rank(state)) {
                    _ if is_final(&t.state) || t.state == "pending" => false,
                    _ if state == "failed" => true,
                    (Some(from), Some(to)) => to > from,
                    _ => false,
                };
                if forward {
                    t.state = state.to_string();
                    t.reason = if state == "failed" {
                        Some(reason.clone().unwrap_or_else(|| "the device failed".into()))
                    } else {
                        None
                    };
                    t.since = now;
                    let mut r = o.rollout.clone();
                    r.updated_at = now;
                    match self.store.update_rollout(r.clone(), vec![t.clone()]).await {
                        Ok(()) => o.rollout = r,
                        Err(e) => tracing::error!(error = %e, "storing a firmware status failed"),
                    }
                    hit = Some(o.rollout.id);
                }
                break;
            }
        }
        if let Some(id) = hit {
            self.advance(id).await;
        }
    }

    /// Evaluates one rollout, stores what changed, and tells the devices whose turn came.
    async fn advance(&self, id: RolloutId) {
        let (firmware, tell) = {
            let mut open = self.open.lock().await;
            let Some(o) = open.get_mut(&id) else { return };
            let (mut r, mut targets) = (o.rollout.clone(), o.targets.clone());
            let now = crate::now();
            let step = evaluate(&mut r, &mut targets, now);
            if !step.rollout_changed && step.changed.is_empty() {
                return;
            }
            r.updated_at = now;
            let changed: Vec<RolloutTarget> =
                step.changed.iter().map(|i| targets[*i].clone()).collect();
            if let Err(e) = self.store.update_rollout(r.clone(), changed).await {
                tracing::error!(error = %e, rollout = %id, "storing a rollout's progress failed");
                return;
            }
            if r.state != o.rollout.state {
                tracing::info!(rollout = %id, state = %r.state, reason = ?r.reason, "rollout");
            }
            let tell: Vec<RolloutTarget> =
                step.notify.iter().map(|i| targets[*i].clone()).collect();
            let firmware = o.firmware.clone();
            if matches!(r.state.as_str(), "completed" | "cancelled") {
                open.remove(&id);
            } else {
                o.rollout = r;
                o.targets = targets;
            }
            (firmware, tell)
        };
        self.tell(id, &firmware, tell).await;
    }

    /// Sets each device's desired `firmware`; a device that cannot be told has failed.
    async fn tell(&self, id: RolloutId, f: &FirmwareRecord, targets: Vec<RolloutTarget>) {
        let desired = serde_json::json!({
            "version": f.version,
            "url": format!("/v1/firmware/{}/image", f.version),
            "size": f.size,
            "sha256": f.sha256,
            "signature": f.signature,
            "public_key": f.public_key,
            "rollout": id.to_string(),
        });
        let mut patch = Map::new();
        patch.insert("firmware".into(), desired);
        for t in targets {
            let outcome = match self.store.device(t.device_id).await {
                Ok(Some(d)) if d.revoked_at.is_none() => self
                    .twins
                    .apply_desired(&d, &patch, None, crate::now())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Ok(_) => Err("the device was revoked".to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(reason) = outcome {
                let mut open = self.open.lock().await;
                if let Some(o) = open.get_mut(&id)
                    && let Some(t) = o.targets.iter_mut().find(|x| x.device_id == t.device_id)
                {
                    t.state = "failed".into();
                    t.reason = Some(format!("could not be told: {reason}"));
                    t.since = crate::now();
                    if let Err(e) = self
                        .store
                        .update_rollout(o.rollout.clone(), vec![t.clone()])
                        .await
                    {
                        tracing::error!(error = %e, "storing a rollout's progress failed");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sb_core::UserId;

    fn rollout(
        devices: usize,
        batch: u32,
        max_failures: u32,
    ) -> (RolloutRecord, Vec<RolloutTarget>) {
        let r = RolloutRecord {
            id: RolloutId::new_at(UnixMillis(1)),
            version: "2.0".into(),
            group: "g".into(),
            state: "running".into(),
            batch_size: batch,
            max_failures,
            step_timeout_ms: 10_000,
            current_batch: 0,
            reason: None,
            created_by: UserId::new_at(UnixMillis(1)),
            created_at: UnixMillis(0),
            updated_at: UnixMillis(0),
        };
        let targets = (0..devices)
            .map(|i| RolloutTarget {
                rollout_id: r.id,
                device_id: DeviceId::new_at(UnixMillis(i as i64)),
                name: format!("d{i}"),
                batch: i as u32 / batch,
                state: "pending".into(),
                reason: None,
                since: UnixMillis(0),
            })
            .collect();
        (r, targets)
    }

    fn states(t: &[RolloutTarget]) -> Vec<&str> {
        t.iter().map(|t| t.state.as_str()).collect()
    }

    #[test]
    fn shares_round_batches_up_and_failure_budgets_down() {
        assert_eq!(parse_share("10%", 30, true), Ok(3));
        assert_eq!(parse_share("10%", 31, true), Ok(4));
        assert_eq!(parse_share("5%", 30, false), Ok(1));
        assert_eq!(parse_share("5%", 19, false), Ok(0));
        assert_eq!(parse_share("0%", 19, false), Ok(0));
        assert_eq!(parse_share("7", 19, true), Ok(7));
        assert!(parse_share("101%", 19, true).is_err());
        assert!(parse_share("ten", 19, true).is_err());
        assert!(parse_share("-1", 19, true).is_err());
    }

    #[test]
    fn batches_follow_each_other_and_the_last_completes() {
        let (mut r, mut t) = rollout(5, 2, 0);
        let s = evaluate(&mut r, &mut t, UnixMillis(1));
        assert_eq!(s.notify, vec![0, 1]);
        assert_eq!(
            states(&t),
            ["notified", "notified", "pending", "pending", "pending"]
        );
        // Nothing moves while the batch is in flight.
        t[0].state = "updated".into();
        assert_eq!(
            evaluate(&mut r, &mut t, UnixMillis(2)).notify,
            Vec::<usize>::new()
        );
        t[1].state = "updated".into();
        assert_eq!(evaluate(&mut r, &mut t, UnixMillis(3)).notify, vec![2, 3]);
        assert_eq!(r.current_batch, 1);
        t[2].state = "updated".into();
        t[3].state = "updated".into();
        assert_eq!(evaluate(&mut r, &mut t, UnixMillis(4)).notify, vec![4]);
        t[4].state = "updated".into();
        let s = evaluate(&mut r, &mut t, UnixMillis(5));
        assert!(s.rollout_changed && s.notify.is_empty());
        assert_eq!(r.state, "completed");
    }

    #[test]
    fn one_failure_past_the_budget_halts_and_later_batches_are_never_told() {
        let (mut r, mut t) = rollout(6, 2, 1);
        evaluate(&mut r, &mut t, UnixMillis(1));
        t[0].state = "failed".into();
        t[1].state = "updated".into();
        // One failure is within the budget: the next batch goes.
        assert_eq!(evaluate(&mut r, &mut t, UnixMillis(2)).notify, vec![2, 3]);
        t[2].state = "failed".into();
        let s = evaluate(&mut r, &mut t, UnixMillis(3));
        assert!(s.rollout_changed && s.notify.is_empty());
        assert_eq!(r.state, "halted");
        assert!(r.reason.as_deref().unwrap().contains("2 devices failed"));
        // The device still in flight reports; nothing more is told.
        t[3].state = "updated".into();
        assert_eq!(evaluate(&mut r, &mut t, UnixMillis(4)), Step::default());
        assert_eq!(
            states(&t),
            [
                "failed", "updated", "failed", "updated", "pending", "pending"
            ]
        );
    }

    #[test]
    fn a_device_stuck_past_the_step_timeout_fails() {
        let (mut r, mut t) = rollout(2, 1, 0);
        evaluate(&mut r, &mut t, UnixMillis(1_000));
        t[0].state = "downloading".into();
        t[0].since = UnixMillis(5_000);
        assert!(
            evaluate(&mut r, &mut t, UnixMillis(15_000))
                .changed
                .is_empty()
        );
        let s = evaluate(&mut r, &mut t, UnixMillis(15_001));
        assert_eq!(s.changed, vec![0]);
        assert_eq!(t[0].state, "failed");
        assert!(
            t[0].reason
                .as_deref()
                .unwrap()
                .contains("stuck in downloading")
        );
        assert_eq!(r.state, "halted");
        assert_eq!(t[1].state, "pending");
    }
}
