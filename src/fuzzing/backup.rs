//! The property of the BASE_BACKUP target: the backup reader on server
//! bytes, for both grammars (PostgreSQL 14's one COPY per tablespace and
//! 15+'s typed CopyData messages).

use bytes::{BufMut, BytesMut};
use std::io::Write;

use super::Fields;
use crate::backup::protocol::{
    BackupEnd, BackupEvent, BackupSink, BaseBackupOptions, TablespaceInfo, run_base_backup,
};
use crate::lsn::{Lsn, TimelineId};
use crate::protocol::{self, ReplicationConnection};

/// Most bytes a stand-in server writes: all of them fit in the socket's
/// buffer before the reader starts, so no writer task is needed.
const MAX_STREAM_BYTES: usize = 32 * 1024;

/// The BASE_BACKUP reader on a server's bytes. The first input byte picks
/// the major (14 to 18) and the mode:
/// - with its top bit set, the rest of the input describes a well-formed
///   backup (positions, tablespaces, archive and manifest bytes, notices
///   and progress between them), which the reader must accept, handing on
///   every archive's and the manifest's bytes unchanged, each archive under
///   its own tablespace, and the end position the server sent;
/// - otherwise the rest is a sequence of arbitrary backend messages (and
///   raw bytes), on which the reader must not panic or hang, and when it
///   does accept, its events are in order: the start, the tablespaces, one
///   archive per tablespace in list order, data only inside an archive, the
///   manifest after the last archive.
pub fn base_backup(data: &[u8]) {
    let mut f = Fields::new(data);
    let mode = f.u8();
    let major = 14 + u32::from(mode % 5);
    if mode & 0x80 != 0 {
        let (stream, expected) = well_formed(major, &mut f);
        let (result, events) = read(major, stream);
        let end = result.unwrap_or_else(|e| panic!("PG{major}: a well-formed backup refused: {e}"));
        let seen = in_order(major, &events)
            .unwrap_or_else(|e| panic!("PG{major}: events out of order: {e}: {events:?}"));
        assert_eq!(
            seen, expected.seen,
            "PG{major}: the backup came through changed"
        );
        assert_eq!(end, expected.end, "PG{major}: another end position");
    } else {
        let stream = arbitrary(&mut f);
        let (result, events) = read(major, stream);
        if result.is_ok()
            && let Err(e) = in_order(major, &events)
        {
            panic!("PG{major}: accepted events out of order: {e}: {events:?}");
        }
    }
}

/// What a backup delivered, archive by archive.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    start: Option<(Lsn, TimelineId)>,
    tablespaces: Vec<TablespaceInfo>,
    archives: Vec<Vec<u8>>,
    manifest: Vec<u8>,
}

/// A well-formed backup and what reading it must give.
struct Expected {
    seen: Seen,
    end: BackupEnd,
}

/// Checks the order of `events` and gathers what they delivered.
fn in_order(major: u32, events: &[BackupEvent]) -> Result<Seen, String> {
    let mut seen = Seen::default();
    let mut events = events
        .iter()
        .filter(|e| !matches!(e, BackupEvent::Progress(_)));
    match events.next() {
        Some(BackupEvent::Started {
            start_lsn,
            timeline,
        }) => seen.start = Some((*start_lsn, *timeline)),
        other => return Err(format!("first event {other:?}")),
    }
    match events.next() {
        Some(BackupEvent::Tablespaces(t)) => seen.tablespaces = t.clone(),
        other => return Err(format!("second event {other:?}")),
    }
    let mut in_archive = false;
    let mut manifest_begun = false;
    for event in events {
        match event {
            BackupEvent::ArchiveStart(i) => {
                if in_archive || manifest_begun || *i != seen.archives.len() {
                    return Err(format!("archive {i} starts out of turn"));
                }
                in_archive = true;
                seen.archives.push(Vec::new());
            }
            BackupEvent::ArchiveData(d) if in_archive => {
                seen.archives.last_mut().expect("in an archive").extend(d);
            }
            BackupEvent::ArchiveEnd if in_archive => in_archive = false,
            BackupEvent::ManifestData(d) if !in_archive => {
                manifest_begun = true;
                seen.manifest.extend(d);
            }
            other => return Err(format!("{other:?} out of place")),
        }
    }
    if in_archive {
        return Err("the last archive never ended".into());
    }
    if seen.archives.len() != seen.tablespaces.len() {
        return Err(format!(
            "{} archives for {} tablespaces",
            seen.archives.len(),
            seen.tablespaces.len()
        ));
    }
    if major < 15 {
        // PostgreSQL 14 leaves out the end blocks, which the reader adds.
        for archive in &mut seen.archives {
            let kept = archive.len().checked_sub(1024).ok_or("no end blocks")?;
            if archive[kept..].iter().any(|&b| b != 0) {
                return Err("no end blocks".into());
            }
            archive.truncate(kept);
        }
    }
    Ok(seen)
}

/// Records every event.
struct Recorder(Vec<BackupEvent>);

impl BackupSink for Recorder {
    type Error = protocol::Error;

    async fn event(&mut self, ev: BackupEvent) -> Result<(), protocol::Error> {
        self.0.push(ev);
        Ok(())
    }
}

/// Runs the reader against a stand-in server that sends `stream` and then
/// ends its side.
fn read(major: u32, mut stream: Vec<u8>) -> (Result<BackupEnd, protocol::Error>, Vec<BackupEvent>) {
    stream.truncate(MAX_STREAM_BYTES);
    let (client, mut server) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
    server
        .write_all(&stream)
        .expect("the stream fits the socket buffer");
    // The server's receiving side stays open, so the query is written.
    server
        .shutdown(std::net::Shutdown::Write)
        .expect("end the server's side");
    client.set_nonblocking(true).expect("a non-blocking socket");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let options = BaseBackupOptions {
        label: "fuzz".into(),
        fast_checkpoint: true,
        server_zstd_level: None,
        max_rate_kib: None,
    };
    let (result, events) = runtime.block_on(async {
        let socket = tokio::net::UnixStream::from_std(client).expect("a tokio socket");
        let mut conn = ReplicationConnection::after_startup(socket);
        let mut recorder = Recorder(Vec::new());
        let result = run_base_backup(&mut conn, major, &options, &mut recorder).await;
        (result, recorder.0)
    });
    drop(server);
    (result, events)
}

/// Builds a well-formed backup from the input.
fn well_formed(major: u32, f: &mut Fields<'_>) -> (Vec<u8>, Expected) {
    let mut out = BytesMut::new();
    let start = (Lsn(u64::from(f.u16()) << 20 | 0x28), timeline(f));
    result_set(
        &mut out,
        &["recptr", "tli"],
        &[vec![Some(start.0.to_string()), Some(start.1.to_string())]],
    );
    let count = 1 + usize::from(f.u8() % 3);
    let tablespaces: Vec<TablespaceInfo> = (0..count)
        .map(|i| {
            let main = i + 1 == count;
            TablespaceInfo {
                oid: (!main).then(|| 16384 + i as u32),
                location: (!main).then(|| format!("/tablespaces/{i}")),
                size_kib: Some(u64::from(f.u8())),
            }
        })
        .collect();
    let rows: Vec<Vec<Option<String>>> = tablespaces
        .iter()
        .map(|t| {
            vec![
                t.oid.map(|o| o.to_string()),
                t.location.clone(),
                t.size_kib.map(|s| s.to_string()),
            ]
        })
        .collect();
    result_set(&mut out, &["spcoid", "spclocation", "size"], &rows);

    let mut archives = Vec::new();
    if major >= 15 {
        message(&mut out, b'H', &[0, 0, 0]);
    }
    for t in &tablespaces {
        if major >= 15 {
            let mut new_archive = vec![b'n'];
            new_archive.extend_from_slice(format!("{}.tar\0", t.name()).as_bytes());
            new_archive.extend_from_slice(t.location.as_deref().unwrap_or("").as_bytes());
            new_archive.push(0);
            message(&mut out, b'd', &new_archive);
        } else {
            message(&mut out, b'H', &[0, 0, 0]);
        }
        archives.push(chunks(major, f, &mut out, true));
        if major < 15 {
            message(&mut out, b'c', &[]);
        }
    }
    if major >= 15 {
        message(&mut out, b'd', b"m");
    } else {
        message(&mut out, b'H', &[0, 0, 0]);
    }
    let manifest = chunks(major, f, &mut out, false);
    message(&mut out, b'c', &[]);

    let end = BackupEnd {
        end_lsn: Lsn(start.0.0 + u64::from(f.u16())),
        timeline: start.1,
    };
    result_set(
        &mut out,
        &["recptr", "tli"],
        &[vec![
            Some(end.end_lsn.to_string()),
            Some(end.timeline.to_string()),
        ]],
    );
    message(&mut out, b'C', b"BASE_BACKUP\0");
    message(&mut out, b'Z', b"I");
    let seen = Seen {
        start: Some(start),
        tablespaces,
        archives,
        manifest,
    };
    (out.to_vec(), Expected { seen, end })
}

/// Up to three CopyData messages of input bytes, with a progress report or
/// a notice between them when the input says so; returns their bytes.
fn chunks(major: u32, f: &mut Fields<'_>, out: &mut BytesMut, archive: bool) -> Vec<u8> {
    let mut sent = Vec::new();
    for _ in 0..f.u8() % 4 {
        let bytes = f.prefixed(256);
        let mut payload = Vec::new();
        if major >= 15 {
            payload.push(b'd');
        }
        payload.extend_from_slice(&bytes);
        message(out, b'd', &payload);
        sent.extend_from_slice(&bytes);
        match f.u8() % 4 {
            1 if major >= 15 && archive => {
                let mut progress = vec![b'p'];
                progress.extend_from_slice(&(sent.len() as u64).to_be_bytes());
                message(out, b'd', &progress);
            }
            2 => message(out, b'N', b"SNOTICE\0Mfuzz\0\0"),
            3 => message(out, b'S', b"application_name\0fuzz\0"),
            _ => {}
        }
    }
    sent
}

/// A timeline from the input: 1 to 256.
fn timeline(f: &mut Fields<'_>) -> TimelineId {
    TimelineId::new(1 + u32::from(f.u8())).expect("a positive timeline")
}

/// Backend messages from the input: each starts with a byte that picks one.
fn arbitrary(f: &mut Fields<'_>) -> Vec<u8> {
    let mut out = BytesMut::new();
    while !f.is_empty() && out.len() < MAX_STREAM_BYTES {
        match f.u8() % 12 {
            0 => row_description(&mut out, &["a", "b", "c"][..usize::from(f.u8() % 4)]),
            1 => {
                let row: Vec<Option<String>> = (0..f.u8() % 4).map(|_| value(f)).collect();
                data_row(&mut out, &row);
            }
            2 => message(&mut out, b'C', b"SELECT\0"),
            3 => message(&mut out, b'H', &[0, 0, 0]),
            4 => {
                let kind = [b'n', b'd', b'p', b'm', b'x'][usize::from(f.u8() % 5)];
                let mut payload = vec![kind];
                payload.extend_from_slice(&f.prefixed(32));
                message(&mut out, b'd', &payload);
            }
            5 => message(&mut out, b'd', &f.prefixed(32)),
            6 => message(&mut out, b'c', &[]),
            7 => message(&mut out, b'E', b"SERROR\0CXX001\0Mchecksum failure\0\0"),
            8 => message(&mut out, b'Z', b"I"),
            9 => message(&mut out, b'N', b"SNOTICE\0Mfuzz\0\0"),
            10 => message(&mut out, b'S', b"a\0b\0"),
            _ => out.put_slice(&f.prefixed(16)),
        }
    }
    out.to_vec()
}

/// A result-set value: NULL, a position, a timeline, a number or input
/// bytes.
fn value(f: &mut Fields<'_>) -> Option<String> {
    match f.u8() % 6 {
        0 => None,
        1 => Some(Lsn(u64::from(f.u16()) << 16).to_string()),
        2 => Some(u32::from(f.u8()).to_string()),
        3 => Some("16384".into()),
        4 => Some("/tablespaces/0".into()),
        _ => Some(String::from_utf8_lossy(&f.prefixed(16)).into_owned()),
    }
}

/// RowDescription, the rows and CommandComplete.
fn result_set(out: &mut BytesMut, columns: &[&str], rows: &[Vec<Option<String>>]) {
    row_description(out, columns);
    for row in rows {
        data_row(out, row);
    }
    message(out, b'C', b"SELECT\0");
}

fn row_description(out: &mut BytesMut, columns: &[&str]) {
    let mut body = BytesMut::new();
    body.put_i16(columns.len() as i16);
    for name in columns {
        body.put_slice(name.as_bytes());
        body.put_u8(0);
        body.put_i32(0);
        body.put_i16(0);
        body.put_i32(25);
        body.put_i16(-1);
        body.put_i32(-1);
        body.put_i16(0);
    }
    message(out, b'T', &body);
}

fn data_row(out: &mut BytesMut, row: &[Option<String>]) {
    let mut body = BytesMut::new();
    body.put_i16(row.len() as i16);
    for value in row {
        match value {
            Some(v) => {
                body.put_i32(v.len() as i32);
                body.put_slice(v.as_bytes());
            }
            None => body.put_i32(-1),
        }
    }
    message(out, b'D', &body);
}

/// One backend message: its type byte, its length and its body.
fn message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_i32(4 + body.len() as i32);
    out.put_slice(body);
}
