//! Fuzz target: see `walvault::fuzzing::sealed_object` for the property it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walvault::fuzzing::sealed_object(data));
