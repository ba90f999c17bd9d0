//! Fuzz target: see `walvault::fuzzing::replication_message` for the property it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walvault::fuzzing::replication_message(data));
