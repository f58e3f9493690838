//! Operations as callers describe them, owning every buffer the kernel will touch, and
//! what comes back when they complete. Buffers go in by value and come back out with the
//! result (tokio-uring's habit), so nothing the kernel uses can be freed or moved while
//! an operation is in flight.

use std::io;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::Duration;

use super::fd::Fd;

/// Reads and writes on files use the current file position (offset -1): a regular file
/// is then read sequentially, and a pipe, socket or terminal ignores the offset anyway.
pub(crate) const CURRENT_POSITION: u64 = u64::MAX;

/// An operation to submit.
#[derive(Debug)]
pub enum Op {
    /// Read from `fd` into an arena range (READ_FIXED when the arena is registered).
    ReadArena { fd: Fd, range: Range<usize> },
    /// Write an arena range to `fd`.
    WriteArena { fd: Fd, range: Range<usize> },
    /// Read into the spare capacity of `buf`; its length grows by what was read.
    Read { fd: Fd, buf: Vec<u8> },
    /// Write `buf[start..]`.
    Write { fd: Fd, buf: Vec<u8>, start: usize },
    /// Receive into the spare capacity of `buf`; its length grows by what was received.
    Recv { fd: Fd, buf: Vec<u8> },
    /// Send `buf[start..]` (with `MSG_NOSIGNAL`).
    Send { fd: Fd, buf: Vec<u8>, start: usize },
    /// Send the segments of `msg` with one SENDMSG (with `MSG_NOSIGNAL`).
    SendMsg { fd: Fd, msg: Msg },
    /// Accept connections until cancelled (multishot ACCEPT); each completion carries one.
    AcceptMulti { fd: Fd },
    /// Wait once for `events` (POLLIN, POLLOUT, ...) on `fd`.
    Poll { fd: Fd, events: u32 },
    /// Complete after `after`, with result `-ETIME`.
    Timeout { after: Duration },
}

impl Op {
    pub(crate) fn fd(&self) -> Option<Fd> {
        match self {
            Op::ReadArena { fd, .. }
            | Op::WriteArena { fd, .. }
            | Op::Read { fd, .. }
            | Op::Write { fd, .. }
            | Op::Recv { fd, .. }
            | Op::Send { fd, .. }
            | Op::SendMsg { fd, .. }
            | Op::AcceptMulti { fd }
            | Op::Poll { fd, .. } => Some(*fd),
            Op::Timeout { .. } => None,
        }
    }
}

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

/// What a completed operation hands back.
#[derive(Debug)]
pub enum Output {
    None,
    /// The buffer of a Read, Write, Recv or Send.
    Buf(Vec<u8>),
    /// The message of a SendMsg, for reuse.
    Msg(Msg),
    /// A connection from an AcceptMulti.
    Accepted(OwnedFd),
}

/// A completion: the caller's token, the kernel's result, and the operation's resources.
#[derive(Debug)]
pub struct Completion {
    pub token: u64,
    /// The raw CQE result: a count or a negative errno.
    pub res: i32,
    /// A multishot operation continues (IORING_CQE_F_MORE).
    pub more: bool,
    pub output: Output,
}

impl Completion {
    pub fn result(&self) -> io::Result<usize> {
        if self.res < 0 {
            Err(io::Error::from_raw_os_error(-self.res))
        } else {
            Ok(self.res as usize)
        }
    }

    /// The buffer of a Read, Write, Recv or Send.
    pub fn into_buf(self) -> Vec<u8> {
        match self.output {
            Output::Buf(b) => b,
            other => panic!("completion carries {other:?}, not a buffer"),
        }
    }
}
