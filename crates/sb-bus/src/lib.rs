//! In-process publish/subscribe with topic patterns and bounded subscriber queues.
//!
//! Topics are `/`-separated levels (`auth/session/0199…/revoked`). Patterns use MQTT wildcards:
//! `+` matches one level, `#` (last) matches any number of levels including none. As in MQTT, a
//! pattern starting with a wildcard does not match topics whose first level starts with `$`.
//!
//! Each [`Subscription`] owns a queue of at most `queue_max` messages. When a publish finds it full,
//! the [`OverflowPolicy`] decides: `Disconnect` closes that subscription (its owner sees
//! [`RecvError::Overflowed`] and must resume from its own cursor), `DropNewest` drops the message
//! for that subscriber and counts it. Publishing never blocks and never grows memory.
//!
//! A NATS bridge for cross-node fan-out can sit behind the same API later; this crate knows nothing
//! of the network.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::mpsc;

pub use tokio::sync::mpsc::error::TryRecvError;

/// What to do when a subscriber's queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverflowPolicy {
    Disconnect,
    DropNewest,
}

#[derive(Clone, Copy, Debug)]
pub struct BusConfig {
    pub queue_max: usize,
    pub overflow: OverflowPolicy,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    #[error("topic pattern is empty")]
    Empty,
    #[error("'#' may only be the last level of a pattern")]
    HashNotLast,
    #[error("a wildcard must fill a whole level")]
    PartialWildcard,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecvError {
    #[error("subscriber fell behind and was disconnected")]
    Overflowed,
    #[error("bus closed")]
    Closed,
}

/// A published message as a subscriber receives it.
#[derive(Clone, Debug)]
pub struct Message<M> {
    pub topic: Arc<str>,
    pub payload: M,
}

/// Counters for the server's `/metrics`.
#[derive(Debug, Default)]
pub struct BusStats {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
    pub disconnected: AtomicU64,
}

pub struct Bus<M> {
    inner: Arc<Inner<M>>,
}

impl<M> Clone for Bus<M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<M> {
    config: BusConfig,
    trie: RwLock<Node<M>>,
    next_id: AtomicU64,
    stats: BusStats,
}

struct Sub<M> {
    id: u64,
    tx: mpsc::Sender<Message<M>>,
    overflowed: Arc<AtomicBool>,
}

struct Node<M> {
    children: HashMap<String, Node<M>>,
    subs: Vec<Sub<M>>,
}

impl<M> Default for Node<M> {
    fn default() -> Self {
        Self {
            children: HashMap::new(),
            subs: Vec::new(),
        }
    }
}

impl<M> Node<M> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subs.is_empty()
    }

    /// Removes subscriber `id` under `levels`, pruning emptied branches.
    fn remove(&mut self, levels: &[&str], id: u64) {
        match levels.split_first() {
            None => self.subs.retain(|s| s.id != id),
            Some((first, rest)) => {
                if let Some(child) = self.children.get_mut(*first) {
                    child.remove(rest, id);
                    if child.is_empty() {
                        self.children.remove(*first);
                    }
                }
            }
        }
    }

    fn collect<'a>(&'a self, levels: &[&str], first: bool, out: &mut Vec<&'a Sub<M>>) {
        let dollar = first && levels.first().is_some_and(|l| l.starts_with('$'));
        if let (false, Some(hash)) = (dollar, self.children.get("#")) {
            out.extend(hash.subs.iter());
        }
        let Some((level, rest)) = levels.split_first() else {
            out.extend(self.subs.iter());
            return;
        };
        if let Some(child) = self.children.get(*level) {
            child.collect(rest, false, out);
        }
        if let (false, Some(plus)) = (dollar, self.children.get("+")) {
            plus.collect(rest, false, out);
        }
    }
}

fn parse_pattern(pattern: &str) -> Result<Vec<&str>, PatternError> {
    if pattern.is_empty() {
        return Err(PatternError::Empty);
    }
    let levels: Vec<&str> = pattern.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if *level == "#" && i + 1 != levels.len() {
            return Err(PatternError::HashNotLast);
        }
        if level.len() > 1 && (level.contains('#') || level.contains('+')) {
            return Err(PatternError::PartialWildcard);
        }
    }
    Ok(levels)
}

impl<M: Clone + Send + 'static> Bus<M> {
    pub fn new(config: BusConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config: BusConfig {
                    queue_max: config.queue_max.max(1),
                    overflow: config.overflow,
                },
                trie: RwLock::new(Node::default()),
                next_id: AtomicU64::new(1),
                stats: BusStats::default(),
            }),
        }
    }

    pub fn stats(&self) -> &BusStats {
        &self.inner.stats
    }

    /// Subscribes to a pattern. Dropping the [`Subscription`] unsubscribes.
    pub fn subscribe(&self, pattern: &str) -> Result<Subscription<M>, PatternError> {
        let levels = parse_pattern(pattern)?;
        let (tx, rx) = mpsc::channel(self.inner.config.queue_max);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let overflowed = Arc::new(AtomicBool::new(false));
        {
            let mut trie = self.inner.trie.write().unwrap_or_else(|e| e.into_inner());
            let mut node = &mut *trie;
            for level in &levels {
                node = node.children.entry((*level).to_string()).or_default();
            }
            node.subs.push(Sub {
                id,
                tx,
                overflowed: overflowed.clone(),
            });
        }
        Ok(Subscription {
            bus: self.clone(),
            pattern: pattern.to_string(),
            id,
            rx,
            overflowed,
        })
    }

    /// Delivers to every matching subscriber without blocking. Returns how many received it.
    pub fn publish(&self, topic: &str, payload: M) -> usize {
        let stats = &self.inner.stats;
        stats.published.fetch_add(1, Ordering::Relaxed);
        let levels: Vec<&str> = topic.split('/').collect();
        let topic: Arc<str> = Arc::from(topic);
        let mut overflowed = Vec::new();
        let mut delivered = 0;
        {
            let trie = self.inner.trie.read().unwrap_or_else(|e| e.into_inner());
            let mut matches = Vec::new();
            trie.collect(&levels, true, &mut matches);
            for sub in matches {
                let msg = Message {
                    topic: topic.clone(),
                    payload: payload.clone(),
                };
                match sub.tx.try_send(msg) {
                    Ok(()) => delivered += 1,
                    Err(mpsc::error::TrySendError::Full(_)) => match self.inner.config.overflow {
                        OverflowPolicy::DropNewest => {
                            stats.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        OverflowPolicy::Disconnect => {
                            sub.overflowed.store(true, Ordering::Release);
                            overflowed.push(sub.id);
                        }
                    },
                    // The subscription is being dropped; its Drop removes it.
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
        if !overflowed.is_empty() {
            stats
                .disconnected
                .fetch_add(overflowed.len() as u64, Ordering::Relaxed);
            self.remove_ids(&overflowed);
        }
        stats
            .delivered
            .fetch_add(delivered as u64, Ordering::Relaxed);
        delivered
    }

    fn remove_ids(&self, ids: &[u64]) {
        // Overflow is rare; a full walk keeps the trie free of back-pointers.
        fn walk<M>(node: &mut Node<M>, ids: &[u64]) {
            node.subs.retain(|s| !ids.contains(&s.id));
            node.children.retain(|_, child| {
                walk(child, ids);
                !child.is_empty()
            });
        }
        let mut trie = self.inner.trie.write().unwrap_or_else(|e| e.into_inner());
        walk(&mut trie, ids);
    }

    /// Number of live subscriptions (for metrics and tests).
    pub fn subscriber_count(&self) -> usize {
        fn count<M>(node: &Node<M>) -> usize {
            node.subs.len() + node.children.values().map(count).sum::<usize>()
        }
        count(&self.inner.trie.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A live subscription. Receive with [`Subscription::recv`]; drop to unsubscribe.
pub struct Subscription<M> {
    bus: Bus<M>,
    pattern: String,
    id: u64,
    rx: mpsc::Receiver<Message<M>>,
    overflowed: Arc<AtomicBool>,
}

impl<M> Subscription<M> {
    /// The next message. After an overflow disconnect, queued messages are still delivered first,
    /// then [`RecvError::Overflowed`].
    pub async fn recv(&mut self) -> Result<Message<M>, RecvError> {
        match self.rx.recv().await {
            Some(m) => Ok(m),
            None => Err(self.end_reason()),
        }
    }

    pub fn try_recv(&mut self) -> Result<Option<Message<M>>, RecvError> {
        match self.rx.try_recv() {
            Ok(m) => Ok(Some(m)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(self.end_reason()),
        }
    }

    fn end_reason(&self) -> RecvError {
        if self.overflowed.load(Ordering::Acquire) {
            RecvError::Overflowed
        } else {
            RecvError::Closed
        }
    }
}

impl<M> Drop for Subscription<M> {
    fn drop(&mut self) {
        let Ok(levels) = parse_pattern(&self.pattern) else {
            return;
        };
        let mut trie = self
            .bus
            .inner
            .trie
            .write()
            .unwrap_or_else(|e| e.into_inner());
        trie.remove(&levels, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus(queue_max: usize, overflow: OverflowPolicy) -> Bus<u32> {
        Bus::new(BusConfig {
            queue_max,
            overflow,
        })
    }

    fn drain(s: &mut Subscription<u32>) -> Vec<u32> {
        let mut out = Vec::new();
        while let Ok(Some(m)) = s.try_recv() {
            out.push(m.payload);
        }
        out
    }

    #[test]
    fn wildcards_match_like_mqtt() {
        let b = bus(16, OverflowPolicy::Disconnect);
        let mut exact = b.subscribe("a/b/c").unwrap();
        let mut plus = b.subscribe("a/+/c").unwrap();
        let mut hash = b.subscribe("a/#").unwrap();
        let mut all = b.subscribe("#").unwrap();
        b.publish("a/b/c", 1);
        b.publish("a/x/c", 2);
        b.publish("a", 3);
        b.publish("b/c", 4);
        assert_eq!(drain(&mut exact), vec![1]);
        assert_eq!(drain(&mut plus), vec![1, 2]);
        assert_eq!(drain(&mut hash), vec![1, 2, 3]);
        assert_eq!(drain(&mut all), vec![1, 2, 3, 4]);
    }

    #[test]
    fn dollar_topics_need_an_explicit_first_level() {
        let b = bus(16, OverflowPolicy::Disconnect);
        let mut all = b.subscribe("#").unwrap();
        let mut plus = b.subscribe("+/x").unwrap();
        let mut sys = b.subscribe("$SYS/#").unwrap();
        b.publish("$SYS/x", 1);
        assert_eq!(drain(&mut all), Vec::<u32>::new());
        assert_eq!(drain(&mut plus), Vec::<u32>::new());
        assert_eq!(drain(&mut sys), vec![1]);
    }

    #[test]
    fn bad_patterns_are_rejected() {
        let b = bus(16, OverflowPolicy::Disconnect);
        assert_eq!(b.subscribe("").err(), Some(PatternError::Empty));
        assert_eq!(b.subscribe("a/#/b").err(), Some(PatternError::HashNotLast));
        assert_eq!(
            b.subscribe("a/b+").err(),
            Some(PatternError::PartialWildcard)
        );
    }

    #[test]
    fn slow_subscriber_is_disconnected_after_its_queue() {
        let b = bus(2, OverflowPolicy::Disconnect);
        let mut slow = b.subscribe("t").unwrap();
        let mut fast = b.subscribe("t").unwrap();
        b.publish("t", 1);
        assert_eq!(drain(&mut fast), vec![1]);
        b.publish("t", 2);
        assert_eq!(drain(&mut fast), vec![2]);
        b.publish("t", 3); // slow's queue (2) is full: slow is cut off
        assert_eq!(drain(&mut fast), vec![3]);
        assert_eq!(slow.try_recv().unwrap().map(|m| m.payload), Some(1));
        assert_eq!(slow.try_recv().unwrap().map(|m| m.payload), Some(2));
        assert_eq!(slow.try_recv().err(), Some(RecvError::Overflowed));
        assert_eq!(b.subscriber_count(), 1);
        assert_eq!(b.stats().disconnected.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn drop_newest_keeps_the_subscriber_and_counts() {
        let b = bus(1, OverflowPolicy::DropNewest);
        let mut s = b.subscribe("t").unwrap();
        b.publish("t", 1);
        b.publish("t", 2);
        assert_eq!(drain(&mut s), vec![1]);
        b.publish("t", 3);
        assert_eq!(drain(&mut s), vec![3]);
        assert_eq!(b.stats().dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn dropping_a_subscription_unsubscribes_and_prunes() {
        let b = bus(4, OverflowPolicy::Disconnect);
        let s = b.subscribe("a/b/c").unwrap();
        assert_eq!(b.subscriber_count(), 1);
        drop(s);
        assert_eq!(b.subscriber_count(), 0);
        assert!(b.inner.trie.read().unwrap().is_empty());
        assert_eq!(b.publish("a/b/c", 1), 0);
    }

    #[tokio::test]
    async fn recv_waits_for_a_publish() {
        let b = bus(4, OverflowPolicy::Disconnect);
        let mut s = b.subscribe("x/+").unwrap();
        let b2 = b.clone();
        tokio::spawn(async move { b2.publish("x/y", 7) });
        let m = s.recv().await.unwrap();
        assert_eq!((&*m.topic, m.payload), ("x/y", 7));
    }
}
