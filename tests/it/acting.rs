//! The dispatcher under its policy, driven tick by tick on a manual clock with real actions
//! (argv programs writing to a log) and a real journal: procedures, single flight, idempotency,
//! cooldown, the loop guard, dry runs, approvals (granted, stale, expired, automatic), pause,
//! silences, verification and every escalation, explicit target versions, and restarts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rollwatch::act::action::{Action, ActionKind};
use rollwatch::act::procedure::ProcedureNews;
use rollwatch::act::{Acting, Command, Dispatcher, Mode, Plan, Policy, Restart};
use rollwatch::config::procedures::Step;
use rollwatch::journal::{Journal, SharedJournal};
use rollwatch::notify::{Channel, ChannelKind, Console, Notifier, Templates};
use rollwatch::rules::tree::Answer;
use rollwatch::rules::{Decision, Outcome, RuleValue};
use rollwatch::time::{Clock, ManualClock, Span, Timestamp};
use serde_json::Value;
use tokio::sync::mpsc;

const PROFILE: &str = "api";
const START: i64 = 1_800_000_000_000;

struct Harness {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    d: Dispatcher,
    /// Where the evidence starts, as the dispatcher's start found it in the journal.
    started_at: Option<Restart>,
    done: mpsc::UnboundedReceiver<ProcedureNews>,
    console: mpsc::UnboundedReceiver<String>,
    policy: Policy,
    actions: BTreeMap<String, Action>,
    plan: Plan,
}

fn sh(script: &str, args: &[&str]) -> ActionKind {
    let mut argv = vec!["/bin/sh".to_string(), "-c".to_string(), script.to_string(), "sh".to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    ActionKind::Exec { argv, env: BTreeMap::new(), secret_env: vec![] }
}

impl Harness {
    /// A profile whose rollback announces, runs `undo` verified by `check`, then announces
    /// completion; each action appends a line to `runs.log`.
    fn new(policy: Policy) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("runs.log").display().to_string();
        let append = "echo \"$1\" >> \"$2\"";
        let mut actions = BTreeMap::new();
        for (name, line) in [("undo", "undo {{version_from}}"), ("check", "check")] {
            actions.insert(
                name.to_string(),
                Action { name: name.into(), kind: sh(append, &[line, &log]), timeout: Span::from_secs(10) },
            );
        }
        let procedures = BTreeMap::from([
            (
                "rollback".to_string(),
                vec![
                    Step::Announce { template: "rollback_in_progress".into(), levels: vec![] },
                    Step::Run { action: "undo".into(), verify: Some("check".into()), levels: vec![] },
                    Step::Announce { template: "rollback_complete".into(), levels: vec![] },
                ],
            ),
            (
                "consider".to_string(),
                vec![Step::Announce { template: "rollback_approval_needed".into(), levels: vec![] }],
            ),
        ]);
        let plan = Plan {
            procedures,
            consider_auto_after: None,
            rules: vec!["errors".into(), "down".into()],
            labels: BTreeMap::new(),
            reads: vec![("errors".into(), vec!["signal:error_rate".into()]), ("down".into(), vec!["up".into()])],
            environment: vec![],
            summaries: BTreeMap::new(),
        };
        let clock = Arc::new(ManualClock::starting_at(Timestamp(START)));
        let (d, done, console, started_at) = start(dir.path(), &clock, &policy, &actions, &plan);
        Harness { dir, clock, d, started_at, done, console, policy, actions, plan }
    }

    /// The undo names its explicit target: `undo FROM to TARGET`.
    fn with_target_undo(mut self) -> Harness {
        let log = self.dir.path().join("runs.log").display().to_string();
        let kind = sh("echo \"$1\" >> \"$2\"", &["undo {{version_from}} to {{target_version}}", &log]);
        self.actions.insert("undo".into(), Action { name: "undo".into(), kind, timeout: Span::from_secs(10) });
        self.restart();
        self
    }

    /// A new dispatcher on the same journal, as after a crash.
    fn restart(&mut self) {
        let (d, done, console, started_at) =
            start(self.dir.path(), &self.clock, &self.policy, &self.actions, &self.plan);
        (self.d, self.done, self.console, self.started_at) = (d, done, console, started_at);
    }

    /// The dispatcher as one of several replicas (`[ha]`): its acting log is shared through a
    /// coordinator (whose etcd, a closed port, is never reached here: a replica that does not
    /// lead writes nothing to it).
    fn replica(mut self) -> Harness {
        let spec = rollwatch::config::deploy::HaSpec::plain(
            vec!["http://127.0.0.1:1".into()],
            "/rollwatch/test",
            Span::from_secs(10),
            Some("a"),
        );
        let clock: Arc<dyn Clock> = self.clock.clone();
        let coordinator = rollwatch::coord::Coordinator::new(
            &spec,
            "127.0.0.1:9464".parse().unwrap(),
            &|_| None,
            clock,
            Box::new(|lines, _| lines),
        )
        .unwrap();
        let (d, done, console, started_at) = start_with(
            self.dir.path(),
            &self.clock,
            &self.policy,
            &self.actions,
            &self.plan,
            Some(Arc::new(coordinator)),
        );
        (self.d, self.done, self.console, self.started_at) = (d, done, console, started_at);
        self
    }

    fn advance(&self, span: Span) {
        self.clock.advance(span);
    }

    fn tick(&mut self, outcome: Outcome, firing: &[&str], version: Option<&str>) {
        self.tick_with(outcome, firing, &[], version);
    }

    /// A tick whose decision also names rules with unknown inputs.
    fn tick_with(&mut self, outcome: Outcome, firing: &[&str], unknown: &[&str], version: Option<&str>) {
        let d = Decision {
            path: vec![Answer { ask: "Is error rate > 5%?".into(), yes: outcome != Outcome::Monitor }],
            firing: firing.iter().map(|r| RuleValue { rule: r.to_string(), value: Some(0.08) }).collect(),
            unknown: unknown.iter().map(|r| r.to_string()).collect(),
            ..Decision::new(self.clock.now(), PROFILE, outcome)
        };
        if let Some(v) = version {
            self.d.on_version_observed(self.clock.now(), v).result().unwrap();
        }
        self.d.on_tick(self.clock.now(), &[d]).result().unwrap();
    }

    /// Hands the procedure task's news to the dispatcher until the task ends.
    async fn steps_done(&mut self) {
        loop {
            let news = tokio::time::timeout(Duration::from_secs(20), self.done.recv()).await.expect("procedure ended");
            let news = news.expect("the procedure task reports its end");
            let done = matches!(news, ProcedureNews::Done(_));
            self.d.on_news(news).result().unwrap();
            if done {
                break;
            }
        }
    }

    /// The dispatcher has no procedure in flight and no task running one: what a tick starts is
    /// in flight as soon as the tick returns, so nothing needs waiting for to show it did not.
    fn nothing_in_flight(&self) {
        let status = self.d.status();
        assert!(status.in_flight.is_none() && !self.d.steps_running(), "a procedure was started: {status:?}");
    }

    fn runs(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("runs.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn events(&self, kind: &str) -> Vec<Value> {
        Journal::read_back(&self.dir.path().join("journal.jsonl"))
            .unwrap()
            .into_iter()
            .filter(|v| v["event"] == kind)
            .collect()
    }

    /// Every console message so far, once the notifier has drained its queue.
    async fn messages(&mut self) -> Vec<String> {
        self.d.notifier().flush(Duration::from_secs(10)).await;
        let mut out = vec![];
        while let Ok(m) = self.console.try_recv() {
            out.push(m);
        }
        out
    }

    fn command(&mut self, cmd: Command) -> Result<String, String> {
        self.d.command(cmd).result().unwrap()
    }
}

type Started = (Dispatcher, mpsc::UnboundedReceiver<ProcedureNews>, mpsc::UnboundedReceiver<String>, Option<Restart>);

fn start(
    dir: &std::path::Path,
    clock: &Arc<ManualClock>,
    policy: &Policy,
    actions: &BTreeMap<String, Action>,
    plan: &Plan,
) -> Started {
    start_with(dir, clock, policy, actions, plan, None)
}

fn start_with(
    dir: &std::path::Path,
    clock: &Arc<ManualClock>,
    policy: &Policy,
    actions: &BTreeMap<String, Action>,
    plan: &Plan,
    coordinator: Option<Arc<rollwatch::coord::Coordinator>>,
) -> Started {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let journal = SharedJournal::new(Journal::open(dir).unwrap());
    let lines = Journal::read_back(&dir.join("journal.jsonl")).unwrap();
    let (tx, console) = mpsc::unbounded_channel();
    let clock: Arc<dyn Clock> = clock.clone();
    let channel =
        Channel { name: "console".into(), kind: ChannelKind::Console, fallback: None, attempts: 1, backoff: Span(10) };
    let client = reqwest::Client::new();
    let notifier = Notifier::start(
        vec![channel],
        Templates::default(),
        client.clone(),
        Console::Sender(tx),
        Some(journal.clone()),
        clock.clone(),
    );
    let acting = Acting {
        policy: policy.clone(),
        actions: Arc::new(actions.clone()),
        plans: BTreeMap::from([(PROFILE.to_string(), plan.clone())]),
        redactor: rollwatch::secret::Redactor::new(["tok-S3CRET".to_string()]),
        config_path: dir.join("rollwatch.toml"),
        deployment: None,
        version_source: false,
    };
    let ledger = match coordinator {
        Some(c) => rollwatch::act::ledger::Ledger::shared(journal, c, &lines),
        None => rollwatch::act::ledger::Ledger::local(journal),
    };
    let (d, done, started_at) = Dispatcher::new(acting, notifier, ledger, client, clock, &lines).unwrap();
    (d, done, console, started_at)
}

/// Where the evidence restarts comes back with the input that decided it, for its caller to
/// apply at once: the first version seen, a new version seen (a deploy while watching: what was
/// firing then predates it, and a recording writes the version), the restore point at the end of
/// the steps, and at a start the journalled deploy. An input that decides none returns none — no
/// mailbox keeps an older one for later.
#[tokio::test]
async fn evidence_restarts_come_back_with_the_input_that_decided_them() {
    let mut h = Harness::new(quick_policy());
    assert_eq!(h.started_at, None, "a first start: no deploy known");
    let t0 = h.clock.now();
    let first = h.d.on_version_observed(t0, "v1");
    assert_eq!(first.restart, Some(Restart { at: t0, predates: false, deployed: None }));
    first.result.unwrap();
    h.advance(Span::from_secs(60));
    let same = h.d.on_version_observed(h.clock.now(), "v1");
    assert_eq!(same.restart, None, "the same version again is no deploy");
    h.tick(Outcome::Monitor, &[], None);
    h.advance(Span::from_secs(5));
    let deploy = h.d.on_version_observed(h.clock.now(), "v2");
    // Dated just after the last reading of v1.
    let v2_at = Timestamp(t0.0 + 60_000 + 1);
    assert_eq!(deploy.restart, Some(Restart { at: v2_at, predates: true, deployed: Some("v2".into()) }));
    deploy.result.unwrap();
    h.advance(Span::from_secs(60));
    let tick = h.d.on_tick(h.clock.now(), &[]);
    assert_eq!(tick.restart, None);
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    let restore_point = loop {
        let news = tokio::time::timeout(Duration::from_secs(20), h.done.recv()).await.expect("procedure ended");
        let done = matches!(news, Some(ProcedureNews::Done(_)));
        let acted = h.d.on_news(news.expect("the procedure task reports its end"));
        acted.result.unwrap();
        if done {
            break acted.restart;
        }
        assert_eq!(acted.restart, None, "a step's news moves no evidence");
    };
    assert_eq!(restore_point, Some(Restart { at: h.clock.now(), predates: false, deployed: None }));
    assert_eq!(h.runs(), vec!["undo v2", "check"]);
    h.restart();
    assert_eq!(h.started_at, Some(Restart { at: v2_at, predates: false, deployed: None }), "the journalled deploy");
}

fn quick_policy() -> Policy {
    Policy {
        cooldown: Span::from_secs(600),
        verify_for: Span::from_secs(120),
        slow_rollback: Span::from_secs(900),
        blind_after: Span::from_secs(300),
        approval_timeout: Span::from_secs(1800),
        // Quiet once is enough here; the sustained check has tests of its own.
        verify_stable: Span::ZERO,
        bake: Span::from_secs(60),
        ..Policy::default()
    }
}

#[tokio::test]
async fn a_rollback_runs_its_steps_verifies_and_completes_once() {
    let mut h = Harness::new(quick_policy()).with_target_undo();
    h.tick(Outcome::Monitor, &[], Some("v1"));
    h.advance(Span::from_secs(60));
    h.tick(Outcome::Monitor, &[], Some("v1"));
    assert_eq!(h.events("version_baked")[0]["version"], "v1", "v1 ran clean for bake: good");
    h.tick(Outcome::Monitor, &[], Some("v2"));
    h.advance(Span::from_secs(60));
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    h.steps_done().await;
    // The explicit target is the last version that ran healthy.
    assert_eq!(h.runs(), vec!["undo v2 to v1", "check"]);
    assert_eq!(h.d.status().in_flight.as_ref().map(|f| f.phase), Some(rollwatch::act::dispatch::Phase::Verifying));
    // Each step's progress, as /status shows it.
    let steps = serde_json::to_value(&h.d.status().in_flight.unwrap().steps).unwrap();
    let states: Vec<(&str, &str)> =
        steps.as_array().unwrap().iter().map(|s| (s["what"].as_str().unwrap(), s["state"].as_str().unwrap())).collect();
    assert_eq!(states, vec![("announce rollback_in_progress", "done"), ("run undo (verify check)", "done")]);
    // Still firing: not verified yet, and no second rollback while one is in flight.
    h.advance(Span::from_secs(15));
    h.tick(Outcome::Rollback, &["errors"], Some("v1"));
    assert_eq!(h.runs().len(), 2);
    h.advance(Span::from_secs(15));
    h.tick(Outcome::Monitor, &[], Some("v1"));
    assert!(h.d.status().in_flight.is_none());
    let finished = h.events("rollback_finished");
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0]["result"], "completed");
    assert_eq!(finished[0]["duration_ms"], 30_000);
    assert_eq!(finished[0]["version_to"], "v1");
    let messages = h.messages().await;
    assert!(messages[0].starts_with("🔄 ROLLBACK IN PROGRESS"), "{messages:?}");
    assert!(messages[1].starts_with("✅ ROLLBACK COMPLETE"), "{messages:?}");
    assert!(messages[1].contains("Duration: 30s") && messages[1].contains("restored: v1"), "{messages:?}");
    // Steps were journalled started and finished, with the action's result.
    let steps = h.events("step_finished");
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0]["action"], "undo");
    assert_eq!(steps[0]["detail"], "exit status 0");
    assert_eq!(h.events("step_started").len(), 2);
}

#[tokio::test]
async fn the_same_version_is_never_rolled_back_twice_and_cooldown_holds_the_next() {
    let mut h = Harness::new(quick_policy());
    h.tick(Outcome::Monitor, &[], Some("v1"));
    h.tick(Outcome::Monitor, &[], Some("v2"));
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    h.steps_done().await;
    h.tick(Outcome::Monitor, &[], Some("v2"));
    assert_eq!(h.events("rollback_finished")[0]["result"], "completed");
    // The version did not change (the undo did nothing): the key is spent.
    h.advance(Span::from_secs(3600));
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    assert_eq!(h.events("rollback_started").len(), 1);
    let suppressed = h.events("suppressed");
    assert!(
        suppressed[0]["reason"].as_str().unwrap().contains("version v2 was already rolled back by rb-1"),
        "{suppressed:?}"
    );
    // A new version inside the cooldown is held back too, then acted on after it.
    let mut h = Harness::new(quick_policy());
    h.tick(Outcome::Rollback, &["errors"], Some("v3"));
    h.steps_done().await;
    h.tick(Outcome::Monitor, &[], Some("v2"));
    h.advance(Span::from_secs(60));
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    assert_eq!(h.events("rollback_started").len(), 1);
    assert!(h.events("suppressed").last().unwrap()["reason"].as_str().unwrap().starts_with("cooldown after rb-1"));
    h.advance(Span::from_secs(600));
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    assert_eq!(h.events("rollback_started").len(), 2);
}

#[tokio::test]
async fn the_loop_guard_stops_acting_and_pages_s1() {
    let policy =
        Policy { cooldown: Span::ZERO, max_rollbacks: 2, max_rollbacks_per: Span::from_secs(3600), ..quick_policy() };
    let mut h = Harness::new(policy);
    for v in ["v5", "v4"] {
        h.tick(Outcome::Rollback, &["errors"], Some(v));
        h.steps_done().await;
        h.tick(Outcome::Monitor, &[], Some(v));
        h.advance(Span::from_secs(60));
    }
    h.tick(Outcome::Rollback, &["errors"], Some("v3"));
    h.tick(Outcome::Rollback, &["errors"], Some("v3"));
    assert_eq!(h.events("rollback_started").len(), 2);
    let escalations = h.events("escalation");
    assert_eq!(escalations.len(), 1, "paged once: {escalations:?}");
    assert_eq!(escalations[0]["severity"], "S1");
    assert!(escalations[0]["finding"].as_str().unwrap().contains("loop guard: 2 rollbacks"));
    let messages = h.messages().await;
    assert!(messages.iter().any(|m| m.starts_with("🚨 S1: loop guard")), "{messages:?}");
    // Once the period has passed, acting resumes.
    h.advance(Span::from_secs(3600));
    h.tick(Outcome::Rollback, &["errors"], Some("v3"));
    assert_eq!(h.events("rollback_started").len(), 3);
}

#[tokio::test]
async fn dry_run_journals_what_would_run_and_runs_nothing() {
    let mut h = Harness::new(Policy { mode: Mode::DryRun, ..quick_policy() });
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    let dry = h.events("dry_run");
    assert_eq!(dry.len(), 1);
    assert_eq!(
        dry[0]["would_run"],
        serde_json::json!(["announce rollback_in_progress", "run undo (verify check)", "announce rollback_complete"])
    );
    assert!(h.events("rollback_started").is_empty());
    // Nothing was started: a procedure is in flight from the tick that starts it on.
    h.nothing_in_flight();
    assert!(h.runs().is_empty());
    assert!(h.messages().await.is_empty());
}

#[tokio::test]
async fn approve_mode_waits_for_a_person_and_refuses_a_stale_approval() {
    let mut h = Harness::new(Policy { mode: Mode::Approve, ..quick_policy() });
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    let opened = h.events("approval_opened");
    assert_eq!(opened.len(), 1, "one approval per profile and version");
    let id = opened[0]["approval_id"].as_str().unwrap().to_string();
    let messages = h.messages().await;
    assert!(
        messages[0].contains("ROLLBACK APPROVAL NEEDED")
            && messages[0].contains(&format!("rollwatch approve -c {}/rollwatch.toml {id}", h.dir.path().display())),
        "{messages:?}"
    );
    assert!(h.runs().is_empty());
    assert!(
        h.command(Command::Approve { id: "ap-99".into(), by: "alice".into() })
            .unwrap_err()
            .contains("no open approval")
    );
    let answer = h.command(Command::Approve { id: id.clone(), by: "alice".into() }).unwrap();
    assert!(answer.contains("rollback rb-"), "{answer}");
    h.steps_done().await;
    assert_eq!(h.runs().len(), 2);
    assert_eq!(h.events("approval_closed")[0]["how"], "granted");
    assert_eq!(h.events("approval_closed")[0]["by"], "alice");

    // An approval belongs to its version: a deploy closes it, and answering it does nothing.
    let mut h = Harness::new(Policy { mode: Mode::Approve, ..quick_policy() });
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    let id = h.events("approval_opened")[0]["approval_id"].as_str().unwrap().to_string();
    h.tick(Outcome::Monitor, &[], Some("v3"));
    assert_eq!(h.events("approval_closed")[0]["how"], "superseded");
    let refused = h.command(Command::Approve { id, by: "alice".into() }).unwrap_err();
    assert!(refused.contains("is closed (superseded"), "{refused}");
    assert!(h.events("rollback_started").is_empty());
}

#[tokio::test]
async fn consider_opens_an_approval_that_expires_or_acts_after_consider_auto_after() {
    let mut h = Harness::new(quick_policy());
    h.tick(Outcome::Consider, &["errors"], Some("v2"));
    assert_eq!(h.events("approval_opened").len(), 1);
    h.advance(Span::from_secs(1800));
    h.tick(Outcome::Monitor, &[], Some("v2"));
    assert_eq!(h.events("approval_closed")[0]["how"], "expired");
    assert!(h.events("rollback_started").is_empty());

    let mut h = Harness::new(quick_policy());
    h.plan.consider_auto_after = Some(Span::from_secs(300));
    h.restart();
    h.tick(Outcome::Consider, &["errors"], Some("v2"));
    h.advance(Span::from_secs(299));
    h.tick(Outcome::Consider, &["errors"], Some("v2"));
    assert!(h.events("rollback_started").is_empty());
    h.advance(Span::from_secs(1));
    h.tick(Outcome::Consider, &["errors"], Some("v2"));
    assert_eq!(h.events("rollback_started").len(), 1);
    assert_eq!(h.events("approval_closed")[0]["how"], "auto");
    h.steps_done().await;
}

#[tokio::test]
async fn pause_and_silences_suppress_acting_but_decisions_are_journalled() {
    let mut h = Harness::new(quick_policy());
    let paused = h.command(Command::Pause { for_: Some(Span::from_secs(600)) }).unwrap();
    assert!(paused.starts_with("paused until"), "{paused}");
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    assert!(h.events("rollback_started").is_empty());
    assert!(h.events("suppressed")[0]["reason"].as_str().unwrap().starts_with("paused until"));
    // The pause survives a restart, then expires by itself.
    h.restart();
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    assert!(h.events("rollback_started").is_empty());
    h.advance(Span::from_secs(600));
    h.tick(Outcome::Monitor, &[], Some("v2"));
    assert_eq!(h.events("resumed").len(), 1);

    let err = h.command(Command::Silence { rule: "erors".into(), for_: Span::from_secs(60) }).unwrap_err();
    assert!(err.contains("did you mean errors?"), "{err}");
    h.command(Command::Silence { rule: "errors".into(), for_: Span::from_secs(60) }).unwrap();
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    assert!(h.events("rollback_started").is_empty());
    let reason = h.events("suppressed").last().unwrap()["reason"].as_str().unwrap().to_string();
    assert!(reason.starts_with("silenced: errors until 20"), "with its expiry: {reason}");
    // A rule that is not silenced still acts.
    h.tick(Outcome::Rollback, &["errors", "down"], Some("v2"));
    assert_eq!(h.events("rollback_started").len(), 1);
    h.steps_done().await;
    assert_eq!(h.events("decision").len(), 0, "decisions are the engine's to journal");
}

#[tokio::test]
async fn an_issue_that_persists_past_verify_for_is_s2() {
    let mut h = Harness::new(quick_policy());
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    h.steps_done().await;
    h.advance(Span::from_secs(119));
    h.tick(Outcome::Rollback, &["errors"], Some("v1"));
    assert!(h.events("rollback_finished").is_empty());
    h.advance(Span::from_secs(1));
    h.tick(Outcome::Rollback, &["errors"], Some("v1"));
    assert_eq!(h.events("rollback_finished")[0]["result"], "issue_persists");
    let e = &h.events("escalation")[0];
    assert_eq!(e["severity"], "S2");
    assert!(e["finding"].as_str().unwrap().contains("rollback succeeded but issue persists: errors not quiet"), "{e}");
    let messages = h.messages().await;
    assert!(messages.iter().any(|m| m.starts_with("🚨 S2")), "{messages:?}");
    assert!(!messages.iter().any(|m| m.contains("ROLLBACK COMPLETE")), "{messages:?}");
}

#[tokio::test]
async fn a_failed_step_is_s1_and_stops_the_procedure() {
    let mut h = Harness::new(quick_policy());
    h.actions.insert(
        "undo".into(),
        Action { name: "undo".into(), kind: sh("echo boom >&2; exit 3", &[]), timeout: Span::from_secs(10) },
    );
    h.restart();
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    h.steps_done().await;
    assert!(h.runs().is_empty(), "check must not run after a failed undo");
    let finished = &h.events("rollback_finished")[0];
    assert_eq!(finished["result"], "failed");
    assert!(finished["error"].as_str().unwrap().contains("exit status 3"));
    let step = &h.events("step_finished")[0];
    assert_eq!(step["ok"], false);
    assert_eq!(step["output"], "boom\n");
    assert_eq!(h.events("escalation")[0]["severity"], "S1");
    let messages = h.messages().await;
    assert!(
        messages.iter().any(|m| m.starts_with("❌ ROLLBACK FAILED") && m.contains("exit status 3")),
        "{messages:?}"
    );
}

#[tokio::test]
async fn a_slow_rollback_is_s3_and_an_unknown_target_version_is_said_once_never_started() {
    let mut h = Harness::new(quick_policy()).with_target_undo();
    // No version seen before v2: the undo names {{target_version}}, which is unknown — known
    // before anything starts: said once (suppressed, S1), however often it is decided.
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    h.advance(Span::from_secs(3600));
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    assert!(h.events("rollback_started").is_empty());
    let suppressed = h.events("suppressed");
    assert_eq!(suppressed.len(), 1, "{suppressed:?}");
    assert!(suppressed[0]["reason"].as_str().unwrap().contains("no good version other than v2"), "{suppressed:?}");
    let s1: Vec<Value> = h.events("escalation").into_iter().filter(|e| e["severity"] == "S1").collect();
    assert_eq!(s1.len(), 1, "{s1:?}");
    assert!(h.runs().is_empty());

    let mut h = Harness::new(quick_policy());
    h.tick(Outcome::Monitor, &[], Some("v1"));
    h.tick(Outcome::Monitor, &[], Some("v2"));
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    h.steps_done().await;
    h.advance(Span::from_secs(901));
    // Still verifying after 15 minutes (verify_for is longer here).
    h.policy.verify_for = Span::from_secs(3600);
    h.tick(Outcome::Rollback, &["errors"], Some("v1"));
    let escalations = h.events("escalation");
    assert!(
        escalations.iter().any(|e| e["severity"] == "S3" && e["finding"].as_str().unwrap().contains("longer than 15m")),
        "{escalations:?}"
    );
}

/// A rollback decision about an issue that began after the version source's last poll waits
/// for the next poll (told once); that poll reads v2, whose deploy is dated just after the last
/// reading of v1 (and says when it was seen) — and the rollback is v2's, to v1.
#[tokio::test]
async fn a_decision_newer_than_the_version_poll_waits_for_it_and_the_deploy_is_dated_back() {
    let mut h = Harness::new(quick_policy()).with_target_undo();
    h.tick(Outcome::Monitor, &[], Some("v1"));
    h.advance(Span::from_secs(60));
    h.tick(Outcome::Monitor, &[], Some("v1"));
    let last_v1 = h.clock.now();
    // v2 went out; its errors are evaluated before the version source is read again.
    h.advance(Span::from_secs(3));
    h.tick(Outcome::Rollback, &["errors"], None);
    h.advance(Span::from_secs(1));
    h.tick(Outcome::Rollback, &["errors"], None);
    assert!(h.events("rollback_started").is_empty(), "no rollback of v1 for v2's errors");
    // A note: written by the journal's thread, without waiting.
    let path = h.dir.path().join("journal.jsonl");
    crate::common::wait_for_journal(&path, "the wait told", |e| {
        !crate::common::of_kind(e, "waiting_for_version").is_empty()
    })
    .await;
    assert_eq!(h.events("waiting_for_version").len(), 1, "told once");
    h.advance(Span::from_secs(1));
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    let deploy = h.events("deploy").into_iter().rfind(|d| d["to"] == "v2").unwrap();
    assert_eq!(deploy["at"], last_v1.0 + 1, "dated just after v1's last reading: {deploy}");
    assert_eq!(deploy["seen_at"], h.clock.now().0, "{deploy}");
    h.steps_done().await;
    assert_eq!(h.runs(), vec!["undo v2 to v1", "check"]);
}

/// Among replicas: one that does not lead acts on nothing and refuses commands, saying why;
/// etcd trouble is told on the channel once, reminded every 15 minutes while it lasts, and its
/// end is told.
#[tokio::test]
async fn a_replica_that_does_not_lead_acts_on_nothing_and_etcd_trouble_is_told_then_reminded() {
    use rollwatch::coord::{Leader, Update};
    let mut h = Harness::new(quick_policy()).replica();
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    assert!(h.events("rollback_started").is_empty() && h.runs().is_empty(), "a follower acts on nothing");
    let refused = h.command(Command::Pause { for_: None }).unwrap_err();
    assert!(refused.contains("waiting for the election on etcd"), "{refused}");

    h.d.on_coord(Update::Unreachable { error: "etcd unreachable: connection refused".into(), tell: true })
        .result()
        .unwrap();
    let told = h.messages().await;
    assert_eq!(told.len(), 1, "{told:?}");
    assert!(told[0].contains("S1: no replica acts: etcd unreachable: connection refused"), "{told:?}");
    h.advance(Span::from_secs(9 * 60));
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    let wanted = h.messages().await;
    assert!(wanted.len() == 1 && wanted[0].contains("rollback wanted for"), "a rollback wanted is told: {wanted:?}");
    h.advance(Span::from_secs(60));
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    assert!(h.messages().await.is_empty(), "not again within 15 minutes");
    h.advance(Span::from_secs(6 * 60));
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    let reminded = h.messages().await;
    assert!(reminded.len() == 1 && reminded[0].contains("no replica acts for 16m"), "{reminded:?}");

    let leader = Leader { replica: "b".into(), address: "http://10.0.0.6:9464".into() };
    h.d.on_coord(Update::Follow { leader: Some(leader), not_standing: None }).result().unwrap();
    let back = h.messages().await;
    assert!(back.iter().any(|m| m.contains("etcd reachable again after 16m")), "{back:?}");
    let refused = h.command(Command::Resume).unwrap_err();
    assert!(refused.contains("b leads (at http://10.0.0.6:9464)"), "{refused}");
    assert!(h.events("rollback_started").is_empty() && h.runs().is_empty());
}

#[tokio::test]
async fn blindness_longer_than_blind_after_is_notified_once() {
    let mut h = Harness::new(quick_policy());
    let blind = |h: &mut Harness| h.tick_with(Outcome::Monitor, &[], &["errors", "down"], Some("v1"));
    blind(&mut h);
    h.advance(Span::from_secs(299));
    blind(&mut h);
    assert!(h.events("blind").is_empty());
    h.advance(Span::from_secs(1));
    blind(&mut h);
    h.advance(Span::from_secs(60));
    blind(&mut h);
    assert_eq!(h.events("blind").len(), 1);
    let messages = h.messages().await;
    assert!(messages.iter().any(|m| m.contains("is BLIND") && m.contains("5m 0s")), "{messages:?}");
    h.tick(Outcome::Monitor, &[], Some("v1"));
    assert_eq!(h.events("sighted").len(), 1);
}

#[tokio::test]
async fn a_restart_reports_an_unfinished_rollback_and_never_reruns_it() {
    let mut h = Harness::new(quick_policy()).with_target_undo();
    h.tick(Outcome::Monitor, &[], Some("v1"));
    h.advance(Span::from_secs(60));
    h.tick(Outcome::Monitor, &[], Some("v1"));
    h.tick(Outcome::Monitor, &[], Some("v2"));
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    h.steps_done().await;
    // The process dies while verifying: the rollback has no `rollback_finished`.
    h.restart();
    let finished = h.events("rollback_finished");
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0]["result"], "interrupted");
    assert!(finished[0]["error"].as_str().unwrap().contains("after step 1 (\"check\") finished"), "{finished:?}");
    assert_eq!(h.events("escalation")[0]["severity"], "S1");
    // The same decision after the restart does not run anything again.
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    h.nothing_in_flight();
    assert_eq!(h.runs(), vec!["undo v2 to v1", "check"]);
    assert_eq!(h.events("rollback_started").len(), 1);
    // A second restart does not report it again.
    h.restart();
    assert_eq!(h.events("rollback_finished").len(), 1);
    let history = rollwatch::act::history::read(&h.dir.path().join("journal.jsonl")).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].version_from.as_deref(), Some("v2"));
    assert_eq!(history[0].result, "interrupted");
}

#[tokio::test]
async fn hostile_label_and_version_values_never_run_as_code() {
    let hostile = "$(touch /tmp/pwned); echo pwned";
    let _ = std::fs::remove_file("/tmp/pwned");
    let mut h = Harness::new(quick_policy());
    h.plan.labels =
        BTreeMap::from([("errors".to_string(), BTreeMap::from([("team".to_string(), hostile.to_string())]))]);
    let log = h.dir.path().join("runs.log").display().to_string();
    // Through a shell as positional parameters, and as a program's direct argument.
    let kind = sh("printf '%s|%s\\n' \"$1\" \"$2\" >> \"$3\"", &["{{labels.team}}", "{{version_from}}", &log]);
    h.actions.insert("undo".into(), Action { name: "undo".into(), kind, timeout: Span::from_secs(10) });
    let echo = ActionKind::Exec {
        argv: vec!["/bin/echo".into(), "{{labels.team}}".into(), "{{labels.absent}}".into()],
        env: BTreeMap::new(),
        secret_env: vec![],
    };
    h.actions.insert("check".into(), Action { name: "check".into(), kind: echo, timeout: Span::from_secs(10) });
    h.restart();
    h.tick(Outcome::Rollback, &["errors"], Some(hostile));
    h.steps_done().await;
    assert_eq!(h.runs(), vec![format!("{hostile}|{hostile}")]);
    let steps = h.events("step_finished");
    assert_eq!(steps[1]["output"], format!("{hostile} \n"));
    assert!(!std::path::Path::new("/tmp/pwned").exists(), "a template value ran as shell code");
}

#[tokio::test]
async fn an_http_action_sends_its_templated_request_and_checks_the_status() {
    use axum::routing::post;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(String, String, String)>::new()));
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/deploy/{version}",
        post(
            move |axum::extract::Path(v): axum::extract::Path<String>, headers: axum::http::HeaderMap, body: String| {
                let s = s.clone();
                async move {
                    let h = headers.get("x-reason").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    s.lock().unwrap().push((v, h, body));
                    axum::http::StatusCode::ACCEPTED
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let _ = rustls::crypto::ring::default_provider().install_default();
    let action = |expect: Vec<u16>| Action {
        name: "undo".into(),
        kind: ActionKind::Http {
            method: reqwest::Method::POST,
            url: format!("http://{addr}/deploy/{{{{version_from}}}}"),
            headers: vec![("x-reason".into(), "{{rollback_id}}".into())],
            bearer: None,
            body: Some(r#"{"version":"{{version_from}}","id":"{{rollback_id}}"}"#.into()),
            expect_status: expect,
        },
        timeout: Span::from_secs(10),
    };
    let vars = rollwatch::template::Vars::from([
        ("version_from".to_string(), "v2\" /x?y".to_string()),
        ("rollback_id".to_string(), "rb-9".to_string()),
    ]);
    let client = reqwest::Client::new();
    let r = action(vec![202]).run(&vars, &client).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.detail, "HTTP 202");
    let (path_version, header, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(path_version, "v2\" /x?y", "one URL component, decoded back whole");
    assert_eq!(header, "rb-9");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["version"], "v2\" /x?y");
    let r = action(vec![200]).run(&vars, &client).await;
    assert!(!r.ok, "202 is not the expected 200: {r:?}");
}

/// Every shipped profile has an example config binding its procedure, and every rollback level
/// its decision tree can choose runs at least one action, announced before and after.
#[test]
fn every_runbook_profile_has_a_procedure_for_each_level_it_decides() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seen = vec![];
    for example in ["rollwatch", "mace", "mycelia", "piforge", "mdm"] {
        let rollwatch::rules::deployment::Deployment { config, evaluator: ev, procedures } =
            rollwatch::rules::deployment::load(&root.join(format!("examples/{example}.toml")))
                .unwrap_or_else(|e| panic!("{example}: {e}"));
        assert!(!config.acting.actions.is_empty());
        for p in &ev.profiles {
            seen.push(p.name.clone());
            let steps = &procedures[&p.name]["rollback"];
            let mut levels: Vec<Option<String>> =
                p.tree.questions.iter().filter(|q| q.then == Outcome::Rollback).map(|q| q.level.clone()).collect();
            levels.dedup();
            for level in levels {
                let chosen: Vec<&Step> = steps
                    .iter()
                    .filter(|s| {
                        let l = match s {
                            Step::Announce { levels, .. } | Step::Run { levels, .. } => levels,
                        };
                        l.is_empty() || level.as_ref().is_some_and(|x| l.contains(x))
                    })
                    .collect();
                let runs = chosen.iter().filter(|s| matches!(s, Step::Run { .. })).count();
                assert!(runs >= 1, "{}: level {level:?} runs nothing", p.name);
                assert!(
                    matches!(chosen.first(), Some(Step::Announce { template, .. }) if template == "rollback_in_progress")
                );
                assert!(
                    matches!(chosen.last(), Some(Step::Announce { template, .. }) if template == "rollback_complete")
                );
            }
        }
    }
    seen.sort();
    assert_eq!(seen, vec!["mace", "mdm", "mycelia", "piforge", "solvereign"]);
}

#[tokio::test]
async fn a_rule_can_choose_the_level_when_the_decision_does_not() {
    let mut h = Harness::new(quick_policy());
    let log = h.dir.path().join("runs.log").display().to_string();
    let full = sh("echo \"$1\" >> \"$2\"", &["full {{level}}", &log]);
    h.actions.insert("full".into(), Action { name: "full".into(), kind: full, timeout: Span::from_secs(10) });
    let steps = h.plan.procedures.get_mut("rollback").unwrap();
    steps.insert(2, Step::Run { action: "full".into(), verify: None, levels: vec!["full".into()] });
    h.plan.labels = BTreeMap::from([("down".to_string(), BTreeMap::from([("level".to_string(), "full".to_string())]))]);
    h.restart();
    // "errors" carries no level: the full-level step is skipped.
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    h.steps_done().await;
    assert_eq!(h.runs(), vec!["undo v2", "check"]);
    h.tick(Outcome::Monitor, &[], Some("v3"));
    h.advance(Span::from_secs(3600));
    // "down" says level = "full".
    h.tick(Outcome::Rollback, &["down"], Some("v3"));
    h.steps_done().await;
    assert_eq!(h.runs()[2..], ["undo v3", "check", "full full"]);
    assert_eq!(h.events("rollback_started")[1]["level"], "full");
}

#[tokio::test]
async fn a_triggering_rule_with_unknown_inputs_does_not_verify_a_rollback() {
    let mut h = Harness::new(quick_policy());
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    h.steps_done().await;
    let unseen = |h: &mut Harness| h.tick_with(Outcome::Monitor, &[], &["errors"], Some("v1"));
    // Not firing, but not seen either: still verifying.
    unseen(&mut h);
    assert!(h.events("rollback_finished").is_empty());
    h.advance(Span::from_secs(120));
    unseen(&mut h);
    let finished = &h.events("rollback_finished")[0];
    assert_eq!(finished["result"], "unverified");
    let e = &h.events("escalation")[0];
    assert_eq!(e["severity"], "S2");
    assert!(e["finding"].as_str().unwrap().contains("could not be verified: errors unknown for 2m"), "{e}");
}

#[tokio::test]
async fn secrets_an_action_prints_are_masked_before_the_journal() {
    let mut h = Harness::new(quick_policy());
    let kind = sh("echo \"token=$1\"; echo \"bad $1\" >&2; exit 1", &["tok-S3CRET"]);
    h.actions.insert("undo".into(), Action { name: "undo".into(), kind, timeout: Span::from_secs(10) });
    h.restart();
    h.tick(Outcome::Rollback, &["errors"], Some("v2"));
    h.steps_done().await;
    let step = &h.events("step_finished")[0];
    assert_eq!(step["output"], "token=***\nbad ***\n");
    let text = std::fs::read_to_string(h.dir.path().join("journal.jsonl")).unwrap();
    assert!(!text.contains("tok-S3CRET"), "{text}");
}

#[tokio::test]
async fn a_silence_matches_the_rules_the_deciding_question_read() {
    let mut h = Harness::new(quick_policy());
    h.command(Command::Silence { rule: "errors".into(), for_: Span::from_secs(600) }).unwrap();
    // "down" fires too, but the question that chose rollback read only "errors".
    let d = Decision {
        path: vec![Answer { ask: "Is error rate > 5%?".into(), yes: true }],
        firing: ["errors", "down"].iter().map(|r| RuleValue { rule: r.to_string(), value: Some(1.0) }).collect(),
        because: vec!["errors".into()],
        ..Decision::new(h.clock.now(), PROFILE, Outcome::Rollback)
    };
    h.d.on_version_observed(h.clock.now(), "v2").result().unwrap();
    h.d.on_tick(h.clock.now(), &[d]).result().unwrap();
    assert!(h.events("rollback_started").is_empty());
    let reason = h.events("suppressed")[0]["reason"].as_str().unwrap().to_string();
    assert!(reason.starts_with("silenced: errors until "), "{reason}");
}

#[tokio::test]
async fn a_reported_deploy_bakes_only_once_the_version_source_confirms_it_and_a_typo_is_never_marked() {
    use rollwatch::act::event::{DeploySource, Mark};
    let mut h = Harness::new(quick_policy());
    h.tick(Outcome::Monitor, &[], Some("v1"));
    // The pipeline reports v2; the version source still reads v1: v2 has not run here.
    let answer = h.command(Command::Deployed { version: "v2".into(), source: DeploySource::Hook }).unwrap();
    assert!(answer.contains("deploy of v2 recorded"), "{answer}");
    for _ in 0..3 {
        h.advance(Span::from_secs(60));
        h.tick(Outcome::Monitor, &[], Some("v1"));
    }
    assert!(h.events("version_baked").is_empty(), "baked on another version's traffic");
    // Once seen, it bakes.
    h.tick(Outcome::Monitor, &[], Some("v2"));
    h.advance(Span::from_secs(60));
    h.tick(Outcome::Monitor, &[], Some("v2"));
    assert_eq!(h.events("version_baked")[0]["version"], "v2");
    // A version never deployed here cannot be marked (a typo must not become a target).
    let refused = h
        .command(Command::Mark { version: "v22".into(), state: Mark::Good, by: "ann".into(), reason: "r".into() })
        .unwrap_err();
    assert!(refused.contains("no deploy of \"v22\" is recorded (did you mean v2?)"), "{refused}");
    assert!(h.events("version_marked").is_empty());
}
