//! Rate limiting with explicit time: keyed token buckets and exponential back-off after failures.
//!
//! Both structures hold at most `keys_max` keys. A full table first forgets keys that carry no
//! state worth keeping (a refilled bucket, an expired back-off); if that frees nothing, new keys
//! are refused — under a flood of distinct keys the limiter fails closed rather than growing.

use sb_core::UnixMillis;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

/// How long to wait before trying again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    pub fn secs_ceil(self) -> u64 {
        self.0.as_millis().div_ceil(1000).max(1) as u64
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: i64,
}

/// A token bucket per key: `capacity` requests at once, refilled at `capacity` per `period`.
pub struct KeyedLimiter<K> {
    capacity: f64,
    per_ms: f64,
    keys_max: usize,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Eq + Hash + Clone> KeyedLimiter<K> {
    pub fn new(capacity: u32, period: Duration, keys_max: usize) -> Self {
        let capacity = f64::from(capacity.max(1));
        let period_ms = (period.as_millis() as f64).max(1.0);
        Self {
            capacity,
            per_ms: capacity / period_ms,
            keys_max: keys_max.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refill(&self, b: &mut Bucket, now: UnixMillis) {
        let elapsed = (now.0 - b.updated).max(0) as f64;
        b.tokens = (b.tokens + elapsed * self.per_ms).min(self.capacity);
        b.updated = now.0.max(b.updated);
    }

    fn wait_for_one(&self, b: &Bucket) -> RetryAfter {
        let missing = (1.0 - b.tokens).max(0.0);
        RetryAfter(Duration::from_millis((missing / self.per_ms).ceil() as u64))
    }

    /// Takes one token for `key`, or says how long until one is available.
    pub fn check(&self, key: &K, now: UnixMillis) -> Result<(), RetryAfter> {
        self.take(key, now, true)
    }

    /// Like [`check`](Self::check) but takes nothing: is `key` currently over its limit?
    pub fn peek(&self, key: &K, now: UnixMillis) -> Result<(), RetryAfter> {
        self.take(key, now, false)
    }

    fn take(&self, key: &K, now: UnixMillis, consume: bool) -> Result<(), RetryAfter> {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(key) {
            if !consume {
                return Ok(());
            }
            if map.len() >= self.keys_max {
                let (cap, per_ms) = (self.capacity, self.per_ms);
                map.retain(|_, b| {
                    let elapsed = (now.0 - b.updated).max(0) as f64;
                    b.tokens + elapsed * per_ms < cap
                });
                if map.len() >= self.keys_max {
                    return Err(RetryAfter(Duration::from_secs(1)));
                }
            }
            map.insert(
                key.clone(),
                Bucket {
                    tokens: self.capacity,
                    updated: now.0,
                },
            );
        }
        let Some(b) = map.get_mut(key) else {
            return Ok(());
        };
        self.refill(b, now);
        if b.tokens >= 1.0 {
            if consume {
                b.tokens -= 1.0;
            }
            Ok(())
        } else {
            Err(self.wait_for_one(b))
        }
    }

    pub fn len(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    not_before: i64,
    last: i64,
}

/// After `threshold` consecutive failures for a key, each further attempt must wait
/// `base * 2^(failures - threshold)`, capped at `max`. A success clears the key.
pub struct FailureBackoff<K> {
    threshold: u32,
    base: Duration,
    max: Duration,
    keys_max: usize,
    map: Mutex<HashMap<K, Failures>>,
}

impl<K: Eq + Hash + Clone> FailureBackoff<K> {
    pub fn new(threshold: u32, base: Duration, max: Duration, keys_max: usize) -> Self {
        Self {
            threshold: threshold.max(1),
            base,
            max,
            keys_max: keys_max.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn check(&self, key: &K, now: UnixMillis) -> Result<(), RetryAfter> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(key) {
            Some(f) if f.not_before > now.0 => Err(RetryAfter(Duration::from_millis(
                (f.not_before - now.0) as u64,
            ))),
            _ => Ok(()),
        }
    }

    pub fn record_failure(&self, key: &K, now: UnixMillis) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(key) && map.len() >= self.keys_max {
            // Forget keys idle for longer than the longest back-off.
            let horizon = now.minus(self.max).0;
            map.retain(|_, f| f.last > horizon);
            if map.len() >= self.keys_max {
                return;
            }
        }
        let f = map.entry(key.clone()).or_insert(Failures {
            count: 0,
            not_before: 0,
            last: now.0,
        });
        f.count = f.count.saturating_add(1);
        f.last = now.0;
        if f.count >= self.threshold {
            let exp = (f.count - self.threshold).min(30);
            let delay = self.base.saturating_mul(1u32 << exp).min(self.max);
            f.not_before = now.plus(delay).0;
        }
    }

    pub fn record_success(&self, key: &K) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_capacity_then_refills() {
        let l = KeyedLimiter::new(3, Duration::from_secs(60), 10);
        let t = UnixMillis(0);
        for _ in 0..3 {
            assert!(l.check(&"ip", t).is_ok());
        }
        let wait = l.check(&"ip", t).unwrap_err();
        assert_eq!(wait, RetryAfter(Duration::from_secs(20)));
        assert!(l.check(&"other", t).is_ok(), "keys are independent");
        assert!(l.check(&"ip", UnixMillis(20_000)).is_ok());
        assert!(l.check(&"ip", UnixMillis(20_000)).is_err());
    }

    #[test]
    fn peek_takes_nothing() {
        let l = KeyedLimiter::new(1, Duration::from_secs(60), 10);
        assert!(l.peek(&1, UnixMillis(0)).is_ok());
        assert!(l.check(&1, UnixMillis(0)).is_ok());
        assert!(l.peek(&1, UnixMillis(0)).is_err());
    }

    #[test]
    fn full_table_forgets_idle_keys_then_fails_closed() {
        let l = KeyedLimiter::new(1, Duration::from_secs(1), 2);
        assert!(l.check(&1, UnixMillis(0)).is_ok());
        assert!(l.check(&2, UnixMillis(0)).is_ok());
        assert!(
            l.check(&3, UnixMillis(0)).is_err(),
            "no room and nothing idle"
        );
        assert!(
            l.check(&3, UnixMillis(5_000)).is_ok(),
            "idle keys forgotten"
        );
        assert!(l.len() <= 2);
    }

    #[test]
    fn backoff_doubles_after_threshold_and_clears_on_success() {
        let b = FailureBackoff::new(2, Duration::from_secs(1), Duration::from_secs(4), 10);
        let k = "alice";
        b.record_failure(&k, UnixMillis(0));
        assert!(b.check(&k, UnixMillis(0)).is_ok());
        b.record_failure(&k, UnixMillis(0));
        assert_eq!(
            b.check(&k, UnixMillis(0)),
            Err(RetryAfter(Duration::from_secs(1)))
        );
        b.record_failure(&k, UnixMillis(1_000));
        assert_eq!(
            b.check(&k, UnixMillis(1_000)),
            Err(RetryAfter(Duration::from_secs(2)))
        );
        for _ in 0..5 {
            b.record_failure(&k, UnixMillis(10_000));
        }
        assert_eq!(
            b.check(&k, UnixMillis(10_000)),
            Err(RetryAfter(Duration::from_secs(4))),
            "capped at max"
        );
        b.record_success(&k);
        assert!(b.check(&k, UnixMillis(10_000)).is_ok());
    }
}
