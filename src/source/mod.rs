//! Sources: what the poller reads. So far the pure part — [`exposition`], the Prometheus text
//! format parser. The pollers (health, prometheus, promql, tcp, alertmanager) come with the live
//! sidecar.

pub mod exposition;
