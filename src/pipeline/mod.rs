//! Bounded stages between the receivers and the repository: a memory budget
//! shared by every buffer, and the WAL uploader that seals and stores jobs
//! concurrently but reports them durable strictly in LSN order.

pub mod conflict;
pub mod memory;
pub mod upload;
