//! Exactly-once, in-order delivery on one connection.
//!
//! A connection tracks, per room, the last sequence number it has sent. Bus events can arrive
//! out of commit order (two sends in one room publish from different tasks) and can repeat what
//! the catch-up already sent; [`Delivery`] decides for each message whether to send it, skip it,
//! or first fill a gap from the store. It does no I/O, so the rules are tested here directly.

use sb_core::RoomId;
use sb_store::chat::MessageRecord;
use std::collections::HashMap;
use std::sync::Arc;

/// What to do with a live message.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send it; the cursor has moved to it.
    Send(Arc<MessageRecord>),
    /// Already sent, or for a room this connection does not follow (yet): drop it.
    Skip,
    /// Messages after `after` up to `until` are missing: read them from the store, send them in
    /// order, then call [`Delivery::sent`] with the last one.
    Fill {
        room: RoomId,
        after: i64,
        until: i64,
    },
}

/// Per-room cursors of one connection; inactive until the client syncs.
#[derive(Debug, Default)]
pub struct Delivery {
    rooms: Option<HashMap<RoomId, i64>>,
}

impl Delivery {
    pub fn is_synced(&self) -> bool {
        self.rooms.is_some()
    }

    pub fn follows(&self, room: RoomId) -> bool {
        self.rooms.as_ref().is_some_and(|r| r.contains_key(&room))
    }

    /// After a catch-up: `room` is now delivered up to `last_seq`. Returns the cursor that held
    /// before, so already-sent messages of the catch-up can be skipped.
    pub fn synced(&mut self, room: RoomId, last_seq: i64) -> i64 {
        let cur = self
            .rooms
            .get_or_insert_with(HashMap::new)
            .entry(room)
            .or_insert(0);
        let before = *cur;
        *cur = (*cur).max(last_seq);
        before
    }

    /// Starts following a room the user just joined, from its newest message.
    pub fn joined(&mut self, room: RoomId, last_seq: i64) -> Option<i64> {
        let rooms = self.rooms.as_mut()?;
        let cur = rooms.entry(room).or_insert(last_seq);
        *cur = (*cur).max(last_seq);
        Some(*cur)
    }

    /// Stops following a room; returns the last sequence sent in it.
    pub fn left(&mut self, room: RoomId) -> Option<i64> {
        self.rooms.as_mut().map(|r| r.remove(&room).unwrap_or(0))
    }

    pub fn on_message(&mut self, m: &Arc<MessageRecord>) -> Step {
        let Some(cur) = self.rooms.as_mut().and_then(|r| r.get_mut(&m.room_id)) else {
            return Step::Skip;
        };
        if m.seq <= *cur {
            Step::Skip
        } else if m.seq == *cur + 1 {
            *cur = m.seq;
            Step::Send(m.clone())
        } else {
            Step::Fill {
                room: m.room_id,
                after: *cur,
                until: m.seq,
            }
        }
    }

    /// Records that `room` has been sent up to `seq` (after a fill).
    pub fn sent(&mut self, room: RoomId, seq: i64) {
        if let Some(cur) = self.rooms.as_mut().and_then(|r| r.get_mut(&room)) {
            *cur = (*cur).max(seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sb_core::{UnixMillis, UserId};

    fn msg(room: RoomId, seq: i64) -> Arc<MessageRecord> {
        Arc::new(MessageRecord {
            room_id: room,
            seq,
            message_id: format!("m{seq}"),
            sender: UserId(uuid::Uuid::nil()),
            body: String::new(),
            reply_to: None,
            created_at: UnixMillis(1),
            kind: Default::default(),
            target: None,
            deleted: false,
            edited_at: None,
            attachments: Vec::new(),
        })
    }

    #[test]
    fn nothing_is_delivered_before_sync() {
        let room = RoomId::new_at(UnixMillis(1));
        let mut d = Delivery::default();
        assert_eq!(d.on_message(&msg(room, 1)), Step::Skip);
        assert_eq!(d.joined(room, 0), None);
    }

    #[test]
    fn in_order_messages_go_out_once() {
        let room = RoomId::new_at(UnixMillis(1));
        let mut d = Delivery::default();
        assert_eq!(d.synced(room, 4), 0);
        assert_eq!(
            d.on_message(&msg(room, 3)),
            Step::Skip,
            "already in the catch-up"
        );
        assert_eq!(d.on_message(&msg(room, 5)), Step::Send(msg(room, 5)));
        assert_eq!(d.on_message(&msg(room, 5)), Step::Skip, "a repeat");
        assert_eq!(d.on_message(&msg(room, 6)), Step::Send(msg(room, 6)));
    }

    #[test]
    fn a_message_ahead_of_its_predecessor_fills_the_gap_and_the_late_one_is_skipped() {
        let room = RoomId::new_at(UnixMillis(1));
        let mut d = Delivery::default();
        d.synced(room, 4);
        // 7 is published before 5 and 6 (their tasks were slower).
        assert_eq!(
            d.on_message(&msg(room, 7)),
            Step::Fill {
                room,
                after: 4,
                until: 7
            }
        );
        d.sent(room, 7);
        assert_eq!(d.on_message(&msg(room, 5)), Step::Skip);
        assert_eq!(d.on_message(&msg(room, 6)), Step::Skip);
        assert_eq!(d.on_message(&msg(room, 8)), Step::Send(msg(room, 8)));
    }

    #[test]
    fn rooms_are_independent_and_leaving_stops_delivery() {
        let (a, b) = (RoomId::new_at(UnixMillis(1)), RoomId::new_at(UnixMillis(2)));
        let mut d = Delivery::default();
        d.synced(a, 0);
        assert_eq!(d.on_message(&msg(b, 1)), Step::Skip, "not a followed room");
        assert_eq!(d.joined(b, 10), Some(10));
        assert_eq!(d.on_message(&msg(b, 11)), Step::Send(msg(b, 11)));
        assert_eq!(d.on_message(&msg(a, 1)), Step::Send(msg(a, 1)));
        assert_eq!(d.left(b), Some(11));
        assert!(!d.follows(b));
        assert_eq!(d.on_message(&msg(b, 12)), Step::Skip);
    }
}
