//! The output engine: the relay driven on the ring.
//!
//! Each stream has one read in flight at a time, into the window the relay hands out
//! (sources are non-blocking: an empty pipe answers EAGAIN and we wait with a POLL).
//! Each logger has one write in flight, from the relay's logger range. Each client has
//! at most one SENDMSG in flight, built by the relay from shared arena memory, and a POLL
//! that notices when the client hangs up while no data flows.
//!
//! With zero copy on, the streams are staged first (see [`super::zerocopy`]): protobuf
//! and raw clients get pipe pages, the copy engine reads the staged payload for JSON
//! clients, and when no client needs the bytes in memory the payload moves straight into
//! the logger.

use std::ops::Range;
use std::rc::Rc;
use std::time::Duration;

use nix::sys::socket::{Shutdown, shutdown};

use crate::config::LagPolicy;
use crate::msg::Msg;
use crate::relay::{ClientId, CutReason, Framing, Relay};
use crate::ring::{Completion, Fd, Op, OpId, Output as OpOutput, Ring};
use crate::wire::frame::{self, LAST_CHUNK};
use crate::wire::message::{self, Format};

use super::token::Token;
use super::zerocopy::{Consume, Gone, Offer, Put, Stage, Staged, ZcClient};
use crate::sys::strerror_res as strerror;

/// A container output stream: the fd we read, and whether it is a PTY master (where
/// EIO means the end of the stream).
pub struct Source {
    pub fd: Fd,
    pub pty: bool,
}

/// Why the output engine failed (the server then exits 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub String);

struct SourceState {
    fd: Fd,
    pty: bool,
    name: &'static str,
    op: Option<OpId>,
    window: Range<usize>,
    waiting: bool,
}

struct LoggerState {
    fd: Fd,
    op: Option<OpId>,
    waiting: bool,
}

struct Client {
    id: ClientId,
    fd: Fd,
    send: Option<OpId>,
    poll: Option<OpId>,
    msg: Option<Msg>,
    closing: bool,
}

/// Rounds a stream stages in one go before the ring's other work gets a turn.
const ROUNDS_PER_TURN: usize = 16;

/// How the output engine treats its clients.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Watch idle clients for hang-ups (the server wants it; a benchmark of raw fan-out
    /// can do without).
    pub hangup_polls: bool,
    /// How long a blocking client may hold reading back without making progress before it
    /// is cut off (then the logger and the container go on).
    pub block_timeout: Duration,
    /// Serve protobuf and raw clients through pipes (tee and splice) instead of copies.
    pub zero_copy: bool,
    /// At most this many clients at once on the zero-copy path (each holds a pipe: two
    /// descriptors); the others are served by copies.
    pub max_zero_copy_clients: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            hangup_polls: true,
            block_timeout: Duration::from_secs(30),
            zero_copy: true,
            max_zero_copy_clients: usize::MAX,
        }
    }
}

/// The output half of a switchboard.
pub struct Output {
    relay: Relay,
    sources: Vec<SourceState>,
    loggers: Vec<LoggerState>,
    clients: Vec<Option<Client>>,
    started: bool,
    failure: Option<Failure>,
    options: Options,
    /// The blocking client (and its position) a progress check is armed for.
    block_check: Option<(ClientId, u64)>,
    /// Zero copy: one stage per stream (empty when it is off), and the zero-copy clients.
    stages: Vec<Stage>,
    zc: Vec<Option<ZcClient>>,
    /// The blocking zero-copy client (and its progress) a check is armed for.
    zc_block_check: Option<(usize, u64)>,
    /// Payload bytes staged, all streams; zero-copy clients cut and what they missed.
    staged: u64,
    zc_cut: u64,
    zc_lost: u64,
    /// Whether each logger can take a splice without blocking us (a pipe or a file).
    logger_spliceable: Vec<bool>,
}

const POLLIN: u32 = libc::POLLIN as u32;
const POLLOUT: u32 = libc::POLLOUT as u32;
/// A client hanging up shows as POLLHUP (both directions shut), which is always reported.
const POLLHUP: u32 = (libc::POLLHUP | libc::POLLERR) as u32;

impl Output {
    /// An engine reading `sources` (one for a PTY, two for pipes) into `loggers` (one per
    /// source). `hangup_polls` watches idle clients for hang-ups (the server wants it; a
    /// benchmark of raw fan-out can do without).
    pub fn new(
        ring: &mut Ring,
        config: crate::config::RelayConfig,
        sources: Vec<Source>,
        loggers: Vec<Fd>,
        options: Options,
    ) -> Result<Output, crate::config::ConfigError> {
        assert_eq!(sources.len(), loggers.len(), "one logger per source");
        let relay = Relay::new(config, sources.len())?;
        let names = ["stdout", "stderr"];
        // Every stream is staged for the zero-copy path, or none is (its clients need
        // them all). Without the pipes (a user past its pipe budget), copies serve all.
        let staged = if options.zero_copy {
            sources
                .iter()
                .enumerate()
                .map(|(i, s)| Stage::new(s.fd, s.pty, Relay::stream_kind(i), config.max_read, config.max_record))
                .collect::<std::io::Result<Vec<Stage>>>()
        } else {
            Ok(Vec::new())
        };
        let stages = staged.unwrap_or_else(|e| {
            tracing::warn!("no zero-copy path: cannot stage the output ({e}); every client is served by copies");
            Vec::new()
        });
        let mut states = Vec::new();
        for (i, s) in sources.into_iter().enumerate() {
            let (fd, pty) = match stages.get(i) {
                // The copy engine reads the staged payload (a pipe: its end is a read of 0).
                Some(stage) => (
                    ring.borrow_raw(std::os::fd::AsRawFd::as_raw_fd(&stage.payload_r)),
                    false,
                ),
                None => (s.fd, s.pty),
            };
            states.push(SourceState {
                fd,
                pty,
                name: names[i],
                op: None,
                window: 0..0,
                waiting: false,
            });
        }
        let logger_spliceable = loggers
            .iter()
            .map(|&fd| {
                // splice(2) refuses (EINVAL) a target opened for appending, as log files
                // usually are; those take the copy engine's writes. So do targets that
                // turn out to refuse splice at the first try (a terminal, say).
                nix::fcntl::fcntl(ring.borrow(fd), nix::fcntl::FcntlArg::F_GETFL)
                    .is_ok_and(|fl| fl & libc::O_APPEND == 0)
            })
            .collect();
        Ok(Output {
            relay,
            sources: states,
            loggers: loggers
                .into_iter()
                .map(|fd| LoggerState {
                    fd,
                    op: None,
                    waiting: false,
                })
                .collect(),
            clients: Vec::new(),
            started: false,
            failure: None,
            options,
            block_check: None,
            stages,
            zc: Vec::new(),
            zc_block_check: None,
            staged: 0,
            zc_cut: 0,
            zc_lost: 0,
            logger_spliceable,
        })
    }

    /// Starts reading the container's output (redirection). The arena is allocated (and
    /// registered, which makes it resident) only when the container first has output, so
    /// an idle container's switchboard stays small.
    pub fn start(&mut self, ring: &mut Ring) {
        if self.started {
            return;
        }
        self.started = true;
        self.pump(ring);
    }

    pub fn is_started(&self) -> bool {
        self.started
    }

    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// Every stream ended and every byte reached the logger.
    pub fn redirect_finished(&self) -> bool {
        self.started
            && (0..self.sources.len()).all(|s| self.relay.is_eof(s))
            && self.relay.logger_done()
            && self.loggers.iter().all(|l| l.op.is_none())
    }

    /// No client is attached any more (every stream ended, failed or was cut).
    pub fn clients_gone(&self) -> bool {
        self.clients.iter().all(Option::is_none) && self.zc.iter().all(Option::is_none)
    }

    pub fn client_count(&self) -> usize {
        self.clients.iter().flatten().count() + self.zc.iter().flatten().count()
    }

    /// What went through, and what clients cut off missed (zero-copy ones included).
    pub fn stats(&self) -> crate::relay::Stats {
        let mut stats = self.relay.stats();
        if !self.stages.is_empty() {
            stats.bytes_read = self.staged;
        }
        stats.clients_cut += self.zc_cut;
        stats.bytes_lost += self.zc_lost;
        stats
    }

    /// Clients get the end of their stream once they have every record.
    pub fn finish_clients(&mut self, ring: &mut Ring) {
        self.relay.finish();
        for i in 0..self.zc.len() {
            let Some(c) = self.zc[i].as_mut() else { continue };
            if c.finished || c.closing {
                continue;
            }
            let ended = match c.framing {
                Framing::Chunked(_) => c.put(ring, LAST_CHUNK),
                Framing::Raw => Put::Done,
            };
            match ended {
                Put::Done => c.finished = true,
                // A client whose pipe is full gets its end once it drained (the drain
                // timeout bounds the wait): it keeps what its pipe holds.
                Put::NoRoom => {}
                Put::Torn => {
                    self.zc_cut(ring, i, Gone::Closed);
                    continue;
                }
            }
            self.zc_flush(ring, i);
        }
        self.pump(ring);
    }

    /// Whether the zero-copy path is on (its staging pipes could be made).
    pub fn zero_copy(&self) -> bool {
        !self.stages.is_empty()
    }

    /// Attaches a client connection: it gets `front`, then every record from now on.
    /// Protobuf and raw clients take the zero-copy path when it is on (and their pipe can
    /// be sized: past the per-user pipe budget they are served by copies).
    pub fn add_client(&mut self, ring: &mut Ring, fd: Fd, framing: Framing, policy: LagPolicy, front: Vec<u8>) {
        let zero_copy_clients = self.zc.iter().flatten().count();
        if !self.stages.is_empty()
            && framing != Framing::Chunked(Format::Json)
            && zero_copy_clients < self.options.max_zero_copy_clients
        {
            // Room for two whole rounds at least, and for one however fragmented.
            let min = self
                .stages
                .iter()
                .map(|st| (2 * st.round_slots).max(st.round_slots_max + 4) * 4096)
                .max()
                .unwrap_or(0);
            // Its pipe is its lag bound: the lag limit (the kernel rounds a pipe up to a
            // power of two), and room for two rounds at least.
            let pipe_bytes = self.relay.config().lag_limit.max(min);
            match ZcClient::new(ring, fd, framing, policy, &front, pipe_bytes, min) {
                Ok(Some(mut c)) => {
                    let i = match self.zc.iter().position(Option::is_none) {
                        Some(i) => i,
                        None => {
                            self.zc.push(None);
                            self.zc.len() - 1
                        }
                    };
                    if self.options.hangup_polls {
                        c.hup_poll =
                            Some(ring.submit(Op::Poll { fd, events: POLLHUP }, Token::ZcHup(i as u32).encode()));
                    }
                    self.zc[i] = Some(c);
                    self.zc_flush(ring, i);
                    return;
                }
                Ok(None) => tracing::info!("a client's pipe cannot be sized: it is served by copies"),
                Err(e) => tracing::warn!("a client cannot take the zero-copy path: {e}"),
            }
        }
        let id = self.relay.add_client(framing, policy, front);
        let i = id.index() as usize;
        if self.clients.len() <= i {
            self.clients.resize_with(i + 1, || None);
        }
        self.clients[i] = Some(Client {
            id,
            fd,
            send: None,
            poll: None,
            msg: Some(Msg::default()),
            closing: false,
        });
        if self.options.hangup_polls {
            let poll = ring.submit(Op::Poll { fd, events: POLLHUP }, Token::ClientPoll(id.index()).encode());
            self.clients[i].as_mut().expect("just added").poll = Some(poll);
        }
        self.send_to(ring, i);
    }

    /// Appends a heartbeat for every attached client.
    pub fn heartbeat(&mut self, ring: &mut Ring, interval: Duration) {
        let interval_ns = i64::try_from(interval.as_nanos()).unwrap_or(i64::MAX);
        let chunk = |f: Format| Rc::<[u8]>::from(frame::message_chunk(f, &message::heartbeat_message(interval_ns)));
        let protobuf = chunk(Format::Protobuf);
        let cut = self.relay.push_control(chunk(Format::Json), protobuf.clone());
        self.cut_clients(ring, &cut);
        for i in 0..self.zc.len() {
            let Some(c) = self.zc[i].as_mut() else { continue };
            if c.closing || c.finished || c.framing == Framing::Raw {
                continue;
            }
            // A heartbeat that does not fit is dropped (the client is busy anyway).
            match c.put(ring, &protobuf) {
                Put::Done => self.zc_flush(ring, i),
                Put::NoRoom => {}
                Put::Torn => self.zc_cut(ring, i, Gone::Closed),
            }
        }
        self.pump_clients(ring);
    }

    /// Closes every client now (the grace period at exit ran out).
    pub fn close_all_clients(&mut self, ring: &mut Ring) {
        for i in 0..self.clients.len() {
            if let Some(c) = &self.clients[i] {
                let id = c.id;
                self.relay.cut(id, CutReason::Gone);
                self.close_client(ring, i);
            }
        }
        for i in 0..self.zc.len() {
            self.zc_close(ring, i);
        }
    }

    /// Handles a completion of one of the engine's operations.
    pub fn handle(&mut self, ring: &mut Ring, token: Token, c: Completion) {
        match token {
            Token::Read(s) => self.on_read(ring, s as usize, c),
            Token::ReadPoll(s) => {
                self.sources[s as usize].waiting = false;
                if ring.arena_len() == 0 {
                    ring.init_arena(self.relay.arena_len());
                }
                self.pump(ring);
            }
            Token::Log(s) => self.on_logged(ring, s as usize, c),
            Token::LogPoll(s) => {
                self.loggers[s as usize].waiting = false;
                self.pump(ring);
            }
            Token::ClientSend(i) => self.on_sent(ring, i as usize, c),
            Token::ClientPoll(i) => self.on_hangup(ring, i as usize, c),
            Token::BlockCheck => self.on_block_check(ring),
            Token::StagePoll(s) => {
                self.stages[s as usize].src_poll = None;
                self.stage_pump(ring, s as usize);
            }
            Token::StageLogPoll(s) => {
                self.stages[s as usize].logger_poll = None;
                self.stage_pump(ring, s as usize);
            }
            Token::ZcOut(i) => {
                if let Some(Some(z)) = self.zc.get_mut(i as usize) {
                    z.out_poll = None;
                }
                self.zc_flush(ring, i as usize);
                self.zc_maybe_remove(ring, i as usize);
            }
            Token::ZcHup(i) => {
                let i = i as usize;
                if let Some(Some(z)) = self.zc.get_mut(i) {
                    z.hup_poll = None;
                    if c.res != -libc::ECANCELED && !z.closing {
                        tracing::debug!("zero-copy client {i} hung up");
                        self.zc_cut(ring, i, Gone::Closed);
                    }
                }
                self.zc_maybe_remove(ring, i);
            }
            Token::ZcBlockCheck => self.on_zc_block_check(ring),
            other => unreachable!("not an output token: {other:?}"),
        }
    }

    /// Submits every read, logger write and client send that can go now.
    pub fn pump(&mut self, ring: &mut Ring) {
        if !self.started {
            return;
        }
        for s in 0..self.sources.len() {
            if !self.stages.is_empty() {
                self.stage_pump(ring, s);
            }
            self.read(ring, s);
            self.log(ring, s);
        }
        self.pump_clients(ring);
    }

    fn pump_clients(&mut self, ring: &mut Ring) {
        for i in 0..self.clients.len() {
            self.send_to(ring, i);
        }
    }

    fn fail(&mut self, what: String) {
        if self.failure.is_none() {
            tracing::error!("{what}");
            self.failure = Some(Failure(what));
        }
    }

    fn read(&mut self, ring: &mut Ring, s: usize) {
        let src = &self.sources[s];
        if src.op.is_some() || src.waiting || self.relay.is_eof(s) || self.failure.is_some() {
            return;
        }
        // Staged: only what the stage hands over, once the zero-copy clients have it.
        if !self.stages.is_empty() && !self.stages[s].engine_may_read() {
            return;
        }
        if ring.arena_len() == 0 {
            // No output yet: wait for some before allocating the buffers.
            let fd = src.fd;
            self.sources[s].waiting = true;
            ring.submit(Op::Poll { fd, events: POLLIN }, Token::ReadPoll(s as u32).encode());
            return;
        }
        let Some(window) = self.relay.read_window(s) else {
            self.check_blocker(ring);
            return;
        };
        let op = ring.submit(
            Op::ReadArena {
                fd: src.fd,
                range: window.clone(),
            },
            Token::Read(s as u32).encode(),
        );
        let src = &mut self.sources[s];
        src.op = Some(op);
        src.window = window;
    }

    fn on_read(&mut self, ring: &mut Ring, s: usize, c: Completion) {
        let src = &mut self.sources[s];
        src.op = None;
        match c.res {
            n if n > 0 => {
                let range = src.window.start..src.window.start + n as usize;
                let cut = self.relay.on_read(s, ring.arena(range));
                self.cut_clients(ring, &cut);
                if !self.stages.is_empty() && self.stages[s].engine_read(n as usize) {
                    // The round is consumed: stage the next one.
                    self.stage_pump(ring, s);
                }
            }
            0 => self.end_of_stream(s),
            e if e == -libc::EAGAIN => {
                src.waiting = true;
                ring.submit(
                    Op::Poll {
                        fd: src.fd,
                        events: POLLIN,
                    },
                    Token::ReadPoll(s as u32).encode(),
                );
            }
            e if e == -libc::EINTR => {}
            // A PTY master reads EIO once every slave is closed: the end of the stream.
            e if e == -libc::EIO && src.pty => self.end_of_stream(s),
            _ => {
                let name = src.name;
                self.fail(format!("Failed redirecting {name}: {}", strerror(c.res)));
            }
        }
        self.pump(ring);
    }

    /// Reading waits for buffer space: if a blocking client holds it, check back later
    /// whether it made progress.
    fn check_blocker(&mut self, ring: &mut Ring) {
        if self.block_check.is_some() {
            return;
        }
        if let Some(holder) = self.relay.blocking_holder() {
            self.block_check = Some(holder);
            ring.submit(
                Op::Timeout {
                    after: self.options.block_timeout,
                },
                Token::BlockCheck.encode(),
            );
        }
    }

    fn on_block_check(&mut self, ring: &mut Ring) {
        let armed = self.block_check.take();
        if let Some((id, seq)) = armed
            && self.relay.blocking_holder() == Some((id, seq))
        {
            tracing::warn!(
                "client {} made no progress for {:?} while the container waited for it; disconnecting it",
                id.index(),
                self.options.block_timeout
            );
            self.relay.cut_lagging(id);
            self.close_client(ring, id.index() as usize);
        }
        self.pump(ring);
    }

    fn end_of_stream(&mut self, s: usize) {
        tracing::debug!("{} reached its end", self.sources[s].name);
        self.relay.on_eof(s);
    }

    fn log(&mut self, ring: &mut Ring, s: usize) {
        let l = &self.loggers[s];
        if l.op.is_some() || l.waiting || self.failure.is_some() {
            return;
        }
        let Some(range) = self.relay.logger_range(s) else { return };
        let op = ring.submit(Op::WriteArena { fd: l.fd, range }, Token::Log(s as u32).encode());
        self.loggers[s].op = Some(op);
    }

    fn on_logged(&mut self, ring: &mut Ring, s: usize, c: Completion) {
        let l = &mut self.loggers[s];
        l.op = None;
        match c.res {
            n if n > 0 => self.relay.on_logged(s, n as usize),
            e if e == -libc::EAGAIN => {
                l.waiting = true;
                ring.submit(
                    Op::Poll {
                        fd: l.fd,
                        events: POLLOUT,
                    },
                    Token::LogPoll(s as u32).encode(),
                );
            }
            e if e == -libc::EINTR => {}
            e => {
                let name = self.sources[s].name;
                let why = if e == 0 {
                    "the logger accepts no more bytes".to_string()
                } else {
                    strerror(e)
                };
                self.fail(format!("Failed redirecting {name}: {why}"));
            }
        }
        self.pump(ring);
    }

    fn send_to(&mut self, ring: &mut Ring, i: usize) {
        let Some(Some(client)) = self.clients.get_mut(i) else { return };
        if client.send.is_some() || client.closing {
            return;
        }
        let mut msg = client.msg.take().unwrap_or_default();
        if self.relay.fill(client.id, &mut msg) {
            let op = ring.submit(Op::SendMsg { fd: client.fd, msg }, Token::ClientSend(i as u32).encode());
            client.send = Some(op);
        } else {
            client.msg = Some(msg);
            if self.relay.has_ended(client.id) {
                self.close_client(ring, i);
            }
        }
    }

    fn on_sent(&mut self, ring: &mut Ring, i: usize, c: Completion) {
        let client = self.clients[i]
            .as_mut()
            .expect("a send completed for a client that exists");
        client.send = None;
        if let OpOutput::Msg(msg) = c.output {
            client.msg = Some(msg);
        }
        let id = client.id;
        let result = if c.res >= 0 { Ok(c.res as usize) } else { Err(()) };
        if !self.relay.on_sent(id, result) {
            if c.res < 0 {
                tracing::debug!("client {} went away: {}", id.index(), strerror(c.res));
            }
            self.close_client(ring, i);
            return;
        }
        if self.relay.has_ended(id) {
            self.close_client(ring, i);
        } else {
            self.send_to(ring, i);
        }
        // Records this client held may have freed buffer space for reading.
        for s in 0..self.sources.len() {
            self.read(ring, s);
        }
    }

    fn on_hangup(&mut self, ring: &mut Ring, i: usize, c: Completion) {
        let client = self.clients[i]
            .as_mut()
            .expect("a poll completed for a client that exists");
        client.poll = None;
        if c.res == -libc::ECANCELED {
            self.maybe_remove(ring, i);
            return;
        }
        tracing::debug!("client {} hung up", client.id.index());
        let id = client.id;
        self.relay.cut(id, CutReason::Gone);
        self.close_client(ring, i);
    }

    fn cut_clients(&mut self, ring: &mut Ring, cut: &[ClientId]) {
        for id in cut {
            tracing::warn!(
                "client {} fell more than {} bytes behind and was disconnected",
                id.index(),
                self.relay.config().lag_limit
            );
            self.close_client(ring, id.index() as usize);
        }
    }

    /// Shuts a client's connection down (which ends its operations at once) and removes it
    /// when none is left in flight.
    fn close_client(&mut self, ring: &mut Ring, i: usize) {
        let Some(Some(client)) = self.clients.get_mut(i) else { return };
        if !client.closing {
            client.closing = true;
            let raw = ring.raw(client.fd);
            // Both directions: a send in flight fails and the hang-up poll fires.
            let _ = shutdown(raw, Shutdown::Both);
            if let Some(poll) = client.poll {
                ring.cancel(poll, false);
            }
        }
        self.maybe_remove(ring, i);
    }

    fn maybe_remove(&mut self, ring: &mut Ring, i: usize) {
        let Some(Some(client)) = self.clients.get(i) else { return };
        if !client.closing || client.send.is_some() || client.poll.is_some() {
            return;
        }
        let client = self.clients[i].take().expect("checked above");
        ring.close(client.fd);
        self.relay.remove_client(client.id);
        // Its records may have been all that held the buffers.
        for s in 0..self.sources.len() {
            self.read(ring, s);
        }
    }

    /// Advances stream `s`'s staging as far as it goes: stages a round, offers it to the
    /// zero-copy clients, then hands it to the copy engine or moves it into the logger.
    fn stage_pump(&mut self, ring: &mut Ring, s: usize) {
        let mut rounds = 0;
        while self.started && self.failure.is_none() {
            let name = self.sources[s].name;
            if self.stages[s].round.is_none() {
                let stage = &self.stages[s];
                if stage.eof || stage.src_poll.is_some() {
                    return;
                }
                if rounds == ROUNDS_PER_TURN {
                    // The ring's other work (signals, accepts, clients' sockets, timers)
                    // gets its turn; a readable source's poll completes at once.
                    let fd = stage.src;
                    let poll = ring.submit(Op::Poll { fd, events: POLLIN }, Token::StagePoll(s as u32).encode());
                    self.stages[s].src_poll = Some(poll);
                    return;
                }
                rounds += 1;
                let live = |c: &&ZcClient| !c.closing && !c.finished;
                let frame = self.zc.iter().flatten().filter(live).any(|c| c.framing != Framing::Raw);
                let owed = (0..self.zc.len())
                    .filter(|&i| self.zc[i].as_ref().is_some_and(|c| live(&c)))
                    .collect();
                match self.stages[s].stage(ring, frame, owed) {
                    Ok(Staged::Round) => {
                        let len = self.stages[s].round.as_ref().map_or(0, |r| r.len);
                        self.staged += len as u64;
                    }
                    Ok(Staged::Empty) => {
                        let fd = self.stages[s].src;
                        let poll = ring.submit(Op::Poll { fd, events: POLLIN }, Token::StagePoll(s as u32).encode());
                        self.stages[s].src_poll = Some(poll);
                        return;
                    }
                    Ok(Staged::Eof) => {
                        // Every round was consumed: the payload pipe is empty.
                        self.end_of_stream(s);
                        self.pump_clients(ring);
                        return;
                    }
                    Err(e) => {
                        self.fail(format!("Failed redirecting {name}: {}", crate::sys::strerror(&e)));
                        return;
                    }
                }
            }
            if self.stages[s]
                .round
                .as_ref()
                .is_some_and(|r| r.consume == Consume::Owed)
                && !self.offer_round(ring, s)
            {
                return;
            }
            let consume = self.stages[s].round.as_ref().map(|r| r.consume);
            match consume {
                Some(Consume::Engine { .. }) => {
                    self.read(ring, s);
                    return;
                }
                Some(Consume::Logger { .. }) => {
                    if self.stages[s].logger_poll.is_some() {
                        return;
                    }
                    let logger = self.loggers[s].fd;
                    match self.stages[s].log(ring, logger) {
                        // Logged: on to the next round.
                        Ok(true) => {}
                        Ok(false) => {
                            let poll = ring.submit(
                                Op::Poll {
                                    fd: logger,
                                    events: POLLOUT,
                                },
                                Token::StageLogPoll(s as u32).encode(),
                            );
                            self.stages[s].logger_poll = Some(poll);
                            return;
                        }
                        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                            // A logger splice(2) will not take (a file system without
                            // splice support): the copy engine reads the rest of the
                            // round, and every later one.
                            tracing::info!("the {name} logger does not take splice; copying into it");
                            self.logger_spliceable[s] = false;
                            if ring.arena_len() == 0 {
                                ring.init_arena(self.relay.arena_len());
                            }
                            let round = self.stages[s].round.as_mut().expect("a round");
                            if let Consume::Logger { left } = round.consume {
                                round.consume = Consume::Engine { left };
                            }
                            self.read(ring, s);
                            return;
                        }
                        Err(e) => {
                            self.fail(format!("Failed redirecting {name}: {}", crate::sys::strerror(&e)));
                            return;
                        }
                    }
                }
                Some(Consume::Owed) | None => {}
            }
        }
    }

    /// Offers stream `s`'s round to the clients still owed it; true when all have it
    /// (then it is handed on: to the copy engine, or to the logger directly).
    fn offer_round(&mut self, ring: &mut Ring, s: usize) -> bool {
        let owed = std::mem::take(&mut self.stages[s].round.as_mut().expect("a round").owed);
        let mut still = Vec::new();
        let mut taken = Vec::new();
        for i in owed {
            let Some(c) = self.zc[i].as_mut() else { continue };
            if c.closing || c.finished {
                continue;
            }
            let stage = &self.stages[s];
            match c.offer(ring, stage, stage.round.as_ref().expect("a round")) {
                Offer::Taken => taken.push(i),
                Offer::Later => still.push(i),
                Offer::Cut(why) => self.zc_cut(ring, i, why),
            }
        }
        for i in taken {
            self.zc_flush(ring, i);
        }
        // (Only clients still there: one may have gone while others were offered it.)
        still.retain(|&i| self.zc[i].as_ref().is_some_and(|c| !c.closing && !c.finished));
        if !still.is_empty() {
            // Blocking clients hold the round (and so the container) back, for a while.
            if self.zc_block_check.is_none() {
                let first = still[0];
                let moved = self.zc[first].as_ref().map_or(0, |c| c.moved);
                self.zc_block_check = Some((first, moved));
                ring.submit(
                    Op::Timeout {
                        after: self.options.block_timeout,
                    },
                    Token::ZcBlockCheck.encode(),
                );
            }
            self.stages[s].round.as_mut().expect("a round").owed = still;
            return false;
        }
        if let Err(e) = self.stages[s].drop_framed() {
            let name = self.sources[s].name;
            self.fail(format!("Failed redirecting {name}: {}", crate::sys::strerror(&e)));
            return false;
        }
        // The payload goes to the copy engine when a copying client or earlier bytes for
        // the logger need it; otherwise it moves into the logger as it is.
        let engine = self.relay.live_clients() > 0
            || self.relay.logger_range(s).is_some()
            || self.loggers[s].op.is_some()
            || !self.logger_spliceable[s];
        let round = self.stages[s].round.as_mut().expect("a round");
        round.consume = if engine {
            if ring.arena_len() == 0 {
                ring.init_arena(self.relay.arena_len());
            }
            Consume::Engine { left: round.len }
        } else {
            Consume::Logger { left: round.len }
        };
        true
    }

    /// Moves what zero-copy client `i` has queued into its socket, closing it once its
    /// stream is complete; a client that drained may let held rounds go on.
    fn zc_flush(&mut self, ring: &mut Ring, i: usize) {
        let Some(Some(c)) = self.zc.get_mut(i) else { return };
        if c.closing || c.out_poll.is_some() {
            return;
        }
        let blocking = c.policy == LagPolicy::Block;
        match c.flush(ring) {
            Ok(true) => {
                if c.finished {
                    self.zc_close(ring, i);
                    return;
                }
            }
            Ok(false) => {
                let fd = c.fd;
                c.out_poll = Some(ring.submit(Op::Poll { fd, events: POLLOUT }, Token::ZcOut(i as u32).encode()));
            }
            Err(why) => {
                self.zc_cut(ring, i, why);
                return;
            }
        }
        if blocking {
            let held: Vec<usize> = (0..self.stages.len())
                .filter(|&s| self.stages[s].round.as_ref().is_some_and(|r| r.owed.contains(&i)))
                .collect();
            for s in held {
                self.stage_pump(ring, s);
            }
        }
        if self.relay.is_finished() {
            // Its end may not have fit before.
            self.finish_zc(ring, i);
        }
    }

    /// Queues the end of a blocking client's stream once it fits.
    fn finish_zc(&mut self, ring: &mut Ring, i: usize) {
        let Some(Some(c)) = self.zc.get_mut(i) else { return };
        if c.finished || c.closing {
            return;
        }
        let ended = match c.framing {
            Framing::Chunked(_) => c.put(ring, LAST_CHUNK),
            Framing::Raw => Put::Done,
        };
        match ended {
            Put::Done => {
                c.finished = true;
                self.zc_flush(ring, i);
            }
            Put::NoRoom => {}
            Put::Torn => self.zc_cut(ring, i, Gone::Closed),
        }
    }

    /// Cuts zero-copy client `i` off.
    fn zc_cut(&mut self, ring: &mut Ring, i: usize, why: Gone) {
        let Some(Some(c)) = self.zc.get_mut(i) else { return };
        if c.closing {
            return;
        }
        c.gone = Some(why);
        if why == Gone::Lagging {
            // Behind by what it never got and what still waits in its pipe.
            let lost = self.staged.saturating_sub(c.delivered) + c.backlog() as u64;
            tracing::warn!("zero-copy client {i} could not keep up and was disconnected");
            self.zc_cut += 1;
            self.zc_lost += lost;
        }
        self.zc_close(ring, i);
    }

    /// Shuts zero-copy client `i` down; it goes once its polls are done.
    fn zc_close(&mut self, ring: &mut Ring, i: usize) {
        let Some(Some(c)) = self.zc.get_mut(i) else { return };
        if !c.closing {
            c.closing = true;
            let _ = shutdown(ring.raw(c.fd), Shutdown::Both);
            for op in [c.out_poll, c.hup_poll].into_iter().flatten() {
                ring.cancel(op, false);
            }
        }
        // Rounds it held may go on (found before it is taken off their lists).
        let held: Vec<usize> = (0..self.stages.len())
            .filter(|&s| self.stages[s].round.as_ref().is_some_and(|r| r.owed.contains(&i)))
            .collect();
        self.zc_maybe_remove(ring, i);
        for s in held {
            self.stage_pump(ring, s);
        }
    }

    fn zc_maybe_remove(&mut self, ring: &mut Ring, i: usize) {
        let Some(Some(c)) = self.zc.get(i) else { return };
        if !c.closing || c.out_poll.is_some() || c.hup_poll.is_some() {
            return;
        }
        let c = self.zc[i].take().expect("checked above");
        ring.close(c.fd);
        for stage in &mut self.stages {
            if let Some(r) = &mut stage.round {
                r.owed.retain(|&o| o != i);
            }
        }
    }

    fn on_zc_block_check(&mut self, ring: &mut Ring) {
        let Some((i, moved)) = self.zc_block_check.take() else { return };
        let held = self
            .stages
            .iter()
            .any(|st| st.round.as_ref().is_some_and(|r| r.owed.contains(&i)));
        let progress = self.zc[i].as_ref().is_some_and(|c| c.moved != moved);
        if held && !progress {
            tracing::warn!(
                "zero-copy client {i} made no progress for {:?} while the container waited for it; disconnecting it",
                self.options.block_timeout
            );
            self.zc_cut(ring, i, Gone::Lagging);
        }
        self.pump(ring);
    }
}
