//! The copy engine: the relay driven on the ring.
//!
//! Each stream has one read in flight at a time, into the window the relay hands out
//! (sources are non-blocking: an empty pipe answers EAGAIN and we wait with a poll). Each
//! logger has one write in flight, from the relay's logger range. Each copying client has
//! at most one SENDMSG in flight, built by the relay from arena memory and shared buffers.

use std::ops::Range;

use super::client::{Client, Path};
use super::{Output, POLLIN, POLLOUT};
use crate::relay::{ArenaBytes, ReadPlan};
use crate::ring::{Completion, Op, Output as OpOutput, Ring};
use crate::server::token::{OutputOp, Token};
use crate::sys::strerror_res as strerror;

impl Output {
    /// Submits the next read of stream `s`, if it may read now.
    pub(super) fn read(&mut self, ring: &mut Ring, s: usize) {
        let st = &self.streams[s];
        if st.read.is_some() || st.read_waiting || self.relay.is_eof(s) || self.failure.is_some() {
            return;
        }
        // Staged: only what the stage hands over, once the pipe clients have it.
        if st.stage.as_ref().is_some_and(|stage| !stage.engine_may_read()) {
            return;
        }
        if ring.arena_len() == 0 {
            // No output yet: wait for some before allocating the buffers.
            return self.wait_readable(ring, s);
        }
        let window = loop {
            match self.relay.read_plan(s) {
                ReadPlan::Window(w) => break w,
                // Kept records that hold arena space move to the history's memory (they
                // are old bytes: no read writes there).
                ReadPlan::Spill(range) => self.relay.spill(s, ring.arena(range)),
                ReadPlan::Wait => {
                    // A blocking client may be what holds reading back.
                    if let Some((id, _)) = self.relay.blocking_holder() {
                        self.watch_blocker(ring, self.by_relay[id.index() as usize]);
                    }
                    return;
                }
            }
        };
        let st = &self.streams[s];
        let fd = st.read_fd;
        let op = ring.submit(
            Op::ReadArena {
                fd,
                range: window.clone(),
            },
            Token::Output(OutputOp::Read, s as u32).encode(),
        );
        let st = &mut self.streams[s];
        st.read = Some(op);
        st.window = window;
    }

    fn wait_readable(&mut self, ring: &mut Ring, s: usize) {
        let st = &mut self.streams[s];
        st.read_waiting = true;
        Self::poll(ring, st.read_fd, POLLIN, OutputOp::Readable, s);
    }

    pub(super) fn on_read(&mut self, ring: &mut Ring, s: usize, c: Completion) {
        let st = &mut self.streams[s];
        st.read = None;
        match c.res {
            n if n > 0 => {
                let n = n as usize;
                let range = st.window.start..st.window.start + n;
                if st.stage.is_none() {
                    // (Staged bytes were counted when they were staged.)
                    self.stats.read[s] += n as u64;
                }
                let cut = self.relay.on_read(s, ring.arena(range.clone()));
                if let Some(t) = &mut self.terminal {
                    t.feed(ring.arena(range));
                }
                let st = &mut self.streams[s];
                if st.stage.as_mut().is_some_and(|stage| stage.engine_read(n)) {
                    // The round is consumed: the stage may stage the next one.
                    st.stage_ready = true;
                    self.round_done(s);
                }
                // (After the stage knows what was read: removing a cut client reads on.)
                self.relay_cut(ring, &cut);
            }
            0 => self.end_of_stream(s),
            e if e == -libc::EAGAIN => self.wait_readable(ring, s),
            e if e == -libc::EINTR => {}
            // A PTY master reads EIO once every slave is closed: the end of the stream.
            e if e == -libc::EIO && st.pty => self.end_of_stream(s),
            e => {
                let name = st.name;
                self.fail(format!("Failed redirecting {name}: {}", strerror(e)));
            }
        }
        self.pump(ring);
    }

    /// Submits the next logger write of stream `s`, if there is something to write.
    pub(super) fn log(&mut self, ring: &mut Ring, s: usize) {
        let st = &self.streams[s];
        if st.log.is_some() || st.log_waiting || self.failure.is_some() {
            return;
        }
        let Some(range) = self.relay.logger_range(s) else { return };
        let op = ring.submit(
            Op::WriteArena { fd: st.logger, range },
            Token::Output(OutputOp::Log, s as u32).encode(),
        );
        self.streams[s].log = Some(op);
    }

    pub(super) fn on_logged(&mut self, ring: &mut Ring, s: usize, c: Completion) {
        let st = &mut self.streams[s];
        st.log = None;
        match c.res {
            n if n > 0 => {
                self.relay.on_logged(s, n as usize);
                self.stats.logged[s] += n as u64;
            }
            e if e == -libc::EAGAIN => {
                st.log_waiting = true;
                Self::poll(ring, st.logger, POLLOUT, OutputOp::LoggerWritable, s);
            }
            e if e == -libc::EINTR => {}
            e => {
                let why = if e == 0 {
                    "the logger accepts no more bytes".to_string()
                } else {
                    strerror(e)
                };
                let name = st.name;
                self.fail(format!("Failed redirecting {name}: {why}"));
            }
        }
        self.pump(ring);
    }

    /// Submits the next send to every copying client that has something to send.
    pub(super) fn pump_clients(&mut self, ring: &mut Ring) {
        for i in 0..self.clients.len() {
            self.send_to(ring, i);
        }
    }

    /// Submits the next send to copying client `i`, if it has something to send; closes
    /// it once its whole stream is out.
    pub(super) fn send_to(&mut self, ring: &mut Ring, i: usize) {
        let Some(Some(Client {
            fd,
            closing: false,
            path: Path::Copy(copy),
            ..
        })) = self.clients.get_mut(i)
        else {
            return;
        };
        if copy.send.is_some() || copy.writable.is_some() {
            return;
        }
        // A client that fell behind its pipe gets what its pipe holds first.
        if let Some(p) = copy.pipe.as_mut().filter(|p| p.account.queued() > 0) {
            match p.flush(ring, *fd, &mut self.stats.sent_zero_copy) {
                Ok(true) => {}
                Ok(false) => {
                    copy.writable = Some(Self::poll(ring, *fd, POLLOUT, OutputOp::ClientWritable, i));
                    return;
                }
                Err(why) => return self.cut(ring, i, why),
            }
        }
        let mut msg = copy.msg.take().unwrap_or_default();
        if self.relay.fill(copy.id, &mut msg, &RingArena(ring)) {
            let op = ring.submit(
                Op::SendMsg { fd: *fd, msg },
                Token::Output(OutputOp::Send, i as u32).encode(),
            );
            copy.send = Some(op);
        } else {
            copy.msg = Some(msg);
            if self.relay.has_ended(copy.id) {
                self.close(ring, i);
            }
        }
    }

    pub(super) fn on_sent(&mut self, ring: &mut Ring, i: usize, c: Completion) {
        let Some(Some(Client {
            path: Path::Copy(copy), ..
        })) = self.clients.get_mut(i)
        else {
            unreachable!("a send completed for a copying client that exists");
        };
        copy.send = None;
        if let OpOutput::Msg(msg) = c.output {
            copy.msg = Some(msg);
        }
        let id = copy.id;
        if c.res == -libc::EAGAIN {
            // Its socket is full (sends never wait in flight): send again once it takes
            // more.
            self.relay.on_sent(id, Ok(0));
            let fd = self.clients[i].as_ref().expect("checked above").fd;
            let poll = Self::poll(ring, fd, POLLOUT, OutputOp::ClientWritable, i);
            if let Some(Some(Client {
                path: Path::Copy(copy), ..
            })) = self.clients.get_mut(i)
            {
                copy.writable = Some(poll);
            }
            return;
        }
        let result = if c.res >= 0 { Ok(c.res as usize) } else { Err(()) };
        self.stats.sent_copies += u64::try_from(c.res).unwrap_or(0);
        if !self.relay.on_sent(id, result) {
            if c.res < 0 {
                tracing::debug!("client {i} went away: {}", strerror(c.res));
            }
            return self.close(ring, i);
        }
        if self.relay.has_ended(id) {
            self.close(ring, i);
        } else {
            self.send_to(ring, i);
        }
        // Records this client held may have freed buffer space for reading.
        for s in 0..self.streams.len() {
            self.read(ring, s);
        }
    }
}

/// The arena, as the relay reads it (for JSON payloads it makes late).
struct RingArena<'a>(&'a Ring);

impl ArenaBytes for RingArena<'_> {
    fn bytes(&self, range: Range<usize>) -> &[u8] {
        self.0.arena(range)
    }
}
