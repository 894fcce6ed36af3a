//! sb-tsdb: the time-series engine behind monitoring and device telemetry.
//!
//! Series are identified by their [`Labels`] (metric name included). Samples go to a
//! write-ahead log ([`wal`]) and then into the in-memory head, where each series keeps sealed
//! Gorilla XOR chunks ([`chunk`]) and one open chunk. An inverted index maps each label pair to
//! its series. Appends are durable before they return (unless `sync` is off): concurrent
//! appenders share one fsync.
//!
//! No network and no clock: callers pass timestamps and "now".

pub mod chunk;
pub mod labels;
pub mod wal;

pub use labels::{Labels, METRIC_NAME, MatchOp, Matcher};

use chunk::{Chunk, ChunkWriter};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use wal::{Record, Repair, Wal};

/// `(timestamp ms, value)`.
pub type Point = (i64, f64);
/// Series with their points, as appends take them.
pub type Batch = Vec<(Labels, Vec<Point>)>;

#[derive(Clone, Debug)]
pub struct TsdbConfig {
    /// Size at which the log starts a new segment.
    pub wal_segment_bytes: u64,
    /// Series the head holds at most; new series beyond it are refused.
    pub series_max: usize,
    /// Labels per series at most.
    pub labels_per_series_max: usize,
    /// Bytes of one series' names and values at most.
    pub label_bytes_max: usize,
    /// Sync the log before an append returns (durable before acknowledged).
    pub sync: bool,
}

impl Default for TsdbConfig {
    fn default() -> Self {
        Self {
            wal_segment_bytes: 128 << 20,
            series_max: 1_000_000,
            labels_per_series_max: 64,
            label_bytes_max: 8 << 10,
            sync: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TsdbError {
    #[error("time-series storage: {0}")]
    Io(#[from] std::io::Error),
}

/// Why one series' samples were not stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Older than (or at) the series' newest sample with a different value.
    OutOfOrder { series: String, t: i64 },
    /// The head is at `series_max`.
    SeriesLimit { series: String, limit: usize },
    /// No metric name, too many labels, or too many label bytes.
    InvalidLabels { series: String, reason: String },
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::OutOfOrder { series, t } => {
                write!(f, "out of order sample at {t} for {series}")
            }
            Rejection::SeriesLimit { series, limit } => write!(
                f,
                "series limit of {limit} reached; {series} was not created (raise tsdb.series_max)"
            ),
            Rejection::InvalidLabels { series, reason } => write!(f, "{series}: {reason}"),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    pub samples: usize,
    pub new_series: usize,
    /// Samples at the same time and with the same value as the newest: kept once.
    pub duplicates: usize,
    pub rejected: Vec<Rejection>,
}

/// One series and its samples in a time range.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesSamples {
    pub labels: Labels,
    pub samples: Vec<(i64, f64)>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub series: usize,
    pub chunks: usize,
    pub chunk_bytes: usize,
    pub samples: u64,
}

struct MemSeries {
    labels: Labels,
    sealed: Vec<Chunk>,
    open: ChunkWriter,
    last: Option<(i64, f64)>,
}

#[derive(Default)]
struct Head {
    series: Vec<Option<MemSeries>>,
    by_labels: HashMap<Labels, u32>,
    /// name → value → series ids, ascending.
    postings: BTreeMap<String, BTreeMap<String, Vec<u32>>>,
    samples: u64,
}

impl Head {
    fn add_series(&mut self, id: u32, labels: Labels) {
        let i = id as usize;
        if self.series.len() <= i {
            self.series.resize_with(i + 1, || None);
        }
        for (n, v) in labels.iter() {
            let list = self
                .postings
                .entry(n.to_string())
                .or_default()
                .entry(v.to_string())
                .or_default();
            if let Err(pos) = list.binary_search(&id) {
                list.insert(pos, id);
            }
        }
        self.by_labels.insert(labels.clone(), id);
        self.series[i] = Some(MemSeries {
            labels,
            sealed: Vec::new(),
            open: ChunkWriter::default(),
            last: None,
        });
    }

    fn push(&mut self, id: u32, t: i64, v: f64) -> bool {
        let Some(Some(s)) = self.series.get_mut(id as usize) else {
            return false;
        };
        if s.last.is_some_and(|(lt, _)| t <= lt) {
            return false;
        }
        if s.open.is_full() {
            s.sealed.push(s.open.seal());
            s.open = ChunkWriter::default();
        }
        s.open.push(t, v);
        s.last = Some((t, v));
        self.samples += 1;
        true
    }

    /// Series ids matching every matcher, ascending.
    fn matching(&self, matchers: &[Matcher]) -> Vec<u32> {
        let all = || -> Vec<u32> {
            self.series
                .iter()
                .enumerate()
                .filter(|(_, s)| s.is_some())
                .map(|(i, _)| i as u32)
                .collect()
        };
        let mut result: Option<Vec<u32>> = None;
        // Matchers that need a non-empty value narrow fastest: apply them first.
        let mut order: Vec<&Matcher> = matchers.iter().collect();
        order.sort_by_key(|m| m.matches(""));
        for m in order {
            let values = self.postings.get(&m.name);
            let ids: Vec<u32> = if m.matches("") {
                // Also matches series without the label: all but those with a failing value.
                let mut excluded: Vec<u32> = values
                    .into_iter()
                    .flatten()
                    .filter(|(v, _)| !m.matches(v))
                    .flat_map(|(_, ids)| ids.iter().copied())
                    .collect();
                excluded.sort_unstable();
                let base = result.take().unwrap_or_else(all);
                base.into_iter()
                    .filter(|id| excluded.binary_search(id).is_err())
                    .collect()
            } else {
                let mut ids: Vec<u32> = match (m.op, values) {
                    (_, None) => Vec::new(),
                    (MatchOp::Equal, Some(vals)) => vals.get(&m.value).cloned().unwrap_or_default(),
                    (_, Some(vals)) => vals
                        .iter()
                        .filter(|(v, _)| m.matches(v))
                        .flat_map(|(_, ids)| ids.iter().copied())
                        .collect(),
                };
                ids.sort_unstable();
                ids.dedup();
                match result.take() {
                    None => ids,
                    Some(base) => intersect(&base, &ids),
                }
            };
            result = Some(ids);
        }
        result.unwrap_or_else(all)
    }
}

fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

struct Writer {
    wal: Wal,
    /// Appends written to the log so far.
    written: u64,
}

pub struct Tsdb {
    cfg: TsdbConfig,
    writer: Mutex<Writer>,
    head: RwLock<Head>,
    /// Appends known to be on disk.
    synced: Mutex<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What opening the database found in its log.
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    pub series: usize,
    pub samples: u64,
    /// Samples for series the log never declared (skipped).
    pub orphan_samples: u64,
    pub repair: Option<Repair>,
}

impl Tsdb {
    /// Opens (or creates) the database in `dir`, replaying its log into memory.
    pub fn open(dir: &Path, cfg: TsdbConfig) -> Result<(Self, Recovery), TsdbError> {
        let mut head = Head::default();
        let mut recovery = Recovery::default();
        let (wal, repair) = Wal::open(&dir.join("wal"), cfg.wal_segment_bytes, |r| match r {
            Record::Series { id, labels } => {
                if let Ok(id) = u32::try_from(id) {
                    head.add_series(id, labels);
                    recovery.series += 1;
                }
            }
            Record::Samples(samples) => {
                for (id, t, v) in samples {
                    let known = u32::try_from(id).is_ok_and(|id| head.push(id, t, v));
                    if known {
                        recovery.samples += 1;
                    } else {
                        recovery.orphan_samples += 1;
                    }
                }
            }
        })?;
        if let Some(r) = &repair {
            tracing::warn!(
                segment = %r.segment.display(), offset = r.offset, bytes_dropped = r.bytes_dropped,
                reason = %r.reason,
                "time-series log had a damaged tail; it was cut there and what followed is lost"
            );
        }
        recovery.repair = repair;
        Ok((
            Self {
                cfg,
                writer: Mutex::new(Writer { wal, written: 0 }),
                head: RwLock::new(head),
                synced: Mutex::new(0),
            },
            recovery,
        ))
    }

    fn read(&self) -> RwLockReadGuard<'_, Head> {
        self.head.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Head> {
        self.head.write().unwrap_or_else(|e| e.into_inner())
    }

    fn check_labels(&self, labels: &Labels) -> Option<String> {
        if labels.metric_name().is_none() {
            return Some("a series needs a metric name (__name__)".into());
        }
        if labels.len() > self.cfg.labels_per_series_max {
            return Some(format!(
                "more than {} labels",
                self.cfg.labels_per_series_max
            ));
        }
        if labels.byte_len() > self.cfg.label_bytes_max {
            return Some(format!(
                "labels longer than {} bytes",
                self.cfg.label_bytes_max
            ));
        }
        None
    }

    /// Appends samples (each series' in time order). Out-of-order samples and series over the
    /// limits are rejected one by one; the rest is stored and durable when this returns.
    pub fn append(&self, batch: &[(Labels, Vec<(i64, f64)>)]) -> Result<AppendOutcome, TsdbError> {
        let mut out = AppendOutcome::default();
        let mut records = Vec::new();
        let mut samples: Vec<(u64, i64, f64)> = Vec::new();
        let mut new_series: Vec<(u32, Labels)> = Vec::new();
        let mut writer = lock(&self.writer);
        {
            let head = self.read();
            let mut pending: HashMap<&Labels, (u32, Option<i64>)> = HashMap::new();
            let mut next_id = head.series.len() as u32;
            for (labels, points) in batch {
                if let Some(reason) = self.check_labels(labels) {
                    out.rejected.push(Rejection::InvalidLabels {
                        series: labels.to_string(),
                        reason,
                    });
                    continue;
                }
                let (id, mut last) = match pending.get(labels) {
                    Some(&(id, last)) => (id, last.map(|t| (t, f64::NAN))),
                    None => match head.by_labels.get(labels) {
                        Some(&id) => (id, head.series[id as usize].as_ref().and_then(|s| s.last)),
                        None => {
                            let live = head.by_labels.len() + new_series.len();
                            if live >= self.cfg.series_max {
                                out.rejected.push(Rejection::SeriesLimit {
                                    series: labels.to_string(),
                                    limit: self.cfg.series_max,
                                });
                                continue;
                            }
                            let id = next_id;
                            next_id += 1;
                            new_series.push((id, labels.clone()));
                            records.push(Record::Series {
                                id: u64::from(id),
                                labels: labels.clone(),
                            });
                            (id, None)
                        }
                    },
                };
                for &(t, v) in points {
                    match last {
                        Some((lt, lv)) if t == lt && v.to_bits() == lv.to_bits() => {
                            out.duplicates += 1;
                        }
                        Some((lt, _)) if t <= lt => {
                            out.rejected.push(Rejection::OutOfOrder {
                                series: labels.to_string(),
                                t,
                            });
                        }
                        _ => {
                            samples.push((u64::from(id), t, v));
                            last = Some((t, v));
                        }
                    }
                }
                pending.insert(labels, (id, last.map(|(t, _)| t)));
            }
        }
        out.samples = samples.len();
        out.new_series = new_series.len();
        if samples.is_empty() && new_series.is_empty() {
            return Ok(out);
        }
        if !samples.is_empty() {
            records.push(Record::Samples(samples.clone()));
        }
        let mut encoded = Vec::new();
        for r in &records {
            wal::encode(r, &mut encoded);
        }
        writer.wal.write(&encoded)?;
        writer.written += 1;
        let mine = writer.written;
        let handle = if self.cfg.sync {
            Some(writer.wal.sync_handle()?)
        } else {
            None
        };
        {
            let mut head = self.write();
            for (id, labels) in new_series {
                head.add_series(id, labels);
            }
            for (id, t, v) in samples {
                head.push(id as u32, t, v);
            }
        }
        drop(writer);
        if let Some(file) = handle {
            self.sync_through(mine, &file)?;
        }
        Ok(out)
    }

    /// Syncs the log unless another appender's sync already covered append number `mine`.
    fn sync_through(&self, mine: u64, file: &File) -> Result<(), TsdbError> {
        let mut synced = lock(&self.synced);
        if *synced >= mine {
            return Ok(());
        }
        let through = lock(&self.writer).written;
        file.sync_data()?;
        *synced = through.max(*synced);
        Ok(())
    }

    /// Series matching every matcher with their samples in `[mint, maxt]`.
    pub fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<SeriesSamples> {
        let head = self.read();
        let mut out = Vec::new();
        for id in head.matching(matchers) {
            let Some(Some(s)) = head.series.get(id as usize) else {
                continue;
            };
            let mut samples = Vec::new();
            let chunks = s
                .sealed
                .iter()
                .filter(|c| c.max_t >= mint && c.min_t <= maxt)
                .map(|c| c.iter());
            let open = (s.open.count() > 0 && s.open.max_t() >= mint && s.open.min_t() <= maxt)
                .then(|| s.open.iter());
            for it in chunks.chain(open) {
                for (t, v) in it.map_while(Result::ok) {
                    if t >= mint && t <= maxt {
                        samples.push((t, v));
                    }
                }
            }
            if !samples.is_empty() {
                out.push(SeriesSamples {
                    labels: s.labels.clone(),
                    samples,
                });
            }
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }

    /// Labels of the series matching every matcher (all series when there are none).
    pub fn series(&self, matchers: &[Matcher]) -> Vec<Labels> {
        let head = self.read();
        let mut out: Vec<Labels> = head
            .matching(matchers)
            .into_iter()
            .filter_map(|id| {
                head.series
                    .get(id as usize)?
                    .as_ref()
                    .map(|s| s.labels.clone())
            })
            .collect();
        out.sort();
        out
    }

    /// Label names in use by the matching series, sorted.
    pub fn label_names(&self, matchers: &[Matcher]) -> Vec<String> {
        if matchers.is_empty() {
            return self.read().postings.keys().cloned().collect();
        }
        let mut names: Vec<String> = self
            .series(matchers)
            .iter()
            .flat_map(|l| l.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Values of label `name` among the matching series, sorted.
    pub fn label_values(&self, name: &str, matchers: &[Matcher]) -> Vec<String> {
        if matchers.is_empty() {
            return self
                .read()
                .postings
                .get(name)
                .map(|v| v.keys().cloned().collect())
                .unwrap_or_default();
        }
        let mut values: Vec<String> = self
            .series(matchers)
            .iter()
            .filter_map(|l| l.get(name).map(str::to_string))
            .collect();
        values.sort();
        values.dedup();
        values
    }

    pub fn stats(&self) -> Stats {
        let head = self.read();
        let mut st = Stats {
            samples: head.samples,
            ..Stats::default()
        };
        for s in head.series.iter().flatten() {
            st.series += 1;
            st.chunks += s.sealed.len() + usize::from(s.open.count() > 0);
            st.chunk_bytes +=
                s.sealed.iter().map(|c| c.bytes.len()).sum::<usize>() + s.open.bytes_len();
        }
        st
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs)
    }

    #[test]
    fn appends_select_by_matchers_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let up_api = l(&[("__name__", "up"), ("job", "api")]);
        let up_db = l(&[("__name__", "up"), ("job", "db"), ("zone", "b")]);
        {
            let (db, rec) = Tsdb::open(dir.path(), TsdbConfig::default()).unwrap();
            assert_eq!(rec.samples, 0);
            let points: Vec<(i64, f64)> = (0..300).map(|i| (i * 1000, i as f64)).collect();
            let out = db
                .append(&[
                    (up_api.clone(), points.clone()),
                    (up_db.clone(), vec![(5, 1.0)]),
                ])
                .unwrap();
            assert_eq!((out.samples, out.new_series), (301, 2));
            let got = db.select(&[Matcher::equal("job", "api")], 10_000, 20_000);
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].samples.len(), 11);
            assert_eq!(
                db.stats().chunks,
                4,
                "300 samples: two sealed chunks, one open; plus db"
            );
        }
        let (db, rec) = Tsdb::open(dir.path(), TsdbConfig::default()).unwrap();
        assert_eq!((rec.series, rec.samples), (2, 301));
        let all = db.select(&[Matcher::equal("__name__", "up")], i64::MIN, i64::MAX);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].samples.len(), 300);
        let no_zone = Matcher::new("zone", MatchOp::Equal, "").unwrap();
        assert_eq!(db.series(&[no_zone]), vec![up_api.clone()]);
        let re = Matcher::new("job", MatchOp::NotRegex, "a.*").unwrap();
        assert_eq!(db.series(&[re]), vec![up_db]);
        assert_eq!(db.label_values("job", &[]), vec!["api", "db"]);
        assert_eq!(db.label_names(&[]), vec!["__name__", "job", "zone"]);
    }

    #[test]
    fn out_of_order_and_over_limit_are_rejected_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TsdbConfig {
            series_max: 1,
            ..TsdbConfig::default()
        };
        let (db, _) = Tsdb::open(dir.path(), cfg).unwrap();
        let a = l(&[("__name__", "a")]);
        let out = db
            .append(&[(a.clone(), vec![(10, 1.0), (10, 1.0), (5, 2.0), (20, 3.0)])])
            .unwrap();
        assert_eq!((out.samples, out.duplicates), (2, 1));
        assert_eq!(
            out.rejected,
            vec![Rejection::OutOfOrder {
                series: a.to_string(),
                t: 5
            }]
        );
        let out = db
            .append(&[
                (l(&[("__name__", "b")]), vec![(1, 1.0)]),
                (a.clone(), vec![(20, 3.0)]),
            ])
            .unwrap();
        assert!(matches!(out.rejected[0], Rejection::SeriesLimit { .. }));
        assert_eq!(out.duplicates, 1);
        let out = db.append(&[(l(&[("job", "x")]), vec![(1, 1.0)])]).unwrap();
        assert!(matches!(out.rejected[0], Rejection::InvalidLabels { .. }));
    }
}
