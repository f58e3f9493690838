//! Output clients: one table and one lifecycle for both delivery paths.
//!
//! A client is attached with its response head to send first, on the pipe path when it
//! can take it (zero copy on, a protobuf or raw client, a pipe to spare) and by copies
//! otherwise. From then on it is served until its stream is complete, or it is cut
//! ([`Output::cut`]: for lagging, counted, or because its connection is gone), or closed
//! at exit. Closing shuts its socket down, which ends its operations at once; it is
//! removed once none is in flight, so nothing the kernel still uses is freed under it.
//!
//! A blocking client may hold the container back ([`Output::watch_blocker`]): if it made
//! no progress within the block timeout, it is cut, and the container goes on.

use nix::sys::socket::{Shutdown, shutdown};

use super::pipe::{Made, PipeClient};
use super::{CLIENT_PIPE_BYTES, Output, POLLHUP};
use crate::config::LagPolicy;
use crate::msg::Msg;
use crate::relay::{self, ClientId, CutReason, Framing, Start, StartAt};
use crate::ring::{Completion, Fd, OpId, Ring};
use crate::server::token::OutputOp;
use crate::wire::media::OutputAsk;
use crate::wire::message::Format;

/// An attached output client.
pub(super) struct Client {
    pub fd: Fd,
    pub framing: Framing,
    pub policy: LagPolicy,
    /// A wait for it to hang up, while no data flows.
    pub hangup: Option<OpId>,
    /// Its block check, while one is armed.
    pub block_check: Option<BlockCheck>,
    pub closing: bool,
    pub path: Path,
}

/// A block check armed for a client: the timer, and how far it had got and how far
/// behind it was then.
pub(super) struct BlockCheck {
    timer: OpId,
    progress: u64,
    behind: u64,
}

/// How the output reaches a client.
pub(super) enum Path {
    /// Copies: SENDMSG from the arena, built by the relay.
    Copy(CopyClient),
    /// Pipe pages: tee of the staged rounds, splice into its socket.
    Pipe(PipeClient),
}

/// A client on the copy path: its place in the relay, and its send.
pub(super) struct CopyClient {
    pub id: ClientId,
    pub send: Option<OpId>,
    /// A wait for its socket to take more (a send, or its pipe's flush, found it full).
    pub writable: Option<OpId>,
    /// The message of its sends, kept for reuse between them.
    pub msg: Option<Msg>,
    /// A protobuf or raw client served from the history (it fell behind its pipe, or
    /// started behind the newest output) keeps its pipe: what the pipe still holds goes
    /// out before any copy, and it goes back to the pipe path once it caught up.
    pub pipe: Option<PipeClient>,
}

/// The redraw as one record of stdout in `framing`.
fn redraw_record(framing: Framing, redraw: &[u8]) -> Vec<u8> {
    match framing {
        Framing::Raw => redraw.to_vec(),
        Framing::Chunked(format) => {
            crate::wire::frame::data_chunk(format, crate::wire::message::Stream::Stdout, redraw)
        }
    }
}

impl Output {
    /// Attaches a client connection that asks to start at `ask.at` (checked with
    /// [`Output::locate`]): it gets the head `head` makes of where it starts (and whether a
    /// redraw of the screen follows it), then the output from there. Protobuf and raw clients at the live edge take the pipe path
    /// when zero copy is on (and their pipe can be sized: past the per-user pipe budget
    /// they are served by copies).
    pub fn add_client(
        &mut self,
        ring: &mut Ring,
        fd: Fd,
        framing: Framing,
        policy: LagPolicy,
        ask: OutputAsk,
        head: impl Fn(Start, bool) -> Vec<u8>,
    ) {
        let i = match self.clients.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.clients.push(None);
                self.clients.len() - 1
            }
        };
        // Its size first, so that the redraw fits its terminal; the redraw stands for the
        // output up to the relay's next byte, where a copying client at the live edge
        // starts (a resume wants the bytes themselves).
        if let (Some(t), Some(size)) = (&mut self.terminal, ask.window) {
            t.attached(i, ask.terminal.clone(), size);
        }
        let redraw = match (&mut self.terminal, ask.screen && ask.at == StartAt::Live) {
            (Some(t), true) => t.redraw().map(|r| redraw_record(framing, &r)),
            _ => None,
        };
        let head = |start| {
            let mut bytes = head(start, redraw.is_some());
            bytes.extend_from_slice(redraw.as_deref().unwrap_or_default());
            bytes
        };
        let Some(path) = self.path_for(ring, fd, framing, policy, ask.at, redraw.is_some(), head, i) else {
            if let Some(t) = &mut self.terminal {
                t.detached(i);
            }
            let _ = shutdown(ring.raw(fd), Shutdown::Both);
            ring.close(fd);
            return;
        };
        let hangup = self
            .options
            .hangup_polls
            .then(|| Self::poll(ring, fd, POLLHUP, OutputOp::Hangup, i));
        let copying = matches!(path, Path::Copy(_));
        self.clients[i] = Some(Client {
            fd,
            framing,
            policy,
            hangup,
            block_check: None,
            closing: false,
            path,
        });
        if copying {
            self.send_to(ring, i);
        } else {
            self.pipe_flush(ring, i);
        }
        self.settle(ring);
    }

    /// Whether a new client of `framing` may have a pipe: zero copy is on, it is not
    /// JSON, and the pipe clients are fewer than the descriptors allow.
    fn may_have_pipe(&self, framing: Framing) -> bool {
        let pipes = self
            .clients
            .iter()
            .flatten()
            .filter(|c| match &c.path {
                Path::Pipe(_) => true,
                Path::Copy(copy) => copy.pipe.is_some(),
            })
            .count();
        self.zero_copy() && framing != Framing::Chunked(Format::Json) && pipes < self.options.max_zero_copy_clients
    }

    /// The delivery path of a new client at index `i`, with its head; `None` if its head
    /// was torn (part of it went out, and no path can go on with it). A client with a
    /// redraw starts with copies (at the relay's next byte, for which the redraw stands).
    #[allow(clippy::too_many_arguments)] // One client's attach, as the connection hands it over.
    fn path_for(
        &mut self,
        ring: &mut Ring,
        fd: Fd,
        framing: Framing,
        policy: LagPolicy,
        at: StartAt,
        redraw: bool,
        head: impl Fn(Start) -> Vec<u8>,
        i: usize,
    ) -> Option<Path> {
        let pipe_ok = self.may_have_pipe(framing);
        let min = self
            .streams
            .iter()
            .filter_map(|s| s.stage.as_ref())
            .map(|stage| stage.client_pipe_min())
            .max()
            .unwrap_or(0);
        if at == StartAt::Live && pipe_ok && !redraw {
            // A pipe client starts with the next round.
            let newest = self.live_position();
            let start = Start {
                position: newest,
                skipped: 0,
                newest,
            };
            match PipeClient::make(ring, fd, policy, &head(start), CLIENT_PIPE_BYTES.max(min), min) {
                Made::Pipe(p) => return Some(Path::Pipe(p)),
                Made::Torn => return None,
                Made::Copies(why) => tracing::info!("client {i} is served by copies: {why}"),
            }
        }
        // A copying client at the live edge starts with the relay's next byte (a round
        // staged but not yet read comes to it through the copy engine).
        let newest = self.live_position();
        let start = match at {
            StartAt::Live => Start {
                position: self.relay.position(),
                skipped: 0,
                newest,
            },
            _ => self.relay.locate(at, newest).unwrap_or(Start {
                position: newest,
                skipped: 0,
                newest,
            }),
        };
        if start.skipped > 0 {
            tracing::info!(
                "client {i} starts {} bytes later than it asked: the history no longer has them",
                start.skipped
            );
        }
        let id = self.relay.add_client_at(framing, policy, head(start), start.position);
        self.note_relay_client(id, i);
        // A protobuf or raw client that starts behind takes the pipe path once it caught
        // up, if it can have a pipe.
        let pipe = match pipe_ok && at != StartAt::Live {
            true => match PipeClient::make(ring, fd, policy, &[], CLIENT_PIPE_BYTES.max(min), min) {
                Made::Pipe(p) => Some(p),
                _ => None,
            },
            false => None,
        };
        Some(Path::Copy(CopyClient {
            id,
            send: None,
            writable: None,
            msg: Some(Msg::default()),
            pipe,
        }))
    }

    /// Records which client of the table relay client `id` is.
    pub(super) fn note_relay_client(&mut self, id: ClientId, i: usize) {
        let r = id.index() as usize;
        if self.by_relay.len() <= r {
            self.by_relay.resize(r + 1, usize::MAX);
        }
        self.by_relay[r] = i;
    }

    /// Stops serving client `i` and closes it: for lagging (counted, with the payload
    /// bytes it missed), or because its connection is gone.
    pub(super) fn cut(&mut self, ring: &mut Ring, i: usize, why: CutReason) {
        let Some(Some(c)) = self.clients.get(i) else { return };
        if c.closing {
            return;
        }
        if why == CutReason::Lagging {
            let lost = match &c.path {
                Path::Copy(copy) => self.relay.cut_lagging(copy.id),
                Path::Pipe(p) => {
                    Some(self.stats.bytes_read().saturating_sub(p.account.delivered()) + p.account.queued() as u64)
                }
            };
            if let Some(lost) = lost {
                self.count_cut(i, lost);
            }
        }
        self.close(ring, i);
    }

    /// The relay cut these copying clients for lagging.
    pub(super) fn relay_cut(&mut self, ring: &mut Ring, cuts: &[relay::Cut]) {
        for cut in cuts {
            let i = self.by_relay[cut.id.index() as usize];
            self.count_cut(i, cut.lost);
            self.close(ring, i);
        }
    }

    fn count_cut(&mut self, i: usize, lost: u64) {
        tracing::warn!("client {i} fell {lost} bytes behind and was disconnected");
        self.stats.clients_cut += 1;
        self.stats.bytes_lost += lost;
    }

    /// Shuts client `i`'s connection down (both directions: a send in flight fails and
    /// the hang-up poll fires), so that it is owed nothing more, and removes it once no
    /// operation of its is in flight.
    pub(super) fn close(&mut self, ring: &mut Ring, i: usize) {
        let Some(Some(c)) = self.clients.get_mut(i) else { return };
        if !c.closing {
            c.closing = true;
            let _ = shutdown(ring.raw(c.fd), Shutdown::Both);
            if let Some(op) = c.hangup {
                ring.cancel(op, false);
            }
            // Its block check would find nothing to check: it never comes.
            if let Some(check) = c.block_check.take() {
                ring.cancel(check.timer, true);
            }
            match &c.path {
                Path::Copy(copy) => {
                    self.relay.cut(copy.id, CutReason::Gone);
                    if let Some(op) = copy.writable {
                        ring.cancel(op, false);
                    }
                }
                Path::Pipe(p) => {
                    if let Some(op) = p.writable {
                        ring.cancel(op, false);
                    }
                }
            }
            // Rounds it held may go on.
            for stream in &mut self.streams {
                if let Some(round) = stream.stage.as_mut().and_then(|st| st.round.as_mut())
                    && round.owed.contains(&i)
                {
                    round.owed.retain(|&o| o != i);
                    stream.stage_ready = true;
                }
            }
        }
        self.maybe_remove(ring, i);
    }

    /// Removes client `i` if it is closing and none of its operations is in flight.
    pub(super) fn maybe_remove(&mut self, ring: &mut Ring, i: usize) {
        let Some(Some(c)) = self.clients.get(i) else { return };
        let in_flight = c.hangup.is_some()
            || match &c.path {
                Path::Copy(copy) => copy.send.is_some() || copy.writable.is_some(),
                Path::Pipe(p) => p.writable.is_some(),
            };
        if !c.closing || in_flight {
            return;
        }
        let c = self.clients[i].take().expect("checked above");
        ring.close(c.fd);
        if let Some(t) = &mut self.terminal {
            t.detached(i);
        }
        if let Path::Copy(copy) = c.path {
            self.relay.remove_client(copy.id);
            // Its records may have been all that held the buffers.
            for s in 0..self.streams.len() {
                self.read(ring, s);
            }
        }
    }

    pub(super) fn on_hangup(&mut self, ring: &mut Ring, i: usize, c: Completion) {
        let Some(Some(client)) = self.clients.get_mut(i) else { return };
        client.hangup = None;
        if c.res != -libc::ECANCELED && !client.closing {
            tracing::debug!("client {i} hung up");
            self.close(ring, i);
        }
        self.maybe_remove(ring, i);
    }

    /// Client `i` holds the container back: checks back after the block timeout whether
    /// it made real progress meanwhile.
    pub(super) fn watch_blocker(&mut self, ring: &mut Ring, i: usize) {
        let (progress, behind) = (self.progress(i), self.behind(i));
        let after = self.options.block_timeout;
        let Some(Some(c)) = self.clients.get_mut(i) else { return };
        if !c.closing && c.block_check.is_none() {
            let timer = Self::timer(ring, after, OutputOp::BlockCheck, i);
            c.block_check = Some(BlockCheck {
                timer,
                progress,
                behind,
            });
        }
    }

    /// A blocking client that still holds the container back is cut unless it took at
    /// least half of what it was behind when the check was armed: one that trickles a
    /// record per timeout would otherwise hold the container for ever.
    pub(super) fn on_block_check(&mut self, ring: &mut Ring, i: usize) {
        let Some(Some(c)) = self.clients.get_mut(i) else { return };
        let Some(check) = c.block_check.take() else { return };
        let taken = self.progress(i).saturating_sub(check.progress);
        if self.holds_back(i) && taken < (check.behind / 2).max(1) {
            tracing::warn!(
                "client {i} took {taken} of the {} bytes it was behind in {:?} while the container waited for it; \
                 disconnecting it",
                check.behind,
                self.options.block_timeout
            );
            self.cut(ring, i, CutReason::Lagging);
        }
        self.pump(ring);
    }

    /// How far client `i` got, in bytes: it grows as the client makes progress.
    fn progress(&self, i: usize) -> u64 {
        match self.clients.get(i) {
            Some(Some(Client {
                path: Path::Copy(copy), ..
            })) => self.relay.reached(copy.id),
            Some(Some(Client {
                path: Path::Pipe(p), ..
            })) => p.account.moved(),
            _ => 0,
        }
    }

    /// How far client `i` is behind, in bytes: the history it holds, or its pipe.
    fn behind(&self, i: usize) -> u64 {
        match self.clients.get(i) {
            Some(Some(Client {
                path: Path::Copy(copy), ..
            })) => self.relay.lag(copy.id),
            Some(Some(Client {
                path: Path::Pipe(p), ..
            })) => p.account.queued() as u64,
            _ => 0,
        }
    }

    /// Whether client `i` is what holds reading back: the copying client that holds the
    /// oldest record of a full log, or a pipe client owed a staged round.
    fn holds_back(&self, i: usize) -> bool {
        match self.clients.get(i) {
            Some(Some(Client {
                path: Path::Copy(copy), ..
            })) => self.relay.blocking_holder().is_some_and(|(id, _)| id == copy.id),
            Some(Some(Client {
                path: Path::Pipe(_), ..
            })) => self
                .streams
                .iter()
                .any(|s| s.stage.as_ref().is_some_and(|st| st.owes(i))),
            _ => false,
        }
    }
}
