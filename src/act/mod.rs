//! Acting on decisions: [`template`] fills values into actions and messages, [`action`] runs
//! `exec`/`http`/`file` steps, [`policy`] holds the rules of engagement, [`state`] is what the
//! journal remembers, [`procedure`] runs one rollback's steps, [`dispatch`] turns decisions into
//! procedures (approvals, verification, escalation) and [`history`] reads rollbacks back.

pub mod action;
pub mod dispatch;
pub mod history;
pub mod policy;
pub mod procedure;
pub mod state;
pub mod template;

pub use dispatch::{Acting, Command, CommandRequest, Dispatcher, Plan};
pub use policy::{Mode, Policy};
