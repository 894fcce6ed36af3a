//! One device's end-to-end encryption for MLS (RFC 9420) rooms, with openmls.
//!
//! The server is only the delivery service: it hands out key packages, orders each room's
//! commits by epoch and queues Welcomes. Everything secret stays here, in one SQLite file per
//! device (mode 0600): openmls' own tables (signature key, key packages, group state) plus a
//! cache of the plaintexts this device has read or sent. The cache exists because MLS gives
//! forward secrecy: a message decrypts once, and a sender can never decrypt its own message.
//!
//! A room's MLS group id is the room id. A member's credential is `username:device`. Commits
//! are sent as MLS PrivateMessages, so the server sees neither message text nor who was added
//! by which key. Before a message is encrypted, members who have left the room are removed
//! from the group, so a message never goes to someone who is no longer a member.
//!
//! Trust: credentials are basic, as the server names them; a device's key is not verified
//! out of band (no key transparency yet). [`E2ee::members`] shows each member's key
//! fingerprint for people who want to compare them.

use crate::{Client, ClientError, Result};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls::treesync::LeafNodeParameters;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::RustCrypto;
use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
use openmls_traits::OpenMlsProvider;
use rusqlite::{Connection, OptionalExtension, params};
use sb_proto::{
    HandshakeInfo, HandshakeSend, KeyPackagesPublish, MessageInfo, MessageSend, MessageSent,
    WelcomeOut,
};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::Path;

/// X25519, AES-128-GCM, SHA-256, Ed25519: the suite every MLS implementation must support.
const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
/// Secrets of this many past epochs are kept, so a message sent just before a commit landed
/// still decrypts after it.
pub const PAST_EPOCHS_KEPT: usize = 16;
/// Key packages a device publishes at a time (each is used once, for one room).
pub const KEY_PACKAGES_PER_PUBLISH: usize = 10;
/// How often a commit is rebuilt after losing its epoch to another member's commit.
const COMMIT_ATTEMPTS_MAX: usize = 8;
/// Messages of one sender that may arrive out of order within an epoch.
const OUT_OF_ORDER_TOLERANCE: u32 = 32;
/// How far ahead of the last one a sender's message may be within an epoch.
const MAXIMUM_FORWARD_DISTANCE: u32 = 10_000;

macro_rules! e2ee {
    ($what:expr) => {
        |e| ClientError::E2ee(format!("{}: {e}", $what))
    };
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(s: &str, what: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| ClientError::E2ee(format!("{what} is not base64: {e}")))
}

/// openmls' SQLite tables store values as JSON.
#[derive(Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    type Error = serde_json::Error;

    fn to_vec<T: Serialize>(value: &T) -> std::result::Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(value)
    }

    fn from_slice<T: serde::de::DeserializeOwned>(
        slice: &[u8],
    ) -> std::result::Result<T, Self::Error> {
        serde_json::from_slice(slice)
    }
}

struct Provider {
    crypto: RustCrypto,
    storage: SqliteStorageProvider<JsonCodec, Connection>,
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = SqliteStorageProvider<JsonCodec, Connection>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}

/// What travels inside an encrypted message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    pub body: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<SealedAttachment>,
}

/// A file encrypted on this side: the server holds only ciphertext under `id`; the key and the
/// real name travel inside the MLS message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedAttachment {
    pub id: String,
    pub name: String,
    pub content_type: String,
    pub size: u64,
    /// ChaCha20-Poly1305 key, fresh for this file (so the nonce is zero), base64.
    pub key: String,
    /// BLAKE3 of the plaintext, hex; checked after decryption.
    pub blake3: String,
}

/// A decrypted message and who sent it, as MLS authenticated it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decrypted {
    /// `username:device` from the sender's MLS credential.
    pub sender: String,
    pub payload: Payload,
}

/// A member of a room's MLS group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupMember {
    pub username: String,
    pub device: String,
    /// SHA-256 of the member's signature key, hex: compare it out of band to rule out a
    /// device the server made up.
    pub key_fingerprint: String,
}

/// The Welcomes this device took: the rooms it joined, and those it could not.
#[derive(Debug, Default)]
pub struct Joined {
    pub rooms: Vec<String>,
    /// Room and why (an expired or foreign key package, say): ask to be invited again.
    pub failed: Vec<(String, String)>,
}

/// A commit built at this device's current epoch and kept as its pending commit until
/// [`E2ee::publish_commit`] learns whether the server accepted it.
pub struct PreparedCommit {
    room: String,
    epoch: u64,
    message: Vec<u8>,
    welcome: Option<Vec<u8>>,
    recipients: Vec<(String, String)>,
}

/// What to commit; `None` from the builder means there is nothing to do.
type Built = (MlsMessageOut, Option<MlsMessageOut>, Vec<(String, String)>);

fn identity(username: &str, device: &str) -> String {
    format!("{username}:{device}")
}

fn split_identity(credential: &Credential) -> (String, String) {
    let id = String::from_utf8_lossy(credential.serialized_content()).into_owned();
    match id.split_once(':') {
        Some((u, d)) => (u.to_string(), d.to_string()),
        None => (id, String::new()),
    }
}

fn group_id(room: &str) -> GroupId {
    GroupId::from_slice(room.as_bytes())
}

fn create_config() -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        .use_ratchet_tree_extension(true)
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(PAST_EPOCHS_KEPT)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(
            OUT_OF_ORDER_TOLERANCE,
            MAXIMUM_FORWARD_DISTANCE,
        ))
        .build()
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(PAST_EPOCHS_KEPT)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(
            OUT_OF_ORDER_TOLERANCE,
            MAXIMUM_FORWARD_DISTANCE,
        ))
        .build()
}

/// One device's MLS state for one account on one server.
pub struct E2ee {
    provider: Provider,
    /// Our own tables, on a second connection to the same file.
    local: Connection,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
    username: String,
    device: String,
}

impl E2ee {
    /// Opens (or creates, mode 0600) the key store at `path` for `username`. A new store makes
    /// a new device: a random device name and a fresh signature key.
    pub fn open(path: &Path, username: &str) -> Result<Self> {
        if let Some(dir) = path.parent() {
            crate::state::create_private_dir(dir)
                .map_err(|e| ClientError::E2ee(format!("{}: {e}", dir.display())))?;
        }
        crate::state::touch_private_file(path)
            .map_err(|e| ClientError::E2ee(format!("{}: {e}", path.display())))?;
        let open = || -> Result<Connection> {
            let c = Connection::open(path).map_err(e2ee!("open the key store"))?;
            c.busy_timeout(std::time::Duration::from_secs(5))
                .map_err(e2ee!("open the key store"))?;
            Ok(c)
        };
        let mut storage = SqliteStorageProvider::<JsonCodec, Connection>::new(open()?);
        storage
            .run_migrations()
            .map_err(e2ee!("prepare the key store"))?;
        let local = open()?;
        local
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS sb_device (
                     only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
                     username TEXT NOT NULL, device TEXT NOT NULL, signature_key BLOB NOT NULL);
                 CREATE TABLE IF NOT EXISTS sb_plaintext (
                     room TEXT NOT NULL, message_id TEXT NOT NULL, sender TEXT NOT NULL,
                     payload BLOB NOT NULL, PRIMARY KEY (room, message_id));",
            )
            .map_err(e2ee!("prepare the key store"))?;
        let provider = Provider {
            crypto: RustCrypto::default(),
            storage,
        };
        let scheme = CIPHERSUITE.signature_algorithm();
        let row: Option<(String, String, Vec<u8>)> = local
            .query_row(
                "SELECT username, device, signature_key FROM sb_device",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(e2ee!("read the key store"))?;
        let (device, signer) = match row {
            Some((owner, _, _)) if owner != username => {
                return Err(ClientError::E2ee(format!(
                    "the key store {} belongs to {owner}, not {username}",
                    path.display()
                )));
            }
            Some((_, device, public)) => {
                let signer = SignatureKeyPair::read(provider.storage(), &public, scheme)
                    .ok_or_else(|| {
                        ClientError::E2ee(format!(
                            "the key store {} lost its signature key; move it aside and sign in again",
                            path.display()
                        ))
                    })?;
                (device, signer)
            }
            None => {
                let signer =
                    SignatureKeyPair::new(scheme).map_err(e2ee!("make a signature key"))?;
                signer
                    .store(provider.storage())
                    .map_err(e2ee!("store the signature key"))?;
                let device = format!("d-{}", &hex::encode(uuid::Uuid::new_v4().as_bytes())[..12]);
                local
                    .execute(
                        "INSERT INTO sb_device (only_row, username, device, signature_key)
                         VALUES (1, ?1, ?2, ?3)",
                        params![username, device, signer.public()],
                    )
                    .map_err(e2ee!("write the key store"))?;
                (device, signer)
            }
        };
        let credential = CredentialWithKey {
            credential: BasicCredential::new(identity(username, &device).into_bytes()).into(),
            signature_key: signer.public().into(),
        };
        Ok(Self {
            provider,
            local,
            signer,
            credential,
            username: username.to_string(),
            device,
        })
    }

    /// This device's name, as other members see it in `username:device`.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Publishes `count` fresh key packages and a new last-resort one; returns how many
    /// unclaimed ones the server now holds for this device.
    pub async fn publish_key_packages(&self, client: &Client, count: usize) -> Result<usize> {
        let make = |last_resort: bool| -> Result<String> {
            let mut builder = KeyPackage::builder();
            if last_resort {
                builder = builder.mark_as_last_resort();
            }
            let bundle = builder
                .build(
                    CIPHERSUITE,
                    &self.provider,
                    &self.signer,
                    self.credential.clone(),
                )
                .map_err(e2ee!("make a key package"))?;
            let bytes = bundle
                .key_package()
                .tls_serialize_detached()
                .map_err(e2ee!("encode a key package"))?;
            Ok(b64(&bytes))
        };
        let key_packages = (0..count)
            .map(|_| make(false))
            .collect::<Result<Vec<_>>>()?;
        let stored = client
            .publish_key_packages(&KeyPackagesPublish {
                device: self.device.clone(),
                key_packages,
                last_resort: Some(make(true)?),
            })
            .await?;
        Ok(stored.available)
    }

    /// Brings this device's unclaimed key packages on the server back up to
    /// [`KEY_PACKAGES_PER_PUBLISH`]; returns how many are available.
    pub async fn top_up_key_packages(&self, client: &Client) -> Result<usize> {
        let available = self.publish_key_packages(client, 0).await?;
        if available >= KEY_PACKAGES_PER_PUBLISH {
            return Ok(available);
        }
        self.publish_key_packages(client, KEY_PACKAGES_PER_PUBLISH - available)
            .await
    }

    /// Starts the MLS group of an encrypted room this user just created.
    pub fn create_group(&self, room: &str) -> Result<()> {
        MlsGroup::new_with_group_id(
            &self.provider,
            &self.signer,
            &create_config(),
            group_id(room),
            self.credential.clone(),
        )
        .map_err(e2ee!("start the room's group"))?;
        Ok(())
    }

    /// Whether this device holds the room's group (and is still in it).
    pub fn has_group(&self, room: &str) -> Result<bool> {
        Ok(self.load(room)?.is_some_and(|g| g.is_active()))
    }

    fn load(&self, room: &str) -> Result<Option<MlsGroup>> {
        MlsGroup::load(self.provider.storage(), &group_id(room))
            .map_err(e2ee!("read the room's group"))
    }

    fn group(&self, room: &str) -> Result<MlsGroup> {
        self.load(room)?.ok_or_else(|| {
            ClientError::E2ee(format!(
                "this device ({}) holds no keys for room {room}: a member must add it \
                 (`sb chat invite ROOM {}` again), then it can read messages sent from then on",
                self.device, self.username
            ))
        })
    }

    /// The room's current MLS epoch on this device.
    pub fn epoch(&self, room: &str) -> Result<u64> {
        Ok(self.group(room)?.epoch().as_u64())
    }

    /// A value every member at the same epoch agrees on (the MLS epoch authenticator).
    pub fn epoch_authenticator(&self, room: &str) -> Result<Vec<u8>> {
        Ok(self.group(room)?.epoch_authenticator().as_slice().to_vec())
    }

    /// The members of the room's group as this device sees them.
    pub fn members(&self, room: &str) -> Result<Vec<GroupMember>> {
        use sha2::Digest;
        Ok(self
            .group(room)?
            .members()
            .map(|m| {
                let (username, device) = split_identity(&m.credential);
                GroupMember {
                    username,
                    device,
                    key_fingerprint: hex::encode(sha2::Sha256::digest(&m.signature_key)),
                }
            })
            .collect())
    }

    /// Takes the Welcomes queued for this device and joins those rooms, then catches each up.
    pub async fn accept_welcomes(&self, client: &Client) -> Result<Joined> {
        let mut joined = Joined::default();
        for w in client.take_welcomes(&self.device).await? {
            match self.join_from_welcome(&w.room, &w.welcome) {
                Ok(()) => joined.rooms.push(w.room),
                Err(e) => joined.failed.push((w.room, e.to_string())),
            }
        }
        for room in &joined.rooms {
            self.sync(client, room).await?;
        }
        Ok(joined)
    }

    /// Joins a room's group from a base64 MLS Welcome (as the server queues them).
    pub fn join_from_welcome(&self, room: &str, welcome_b64: &str) -> Result<()> {
        let bytes = unb64(welcome_b64, "a Welcome")?;
        let message = MlsMessageIn::tls_deserialize_exact(bytes.as_slice())
            .map_err(e2ee!("decode a Welcome"))?;
        let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
            return Err(ClientError::E2ee(
                "a queued Welcome is not a Welcome".into(),
            ));
        };
        let group = StagedWelcome::new_from_welcome(&self.provider, &join_config(), welcome, None)
            .map_err(e2ee!("open a Welcome"))?
            .into_group(&self.provider)
            .map_err(e2ee!("join from a Welcome"))?;
        if group.group_id() != &group_id(room) {
            return Err(ClientError::E2ee(format!(
                "a Welcome for room {room} carries another group"
            )));
        }
        Ok(())
    }

    /// Fetches the room's handshakes past this device's epoch and applies them; returns the
    /// epoch it reached. A device removed from the group stops at its removal.
    pub async fn sync(&self, client: &Client, room: &str) -> Result<u64> {
        self.sync_until(client, room, u64::MAX).await
    }

    async fn sync_until(&self, client: &Client, room: &str, until: u64) -> Result<u64> {
        loop {
            let group = self.group(room)?;
            let epoch = group.epoch().as_u64();
            if epoch >= until || !group.is_active() {
                return Ok(epoch);
            }
            let page = client.handshakes(room, epoch as i64).await?;
            let wanted: Vec<HandshakeInfo> = page
                .into_iter()
                .take_while(|h| (h.epoch as u64) < until)
                .collect();
            if self.apply_handshakes(room, &wanted)? == epoch {
                return Ok(epoch);
            }
        }
    }

    /// Applies handshake-log entries in order (older ones are skipped); returns the epoch
    /// reached.
    pub fn apply_handshakes(&self, room: &str, records: &[HandshakeInfo]) -> Result<u64> {
        let mut group = self.group(room)?;
        for h in records {
            let epoch = group.epoch().as_u64() as i64;
            if !group.is_active() || h.epoch < epoch {
                continue;
            }
            if h.epoch > epoch {
                return Err(ClientError::E2ee(format!(
                    "the handshake log of room {room} skips from epoch {epoch} to {}",
                    h.epoch
                )));
            }
            self.apply(&mut group, h)?;
        }
        Ok(group.epoch().as_u64())
    }

    fn apply(&self, group: &mut MlsGroup, h: &HandshakeInfo) -> Result<()> {
        let bytes = unb64(&h.message, "a handshake")?;
        let message = MlsMessageIn::tls_deserialize_exact(bytes.as_slice())
            .map_err(e2ee!("decode a handshake"))?
            .try_into_protocol_message()
            .map_err(e2ee!("decode a handshake"))?;
        let processed = group
            .process_message(&self.provider, message)
            .map_err(e2ee!(format!("apply the commit for epoch {}", h.epoch)))?;
        match processed.into_content() {
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                group
                    .clear_pending_commit(self.provider.storage())
                    .map_err(e2ee!("drop a commit that lost its epoch"))?;
                group
                    .merge_staged_commit(&self.provider, *staged)
                    .map_err(e2ee!("merge a commit"))?;
            }
            // Our own commit: the server accepted it though we never saw the answer.
            ProcessedMessageContent::OwnPrivateMessage if group.pending_commit().is_some() => {
                group
                    .merge_pending_commit(&self.provider)
                    .map_err(e2ee!("merge our own commit"))?;
            }
            _ => {
                return Err(ClientError::E2ee(format!(
                    "the handshake for epoch {} is not a commit this device can apply",
                    h.epoch
                )));
            }
        }
        Ok(())
    }

    /// Builds a commit at this device's current epoch (without syncing first) and keeps it
    /// pending; `None` when `build` finds nothing to commit.
    fn prepare(
        &self,
        room: &str,
        build: impl FnOnce(&mut MlsGroup, &Provider, &SignatureKeyPair) -> Result<Option<Built>>,
    ) -> Result<Option<PreparedCommit>> {
        let mut group = self.group(room)?;
        if !group.is_active() {
            return Err(ClientError::E2ee(format!(
                "this device was removed from room {room}'s group"
            )));
        }
        if group.pending_commit().is_some() {
            group
                .clear_pending_commit(self.provider.storage())
                .map_err(e2ee!("drop an unsent commit"))?;
        }
        let epoch = group.epoch().as_u64();
        let Some((commit, welcome, recipients)) = build(&mut group, &self.provider, &self.signer)?
        else {
            return Ok(None);
        };
        let message = commit.to_bytes().map_err(e2ee!("encode a commit"))?;
        let welcome = welcome
            .map(|w| w.to_bytes())
            .transpose()
            .map_err(e2ee!("encode a Welcome"))?;
        Ok(Some(PreparedCommit {
            room: room.to_string(),
            epoch,
            message,
            welcome,
            recipients,
        }))
    }

    /// Prepares a key update (a commit with a fresh leaf key) at the current local epoch.
    pub fn prepare_key_update(&self, room: &str) -> Result<PreparedCommit> {
        self.prepare(room, |g, p, s| {
            let (commit, _, _) = g
                .self_update(p, s, LeafNodeParameters::default())
                .map_err(e2ee!("update keys"))?
                .into_contents();
            Ok(Some((commit, None, Vec::new())))
        })?
        .ok_or_else(|| ClientError::E2ee("nothing to update".into()))
    }

    /// Sends a prepared commit. `Ok(true)`: accepted and merged. `Ok(false)`: another commit
    /// took that epoch first; ours is dropped, and [`E2ee::sync`] brings in the winner.
    pub async fn publish_commit(&self, client: &Client, prepared: PreparedCommit) -> Result<bool> {
        let welcomes = match &prepared.welcome {
            Some(w) => prepared
                .recipients
                .iter()
                .map(|(username, device)| WelcomeOut {
                    username: username.clone(),
                    device: device.clone(),
                    welcome: b64(w),
                })
                .collect(),
            None => Vec::new(),
        };
        let sent = client
            .send_handshake(
                &prepared.room,
                &HandshakeSend {
                    epoch: prepared.epoch as i64,
                    message: b64(&prepared.message),
                    welcomes,
                },
            )
            .await;
        let mut group = self.group(&prepared.room)?;
        match sent {
            Ok(()) => {
                group
                    .merge_pending_commit(&self.provider)
                    .map_err(e2ee!("merge our commit"))?;
                Ok(true)
            }
            Err(e @ ClientError::Api { .. }) => {
                group
                    .clear_pending_commit(self.provider.storage())
                    .map_err(e2ee!("drop a refused commit"))?;
                if e.code() == Some("stale_epoch") {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
            // The outcome is unknown: the commit stays pending and the next sync settles it.
            Err(e) => Err(e),
        }
    }

    /// Syncs, builds, publishes; rebuilds when another member's commit took the epoch.
    async fn commit(
        &self,
        client: &Client,
        room: &str,
        build: impl Fn(&mut MlsGroup, &Provider, &SignatureKeyPair) -> Result<Option<Built>>,
    ) -> Result<bool> {
        for _ in 0..COMMIT_ATTEMPTS_MAX {
            self.sync(client, room).await?;
            let Some(prepared) = self.prepare(room, &build)? else {
                return Ok(false);
            };
            if self.publish_commit(client, prepared).await? {
                return Ok(true);
            }
        }
        Err(ClientError::E2ee(format!(
            "room {room}: other members' commits won {COMMIT_ATTEMPTS_MAX} times in a row; try again"
        )))
    }

    /// Commits a fresh key for this device (post-compromise security).
    pub async fn update_keys(&self, client: &Client, room: &str) -> Result<()> {
        self.commit(client, room, |g, p, s| {
            let (commit, _, _) = g
                .self_update(p, s, LeafNodeParameters::default())
                .map_err(e2ee!("update keys"))?
                .into_contents();
            Ok(Some((commit, None, Vec::new())))
        })
        .await
        .map(|_| ())
    }

    /// Adds every device of `username` (already a room member) to the room's group: claims a
    /// key package per device, commits, and queues a Welcome for each. Returns the devices.
    pub async fn add_member(&self, client: &Client, room: &str, username: &str) -> Result<usize> {
        let claimed = client.claim_key_packages(room, username).await?;
        if claimed.is_empty() {
            return Err(ClientError::E2ee(format!(
                "{username} has no device with published keys yet; once they sign in \
                 (`sb login`), invite them again"
            )));
        }
        let mut packages = Vec::with_capacity(claimed.len());
        let mut recipients = Vec::with_capacity(claimed.len());
        for c in claimed {
            let bytes = unb64(&c.key_package, "a key package")?;
            let package = KeyPackageIn::tls_deserialize_exact(bytes.as_slice())
                .map_err(e2ee!("decode a key package"))?
                .validate(self.provider.crypto(), ProtocolVersion::Mls10)
                .map_err(e2ee!(format!("check {username}'s key package")))?;
            let claimed_as = identity(username, &c.device);
            let names = package.leaf_node().credential().serialized_content();
            if names != claimed_as.as_bytes() || package.ciphersuite() != CIPHERSUITE {
                return Err(ClientError::E2ee(format!(
                    "the key package handed out for {claimed_as} is not that device's"
                )));
            }
            packages.push(package);
            recipients.push((username.to_string(), c.device));
        }
        self.commit(client, room, |g, p, s| {
            let (commit, welcome, _) = g
                .add_members(p, s, &packages)
                .map_err(e2ee!(format!("add {username}")))?;
            Ok(Some((commit, Some(welcome), recipients.clone())))
        })
        .await?;
        Ok(packages.len())
    }

    /// Removes from the group every device of users who are no longer room members (they
    /// left, or were kicked or banned). Returns how many devices were removed.
    pub async fn remove_departed(&self, client: &Client, room: &str) -> Result<usize> {
        let members: HashSet<String> = client
            .members(room)
            .await?
            .into_iter()
            .map(|m| m.username)
            .collect();
        let removed = std::sync::atomic::AtomicUsize::new(0);
        self.commit(client, room, |g, p, s| {
            let leaves: Vec<LeafNodeIndex> = g
                .members()
                .filter(|m| !members.contains(&split_identity(&m.credential).0))
                .map(|m| m.index)
                .collect();
            if leaves.is_empty() {
                return Ok(None);
            }
            removed.store(leaves.len(), std::sync::atomic::Ordering::Relaxed);
            let (commit, _, _) = g
                .remove_members(p, s, &leaves)
                .map_err(e2ee!("remove departed members"))?;
            Ok(Some((commit, None, Vec::new())))
        })
        .await?;
        Ok(removed.into_inner())
    }

    /// Encrypts `payload` for the room's current members and sends it. Departed members are
    /// removed from the group first.
    pub async fn send(
        &self,
        client: &Client,
        room: &str,
        message_id: &str,
        payload: &Payload,
    ) -> Result<MessageSent> {
        self.remove_departed(client, room).await?;
        let mut group = self.group(room)?;
        let plaintext = serde_json::to_vec(payload).map_err(e2ee!("encode a message"))?;
        let out = group
            .create_message(&self.provider, &self.signer, &plaintext)
            .map_err(e2ee!("encrypt a message"))?;
        let body = b64(&out.to_bytes().map_err(e2ee!("encode a message"))?);
        // A sender cannot decrypt its own MLS message: keep the plaintext to show it later.
        self.remember(
            room,
            message_id,
            &identity(&self.username, &self.device),
            &plaintext,
        )?;
        client
            .send_message(
                room,
                &MessageSend {
                    message_id: message_id.to_string(),
                    body,
                    reply_to: None,
                    kind: None,
                    target: None,
                    attachments: payload.attachments.iter().map(|a| a.id.clone()).collect(),
                },
            )
            .await
    }

    fn remember(&self, room: &str, message_id: &str, sender: &str, plaintext: &[u8]) -> Result<()> {
        self.local
            .execute(
                "INSERT OR REPLACE INTO sb_plaintext (room, message_id, sender, payload)
                 VALUES (?1, ?2, ?3, ?4)",
                params![room, message_id, sender, plaintext],
            )
            .map_err(e2ee!("write the key store"))?;
        Ok(())
    }

    fn remembered(&self, room: &str, message_id: &str) -> Result<Option<Decrypted>> {
        let row: Option<(String, Vec<u8>)> = self
            .local
            .query_row(
                "SELECT sender, payload FROM sb_plaintext WHERE room = ?1 AND message_id = ?2",
                params![room, message_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(e2ee!("read the key store"))?;
        row.map(|(sender, bytes)| {
            Ok(Decrypted {
                sender,
                payload: serde_json::from_slice(&bytes).map_err(e2ee!("decode a message"))?,
            })
        })
        .transpose()
    }

    /// Decrypts a message of an encrypted room, first applying the commits up to its epoch.
    pub async fn decrypt(&self, client: &Client, m: &MessageInfo) -> Result<Decrypted> {
        if let Some(d) = self.remembered(&m.room, &m.message_id)? {
            return Ok(d);
        }
        let epoch = self.message_epoch(m)?;
        if epoch > self.epoch(&m.room)? {
            self.sync_until(client, &m.room, epoch).await?;
        }
        self.decrypt_local(m)
    }

    fn message_epoch(&self, m: &MessageInfo) -> Result<u64> {
        if m.deleted {
            return Err(ClientError::E2ee("the message was deleted".into()));
        }
        let bytes = unb64(&m.body, "a message")?;
        let message = MlsMessageIn::tls_deserialize_exact(bytes.as_slice())
            .map_err(e2ee!("decode a message"))?
            .try_into_protocol_message()
            .map_err(e2ee!("decode a message"))?;
        Ok(message.epoch().as_u64())
    }

    /// Decrypts with what this device already holds, without asking the server for anything.
    pub fn decrypt_local(&self, m: &MessageInfo) -> Result<Decrypted> {
        if let Some(d) = self.remembered(&m.room, &m.message_id)? {
            return Ok(d);
        }
        if m.deleted {
            return Err(ClientError::E2ee("the message was deleted".into()));
        }
        let mut group = self.group(&m.room)?;
        if !group.is_active() {
            return Err(ClientError::E2ee(format!(
                "this device was removed from room {}'s group and cannot read its later messages",
                m.room
            )));
        }
        let bytes = unb64(&m.body, "a message")?;
        let message = MlsMessageIn::tls_deserialize_exact(bytes.as_slice())
            .map_err(e2ee!("decode a message"))?
            .try_into_protocol_message()
            .map_err(e2ee!("decode a message"))?;
        let processed = group
            .process_message(&self.provider, message)
            .map_err(e2ee!(format!("decrypt message {}", m.seq)))?;
        let (sender, _) = split_identity(processed.credential());
        let device = split_identity(processed.credential()).1;
        let ProcessedMessageContent::ApplicationMessage(app) = processed.into_content() else {
            return Err(ClientError::E2ee(format!(
                "message {} is not an application message",
                m.seq
            )));
        };
        let plaintext = app.into_bytes();
        let payload: Payload =
            serde_json::from_slice(&plaintext).map_err(e2ee!("decode a message"))?;
        let sender = identity(&sender, &device);
        self.remember(&m.room, &m.message_id, &sender, &plaintext)?;
        Ok(Decrypted { sender, payload })
    }

    /// Encrypts a file with a fresh key and uploads the ciphertext under a neutral name;
    /// attach the result to a [`Payload`].
    pub async fn upload_sealed(
        &self,
        client: &Client,
        room: &str,
        name: &str,
        content_type: &str,
        bytes: &[u8],
        progress: impl Fn(u64, u64) + Send + Sync + 'static,
    ) -> Result<SealedAttachment> {
        let key =
            chacha20poly1305::ChaCha20Poly1305::generate_key(&mut chacha20poly1305::aead::OsRng);
        let ciphertext = chacha20poly1305::ChaCha20Poly1305::new(&key)
            .encrypt(&chacha20poly1305::Nonce::default(), bytes)
            .map_err(|_| ClientError::E2ee("encrypt the file".into()))?;
        let info = client
            .upload(
                room,
                "encrypted",
                "application/octet-stream",
                ciphertext,
                progress,
            )
            .await?;
        Ok(SealedAttachment {
            id: info.id,
            name: name.to_string(),
            content_type: content_type.to_string(),
            size: bytes.len() as u64,
            key: b64(&key),
            blake3: blake3::hash(bytes).to_hex().to_string(),
        })
    }

    /// Downloads and decrypts a sealed attachment, checking its BLAKE3.
    pub async fn download_sealed(
        client: &Client,
        room: &str,
        a: &SealedAttachment,
    ) -> Result<Vec<u8>> {
        let (_, ciphertext) = client.download(room, &a.id).await?;
        let key = unb64(&a.key, "an attachment key")?;
        if key.len() != 32 {
            return Err(ClientError::E2ee(
                "an attachment key is not 32 bytes".into(),
            ));
        }
        let plaintext =
            chacha20poly1305::ChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(&key))
                .decrypt(&chacha20poly1305::Nonce::default(), ciphertext.as_slice())
                .map_err(|_| {
                    ClientError::E2ee(format!(
                        "the attachment {} does not decrypt: it was altered",
                        a.name
                    ))
                })?;
        if blake3::hash(&plaintext).to_hex().as_str() != a.blake3 {
            return Err(ClientError::E2ee(format!(
                "the attachment {} does not match its hash",
                a.name
            )));
        }
        Ok(plaintext)
    }
}
