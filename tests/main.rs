//! Integration tests: one binary, modules per area, real PostgreSQL 14-18
//! servers and a real S3 server on loopback.

mod support;

mod backup;
mod cli;
mod fuzz_corpus;
mod protocol;
mod restore;
mod stream;
