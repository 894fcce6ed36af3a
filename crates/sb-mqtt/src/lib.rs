//! MQTT for Switchboard: the 3.1.1 and 5.0 wire format (`codec`), topic rules (`topic`), the
//! subscription trie (`router`) and the broker (`broker`: sessions, QoS 0/1/2, retained
//! messages, wills, shared subscriptions), over any byte stream. `sb-server` runs the
//! listeners and supplies identities and authorization through [`broker::Access`].

pub mod broker;
pub mod codec;
pub mod router;
pub mod topic;
