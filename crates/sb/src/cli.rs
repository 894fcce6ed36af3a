//! Command-line definitions.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "sb",
    version,
    about = "Switchboard: one secure real-time server for chat, devices, files and monitoring"
)]
pub struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Create an account (and log in to it).
    Register(RegisterArgs),
    /// Log in to a server and remember the session.
    Login(LoginArgs),
    /// End the current session.
    Logout,
    /// Show who you are logged in as.
    Whoami,
    /// Change your password (signs out your other sessions).
    Passwd(PasswdArgs),
    /// List your sessions, or revoke one.
    Sessions(SessionsArgs),
    /// Show or change your display name and status.
    Profile(ProfileArgs),
    /// API tokens for scripts and integrations.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Administration (admins only).
    #[command(subcommand)]
    Admin(AdminCmd),
    /// Devices: register them (an id and a secret for MQTT), list, rotate, revoke.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Firmware: the operator's signing key, and signed images.
    #[command(subcommand)]
    Firmware(FirmwareCmd),
    /// Pinned server certificates.
    #[command(subcommand)]
    Trust(TrustCmd),
    /// Chat: rooms (`#name` or id) and direct messages (`@user`).
    #[command(subcommand)]
    Chat(ChatCmd),
    /// Files: put, get, ls, mv, rm, versions, restore, spaces and sharing.
    Files(FilesArgs),
    /// Run a PromQL query: a table now, or a sparkline per series over a range.
    Query(QueryArgs),
    /// Alerts, silences and rule reloads.
    #[command(subcommand)]
    Alerts(AlertsCmd),
    /// Send this host's CPU, memory, disk, filesystem, network and load figures to a server.
    Agent(AgentArgs),
}

#[derive(Args)]
pub struct AgentArgs {
    /// Server URL [default: the one you are logged in to].
    #[arg(long)]
    pub server: Option<String>,
    /// API token [default: your login's]; also read from SB_TOKEN.
    #[arg(long, env = "SB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// How often to send, e.g. 15s.
    #[arg(long, default_value = "15s")]
    pub interval: String,
    /// The `job` label.
    #[arg(long, default_value = "agent")]
    pub job: String,
    /// The `instance` label [default: this host's name].
    #[arg(long)]
    pub instance: Option<String>,
    /// Send once and exit (for cron and tests).
    #[arg(long)]
    pub once: bool,
    #[command(flatten)]
    pub trust: TrustArgs,
}

#[derive(Args)]
pub struct QueryArgs {
    /// A PromQL expression, e.g. 'rate(http_requests_total[5m])'.
    pub expr: String,
    /// Evaluate at this time (Unix seconds or RFC 3339) [default: now].
    #[arg(long)]
    pub time: Option<String>,
    /// Evaluate over this much time up to --time (e.g. 1h, 30m) and draw a sparkline.
    #[arg(long)]
    pub range: Option<String>,
    /// Step of a range query (e.g. 30s) [default: range / 60].
    #[arg(long, requires = "range")]
    pub step: Option<String>,
    /// Read raw samples (raw), a rollup tier of per-bucket aggregates (5m, 1h), or whichever
    /// still holds the data (auto). On a tier, select an aggregate with
    /// {__rollup__="min|max|sum|count"}; without one, each bucket's average.
    #[arg(long)]
    pub resolution: Option<String>,
}

#[derive(Args)]
pub struct FilesArgs {
    /// A shared space (its name or id from `sb files spaces`) [default: your own].
    #[arg(long, global = true)]
    pub space: Option<String>,
    #[command(subcommand)]
    pub cmd: FilesCmd,
}

#[derive(Subcommand)]
pub enum FilesCmd {
    /// Upload a local file to a path in your space, e.g. `sb files put report.pdf
    /// /docs/report.pdf`. Only the chunks the server lacks are sent; run it again to resume.
    Put {
        local: std::path::PathBuf,
        remote: String,
    },
    /// Download a file, e.g. `sb files get /docs/report.pdf ./r.pdf` (default: its name, here).
    /// An interrupted download resumes where it stopped.
    Get {
        remote: String,
        local: Option<std::path::PathBuf>,
        /// A version number from `sb files versions` [default: the newest].
        #[arg(long)]
        version: Option<i64>,
    },
    /// List the files under a folder [default: all].
    Ls { folder: Option<String> },
    /// Rename a file, or a folder with everything in it.
    Mv { from: String, to: String },
    /// Move a file to the trash (`sb files restore` brings it back).
    Rm { path: String },
    /// Bring a file back from the trash, or with --version make an old version the newest.
    Restore {
        path: String,
        #[arg(long)]
        version: Option<i64>,
    },
    /// A file's versions, newest first.
    Versions { path: String },
    /// A download link anyone holding it can use until it expires (no account needed).
    Link {
        path: String,
        /// How long it works, e.g. 1h or 7d.
        #[arg(long, default_value = "7d")]
        expires: String,
        /// Link this version for good [default: whatever is newest when it is used].
        #[arg(long)]
        version: Option<i64>,
    },
    /// Keep a local folder and a remote folder in sync both ways, e.g. `sb files sync
    /// ~/Documents /docs`. Only changed chunks move. When both sides edited a file, the
    /// local edit is kept beside it as `NAME.sync-conflict-<time>-<device>.EXT`; an edit
    /// beats a delete. The folder's index lives in LOCAL/.sb-sync.
    Sync {
        local: std::path::PathBuf,
        remote: String,
        /// Keep running: sync again whenever a file here or on the server changes.
        #[arg(long)]
        watch: bool,
        /// In watch mode, sync at least this often even without a change announced.
        #[arg(long, default_value = "60s")]
        poll: String,
        /// This machine's name in conflict copies and versions [default: the hostname].
        #[arg(long)]
        device: Option<String>,
    },
    /// Your own space and those shared with you.
    Spaces,
    /// Make a space to share.
    SpaceCreate { name: String },
    /// Share a space you own with a user (read or write), or stop (none).
    Share {
        space: String,
        user: String,
        #[arg(long, default_value = "read", value_parser = ["read", "write", "none"])]
        access: String,
    },
}

#[derive(Subcommand)]
pub enum FirmwareCmd {
    /// Make the operator's Ed25519 signing key (kept on this machine, mode 0600); prints the
    /// public key devices verify with (and `mqtt.firmware_keys` may list).
    Keygen {
        /// Where to keep it [default: the config directory's firmware-signing.key].
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Sign an image with the operator's key and upload it, e.g. `sb firmware upload fw.bin
    /// --version 1.4.2`.
    Upload {
        file: std::path::PathBuf,
        #[arg(long)]
        version: String,
        /// The signing key [default: the one `sb firmware keygen` made].
        #[arg(long)]
        key: Option<std::path::PathBuf>,
    },
    /// Firmware versions on the server, newest first.
    List,
    /// Send a version to a group's devices batch by batch, e.g. `sb firmware rollout 1.4.2
    /// --group sensors --batch 10% --max-failures 5%`; it halts itself once more devices fail
    /// than allowed. Devices are told through their twin's desired `firmware` and report on
    /// `devices/<id>/firmware/status`.
    Rollout {
        version: String,
        #[arg(long)]
        group: String,
        /// Devices per batch: a count (5) or a share of the group (10%, rounded up).
        #[arg(long, default_value = "10%")]
        batch: String,
        /// Failures allowed: a count (2) or a share of the group (5%, rounded down); one more
        /// halts the rollout.
        #[arg(long, default_value = "0")]
        max_failures: String,
        /// A device in one state (told, downloading, …) longer than this has failed
        /// [default: the server's mqtt.rollout_step_timeout_secs].
        #[arg(long)]
        step_timeout: Option<String>,
        /// Follow it until it completes or halts (exit status 1 if it halts).
        #[arg(long)]
        wait: bool,
    },
    /// Rollouts, newest first; with an id, that one device by device.
    Rollouts { id: Option<String> },
    /// Stop a rollout: devices not yet told never are.
    Cancel { id: String },
    /// Let a halted rollout go on, e.g. `sb firmware resume ID --max-failures 10%`.
    Resume {
        id: String,
        /// The new failure budget: a count or a share of the group [default: as many more
        /// failures as it first allowed].
        #[arg(long)]
        max_failures: Option<String>,
        /// Follow it until it completes or halts again (exit status 1 if it halts).
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand)]
pub enum DeviceCmd {
    /// Register a device; prints its id (MQTT user name) and secret (MQTT password) once.
    Register {
        name: String,
        #[arg(long, default_value = "")]
        group: String,
        /// A tag, key=value; repeatable.
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Your devices (every device, for admins).
    List,
    /// One device, by id or name.
    Show { device: String },
    /// A new secret for a device (the old one stops working at once).
    Rotate { device: String },
    /// Revoke a device for good: it is disconnected now and refused from now on.
    Revoke { device: String },
    /// Issue a device a client certificate from the server's device CA, for MQTT over TLS
    /// without a password (mTLS); writes NAME.crt, NAME.key (0600) and device-ca.crt into
    /// --out. The device's earlier certificate stops working.
    Cert {
        device: String,
        /// Where to write the files.
        #[arg(long, default_value = ".")]
        out: std::path::PathBuf,
    },
    /// Run simulated devices against the server (telemetry, health, command answers, twin
    /// sync), registering them as PREFIX-0001…; for demos and load. Ctrl-C stops.
    Simulate {
        #[arg(long, default_value_t = 10)]
        count: usize,
        #[arg(long, default_value = "sim")]
        prefix: String,
        #[arg(long, default_value = "simulated")]
        group: String,
        /// How often each publishes telemetry.
        #[arg(long, default_value = "5s")]
        interval: String,
        /// The server's MQTT listener [default: its host, port 1883].
        #[arg(long)]
        mqtt: Option<String>,
        /// The operator's public key (hex) the devices check firmware signatures with
        /// [default: the key the server announces with each image].
        #[arg(long)]
        firmware_key: Option<String>,
        /// Damage every downloaded image by one bit, to watch the devices' signature check
        /// refuse it and a rollout halt.
        #[arg(long)]
        corrupt_firmware: bool,
    },
    /// A device's twin: desired and reported state, and what the device has yet to apply.
    Twin { device: String },
    /// Set desired state (remote configuration), e.g. `sb device configure thermo-1
    /// interval=30 mode=eco`; values are JSON where they parse as JSON, else strings, and
    /// `key=null` removes a key.
    Configure {
        device: String,
        #[arg(required = true)]
        settings: Vec<String>,
        /// Only if the desired version is still this one (see `sb device twin`).
        #[arg(long)]
        version: Option<i64>,
    },
    /// Call a method on a device and wait for its answer, e.g.
    /// `sb device call thermo-1 reboot --payload '{"delay":5}' --timeout 30s`.
    Call {
        device: String,
        method: String,
        /// JSON sent to the device.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// How long the device has to answer once it got the command.
        #[arg(long, default_value = "30s")]
        timeout: String,
        /// How long to wait for a device that is away [default: the timeout].
        #[arg(long)]
        expires: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum AlertsCmd {
    /// Pending, firing and recently resolved alerts.
    List,
    /// Silence alerts matching every MATCHER (name=value, name!=value, name=~re, name!~re).
    Silence {
        #[arg(required = true)]
        matchers: Vec<String>,
        /// How long, e.g. 2h or 30m.
        #[arg(long = "for", default_value = "1h")]
        duration: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// List silences.
    Silences,
    /// End a silence now.
    Expire { id: String },
    /// Re-read the server's rule files (admins).
    Reload,
}

#[derive(Subcommand)]
pub enum ChatCmd {
    /// List your rooms (or the public ones).
    Rooms {
        #[arg(long)]
        public: bool,
    },
    /// Create a room (private unless --public).
    Create {
        name: String,
        #[arg(long, conflicts_with = "private")]
        public: bool,
        /// The default; accepted for clarity.
        #[arg(long)]
        private: bool,
        #[arg(long, default_value = "")]
        topic: String,
        /// End-to-end encrypted with MLS: the server stores only ciphertext, and members join
        /// by invitation with the keys of their devices.
        #[arg(long, conflicts_with = "public")]
        encrypted: bool,
    },
    /// Join a public room.
    Join { room: String },
    /// Leave a room.
    Leave { room: String },
    /// Add a user to a room (moderators and owners); in an encrypted room, also their devices.
    Invite { room: String, user: String },
    /// Remove a user from a room.
    Kick { room: String, user: String },
    /// Remove a user and bar them from rejoining.
    Ban { room: String, user: String },
    /// Open (or create) the direct-message room with a user.
    Dm { user: String },
    /// Send a message to `#room`, a room id, or `@user`, optionally with files.
    Send {
        room: String,
        text: String,
        /// Attach a file (repeat for several); the upload shows progress.
        #[arg(long = "file")]
        files: Vec<std::path::PathBuf>,
    },
    /// Download an attachment.
    Get {
        room: String,
        attachment: String,
        /// Where to write it [default: stdout].
        #[arg(short, long)]
        output: Option<std::path::PathBuf>,
    },
    /// Show a room's history, oldest first.
    History {
        room: String,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Messages before this sequence number.
        #[arg(long, conflicts_with = "after")]
        before: Option<i64>,
        /// Messages after this sequence number.
        #[arg(long)]
        after: Option<i64>,
    },
    /// Search messages in your rooms (all words must appear).
    Search {
        query: String,
        /// Only this room.
        #[arg(long)]
        room: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Open a room in an interactive terminal view: live messages, presence and typing.
    Open { room: String },
    /// Print messages as they arrive (all your rooms, or the ones named) until interrupted.
    Tail { rooms: Vec<String> },
}

#[derive(Args)]
pub struct ServeArgs {
    /// TOML configuration file (see `sb config default`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address for HTTPS and WebSocket [default: 127.0.0.1:8443].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Data directory [default: ./sb-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Also accept MQTT (3.1.1 and 5.0) over plain TCP here, e.g. 0.0.0.0:1883; devices log in
    /// with their id and secret (`sb device register`). Repeatable.
    #[arg(long)]
    pub mqtt: Vec<SocketAddr>,
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormatArg>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Print the complete annotated default configuration.
    Default,
}

/// How to trust the server on first contact.
#[derive(Args, Clone)]
pub struct TrustArgs {
    /// Accept the server's certificate fingerprint without asking (for scripts).
    #[arg(long)]
    pub yes: bool,
    /// Trust certificates signed by the CA in this PEM file instead of pinning.
    #[arg(long)]
    pub ca: Option<PathBuf>,
}

#[derive(Args)]
pub struct RegisterArgs {
    /// Server URL, e.g. https://127.0.0.1:8443
    pub url: String,
    #[arg(long)]
    pub username: String,
    /// The setup token printed at the server's first start (creates the admin).
    #[arg(long, conflicts_with = "invite")]
    pub setup_token: Option<String>,
    /// An invite token from `sb admin invite`.
    #[arg(long)]
    pub invite: Option<String>,
    /// Read the password from the first line of stdin.
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub trust: TrustArgs,
}

#[derive(Args)]
pub struct LoginArgs {
    /// Server URL, e.g. https://127.0.0.1:8443
    pub url: String,
    #[arg(long)]
    pub username: String,
    /// Read the password from the first line of stdin.
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub trust: TrustArgs,
}

#[derive(Args)]
pub struct PasswdArgs {
    /// Read the current password, then the new one, from the first two lines of stdin.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Args)]
pub struct SessionsArgs {
    #[command(subcommand)]
    pub command: Option<SessionsCmd>,
}

#[derive(Subcommand)]
pub enum SessionsCmd {
    /// Revoke a session by id (see `sb sessions`).
    Revoke { id: String },
}

#[derive(Args)]
pub struct ProfileArgs {
    #[arg(long)]
    pub display_name: Option<String>,
    #[arg(long)]
    pub status: Option<String>,
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a token; it is shown once.
    Create {
        name: String,
        /// Scopes: read, write, admin (repeat or comma-separate) [default: read,write].
        #[arg(long, value_delimiter = ',')]
        scope: Vec<String>,
        /// Lifetime such as 30d, 12h, 90m [default: until revoked].
        #[arg(long)]
        expires: Option<String>,
    },
    /// List your tokens.
    List,
    /// Revoke a token by id.
    Revoke { id: String },
}

#[derive(Subcommand)]
pub enum AdminCmd {
    /// List users, or change one.
    Users {
        #[command(subcommand)]
        command: Option<AdminUsersCmd>,
    },
    /// Create a single-use registration invite.
    Invite {
        /// Lifetime such as 7d, 24h [default: server's auth.invite_ttl_secs].
        #[arg(long)]
        expires: Option<String>,
    },
    /// Query the audit log, or verify its hash chain.
    Audit(AuditArgs),
    /// Delete file versions and trash past their retention, then every blob nothing refers to
    /// (older than blobs.gc_grace_secs); also runs hourly.
    Gc,
    /// Re-hash every stored copy of every file chunk and attachment; rewrite damaged or
    /// missing copies from a good replica (blobs.replicas), and name what is lost.
    Scrub,
}

#[derive(Subcommand)]
pub enum AdminUsersCmd {
    Disable { user: String },
    Enable { user: String },
    SetRole { user: String, role: String },
}

#[derive(Args)]
pub struct AuditArgs {
    /// Check the whole hash chain and name the first broken record.
    #[arg(long)]
    pub verify: bool,
    #[arg(long)]
    pub actor: Option<String>,
    /// Action prefix, e.g. login. or permission.denied
    #[arg(long)]
    pub action: Option<String>,
    /// Only events newer than this long ago, e.g. 1h, 7d.
    #[arg(long)]
    pub since: Option<String>,
    /// Only events with a sequence number above this.
    #[arg(long)]
    pub after: Option<i64>,
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

#[derive(Subcommand)]
pub enum TrustCmd {
    /// List pinned servers.
    List,
    /// Forget a server's pinned certificate (HOST:PORT or URL).
    Forget { server: String },
}
