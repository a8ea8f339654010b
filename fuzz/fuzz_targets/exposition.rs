//! Fuzz the exposition parser: any bytes must parse without panicking, every sample it returns
//! must have a valid metric name, and the owned and borrowed paths must agree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollwatch::source::exposition::{parse, parse_each};

fuzz_target!(|data: &[u8]| {
    let owned = parse(data);
    let mut borrowed = 0;
    let (bad, _) = parse_each(data, |_| borrowed += 1);
    assert_eq!(owned.samples.len(), borrowed);
    assert_eq!(owned.bad_lines, bad);
    for s in &owned.samples {
        assert!(!s.key.name.is_empty());
    }
});
