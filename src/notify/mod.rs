//! Notifications: channels (`console`, `webhook`, `slack`, `email`), the message templates
//! ([`crate::template::messages`]), and the
//! [`Notifier`] that delivers them — one queue and worker per channel so messages of an incident
//! keep their order and never block an action, retries with exponential backoff (a Slack 429's
//! `Retry-After` wins), a fallback channel when one keeps failing, and every result journalled.
//! On Slack, one incident is one thread: later messages about the same approval or rollback
//! reply under the first.

pub mod email;
pub mod slack;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, mpsc};

use crate::config::acting::{ChannelSpec, ChannelSpecKind};
use crate::journal::SharedJournal;
use crate::secret::{Redactor, Secret};
pub use crate::template::messages::Templates;
use crate::template::{Escape, Vars};
use crate::time::{Clock, Span};

/// The longest `Retry-After` waited for: asked to wait longer, the message goes to the fallback
/// at once (a hostile or confused server cannot park an incident's messages).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Messages waiting per channel; beyond it the oldest is dropped (counted and journalled).
pub const QUEUE_CAP: usize = 256;

/// How long one delivery attempt may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a channel delivers.
#[derive(Debug)]
pub enum ChannelKind {
    /// Lines on rollwatch's standard output (or a test's receiver).
    Console,
    /// A JSON POST: `{"template", "text", "vars"}`.
    Webhook {
        url: String,
        bearer: Option<Secret>,
    },
    Slack(slack::SlackChannel),
    Email(email::EmailChannel),
}

/// A configured channel (`[channels.NAME]`).
#[derive(Debug)]
pub struct Channel {
    pub name: String,
    pub kind: ChannelKind,
    /// Tried when this channel has failed every attempt.
    pub fallback: Option<String>,
    /// Attempts per message (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubles each time.
    pub backoff: Span,
}

impl Channel {
    /// Builds every channel, or says every one that cannot be built.
    pub fn build_all(specs: &[ChannelSpec], env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<Channel>, Vec<String>> {
        let (built, errors): (Vec<_>, Vec<_>) = specs.iter().map(|s| Channel::build(s, env)).partition(Result::is_ok);
        if errors.is_empty() {
            Ok(built.into_iter().flatten().collect())
        } else {
            Err(errors.into_iter().filter_map(Result::err).collect())
        }
    }

    /// Builds the channel from its spec, reading its secrets through `env`; an unset variable
    /// is an error naming the channel and the variable, never a value.
    pub fn build(spec: &ChannelSpec, env: &dyn Fn(&str) -> Option<String>) -> Result<Channel, String> {
        let secret = |var: &str| {
            env(var)
                .map(Secret)
                .ok_or_else(|| format!("channel {:?}: environment variable {var} is not set", spec.name))
        };
        let kind = match &spec.kind {
            ChannelSpecKind::Console => ChannelKind::Console,
            ChannelSpecKind::Webhook { url, token_env } => {
                ChannelKind::Webhook { url: url.clone(), bearer: token_env.as_deref().map(secret).transpose()? }
            }
            ChannelSpecKind::Slack { channel, token_env, api_url } => {
                let token = secret(token_env)?;
                slack::SlackChannel::new(channel.clone(), &token, api_url.as_deref())
                    .map(ChannelKind::Slack)
                    .map_err(|e| format!("channel {:?}: {e}", spec.name))?
            }
            ChannelSpecKind::Email { smtp, security, from, to, user, password_env } => {
                let credentials = match (user, password_env) {
                    (Some(u), Some(p)) => Some((u.clone(), secret(p)?)),
                    _ => None,
                };
                email::EmailChannel::new(smtp, *security, from, to, credentials, Duration::from_secs(10))
                    .map(ChannelKind::Email)
                    .map_err(|e| format!("channel {:?}: {e}", spec.name))?
            }
        };
        Ok(Channel {
            name: spec.name.clone(),
            kind,
            fallback: spec.fallback.clone(),
            attempts: spec.attempts,
            backoff: spec.backoff,
        })
    }
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct SendFailure {
    pub message: String,
    /// The server said when to come back (Slack's 429 `Retry-After`).
    pub retry_after: Option<Duration>,
    /// Retrying cannot help (bad token, unknown channel, 5xx SMTP reply).
    pub permanent: bool,
}

impl SendFailure {
    pub fn transient(message: impl Into<String>) -> SendFailure {
        SendFailure { message: message.into(), retry_after: None, permanent: false }
    }
}

/// Why a message was not delivered anywhere.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NotifyError {
    #[error("no channel named {0:?}")]
    NoChannel(String),
    #[error(transparent)]
    Render(#[from] crate::template::messages::RenderError),
    #[error("channel {channel:?} failed after {attempts} attempt(s): {message}")]
    Failed { channel: String, attempts: u32, message: String },
}

/// Where console messages go.
#[derive(Debug, Clone)]
pub enum Console {
    Stdout,
    /// Each message as one string (the demo, tests).
    Sender(mpsc::UnboundedSender<String>),
}

/// A delivered message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    /// The channel that took it (the fallback's name when the first failed).
    pub channel: String,
    pub attempts: u32,
}

struct Job {
    template: String,
    vars: Vars,
}

struct Inner {
    channels: BTreeMap<String, Channel>,
    templates: Templates,
    client: reqwest::Client,
    console: Console,
    journal: Option<SharedJournal>,
    clock: Arc<dyn Clock>,
    pending: AtomicUsize,
    idle: Notify,
    /// Slack threads: (channel, incident) → the `ts` of the incident's first message.
    threads: std::sync::Mutex<BTreeMap<(String, String), String>>,
    /// Masks secrets in what channels answer (a Slack error body, an SMTP reply) before it is
    /// logged or journalled.
    redactor: std::sync::OnceLock<Redactor>,
    /// In a fleet: the deployment every message is about (each message says it first).
    deployment: std::sync::OnceLock<String>,
    /// Messages dropped from full queues.
    pub dropped: AtomicU64,
}

/// One channel's queue: bounded, oldest dropped first.
#[derive(Default)]
struct Queue {
    jobs: std::sync::Mutex<VecDeque<Job>>,
    ready: Notify,
}

impl Inner {
    fn redact(&self, text: &str) -> String {
        self.redactor.get().map_or_else(|| text.to_string(), |r| r.redact(text))
    }

    fn note(&self, event: &str, data: serde_json::Value) {
        if let Some(j) = &self.journal {
            j.note(self.clock.now(), event, &data);
        }
    }
}

/// Delivers templates to channels; cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
    queues: Arc<BTreeMap<String, Arc<Queue>>>,
    /// The channel workers, and what stops them.
    workers: tokio_util::task::TaskTracker,
    stop: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").field("channels", &self.inner.channels.keys().collect::<Vec<_>>()).finish()
    }
}

impl Notifier {
    /// Starts one worker per channel (call inside a tokio runtime).
    pub fn start(
        channels: Vec<Channel>,
        templates: Templates,
        client: reqwest::Client,
        console: Console,
        journal: Option<SharedJournal>,
        clock: Arc<dyn Clock>,
    ) -> Notifier {
        let inner = Arc::new(Inner {
            channels: channels.into_iter().map(|c| (c.name.clone(), c)).collect(),
            templates,
            client,
            console,
            journal,
            clock,
            pending: AtomicUsize::new(0),
            idle: Notify::new(),
            threads: std::sync::Mutex::default(),
            redactor: std::sync::OnceLock::new(),
            deployment: std::sync::OnceLock::new(),
            dropped: AtomicU64::new(0),
        });
        let mut queues = BTreeMap::new();
        let workers = tokio_util::task::TaskTracker::new();
        let stop = tokio_util::sync::CancellationToken::new();
        for name in inner.channels.keys() {
            let queue = Arc::new(Queue::default());
            queues.insert(name.clone(), queue.clone());
            let inner = inner.clone();
            let name = name.clone();
            let stop = stop.clone();
            workers.spawn(tracing::Instrument::in_current_span(async move {
                loop {
                    let next = queue.jobs.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                    let Some(job) = next else {
                        tokio::select! {
                            _ = queue.ready.notified() => continue,
                            _ = stop.cancelled() => return,
                        }
                    };
                    tokio::select! {
                        _ = deliver(&inner, &name, &job.template, &job.vars) => {}
                        _ = stop.cancelled() => {
                            tracing::error!(channel = %name, template = %job.template, "stopping: message not sent");
                            inner.note("notify_unsent", serde_json::json!({"channel": name, "template": job.template}));
                            return;
                        }
                    }
                    if inner.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
                        inner.idle.notify_waiters();
                    }
                }
            }));
        }
        workers.close();
        Notifier { inner, queues: Arc::new(queues), workers, stop }
    }

    /// Stops the channel workers and waits for them: queued messages are journalled as not
    /// sent ([`abandon`](Self::abandon)), one being delivered too.
    pub async fn stop(&self) {
        self.abandon();
        self.stop.cancel();
        self.workers.wait().await;
    }

    /// Masks these secrets in everything channels answer, from now on.
    pub fn redact_with(&self, redactor: Redactor) {
        let _ = self.inner.redactor.set(redactor);
    }

    /// Names the deployment every message is about (a fleet's): each message starts with
    /// `[NAME] `, and a webhook's `vars` carry `deployment`.
    pub fn name_deployment(&self, name: String) {
        let _ = self.inner.deployment.set(name);
    }

    /// Messages dropped from full queues so far.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::SeqCst)
    }

    /// Queues `template` for every channel and returns at once: notifications never block actions.
    /// A full queue drops its oldest message (counted and journalled as `notify_dropped`).
    pub fn announce(&self, template: &str, vars: &Vars) {
        let named;
        let vars = match self.inner.deployment.get() {
            Some(name) => {
                named = {
                    let mut v = vars.clone();
                    v.insert("deployment".into(), name.clone());
                    v
                };
                &named
            }
            None => vars,
        };
        for (name, queue) in self.queues.iter() {
            // A channel that is only someone's fallback still gets announcements: it is a channel.
            self.inner.pending.fetch_add(1, Ordering::SeqCst);
            let dropped = {
                let mut jobs = queue.jobs.lock().unwrap_or_else(|p| p.into_inner());
                jobs.push_back(Job { template: template.to_string(), vars: vars.clone() });
                if jobs.len() > QUEUE_CAP { jobs.pop_front() } else { None }
            };
            queue.ready.notify_one();
            if let Some(old) = dropped {
                self.inner.pending.fetch_sub(1, Ordering::SeqCst);
                self.inner.dropped.fetch_add(1, Ordering::SeqCst);
                tracing::error!(channel = %name, template = %old.template, "notification queue full: oldest message dropped");
                self.inner.note("notify_dropped", serde_json::json!({"channel": name, "template": old.template}));
            }
        }
    }

    /// Journals every message still queued as not sent (`notify_unsent`), and empties the
    /// queues: at stop, what was not delivered is on record.
    pub fn abandon(&self) {
        for (name, queue) in self.queues.iter() {
            let left: Vec<Job> = queue.jobs.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
            for job in left {
                self.inner.pending.fetch_sub(1, Ordering::SeqCst);
                tracing::error!(channel = %name, template = %job.template, "stopping: message not sent");
                self.inner.note("notify_unsent", serde_json::json!({"channel": name, "template": job.template}));
            }
        }
    }

    /// Sends now, with retries and fallback, and says how it went (`rollwatch notify`).
    pub async fn send(&self, channel: &str, template: &str, vars: &Vars) -> Result<Delivery, NotifyError> {
        deliver(&self.inner, channel, template, vars).await
    }

    /// Waits until every queued message has been delivered or given up, at most `limit`.
    pub async fn flush(&self, limit: Duration) {
        let wait = async {
            loop {
                let notified = self.inner.idle.notified();
                if self.inner.pending.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }
}

/// Delivers to `first`, then along its fallback chain (each channel once), journalling each result.
async fn deliver(inner: &Inner, first: &str, template: &str, vars: &Vars) -> Result<Delivery, NotifyError> {
    let mut tried: Vec<&str> = Vec::new();
    let mut name = first;
    loop {
        let channel = inner.channels.get(name).ok_or_else(|| NotifyError::NoChannel(name.to_string()))?;
        tried.push(&channel.name);
        let result = try_channel(inner, channel, template, vars).await;
        let now = inner.clock.now();
        match &result {
            Ok(attempts) => {
                tracing::info!(channel = %channel.name, template, attempts, "notification sent");
                if let Some(j) = &inner.journal {
                    // A fallback's delivery says whose message it carried.
                    let fallback_for = (channel.name != first).then_some(first);
                    j.note(now, "notified", &serde_json::json!({"channel": channel.name, "template": template, "attempts": attempts, "rollback_id": id_of(vars, "rollback_id"), "fallback_for": fallback_for}));
                }
                return Ok(Delivery { channel: channel.name.clone(), attempts: *attempts });
            }
            Err(e) => {
                tracing::warn!(channel = %channel.name, template, error = %e, "notification failed");
                if let Some(j) = &inner.journal {
                    j.note(
                        now,
                        "notify_failed",
                        &serde_json::json!({"channel": channel.name, "template": template, "error": e.to_string(), "rollback_id": id_of(vars, "rollback_id")}),
                    );
                }
                match &channel.fallback {
                    Some(next) if !tried.contains(&next.as_str()) => name = next,
                    _ => return Err(e.clone()),
                }
            }
        }
    }
}

/// Up to `attempts` tries with doubling backoff; a `Retry-After` replaces the backoff once.
async fn try_channel(inner: &Inner, channel: &Channel, template: &str, vars: &Vars) -> Result<u32, NotifyError> {
    // Every channel's text is for people: a value's control characters show as escapes.
    let escape = match channel.kind {
        ChannelKind::Slack(_) => Escape::Slack,
        ChannelKind::Console | ChannelKind::Webhook { .. } | ChannelKind::Email(_) => Escape::Text,
    };
    let mut text = inner.templates.render(template, vars, escape)?;
    if let Some(name) = inner.deployment.get() {
        // Deployment names are letters, digits, `-`, `_` and `.`: nothing to escape.
        text = format!("[{name}] {text}");
    }
    let attempts = channel.attempts.max(1);
    let mut backoff = channel.backoff.as_std();
    let mut last = SendFailure::transient("not tried");
    for attempt in 1..=attempts {
        match send_once(inner, channel, template, &text, vars).await {
            Ok(()) => return Ok(attempt),
            Err(f) => {
                let f = SendFailure { message: inner.redact(&f.message), ..f };
                tracing::debug!(channel = %channel.name, attempt, error = %f.message, "notification attempt failed");
                // Asked to wait longer than MAX_RETRY_AFTER: the fallback takes the message now.
                let parked = f.retry_after.is_some_and(|d| d > MAX_RETRY_AFTER);
                let permanent = f.permanent || parked;
                let wait = f.retry_after.unwrap_or(backoff);
                last = f;
                if parked {
                    last.message = format!(
                        "{} (asked to retry after {:?}; not waiting)",
                        last.message,
                        last.retry_after.unwrap_or_default()
                    );
                }
                if permanent || attempt == attempts {
                    return Err(NotifyError::Failed {
                        channel: channel.name.clone(),
                        attempts: attempt,
                        message: last.message,
                    });
                }
                tokio::time::sleep(wait).await;
                backoff = backoff.saturating_mul(2);
            }
        }
    }
    Err(NotifyError::Failed { channel: channel.name.clone(), attempts, message: last.message })
}

/// What a message is about: the approval that started it, else the rollback (their messages
/// form one thread).
fn incident(vars: &Vars) -> Option<&str> {
    id_of(vars, "approval_id").or_else(|| id_of(vars, "rollback_id"))
}

/// An id the message carries (`rb-3`, `ap-1`); none when it reads `unknown` or `none` (a message
/// about no rollback): journalled as null, never as a rollback called "unknown".
fn id_of<'a>(vars: &'a Vars, key: &str) -> Option<&'a str> {
    vars.get(key).map(String::as_str).filter(|v| !matches!(*v, "unknown" | "none" | ""))
}

async fn send_once(
    inner: &Inner,
    channel: &Channel,
    template: &str,
    text: &str,
    vars: &Vars,
) -> Result<(), SendFailure> {
    match &channel.kind {
        ChannelKind::Console => {
            match &inner.console {
                Console::Stdout => println!("[{}] {text}", channel.name),
                Console::Sender(tx) => {
                    let _ = tx.send(text.to_string());
                }
            }
            Ok(())
        }
        ChannelKind::Webhook { url, bearer } => {
            // Values not known (yet) are left out rather than sent as "unknown".
            let known: Vars =
                vars.iter().filter(|(_, v)| v.as_str() != "unknown").map(|(k, v)| (k.clone(), v.clone())).collect();
            let body = serde_json::json!({ "template": template, "text": text, "vars": known });
            let mut req = inner.client.post(url).timeout(ATTEMPT_TIMEOUT).json(&body);
            if let Some(token) = bearer {
                req = req.bearer_auth(&token.0);
            }
            let resp = req.send().await.map_err(|e| SendFailure::transient(crate::error_chain(&e)))?;
            let status = resp.status();
            if status.is_success() {
                return Ok(());
            }
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let permanent = status.is_client_error() && status.as_u16() != 429 && status.as_u16() != 408;
            Err(SendFailure { message: format!("HTTP {}", status.as_u16()), retry_after, permanent })
        }
        ChannelKind::Slack(s) => {
            let key = incident(vars).map(|i| (channel.name.clone(), i.to_string()));
            let thread = key.as_ref().and_then(|k| inner.threads.lock().ok().and_then(|t| t.get(k).cloned()));
            let ts = s.post(text, thread.as_deref(), ATTEMPT_TIMEOUT).await?;
            if let (Some(k), None) = (key, thread)
                && let Ok(mut t) = inner.threads.lock()
            {
                t.insert(k, ts);
            }
            Ok(())
        }
        ChannelKind::Email(e) => e.send(text).await,
    }
}
