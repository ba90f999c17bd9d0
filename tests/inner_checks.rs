//! The checks inside a sealed object, reached by holding the key: parts
//! re-sealed with other content, and tar streams changed with `backup.json`
//! made to match, as only a key holder could. Restore and `verify` each
//! refuse by name, and a refused restore leaves nothing behind.

use bytes::Bytes;
use walvault::storage::layout;

use crate::attack::{Archive, archive};

/// The main directory's tar stream of backup `id`, and its part size.
async fn base_stream(a: &Archive, id: &str) -> (Vec<u8>, usize) {
    let mut stream = Vec::new();
    let mut part_size = 0;
    for i in 0.. {
        let Some(part) = a
            .repo
            .get_opened(&layout::backup_part_key(id, "base", i))
            .await
            .unwrap()
        else {
            break;
        };
        part_size = part_size.max(part.len());
        stream.extend_from_slice(&part);
    }
    assert!(part_size > 0, "no parts for {id}");
    (stream, part_size)
}

/// Replaces backup `id`'s main tar stream with `stream` (cut into parts of
/// `part_size`), and its `backup.json` with `json` with the main
/// directory's parts made to match.
async fn reseal(a: &Archive, id: &str, stream: &[u8], part_size: usize, json: &[u8]) {
    let prefix = format!("{}data/base/", layout::backup_prefix(id));
    let old: Vec<String> = a
        .repo
        .list(&prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    a.repo.delete_many(&old).await.unwrap();
    let mut meta: serde_json::Value = serde_json::from_slice(json).unwrap();
    let mut parts = Vec::new();
    for (i, chunk) in stream.chunks(part_size).enumerate() {
        let key = layout::backup_part_key(id, "base", i as u32);
        a.repo
            .put_sealed(&key, vec![Bytes::copy_from_slice(chunk)])
            .await
            .unwrap();
        parts.push(serde_json::json!({
            "index": i,
            "plain_bytes": chunk.len(),
            "stored_bytes": 0,
            "crc32c": format!("{:08x}", crc32c::crc32c(chunk)),
        }));
    }
    let base = meta["tablespaces"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|t| t["name"] == "base")
        .unwrap();
    base["parts"] = serde_json::Value::Array(parts);
    base["plain_bytes"] = serde_json::json!(stream.len());
    let json_key = layout::backup_json_key(id);
    a.repo.delete(&json_key).await.unwrap();
    a.repo
        .put_sealed(
            &json_key,
            vec![Bytes::from(serde_json::to_vec(&meta).unwrap())],
        )
        .await
        .unwrap();
}

/// Where entry `path` lies in a tar stream: its header's offset, its
/// data's offset and its data's size.
fn entry_at(stream: &[u8], path: &str) -> (usize, usize, usize) {
    let mut archive = tar::Archive::new(stream);
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        if entry.path().unwrap().to_str() == Some(path) {
            return (
                entry.raw_header_position() as usize,
                entry.raw_file_position() as usize,
                entry.size() as usize,
            );
        }
    }
    panic!("{path} is not in the tar stream");
}

/// `verify --backup id`: exits 1 and names `what`.
fn verify_names(a: &Archive, id: &str, what: &[&str]) {
    let out = a.env.run(&["verify", "--backup", id]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    for w in what {
        assert!(text.contains(w), "verify does not name {w:?}: {text}");
    }
}

/// Each inner check of a backup, reached with the key: a part with other
/// content and its size (its CRC not the one `backup.json` has), one byte
/// changed in a file, a file left out and a file added (each with
/// `backup.json` made to match). Restore refuses each naming the part or
/// the file and leaves nothing; `verify` names the same.
async fn inner_checks_refuse_by_name(major: u32) {
    let a = archive(major).await;
    let id = a.backups[0].clone();
    let json_key = layout::backup_json_key(&id);
    let json = a.repo.get_opened(&json_key).await.unwrap().unwrap();
    let (stream, part_size) = base_stream(&a, &id).await;
    assert!(stream.len() > part_size, "one part only: nothing to swap");

    // Part 1 re-sealed with other bytes of the same size; backup.json as it was.
    let part = layout::backup_part_key(&id, "base", 1);
    let original = a.repo.get_opened(&part).await.unwrap().unwrap();
    let mut other = original.clone();
    other[100] ^= 0xFF;
    a.repo.delete(&part).await.unwrap();
    a.repo
        .put_sealed(&part, vec![Bytes::from(other)])
        .await
        .unwrap();
    let report = a.refused_restore(&["--backup", &id]);
    assert!(
        report.contains(&part) && report.contains("backup.json says"),
        "{report}"
    );
    verify_names(&a, &id, &[&part]);
    a.repo.delete(&part).await.unwrap();
    a.repo
        .put_sealed(&part, vec![Bytes::from(original)])
        .await
        .unwrap();

    let file = "pg_ident.conf";
    let (header, data, size) = entry_at(&stream, file);
    let padded = size.div_ceil(512) * 512;
    // One byte of a file changed.
    let mut changed = stream.clone();
    changed[data] ^= 0x01;
    // The file left out.
    let mut without = stream.clone();
    without.drain(header..data + padded);
    // A file the server's manifest does not list.
    let mut extra = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_path("extra_file").unwrap();
    h.set_size(3);
    h.set_mode(0o600);
    h.set_cksum();
    extra.append(&h, &b"abc"[..]).unwrap();
    let extra = extra.into_inner().unwrap();
    let entry_bytes = &extra[..512 + 512];
    let mut with_extra = stream.clone();
    with_extra.splice(header..header, entry_bytes.iter().copied());

    for (what, crafted, says) in [
        ("a changed byte", &changed, vec![file, "CRC32C"]),
        ("a file left out", &without, vec![file, "not in the backup"]),
        (
            "an extra file",
            &with_extra,
            vec!["extra_file", "not in the server's manifest"],
        ),
    ] {
        reseal(&a, &id, crafted, part_size, &json).await;
        let report = a.refused_restore(&["--backup", &id]);
        for s in &says {
            assert!(report.contains(s), "{what}: {s:?} not in {report}");
        }
        verify_names(&a, &id, &says);
    }
    reseal(&a, &id, &stream, part_size, &json).await;
    let out = a.env.run(&["verify", "--backup", &id]);
    assert!(
        out.status.success(),
        "the repaired backup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

mod inner_checks_refuse_by_name {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg14() {
        super::inner_checks_refuse_by_name(14).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg18() {
        super::inner_checks_refuse_by_name(18).await
    }
}
