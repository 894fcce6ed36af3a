pub mod line_protocol;
pub mod remote_write;
