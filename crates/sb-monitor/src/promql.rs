//! PromQL evaluation over sb-tsdb, with Prometheus' semantics: the 5-minute lookback for
//! instant selectors, staleness markers, extrapolated `rate`/`increase`/`delta`, vector matching
//! with `on`/`ignoring`/`group_left`/`group_right`, and the metric name dropped where
//! Prometheus drops it. Parsing is promql-parser's; everything after the AST is ours.
//!
//! Windows are closed at both ends, `[t - range, t]` and `[t - lookback, t]`, as in Prometheus
//! 2.x (the version Debian ships, which the integration test compares against; 3.0 made them
//! open on the left). A range query evaluates the expression at every step, which is what
//! Prometheus' semantics are defined as.

use promql_parser::label::MatchOp as PMatchOp;
use promql_parser::parser::token::*;
use promql_parser::parser::{
    AggregateExpr, AtModifier, BinaryExpr, Call, Expr, LabelModifier, Offset,
    VectorMatchCardinality, VectorSelector,
};
use sb_tsdb::rollup::ROLLUP_LABEL;
use sb_tsdb::{Labels, METRIC_NAME, MatchOp, Matcher, Tsdb};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Prometheus' staleness marker, a NaN with this exact bit pattern.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

pub fn is_stale(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// How far back an instant selector looks for a sample (Prometheus: 5m).
    pub lookback_ms: i64,
    /// Samples one query may load at most.
    pub samples_max: usize,
    /// Points per series a range query may return at most (Prometheus: 11,000).
    pub range_points_max: i64,
    /// Step of a subquery without one.
    pub subquery_step_ms: i64,
    /// The database is a rollup tier of this resolution (see [`sb_tsdb::rollup`]): a
    /// selector with a `__rollup__` matcher reads the aggregates it matches, one without reads
    /// the bucket average (sum / count).
    pub rollup: Option<i64>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            lookback_ms: 5 * 60 * 1000,
            samples_max: 50_000_000,
            range_points_max: 11_000,
            subquery_step_ms: 60_000,
            rollup: None,
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The query text does not parse or is not valid PromQL.
    #[error("{0}")]
    Parse(String),
    /// Evaluation failed (a matching conflict, a limit).
    #[error("{0}")]
    Eval(String),
}

type Result<T> = std::result::Result<T, QueryError>;

fn eval_err<T>(msg: impl Into<String>) -> Result<T> {
    Err(QueryError::Eval(msg.into()))
}

pub fn parse(query: &str) -> Result<Expr> {
    promql_parser::parser::parse(query).map_err(QueryError::Parse)
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    pub v: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub points: Vec<(i64, f64)>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Scalar(f64),
    String(String),
    Vector(Vec<Sample>),
    Matrix(Vec<Series>),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Scalar(_) => "scalar",
            Value::String(_) => "string",
            Value::Vector(_) => "vector",
            Value::Matrix(_) => "matrix",
        }
    }
}

/// Called with a series' labels and its samples in a window.
type WindowFn<'f> = dyn FnMut(&Labels, &[(i64, f64)]) + 'f;

/// A window `[lo, hi]` loaded for a selector, its series, and per series where the last
/// window sliced from it began and ended (steps move forward, so the next slice is found by
/// stepping on from there instead of searching the whole series again).
struct Loaded {
    lo: i64,
    hi: i64,
    data: Vec<sb_tsdb::SeriesSamples>,
    cursors: Vec<std::cell::Cell<(usize, usize)>>,
}

/// `[from, to)` of the samples in `[mint, maxt]`, starting from the previous slice `cur`.
fn slice_bounds(
    samples: &[(i64, f64)],
    cur: &std::cell::Cell<(usize, usize)>,
    mint: i64,
    maxt: i64,
) -> (usize, usize) {
    // First index with time > `bound` (`after`) or >= `bound`, searching on from `i` when the
    // answer lies ahead of it and close.
    let seek = |i: usize, pred: &dyn Fn(i64) -> bool| -> usize {
        let i = i.min(samples.len());
        if i > 0 && !pred(samples[i - 1].0) {
            // Went backwards (an `@` or offset jump): search from scratch.
            return samples.partition_point(|p| pred(p.0));
        }
        let mut j = i;
        while j < samples.len() && j < i + 16 {
            if !pred(samples[j].0) {
                return j;
            }
            j += 1;
        }
        j + samples[j..].partition_point(|p| pred(p.0))
    };
    let (from0, to0) = cur.get();
    let from = seek(from0, &|t| t < mint);
    let to = seek(to0.max(from), &|t| t <= maxt).max(from);
    cur.set((from, to));
    (from, to)
}

/// Hashes the `usize` keys of per-query caches (addresses) with one multiply.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = (self.0.rotate_left(29) ^ n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type IdMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

pub struct Engine<'a> {
    db: &'a Tsdb,
    cfg: EngineConfig,
    /// Set from outside to stop a query (its time limit ran out).
    cancel: Option<&'a std::sync::atomic::AtomicBool>,
    loaded: std::cell::Cell<usize>,
    /// A range query loads each selector's data once for the whole range: selector (by its
    /// address in the AST) → the window loaded and the series in it.
    cache: std::cell::RefCell<HashMap<usize, Loaded>>,
    /// Label sets without their metric name, worked out once per query.
    /// Keyed by [`Labels::shared_id`]; the keys' label sets stay alive in `keep_alive`.
    name_dropped: std::cell::RefCell<IdMap<usize, Labels>>,
    keep_alive: std::cell::RefCell<Vec<Labels>>,
    /// Aggregation group of a label set, per aggregation (by its address in the AST).
    group_keys: std::cell::RefCell<IdMap<(usize, usize), Labels>>,
    /// One shared label set per distinct group, so groups compare by address.
    group_sets: std::cell::RefCell<HashSet<Labels>>,
    /// Query start and end, for `@ start()` / `@ end()`.
    start: i64,
    end: i64,
}

fn millis(d: &Duration) -> i64 {
    d.as_millis() as i64
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => millis(d),
        Some(Offset::Neg(d)) => -millis(d),
    }
}

fn system_ms(t: &SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => millis(&d),
        Err(e) => -millis(&e.duration()),
    }
}

fn drop_name(l: &Labels) -> Labels {
    l.without(&[METRIC_NAME])
}

impl<'a> Engine<'a> {
    pub fn new(db: &'a Tsdb, cfg: EngineConfig) -> Self {
        Self {
            db,
            cfg,
            cancel: None,
            loaded: std::cell::Cell::new(0),
            cache: std::cell::RefCell::new(HashMap::new()),
            name_dropped: std::cell::RefCell::new(IdMap::default()),
            keep_alive: std::cell::RefCell::new(Vec::new()),
            group_keys: std::cell::RefCell::new(IdMap::default()),
            group_sets: std::cell::RefCell::new(HashSet::new()),
            start: 0,
            end: 0,
        }
    }

    /// `l` without its metric name (remembered for the rest of the query).
    fn drop_name(&self, l: &Labels) -> Labels {
        if self.start == self.end {
            // One evaluation: nothing to reuse.
            return drop_name(l);
        }
        if let Some(v) = self.name_dropped.borrow().get(&l.shared_id()) {
            return v.clone();
        }
        let v = if l.metric_name().is_none() {
            l.clone()
        } else {
            drop_name(l)
        };
        self.name_dropped
            .borrow_mut()
            .insert(l.shared_id(), v.clone());
        self.keep_alive.borrow_mut().push(l.clone());
        v
    }

    /// Stops evaluation with an error once `flag` is set.
    pub fn with_cancel(mut self, flag: &'a std::sync::atomic::AtomicBool) -> Self {
        self.cancel = Some(flag);
        self
    }

    /// Evaluates `expr` at `t` (ms).
    pub fn instant(&mut self, expr: &Expr, t: i64) -> Result<Value> {
        self.start = t;
        self.end = t;
        let v = self.eval(expr, t)?;
        Ok(match v {
            Value::Vector(mut v) if !is_sorted_query(expr) => {
                v.sort_by(|a, b| a.labels.cmp(&b.labels));
                Value::Vector(v)
            }
            other => other,
        })
    }

    /// Evaluates `expr` at every step from `start` to `end` (ms); the result is a matrix.
    pub fn range(&mut self, expr: &Expr, start: i64, end: i64, step: i64) -> Result<Vec<Series>> {
        if step <= 0 {
            return eval_err("zero or negative query resolution step widths are not accepted");
        }
        if end < start {
            return eval_err("end timestamp must not be before start time");
        }
        if (end - start) / step + 1 > self.cfg.range_points_max {
            return eval_err(format!(
                "exceeded maximum resolution of {} points per timeseries; try decreasing the query resolution (?step=XX)",
                self.cfg.range_points_max
            ));
        }
        self.start = start;
        self.end = end;
        let mut out: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
        let mut t = start;
        while t <= end {
            match self.eval(expr, t)? {
                Value::Scalar(v) => out.entry(Labels::default()).or_default().push((t, v)),
                Value::Vector(v) => {
                    for s in v {
                        out.entry(s.labels).or_default().push((t, s.v));
                    }
                }
                other => {
                    return eval_err(format!(
                        "invalid expression type {:?} for range query, must be Scalar or instant Vector",
                        other.type_name()
                    ));
                }
            }
            t += step;
        }
        Ok(out
            .into_iter()
            .map(|(labels, points)| Series { labels, points })
            .collect())
    }

    fn count(&self, n: usize) -> Result<()> {
        if self
            .cancel
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        {
            return eval_err("query cancelled: it ran past its time limit");
        }
        let total = self.loaded.get() + n;
        self.loaded.set(total);
        if total > self.cfg.samples_max {
            return eval_err(format!(
                "query processing would load too many samples into memory (over {}; monitoring.query_samples_max)",
                self.cfg.samples_max
            ));
        }
        Ok(())
    }

    /// A selector's matcher sets (one, or one per `or` branch).
    pub fn selector_matchers(vs: &VectorSelector) -> Result<Vec<Vec<Matcher>>> {
        let convert = |ms: &[promql_parser::label::Matcher]| -> Result<Vec<Matcher>> {
            let mut out = Vec::new();
            if let Some(name) = &vs.name {
                out.push(Matcher::equal(METRIC_NAME, name));
            }
            for m in ms {
                let op = match m.op {
                    PMatchOp::Equal => MatchOp::Equal,
                    PMatchOp::NotEqual => MatchOp::NotEqual,
                    PMatchOp::Re(_) => MatchOp::Regex,
                    PMatchOp::NotRe(_) => MatchOp::NotRegex,
                };
                out.push(
                    Matcher::new(&m.name, op, &m.value)
                        .map_err(|e| QueryError::Parse(e.to_string()))?,
                );
            }
            Ok(out)
        };
        if vs.matchers.or_matchers.is_empty() {
            Ok(vec![convert(&vs.matchers.matchers)?])
        } else {
            vs.matchers
                .or_matchers
                .iter()
                .map(|ms| convert(ms))
                .collect()
        }
    }

    /// The time a selector reads at: `@` pins it, `offset` shifts it.
    fn selector_time(&self, vs: &VectorSelector, t: i64) -> i64 {
        let base = match &vs.at {
            None => t,
            Some(AtModifier::Start) => self.start,
            Some(AtModifier::End) => self.end,
            Some(AtModifier::At(at)) => system_ms(at),
        };
        base - offset_ms(&vs.offset)
    }

    /// The selector's series with their samples in `[mint, maxt]`. In a range query the data
    /// is loaded once, for every step, and sliced per step.
    fn select(
        &self,
        vs: &VectorSelector,
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<sb_tsdb::SeriesSamples>> {
        if self.start == self.end {
            return self.load(vs, mint, maxt);
        }
        let key = self.ensure_cached(vs, mint, maxt)?;
        let cache = self.cache.borrow();
        let Some(loaded) = cache.get(&key) else {
            return Ok(Vec::new());
        };
        Ok(loaded
            .data
            .iter()
            .zip(&loaded.cursors)
            .filter_map(|(s, cur)| {
                let (from, to) = slice_bounds(&s.samples, cur, mint, maxt);
                (from < to).then(|| sb_tsdb::SeriesSamples {
                    labels: s.labels.clone(),
                    samples: s.samples[from..to].to_vec(),
                })
            })
            .collect())
    }

    /// Calls `f` with each series' samples in `[mint, maxt]`, staleness markers removed; in a
    /// range query the windows are borrowed from the data loaded once.
    fn for_each_window(
        &self,
        vs: &VectorSelector,
        mint: i64,
        maxt: i64,
        f: &mut WindowFn,
    ) -> Result<()> {
        let mut call = |labels: &Labels, window: &[(i64, f64)]| {
            if window.iter().any(|p| is_stale(p.1)) {
                let clean: Vec<(i64, f64)> =
                    window.iter().copied().filter(|p| !is_stale(p.1)).collect();
                if !clean.is_empty() {
                    f(labels, &clean);
                }
            } else if !window.is_empty() {
                f(labels, window);
            }
        };
        if self.start == self.end {
            for s in self.load(vs, mint, maxt)? {
                call(&s.labels, &s.samples);
            }
            return Ok(());
        }
        let key = self.ensure_cached(vs, mint, maxt)?;
        let cache = self.cache.borrow();
        if let Some(loaded) = cache.get(&key) {
            for (s, cur) in loaded.data.iter().zip(&loaded.cursors) {
                let (from, to) = slice_bounds(&s.samples, cur, mint, maxt);
                call(&s.labels, &s.samples[from..to]);
            }
        }
        Ok(())
    }

    /// Makes sure the selector's data covering `[mint, maxt]` is loaded; returns its key.
    fn ensure_cached(&self, vs: &VectorSelector, mint: i64, maxt: i64) -> Result<usize> {
        let key = vs as *const VectorSelector as usize;
        let covered = self
            .cache
            .borrow()
            .get(&key)
            .is_some_and(|l| l.lo <= mint && maxt <= l.hi);
        if !covered {
            // Load through the last step: later steps read from the same window, shifted.
            let (mut lo, mut hi) = (mint, maxt.saturating_add(self.end - self.start));
            if let Some(l) = self.cache.borrow().get(&key) {
                lo = lo.min(l.lo);
                hi = hi.max(l.hi);
            }
            let data = self.load(vs, lo, hi)?;
            let cursors = data.iter().map(|_| Default::default()).collect();
            self.cache.borrow_mut().insert(
                key,
                Loaded {
                    lo,
                    hi,
                    data,
                    cursors,
                },
            );
        }
        Ok(key)
    }

    fn load(
        &self,
        vs: &VectorSelector,
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<sb_tsdb::SeriesSamples>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for ms in Self::selector_matchers(vs)? {
            if ms.iter().all(|m| m.matches("")) {
                return Err(QueryError::Parse(
                    "vector selector must contain at least one non-empty matcher".into(),
                ));
            }
            let found = if let Some(res) = self.cfg.rollup {
                self.select_rollup(ms, res, mint, maxt)
            } else {
                self.db.select(&ms, mint, maxt)
            };
            for s in found {
                if seen.insert(s.labels.clone()) {
                    self.count(s.samples.len())?;
                    out.push(s);
                }
            }
        }
        Ok(out)
    }

    /// A selection from a rollup tier: the aggregates a `__rollup__` matcher names (the label
    /// shown only when it names several), or else each bucket's average.
    fn select_rollup(
        &self,
        ms: Vec<Matcher>,
        resolution: i64,
        mint: i64,
        maxt: i64,
    ) -> Vec<sb_tsdb::SeriesSamples> {
        use sb_tsdb::rollup::{AGGREGATES, demux};
        let (wanted, ms): (Vec<Matcher>, Vec<Matcher>) =
            ms.into_iter().partition(|m| m.name == ROLLUP_LABEL);
        // A bucket's samples sit in its first milliseconds: widen the window to hold them.
        let found = self
            .db
            .select(&ms, mint, maxt.saturating_add(AGGREGATES.len() as i64));
        let mut out = Vec::new();
        if wanted.is_empty() {
            for s in found {
                let sums = demux(&s.samples, resolution, 2);
                let counts = demux(&s.samples, resolution, 3);
                let samples: Vec<(i64, f64)> = sums
                    .iter()
                    .zip(&counts)
                    .filter(|(a, b)| a.0 == b.0 && b.1 > 0.0 && a.0 >= mint && a.0 <= maxt)
                    .map(|(a, b)| (a.0, a.1 / b.1))
                    .collect();
                if !samples.is_empty() {
                    out.push(sb_tsdb::SeriesSamples {
                        labels: s.labels,
                        samples,
                    });
                }
            }
            return out;
        }
        let aggs: Vec<usize> = (0..AGGREGATES.len())
            .filter(|&i| wanted.iter().all(|m| m.matches(AGGREGATES[i])))
            .collect();
        for s in found {
            for &i in &aggs {
                let mut samples = demux(&s.samples, resolution, i);
                samples.retain(|p| p.0 >= mint && p.0 <= maxt);
                if samples.is_empty() {
                    continue;
                }
                let labels = if aggs.len() > 1 {
                    s.labels.with(ROLLUP_LABEL, AGGREGATES[i])
                } else {
                    s.labels.clone()
                };
                out.push(sb_tsdb::SeriesSamples { labels, samples });
            }
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }

    fn instant_selector(&self, vs: &VectorSelector, t: i64) -> Result<Vec<Sample>> {
        let at = self.selector_time(vs, t);
        let mut out = Vec::new();
        if self.start == self.end && self.cfg.rollup.is_none() {
            // One evaluation: only each series' newest sample in the window is needed.
            let mut seen = HashSet::new();
            for ms in Self::selector_matchers(vs)? {
                if ms.iter().all(|m| m.matches("")) {
                    return Err(QueryError::Parse(
                        "vector selector must contain at least one non-empty matcher".into(),
                    ));
                }
                for (labels, (_, v)) in self.db.select_last(&ms, at - self.cfg.lookback_ms, at) {
                    if seen.insert(labels.clone()) {
                        self.count(1)?;
                        if !is_stale(v) {
                            out.push(Sample { labels, v });
                        }
                    }
                }
            }
            return Ok(out);
        }
        for s in self.select(vs, at - self.cfg.lookback_ms, at)? {
            if let Some(&(_, v)) = s.samples.last()
                && !is_stale(v)
            {
                out.push(Sample {
                    labels: s.labels,
                    v,
                });
            }
        }
        Ok(out)
    }

    /// Series with their samples in `[t - range, t]`, staleness markers removed.
    fn range_selector(&self, vs: &VectorSelector, range: i64, t: i64) -> Result<Vec<Series>> {
        let at = self.selector_time(vs, t);
        Ok(self
            .select(vs, at - range, at)?
            .into_iter()
            .map(|s| Series {
                labels: s.labels,
                points: s
                    .samples
                    .into_iter()
                    .filter(|(_, v)| !is_stale(*v))
                    .collect(),
            })
            .filter(|s| !s.points.is_empty())
            .collect())
    }

    fn eval(&self, expr: &Expr, t: i64) -> Result<Value> {
        match expr {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Value::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::Unary(u) => match self.eval(&u.expr, t)? {
                Value::Scalar(v) => Ok(Value::Scalar(-v)),
                Value::Vector(v) => Ok(Value::Vector(
                    v.into_iter()
                        .map(|s| Sample {
                            labels: self.drop_name(&s.labels),
                            v: -s.v,
                        })
                        .collect(),
                )),
                other => eval_err(format!("unary minus on {}", other.type_name())),
            },
            Expr::VectorSelector(vs) => Ok(Value::Vector(self.instant_selector(vs, t)?)),
            Expr::MatrixSelector(ms) => Ok(Value::Matrix(self.range_selector(
                &ms.vs,
                millis(&ms.range),
                t,
            )?)),
            Expr::Subquery(sq) => {
                let step = sq
                    .step
                    .as_ref()
                    .map(millis)
                    .unwrap_or(self.cfg.subquery_step_ms)
                    .max(1);
                let base = match &sq.at {
                    None => t,
                    Some(AtModifier::Start) => self.start,
                    Some(AtModifier::End) => self.end,
                    Some(AtModifier::At(at)) => system_ms(at),
                } - offset_ms(&sq.offset);
                let range = millis(&sq.range);
                // Steps are aligned to multiples of the step, as in Prometheus.
                let mut ts = (base - range).div_euclid(step) * step;
                if ts < base - range {
                    ts += step;
                }
                let mut out: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
                while ts <= base {
                    // Each step counts against the sample budget, so a subquery of a constant
                    // over years at a tiny step is stopped too (and sees the time limit).
                    self.count(1)?;
                    match self.eval(&sq.expr, ts)? {
                        Value::Vector(v) => {
                            for s in v {
                                out.entry(s.labels).or_default().push((ts, s.v));
                            }
                        }
                        Value::Scalar(v) => out.entry(Labels::default()).or_default().push((ts, v)),
                        other => return eval_err(format!("subquery of {}", other.type_name())),
                    }
                    ts += step;
                }
                Ok(Value::Matrix(
                    out.into_iter()
                        .map(|(labels, points)| Series { labels, points })
                        .collect(),
                ))
            }
            Expr::Aggregate(a) => self.aggregate(a, t),
            Expr::Binary(b) => self.binary(b, t),
            Expr::Call(c) => self.call(c, t),
            Expr::Extension(_) => eval_err("extension expressions are not supported"),
        }
    }

    fn scalar_arg(&self, e: &Expr, t: i64) -> Result<f64> {
        match self.eval(e, t)? {
            Value::Scalar(v) => Ok(v),
            other => eval_err(format!("expected a scalar, got {}", other.type_name())),
        }
    }

    fn vector_arg(&self, e: &Expr, t: i64) -> Result<Vec<Sample>> {
        match self.eval(e, t)? {
            Value::Vector(v) => Ok(v),
            other => eval_err(format!(
                "expected an instant vector, got {}",
                other.type_name()
            )),
        }
    }

    fn matrix_arg(&self, e: &Expr, t: i64) -> Result<(Vec<Series>, i64)> {
        let range = match e {
            Expr::MatrixSelector(ms) => millis(&ms.range),
            Expr::Subquery(sq) => millis(&sq.range),
            _ => return eval_err("expected a range vector"),
        };
        match self.eval(e, t)? {
            Value::Matrix(m) => Ok((m, range)),
            other => eval_err(format!(
                "expected a range vector, got {}",
                other.type_name()
            )),
        }
    }

    fn string_arg(&self, e: &Expr, t: i64) -> Result<String> {
        match self.eval(e, t)? {
            Value::String(s) => Ok(s),
            other => eval_err(format!("expected a string, got {}", other.type_name())),
        }
    }

    fn aggregate(&self, a: &AggregateExpr, t: i64) -> Result<Value> {
        let input = self.vector_arg(&a.expr, t)?;
        let op = a.op.id();
        let param = match &a.param {
            Some(p) if op == T_COUNT_VALUES => Some(Value::String(self.string_arg(p, t)?)),
            Some(p) => Some(Value::Scalar(self.scalar_arg(p, t)?)),
            None => None,
        };
        let group_of = |l: &Labels| -> Labels {
            match &a.modifier {
                None => Labels::default(),
                Some(LabelModifier::Include(ls)) => {
                    let names: Vec<&str> = ls.labels.iter().map(String::as_str).collect();
                    l.keep(&names)
                }
                Some(LabelModifier::Exclude(ls)) => {
                    let mut names: Vec<&str> = ls.labels.iter().map(String::as_str).collect();
                    names.push(METRIC_NAME);
                    l.without(&names)
                }
            }
        };
        let key = a as *const AggregateExpr as usize;
        let mut groups: BTreeMap<Labels, Vec<Sample>> = BTreeMap::new();
        if self.start == self.end {
            for s in input {
                groups.entry(group_of(&s.labels)).or_default().push(s);
            }
        } else {
            // A range query: each series' group is worked out once, and equal groups share
            // one label set, so samples are grouped by address.
            let mut by_addr: IdMap<usize, (Labels, Vec<Sample>)> = IdMap::default();
            for s in input {
                let cached = self
                    .group_keys
                    .borrow()
                    .get(&(key, s.labels.shared_id()))
                    .cloned();
                let g = match cached {
                    Some(g) => g,
                    None => {
                        let g = group_of(&s.labels);
                        let g = {
                            let mut sets = self.group_sets.borrow_mut();
                            match sets.get(&g) {
                                Some(shared) => shared.clone(),
                                None => {
                                    sets.insert(g.clone());
                                    g
                                }
                            }
                        };
                        self.group_keys
                            .borrow_mut()
                            .insert((key, s.labels.shared_id()), g.clone());
                        // Kept alive so its address is not reused by another set in this query.
                        self.keep_alive.borrow_mut().push(s.labels.clone());
                        g
                    }
                };
                by_addr
                    .entry(g.shared_id())
                    .or_insert_with(|| (g, Vec::new()))
                    .1
                    .push(s);
            }
            groups.extend(by_addr.into_values());
        }
        let k = |p: &Option<Value>| -> Result<usize> {
            match p {
                Some(Value::Scalar(v)) if v.is_finite() || *v > 0.0 => {
                    Ok(v.clamp(0.0, 1e9) as usize)
                }
                Some(Value::Scalar(_)) => Ok(0),
                _ => eval_err("topk and bottomk need a number"),
            }
        };
        let mut out = Vec::new();
        for (group, members) in groups {
            let vals: Vec<f64> = members.iter().map(|s| s.v).collect();
            let n = vals.len() as f64;
            let v = match op {
                T_SUM => vals.iter().sum(),
                T_AVG => mean(&vals),
                T_MIN => vals
                    .iter()
                    .copied()
                    .fold(f64::NAN, |m, v| if m.is_nan() || v < m { v } else { m }),
                T_MAX => vals
                    .iter()
                    .copied()
                    .fold(f64::NAN, |m, v| if m.is_nan() || v > m { v } else { m }),
                T_COUNT => n,
                T_GROUP => 1.0,
                T_STDDEV => variance(&vals).sqrt(),
                T_STDVAR => variance(&vals),
                T_QUANTILE => {
                    let Some(Value::Scalar(q)) = param else {
                        return eval_err("quantile needs a number");
                    };
                    quantile(q, vals)
                }
                T_TOPK | T_BOTTOMK => {
                    let k = k(&param)?;
                    let mut m = members;
                    m.sort_by(|a, b| {
                        let ord = cmp_nan_low(a.v, b.v);
                        if op == T_TOPK { ord.reverse() } else { ord }
                    });
                    out.extend(m.into_iter().take(k));
                    continue;
                }
                T_COUNT_VALUES => {
                    let Some(Value::String(label)) = &param else {
                        return eval_err("count_values needs a label name");
                    };
                    let mut counts: BTreeMap<String, f64> = BTreeMap::new();
                    for v in &vals {
                        *counts.entry(fmt_float(*v)).or_default() += 1.0;
                    }
                    for (value, c) in counts {
                        out.push(Sample {
                            labels: group.with(label, &value),
                            v: c,
                        });
                    }
                    continue;
                }
                _ => return eval_err(format!("aggregation {} is not supported", a.op)),
            };
            out.push(Sample { labels: group, v });
        }
        Ok(Value::Vector(out))
    }

    fn binary(&self, b: &BinaryExpr, t: i64) -> Result<Value> {
        let op = b.op.id();
        let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
        let lhs = self.eval(&b.lhs, t)?;
        let rhs = self.eval(&b.rhs, t)?;
        let comparison = b.op.is_comparison_operator();
        match (lhs, rhs) {
            (Value::Scalar(l), Value::Scalar(r)) => {
                let (v, keep) = apply(op, l, r)?;
                if comparison && !return_bool {
                    return eval_err("comparisons between scalars must use the bool modifier");
                }
                Ok(Value::Scalar(if comparison {
                    f64::from(u8::from(keep))
                } else {
                    v
                }))
            }
            (Value::Vector(v), Value::Scalar(s)) => Ok(Value::Vector(scalar_op(
                op,
                v,
                s,
                false,
                comparison,
                return_bool,
            )?)),
            (Value::Scalar(s), Value::Vector(v)) => Ok(Value::Vector(scalar_op(
                op,
                v,
                s,
                true,
                comparison,
                return_bool,
            )?)),
            (Value::Vector(l), Value::Vector(r)) => {
                let card = b
                    .modifier
                    .as_ref()
                    .map(|m| m.card.clone())
                    .unwrap_or(VectorMatchCardinality::OneToOne);
                let matching = b.modifier.as_ref().and_then(|m| m.matching.clone());
                let sig = |l: &Labels| -> Labels {
                    match &matching {
                        Some(LabelModifier::Include(ls)) => {
                            let names: Vec<&str> = ls.labels.iter().map(String::as_str).collect();
                            l.keep(&names)
                        }
                        Some(LabelModifier::Exclude(ls)) => {
                            let mut names: Vec<&str> =
                                ls.labels.iter().map(String::as_str).collect();
                            names.push(METRIC_NAME);
                            l.without(&names)
                        }
                        None => self.drop_name(l),
                    }
                };
                match op {
                    T_LAND => {
                        let right: HashSet<Labels> = r.iter().map(|s| sig(&s.labels)).collect();
                        Ok(Value::Vector(
                            l.into_iter()
                                .filter(|s| right.contains(&sig(&s.labels)))
                                .collect(),
                        ))
                    }
                    T_LUNLESS => {
                        let right: HashSet<Labels> = r.iter().map(|s| sig(&s.labels)).collect();
                        Ok(Value::Vector(
                            l.into_iter()
                                .filter(|s| !right.contains(&sig(&s.labels)))
                                .collect(),
                        ))
                    }
                    T_LOR => {
                        let left: HashSet<Labels> = l.iter().map(|s| sig(&s.labels)).collect();
                        let mut out = l;
                        out.extend(r.into_iter().filter(|s| !left.contains(&sig(&s.labels))));
                        Ok(Value::Vector(out))
                    }
                    _ => {
                        self.vector_binop(op, l, r, &card, &matching, &sig, comparison, return_bool)
                    }
                }
            }
            (l, r) => eval_err(format!(
                "binary operator between {} and {} is not allowed",
                l.type_name(),
                r.type_name()
            )),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn vector_binop(
        &self,
        op: TokenId,
        lhs: Vec<Sample>,
        rhs: Vec<Sample>,
        card: &VectorMatchCardinality,
        matching: &Option<LabelModifier>,
        sig: &dyn Fn(&Labels) -> Labels,
        comparison: bool,
        return_bool: bool,
    ) -> Result<Value> {
        // Prometheus swaps sides for group_right so the "many" side is always on the left.
        let one_to_many = matches!(card, VectorMatchCardinality::OneToMany(_));
        let (many, one) = if one_to_many { (rhs, lhs) } else { (lhs, rhs) };
        let mut one_side: HashMap<Labels, &Sample> = HashMap::new();
        for s in &one {
            if one_side.insert(sig(&s.labels), s).is_some() {
                let side = if one_to_many { "left" } else { "right" };
                return eval_err(format!(
                    "found duplicate series for the match group {} on the {side} hand-side of the operation; many-to-many matching not allowed: matching labels must be unique on one side",
                    sig(&s.labels)
                ));
            }
        }
        let include: Vec<String> = card.labels().map(|l| l.labels.clone()).unwrap_or_default();
        let one_to_one = matches!(card, VectorMatchCardinality::OneToOne);
        let drop_metric = !comparison || return_bool;
        let mut out = Vec::new();
        let mut seen: HashSet<Labels> = HashSet::new();
        for m in &many {
            let key = sig(&m.labels);
            let Some(o) = one_side.get(&key) else {
                continue;
            };
            let (vl, vr) = if one_to_many { (o.v, m.v) } else { (m.v, o.v) };
            let (mut v, keep) = apply(op, vl, vr)?;
            if comparison {
                if return_bool {
                    v = f64::from(u8::from(keep));
                } else if !keep {
                    continue;
                } else {
                    v = vl;
                }
            }
            // The result's labels, as Prometheus' resultMetric builds them.
            let mut labels = m.labels.clone();
            if drop_metric {
                labels = self.drop_name(&labels);
            }
            if one_to_one {
                labels = match matching {
                    Some(LabelModifier::Include(ls)) => {
                        let names: Vec<&str> = ls.labels.iter().map(String::as_str).collect();
                        labels.keep(&names)
                    }
                    Some(LabelModifier::Exclude(ls)) => {
                        let names: Vec<&str> = ls.labels.iter().map(String::as_str).collect();
                        labels.without(&names)
                    }
                    None => labels,
                };
            }
            for name in &include {
                labels = labels.with(name, o.labels.get(name).unwrap_or(""));
            }
            if !seen.insert(labels.clone()) {
                return eval_err(format!(
                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right); duplicate result {labels}"
                ));
            }
            out.push(Sample { labels, v });
        }
        Ok(Value::Vector(out))
    }

    fn call(&self, c: &Call, t: i64) -> Result<Value> {
        let name = c.func.name;
        let args = &c.args.args;
        let arg = |i: usize| -> Result<&Expr> {
            args.get(i)
                .map(|b| b.as_ref())
                .ok_or_else(|| QueryError::Parse(format!("{name}: missing argument {}", i + 1)))
        };
        let per_series = |f: &RangeFn, keep_name: bool| -> Result<Value> {
            if let Expr::MatrixSelector(ms) = arg(0)? {
                // A plain range selector: work on the windows in place, no copies.
                let range = millis(&ms.range);
                let at = self.selector_time(&ms.vs, t);
                let mut out = Vec::new();
                self.for_each_window(&ms.vs, at - range, at, &mut |labels, window| {
                    if let Some(v) = f(window, range) {
                        let labels = if keep_name {
                            labels.clone()
                        } else {
                            self.drop_name(labels)
                        };
                        out.push(Sample { labels, v });
                    }
                })?;
                return Ok(Value::Vector(out));
            }
            let (m, range) = self.matrix_arg(arg(0)?, t)?;
            Ok(Value::Vector(
                m.into_iter()
                    .filter_map(|s| {
                        f(&s.points, range).map(|v| Sample {
                            labels: if keep_name {
                                s.labels
                            } else {
                                self.drop_name(&s.labels)
                            },
                            v,
                        })
                    })
                    .collect(),
            ))
        };
        let math = |f: &dyn Fn(f64) -> f64| -> Result<Value> {
            Ok(Value::Vector(
                self.vector_arg(arg(0)?, t)?
                    .into_iter()
                    .map(|s| Sample {
                        labels: self.drop_name(&s.labels),
                        v: f(s.v),
                    })
                    .collect(),
            ))
        };
        let range_end = |e: &Expr| -> i64 {
            // The end of a range argument's window, for extrapolation.
            match e {
                Expr::MatrixSelector(ms) => self.selector_time(&ms.vs, t),
                Expr::Subquery(sq) => {
                    (match &sq.at {
                        None => t,
                        Some(AtModifier::Start) => self.start,
                        Some(AtModifier::End) => self.end,
                        Some(AtModifier::At(at)) => system_ms(at),
                    }) - offset_ms(&sq.offset)
                }
                _ => t,
            }
        };
        match name {
            "rate" | "increase" | "delta" => {
                let end = range_end(arg(0)?);
                let counter = name != "delta";
                let is_rate = name == "rate";
                per_series(
                    &|p, range| extrapolated(p, end - range, end, counter, is_rate),
                    false,
                )
            }
            "irate" | "idelta" => {
                let counter = name == "irate";
                per_series(
                    &|p, _| {
                        let [.., (t0, v0), (t1, v1)] = p else {
                            return None;
                        };
                        let diff = if counter && v1 < v0 { *v1 } else { v1 - v0 };
                        if counter {
                            let dt = (t1 - t0) as f64 / 1000.0;
                            if dt == 0.0 { None } else { Some(diff / dt) }
                        } else {
                            Some(diff)
                        }
                    },
                    false,
                )
            }
            "deriv" => per_series(
                &|p, _| (p.len() >= 2).then(|| regression(p, p[0].0).0),
                false,
            ),
            "predict_linear" => {
                let secs = self.scalar_arg(arg(1)?, t)?;
                per_series(
                    &|p, _| {
                        (p.len() >= 2).then(|| {
                            let (slope, intercept) = regression(p, t);
                            slope * secs + intercept
                        })
                    },
                    false,
                )
            }
            "changes" => per_series(
                &|p, _| {
                    Some(
                        p.windows(2)
                            .filter(|w| w[0].1 != w[1].1 && !(w[0].1.is_nan() && w[1].1.is_nan()))
                            .count() as f64,
                    )
                },
                false,
            ),
            "resets" => per_series(
                &|p, _| Some(p.windows(2).filter(|w| w[1].1 < w[0].1).count() as f64),
                false,
            ),
            "avg_over_time" => per_series(&|p, _| Some(mean(&vals(p))), false),
            "sum_over_time" => per_series(&|p, _| Some(vals(p).iter().sum()), false),
            "count_over_time" => per_series(&|p, _| Some(p.len() as f64), false),
            "min_over_time" => per_series(
                &|p, _| {
                    vals(p)
                        .into_iter()
                        .reduce(|m, v| if v < m || m.is_nan() { v } else { m })
                },
                false,
            ),
            "max_over_time" => per_series(
                &|p, _| {
                    vals(p)
                        .into_iter()
                        .reduce(|m, v| if v > m || m.is_nan() { v } else { m })
                },
                false,
            ),
            "last_over_time" => per_series(&|p, _| p.last().map(|x| x.1), true),
            "present_over_time" => per_series(&|_, _| Some(1.0), false),
            "stddev_over_time" => per_series(&|p, _| Some(variance(&vals(p)).sqrt()), false),
            "stdvar_over_time" => per_series(&|p, _| Some(variance(&vals(p))), false),
            "quantile_over_time" => {
                let q = self.scalar_arg(arg(0)?, t)?;
                let (m, _) = self.matrix_arg(arg(1)?, t)?;
                Ok(Value::Vector(
                    m.into_iter()
                        .map(|s| Sample {
                            labels: self.drop_name(&s.labels),
                            v: quantile(q, vals(&s.points)),
                        })
                        .collect(),
                ))
            }
            "absent_over_time" => {
                let (m, _) = self.matrix_arg(arg(0)?, t)?;
                Ok(Value::Vector(if m.is_empty() {
                    absent_labels(arg(0)?)
                } else {
                    Vec::new()
                }))
            }
            "absent" => {
                let v = self.vector_arg(arg(0)?, t)?;
                Ok(Value::Vector(if v.is_empty() {
                    absent_labels(arg(0)?)
                } else {
                    Vec::new()
                }))
            }
            "abs" => math(&f64::abs),
            "ceil" => math(&f64::ceil),
            "floor" => math(&f64::floor),
            "exp" => math(&f64::exp),
            "ln" => math(&f64::ln),
            "log2" => math(&f64::log2),
            "log10" => math(&f64::log10),
            "sqrt" => math(&f64::sqrt),
            "sgn" => math(&|v| {
                if v > 0.0 {
                    1.0
                } else if v < 0.0 {
                    -1.0
                } else {
                    v
                }
            }),
            "round" => {
                let to = match args.get(1) {
                    Some(e) => self.scalar_arg(e, t)?,
                    None => 1.0,
                };
                let inv = 1.0 / to;
                // Prometheus rounds half up: floor(v * inv + 0.5) / inv.
                math(&move |v| (v * inv + 0.5).floor() / inv)
            }
            "clamp" => {
                let (lo, hi) = (self.scalar_arg(arg(1)?, t)?, self.scalar_arg(arg(2)?, t)?);
                if lo > hi {
                    return Ok(Value::Vector(Vec::new()));
                }
                math(&move |v| v.max(lo).min(hi))
            }
            "clamp_min" => {
                let lo = self.scalar_arg(arg(1)?, t)?;
                math(&move |v| v.max(lo))
            }
            "clamp_max" => {
                let hi = self.scalar_arg(arg(1)?, t)?;
                math(&move |v| v.min(hi))
            }
            "time" => Ok(Value::Scalar(t as f64 / 1000.0)),
            "vector" => Ok(Value::Vector(vec![Sample {
                labels: Labels::default(),
                v: self.scalar_arg(arg(0)?, t)?,
            }])),
            "scalar" => {
                let v = self.vector_arg(arg(0)?, t)?;
                Ok(Value::Scalar(if v.len() == 1 { v[0].v } else { f64::NAN }))
            }
            "timestamp" => {
                let Expr::VectorSelector(vs) = strip_parens(arg(0)?) else {
                    // On a computed vector every sample is at the evaluation time.
                    return math(&|_| t as f64 / 1000.0);
                };
                let at = self.selector_time(vs, t);
                let mut out = Vec::new();
                for s in self.select(vs, at - self.cfg.lookback_ms, at)? {
                    if let Some(&(ts, v)) = s.samples.last()
                        && !is_stale(v)
                    {
                        out.push(Sample {
                            labels: self.drop_name(&s.labels),
                            v: ts as f64 / 1000.0,
                        });
                    }
                }
                Ok(Value::Vector(out))
            }
            "minute" | "hour" | "day_of_month" | "day_of_week" | "day_of_year"
            | "days_in_month" | "month" | "year" => {
                let input = match args.first() {
                    Some(e) => self.vector_arg(e, t)?,
                    None => vec![Sample {
                        labels: Labels::default(),
                        v: t as f64 / 1000.0,
                    }],
                };
                Ok(Value::Vector(
                    input
                        .into_iter()
                        .map(|s| Sample {
                            labels: self.drop_name(&s.labels),
                            v: calendar(name, s.v),
                        })
                        .collect(),
                ))
            }
            "histogram_quantile" => {
                let q = self.scalar_arg(arg(0)?, t)?;
                let v = self.vector_arg(arg(1)?, t)?;
                let mut groups: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
                for s in v {
                    let Some(le) = s.labels.get("le").and_then(parse_le) else {
                        continue;
                    };
                    groups
                        .entry(self.drop_name(&s.labels.without(&["le"])))
                        .or_default()
                        .push((le, s.v));
                }
                Ok(Value::Vector(
                    groups
                        .into_iter()
                        .map(|(labels, buckets)| Sample {
                            labels,
                            v: bucket_quantile(q, buckets),
                        })
                        .collect(),
                ))
            }
            "label_replace" => {
                let v = self.vector_arg(arg(0)?, t)?;
                let dst = self.string_arg(arg(1)?, t)?;
                let repl = self.string_arg(arg(2)?, t)?;
                let src = self.string_arg(arg(3)?, t)?;
                let re_src = self.string_arg(arg(4)?, t)?;
                let re = regex::Regex::new(&format!("^(?s:{re_src})$")).map_err(|e| {
                    QueryError::Eval(format!(
                        "invalid regular expression in label_replace(): {e}"
                    ))
                })?;
                if !crate::remote_write::valid_label_name(&dst) {
                    return eval_err(format!(
                        "invalid destination label name in label_replace(): {dst}"
                    ));
                }
                let mut out = Vec::new();
                for s in v {
                    let value = s.labels.get(&src).unwrap_or("");
                    let labels = match re.captures(value) {
                        Some(caps) => {
                            let mut new = String::new();
                            caps.expand(&repl, &mut new);
                            s.labels.with(&dst, &new)
                        }
                        None => s.labels,
                    };
                    out.push(Sample { labels, v: s.v });
                }
                Ok(Value::Vector(out))
            }
            "label_join" => {
                let v = self.vector_arg(arg(0)?, t)?;
                let dst = self.string_arg(arg(1)?, t)?;
                let sep = self.string_arg(arg(2)?, t)?;
                let mut srcs = Vec::new();
                for e in args.iter().skip(3) {
                    srcs.push(self.string_arg(e, t)?);
                }
                Ok(Value::Vector(
                    v.into_iter()
                        .map(|s| {
                            let joined: Vec<&str> =
                                srcs.iter().map(|n| s.labels.get(n).unwrap_or("")).collect();
                            Sample {
                                labels: s.labels.with(&dst, &joined.join(&sep)),
                                v: s.v,
                            }
                        })
                        .collect(),
                ))
            }
            "sort" | "sort_desc" => {
                let mut v = self.vector_arg(arg(0)?, t)?;
                v.sort_by(|a, b| {
                    let o = cmp_nan_high(a.v, b.v);
                    if name == "sort_desc" {
                        cmp_nan_low(b.v, a.v)
                    } else {
                        o
                    }
                });
                Ok(Value::Vector(v))
            }
            other => eval_err(format!("function {other}() is not supported yet")),
        }
    }
}

/// A function of one series' points in a window (and the window's length).
type RangeFn<'f> = dyn Fn(&[(i64, f64)], i64) -> Option<f64> + 'f;

fn strip_parens(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => strip_parens(&p.expr),
        other => other,
    }
}

fn is_sorted_query(e: &Expr) -> bool {
    matches!(strip_parens(e), Expr::Call(c) if c.func.name == "sort" || c.func.name == "sort_desc")
        || matches!(strip_parens(e), Expr::Aggregate(a) if a.op.id() == T_TOPK || a.op.id() == T_BOTTOMK)
}

/// `absent()`'s labels: the equality matchers of a plain selector.
fn absent_labels(e: &Expr) -> Vec<Sample> {
    let vs = match strip_parens(e) {
        Expr::VectorSelector(vs) => Some(vs),
        Expr::MatrixSelector(ms) => Some(&ms.vs),
        _ => None,
    };
    let mut pairs = Vec::new();
    if let Some(vs) = vs {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for m in &vs.matchers.matchers {
            *counts.entry(m.name.as_str()).or_default() += 1;
        }
        for m in &vs.matchers.matchers {
            if matches!(m.op, PMatchOp::Equal)
                && m.name != METRIC_NAME
                && counts[m.name.as_str()] == 1
            {
                pairs.push((m.name.clone(), m.value.clone()));
            }
        }
    }
    vec![Sample {
        labels: Labels::new(pairs),
        v: 1.0,
    }]
}

fn apply(op: TokenId, l: f64, r: f64) -> Result<(f64, bool)> {
    Ok(match op {
        T_ADD => (l + r, true),
        T_SUB => (l - r, true),
        T_MUL => (l * r, true),
        T_DIV => (l / r, true),
        T_MOD => (l % r, true),
        T_POW => (l.powf(r), true),
        T_ATAN2 => (l.atan2(r), true),
        T_EQLC => (l, l == r),
        T_NEQ => (l, l != r),
        T_GTR => (l, l > r),
        T_LSS => (l, l < r),
        T_GTE => (l, l >= r),
        T_LTE => (l, l <= r),
        _ => return eval_err("operator not allowed here"),
    })
}

fn scalar_op(
    op: TokenId,
    v: Vec<Sample>,
    s: f64,
    scalar_left: bool,
    comparison: bool,
    return_bool: bool,
) -> Result<Vec<Sample>> {
    let mut out = Vec::with_capacity(v.len());
    for e in v {
        let (l, r) = if scalar_left { (s, e.v) } else { (e.v, s) };
        let (mut val, keep) = apply(op, l, r)?;
        if comparison {
            if return_bool {
                val = f64::from(u8::from(keep));
            } else if !keep {
                continue;
            } else {
                val = e.v;
            }
        }
        let labels = if !comparison || return_bool {
            drop_name(&e.labels)
        } else {
            e.labels
        };
        out.push(Sample { labels, v: val });
    }
    Ok(out)
}

fn vals(p: &[(i64, f64)]) -> Vec<f64> {
    p.iter().map(|x| x.1).collect()
}

fn mean(v: &[f64]) -> f64 {
    // Incremental mean, as Prometheus computes it, to stay finite for large values.
    let mut m: f64 = 0.0;
    for (i, x) in v.iter().enumerate() {
        if m.is_infinite() {
            if x.is_infinite() && (x.is_sign_positive() != m.is_sign_positive()) {
                return f64::NAN;
            }
            continue;
        }
        m += (x - m) / (i as f64 + 1.0);
    }
    m
}

fn variance(v: &[f64]) -> f64 {
    let (mut n, mut m, mut m2) = (0.0, 0.0, 0.0);
    for x in v {
        n += 1.0;
        let d = x - m;
        m += d / n;
        m2 += d * (x - m);
    }
    if n == 0.0 { f64::NAN } else { m2 / n }
}

fn quantile(q: f64, mut v: Vec<f64>) -> f64 {
    if v.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    v.sort_by(|a, b| cmp_nan_low(*a, *b));
    let n = v.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let w = rank - rank.floor();
    v[lower as usize] * (1.0 - w) + v[upper as usize] * w
}

fn cmp_nan_low(a: f64, b: f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal),
    }
}

fn cmp_nan_high(a: f64, b: f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal),
    }
}

/// Prometheus' `extrapolatedRate`: the change over the window, extrapolated to its edges
/// (but not past where a counter would have been zero), per second for `rate`.
fn extrapolated(
    p: &[(i64, f64)],
    start: i64,
    end: i64,
    counter: bool,
    is_rate: bool,
) -> Option<f64> {
    if p.len() < 2 {
        return None;
    }
    let (first, last) = (p[0], p[p.len() - 1]);
    let mut result = last.1 - first.1;
    if counter {
        let mut prev = first.1;
        for &(_, v) in &p[1..] {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    let mut to_start = (first.0 - start) as f64 / 1000.0;
    let to_end = (end - last.0) as f64 / 1000.0;
    let sampled = (last.0 - first.0) as f64 / 1000.0;
    let avg_step = sampled / (p.len() - 1) as f64;
    if counter && result > 0.0 && first.1 >= 0.0 {
        let to_zero = sampled * (first.1 / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = avg_step * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold {
        to_start
    } else {
        avg_step / 2.0
    };
    interval += if to_end < threshold {
        to_end
    } else {
        avg_step / 2.0
    };
    result *= interval / sampled;
    if is_rate {
        result /= (end - start) as f64 / 1000.0;
    }
    Some(result)
}

/// Least-squares slope and intercept at `at` (ms), x in seconds.
fn regression(p: &[(i64, f64)], at: i64) -> (f64, f64) {
    let n = p.len() as f64;
    let (mut sx, mut sy, mut sxy, mut sx2) = (0.0, 0.0, 0.0, 0.0);
    for &(t, v) in p {
        let x = (t - at) as f64 / 1000.0;
        sx += x;
        sy += v;
        sxy += x * v;
        sx2 += x * x;
    }
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
}

fn parse_le(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        _ => s.parse().ok(),
    }
}

/// Prometheus' `bucketQuantile` over classic histogram buckets `(upper bound, count)`.
fn bucket_quantile(q: f64, mut buckets: Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| cmp_nan_low(a.0, b.0));
    if buckets.len() < 2 || buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        return f64::NAN;
    }
    // Merge equal bounds, then make counts monotonic.
    buckets.dedup_by(|b, a| {
        if a.0 == b.0 {
            a.1 += b.1;
            true
        } else {
            false
        }
    });
    let mut max = f64::NEG_INFINITY;
    for b in &mut buckets {
        if b.1 < max {
            b.1 = max;
        } else {
            max = b.1;
        }
    }
    let total = buckets[buckets.len() - 1].1;
    if total == 0.0 || total.is_nan() {
        return f64::NAN;
    }
    let rank = q * total;
    let i = buckets
        .iter()
        .position(|b| b.1 >= rank)
        .unwrap_or(buckets.len() - 1);
    if i == buckets.len() - 1 {
        return buckets[buckets.len() - 2].0;
    }
    if i == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let (start, prev_count) = if i == 0 {
        (0.0, 0.0)
    } else {
        (buckets[i - 1].0, buckets[i - 1].1)
    };
    let (end, count) = (buckets[i].0, buckets[i].1 - prev_count);
    let rank = rank - prev_count;
    start + (end - start) * (rank / count)
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm), UTC.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn calendar(name: &str, secs: f64) -> f64 {
    if !secs.is_finite() {
        return f64::NAN;
    }
    let s = secs.floor() as i64;
    let days = s.div_euclid(86_400);
    let in_day = s.rem_euclid(86_400);
    let (y, m, d) = civil(days);
    let month_days = [
        31,
        if leap(y) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    match name {
        "minute" => ((in_day / 60) % 60) as f64,
        "hour" => (in_day / 3600) as f64,
        "day_of_month" => f64::from(d),
        "day_of_week" => (days + 4).rem_euclid(7) as f64,
        "day_of_year" => {
            let before: u32 = month_days[..(m - 1) as usize].iter().sum();
            f64::from(before + d)
        }
        "days_in_month" => f64::from(month_days[(m - 1) as usize]),
        "month" => f64::from(m),
        _ => y as f64,
    }
}

/// A float as Prometheus' API prints it.
pub fn fmt_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        // Go's FormatFloat(v, 'f', -1, 64): shortest digits, never an exponent; so is Rust's.
        format!("{v}")
    }
}
