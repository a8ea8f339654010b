//! Acting on decisions. [`template`] fills values into actions and messages, [`action`] runs
//! `exec`/`http`/`file` steps ([`process`] ends what an exec step left running), [`policy`] holds the rules of engagement, [`event`] is what the
//! journal records and [`state`] what it rebuilds, [`versions`] the version model (deploys,
//! baking, the rollback target), [`gate`] whether a rollback may start (pure), [`procedure`] runs
//! one rollback's steps, [`verify`] decides whether it worked (pure), [`approvals`] and
//! [`commands`] answer people, [`vars`] fills messages, [`rollback`] carries one rollback from
//! start to end, [`escalate`] tells people what went wrong, [`dispatch`] routes, [`ledger`]
//! records (fenced by the leadership when replicas share a log in etcd), [`standby`] leads or
//! follows among replicas, and [`history`]
//! reads rollbacks back.

pub mod action;
pub mod approvals;
pub mod commands;
pub mod core;
pub mod dispatch;
pub mod effect;
pub mod escalate;
pub mod event;
pub mod executor;
pub mod gate;
pub mod history;
pub mod inflight;
pub mod leadership;
pub mod ledger;
pub mod plan;
pub mod procedure;
pub mod process;
pub mod report;
pub mod rollback;
pub mod standby;
pub mod state;
pub mod vars;
pub mod verify;
pub mod versions;

pub use crate::config::policy::{Mode, Policy};
pub use crate::time::{human, iso};
pub use commands::{Command, CommandRequest};
pub use dispatch::{Acted, Dispatcher};
pub use effect::Restart;
pub use plan::{Acting, Plan};
