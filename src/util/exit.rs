//! Exit codes shared by every command that judges a tree (DESIGN §4).

/// No unauthorized drift.
pub const CLEAN: u8 = 0;
/// Unauthorized (or unverifiable) drift found, or a broken audit chain.
pub const DRIFT: u8 = 1;
/// Bad arguments, unreadable config, bad signature, I/O failure.
pub const ERROR: u8 = 2;
