//! A small pool of fixed-size chunk buffers shared by all connections of a
//! server. Connections take a buffer only while data flows and give it back when
//! they go idle, so an idle connection holds none, and the hot path does not
//! allocate per chunk. The lock is taken per buffer hand-over, never per byte.

use std::cell::RefCell;
use std::sync::Mutex;

/// Buffers kept per worker thread, so the no-toxic path, which takes and
/// returns one buffer per burst, does not touch the shared lock at all.
const LOCAL_CACHE: usize = 4;

thread_local! {
    static LOCAL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

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

    /// Like [`BufPool::get`], from this thread's small cache first.
    pub(crate) fn get_local(&self) -> Vec<u8> {
        let size = self.size;
        LOCAL
            .try_with(|c| {
                let mut c = c.borrow_mut();
                c.iter()
                    .rposition(|b| b.len() == size)
                    .map(|i| c.swap_remove(i))
            })
            .ok()
            .flatten()
            .unwrap_or_else(|| self.get())
    }

    /// Like [`BufPool::put`], into this thread's small cache first.
    pub(crate) fn put_local(&self, buf: Vec<u8>) {
        let spill = LOCAL
            .try_with(|c| {
                let mut c = c.borrow_mut();
                if c.len() < LOCAL_CACHE {
                    c.push(buf);
                    None
                } else {
                    Some(buf)
                }
            })
            .unwrap_or(None);
        if let Some(buf) = spill {
            self.put(buf);
        }
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
