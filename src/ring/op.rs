//! Operations as callers describe them, owning every buffer the kernel will touch, and
//! what comes back when they complete. Buffers go in by value and come back out with the
//! result (tokio-uring's habit), so nothing the kernel uses can be freed or moved while
//! an operation is in flight.

use std::io;
use std::ops::Range;
use std::os::fd::{OwnedFd, RawFd};
use std::time::Duration;

use super::fd::Fd;
use crate::msg::Msg;

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
    /// Send the segments of `msg` with one SENDMSG (with `MSG_NOSIGNAL` and
    /// `MSG_DONTWAIT`: a socket that takes nothing now answers `-EAGAIN` at once, so no
    /// send waits in flight on memory that could be reused meanwhile).
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

/// An operation ready to run on either engine: its descriptor number, and pointers into
/// memory its slot owns (or into the arena) that stay valid until its final completion.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Prepared {
    /// Read into `ptr..ptr+len`; `fixed` from the registered arena.
    Read {
        fd: RawFd,
        ptr: *mut u8,
        len: usize,
        fixed: bool,
    },
    /// Write `ptr..ptr+len`; `fixed` from the registered arena.
    Write {
        fd: RawFd,
        ptr: *const u8,
        len: usize,
        fixed: bool,
    },
    Recv {
        fd: RawFd,
        ptr: *mut u8,
        len: usize,
    },
    /// Send with `MSG_NOSIGNAL`.
    Send {
        fd: RawFd,
        ptr: *const u8,
        len: usize,
    },
    /// SENDMSG with `MSG_NOSIGNAL | MSG_DONTWAIT`.
    SendMsg {
        fd: RawFd,
        hdr: *const libc::msghdr,
    },
    Accept {
        fd: RawFd,
    },
    Poll {
        fd: RawFd,
        events: u32,
    },
    /// `ts` holds `after` for the kernel.
    Timeout {
        ts: *const io_uring::types::Timespec,
        after: Duration,
    },
}

/// A completion as an engine reports it: the slot's key, the result (a count, a new
/// descriptor, or a negative errno), and whether a multishot operation goes on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Done {
    pub key: u64,
    pub res: i32,
    pub more: bool,
}
