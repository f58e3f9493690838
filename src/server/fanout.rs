//! The output engine alone: container output fanned out to the logger and to clients
//! that are already connected, until the output ends and every client has it. This is the
//! relay core without the HTTP server around it, for tests and the fan-out benchmark;
//! the server runs the very same [`Output`](super::output::Output).

use std::io;
use std::os::fd::OwnedFd;

use crate::config::{LagPolicy, RelayConfig, RingConfig};
use crate::relay::Framing;
use crate::ring::Ring;

pub use super::output::Stats;
use super::output::{Options, Output, Source};
use super::token::Token;

/// What to relay.
pub struct FanoutSpec {
    pub relay: RelayConfig,
    /// The container's output streams: a fd, and whether it is a PTY master.
    pub sources: Vec<(OwnedFd, bool)>,
    /// One logger per source.
    pub loggers: Vec<OwnedFd>,
    /// Connected clients: the socket, its framing, and bytes to send first.
    pub clients: Vec<(OwnedFd, Framing, Vec<u8>)>,
    /// What happens to clients that fall behind.
    pub policy: LagPolicy,
    /// Watch idle clients for hang-ups.
    pub hangup_polls: bool,
    /// Serve protobuf and raw clients by tee and splice (zero copy).
    pub zero_copy: bool,
}

/// How it went.
#[derive(Debug)]
pub struct FanoutReport {
    pub stats: Stats,
    /// The failure that ended the relay early, if any.
    pub failure: Option<String>,
    /// Whether the arena was registered as a fixed buffer.
    pub registered: bool,
    /// Descriptors the ring still held when it was done (should be 0).
    pub leaked_fds: usize,
}

/// Runs the relay until every source ended, the logger has every byte and every client
/// has its whole stream (or was cut off).
pub fn run(spec: FanoutSpec, ring: RingConfig) -> io::Result<FanoutReport> {
    let mut ring = Ring::new(ring)?;
    let mut sources = Vec::new();
    for (fd, pty) in spec.sources {
        crate::sys::set_nonblocking(&fd)?;
        let splices = crate::sys::Kind::of(&fd)?.splices_out();
        sources.push(Source {
            fd: ring.adopt(fd),
            pty,
            splices,
        });
    }
    let loggers = spec.loggers.into_iter().map(|fd| ring.adopt(fd)).collect();
    let options = Options {
        hangup_polls: spec.hangup_polls,
        zero_copy: spec.zero_copy,
        ..Options::default()
    };
    let mut output = Output::new(&mut ring, spec.relay, sources, loggers, options)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // The clients are there before the first byte is read: they get every one.
    for (fd, framing, front) in spec.clients {
        let fd = ring.adopt(fd);
        let ask = crate::wire::media::OutputAsk::LIVE;
        output.add_client(&mut ring, fd, framing, spec.policy, ask, |_, _| front.clone());
    }
    output.start(&mut ring);
    let mut finishing = false;
    loop {
        if !finishing && (output.redirect_finished() || output.failure().is_some()) {
            finishing = true;
            output.finish_clients(&mut ring);
        }
        // Done when every client has its stream and the logger every byte (or it failed);
        // dropping the ring cancels whatever timer is still armed.
        if finishing && output.clients_gone() && (output.redirect_finished() || output.failure().is_some()) {
            break;
        }
        ring.wait(true)?;
        while let Some(c) = ring.next() {
            let Token::Output(op, i) = Token::decode(c.token) else {
                unreachable!("only the output engine submits here")
            };
            output.handle(&mut ring, op, i, c);
        }
    }
    // The sources, loggers and staged payload pipes are still held (the ring closes them
    // when dropped, after the output engine); every client must be closed by now.
    let per_stream = if output.zero_copy() { 3 } else { 2 };
    let leaked_fds = ring.live_fds() - output.streams() * per_stream;
    Ok(FanoutReport {
        stats: output.stats(),
        failure: output.failure().map(|f| f.0.clone()),
        registered: ring.arena_registered(),
        leaked_fds,
    })
}
