//! Replays every input the fuzzers have kept (`fuzz/corpus/<target>/`)
//! through the same property functions the cargo-fuzz targets run, so an
//! ordinary `cargo test` on stable Rust checks every input found so far.
//! A missing or empty corpus fails the test: nothing is skipped silently.

use std::path::{Path, PathBuf};

/// Runs `property` on every file of `fuzz/corpus/<target>/` and reports how
/// many inputs it replayed.
fn replay(target: &str, property: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "corpus {} is missing ({e}); it is committed with the repository",
            dir.display()
        )
    });
    let mut inputs: Vec<PathBuf> = entries
        .map(|entry| entry.expect("read corpus directory").path())
        .filter(|path| path.is_file())
        .collect();
    inputs.sort();
    assert!(
        !inputs.is_empty(),
        "corpus {} is empty; it is committed with the repository",
        dir.display()
    );
    for path in &inputs {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Name the input before running it, so a failure says which one.
        let result = std::panic::catch_unwind(|| property(&data));
        if let Err(cause) = result {
            panic!(
                "{target}: input {} fails: {}",
                path.display(),
                cause
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| cause.downcast_ref::<&str>().copied())
                    .unwrap_or("panic")
            );
        }
    }
    println!("{target}: replayed {} corpus inputs", inputs.len());
}

#[test]
fn replication_message() {
    replay(
        "replication_message",
        walvault::fuzzing::replication_message,
    );
}

#[test]
fn sealed_object() {
    replay("sealed_object", walvault::fuzzing::sealed_object);
}

#[test]
fn tar_stream() {
    replay("tar_stream", walvault::fuzzing::tar_stream);
}

#[test]
fn connection_string() {
    replay("connection_string", walvault::fuzzing::connection_string);
}

#[test]
fn stored_documents() {
    replay("stored_documents", walvault::fuzzing::stored_documents);
}

#[test]
fn base_backup() {
    replay("base_backup", walvault::fuzzing::base_backup);
}
