//! `sb agent`: this host's CPU, memory, disk, filesystem, network and load figures, read from
//! `/proc` and `statvfs`, named as node_exporter names them (so its dashboards work), sent to
//! the server by remote_write every interval.

use crate::cli::AgentArgs;
use anyhow::Context;
use sb_client::Client;
use sb_tsdb::Labels;
use std::time::Duration;

type Sample = (Labels, f64);

fn l(name: &str, pairs: &[(&str, &str)]) -> Labels {
    let mut v: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.push(("__name__".into(), name.into()));
    Labels::new(v)
}

/// Ticks per second of /proc/stat's CPU counters (USER_HZ; 100 on Linux).
const USER_HZ: f64 = 100.0;
/// Filesystem types that are not disks.
const PSEUDO_FS: [&str; 20] = [
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "securityfs",
    "pstore",
    "debugfs",
    "tracefs",
    "configfs",
    "fusectl",
    "mqueue",
    "hugetlbfs",
    "bpf",
    "autofs",
    "binfmt_misc",
    "nsfs",
    "overlay",
    "squashfs",
];

fn cpu(out: &mut Vec<Sample>, stat: &str) {
    const MODES: [&str; 8] = [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ];
    for line in stat.lines() {
        let mut f = line.split_whitespace();
        let Some(name) = f.next() else { continue };
        let Some(cpu) = name.strip_prefix("cpu").filter(|c| !c.is_empty()) else {
            continue;
        };
        for (mode, v) in MODES.iter().zip(f) {
            if let Ok(ticks) = v.parse::<f64>() {
                out.push((
                    l("node_cpu_seconds_total", &[("cpu", cpu), ("mode", mode)]),
                    ticks / USER_HZ,
                ));
            }
        }
    }
}

fn memory(out: &mut Vec<Sample>, meminfo: &str) {
    for line in meminfo.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let Some(Ok(v)) = f.next().map(str::parse::<f64>) else {
            continue;
        };
        let bytes = if f.next() == Some("kB") {
            v * 1024.0
        } else {
            v
        };
        let key: String = key
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        out.push((l(&format!("node_memory_{key}_bytes"), &[]), bytes));
    }
}

fn load(out: &mut Vec<Sample>, loadavg: &str) {
    let f: Vec<&str> = loadavg.split_whitespace().collect();
    for (i, name) in ["node_load1", "node_load5", "node_load15"]
        .iter()
        .enumerate()
    {
        if let Some(Ok(v)) = f.get(i).map(|s| s.parse::<f64>()) {
            out.push((l(name, &[]), v));
        }
    }
}

fn disks(out: &mut Vec<Sample>, diskstats: &str) {
    for line in diskstats.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 14 || f[2].starts_with("loop") || f[2].starts_with("ram") {
            continue;
        }
        let dev = f[2];
        let n = |i: usize| f[i].parse::<f64>().unwrap_or(0.0);
        out.push((
            l("node_disk_reads_completed_total", &[("device", dev)]),
            n(3),
        ));
        out.push((
            l("node_disk_read_bytes_total", &[("device", dev)]),
            n(5) * 512.0,
        ));
        out.push((
            l("node_disk_writes_completed_total", &[("device", dev)]),
            n(7),
        ));
        out.push((
            l("node_disk_written_bytes_total", &[("device", dev)]),
            n(9) * 512.0,
        ));
        out.push((
            l("node_disk_io_time_seconds_total", &[("device", dev)]),
            n(12) / 1000.0,
        ));
    }
}

fn network(out: &mut Vec<Sample>, netdev: &str) {
    for line in netdev.lines().skip(2) {
        let Some((dev, rest)) = line.split_once(':') else {
            continue;
        };
        let dev = dev.trim();
        let f: Vec<f64> = rest
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        if f.len() < 16 {
            continue;
        }
        let d = [("device", dev)];
        out.push((l("node_network_receive_bytes_total", &d), f[0]));
        out.push((l("node_network_receive_packets_total", &d), f[1]));
        out.push((l("node_network_receive_errs_total", &d), f[2]));
        out.push((l("node_network_transmit_bytes_total", &d), f[8]));
        out.push((l("node_network_transmit_packets_total", &d), f[9]));
        out.push((l("node_network_transmit_errs_total", &d), f[10]));
    }
}

fn filesystems(out: &mut Vec<Sample>, mounts: &str) {
    let mut seen = std::collections::HashSet::new();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3
            || PSEUDO_FS.contains(&f[2])
            || f[2].starts_with("fuse.")
            || !seen.insert(f[1])
        {
            continue;
        }
        let Ok(st) = rustix::fs::statvfs(f[1]) else {
            continue;
        };
        let frsize = st.f_frsize as f64;
        let labels = [("device", f[0]), ("mountpoint", f[1]), ("fstype", f[2])];
        out.push((
            l("node_filesystem_size_bytes", &labels),
            st.f_blocks as f64 * frsize,
        ));
        out.push((
            l("node_filesystem_free_bytes", &labels),
            st.f_bfree as f64 * frsize,
        ));
        out.push((
            l("node_filesystem_avail_bytes", &labels),
            st.f_bavail as f64 * frsize,
        ));
        out.push((l("node_filesystem_files", &labels), st.f_files as f64));
        out.push((l("node_filesystem_files_free", &labels), st.f_ffree as f64));
    }
}

/// Everything this host reports now.
pub fn collect() -> Vec<Sample> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mut out = Vec::new();
    cpu(&mut out, &read("/proc/stat"));
    memory(&mut out, &read("/proc/meminfo"));
    load(&mut out, &read("/proc/loadavg"));
    disks(&mut out, &read("/proc/diskstats"));
    network(&mut out, &read("/proc/net/dev"));
    filesystems(&mut out, &read("/proc/mounts"));
    out
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

pub async fn run(a: AgentArgs, client: Client) -> anyhow::Result<()> {
    let interval = sb_monitor::time::parse_duration(&a.interval).context("--interval")?;
    let interval = Duration::from_millis(interval.max(1000) as u64);
    let instance = a.instance.unwrap_or_else(hostname);
    let mut backoff = Duration::from_secs(1);
    let mut pushes = 0u64;
    loop {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let batch: sb_tsdb::Batch = collect()
            .into_iter()
            .map(|(labels, v)| {
                (
                    labels.with("job", &a.job).with("instance", &instance),
                    vec![(t, v)],
                )
            })
            .collect();
        let n = batch.len();
        let body = sb_monitor::remote_write::encode(&batch);
        let sent = client
            .raw_with_headers(
                reqwest::Method::POST,
                "/api/v1/write",
                &[
                    ("content-type", "application/x-protobuf"),
                    ("content-encoding", "snappy"),
                    ("x-prometheus-remote-write-version", "0.1.0"),
                ],
                body,
            )
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => {
                pushes += 1;
                backoff = Duration::from_secs(1);
                if a.once || pushes == 1 || pushes.is_multiple_of(20) {
                    eprintln!("sent {n} samples as instance {instance} ({pushes} pushes so far)");
                }
                if a.once {
                    return Ok(());
                }
                tokio::time::sleep(interval).await;
            }
            other => {
                let why = match other {
                    Ok(resp) => {
                        let status = resp.status();
                        format!("{status}: {}", resp.text().await.unwrap_or_default().trim())
                    }
                    Err(e) => e.to_string(),
                };
                if a.once {
                    anyhow::bail!("the server refused the samples: {why}");
                }
                eprintln!("push failed ({why}); retrying in {}s", backoff.as_secs());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn proc_files_become_node_exporter_series() {
        let mut out = Vec::new();
        cpu(
            &mut out,
            "cpu  10 0 5 100 0 0 0 0 0 0\ncpu0 10 0 5 100 0 0 0 0 0 0\nintr 1\n",
        );
        assert_eq!(out.len(), 8, "per-CPU modes only, not the total line");
        assert_eq!(out[3].0.get("mode"), Some("idle"));
        assert_eq!(out[3].1, 1.0);
        let mut out = Vec::new();
        memory(
            &mut out,
            "MemTotal:       16000 kB\nMemAvailable:    8000 kB\n",
        );
        assert_eq!(out[0].0.metric_name(), Some("node_memory_MemTotal_bytes"));
        assert_eq!(out[1].1, 8000.0 * 1024.0);
        let mut out = Vec::new();
        load(&mut out, "0.50 0.25 0.10 1/100 42\n");
        assert_eq!(
            out.iter().map(|s| s.1).collect::<Vec<_>>(),
            vec![0.5, 0.25, 0.1]
        );
        let mut out = Vec::new();
        network(
            &mut out,
            "h1\nh2\n  eth0: 100 2 0 0 0 0 0 0 300 4 0 0 0 0 0 0\n",
        );
        assert_eq!(out[0].1, 100.0);
        assert_eq!(out[3].1, 300.0);
    }

    #[test]
    fn this_host_reports_cpu_memory_and_a_filesystem() {
        let all = collect();
        let has = |n: &str| all.iter().any(|s| s.0.metric_name() == Some(n));
        assert!(
            has("node_cpu_seconds_total") && has("node_memory_MemTotal_bytes") && has("node_load1")
        );
        assert!(
            has("node_filesystem_size_bytes"),
            "at least one real filesystem"
        );
    }
}
