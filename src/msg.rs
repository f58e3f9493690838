//! A gather list: the segments of one send and the memory they refer to. The relay
//! builds one per send to a client (framing copied in, payload referenced in the arena or
//! in shared buffers), and the ring turns it into the iovecs of a SENDMSG, owning it until
//! the send completes. Plain data: no room here touches the kernel.

use std::ops::Range;
use std::rc::Rc;

/// One part of a [`Msg`].
#[derive(Debug, Clone)]
pub enum Seg {
    /// Bytes of `Msg::scratch`.
    Scratch(Range<usize>),
    /// Bytes of the ring's arena.
    Arena(Range<usize>),
    /// Bytes of `Msg::held[index]`.
    Held { index: usize, range: Range<usize> },
}

/// The segments of one SENDMSG and the memory they refer to. Reuse it: its vectors keep
/// their capacity when [`Msg::clear`]ed.
#[derive(Debug, Default)]
pub struct Msg {
    /// Small bytes copied in for this send (record framing).
    pub(crate) scratch: Vec<u8>,
    /// Shared buffers this send refers to, kept alive until it completes.
    pub(crate) held: Vec<Rc<[u8]>>,
    /// What to send, in order.
    pub(crate) segs: Vec<Seg>,
    /// The total length of `segs`.
    len: usize,
    /// The iovecs built from `segs` at submission.
    pub(crate) iov: Vec<libc::iovec>,
}

impl Msg {
    pub fn clear(&mut self) {
        self.scratch.clear();
        self.held.clear();
        self.segs.clear();
        self.iov.clear();
        self.len = 0;
    }

    /// The number of bytes the segments hold.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The number of segments.
    pub fn segments(&self) -> usize {
        self.segs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `bytes` to the scratch buffer as a segment, merging with a scratch segment
    /// just before it.
    pub fn push_copy(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let start = self.scratch.len();
        self.scratch.extend_from_slice(bytes);
        let end = self.scratch.len();
        self.len += bytes.len();
        if let Some(Seg::Scratch(r)) = self.segs.last_mut()
            && r.end == start
        {
            r.end = end;
            return;
        }
        self.segs.push(Seg::Scratch(start..end));
    }

    /// Appends what `write` writes to the scratch buffer, minus its first `skip` bytes, as
    /// a segment (merged as by [`Msg::push_copy`]). Returns how many bytes `write` wrote.
    pub fn push_copy_with(&mut self, skip: usize, write: impl FnOnce(&mut Vec<u8>)) -> usize {
        let start = self.scratch.len();
        write(&mut self.scratch);
        let written = self.scratch.len() - start;
        self.scratch.drain(start..start + skip.min(written));
        let end = self.scratch.len();
        if end > start {
            self.len += end - start;
            match self.segs.last_mut() {
                Some(Seg::Scratch(r)) if r.end == start => r.end = end,
                _ => self.segs.push(Seg::Scratch(start..end)),
            }
        }
        written
    }

    /// Appends an arena range as a segment.
    pub fn push_arena(&mut self, range: Range<usize>) {
        if !range.is_empty() {
            self.len += range.len();
            self.segs.push(Seg::Arena(range));
        }
    }

    /// Appends a range of a shared buffer as a segment, holding the buffer.
    pub fn push_held(&mut self, buf: &Rc<[u8]>, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        self.len += range.len();
        let index = match self.held.iter().position(|h| Rc::ptr_eq(h, buf)) {
            Some(i) => i,
            None => {
                self.held.push(Rc::clone(buf));
                self.held.len() - 1
            }
        };
        self.segs.push(Seg::Held { index, range });
    }
}
