//! The acting core alone: driven input by input on a manual clock, with a real journal and no
//! executor — no task, no action, no sleep. What it decides is read from the effects it queues
//! and the events it records.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::act::core::Core;
use crate::act::effect::Effect;
use crate::act::event::StepEvent;
use crate::act::ledger::Ledger;
use crate::act::plan::{Acting, Plan};
use crate::act::procedure::{ProcedureDone, ProcedureNews, StepState};
use crate::act::{Command, Policy};
use crate::config::procedures::Step;
use crate::journal::{Journal, SharedJournal};
use crate::rules::tree::Answer;
use crate::rules::{Decision, Outcome, RuleValue};
use crate::time::{Clock, ManualClock, Span, Timestamp};

const START: i64 = 1_800_000_000_000;

struct Bench {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    core: Core,
}

fn acting(policy: Policy) -> Acting {
    let rollback = vec![
        Step::Announce { template: "rollback_in_progress".into(), levels: vec![] },
        Step::Run { action: "undo".into(), verify: None, levels: vec![] },
        Step::Announce { template: "rollback_complete".into(), levels: vec![] },
    ];
    let plan = Plan {
        procedures: BTreeMap::from([("rollback".to_string(), rollback)]),
        consider_auto_after: None,
        rules: vec!["errors".into()],
        labels: BTreeMap::from([("errors".into(), BTreeMap::from([("team".into(), "payments".into())]))]),
        reads: vec![("errors".into(), vec!["signal:error_rate".into()])],
        environment: vec![],
        summaries: BTreeMap::from([(
            "errors".into(),
            ("Error rate {{value}} above 5% ({{rule}}, {{labels.team}})".into(), crate::template::Unit::Share),
        )]),
    };
    Acting {
        policy,
        actions: Arc::new(BTreeMap::new()),
        plans: BTreeMap::from([("api".to_string(), plan)]),
        redactor: Default::default(),
        config_path: "rollwatch.toml".into(),
        deployment: None,
        version_source: false,
    }
}

impl Bench {
    fn new() -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::starting_at(Timestamp(START)));
        let policy = Policy { verify_stable: Span::ZERO, bake: Span::from_secs(60), ..Policy::default() };
        let ledger = Ledger::local(SharedJournal::new(Journal::open(dir.path()).unwrap()));
        let as_clock: Arc<dyn Clock> = clock.clone();
        let core = Core::new(acting(policy), ledger, as_clock, &[]);
        Bench { dir, clock, core }
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn tick(&mut self, outcome: Outcome) -> Vec<Effect> {
        let firing = if outcome == Outcome::Monitor { vec![] } else { vec!["errors"] };
        let d = Decision {
            path: vec![Answer { ask: "Is error rate > 5%?".into(), yes: outcome != Outcome::Monitor }],
            firing: firing.iter().map(|r| RuleValue { rule: r.to_string(), value: Some(0.08) }).collect(),
            because: firing.iter().map(|r| r.to_string()).collect(),
            ..Decision::new(self.now(), "api", outcome)
        };
        // The version source is read on the same tick (an issue newer than its last reading
        // waits for the next one).
        let seen = self.core.status().version_seen;
        let mut effects = Vec::new();
        if let Some(v) = seen {
            self.core.on_version_observed(self.now(), &v).unwrap();
            effects = self.core.take_effects();
        }
        self.core.on_tick(self.now(), &[d]).unwrap();
        effects.extend(self.core.take_effects());
        effects
    }

    fn journalled(&self, event: &str) -> usize {
        let lines = Journal::read_back(&self.dir.path().join("journal.jsonl")).unwrap();
        lines.iter().filter(|l| l["event"] == event).count()
    }
}

fn started(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Start(s) => Some(s.rollback_id.clone()),
            _ => None,
        })
        .collect()
}

fn announced(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Announce { template, .. } => Some(template.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_rollback_decided_starts_its_steps_once_and_completes_on_quiet() {
    let mut b = Bench::new();
    b.core.acting.version_source = true;
    b.core.on_version_observed(b.now(), "v1").unwrap();
    b.core.take_effects();
    b.clock.advance(Span::from_secs(1));
    b.core.on_version_observed(b.now(), "v2").unwrap();
    let deploy = b.core.take_effects();
    assert!(
        deploy.iter().any(|e| matches!(e, Effect::RestartEvidence(r) if r.deployed.as_deref() == Some("v2"))),
        "a deploy restarts the evidence: {deploy:?}"
    );

    b.clock.advance(Span::from_secs(10));
    let effects = b.tick(Outcome::Rollback);
    assert_eq!(started(&effects), vec!["rb-1"], "one procedure started: {effects:?}");
    assert_eq!(b.journalled("rollback_started"), 1, "recorded before it is started");
    let lines = Journal::read_back(&b.dir.path().join("journal.jsonl")).unwrap();
    let rb = lines.iter().find(|l| l["event"] == "rollback_started").unwrap();
    assert_eq!(rb["reason"], "Error rate 8% above 5% (errors, payments)", "the issue is the rule's summary: {rb}");
    // The same decision on the next tick starts nothing more: a rollback is in flight.
    b.clock.advance(Span::from_secs(1));
    assert!(started(&b.tick(Outcome::Rollback)).is_empty());

    // The task's news: step 2 ran and was journalled; then its end.
    let step = StepEvent {
        rollback_id: "rb-1".into(),
        step: 2,
        action: "undo".into(),
        role: crate::act::event::Role::Run,
        ok: Some(true),
        detail: Some("exit 0".into()),
        output: None,
        duration_ms: Some(5),
    };
    b.core.on_news(ProcedureNews::Step { rollback_id: "rb-1".into(), step: 2, state: StepState::Done }).unwrap();
    b.core.on_news(ProcedureNews::Finished { at: b.now(), event: step }).unwrap();
    let status = b.core.status();
    let f = status.in_flight.expect("in flight");
    assert_eq!(f.steps[1].state, StepState::Done, "the step's state reached /status by the news");
    b.core.on_news(ProcedureNews::Done(ProcedureDone { rollback_id: "rb-1".into(), result: Ok(()) })).unwrap();
    let done = b.core.take_effects();
    assert!(done.iter().any(|e| matches!(e, Effect::RestartEvidence(_))), "the restore point restarts the evidence");
    assert!(done.iter().any(|e| matches!(e, Effect::ReadVersion)), "the restored version is read at once: {done:?}");
    assert_eq!(b.core.status().in_flight.map(|f| f.phase), Some(crate::act::inflight::Phase::Verifying));

    // Quiet: verified, completed, announced (the steps after the last run). The version source
    // still reads v2 (a rollout not finished): that is not said to be what was restored.
    b.clock.advance(Span::from_secs(5));
    let effects = b.tick(Outcome::Monitor);
    assert_eq!(announced(&effects), vec!["rollback_complete"]);
    let restored = effects.iter().find_map(|e| match e {
        Effect::Announce { vars, .. } => vars.get("version_to").cloned(),
        _ => None,
    });
    assert!(restored.as_deref().is_some_and(|r| r.contains("still reads v2")), "{restored:?}");
    assert_eq!(b.journalled("rollback_finished"), 1);
    let lines = Journal::read_back(&b.dir.path().join("journal.jsonl")).unwrap();
    let finished = lines.iter().find(|l| l["event"] == "rollback_finished").unwrap();
    assert!(finished["version_to"].is_null(), "v2 is not what was restored: {finished}");
    assert!(b.core.status().in_flight.is_none());

    // The version source still reads v2 (this bench saw no restore) and it is decided bad
    // again: it was rolled back already, and that is said once.
    let before = b.journalled("suppressed");
    b.clock.advance(Span::from_secs(5));
    let effects = b.tick(Outcome::Rollback);
    assert!(started(&effects).is_empty(), "not rolled back twice: {effects:?}");
    assert_eq!(b.journalled("suppressed"), before + 1);
    let lines = Journal::read_back(&b.dir.path().join("journal.jsonl")).unwrap();
    let last = lines.iter().rev().find(|l| l["event"] == "suppressed").unwrap();
    assert!(last["reason"].as_str().is_some_and(|r| r.contains("already rolled back by rb-1")), "{last}");
}

#[test]
fn nothing_is_acted_on_before_the_version_source_is_first_read() {
    let mut b = Bench::new();
    b.core.acting.version_source = true;
    b.clock.advance(Span::from_secs(10));
    let effects = b.tick(Outcome::Rollback);
    assert!(started(&effects).is_empty(), "the version is not known yet: {effects:?}");
    assert!(effects.iter().any(|e| matches!(e, Effect::Note { kind: "waiting_for_version", .. })), "{effects:?}");
    assert_eq!(effects.iter().filter(|e| matches!(e, Effect::ReadVersion)).count(), 1, "read at once: {effects:?}");
    // Asked once per wait: the next tick waits without asking again.
    b.clock.advance(Span(200));
    let effects = b.tick(Outcome::Rollback);
    assert!(!effects.iter().any(|e| matches!(e, Effect::ReadVersion | Effect::Evaluate)), "{effects:?}");
    // Read: evaluated again at once; the rollback is of that version (and a first sight of it
    // is no deploy since).
    b.core.on_version_observed(b.now(), "v1").unwrap();
    let effects = b.core.take_effects();
    assert!(effects.iter().any(|e| matches!(e, Effect::Evaluate)), "the wait is over: {effects:?}");
    b.core.on_version_observed(b.now(), "v1").unwrap();
    assert!(!b.core.take_effects().iter().any(|e| matches!(e, Effect::Evaluate)), "nothing waits any more");
    b.clock.advance(Span::from_secs(1));
    assert_eq!(started(&b.tick(Outcome::Rollback)), vec!["rb-1"]);
    let lines = Journal::read_back(&b.dir.path().join("journal.jsonl")).unwrap();
    let rb = lines.iter().find(|l| l["event"] == "rollback_started").unwrap();
    assert_eq!(rb["version_from"], "v1", "{rb}");
}

#[test]
fn a_pause_holds_every_rollback_until_it_expires() {
    let mut b = Bench::new();
    b.core.on_version_observed(b.now(), "v1").unwrap();
    b.clock.advance(Span::from_secs(1));
    b.core.on_version_observed(b.now(), "v2").unwrap();
    b.core.take_effects();
    let answer = b.core.command(Command::Pause { for_: Some(Span::from_secs(600)) }).unwrap();
    assert!(answer.is_ok_and(|a| a.starts_with("paused until")));

    b.clock.advance(Span::from_secs(10));
    assert!(started(&b.tick(Outcome::Rollback)).is_empty(), "paused: not started");
    assert_eq!(b.journalled("rollback_started"), 0);

    // Ten minutes on the manual clock: the pause ends by itself and the rollback starts.
    b.clock.advance(Span::from_secs(600));
    assert_eq!(started(&b.tick(Outcome::Rollback)), vec!["rb-1"]);
    assert_eq!(b.journalled("resumed"), 1);
}

#[test]
fn a_failed_step_ends_the_rollback_as_failed_and_escalates_s1() {
    let mut b = Bench::new();
    b.core.on_version_observed(b.now(), "v1").unwrap();
    b.clock.advance(Span::from_secs(1));
    b.core.on_version_observed(b.now(), "v2").unwrap();
    b.clock.advance(Span::from_secs(10));
    assert_eq!(started(&b.tick(Outcome::Rollback)), vec!["rb-1"]);
    let failure = crate::act::procedure::StepFailure { step: 2, action: "undo".into(), error: "exit 1".into() };
    b.core.on_news(ProcedureNews::Done(ProcedureDone { rollback_id: "rb-1".into(), result: Err(failure) })).unwrap();
    let effects = b.core.take_effects();
    assert_eq!(announced(&effects), vec!["rollback_failed", "escalation"]);
    assert!(!effects.iter().any(|e| matches!(e, Effect::RestartEvidence(_))), "nothing was restored");
    assert_eq!(b.journalled("escalation"), 1);
}

/// An "incident predates deploy" escalation in the journal since the current deploy is not told
/// again after a restart; one from before a later deploy, or about another version, is.
#[test]
fn a_restart_does_not_tell_again_that_an_incident_predates_the_deploy() {
    use serde_json::json;
    let escalation = |at: i64, version: &str| {
        json!({"at": at, "event": "escalation", "severity": "S2", "profile": "api", "rollback_id": null,
               "finding": format!("incident predates deploy of {version}: errors already firing before it"),
               "response": "r"})
    };
    let deploy = |at: i64, to: &str| json!({"at": at, "event": "deploy", "from": null, "to": to, "source": "hook"});
    let told = |lines: &[serde_json::Value]| Core::predates_told(&crate::act::state::State::restore(lines).0);
    let after = [deploy(100, "v2"), escalation(200, "v2")];
    assert_eq!(told(&after), ["api".to_string()].into());
    let other_version = [deploy(100, "v2"), escalation(200, "v1")];
    assert!(told(&other_version).is_empty());
    let redeployed = [deploy(100, "v2"), escalation(200, "v2"), deploy(300, "v2")];
    assert!(told(&redeployed).is_empty(), "a new deploy is judged anew");
}

/// A suppression told before a restart (or by the leader before a takeover: the same lines,
/// from the shared log) is not told again while its decision holds; once the decision clears
/// (journalled), a new one is.
#[test]
fn a_suppression_told_before_a_restart_is_not_told_again() {
    let mut b = Bench::new();
    b.core.on_version_observed(b.now(), "v1").unwrap();
    b.core.take_effects();
    b.core.command(Command::Pause { for_: Some(Span::from_secs(3_600)) }).unwrap().unwrap();
    b.clock.advance(Span::from_secs(10));
    assert_eq!(announced(&b.tick(Outcome::Rollback)), vec!["rollback_suppressed"]);
    assert_eq!(b.journalled("suppressed"), 1);

    let Bench { dir, clock, core } = b;
    drop(core);
    let lines = Journal::read_back(&dir.path().join("journal.jsonl")).unwrap();
    let ledger = Ledger::local(SharedJournal::new(Journal::open(dir.path()).unwrap()));
    let policy = Policy { verify_stable: Span::ZERO, bake: Span::from_secs(60), ..Policy::default() };
    let as_clock: Arc<dyn Clock> = clock.clone();
    let mut b = Bench { core: Core::new(acting(policy), ledger, as_clock, &lines), dir, clock };
    b.core.take_effects();
    b.clock.advance(Span::from_secs(10));
    assert!(announced(&b.tick(Outcome::Rollback)).is_empty(), "told before the restart");
    assert_eq!(b.journalled("suppressed"), 1);

    b.clock.advance(Span::from_secs(10));
    b.tick(Outcome::Monitor);
    assert_eq!(b.journalled("suppression_ended"), 1);
    b.clock.advance(Span::from_secs(10));
    assert_eq!(announced(&b.tick(Outcome::Rollback)), vec!["rollback_suppressed"], "a new suppression");
    assert_eq!(b.journalled("suppressed"), 2);
}

/// A version first seen after a start (or a takeover) that differs from the journal's is a
/// deploy at first sight, dated at the start of this watching: what was seen since may be the
/// new version's (a rule pending since then is not started again by the reading).
#[test]
fn a_first_sight_is_dated_at_the_start_of_the_watching() {
    let mut b = Bench::new();
    b.core.on_version_observed(b.now(), "v1").unwrap();
    b.core.take_effects();
    let Bench { dir, clock, core } = b;
    drop(core);
    clock.advance(Span::from_secs(60));
    let lines = Journal::read_back(&dir.path().join("journal.jsonl")).unwrap();
    let ledger = Ledger::local(SharedJournal::new(Journal::open(dir.path()).unwrap()));
    let policy = Policy { verify_stable: Span::ZERO, bake: Span::from_secs(60), ..Policy::default() };
    let as_clock: Arc<dyn Clock> = clock.clone();
    let started = clock.now();
    let mut b = Bench { core: Core::new(acting(policy), ledger, as_clock, &lines), dir, clock };
    b.core.take_effects();
    b.clock.advance(Span::from_secs(3));
    b.core.on_version_observed(b.now(), "v2").unwrap();
    let effects = b.core.take_effects();
    let restart = effects.iter().find_map(|e| match e {
        Effect::RestartEvidence(r) => Some(r.at),
        _ => None,
    });
    assert_eq!(restart, Some(started), "{effects:?}");
    let lines = Journal::read_back(&b.dir.path().join("journal.jsonl")).unwrap();
    let deploy = lines.iter().rfind(|l| l["event"] == "deploy").unwrap();
    assert_eq!((deploy["to"].as_str(), deploy["source"].as_str()), (Some("v2"), Some("first_sight")), "{deploy}");
    assert_eq!(deploy["seen_at"], b.now().0, "read 3 s after it is dated: {deploy}");
}

/// A decision acted on is about the version running now: a reading of the version source older
/// than a few seconds (a long hold: a pause, with the source on a long interval) is renewed
/// first — a fix deployed meanwhile is seen before anything is rolled back.
#[test]
fn a_decision_is_acted_on_only_with_a_recent_reading_of_the_version() {
    let mut b = Bench::new();
    b.core.acting.version_source = true;
    b.core.on_version_observed(b.now(), "v1").unwrap();
    b.clock.advance(Span::from_secs(1));
    b.core.on_version_observed(b.now(), "v2").unwrap();
    b.core.take_effects();
    b.clock.advance(Span::from_secs(30));
    let d = Decision {
        firing: vec![RuleValue { rule: "errors".into(), value: Some(0.08) }],
        ..Decision::new(b.now(), "api", Outcome::Rollback)
    };
    b.core.on_tick(b.now(), std::slice::from_ref(&d)).unwrap();
    let effects = b.core.take_effects();
    assert!(started(&effects).is_empty(), "acted on a reading 30 s old: {effects:?}");
    assert!(effects.iter().any(|e| matches!(e, Effect::ReadVersion)), "{effects:?}");
    // The reading says v3 (a fix): a deploy, and nothing of v2's is acted on.
    b.clock.advance(Span(5));
    b.core.on_version_observed(b.now(), "v3").unwrap();
    let effects = b.core.take_effects();
    assert!(effects.iter().any(|e| matches!(e, Effect::Evaluate)), "{effects:?}");
    assert_eq!(b.core.status().version.as_deref(), Some("v3"));
}
