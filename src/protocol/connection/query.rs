//! Commands on an open connection: simple queries and their results, the
//! message-by-message responses of commands such as BASE_BACKUP, and the
//! CopyBoth stream of START_REPLICATION (CopyData in, status updates out,
//! CopyDone).
//!
//! Reads and writes whole messages through `mod.rs`; what the CopyData
//! payloads mean is decoded in `protocol::message`, and the commands are
//! written in `protocol::command`.

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::{backend, frontend};

use super::{ReplicationConnection, server_error};
use crate::protocol::message::StandbyStatusUpdate;
use crate::protocol::{Error, ServerError};

/// One row of a simple-query result, all columns as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// Column values (`None` for NULL).
    pub values: Vec<Option<String>>,
}

/// A simple-query result: column names and rows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryResult {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows.
    pub rows: Vec<Row>,
}

impl QueryResult {
    /// The text value at (row, column), or `None` for NULL or out of range.
    pub fn get(&self, row: usize, column: usize) -> Option<&str> {
        self.rows.get(row)?.values.get(column)?.as_deref()
    }
}

/// What the server sent on the copy stream.
#[derive(Debug)]
pub enum CopyEvent {
    /// A CopyData payload.
    Data(Bytes),
    /// The server ended the copy (CopyDone).
    Done,
}

/// One message of a command's response, for drivers of multi-part
/// responses such as BASE_BACKUP.
#[derive(Debug)]
pub enum ResponseEvent {
    /// Column names of the next rows.
    RowDescription(Vec<String>),
    /// One row.
    DataRow(Row),
    /// A command (or result set) finished, with its tag.
    CommandComplete(String),
    /// A COPY OUT stream begins.
    CopyOutStart,
    /// A CopyData payload.
    CopyData(Bytes),
    /// The COPY stream ended.
    CopyDone,
    /// The server reported an error (the connection stays usable).
    Error(ServerError),
    /// ReadyForQuery: the response is over.
    Ready,
}

impl ReplicationConnection {
    /// Runs one command with the simple query protocol and collects its rows.
    ///
    /// # Errors
    /// [`Error::Server`] when the server rejects it (the connection stays usable).
    ///
    /// # Cancel safety
    /// Not cancel safe: a half-read result leaves the connection unusable.
    pub async fn simple_query(&mut self, sql: &str) -> Result<QueryResult, Error> {
        frontend::query(sql, &mut self.write_buf)?;
        self.flush_write().await?;
        self.read_query_result().await
    }

    /// Reads a result until ReadyForQuery.
    pub(crate) async fn read_query_result(&mut self) -> Result<QueryResult, Error> {
        let mut result = QueryResult::default();
        let mut error = None;
        loop {
            match self.read_message().await? {
                backend::Message::RowDescription(body) => {
                    result.columns = body.fields().map(|f| Ok(f.name().to_string())).collect()?;
                }
                backend::Message::DataRow(body) => result.rows.push(decode_row(&body)?),
                backend::Message::ErrorResponse(body) => error = Some(server_error(&body)?),
                backend::Message::ReadyForQuery(_) => break,
                backend::Message::CommandComplete(_)
                | backend::Message::EmptyQueryResponse
                | backend::Message::NoticeResponse(_) => {}
                backend::Message::ParameterStatus(p) => {
                    self.parameters
                        .insert(p.name()?.to_string(), p.value()?.to_string());
                }
                _ => {
                    return Err(Error::Protocol(
                        "unexpected message in a query result".into(),
                    ));
                }
            }
        }
        match error {
            Some(e) => Err(Error::Server(e)),
            None => Ok(result),
        }
    }

    /// Sends a command without waiting for its answer; read it with
    /// [`ReplicationConnection::next_response_event`].
    ///
    /// # Errors
    /// On I/O errors.
    pub async fn send_query(&mut self, sql: &str) -> Result<(), Error> {
        frontend::query(sql, &mut self.write_buf)?;
        self.flush_write().await
    }

    /// Reads the next message of a command's response (notices skipped).
    ///
    /// # Errors
    /// On I/O or protocol errors; server errors are an event, not an error.
    ///
    /// # Cancel safety
    /// Safe: a message is either fully decoded or left in the read buffer.
    pub async fn next_response_event(&mut self) -> Result<ResponseEvent, Error> {
        loop {
            return Ok(match self.read_message().await? {
                backend::Message::RowDescription(body) => ResponseEvent::RowDescription(
                    body.fields().map(|f| Ok(f.name().to_string())).collect()?,
                ),
                backend::Message::DataRow(body) => ResponseEvent::DataRow(decode_row(&body)?),
                backend::Message::CommandComplete(body) => {
                    ResponseEvent::CommandComplete(body.tag()?.to_string())
                }
                backend::Message::CopyOutResponse(_) => ResponseEvent::CopyOutStart,
                backend::Message::CopyData(body) => ResponseEvent::CopyData(body.into_bytes()),
                backend::Message::CopyDone => ResponseEvent::CopyDone,
                backend::Message::ErrorResponse(body) => ResponseEvent::Error(server_error(&body)?),
                backend::Message::ReadyForQuery(_) => ResponseEvent::Ready,
                backend::Message::NoticeResponse(_) => continue,
                backend::Message::ParameterStatus(p) => {
                    self.parameters
                        .insert(p.name()?.to_string(), p.value()?.to_string());
                    continue;
                }
                _ => {
                    return Err(Error::Protocol(
                        "unexpected message in a command response".into(),
                    ));
                }
            });
        }
    }

    /// Sends a command that answers with CopyBoth (START_REPLICATION) or with
    /// a result set; returns `None` once in copy mode, or the result.
    ///
    /// # Errors
    /// [`Error::Server`] when the server rejects the command.
    pub(crate) async fn query_copy_both(
        &mut self,
        sql: &str,
    ) -> Result<Option<QueryResult>, Error> {
        frontend::query(sql, &mut self.write_buf)?;
        self.flush_write().await?;
        // Peek the tag: postgres-protocol does not parse CopyBothResponse.
        // A notice or a parameter may come first (a truncated identifier
        // sends a notice before CopyBothResponse); anything else is an
        // ordinary result (or an error).
        loop {
            let header = self.fill_message().await?;
            match header.tag() {
                b'W' => {
                    let len = header.len() as usize + 1;
                    let _ = self.read_buf.split_to(len);
                    return Ok(None);
                }
                b'N' | b'S' => {
                    if let backend::Message::ParameterStatus(p) = self.read_message().await? {
                        self.parameters
                            .insert(p.name()?.to_string(), p.value()?.to_string());
                    }
                }
                _ => return self.read_query_result().await.map(Some),
            }
        }
    }

    /// Reads the next CopyData or CopyDone of the copy stream.
    ///
    /// # Errors
    /// [`Error::Server`] when the server ends the stream with an error,
    /// [`Error::Closed`] when it closes the socket (e.g. at shutdown after
    /// `COPY 0`).
    ///
    /// # Cancel safety
    /// Safe: a message is either fully decoded or left in the read buffer.
    pub async fn next_copy_event(&mut self) -> Result<CopyEvent, Error> {
        loop {
            match self.read_message().await? {
                backend::Message::CopyData(body) => return Ok(CopyEvent::Data(body.into_bytes())),
                backend::Message::CopyDone => return Ok(CopyEvent::Done),
                backend::Message::ErrorResponse(body) => {
                    return Err(Error::Server(server_error(&body)?));
                }
                backend::Message::NoticeResponse(_) => {}
                backend::Message::ParameterStatus(p) => {
                    self.parameters
                        .insert(p.name()?.to_string(), p.value()?.to_string());
                }
                // At shutdown the walsender sends CommandComplete "COPY 0" and closes.
                backend::Message::CommandComplete(_) => return Err(Error::Closed),
                _ => {
                    return Err(Error::Protocol(
                        "unexpected message in the copy stream".into(),
                    ));
                }
            }
        }
    }

    /// Sends a standby status update.
    ///
    /// # Cancel safety
    /// Not cancel safe: a partly written message breaks the stream.
    pub async fn send_status(&mut self, update: &StandbyStatusUpdate) -> Result<(), Error> {
        let mut payload = BytesMut::with_capacity(34);
        update.encode(&mut payload);
        frontend::CopyData::new(&payload[..])?.write(&mut self.write_buf);
        self.flush_write().await
    }

    /// Sends CopyDone and reads to ReadyForQuery; returns the result set the
    /// server sends at the end of a historic timeline (next timeline and its
    /// start), if any. CopyData still in flight is discarded.
    ///
    /// # Errors
    /// On I/O or protocol errors.
    pub async fn end_copy(&mut self, server_done: bool) -> Result<QueryResult, Error> {
        frontend::copy_done(&mut self.write_buf);
        self.flush_write().await?;
        if !server_done {
            loop {
                match self.read_message().await? {
                    backend::Message::CopyDone => break,
                    backend::Message::CopyData(_) | backend::Message::NoticeResponse(_) => {}
                    backend::Message::ErrorResponse(body) => {
                        return Err(Error::Server(server_error(&body)?));
                    }
                    _ => {
                        return Err(Error::Protocol(
                            "unexpected message while ending the copy".into(),
                        ));
                    }
                }
            }
        }
        self.read_query_result().await
    }
}

fn decode_row(body: &backend::DataRowBody) -> Result<Row, Error> {
    let buf = body.buffer();
    let values = body
        .ranges()
        .map(|r| Ok(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned())))
        .collect()?;
    Ok(Row { values })
}
