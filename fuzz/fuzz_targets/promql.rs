//! Fuzz the PromQL instant-query response reader: any body reads or errors, never panics, and
//! no NaN is a silent zero.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollwatch::source::promql::read;

fuzz_target!(|data: &[u8]| {
    let _ = read(data, "target");
});
