//! Newline-delimited JSON framing with a bounded line length.

use std::io;

use hangar_protocol::envd::{MAX_FRAME, Response};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// Why no frame could be read.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The line grew past [`MAX_FRAME`] without a newline.
    TooLarge,
    /// The connection failed.
    Io(#[allow(dead_code)] io::Error),
}

/// Reads one line at a time, never holding more than [`MAX_FRAME`] bytes of one line.
pub(crate) struct FrameReader<R> {
    inner: BufReader<R>,
    line: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        // Requests are small; a small buffer keeps idle connections cheap.
        FrameReader {
            inner: BufReader::with_capacity(4096, inner),
            line: Vec::new(),
        }
    }

    /// The next line without its newline, or `None` at end of stream. A final line without
    /// a newline counts as a line. Cancel-safe: a partial line is kept in `self`.
    pub(crate) async fn next(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        loop {
            let buf = self.inner.fill_buf().await.map_err(FrameError::Io)?;
            if buf.is_empty() {
                if self.line.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(std::mem::take(&mut self.line)));
            }
            let (take, done) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (i, true),
                None => (buf.len(), false),
            };
            if self.line.len() + take > MAX_FRAME {
                return Err(FrameError::TooLarge);
            }
            self.line.extend_from_slice(&buf[..take]);
            self.inner.consume(if done { take + 1 } else { take });
            if done {
                return Ok(Some(std::mem::take(&mut self.line)));
            }
        }
    }
}

/// Writes [`Response`] frames, reusing one buffer.
pub(crate) struct FrameWriter<W> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        FrameWriter {
            inner,
            buf: Vec::new(),
        }
    }

    pub(crate) async fn send(&mut self, frame: &Response) -> io::Result<()> {
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, frame).map_err(io::Error::other)?;
        self.buf.push(b'\n');
        self.inner.write_all(&self.buf).await?;
        // An output frame is ~88 KiB; do not keep a large buffer on a connection that
        // goes quiet.
        if self.buf.capacity() > 256 * 1024 {
            self.buf = Vec::new();
        }
        Ok(())
    }

    pub(crate) async fn shutdown(&mut self) {
        let _ = self.inner.shutdown().await;
    }
}
