//! What the acting core asks of the world beyond its state: restart the evaluator's evidence at
//! a deploy or a restore point.

use crate::time::Timestamp;

/// The evaluator's evidence must restart at `at` (a deploy or a restore point); `predates`
/// when it is a deploy seen while watching (rules already firing then predate it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restart {
    pub at: Timestamp,
    pub predates: bool,
    /// The version deployed, when the restart is a deploy seen while watching (what a recording
    /// writes as its fixture's `[[deploy]]`).
    pub deployed: Option<String>,
}
