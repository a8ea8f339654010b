//! The rollback in flight, as the dispatcher holds it and `/status` shows it: its phase, its
//! steps' progress, and what its verification and its last messages need.

use serde::Serialize;

use super::verify::Verification;
use crate::config::procedures::Step;
use crate::template::Vars;
use crate::time::Timestamp;

/// Where a rollback in flight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The procedure's steps are running.
    Steps,
    /// The steps are done; waiting for the rules behind it to stay quiet.
    Verifying,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Steps => "running its steps",
            Phase::Verifying => "verifying",
        })
    }
}

/// The rollback in flight.
#[derive(Debug, Clone, Serialize)]
pub struct InFlight {
    pub rollback_id: String,
    pub profile: String,
    pub started_at: Timestamp,
    pub phase: Phase,
    pub verify_until: Option<Timestamp>,
    pub version_from: Option<String>,
    pub target_version: Option<String>,
    /// Each step before verification, and where it is.
    pub steps: Vec<super::procedure::StepProgress>,
    #[serde(skip)]
    pub(super) firing: Vec<String>,
    #[serde(skip)]
    pub(super) post: Vec<Step>,
    #[serde(skip)]
    pub(super) vars: Vars,
    #[serde(skip)]
    pub(super) slow_escalated: bool,
    #[serde(skip)]
    pub(super) verification: Option<Verification>,
    /// Whether the procedure runs any action (one that only announces restores nothing).
    #[serde(skip)]
    pub(super) acts: bool,
}
