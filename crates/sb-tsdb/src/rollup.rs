//! Downsampled rollups: each series summarised per fixed bucket (5 minutes, 1 hour, …) as its
//! minimum, maximum, sum and count, kept in a database of their own with a longer retention
//! than the raw samples.
//!
//! A rollup database (a "tier") holds one series per raw series, with the same labels. A
//! bucket `[b, b + resolution)` is four samples: min at `b`, max at `b + 1`, sum at `b + 2` and
//! count at `b + 3` (milliseconds; resolutions are at least a second), so a tier costs one
//! series per raw series, not four. [`demux`] takes one aggregate back out. A bucket is stored
//! once it is complete: the series has a sample at or after its end (samples arrive in order),
//! or its end is `settle_ms` in the past. Each bucket is written once; a series' newest sample
//! in the tier says how far it has been rolled up, so the work survives restarts without a
//! bookkeeping file. NaN samples (staleness markers) are left out.

use crate::{Labels, Point, Tsdb, TsdbError};

/// The selector label a query names an aggregate with (`x{__rollup__="max"}`); it is never
/// stored.
pub const ROLLUP_LABEL: &str = "__rollup__";

/// The aggregates kept per bucket, in their order within a bucket (and the values of
/// [`ROLLUP_LABEL`]).
pub const AGGREGATES: [&str; 4] = ["min", "max", "sum", "count"];

/// Smallest resolution: a bucket's four samples need distinct milliseconds well inside it.
pub const RESOLUTION_MIN_MS: i64 = 1000;

/// One aggregate's samples out of a tier series' samples, stamped at their bucket's start.
pub fn demux(samples: &[Point], resolution: i64, aggregate: usize) -> Vec<Point> {
    samples
        .iter()
        .filter(|p| (p.0 - bucket_start(p.0, resolution)) as usize == aggregate)
        .map(|p| (p.0 - aggregate as i64, p.1))
        .collect()
}

/// One complete bucket of one series.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    pub start: i64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub count: f64,
}

impl Bucket {
    fn values(&self) -> [f64; 4] {
        [self.min, self.max, self.sum, self.count]
    }
}

/// Start of the bucket holding `t`.
pub fn bucket_start(t: i64, resolution: i64) -> i64 {
    t.div_euclid(resolution) * resolution
}

/// Summarises `points` (in time order) per bucket; buckets with no number are skipped.
pub fn aggregate(points: &[Point], resolution: i64) -> Vec<Bucket> {
    let mut out: Vec<Bucket> = Vec::new();
    for &(t, v) in points.iter().filter(|p| !p.1.is_nan()) {
        let start = bucket_start(t, resolution);
        match out.last_mut() {
            Some(b) if b.start == start => {
                b.min = b.min.min(v);
                b.max = b.max.max(v);
                b.sum += v;
                b.count += 1.0;
            }
            _ => out.push(Bucket {
                start,
                min: v,
                max: v,
                sum: v,
                count: 1.0,
            }),
        }
    }
    out
}

/// What one pass wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RollupStats {
    pub series: usize,
    pub buckets: usize,
}

/// Rolls every series of `raw` up into `tier` through the buckets complete at `now`.
/// Idempotent: buckets already in the tier are not read again.
pub fn roll_up(
    raw: &Tsdb,
    tier: &Tsdb,
    resolution: i64,
    now: i64,
    settle_ms: i64,
) -> Result<RollupStats, TsdbError> {
    let resolution = resolution.max(RESOLUTION_MIN_MS);
    let settled = bucket_start(now.saturating_sub(settle_ms), resolution);
    let mut st = RollupStats::default();
    let mut batch = Vec::new();
    let mut pending = 0;
    for (id, labels, last) in raw.series_heads() {
        let Some(last) = last else { continue };
        // Buckets ending at or before this are complete.
        let complete_end = bucket_start(last, resolution).max(settled.min(last + 1));
        let from = match tier.last_time(&labels) {
            Some(done) => bucket_start(done, resolution) + resolution,
            None => i64::MIN,
        };
        if from >= complete_end {
            continue;
        }
        let Some(data) = raw.read_series(id, &labels, from, complete_end - 1) else {
            continue;
        };
        let buckets = aggregate(&data.samples, resolution);
        if buckets.is_empty() {
            continue;
        }
        st.series += 1;
        st.buckets += buckets.len();
        pending += buckets.len() * AGGREGATES.len();
        let points: Vec<Point> = buckets
            .iter()
            .flat_map(|b| {
                b.values()
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (b.start + i as i64, v))
            })
            .collect();
        // The tier shares the raw series' label set (one copy in memory).
        batch.push((labels, points));
        if pending >= 50_000 {
            write(tier, &mut batch)?;
            pending = 0;
        }
    }
    write(tier, &mut batch)?;
    Ok(st)
}

fn write(tier: &Tsdb, batch: &mut Vec<(Labels, Vec<Point>)>) -> Result<(), TsdbError> {
    if batch.is_empty() {
        return Ok(());
    }
    let out = tier.append(batch)?;
    if let Some(first) = out.rejected.first() {
        tracing::warn!(first = %first, count = out.rejected.len(), "rollup samples refused");
    }
    batch.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{Matcher, TsdbConfig};

    const MIN5: i64 = 300_000;

    fn rolled(tier: &Tsdb, agg: &str) -> Vec<Point> {
        let got = tier.select(&[Matcher::equal("__name__", "cpu")], i64::MIN, i64::MAX);
        assert!(got.len() <= 1);
        let i = AGGREGATES.iter().position(|a| *a == agg).unwrap();
        got.into_iter()
            .flat_map(|s| demux(&s.samples, MIN5, i))
            .collect()
    }

    #[test]
    fn buckets_hold_min_max_sum_count_and_skip_nan() {
        let points = [
            (0, 4.0),
            (60_000, 1.0),
            (299_999, f64::NAN),
            (300_000, 7.0),
            (900_000, -2.0),
        ];
        let b = aggregate(&points, MIN5);
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].values(), [1.0, 4.0, 5.0, 2.0]);
        assert_eq!((b[1].start, b[1].values()), (300_000, [7.0, 7.0, 7.0, 1.0]));
        assert_eq!(b[2].start, 900_000);
        assert_eq!(bucket_start(-1, MIN5), -MIN5);
    }

    #[test]
    fn complete_buckets_are_written_once_and_open_ones_wait() {
        let dir = tempfile::tempdir().unwrap();
        let (raw, _) = Tsdb::open(&dir.path().join("raw"), TsdbConfig::default()).unwrap();
        let (tier, _) = Tsdb::open(&dir.path().join("5m"), TsdbConfig::default()).unwrap();
        let cpu = Labels::from_pairs(&[("__name__", "cpu"), ("host", "a")]);
        // One sample a minute, 0..=11 min, value = minute.
        let points: Vec<Point> = (0..12).map(|m| (m * 60_000, m as f64)).collect();
        raw.append(&[(cpu.clone(), points)]).unwrap();
        let now = 11 * 60_000;
        let st = roll_up(&raw, &tier, MIN5, now, 3_600_000).unwrap();
        // Buckets 0–5 and 5–10 min are complete (a sample at 10 and 11 min exists); 10–15 is not.
        assert_eq!(
            st,
            RollupStats {
                series: 1,
                buckets: 2
            }
        );
        assert_eq!(rolled(&tier, "min"), vec![(0, 0.0), (MIN5, 5.0)]);
        assert_eq!(rolled(&tier, "max"), vec![(0, 4.0), (MIN5, 9.0)]);
        assert_eq!(rolled(&tier, "sum"), vec![(0, 10.0), (MIN5, 35.0)]);
        assert_eq!(rolled(&tier, "count"), vec![(0, 5.0), (MIN5, 5.0)]);
        let again = roll_up(&raw, &tier, MIN5, now, 3_600_000).unwrap();
        assert_eq!(again, RollupStats::default(), "nothing is rolled twice");
        // The series goes quiet: once settled, its last bucket is complete too.
        let later = 11 * 60_000 + 2 * 3_600_000;
        let st = roll_up(&raw, &tier, MIN5, later, 3_600_000).unwrap();
        assert_eq!(st.buckets, 1);
        assert_eq!(rolled(&tier, "sum").last(), Some(&(2 * MIN5, 21.0)));
        assert_eq!(
            tier.series(&[Matcher::equal("host", "a")]),
            vec![cpu.clone()]
        );
        // Reopened, the tier builds its own label sets; it can share the raw ones again.
        drop(tier);
        let (tier, _) = Tsdb::open(&dir.path().join("5m"), TsdbConfig::default()).unwrap();
        let raw_set = raw.series(&[]).remove(0);
        assert_ne!(tier.series(&[]).remove(0).shared_id(), raw_set.shared_id());
        tier.share_labels_with(&raw);
        assert_eq!(tier.series(&[]).remove(0).shared_id(), raw_set.shared_id());
        assert_eq!(
            rolled(&tier, "count").len(),
            3,
            "and its buckets survive the reopen"
        );
    }
}
