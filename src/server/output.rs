//! The output engine: the relay driven on the ring.
//!
//! Each stream has one read in flight at a time, into the window the relay hands out
//! (sources are non-blocking: an empty pipe answers EAGAIN and we wait with a POLL).
//! Each logger has one write in flight, from the relay's logger range. Each client has
//! at most one SENDMSG in flight, built by the relay from shared arena memory, and a POLL
//! that notices when the client hangs up while no data flows.

use std::ops::Range;
use std::rc::Rc;
use std::time::Duration;

use nix::sys::socket::{Shutdown, shutdown};

use crate::relay::{ClientId, CutReason, Framing, LagPolicy, Relay};
use crate::ring::{Completion, Fd, Msg, Op, OpId, Output as OpOutput, Ring};
use crate::wire::http::{CHUNK_END, write_chunk_size};
use crate::wire::message::{self, Format};

use super::token::Token;
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

/// How the output engine treats its clients.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Watch idle clients for hang-ups (the server wants it; a benchmark of raw fan-out
    /// can do without).
    pub hangup_polls: bool,
    /// How long a blocking client may hold reading back without making progress before it
    /// is cut off (then the logger and the container go on).
    pub block_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            hangup_polls: true,
            block_timeout: Duration::from_secs(30),
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
        config: crate::relay::Config,
        sources: Vec<Source>,
        loggers: Vec<Fd>,
        options: Options,
    ) -> Result<Output, String> {
        assert_eq!(sources.len(), loggers.len(), "one logger per source");
        let relay = Relay::new(config, sources.len())?;
        let names = ["stdout", "stderr"];
        Ok(Output {
            relay,
            sources: sources
                .into_iter()
                .enumerate()
                .map(|(i, s)| SourceState {
                    fd: s.fd,
                    pty: s.pty,
                    name: names[i],
                    op: None,
                    window: 0..0,
                    waiting: false,
                })
                .collect(),
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
        self.clients.iter().all(Option::is_none)
    }

    pub fn client_count(&self) -> usize {
        self.clients.iter().flatten().count()
    }

    /// Clients get the end of their stream once they have every record.
    pub fn finish_clients(&mut self, ring: &mut Ring) {
        self.relay.finish();
        self.pump(ring);
    }

    /// Attaches a client connection: it gets `front`, then every record from now on.
    pub fn add_client(
        &mut self,
        ring: &mut Ring,
        fd: Fd,
        framing: Framing,
        policy: LagPolicy,
        front: Vec<u8>,
    ) -> ClientId {
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
        id
    }

    /// Appends a heartbeat for every attached client.
    pub fn heartbeat(&mut self, ring: &mut Ring, interval: Duration) {
        let interval_ns = i64::try_from(interval.as_nanos()).unwrap_or(i64::MAX);
        let chunk = |f: Format| {
            let record = message::record(f, &message::heartbeat_message(interval_ns));
            let mut out = Vec::with_capacity(record.len() + 12);
            write_chunk_size(record.len(), &mut out);
            out.extend_from_slice(&record);
            out.extend_from_slice(CHUNK_END);
            Rc::<[u8]>::from(out)
        };
        let cut = self.relay.push_control(chunk(Format::Json), chunk(Format::Protobuf));
        self.cut_clients(ring, &cut);
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
            other => unreachable!("not an output token: {other:?}"),
        }
    }

    /// Submits every read, logger write and client send that can go now.
    pub fn pump(&mut self, ring: &mut Ring) {
        if !self.started {
            return;
        }
        for s in 0..self.sources.len() {
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
}
