//! Staging: the zero-copy path's first step, one [`Stage`] per stream.
//!
//! A round moves up to one read's worth of the container's output into the payload pipe
//! (`splice`: a move for a pipe source; a PTY master is copied in by the tty layer). While
//! a protobuf client is attached, the round is also framed once, into the framed pipe:
//! each record of it is taken in through the intake pipe, its chunk line and record head
//! are written, its payload duplicated behind them (`tee`), then its chunk end, and the
//! payload moves on behind the earlier ones. A small round is framed in memory instead and
//! copied to its clients (see [`Round::small`]).
//!
//! The round is then offered to every pipe client (see `pipe.rs`); once all have it, the
//! framed records are dropped and the payload is consumed: moved into the logger
//! (`splice`) when no copying client needs it, or read by the copy engine, which logs it
//! and serves the JSON clients.
//!
//! The calls are direct non-blocking syscalls from the ring thread: io_uring would run
//! them in worker threads at 1.4 to 2.1 times the CPU (tuning.md, K3). Readiness comes
//! from ring polls.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{OFlag, SpliceFFlags, splice, tee};

use crate::relay::pipe::{PAGE, RoundSize, max_buffers, slots_for};
use crate::ring::{Fd, OpId, Ring};
use crate::wire::frame;
use crate::wire::message::{Format, Stream};

pub(super) const NONBLOCK: SpliceFFlags = SpliceFFlags::SPLICE_F_NONBLOCK;
pub(super) const MOVE: SpliceFFlags = SpliceFFlags::SPLICE_F_NONBLOCK.union(SpliceFFlags::SPLICE_F_MOVE);

/// Rounds up to this size are copied into the client pipes rather than teed: a teed
/// buffer takes a pipe slot of its own however small it is, while small writes share
/// pages, so a client's pipe holds many more small records (lines of a log, say) this
/// way, at the cost of a copy of at most a page.
const SMALL_ROUND: usize = PAGE;

/// Most records in one framed round: each costs three pipe buffers at least, however
/// small it is.
const MAX_RECORDS_PER_ROUND: usize = 16;

/// A pipe pair, both ends non-blocking and close-on-exec, raised to `bytes` (best
/// effort); returns the capacity it got.
pub(super) fn pipe(bytes: usize) -> io::Result<(OwnedFd, OwnedFd, usize)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    let size = crate::sys::grow_pipe(&w, bytes)?;
    Ok((r, w, size))
}

/// What a staged round is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Consume {
    /// Clients still owed the round.
    Owed,
    /// The copy engine reads the payload (`left` bytes to go).
    Engine { left: usize },
    /// The payload moves into the logger (`left` bytes to go).
    Logger { left: usize },
}

/// One staged round.
#[derive(Debug)]
pub(super) struct Round {
    /// Its sizes, in bytes and in pipe buffers (0 framed bytes when no protobuf client
    /// was attached at staging, or when the round is small).
    pub size: RoundSize,
    /// A small round is copied rather than teed.
    pub small: Option<Small>,
    /// Pipe clients (by index in the client table) that still need the round.
    pub owed: Vec<usize>,
    pub consume: Consume,
    /// Framed: where each record ends, in framed bytes and in payload bytes.
    pub records: Vec<(usize, usize)>,
    /// Pipe clients that took only part of the framed records (how many bytes), to go on
    /// once the round is done with.
    pub torn: Vec<(usize, usize)>,
}

/// A small round's bytes: its framed record (when framed), and where its payload starts
/// in it (at 0 when not framed).
#[derive(Debug)]
pub(super) struct Small {
    pub bytes: Vec<u8>,
    pub start: usize,
}

/// The staging of one stream.
pub(super) struct Stage {
    /// The container's side (pipe read end or PTY master), in the ring's table.
    src: Fd,
    pty: bool,
    stream: Stream,
    /// The payload pipe. Its read end is the ring's (the copy engine reads it with ring
    /// operations), so the ring alone closes it, once those are done.
    payload_r: Fd,
    payload_w: Option<OwnedFd>,
    /// The framed pipe (protobuf records around the payload).
    framed_r: OwnedFd,
    framed_w: OwnedFd,
    /// Where each record's worth is taken in to be framed, before it joins the payload.
    intake_r: OwnedFd,
    intake_w: OwnedFd,
    /// /dev/null, where the framed records are dropped once every client has them.
    null: OwnedFd,
    /// The round staged, if any.
    pub round: Option<Round>,
    /// The source ended (the payload pipe's write end is then closed).
    pub eof: bool,
    /// A poll for the source (readable) or the logger (writable) is in flight.
    pub src_poll: Option<OpId>,
    pub logger_poll: Option<OpId>,
    /// Payload bytes spliced into the logger.
    pub logged: u64,
    sizes: Sizes,
}

/// How much a round may hold, so that it fits every pipe it passes in one piece.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// Largest round, and largest record.
    max_round: usize,
    max_record: usize,
    /// Most records in a framed round.
    max_records: usize,
    /// Pipe buffers the intake, payload and framed pipes hold, and the most one record
    /// takes.
    intake_slots: usize,
    record_max: usize,
    payload_slots: usize,
    framed_cap: usize,
    /// The pipe buffers a framed round takes: as counted for clients (whole pages), and at
    /// most (fragmented writes).
    round_slots: usize,
    round_slots_max: usize,
}

/// What a staging step did.
pub(super) enum Staged {
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
    pub fn new(
        ring: &mut Ring,
        src: Fd,
        pty: bool,
        stream: Stream,
        max_round: usize,
        max_record: usize,
    ) -> io::Result<Stage> {
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
        let null = nix::fcntl::open(
            "/dev/null",
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        Ok(Stage {
            src,
            pty,
            stream,
            payload_r: ring.adopt(payload_r),
            payload_w: Some(payload_w),
            framed_r,
            framed_w,
            intake_r,
            intake_w,
            null,
            round: None,
            eof: false,
            src_poll: None,
            logger_poll: None,
            logged: 0,
            sizes: Sizes {
                max_round,
                max_record,
                max_records: records,
                intake_slots,
                record_max,
                payload_slots,
                framed_cap,
                round_slots: slots_for(max_round) + 3 * records,
                round_slots_max: records * (record_max + 2) + 1,
            },
        })
    }

    /// The container's side of the stream.
    pub fn source(&self) -> Fd {
        self.src
    }

    /// The payload pipe's read end (the copy engine reads the payload there).
    pub fn payload(&self) -> Fd {
        self.payload_r
    }

    /// The least a client pipe must hold: room for two whole rounds, and for one however
    /// fragmented.
    pub fn client_pipe_min(&self) -> usize {
        (2 * self.sizes.round_slots).max(self.sizes.round_slots_max + 4) * PAGE
    }

    /// Where a client reads the round from: the framed pipe for records, the payload pipe
    /// for raw bytes.
    pub fn round_source<'a>(&'a self, ring: &'a Ring, framed: bool) -> BorrowedFd<'a> {
        if framed {
            self.framed_r.as_fd()
        } else {
            ring.borrow(self.payload_r)
        }
    }

    /// Moves the next round from the source into the payload pipe and, when `frame`,
    /// frames it for protobuf clients: up to a round's worth, in records of at most
    /// `max_record` bytes, each taken in through the intake pipe, framed around a tee of
    /// it, then moved behind the payload.
    pub fn stage(&mut self, ring: &mut Ring, frame: bool, owed: Vec<usize>) -> io::Result<Staged> {
        debug_assert!(self.round.is_none() && !self.eof);
        let first_cap = if frame {
            self.sizes.max_record
        } else {
            self.sizes.max_round
        };
        let n = {
            let payload_w = self.payload_w.as_ref().expect("open until the end of the source");
            let into = if frame { &self.intake_w } else { payload_w };
            match take_in(ring.borrow(self.src), into, first_cap, self.pty) {
                Ok(0) => return Ok(self.end()),
                Ok(n) => n,
                Err(Errno::EAGAIN | Errno::EINTR) => return Ok(Staged::Empty),
                // A PTY master reads EIO once every slave is closed: the end of the stream.
                Err(Errno::EIO) if self.pty => return Ok(self.end()),
                Err(e) => return Err(e.into()),
            }
        };
        let mut layout = Vec::new();
        let (size, small) = if frame {
            self.frame_round(ring, n, &mut layout)?
        } else {
            self.raw_round(ring, n)?
        };
        self.round = Some(Round {
            size,
            small,
            owed,
            consume: Consume::Owed,
            records: layout,
            torn: Vec::new(),
        });
        Ok(Staged::Round)
    }

    /// A round of `n` payload bytes for raw clients only; a small one is copied out.
    fn raw_round(&mut self, ring: &mut Ring, n: usize) -> io::Result<(RoundSize, Option<Small>)> {
        let small = if n <= SMALL_ROUND {
            // A copy of the payload (through the framed pipe, empty between rounds).
            let teed = tee(ring.borrow(self.payload_r), &self.framed_w, n, NONBLOCK)?;
            let mut bytes = vec![0; n];
            let read = nix::unistd::read(&self.framed_r, &mut bytes)?;
            if teed != n || read != n {
                return Err(io::Error::other(format!("staging copied {read} of {n} bytes")));
            }
            Some(Small { bytes, start: 0 })
        } else {
            None
        };
        let size = RoundSize {
            len: n,
            raw_slots_max: max_buffers(n).min(self.sizes.payload_slots),
            ..RoundSize::default()
        };
        Ok((size, small))
    }

    /// Frames a round whose first record's `n` bytes are in the intake pipe, taking in
    /// more records while the source has them and the round has room.
    fn frame_round(
        &mut self,
        ring: &mut Ring,
        mut n: usize,
        layout: &mut Vec<(usize, usize)>,
    ) -> io::Result<(RoundSize, Option<Small>)> {
        let payload_w = self.payload_w.as_ref().expect("open until the end of the source");
        let sizes = self.sizes;
        let mut size = RoundSize::default();
        let mut records = 0;
        // The buffers the round may take in the framed and payload pipes, at most.
        let (mut framed_max, mut payload_max) = (1, 0);
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
                size.len = n;
                size.raw_slots_max = 1;
                return Ok((size, Some(Small { bytes, start })));
            }
            write_all(&self.framed_w, &head)?;
            let teed = tee(&self.intake_r, &self.framed_w, n, NONBLOCK)?;
            if teed != n {
                return Err(io::Error::other(format!("framing took {teed} of {n} bytes")));
            }
            write_all(&self.framed_w, tail)?;
            move_all(&self.intake_r, payload_w, n)?;
            size.framed += head.len() + n + tail.len();
            layout.push((size.framed, size.len + n));
            size.framed_slots += slots_for(n) + 2;
            let worst = max_buffers(n).min(sizes.intake_slots);
            framed_max += worst + 2;
            payload_max += worst;
            size.len += n;
            records += 1;
            if records == sizes.max_records
                || size.len >= sizes.max_round
                || framed_max + sizes.record_max + 2 > sizes.framed_cap
                || payload_max + sizes.record_max > sizes.payload_slots
            {
                break;
            }
            // More waiting? (Its end, or an error, shows at the next staging.)
            let cap = sizes.max_record.min(sizes.max_round - size.len);
            n = match take_in(ring.borrow(self.src), &self.intake_w, cap, self.pty) {
                Ok(n) if n > 0 => n,
                _ => break,
            };
        }
        size.framed_slots_max = framed_max;
        size.raw_slots_max = payload_max.max(1);
        Ok((size, None))
    }

    fn end(&mut self) -> Staged {
        self.eof = true;
        self.payload_w = None;
        Staged::Eof
    }

    /// Drops the framed records (every client has them).
    pub fn drop_framed(&mut self) -> io::Result<()> {
        let Some(round) = &mut self.round else { return Ok(()) };
        while round.size.framed > 0 {
            let n = splice(&self.framed_r, None, &self.null, None, round.size.framed, NONBLOCK)?;
            if n == 0 {
                return Err(io::Error::other("the framed records vanished"));
            }
            round.size.framed -= n;
        }
        Ok(())
    }

    /// Reads the framed records out of their pipe (every client has them), for clients
    /// that took only part of them.
    pub fn read_framed(&mut self) -> io::Result<Vec<u8>> {
        let Some(round) = &mut self.round else { return Ok(Vec::new()) };
        let mut framed = vec![0; round.size.framed];
        let mut got = 0;
        while got < framed.len() {
            match nix::unistd::read(&self.framed_r, &mut framed[got..]) {
                Ok(0) => return Err(io::Error::other("the framed records vanished")),
                Ok(k) => got += k,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        round.size.framed = 0;
        Ok(framed)
    }

    /// For a client that took the first `n` bytes of the round's framed records (read
    /// back as `framed`), the rest of the record it is inside, and the position after
    /// that record (the round being at `pos`).
    pub fn rest_of_record(&self, framed: &[u8], n: usize, pos: u64) -> (Vec<u8>, u64) {
        let round = self.round.as_ref().expect("a round");
        let &(end, payload_end) = round
            .records
            .iter()
            .find(|(end, _)| *end > n)
            .unwrap_or(&(n, round.size.len));
        (framed[n..end].to_vec(), pos + payload_end as u64)
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
        let (from, to) = (ring.borrow(self.payload_r), ring.borrow(logger));
        while *left > 0 {
            match splice(from, None, to, None, *left, MOVE) {
                Ok(0) => return Err(io::Error::other("the logger accepts no more bytes")),
                Ok(n) => {
                    *left -= n;
                    self.logged += n as u64;
                }
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

    /// Bytes of the staged round not yet handed to the relay: all of it until its clients
    /// have it, then what the copy engine has still to read (none when it goes to the
    /// logger directly: the relay has counted it past).
    pub fn unaccounted(&self) -> usize {
        match &self.round {
            Some(Round {
                consume: Consume::Owed,
                size,
                ..
            }) => size.len,
            Some(Round {
                consume: Consume::Engine { left },
                ..
            }) => *left,
            _ => 0,
        }
    }

    /// Whether pipe client `i` still needs the staged round.
    pub fn owes(&self, i: usize) -> bool {
        self.round.as_ref().is_some_and(|r| r.owed.contains(&i))
    }
}

/// Splices up to `cap` bytes of the source into `into`. A PTY master gives at most a few
/// KiB per call, so it is asked again until it has nothing more.
fn take_in(src: BorrowedFd<'_>, into: &OwnedFd, cap: usize, pty: bool) -> Result<usize, Errno> {
    let mut got = splice(src, None, into, None, cap, MOVE)?;
    while pty && got > 0 && got < cap {
        match splice(src, None, into, None, cap - got, MOVE) {
            Ok(n) if n > 0 => got += n,
            _ => break,
        }
    }
    Ok(got)
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
