//! Wall-clock instants as milliseconds since the Unix epoch.
//!
//! Lower crates never read the clock; callers pass a [`UnixMillis`] in, which keeps expiry and
//! rate-limit logic deterministic under test.

use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    pub fn plus(self, d: Duration) -> Self {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        UnixMillis(self.0.saturating_add(ms))
    }

    pub fn minus(self, d: Duration) -> Self {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        UnixMillis(self.0.saturating_sub(ms))
    }

    pub fn as_secs(self) -> i64 {
        self.0.div_euclid(1000)
    }
}
