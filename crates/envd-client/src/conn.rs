//! One connection: write frames, read bounded lines.

use std::path::Path;

use hangar_protocol::envd::{MAX_FRAME, Response};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::Error;

/// Reads response frames.
#[derive(Debug)]
pub(crate) struct Reader {
    inner: BufReader<OwnedReadHalf>,
    line: Vec<u8>,
}

/// Writes request and input frames.
#[derive(Debug)]
pub(crate) struct Sender {
    inner: OwnedWriteHalf,
    buf: Vec<u8>,
}

/// A connection with its request sent.
#[derive(Debug)]
pub(crate) struct Conn {
    reader: Reader,
    // Kept open: envd takes a closed connection for a client that went away.
    _sender: Sender,
}

impl Conn {
    pub(crate) async fn open<T: Serialize>(socket: &Path, request: &T) -> Result<Conn, Error> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| Error::Connect {
                path: socket.to_path_buf(),
                source,
            })?;
        let (r, w) = stream.into_split();
        let mut sender = Sender {
            inner: w,
            buf: Vec::new(),
        };
        sender.send(request).await?;
        Ok(Conn {
            reader: Reader {
                inner: BufReader::with_capacity(64 * 1024, r),
                line: Vec::new(),
            },
            _sender: sender,
        })
    }

    pub(crate) async fn recv(&mut self) -> Result<Response, Error> {
        self.reader.recv().await
    }

    pub(crate) fn split(self) -> (Reader, Sender) {
        (self.reader, self._sender)
    }
}

impl Sender {
    pub(crate) async fn send<T: Serialize>(&mut self, frame: &T) -> Result<(), Error> {
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, frame)
            .map_err(|e| Error::Protocol(format!("cannot encode a frame: {e}")))?;
        self.buf.push(b'\n');
        self.inner.write_all(&self.buf).await?;
        Ok(())
    }
}

impl Reader {
    /// The next frame; end of stream before a frame is a protocol violation (every
    /// operation ends with a terminal frame). Cancel-safe: a partial line stays buffered.
    pub(crate) async fn recv(&mut self) -> Result<Response, Error> {
        loop {
            let buf = self.inner.fill_buf().await?;
            if buf.is_empty() {
                return Err(Error::Protocol(
                    "envd closed the connection before replying".into(),
                ));
            }
            let (take, done) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (i, true),
                None => (buf.len(), false),
            };
            if self.line.len() + take > MAX_FRAME {
                return Err(Error::Protocol(
                    "envd sent a frame longer than the limit".into(),
                ));
            }
            self.line.extend_from_slice(&buf[..take]);
            self.inner.consume(if done { take + 1 } else { take });
            if done {
                break;
            }
        }
        let line = std::mem::take(&mut self.line);
        serde_json::from_slice(&line)
            .map_err(|e| Error::Protocol(format!("malformed frame from envd: {e}")))
    }
}
