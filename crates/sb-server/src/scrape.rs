//! Collection the server does itself: scraping the configured targets, and storing its own
//! metrics. Each scrape stores the target's samples with `job` and `instance` labels plus
//! `up`, `scrape_duration_seconds` and `scrape_samples_scraped`, and writes Prometheus'
//! staleness marker for every series that disappeared since the previous scrape (or all of
//! them when the target is down), so queries stop showing it at once.

use crate::AppState;
use sb_core::config::ScrapeJob;
use sb_monitor::exposition;
use sb_monitor::promql::STALE_NAN_BITS;
use sb_tsdb::{Batch, Labels, METRIC_NAME};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn client(job: &ScrapeJob) -> anyhow::Result<reqwest::Client> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = if job.tls_insecure_skip_verify {
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth()
    };
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_millis(job.timeout_ms.max(1)))
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// Accepts any certificate: only for jobs that ask for it (`tls_insecure_skip_verify`).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
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
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub fn spawn(st: Arc<AppState>) -> anyhow::Result<()> {
    for job in &st.config.monitoring.scrape {
        if job.job.is_empty() {
            anyhow::bail!("a [[monitoring.scrape]] job needs a `job` name");
        }
        let http = client(job)?;
        for target in &job.targets {
            tokio::spawn(scrape_loop(
                st.clone(),
                job.clone(),
                target.clone(),
                http.clone(),
            ));
        }
    }
    let every = st.config.monitoring.self_scrape_interval_ms;
    if every > 0 {
        tokio::spawn(self_scrape(st, Duration::from_millis(every)));
    }
    Ok(())
}

fn now_ms() -> i64 {
    crate::now().0
}

async fn scrape_loop(st: Arc<AppState>, job: ScrapeJob, target: String, http: reqwest::Client) {
    let url = format!("{}://{target}{}", job.scheme, job.metrics_path);
    let mut previous: HashSet<Labels> = HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(job.interval_ms.max(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = st.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        let t = now_ms();
        let result = fetch(&http, &url, &job).await;
        let base = [("job", job.job.as_str()), ("instance", target.as_str())];
        let mut batch: Batch = Vec::new();
        let mut current = HashSet::new();
        let (up, count) = match result {
            Ok(samples) => {
                let n = samples.len();
                for s in samples {
                    let mut l = s.labels;
                    for (k, v) in base {
                        // The target's own job/instance labels give way, as with honor_labels off.
                        if let Some(theirs) = l.get(k).map(str::to_string) {
                            l = l.with(&format!("exported_{k}"), &theirs);
                        }
                        l = l.with(k, v);
                    }
                    current.insert(l.clone());
                    batch.push((l, vec![(s.timestamp_ms.unwrap_or(t), s.value)]));
                }
                (1.0, n)
            }
            Err(e) => {
                tracing::debug!(%url, error = %e, "scrape failed");
                (0.0, 0)
            }
        };
        let stale = f64::from_bits(STALE_NAN_BITS);
        for gone in previous.difference(&current) {
            batch.push((gone.clone(), vec![(t, stale)]));
        }
        previous = current;
        let meta = |name: &str, v: f64| {
            let mut pairs: Vec<(String, String)> = base
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            pairs.push((METRIC_NAME.to_string(), name.to_string()));
            (Labels::new(pairs), vec![(t, v)])
        };
        batch.push(meta("up", up));
        batch.push(meta(
            "scrape_duration_seconds",
            started.elapsed().as_secs_f64(),
        ));
        batch.push(meta("scrape_samples_scraped", count as f64));
        if let Err(e) = st.monitor.append_internal(batch).await {
            tracing::warn!(%url, error = %e, "storing a scrape failed");
        }
    }
}

async fn fetch(
    http: &reqwest::Client,
    url: &str,
    job: &ScrapeJob,
) -> anyhow::Result<Vec<exposition::Exposed>> {
    let mut req = http
        .get(url)
        .header("accept", "text/plain;version=0.0.4;q=1,*/*;q=0.1");
    if let Some(t) = &job.bearer_token {
        req = req.bearer_auth(t.expose());
    }
    let mut resp = req.send().await?;
    if !resp.status().is_success() {
        anyhow::bail!("HTTP {}", resp.status());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > job.body_bytes_max {
            anyhow::bail!("body over {} bytes", job.body_bytes_max);
        }
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(body)?;
    Ok(exposition::parse(&text, job.sample_limit)?)
}

/// Stores the server's own `/metrics` as job `switchboard`.
async fn self_scrape(st: Arc<AppState>, every: Duration) {
    let instance = st.config.server.listen.to_string();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = st.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let t = now_ms();
        st.metrics.observe_tsdb(st.monitor.db().stats());
        let text = st.metrics.encode();
        let samples = match exposition::parse(&text, usize::MAX) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "the server's own metrics did not parse");
                continue;
            }
        };
        let batch: Batch = samples
            .into_iter()
            .map(|s| {
                let l = s
                    .labels
                    .with("job", "switchboard")
                    .with("instance", &instance);
                (l, vec![(t, s.value)])
            })
            .collect();
        if let Err(e) = st.monitor.append_internal(batch).await {
            tracing::warn!(error = %e, "storing the server's own metrics failed");
        }
    }
}
