//! Table-driven PromQL checks: known samples in, results compared with values worked out by
//! hand from Prometheus' documented semantics (lookback, staleness, extrapolation, matching).

#![allow(clippy::unwrap_used)]

use sb_monitor::promql::{Engine, EngineConfig, STALE_NAN_BITS, Value, parse};
use sb_tsdb::{Labels, Tsdb, TsdbConfig};

const S: i64 = 1000;

fn l(pairs: &[(&str, &str)]) -> Labels {
    Labels::from_pairs(pairs)
}

/// Every 15 s from 0 to 600 s.
fn every_15s(f: impl Fn(i64) -> f64) -> Vec<(i64, f64)> {
    (0..=40).map(|i| (i * 15 * S, f(i * 15))).collect()
}

fn fixture() -> (tempfile::TempDir, Tsdb) {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = Tsdb::open(dir.path(), TsdbConfig::default()).unwrap();
    let req = |inst: &str, code: &str| {
        l(&[
            ("__name__", "http_requests_total"),
            ("job", "api"),
            ("instance", inst),
            ("code", code),
        ])
    };
    let mut batch = vec![
        // +10 per scrape: rate 2/3 per second.
        (req("a", "200"), every_15s(|t| (t / 15 * 10) as f64)),
        // Resets to 0 at 300 s, then +10 per scrape again.
        (
            req("b", "200"),
            every_15s(|t| {
                if t < 300 {
                    (t / 15 * 10) as f64
                } else {
                    ((t - 300) / 15 * 10) as f64
                }
            }),
        ),
        (req("a", "500"), every_15s(|t| (t / 15) as f64)),
        (
            l(&[("__name__", "temp"), ("room", "lab")]),
            every_15s(|t| 20.0 + (t / 60) as f64),
        ),
        (
            l(&[("__name__", "temp"), ("room", "hall")]),
            every_15s(|_| 15.0),
        ),
        (
            l(&[("__name__", "capacity"), ("instance", "a")]),
            every_15s(|_| 100.0),
        ),
        (
            l(&[("__name__", "capacity"), ("instance", "b")]),
            every_15s(|_| 50.0),
        ),
    ];
    // A series that went stale at 450 s.
    let mut gone: Vec<(i64, f64)> = every_15s(|_| 1.0)
        .into_iter()
        .filter(|p| p.0 < 450 * S)
        .collect();
    gone.push((450 * S, f64::from_bits(STALE_NAN_BITS)));
    batch.push((l(&[("__name__", "gone")]), gone));
    // A histogram: 100 observations, 50 under 0.1, 90 under 0.5, all under 1.
    for (le, c) in [("0.1", 50.0), ("0.5", 90.0), ("1", 100.0), ("+Inf", 100.0)] {
        batch.push((
            l(&[("__name__", "lat_bucket"), ("le", le), ("job", "api")]),
            vec![(600 * S, c)],
        ));
    }
    db.append(&batch).unwrap();
    (dir, db)
}

/// A query's result: each element's labels as text, and its value.
type Result = Vec<(String, f64)>;

fn run(db: &Tsdb, q: &str, t: i64) -> Result {
    let expr = parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
    let mut engine = Engine::new(db, EngineConfig::default());
    match engine
        .instant(&expr, t * S)
        .unwrap_or_else(|e| panic!("{q}: {e}"))
    {
        Value::Vector(v) => v.into_iter().map(|s| (s.labels.to_string(), s.v)).collect(),
        Value::Scalar(v) => vec![("scalar".into(), v)],
        other => panic!("{q}: {other:?}"),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

#[test]
fn every_function_and_operator_family_matches_hand_worked_values() {
    let (_dir, db) = fixture();
    let a200 = r#"{code="200", instance="a", job="api"}"#;
    let b200 = r#"{code="200", instance="b", job="api"}"#;
    let cases: Vec<(&str, i64, Result)> = vec![
        // Selectors, lookback and staleness.
        (
            r#"temp{room="lab"}"#,
            600,
            vec![(r#"temp{room="lab"}"#.into(), 30.0)],
        ),
        (
            r#"temp{room="lab"}"#,
            601,
            vec![(r#"temp{room="lab"}"#.into(), 30.0)],
        ),
        (
            r#"temp{room="lab"}"#,
            900,
            vec![(r#"temp{room="lab"}"#.into(), 30.0)],
        ),
        (r#"temp{room="lab"}"#, 901, vec![]),
        (
            r#"temp{room="lab"}"#,
            599,
            vec![(r#"temp{room="lab"}"#.into(), 29.0)],
        ),
        (
            r#"temp{room="lab"} offset 5m"#,
            600,
            vec![(r#"temp{room="lab"}"#.into(), 25.0)],
        ),
        (
            r#"temp{room!="lab"}"#,
            600,
            vec![(r#"temp{room="hall"}"#.into(), 15.0)],
        ),
        (
            r#"temp{room=~"h.*"}"#,
            600,
            vec![(r#"temp{room="hall"}"#.into(), 15.0)],
        ),
        (
            r#"temp{room!~"h.*"}"#,
            600,
            vec![(r#"temp{room="lab"}"#.into(), 30.0)],
        ),
        ("gone", 440, vec![("gone{}".into(), 1.0)]),
        ("gone", 460, vec![]),
        // Counters.
        (
            r#"rate(http_requests_total{code="200"}[5m])"#,
            600,
            vec![(a200.into(), 2.0 / 3.0), (b200.into(), 2.0 / 3.0)],
        ),
        (
            r#"increase(http_requests_total{instance="a",code="200"}[5m])"#,
            600,
            vec![(a200.into(), 200.0)],
        ),
        (
            r#"irate(http_requests_total{instance="b",code="200"}[1m])"#,
            600,
            vec![(b200.into(), 10.0 / 15.0)],
        ),
        (
            r#"irate(http_requests_total{instance="b",code="200"}[1m])"#,
            300,
            vec![(b200.into(), 0.0)],
        ),
        (
            r#"resets(http_requests_total{instance="b",code="200"}[10m])"#,
            600,
            vec![(b200.into(), 1.0)],
        ),
        (
            r#"changes(temp{room="lab"}[5m])"#,
            600,
            vec![(r#"{room="lab"}"#.into(), 5.0)],
        ),
        // Gauges: delta without counter resets; extrapolated when the samples stop short of the
        // window's edges (here 15 s short at the start: 4 over 285 s of 300).
        (
            r#"delta(temp{room="lab"}[5m])"#,
            600,
            vec![(r#"{room="lab"}"#.into(), 5.0)],
        ),
        (
            r#"delta(temp{room="lab"}[5m])"#,
            590,
            vec![(r#"{room="lab"}"#.into(), 4.0 * 300.0 / 285.0)],
        ),
        (
            r#"idelta(temp{room="lab"}[5m])"#,
            600,
            vec![(r#"{room="lab"}"#.into(), 1.0)],
        ),
        (
            r#"deriv(http_requests_total{instance="a",code="500"}[5m])"#,
            600,
            vec![(
                r#"{code="500", instance="a", job="api"}"#.into(),
                1.0 / 15.0,
            )],
        ),
        // *_over_time over the 21 samples in [300 s, 600 s]: 25 ×4, 26 ×4, …, 29 ×4, 30.
        (
            r#"avg_over_time(temp{room="lab"}[5m])"#,
            600,
            vec![(
                r#"{room="lab"}"#.into(),
                (25.0 + 26.0 + 27.0 + 28.0 + 29.0) * 4.0 / 21.0 + 30.0 / 21.0,
            )],
        ),
        (
            r#"min_over_time(temp{room="lab"}[5m])"#,
            600,
            vec![(r#"{room="lab"}"#.into(), 25.0)],
        ),
        (
            r#"max_over_time(temp{room="lab"}[5m])"#,
            600,
            vec![(r#"{room="lab"}"#.into(), 30.0)],
        ),
        (
            r#"count_over_time(temp{room="lab"}[5m])"#,
            600,
            vec![(r#"{room="lab"}"#.into(), 21.0)],
        ),
        (
            r#"sum_over_time(temp{room="hall"}[1m])"#,
            600,
            vec![(r#"{room="hall"}"#.into(), 75.0)],
        ),
        (
            r#"last_over_time(temp{room="lab"}[5m])"#,
            600,
            vec![(r#"temp{room="lab"}"#.into(), 30.0)],
        ),
        (
            r#"quantile_over_time(0.5, temp{room="lab"}[5m])"#,
            600,
            vec![(r#"{room="lab"}"#.into(), 27.0)],
        ),
        (
            r#"stddev_over_time(temp{room="hall"}[5m])"#,
            600,
            vec![(r#"{room="hall"}"#.into(), 0.0)],
        ),
        // Aggregations.
        ("sum(capacity)", 600, vec![("{}".into(), 150.0)]),
        ("avg(capacity)", 600, vec![("{}".into(), 75.0)]),
        ("min(capacity)", 600, vec![("{}".into(), 50.0)]),
        (
            "max by (instance) (capacity)",
            600,
            vec![
                (r#"{instance="a"}"#.into(), 100.0),
                (r#"{instance="b"}"#.into(), 50.0),
            ],
        ),
        (
            "count without (instance) (capacity)",
            600,
            vec![("{}".into(), 2.0)],
        ),
        ("stddev(capacity)", 600, vec![("{}".into(), 25.0)]),
        ("stdvar(capacity)", 600, vec![("{}".into(), 625.0)]),
        ("quantile(0.25, capacity)", 600, vec![("{}".into(), 62.5)]),
        (
            "topk(1, capacity)",
            600,
            vec![(r#"capacity{instance="a"}"#.into(), 100.0)],
        ),
        (
            "bottomk(1, capacity)",
            600,
            vec![(r#"capacity{instance="b"}"#.into(), 50.0)],
        ),
        (
            r#"sum by (code) (http_requests_total)"#,
            600,
            vec![
                (r#"{code="200"}"#.into(), 600.0),
                (r#"{code="500"}"#.into(), 40.0),
            ],
        ),
        // Binary operators and matching.
        (
            "capacity * 2",
            600,
            vec![
                (r#"{instance="a"}"#.into(), 200.0),
                (r#"{instance="b"}"#.into(), 100.0),
            ],
        ),
        (
            "capacity > 60",
            600,
            vec![(r#"capacity{instance="a"}"#.into(), 100.0)],
        ),
        (
            "capacity > bool 60",
            600,
            vec![
                (r#"{instance="a"}"#.into(), 1.0),
                (r#"{instance="b"}"#.into(), 0.0),
            ],
        ),
        ("2 ^ 3 + 1", 600, vec![("scalar".into(), 9.0)]),
        ("1 < bool 2", 600, vec![("scalar".into(), 1.0)]),
        (
            r#"http_requests_total{code="200"} / on(instance) capacity"#,
            600,
            vec![
                (r#"{instance="a"}"#.into(), 4.0),
                (r#"{instance="b"}"#.into(), 4.0),
            ],
        ),
        (
            r#"http_requests_total / ignoring(code, job) group_left capacity"#,
            600,
            vec![
                (r#"{code="200", instance="a", job="api"}"#.into(), 4.0),
                (r#"{code="200", instance="b", job="api"}"#.into(), 4.0),
                (r#"{code="500", instance="a", job="api"}"#.into(), 0.4),
            ],
        ),
        (
            r#"capacity / on(instance) group_right http_requests_total{code="200"}"#,
            600,
            vec![
                (r#"{code="200", instance="a", job="api"}"#.into(), 0.25),
                (r#"{code="200", instance="b", job="api"}"#.into(), 0.25),
            ],
        ),
        (
            r#"capacity and on(instance) http_requests_total{code="500"}"#,
            600,
            vec![(r#"capacity{instance="a"}"#.into(), 100.0)],
        ),
        (
            r#"capacity unless on(instance) http_requests_total{code="500"}"#,
            600,
            vec![(r#"capacity{instance="b"}"#.into(), 50.0)],
        ),
        (
            r#"temp{room="lab"} or capacity"#,
            600,
            vec![
                (r#"capacity{instance="a"}"#.into(), 100.0),
                (r#"capacity{instance="b"}"#.into(), 50.0),
                (r#"temp{room="lab"}"#.into(), 30.0),
            ],
        ),
        // Histograms: rank 45 of 100 falls in (0, 0.1] at 45/50; 0.7 → (0.1, 0.5] at 20/40.
        (
            "histogram_quantile(0.45, lat_bucket)",
            600,
            vec![(r#"{job="api"}"#.into(), 0.09)],
        ),
        (
            "histogram_quantile(0.7, lat_bucket)",
            600,
            vec![(r#"{job="api"}"#.into(), 0.1 + 0.4 * 0.5)],
        ),
        (
            "histogram_quantile(0.99, lat_bucket)",
            600,
            vec![(r#"{job="api"}"#.into(), 0.5 + 0.5 * 0.9)],
        ),
        // absent, clamp and math.
        (
            r#"absent(nonexistent{job="x"})"#,
            600,
            vec![(r#"{job="x"}"#.into(), 1.0)],
        ),
        ("absent(capacity)", 600, vec![]),
        (
            r#"absent_over_time(gone[1m])"#,
            600,
            vec![("{}".into(), 1.0)],
        ),
        (
            "clamp(capacity, 60, 90)",
            600,
            vec![
                (r#"{instance="a"}"#.into(), 90.0),
                (r#"{instance="b"}"#.into(), 60.0),
            ],
        ),
        (
            "clamp_min(capacity, 60)",
            600,
            vec![
                (r#"{instance="a"}"#.into(), 100.0),
                (r#"{instance="b"}"#.into(), 60.0),
            ],
        ),
        (
            "clamp_max(capacity, 60)",
            600,
            vec![
                (r#"{instance="a"}"#.into(), 60.0),
                (r#"{instance="b"}"#.into(), 50.0),
            ],
        ),
        (
            "abs(-capacity)",
            600,
            vec![
                (r#"{instance="a"}"#.into(), 100.0),
                (r#"{instance="b"}"#.into(), 50.0),
            ],
        ),
        (
            "ceil(capacity / 3)",
            600,
            vec![
                (r#"{instance="a"}"#.into(), 34.0),
                (r#"{instance="b"}"#.into(), 17.0),
            ],
        ),
        (
            "floor(capacity / 3)",
            600,
            vec![
                (r#"{instance="a"}"#.into(), 33.0),
                (r#"{instance="b"}"#.into(), 16.0),
            ],
        ),
        (
            "round(capacity / 3)",
            600,
            vec![
                (r#"{instance="a"}"#.into(), 33.0),
                (r#"{instance="b"}"#.into(), 17.0),
            ],
        ),
        (
            "round(capacity / 3, 0.5)",
            600,
            vec![
                (r#"{instance="a"}"#.into(), 33.5),
                (r#"{instance="b"}"#.into(), 16.5),
            ],
        ),
        // Time functions: 600 s after the epoch is 1970-01-01 00:10, a Thursday.
        ("time()", 600, vec![("scalar".into(), 600.0)]),
        ("minute()", 600, vec![("{}".into(), 10.0)]),
        ("hour()", 600, vec![("{}".into(), 0.0)]),
        ("day_of_week()", 600, vec![("{}".into(), 4.0)]),
        ("day_of_month()", 600, vec![("{}".into(), 1.0)]),
        ("day_of_year()", 600, vec![("{}".into(), 1.0)]),
        ("days_in_month()", 600, vec![("{}".into(), 31.0)]),
        ("month()", 600, vec![("{}".into(), 1.0)]),
        ("year()", 600, vec![("{}".into(), 1970.0)]),
        ("year(vector(951782400))", 600, vec![("{}".into(), 2000.0)]),
        (
            "day_of_month(vector(951782400))",
            600,
            vec![("{}".into(), 29.0)],
        ),
        (
            "days_in_month(vector(951782400))",
            600,
            vec![("{}".into(), 29.0)],
        ),
        (
            "timestamp(capacity)",
            610,
            vec![
                (r#"{instance="a"}"#.into(), 600.0),
                (r#"{instance="b"}"#.into(), 600.0),
            ],
        ),
        // Subqueries.
        (
            r#"max_over_time(rate(http_requests_total{instance="a",code="200"}[1m])[5m:1m])"#,
            600,
            vec![(a200.into(), 2.0 / 3.0)],
        ),
    ];
    let mut failures = Vec::new();
    for (q, t, want) in cases {
        let got = run(&db, q, t);
        let same = got.len() == want.len()
            && got
                .iter()
                .zip(&want)
                .all(|(g, w)| g.0 == w.0 && close(g.1, w.1));
        if !same {
            failures.push(format!("{q} @ {t}s\n  got  {got:?}\n  want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn range_queries_step_through_time_and_errors_are_clear() {
    let (_dir, db) = fixture();
    let expr = parse(r#"temp{room="lab"}"#).unwrap();
    let mut engine = Engine::new(&db, EngineConfig::default());
    let m = engine.range(&expr, 0, 600 * S, 60 * S).unwrap();
    assert_eq!(m.len(), 1);
    let values: Vec<f64> = m[0].points.iter().map(|p| p.1).collect();
    assert_eq!(
        values,
        (0..=10).map(|i| 20.0 + i as f64).collect::<Vec<_>>()
    );
    assert!(engine.range(&expr, 0, 600 * S, 0).is_err());
    assert!(parse("sum(").is_err());
    let bad = parse("capacity + on(job) capacity").unwrap();
    let e = Engine::new(&db, EngineConfig::default())
        .instant(&bad, 600 * S)
        .unwrap_err();
    assert!(e.to_string().contains("many-to-many"), "{e}");
    let small = EngineConfig {
        samples_max: 10,
        ..EngineConfig::default()
    };
    let e = Engine::new(&db, small)
        .instant(&parse("capacity[10m]").unwrap(), 600 * S)
        .unwrap_err();
    assert!(e.to_string().contains("too many samples"), "{e}");
}

#[test]
fn a_subquery_over_a_constant_is_bounded_by_the_sample_budget() {
    let (_dir, db) = fixture();
    let cfg = EngineConfig {
        samples_max: 1000,
        ..EngineConfig::default()
    };
    let e = Engine::new(&db, cfg)
        .instant(&parse("max_over_time(vector(1)[1y:1s])").unwrap(), 600 * S)
        .unwrap_err();
    assert!(e.to_string().contains("too many samples"), "{e}");
}

/// A range query reuses what it loads across steps (windows are sliced on from the previous
/// step, groups worked out once); each step must still equal an instant query at that time.
#[test]
fn a_range_query_equals_an_instant_query_at_every_step() {
    let (_dir, db) = fixture();
    let queries = [
        "http_requests_total",
        "temp offset 2m",
        "temp @ 300",
        "rate(http_requests_total[1m])",
        "sum by (job) (rate(http_requests_total[2m]))",
        "sum without (instance) (increase(http_requests_total[90s] offset 1m))",
        "max_over_time(temp[3m] @ 450)",
        "avg_over_time(gone[1m])",
        "gone",
        "topk(1, http_requests_total)",
        "count by (code) (http_requests_total > 20)",
        "max_over_time(rate(http_requests_total[1m])[3m:30s])",
        "temp - on(room) group_left temp offset 1m",
        "sum(capacity) / count(capacity)",
    ];
    let (start, end, step) = (0, 600, 35);
    for q in queries {
        let expr = parse(q).unwrap();
        let m = Engine::new(&db, EngineConfig::default())
            .range(&expr, start * S, end * S, step * S)
            .unwrap_or_else(|e| panic!("{q}: {e}"));
        let mut t = start;
        while t <= end {
            let mut from_range: Result = m
                .iter()
                .filter_map(|s| {
                    let p = s.points.iter().find(|p| p.0 == t * S)?;
                    Some((s.labels.to_string(), p.1))
                })
                .collect();
            let mut instant = run(&db, q, t);
            if instant.len() == 1 && instant[0].0 == "scalar" {
                instant[0].0 = "{}".into();
            }
            from_range.sort_by(|a, b| a.0.cmp(&b.0));
            instant.sort_by(|a, b| a.0.cmp(&b.0));
            let same = from_range.len() == instant.len()
                && from_range
                    .iter()
                    .zip(&instant)
                    .all(|(a, b)| a.0 == b.0 && close(a.1, b.1));
            assert!(
                same,
                "{q} at {t}s: range {from_range:?}, instant {instant:?}"
            );
            t += step;
        }
    }
}
