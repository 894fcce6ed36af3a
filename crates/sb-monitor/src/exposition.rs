//! The Prometheus text exposition format (0.0.4, and the sample lines of OpenMetrics), as
//! scrape targets serve it: `name{label="value",…} value [timestamp_ms]`, with `# HELP`,
//! `# TYPE` and `# EOF` lines. Bounded: at most `samples_max` samples, or an error.

use sb_tsdb::{Labels, METRIC_NAME};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ExpositionError {
    pub line: usize,
    pub reason: String,
}

/// One exposed sample: its labels (name included), value, and timestamp if the target gave one.
#[derive(Clone, Debug, PartialEq)]
pub struct Exposed {
    pub labels: Labels,
    pub value: f64,
    pub timestamp_ms: Option<i64>,
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" | "nan" => Some(f64::NAN),
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

fn metric_name_ok(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

type Pairs = Vec<(String, String)>;

/// Parses `{a="x",b="y"}` starting after the `{`; returns the pairs and the rest after `}`.
fn parse_labels(mut s: &str) -> Result<(Pairs, &str), String> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((out, rest));
        }
        let name_len = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .ok_or("unterminated label set")?;
        let name = &s[..name_len];
        if !crate::remote_write::valid_label_name(name) {
            return Err(format!("invalid label name {name:?}"));
        }
        s = s[name_len..].trim_start();
        s = s.strip_prefix('=').ok_or("expected = after a label name")?;
        s = s
            .trim_start()
            .strip_prefix('"')
            .ok_or("expected a quoted label value")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, c)) => {
                        value.push('\\');
                        value.push(c);
                    }
                    None => return Err("unterminated label value".into()),
                },
                Some((_, c)) => value.push(c),
            }
        };
        out.push((name.to_string(), value));
        s = s[end + 1..].trim_start();
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err("expected , or } after a label".into());
        }
    }
}

/// Parses an exposition body.
pub fn parse(body: &str, samples_max: usize) -> Result<Vec<Exposed>, ExpositionError> {
    let mut out = Vec::new();
    for (i, raw) in body.lines().enumerate() {
        let err = |reason: String| ExpositionError {
            line: i + 1,
            reason,
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_len = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(line.len());
        let name = &line[..name_len];
        if !metric_name_ok(name) {
            return Err(err(format!("invalid metric name {name:?}")));
        }
        let mut rest = &line[name_len..];
        let mut pairs = Vec::new();
        if let Some(after) = rest.strip_prefix('{') {
            let (p, r) = parse_labels(after).map_err(err)?;
            pairs = p;
            rest = r;
        }
        let mut fields = rest.split_whitespace();
        let value = fields.next().ok_or_else(|| err("missing value".into()))?;
        let value = parse_value(value).ok_or_else(|| err(format!("bad value {value:?}")))?;
        let timestamp_ms = match fields.next() {
            None => None,
            Some(t) => Some(
                t.parse::<i64>()
                    .map_err(|_| err(format!("bad timestamp {t:?}")))?,
            ),
        };
        if fields.next().is_some() {
            return Err(err("unexpected text after the timestamp".into()));
        }
        if pairs.iter().any(|(n, _)| n == METRIC_NAME) {
            return Err(err("__name__ is not a label a target may set".into()));
        }
        pairs.push((METRIC_NAME.to_string(), name.to_string()));
        if out.len() >= samples_max {
            return Err(err(format!(
                "more than {samples_max} samples (the scrape job's sample limit)"
            )));
        }
        out.push(Exposed {
            labels: Labels::new(pairs),
            value,
            timestamp_ms,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_what_node_exporter_and_prometheus_serve() {
        let body = "# HELP node_load1 1m load average.\n# TYPE node_load1 gauge\nnode_load1 0.42\n\
            node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 12345.6\n\
            http_requests_total{path=\"/a \\\"b\\\"\\\\c\",code=\"200\",} 7 1700000000000\n\
            weird_value +Inf\nnot_a_number NaN\n# EOF\n";
        let got = parse(body, 100).unwrap();
        assert_eq!(got.len(), 5);
        assert_eq!(
            got[0].labels,
            Labels::from_pairs(&[("__name__", "node_load1")])
        );
        assert_eq!(got[2].labels.get("path"), Some("/a \"b\"\\c"));
        assert_eq!(got[2].timestamp_ms, Some(1_700_000_000_000));
        assert!(got[3].value.is_infinite() && got[4].value.is_nan());
    }

    #[test]
    fn bad_lines_and_too_many_samples_are_refused() {
        for (body, why) in [
            ("1bad 1", "invalid metric name"),
            ("m{a=\"x} 1", "unterminated"),
            ("m{a=x} 1", "quoted"),
            ("m 1 2 3", "unexpected"),
            ("m abc", "bad value"),
            ("m{__name__=\"y\"} 1", "__name__"),
        ] {
            let e = parse(body, 10).unwrap_err();
            assert!(e.reason.contains(why), "{body}: {e}");
        }
        assert!(
            parse("a 1\nb 2\nc 3", 2)
                .unwrap_err()
                .reason
                .contains("sample limit")
        );
    }
}
