//! Connections on the switchboard socket: HTTP requests in order, the attach calls, the
//! acknowledgement endpoint, and the one input stream that may feed the container's stdin
//! (PROTOCOL.md §2).
//!
//! A connection handles one request at a time: the next head is parsed only when the
//! previous response went out, which keeps pipelined responses in order. An output call
//! hands the connection over to the output engine. An input call takes the input slot,
//! and its records are applied one at a time: the next record is decoded only once the
//! previous one reached stdin, and we stop reading the body while `input_buffer` bytes
//! wait. The slot is freed however the request ends.

use std::collections::VecDeque;

use nix::sys::socket::{Shutdown, shutdown};

use crate::config::{Config, LagPolicy};
use crate::relay::Framing;
use crate::ring::{Completion, Fd, Op, OpId, Output as OpOutput, Ring};
use crate::wire::http::{self, Event, HttpError, RequestHead, RequestReader};
use crate::wire::input::{self, InputAction};
use crate::wire::media::{self, BodyFormat, ResponseFormat, Route};
use crate::wire::message::mesos::agent::{Call, call};
use crate::wire::message::{self, Format};
use crate::wire::recordio;

use super::output::Output;
use super::token::{ConnOp, Token};

const RECV_SIZE: usize = 16 * 1024;
const POLLOUT: u32 = libc::POLLOUT as u32;

/// What connection code may touch of the server.
pub(crate) struct Ctx<'a> {
    pub ring: &'a mut Ring,
    pub output: &'a mut Output,
    pub conns: &'a mut Conns,
    pub config: &'a Config,
    pub acks_outstanding: &'a mut u64,
    pub redirect_finished: bool,
    pub terminating: bool,
}

/// Bytes received and not yet consumed. Consuming moves a cursor; the buffer is compacted
/// only once the consumed part is at least half of it, so consuming many small pieces
/// stays linear.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    start: usize,
}

impl Pending {
    fn data(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    fn extend(&mut self, more: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(more);
    }
}

struct Input {
    format: Format,
    records: recordio::Decoder,
    /// Body bytes received and not yet decoded.
    body: Pending,
    body_ended: bool,
    /// The first record (the container ID) was accepted.
    started: bool,
    /// A record is being written to stdin.
    writing: bool,
    /// A decoded record that needs stdin, waiting while another request's write finishes.
    parked: Option<InputAction>,
    keep_alive: bool,
}

enum State {
    /// Between requests: waiting for a head.
    Idle,
    /// Reading the body of a non-streaming call (an output attach).
    Call {
        format: Format,
        response: ResponseFormat,
        body: Vec<u8>,
    },
    /// An output call waits for the connection's earlier responses to go out.
    HandOver {
        framing: Framing,
        head: Vec<u8>,
    },
    /// Reading an acknowledgement's body.
    Ack {
        keep_alive: bool,
    },
    Input(Input),
    /// Reading the rest of a body already answered (a 409).
    Discard {
        keep_alive: bool,
    },
    /// A final response is queued; the connection closes once it is out.
    Closing,
}

struct Conn {
    fd: Fd,
    buf: Pending,
    reader: RequestReader,
    recv: Option<OpId>,
    send: Option<OpId>,
    sendq: VecDeque<Vec<u8>>,
    timer: Option<OpId>,
    state: State,
    /// The peer shut its side (we read EOF).
    eof: bool,
    /// Its peer is not among `--allowed_uids`: its request is answered 403.
    forbidden: bool,
}

/// The container's stdin, written by one request at a time. A write keeps going when its
/// request ends meanwhile (the next request's bytes wait for it, so nothing interleaves).
struct Stdin {
    fd: Option<Fd>,
    /// The write, or the wait for the pipe to take more, in flight.
    op: Option<OpId>,
    /// What is left to write (and from where), while waiting for the pipe.
    pending: Option<(Vec<u8>, usize)>,
    /// The connection whose record is being written, until it ends.
    owner: Option<u32>,
    /// Bytes of the current record written so far.
    written: usize,
    /// Connections with a record parked until stdin is free.
    waiters: Vec<u32>,
}

impl Stdin {
    fn busy(&self) -> bool {
        self.op.is_some() || self.pending.is_some()
    }
}

/// Every connection that is not an output client.
pub(crate) struct Conns {
    slots: Vec<Option<Conn>>,
    free: Vec<u32>,
    count: usize,
    /// Open connections of peers not among `--allowed_uids` (they do not count towards
    /// `max_connections`, so they cannot lock allowed users out).
    forbidden: usize,
    stdin: Stdin,
    /// The connection holding the input slot.
    input_owner: Option<u32>,
    tty: bool,
}

impl Conns {
    pub fn new(stdin: Option<Fd>, tty: bool) -> Conns {
        Conns {
            slots: Vec::new(),
            free: Vec::new(),
            count: 0,
            forbidden: 0,
            stdin: Stdin {
                fd: stdin,
                op: None,
                pending: None,
                owner: None,
                written: 0,
                waiters: Vec::new(),
            },
            input_owner: None,
            tty,
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

    fn get(&mut self, i: u32) -> Option<&mut Conn> {
        self.slots.get_mut(i as usize).and_then(Option::as_mut)
    }
}

fn conn<'a>(ctx: &'a mut Ctx<'_>, i: u32) -> &'a mut Conn {
    ctx.conns
        .get(i)
        .expect("an operation completed for a connection that exists")
}

/// A new connection; the request of one whose peer is not `allowed` is answered 403 once
/// its head is in (answering at once would race the client's sending).
pub(crate) fn accepted(ctx: &mut Ctx<'_>, fd: Fd, allowed: bool) {
    let i = match ctx.conns.free.pop() {
        Some(i) => i,
        None => {
            ctx.conns.slots.push(None);
            (ctx.conns.slots.len() - 1) as u32
        }
    };
    ctx.conns.slots[i as usize] = Some(Conn {
        fd,
        buf: Pending::default(),
        reader: RequestReader::new(ctx.config.limits.http),
        recv: None,
        send: None,
        sendq: VecDeque::new(),
        timer: None,
        state: State::Idle,
        eof: false,
        forbidden: !allowed,
    });
    ctx.conns.count += 1;
    // A refused peer gets a second to send its request head, to be told 403.
    let timeout = if allowed {
        ctx.config.limits.head_timeout
    } else {
        ctx.conns.forbidden += 1;
        std::time::Duration::from_secs(1)
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
        ConnOp::StdinWrite => on_stdin_written(ctx, c),
        ConnOp::StdinWritable => {
            ctx.conns.stdin.op = None;
            if let Some((buf, start)) = ctx.conns.stdin.pending.take() {
                write_stdin(ctx, buf, start);
            }
        }
    }
}

/// The container's output ended: open input requests get their 200 a second later.
pub(crate) fn redirect_finished(ctx: &mut Ctx<'_>) {
    if let Some(i) = ctx.conns.input_owner {
        start_timer(ctx, i, std::time::Duration::from_secs(1));
    }
}

/// The server is terminating: requests in progress are refused, idle connections close.
pub(crate) fn terminate(ctx: &mut Ctx<'_>) {
    for i in 0..ctx.conns.slots.len() as u32 {
        let Some(c) = ctx.conns.get(i) else { continue };
        match c.state {
            State::Idle | State::Closing | State::Discard { .. } | State::Ack { .. } => {
                if c.sendq.is_empty() && c.send.is_none() {
                    close(ctx, i);
                    continue;
                }
                c.state = State::Closing;
            }
            _ => respond(ctx, i, 503, "The io switchboard server is shutting down", true),
        }
        // Send what is queued; the connection closes once it is out.
        drive(ctx, i);
    }
}

/// The drain grace period ran out: close everything.
pub(crate) fn close_all(ctx: &mut Ctx<'_>) {
    for i in 0..ctx.conns.slots.len() as u32 {
        if ctx.conns.get(i).is_some() {
            close(ctx, i);
        }
    }
}

/// Starts the connection's one timer (a replaced one is forgotten: it never fires here).
fn start_timer(ctx: &mut Ctx<'_>, i: u32, after: std::time::Duration) {
    stop_timer(ctx, i);
    let op = ctx
        .ring
        .submit(Op::Timeout { after }, Token::Conn(ConnOp::Timer, i).encode());
    conn(ctx, i).timer = Some(op);
}

fn stop_timer(ctx: &mut Ctx<'_>, i: u32) {
    if let Some(op) = conn(ctx, i).timer.take() {
        ctx.ring.cancel(op, true);
    }
}

/// Queues a complete response. With `close`, it is the connection's last.
fn respond(ctx: &mut Ctx<'_>, i: u32, status: u16, body: &str, close: bool) {
    if status >= 400 {
        tracing::info!("answering {status}: {body}");
    }
    release_input(ctx, i);
    let c = conn(ctx, i);
    c.sendq.push_back(http::fixed_response(status, body, close));
    if close {
        c.state = State::Closing;
    }
}

fn refuse(ctx: &mut Ctx<'_>, i: u32, e: HttpError) {
    respond(ctx, i, e.status, &e.message, true);
}

fn release_input(ctx: &mut Ctx<'_>, i: u32) {
    if ctx.conns.input_owner == Some(i) {
        ctx.conns.input_owner = None;
    }
    // A write of its record in flight goes on, detached.
    if ctx.conns.stdin.owner == Some(i) {
        ctx.conns.stdin.owner = None;
    }
}

/// Advances a connection as far as it can go, then submits its receive and send.
fn drive(ctx: &mut Ctx<'_>, i: u32) {
    while step(ctx, i) {}
    arm(ctx, i);
}

/// What a connection can do next.
enum Next {
    Wait,
    HandOver,
    Records,
    Parse,
}

/// One step of request processing; false when nothing more can happen now.
fn step(ctx: &mut Ctx<'_>, i: u32) -> bool {
    let input_buffer = ctx.config.limits.input_buffer;
    let stdin_busy = ctx.conns.stdin.busy();
    let Some(c) = ctx.conns.get(i) else { return false };
    let flushed = c.sendq.is_empty() && c.send.is_none();
    let next = match &c.state {
        State::Closing => Next::Wait,
        State::HandOver { .. } if flushed => Next::HandOver,
        State::HandOver { .. } => Next::Wait,
        // The next request waits until every response before it went out.
        State::Idle if !flushed => Next::Wait,
        // While its record waits for stdin, the body is still read into its bounded buffer
        // (so a client that hangs up mid-body is noticed), but no record is applied.
        State::Input(input) if input.writing || (input.parked.is_some() && stdin_busy) => {
            if !input.body_ended && input.body.len() < input_buffer {
                Next::Parse
            } else {
                Next::Wait
            }
        }
        State::Input(input) if input.parked.is_some() || input.body_ended || input.body.len() >= input_buffer => {
            Next::Records
        }
        _ => Next::Parse,
    };
    match next {
        Next::Wait => false,
        Next::HandOver => {
            hand_over(ctx, i);
            false
        }
        Next::Records => process_input(ctx, i),
        Next::Parse => {
            let c = conn(ctx, i);
            let event = match c.reader.next(c.buf.data()) {
                Err(e) => {
                    refuse(ctx, i, e);
                    return true;
                }
                Ok((used, event)) => {
                    let event = event.map(|e| match e {
                        Event::Head(h) => Ok(h),
                        Event::Body(b) => Err(Some(b.to_vec())),
                        Event::End => Err(None),
                    });
                    c.buf.consume(used);
                    event
                }
            };
            match event {
                Some(Ok(head)) => on_head(ctx, i, head),
                Some(Err(Some(body))) => on_body(ctx, i, body),
                Some(Err(None)) => on_end(ctx, i),
                // More bytes are needed: decode what the body has so far, or wait.
                None if matches!(conn(ctx, i).state, State::Input(_)) && process_input(ctx, i) => {}
                None if conn(ctx, i).eof => return at_eof(ctx, i),
                None => return false,
            }
            true
        }
    }
}

/// The peer sent all it will send and the current request needs more: finish or close.
fn at_eof(ctx: &mut Ctx<'_>, i: u32) -> bool {
    let c = conn(ctx, i);
    let flushed = c.sendq.is_empty() && c.send.is_none();
    match &c.state {
        State::Idle if flushed && c.buf.is_empty() => close(ctx, i),
        State::Idle if c.buf.is_empty() => c.state = State::Closing,
        // The body stopped short: the request fails (Mesos's answer is a 500 the client
        // will not read); the input slot is freed with it.
        State::Input(_) => respond(
            ctx,
            i,
            500,
            "The connection closed in the middle of the request body",
            true,
        ),
        _ => {
            if flushed {
                close(ctx, i);
            } else {
                c.state = State::Closing;
            }
        }
    }
    false
}

fn on_head(ctx: &mut Ctx<'_>, i: u32, head: RequestHead) {
    stop_timer(ctx, i);
    tracing::debug!("{} {} on connection {i}", head.method, head.target);
    if conn(ctx, i).forbidden {
        return respond(ctx, i, 403, "This user may not use the io switchboard", true);
    }
    let route = match media::route(&head) {
        Ok(r) => r,
        Err(e) => return refuse(ctx, i, e),
    };
    let keep_alive = head.keep_alive;
    let has_body = head.body != http::BodyLength::Length(0);
    let max_record = ctx.config.limits.max_record;
    let limit = ctx.config.limits.max_call_body;
    if let (
        Route::Call {
            body: BodyFormat::Single(_),
            ..
        },
        http::BodyLength::Length(n),
    ) = (&route, head.body)
        && n > limit as u64
    {
        // Refused before a byte of it is read.
        return respond(ctx, i, 413, &format!("The request body exceeds {limit} bytes"), true);
    }
    let c = conn(ctx, i);
    if head.expect_continue && has_body {
        c.sendq.push_back(http::CONTINUE.to_vec());
    }
    c.state = match route {
        Route::Acknowledge => State::Ack { keep_alive },
        Route::Call {
            body: BodyFormat::Single(format),
            response,
        } => State::Call {
            format,
            response,
            body: Vec::new(),
        },
        Route::Call {
            body: BodyFormat::Streaming(format),
            ..
        } => State::Input(Input {
            format,
            records: recordio::Decoder::new(max_record),
            body: Pending::default(),
            body_ended: false,
            started: false,
            writing: false,
            parked: None,
            keep_alive,
        }),
    };
}

fn on_body(ctx: &mut Ctx<'_>, i: u32, data: Vec<u8>) {
    let limit = ctx.config.limits.max_call_body;
    let c = conn(ctx, i);
    match &mut c.state {
        State::Call { body, .. } => {
            if body.len() + data.len() > limit {
                return respond(ctx, i, 413, &format!("The request body exceeds {limit} bytes"), true);
            }
            body.extend_from_slice(&data);
        }
        State::Input(input) => input.body.extend(&data),
        // Acknowledgement bodies and discarded bodies are ignored.
        _ => {}
    }
}

fn on_end(ctx: &mut Ctx<'_>, i: u32) {
    let c = conn(ctx, i);
    match std::mem::replace(&mut c.state, State::Idle) {
        State::Call { format, response, body } => output_call(ctx, i, format, response, &body),
        State::Ack { keep_alive } => {
            if *ctx.acks_outstanding > 0 {
                *ctx.acks_outstanding -= 1;
            } else {
                // Mesos aborts here; an unexpected acknowledgement is harmless.
                tracing::info!("an acknowledgement with none outstanding");
            }
            respond(ctx, i, 200, "", !keep_alive);
            back_to_idle(ctx, i);
        }
        State::Discard { keep_alive } => {
            if keep_alive {
                back_to_idle(ctx, i);
            } else {
                conn(ctx, i).state = State::Closing;
            }
        }
        State::Input(mut input) => {
            input.body_ended = true;
            conn(ctx, i).state = State::Input(input);
        }
        other => conn(ctx, i).state = other,
    }
}

fn back_to_idle(ctx: &mut Ctx<'_>, i: u32) {
    let c = conn(ctx, i);
    if matches!(c.state, State::Idle) {
        start_timer(ctx, i, ctx.config.limits.head_timeout);
    }
}

fn output_call(ctx: &mut Ctx<'_>, i: u32, format: Format, response: ResponseFormat, body: &[u8]) {
    let call: Call = match message::decode(format, body) {
        Ok(c) => c,
        Err(text) => return respond(ctx, i, 400, &text, true),
    };
    if call.r#type != Some(call::Type::AttachContainerOutput as i32) {
        return respond(
            ctx,
            i,
            400,
            "Expecting 'type' to be 'ATTACH_CONTAINER_OUTPUT' for non-streaming requests",
            true,
        );
    }
    if ctx.terminating {
        return respond(ctx, i, 503, "The io switchboard server is shutting down", true);
    }
    let mut headers = vec![("Content-Type", response.content_type())];
    if let Some(mct) = response.message_content_type() {
        headers.push(("Message-Content-Type", mct));
    }
    headers.push(("Transfer-Encoding", "chunked"));
    let mut head = Vec::with_capacity(200);
    http::write_response_head(200, &headers, &mut head);
    conn(ctx, i).state = State::HandOver {
        framing: Framing::Chunked(response.record_format()),
        head,
    };
}

/// Gives an output call's connection to the output engine.
fn hand_over(ctx: &mut Ctx<'_>, i: u32) {
    let c = ctx.conns.slots[i as usize].take().expect("checked by the caller");
    ctx.conns.free.push(i);
    ctx.conns.count -= 1;
    if c.forbidden {
        ctx.conns.forbidden -= 1;
    }
    // Nothing of this connection's may complete here any more: a receive armed while an
    // earlier response was going out (the client pipelined this request behind another)
    // and the head timer are forgotten. Mesos never answers requests behind an output
    // stream, so bytes that receive took are not wanted either. No send is in flight:
    // the hand-over waits until the connection is flushed.
    assert!(
        c.send.is_none() && c.sendq.is_empty(),
        "hand-over of an unflushed connection"
    );
    for op in [c.recv, c.timer].into_iter().flatten() {
        ctx.ring.cancel(op, true);
    }
    let State::HandOver { framing, head } = c.state else { unreachable!("only called in HandOver") };
    // The client redirection waited for (the agent's attach to a DEBUG session) must get
    // every byte, as in Mesos: it holds the container back rather than being cut off.
    let policy = if ctx.output.is_started() {
        ctx.config.lag_policy
    } else {
        LagPolicy::Block
    };
    tracing::debug!("connection {i} attached to the output ({policy:?})");
    ctx.output.add_client(ctx.ring, c.fd, framing, policy, head);
    // The first output client starts redirection when we waited for it.
    ctx.output.start(ctx.ring);
}

/// Decodes and applies the next input record; false when it has to wait.
fn process_input(ctx: &mut Ctx<'_>, i: u32) -> bool {
    let c = conn(ctx, i);
    let State::Input(input) = &mut c.state else { return false };
    if input.writing {
        return false;
    }
    if let Some(action) = input.parked.take() {
        return apply(ctx, i, action);
    }
    let record = match input.records.decode(input.body.data()) {
        // A record past our limit is not malformed, only too large (Mesos has no limit).
        Err(e @ recordio::Error::TooLarge { .. }) => {
            respond(ctx, i, 413, &e.to_string(), true);
            return true;
        }
        Err(e) => {
            respond(ctx, i, 500, &format!("Decoder failure: {e}"), true);
            return true;
        }
        Ok((used, record)) => {
            input.body.consume(used);
            record
        }
    };
    let Some(record) = record else {
        if !input.body_ended {
            return false;
        }
        let (started, keep_alive, finish) = (input.started, input.keep_alive, input.records.finish());
        if !started {
            respond(
                ctx,
                i,
                400,
                "IOSwitchboard received EOF while reading request body",
                true,
            );
        } else {
            if let Err(e) = finish {
                // Mesos discards trailing bytes that do not form a record (PROTOCOL.md §2.5).
                tracing::info!("connection {i}: input ended inside a record ({e}); the partial record is dropped");
            }
            stop_timer(ctx, i);
            let keep_alive = keep_alive && !conn(ctx, i).eof;
            respond(ctx, i, 200, "", !keep_alive);
            if keep_alive {
                conn(ctx, i).state = State::Idle;
                back_to_idle(ctx, i);
            }
        }
        return true;
    };
    let (format, started) = (input.format, input.started);
    if !started {
        first_record(ctx, i, format, &record);
        return true;
    }
    let call: Call = match message::decode(format, &record) {
        Ok(c) => c,
        Err(text) => {
            respond(ctx, i, 400, &text, true);
            return true;
        }
    };
    match input::input_action(&call) {
        Err(text) => {
            respond(ctx, i, 400, &text, true);
            true
        }
        Ok(action) => apply(ctx, i, action),
    }
}

/// Applies one valid input record; false when it must wait for stdin.
fn apply(ctx: &mut Ctx<'_>, i: u32, action: InputAction) -> bool {
    let needs_stdin = matches!(action, InputAction::Stdin(_) | InputAction::StdinEof);
    if needs_stdin && ctx.conns.stdin.busy() {
        // Another request's write is still going: keep the order of stdin bytes.
        if let State::Input(input) = &mut conn(ctx, i).state {
            input.parked = Some(action);
        }
        if !ctx.conns.stdin.waiters.contains(&i) {
            ctx.conns.stdin.waiters.push(i);
        }
        return false;
    }
    match action {
        InputAction::Heartbeat => {}
        InputAction::Stdin(bytes) => {
            if ctx.conns.stdin.fd.is_none() {
                respond(
                    ctx,
                    i,
                    500,
                    "Failed writing to stdin: Failed: Bad file descriptor",
                    true,
                );
            } else {
                if let State::Input(input) = &mut conn(ctx, i).state {
                    input.writing = true;
                }
                ctx.conns.stdin.owner = Some(i);
                ctx.conns.stdin.written = 0;
                write_stdin(ctx, bytes, 0);
            }
        }
        InputAction::StdinEof => {
            // Only a pipe is closed: a PTY stays open (clients send ^D instead).
            if !ctx.conns.tty
                && let Some(fd) = ctx.conns.stdin.fd.take()
            {
                tracing::info!("closing the container's stdin");
                ctx.ring.close(fd);
            }
        }
        InputAction::Resize { rows, columns } => {
            let result = match ctx.conns.stdin.fd {
                Some(fd) => crate::tty::set_window_size(ctx.ring.borrow(fd), rows as u16, columns as u16),
                None => Err(std::io::Error::from_raw_os_error(libc::EBADF)),
            };
            if let Err(e) = result {
                respond(
                    ctx,
                    i,
                    400,
                    &format!("Unable to set the window size: {}", crate::sys::strerror(&e)),
                    true,
                );
            }
        }
    }
    true
}

fn first_record(ctx: &mut Ctx<'_>, i: u32, format: Format, record: &[u8]) {
    let call: Call = match message::decode(format, record) {
        Ok(c) => c,
        Err(text) => return respond(ctx, i, 500, &text, true),
    };
    if let Err(text) = input::check_first_record(&call) {
        return respond(ctx, i, 400, &text, true);
    }
    // Counted even if the request is refused below: the agent acknowledges every one.
    *ctx.acks_outstanding += 1;
    if ctx.conns.input_owner.is_some() {
        let keep_alive = match &conn(ctx, i).state {
            State::Input(input) => input.keep_alive,
            _ => false,
        };
        conn(ctx, i).sendq.push_back(http::fixed_response(
            409,
            "Multiple input connections are not allowed",
            !keep_alive,
        ));
        tracing::info!("answering 409: another input connection is active");
        let body_ended = matches!(&conn(ctx, i).state, State::Input(input) if input.body_ended);
        conn(ctx, i).state = if body_ended && keep_alive {
            State::Idle
        } else if body_ended {
            State::Closing
        } else {
            State::Discard { keep_alive }
        };
        back_to_idle(ctx, i);
        return;
    }
    ctx.conns.input_owner = Some(i);
    if let State::Input(input) = &mut conn(ctx, i).state {
        input.started = true;
    }
    if ctx.redirect_finished {
        start_timer(ctx, i, std::time::Duration::from_secs(1));
    }
}

/// Writes `buf[start..]` to stdin (all of it, over as many writes as it takes).
fn write_stdin(ctx: &mut Ctx<'_>, buf: Vec<u8>, start: usize) {
    let Some(fd) = ctx.conns.stdin.fd else {
        return stdin_failed(ctx, "Failed writing to stdin: Failed: Bad file descriptor".into());
    };
    let op = ctx.ring.submit(
        Op::Write { fd, buf, start },
        Token::Conn(ConnOp::StdinWrite, 0).encode(),
    );
    ctx.conns.stdin.op = Some(op);
}

fn on_stdin_written(ctx: &mut Ctx<'_>, c: Completion) {
    ctx.conns.stdin.op = None;
    let res = c.res;
    let buf = c.into_buf();
    let start = ctx.conns.stdin.written;
    match res {
        n if n > 0 && start + (n as usize) < buf.len() => {
            ctx.conns.stdin.written = start + n as usize;
            write_stdin(ctx, buf, start + n as usize);
        }
        n if n > 0 => stdin_done(ctx),
        e if e == -libc::EAGAIN => {
            // The pipe is full: wait until the container reads, then write again.
            let Some(fd) = ctx.conns.stdin.fd else {
                return stdin_failed(ctx, "Failed writing to stdin: Failed: Bad file descriptor".into());
            };
            ctx.conns.stdin.pending = Some((buf, start));
            let op = ctx.ring.submit(
                Op::Poll { fd, events: POLLOUT },
                Token::Conn(ConnOp::StdinWritable, 0).encode(),
            );
            ctx.conns.stdin.op = Some(op);
        }
        e if e == -libc::EINTR => write_stdin(ctx, buf, start),
        e => stdin_failed(
            ctx,
            format!("Failed writing to stdin: Failed: {}", crate::sys::strerror_res(e)),
        ),
    }
}

/// A write failed. Mesos then exits 1 and the agent kills the container; we answer the
/// request with Mesos's 500 and go on serving (output keeps flowing).
fn stdin_failed(ctx: &mut Ctx<'_>, text: String) {
    tracing::warn!("{text}");
    ctx.conns.stdin.pending = None;
    ctx.conns.stdin.written = 0;
    if let Some(i) = ctx.conns.stdin.owner.take()
        && ctx.conns.get(i).is_some()
    {
        if let State::Input(input) = &mut conn(ctx, i).state {
            input.writing = false;
        }
        respond(ctx, i, 500, &text, true);
        drive(ctx, i);
    }
    wake_stdin_waiters(ctx);
}

/// A record reached stdin: its request goes on, and whoever waits for stdin.
fn stdin_done(ctx: &mut Ctx<'_>) {
    ctx.conns.stdin.written = 0;
    if let Some(i) = ctx.conns.stdin.owner.take()
        && let Some(c) = ctx.conns.get(i)
    {
        if let State::Input(input) = &mut c.state {
            input.writing = false;
        }
        drive(ctx, i);
    }
    wake_stdin_waiters(ctx);
}

/// Stdin is free: requests with a record parked for it go on, in the order they parked.
fn wake_stdin_waiters(ctx: &mut Ctx<'_>) {
    for i in std::mem::take(&mut ctx.conns.stdin.waiters) {
        if ctx.conns.get(i).is_some() {
            drive(ctx, i);
        }
    }
}

fn on_recv(ctx: &mut Ctx<'_>, i: u32, comp: Completion) {
    let res = comp.res;
    let c = conn(ctx, i);
    c.recv = None;
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

fn on_send(ctx: &mut Ctx<'_>, i: u32, comp: Completion) {
    let c = conn(ctx, i);
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
    let c = conn(ctx, i);
    c.timer = None;
    if comp.res == -libc::ECANCELED {
        return;
    }
    match &c.state {
        // A client that started a request head and did not finish it in time is told so;
        // an idle keep-alive connection, or one whose client does not read our response,
        // is just closed.
        State::Idle if !c.buf.is_empty() && c.sendq.is_empty() && c.send.is_none() => {
            tracing::info!(
                "connection {i}: no complete request head in {:?}",
                ctx.config.limits.head_timeout
            );
            respond(ctx, i, 408, "No request arrived in time", true);
        }
        State::Idle => return close(ctx, i),
        // Output ended while this input was open: Mesos answers 200 a second later.
        State::Input(_) => respond(ctx, i, 200, "", true),
        _ => {}
    }
    drive(ctx, i);
}

/// Submits a receive if the connection wants bytes, and the next send; closes it once
/// its last response is out.
fn arm(ctx: &mut Ctx<'_>, i: u32) {
    let limits = ctx.config.limits;
    let Some(c) = ctx.conns.get(i) else { return };
    if c.send.is_none()
        && let Some(buf) = c.sendq.pop_front()
    {
        let fd = c.fd;
        let op = ctx
            .ring
            .submit(Op::Send { fd, buf, start: 0 }, Token::Conn(ConnOp::Send, i).encode());
        conn(ctx, i).send = Some(op);
    }
    let c = conn(ctx, i);
    if matches!(c.state, State::Closing) && c.sendq.is_empty() && c.send.is_none() {
        return close(ctx, i);
    }
    let wants = match &c.state {
        State::Closing | State::HandOver { .. } => false,
        State::Input(input) => !input.body_ended && input.body.len() + c.buf.len() < limits.input_buffer,
        _ => c.buf.len() < limits.http.max_head_bytes + RECV_SIZE,
    };
    if wants && !c.eof && c.recv.is_none() {
        let fd = c.fd;
        let op = ctx.ring.submit(
            Op::Recv {
                fd,
                buf: Vec::with_capacity(RECV_SIZE),
            },
            Token::Conn(ConnOp::Recv, i).encode(),
        );
        conn(ctx, i).recv = Some(op);
    }
}

/// Closes a connection now. Its operations still in flight are forgotten (the ring frees
/// their buffers and closes the descriptor when they complete).
fn close(ctx: &mut Ctx<'_>, i: u32) {
    release_input(ctx, i);
    let c = ctx.conns.slots[i as usize]
        .take()
        .expect("closing a connection that exists");
    ctx.conns.free.push(i);
    ctx.conns.count -= 1;
    if c.forbidden {
        ctx.conns.forbidden -= 1;
    }
    let _ = shutdown(ctx.ring.raw(c.fd), Shutdown::Both);
    for op in [c.recv, c.send, c.timer].into_iter().flatten() {
        ctx.ring.cancel(op, true);
    }
    ctx.ring.close(c.fd);
    tracing::debug!("connection {i} closed");
}
