//! File descriptors as the ring sees them. An [`Fd`] is a handle into the ring's table;
//! closing it (`Ring::close`) takes effect only once no operation on it is in flight, so
//! an fd number is never reused while the kernel may still act on it.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// A handle to a file descriptor held by the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fd {
    index: u32,
    generation: u32,
}

struct Entry {
    raw: RawFd,
    /// Dropping it closes the descriptor.
    _owned: OwnedFd,
    generation: u32,
    in_flight: u32,
    closing: bool,
}

#[derive(Default)]
pub(crate) struct FdTable {
    entries: Vec<Option<Entry>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    live: usize,
}

impl FdTable {
    /// Takes ownership of `fd`.
    pub(crate) fn adopt(&mut self, fd: OwnedFd) -> Fd {
        let raw = fd.as_raw_fd();
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.entries.push(None);
                self.generations.push(0);
                (self.entries.len() - 1) as u32
            }
        };
        let generation = self.generations[index as usize].wrapping_add(1);
        self.generations[index as usize] = generation;
        self.entries[index as usize] = Some(Entry {
            raw,
            _owned: fd,
            generation,
            in_flight: 0,
            closing: false,
        });
        self.live += 1;
        Fd { index, generation }
    }

    /// The handle of an entry for descriptor number `raw`, if the table has one.
    pub(crate) fn find_raw(&self, raw: RawFd) -> Option<Fd> {
        self.entries.iter().enumerate().find_map(|(i, e)| match e {
            Some(e) if e.raw == raw && !e.closing => Some(Fd {
                index: i as u32,
                generation: e.generation,
            }),
            _ => None,
        })
    }

    fn entry(&mut self, fd: Fd) -> &mut Entry {
        match self.entries.get_mut(fd.index as usize) {
            Some(Some(e)) if e.generation == fd.generation => e,
            _ => panic!("stale or unknown fd handle {fd:?}"),
        }
    }

    /// The descriptor number, for direct syscalls. Panics on a closed handle.
    pub(crate) fn raw(&self, fd: Fd) -> RawFd {
        match self.entries.get(fd.index as usize) {
            Some(Some(e)) if e.generation == fd.generation && !e.closing => e.raw,
            _ => panic!("stale, unknown or closing fd handle {fd:?}"),
        }
    }

    pub(crate) fn is_open(&self, fd: Fd) -> bool {
        matches!(self.entries.get(fd.index as usize), Some(Some(e)) if e.generation == fd.generation && !e.closing)
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
            self.remove(fd);
        }
    }

    /// Closes `fd` now, or when its last operation completes.
    pub(crate) fn close(&mut self, fd: Fd) {
        let e = self.entry(fd);
        e.closing = true;
        if e.in_flight == 0 {
            self.remove(fd);
        }
    }

    fn remove(&mut self, fd: Fd) {
        // Dropping the entry closes an owned descriptor.
        self.entries[fd.index as usize] = None;
        self.free.push(fd.index);
        self.live -= 1;
    }

    /// Descriptors still held (open, or closing with operations in flight).
    pub(crate) fn live(&self) -> usize {
        self.live
    }
}
