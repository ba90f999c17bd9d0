//! A replication connection: socket or TLS, startup, authentication, simple
//! queries and the CopyBoth stream.
//!
//! This is the only module in `protocol/` that does I/O. Reads go into one
//! [`BytesMut`]; a message is consumed only once it is complete, so every read
//! method is cancel safe.
//!
//! This file owns [`ReplicationConnection`] itself, its transport, reading and
//! writing whole messages, and the read buffers. Connecting (sockets, TLS,
//! host choice) is in `connect`, the startup and authentication in `auth`,
//! and queries and the copy stream in `query`.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::{Error, ServerError};

mod auth;
mod connect;
mod query;

pub use query::{CopyEvent, QueryResult, ResponseEvent, Row};

/// Largest message accepted from the server; bounds what a broken peer can
/// make us buffer (BASE_BACKUP and XLogData messages are far smaller).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Room made for a read: a few XLogData messages (each at most 128 KiB).
const READ_BUFFER_BYTES: usize = 512 * 1024;
/// The size of a read buffer: room for a read beside a message begun.
const READ_SLAB_BYTES: usize = 1024 * 1024;
/// Read buffers nothing points into that are kept for reuse: two segments'
/// worth, as a stored segment gives back 16 at once. A new buffer is taken
/// only when none is idle, so this never adds to the buffers held at the
/// peak.
const IDLE_READ_BUFFERS: usize = 32;

/// The transport under a connection.
enum Transport {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
            Transport::Unix(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection to a walsender (`replication=true`).
pub struct ReplicationConnection {
    transport: Transport,
    read_buf: BytesMut,
    /// Earlier read buffers, oldest first, that messages may still point
    /// into (XLogData payloads held until their segment is stored): each
    /// is read into again once they are gone ([`make_room`]).
    retired: VecDeque<BytesMut>,
    write_buf: BytesMut,
    parameters: HashMap<String, String>,
    target: String,
    is_tls: bool,
}

impl ReplicationConnection {
    /// A connection on a socket whose other end stands in for a server that
    /// has finished the startup: the fuzz targets' way to feed server bytes.
    #[cfg(feature = "fuzzing")]
    pub fn after_startup(socket: UnixStream) -> Self {
        ReplicationConnection {
            transport: Transport::Unix(socket),
            read_buf: BytesMut::with_capacity(READ_SLAB_BYTES),
            retired: VecDeque::new(),
            write_buf: BytesMut::new(),
            parameters: HashMap::new(),
            target: "fuzz".into(),
            is_tls: false,
        }
    }

    /// A parameter the server reported at startup (e.g. `server_version`).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The server's major version, from `server_version`.
    pub fn server_major(&self) -> Option<u32> {
        let v = self.parameter("server_version")?;
        let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    /// Where this connection goes (host:port or socket path), for logs.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.is_tls
    }

    /// Whether a whole message is already buffered (reading it would not wait).
    pub fn has_buffered_message(&self) -> bool {
        matches!(
            backend::Header::parse(&self.read_buf),
            Ok(Some(h)) if self.read_buf.len() > h.len() as usize
        )
    }

    /// Sends Terminate and closes the socket.
    pub async fn terminate(mut self) {
        frontend::terminate(&mut self.write_buf);
        let _ = self.flush_write().await;
        let _ = self.transport.shutdown().await;
    }

    async fn flush_write(&mut self) -> Result<(), Error> {
        self.transport.write_all(&self.write_buf).await?;
        self.transport.flush().await?;
        self.write_buf.clear();
        Ok(())
    }

    /// Makes sure a whole message is in the read buffer and returns its header.
    ///
    /// # Cancel safety
    /// Safe: only appends to the read buffer.
    async fn fill_message(&mut self) -> Result<backend::Header, Error> {
        loop {
            if let Some(header) = backend::Header::parse(&self.read_buf)? {
                let len = header.len() as usize + 1;
                if len > MAX_MESSAGE_BYTES {
                    return Err(Error::Protocol(format!(
                        "message of {len} bytes is too large"
                    )));
                }
                if self.read_buf.len() >= len {
                    return Ok(header);
                }
                let missing = len - self.read_buf.len();
                make_room(&mut self.read_buf, &mut self.retired, missing);
            } else if self.read_buf.capacity() - self.read_buf.len() < 4096 {
                make_room(&mut self.read_buf, &mut self.retired, READ_BUFFER_BYTES);
            }
            let n = self.transport.read_buf(&mut self.read_buf).await?;
            if n == 0 {
                return Err(Error::Closed);
            }
        }
    }

    /// Reads one whole backend message.
    ///
    /// # Cancel safety
    /// Safe: the message is removed from the buffer only once complete.
    async fn read_message(&mut self) -> Result<backend::Message, Error> {
        let header = self.fill_message().await?;
        if header.tag() == b'W' {
            return Err(Error::Protocol("unexpected CopyBothResponse".into()));
        }
        match backend::Message::parse(&mut self.read_buf)? {
            Some(m) => Ok(m),
            None => Err(Error::Protocol("incomplete message".into())),
        }
    }
}

fn server_error(body: &backend::ErrorResponseBody) -> Result<ServerError, Error> {
    let mut e = ServerError::default();
    let mut fields = body.fields();
    while let Some(f) = fields.next()? {
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'V' => e.severity = v,
            b'S' if e.severity.is_empty() => e.severity = v,
            b'C' => e.code = v,
            b'M' => e.message = v,
            b'D' => e.detail = Some(v),
            b'H' => e.hint = Some(v),
            _ => {}
        }
    }
    Ok(e)
}

/// Makes room in `buf` for `additional` more bytes, reusing memory: the
/// buffer itself when nothing points into it any more, else a retired
/// buffer nothing points into, else a new one of [`READ_SLAB_BYTES`]; the
/// buffer left is retired. A stream holding WAL in memory so reads into
/// the same buffers over and over, instead of the allocator handing out
/// fresh pages (a page fault each) or keeping freed ones it does not reuse
/// (memory above the budget). Beyond [`IDLE_READ_BUFFERS`], buffers nothing
/// points into are given back.
fn make_room(buf: &mut BytesMut, retired: &mut VecDeque<BytesMut>, additional: usize) {
    if buf.try_reclaim(additional) {
        return;
    }
    let need = buf.len() + additional;
    let mut next: Option<BytesMut> = None;
    let mut idle = 0;
    retired.retain_mut(|b| {
        // Every buffer holds at least a slab: this fails only while
        // something points into it.
        if !b.try_reclaim(READ_SLAB_BYTES) {
            return true;
        }
        if next.is_none() && b.try_reclaim(need) {
            next = Some(std::mem::take(b));
            return false;
        }
        idle += 1;
        idle <= IDLE_READ_BUFFERS
    });
    let mut next = next.unwrap_or_else(|| BytesMut::with_capacity(need.max(READ_SLAB_BYTES)));
    next.extend_from_slice(buf);
    let mut old = std::mem::replace(buf, next);
    old.clear();
    retired.push_back(old);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_buffers_are_reused_once_released() {
        let mut buf = BytesMut::with_capacity(READ_SLAB_BYTES);
        let mut retired = VecDeque::new();
        buf.extend_from_slice(&vec![1u8; READ_SLAB_BYTES - 10]);
        let held = buf.split_to(READ_SLAB_BYTES - 20).freeze();
        let first = held.as_ptr();
        // Ten bytes of a message wait, and a view into the buffer is held:
        // a new buffer, holding the ten bytes.
        make_room(&mut buf, &mut retired, READ_BUFFER_BYTES);
        assert_eq!(&buf[..], &[1u8; 10][..]);
        assert_ne!(buf.as_ptr(), first);
        assert_eq!(retired.len(), 1);
        assert_eq!(&held[..3], &[1, 1, 1]);
        // Once the view is gone, the retired buffer is read into again.
        drop(held);
        let room = buf.capacity() - buf.len();
        buf.extend_from_slice(&vec![2u8; room]);
        let second = buf.split().freeze();
        make_room(&mut buf, &mut retired, READ_BUFFER_BYTES);
        assert_eq!(buf.as_ptr(), first);
        assert_eq!(retired.len(), 1);
        // A buffer nothing points into is reclaimed in place.
        drop(second);
        let here = buf.as_ptr();
        let room = buf.capacity();
        buf.extend_from_slice(&vec![3u8; room]);
        drop(buf.split());
        make_room(&mut buf, &mut retired, READ_BUFFER_BYTES);
        assert_eq!(buf.as_ptr(), here);
        // Idle buffers beyond a few are given back.
        let mut views = Vec::new();
        for _ in 0..IDLE_READ_BUFFERS + 10 {
            let room = buf.capacity() - buf.len();
            buf.extend_from_slice(&vec![4u8; room]);
            views.push(buf.split().freeze());
            make_room(&mut buf, &mut retired, READ_BUFFER_BYTES);
        }
        assert_eq!(retired.len(), IDLE_READ_BUFFERS + 10);
        drop(views);
        make_room(&mut buf, &mut retired, READ_SLAB_BYTES + 1);
        assert_eq!(retired.len(), IDLE_READ_BUFFERS + 1);
    }
}
