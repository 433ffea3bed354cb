//! Small helpers with no place in the pipeline: paths as bytes, globs, time, atomic writes,
//! the host name, exit codes and config-key checking.

pub mod confkeys;
pub mod exit;
pub mod fsutil;
pub mod glob;
pub mod host;
pub mod pathbytes;
pub mod timefmt;
