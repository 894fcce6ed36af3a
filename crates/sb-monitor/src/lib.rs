//! Monitoring: ingestion (Prometheus remote_write, Influx line protocol), PromQL evaluation
//! over sb-tsdb, and the [`Monitor`] service the server routes to.

pub mod alerts;
pub mod exposition;
mod limits;
pub mod line_protocol;
pub mod promql;
pub mod remote_write;
mod service;
pub mod time;

pub use service::{Monitor, MonitorError};
