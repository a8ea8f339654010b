//! The integration suites, one test binary (one link of the crate, shared helpers in
//! [`common`]): real servers on loopback, the real binary, Debian's Prometheus, Alertmanager,
//! etcd and aiosmtpd. Run a suite with `cargo test --test it SUITE::`, e.g. `cargo test --test it crash::`.

mod common;

mod acting;
mod browser;
mod cli;
mod clients;
mod clock;
mod commands;
mod crash;
mod data_quality;
mod demo;
mod end_to_end;
mod endpoints;
mod fleet;
mod fleet_ha;
mod ha;
mod ha_faults;
mod hostile;
mod judge;
mod layers;
mod notify;
mod peers;
mod record;
mod run;
mod secrets;
mod slo;
mod sources;
mod steps;
mod text;
mod trial2;
mod versions;
mod windows;
