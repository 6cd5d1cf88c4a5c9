//! The web pages Greenlight's master serves, embedded in the binary: no Node toolchain
//! is needed to build or run them. They read the JSON API.
#![warn(missing_docs)]

/// The status page served at `/`.
pub const INDEX_HTML: &str = include_str!("../assets/index.html");
