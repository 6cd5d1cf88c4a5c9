//! The scheduler core of Greenlight, pure by construction: this crate depends on no
//! runtime, store, network or clock. Events come in as method calls with the time passed
//! in; decisions come out as values. The master drives it with the wall clock and
//! `greenlight simulate` drives the very same code with a virtual clock.
//!
//! - [`suite`] validates a suite file into a [`suite::Suite`] with its dependency DAG.
//! - [`select`] picks the tests a change's tags call for, with their dependencies.
//! - [`estimate`] turns history into a duration estimate for every test.
//! - [`plan`] fixes a build's tests, priorities and lower bound.
//! - [`core`] is the state machine: builds, workers, leases, results, verdicts.
//! - [`simulate`] runs the core against a virtual clock.
#![warn(missing_docs)]

pub mod baseline;
pub mod core;
pub mod estimate;
pub mod plan;
pub mod select;
pub mod simulate;
pub mod suite;

/// Seconds, on whatever clock the driver uses (wall or virtual).
pub type Seconds = f64;
