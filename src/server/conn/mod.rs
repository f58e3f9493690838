//! Connections on the switchboard socket that are not output clients: HTTP requests in
//! order, the output call until it is handed over, the acknowledgement endpoint, and the
//! input requests (whose records `input.rs` decides and applies). docs/protocol.md §8-§12.
//!
//! A connection handles one request at a time: the next head is parsed only when the
//! previous response went out, which keeps pipelined responses in order. An output call
//! hands the connection over to the output engine. An input call holds the input slot
//! once its first record is in; the slot is freed however the request ends.

mod budget;
mod request;

use std::collections::VecDeque;
use std::time::Duration;

use nix::sys::socket::{Shutdown, shutdown};

use crate::config::{Config, FORBIDDEN_HEAD_TIMEOUT, INPUT_ANSWER_DELAY};
use crate::relay::Framing;
use crate::ring::{Completion, Fd, Op, OpId, Output as OpOutput, Ring};
use crate::wire::http::{self, RequestReader};
use crate::wire::media::{OutputAsk, ResponseFormat};
use crate::wire::message::Format;

use super::answer::Answer;
use super::input::{self, Session, Stdin};
use super::output::Output;
use super::token::{ConnOp, Token};
use budget::{account, budget_allows_recv, wake_starved};

pub(super) use request::back_to_idle;
use request::{hand_over, parse};

const RECV_SIZE: usize = 16 * 1024;

/// A peer gone both ways (or an error), as a poll says it.
const HANGUP: u32 = (libc::POLLHUP | libc::POLLERR) as u32;

/// The receive size of connections that do not hold the input slot (heads, call bodies,
/// first records are small): every connection may have one in flight, counted against
/// the request budget, so the budget holds 8192 of them, more than the connections
/// allowed: idle connections alone cannot use it up.
const SMALL_RECV_SIZE: usize = 4 * 1024;

/// What connection code may touch of the server.
pub(crate) struct Ctx<'a> {
    pub ring: &'a mut Ring,
    pub output: &'a mut Output,
    pub conns: &'a mut Conns,
    pub config: &'a Config,
    pub acks_outstanding: &'a mut u64,
    pub redirect_finished: bool,
    pub terminating: bool,
    /// Sent with every output response (`Switchboard-Instance`).
    pub instance: &'a str,
    /// When the server started (`/metrics`' uptime).
    pub started: std::time::Instant,
}

/// Bytes received and not yet consumed. Consuming moves a cursor; the buffer is compacted
/// only once the consumed part is at least half of it, so consuming many small pieces
/// stays linear.
#[derive(Default)]
pub(super) struct Pending {
    buf: Vec<u8>,
    start: usize,
}

impl Pending {
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The memory it holds.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    pub fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.buf.len() {
            // Emptied: a large buffer is given back rather than kept for an idle
            // connection.
            if self.buf.capacity() > 2 * RECV_SIZE {
                self.buf = Vec::new();
            }
            self.buf.clear();
            self.start = 0;
        }
    }

    pub fn extend(&mut self, more: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(more);
    }
}

/// Where a connection is in its current request.
pub(super) enum State {
    /// Between requests: waiting for a head.
    Idle,
    /// Reading the body of a non-streaming call (an output attach).
    Call {
        format: Format,
        response: ResponseFormat,
        /// Where it asks to start (`Switchboard-From`, `Switchboard-Tail`), a redraw, a
        /// size.
        ask: OutputAsk,
        body: Vec<u8>,
    },
    /// An output call waits for the connection's earlier responses to go out.
    HandOver {
        framing: Framing,
        response: ResponseFormat,
        ask: OutputAsk,
    },
    /// Reading an acknowledgement's body.
    Ack {
        keep_alive: bool,
    },
    /// Reading a `GET /metrics` request's body (ignored), then answering it.
    Metrics {
        keep_alive: bool,
        open_metrics: bool,
    },
    Input(Session),
    /// Reading the rest of a body already answered (a 409).
    Discard {
        keep_alive: bool,
    },
    /// A final response is queued; the connection closes once it is out.
    Closing,
}

pub(super) struct Conn {
    fd: Fd,
    buf: Pending,
    reader: RequestReader,
    recv: Option<OpId>,
    send: Option<OpId>,
    sendq: VecDeque<Vec<u8>>,
    timer: Option<OpId>,
    /// A poll for its client's hang-up, while its input body waits for stdin.
    pub(super) hangup: Option<OpId>,
    pub state: State,
    /// The peer shut its side (we read EOF).
    pub eof: bool,
    /// Its peer is not among `--allowed_uids`: its request is answered 403.
    forbidden: bool,
    /// Bytes it holds that count against the request budget (see [`holding`]).
    held: usize,
    /// It wants to read, and waits for the budget to have room.
    starved: bool,
    /// Its receive in flight counts against the budget.
    budgeted_recv: bool,
}

impl Conn {
    /// Every response queued went out.
    fn flushed(&self) -> bool {
        self.sendq.is_empty() && self.send.is_none()
    }
}

/// Every connection that is not an output client, and the container's stdin.
pub(crate) struct Conns {
    slots: Vec<Option<Conn>>,
    free: Vec<u32>,
    count: usize,
    /// Open connections of peers not among `--allowed_uids` (they do not count towards
    /// `max_connections`, so they cannot lock allowed users out).
    forbidden: usize,
    pub(super) stdin: Stdin,
    /// The connection holding the input slot.
    pub(super) input_owner: Option<u32>,
    /// Bytes held for connections that do not hold the input slot, in all
    /// (`Limits::request_budget`).
    held: usize,
    /// Connections waiting for the budget to have room before they are read again.
    starved: Vec<u32>,
    /// Receives in flight for connections that do not hold the input slot (each may
    /// bring `SMALL_RECV_SIZE` bytes).
    reading: usize,
    /// What `/metrics` reports of connections and input.
    pub(crate) counts: Counts,
}

/// Counters of connections and input, for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    /// Connections closed at once: past `--max_connections` (or while terminating), and
    /// peers refused by `--allowed_uids` (answered 403, or closed at once past their cap).
    pub refused_limit: u64,
    pub refused_forbidden: u64,
    /// Input requests that held the input slot, and those refused since another did.
    pub input_requests: u64,
    pub input_conflicts: u64,
    /// Bytes written to the container's stdin.
    pub input_bytes: u64,
}

impl Conns {
    pub fn new(stdin: Option<Fd>, tty: bool) -> Conns {
        Conns {
            slots: Vec::new(),
            free: Vec::new(),
            count: 0,
            forbidden: 0,
            stdin: Stdin::new(stdin, tty),
            input_owner: None,
            held: 0,
            starved: Vec::new(),
            reading: 0,
            counts: Counts::default(),
        }
    }

    /// Open connections of allowed peers.
    pub fn len(&self) -> usize {
        self.count - self.forbidden
    }

    /// Open connections of peers that are refused.
    pub fn forbidden(&self) -> usize {
        self.forbidden
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Takes connection `i` out of the table.
    fn take(&mut self, i: u32) -> Conn {
        let c = self.slots[i as usize].take().expect("a connection that exists");
        self.free.push(i);
        self.count -= 1;
        self.held -= c.held;
        if c.recv.is_some() && c.budgeted_recv {
            self.reading -= 1;
        }
        if c.starved {
            self.starved.retain(|&j| j != i);
        }
        if c.forbidden {
            self.forbidden -= 1;
        }
        c
    }
}

/// Connection `i`, which an operation or a caller knows to exist.
pub(super) fn get<'a>(ctx: &'a mut Ctx<'_>, i: u32) -> &'a mut Conn {
    ctx.conns.slots[i as usize]
        .as_mut()
        .expect("an operation completed for a connection that exists")
}

pub(super) fn exists(ctx: &Ctx<'_>, i: u32) -> bool {
    matches!(ctx.conns.slots.get(i as usize), Some(Some(_)))
}

/// A new connection; the request of one whose peer is not `allowed` is answered 403 once
/// its head is in (answering at once would race the client's sending).
pub(crate) fn accepted(ctx: &mut Ctx<'_>, fd: Fd, allowed: bool) {
    let conns = &mut *ctx.conns;
    let i = conns.free.pop().unwrap_or_else(|| {
        conns.slots.push(None);
        (conns.slots.len() - 1) as u32
    });
    conns.slots[i as usize] = Some(Conn {
        fd,
        buf: Pending::default(),
        reader: RequestReader::new(ctx.config.limits.http),
        recv: None,
        send: None,
        sendq: VecDeque::new(),
        timer: None,
        hangup: None,
        state: State::Idle,
        eof: false,
        forbidden: !allowed,
        held: 0,
        starved: false,
        budgeted_recv: false,
    });
    conns.count += 1;
    let timeout = if allowed {
        ctx.config.limits.head_timeout
    } else {
        conns.forbidden += 1;
        FORBIDDEN_HEAD_TIMEOUT
    };
    start_timer(ctx, i, timeout);
    drive(ctx, i);
}

/// A completion for a connection or for stdin.
pub(crate) fn handle(ctx: &mut Ctx<'_>, op: ConnOp, i: u32, c: Completion) {
    match op {
        ConnOp::Recv => on_recv(ctx, i, c),
        ConnOp::Send => on_send(ctx, i, c),
        ConnOp::Timer => on_timer(ctx, i, c),
        ConnOp::StdinWrite => input::on_written(ctx, c),
        ConnOp::StdinWritable => input::on_writable(ctx),
        ConnOp::Hangup => on_hangup(ctx, i, c),
    }
}

/// The container's output ended: open input requests get their 200 a second later.
pub(crate) fn redirect_finished(ctx: &mut Ctx<'_>) {
    if let Some(i) = ctx.conns.input_owner {
        start_timer(ctx, i, INPUT_ANSWER_DELAY);
    }
}

/// The server is terminating: requests in progress are refused, idle connections close.
pub(crate) fn terminate(ctx: &mut Ctx<'_>) {
    for i in 0..ctx.conns.slots.len() as u32 {
        if !exists(ctx, i) {
            continue;
        }
        let c = get(ctx, i);
        match c.state {
            State::Idle | State::Closing | State::Discard { .. } | State::Ack { .. } | State::Metrics { .. }
                if c.flushed() =>
            {
                close(ctx, i);
                continue;
            }
            State::Idle | State::Closing | State::Discard { .. } | State::Ack { .. } | State::Metrics { .. } => {
                c.state = State::Closing
            }
            _ => respond(ctx, i, Answer::ShuttingDown, true),
        }
        // Send what is queued; the connection closes once it is out.
        drive(ctx, i);
    }
}

/// The drain grace period ran out: close everything.
pub(crate) fn close_all(ctx: &mut Ctx<'_>) {
    for i in 0..ctx.conns.slots.len() as u32 {
        if exists(ctx, i) {
            close(ctx, i);
        }
    }
}

/// Starts the connection's one timer (a replaced one is forgotten: it never fires here).
pub(super) fn start_timer(ctx: &mut Ctx<'_>, i: u32, after: Duration) {
    stop_timer(ctx, i);
    let op = ctx
        .ring
        .submit(Op::Timeout { after }, Token::Conn(ConnOp::Timer, i).encode());
    get(ctx, i).timer = Some(op);
}

pub(super) fn stop_timer(ctx: &mut Ctx<'_>, i: u32) {
    if let Some(op) = get(ctx, i).timer.take() {
        ctx.ring.cancel(op, true);
    }
}

/// Queues a complete response, which ends the request (and frees the input slot if it
/// held it). With `close`, it is the connection's last.
pub(super) fn respond(ctx: &mut Ctx<'_>, i: u32, answer: Answer, close: bool) {
    release_input(ctx, i);
    queue_answer(ctx, i, &answer, close);
    if close {
        let c = get(ctx, i);
        c.state = State::Closing;
        // Nothing more of it is read: what it sent ahead is let go.
        c.buf = Pending::default();
        // The client gets the request deadline (a refused peer its short one) to take
        // its last response.
        let deadline = if c.forbidden {
            FORBIDDEN_HEAD_TIMEOUT
        } else {
            ctx.config.limits.head_timeout
        };
        start_timer(ctx, i, deadline);
    }
}

/// Queues a response without ending the request's state.
pub(super) fn queue_answer(ctx: &mut Ctx<'_>, i: u32, answer: &Answer, close: bool) {
    let (status, text) = (answer.status(), answer.text());
    if status >= 400 {
        tracing::info!("connection {i}: answering {status}: {text}");
    }
    let response = http::content_response(status, answer.content_type(), text.as_bytes(), close);
    get(ctx, i).sendq.push_back(response);
}

fn release_input(ctx: &mut Ctx<'_>, i: u32) {
    if ctx.conns.input_owner == Some(i) {
        ctx.conns.input_owner = None;
    }
    ctx.conns.stdin.release(i);
}

/// Advances a connection as far as it can go, then submits its receive and send.
pub(super) fn drive(ctx: &mut Ctx<'_>, i: u32) {
    while exists(ctx, i) && step(ctx, i) {}
    account(ctx, i);
    arm(ctx, i);
}

/// What a connection can do next.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Wait,
    HandOver,
    Records,
    Parse,
}

/// What a connection in `state` does next, with every response out or not (`flushed`),
/// and stdin written by another request or not.
fn next(state: &State, flushed: bool, stdin_busy: bool, input_buffer: usize) -> Next {
    match state {
        State::Closing => Next::Wait,
        State::HandOver { .. } if flushed => Next::HandOver,
        State::HandOver { .. } => Next::Wait,
        // The next request waits until every response before it went out.
        State::Idle if !flushed => Next::Wait,
        // While its record waits for stdin, the body is still read into its bounded buffer
        // (so a client that hangs up mid-body is noticed), but no record is applied.
        State::Input(s) if s.writing || (s.parked.is_some() && stdin_busy) => {
            if !s.body_ended && s.body.len() < input_buffer {
                Next::Parse
            } else {
                Next::Wait
            }
        }
        State::Input(s) if s.parked.is_some() || s.body_ended || s.body.len() >= input_buffer => Next::Records,
        _ => Next::Parse,
    }
}

/// One step of request processing; false when nothing more can happen now.
fn step(ctx: &mut Ctx<'_>, i: u32) -> bool {
    let (input_buffer, stdin_busy) = (ctx.config.limits.input_buffer, ctx.conns.stdin.busy());
    let c = get(ctx, i);
    match next(&c.state, c.flushed(), stdin_busy, input_buffer) {
        Next::Wait => false,
        Next::HandOver => {
            hand_over(ctx, i);
            false
        }
        Next::Records => input::process(ctx, i),
        Next::Parse => parse(ctx, i),
    }
}

fn on_recv(ctx: &mut Ctx<'_>, i: u32, comp: Completion) {
    let res = comp.res;
    let c = get(ctx, i);
    c.recv = None;
    if std::mem::take(&mut c.budgeted_recv) {
        ctx.conns.reading -= 1;
    }
    let c = get(ctx, i);
    if let OpOutput::Buf(data) = comp.output
        && res > 0
    {
        c.buf.extend(&data);
    }
    if res == 0 || (res < 0 && res != -libc::EINTR) {
        c.eof = true;
    }
    drive(ctx, i);
}

/// The client hung up (both directions: a half-close still reads our answer). Its
/// record being written goes on; the rest of its body is dropped with it.
fn on_hangup(ctx: &mut Ctx<'_>, i: u32, comp: Completion) {
    get(ctx, i).hangup = None;
    if comp.res == -libc::ECANCELED {
        return;
    }
    tracing::info!("connection {i}: its client hung up");
    close(ctx, i);
}

fn on_send(ctx: &mut Ctx<'_>, i: u32, comp: Completion) {
    let c = get(ctx, i);
    c.send = None;
    let res = comp.res;
    let buf = comp.into_buf();
    if res < 0 {
        tracing::debug!("connection {i}: send failed: {}", crate::sys::strerror_res(res));
        return close(ctx, i);
    }
    let sent = res as usize;
    if sent < buf.len() {
        c.sendq.push_front(buf[sent..].to_vec());
    }
    drive(ctx, i);
}

fn on_timer(ctx: &mut Ctx<'_>, i: u32, comp: Completion) {
    // Replaced and stopped timers are forgotten, so this is the connection's live timer.
    let c = get(ctx, i);
    c.timer = None;
    if comp.res == -libc::ECANCELED {
        return;
    }
    match &c.state {
        // A client that started a request head and did not finish it in time is told so;
        // an idle keep-alive connection, or one whose client does not read our response,
        // is just closed.
        State::Idle if !c.buf.is_empty() && c.flushed() => {
            tracing::info!(
                "connection {i}: no complete request head in {:?}",
                ctx.config.limits.head_timeout
            );
            respond(ctx, i, Answer::HeadTimeout, true);
        }
        State::Idle => return close(ctx, i),
        // Output ended while this input was open: Mesos answers 200 a second later.
        State::Input(s) if s.started => respond(ctx, i, Answer::Ok, true),
        // A body that did not come to a decision in time.
        State::Input(_) | State::Call { .. } | State::Ack { .. } | State::Metrics { .. } => {
            tracing::info!(
                "connection {i}: no request body in {:?}",
                ctx.config.limits.head_timeout
            );
            respond(ctx, i, Answer::BodyTimeout, true);
        }
        // An answered body that does not end, or a response the client does not take.
        State::Discard { .. } | State::HandOver { .. } | State::Closing => return close(ctx, i),
    }
    drive(ctx, i);
}

/// Submits a receive if the connection wants bytes, and the next send; closes it once
/// its last response is out.
fn arm(ctx: &mut Ctx<'_>, i: u32) {
    let limits = ctx.config.limits;
    // Past the budget (what is held, and what the receives in flight may bring), only
    // the input slot's holder is read.
    let owner = ctx.conns.input_owner == Some(i);
    let over_budget = !owner && !budget_allows_recv(ctx);
    let Some(Some(c)) = ctx.conns.slots.get_mut(i as usize) else { return };
    if c.send.is_none()
        && let Some(buf) = c.sendq.pop_front()
    {
        let op = ctx.ring.submit(
            Op::Send {
                fd: c.fd,
                buf,
                start: 0,
            },
            Token::Conn(ConnOp::Send, i).encode(),
        );
        c.send = Some(op);
    }
    if matches!(c.state, State::Closing) && c.flushed() {
        return close(ctx, i);
    }
    let wants = match &c.state {
        State::Closing | State::HandOver { .. } => false,
        State::Input(s) => !s.body_ended && s.body.len() + c.buf.len() < limits.input_buffer,
        _ => c.buf.len() < limits.http.max_head_bytes + RECV_SIZE,
    };
    // An input body read as far as its buffer goes waits for stdin, which may never take
    // it (a container that does not read): a client that hangs up meanwhile is noticed
    // by a poll, or it would hold the input slot as long.
    if let State::Input(s) = &c.state
        && !wants
        && !s.body_ended
        && c.hangup.is_none()
    {
        let poll = Op::Poll {
            fd: c.fd,
            events: HANGUP,
        };
        c.hangup = Some(ctx.ring.submit(poll, Token::Conn(ConnOp::Hangup, i).encode()));
    }
    if wants && !c.eof && c.recv.is_none() && over_budget {
        if !c.starved {
            c.starved = true;
            ctx.conns.starved.push(i);
        }
    } else if wants && !c.eof && c.recv.is_none() {
        let size = if owner { RECV_SIZE } else { SMALL_RECV_SIZE };
        let op = ctx.ring.submit(
            Op::Recv {
                fd: c.fd,
                buf: Vec::with_capacity(size),
            },
            Token::Conn(ConnOp::Recv, i).encode(),
        );
        c.recv = Some(op);
        c.budgeted_recv = !owner;
        ctx.conns.reading += usize::from(!owner);
    }
}

/// Closes a connection now. Its operations still in flight are forgotten (the ring frees
/// their buffers and closes the descriptor when they complete).
fn close(ctx: &mut Ctx<'_>, i: u32) {
    release_input(ctx, i);
    let c = ctx.conns.take(i);
    let _ = shutdown(ctx.ring.raw(c.fd), Shutdown::Both);
    for op in [c.recv, c.send, c.timer, c.hangup].into_iter().flatten() {
        ctx.ring.cancel(op, true);
    }
    ctx.ring.close(c.fd);
    tracing::debug!("connection {i} closed");
    // What it held is free: others may be read again.
    wake_starved(ctx);
}

#[cfg(test)]
mod tests;
