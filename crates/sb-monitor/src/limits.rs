//! Write limits: a samples-per-second budget (for the server and for each tenant) and each
//! tenant's active series. A tenant is the account that writes; time is passed in.

use sb_core::UserId;
use sb_tsdb::{Batch, Rejection};
use std::collections::HashMap;
use std::hash::BuildHasher;

/// A token bucket over samples.
pub(crate) struct SampleBudget {
    per_second: u64,
    tokens: f64,
    at_ms: i64,
}

impl SampleBudget {
    pub(crate) fn new(per_second: u64) -> Self {
        let per_second = per_second.max(1);
        Self {
            per_second,
            tokens: per_second as f64,
            at_ms: 0,
        }
    }

    /// Takes `n` samples, or says in how many seconds to retry.
    pub(crate) fn take(&mut self, n: u64, now_ms: i64) -> Result<(), u64> {
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

/// One tenant's budget and active series.
struct Usage {
    budget: SampleBudget,
    /// Hash of each series' labels → when the tenant last wrote it.
    series: HashMap<u64, i64>,
    pruned_at: i64,
}

pub(crate) struct TenantLimits {
    samples_per_second: u64,
    series_max: usize,
    /// A series not written for this long stops counting as active.
    active_ms: i64,
    hasher: std::collections::hash_map::RandomState,
    usage: HashMap<UserId, Usage>,
}

/// Why a tenant's write was refused as a whole.
pub(crate) struct OverRate {
    pub limit: u64,
    pub retry_after_secs: u64,
}

impl TenantLimits {
    pub(crate) fn new(samples_per_second: u64, series_max: usize, active_ms: i64) -> Self {
        Self {
            samples_per_second,
            series_max,
            active_ms: active_ms.max(1),
            hasher: Default::default(),
            usage: HashMap::new(),
        }
    }

    /// Charges the tenant for `samples`; the whole write is refused when over its rate.
    pub(crate) fn charge(
        &mut self,
        tenant: UserId,
        samples: u64,
        now: i64,
    ) -> Result<(), OverRate> {
        let per_second = self.samples_per_second;
        let usage = self.usage.entry(tenant).or_insert_with(|| Usage {
            budget: SampleBudget::new(per_second),
            series: HashMap::new(),
            pruned_at: now,
        });
        usage
            .budget
            .take(samples, now)
            .map_err(|retry_after_secs| OverRate {
                limit: per_second,
                retry_after_secs,
            })
    }

    /// Marks the batch's series active for the tenant; series that would take it past its
    /// limit are taken out of the batch and returned as refusals.
    pub(crate) fn admit_series(
        &mut self,
        tenant: UserId,
        tenant_name: &str,
        batch: &mut Batch,
        now: i64,
    ) -> Vec<Rejection> {
        let (max, active_ms) = (self.series_max, self.active_ms);
        let hasher = self.hasher.clone();
        let Some(usage) = self.usage.get_mut(&tenant) else {
            return Vec::new();
        };
        // Forget idle series now and then (a sweep is a pass over the tenant's series).
        if now - usage.pruned_at >= active_ms / 10 {
            usage.series.retain(|_, last| now - *last < active_ms);
            usage.pruned_at = now;
        }
        let mut refused = Vec::new();
        batch.retain(|(labels, points)| {
            if points.is_empty() {
                return true;
            }
            let key = hasher.hash_one(labels);
            let full = usage.series.len() >= max;
            match usage.series.get_mut(&key) {
                Some(last) => *last = now,
                None if full => {
                    refused.push(Rejection::TenantSeriesLimit {
                        tenant: tenant_name.to_string(),
                        series: labels.to_string(),
                        limit: max,
                    });
                    return false;
                }
                None => {
                    usage.series.insert(key, now);
                }
            }
            true
        });
        refused
    }

    /// Active series of a tenant, as last counted.
    #[cfg(test)]
    fn active(&self, tenant: UserId) -> usize {
        self.usage.get(&tenant).map_or(0, |u| u.series.len())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sb_tsdb::Labels;

    fn batch(names: &[&str]) -> Batch {
        names
            .iter()
            .map(|n| (Labels::from_pairs(&[("__name__", n)]), vec![(1, 1.0)]))
            .collect()
    }

    #[test]
    fn budget_refills_with_time_and_says_when_to_retry() {
        let mut b = SampleBudget::new(100);
        assert!(b.take(100, 0).is_ok());
        assert_eq!(b.take(50, 0), Err(1));
        assert!(b.take(50, 500).is_ok(), "half a second refills half");
        assert!(
            b.take(1_000, 10_000).is_ok(),
            "a batch over a second's budget waits, then goes"
        );
    }

    #[test]
    fn each_tenant_has_its_own_series_limit_and_idle_series_stop_counting() {
        let (alice, bob) = (
            UserId::new_at(sb_core::UnixMillis(1)),
            UserId::new_at(sb_core::UnixMillis(1)),
        );
        let mut t = TenantLimits::new(1_000, 2, 60_000);
        for who in [alice, bob] {
            t.charge(who, 3, 0).map_err(|_| ()).unwrap();
        }
        let mut b = batch(&["a", "b", "c"]);
        let refused = t.admit_series(alice, "alice", &mut b, 0);
        assert_eq!(b.len(), 2);
        assert_eq!(refused.len(), 1);
        assert!(
            refused[0]
                .to_string()
                .contains("monitoring.tenant_series_max"),
            "{}",
            refused[0]
        );
        // Known series keep going; bob has his own allowance.
        let mut again = batch(&["a", "b"]);
        assert!(t.admit_series(alice, "alice", &mut again, 1_000).is_empty());
        let mut bobs = batch(&["a", "b"]);
        assert!(t.admit_series(bob, "bob", &mut bobs, 1_000).is_empty());
        // An hour later alice's old series are idle: new ones fit.
        let mut later = batch(&["x", "y"]);
        assert!(
            t.admit_series(alice, "alice", &mut later, 3_600_000)
                .is_empty()
        );
        assert_eq!(t.active(alice), 2);
    }

    #[test]
    fn a_tenant_over_its_rate_is_refused_while_another_is_not() {
        let (alice, bob) = (
            UserId::new_at(sb_core::UnixMillis(1)),
            UserId::new_at(sb_core::UnixMillis(1)),
        );
        let mut t = TenantLimits::new(10, 100, 60_000);
        assert!(t.charge(alice, 10, 0).is_ok());
        let over = t.charge(alice, 5, 0).err().unwrap();
        assert_eq!((over.limit, over.retry_after_secs), (10, 1));
        assert!(t.charge(bob, 10, 0).is_ok());
    }
}
