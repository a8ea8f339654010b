//! Fuzz the fixture series notation: any text expands or errors, never panics, and never
//! expands past the sample limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollwatch::fixture::notation::{MAX_SAMPLES, expand};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(entries) = expand(text)
    {
        assert!(entries.len() <= MAX_SAMPLES);
    }
});
