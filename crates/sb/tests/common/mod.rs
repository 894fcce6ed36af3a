//! Runs the real `sb` binary as a server on port 0 with a temporary data directory, and gives
//! tests SDK clients and CLI invocations pointed at it.

#![allow(dead_code)]

use sb_client::{Client, Trust};
use sb_core::Secret;
use sb_proto::RegisterRequest;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "correct horse battery staple";
pub const BIN: &str = env!("CARGO_BIN_EXE_sb");

pub struct TestServer {
    child: Option<Child>,
    pub url: String,
    pub addr: String,
    pub fingerprint: String,
    pub setup_token: Option<String>,
    pub data_dir: PathBuf,
    /// The MQTT listener's address (host:port), when started with `mqtt: true`.
    pub mqtt: Option<String>,
    _tmp: Option<tempfile::TempDir>,
}

pub struct ServerOptions<'a> {
    pub listen: &'a str,
    pub data_dir: Option<PathBuf>,
    pub env: Vec<(&'a str, String)>,
    /// Capture the server's stderr (its logs) in this file instead of inheriting it.
    pub log_file: Option<PathBuf>,
    /// `sb serve --config FILE`.
    pub config: Option<PathBuf>,
    /// `sb serve --mqtt 127.0.0.1:0`.
    pub mqtt: bool,
}

impl Default for ServerOptions<'_> {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0",
            data_dir: None,
            env: Vec::new(),
            log_file: None,
            config: None,
            mqtt: false,
        }
    }
}

impl TestServer {
    pub fn start() -> Self {
        Self::start_with(ServerOptions::default())
    }

    /// Starts on a fixed address that was just released, retrying while something else (a
    /// client socket of a parallel test, say) briefly holds the port.
    pub fn start_on_released_port(addr: &str) -> Self {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let opts = ServerOptions {
                listen: addr,
                ..Default::default()
            };
            if let Some(server) = Self::try_start_with(opts) {
                return server;
            }
            assert!(Instant::now() < deadline, "{addr} stayed taken");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn start_with(opts: ServerOptions<'_>) -> Self {
        Self::try_start_with(opts).expect("server exited before printing its banner")
    }

    /// `None` when the server exits before printing its banner (e.g. its address is taken).
    pub fn try_start_with(opts: ServerOptions<'_>) -> Option<Self> {
        let (tmp, data_dir) = match opts.data_dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::tempdir().expect("tempdir");
                let d = t.path().join("data");
                (Some(t), d)
            }
        };
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", opts.listen, "--data-dir"])
            .arg(&data_dir)
            .env("SB_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        if let Some(c) = &opts.config {
            cmd.arg("--config").arg(c);
        }
        if opts.mqtt {
            cmd.args(["--mqtt", "127.0.0.1:0"]);
        }
        if let Some(path) = &opts.log_file {
            cmd.stderr(std::fs::File::create(path).expect("log file"));
        }
        let mut child = cmd.spawn().expect("spawn sb serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut url = None;
        let mut fingerprint = None;
        let mut mqtt = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while fingerprint.is_none() {
            assert!(Instant::now() < deadline, "server did not start in time");
            let Some(Ok(line)) = lines.next() else {
                let _ = child.wait();
                return None;
            };
            if let Some(rest) = line.strip_prefix("Switchboard listening on ") {
                url = Some(rest.trim().to_string());
            }
            if let Some(rest) = line.strip_prefix("MQTT listening on mqtt://") {
                mqtt = Some(rest.split_whitespace().next().unwrap_or("").to_string());
            }
            if let Some(rest) = line.strip_prefix("TLS certificate SHA-256 fingerprint: ") {
                fingerprint = Some(rest.trim().to_string());
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let url = url.expect("url in banner");
        let setup_token = std::fs::read_to_string(data_dir.join("setup-token"))
            .ok()
            .map(|t| t.trim().to_string());
        Some(TestServer {
            child: Some(child),
            addr: url.trim_start_matches("https://").to_string(),
            url,
            fingerprint: fingerprint.expect("fingerprint"),
            setup_token,
            data_dir,
            mqtt,
            _tmp: tmp,
        })
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url, &Trust::Fingerprint(self.fingerprint.clone())).expect("client")
    }

    pub fn client_with(&self, token: &Secret<String>) -> Client {
        self.client().with_token(token.clone())
    }

    /// Registers `admin` with the setup token and returns a logged-in client.
    pub async fn admin(&self) -> Client {
        let c = self.client();
        c.register(&RegisterRequest {
            username: "admin".into(),
            password: Secret::new(PASSWORD.into()),
            setup_token: Some(Secret::new(self.setup_token.clone().expect("setup token"))),
            invite: None,
        })
        .await
        .expect("register admin");
        self.login("admin").await
    }

    pub async fn login(&self, username: &str) -> Client {
        let r = self
            .client()
            .login(username, Secret::new(PASSWORD.into()))
            .await
            .expect("login");
        self.client_with(&r.token)
    }

    /// Creates a plain user through an admin invite and returns it logged in.
    pub async fn user(&self, admin: &Client, username: &str) -> Client {
        let invite = admin
            .admin_invite(&Default::default())
            .await
            .expect("invite");
        self.client()
            .register(&RegisterRequest {
                username: username.into(),
                password: Secret::new(PASSWORD.into()),
                setup_token: None,
                invite: Some(invite.token),
            })
            .await
            .expect("register user");
        self.login(username).await
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGTERM and wait; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Registers `admin` with the setup token through the CLI in `home` (pinning the certificate).
pub fn register_admin_cli(server: &TestServer, home: &Path) {
    let setup = server.setup_token.clone().expect("setup token");
    let out = sb(
        home,
        &[
            "register",
            &server.url,
            "--username",
            "admin",
            "--setup-token",
            &setup,
            "--password-stdin",
            "--yes",
        ],
        &format!("{PASSWORD}\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Runs the CLI with its own config directory (one per simulated user device).
pub fn sb(config_home: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("XDG_CONFIG_HOME", config_home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sb");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("sb output")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn json(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "command failed: {}\n{}",
        stdout(o),
        stderr(o)
    );
    serde_json::from_slice(&o.stdout).expect("json output")
}

/// Path of an outside program, or `None` (with a loud note) when it is missing; under
/// `SB_REQUIRE_EXTERNAL=1` a missing program fails the test instead.
pub fn external(program: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("SB_REQUIRE_EXTERNAL").as_deref() != Ok("1"),
            "{program} is required (SB_REQUIRE_EXTERNAL=1) but not installed"
        );
        eprintln!(
            "!!! SKIPPING the {program} check: {program} is not installed (install it, e.g. apt-get install prometheus or tmux)"
        );
    }
    found
}

/// A TLS client configuration that accepts any server certificate (the test server's is
/// self-signed); for raw protocol checks, never for the SDK, which pins it.
pub fn accept_any_tls() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .dangerous()
    .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAny))
    .with_no_client_auth()
}

/// A TLS connection to the test server that accepts its certificate, for raw HTTP.
pub async fn raw_tls(
    addr: &str,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use std::sync::Arc;
    let mut config = accept_any_tls();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().expect("a name"), tcp)
        .await
        .expect("TLS handshake")
}

#[derive(Debug)]
pub struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// One raw HTTP/1.1 request (`Connection: close` is added) over TLS; the status and the whole
/// response text (head and body).
pub async fn raw_http(addr: &str, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = raw_tls(addr, b"http/1.1").await;
    let head_end = request.find("\r\n\r\n").expect("a request head");
    let request = format!(
        "{}\r\nConnection: close{}",
        &request[..head_end],
        &request[head_end..]
    );
    tls.write_all(request.as_bytes()).await.expect("write");
    // Until the server closes, or (an upgrade keeps the connection) the head of a 101.
    let mut response = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tls.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
        }
        if response.starts_with(b"HTTP/1.1 101") && response.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}
