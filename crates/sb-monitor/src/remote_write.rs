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
    let len = snap::raw::decompress_len(body).map_err(|e| DecodeError::Snappy(e.to_string()))?;
    if len > max_bytes {
        return Err(DecodeError::TooLarge(len, max_bytes));
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| DecodeError::Snappy(e.to_string()))?;
    let req =
        WriteRequest::decode(raw.as_slice()).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
    let mut out = Vec::with_capacity(req.timeseries.len());
    for ts in req.timeseries {
        let mut pairs = Vec::with_capacity(ts.labels.len());
        for l in ts.labels {
            if !valid_label_name(&l.name) {
                return Err(DecodeError::LabelName(l.name));
            }
            pairs.push((l.name, l.value));
        }
        let mut samples: Vec<(i64, f64)> =
            ts.samples.iter().map(|s| (s.timestamp, s.value)).collect();
        samples.sort_by_key(|s| s.0);
        out.push((Labels::new(pairs), samples));
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
