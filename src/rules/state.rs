//! The alert state machine, as in Prometheus' `rules/alerting.go`: inactive → pending (condition
//! true) → firing (true for `for`), back to inactive when false (after `keep_firing_for`), with
//! *no data* handled by the rule's `on_no_data`. One function, [`RuleState::step`], changes it;
//! time is a parameter.

use std::fmt;

use crate::expr::Truth;
use crate::time::{Span, Timestamp};

/// What a rule does on a tick where its condition is unknown (an input had no data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnNoData {
    /// The state holds: inactive stays inactive, firing stays firing, pending neither advances
    /// to firing nor resets.
    #[default]
    Keep,
    /// As if the condition were false.
    Ok,
    /// As if the condition were true (`for` still applies).
    Fire,
}

impl OnNoData {
    /// The truth a rule acts on: unknown mapped as `on_no_data` says (`keep` leaves it unknown).
    pub fn apply(self, truth: Truth) -> Truth {
        match (truth, self) {
            (Truth::Unknown, OnNoData::Ok) => Truth::False,
            (Truth::Unknown, OnNoData::Fire) => Truth::True,
            (t, _) => t,
        }
    }

    pub fn parse(text: &str) -> Option<OnNoData> {
        match text {
            "keep" => Some(OnNoData::Keep),
            "ok" => Some(OnNoData::Ok),
            "fire" => Some(OnNoData::Fire),
            _ => None,
        }
    }
}

/// How long a rule waits, and how it treats no data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timing {
    pub for_: Span,
    pub keep_firing_for: Span,
    pub on_no_data: OnNoData,
}

/// A rule's state, with the times that matter.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum RuleState {
    #[default]
    Inactive,
    /// Condition true since `since`, not yet for `for`.
    Pending { since: Timestamp },
    /// Firing since `since` (condition first true at `active_since`); `clearing_since` is when
    /// the condition became false while `keep_firing_for` holds it.
    Firing { since: Timestamp, active_since: Timestamp, clearing_since: Option<Timestamp> },
}

/// The three state names, for output and expectations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    Inactive,
    Pending,
    Firing,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Inactive => "inactive",
            Phase::Pending => "pending",
            Phase::Firing => "firing",
        })
    }
}

impl RuleState {
    pub fn phase(&self) -> Phase {
        match self {
            RuleState::Inactive => Phase::Inactive,
            RuleState::Pending { .. } => Phase::Pending,
            RuleState::Firing { .. } => Phase::Firing,
        }
    }

    pub fn is_firing(&self) -> bool {
        matches!(self, RuleState::Firing { .. })
    }

    pub fn is_pending(&self) -> bool {
        matches!(self, RuleState::Pending { .. })
    }

    /// Advances the state for one evaluation at `now` with the condition's truth.
    pub fn step(self, now: Timestamp, truth: Truth, timing: &Timing) -> RuleState {
        match (self, timing.on_no_data.apply(truth)) {
            (state, Truth::Unknown) => state,
            (RuleState::Inactive, Truth::False) => RuleState::Inactive,
            (RuleState::Inactive, Truth::True) => RuleState::Pending { since: now }.promote(now, timing),
            (RuleState::Pending { since }, Truth::True) => RuleState::Pending { since }.promote(now, timing),
            (RuleState::Pending { .. }, Truth::False) => RuleState::Inactive,
            (RuleState::Firing { since, active_since, .. }, Truth::True) => {
                RuleState::Firing { since, active_since, clearing_since: None }
            }
            (RuleState::Firing { since, active_since, clearing_since }, Truth::False) => {
                let clearing = clearing_since.unwrap_or(now);
                if now.saturating_since(clearing) >= timing.keep_firing_for {
                    RuleState::Inactive
                } else {
                    RuleState::Firing { since, active_since, clearing_since: Some(clearing) }
                }
            }
        }
    }

    fn promote(self, now: Timestamp, timing: &Timing) -> RuleState {
        match self {
            RuleState::Pending { since } if now.saturating_since(since) >= timing.for_ => {
                RuleState::Firing { since: now, active_since: since, clearing_since: None }
            }
            state => state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Truth::{False as F, True as T, Unknown as U};

    const S: i64 = 1000;

    /// Runs `inputs` at 15 s ticks and returns the phase after each.
    fn run(timing: Timing, inputs: &[Truth]) -> Vec<Phase> {
        let mut state = RuleState::Inactive;
        inputs
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                state = state.step(Timestamp(i as i64 * 15 * S), t, &timing);
                state.phase()
            })
            .collect()
    }

    use Phase::{Firing as Fi, Inactive as In, Pending as Pe};

    #[test]
    fn without_for_a_true_condition_fires_at_once() {
        assert_eq!(run(Timing::default(), &[F, T, T, F]), [In, Fi, Fi, In]);
    }

    #[test]
    fn for_is_clock_time() {
        let timing = Timing { for_: Span(30 * S), ..Timing::default() };
        // True at 0s, 15s, 30s: firing at 30s (30s ≥ for).
        assert_eq!(run(timing, &[T, T, T, T, F]), [Pe, Pe, Fi, Fi, In]);
        // A false tick resets the pending clock.
        assert_eq!(run(timing, &[T, T, F, T, T, T]), [Pe, Pe, In, Pe, Pe, Fi]);
    }

    #[test]
    fn keep_firing_for_damps_flapping() {
        let timing = Timing { keep_firing_for: Span(30 * S), ..Timing::default() };
        assert_eq!(run(timing, &[T, F, F, T, F, F, F]), [Fi, Fi, Fi, Fi, Fi, Fi, In]);
    }

    #[test]
    fn on_no_data_keep_holds_every_state() {
        let timing = Timing { for_: Span(30 * S), ..Timing::default() };
        // Inactive stays inactive.
        assert_eq!(run(timing, &[U, U]), [In, In]);
        // Pending neither advances nor resets: true at 0, unknown at 15..45, true at 60 → 60s ≥ 30s.
        assert_eq!(run(timing, &[T, U, U, U]), [Pe, Pe, Pe, Pe]);
        assert_eq!(run(timing, &[T, U, U, U, T]), [Pe, Pe, Pe, Pe, Fi]);
        // Firing stays firing.
        assert_eq!(run(timing, &[T, T, T, U, U, F]), [Pe, Pe, Fi, Fi, Fi, In]);
    }

    #[test]
    fn on_no_data_ok_and_fire() {
        let ok = Timing { on_no_data: OnNoData::Ok, ..Timing::default() };
        assert_eq!(run(ok, &[T, U]), [Fi, In]);
        let fire = Timing { on_no_data: OnNoData::Fire, for_: Span(15 * S), ..Timing::default() };
        assert_eq!(run(fire, &[U, U, F]), [Pe, Fi, In], "for still applies");
    }

    #[test]
    fn firing_records_when_it_started() {
        let timing = Timing { for_: Span(15 * S), ..Timing::default() };
        let s = RuleState::Inactive.step(Timestamp(0), T, &timing).step(Timestamp(15 * S), T, &timing);
        assert_eq!(s, RuleState::Firing { since: Timestamp(15 * S), active_since: Timestamp(0), clearing_since: None });
        assert_eq!(OnNoData::parse("fire"), Some(OnNoData::Fire));
        assert_eq!(OnNoData::parse("maybe"), None);
    }
}
