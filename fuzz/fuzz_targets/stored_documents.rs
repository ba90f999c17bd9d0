//! Fuzz target: see `walvault::fuzzing::stored_documents` for the property it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walvault::fuzzing::stored_documents(data));
