//! Seal and open throughput of the sealed-object format on real WAL.
//!
//! Inputs are two 1 MiB segments captured from PostgreSQL 15 (benches/data):
//! `pgbench -i` (bulk load, blank filler: compresses ~35x) and `pgbench -N`
//! (small updates: ~3x). Each is sealed whole (one object, as a segment is),
//! at zstd levels 1 and 3, with and without AES-256-GCM. They are not
//! repeated to a larger size: zstd would find the repeats and overstate the
//! ratio.

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use walvault::format::{Compression, Keyring, MasterKey, SealOptions, open, seal};

fn wal_sample(name: &str) -> Bytes {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches/data")
        .join(name);
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn bench_seal_open(c: &mut Criterion) {
    let key = MasterKey::from_hex(&"5a".repeat(32)).unwrap();
    let keyring = Keyring::single(MasterKey::from_hex(&"5a".repeat(32)).unwrap());
    let none = Keyring::none();
    for (label, file) in [
        ("pgbench-init", "wal-pgbench-init.bin"),
        ("pgbench-tpcb", "wal-pgbench-tpcb.bin"),
    ] {
        let wal = wal_sample(file);
        let mut seal_group = c.benchmark_group(format!("seal/{label}"));
        seal_group.throughput(Throughput::Bytes(wal.len() as u64));
        seal_group.sample_size(10);
        let mut open_group_inputs = Vec::new();
        for level in [1, 3] {
            for encrypt in [false, true] {
                let opts = SealOptions {
                    compression: Compression::Zstd { level },
                    ..SealOptions::default()
                };
                let id = format!("zstd{level}{}", if encrypt { "+aes" } else { "" });
                let k = encrypt.then_some(&key);
                seal_group.bench_function(BenchmarkId::from_parameter(&id), |b| {
                    b.iter_batched(
                        || vec![wal.clone()],
                        |pieces| seal(&pieces, &opts, k, [7; 16]),
                        BatchSize::SmallInput,
                    )
                });
                let sealed = seal(std::slice::from_ref(&wal), &opts, k, [7; 16]);
                eprintln!(
                    "{label} {id}: ratio {:.1}x",
                    wal.len() as f64 / sealed.len() as f64
                );
                open_group_inputs.push((id, encrypt, sealed));
            }
        }
        seal_group.finish();
        let mut open_group = c.benchmark_group(format!("open/{label}"));
        open_group.throughput(Throughput::Bytes(wal.len() as u64));
        open_group.sample_size(10);
        for (id, encrypt, sealed) in &open_group_inputs {
            let ring = if *encrypt { &keyring } else { &none };
            open_group.bench_function(BenchmarkId::from_parameter(id), |b| {
                b.iter(|| open(sealed, ring).unwrap())
            });
        }
        open_group.finish();
    }
}

criterion_group!(benches, bench_seal_open);
criterion_main!(benches);
