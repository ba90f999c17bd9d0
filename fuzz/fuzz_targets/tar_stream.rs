//! Fuzz target: see `walvault::fuzzing::tar_stream` for the property it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walvault::fuzzing::tar_stream(data));
