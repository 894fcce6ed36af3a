//! Series identity: a metric name plus labels, and the four label matchers of PromQL.

use std::fmt;

/// The label holding the metric name.
pub const METRIC_NAME: &str = "__name__";

/// Labels sorted by name, names unique, no empty values (an empty value means "absent").
/// Shared: cloning a label set is a reference count, which queries do a great deal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(std::sync::Arc<Vec<(String, String)>>);

impl Labels {
    /// Sorts, drops empty values; the last of duplicate names wins.
    pub fn new(mut pairs: Vec<(String, String)>) -> Self {
        pairs.retain(|(_, v)| !v.is_empty());
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(String, String)> = Vec::with_capacity(pairs.len());
        for (n, v) in pairs {
            match out.last_mut() {
                Some(last) if last.0 == n => last.1 = v,
                _ => out.push((n, v)),
            }
        }
        Self(std::sync::Arc::new(out))
    }

    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Self::new(
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// The address of this shared label set: equal for clones of one set, so a cache can key
    /// on it while the set is alive (it says nothing about sets built separately).
    pub fn shared_id(&self) -> usize {
        std::sync::Arc::as_ptr(&self.0) as usize
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }

    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes of names and values, for limits.
    pub fn byte_len(&self) -> usize {
        self.0.iter().map(|(n, v)| n.len() + v.len()).sum()
    }

    pub fn into_pairs(self) -> Vec<(String, String)> {
        std::sync::Arc::try_unwrap(self.0).unwrap_or_else(|shared| (*shared).clone())
    }

    /// A copy with `name` set to `value` (removed when `value` is empty).
    pub fn with(&self, name: &str, value: &str) -> Self {
        let mut pairs = (*self.0).clone();
        pairs.retain(|(n, _)| n != name);
        pairs.push((name.to_string(), value.to_string()));
        Self::new(pairs)
    }

    /// A copy without these names.
    pub fn without(&self, names: &[&str]) -> Self {
        if !self.0.iter().any(|(n, _)| names.contains(&n.as_str())) {
            return self.clone();
        }
        Self(std::sync::Arc::new(
            self.0
                .iter()
                .filter(|(n, _)| !names.contains(&n.as_str()))
                .cloned()
                .collect(),
        ))
    }

    /// A copy with only these names.
    pub fn keep(&self, names: &[&str]) -> Self {
        Self(std::sync::Arc::new(
            self.0
                .iter()
                .filter(|(n, _)| names.contains(&n.as_str()))
                .cloned()
                .collect(),
        ))
    }
}

/// Serialized as a map of name to value, as the Prometheus API shows labels.
impl serde::Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (n, v) in self.0.iter() {
            m.serialize_entry(n, v)?;
        }
        m.end()
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.metric_name().unwrap_or("");
        write!(f, "{name}{{")?;
        let mut first = true;
        for (n, v) in self.iter().filter(|(n, _)| *n != METRIC_NAME) {
            if !first {
                write!(f, ", ")?;
            }
            first = false;
            write!(f, "{n}={v:?}")?;
        }
        write!(f, "}}")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

/// `name op value`, as in `{job="api", code=~"5.."}`. Regexes are anchored at both ends.
#[derive(Clone, Debug)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    re: Option<regex::Regex>,
}

/// Largest regex program a matcher may compile to.
const REGEX_SIZE_MAX: usize = 1 << 20;

impl Matcher {
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Self, regex::Error> {
        let re = match op {
            MatchOp::Regex | MatchOp::NotRegex => Some(
                regex::RegexBuilder::new(&format!("^(?s:{value})$"))
                    .size_limit(REGEX_SIZE_MAX)
                    .build()?,
            ),
            _ => None,
        };
        Ok(Self {
            name: name.to_string(),
            op,
            value: value.to_string(),
            re,
        })
    }

    pub fn equal(name: &str, value: &str) -> Self {
        Self {
            name: name.to_string(),
            op: MatchOp::Equal,
            value: value.to_string(),
            re: None,
        }
    }

    /// Whether a label value matches; an absent label is the empty value.
    pub fn matches(&self, value: &str) -> bool {
        match self.op {
            MatchOp::Equal => value == self.value,
            MatchOp::NotEqual => value != self.value,
            MatchOp::Regex => self.re.as_ref().is_some_and(|r| r.is_match(value)),
            MatchOp::NotRegex => !self.re.as_ref().is_some_and(|r| r.is_match(value)),
        }
    }

    pub fn matches_labels(&self, labels: &Labels) -> bool {
        self.matches(labels.get(&self.name).unwrap_or(""))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn labels_sort_dedupe_and_drop_empty_values() {
        let l = Labels::from_pairs(&[("b", "2"), ("a", "1"), ("c", ""), ("b", "3")]);
        assert_eq!(l.iter().collect::<Vec<_>>(), vec![("a", "1"), ("b", "3")]);
        assert_eq!(l.get("c"), None);
    }

    #[test]
    fn regex_matchers_are_anchored_and_absent_is_empty() {
        let m = Matcher::new("code", MatchOp::Regex, "5..").unwrap();
        assert!(m.matches("503"));
        assert!(!m.matches("1503"));
        let empty = Matcher::new("x", MatchOp::Regex, ".*").unwrap();
        assert!(empty.matches_labels(&Labels::default()));
        let ne = Matcher::new("x", MatchOp::NotEqual, "a").unwrap();
        assert!(ne.matches_labels(&Labels::default()));
    }
}
