//! The suite file of DESIGN.md: a JSON document naming every test of a repository with
//! its tags, dependencies and (optionally) a known duration.
//!
//! This module only reads and writes the format; validation (unique ids, known
//! dependencies, no cycles) lives in the scheduler, which owns the dependency graph.

use serde::{Deserialize, Serialize};

/// A suite file as written on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteFile {
    /// A name for humans.
    #[serde(default)]
    pub name: String,
    /// Seconds every shard pays once (runner start-up, fixtures).
    #[serde(default)]
    pub shard_overhead_s: f64,
    /// The tests, in any order.
    pub tests: Vec<SuiteTest>,
}

/// One test of a suite file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteTest {
    /// The stable test id: any non-empty UTF-8 string without newlines.
    pub id: String,
    /// The areas the test covers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Ids of tests that must have passed before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// The known duration, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
}

/// Why a suite file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SuiteFileError {
    /// The bytes are not a suite file.
    #[error("suite file is not valid JSON of the suite format: {0}")]
    Json(#[from] serde_json::Error),
}

impl SuiteFile {
    /// Parses a suite file from JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<SuiteFile, SuiteFileError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// The suite as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a suite file always serialises")
    }
}

/// A history file for `greenlight simulate`: `{"durations_s": {"<test id>": seconds}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryFile {
    /// Observed seconds per test id.
    pub durations_s: std::collections::BTreeMap<String, f64>,
}

/// Why a history file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryFileError {
    /// The bytes are not a history file.
    #[error("this is not a history file ({{\"durations_s\": {{\"<test id>\": seconds}}}}): {0}")]
    Json(#[from] serde_json::Error),
    /// A duration is negative or not a number.
    #[error("duration of {id:?} is {value}, expected a finite number >= 0")]
    BadDuration {
        /// The test id.
        id: String,
        /// The value given.
        value: f64,
    },
}

impl HistoryFile {
    /// Parses and checks a history file from JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<HistoryFile, HistoryFileError> {
        let history: HistoryFile = serde_json::from_slice(bytes)?;
        if let Some((id, &value)) = history.durations_s.iter().find(|(_, value)| !(value.is_finite() && **value >= 0.0))
        {
            return Err(HistoryFileError::BadDuration { id: id.clone(), value });
        }
        Ok(history)
    }
}
