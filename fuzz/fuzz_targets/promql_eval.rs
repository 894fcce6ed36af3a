//! Any query text parses and evaluates (instant and range) to a value or a typed error, never a
//! panic, over a small fixed data set.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sb_monitor::promql::{Engine, EngineConfig, parse};
use sb_tsdb::{Labels, Tsdb, TsdbConfig};
use std::sync::OnceLock;

fn db() -> &'static Tsdb {
    static DB: OnceLock<Tsdb> = OnceLock::new();
    DB.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sb-fuzz-promql-{}", std::process::id()));
        let (db, _) = Tsdb::open(&dir, TsdbConfig { sync: false, ..TsdbConfig::default() })
            .expect("open a tsdb");
        let mut batch = Vec::new();
        for (name, job, le) in [
            ("up", "a", ""),
            ("up", "b", ""),
            ("req_total", "a", ""),
            ("lat_bucket", "a", "0.1"),
            ("lat_bucket", "a", "+Inf"),
        ] {
            let labels = Labels::from_pairs(&[("__name__", name), ("job", job), ("le", le)]);
            let points = (0..40).map(|i| (i * 15_000, (i * 7 % 13) as f64)).collect();
            batch.push((labels, points));
        }
        db.append(&batch).expect("append");
        db
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(q) = std::str::from_utf8(data) else { return };
    if q.len() > 512 {
        return;
    }
    let Ok(expr) = parse(q) else { return };
    let cfg = EngineConfig { samples_max: 100_000, range_points_max: 100, ..EngineConfig::default() };
    let _ = Engine::new(db(), cfg.clone()).instant(&expr, 300_000);
    let _ = Engine::new(db(), cfg).range(&expr, 0, 600_000, 60_000);
});
