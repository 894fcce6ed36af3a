//! The subscription table: a trie of topic-filter levels, each node holding the subscriptions
//! whose filter ends there. Matching a topic name walks its levels, following the exact level,
//! `+` and `#` branches, so its cost grows with the topic's depth and the number of matching
//! subscriptions, not with the number of subscriptions in all.

use crate::codec::SubOptions;
use std::collections::HashMap;
use std::sync::Arc;

/// One client's subscription to one filter (in a share group or not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub client: Arc<str>,
    pub share: Option<Arc<str>>,
    pub options: SubOptions,
    pub id: Option<u32>,
}

#[derive(Default, Debug)]
struct Node {
    children: HashMap<Box<str>, Node>,
    subs: Vec<Entry>,
}

#[derive(Default, Debug)]
pub struct Router {
    root: Node,
    len: usize,
}

impl Router {
    /// Adds or replaces (same client and share group) a subscription to `filter` (valid, without
    /// its `$share/GROUP/` prefix). True if it is new.
    pub fn insert(&mut self, filter: &str, entry: Entry) -> bool {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        if let Some(old) = node
            .subs
            .iter_mut()
            .find(|e| e.client == entry.client && e.share == entry.share)
        {
            *old = entry;
            return false;
        }
        node.subs.push(entry);
        self.len += 1;
        true
    }

    /// Removes a client's subscription; true if there was one. Empty branches are pruned.
    pub fn remove(&mut self, filter: &str, client: &str, share: Option<&str>) -> bool {
        fn go(node: &mut Node, levels: &[&str], client: &str, share: Option<&str>) -> bool {
            match levels.split_first() {
                None => {
                    let before = node.subs.len();
                    node.subs
                        .retain(|e| !(&*e.client == client && e.share.as_deref() == share));
                    before != node.subs.len()
                }
                Some((first, rest)) => {
                    let Some(child) = node.children.get_mut(*first) else {
                        return false;
                    };
                    let removed = go(child, rest, client, share);
                    if child.subs.is_empty() && child.children.is_empty() {
                        node.children.remove(*first);
                    }
                    removed
                }
            }
        }
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = go(&mut self.root, &levels, client, share);
        if removed {
            self.len -= 1;
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every subscription whose filter matches topic `name`. A `$`-topic is not matched by a
    /// filter starting with a wildcard.
    pub fn matches<'a>(&'a self, name: &str, out: &mut Vec<&'a Entry>) {
        fn go<'a>(
            node: &'a Node,
            levels: &[&str],
            first: bool,
            dollar: bool,
            out: &mut Vec<&'a Entry>,
        ) {
            let wild = !(first && dollar);
            if wild && let Some(hash) = node.children.get("#") {
                out.extend(hash.subs.iter());
            }
            let Some((level, rest)) = levels.split_first() else {
                out.extend(node.subs.iter());
                return;
            };
            if let Some(child) = node.children.get(*level) {
                go(child, rest, false, dollar, out);
            }
            if wild && let Some(child) = node.children.get("+") {
                go(child, rest, false, dollar, out);
            }
        }
        let levels: Vec<&str> = name.split('/').collect();
        go(&self.root, &levels, true, name.starts_with('$'), out);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::codec::QoS;

    fn e(client: &str) -> Entry {
        Entry {
            client: client.into(),
            share: None,
            options: SubOptions::qos(QoS::AtLeastOnce),
            id: None,
        }
    }

    fn clients(r: &Router, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        r.matches(name, &mut out);
        let mut v: Vec<String> = out.iter().map(|e| e.client.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn the_trie_agrees_with_the_matching_rule() {
        let filters = [
            "a/b", "a/+", "a/#", "#", "+/+", "+", "$SYS/#", "a/b/c", "+/b/#",
        ];
        let names = ["a", "a/b", "a/b/c", "x/y", "$SYS/up", "/a", "a/b/c/d"];
        let mut r = Router::default();
        for f in filters {
            assert!(r.insert(f, e(f)));
        }
        assert!(
            !r.insert("a/b", e("a/b")),
            "same client and filter replaces"
        );
        assert_eq!(r.len(), filters.len());
        for n in names {
            let mut want: Vec<String> = filters
                .iter()
                .filter(|f| crate::topic::matches(f, n))
                .map(|f| f.to_string())
                .collect();
            want.sort();
            assert_eq!(clients(&r, n), want, "{n}");
        }
        for f in filters {
            assert!(r.remove(f, f, None));
        }
        assert!(r.is_empty());
        assert!(r.root.children.is_empty(), "branches pruned");
    }
}
