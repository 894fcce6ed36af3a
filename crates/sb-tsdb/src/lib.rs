//! sb-tsdb: the time-series engine behind monitoring and device telemetry.
//!
//! Series are identified by their [`Labels`] (metric name included). Samples go to a
//! write-ahead log ([`wal`]) and then into the in-memory head, where each series keeps sealed
//! Gorilla XOR chunks ([`chunk`]) and one open chunk. An inverted index maps each label pair to
//! its series. Appends are durable before they return (unless `sync` is off): concurrent
//! appenders share one fsync.
//!
//! No network and no clock: callers pass timestamps and "now".

pub mod checkpoint;
pub mod chunk;
pub mod chunkfile;
pub mod labels;
pub mod rollup;
pub mod wal;

pub use labels::{Labels, LabelsMap, METRIC_NAME, MatchOp, Matcher};

use chunk::{Chunk, ChunkWriter};
use chunkfile::{ChunkFiles, DiskRef};
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
    /// Samples older than this are dropped at checkpoints (0: kept forever).
    pub retention_ms: i64,
    /// Chunk files, log and checkpoint together are kept under this many bytes by dropping the
    /// oldest chunk files at checkpoints (0: no limit).
    pub retention_bytes: u64,
    /// Size at which a new chunk file is started.
    pub chunk_file_bytes: u64,
    /// An open chunk with no sample newer than this is sealed at a checkpoint.
    pub head_chunk_max_age_ms: i64,
    /// At checkpoints, a series' chunks on disk within one window of this span (aligned to
    /// multiples of it, complete and older than `head_chunk_max_age_ms`) are merged into one,
    /// so the references kept in memory grow with the retention in windows, not chunks
    /// (0: never).
    pub compact_span_ms: i64,
}

impl Default for TsdbConfig {
    fn default() -> Self {
        Self {
            wal_segment_bytes: 128 << 20,
            series_max: 1_000_000,
            labels_per_series_max: 64,
            label_bytes_max: 8 << 10,
            sync: true,
            retention_ms: 15 * 24 * 3_600_000,
            retention_bytes: 0,
            chunk_file_bytes: 128 << 20,
            head_chunk_max_age_ms: 3_600_000,
            compact_span_ms: 24 * 3_600_000,
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
    /// Older than the retention period: it would be dropped at once.
    TooOld { series: String, t: i64 },
    /// The writing tenant is at its active-series limit.
    TenantSeriesLimit {
        tenant: String,
        series: String,
        limit: usize,
    },
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
            Rejection::TenantSeriesLimit {
                tenant,
                series,
                limit,
            } => write!(
                f,
                "tenant {tenant} has {limit} active series (monitoring.tenant_series_max); {series} was not created"
            ),
            Rejection::TooOld { series, t } => write!(
                f,
                "sample at {t} for {series} is older than the retention period (monitoring.retention_ms)"
            ),
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
    /// Chunk bytes held in memory (open chunks and sealed ones not yet written out).
    pub chunk_bytes: usize,
    /// Chunks on disk.
    pub disk_chunks: usize,
    pub samples: u64,
}

/// What one checkpoint did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    pub chunks_written: usize,
    pub chunk_bytes_written: u64,
    pub series_dropped: usize,
    pub chunks_dropped: usize,
    pub files_removed: usize,
    /// Chunks merged into fewer, larger ones (see `compact_span_ms`), and how many they made.
    pub chunks_compacted: usize,
    pub compacted_into: usize,
    /// Chunk files, log and checkpoint afterwards.
    pub disk_bytes: u64,
}

#[derive(Clone, Debug)]
enum Sealed {
    Mem(Chunk),
    Disk(DiskRef),
}

impl Sealed {
    fn min_t(&self) -> i64 {
        match self {
            Sealed::Mem(c) => c.min_t,
            Sealed::Disk(d) => d.min_t,
        }
    }

    fn max_t(&self) -> i64 {
        match self {
            Sealed::Mem(c) => c.max_t,
            Sealed::Disk(d) => d.max_t,
        }
    }
}

struct MemSeries {
    labels: Labels,
    sealed: Vec<Sealed>,
    open: ChunkWriter,
    last: Option<(i64, f64)>,
}

#[derive(Default)]
struct Head {
    series: Vec<Option<MemSeries>>,
    /// Series ids by their labels' hash (the labels themselves are in `series`).
    by_labels: hashbrown::HashTable<u32>,
    /// name → value → series ids, ascending.
    postings: BTreeMap<String, BTreeMap<String, Vec<u32>>>,
    samples: u64,
}

impl Head {
    fn add_series(&mut self, id: u32, labels: Labels) {
        self.remove_series(id);
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
        let hash = labels.hash_value();
        self.series[i] = Some(MemSeries {
            labels,
            sealed: Vec::new(),
            open: ChunkWriter::default(),
            last: None,
        });
        let Head {
            series, by_labels, ..
        } = self;
        by_labels.insert_unique(hash, id, |&x| series_hash(series, x));
    }

    /// The id of the series with these labels.
    fn id_of(&self, labels: &Labels) -> Option<u32> {
        self.by_labels
            .find(labels.hash_value(), |&x| {
                self.labels_of(x).is_some_and(|l| l == labels)
            })
            .copied()
    }

    fn labels_of(&self, id: u32) -> Option<&Labels> {
        self.series.get(id as usize)?.as_ref().map(|s| &s.labels)
    }

    fn push(&mut self, id: u32, t: i64, v: f64) -> bool {
        let Some(Some(s)) = self.series.get_mut(id as usize) else {
            return false;
        };
        if s.last.is_some_and(|(lt, _)| t <= lt) {
            return false;
        }
        if s.open.is_full() {
            s.sealed.push(Sealed::Mem(s.open.seal()));
            s.open = ChunkWriter::default();
        }
        s.open.push(t, v);
        s.last = Some((t, v));
        self.samples += 1;
        true
    }

    fn remove_series(&mut self, id: u32) {
        let Some(slot) = self.series.get_mut(id as usize) else {
            return;
        };
        let Some(s) = slot.take() else { return };
        if let Ok(entry) = self
            .by_labels
            .find_entry(s.labels.hash_value(), |&x| x == id)
        {
            entry.remove();
        }
        for (n, v) in s.labels.iter() {
            if let Some(values) = self.postings.get_mut(n) {
                if let Some(list) = values.get_mut(v) {
                    list.retain(|x| *x != id);
                    if list.is_empty() {
                        values.remove(v);
                    }
                }
                if values.is_empty() {
                    self.postings.remove(n);
                }
            }
        }
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

/// One series' samples in `[mint, maxt]`, from memory and chunk files; `None` when it has none.
fn series_samples(
    s: &MemSeries,
    files: &ChunkFiles,
    mint: i64,
    maxt: i64,
) -> Option<SeriesSamples> {
    let mut samples = Vec::new();
    let mut keep = |t: i64, v: f64| {
        if t >= mint && t <= maxt {
            samples.push((t, v));
        }
    };
    for c in s
        .sealed
        .iter()
        .filter(|c| c.max_t() >= mint && c.min_t() <= maxt)
    {
        match c {
            Sealed::Mem(c) => c.iter().map_while(Result::ok).for_each(|(t, v)| keep(t, v)),
            Sealed::Disk(d) => match files.read(d) {
                Ok(c) => c.iter().map_while(Result::ok).for_each(|(t, v)| keep(t, v)),
                Err(e) => {
                    tracing::error!(error = %e, series = %s.labels, "a chunk could not be read; its samples are left out")
                }
            },
        }
    }
    if s.open.count() > 0 && s.open.max_t() >= mint && s.open.min_t() <= maxt {
        s.open
            .iter()
            .map_while(Result::ok)
            .for_each(|(t, v)| keep(t, v));
    }
    (!samples.is_empty()).then(|| SeriesSamples {
        labels: s.labels.clone(),
        samples,
    })
}

fn series_hash(series: &[Option<MemSeries>], id: u32) -> u64 {
    series
        .get(id as usize)
        .and_then(Option::as_ref)
        .map_or(0, |s| s.labels.hash_value())
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
    dir: std::path::PathBuf,
    writer: Mutex<Writer>,
    head: RwLock<Head>,
    /// Appends known to be on disk.
    synced: Mutex<u64>,
    files: RwLock<ChunkFiles>,
    /// One checkpoint at a time.
    checkpointing: Mutex<()>,
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
        std::fs::create_dir_all(dir)?;
        let mut head = Head::default();
        let mut recovery = Recovery::default();
        let files = ChunkFiles::open(&dir.join("chunks"), cfg.chunk_file_bytes)?;
        let mut wal_from = 0;
        if let Some(snap) = checkpoint::read(dir)? {
            wal_from = snap.wal_from;
            for se in snap.series {
                head.add_series(se.id, se.labels);
                if let Some(Some(s)) = head.series.get_mut(se.id as usize) {
                    s.sealed = se.chunks.into_iter().map(Sealed::Disk).collect();
                    s.last = s.sealed.last().map(|c| (c.max_t(), f64::NAN));
                }
                recovery.series += 1;
                if let Some((bytes, count)) = se.open {
                    for (t, v) in chunk::ChunkIter::new(&bytes, count).map_while(Result::ok) {
                        head.push(se.id, t, v);
                        recovery.samples += 1;
                    }
                }
            }
        }
        let (wal, repair) = Wal::open_from(
            &dir.join("wal"),
            cfg.wal_segment_bytes,
            wal_from,
            |r| match r {
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
            },
        )?;
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
                dir: dir.to_path_buf(),
                writer: Mutex::new(Writer { wal, written: 0 }),
                head: RwLock::new(head),
                synced: Mutex::new(0),
                files: RwLock::new(files),
                checkpointing: Mutex::new(()),
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
            let mut pending: LabelsMap<(u32, Option<i64>)> = LabelsMap::default();
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
                    None => match head.id_of(labels) {
                        Some(id) => (id, head.series[id as usize].as_ref().and_then(|s| s.last)),
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
                pending.insert(labels.clone(), (id, last.map(|(t, _)| t)));
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
        let files = self.files.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<SeriesSamples> = head
            .matching(matchers)
            .into_iter()
            .filter_map(|id| {
                series_samples(head.series.get(id as usize)?.as_ref()?, &files, mint, maxt)
            })
            .collect();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }

    /// Id, labels and newest sample time of every series, for walking the whole database one
    /// series at a time (see [`Tsdb::read_series`]).
    pub fn series_heads(&self) -> Vec<(u32, Labels, Option<i64>)> {
        let head = self.read();
        head.series
            .iter()
            .enumerate()
            .filter_map(|(id, s)| {
                let s = s.as_ref()?;
                Some((id as u32, s.labels.clone(), s.last.map(|p| p.0)))
            })
            .collect()
    }

    /// Samples in `[mint, maxt]` of series `id`, if it still has these labels.
    pub fn read_series(
        &self,
        id: u32,
        labels: &Labels,
        mint: i64,
        maxt: i64,
    ) -> Option<SeriesSamples> {
        let head = self.read();
        let s = head.series.get(id as usize)?.as_ref()?;
        if &s.labels != labels {
            return None;
        }
        let files = self.files.read().unwrap_or_else(|e| e.into_inner());
        series_samples(s, &files, mint, maxt)
    }

    /// For each query (a label set's hash and its sorted pairs, see [`Labels::hash_pairs`]),
    /// the stored label set equal to it, if any: a writer reuses it instead of building its
    /// own copy of labels the database already holds.
    pub fn resolve(&self, queries: &[(u64, &[(&str, &str)])]) -> Vec<Option<Labels>> {
        let head = self.read();
        queries
            .iter()
            .map(|(hash, pairs)| {
                let id = head.by_labels.find(*hash, |&x| {
                    head.labels_of(x).is_some_and(|l| l.eq_pairs(pairs))
                })?;
                head.labels_of(*id).cloned()
            })
            .collect()
    }

    /// Replaces each series' label set by the equal one `other` holds, so both databases
    /// share one copy in memory (a rollup tier and its raw samples, after a restart).
    pub fn share_labels_with(&self, other: &Tsdb) {
        let theirs = other.read();
        let mut mine = self.write();
        for s in mine.series.iter_mut().flatten() {
            if let Some(l) = theirs.id_of(&s.labels).and_then(|id| theirs.labels_of(id)) {
                s.labels = l.clone();
            }
        }
    }

    /// Time of the newest sample of the series with exactly these labels.
    pub fn last_time(&self, labels: &Labels) -> Option<i64> {
        let head = self.read();
        let id = head.id_of(labels)?;
        head.series.get(id as usize)?.as_ref()?.last.map(|p| p.0)
    }

    /// For each matching series, its newest sample in `[mint, maxt]`. When `maxt` is at or
    /// after a series' newest sample (a query at "now") nothing is decoded.
    pub fn select_last(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<(Labels, Point)> {
        let head = self.read();
        let mut out = Vec::new();
        let mut slow = Vec::new();
        for id in head.matching(matchers) {
            let Some(Some(s)) = head.series.get(id as usize) else {
                continue;
            };
            match s.last {
                Some((t, v)) if t <= maxt && (s.open.count() > 0 || !v.is_nan()) => {
                    if t >= mint {
                        out.push((s.labels.clone(), (t, v)));
                    }
                }
                Some((t, _)) if t < mint => {}
                _ => slow.push(s.labels.clone()),
            }
        }
        drop(head);
        for labels in slow {
            let all: Vec<Matcher> = labels.iter().map(|(n, v)| Matcher::equal(n, v)).collect();
            if let Some(s) = self
                .select(&all, mint, maxt)
                .into_iter()
                .find(|s| s.labels == labels)
                && let Some(&p) = s.samples.last()
            {
                out.push((labels, p));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
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
            for c in &s.sealed {
                match c {
                    Sealed::Mem(c) => st.chunk_bytes += c.bytes.len(),
                    Sealed::Disk(_) => st.disk_chunks += 1,
                }
            }
            st.chunk_bytes += s.open.bytes_len();
        }
        st
    }

    /// Bytes on disk: chunk files, log and checkpoint.
    pub fn disk_bytes(&self) -> Result<u64, TsdbError> {
        let files: u64 = self
            .files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .files()?
            .iter()
            .map(|f| f.1)
            .sum();
        let wal = lock(&self.writer).wal.disk_bytes()?;
        Ok(files + wal + checkpoint::size(&self.dir))
    }

    /// Merges each series' runs of on-disk chunks that share a complete, old window of
    /// `compact_span_ms` into one chunk. Returns (chunks merged, chunks written). Called with
    /// the checkpoint lock held; the merged chunks' old files go once nothing refers to them.
    fn compact(&self, now: i64) -> Result<(usize, usize), TsdbError> {
        let span = self.cfg.compact_span_ms;
        if span <= 0 {
            return Ok((0, 0));
        }
        // Windows ending before this are complete: no chunk can still join them.
        let done = now.saturating_sub(self.cfg.head_chunk_max_age_ms.max(0));
        let window = |t: i64| t.div_euclid(span);
        let (mut merged, mut written) = (0, 0);
        let total = self.read().series.len();
        // A thousand series at a time, so the chunks being merged never all sit in memory.
        for first in (0..total).step_by(1000) {
            // 1. Plan: (series, index of the first chunk, the chunks to merge).
            let mut plan: Vec<(u32, usize, Vec<DiskRef>)> = Vec::new();
            {
                let head = self.read();
                for id in first..(first + 1000).min(head.series.len()) {
                    let Some(Some(s)) = head.series.get(id) else {
                        continue;
                    };
                    let mut run: Vec<(usize, DiskRef)> = Vec::new();
                    let mut flush = |run: &mut Vec<(usize, DiskRef)>| {
                        if run.len() >= 2 {
                            plan.push((id as u32, run[0].0, run.iter().map(|r| r.1).collect()));
                        }
                        run.clear();
                    };
                    for (i, c) in s.sealed.iter().enumerate() {
                        let eligible = match c {
                            Sealed::Disk(d) => {
                                window(d.min_t) == window(d.max_t)
                                    && (window(d.max_t) + 1).saturating_mul(span) <= done
                            }
                            Sealed::Mem(_) => false,
                        };
                        let Sealed::Disk(d) = c else {
                            flush(&mut run);
                            continue;
                        };
                        if !eligible {
                            flush(&mut run);
                            continue;
                        }
                        let joins = run.last().is_some_and(|(_, last)| {
                            window(last.min_t) == window(d.min_t)
                                && run.iter().map(|r| u32::from(r.1.count)).sum::<u32>()
                                    + u32::from(d.count)
                                    <= u32::from(u16::MAX)
                        });
                        if !joins {
                            flush(&mut run);
                        }
                        run.push((i, *d));
                    }
                    flush(&mut run);
                }
            }
            if plan.is_empty() {
                continue;
            }
            // 2. Merge, without holding the head.
            let mut results: Vec<(u32, usize, Vec<DiskRef>, DiskRef)> = Vec::new();
            {
                let mut files = self.files.write().unwrap_or_else(|e| e.into_inner());
                for (id, start, refs) in plan {
                    let mut w = ChunkWriter::default();
                    let mut ok = true;
                    for r in &refs {
                        match files.read(r) {
                            Ok(c) => {
                                for p in c.iter() {
                                    match p {
                                        Ok((t, v)) => w.push(t, v),
                                        Err(_) => ok = false,
                                    }
                                }
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "a chunk could not be read; its run is not compacted");
                                ok = false;
                            }
                        }
                    }
                    let total: u32 = refs.iter().map(|r| u32::from(r.count)).sum();
                    if !ok || u32::from(w.count()) != total {
                        continue;
                    }
                    let new = files.append(id, &w.seal())?;
                    results.push((id, start, refs, new));
                }
                // Durable and readable before any reader is pointed at them.
                files.flush()?;
            }
            // 3. Swap the references, newest run first so earlier indices stay valid.
            let mut head = self.write();
            results.sort_by(|a, b| (a.0, b.1).cmp(&(b.0, a.1)));
            for (id, start, refs, new) in results {
                let Some(Some(s)) = head.series.get_mut(id as usize) else {
                    continue;
                };
                let end = start + refs.len();
                let same = s.sealed.get(start..end).is_some_and(|cs| {
                    cs.iter()
                        .zip(&refs)
                        .all(|(c, r)| matches!(c, Sealed::Disk(d) if d == r))
                });
                if same {
                    s.sealed.splice(start..end, [Sealed::Disk(new)]);
                    merged += refs.len();
                    written += 1;
                }
            }
        }
        Ok((merged, written))
    }

    /// Writes sealed chunks to chunk files, drops what retention no longer keeps, records the
    /// head in a checkpoint and deletes the log it replaces. `now` is the retention reference.
    pub fn checkpoint(&self, now: i64) -> Result<CheckpointStats, TsdbError> {
        let _one = lock(&self.checkpointing);
        let mut st = CheckpointStats::default();
        (st.chunks_compacted, st.compacted_into) = self.compact(now)?;
        let cutoff = if self.cfg.retention_ms > 0 {
            now.saturating_sub(self.cfg.retention_ms)
        } else {
            i64::MIN
        };
        // 1. With appends held: seal idle open chunks, roll the log, copy what the checkpoint
        //    must describe (the head as of the roll).
        type SnapRow = (u32, Labels, Vec<Sealed>, Option<(Vec<u8>, u16)>);
        let (wal_from, mut snap, to_write) = {
            let mut writer = lock(&self.writer);
            let mut head = self.write();
            let idle = now.saturating_sub(self.cfg.head_chunk_max_age_ms);
            for s in head.series.iter_mut().flatten() {
                if s.open.count() > 0 && s.open.max_t() < idle {
                    s.sealed.push(Sealed::Mem(s.open.seal()));
                    s.open = ChunkWriter::default();
                }
            }
            let wal_from = writer.wal.roll()?;
            let mut snap: Vec<SnapRow> = Vec::new();
            let mut to_write: Vec<(u32, usize, Chunk)> = Vec::new();
            for (id, s) in head.series.iter().enumerate() {
                let Some(s) = s else { continue };
                for (i, c) in s.sealed.iter().enumerate() {
                    if let Sealed::Mem(c) = c {
                        to_write.push((id as u32, i, c.clone()));
                    }
                }
                let open = (s.open.count() > 0).then(|| {
                    let c = s.open.seal();
                    (c.bytes, c.count)
                });
                snap.push((id as u32, s.labels.clone(), s.sealed.clone(), open));
            }
            (wal_from, snap, to_write)
        };
        // 2. Write the new sealed chunks out.
        let mut written: HashMap<(u32, usize), DiskRef> = HashMap::new();
        {
            let mut files = self.files.write().unwrap_or_else(|e| e.into_inner());
            for (id, i, c) in &to_write {
                if c.max_t < cutoff {
                    continue;
                }
                written.insert((*id, *i), files.append(*id, c)?);
                st.chunk_bytes_written += c.bytes.len() as u64;
            }
            files.flush()?;
        }
        st.chunks_written = written.len();
        // 3. Retention by size: whole chunk files go, those whose newest sample is oldest
        //    first (compaction rewrites old data into new files, so file numbers do not tell
        //    age), never the file being written.
        let mut dropped_files: Vec<u32> = Vec::new();
        if self.cfg.retention_bytes > 0 {
            let (mut files, current) = {
                let f = self.files.read().unwrap_or_else(|e| e.into_inner());
                (f.files()?, f.current_file())
            };
            let wal = lock(&self.writer).wal.disk_bytes()?;
            let mut total: u64 =
                files.iter().map(|f| f.1).sum::<u64>() + wal + checkpoint::size(&self.dir);
            let mut newest: HashMap<u32, i64> = HashMap::new();
            {
                let head = self.read();
                let refs = head
                    .series
                    .iter()
                    .flatten()
                    .flat_map(|s| s.sealed.iter())
                    .filter_map(|c| match c {
                        Sealed::Disk(d) => Some(*d),
                        Sealed::Mem(_) => None,
                    });
                for d in refs.chain(written.values().copied()) {
                    let e = newest.entry(d.file).or_insert(i64::MIN);
                    *e = (*e).max(d.max_t);
                }
            }
            files.retain(|(n, _)| Some(*n) != current);
            files.sort_by_key(|(n, _)| (newest.get(n).copied().unwrap_or(i64::MIN), *n));
            for (n, size) in &files {
                if total <= self.cfg.retention_bytes {
                    break;
                }
                dropped_files.push(*n);
                total = total.saturating_sub(*size);
            }
        }
        let keep = |d: &DiskRef| d.max_t >= cutoff && !dropped_files.contains(&d.file);
        // 4. The live head takes the disk references and loses what retention drops.
        {
            let mut head = self.write();
            let mut empty = Vec::new();
            for (id, s) in head.series.iter_mut().enumerate() {
                let Some(s) = s else { continue };
                for (i, c) in s.sealed.iter_mut().enumerate() {
                    if let Some(d) = written.get(&(id as u32, i)) {
                        *c = Sealed::Disk(*d);
                    }
                }
                let before = s.sealed.len();
                s.sealed.retain(|c| match c {
                    Sealed::Disk(d) => keep(d),
                    Sealed::Mem(c) => c.max_t >= cutoff,
                });
                st.chunks_dropped += before - s.sealed.len();
                if s.open.count() > 0 && s.open.max_t() < cutoff {
                    s.open = ChunkWriter::default();
                }
                if s.sealed.is_empty() && s.open.count() == 0 {
                    empty.push(id as u32);
                }
            }
            st.series_dropped = empty.len();
            for id in empty {
                head.remove_series(id);
            }
        }
        // 5. The checkpoint: the head as of the roll, with disk references, minus what
        //    retention dropped.
        let series = snap
            .drain(..)
            .filter_map(|(id, labels, sealed, open)| {
                let chunks: Vec<DiskRef> = sealed
                    .iter()
                    .enumerate()
                    .filter_map(|(i, c)| match c {
                        Sealed::Disk(d) => Some(*d),
                        Sealed::Mem(_) => written.get(&(id, i)).copied(),
                    })
                    .filter(|d| keep(d))
                    .collect();
                let open = open.filter(|(bytes, count)| {
                    chunk::ChunkIter::new(bytes, *count)
                        .map_while(Result::ok)
                        .last()
                        .is_some_and(|(t, _)| t >= cutoff)
                });
                (!chunks.is_empty() || open.is_some()).then_some(checkpoint::SnapSeries {
                    id,
                    labels,
                    chunks,
                    open,
                })
            })
            .collect();
        checkpoint::write(&self.dir, &checkpoint::Snapshot { wal_from, series })?;
        lock(&self.writer).wal.remove_before(wal_from)?;
        // 6. Chunk files nothing refers to any more.
        let referenced: std::collections::HashSet<u32> = {
            let head = self.read();
            head.series
                .iter()
                .flatten()
                .flat_map(|s| s.sealed.iter())
                .filter_map(|c| match c {
                    Sealed::Disk(d) => Some(d.file),
                    Sealed::Mem(_) => None,
                })
                .collect()
        };
        {
            let mut files = self.files.write().unwrap_or_else(|e| e.into_inner());
            let current = files.current_file();
            for (n, _) in files.files()? {
                if !referenced.contains(&n) && Some(n) != current {
                    files.remove(n)?;
                    st.files_removed += 1;
                }
            }
        }
        st.disk_bytes = self.disk_bytes()?;
        Ok(st)
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

    fn count(db: &Tsdb, name: &str) -> usize {
        db.select(&[Matcher::equal("__name__", name)], i64::MIN, i64::MAX)
            .iter()
            .map(|s| s.samples.len())
            .sum()
    }

    #[test]
    fn checkpoints_move_chunks_to_disk_replace_the_log_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TsdbConfig {
            retention_ms: 0,
            ..TsdbConfig::default()
        };
        let batch = |from: i64, n: i64| -> Batch {
            (0..20)
                .map(|k| {
                    let labels = l(&[("__name__", "m"), ("k", &k.to_string())]);
                    let pts = (from..from + n)
                        .map(|i| (i * 1000, (i * k) as f64))
                        .collect();
                    (labels, pts)
                })
                .collect()
        };
        {
            let (db, _) = Tsdb::open(dir.path(), cfg.clone()).unwrap();
            db.append(&batch(0, 500)).unwrap();
            let before = db.disk_bytes().unwrap();
            let st = db.checkpoint(500_000).unwrap();
            assert_eq!(
                st.chunks_written,
                20 * 4,
                "four sealed chunks of 120 per series"
            );
            assert!(
                st.disk_bytes < before / 4,
                "{} after vs {before} of log before",
                st.disk_bytes
            );
            assert_eq!(db.stats().disk_chunks, 80);
            assert_eq!(count(&db, "m"), 20 * 500);
            db.append(&batch(500, 100)).unwrap();
        }
        let (db, rec) = Tsdb::open(dir.path(), cfg.clone()).unwrap();
        assert!(rec.repair.is_none());
        assert_eq!(
            count(&db, "m"),
            20 * 600,
            "checkpoint plus the log after it"
        );
        let s = db.select(&[Matcher::equal("k", "3")], 100_000, 100_000);
        assert_eq!(s[0].samples, vec![(100_000, 300.0)]);
        // A second checkpoint after reopening keeps everything too.
        db.checkpoint(600_000).unwrap();
        drop(db);
        let (db, _) = Tsdb::open(dir.path(), cfg).unwrap();
        assert_eq!(count(&db, "m"), 20 * 600);
    }

    #[test]
    fn old_chunks_are_merged_per_window_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let day = 24 * 3_600_000;
        let cfg = TsdbConfig {
            retention_ms: 0,
            chunk_file_bytes: 64 << 10,
            ..TsdbConfig::default()
        };
        let series = [l(&[("__name__", "a")]), l(&[("__name__", "b")])];
        // Three days, one sample every 15 s: 720 chunks of 120 per series.
        let points: Vec<(i64, f64)> = (0..3 * 5760)
            .map(|i| (i * 15_000, (i % 97) as f64))
            .collect();
        let all = |db: &Tsdb| {
            db.select(
                &[Matcher::new("__name__", MatchOp::Regex, ".+").unwrap()],
                i64::MIN,
                i64::MAX,
            )
        };
        let (db, _) = Tsdb::open(dir.path(), cfg.clone()).unwrap();
        db.append(
            &series
                .iter()
                .map(|s| (s.clone(), points.clone()))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let now = 4 * day;
        let first = db.checkpoint(now).unwrap();
        assert_eq!(
            first.chunks_compacted, 0,
            "chunks still in memory are written first"
        );
        let before = all(&db);
        assert_eq!(before[0].samples, points);
        let disk_before = db.stats().disk_chunks;
        assert_eq!(disk_before, 2 * 144);
        let second = db.checkpoint(now).unwrap();
        // Each day's chunks become one chunk (a chunk across midnight stays as it is).
        assert_eq!(second.chunks_compacted, disk_before);
        assert_eq!(second.compacted_into, 2 * 3);
        assert_eq!(db.stats().disk_chunks, 2 * 3);
        assert!(second.files_removed > 0, "{second:?}");
        assert!(
            second.disk_bytes <= first.disk_bytes,
            "{first:?} {second:?}"
        );
        assert_eq!(all(&db), before);
        assert_eq!(
            db.select(
                &[Matcher::equal("__name__", "a")],
                day - 30_000,
                day + 30_000
            )[0]
            .samples
            .len(),
            5
        );
        // Nothing to do the next time; and a reopened database reads the merged chunks.
        assert_eq!(db.checkpoint(now).unwrap().chunks_compacted, 0);
        drop(db);
        let (db, _) = Tsdb::open(dir.path(), cfg).unwrap();
        assert_eq!(all(&db), before);
    }

    #[test]
    fn retention_by_age_and_by_size_drops_the_oldest_data() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TsdbConfig {
            retention_ms: 200_000,
            chunk_file_bytes: 4096,
            ..TsdbConfig::default()
        };
        let (db, _) = Tsdb::open(dir.path(), cfg.clone()).unwrap();
        let old = l(&[("__name__", "old")]);
        let live = l(&[("__name__", "live")]);
        db.append(&[
            (old.clone(), (0..130).map(|i| (i * 1000, 1.0)).collect()),
            (
                live.clone(),
                (0..600).map(|i| (i * 1000, i as f64)).collect(),
            ),
        ])
        .unwrap();
        let st = db.checkpoint(600_000).unwrap();
        assert_eq!(st.series_dropped, 1, "`old` ended before the cutoff");
        assert!(db.series(&[Matcher::equal("__name__", "old")]).is_empty());
        let kept = count(&db, "live");
        assert!(
            (200..600).contains(&kept),
            "only chunks reaching past the cutoff: {kept}"
        );
        drop(db);
        let (db, _) = Tsdb::open(dir.path(), cfg).unwrap();
        assert_eq!(count(&db, "live"), kept);
        assert_eq!(count(&db, "old"), 0);

        let dir = tempfile::tempdir().unwrap();
        let cfg = TsdbConfig {
            retention_ms: 0,
            retention_bytes: 6_000,
            chunk_file_bytes: 1_000,
            ..TsdbConfig::default()
        };
        let (db, _) = Tsdb::open(dir.path(), cfg).unwrap();
        let pts: Vec<(i64, f64)> = (0..5000)
            .map(|i| (i * 1000, (i * 7919 % 1000) as f64))
            .collect();
        db.append(&[(live, pts)]).unwrap();
        let st = db.checkpoint(5_000_000).unwrap();
        assert!(
            st.files_removed > 0 && st.disk_bytes <= 6_000 + 1_500,
            "{st:?}"
        );
        let left = count(&db, "live");
        assert!(left > 0 && left < 5000, "{left}");
        let first =
            db.select(&[Matcher::equal("__name__", "live")], i64::MIN, i64::MAX)[0].samples[0].0;
        assert!(first > 0, "the oldest went first");
    }
}
