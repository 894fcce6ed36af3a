//! The composition root: reads configuration, opens the store, builds the services, and serves
//! HTTPS + WebSocket (HTTP/1.1 and HTTP/2) with every limit from `[limits]` applied.
//!
//! Only this crate and the `sb` binary read files, the environment or the clock. Routes map
//! requests to service calls and service errors to the wire in one place ([`error::status_of`]).

mod alerting;
mod commands;
pub mod config;
pub mod console;
mod device_ca;
mod error;
mod extract;
mod listener;
mod metrics;
pub mod mqtt;
mod rollouts;
mod routes;
mod routes_alerts;
mod routes_chat;
mod routes_dashboards;
mod routes_devices;
mod routes_files;
mod routes_firmware;
mod routes_monitor;
mod scrape;
pub mod tls;
mod twins;
mod ws;

use anyhow::Context;
use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sb_auth::Auth;
use sb_bus::{Bus, BusConfig};
use sb_core::config::{Config, LogFormat, OverflowPolicy};
use sb_core::{ErrorCode, UnixMillis, UserId};
use sb_store::{SqliteStore, Store};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::status_of;

/// The wall clock, read here and passed down.
pub fn now() -> UnixMillis {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    UnixMillis(i64::try_from(ms).unwrap_or(i64::MAX))
}

pub struct AppState {
    pub auth: Arc<Auth>,
    pub chat: Arc<sb_chat::Chat>,
    pub files: Arc<sb_files::Files>,
    pub monitor: Arc<sb_monitor::Monitor>,
    pub devices: Arc<sb_devices::Devices>,
    pub commands: Arc<commands::Commands>,
    pub twins: Arc<twins::Twins>,
    pub rollouts: Arc<rollouts::Rollouts>,
    /// Issues devices their client certificates.
    pub device_ca: Arc<device_ca::DeviceCa>,
    pub(crate) devices_store: Arc<dyn sb_store::DevicesStore>,
    pub mqtt: Arc<mqtt::MqttBroker>,
    pub blobs: sb_blob::LocalBlobStore,
    /// Chat's store, for the attachments blob garbage collection must keep.
    chat_store: Arc<dyn sb_store::ChatStore>,
    /// Attachment transfers in progress (`chat.attachment_transfers_concurrent_max`).
    transfers: tokio::sync::Semaphore,
    pub config: Arc<Config>,
    pub(crate) metrics: Arc<metrics::Metrics>,
    pub shutdown: CancellationToken,
    ws_tasks: TaskTracker,
    ws_per_user: Mutex<HashMap<UserId, usize>>,
    setup_token_path: PathBuf,
    ready: AtomicBool,
    openapi: OnceLock<utoipa::openapi::OpenApi>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Switchboard API", version = "1", description = "Native REST API of the Switchboard server. Errors are {\"error\":{\"code\",\"message\"}} with stable codes."),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Builds the HTTP application and its OpenAPI document from the same route list, so the
/// document cannot miss a route.
pub fn app(state: Arc<AppState>) -> Router {
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(routes::register))
        .routes(routes!(routes::login))
        .routes(routes!(routes::logout))
        .routes(routes!(routes::me, routes::update_profile))
        .routes(routes!(routes::change_password))
        .routes(routes!(routes::list_sessions))
        .routes(routes!(routes::revoke_session))
        .routes(routes!(routes::list_tokens, routes::create_token))
        .routes(routes!(routes::revoke_token))
        .routes(routes!(routes::admin_list_users))
        .routes(routes!(routes::admin_update_user))
        .routes(routes!(routes::admin_create_invite))
        .routes(routes!(routes::admin_audit))
        .routes(routes!(routes::admin_audit_verify))
        .routes(routes!(routes::admin_scrub))
        .routes(routes!(routes::admin_gc))
        .routes(routes!(routes_chat::my_rooms, routes_chat::create_room))
        .routes(routes!(routes_chat::public_rooms))
        .routes(routes!(routes_chat::direct_room))
        .routes(routes!(routes_chat::room))
        .routes(routes!(routes_chat::join))
        .routes(routes!(routes_chat::leave))
        .routes(routes!(routes_chat::members, routes_chat::add_member))
        .routes(routes!(routes_chat::kick, routes_chat::set_member_role))
        .routes(routes!(routes_chat::ban))
        .routes(routes!(routes_chat::history, routes_chat::send))
        .routes(routes!(routes_chat::search))
        .routes(routes!(routes_chat::mark_read, routes_chat::read_markers))
        .routes(routes!(routes_chat::upload))
        .routes(routes!(routes_chat::publish_key_packages))
        .routes(routes!(routes_chat::claim_key_packages))
        .routes(routes!(
            routes_chat::send_handshake,
            routes_chat::handshakes
        ))
        .routes(routes!(routes_chat::take_welcomes))
        .routes(routes!(routes_chat::download))
        .routes(routes!(routes_files::start_upload))
        .routes(routes!(routes_files::put_chunk))
        .routes(routes!(routes_files::commit))
        .routes(routes!(routes_files::list, routes_files::remove))
        .routes(routes!(routes_files::restore))
        .routes(routes!(routes_files::move_files))
        .routes(routes!(routes_files::spaces, routes_files::create_space))
        .routes(routes!(routes_files::share_space))
        .routes(routes!(routes_files::create_link))
        .routes(routes!(routes_files::changes))
        .routes(routes!(routes_files::link_download))
        .routes(routes!(routes_files::versions))
        .routes(routes!(routes_files::content, routes_files::put_content))
        .routes(routes!(routes_files::chunks))
        .routes(routes!(routes_devices::register, routes_devices::list))
        .routes(routes!(routes_devices::show, routes_devices::revoke))
        .routes(routes!(routes_devices::rotate))
        .routes(routes!(routes_devices::certificate))
        .routes(routes!(routes_devices::call))
        .routes(routes!(routes_devices::command))
        .routes(routes!(routes_devices::twin, routes_devices::set_desired))
        .routes(routes!(routes_firmware::upload, routes_firmware::list))
        .routes(routes!(routes_firmware::image))
        .routes(routes!(
            routes_firmware::create_rollout,
            routes_firmware::rollouts
        ))
        .routes(routes!(routes_firmware::rollout))
        .routes(routes!(routes_firmware::cancel_rollout))
        .routes(routes!(routes_firmware::resume_rollout))
        .routes(routes!(routes_alerts::alerts))
        .routes(routes!(routes_alerts::reload))
        .routes(routes!(
            routes_alerts::silences,
            routes_alerts::create_silence
        ))
        .routes(routes!(routes_alerts::expire_silence))
        .routes(routes!(routes_dashboards::list))
        .routes(routes!(routes_dashboards::put, routes_dashboards::delete))
        .routes(routes!(console::login))
        .routes(routes!(console::session))
        .routes(routes!(console::logout))
        .routes(routes!(ws::ws_handler))
        .routes(routes!(routes::healthz))
        .routes(routes!(routes::readyz))
        .routes(routes!(routes::metrics))
        .routes(routes!(routes::openapi))
        .split_for_parts();
    let _ = state.openapi.set(doc);
    let router = router
        .merge(routes_monitor::router(state.clone()))
        .route("/mqtt", axum::routing::get(mqtt::websocket))
        .route("/", axum::routing::get(console::index))
        .route("/console/{*path}", axum::routing::get(console::file));
    let limits = &state.config.limits;
    let timeout = Duration::from_millis(limits.request_timeout_ms);
    router
        .fallback(|| async { error::not_found() })
        .method_not_allowed_fallback(|| async {
            error::ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this route",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(
            limits.body_size_bytes_max,
        ))
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| async move {
                if is_upload(&req) {
                    return next.run(req.map(|body| stall_limited(body, timeout))).await;
                }
                match tokio::time::timeout(timeout, next.run(req)).await {
                    Ok(resp) => resp,
                    Err(_) => error::ApiError::new(ErrorCode::Timeout, "request timed out")
                        .into_response(),
                }
            },
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            track_request,
        ))
        .layer(axum::middleware::from_fn(console::security_headers))
        .with_state(state)
}

/// Routes whose request body is a whole upload (a file, an attachment, a firmware image): they
/// have no total time limit, which a large body on a slow link would exceed, but their body
/// must keep arriving — a gap longer than `limits.request_timeout_ms` ends the request.
const UPLOAD_ROUTES: &[(Method, &str)] = &[
    (Method::PUT, "/v1/files/content"),
    (Method::POST, "/v1/rooms/{room}/attachments"),
    (Method::POST, "/v1/firmware"),
];

fn is_upload(req: &Request) -> bool {
    req.extensions().get::<MatchedPath>().is_some_and(|p| {
        UPLOAD_ROUTES
            .iter()
            .any(|(m, route)| m == req.method() && *route == p.as_str())
    })
}

/// `body`, failing once no data has arrived for `gap`.
fn stall_limited(body: axum::body::Body, gap: Duration) -> axum::body::Body {
    use futures_util::StreamExt;
    let frames = futures_util::stream::unfold(Some(body.into_data_stream()), move |s| async move {
        let mut s = s?;
        match tokio::time::timeout(gap, s.next()).await {
            Ok(Some(frame)) => Some((frame, Some(s))),
            Ok(None) => None,
            Err(_) => {
                let stalled = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no data for {} ms (limits.request_timeout_ms)",
                        gap.as_millis()
                    ),
                );
                Some((Err(axum::Error::new(stalled)), None))
            }
        }
    });
    axum::body::Body::from_stream(frames)
}

async fn track_request(
    axum::extract::State(st): axum::extract::State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    st.metrics
        .requests
        .get_or_create(&metrics::RequestLabels {
            method: method.clone(),
            route: route.clone(),
            status,
        })
        .inc();
    st.metrics
        .request_duration
        .get_or_create(&metrics::RouteLabels { method, route })
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// Sets up `tracing` on stderr: readable text, or one JSON object per line.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn write_setup_token(path: &std::path::Path, token: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(f, "{token}")?;
    f.sync_all()?;
    Ok(())
}

/// Runs the server until SIGINT/SIGTERM, then shuts down gracefully.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let signal_token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        signal_token.cancel();
    });
    serve(config, shutdown).await
}

/// How often ended sessions and expired uploads are pruned.
const SESSION_PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

async fn prune_sessions_periodically(st: Arc<AppState>) {
    let mut tick = tokio::time::interval(SESSION_PRUNE_INTERVAL);
    loop {
        tokio::select! {
            _ = st.shutdown.cancelled() => return,
            _ = tick.tick() => {
                match st.auth.prune_ended_sessions(now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(sessions = n, "pruned ended sessions"),
                    Err(e) => tracing::warn!(error = %e, "pruning sessions failed"),
                }
                match st.files.prune_uploads(now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(uploads = n, "forgot expired uploads"),
                    Err(e) => tracing::warn!(error = %e, "pruning uploads failed"),
                }
                match collect_garbage(&st).await {
                    Ok(r) if r.versions_deleted + r.files_purged + r.blobs_deleted == 0 => {}
                    Ok(r) => tracing::info!(versions = r.versions_deleted, files = r.files_purged, blobs = r.blobs_deleted, "retention and garbage collection"),
                    Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
                }
            }
        }
    }
}

/// Applies file retention, then deletes the blobs nothing refers to (file versions, uploads
/// in progress, chat attachments, firmware images) once older than `blobs.gc_grace_secs`.
pub(crate) async fn collect_garbage(st: &AppState) -> anyhow::Result<sb_proto::GcReport> {
    let (versions_deleted, files_purged) = st.files.apply_retention(now()).await?;
    let mut keep: std::collections::HashSet<sb_blob::BlobId> =
        st.files.referenced_chunks().await?.into_iter().collect();
    for hex in st.chat_store.attachment_blobs().await? {
        if let Ok(id) = hex.parse() {
            keep.insert(id);
        }
    }
    for f in st.devices_store.firmwares().await? {
        keep.insert(sb_blob::BlobId::from_bytes(f.blob));
    }
    let blobs = st.blobs.clone();
    let grace = Duration::from_secs(st.config.blobs.gc_grace_secs);
    let (kept, deleted) = tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, u64)> {
        let cutoff = std::time::SystemTime::now()
            .checked_sub(grace)
            .unwrap_or(std::time::UNIX_EPOCH);
        let (mut kept, mut deleted) = (0, 0);
        for (id, modified) in blobs.list()? {
            if keep.contains(&id) || modified >= cutoff {
                kept += 1;
            } else {
                blobs.remove(id)?;
                deleted += 1;
            }
        }
        Ok((kept, deleted))
    })
    .await??;
    Ok(sb_proto::GcReport {
        versions_deleted,
        files_purged,
        blobs_kept: kept,
        blobs_deleted: deleted,
    })
}

async fn checkpoint(st: &AppState) {
    match st.monitor.checkpoint(now().0).await {
        Ok(s) => tracing::info!(
            chunks_written = s.chunks_written,
            bytes_written = s.chunk_bytes_written,
            series_dropped = s.series_dropped,
            chunks_dropped = s.chunks_dropped,
            disk_bytes = s.disk_bytes,
            "time-series checkpoint"
        ),
        Err(e) => {
            tracing::error!(error = %e, "time-series checkpoint failed; the log keeps everything")
        }
    }
}

async fn checkpoint_periodically(st: Arc<AppState>) {
    let period = Duration::from_millis(st.config.monitoring.checkpoint_interval_ms.max(1000));
    loop {
        tokio::select! {
            _ = st.shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => checkpoint(&st).await,
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let data_dir = config.server.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let identity = tls::load_or_generate(&config.tls, &data_dir)?;
    let device_ca = Arc::new(
        device_ca::DeviceCa::load_or_generate(&data_dir.join("tls"), now())
            .context("the device CA")?,
    );
    let metrics = Arc::new(metrics::Metrics::new());
    let m2 = metrics.clone();
    let store = SqliteStore::open(&data_dir.join("sb.db"), &config.store)
        .context("opening the store")?
        .with_observer(Arc::new(move |op, took| m2.observe_store(op, took)));
    let sqlite = Arc::new(store);
    let store: Arc<dyn Store> = sqlite.clone();
    let bus_config = BusConfig {
        queue_max: config.bus.subscriber_queue_max,
        overflow: match config.bus.overflow {
            OverflowPolicy::Disconnect => sb_bus::OverflowPolicy::Disconnect,
            OverflowPolicy::DropNewest => sb_bus::OverflowPolicy::DropNewest,
        },
    };
    let auth = Arc::new(Auth::new(
        store.clone(),
        Bus::new(bus_config),
        config.auth.clone(),
        &config.rate_limits,
    )?);
    let blob_dirs = if config.blobs.dirs.is_empty() {
        vec![data_dir.join("blobs")]
    } else {
        config.blobs.dirs.clone()
    };
    let blobs = sb_blob::LocalBlobStore::open(sb_blob::BlobConfig {
        dirs: blob_dirs,
        replicas: config.blobs.replicas,
        zstd_level: config.blobs.zstd_level,
        cache_bytes: config.blobs.cache_bytes,
    })
    .context("opening the blob store (blobs.dirs, blobs.replicas)")?;
    let files = Arc::new(sb_files::Files::new(
        sqlite.clone(),
        blobs.clone(),
        auth.clone(),
        Bus::new(bus_config),
        config.files.clone(),
    ));
    let devices = Arc::new(sb_devices::Devices::new(
        sqlite.clone(),
        auth.clone(),
        config.mqtt.clone(),
    ));
    let mqtt_store: Arc<dyn sb_store::MqttStore> = sqlite.clone();
    let sqlite_devices: Arc<dyn sb_store::DevicesStore> = sqlite.clone();
    let chat_store: Arc<dyn sb_store::ChatStore> = sqlite.clone();
    let chat = Arc::new(sb_chat::Chat::new(
        sqlite,
        Arc::new(blobs.clone()),
        auth.clone(),
        Bus::new(bus_config),
        config.chat.clone(),
    ));
    let mut monitoring = config.monitoring.clone();
    monitoring.builtin_rules = mqtt::builtin_rules(&config.mqtt);
    let (monitor, recovery) = sb_monitor::Monitor::open(
        &data_dir.join("tsdb"),
        monitoring,
        config.store.durability == sb_core::config::Durability::Full,
        auth.clone(),
    )
    .context("opening the time-series store")?;
    tracing::info!(
        series = recovery.series,
        samples = recovery.samples,
        "time-series store replayed"
    );
    if recovery.orphan_samples > 0 {
        tracing::warn!(
            samples = recovery.orphan_samples,
            "time-series log held samples of undeclared series; skipped"
        );
    }
    let monitor = Arc::new(monitor);
    let commands =
        commands::Commands::new(sqlite_devices.clone(), devices.clone(), config.mqtt.clone());
    let twins = twins::Twins::new(
        sqlite_devices.clone(),
        devices.clone(),
        config.mqtt.twin_bytes_max,
    );
    let rollouts = rollouts::Rollouts::new(
        sqlite_devices.clone(),
        twins.clone(),
        auth.clone(),
        config.mqtt.clone(),
    );
    let revocations = Arc::new(mqtt::Revocations::default());
    revocations.spawn(&auth)?;
    let mqtt_broker = mqtt::broker(
        mqtt::MqttAccess {
            devices: devices.clone(),
            commands: commands.clone(),
            twins: twins.clone(),
            rollouts: rollouts.clone(),
            auth: auth.clone(),
            monitor: monitor.clone(),
            revocations: revocations.clone(),
            cfg: config.mqtt.clone(),
        },
        mqtt_store,
        &config.mqtt,
    );
    let (sessions, messages) = mqtt_broker
        .restore()
        .await
        .map_err(|e| anyhow::anyhow!("restoring MQTT sessions: {e}"))?;
    tracing::info!(sessions, messages, "MQTT sessions restored");
    commands.set_broker(&mqtt_broker);
    twins.set_broker(&mqtt_broker);
    let open_commands = commands
        .restore()
        .await
        .map_err(|e| anyhow::anyhow!("restoring device commands: {e}"))?;
    tracing::info!(open_commands, "device commands restored");
    let open_rollouts = rollouts
        .restore()
        .await
        .map_err(|e| anyhow::anyhow!("restoring firmware rollouts: {e}"))?;
    tracing::info!(open_rollouts, "firmware rollouts restored");
    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("binding {}", config.server.listen))?;
    let local = listener.local_addr()?;
    let mqtt_listeners = mqtt::bind(&config.mqtt).await?;
    let setup_token_path = data_dir.join("setup-token");
    let setup = auth.issue_setup_token().await?;
    match &setup {
        Some(token) => write_setup_token(&setup_token_path, token.expose())?,
        None => {
            let _ = std::fs::remove_file(&setup_token_path);
        }
    }
    let config = Arc::new(config);
    let state = Arc::new(AppState {
        auth,
        chat,
        files,
        monitor,
        devices,
        commands,
        twins,
        rollouts,
        device_ca,
        devices_store: sqlite_devices,
        mqtt: mqtt_broker,
        blobs,
        chat_store,
        transfers: tokio::sync::Semaphore::new(
            config.chat.attachment_transfers_concurrent_max.max(1),
        ),
        config: config.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        ws_tasks: TaskTracker::new(),
        ws_per_user: Mutex::new(HashMap::new()),
        setup_token_path: setup_token_path.clone(),
        ready: AtomicBool::new(true),
        openapi: OnceLock::new(),
    });
    let router = app(state.clone());
    tokio::spawn(prune_sessions_periodically(state.clone()));
    alerting::spawn(state.clone())?;
    tokio::spawn(checkpoint_periodically(state.clone()));
    scrape::spawn(state.clone())?;
    alerting::reload_on_sighup(state.clone());
    mqtt::spawn_status_metrics(state.clone());
    let mqtt_open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut mqtt_banner = Vec::new();
    for (listener, spec) in mqtt_listeners {
        mqtt_banner.push(mqtt::describe(listener.local_addr()?, &spec));
        let tls = if spec.tls {
            let c = identity.mqtt_config(&state.device_ca.cert_der)?;
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(c)))
        } else {
            None
        };
        mqtt::spawn(state.clone(), listener, spec, tls, mqtt_open.clone());
    }

    // The banner goes to stdout, for the person who started the server; logs go to stderr and
    // never carry the setup token.
    println!("Switchboard listening on https://{local}");
    for l in &mqtt_banner {
        println!("MQTT listening on {l}");
    }
    println!(
        "TLS certificate SHA-256 fingerprint: {}",
        identity.fingerprint
    );
    if identity.generated {
        println!("  (self-signed, {})", identity.cert_path.display());
    }
    if let Some(token) = &setup {
        println!(
            "Setup token (one use, creates the admin account): {}",
            token.expose()
        );
        println!("  also written to {}", setup_token_path.display());
        println!(
            "  sb register https://{local} --username admin --setup-token $(cat {})",
            setup_token_path.display()
        );
    }
    tracing::info!(%local, data_dir = %data_dir.display(), "serving");

    listener::serve(listener, identity.config.clone(), router, state.clone()).await;

    // Accepting has stopped and HTTP connections have drained (or hit the grace period);
    // WebSockets got a close frame from their own tasks.
    state.ws_tasks.close();
    let grace = Duration::from_millis(config.limits.shutdown_grace_ms);
    if tokio::time::timeout(grace, state.ws_tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("websockets still open after the grace period");
    }
    store.flush().await.context("flushing the store")?;
    checkpoint(&state).await;
    tracing::info!("stopped");
    Ok(())
}
