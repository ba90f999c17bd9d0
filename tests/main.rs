//! Integration tests: one binary, modules per area, real PostgreSQL 14-18
//! servers and real object stores on loopback.
//!
//! Where a behaviour is tested: one file per command, and the files named
//! after a promise for what crosses commands.
//!
//! | behaviour | file |
//! |---|---|
//! | `stream`: byte-exact segments, the data-loss window, restarts, outages, timeline switches, synchronous mode | `stream.rs` |
//! | `backup` and `verify`: tablespaces, backups beside the sidecar, interrupted backups, damage named | `backup.rs` |
//! | `restore` and `wal-fetch`: every target kind, timelines, prefetch, `--start` | `restore.rs` |
//! | `pg_rewind --restore-target-wal` with `wal-fetch --exact` after a failover | `rewind.rs` |
//! | `wal-push` as `archive_command`: alone, beside a stopped sidecar, refusals | `wal_push.rs` |
//! | `pg_upgrade` 16 to 18: refused until `record-upgrade`, both systems' backups listed, restorable and counted | `upgrade.rs` |
//! | `expire` and `keep`: what a policy keeps stays restorable | `retention.rs` |
//! | `check`: one finding per part, healthy and broken | `check.rs` |
//! | `mark` and `info`: restore points before a migration | `mark.rs` |
//! | the audit trail: every change recorded, `log`, forged records refused | `audit.rs` |
//! | `drill`: restore tests recorded in the repository | `drill.rs` |
//! | `key add`, `key list`, `key retire`: rotation end to end | `keys.rs` |
//! | `/metrics`, `/health`, webhook notifications | `metrics.rs` |
//! | the command line: exit codes and messages for bad input | `cli.rs` |
//! | the mistakes users make (no key, typos, a second sidecar, no credentials, signals): caught early, by name, nothing left behind | `mistakes.rs` |
//! | the configuration file and its precedence | `config_file.rs` |
//! | `copy`: the repository in another place, restorable alone, resumed after a kill | `copy.rs` |
//! | the replication connection: TLS, authentication, server errors | `protocol.rs` |
//! | every store kind on a real server (s3s-fs, moto, Azurite, fake-gcs-server, local) | `stores.rs` |
//! | objects moved, swapped, forged or truncated in the bucket: refused by name | `attack.rs` |
//! | one key, two clusters: another repository's objects copied or re-sealed here are refused | `identity.rs` |
//! | the checks inside sealed objects, reached with the key: part CRCs, the server's manifest | `inner_checks.rs` |
//! | a store that fails or stalls, a server killed mid-operation | `faults.rs` |
//! | one writer per WAL object: backups beside the sidecar, WAL offered twice with other bytes | `writers.rs` |
//! | every kept fuzz input replayed through its property | `fuzz_corpus.rs` |

mod support;

mod attack;
mod audit;
mod backup;
mod check;
mod cli;
mod config_file;
mod copy;
mod drill;
mod faults;
mod fuzz_corpus;
mod identity;
mod inner_checks;
mod keys;
mod mark;
mod metrics;
mod mistakes;
mod protocol;
mod restore;
mod retention;
mod rewind;
mod stores;
mod stream;
mod upgrade;
mod wal_push;
mod writers;
