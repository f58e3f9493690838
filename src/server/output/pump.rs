//! The zero-copy path's pump: for each stream, stage a round (`stage.rs`), offer it to
//! the pipe clients (`pipe.rs`), then hand it to the copy engine or move it into the
//! logger, as far as it goes without waiting; and where it has to wait, the poll that
//! resumes it.

use super::client::{Client, Path};
use super::stage::{Consume, Staged};
use super::{Output, POLLIN, POLLOUT, ROUNDS_PER_TURN};
use crate::relay::Framing;
use crate::ring::Ring;
use crate::server::token::OutputOp;

impl Output {
    /// Advances stream `s`'s staging as far as it goes: stages a round, offers it to the
    /// pipe clients, then hands it to the copy engine or moves it into the logger.
    pub(super) fn stage_pump(&mut self, ring: &mut Ring, s: usize) {
        let mut rounds = 0;
        while self.started && self.failure.is_none() {
            if self.stage_mut(s).round.is_none() && self.other_round(s) {
                // One round at a time, both streams together: positions, and the order
                // of stdout and stderr, are the same for every client on both paths.
                return;
            }
            let stage = self.stage_mut(s);
            if stage.round.is_none() {
                if stage.eof || stage.src_poll.is_some() {
                    return;
                }
                if rounds == ROUNDS_PER_TURN {
                    // The ring's other work (signals, accepts, clients' sockets, timers)
                    // gets its turn; a readable source's poll completes at once.
                    return self.wait_source(ring, s);
                }
                rounds += 1;
                if !self.stage_round(ring, s) {
                    return;
                }
            }
            let consume = self.stage_mut(s).round.as_ref().map(|r| r.consume);
            let go_on = match consume {
                Some(Consume::Owed) => self.offer_round(ring, s),
                Some(Consume::Engine { .. }) => return self.read(ring, s),
                Some(Consume::Logger { .. }) => self.stage_log(ring, s),
                None => true,
            };
            if !go_on {
                return;
            }
        }
    }

    /// Whether another stream has a round staged.
    fn other_round(&self, s: usize) -> bool {
        self.streams
            .iter()
            .enumerate()
            .any(|(j, st)| j != s && st.stage.as_ref().is_some_and(|g| g.round.is_some()))
    }

    /// A round is done: the other streams may stage theirs.
    pub(super) fn round_done(&mut self, s: usize) {
        for (j, st) in self.streams.iter_mut().enumerate() {
            if j != s && st.stage.is_some() {
                st.stage_ready = true;
            }
        }
    }

    fn wait_source(&mut self, ring: &mut Ring, s: usize) {
        let fd = self.stage_mut(s).source();
        let poll = Self::poll(ring, fd, POLLIN, OutputOp::StageReadable, s);
        self.stage_mut(s).src_poll = Some(poll);
    }

    /// Stages stream `s`'s next round, owed to every pipe client being served; false
    /// when there is none now.
    fn stage_round(&mut self, ring: &mut Ring, s: usize) -> bool {
        // Clients the history caught up take this round on their pipes.
        self.rejoin_pipes();
        let serving = |c: &&Client| !c.closing && matches!(&c.path, Path::Pipe(p) if !p.finished && !p.torn);
        let frame = self
            .clients
            .iter()
            .flatten()
            .filter(serving)
            .any(|c| c.framing != Framing::Raw);
        let owed = (0..self.clients.len())
            .filter(|&i| self.clients[i].as_ref().is_some_and(|c| serving(&c)))
            .collect();
        match self.stage_mut(s).stage(ring, frame, owed) {
            Ok(Staged::Round) => {
                let len = self.stage_mut(s).round.as_ref().map_or(0, |r| r.size.len);
                self.stats.read[s] += len as u64;
                true
            }
            Ok(Staged::Empty) => {
                self.wait_source(ring, s);
                false
            }
            Ok(Staged::Eof) => {
                // Every round was consumed: the payload pipe is empty.
                self.end_of_stream(s);
                self.pump_clients(ring);
                false
            }
            Err(e) => {
                self.fail_stream(s, &e);
                false
            }
        }
    }

    /// Moves the round's payload into stream `s`'s logger; false while the logger takes
    /// no more, or when the copy engine is to write it instead.
    fn stage_log(&mut self, ring: &mut Ring, s: usize) -> bool {
        let logger = self.streams[s].logger;
        let stage = self.stage_mut(s);
        if stage.logger_poll.is_some() {
            return false;
        }
        match stage.log(ring, logger) {
            // Logged: on to the next round.
            Ok(true) => {
                self.round_done(s);
                true
            }
            Ok(false) => {
                let poll = Self::poll(ring, logger, POLLOUT, OutputOp::StageLoggerWritable, s);
                self.stage_mut(s).logger_poll = Some(poll);
                false
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // A logger splice(2) will not take (a file system without splice
                // support): the copy engine reads the rest of the round, and every later
                // one.
                tracing::info!(
                    "the {} logger does not take splice; copying into it",
                    self.streams[s].name
                );
                self.streams[s].spliceable = false;
                self.ensure_arena(ring);
                let round = self.stage_mut(s).round.as_mut().expect("a round");
                if let Consume::Logger { left } = round.consume {
                    round.consume = Consume::Engine { left };
                }
                self.read(ring, s);
                false
            }
            Err(e) => {
                self.fail_stream(s, &e);
                false
            }
        }
    }
}
