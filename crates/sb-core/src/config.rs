//! Configuration: every field has a shipped default, every limit is named here.
//!
//! The structs are plain serde data. `sb-server` layers them: defaults, then the TOML file given with
//! `--config`, then `SB_SECTION__FIELD` environment variables, then command-line flags.
//! [`DEFAULT_CONFIG_TOML`] is the annotated file `sb config default` prints; a test keeps it equal
//! to [`Config::default`].

use crate::Secret;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub tls: TlsConfig,
    pub store: StoreConfig,
    pub blobs: BlobsConfig,
    pub auth: AuthConfig,
    pub rate_limits: RateLimitConfig,
    pub limits: LimitsConfig,
    pub bus: BusConfig,
    pub metrics: MetricsConfig,
    pub chat: ChatConfig,
    pub files: FilesConfig,
    pub monitoring: MonitoringConfig,
    pub mqtt: MqttConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            data_dir: PathBuf::from("./sb-data"),
            log_format: LogFormat::Text,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain. Unset: a self-signed certificate in `<data_dir>/tls/`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key for `cert_file`.
    pub key_file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub durability: Durability,
    pub busy_timeout_ms: u64,
    pub read_connections: usize,
    /// Writes committed together (one fsync) at most.
    pub group_commit_max: usize,
    /// Writes waiting for the writer at most; further writers wait their turn.
    pub write_queue_max: usize,
}

/// Where file chunks and attachments are kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlobsConfig {
    /// Directories (one per disk) blobs are spread over; empty: `<data_dir>/blobs`.
    pub dirs: Vec<PathBuf>,
    /// Copies of each blob, on distinct directories (at most as many as `dirs`).
    pub replicas: usize,
    /// zstd level for blobs that compress; 0 stores everything as is.
    pub zstd_level: i32,
    /// Decoded blobs kept in memory for repeated reads, in bytes (0: none).
    pub cache_bytes: usize,
    /// A blob nothing refers to is deleted once it is this old (so one being uploaded or
    /// about to be referenced is never taken).
    pub gc_grace_secs: u64,
}

impl Default for BlobsConfig {
    fn default() -> Self {
        Self {
            dirs: Vec::new(),
            replicas: 1,
            zstd_level: 3,
            cache_bytes: 256 * 1024 * 1024,
            gc_grace_secs: 24 * 3600,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Full,
            busy_timeout_ms: 5_000,
            read_connections: 4,
            group_commit_max: 256,
            write_queue_max: 4_096,
        }
    }
}

/// `Full`: every acknowledged write survives power loss (SQLite `synchronous=FULL`).
/// `Relaxed`: survives a process crash but may lose the last writes on power loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    #[default]
    Full,
    Relaxed,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistrationMode {
    Open,
    #[default]
    Invite,
    Closed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub registration: RegistrationMode,
    pub session_ttl_secs: u64,
    /// Ended (revoked or expired) sessions stay listed this long, then are deleted.
    pub ended_session_retention_secs: u64,
    pub invite_ttl_secs: u64,
    /// Upper bound on `--expires` for API tokens; 0 means tokens may live forever.
    pub token_ttl_max_secs: u64,
    pub password_min_length: usize,
    pub password_max_length: usize,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    /// Password hashes computed at once; each takes `argon2_memory_kib` of memory.
    pub password_hash_concurrency_max: usize,
    pub username_length_max: usize,
    pub profile_field_length_max: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            registration: RegistrationMode::Invite,
            session_ttl_secs: 30 * 24 * 3600,
            ended_session_retention_secs: 7 * 24 * 3600,
            invite_ttl_secs: 7 * 24 * 3600,
            token_ttl_max_secs: 0,
            password_min_length: 10,
            password_max_length: 256,
            // OWASP Password Storage Cheat Sheet: Argon2id, m=19 MiB, t=2, p=1.
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            password_hash_concurrency_max: 4,
            username_length_max: 32,
            profile_field_length_max: 200,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub login_per_ip_per_minute: u32,
    pub login_per_account_per_minute: u32,
    pub register_per_ip_per_minute: u32,
    /// Requests carrying a bad (unknown, expired, revoked) token, and device logins with a
    /// wrong secret or certificate (MQTT, firmware downloads), per client IP.
    pub token_failures_per_ip_per_minute: u32,
    /// Authenticated requests per session or API token.
    pub requests_per_credential_per_second: u32,
    /// Failed logins for one account before each further attempt must wait.
    pub failures_before_backoff: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Distinct IPs/accounts tracked; beyond this the oldest entries are forgotten.
    pub tracked_keys_max: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            login_per_ip_per_minute: 30,
            login_per_account_per_minute: 10,
            register_per_ip_per_minute: 10,
            token_failures_per_ip_per_minute: 60,
            requests_per_credential_per_second: 200,
            failures_before_backoff: 5,
            backoff_base_ms: 1_000,
            backoff_max_ms: 300_000,
            tracked_keys_max: 100_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub connections_max: usize,
    pub body_size_bytes_max: usize,
    pub header_size_bytes_max: usize,
    pub request_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub tls_handshake_timeout_ms: u64,
    pub shutdown_grace_ms: u64,
    pub ws_frame_size_bytes_max: usize,
    pub ws_message_size_bytes_max: usize,
    pub ws_connections_per_user_max: usize,
    pub ws_ping_interval_ms: u64,
    /// Read and write buffer of each WebSocket (the main memory cost of an idle connection).
    pub ws_buffer_size_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            connections_max: 1_024,
            body_size_bytes_max: 1024 * 1024,
            header_size_bytes_max: 16 * 1024,
            request_timeout_ms: 30_000,
            idle_timeout_ms: 120_000,
            tls_handshake_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
            ws_frame_size_bytes_max: 64 * 1024,
            ws_message_size_bytes_max: 256 * 1024,
            ws_connections_per_user_max: 32,
            ws_ping_interval_ms: 30_000,
            ws_buffer_size_bytes: 8 * 1024,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    pub subscriber_queue_max: usize,
    pub overflow: OverflowPolicy,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            subscriber_queue_max: 1_024,
            overflow: OverflowPolicy::Disconnect,
        }
    }
}

/// What the bus does when a subscriber's queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    /// Close the slow subscriber; it sees the end of its stream and must resume from its cursor.
    #[default]
    Disconnect,
    /// Drop the new message for that subscriber only and count it.
    DropNewest,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// When set, `/metrics` requires `Authorization: Bearer <this>`.
    pub bearer_token: Option<Secret<String>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    /// Largest message body, in bytes of UTF-8.
    pub message_size_bytes_max: usize,
    /// Most messages one history page returns.
    pub history_page_max: usize,
    /// Most messages replayed per room when a device resumes; beyond this it is told to page.
    pub catchup_messages_max: usize,
    pub room_name_length_max: usize,
    pub room_topic_length_max: usize,
    pub room_members_max: usize,
    /// Largest attachment, in bytes.
    pub attachment_size_bytes_max: usize,
    /// Attachments one message may carry.
    pub attachments_per_message_max: usize,
    /// Attachment uploads and downloads in progress at once; each holds up to
    /// `attachment_size_bytes_max` in memory. Further transfers wait their turn.
    pub attachment_transfers_concurrent_max: usize,
}

/// One MQTT listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttListener {
    pub bind: SocketAddr,
    /// TLS with the server's certificate (as on the HTTPS listener).
    #[serde(default)]
    pub tls: bool,
    /// Clients without credentials may connect, limited to `mqtt.anonymous_topics`.
    #[serde(default)]
    pub allow_anonymous: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Listeners besides `sb serve --mqtt ADDR` (plain TCP, no anonymous clients).
    pub listeners: Vec<MqttListener>,
    /// Open MQTT connections at most, over all listeners.
    pub connections_max: usize,
    /// Largest packet a client may send (announced to MQTT 5 clients).
    pub packet_size_bytes_max: usize,
    /// QoS 1 and 2 messages in flight at once in each direction (to the server: its receive
    /// maximum; to a client: at most this, or fewer if a v5 client asks).
    pub inflight_max: u16,
    /// Messages waiting for one session (connected or away); beyond it they are dropped.
    pub queue_max: usize,
    /// Messages waiting for a connected client (beyond those in flight) before publishers to
    /// it wait for room: backpressure with a short queue keeps latency low.
    pub queue_live_max: usize,
    /// How long a publisher waits for that room; a client that made a publisher wait this long
    /// is treated like one that is away (queued up to `queue_max`, then dropped for) until it
    /// catches up. 0: no backpressure.
    pub queue_full_wait_ms: u64,
    pub topic_depth_max: usize,
    /// Topic aliases an MQTT 5 client may use.
    pub topic_alias_max: u16,
    /// Longest session expiry granted (MQTT 3.1.1 persistent sessions get this).
    pub session_expiry_max_secs: u32,
    /// Longest keep-alive accepted (MQTT 5 clients asking more are told this one).
    pub keep_alive_max_secs: u16,
    pub retained_max: usize,
    /// Time a new connection has to send CONNECT.
    pub connect_timeout_ms: u64,
    /// Topic filters each device group may publish and subscribe to, besides its devices' own
    /// `devices/<id>/#`.
    pub group_topics: std::collections::BTreeMap<String, Vec<String>>,
    /// Topic filters anonymous clients (on listeners that allow them) may use.
    pub anonymous_topics: Vec<String>,
    /// Samples one telemetry message may carry (`devices/<id>/telemetry`).
    pub telemetry_fields_max: usize,
    /// Longest a command may wait for its answer once sent, and for its device to come back.
    pub command_timeout_max_secs: u64,
    pub command_expiry_max_secs: u64,
    /// Largest command payload (JSON), in bytes.
    pub command_payload_bytes_max: usize,
    /// A device whose last health report (on `devices/<id>/health`) is older is unhealthy.
    pub health_interval_secs: u64,
    /// How often `device_online` and `device_healthy` are written for every device (for
    /// alert rules such as `device_online == 0` held for 10m); 0 turns it off.
    pub status_interval_secs: u64,
    /// Largest firmware image.
    pub firmware_size_bytes_max: usize,
    /// Operator public keys (hex) firmware must be signed with; empty: any valid signature,
    /// its key recorded with the image.
    pub firmware_keys: Vec<String>,
    /// Topic filters one MQTT session may hold; more are refused in the SUBACK (0x97).
    pub subscriptions_per_client_max: usize,
    /// Commands queued or sent to one device at once.
    pub commands_open_per_device_max: usize,
    /// Largest twin document (desired or reported), in bytes of JSON.
    pub twin_bytes_max: usize,
    /// How long a device of a firmware rollout may stay in one state (told, downloading,
    /// …) before it counts as failed, unless the rollout names its own.
    pub rollout_step_timeout_secs: u64,
    /// Most devices one rollout may hold.
    pub rollout_devices_max: usize,
    /// The built-in `DeviceOffline` alert fires for a device offline this long (from the
    /// `device_online` series, so at `status_interval_secs` granularity); 0 turns it off.
    pub offline_alert_after_secs: u64,
    /// How long a device's client certificate (`sb device cert`) is valid.
    pub device_cert_validity_days: u32,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listeners: Vec::new(),
            connections_max: 100_000,
            packet_size_bytes_max: 256 * 1024,
            inflight_max: 64,
            queue_max: 1000,
            queue_live_max: 128,
            queue_full_wait_ms: 500,
            topic_depth_max: 16,
            topic_alias_max: 32,
            session_expiry_max_secs: 7 * 24 * 3600,
            keep_alive_max_secs: 600,
            retained_max: 100_000,
            connect_timeout_ms: 10_000,
            group_topics: Default::default(),
            anonymous_topics: Vec::new(),
            telemetry_fields_max: 256,
            command_timeout_max_secs: 3600,
            command_expiry_max_secs: 7 * 24 * 3600,
            command_payload_bytes_max: 64 * 1024,
            health_interval_secs: 300,
            status_interval_secs: 30,
            firmware_size_bytes_max: 64 * 1024 * 1024,
            firmware_keys: Vec::new(),
            subscriptions_per_client_max: 100,
            commands_open_per_device_max: 100,
            twin_bytes_max: 64 * 1024,
            rollout_step_timeout_secs: 600,
            rollout_devices_max: 100_000,
            offline_alert_after_secs: 600,
            device_cert_validity_days: 3650,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesConfig {
    /// Largest file, in bytes.
    pub file_size_bytes_max: u64,
    /// Largest chunk an upload may send (content-defined chunks are 256 KiB to 4 MiB).
    pub chunk_size_bytes_max: usize,
    /// An upload not committed within this long is forgotten (its chunks stay until garbage
    /// collection).
    pub upload_ttl_secs: u64,
    /// Longest path, in bytes.
    pub path_length_max: usize,
    /// Most entries one listing returns.
    pub list_page_max: usize,
    /// Longest lifetime of a download link.
    pub link_ttl_max_secs: u64,
    /// Most changes one change-feed page returns.
    pub changes_page_max: usize,
    /// Versions older than the newest `version_keep_last` *and* older than
    /// `version_keep_days` are deleted (hourly); the newest version always stays.
    pub version_keep_last: u32,
    pub version_keep_days: u32,
    /// Trashed files are deleted for good after this long.
    pub trash_retention_secs: u64,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            file_size_bytes_max: 16 * 1024 * 1024 * 1024,
            chunk_size_bytes_max: 4 * 1024 * 1024,
            upload_ttl_secs: 24 * 3600,
            path_length_max: 4096,
            list_page_max: 10_000,
            link_ttl_max_secs: 30 * 24 * 3600,
            changes_page_max: 1_000,
            version_keep_last: 20,
            version_keep_days: 30,
            trash_retention_secs: 30 * 24 * 3600,
        }
    }
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            message_size_bytes_max: 16 * 1024,
            history_page_max: 200,
            catchup_messages_max: 1_000,
            room_name_length_max: 64,
            room_topic_length_max: 512,
            room_members_max: 10_000,
            attachment_size_bytes_max: 25 * 1024 * 1024,
            attachments_per_message_max: 10,
            attachment_transfers_concurrent_max: 8,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitoringConfig {
    /// Largest remote_write or line-protocol body as sent, in bytes.
    pub write_body_bytes_max: usize,
    /// Largest remote_write body once decompressed, in bytes.
    pub write_decompressed_bytes_max: usize,
    /// Samples per second accepted across all writers; beyond it writes get 429.
    pub samples_per_second_max: u64,
    /// Samples per second accepted from one tenant (the writing account); beyond it its
    /// writes get 429 while other tenants' go on.
    pub tenant_samples_per_second_max: u64,
    /// Active series (written in the last `head_chunk_max_age_ms`) of one tenant at most;
    /// samples of its new series beyond it are refused with a clear error.
    pub tenant_series_max: usize,
    /// Series held at most (the active-series limit); samples of new series beyond it are refused.
    pub series_max: usize,
    pub labels_per_series_max: usize,
    /// Bytes of one series' label names and values at most.
    pub label_bytes_max: usize,
    /// Size at which the time-series log starts a new segment file.
    pub wal_segment_bytes: u64,
    /// Samples older than this are dropped (0: kept forever).
    pub retention_ms: u64,
    /// Time-series files are kept under this size by dropping the oldest data (0: no limit).
    pub retention_bytes: u64,
    /// How often sealed chunks are written out, retention applied and the log replaced by a
    /// checkpoint (also done at shutdown).
    pub checkpoint_interval_ms: u64,
    /// Size of one chunk file.
    pub chunk_file_bytes: u64,
    /// A series' open chunk with no sample for this long is sealed and written out.
    pub head_chunk_max_age_ms: u64,
    /// A series' chunks on disk within one window of this span (once complete) are merged
    /// into one at a checkpoint, so memory per series grows with days kept, not chunks
    /// (0: never). Rollup tiers use windows of 8192 buckets.
    pub compact_span_ms: u64,
    /// How far back an instant selector looks for a sample (PromQL lookback delta).
    pub lookback_ms: u64,
    /// Samples one query may load into memory.
    pub query_samples_max: usize,
    /// Points per series a range query may return.
    pub query_range_points_max: i64,
    /// A query running longer is cancelled.
    pub query_timeout_ms: u64,
    /// Saved dashboards (web console) per user, and panels per dashboard.
    pub dashboards_per_user_max: usize,
    pub dashboard_panels_max: usize,
    /// Prometheus rule files (alerting and recording rules); reloaded on SIGHUP or
    /// `sb alerts reload`.
    pub rule_files: Vec<PathBuf>,
    /// Rules the server itself ships (name, rule-file text), loaded with the files; not read
    /// from the config (e.g. the device-offline alert of `mqtt.offline_alert_after_secs`).
    #[serde(skip)]
    pub builtin_rules: Vec<(String, String)>,
    /// How often a rule group without its own `interval` is evaluated.
    pub rule_evaluation_interval_ms: u64,
    /// Alerts with the same values of these labels are notified together.
    pub alert_group_by: Vec<String>,
    /// A group still firing is notified again after this long.
    pub alert_repeat_interval_ms: u64,
    /// URLs that get each notification as an Alertmanager webhook payload (POST, JSON).
    pub alert_webhooks: Vec<String>,
    /// Tries per notification and webhook before it is dropped (with a log line).
    pub alert_delivery_attempts_max: u32,
    /// Notifications waiting for delivery at most; beyond it the oldest are dropped and logged.
    pub alert_queue_max: usize,
    /// A chat room (its id) that gets each notification as a message ("" for none), posted
    /// with `alert_chat_token`: an API token of a member of that room (a bot account, say).
    pub alert_chat_room: String,
    pub alert_chat_token: Option<Secret<String>>,
    /// Store the server's own metrics (job `switchboard`) this often (0: never).
    pub self_scrape_interval_ms: u64,
    /// Downsampled tiers (`[[monitoring.rollups]]`): every series' min, max, sum and count per
    /// bucket, kept longer than the raw samples.
    pub rollups: Vec<RollupTier>,
    /// Prometheus exposition endpoints to scrape (`[[monitoring.scrape]]` tables).
    pub scrape: Vec<ScrapeJob>,
}

/// One rollup tier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollupTier {
    /// Bucket width, e.g. 300000 (5 minutes).
    pub resolution_ms: u64,
    /// Buckets older than this are dropped (0: kept forever).
    pub retention_ms: u64,
}

/// One scrape job: targets that serve Prometheus metrics over HTTP(S).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScrapeJob {
    /// The `job` label of every series scraped.
    pub job: String,
    /// `host:port` of each target (its `instance` label).
    pub targets: Vec<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// `http` or `https`.
    pub scheme: String,
    pub metrics_path: String,
    /// Sent as `Authorization: Bearer …` when set.
    pub bearer_token: Option<Secret<String>>,
    /// Skip certificate verification for `https` targets (self-signed exporters).
    pub tls_insecure_skip_verify: bool,
    /// A scrape with more samples than this fails (`up` is 0).
    pub sample_limit: usize,
    /// Largest response body.
    pub body_bytes_max: usize,
}

impl Default for ScrapeJob {
    fn default() -> Self {
        Self {
            job: String::new(),
            targets: Vec::new(),
            interval_ms: 15_000,
            timeout_ms: 10_000,
            scheme: "http".into(),
            metrics_path: "/metrics".into(),
            bearer_token: None,
            tls_insecure_skip_verify: false,
            sample_limit: 50_000,
            body_bytes_max: 32 * 1024 * 1024,
        }
    }
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        Self {
            write_body_bytes_max: 16 * 1024 * 1024,
            write_decompressed_bytes_max: 64 * 1024 * 1024,
            samples_per_second_max: 1_000_000,
            tenant_samples_per_second_max: 1_000_000,
            tenant_series_max: 500_000,
            series_max: 1_000_000,
            labels_per_series_max: 64,
            label_bytes_max: 8 * 1024,
            wal_segment_bytes: 128 * 1024 * 1024,
            retention_ms: 15 * 24 * 3_600_000,
            retention_bytes: 0,
            checkpoint_interval_ms: 10 * 60 * 1000,
            chunk_file_bytes: 128 * 1024 * 1024,
            head_chunk_max_age_ms: 3_600_000,
            compact_span_ms: 24 * 3_600_000,
            lookback_ms: 5 * 60 * 1000,
            query_samples_max: 50_000_000,
            query_range_points_max: 11_000,
            query_timeout_ms: 120_000,
            dashboards_per_user_max: 100,
            dashboard_panels_max: 24,
            rule_files: Vec::new(),
            builtin_rules: Vec::new(),
            rule_evaluation_interval_ms: 60_000,
            alert_group_by: vec!["alertname".into()],
            alert_repeat_interval_ms: 4 * 3_600_000,
            alert_webhooks: Vec::new(),
            alert_delivery_attempts_max: 10,
            alert_queue_max: 1_000,
            alert_chat_room: String::new(),
            alert_chat_token: None,
            self_scrape_interval_ms: 15_000,
            rollups: vec![
                RollupTier {
                    resolution_ms: 5 * 60 * 1000,
                    retention_ms: 90 * 24 * 3_600_000,
                },
                RollupTier {
                    resolution_ms: 3_600_000,
                    retention_ms: 730 * 24 * 3_600_000,
                },
            ],
            scrape: Vec::new(),
        }
    }
}

/// The annotated default configuration, printed by `sb config default`.
pub const DEFAULT_CONFIG_TOML: &str = r#"# Switchboard configuration. Every value below is the shipped default.
# Any field can also be set in the environment as SB_<SECTION>__<FIELD>,
# for example SB_SERVER__LISTEN=0.0.0.0:8443 or SB_LIMITS__BODY_SIZE_BYTES_MAX=2097152.

[server]
# Address for HTTPS and WebSocket (HTTP/1.1 and HTTP/2). Loopback unless told otherwise.
listen = "127.0.0.1:8443"
# Holds sb.db (SQLite), tls/ and the first-start setup-token.
data_dir = "./sb-data"
# "text" for people, "json" for log collectors.
log_format = "text"

[tls]
# PEM certificate chain and key. Leave both unset to use a self-signed certificate
# generated in <data_dir>/tls/ at first start.
# cert_file = "/etc/switchboard/cert.pem"
# key_file = "/etc/switchboard/key.pem"

[store]
# "full": acknowledged writes survive power loss. "relaxed": they survive a crash only.
durability = "full"
busy_timeout_ms = 5000
# SQLite connections used for reads, beside the one writer.
read_connections = 4
# Concurrent writes are committed together, sharing one fsync: at most this many per commit.
group_commit_max = 256
# Writes queued for the writer at most; beyond this, writers wait.
write_queue_max = 4096

[blobs]
# Directories (one per disk) file chunks and attachments are spread over; empty means
# <data_dir>/blobs. Each blob is written to `replicas` of them; a corrupt or lost copy is read
# from another and then rewritten.
dirs = []
replicas = 1
# zstd level for blobs that compress (0: store as is); blobs that do not shrink are kept raw.
zstd_level = 3
# Decoded blobs kept in memory for repeated reads.
cache_bytes = 268435456
# Blobs nothing refers to (old file versions, purged trash, abandoned uploads) are deleted
# hourly once this old, or on `sb admin gc`.
gc_grace_secs = 86400

[auth]
# "open": anyone may register. "invite": an admin's invite is needed. "closed": nobody.
registration = "invite"
session_ttl_secs = 2592000
# Revoked and expired sessions stay in `sb sessions` this long, then are deleted (hourly).
ended_session_retention_secs = 604800
invite_ttl_secs = 604800
# Longest allowed API token lifetime; 0 lets tokens live until revoked.
token_ttl_max_secs = 0
password_min_length = 10
password_max_length = 256
# Argon2id parameters (OWASP: m=19 MiB, t=2, p=1).
argon2_memory_kib = 19456
argon2_iterations = 2
argon2_parallelism = 1
# Password hashes computed at once; each one holds argon2_memory_kib of memory.
password_hash_concurrency_max = 4
username_length_max = 32
profile_field_length_max = 200

[rate_limits]
login_per_ip_per_minute = 30
login_per_account_per_minute = 10
register_per_ip_per_minute = 10
# Requests with an unknown, expired or revoked token, and device logins with a wrong secret
# or certificate (MQTT, firmware downloads), per client IP; past it, that IP waits.
token_failures_per_ip_per_minute = 60
# Authenticated requests per session or API token.
requests_per_credential_per_second = 200
# After this many failed logins an account backs off exponentially,
# from backoff_base_ms up to backoff_max_ms, until a login succeeds.
failures_before_backoff = 5
backoff_base_ms = 1000
backoff_max_ms = 300000
# IPs and accounts tracked by the limiters; the oldest are forgotten beyond this.
tracked_keys_max = 100000

[limits]
# Open connections; further connections wait at accept.
connections_max = 1024
body_size_bytes_max = 1048576
header_size_bytes_max = 16384
request_timeout_ms = 30000
# A connection with no request in flight is closed after this long.
idle_timeout_ms = 120000
tls_handshake_timeout_ms = 10000
# On SIGINT/SIGTERM, in-flight requests get this long to finish.
shutdown_grace_ms = 10000
ws_frame_size_bytes_max = 65536
ws_message_size_bytes_max = 262144
ws_connections_per_user_max = 32
# The server pings each WebSocket this often and closes it after two unanswered pings.
ws_ping_interval_ms = 30000
# Read and write buffer of each WebSocket; the main memory cost of an idle connection.
ws_buffer_size_bytes = 8192

[bus]
# Messages queued per subscriber (a WebSocket's outbound events included).
subscriber_queue_max = 1024
# "disconnect": a full subscriber is closed and must resume from its cursor.
# "drop_newest": the message is dropped for that subscriber only.
overflow = "disconnect"

[metrics]
# When set, /metrics requires "Authorization: Bearer <token>".
# bearer_token = "change-me"

[chat]
# Largest message body, in bytes of UTF-8.
message_size_bytes_max = 16384
history_page_max = 200
# A device that reconnects gets at most this many missed messages per room; beyond that it is
# told the catch-up was truncated and pages through history instead.
catchup_messages_max = 1000
room_name_length_max = 64
room_topic_length_max = 512
room_members_max = 10000
# Largest attachment in bytes; only room members can download attachments.
attachment_size_bytes_max = 26214400
attachments_per_message_max = 10
# Uploads and downloads at once; each holds up to attachment_size_bytes_max in memory.
attachment_transfers_concurrent_max = 8

[files]
# Largest file. Its chunk list must also fit in limits.body_size_bytes_max (about 12,000
# chunks, some 12 GiB, per MiB of body limit).
file_size_bytes_max = 17179869184
# Largest chunk an upload may send; content-defined chunks are 256 KiB to 4 MiB.
chunk_size_bytes_max = 4194304
# An upload not committed within this long is forgotten.
upload_ttl_secs = 86400
path_length_max = 4096
# Most entries one listing returns.
list_page_max = 10000
# Longest lifetime of a download link (`sb files link`).
link_ttl_max_secs = 2592000
# Most changes one page of a space's change feed returns (`GET /v1/files/changes`).
changes_page_max = 1000
# A version is deleted once it is both more than version_keep_last behind the newest and older
# than version_keep_days (hourly); the newest version always stays.
version_keep_last = 20
version_keep_days = 30
# Trashed files are deleted for good after this long.
trash_retention_secs = 2592000

[monitoring]
# Largest remote_write or line-protocol body as sent, and a remote_write body decompressed.
write_body_bytes_max = 16777216
write_decompressed_bytes_max = 67108864
# Samples per second accepted across all writers; beyond it writes are answered 429.
samples_per_second_max = 1000000
# Limits per tenant (the account that writes): samples per second, and active series (those
# written in the last head_chunk_max_age_ms). Over either, that tenant gets a clear error.
tenant_samples_per_second_max = 1000000
tenant_series_max = 500000
# Active series at most; samples of new series beyond it are refused with a clear error.
series_max = 1000000
labels_per_series_max = 64
label_bytes_max = 8192
# The time-series write-ahead log starts a new segment file at this size.
wal_segment_bytes = 134217728
# Samples older than retention_ms are dropped; retention_bytes (0: no limit) caps the files.
retention_ms = 1296000000
retention_bytes = 0
# Sealed chunks go to chunk files and a checkpoint replaces the log this often (and at shutdown).
checkpoint_interval_ms = 600000
chunk_file_bytes = 134217728
# A series silent this long has its open chunk sealed and written out.
head_chunk_max_age_ms = 3600000
# A series' chunks on disk are merged into one per complete window of this span (0: never),
# so the memory a series needs grows with the days kept, not with its chunks.
compact_span_ms = 86400000
# PromQL: how far back an instant selector looks for a sample.
lookback_ms = 300000
# Samples one query may load, points per series a range query may return, and its time limit.
query_samples_max = 50000000
query_range_points_max = 11000
query_timeout_ms = 120000
# Saved dashboards (web console) per user, and panels per dashboard.
dashboards_per_user_max = 100
dashboard_panels_max = 24
# Prometheus rule files (alerting and recording rules), reloaded on SIGHUP or `sb alerts reload`.
rule_files = []
# Groups without their own `interval` are evaluated this often.
rule_evaluation_interval_ms = 60000
# Alerts with equal values of these labels go out in one notification; a group still firing is
# notified again after the repeat interval.
alert_group_by = ["alertname"]
alert_repeat_interval_ms = 14400000
# Each notification is POSTed to these URLs in Alertmanager's webhook format (and logged).
alert_webhooks = []
alert_delivery_attempts_max = 10
alert_queue_max = 1000
# Also post each notification in this chat room (its id), as the member whose API token
# this is; the message id is the notification's dedup key, so a retry never posts twice.
alert_chat_room = ""
# alert_chat_token = "sbt_…"
# The server's own metrics are stored (job "switchboard") this often; 0 turns it off.
self_scrape_interval_ms = 15000
# Downsampled tiers: every series' min, max, sum and count per bucket, kept longer than raw
# samples. Query them with the query API's `resolution` parameter (5m, 1h or auto).
rollups = [
  { resolution_ms = 300000, retention_ms = 7776000000 },
  { resolution_ms = 3600000, retention_ms = 63072000000 },
]
# Scrape jobs; each is a table like this (interval_ms, timeout_ms, scheme, metrics_path,
# bearer_token, tls_insecure_skip_verify, sample_limit and body_bytes_max are optional):
#   [[monitoring.scrape]]
#   job = "node"
#   targets = ["127.0.0.1:9100"]
scrape = []

[mqtt]
# Listeners besides `sb serve --mqtt ADDR` (plain TCP, no anonymous clients), e.g.
#   listeners = [{ bind = "0.0.0.0:8883", tls = true },
#                { bind = "127.0.0.1:1884", allow_anonymous = true }]
listeners = []
# Open MQTT connections at most, over all listeners.
connections_max = 100000
# Largest packet a client may send (announced to MQTT 5 clients); larger ones close the
# connection with reason 0x95.
packet_size_bytes_max = 262144
# QoS 1 and 2 messages in flight at once in each direction: from a client to the server (its
# receive maximum) and from the server to a client (v5 clients may ask for fewer).
inflight_max = 64
# Messages waiting for one session, connected or away; beyond it they are dropped and counted.
queue_max = 1000
# Messages waiting for a connected client (beyond those in flight) before publishers to it
# wait for room (backpressure): a short queue for a client that is there keeps latency low.
queue_live_max = 128
# How long a publisher waits for that room. A client that made a publisher wait this long is
# treated like one that is away (queued up to queue_max, then dropped for) until its queue is
# half empty again. 0: no backpressure, messages past queue_max are dropped at once.
queue_full_wait_ms = 500
topic_depth_max = 16
# Topic aliases an MQTT 5 client may use.
topic_alias_max = 32
# Longest session expiry granted; MQTT 3.1.1 persistent sessions (clean session off) get it.
session_expiry_max_secs = 604800
# Longest keep-alive accepted; MQTT 5 clients asking more (or none) are told this one.
keep_alive_max_secs = 600
retained_max = 100000
# Time a new connection has to send CONNECT.
connect_timeout_ms = 10000
# Topic filters a device group may use besides its devices' own devices/<id>/#, e.g.
#   group_topics = { sensors = ["fleet/sensors/#"] }
group_topics = {}
# Topic filters anonymous clients may use, on listeners with allow_anonymous.
anonymous_topics = []
# Samples one telemetry message (JSON fields or line-protocol fields published to
# devices/<id>/telemetry) may carry; larger messages are not stored.
telemetry_fields_max = 256
# Commands (sb device call): the longest a sent command may wait for its answer, the longest
# one may wait for an away device to come back, and the largest payload (JSON bytes).
command_timeout_max_secs = 3600
command_expiry_max_secs = 604800
command_payload_bytes_max = 65536
# A device whose last health report (any JSON on devices/<id>/health) is older than this is
# unhealthy.
health_interval_secs = 300
# Every this many seconds the series device_online and device_healthy (0 or 1, labelled
# device_id, device, group) are written for every device, for alert rules such as
# `device_online == 0` held `for: 10m`. 0 turns it off.
status_interval_secs = 30
# Largest firmware image (sb firmware upload); it is held in memory while checked.
firmware_size_bytes_max = 67108864
# Operator public keys (hex, from `sb firmware keygen`) firmware must be signed with. Empty:
# any valid signature is accepted and its key recorded with the image.
firmware_keys = []
# Topic filters one MQTT session may hold; more are refused in the SUBACK (0x97 / 0x80).
subscriptions_per_client_max = 100
# Commands queued or sent to one device at once (sb device call); more are refused.
commands_open_per_device_max = 100
# Largest twin document, desired or reported (JSON bytes); a change past it is refused.
twin_bytes_max = 65536
# How long a device of a firmware rollout may stay in one state (told, downloading, verified,
# updating, …) before it counts as failed; `sb firmware rollout --step-timeout` overrides it.
rollout_step_timeout_secs = 600
# Most devices one firmware rollout may hold.
rollout_devices_max = 100000
# The built-in alert DeviceOffline fires for a device offline this long (it watches the
# device_online series, so needs status_interval_secs > 0), and notifies like any alert
# (webhooks, chat, silences). 0 turns it off.
offline_alert_after_secs = 600
# How long a device's client certificate (sb device cert) is valid. Certificates come from
# the device CA in <data_dir>/tls/device-ca.pem; a TLS listener accepts them in place of the
# secret. Issuing a new one, or revoking the device, refuses the old one at once.
device_cert_validity_days = 3650
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotated_default_parses_to_default() {
        let parsed: Config = toml::from_str(DEFAULT_CONFIG_TOML).expect("default toml parses");
        assert_eq!(parsed, Config::default());
    }

    /// Every field of the default must be written out (or commented out, for optional ones) in the
    /// annotated file, so a new limit cannot ship undocumented.
    #[test]
    fn annotated_default_mentions_every_field() {
        let value = toml::Value::try_from(Config::default()).expect("serializes");
        let optional = ["cert_file", "key_file", "bearer_token", "alert_chat_token"];
        let toml::Value::Table(sections) = value else {
            panic!("config is a table")
        };
        for (section, fields) in &sections {
            assert!(
                DEFAULT_CONFIG_TOML.contains(&format!("[{section}]")),
                "section [{section}] missing"
            );
            let toml::Value::Table(fields) = fields else {
                panic!("section is a table")
            };
            for key in fields.keys() {
                assert!(
                    DEFAULT_CONFIG_TOML.contains(&format!("\n{key} = ")),
                    "field {section}.{key} missing from DEFAULT_CONFIG_TOML"
                );
            }
        }
        for key in optional {
            assert!(DEFAULT_CONFIG_TOML.contains(&format!("# {key} = ")));
        }
    }

    #[test]
    fn debug_redacts_metrics_token() {
        let mut c = Config::default();
        c.metrics.bearer_token = Some(Secret::new("s3cr3t-token-value".into()));
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cr3t-token-value"));
        assert!(debug.contains("[redacted]"));
    }
}
