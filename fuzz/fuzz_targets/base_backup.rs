//! Fuzz target: see `walvault::fuzzing::base_backup` for the property it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walvault::fuzzing::base_backup(data));
