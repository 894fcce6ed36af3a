pub mod line_protocol;
pub mod promql;
pub mod remote_write;
