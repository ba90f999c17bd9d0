//! Integration tests: one binary, modules per area, real PostgreSQL 14-18
//! servers and real object stores on loopback.

mod support;

mod attack;
mod backup;
mod cli;
mod config_file;
mod faults;
mod fuzz_corpus;
mod operations;
mod protocol;
mod restore;
mod retention;
mod stores;
mod stream;
