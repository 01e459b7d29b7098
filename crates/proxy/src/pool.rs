//! A small pool of fixed-size chunk buffers shared by all connections of a
//! server. Connections take a buffer only while data flows and give it back when
//! they go idle, so an idle connection holds none, and the hot path does not
//! allocate per chunk. The lock is taken per buffer hand-over, never per byte.

use std::sync::Mutex;

/// Buffer pool; see the module doc.
#[derive(Debug)]
pub(crate) struct BufPool {
    bufs: Mutex<Vec<Vec<u8>>>,
    size: usize,
    max_retained: usize,
}

impl BufPool {
    pub(crate) fn new(size: usize, max_retained: usize) -> Self {
        Self {
            bufs: Mutex::new(Vec::new()),
            size,
            max_retained,
        }
    }

    pub(crate) fn buf_size(&self) -> usize {
        self.size
    }

    /// A buffer of `buf_size()` bytes (contents unspecified).
    pub(crate) fn get(&self) -> Vec<u8> {
        let reused = match self.bufs.lock() {
            Ok(mut g) => g.pop(),
            Err(poisoned) => poisoned.into_inner().pop(),
        };
        reused.unwrap_or_else(|| vec![0; self.size])
    }

    /// Gives a buffer back; beyond `max_retained` it is freed.
    pub(crate) fn put(&self, buf: Vec<u8>) {
        if buf.len() != self.size {
            return;
        }
        let mut g = match self.bufs.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if g.len() < self.max_retained {
            g.push(buf);
        }
    }
}
