//! The monitoring service: authorized, rate-limited writes into sb-tsdb and PromQL queries
//! over it. Transport-free: `sb-server` maps HTTP onto these calls.

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
    #[error("over monitoring.samples_per_second_max ({limit}/s); retry in {retry_after_secs}s")]
    RateLimited { limit: u64, retry_after_secs: u64 },
    #[error("the query ran longer than monitoring.query_timeout_ms and was cancelled")]
    Timeout,
    #[error(transparent)]
    Storage(#[from] sb_tsdb::TsdbError),
    #[error("internal: {0}")]
    Internal(String),
}

pub type Result<T, E = MonitorError> = std::result::Result<T, E>;

/// A token bucket over samples, with time passed in.
struct SampleBudget {
    per_second: u64,
    tokens: f64,
    at_ms: i64,
}

impl SampleBudget {
    fn take(&mut self, n: u64, now_ms: i64) -> Result<(), u64> {
        let elapsed = (now_ms - self.at_ms).max(0) as f64 / 1000.0;
        let cap = self.per_second as f64;
        self.tokens = (self.tokens + elapsed * cap).min(cap);
        self.at_ms = now_ms;
        if n as f64 <= self.tokens {
            self.tokens -= n as f64;
            return Ok(());
        }
        // A batch larger than a second's budget waits for a full bucket, then goes through.
        let missing = (n as f64).min(cap) - self.tokens;
        if missing <= 0.0 {
            self.tokens = 0.0;
            return Ok(());
        }
        Err((missing / cap).ceil().max(1.0) as u64)
    }
}

pub struct Monitor {
    db: Arc<Tsdb>,
    auth: Arc<Auth>,
    cfg: MonitoringConfig,
    budget: Mutex<SampleBudget>,
}

impl Monitor {
    /// Opens the time-series store under `dir`, replaying its log.
    pub fn open(
        dir: &Path,
        cfg: MonitoringConfig,
        sync: bool,
        auth: Arc<Auth>,
    ) -> Result<(Self, Recovery)> {
        let (db, recovery) = Tsdb::open(
            dir,
            TsdbConfig {
                wal_segment_bytes: cfg.wal_segment_bytes,
                series_max: cfg.series_max,
                labels_per_series_max: cfg.labels_per_series_max,
                label_bytes_max: cfg.label_bytes_max,
                sync,
            },
        )?;
        let budget = Mutex::new(SampleBudget {
            per_second: cfg.samples_per_second_max.max(1),
            tokens: cfg.samples_per_second_max.max(1) as f64,
            at_ms: 0,
        });
        Ok((
            Self {
                db: Arc::new(db),
                auth,
                cfg,
                budget,
            },
            recovery,
        ))
    }

    pub fn config(&self) -> &MonitoringConfig {
        &self.cfg
    }

    pub fn db(&self) -> &Tsdb {
        &self.db
    }

    /// Stores samples; durable when this returns. Rejected samples (out of order, over the
    /// series limit) are listed in the outcome; the rest is stored.
    pub async fn write(&self, cx: Ctx<'_>, batch: Batch) -> Result<AppendOutcome> {
        self.auth
            .authorize(cx, Action::Create, &Resource::Metrics)
            .await?;
        let n: u64 = batch.iter().map(|(_, p)| p.len() as u64).sum();
        {
            let mut b = self.budget.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(retry_after_secs) = b.take(n, cx.now.0) {
                return Err(MonitorError::RateLimited {
                    limit: self.cfg.samples_per_second_max,
                    retry_after_secs,
                });
            }
        }
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.append(&batch))
            .await
            .map_err(|e| MonitorError::Internal(e.to_string()))?
            .map_err(MonitorError::from)
    }

    fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            lookback_ms: self.cfg.lookback_ms as i64,
            samples_max: self.cfg.query_samples_max,
            range_points_max: self.cfg.query_range_points_max,
            ..EngineConfig::default()
        }
    }

    /// Runs `f` on the blocking pool with the query timeout.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Tsdb, EngineConfig, &AtomicBool) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        let cfg = self.engine_config();
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

    /// An instant query at `t` (ms).
    pub async fn query(&self, cx: Ctx<'_>, q: &str, t: i64) -> Result<Value> {
        self.auth
            .authorize(cx, Action::Read, &Resource::Metrics)
            .await?;
        let expr = promql::parse(q)?;
        self.run(move |db, cfg, cancel| {
            Ok(Engine::new(db, cfg).with_cancel(cancel).instant(&expr, t)?)
        })
        .await
    }

    /// A range query from `start` to `end` every `step` (ms).
    pub async fn query_range(
        &self,
        cx: Ctx<'_>,
        q: &str,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<Vec<Series>> {
        self.auth
            .authorize(cx, Action::Read, &Resource::Metrics)
            .await?;
        let expr = promql::parse(q)?;
        self.run(move |db, cfg, cancel| {
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
        self.run(move |db, _, _| {
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
        self.run(move |db, _, _| {
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
        self.run(move |db, _, _| {
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
