//! File descriptors as the ring sees them. An [`Fd`] is a handle into the ring's table;
//! closing it (`Ring::close`) takes effect only once no operation on it is in flight, so
//! an fd number is never reused while the kernel may still act on it.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::slab::{Key, Slab};

/// A handle to a file descriptor held by the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fd(Key);

struct Entry {
    raw: RawFd,
    /// Dropping it closes the descriptor.
    _owned: OwnedFd,
    in_flight: u32,
    closing: bool,
}

#[derive(Default)]
pub(crate) struct FdTable {
    entries: Slab<Entry>,
}

impl FdTable {
    /// Takes ownership of `fd`.
    pub(crate) fn adopt(&mut self, fd: OwnedFd) -> Fd {
        Fd(self.entries.insert(Entry {
            raw: fd.as_raw_fd(),
            _owned: fd,
            in_flight: 0,
            closing: false,
        }))
    }

    /// The handle of an entry for descriptor number `raw`, if the table has one.
    pub(crate) fn find_raw(&self, raw: RawFd) -> Option<Fd> {
        self.entries
            .iter()
            .find(|(_, e)| e.raw == raw && !e.closing)
            .map(|(key, _)| Fd(key))
    }

    fn entry(&mut self, fd: Fd) -> &mut Entry {
        self.entries
            .get_mut(fd.0)
            .unwrap_or_else(|| panic!("stale or unknown fd handle {fd:?}"))
    }

    /// The descriptor number, for direct syscalls. Panics on a closed handle.
    pub(crate) fn raw(&self, fd: Fd) -> RawFd {
        match self.entries.get(fd.0) {
            Some(e) if !e.closing => e.raw,
            _ => panic!("stale, unknown or closing fd handle {fd:?}"),
        }
    }

    pub(crate) fn is_open(&self, fd: Fd) -> bool {
        self.entries.get(fd.0).is_some_and(|e| !e.closing)
    }

    /// An operation on `fd` is being submitted; returns the descriptor number.
    pub(crate) fn acquire(&mut self, fd: Fd) -> RawFd {
        let e = self.entry(fd);
        assert!(!e.closing, "operation submitted on closing fd handle {fd:?}");
        e.in_flight += 1;
        e.raw
    }

    /// An operation on `fd` completed.
    pub(crate) fn release(&mut self, fd: Fd) {
        let e = self.entry(fd);
        e.in_flight -= 1;
        if e.closing && e.in_flight == 0 {
            // Dropping the entry closes the descriptor.
            self.entries.remove(fd.0);
        }
    }

    /// Closes `fd` now, or when its last operation completes.
    pub(crate) fn close(&mut self, fd: Fd) {
        let e = self.entry(fd);
        e.closing = true;
        if e.in_flight == 0 {
            self.entries.remove(fd.0);
        }
    }

    /// Descriptors still held (open, or closing with operations in flight).
    pub(crate) fn live(&self) -> usize {
        self.entries.len()
    }
}
