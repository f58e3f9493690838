//! The pipe delivery path (zero copy): a client's output is teed from the staged round
//! into a pipe of its own, and spliced from there into its socket as the socket takes it.
//! The accounting of what its pipe holds, and what its lag policy makes of a full pipe,
//! is `relay::pipe`'s; this file makes the syscalls.

use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::fcntl::{SpliceFFlags, splice, tee};
use nix::sys::socket::MsgFlags;

use super::client::{Client, CopyClient, Path};
use super::stage::{Consume, NONBLOCK, Round, Stage, pipe};
use super::{Output, POLLOUT};
use crate::config::LagPolicy;
use crate::msg::Msg;
use crate::relay::pipe::{NoRoom, PAGE, PipeAccount};
use crate::relay::{CutReason, Framing};
use crate::ring::{Fd, OpId, Ring};
use crate::server::token::OutputOp;
use crate::wire::frame;

/// What a put of small bytes did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Put {
    Done,
    /// No room: nothing was sent or queued.
    NoRoom,
    /// Only this many of the bytes went (sent, or into its pipe): the client's stream
    /// is torn, and can go on only from exactly there.
    Torn(usize),
}

/// What an offer of a round to a client did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Offer {
    Taken,
    /// No room now; it may take it later (blocking clients).
    Later,
    /// No room: it falls behind, to the history (disconnecting clients).
    Behind,
    /// Only this many bytes of the round went into its pipe (it was fuller than
    /// counted): it falls behind from exactly there.
    Torn(usize),
    Cut(CutReason),
}

/// What became of a client offered the pipe path.
pub(super) enum Made {
    Pipe(PipeClient),
    /// It is served by copies instead, for this reason.
    Copies(String),
    /// Part of its response head went out: no path can go on with it.
    Torn,
}

/// A client's pipe, between the staged rounds and its socket.
pub(super) struct PipeClient {
    pipe_r: OwnedFd,
    pipe_w: OwnedFd,
    pub account: PipeAccount,
    /// A wait for its socket to take more.
    pub writable: Option<OpId>,
    /// The end of its stream is in its pipe.
    pub finished: bool,
    /// Its pipe holds part of a record: nothing more goes in until the rest is known.
    pub torn: bool,
}

impl PipeClient {
    /// A pipe of `pipe_bytes` for the client on `fd` (made non-blocking), with `front`
    /// queued first. Served by copies instead when the pipe cannot be made or hold
    /// `min_bytes` (the per-user pipe budget is spent).
    pub fn make(ring: &Ring, fd: Fd, policy: LagPolicy, front: &[u8], pipe_bytes: usize, min_bytes: usize) -> Made {
        let (pipe_r, pipe_w, size) = match pipe(pipe_bytes) {
            Ok(p) => p,
            Err(e) => return Made::Copies(format!("no pipe: {e}")),
        };
        if size < min_bytes {
            return Made::Copies("its pipe cannot be sized".into());
        }
        if let Err(e) = crate::sys::set_nonblocking(ring.borrow(fd)) {
            return Made::Copies(format!("its socket cannot be made non-blocking: {e}"));
        }
        // A socket buffer that takes a whole round in one splice saves a wait (and a
        // poll) per round, per client; what it holds of large rounds are references to
        // the pipe's pages. (`min_bytes` is two rounds' worth; the kernel doubles the
        // value for its bookkeeping and caps it at net.core.wmem_max.) Best effort.
        let _ = nix::sys::socket::setsockopt(&ring.borrow(fd), nix::sys::socket::sockopt::SndBuf, &min_bytes);
        let mut c = PipeClient {
            pipe_r,
            pipe_w,
            account: PipeAccount::new(size, policy),
            writable: None,
            finished: false,
            torn: false,
        };
        match c.put(ring, fd, front) {
            Put::Done => Made::Pipe(c),
            Put::NoRoom => Made::Copies("its pipe cannot take its response head".into()),
            Put::Torn(_) => Made::Torn,
        }
    }

    /// Sends or queues small bytes (a response head, a heartbeat, the last chunk, a small
    /// round). With nothing queued ahead of them they go straight into the socket: one
    /// syscall instead of a write into the pipe and a splice out of it.
    pub fn put(&mut self, ring: &Ring, fd: Fd, mut bytes: &[u8]) -> Put {
        let mut taken = 0;
        if self.account.queued() == 0 {
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
            // An error (the peer gone) is left for the next flush to find.
            if let Ok(sent) = nix::sys::socket::send(ring.raw(fd), bytes, flags) {
                self.account.sent_directly(sent);
                bytes = &bytes[sent..];
                if bytes.is_empty() {
                    return Put::Done;
                }
                taken = sent;
            }
        }
        let torn_or_no_room = if taken > 0 { Put::Torn(taken) } else { Put::NoRoom };
        let Some(slots) = self.account.plan_write(bytes.len()) else {
            return torn_or_no_room;
        };
        match nix::unistd::write(&self.pipe_w, bytes) {
            Ok(written) if written == bytes.len() => {
                self.account.wrote(written, slots);
                Put::Done
            }
            Ok(0) | Err(_) => torn_or_no_room,
            // A short write: what went in is in its pipe.
            Ok(written) => {
                self.account.wrote(written, written.div_ceil(PAGE));
                Put::Torn(taken + written)
            }
        }
    }

    /// Offers a staged round: framed records to a chunked client, the payload to a raw one.
    pub fn offer(&mut self, ring: &Ring, fd: Fd, framing: Framing, stage: &Stage, round: &Round) -> Offer {
        let later = match self.account.no_room() {
            NoRoom::Wait => Offer::Later,
            NoRoom::FallBehind => Offer::Behind,
        };
        let framed = framing != Framing::Raw;
        if let Some(small) = &round.small {
            let bytes = if framed {
                &small.bytes[..]
            } else {
                &small.bytes[small.start..small.start + round.size.len]
            };
            return match self.put(ring, fd, bytes) {
                Put::Done => {
                    self.account.delivered_small(round.size.len);
                    Offer::Taken
                }
                Put::NoRoom => later,
                Put::Torn(n) => Offer::Torn(n),
            };
        }
        let Some((len, slots)) = self.account.plan_tee(framed, &round.size) else {
            return later;
        };
        match tee(stage.round_source(ring, framed), &self.pipe_w, len, NONBLOCK) {
            Ok(n) if n == len => {
                self.account.teed(n, slots, round.size.len);
                Offer::Taken
            }
            // Nothing taken: the pipe is fuller than counted.
            Ok(0) | Err(Errno::EAGAIN) => later,
            // Short: part of the round is in its pipe.
            Ok(n) => {
                self.account.teed(n, slots, 0);
                Offer::Torn(n)
            }
            Err(_) => Offer::Cut(CutReason::Gone),
        }
    }

    /// Moves what the pipe holds into the socket. `Ok(true)` when the pipe is empty,
    /// `Ok(false)` when the socket takes no more for now.
    pub fn flush(&mut self, ring: &Ring, fd: Fd, sent: &mut u64) -> Result<bool, CutReason> {
        while self.account.queued() > 0 {
            let flags = NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
            match splice(&self.pipe_r, None, ring.borrow(fd), None, self.account.queued(), flags) {
                Ok(0) => return Err(CutReason::Gone),
                Ok(n) => {
                    self.account.sent(n);
                    *sent += n as u64;
                }
                Err(Errno::EAGAIN) => return Ok(false),
                Err(Errno::EINTR) => {}
                Err(_) => return Err(CutReason::Gone),
            }
        }
        Ok(true)
    }
}

impl Output {
    /// Offers stream `s`'s round to the pipe clients still owed it; true when all have it
    /// (then it is handed on: to the copy engine, or to the logger directly).
    pub(super) fn offer_round(&mut self, ring: &mut Ring, s: usize) -> bool {
        // The list is rebuilt from the clients that still need the round. Taking it out
        // lets the loop borrow the clients; one cut meanwhile is simply not put back.
        let owed = std::mem::take(&mut self.stage_mut(s).round.as_mut().expect("a round").owed);
        let (mut taken, mut still, mut behind, mut torn) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in owed {
            let Some(Some(c)) = self.clients.get_mut(i) else { continue };
            let Path::Pipe(p) = &mut c.path else { continue };
            if c.closing || p.finished {
                continue;
            }
            let stage = self.streams[s].stage.as_ref().expect("a staged stream");
            match p.offer(ring, c.fd, c.framing, stage, stage.round.as_ref().expect("a round")) {
                Offer::Taken => taken.push(i),
                Offer::Later => still.push(i),
                Offer::Behind => behind.push(i),
                Offer::Torn(n) => torn.push((i, n)),
                Offer::Cut(why) => self.cut(ring, i, why),
            }
        }
        // The round is the relay's next output (rounds go one at a time).
        let pos = self.relay.position();
        for i in behind {
            self.fall_behind(i, pos, Vec::new());
        }
        for (i, n) in torn {
            self.torn(s, i, n, pos);
        }
        // Every client's tee first, then every flush: a client woken by its flush releases
        // the round's pages (on its own CPU) while the tees to the others would take them
        // (on ours), and that costs each tee twice as much (tuning.md, "Zero copy").
        for i in taken {
            self.pipe_flush(ring, i);
        }
        still.retain(|&i| self.serving_pipe(i));
        if !still.is_empty() {
            // Blocking clients hold the round (and so the container) back, for a while.
            for &i in &still {
                self.watch_blocker(ring, i);
            }
            self.stage_mut(s).round.as_mut().expect("a round").owed = still;
            return false;
        }
        // Clients whose tee of the framed records came up short get the rest of their
        // torn record from the records themselves, read out of the framed pipe.
        let torn = std::mem::take(&mut self.stage_mut(s).round.as_mut().expect("a round").torn);
        let done = match torn.is_empty() {
            true => self.stage_mut(s).drop_framed(),
            false => self.stage_mut(s).read_framed().map(|framed| {
                for (i, n) in torn {
                    let (front, from) = self.stage_mut(s).rest_of_record(&framed, n, pos);
                    self.fall_behind(i, from, front);
                }
            }),
        };
        if let Err(e) = done {
            self.fail_stream(s, &e);
            return false;
        }
        // The payload goes to the copy engine when a copying client, the screen model or
        // earlier bytes for the logger need it; otherwise it moves into the logger as it is.
        let st = &self.streams[s];
        let engine = self.relay.wants_output()
            || self.has_screen()
            || self.relay.logger_range(s).is_some()
            || st.log.is_some()
            || !st.spliceable;
        if engine {
            self.ensure_arena(ring);
        }
        let round = self.stage_mut(s).round.as_mut().expect("a round");
        let left = round.size.len;
        round.consume = if engine {
            Consume::Engine { left }
        } else {
            Consume::Logger { left }
        };
        if !engine {
            // Nobody needs its bytes in memory: it goes by the relay, which counts it.
            self.relay.advance(left);
        }
        true
    }

    /// Pipe client `i` has no room for the round being offered: from this round on it is
    /// served by copies from the history (after what its pipe holds), until it has
    /// caught up and rejoins the pipe path ([`Output::rejoin_pipes`]). Rounds go one at a
    /// time, so the relay's next position is this round's.
    fn fall_behind(&mut self, i: usize, from: u64, front: Vec<u8>) {
        let Some(mut c) = self.clients.get_mut(i).and_then(Option::take) else { return };
        c.path = match c.path {
            Path::Pipe(p) => {
                tracing::debug!("client {i} fell behind its pipe at {from}: the history serves it");
                let id = self.relay.add_client_at(c.framing, c.policy, front, from);
                self.note_relay_client(id, i);
                self.stats.fell_behind += 1;
                Path::Copy(CopyClient {
                    id,
                    send: None,
                    writable: p.writable,
                    msg: Some(Msg::default()),
                    pipe: Some(PipeClient {
                        writable: None,
                        torn: false,
                        ..p
                    }),
                })
            }
            other => other,
        };
        self.clients[i] = Some(c);
    }

    /// Only `n` bytes of stream `s`'s round (at position `pos`) went into pipe client
    /// `i`'s pipe. A raw client goes on from the next byte; one of a small round (framed
    /// in memory) with the rest of its record; one of framed records once the round is
    /// done with, when the rest of its torn record can be read back.
    fn torn(&mut self, s: usize, i: usize, n: usize, pos: u64) {
        let Some(Some(c)) = self.clients.get_mut(i) else { return };
        let Path::Pipe(p) = &mut c.path else { return };
        let round = self.streams[s]
            .stage
            .as_mut()
            .and_then(|st| st.round.as_mut())
            .expect("a round");
        let (framing, len) = (c.framing, round.size.len);
        let small = round.small.as_ref().map(|small| small.bytes[n..].to_vec());
        if framing != Framing::Raw && small.is_none() {
            // Nothing more goes into its pipe meanwhile.
            p.torn = true;
            round.torn.push((i, n));
            return;
        }
        match (framing, small) {
            (Framing::Raw, _) => self.fall_behind(i, pos + n as u64, Vec::new()),
            (_, front) => self.fall_behind(i, pos + len as u64, front.unwrap_or_default()),
        }
    }

    /// Clients served from the history that have every record, whose pipe is empty, go
    /// back to the pipe path: the round about to be staged is their next byte.
    pub(super) fn rejoin_pipes(&mut self) {
        for i in 0..self.clients.len() {
            let ready = match self.clients.get(i) {
                Some(Some(Client {
                    closing: false,
                    path: Path::Copy(copy),
                    ..
                })) => {
                    copy.send.is_none()
                        && copy.writable.is_none()
                        && copy
                            .pipe
                            .as_ref()
                            .is_some_and(|p| p.account.queued() == 0 && !p.finished)
                        && self.relay.caught_up(copy.id)
                }
                _ => false,
            };
            if !ready {
                continue;
            }
            let Some(mut c) = self.clients[i].take() else { continue };
            c.path = match c.path {
                Path::Copy(CopyClient { id, pipe: Some(p), .. }) => {
                    self.relay.remove_client(id);
                    Path::Pipe(p)
                }
                other => other,
            };
            tracing::debug!("client {i} caught up: back on its pipe");
            self.clients[i] = Some(c);
        }
    }

    /// Whether client `i` is a pipe client still being served.
    fn serving_pipe(&self, i: usize) -> bool {
        matches!(self.clients.get(i), Some(Some(c)) if !c.closing && matches!(&c.path, Path::Pipe(p) if !p.finished))
    }

    /// Moves what pipe client `i` has queued into its socket. Once the output is over, the
    /// end of its stream is queued behind the rest; once that is out, it is closed. A
    /// blocking client that drained may let the rounds it held go on.
    pub(super) fn pipe_flush(&mut self, ring: &mut Ring, i: usize) {
        let finished = self.relay.is_finished();
        // Twice at most: an end that did not fit fits once the pipe is empty.
        for _ in 0..2 {
            let Some(Some(c)) = self.clients.get_mut(i) else { return };
            let Path::Pipe(p) = &mut c.path else { return };
            if c.closing {
                return;
            }
            if finished && !p.finished && !p.torn {
                let end = match c.framing {
                    Framing::Chunked(_) => p.put(ring, c.fd, frame::LAST_CHUNK),
                    Framing::Raw => Put::Done,
                };
                match end {
                    Put::Done => p.finished = true,
                    // A client whose pipe is full gets its end once it drained (the
                    // drain timeout bounds the wait).
                    Put::NoRoom => {}
                    Put::Torn(_) => return self.close(ring, i),
                }
            }
            if p.writable.is_some() {
                // Its socket is full: the flush comes when it takes more.
                break;
            }
            match p.flush(ring, c.fd, &mut self.stats.sent_zero_copy) {
                Err(why) => return self.cut(ring, i, why),
                Ok(true) if p.finished => return self.close(ring, i),
                Ok(true) if finished => continue,
                Ok(true) => break,
                Ok(false) => {
                    p.writable = Some(Self::poll(ring, c.fd, POLLOUT, OutputOp::ClientWritable, i));
                    break;
                }
            }
        }
        if self.policy_of(i) == Some(LagPolicy::Block) {
            for stream in &mut self.streams {
                if stream.stage.as_ref().is_some_and(|st| st.owes(i)) {
                    stream.stage_ready = true;
                }
            }
        }
    }
}
