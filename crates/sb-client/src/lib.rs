//! The Rust SDK for a Switchboard server: HTTPS + WebSocket with the server's certificate either
//! pinned by fingerprint (trust on first use, like SSH) or verified against a CA file.
//!
//! [`Client`] wraps the `/v1` REST API; [`Client::ws_connect`] opens `/v1/ws`. [`state`] keeps
//! what the CLI remembers between runs (pinned fingerprints, the current login) in the user's
//! config directory, files at mode 0600. [`e2ee`] is one device's MLS state for encrypted rooms.

pub mod devices;
pub mod e2ee;
pub mod files;
pub mod state;
pub mod sync;
mod tls;

pub use tls::probe_fingerprint;

use reqwest::{Method, StatusCode, Url};
use rustls::ClientConfig;
use sb_core::Secret;
use sb_proto::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;

pub type WsStream = WebSocketStream<TlsStream<TcpStream>>;

/// How the client decides to trust the server's certificate.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Accept exactly the certificate with this SHA-256 fingerprint.
    Fingerprint(String),
    /// Verify the chain against the CA certificates in this PEM file.
    CaFile(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the certificate of {server} has changed: it was {expected}, it is now {found}. \
         This can mean someone is intercepting the connection, or that the server's certificate \
         was replaced. If you know it was replaced, check the new fingerprint with the server's \
         operator, then run `sb trust forget {server}` and connect again"
    )]
    PinMismatch {
        server: String,
        expected: String,
        found: String,
    },
    #[error("{message} ({code})")]
    Api {
        status: u16,
        code: String,
        message: String,
        retry_after_secs: Option<u64>,
    },
    #[error("cannot reach {url}: {detail}")]
    Transport { url: String, detail: String },
    #[error("invalid server URL {0:?}: use https://HOST:PORT")]
    BadUrl(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("websocket: {0}")]
    WebSocket(String),
    #[error("unexpected response: {0}")]
    Protocol(String),
    #[error("end-to-end encryption: {0}")]
    E2ee(String),
    /// A local file or folder could not be read or written.
    #[error("{0}")]
    Local(String),
}

impl ClientError {
    /// The API error code, if the server answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// `host:port` of an `https://` URL: the key fingerprints are pinned under.
pub fn server_key(url: &str) -> Result<String> {
    let u = parse_url(url)?;
    let host = u
        .host_str()
        .ok_or_else(|| ClientError::BadUrl(url.into()))?;
    let port = u
        .port_or_known_default()
        .ok_or_else(|| ClientError::BadUrl(url.into()))?;
    Ok(format!("{host}:{port}"))
}

fn parse_url(url: &str) -> Result<Url> {
    let u = Url::parse(url).map_err(|_| ClientError::BadUrl(url.into()))?;
    if u.scheme() != "https" || u.host_str().is_none() {
        return Err(ClientError::BadUrl(url.into()));
    }
    Ok(u)
}

/// Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct Client {
    base: Url,
    key: String,
    http: reqwest::Client,
    ws_tls: Arc<ClientConfig>,
    token: Option<Secret<String>>,
    pin: Option<(String, Arc<Mutex<Option<String>>>)>,
}

const USER_AGENT: &str = concat!("sb/", env!("CARGO_PKG_VERSION"));

impl Client {
    pub fn new(url: &str, trust: &Trust) -> Result<Self> {
        let base = parse_url(url)?;
        let key = server_key(url)?;
        let (config, pin) = match trust {
            Trust::Fingerprint(fp) => {
                let seen = Arc::new(Mutex::new(None));
                (tls::pinned(fp, seen.clone())?, Some((fp.clone(), seen)))
            }
            Trust::CaFile(path) => (tls::with_ca(path)?, None),
        };
        let mut http_tls = config.clone();
        http_tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut ws_tls = config;
        ws_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(http_tls)
            .user_agent(USER_AGENT)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        Ok(Self {
            base,
            key,
            http,
            ws_tls: Arc::new(ws_tls),
            token: None,
            pin,
        })
    }

    pub fn with_token(mut self, token: Secret<String>) -> Self {
        self.token = Some(token);
        self
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    pub(crate) fn transport_error(&self, e: impl std::fmt::Display) -> ClientError {
        if let Some((expected, seen)) = &self.pin {
            let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(found) = seen.filter(|f| f != expected) {
                return ClientError::PinMismatch {
                    server: self.key.clone(),
                    expected: expected.clone(),
                    found,
                };
            }
        }
        // reqwest's Display is terse; include the source chain so the cause is visible.
        ClientError::Transport {
            url: self.base.to_string(),
            detail: e.to_string(),
        }
    }

    /// Sends a request and returns the raw response (any status).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<reqwest::Response> {
        let url = self
            .base
            .join(path)
            .map_err(|_| ClientError::BadUrl(path.into()))?;
        let mut req = self.http.request(method, url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        req.send().await.map_err(|e| {
            let mut detail = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                detail.push_str(": ");
                detail.push_str(&s.to_string());
                src = s.source();
            }
            self.transport_error(detail)
        })
    }

    /// Sends arbitrary bytes with a content type (for uploads and protocol tests).
    pub async fn alerts(&self) -> Result<Vec<AlertInfo>> {
        self.call(Method::GET, "/v1/alerts", Self::NO_BODY).await
    }

    /// Re-reads the server's rule files (admins).
    pub async fn reload_rules(&self) -> Result<RulesReloaded> {
        self.call(Method::POST, "/v1/alerts/reload", Self::NO_BODY)
            .await
    }

    pub async fn silences(&self) -> Result<Vec<SilenceInfo>> {
        self.call(Method::GET, "/v1/alerts/silences", Self::NO_BODY)
            .await
    }

    pub async fn create_silence(&self, req: &SilenceCreate) -> Result<SilenceInfo> {
        self.call(Method::POST, "/v1/alerts/silences", Some(req))
            .await
    }

    pub async fn expire_silence(&self, id: &str) -> Result<()> {
        self.call(
            Method::DELETE,
            &format!("/v1/alerts/silences/{id}"),
            Self::NO_BODY,
        )
        .await
    }

    /// A request with these extra headers; an `Authorization` among them replaces the token.
    pub async fn raw_with_headers(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<reqwest::Response> {
        let url = self
            .base
            .join(path)
            .map_err(|_| ClientError::BadUrl(path.into()))?;
        let mut req = self.http.request(method, url).body(body);
        let own_auth = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
        if let (Some(t), false) = (&self.token, own_auth) {
            req = req.bearer_auth(t.expose());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.map_err(|e| self.transport_error(e))
    }

    /// A Prometheus API call (`/api/v1/...`, GET) with these parameters; the decoded JSON answer,
    /// `{"status": "success", "data": …}` or an error.
    pub async fn prometheus_api(
        &self,
        path: &str,
        params: &[(&str, &str)],
    ) -> Result<serde_json::Value> {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let resp = self
            .raw_with_headers(Method::GET, &format!("{path}?{query}"), &[], Vec::new())
            .await?;
        let status = resp.status().as_u16();
        let v: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        if v["status"] == "success" {
            Ok(v["data"].clone())
        } else {
            Err(ClientError::Api {
                status,
                code: v["errorType"].as_str().unwrap_or("error").to_string(),
                message: v["error"].as_str().unwrap_or("").to_string(),
                retry_after_secs: None,
            })
        }
    }

    pub async fn raw_body(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<reqwest::Response> {
        let url = self
            .base
            .join(path)
            .map_err(|_| ClientError::BadUrl(path.into()))?;
        let mut req = self
            .http
            .request(method, url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        req.send().await.map_err(|e| self.transport_error(e))
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let body = body
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = self.raw(method, path, body.as_ref()).await?;
        Self::decode(resp).await
    }

    /// A success body as `T`, or the server's error.
    pub(crate) async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T> {
        let status = resp.status();
        if status.is_success() {
            let url = resp.url().to_string();
            let bytes = resp.bytes().await.map_err(|e| ClientError::Transport {
                url,
                detail: e.to_string(),
            })?;
            let bytes = if status == StatusCode::NO_CONTENT || bytes.is_empty() {
                &b"null"[..]
            } else {
                &bytes[..]
            };
            return serde_json::from_slice(bytes).map_err(|e| ClientError::Protocol(e.to_string()));
        }
        let retry_after_secs = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let text = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(e) => Err(ClientError::Api {
                status: status.as_u16(),
                code: e.error.code,
                message: e.error.message,
                retry_after_secs,
            }),
            Err(_) => Err(ClientError::Protocol(format!(
                "HTTP {status} without an error body"
            ))),
        }
    }

    const NO_BODY: Option<&'static ()> = None;

    pub async fn register(&self, req: &RegisterRequest) -> Result<UserInfo> {
        self.call(Method::POST, "/v1/auth/register", Some(req))
            .await
    }

    pub async fn login(&self, username: &str, password: Secret<String>) -> Result<LoginResponse> {
        let req = LoginRequest {
            username: username.to_string(),
            password,
        };
        self.call(Method::POST, "/v1/auth/login", Some(&req)).await
    }

    pub async fn logout(&self) -> Result<()> {
        self.call(Method::POST, "/v1/auth/logout", Self::NO_BODY)
            .await
    }

    pub async fn me(&self) -> Result<UserInfo> {
        self.call(Method::GET, "/v1/me", Self::NO_BODY).await
    }

    pub async fn update_profile(&self, update: &ProfileUpdate) -> Result<UserInfo> {
        self.call(Method::PATCH, "/v1/me", Some(update)).await
    }

    pub async fn change_password(&self, req: &PasswordChange) -> Result<PasswordChanged> {
        self.call(Method::POST, "/v1/me/password", Some(req)).await
    }

    pub async fn sessions(&self) -> Result<Vec<SessionInfo>> {
        self.call(Method::GET, "/v1/sessions", Self::NO_BODY).await
    }

    pub async fn revoke_session(&self, id: &str) -> Result<()> {
        self.call(Method::DELETE, &format!("/v1/sessions/{id}"), Self::NO_BODY)
            .await
    }

    pub async fn create_token(&self, req: &TokenCreate) -> Result<TokenCreated> {
        self.call(Method::POST, "/v1/tokens", Some(req)).await
    }

    pub async fn tokens(&self) -> Result<Vec<TokenInfo>> {
        self.call(Method::GET, "/v1/tokens", Self::NO_BODY).await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<()> {
        self.call(Method::DELETE, &format!("/v1/tokens/{id}"), Self::NO_BODY)
            .await
    }

    pub async fn admin_users(&self) -> Result<Vec<UserInfo>> {
        self.call(Method::GET, "/v1/admin/users", Self::NO_BODY)
            .await
    }

    pub async fn admin_update_user(&self, user: &str, req: &AdminUserUpdate) -> Result<UserInfo> {
        self.call(Method::PATCH, &format!("/v1/admin/users/{user}"), Some(req))
            .await
    }

    pub async fn admin_invite(&self, req: &InviteCreate) -> Result<InviteCreated> {
        self.call(Method::POST, "/v1/admin/invites", Some(req))
            .await
    }

    pub async fn admin_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEvent>> {
        let mut url = "/v1/admin/audit?".to_string();
        let mut add = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                let enc: String = url::form_urlencoded::byte_serialize(v.as_bytes()).collect();
                url.push_str(&format!("{k}={enc}&"));
            }
        };
        add("actor", q.actor.clone());
        add("action", q.action.clone());
        add("since_ms", q.since_ms.map(|v| v.to_string()));
        add("until_ms", q.until_ms.map(|v| v.to_string()));
        add("after_seq", q.after_seq.map(|v| v.to_string()));
        add("limit", q.limit.map(|v| v.to_string()));
        self.call(Method::GET, url.trim_end_matches(['&', '?']), Self::NO_BODY)
            .await
    }

    pub async fn admin_audit_verify(&self) -> Result<AuditVerifyResult> {
        self.call(Method::GET, "/v1/admin/audit/verify", Self::NO_BODY)
            .await
    }

    /// Applies file retention and deletes unreferenced blobs now (admin).
    pub async fn admin_gc(&self) -> Result<GcReport> {
        self.call(Method::POST, "/v1/admin/blobs/gc", Self::NO_BODY)
            .await
    }

    /// Re-hashes every blob copy on the server (admin); can take long on a large store.
    pub async fn admin_scrub(&self) -> Result<ScrubReport> {
        self.call(Method::POST, "/v1/admin/blobs/scrub", Self::NO_BODY)
            .await
    }

    pub async fn create_room(&self, req: &RoomCreate) -> Result<RoomInfo> {
        self.call(Method::POST, "/v1/rooms", Some(req)).await
    }

    pub async fn rooms(&self) -> Result<Vec<RoomInfo>> {
        self.call(Method::GET, "/v1/rooms", Self::NO_BODY).await
    }

    pub async fn public_rooms(&self) -> Result<Vec<RoomInfo>> {
        self.call(Method::GET, "/v1/rooms/public", Self::NO_BODY)
            .await
    }

    pub async fn direct_room(&self, username: &str) -> Result<RoomInfo> {
        let req = DirectRoomRequest {
            username: username.to_string(),
        };
        self.call(Method::POST, "/v1/rooms/direct", Some(&req))
            .await
    }

    pub async fn join_room(&self, room: &str) -> Result<()> {
        self.call(
            Method::POST,
            &format!("/v1/rooms/{room}/join"),
            Self::NO_BODY,
        )
        .await
    }

    pub async fn leave_room(&self, room: &str) -> Result<()> {
        self.call(
            Method::POST,
            &format!("/v1/rooms/{room}/leave"),
            Self::NO_BODY,
        )
        .await
    }

    pub async fn members(&self, room: &str) -> Result<Vec<MemberInfo>> {
        self.call(
            Method::GET,
            &format!("/v1/rooms/{room}/members"),
            Self::NO_BODY,
        )
        .await
    }

    pub async fn add_member(&self, room: &str, username: &str) -> Result<()> {
        let req = MemberAdd {
            username: username.to_string(),
        };
        self.call(
            Method::POST,
            &format!("/v1/rooms/{room}/members"),
            Some(&req),
        )
        .await
    }

    pub async fn kick(&self, room: &str, username: &str) -> Result<()> {
        self.call(
            Method::DELETE,
            &format!("/v1/rooms/{room}/members/{username}"),
            Self::NO_BODY,
        )
        .await
    }

    pub async fn set_member_role(&self, room: &str, username: &str, role: &str) -> Result<()> {
        let req = MemberRoleUpdate {
            role: role.to_string(),
        };
        self.call(
            Method::PATCH,
            &format!("/v1/rooms/{room}/members/{username}"),
            Some(&req),
        )
        .await
    }

    pub async fn ban(&self, room: &str, username: &str) -> Result<()> {
        let req = MemberAdd {
            username: username.to_string(),
        };
        self.call(Method::POST, &format!("/v1/rooms/{room}/bans"), Some(&req))
            .await
    }

    pub async fn send_message(&self, room: &str, req: &MessageSend) -> Result<MessageSent> {
        self.call(
            Method::POST,
            &format!("/v1/rooms/{room}/messages"),
            Some(req),
        )
        .await
    }

    pub async fn history(&self, room: &str, q: &HistoryQuery) -> Result<Vec<MessageInfo>> {
        let mut path = format!("/v1/rooms/{room}/messages?");
        if let Some(a) = q.after {
            path.push_str(&format!("after={a}&"));
        }
        if let Some(b) = q.before {
            path.push_str(&format!("before={b}&"));
        }
        if let Some(l) = q.limit {
            path.push_str(&format!("limit={l}&"));
        }
        self.call(
            Method::GET,
            path.trim_end_matches(['&', '?']),
            Self::NO_BODY,
        )
        .await
    }

    pub async fn mark_read(&self, room: &str, seq: i64) -> Result<ReadMark> {
        self.call(
            Method::POST,
            &format!("/v1/rooms/{room}/read"),
            Some(&ReadMark { seq }),
        )
        .await
    }

    pub async fn read_markers(&self, room: &str) -> Result<Vec<ReadMarkerInfo>> {
        self.call(
            Method::GET,
            &format!("/v1/rooms/{room}/read"),
            Self::NO_BODY,
        )
        .await
    }

    /// Uploads a file to a room; `progress(sent, total)` is called as the body is handed over.
    pub async fn upload(
        &self,
        room: &str,
        name: &str,
        content_type: &str,
        bytes: Vec<u8>,
        progress: impl Fn(u64, u64) + Send + Sync + 'static,
    ) -> Result<AttachmentInfo> {
        const CHUNK: usize = 64 * 1024;
        let total = bytes.len() as u64;
        let enc: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
        let url = self
            .base
            .join(&format!("/v1/rooms/{room}/attachments?name={enc}"))
            .map_err(|_| ClientError::BadUrl(room.into()))?;
        let chunks: Vec<Vec<u8>> = bytes.chunks(CHUNK).map(<[u8]>::to_vec).collect();
        let mut sent = 0u64;
        let stream = futures_util::stream::iter(chunks.into_iter().map(move |c| {
            sent += c.len() as u64;
            progress(sent, total);
            Ok::<_, std::io::Error>(c)
        }));
        let mut req = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header(reqwest::header::CONTENT_LENGTH, total)
            .body(reqwest::Body::wrap_stream(stream));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        let resp = req.send().await.map_err(|e| self.transport_error(e))?;
        Self::decode(resp).await
    }

    /// Downloads an attachment: its content type and bytes.
    pub async fn download(&self, room: &str, id: &str) -> Result<(String, Vec<u8>)> {
        let resp = self
            .raw(
                Method::GET,
                &format!("/v1/rooms/{room}/attachments/{id}"),
                None,
            )
            .await?;
        if !resp.status().is_success() {
            return Self::decode::<()>(resp)
                .await
                .map(|_| (String::new(), Vec::new()));
        }
        let ctype = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_string();
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(e))?;
        Ok((ctype, bytes.to_vec()))
    }

    pub async fn search(&self, q: &SearchQuery) -> Result<Vec<MessageInfo>> {
        let enc = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
        let mut path = format!("/v1/search/messages?q={}", enc(&q.q));
        if let Some(r) = &q.room {
            path.push_str(&format!("&room={}", enc(r)));
        }
        if let Some(l) = q.limit {
            path.push_str(&format!("&limit={l}"));
        }
        self.call(Method::GET, &path, Self::NO_BODY).await
    }

    /// Publishes MLS key packages for one of the caller's devices; returns how many are unclaimed.
    pub async fn publish_key_packages(
        &self,
        req: &KeyPackagesPublish,
    ) -> Result<KeyPackagesStored> {
        self.call(Method::POST, "/v1/mls/key-packages", Some(req))
            .await
    }

    /// Claims one key package per device of `username` to add them to an encrypted room.
    pub async fn claim_key_packages(
        &self,
        room: &str,
        username: &str,
    ) -> Result<Vec<ClaimedKeyPackage>> {
        let req = KeyPackageClaim {
            username: username.to_string(),
        };
        self.call(
            Method::POST,
            &format!("/v1/rooms/{room}/mls/claim"),
            Some(&req),
        )
        .await
    }

    /// Appends a handshake (a commit) for the room's current epoch; `stale_epoch` when another
    /// was accepted first.
    pub async fn send_handshake(&self, room: &str, req: &HandshakeSend) -> Result<()> {
        self.call(
            Method::POST,
            &format!("/v1/rooms/{room}/mls/handshakes"),
            Some(req),
        )
        .await
    }

    /// The room's handshakes from `from_epoch` on, in epoch order (one page).
    pub async fn handshakes(&self, room: &str, from_epoch: i64) -> Result<Vec<HandshakeInfo>> {
        self.call(
            Method::GET,
            &format!("/v1/rooms/{room}/mls/handshakes?from_epoch={from_epoch}"),
            Self::NO_BODY,
        )
        .await
    }

    /// Takes the Welcomes queued for one of the caller's devices (each is handed over once).
    pub async fn take_welcomes(&self, device: &str) -> Result<Vec<WelcomeInfo>> {
        let req = WelcomeTake {
            device: device.to_string(),
        };
        self.call(Method::POST, "/v1/mls/welcomes", Some(&req))
            .await
    }

    /// Opens `/v1/ws` with this client's token. Returns the stream after the HTTP upgrade;
    /// the first frame the server sends is `hello`.
    pub async fn ws_connect(&self) -> Result<WsStream> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let host = self
            .base
            .host_str()
            .ok_or_else(|| ClientError::BadUrl(self.base.to_string()))?
            .to_string();
        let port = self.base.port_or_known_default().unwrap_or(443);
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| self.transport_error(e))?;
        let name = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(self.ws_tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| self.transport_error(e))?;
        let mut ws_url = self.base.clone();
        let _ = ws_url.set_scheme("wss");
        ws_url.set_path("/v1/ws");
        let mut req = ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::WebSocket(e.to_string()))?;
        if let Some(t) = &self.token {
            let v = http::HeaderValue::from_str(&format!("Bearer {}", t.expose()))
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            req.headers_mut().insert(http::header::AUTHORIZATION, v);
        }
        match tokio_tungstenite::client_async(req, tls).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp.body().as_deref().unwrap_or_default();
                match serde_json::from_slice::<ErrorBody>(body) {
                    Ok(e) => Err(ClientError::Api {
                        status,
                        code: e.error.code,
                        message: e.error.message,
                        retry_after_secs: None,
                    }),
                    Err(_) => Err(ClientError::WebSocket(format!("HTTP {status}"))),
                }
            }
            Err(e) => Err(ClientError::WebSocket(e.to_string())),
        }
    }
}
