//! The output engine: the container's streams read, logged and fanned out to every
//! attached client, on the ring.
//!
//! * Streams ([`Stream`]): each has a source (the container's pipe or PTY master) and a
//!   logger that gets every byte, in order. The copy engine (`copy.rs`) reads a stream
//!   into the arena and writes the logger from there; with zero copy on, the stream is
//!   staged first (`stage.rs`) and the copy engine reads the staged payload, or the
//!   payload moves straight into the logger when no copying client needs it.
//! * Clients (`client.rs`): one table, one lifecycle (attach, cut, close, remove, the
//!   block check), and a delivery path each: copies (SENDMSG from the arena, built by the
//!   relay) or a pipe (`pipe.rs`: tee of the staged round, splice into the socket).
//!
//! Completions come to [`Output::handle`]. A handler does what its completion allows and
//! marks what it may have unblocked; [`Output::settle`] then moves the marked stages on.
//! Nothing calls back into the stage it came from, so no handler runs inside another.

mod client;
mod copy;
mod pipe;
mod pump;
mod stage;
mod terminal;

use std::ops::Range;
use std::rc::Rc;
use std::time::Duration;

use crate::config::{ConfigError, LagPolicy, RelayConfig, WindowPolicy};
use crate::relay::{Framing, Future, Relay, Start, StartAt};
use crate::ring::{Completion, Fd, OpId, Ring};
use crate::wire::frame;
use crate::wire::message::{self, Format};

use super::token::{OutputOp, Token};
use client::{Client, Path};
use pipe::Put;
use stage::Stage;
use terminal::Terminal;

/// A container output stream as the server hands it over: the fd we read, and whether it
/// is a PTY master (where EIO means the end of the stream).
pub struct Source {
    pub fd: Fd,
    pub pty: bool,
    /// Whether splice(2) can take its bytes (see [`crate::sys::Kind::splices_out`]).
    pub splices: bool,
}

/// Why the output engine failed (the server then exits 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub String);

/// Counters for logs, benchmarks and `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Container bytes read, per stream.
    pub read: [u64; 2],
    /// Bytes the copy engine wrote to each stream's logger (a stage's splices into the
    /// logger are counted by the stage).
    pub logged: [u64; 2],
    /// Response bytes that reached clients' sockets: sent from memory, and spliced from
    /// their pipes.
    pub sent_copies: u64,
    pub sent_zero_copy: u64,
    /// Clients cut off for lagging, and the payload bytes they were behind when cut.
    pub clients_cut: u64,
    pub bytes_lost: u64,
    /// Times a pipe client fell behind its pipe and was served from the history.
    pub fell_behind: u64,
}

impl Stats {
    /// Container bytes read, all streams.
    pub fn bytes_read(&self) -> u64 {
        self.read.iter().sum()
    }
}

/// The output's figures for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub stats: Stats,
    /// The streams' names, in the order of the per-stream counters.
    pub streams: Vec<&'static str>,
    /// Output clients being served: (format, path, how many).
    pub clients: Vec<(&'static str, &'static str, u64)>,
    /// Payload bytes the history keeps, and how many of them live outside the arena.
    pub history: (u64, u64),
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
    /// Serve protobuf and raw clients through pipes (tee and splice) instead of copies.
    pub zero_copy: bool,
    /// At most this many clients at once on the zero-copy path (each holds a pipe: two
    /// descriptors); the others are served by copies.
    pub max_zero_copy_clients: usize,
    /// With a PTY, keep a model of its screen (every byte then goes through the copy
    /// engine) and redraw it for clients that ask.
    pub screen: bool,
    pub window_policy: WindowPolicy,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            hangup_polls: true,
            block_timeout: Duration::from_secs(30),
            zero_copy: true,
            max_zero_copy_clients: usize::MAX,
            screen: false,
            window_policy: WindowPolicy::Latest,
        }
    }
}

pub(super) const POLLIN: u32 = libc::POLLIN as u32;
pub(super) const POLLOUT: u32 = libc::POLLOUT as u32;
/// A client hanging up shows as POLLHUP (both directions shut), which is always reported.
pub(super) const POLLHUP: u32 = (libc::POLLHUP | libc::POLLERR) as u32;

/// One container output stream.
struct Stream {
    name: &'static str,
    /// What the copy engine reads: the source, or the staged payload (a pipe).
    read_fd: Fd,
    pty: bool,
    /// The copy engine's read in flight, and the arena window it fills.
    read: Option<OpId>,
    window: Range<usize>,
    /// A wait for `read_fd` to be readable is in flight.
    read_waiting: bool,
    logger: Fd,
    /// The logger write in flight, and whether we wait for the logger to take more.
    log: Option<OpId>,
    log_waiting: bool,
    /// The logger can take a splice without blocking us (not opened for appending).
    spliceable: bool,
    /// Zero copy: the stream's staging.
    stage: Option<Stage>,
    /// Zero copy: the stage may go on (a client it waited for left or drained, or a
    /// round was consumed).
    stage_ready: bool,
}

/// The output half of a switchboard.
pub struct Output {
    relay: Relay,
    streams: Vec<Stream>,
    clients: Vec<Option<Client>>,
    /// The table index of each copying client, by its relay index.
    by_relay: Vec<usize>,
    started: bool,
    failure: Option<Failure>,
    options: Options,
    stats: Stats,
    /// A TTY container's window sizes, and its screen when kept.
    terminal: Option<Terminal>,
}

/// Rounds a stream stages in one go before the ring's other work gets a turn.
const ROUNDS_PER_TURN: usize = 16;

/// A pipe client's pipe: room for a few rounds between the staged rounds and its
/// socket (the kernel rounds it up to a power of two). A client that falls behind it is
/// served from the history.
const CLIENT_PIPE_BYTES: usize = 1 << 20;

impl Output {
    /// An engine reading `sources` (one for a PTY, two for pipes) into `loggers` (one per
    /// source).
    pub fn new(
        ring: &mut Ring,
        config: RelayConfig,
        sources: Vec<Source>,
        loggers: Vec<Fd>,
        options: Options,
    ) -> Result<Output, ConfigError> {
        assert_eq!(sources.len(), loggers.len(), "one logger per source");
        let relay = Relay::new(config, sources.len())?;
        // Every stream is staged for the zero-copy path, or none is (its clients need
        // them all). Without the pipes (a user past its pipe budget), or with a source
        // splice cannot read (`/dev/null`), copies serve all.
        let mut stages = Vec::new();
        let splices = sources.iter().all(|s| s.splices);
        if options.zero_copy && !splices {
            tracing::info!("no zero-copy path: a source splice cannot read; every client is served by copies");
        }
        if options.zero_copy && splices {
            for (i, s) in sources.iter().enumerate() {
                let stream = Relay::stream_kind(i);
                match Stage::new(ring, s.fd, s.pty, stream, config.max_read, config.max_record) {
                    Ok(stage) => stages.push(stage),
                    Err(e) => {
                        tracing::warn!(
                            "no zero-copy path: cannot stage the output ({e}); every client is served by copies"
                        );
                        // The payload pipes made so far are the ring's: it closes them.
                        for stage in stages.drain(..) {
                            ring.close(stage.payload());
                        }
                        break;
                    }
                }
            }
        }
        // The terminal sets the PTY's size through a descriptor of its own.
        let terminal = match sources.iter().find(|s| s.pty) {
            Some(source) => match ring.borrow(source.fd).try_clone_to_owned() {
                Ok(pty) => Some(Terminal::new(pty, options.window_policy, options.screen)),
                Err(e) => {
                    tracing::warn!("no screen model nor window sizes: cannot duplicate the PTY's descriptor: {e}");
                    None
                }
            },
            None => None,
        };
        let mut stages = stages.into_iter();
        let streams = sources
            .into_iter()
            .zip(loggers)
            .enumerate()
            .map(|(i, (source, logger))| {
                let stage = stages.next();
                Stream {
                    name: if i == 0 { "stdout" } else { "stderr" },
                    // The copy engine reads the staged payload (a pipe: its end is a read of 0).
                    read_fd: stage.as_ref().map_or(source.fd, Stage::payload),
                    pty: source.pty && stage.is_none(),
                    read: None,
                    window: 0..0,
                    read_waiting: false,
                    logger,
                    log: None,
                    log_waiting: false,
                    // Only pipes and files not opened for appending take splice(2)
                    // without blocking us or failing; the others (sockets, terminals,
                    // devices, log files opened for appending) take the copy engine's
                    // writes through the ring. So do files that turn out to refuse
                    // splice at the first try (a file system without support).
                    spliceable: crate::sys::Kind::of(ring.borrow(logger)).is_ok_and(crate::sys::Kind::splices_in),
                    stage,
                    stage_ready: false,
                }
            })
            .collect();
        Ok(Output {
            relay,
            streams,
            clients: Vec::new(),
            by_relay: Vec::new(),
            started: false,
            failure: None,
            options,
            stats: Stats::default(),
            terminal,
        })
    }

    /// Starts reading the container's output (redirection). The arena is allocated (and
    /// registered, which makes it resident) only when the container first has output, so
    /// an idle container's switchboard stays small.
    pub fn start(&mut self, ring: &mut Ring) {
        if !self.started {
            self.started = true;
            self.pump(ring);
        }
    }

    pub fn is_started(&self) -> bool {
        self.started
    }

    /// Whether a model of the terminal's screen is kept (a PTY, `--screen` on).
    pub fn has_screen(&self) -> bool {
        self.terminal.as_ref().is_some_and(Terminal::has_screen)
    }

    /// An input request (of the terminal it names, if any) asks for a window of `size`;
    /// `None` without a PTY (the caller then answers as for a pipe).
    pub fn input_resize(&mut self, terminal: Option<&str>, size: (u16, u16)) -> Option<std::io::Result<()>> {
        Some(self.terminal.as_mut()?.input_resize(terminal, size))
    }

    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// The number of streams (one for a PTY, two for pipes).
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// Every stream ended and every byte reached the logger.
    pub fn redirect_finished(&self) -> bool {
        self.started
            && (0..self.streams.len()).all(|s| self.relay.is_eof(s))
            && self.relay.logger_done()
            && self.streams.iter().all(|s| s.log.is_none())
    }

    /// No client is attached any more (every stream ended, failed or was cut).
    /// What `/metrics` reports of the output.
    pub fn figures(&self) -> Figures {
        let mut stats = self.stats;
        for (s, st) in self.streams.iter().enumerate() {
            stats.logged[s] += st.stage.as_ref().map_or(0, |stage| stage.logged);
        }
        let mut clients = Vec::new();
        for c in self.clients.iter().flatten().filter(|c| !c.closing) {
            let format = match c.framing {
                Framing::Chunked(Format::Json) => "json",
                Framing::Chunked(Format::Protobuf) => "protobuf",
                Framing::Raw => "raw",
            };
            let path = match c.path {
                Path::Pipe(_) => "zero_copy",
                Path::Copy(_) => "copies",
            };
            match clients.iter_mut().find(|(f, p, _)| *f == format && *p == path) {
                Some((_, _, n)) => *n += 1,
                None => clients.push((format, path, 1)),
            }
        }
        Figures {
            stats,
            streams: self.streams.iter().map(|st| st.name).collect(),
            clients,
            history: self.relay.history(),
        }
    }

    pub fn clients_gone(&self) -> bool {
        self.clients.iter().all(Option::is_none)
    }

    pub fn client_count(&self) -> usize {
        self.clients.iter().flatten().count()
    }

    /// What went through, and what clients cut off missed.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The position of the newest output: what the relay has, and what is staged and
    /// not yet handed to it.
    pub fn live_position(&self) -> u64 {
        let staged: usize = self
            .streams
            .iter()
            .filter_map(|s| s.stage.as_ref())
            .map(Stage::unaccounted)
            .sum();
        self.relay.position() + staged as u64
    }

    /// Where a client that asks for `at` would start; an error for a position past the
    /// newest output.
    pub fn locate(&self, at: StartAt) -> Result<Start, Future> {
        self.relay.locate(at, self.live_position())
    }

    /// Whether the zero-copy path is on (its staging pipes could be made).
    pub fn zero_copy(&self) -> bool {
        self.streams.iter().any(|s| s.stage.is_some())
    }

    /// The container's output is over: each client's stream ends once it has every
    /// record.
    pub fn finish_clients(&mut self, ring: &mut Ring) {
        self.relay.finish();
        for i in 0..self.clients.len() {
            self.pipe_flush(ring, i);
        }
        self.pump(ring);
    }

    /// Appends a heartbeat for every attached chunked client. One that cannot take it now
    /// does without (it is busy anyway).
    pub fn heartbeat(&mut self, ring: &mut Ring, interval: Duration) {
        let interval_ns = i64::try_from(interval.as_nanos()).unwrap_or(i64::MAX);
        let chunk = |f: Format| Rc::<[u8]>::from(frame::message_chunk(f, &message::heartbeat_message(interval_ns)));
        let protobuf = chunk(Format::Protobuf);
        let cut = self.relay.push_control(chunk(Format::Json), protobuf.clone());
        self.relay_cut(ring, &cut);
        for i in 0..self.clients.len() {
            let Some(c) = self.clients[i].as_mut() else { continue };
            let Path::Pipe(p) = &mut c.path else { continue };
            if c.closing || p.finished || p.torn || c.framing == Framing::Raw {
                continue;
            }
            match p.put(ring, c.fd, &protobuf) {
                Put::Done => self.pipe_flush(ring, i),
                Put::NoRoom => {}
                // (A heartbeat is smaller than a pipe's atomic write: only a socket that
                // took part of it and then refused the rest tears it.)
                Put::Torn(_) => self.close(ring, i),
            }
        }
        self.pump(ring);
    }

    /// Closes every client now (the grace period at exit ran out).
    pub fn close_all_clients(&mut self, ring: &mut Ring) {
        for i in 0..self.clients.len() {
            self.close(ring, i);
        }
        self.settle(ring);
    }

    /// Handles a completion of one of the engine's operations.
    pub fn handle(&mut self, ring: &mut Ring, op: OutputOp, index: u32, c: Completion) {
        let i = index as usize;
        match op {
            OutputOp::Read => self.on_read(ring, i, c),
            OutputOp::Readable => {
                self.streams[i].read_waiting = false;
                self.ensure_arena(ring);
                self.pump(ring);
            }
            OutputOp::Log => self.on_logged(ring, i, c),
            OutputOp::LoggerWritable => {
                self.streams[i].log_waiting = false;
                self.pump(ring);
            }
            OutputOp::StageReadable => {
                self.stage_mut(i).src_poll = None;
                self.stage_pump(ring, i);
            }
            OutputOp::StageLoggerWritable => {
                self.stage_mut(i).logger_poll = None;
                self.stage_pump(ring, i);
            }
            OutputOp::Send => self.on_sent(ring, i, c),
            OutputOp::ClientWritable => {
                match self.clients.get_mut(i) {
                    Some(Some(Client {
                        path: Path::Pipe(p), ..
                    })) => {
                        p.writable = None;
                        self.pipe_flush(ring, i);
                    }
                    Some(Some(Client {
                        path: Path::Copy(copy), ..
                    })) => {
                        copy.writable = None;
                        self.send_to(ring, i);
                    }
                    _ => {}
                }
                self.maybe_remove(ring, i);
            }
            OutputOp::Hangup => self.on_hangup(ring, i, c),
            OutputOp::BlockCheck => self.on_block_check(ring, i),
        }
        self.settle(ring);
    }

    /// Submits every read, logger write and client send that can go now.
    pub fn pump(&mut self, ring: &mut Ring) {
        if !self.started {
            return;
        }
        for s in 0..self.streams.len() {
            if self.streams[s].stage.is_some() {
                self.stage_pump(ring, s);
            }
            self.read(ring, s);
            self.log(ring, s);
        }
        self.pump_clients(ring);
        self.settle(ring);
    }

    /// Moves on the stages that handlers marked ready, until none is.
    fn settle(&mut self, ring: &mut Ring) {
        while let Some(s) = self.streams.iter().position(|s| s.stage_ready) {
            self.streams[s].stage_ready = false;
            self.stage_pump(ring, s);
        }
    }

    fn fail(&mut self, what: String) {
        if self.failure.is_none() {
            tracing::error!("{what}");
            self.failure = Some(Failure(what));
        }
    }

    fn fail_stream(&mut self, s: usize, e: &std::io::Error) {
        let name = self.streams[s].name;
        self.fail(format!("Failed redirecting {name}: {}", crate::sys::strerror(e)));
    }

    fn end_of_stream(&mut self, s: usize) {
        tracing::debug!("{} reached its end", self.streams[s].name);
        self.relay.on_eof(s);
    }

    fn stage_mut(&mut self, s: usize) -> &mut Stage {
        self.streams[s].stage.as_mut().expect("a staged stream")
    }

    /// Allocates the arena at the first output.
    fn ensure_arena(&mut self, ring: &mut Ring) {
        if ring.arena_len() == 0 {
            ring.init_arena(self.relay.arena_len());
        }
    }

    fn poll(ring: &mut Ring, fd: Fd, events: u32, op: OutputOp, index: usize) -> OpId {
        ring.submit(
            crate::ring::Op::Poll { fd, events },
            Token::Output(op, index as u32).encode(),
        )
    }

    fn timer(ring: &mut Ring, after: Duration, op: OutputOp, index: usize) -> OpId {
        ring.submit(
            crate::ring::Op::Timeout { after },
            Token::Output(op, index as u32).encode(),
        )
    }

    fn policy_of(&self, i: usize) -> Option<LagPolicy> {
        self.clients.get(i)?.as_ref().map(|c| c.policy)
    }
}
