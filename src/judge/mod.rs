//! Judge: what is approved and how a difference is classified, as pure logic. `manifest` (the
//! signed approved state of a release), `changelog` (change tickets), `diff` (observed against
//! approved), `classify` (DESIGN §6), and `check`/`report`, the one-shot `check` built from them.

pub mod changelog;
pub mod check;
pub mod classify;
pub mod diff;
pub mod manifest;
pub mod report;
