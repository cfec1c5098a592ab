//! Fuzz target `ops`: every input byte picks one action of the model checker's alphabet
//! (`type1_modeltest::decode`); the actions run on the simulated default machine under the
//! `seed` flush policy, and any violation of the simulator's invariant checker (or an engine
//! panic) is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(v) = type1_modeltest::run_bytes(data) {
        panic!("violation: {v}");
    }
});
