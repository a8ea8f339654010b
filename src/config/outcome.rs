//! The outcomes a decision tree reaches (`monitor`, `consider`, `rollback`): a closed set the
//! config names (procedures are named after them) and the rules decide.

use std::fmt;

/// What to do about a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Record only.
    Monitor,
    /// Notify and ask for approval.
    Consider,
    /// Act now.
    Rollback,
}

impl Outcome {
    pub fn parse(text: &str) -> Option<Outcome> {
        match text {
            "rollback" => Some(Outcome::Rollback),
            "consider" => Some(Outcome::Consider),
            "monitor" => Some(Outcome::Monitor),
            _ => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Rollback => "rollback",
            Outcome::Consider => "consider",
            Outcome::Monitor => "monitor",
        })
    }
}
