//! The rules of engagement (`[policy]`): the mode, single flight, cooldown, the loop guard,
//! how long verification and approvals may take, when a rollback is slow and when being
//! blind is worth telling people.

use crate::time::Span;

/// Whether rollwatch acts by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// `rollback` decisions act at once; `consider` asks for approval.
    Auto,
    /// Every rollback waits for a person's approval.
    Approve,
    /// Decide and journal what would run; never act or notify.
    DryRun,
}

impl Mode {
    pub fn parse(text: &str) -> Option<Mode> {
        match text {
            "auto" => Some(Mode::Auto),
            "approve" => Some(Mode::Approve),
            "dry-run" => Some(Mode::DryRun),
            _ => None,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Auto => "auto",
            Mode::Approve => "approve",
            Mode::DryRun => "dry-run",
        })
    }
}

/// `[policy]`, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub mode: Mode,
    /// No new rollback of a profile this soon after its last one started.
    pub cooldown: Span,
    /// The loop guard: at most `max_rollbacks` started per `max_rollbacks_per`, then stop acting and page.
    pub max_rollbacks: u32,
    pub max_rollbacks_per: Span,
    /// After the steps, the rules behind a rollback must be quiet for `verify_stable` within this.
    pub verify_for: Span,
    /// How long those rules must stay inactive with known inputs for the rollback to count as done.
    pub verify_stable: Span,
    /// How long a version must run clean (deciding `monitor`, no rule pending or firing) to be good.
    pub bake: Span,
    /// A rollback longer than this is an S3 finding.
    pub slow_rollback: Span,
    /// Every rule of a profile unknown this long is notified.
    pub blind_after: Span,
    /// How long an approval stays open.
    pub approval_timeout: Span,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            mode: Mode::Auto,
            cooldown: Span::from_secs(30 * 60),
            max_rollbacks: 2,
            max_rollbacks_per: Span::from_secs(6 * 3600),
            verify_for: Span::from_secs(10 * 60),
            verify_stable: Span::from_secs(60),
            bake: Span::from_secs(10 * 60),
            slow_rollback: Span::from_secs(15 * 60),
            blind_after: Span::from_secs(5 * 60),
            approval_timeout: Span::from_secs(30 * 60),
        }
    }
}
