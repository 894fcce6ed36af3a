//! The monitoring service: authorized, rate-limited writes into sb-tsdb and PromQL queries
//! over it. Transport-free: `sb-server` maps HTTP onto these calls.

use crate::alerts::{self, Alerting, Notification, RoutingConfig, RuleStatus, Silence};
use crate::limits::{SampleBudget, TenantLimits};
use crate::promql::{self, Engine, EngineConfig, QueryError, Series, Value};
use sb_auth::{Action, Auth, AuthError, Ctx, Resource};
use sb_core::config::MonitoringConfig;
use sb_tsdb::{AppendOutcome, Batch, Labels, Matcher, Recovery, Tsdb, TsdbConfig};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The body could not be read; nothing was stored.
    #[error("{0}")]
    BadData(String),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("over {setting} ({limit} samples/s){who}; retry in {retry_after_secs}s")]
    RateLimited {
        setting: &'static str,
        /// ` for tenant NAME` when the limit is the tenant's.
        who: String,
        limit: u64,
        retry_after_secs: u64,
    },
    #[error("the query ran longer than monitoring.query_timeout_ms and was cancelled")]
    Timeout,
    #[error(transparent)]
    Storage(#[from] sb_tsdb::TsdbError),
    #[error("internal: {0}")]
    Internal(String),
}

pub type Result<T, E = MonitorError> = std::result::Result<T, E>;

/// A rollup tier: its own database of per-bucket aggregates.
struct Tier {
    /// As written in a query's `resolution` parameter: `5m`, `1h`.
    name: String,
    resolution_ms: i64,
    retention_ms: i64,
    db: Arc<Tsdb>,
}

/// Which data a query reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Raw,
    Tier(usize),
}

/// `300000` → `5m`, `3600000` → `1h`.
fn duration_name(ms: i64) -> String {
    match ms {
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

pub struct Monitor {
    db: Arc<Tsdb>,
    tiers: Vec<Tier>,
    auth: Arc<Auth>,
    cfg: MonitoringConfig,
    budget: Mutex<SampleBudget>,
    tenants: Mutex<TenantLimits>,
    alerting: Arc<Mutex<Alerting>>,
    silences: Mutex<Vec<Silence>>,
    silences_path: std::path::PathBuf,
}

/// Expired silences are kept (and listed) this long, then forgotten.
const EXPIRED_SILENCE_RETENTION_MS: i64 = 5 * 24 * 3_600_000;

/// Silences at most, active and expired.
pub const SILENCES_MAX: usize = 10_000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads and checks the rule files, and the server's built-in rules.
pub fn read_rule_files(cfg: &MonitoringConfig) -> Result<Vec<alerts::Group>, String> {
    let mut files = Vec::new();
    for path in &cfg.rule_files {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        files.push((path.display().to_string(), text));
    }
    files.extend(cfg.builtin_rules.iter().cloned());
    alerts::load_rules(&files, cfg.rule_evaluation_interval_ms as i64)
}

impl Monitor {
    /// Opens the time-series store under `dir`, replaying its log.
    pub fn open(
        dir: &Path,
        cfg: MonitoringConfig,
        sync: bool,
        auth: Arc<Auth>,
    ) -> Result<(Self, Recovery)> {
        let tsdb_cfg = TsdbConfig {
            wal_segment_bytes: cfg.wal_segment_bytes,
            series_max: cfg.series_max,
            labels_per_series_max: cfg.labels_per_series_max,
            label_bytes_max: cfg.label_bytes_max,
            sync,
            retention_ms: cfg.retention_ms as i64,
            retention_bytes: cfg.retention_bytes,
            chunk_file_bytes: cfg.chunk_file_bytes,
            head_chunk_max_age_ms: cfg.head_chunk_max_age_ms as i64,
            compact_span_ms: cfg.compact_span_ms as i64,
        };
        let (db, recovery) = Tsdb::open(dir, tsdb_cfg.clone())?;
        let mut tiers: Vec<Tier> = Vec::new();
        for t in &cfg.rollups {
            let res = t.resolution_ms as i64;
            let min = sb_tsdb::rollup::RESOLUTION_MIN_MS;
            if res < min || tiers.iter().any(|x| x.resolution_ms == res) {
                return Err(MonitorError::BadData(format!(
                    "monitoring.rollups: resolution_ms {res} must be at least {min} and appear once"
                )));
            }
            let name = duration_name(res);
            // Rollups are rebuilt from raw samples after a crash, so their log is not synced.
            // A tier holds each raw series once, past raw retention too: its own series limit
            // is not the head's.
            let (tier_db, tier_rec) = Tsdb::open(
                &dir.join(format!("rollup-{name}")),
                TsdbConfig {
                    sync: false,
                    series_max: usize::MAX,
                    retention_ms: t.retention_ms as i64,
                    retention_bytes: 0,
                    // A bucket a few times an hour: an open chunk fills in hours, not minutes.
                    head_chunk_max_age_ms: tsdb_cfg.head_chunk_max_age_ms.max(res * 120),
                    // 8192 buckets of four samples fit one chunk (at most 65535 samples).
                    compact_span_ms: if cfg.compact_span_ms > 0 {
                        res * 8192
                    } else {
                        0
                    },
                    ..tsdb_cfg.clone()
                },
            )?;
            if let Some(r) = tier_rec.repair {
                tracing::warn!(tier = %name, reason = %r.reason, "rollup log cut; the lost buckets are rebuilt from raw samples where they are still kept");
            }
            tier_db.share_labels_with(&db);
            tiers.push(Tier {
                name,
                resolution_ms: res,
                retention_ms: t.retention_ms as i64,
                db: Arc::new(tier_db),
            });
        }
        tiers.sort_by_key(|t| t.resolution_ms);
        let budget = Mutex::new(SampleBudget::new(cfg.samples_per_second_max));
        let tenants = Mutex::new(TenantLimits::new(
            cfg.tenant_samples_per_second_max,
            cfg.tenant_series_max,
            cfg.head_chunk_max_age_ms as i64,
        ));
        let groups = read_rule_files(&cfg).map_err(MonitorError::BadData)?;
        let alerting = Alerting::new(
            groups,
            RoutingConfig {
                group_by: cfg.alert_group_by.clone(),
                repeat_interval_ms: cfg.alert_repeat_interval_ms as i64,
            },
        );
        let silences_path = dir.join("silences.json");
        let silences = match std::fs::read(&silences_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| MonitorError::BadData(format!("{}: {e}", silences_path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(MonitorError::Storage(e.into())),
        };
        Ok((
            Self {
                db: Arc::new(db),
                tiers,
                auth,
                cfg,
                budget,
                tenants,
                alerting: Arc::new(Mutex::new(alerting)),
                silences: Mutex::new(silences),
                silences_path,
            },
            recovery,
        ))
    }

    /// Rolls complete buckets up into each tier, then writes sealed chunks out, applies
    /// retention and replaces the logs with checkpoints. Rollups go first, so raw samples are
    /// summarised before retention drops them.
    pub async fn checkpoint(&self, now: i64) -> Result<sb_tsdb::CheckpointStats> {
        let db = self.db.clone();
        let tiers: Vec<(String, i64, Arc<Tsdb>)> = self
            .tiers
            .iter()
            .map(|t| (t.name.clone(), t.resolution_ms, t.db.clone()))
            .collect();
        let settle = self.cfg.head_chunk_max_age_ms as i64;
        tokio::task::spawn_blocking(move || {
            for (name, res, tier) in &tiers {
                let st = sb_tsdb::rollup::roll_up(&db, tier, *res, now, settle)?;
                tier.checkpoint(now)?;
                tracing::debug!(tier = %name, series = st.series, buckets = st.buckets, "rolled up");
            }
            db.checkpoint(now)
        })
        .await
        .map_err(|e| MonitorError::Internal(e.to_string()))?
        .map_err(MonitorError::from)
    }

    /// Bytes on disk of the rollup tiers.
    pub fn rollup_disk_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for t in &self.tiers {
            total += t.db.disk_bytes()?;
        }
        Ok(total)
    }

    /// The data a query from `start` reads, given its `resolution` parameter: `raw` (the
    /// default), a tier's name (`5m`, `1h`), or `auto` — raw samples while retention still
    /// holds them at `start`, else the finest tier that does.
    fn source(&self, resolution: Option<&str>, start: i64, now: i64) -> Result<Source> {
        let keeps = |retention: i64| retention <= 0 || start >= now.saturating_sub(retention);
        match resolution.map(str::trim) {
            None | Some("" | "raw" | "0" | "0s") => Ok(Source::Raw),
            Some("auto") => {
                if keeps(self.cfg.retention_ms as i64) || self.tiers.is_empty() {
                    return Ok(Source::Raw);
                }
                let i = self
                    .tiers
                    .iter()
                    .position(|t| keeps(t.retention_ms))
                    .unwrap_or(self.tiers.len() - 1);
                Ok(Source::Tier(i))
            }
            Some(r) => {
                let ms = crate::time::parse_duration(r).ok();
                self.tiers
                    .iter()
                    .position(|t| t.name == r || Some(t.resolution_ms) == ms)
                    .map(Source::Tier)
                    .ok_or_else(|| {
                        let names: Vec<&str> = self.tiers.iter().map(|t| t.name.as_str()).collect();
                        MonitorError::BadData(format!(
                            "resolution {r:?} is not a rollup tier; use raw, auto or one of [{}] (monitoring.rollups)",
                            names.join(", ")
                        ))
                    })
            }
        }
    }

    /// Evaluates the rule groups due at `now`: stores what recording rules produce and returns
    /// the notifications to deliver.
    pub async fn evaluate_rules(&self, now: i64) -> Result<(Vec<Notification>, Vec<String>)> {
        let silences = lock(&self.silences).clone();
        let (db, alerting, engine) = (self.db.clone(), self.alerting.clone(), self.engine_config());
        tokio::task::spawn_blocking(move || {
            let eval = lock(&alerting).evaluate(&db, &engine, &silences, now);
            if !eval.recorded.is_empty() {
                let out = db.append(&eval.recorded)?;
                if !out.rejected.is_empty() {
                    tracing::warn!(first = %out.rejected[0], count = out.rejected.len(), "recording rule samples refused");
                }
            }
            Ok((eval.notifications, eval.errors))
        })
        .await
        .map_err(|e| MonitorError::Internal(e.to_string()))?
    }

    /// The shortest interval among the rule groups (how often evaluation must look).
    pub fn shortest_rule_interval_ms(&self) -> Option<i64> {
        lock(&self.alerting)
            .groups()
            .iter()
            .map(|g| g.interval_ms)
            .min()
    }

    /// Re-reads the rule files; on an error the rules in force stay. `cx` is `None` for the
    /// operator's SIGHUP.
    pub async fn reload_rules(&self, cx: Option<Ctx<'_>>) -> Result<(usize, usize)> {
        if let Some(cx) = cx {
            self.auth
                .authorize(cx, Action::Update, &Resource::Metrics)
                .await?;
        }
        let groups = read_rule_files(&self.cfg).map_err(MonitorError::BadData)?;
        let counts = (groups.len(), groups.iter().map(|g| g.rules.len()).sum());
        lock(&self.alerting).reload(groups);
        Ok(counts)
    }

    pub async fn rules(&self, cx: Ctx<'_>) -> Result<Vec<RuleStatus>> {
        self.auth
            .authorize(cx, Action::Read, &Resource::Metrics)
            .await?;
        Ok(lock(&self.alerting).status())
    }

    /// Every current alert, and whether a silence holds it back now.
    pub async fn alerts(&self, cx: Ctx<'_>) -> Result<Vec<(alerts::Alert, bool)>> {
        self.auth
            .authorize(cx, Action::Read, &Resource::Metrics)
            .await?;
        let silences = lock(&self.silences).clone();
        let now = cx.now.0;
        Ok(lock(&self.alerting)
            .status()
            .into_iter()
            .flat_map(|r| r.alerts)
            .map(|a| {
                let silenced = silences
                    .iter()
                    .any(|s| s.active(now) && s.matches(&a.labels));
                (a, silenced)
            })
            .collect())
    }

    pub async fn silences(&self, cx: Ctx<'_>) -> Result<Vec<Silence>> {
        self.auth
            .authorize(cx, Action::Read, &Resource::Metrics)
            .await?;
        Ok(lock(&self.silences).clone())
    }

    fn save_silences(&self, list: &[Silence]) -> Result<()> {
        let tmp = self.silences_path.with_extension("json.tmp");
        let bytes =
            serde_json::to_vec_pretty(list).map_err(|e| MonitorError::Internal(e.to_string()))?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.silences_path)
        };
        write().map_err(|e| MonitorError::Storage(e.into()))
    }

    /// Adds a silence from `starts_at` (default now) to `ends_at`; returns it.
    pub async fn add_silence(
        &self,
        cx: Ctx<'_>,
        matchers: Vec<String>,
        starts_at_ms: Option<i64>,
        ends_at_ms: i64,
        comment: String,
    ) -> Result<Silence> {
        self.auth
            .authorize(cx, Action::Create, &Resource::Metrics)
            .await?;
        if matchers.is_empty() {
            return Err(MonitorError::BadData(
                "a silence needs at least one matcher, e.g. alertname=HighLoad".into(),
            ));
        }
        let mut any_specific = false;
        for m in &matchers {
            let parsed = alerts::parse_matcher(m).map_err(MonitorError::BadData)?;
            any_specific |= !parsed.matches("");
        }
        if !any_specific {
            return Err(MonitorError::BadData(
                "at least one matcher must not match the empty value (it would silence everything)"
                    .into(),
            ));
        }
        let now = cx.now.0;
        let starts = starts_at_ms.unwrap_or(now);
        if ends_at_ms <= starts || ends_at_ms <= now {
            return Err(MonitorError::BadData(
                "a silence must end after it starts, and in the future".into(),
            ));
        }
        if comment.chars().count() > 1000 {
            return Err(MonitorError::BadData(
                "comments are at most 1000 characters".into(),
            ));
        }
        let silence = Silence {
            id: sb_core::SilenceId::new_at(cx.now).to_string(),
            matchers,
            starts_at_ms: starts,
            ends_at_ms,
            created_by: cx.subject.username.clone(),
            comment,
        };
        let mut list = lock(&self.silences);
        list.retain(|s| s.ends_at_ms > now - EXPIRED_SILENCE_RETENTION_MS);
        if list.len() >= SILENCES_MAX {
            return Err(MonitorError::BadData(format!(
                "{SILENCES_MAX} silences already; expire some first"
            )));
        }
        let mut next = list.clone();
        next.push(silence.clone());
        self.save_silences(&next)?;
        *list = next;
        Ok(silence)
    }

    /// Ends a silence now.
    pub async fn expire_silence(&self, cx: Ctx<'_>, id: &str) -> Result<()> {
        self.auth
            .authorize(cx, Action::Create, &Resource::Metrics)
            .await?;
        let now = cx.now.0;
        let mut list = lock(&self.silences);
        let mut next = list.clone();
        let Some(s) = next.iter_mut().find(|s| s.id == id) else {
            return Err(MonitorError::BadData(format!(
                "no silence {id}; see `sb alerts silences`"
            )));
        };
        s.ends_at_ms = s.ends_at_ms.min(now);
        self.save_silences(&next)?;
        *list = next;
        Ok(())
    }

    pub fn config(&self) -> &MonitoringConfig {
        &self.cfg
    }

    pub fn db(&self) -> &Tsdb {
        &self.db
    }

    /// Stores samples; durable when this returns. Rejected samples (out of order, over the
    /// series limit) are listed in the outcome; the rest is stored.
    pub async fn write(&self, cx: Ctx<'_>, mut batch: Batch) -> Result<AppendOutcome> {
        self.auth
            .authorize(cx, Action::Create, &Resource::Metrics)
            .await?;
        // Samples retention would drop at once are refused by name, as Prometheus does.
        let mut too_old = Vec::new();
        if self.cfg.retention_ms > 0 {
            let cutoff = cx.now.0.saturating_sub(self.cfg.retention_ms as i64);
            for (labels, points) in &mut batch {
                if points.first().is_some_and(|p| p.0 < cutoff) {
                    for p in points.iter().filter(|p| p.0 < cutoff) {
                        too_old.push(sb_tsdb::Rejection::TooOld {
                            series: labels.to_string(),
                            t: p.0,
                        });
                    }
                    points.retain(|p| p.0 >= cutoff);
                }
            }
        }
        let n: u64 = batch.iter().map(|(_, p)| p.len() as u64).sum();
        let (tenant, now) = (cx.subject.user_id, cx.now.0);
        let tenant_name = &cx.subject.username;
        // The tenant's own limits first, so one tenant over its share never spends the
        // server's budget.
        let over_quota = {
            let mut tenants = lock(&self.tenants);
            if let Err(over) = tenants.charge(tenant, n, now) {
                return Err(MonitorError::RateLimited {
                    setting: "monitoring.tenant_samples_per_second_max",
                    who: format!(" for tenant {tenant_name}"),
                    limit: over.limit,
                    retry_after_secs: over.retry_after_secs,
                });
            }
            if let Err(retry_after_secs) = lock(&self.budget).take(n, now) {
                return Err(MonitorError::RateLimited {
                    setting: "monitoring.samples_per_second_max",
                    who: String::new(),
                    limit: self.cfg.samples_per_second_max,
                    retry_after_secs,
                });
            }
            tenants.admit_series(tenant, tenant_name, &mut batch, now)
        };
        let db = self.db.clone();
        let mut out = tokio::task::spawn_blocking(move || db.append(&batch))
            .await
            .map_err(|e| MonitorError::Internal(e.to_string()))??;
        out.rejected.extend(too_old);
        out.rejected.extend(over_quota);
        Ok(out)
    }

    /// Stores samples the server collected itself (scrapes, its own metrics): no caller to
    /// authorize and no budget to charge.
    pub async fn append_internal(&self, batch: Batch) -> Result<AppendOutcome> {
        let db = self.db.clone();
        Ok(tokio::task::spawn_blocking(move || db.append(&batch))
            .await
            .map_err(|e| MonitorError::Internal(e.to_string()))??)
    }

    fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            lookback_ms: self.cfg.lookback_ms as i64,
            samples_max: self.cfg.query_samples_max,
            range_points_max: self.cfg.query_range_points_max,
            ..EngineConfig::default()
        }
    }

    /// Runs `f` on the blocking pool with the query timeout, over raw samples or a tier.
    async fn run<T: Send + 'static>(
        &self,
        source: Source,
        f: impl FnOnce(&Tsdb, EngineConfig, &AtomicBool) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let mut cfg = self.engine_config();
        let db = match source {
            Source::Raw => self.db.clone(),
            Source::Tier(i) => {
                let tier = &self.tiers[i];
                cfg.rollup = Some(tier.resolution_ms);
                // The newest complete bucket starts up to two widths back.
                cfg.lookback_ms = cfg.lookback_ms.max(2 * tier.resolution_ms);
                tier.db.clone()
            }
        };
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let task = tokio::task::spawn_blocking(move || f(&db, cfg, &flag));
        let timeout = std::time::Duration::from_millis(self.cfg.query_timeout_ms);
        match tokio::time::timeout(timeout, task).await {
            Ok(joined) => joined.map_err(|e| MonitorError::Internal(e.to_string()))?,
            Err(_) => {
                cancel.store(true, Ordering::Relaxed);
                Err(MonitorError::Timeout)
            }
        }
    }

    /// An instant query at `t` (ms); `resolution` picks raw samples or a rollup tier.
    pub async fn query(
        &self,
        cx: Ctx<'_>,
        q: &str,
        t: i64,
        resolution: Option<&str>,
    ) -> Result<Value> {
        self.auth
            .authorize(cx, Action::Read, &Resource::Metrics)
            .await?;
        let expr = promql::parse(q)?;
        let source = self.source(resolution, t, cx.now.0)?;
        self.run(source, move |db, cfg, cancel| {
            Ok(Engine::new(db, cfg).with_cancel(cancel).instant(&expr, t)?)
        })
        .await
    }

    /// A range query from `start` to `end` every `step` (ms); `resolution` as for
    /// [`Monitor::query`].
    pub async fn query_range(
        &self,
        cx: Ctx<'_>,
        q: &str,
        (start, end, step): (i64, i64, i64),
        resolution: Option<&str>,
    ) -> Result<Vec<Series>> {
        self.auth
            .authorize(cx, Action::Read, &Resource::Metrics)
            .await?;
        let expr = promql::parse(q)?;
        let source = self.source(resolution, start, cx.now.0)?;
        self.run(source, move |db, cfg, cancel| {
            Ok(Engine::new(db, cfg)
                .with_cancel(cancel)
                .range(&expr, start, end, step)?)
        })
        .await
    }

    /// Series matching any of the selectors (`match[]`), or all when there are none.
    pub async fn series(&self, cx: Ctx<'_>, selectors: &[String]) -> Result<Vec<Labels>> {
        self.auth
            .authorize(cx, Action::Read, &Resource::Metrics)
            .await?;
        let sets = selector_matchers(selectors)?;
        self.run(Source::Raw, move |db, _, _| {
            let mut out: Vec<Labels> = Vec::new();
            if sets.is_empty() {
                out = db.series(&[]);
            }
            for ms in &sets {
                out.extend(db.series(ms));
            }
            out.sort();
            out.dedup();
            Ok(out)
        })
        .await
    }

    pub async fn label_names(&self, cx: Ctx<'_>, selectors: &[String]) -> Result<Vec<String>> {
        self.auth
            .authorize(cx, Action::Read, &Resource::Metrics)
            .await?;
        let sets = selector_matchers(selectors)?;
        self.run(Source::Raw, move |db, _, _| {
            let mut out = if sets.is_empty() {
                db.label_names(&[])
            } else {
                Vec::new()
            };
            for ms in &sets {
                out.extend(db.label_names(ms));
            }
            out.sort();
            out.dedup();
            Ok(out)
        })
        .await
    }

    pub async fn label_values(
        &self,
        cx: Ctx<'_>,
        name: &str,
        selectors: &[String],
    ) -> Result<Vec<String>> {
        self.auth
            .authorize(cx, Action::Read, &Resource::Metrics)
            .await?;
        let sets = selector_matchers(selectors)?;
        let name = name.to_string();
        self.run(Source::Raw, move |db, _, _| {
            let mut out = if sets.is_empty() {
                db.label_values(&name, &[])
            } else {
                Vec::new()
            };
            for ms in &sets {
                out.extend(db.label_values(&name, ms));
            }
            out.sort();
            out.dedup();
            Ok(out)
        })
        .await
    }
}

/// Each `match[]` selector as tsdb matchers.
fn selector_matchers(selectors: &[String]) -> Result<Vec<Vec<Matcher>>> {
    let mut out = Vec::new();
    for s in selectors {
        match promql::parse(s)? {
            promql_parser::parser::Expr::VectorSelector(vs) => {
                out.extend(Engine::selector_matchers(&vs)?);
            }
            _ => {
                return Err(MonitorError::BadData(format!(
                    "match[] takes series selectors, not {s:?}"
                )));
            }
        }
    }
    Ok(out)
}
