//! What rollup tiers cost: memory and disk per raw series after rolling up, in process
//! (sb-tsdb directly, no server), against what the raw samples cost.

use sb_tsdb::{Tsdb, TsdbConfig};

/// Live heap bytes (allocated and not yet freed): the figures are heap, not RSS, which freed
/// memory reused by the next step would hide. `main` installs the counting allocator.
fn live() -> u64 {
    let st = crate::ALLOCATOR.stats();
    (st.bytes_allocated as u64).saturating_sub(st.bytes_deallocated as u64)
}

#[derive(clap::Args)]
pub struct RollupArgs {
    /// Raw series (half counters, half gauges with random values, as `metrics` writes).
    #[arg(long, default_value_t = 10_000)]
    series: usize,
    /// Hours of samples, one every 15 s.
    #[arg(long, default_value_t = 2)]
    hours: i64,
}

pub fn run(args: &RollupArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = TsdbConfig {
        sync: false,
        ..TsdbConfig::default()
    };
    let (raw, _) = Tsdb::open(&dir.path().join("raw"), cfg.clone())?;
    let t0 = 1_700_000_000_000i64;
    let steps = args.hours * 240;
    let n = args.series.max(1) as u64;
    let r0 = live();
    // The same series and values as `sb-bench metrics` (half counters, half random gauges).
    let mut counters = vec![0.0; args.series];
    for s in 0..args.series {
        let points: Vec<(i64, f64)> = (0..steps)
            .map(|k| {
                (
                    t0 + k * 15_000,
                    crate::metrics::value(s, k as u64, &mut counters),
                )
            })
            .collect();
        raw.append(&[(crate::metrics::labels(s), points)])?;
    }
    let now = t0 + steps * 15_000;
    raw.checkpoint(now)?;
    let r1 = live();
    let raw_disk = raw.disk_bytes()?;
    println!(
        "{} series × {steps} samples: raw {} B of heap and {} B of disk per series",
        args.series,
        (r1 - r0) / n,
        raw_disk / n
    );
    let mut tiers = Vec::new();
    for (name, res) in [("5m", 300_000i64), ("1h", 3_600_000)] {
        let before = live();
        let (tier, _) = Tsdb::open(
            &dir.path().join(name),
            TsdbConfig {
                head_chunk_max_age_ms: res * 120,
                ..cfg.clone()
            },
        )?;
        let started = std::time::Instant::now();
        let st = sb_tsdb::rollup::roll_up(&raw, &tier, res, now, 3_600_000)?;
        tier.checkpoint(now)?;
        let after = live();
        println!(
            "tier {name}: {} buckets rolled up in {:.2} s; {} B of heap and {} B of disk per series",
            st.buckets,
            started.elapsed().as_secs_f64(),
            after.saturating_sub(before) / n,
            tier.disk_bytes()? / n
        );
        tiers.push(tier);
    }
    Ok(())
}
