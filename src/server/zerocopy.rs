//! The zero-copy path (issue 4): container output reaches unix-socket clients as pipe
//! pages, never copied through user space.
//!
//! Each stream is staged in rounds. A round moves up to one record's worth of the
//! container's output into a staging pipe (`splice`, a move for a pipe source; a PTY is
//! copied in by the tty layer). For protobuf clients the round is also framed once, into
//! a second pipe: the chunk line, RecordIO length and message prefix are written, the
//! payload is duplicated behind them (`tee`), then the chunk end. Every zero-copy client
//! then gets the round duplicated into its own pipe (`tee`, raw clients from the payload
//! pipe, protobuf clients from the framed one), and its pipe is moved into its socket
//! (`splice`) as the socket takes it. Only then is the payload consumed: moved into the
//! logger (`splice`) when no copying client needs it, or read by the copy engine, which
//! logs it and serves the JSON clients as before.
//!
//! The calls are direct non-blocking syscalls from the ring thread (io_uring would punt
//! them to worker threads, at 1.4 to 2.1 times the CPU: LIMITS.md §B2); readiness comes
//! from ring polls. A client's pipe is its lag bound: a client whose pipe cannot take a
//! round is cut off (`LagPolicy::Disconnect`), or holds the round back, as the logger
//! would (`LagPolicy::Block`).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{OFlag, SpliceFFlags, splice, tee};
use nix::sys::socket::MsgFlags;

use crate::config::LagPolicy;
use crate::relay::Framing;
use crate::ring::{Fd, OpId, Ring};
use crate::wire::frame;
use crate::wire::message::{Format, Stream};

const NONBLOCK: SpliceFFlags = SpliceFFlags::SPLICE_F_NONBLOCK;
const MOVE: SpliceFFlags = SpliceFFlags::SPLICE_F_NONBLOCK.union(SpliceFFlags::SPLICE_F_MOVE);
const PAGE: usize = 4096;
/// Rounds up to this size are copied into the client pipes rather than teed: a teed
/// buffer takes a pipe slot of its own however small it is, while small writes share
/// pages, so a client's pipe holds many more small records (lines of a log, say) this
/// way, at the cost of a copy of at most a page.
const SMALL_ROUND: usize = PAGE;
/// Most records in one framed round: each costs three pipe buffers at least, however
/// small it is.
const MAX_RECORDS_PER_ROUND: usize = 16;
/// Slots kept free in a client pipe for the error of our count of its slots (a page
/// shared by small writes is counted once, and may outlive the write that took it).
const SLOT_MARGIN: usize = 2;

/// A pipe pair, both ends non-blocking and close-on-exec, raised to `bytes` (best
/// effort); returns the capacity it got.
fn pipe(bytes: usize) -> io::Result<(OwnedFd, OwnedFd, usize)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    let size = crate::sys::grow_pipe(&w, bytes)?;
    Ok((r, w, size))
}

/// Pipe buffers (slots) a run of `len` bytes takes when it was written in whole pages:
/// its pages plus a partial one at each end.
fn slots_for(len: usize) -> usize {
    len.div_ceil(PAGE) + 1
}

/// Pipe buffers a run of `len` bytes may take however it was written: a write starts a
/// new buffer only when it does not fit the last one, so two buffers in a row hold more
/// than a page.
fn max_buffers(len: usize) -> usize {
    2 * len.div_ceil(PAGE) + 2
}

/// What a staged round is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Consume {
    /// Clients still owed the round.
    Owed,
    /// The copy engine reads the payload (`left` bytes to go).
    Engine { left: usize },
    /// The payload moves into the logger (`left` bytes to go).
    Logger { left: usize },
}

/// One staged round.
#[derive(Debug)]
pub(crate) struct Round {
    /// Payload bytes in the payload pipe.
    pub len: usize,
    /// Bytes of the framed records in the framed pipe (0 when no protobuf client was
    /// attached at staging, or when the round is small), and the pipe buffers they may
    /// take.
    pub framed: usize,
    pub framed_slots: usize,
    /// The most pipe buffers the round may take in a client's pipe (framed, or raw),
    /// however fragmented the container's writes were.
    pub framed_slots_max: usize,
    pub raw_slots_max: usize,
    /// A small round, copied: its framed record (when framed), and where its payload
    /// starts in it.
    pub small: Option<(Vec<u8>, usize)>,
    /// Zero-copy clients (by slot) that still need the round.
    pub owed: Vec<usize>,
    pub consume: Consume,
}

/// The staging of one stream.
pub(crate) struct Stage {
    /// The container's side (pipe read end or PTY master), in the ring's table.
    pub src: Fd,
    pub pty: bool,
    pub stream: Stream,
    /// The payload pipe; the copy engine reads `payload_r` through its ring alias.
    pub payload_r: OwnedFd,
    pub payload_w: Option<OwnedFd>,
    /// The framed pipe (protobuf records around the payload).
    pub framed_r: OwnedFd,
    pub framed_w: OwnedFd,
    /// Where each record's worth is taken in to be framed, before it joins the payload.
    intake_r: OwnedFd,
    intake_w: OwnedFd,
    /// The round staged, if any.
    pub round: Option<Round>,
    /// The source ended (the payload pipe's write end is then closed).
    pub eof: bool,
    /// A poll for the source (readable) or the logger (writable) is in flight.
    pub src_poll: Option<OpId>,
    pub logger_poll: Option<OpId>,
    /// Largest round, and largest record.
    pub max_round: usize,
    max_record: usize,
    /// Most records in a framed round.
    max_records: usize,
    /// Pipe buffers the intake, payload and framed pipes hold, and the most one record
    /// takes.
    intake_slots: usize,
    record_max: usize,
    payload_slots: usize,
    framed_cap: usize,
    /// The pipe buffers a framed round takes: as counted for clients (whole pages), and
    /// at most (fragmented writes).
    pub round_slots: usize,
    pub round_slots_max: usize,
    /// /dev/null, where a framed record is dropped once every client has it.
    pub null: OwnedFd,
}

/// What a staging step did.
pub(crate) enum Staged {
    /// A round is staged.
    Round,
    /// Nothing to read now: poll the source.
    Empty,
    /// The source ended.
    Eof,
}

impl Stage {
    /// A stage whose rounds take up to `max_round` bytes; framed, they are records of at
    /// most `max_record` bytes.
    pub fn new(src: Fd, pty: bool, stream: Stream, max_round: usize, max_record: usize) -> io::Result<Stage> {
        // A round must fit its pipes in one piece, in buffers (slots) as well as in bytes.
        // A record takes as many buffers as the container's writes left in its pipe: at
        // most `max_buffers` of its bytes, and at most what the intake pipe holds. Each
        // framed record adds one buffer for its head and one for its end.
        let max_records = max_round.div_ceil(max_record).clamp(1, MAX_RECORDS_PER_ROUND);
        let (intake_r, intake_w, intake_size) =
            pipe((slots_for(max_record) * PAGE).next_power_of_two().max(16 * PAGE))?;
        let intake_slots = intake_size / PAGE;
        let record_max = max_buffers(max_record).min(intake_slots);
        let (payload_r, payload_w, size) = pipe((max_records * record_max).max(slots_for(max_round)) * PAGE)?;
        let (framed_r, framed_w, framed_size) = pipe((max_records * (record_max + 2) + 1) * PAGE)?;
        let (payload_slots, framed_cap) = (size / PAGE, framed_size / PAGE);
        // One record at least, however fragmented; fewer rounds' records where the pipes
        // could not be raised as far as wished.
        if payload_slots < record_max || framed_cap < record_max + 3 {
            return Err(io::Error::other(
                "cannot size the staging pipes (the per-user pipe budget is spent)",
            ));
        }
        let records = max_records
            .min(payload_slots / record_max)
            .min((framed_cap - 1) / (record_max + 2))
            .max(1);
        let round_slots = slots_for(max_round) + 3 * records;
        let round_slots_max = records * (record_max + 2) + 1;
        let null = nix::fcntl::open(
            "/dev/null",
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        Ok(Stage {
            src,
            pty,
            stream,
            payload_r,
            payload_w: Some(payload_w),
            framed_r,
            framed_w,
            intake_r,
            intake_w,
            round: None,
            eof: false,
            src_poll: None,
            logger_poll: None,
            max_round,
            max_record,
            max_records: records,
            intake_slots,
            record_max,
            payload_slots,
            framed_cap,
            round_slots,
            round_slots_max,
            null,
        })
    }

    /// Moves the next round from the source into the payload pipe and, when `frame`,
    /// frames it for protobuf clients: up to a round's worth, in records of at most
    /// `max_record` bytes, each taken in through the intake pipe, framed around a tee of
    /// it, then moved behind the payload.
    pub fn stage(&mut self, ring: &mut Ring, frame: bool, owed: Vec<usize>) -> io::Result<Staged> {
        debug_assert!(self.round.is_none() && !self.eof);
        let payload_w = self.payload_w.as_ref().expect("open until the end of the source");
        let src = ring.borrow(self.src);
        let (into, first_cap) = if frame {
            (&self.intake_w, self.max_record)
        } else {
            (payload_w, self.max_round)
        };
        let mut n = match splice(src, None, into, None, first_cap, MOVE) {
            Ok(0) => return Ok(self.end()),
            Ok(n) => n,
            Err(Errno::EAGAIN) => return Ok(Staged::Empty),
            Err(Errno::EINTR) => return Ok(Staged::Empty),
            // A PTY master reads EIO once every slave is closed: the end of the stream.
            Err(Errno::EIO) if self.pty => return Ok(self.end()),
            Err(e) => return Err(e.into()),
        };
        if self.pty {
            n += gather(src, into, first_cap - n);
        }
        if !frame {
            let small = if n <= SMALL_ROUND {
                // A copy of the payload (through the framed pipe, empty between rounds).
                let teed = tee(&self.payload_r, &self.framed_w, n, NONBLOCK)?;
                let mut bytes = vec![0; n];
                let read = nix::unistd::read(&self.framed_r, &mut bytes)?;
                if teed != n || read != n {
                    return Err(io::Error::other(format!("staging copied {read} of {n} bytes")));
                }
                Some((bytes, 0))
            } else {
                None
            };
            self.round = Some(Round {
                len: n,
                framed: 0,
                framed_slots: 0,
                framed_slots_max: 0,
                raw_slots_max: max_buffers(n).min(self.payload_slots),
                small,
                owed,
                consume: Consume::Owed,
            });
            return Ok(Staged::Round);
        }
        let (mut len, mut framed, mut framed_slots, mut records) = (0, 0, 0, 0);
        // The buffers the round may take in the framed and payload pipes, at most.
        let (mut framed_max, mut payload_max) = (1, 0);
        let mut small = None;
        loop {
            // The intake holds `n` bytes: one record.
            let mut head = Vec::with_capacity(40);
            frame::data_head(Format::Protobuf, self.stream, n, &mut head);
            let tail = frame::data_tail(Format::Protobuf);
            if records == 0 && n <= SMALL_ROUND {
                // A small round (one record), framed in memory; the payload is copied on.
                let start = head.len();
                let mut bytes = head;
                bytes.resize(start + n, 0);
                let read = nix::unistd::read(&self.intake_r, &mut bytes[start..])?;
                if read != n {
                    return Err(io::Error::other(format!("staging copied {read} of {n} bytes")));
                }
                write_all(payload_w, &bytes[start..])?;
                bytes.extend_from_slice(tail);
                small = Some((bytes, start));
                len = n;
                break;
            }
            write_all(&self.framed_w, &head)?;
            let teed = tee(&self.intake_r, &self.framed_w, n, NONBLOCK)?;
            if teed != n {
                return Err(io::Error::other(format!("framing took {teed} of {n} bytes")));
            }
            write_all(&self.framed_w, tail)?;
            move_all(&self.intake_r, payload_w, n)?;
            framed += head.len() + n + tail.len();
            framed_slots += slots_for(n) + 2;
            let worst = max_buffers(n).min(self.intake_slots);
            framed_max += worst + 2;
            payload_max += worst;
            len += n;
            records += 1;
            if records == self.max_records
                || len >= self.max_round
                || framed_max + self.record_max + 2 > self.framed_cap
                || payload_max + self.record_max > self.payload_slots
            {
                break;
            }
            // More waiting? (Its end, or an error, shows at the next staging.)
            let cap = self.max_record.min(self.max_round - len);
            n = match splice(src, None, &self.intake_w, None, cap, MOVE) {
                Ok(n) if n > 0 => n,
                _ => break,
            };
            if self.pty {
                n += gather(src, &self.intake_w, cap - n);
            }
        }
        self.round = Some(Round {
            len,
            framed,
            framed_slots,
            framed_slots_max: framed_max,
            raw_slots_max: payload_max.max(1),
            small,
            owed,
            consume: Consume::Owed,
        });
        Ok(Staged::Round)
    }

    fn end(&mut self) -> Staged {
        self.eof = true;
        self.payload_w = None;
        Staged::Eof
    }

    /// Drops the framed record (every client has it).
    pub fn drop_framed(&mut self) -> io::Result<()> {
        let Some(round) = &mut self.round else { return Ok(()) };
        while round.framed > 0 {
            let n = splice(&self.framed_r, None, &self.null, None, round.framed, NONBLOCK)?;
            if n == 0 {
                return Err(io::Error::other("the framed record vanished"));
            }
            round.framed -= n;
        }
        Ok(())
    }

    /// Moves the rest of the payload into the logger; `Ok(true)` when it is all there,
    /// `Ok(false)` when the logger takes no more for now.
    pub fn log(&mut self, ring: &mut Ring, logger: Fd) -> io::Result<bool> {
        let Some(Round {
            consume: Consume::Logger { left },
            ..
        }) = &mut self.round
        else {
            return Ok(true);
        };
        while *left > 0 {
            match splice(
                &self.payload_r,
                None,
                ring.borrow(logger),
                None,
                *left,
                NONBLOCK | SpliceFFlags::SPLICE_F_MOVE,
            ) {
                Ok(0) => return Err(io::Error::other("the logger accepts no more bytes")),
                Ok(n) => *left -= n,
                Err(Errno::EAGAIN) => return Ok(false),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.round = None;
        Ok(true)
    }

    /// The copy engine read `n` payload bytes; true when the round is consumed.
    pub fn engine_read(&mut self, n: usize) -> bool {
        if let Some(Round {
            consume: Consume::Engine { left },
            ..
        }) = &mut self.round
        {
            *left = left.saturating_sub(n);
            if *left == 0 {
                self.round = None;
                return true;
            }
        }
        false
    }

    /// Whether the copy engine may read the payload pipe now.
    pub fn engine_may_read(&self) -> bool {
        self.round
            .as_ref()
            .is_some_and(|r| matches!(r.consume, Consume::Engine { .. }))
    }
}

/// Splices what a PTY master still holds into `into`, up to `cap` bytes: it gives at most
/// a few KiB per call. Returns how much.
fn gather(src: std::os::fd::BorrowedFd<'_>, into: &OwnedFd, cap: usize) -> usize {
    let mut got = 0;
    while got < cap {
        match splice(src, None, into, None, cap - got, MOVE) {
            Ok(n) if n > 0 => got += n,
            _ => break,
        }
    }
    got
}

/// Moves exactly `len` bytes from one pipe to another that has room for them.
fn move_all(from: &OwnedFd, to: &OwnedFd, len: usize) -> io::Result<()> {
    let mut left = len;
    while left > 0 {
        match splice(from, None, to, None, left, MOVE) {
            Ok(n) if n > 0 => left -= n,
            Err(Errno::EINTR) => {}
            other => {
                return Err(io::Error::other(format!(
                    "staging moved {} of {len} bytes ({other:?})",
                    len - left
                )));
            }
        }
    }
    Ok(())
}

/// Writes all of `bytes` into a pipe that has room for them (they are small).
fn write_all(fd: &OwnedFd, bytes: &[u8]) -> io::Result<()> {
    let n = nix::unistd::write(fd, bytes)?;
    if n != bytes.len() {
        return Err(io::Error::other(format!("a pipe took {n} of {} bytes", bytes.len())));
    }
    Ok(())
}

/// Why delivering to a zero-copy client stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gone {
    /// It could not take a round in time (its pipe is full).
    Lagging,
    /// Its connection failed or closed.
    Closed,
}

/// What a put of small bytes did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Put {
    Done,
    /// No room: nothing was sent or queued.
    NoRoom,
    /// Part was sent: the client's stream is torn, and it cannot go on.
    Torn,
}

/// What an offer of a round to a client did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    Taken,
    /// No room now; it may take it later (blocking clients).
    Later,
    Cut(Gone),
}

/// A zero-copy client: its socket, and the pipe between the rounds and the socket.
pub(crate) struct ZcClient {
    pub fd: Fd,
    pub framing: Framing,
    pub policy: LagPolicy,
    pipe_r: OwnedFd,
    pipe_w: OwnedFd,
    /// Pipe buffers the pipe holds (the kernel's count is not visible).
    capacity_slots: usize,
    /// Bytes in the pipe, and the buffers each run of them may take (oldest first).
    queued: usize,
    runs: VecDeque<(usize, usize)>,
    slots: usize,
    /// Room left in the page the last small write went to (the next small write that
    /// fits shares it); 0 after a tee.
    tail_room: usize,
    /// Payload bytes delivered into the pipe, and moved on to the socket.
    pub delivered: u64,
    pub out_poll: Option<OpId>,
    pub hup_poll: Option<OpId>,
    /// The end of its stream is in its pipe (or it is being closed).
    pub finished: bool,
    pub closing: bool,
    pub gone: Option<Gone>,
    /// The round position of its last progress, for the blocking check.
    pub moved: u64,
}

impl ZcClient {
    /// A zero-copy client for `fd` (made non-blocking), with `front` queued first; `None`
    /// when its pipe cannot hold `min_bytes` (the per-user pipe budget is spent).
    pub fn new(
        ring: &mut Ring,
        fd: Fd,
        framing: Framing,
        policy: LagPolicy,
        front: &[u8],
        pipe_bytes: usize,
        min_bytes: usize,
    ) -> io::Result<Option<ZcClient>> {
        let (pipe_r, pipe_w, size) = pipe(pipe_bytes)?;
        if size < min_bytes {
            return Ok(None);
        }
        crate::sys::set_nonblocking(ring.borrow(fd))?;
        // A socket buffer that takes a whole round in one splice saves a wait (and a
        // poll) per round, per client; what it holds of large rounds are references to
        // the pipe's pages. (`min_bytes` is two rounds' worth; the kernel doubles the
        // value for its bookkeeping and caps it at net.core.wmem_max.) Best effort.
        let _ = nix::sys::socket::setsockopt(&ring.borrow(fd), nix::sys::socket::sockopt::SndBuf, &min_bytes);
        let mut c = ZcClient {
            fd,
            framing,
            policy,
            pipe_r,
            pipe_w,
            capacity_slots: size / PAGE,
            queued: 0,
            runs: VecDeque::new(),
            slots: 0,
            tail_room: 0,
            delivered: 0,
            out_poll: None,
            hup_poll: None,
            finished: false,
            closing: false,
            gone: None,
            moved: 0,
        };
        match c.put(ring, front) {
            Put::Done => {}
            Put::NoRoom => return Ok(None),
            Put::Torn => {
                // Part of its head went out: no path can go on with it.
                let _ = nix::sys::socket::shutdown(ring.raw(fd), nix::sys::socket::Shutdown::Both);
                return Err(io::Error::other("its response head was cut short"));
            }
        }
        Ok(Some(c))
    }

    fn record(&mut self, len: usize, slots: usize) {
        self.queued += len;
        self.runs.push_back((len, slots));
        self.slots += slots;
    }

    /// Sends or queues small bytes (a response head, a heartbeat, the last chunk, a small
    /// round). With nothing queued ahead of them they go straight into the socket: one
    /// syscall instead of a write into the pipe and a splice out of it.
    pub fn put(&mut self, ring: &mut Ring, mut bytes: &[u8]) -> Put {
        let mut some_sent = false;
        if self.queued == 0 {
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
            // An error (the peer gone) is left for the next flush to find.
            if let Ok(sent) = nix::sys::socket::send(ring.raw(self.fd), bytes, flags) {
                self.moved += sent as u64;
                bytes = &bytes[sent..];
                if bytes.is_empty() {
                    return Put::Done;
                }
                some_sent = sent > 0;
            }
        }
        let torn_or_no_room = if some_sent { Put::Torn } else { Put::NoRoom };
        let n = bytes.len();
        // A write shares the last page when it fits there, else it takes pages of its own.
        let slots = if n <= self.tail_room { 0 } else { n.div_ceil(PAGE) };
        if self.slots + slots + SLOT_MARGIN > self.capacity_slots {
            return torn_or_no_room;
        }
        match nix::unistd::write(&self.pipe_w, bytes) {
            Ok(written) if written == n => {
                self.tail_room = if slots == 0 {
                    self.tail_room - n
                } else {
                    slots * PAGE - n
                };
                self.record(n, slots);
                Put::Done
            }
            Ok(0) | Err(_) => torn_or_no_room,
            // A short write leaves a torn record: the client cannot go on.
            Ok(_) => Put::Torn,
        }
    }

    /// Offers a staged round (from the framed pipe for protobuf clients).
    pub fn offer(&mut self, ring: &mut Ring, stage: &Stage, round: &Round) -> Offer {
        let later = match self.policy {
            LagPolicy::Block => Offer::Later,
            LagPolicy::Disconnect => Offer::Cut(Gone::Lagging),
        };
        if let Some((bytes, start)) = &round.small {
            let bytes = match self.framing {
                Framing::Chunked(_) => &bytes[..],
                Framing::Raw => &bytes[*start..*start + round.len],
            };
            return match self.put(ring, bytes) {
                Put::Done => {
                    self.delivered += round.len as u64;
                    Offer::Taken
                }
                Put::NoRoom => later,
                Put::Torn => Offer::Cut(Gone::Lagging),
            };
        }
        // The payload's buffers, and for records the framing's own (head, end). A client
        // that holds the container back counts them at their most (fragmented writes),
        // so that a round never tears in its pipe; the others as whole pages, and are
        // cut if their pipe turns out fuller than that.
        let blocking = self.policy == LagPolicy::Block;
        let (from, len, slots) = match (self.framing, blocking) {
            (Framing::Chunked(_), false) => (&stage.framed_r, round.framed, round.framed_slots),
            (Framing::Chunked(_), true) => (&stage.framed_r, round.framed, round.framed_slots_max),
            (Framing::Raw, false) => (&stage.payload_r, round.len, slots_for(round.len)),
            (Framing::Raw, true) => (&stage.payload_r, round.len, round.raw_slots_max),
        };
        if self.slots + slots + SLOT_MARGIN > self.capacity_slots {
            return later;
        }
        match tee(from.as_fd(), &self.pipe_w, len, NONBLOCK) {
            Ok(n) if n == len => {
                self.tail_room = 0;
                self.record(n, slots);
                self.delivered += round.len as u64;
                Offer::Taken
            }
            // Nothing taken: the pipe is fuller than counted.
            Ok(0) | Err(Errno::EAGAIN) => later,
            // Short: part of the round is in its pipe. Its record is torn.
            Ok(_) => Offer::Cut(Gone::Lagging),
            Err(_) => Offer::Cut(Gone::Closed),
        }
    }

    /// Moves what the pipe holds into the socket. `Ok(true)` when the pipe is empty,
    /// `Ok(false)` when the socket takes no more for now.
    pub fn flush(&mut self, ring: &mut Ring) -> Result<bool, Gone> {
        while self.queued > 0 {
            let flags = NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
            match splice(&self.pipe_r, None, ring.borrow(self.fd), None, self.queued, flags) {
                Ok(0) => return Err(Gone::Closed),
                Ok(n) => self.sent(n),
                Err(Errno::EAGAIN) => return Ok(false),
                Err(Errno::EINTR) => {}
                Err(_) => return Err(Gone::Closed),
            }
        }
        Ok(true)
    }

    /// Bytes still in its pipe (not yet taken by its socket).
    pub fn backlog(&self) -> usize {
        self.queued
    }

    fn sent(&mut self, mut n: usize) {
        self.queued -= n;
        self.moved += n as u64;
        if self.queued == 0 {
            // An empty pipe: the next write starts a page of its own.
            self.tail_room = 0;
        }
        while n > 0 {
            let Some((len, slots)) = self.runs.front_mut() else { break };
            if n >= *len {
                n -= *len;
                self.slots -= *slots;
                self.runs.pop_front();
            } else {
                // A run partly sent: how many buffers its rest takes is not known. A
                // client that holds the container back keeps the whole count until the
                // run is gone (its rounds must never tear); the others count the rest
                // as whole pages (a tee that then comes up short cuts them, as lagging).
                *len -= n;
                if self.policy == LagPolicy::Disconnect {
                    let left = slots_for(*len).min(*slots);
                    self.slots -= *slots - left;
                    *slots = left;
                }
                n = 0;
            }
        }
    }
}
