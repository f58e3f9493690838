//! The switchboard server: it ties the wire codecs, the relay and the ring together, on
//! one thread.
//!
//! Its life follows Mesos's (docs/protocol.md §3, §4): it listens on the socket, starts
//! redirecting the container's output (at once, or at the first output client or SIGTERM
//! with `wait_for_connection`), serves attach calls, and once every output stream ended
//! and every input response was acknowledged, ends every client's stream and exits 0.
//! It exits 1 only for real failures (a stream or logger that fails). Unlike Mesos it
//! never aborts on bad input, bounds every buffer, and stops waiting for clients that do
//! not take the end of their stream within a grace period.

mod answer;
mod conn;
mod error;
pub mod fanout;
mod input;
mod metrics;
pub(crate) mod output;
pub mod socket;
mod start;
mod token;

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::config::{Config, MIN_HEARTBEAT};
use crate::ring::{Completion, Fd, Op, OpId, Ring};

use conn::Conns;
use output::Output;
use token::{ServerOp, Token};

pub use error::Error;

/// How a server ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The container's output ended and every client has it: exit 0.
    Done,
    /// A stream or logger failed: exit 1, with Mesos's message.
    Failed(String),
}

/// Connections of refused peers (`--allowed_uids`) held at once to tell them 403; more
/// are closed without an answer.
const MAX_FORBIDDEN: usize = 64;

/// A name no other server on this host has had: its pid and start time. A client that
/// resumes at a position checks that the same server numbered it.
fn instance_name() -> String {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:x}-{:x}", std::process::id(), since_epoch.as_nanos())
}

/// The server's state.
pub(crate) struct Server {
    ring: Ring,
    config: Config,
    output: Output,
    listener: Fd,
    accept: Option<OpId>,
    conns: Conns,
    signals: Fd,
    heartbeat: Option<OpId>,
    drain: Option<OpId>,
    ack_timer: Option<OpId>,
    /// Input requests that got past their first record, not yet acknowledged.
    acks_outstanding: u64,
    /// Output ended (and reached the logger); input requests are answered 1 s later.
    redirect_finished: bool,
    terminating: bool,
    failure: Option<String>,
    /// Names this server's positions: another server numbers its output anew.
    instance: String,
    /// When it started (`/metrics`' uptime).
    started: std::time::Instant,
}

/// Runs a server until it exits. Errors before it serves (the socket, the ring, bad
/// descriptors) come back as `Err`, with Mesos's texts where it has them.
pub fn serve(config: Config) -> Result<Exit, Error> {
    let mut server = Server::start(config)?;
    server.run().map_err(Error::Serving)
}

impl Server {
    fn start(config: Config) -> Result<Server, Error> {
        let signals = start::signal_fd()?;
        let mut ring = Ring::new(config.ring).map_err(Error::Ring)?;
        match ring.fallback() {
            Some(why) => tracing::warn!("{why}: serving on the epoll engine instead"),
            None => tracing::info!("serving on the {} engine", ring.engine()),
        }
        let signals = ring.adopt(signals);
        let (sources, loggers) = start::adopt_streams(&mut ring, &config.fds)?;
        let stdin = start::adopt_stdin(&mut ring, config.fds.stdin_to_fd);
        let output = Output::new(
            &mut ring,
            config.relay,
            sources,
            loggers,
            start::output_options(&config),
        )?;
        // The socket comes last: once its path exists, the agent connects, so everything
        // that could still fail has been checked.
        let mode = if config.allowed_uids.is_some() { 0o666 } else { 0o600 };
        let listener = socket::listen_at(&config.socket, config.limits.backlog, mode).map_err(Error::Socket)?;
        let listener = ring.adopt(listener);
        let conns = Conns::new(stdin, config.fds.tty);
        let mut server = Server {
            ring,
            config,
            output,
            listener,
            accept: None,
            conns,
            signals,
            heartbeat: None,
            drain: None,
            ack_timer: None,
            acks_outstanding: 0,
            redirect_finished: false,
            terminating: false,
            failure: None,
            instance: instance_name(),
            started: std::time::Instant::now(),
        };
        server.read_signal();
        server.arm_accept();
        if !server.config.wait_for_connection {
            server.output.start(&mut server.ring);
        }
        server.arm_heartbeat();
        tracing::info!("listening on {}", server.config.socket.display());
        Ok(server)
    }

    fn run(&mut self) -> io::Result<Exit> {
        loop {
            self.check_progress();
            if self.terminating && self.output.clients_gone() && self.conns.is_empty() {
                break;
            }
            // One completion at a time: one may close what a later one belongs to, whose
            // operations are then forgotten and never handed out.
            self.ring.wait(true)?;
            while let Some(c) = self.ring.next() {
                self.dispatch(c);
            }
        }
        tracing::info!("exiting");
        Ok(match self.failure.take() {
            Some(f) => Exit::Failed(f),
            None => Exit::Done,
        })
    }

    fn dispatch(&mut self, c: Completion) {
        match Token::decode(c.token) {
            Token::Output(op, i) => self.output.handle(&mut self.ring, op, i, c),
            Token::Conn(op, i) => {
                let mut ctx = self.ctx();
                conn::handle(&mut ctx, op, i, c);
            }
            Token::Server(ServerOp::Accept) => self.on_accept(c),
            Token::Server(ServerOp::AcceptRetry) => self.arm_accept(),
            Token::Server(ServerOp::Signal) => self.on_signal(c),
            Token::Server(ServerOp::Heartbeat) => self.on_heartbeat(),
            Token::Server(ServerOp::Drain) => self.on_drain(),
            Token::Server(ServerOp::AckTimeout) => {
                if !self.terminating && self.acks_outstanding > 0 {
                    tracing::warn!(
                        "{} input acknowledgement(s) did not come within {:?} of the end of output; exiting anyway",
                        self.acks_outstanding,
                        self.config.limits.ack_timeout
                    );
                    self.terminate();
                }
            }
        }
    }

    fn ctx(&mut self) -> conn::Ctx<'_> {
        conn::Ctx {
            ring: &mut self.ring,
            output: &mut self.output,
            conns: &mut self.conns,
            config: &self.config,
            acks_outstanding: &mut self.acks_outstanding,
            redirect_finished: self.redirect_finished,
            terminating: self.terminating,
            instance: &self.instance,
            started: self.started,
        }
    }

    /// Reacts to what the last completions changed: the end of output, failures,
    /// acknowledgements; starts termination when Mesos would.
    fn check_progress(&mut self) {
        if self.terminating {
            return;
        }
        if let Some(f) = self.output.failure() {
            self.failure = Some(f.0.clone());
            self.terminate();
            return;
        }
        if !self.redirect_finished && self.output.redirect_finished() {
            tracing::info!("the container's output ended");
            self.redirect_finished = true;
            let mut ctx = self.ctx();
            conn::redirect_finished(&mut ctx);
        }
        if self.redirect_finished && self.acks_outstanding == 0 {
            self.terminate();
        } else if self.redirect_finished && self.ack_timer.is_none() {
            // Open input requests are answered a second after the output ended; their
            // clients get ack_timeout from then (the agent acknowledges even a request
            // whose response it did not get, so only a client that breaks the protocol
            // is waited for this long).
            let after = self.config.limits.ack_timeout + Duration::from_secs(1);
            self.ack_timer = Some(
                self.ring
                    .submit(Op::Timeout { after }, Token::Server(ServerOp::AckTimeout).encode()),
            );
        }
    }

    /// Stops accepting, ends every output stream after its records, answers or closes
    /// every other connection, and gives clients `drain_timeout` to take what is left.
    fn terminate(&mut self) {
        self.terminating = true;
        tracing::info!(
            "terminating{}",
            self.failure.as_ref().map(|f| format!(": {f}")).unwrap_or_default()
        );
        if let Some(op) = self.accept.take() {
            self.ring.cancel(op, true);
        }
        if let Some(op) = self.heartbeat.take() {
            self.ring.cancel(op, true);
        }
        self.output.finish_clients(&mut self.ring);
        let mut ctx = self.ctx();
        conn::terminate(&mut ctx);
        let after = self.config.limits.drain_timeout;
        self.drain = Some(
            self.ring
                .submit(Op::Timeout { after }, Token::Server(ServerOp::Drain).encode()),
        );
    }

    fn on_drain(&mut self) {
        self.drain = None;
        if !self.output.clients_gone() || !self.conns.is_empty() {
            tracing::warn!(
                "clients did not take the end of their streams within {:?}; closing them",
                self.config.limits.drain_timeout
            );
        }
        self.output.close_all_clients(&mut self.ring);
        let mut ctx = self.ctx();
        conn::close_all(&mut ctx);
    }

    fn arm_accept(&mut self) {
        if !self.terminating && self.accept.is_none() {
            self.accept = Some(self.ring.submit(
                Op::AcceptMulti { fd: self.listener },
                Token::Server(ServerOp::Accept).encode(),
            ));
        }
    }

    fn on_accept(&mut self, c: Completion) {
        if !c.more {
            self.accept = None;
        }
        match c.output {
            crate::ring::Output::Accepted(fd) => {
                let count = self.conns.len() + self.output.client_count();
                let allowed = self.peer_allowed(&fd);
                if count >= self.config.limits.max_connections || self.terminating {
                    tracing::warn!("refusing a connection: {count} are open");
                    self.conns.counts.refused_limit += 1;
                    drop(fd);
                } else if !allowed && self.conns.forbidden() >= MAX_FORBIDDEN {
                    tracing::warn!("closing a refused peer's connection at once: {MAX_FORBIDDEN} are open");
                    self.conns.counts.refused_forbidden += 1;
                    drop(fd);
                } else {
                    let fd = self.ring.adopt(fd);
                    let mut ctx = self.ctx();
                    conn::accepted(&mut ctx, fd, allowed);
                }
            }
            _ if c.res == -libc::ECANCELED || self.terminating => {}
            _ => {
                // Out of descriptors (EMFILE, ENFILE) or memory: try again shortly rather
                // than spin or die; connections queue in the backlog meanwhile.
                tracing::warn!("accept failed: {}", crate::sys::strerror_res(c.res));
                if self.accept.is_none() {
                    self.ring.submit(
                        Op::Timeout {
                            after: Duration::from_millis(100),
                        },
                        Token::Server(ServerOp::AcceptRetry).encode(),
                    );
                    return;
                }
            }
        }
        if !c.more {
            self.arm_accept();
        }
    }

    /// Whether the peer of a new connection may use it: always without `allowed_uids`;
    /// with it, our own user and the listed ones (by SO_PEERCRED, taken at connect time).
    fn peer_allowed(&self, fd: &OwnedFd) -> bool {
        let Some(allowed) = &self.config.allowed_uids else { return true };
        match nix::sys::socket::getsockopt(fd, nix::sys::socket::sockopt::PeerCredentials) {
            Ok(cred) => {
                let uid = cred.uid();
                let ok = uid == nix::unistd::geteuid().as_raw() || allowed.contains(&uid);
                if !ok {
                    tracing::warn!("refusing a connection from uid {uid} (pid {})", cred.pid());
                }
                ok
            }
            Err(e) => {
                tracing::warn!("refusing a connection whose peer is unknown: {e}");
                false
            }
        }
    }

    fn read_signal(&mut self) {
        self.ring.submit(
            Op::Read {
                fd: self.signals,
                buf: Vec::with_capacity(128),
            },
            Token::Server(ServerOp::Signal).encode(),
        );
    }

    fn on_signal(&mut self, c: Completion) {
        let buf = c.into_buf();
        if buf.len() >= 4 {
            let signo = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
            if signo == Signal::SIGTERM as u32 {
                // SIGTERM means "unblock": start reading if we were waiting for a client.
                tracing::info!("SIGTERM: redirection starts if it had not");
                self.output.start(&mut self.ring);
            }
        }
        self.read_signal();
    }

    fn arm_heartbeat(&mut self) {
        if let Some(interval) = self.config.heartbeat_interval
            && !self.terminating
        {
            let after = interval.max(MIN_HEARTBEAT);
            self.heartbeat = Some(
                self.ring
                    .submit(Op::Timeout { after }, Token::Server(ServerOp::Heartbeat).encode()),
            );
        }
    }

    fn on_heartbeat(&mut self) {
        self.heartbeat = None;
        if let Some(interval) = self.config.heartbeat_interval {
            self.output.heartbeat(&mut self.ring, interval);
        }
        self.arm_heartbeat();
    }
}
