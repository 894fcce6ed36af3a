//! Influx line protocol: `measurement[,tag=value…] field=value[,field=value…] [timestamp]`.
//! Each numeric field becomes the series `<measurement>_<field>` (as Telegraf's Prometheus
//! output names them) labelled with the tags; booleans are 1 or 0; string fields are skipped.
//! Names are made valid Prometheus names (other characters become `_`).

use sb_tsdb::{Labels, METRIC_NAME, Point};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Nanoseconds,
    Microseconds,
    Milliseconds,
    Seconds,
}

impl Precision {
    /// From the `precision` query parameter (`ns`, `us`, `ms`, `s`; Influx 1.x's `n`, `u` too).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ns" | "n" => Some(Self::Nanoseconds),
            "us" | "u" | "µs" => Some(Self::Microseconds),
            "ms" => Some(Self::Milliseconds),
            "s" => Some(Self::Seconds),
            _ => None,
        }
    }

    fn to_millis(self, t: i64) -> i64 {
        match self {
            Self::Nanoseconds => t.div_euclid(1_000_000),
            Self::Microseconds => t.div_euclid(1_000),
            Self::Milliseconds => t,
            Self::Seconds => t.saturating_mul(1000),
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

/// Makes a Prometheus-valid name: `[a-zA-Z_:][a-zA-Z0-9_:]*` for metrics, no `:` for labels.
pub fn sanitize(name: &str, colons: bool) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// Splits at unescaped `sep` outside double quotes; keeps escapes in the parts.
fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut escaped, mut quoted) = (0, false, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n @ (',' | '=' | ' ' | '"' | '\\')) => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn field_value(raw: &str) -> Result<Option<f64>, String> {
    if raw.starts_with('"') {
        return if raw.len() >= 2 && raw.ends_with('"') {
            Ok(None)
        } else {
            Err(format!("unterminated string field {raw}"))
        };
    }
    match raw {
        "t" | "T" | "true" | "True" | "TRUE" => return Ok(Some(1.0)),
        "f" | "F" | "false" | "False" | "FALSE" => return Ok(Some(0.0)),
        _ => {}
    }
    if let Some(int) = raw.strip_suffix('i') {
        return int
            .parse::<i64>()
            .map(|v| Some(v as f64))
            .map_err(|_| format!("bad integer field value {raw}"));
    }
    if let Some(uint) = raw.strip_suffix('u') {
        return uint
            .parse::<u64>()
            .map(|v| Some(v as f64))
            .map_err(|_| format!("bad unsigned field value {raw}"));
    }
    let ok = !raw.is_empty()
        && raw
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'));
    match raw.parse::<f64>() {
        Ok(v) if ok => Ok(Some(v)),
        _ => Err(format!("bad field value {raw}")),
    }
}

/// Parses a body. `now_ms` stamps lines without a timestamp. Stops at the first bad line.
pub fn parse(
    body: &str,
    precision: Precision,
    now_ms: i64,
) -> Result<Vec<(Labels, Point)>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in body.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason: String| ParseError {
            line: i + 1,
            reason,
        };
        let parts = split_unescaped(line, ' ');
        let parts: Vec<&str> = parts.into_iter().filter(|p| !p.is_empty()).collect();
        let (series, fields, ts) = match parts.as_slice() {
            [s, f] => (*s, *f, None),
            [s, f, t] => (*s, *f, Some(*t)),
            _ => {
                return Err(err(
                    "expected `measurement[,tags] fields [timestamp]`".into()
                ));
            }
        };
        let t = match ts {
            None => now_ms,
            Some(t) => precision.to_millis(
                t.parse::<i64>()
                    .map_err(|_| err(format!("bad timestamp {t}")))?,
            ),
        };
        let mut head = split_unescaped(series, ',').into_iter();
        let measurement = unescape(head.next().unwrap_or_default());
        if measurement.is_empty() {
            return Err(err("missing measurement".into()));
        }
        let mut tags = Vec::new();
        for tag in head {
            let kv = split_unescaped(tag, '=');
            let [k, v] = kv.as_slice() else {
                return Err(err(format!("bad tag {tag}")));
            };
            let name = sanitize(&unescape(k), false);
            if name.starts_with("__") {
                return Err(err(format!("tag names starting with __ are reserved: {k}")));
            }
            tags.push((name, unescape(v)));
        }
        let mut any = false;
        for field in split_unescaped(fields, ',') {
            let kv = split_unescaped(field, '=');
            let [k, v] = kv.as_slice() else {
                return Err(err(format!("bad field {field}")));
            };
            let Some(value) = field_value(v).map_err(err)? else {
                any = true;
                continue;
            };
            any = true;
            let name = sanitize(&format!("{measurement}_{}", unescape(k)), true);
            let mut pairs = tags.clone();
            pairs.push((METRIC_NAME.to_string(), name));
            out.push((Labels::new(pairs), (t, value)));
        }
        if !any {
            return Err(err("a line needs at least one field".into()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_fields_tags_escapes_and_precisions() {
        let body = "# comment\n\
            cpu,host=a\\ b,region=eu usage_idle=97.5,cores=8i,up=true,note=\"x y\" 1700000000000000000\n\
            mem free=1.5e3 1700000000\n";
        let got = parse(body, Precision::Nanoseconds, 0).unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(
            got[0].0,
            Labels::from_pairs(&[
                ("__name__", "cpu_usage_idle"),
                ("host", "a b"),
                ("region", "eu")
            ])
        );
        assert_eq!(got[0].1, (1_700_000_000_000, 97.5));
        assert_eq!(got[1].1.1, 8.0);
        assert_eq!(got[2].1.1, 1.0);
        assert_eq!(
            got[3].1,
            (1_700, 1500.0),
            "ns precision: 1.7e9 ns is 1700 ms"
        );
        let s = parse("mem free=1 1700000000", Precision::Seconds, 0).unwrap();
        assert_eq!(s[0].1.0, 1_700_000_000_000);
        let now = parse("mem free=1", Precision::Seconds, 42).unwrap();
        assert_eq!(now[0].1.0, 42);
    }

    #[test]
    fn bad_lines_say_which_and_why() {
        for (body, why) in [
            ("cpu", "expected"),
            ("cpu x=", "bad field value"),
            ("cpu x=1 12ab", "bad timestamp"),
            ("cpu,host x=1", "bad tag"),
            ("cpu x=\"open", "unterminated"),
            ("ok x=1\ncpu,__name__=y x=1", "reserved"),
        ] {
            let e = parse(body, Precision::Nanoseconds, 0).unwrap_err();
            assert!(e.reason.contains(why), "{body}: {e}");
        }
        assert_eq!(
            parse("ok x=1\nbad", Precision::Seconds, 0)
                .unwrap_err()
                .line,
            2
        );
    }
}
