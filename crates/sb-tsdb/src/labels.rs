//! Series identity: a metric name plus labels, and the four label matchers of PromQL.

use std::fmt;

/// The label holding the metric name.
pub const METRIC_NAME: &str = "__name__";

/// Labels sorted by name, names unique, no empty values (an empty value means "absent").
/// Shared: cloning a label set is a reference count, which queries do a great deal. The hash
/// is worked out once, when the set is built, so the maps keyed by label sets (the head's
/// index, a write's batch, a tenant's series) never hash the strings again.
#[derive(Clone, Debug)]
pub struct Labels(std::sync::Arc<Inner>);

#[derive(Debug)]
struct Inner {
    pairs: Vec<(String, String)>,
    hash: u64,
}

/// Seeded once per process at random, so nobody can pick label sets that collide.
fn hasher() -> &'static foldhash::quality::RandomState {
    static STATE: std::sync::OnceLock<foldhash::quality::RandomState> = std::sync::OnceLock::new();
    STATE.get_or_init(Default::default)
}

impl Default for Labels {
    fn default() -> Self {
        Self::from_sorted(Vec::new())
    }
}

/// Hashes a [`Labels`] key by passing its precomputed (randomly seeded) hash through.
#[derive(Clone, Copy, Default)]
pub struct LabelsHasher(u64);

impl std::hash::Hasher for LabelsHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is expected; anything else still hashes, just not as fast.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// A map keyed by label sets that never rehashes their strings.
pub type LabelsMap<V> =
    std::collections::HashMap<Labels, V, std::hash::BuildHasherDefault<LabelsHasher>>;

impl PartialEq for Labels {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
            || (self.0.hash == other.0.hash && self.0.pairs == other.0.pairs)
    }
}

impl Eq for Labels {}

impl PartialOrd for Labels {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Labels {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.pairs.cmp(&other.0.pairs)
    }
}

impl std::hash::Hash for Labels {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

impl Labels {
    /// Wraps pairs already sorted, unique and without empty values.
    fn from_sorted(pairs: Vec<(String, String)>) -> Self {
        use std::hash::BuildHasher;
        let hash = hasher().hash_one(&pairs);
        Self(std::sync::Arc::new(Inner { pairs, hash }))
    }

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
        Self::from_sorted(out)
    }

    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Self::new(
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// The label set's hash (the one maps keyed by it use).
    pub fn hash_value(&self) -> u64 {
        self.0.hash
    }

    /// The hash a label set of these pairs has; they must be sorted by name, names unique,
    /// values non-empty (as [`Labels::new`] leaves them).
    pub fn hash_pairs(pairs: &[(&str, &str)]) -> u64 {
        use std::hash::BuildHasher;
        hasher().hash_one(pairs)
    }

    /// Whether this set holds exactly these (sorted) pairs.
    pub fn eq_pairs(&self, pairs: &[(&str, &str)]) -> bool {
        self.0.pairs.len() == pairs.len()
            && self
                .0
                .pairs
                .iter()
                .zip(pairs)
                .all(|((n, v), (pn, pv))| n == pn && v == pv)
    }

    /// The address of this shared label set: equal for clones of one set, so a cache can key
    /// on it while the set is alive (it says nothing about sets built separately).
    pub fn shared_id(&self) -> usize {
        std::sync::Arc::as_ptr(&self.0) as usize
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        let pairs = &self.0.pairs;
        pairs
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|i| pairs[i].1.as_str())
    }

    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.pairs.is_empty()
    }

    /// Bytes of names and values, for limits.
    pub fn byte_len(&self) -> usize {
        self.0.pairs.iter().map(|(n, v)| n.len() + v.len()).sum()
    }

    pub fn into_pairs(self) -> Vec<(String, String)> {
        match std::sync::Arc::try_unwrap(self.0) {
            Ok(inner) => inner.pairs,
            Err(shared) => shared.pairs.clone(),
        }
    }

    /// A copy with `name` set to `value` (removed when `value` is empty).
    pub fn with(&self, name: &str, value: &str) -> Self {
        let mut pairs = self.0.pairs.clone();
        pairs.retain(|(n, _)| n != name);
        pairs.push((name.to_string(), value.to_string()));
        Self::new(pairs)
    }

    /// A copy without these names.
    pub fn without(&self, names: &[&str]) -> Self {
        if !self
            .0
            .pairs
            .iter()
            .any(|(n, _)| names.contains(&n.as_str()))
        {
            return self.clone();
        }
        Self::from_sorted(
            self.0
                .pairs
                .iter()
                .filter(|(n, _)| !names.contains(&n.as_str()))
                .cloned()
                .collect(),
        )
    }

    /// A copy with only these names.
    pub fn keep(&self, names: &[&str]) -> Self {
        Self::from_sorted(
            self.0
                .pairs
                .iter()
                .filter(|(n, _)| names.contains(&n.as_str()))
                .cloned()
                .collect(),
        )
    }
}

/// Serialized as a map of name to value, as the Prometheus API shows labels.
impl serde::Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.len()))?;
        for (n, v) in self.iter() {
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
    fn borrowed_pairs_hash_and_compare_like_the_label_set() {
        let l = Labels::from_pairs(&[("job", "api"), ("__name__", "up")]);
        let pairs = [("__name__", "up"), ("job", "api")];
        assert_eq!(Labels::hash_pairs(&pairs), l.hash_value());
        assert!(l.eq_pairs(&pairs));
        assert!(!l.eq_pairs(&pairs[..1]));
        assert!(!l.eq_pairs(&[("__name__", "up"), ("job", "db")]));
        assert_eq!(Labels::default(), Labels::new(Vec::new()));
        let mut map = LabelsMap::default();
        map.insert(l.clone(), 1);
        assert_eq!(map.get(&Labels::from_pairs(&pairs)), Some(&1));
    }

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
