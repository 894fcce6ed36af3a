//! Prometheus remote_write 1.0: a snappy-compressed (block format) protobuf `WriteRequest`.
//! The messages are declared here with prost's derive; only the fields 1.0 defines for samples
//! are read (exemplars, native histograms and metadata are skipped).

use prost::Message;
use sb_tsdb::{Batch, Labels};

#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

// The same messages for decoding: strings as slices of the request body (no copy per label).

#[derive(Clone, PartialEq, Message)]
struct WriteRequestIn {
    #[prost(message, repeated, tag = "1")]
    timeseries: Vec<TimeSeriesIn>,
}

#[derive(Clone, PartialEq, Message)]
struct TimeSeriesIn {
    #[prost(message, repeated, tag = "1")]
    labels: Vec<LabelIn>,
    #[prost(message, repeated, tag = "2")]
    samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, Message)]
struct LabelIn {
    #[prost(bytes = "bytes", tag = "1")]
    name: bytes::Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    value: bytes::Bytes,
}

/// Label sets the store already holds, for each `(hash, sorted pairs)` asked about.
pub type Resolve<'a> = &'a dyn Fn(&[(u64, &[(&str, &str)])]) -> Vec<Option<Labels>>;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the body is not snappy (block format): {0}")]
    Snappy(String),
    #[error(
        "the body decompresses to {0} bytes, over the limit of {1} (monitoring.write_body_bytes_max)"
    )]
    TooLarge(usize, usize),
    #[error("the body is not a remote_write WriteRequest: {0}")]
    Protobuf(String),
    #[error("label name {0:?} is not valid ([a-zA-Z_][a-zA-Z0-9_]*)")]
    LabelName(String),
    #[error("a label value is not UTF-8")]
    Utf8,
}

/// Label names as Prometheus accepts them.
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Decodes a remote_write body into series and their samples, refusing bodies that would
/// decompress past `max_bytes`.
pub fn decode(body: &[u8], max_bytes: usize) -> Result<Batch, DecodeError> {
    decode_with(body, max_bytes, &|_| Vec::new())
}

/// [`decode`], reusing the label sets `resolve` finds already stored, so a series the store
/// knows costs no label allocation.
pub fn decode_with(
    body: &[u8],
    max_bytes: usize,
    resolve: Resolve<'_>,
) -> Result<Batch, DecodeError> {
    let len = snap::raw::decompress_len(body).map_err(|e| DecodeError::Snappy(e.to_string()))?;
    if len > max_bytes {
        return Err(DecodeError::TooLarge(len, max_bytes));
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| DecodeError::Snappy(e.to_string()))?;
    let req = WriteRequestIn::decode(bytes::Bytes::from(raw))
        .map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    // Each series' labels, borrowed and sorted; `None` where they are not in canonical form
    // (an empty value or a repeated name), which `Labels::new` then settles.
    let mut sets: Vec<Option<Vec<(&str, &str)>>> = Vec::with_capacity(req.timeseries.len());
    for ts in &req.timeseries {
        let mut pairs = Vec::with_capacity(ts.labels.len());
        for l in &ts.labels {
            let name = std::str::from_utf8(&l.name)
                .map_err(|_| DecodeError::LabelName(String::from_utf8_lossy(&l.name).into()))?;
            if !valid_label_name(name) {
                return Err(DecodeError::LabelName(name.into()));
            }
            let value = std::str::from_utf8(&l.value).map_err(|_| DecodeError::Utf8)?;
            pairs.push((name, value));
        }
        if !pairs.is_sorted_by(|a, b| a.0 <= b.0) {
            pairs.sort_by(|a, b| a.0.cmp(b.0));
        }
        let canonical =
            pairs.iter().all(|p| !p.1.is_empty()) && pairs.windows(2).all(|w| w[0].0 != w[1].0);
        sets.push(canonical.then_some(pairs));
    }
    let queries: Vec<(u64, &[(&str, &str)])> = sets
        .iter()
        .flatten()
        .map(|p| (Labels::hash_pairs(p), p.as_slice()))
        .collect();
    let mut found = resolve(&queries).into_iter();
    let mut out = Vec::with_capacity(req.timeseries.len());
    for (ts, set) in req.timeseries.iter().zip(&sets) {
        let known = match set {
            Some(_) => found.next().flatten(),
            None => None,
        };
        let labels = known.unwrap_or_else(|| {
            Labels::new(
                ts.labels
                    .iter()
                    .map(|l| {
                        (
                            String::from_utf8_lossy(&l.name).into_owned(),
                            String::from_utf8_lossy(&l.value).into_owned(),
                        )
                    })
                    .collect(),
            )
        });
        let mut samples: Vec<(i64, f64)> =
            ts.samples.iter().map(|s| (s.timestamp, s.value)).collect();
        if !samples.is_sorted_by_key(|s| s.0) {
            samples.sort_by_key(|s| s.0);
        }
        out.push((labels, samples));
    }
    Ok(out)
}

/// Encodes series as a remote_write body (for tests, benchmarks and forwarding).
pub fn encode(series: &[(Labels, Vec<(i64, f64)>)]) -> Vec<u8> {
    let req = WriteRequest {
        timeseries: series
            .iter()
            .map(|(labels, samples)| TimeSeries {
                labels: labels
                    .iter()
                    .map(|(n, v)| Label {
                        name: n.into(),
                        value: v.into(),
                    })
                    .collect(),
                samples: samples
                    .iter()
                    .map(|&(timestamp, value)| Sample { value, timestamp })
                    .collect(),
            })
            .collect(),
    };
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stored_label_sets_are_reused_and_odd_ones_still_decode() {
        let stored = Labels::from_pairs(&[("__name__", "up"), ("job", "a")]);
        let other = Labels::from_pairs(&[("__name__", "up"), ("job", "b")]);
        let body = encode(&[
            (
                Labels::from_pairs(&[("job", "a"), ("__name__", "up")]),
                vec![(1, 1.0)],
            ),
            (other.clone(), vec![(1, 2.0)]),
        ]);
        let asked = std::cell::Cell::new(0);
        let resolve = |q: &[(u64, &[(&str, &str)])]| {
            asked.set(q.len());
            q.iter()
                .map(|(h, pairs)| {
                    (*h == stored.hash_value() && stored.eq_pairs(pairs)).then(|| stored.clone())
                })
                .collect()
        };
        let batch = decode_with(&body, 1 << 20, &resolve).unwrap();
        assert_eq!(asked.get(), 2);
        assert_eq!(
            batch[0].0.shared_id(),
            stored.shared_id(),
            "the stored set is reused"
        );
        assert_eq!(batch[1].0, other);
        assert_ne!(batch[1].0.shared_id(), other.shared_id());
        // A repeated name is not canonical: not looked up, and settled as `Labels::new` does.
        let odd = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: ["a", "b"]
                    .iter()
                    .map(|v| Label {
                        name: "job".into(),
                        value: (*v).into(),
                    })
                    .chain([Label {
                        name: "__name__".into(),
                        value: "up".into(),
                    }])
                    .collect(),
                samples: vec![Sample {
                    value: 1.0,
                    timestamp: 1,
                }],
            }],
        };
        let body = snap::raw::Encoder::new()
            .compress_vec(&odd.encode_to_vec())
            .unwrap();
        let batch = decode_with(&body, 1 << 20, &resolve).unwrap();
        assert_eq!(asked.get(), 0);
        assert_eq!(batch[0].0, other);
    }

    #[test]
    fn round_trips_and_refuses_what_it_cannot_read() {
        let s = vec![(
            Labels::from_pairs(&[("__name__", "up"), ("job", "a")]),
            vec![(2000, 1.0), (1000, 0.0)],
        )];
        let body = encode(&s);
        let back = decode(&body, 1 << 20).unwrap();
        assert_eq!(back[0].1, vec![(1000, 0.0), (2000, 1.0)], "sorted by time");
        assert!(matches!(decode(&body, 4), Err(DecodeError::TooLarge(..))));
        assert!(matches!(
            decode(b"not snappy at all", 1 << 20),
            Err(DecodeError::Snappy(_) | DecodeError::Protobuf(_))
        ));
        let junk = snap::raw::Encoder::new().compress_vec(&[0xff; 20]).unwrap();
        assert!(matches!(
            decode(&junk, 1 << 20),
            Err(DecodeError::Protobuf(_))
        ));
        let bad = encode(&[(
            Labels::from_pairs(&[("__name__", "x"), ("1bad", "v")]),
            vec![],
        )]);
        assert!(matches!(
            decode(&bad, 1 << 20),
            Err(DecodeError::LabelName(_))
        ));
    }
}
