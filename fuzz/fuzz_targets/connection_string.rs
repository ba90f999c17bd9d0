//! Fuzz target: see `walvault::fuzzing::connection_string` for the property it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walvault::fuzzing::connection_string(data));
