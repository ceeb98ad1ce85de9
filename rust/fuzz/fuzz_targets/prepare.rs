//! Any bytes through normalise → parse → lint → fix-up and every view
//! accessor; the checks are `gateway_core::invariants::check_prepare`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gateway_core::invariants::check_prepare(data));
