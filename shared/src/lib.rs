//! Greenlight's shared vocabulary: the wire types spoken over HTTP between the master,
//! its workers and its clients ([`api`]), the suite file format of DESIGN.md ([`suite`]),
//! the thin wrapper around the `git` command that every part uses ([`git`]), and the runner
//! adapters (pytest, cargo-nextest, any JUnit-writing command) that list and run suites
//! ([`runner`]).
//!
//! Wire types change only compatibly: fields are added with defaults, never renamed.
#![warn(missing_docs)]

pub mod api;
pub mod git;
pub mod runner;
pub mod suite;

/// The version every request and response body carries.
pub const API_VERSION: u32 = 1;

/// Seconds since the Unix epoch, as the master and its clients exchange times.
pub fn unix_now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs_f64())
        .unwrap_or(0.0)
}
