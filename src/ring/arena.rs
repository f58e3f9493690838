//! The arena: one block of memory that container output is read into (with READ_FIXED
//! when the kernel lets us register it) and that client sends reference, so a chunk is
//! read once and never copied in user space on its way to the clients.
//!
//! The memory is held as a raw allocation: the kernel reads and writes it while
//! operations are in flight, so Rust references to it exist only for ranges no read is
//! writing ([`Arena::slice`]), and only while the ring is borrowed. The arena belongs to
//! the [`Ring`](super::Ring), which frees it only after every operation has completed.

use std::ops::Range;
use std::ptr::NonNull;

pub(crate) struct Arena {
    /// Start of a `Box<[u8]>` of `len` bytes, turned into a raw pointer.
    base: NonNull<u8>,
    len: usize,
    /// Whether the memory is registered with the ring as fixed buffer 0.
    pub(crate) registered: bool,
    /// Ranges that in-flight reads are writing (a handful at most: one per source).
    writing: Vec<Range<usize>>,
}

impl Arena {
    pub(crate) fn new(len: usize) -> Self {
        let mem: Box<[u8]> = vec![0u8; len].into_boxed_slice();
        let base = NonNull::new(Box::into_raw(mem).cast::<u8>()).expect("Box pointers are never null");
        Arena {
            base,
            len,
            registered: false,
            writing: Vec::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn check(&self, range: &Range<usize>) {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "arena range {range:?} out of bounds"
        );
    }

    fn overlaps_writing(&self, range: &Range<usize>) -> bool {
        self.writing.iter().any(|w| w.start < range.end && range.start < w.end)
    }

    /// Records that a read is about to write `range` and returns where it starts. Panics if
    /// another read writes there: that would be a bug in the caller's buffer accounting.
    pub(crate) fn begin_write(&mut self, range: Range<usize>) -> *mut u8 {
        let ptr = self.ptr(&range);
        assert!(!self.overlaps_writing(&range), "two reads into arena range {range:?}");
        self.writing.push(range);
        ptr
    }

    pub(crate) fn end_write(&mut self, range: &Range<usize>) {
        if let Some(i) = self.writing.iter().position(|w| w == range) {
            self.writing.swap_remove(i);
        }
    }

    /// Where `range` starts, for an operation that reads it (a send or a write).
    pub(crate) fn ptr(&self, range: &Range<usize>) -> *mut u8 {
        self.check(range);
        self.base.as_ptr().wrapping_add(range.start)
    }

    /// The whole memory, for registration.
    pub(crate) fn iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.base.as_ptr().cast(),
            iov_len: self.len,
        }
    }

    /// The bytes of `range`, which no in-flight read may be writing.
    pub(crate) fn slice(&self, range: Range<usize>) -> &[u8] {
        self.check(&range);
        assert!(
            !self.overlaps_writing(&range),
            "arena range {range:?} is being written by a read"
        );
        // SAFETY: `base..base+len` is a live allocation owned by this arena (freed only in
        // Drop), the range is within it (checked), and no in-flight read writes to it
        // (checked). Kernel sends may read it concurrently, which shared access allows. New
        // reads need `&mut Ring`, which cannot be had while this borrow of the ring lives.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(range.start), range.len()) }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` came from `Box::into_raw` of a `Box<[u8]>` of `len` bytes
        // in `new`, and are turned back into that box exactly once, here. The ring drops
        // the arena only after all operations that could touch it have completed.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.base.as_ptr(), self.len)) });
    }
}
