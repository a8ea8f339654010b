//! Loading files into specs: [`raw`] holds the serde structs as written, [`profile`] reads
//! profiles, [`deploy`] reads and checks `rollwatch.toml`, [`fleet`] a
//! `rollwatch.toml` of several deployments, [`acting`] its actions, channels and
//! templates and [`policy`] its `[policy]`. Errors are placed with [`crate::diag`]. Nothing here
//! builds a runtime object: components build themselves from these specs.

pub mod acting;
pub mod deploy;
pub mod fleet;
pub mod outcome;
pub mod policy;
pub mod procedures;
pub mod profile;
pub mod raw;

pub use profile::LoadedProfile;
