//! WAL archiving: the receiver loop, the pure segmenter, timeline histories,
//! and the read side of the archive (inventory, wal-fetch assembly).

pub mod archive;
pub mod history;
pub mod receiver;
pub mod segmenter;
