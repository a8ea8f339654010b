//! Fuzz the Alertmanager webhook payload: any body parses or is refused with a message, never
//! panics; every parsed alert names itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollwatch::source::alertmanager::parse;

fuzz_target!(|data: &[u8]| {
    if let Ok(updates) = parse(data) {
        for u in updates {
            assert!(!u.key.label("alertname").is_empty());
        }
    }
});
