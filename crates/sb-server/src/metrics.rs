//! The server's own metrics, exposed at `/metrics` in Prometheus text format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The route pattern (`/v1/sessions/{id}`), never the raw path, so cardinality stays bounded.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    pub op: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: HistogramFamily<RouteLabels>,
    pub connections_open: Gauge,
    pub connections_total: Counter,
    pub tls_handshake_failures: Counter,
    pub websockets_open: Gauge,
    pub store_duration: HistogramFamily<StoreLabels>,
    pub samples_ingested: Counter,
    pub samples_rejected: Counter,
    tsdb_series: Gauge,
    tsdb_memory_chunk_bytes: Gauge,
    tsdb_disk_chunks: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sb");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(latency_histogram);
        let connections_open = Gauge::default();
        let connections_total = Counter::default();
        let tls_handshake_failures = Counter::default();
        let websockets_open = Gauge::default();
        let store_duration: HistogramFamily<StoreLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by method and route",
            request_duration.clone(),
        );
        registry.register(
            "connections_open",
            "Open client connections",
            connections_open.clone(),
        );
        registry.register(
            "connections",
            "Client connections accepted",
            connections_total.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            tls_handshake_failures.clone(),
        );
        registry.register(
            "websockets_open",
            "Open /v1/ws connections",
            websockets_open.clone(),
        );
        registry.register(
            "store_operation_duration_seconds",
            "Store operation latency, queueing included",
            store_duration.clone(),
        );
        let samples_ingested = Counter::default();
        let samples_rejected = Counter::default();
        let (tsdb_series, tsdb_memory_chunk_bytes, tsdb_disk_chunks) =
            (Gauge::default(), Gauge::default(), Gauge::default());
        registry.register(
            "samples_ingested",
            "Samples stored from remote_write and line protocol",
            samples_ingested.clone(),
        );
        registry.register(
            "samples_rejected",
            "Samples or series refused (out of order, too old, over a limit)",
            samples_rejected.clone(),
        );
        registry.register(
            "tsdb_series",
            "Series in the time-series head",
            tsdb_series.clone(),
        );
        registry.register(
            "tsdb_memory_chunk_bytes",
            "Chunk bytes held in memory (open chunks and chunks not yet written out)",
            tsdb_memory_chunk_bytes.clone(),
        );
        registry.register(
            "tsdb_disk_chunks",
            "Sealed chunks in chunk files",
            tsdb_disk_chunks.clone(),
        );
        Self {
            registry,
            requests,
            request_duration,
            connections_open,
            connections_total,
            tls_handshake_failures,
            websockets_open,
            store_duration,
            samples_ingested,
            samples_rejected,
            tsdb_series,
            tsdb_memory_chunk_bytes,
            tsdb_disk_chunks,
        }
    }

    /// Sets the time-series gauges from the store's current figures.
    pub fn observe_tsdb(&self, s: sb_tsdb::Stats) {
        let g = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.tsdb_series.set(g(s.series));
        self.tsdb_memory_chunk_bytes.set(g(s.chunk_bytes));
        self.tsdb_disk_chunks.set(g(s.disk_chunks));
    }

    pub fn observe_store(&self, op: &'static str, took: Duration) {
        self.store_duration
            .get_or_create(&StoreLabels { op: op.to_string() })
            .observe(took.as_secs_f64());
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
