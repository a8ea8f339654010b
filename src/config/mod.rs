//! Loading files: [`raw`] holds the serde structs as written, [`diag`] the positioned errors,
//! [`profile`] reads profiles, [`deploy`] reads and checks `rollwatch.toml` and [`acting`] its
//! policy, actions, channels and templates.

pub mod acting;
pub mod deploy;
pub mod diag;
pub mod profile;
pub mod raw;

pub use diag::{Checker, Diagnostic, Diagnostics, SourceFile, did_you_mean};
pub use profile::LoadedProfile;
