//! `sb query` and `sb alerts …`.

use crate::cli::{AlertsCmd, QueryArgs};
use crate::client_cmds::{fmt_time, logged_in, output};
use anyhow::{Context, bail};
use sb_monitor::time::{parse_duration, parse_time};
use sb_proto::SilenceCreate;
use serde_json::Value;

/// Width of a sparkline, in characters.
const SPARK_WIDTH: usize = 40;

fn labels_text(metric: &Value) -> String {
    let Some(m) = metric.as_object() else {
        return "{}".into();
    };
    let name = m.get("__name__").and_then(Value::as_str).unwrap_or("");
    let rest: Vec<String> = m
        .iter()
        .filter(|(k, _)| *k != "__name__")
        .map(|(k, v)| format!("{k}={}", v))
        .collect();
    format!("{name}{{{}}}", rest.join(", "))
}

fn num(v: &Value) -> f64 {
    v.as_str()
        .map(|s| match s {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other.parse().unwrap_or(f64::NAN),
        })
        .unwrap_or(f64::NAN)
}

/// Block characters scaled between the series' min and max, bucketed to `SPARK_WIDTH`.
pub fn sparkline(values: &[f64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        return String::new();
    }
    let (lo, hi) = finite
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let buckets = values.len().clamp(1, SPARK_WIDTH);
    (0..buckets)
        .map(|i| {
            let from = i * values.len() / buckets;
            let to = ((i + 1) * values.len() / buckets).max(from + 1);
            let part: Vec<f64> = values[from..to]
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .collect();
            if part.is_empty() {
                return ' ';
            }
            let avg = part.iter().sum::<f64>() / part.len() as f64;
            let level = if hi > lo {
                ((avg - lo) / (hi - lo) * 7.0).round() as usize
            } else {
                3
            };
            BARS[level.min(7)]
        })
        .collect()
}

pub async fn query(a: QueryArgs, json: bool) -> anyhow::Result<()> {
    let (_, client) = logged_in()?;
    let Some(range) = a.range else {
        let mut params = vec![("query", a.expr.as_str())];
        if let Some(t) = &a.time {
            params.push(("time", t));
        }
        if let Some(r) = &a.resolution {
            params.push(("resolution", r));
        }
        let data = client.prometheus_api("/api/v1/query", &params).await?;
        return output(json, &data, || print_instant(&data));
    };
    let range_ms = parse_duration(&range).context("--range")?;
    if range_ms <= 0 {
        bail!("--range must be positive, e.g. 1h");
    }
    let end_ms = match &a.time {
        Some(t) => parse_time(t).context("--time")?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
    };
    let step_ms = match &a.step {
        Some(s) => parse_duration(s).context("--step")?,
        None => (range_ms / 60).max(1000),
    };
    let secs = |ms: i64| format!("{:.3}", ms as f64 / 1000.0);
    let (start, end, step) = (secs(end_ms - range_ms), secs(end_ms), secs(step_ms));
    let mut params = vec![
        ("query", a.expr.as_str()),
        ("start", &start),
        ("end", &end),
        ("step", &step),
    ];
    if let Some(r) = &a.resolution {
        params.push(("resolution", r));
    }
    let data = client
        .prometheus_api("/api/v1/query_range", &params)
        .await?;
    output(json, &data, || {
        let result = data["result"].as_array().cloned().unwrap_or_default();
        if result.is_empty() {
            println!("(no data)");
        }
        for r in &result {
            let values: Vec<f64> = r["values"]
                .as_array()
                .map(|v| v.iter().map(|p| num(&p[1])).collect())
                .unwrap_or_default();
            let last = values.last().copied().unwrap_or(f64::NAN);
            let (lo, hi) = values
                .iter()
                .filter(|v| v.is_finite())
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            println!("{}", labels_text(&r["metric"]));
            println!(
                "  {}  last {}  min {}  max {}",
                sparkline(&values),
                sb_monitor::promql::fmt_float(last),
                sb_monitor::promql::fmt_float(lo),
                sb_monitor::promql::fmt_float(hi)
            );
        }
    })
}

fn print_instant(data: &Value) {
    match data["resultType"].as_str() {
        Some("scalar") | Some("string") => println!("{}", data["result"][1].as_str().unwrap_or("")),
        _ => {
            let result = data["result"].as_array().cloned().unwrap_or_default();
            if result.is_empty() {
                println!("(no data)");
                return;
            }
            let rows: Vec<(String, String)> = result
                .iter()
                .map(|r| {
                    (
                        labels_text(&r["metric"]),
                        r["value"][1].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            let width = rows
                .iter()
                .map(|r| r.0.chars().count())
                .max()
                .unwrap_or(6)
                .max(6);
            println!("{:<width$}  VALUE", "SERIES");
            for (l, v) in rows {
                println!("{l:<width$}  {v}");
            }
        }
    }
}

pub async fn alerts(cmd: AlertsCmd, json: bool) -> anyhow::Result<()> {
    let (_, client) = logged_in()?;
    match cmd {
        AlertsCmd::List => {
            let list = client.alerts().await?;
            output(json, &list, || {
                if list.is_empty() {
                    println!("No alerts.");
                }
                for a in &list {
                    let name = a.labels.get("alertname").cloned().unwrap_or_default();
                    let labels: Vec<String> = a
                        .labels
                        .iter()
                        .filter(|(k, _)| *k != "alertname")
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    println!(
                        "{:<9} {name} {{{}}} value {} since {}{}",
                        a.state.to_uppercase(),
                        labels.join(", "),
                        sb_monitor::promql::fmt_float(a.value),
                        fmt_time(a.fired_at_ms.unwrap_or(a.active_at_ms)),
                        if a.silenced { " (silenced)" } else { "" }
                    );
                    if let Some(s) = a.annotations.get("summary") {
                        println!("          {s}");
                    }
                }
            })
        }
        AlertsCmd::Silence {
            matchers,
            duration,
            comment,
        } => {
            let ms = parse_duration(&duration).context("--for")?;
            if ms <= 0 {
                bail!("--for must be positive, e.g. 2h");
            }
            let s = client
                .create_silence(&SilenceCreate {
                    matchers,
                    starts_at_ms: None,
                    ends_at_ms: None,
                    duration_secs: Some((ms as u64).div_ceil(1000)),
                    comment,
                })
                .await?;
            output(json, &s, || {
                println!(
                    "Silenced {} until {} (id {}).",
                    s.matchers.join(", "),
                    fmt_time(s.ends_at_ms),
                    s.id
                )
            })
        }
        AlertsCmd::Silences => {
            let list = client.silences().await?;
            output(json, &list, || {
                if list.is_empty() {
                    println!("No silences.");
                }
                for s in &list {
                    println!(
                        "{}  {:<8} {}  until {}  by {}{}",
                        s.id,
                        s.state,
                        s.matchers.join(", "),
                        fmt_time(s.ends_at_ms),
                        s.created_by,
                        if s.comment.is_empty() {
                            String::new()
                        } else {
                            format!("  \"{}\"", s.comment)
                        }
                    );
                }
            })
        }
        AlertsCmd::Expire { id } => {
            client.expire_silence(&id).await?;
            eprintln!("Silence {id} expired.");
            Ok(())
        }
        AlertsCmd::Reload => {
            let r = client.reload_rules().await?;
            output(json, &r, || {
                println!("Reloaded {} rule group(s), {} rule(s).", r.groups, r.rules)
            })
        }
    }
}
