//! Plugin stdout and stderr, sent line by line to `tracing` at debug level,
//! tagged with the plugin's name and the invocation id, and bounded per
//! invocation.
//!
//! Debug, never the default level: a call's output is the plugin's own
//! bytes, and those of a call whose result is withheld must not reach the
//! default log (or `tollgate run`'s terminal) any more than its result may.

use bytes::Bytes;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Most bytes of output logged per stream per invocation; the rest is counted.
const LOG_BUDGET: usize = 64 * 1024;
/// Longest line logged in one piece.
const MAX_LINE: usize = 4096;

struct LineLog {
    plugin: Arc<str>,
    invocation: u64,
    stream: &'static str,
    line: Vec<u8>,
    logged: usize,
    dropped: usize,
}

impl LineLog {
    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        tracing::debug!(target: "tollgate::plugin", plugin = %self.plugin, invocation = self.invocation, stream = self.stream, "{}", text.trim_end());
        self.line.clear();
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.logged >= LOG_BUDGET {
                self.dropped += 1;
                continue;
            }
            self.logged += 1;
            if b == b'\n' {
                self.emit();
            } else {
                self.line.push(b);
                if self.line.len() >= MAX_LINE {
                    self.emit();
                }
            }
        }
    }
}

impl Drop for LineLog {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
        if self.dropped > 0 {
            // Debug too: even the size of a withheld call's output is its own.
            tracing::debug!(target: "tollgate::plugin", plugin = %self.plugin, invocation = self.invocation, stream = self.stream,
                "{} more bytes of output were not logged (limit {LOG_BUDGET} per call)", self.dropped);
        }
    }
}

/// One plugin stream (stdout or stderr) for one invocation.
#[derive(Clone)]
pub(crate) struct PluginLog(Arc<Mutex<LineLog>>);

impl PluginLog {
    /// A log for `plugin`'s `stream` ("stdout" or "stderr") in `invocation`.
    pub(crate) fn new(plugin: Arc<str>, invocation: u64, stream: &'static str) -> Self {
        Self(Arc::new(Mutex::new(LineLog {
            plugin,
            invocation,
            stream,
            line: Vec::new(),
            logged: 0,
            dropped: 0,
        })))
    }

    fn write(&self, bytes: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write(bytes);
    }
}

impl IsTerminal for PluginLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for PluginLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for PluginLog {
    async fn ready(&mut self) {}
}

impl OutputStream for PluginLog {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        PluginLog::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for PluginLog {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        PluginLog::write(&self, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
