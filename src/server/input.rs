//! The input side: an `ATTACH_CONTAINER_INPUT` request's session, and the writer of the
//! container's stdin (docs/protocol.md §11).
//!
//! A [`Session`] is the request's body, decided record by record without I/O: it says
//! what the next record asks for ([`Step`]), and the connection does it. The first record
//! claims the input slot (one request holds it at a time; the others get 409); each later
//! one is applied once the previous one reached stdin, so records never interleave, and
//! the body is read no further ahead than `--input_buffer`.
//!
//! [`Stdin`] writes one record at a time, over as many writes as the pipe takes. A write
//! goes on when its request ends meanwhile; another request's record waits for it
//! (parked), and requests waiting for stdin go on in the order they parked.

use crate::ring::{Completion, Fd, Op, OpId};
use crate::wire::input::{self, InputAction};
use crate::wire::message::mesos::agent::Call;
use crate::wire::message::{self, Format};
use crate::wire::recordio;

use super::answer::Answer;
use super::conn::{self, Ctx, Pending, State};
use super::token::{ConnOp, Token};

const POLLOUT: u32 = libc::POLLOUT as u32;

/// An input request's body, as far as it was received and decided.
pub(super) struct Session {
    format: Format,
    /// The limit of records after the first.
    max_record: usize,
    pub records: recordio::Decoder,
    /// Body bytes received and not yet decoded.
    pub body: Pending,
    pub body_ended: bool,
    /// The first record claimed the input slot.
    pub started: bool,
    /// A record of this request is being written to stdin.
    pub writing: bool,
    /// A decoded record that needs stdin, waiting while another request's write finishes.
    pub parked: Option<InputAction>,
    pub keep_alive: bool,
    /// The terminal it names (`Switchboard-Terminal`): its resizes are that window's.
    pub terminal: Option<String>,
}

/// What an input request's next record asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Nothing until more of the body arrives.
    Wait,
    /// The first record names a container: the request asks for the input slot.
    Claim,
    /// A valid later record.
    Apply(InputAction),
    /// The body ended cleanly after the first record.
    End,
    /// The request fails with this answer.
    Fail(Answer),
}

impl Session {
    /// A session whose first record (the call that names the container, a few hundred
    /// bytes) may be at most `max_first` bytes, and every later one `max_record`.
    pub fn new(format: Format, max_first: usize, max_record: usize, keep_alive: bool) -> Session {
        Session {
            format,
            max_record,
            records: recordio::Decoder::new(max_first.min(max_record)),
            body: Pending::default(),
            body_ended: false,
            started: false,
            writing: false,
            parked: None,
            keep_alive,
            terminal: None,
        }
    }

    /// Decides the next record: a parked one first, then the next whole record of the body.
    pub fn next(&mut self) -> Step {
        if let Some(action) = self.parked.take() {
            return Step::Apply(action);
        }
        let record = match self.records.decode(self.body.data()) {
            // A record past our limit is not malformed, only too large (Mesos has no limit).
            Err(e @ recordio::Error::TooLarge { .. }) => return Step::Fail(Answer::RecordTooLarge(e)),
            Err(e) => return Step::Fail(Answer::RecordFraming(e)),
            Ok((used, record)) => {
                self.body.consume(used);
                record
            }
        };
        match record {
            None if !self.body_ended => Step::Wait,
            None if !self.started => Step::Fail(Answer::EofBeforeFirstRecord),
            None => {
                if let Err(e) = self.records.finish() {
                    // Mesos drops trailing bytes that do not form a record (docs/protocol.md §11.6).
                    tracing::info!("input ended inside a record ({e}); the partial record is dropped");
                }
                Step::End
            }
            Some(record) if !self.started => match message::decode::<Call>(self.format, &record) {
                Err(error) => Step::Fail(Answer::Undecodable { first: true, error }),
                Ok(call) => match input::check_first_record(&call) {
                    Err(invalid) => Step::Fail(Answer::InvalidRecord(invalid)),
                    Ok(()) => Step::Claim,
                },
            },
            Some(record) => match message::decode::<Call>(self.format, &record) {
                Err(error) => Step::Fail(Answer::Undecodable { first: false, error }),
                Ok(call) => match input::input_action(&call) {
                    Err(invalid) => Step::Fail(Answer::InvalidRecord(invalid)),
                    Ok(action) => Step::Apply(action),
                },
            },
        }
    }
}

/// The container's stdin, written by one request at a time.
pub(super) struct Stdin {
    fd: Option<Fd>,
    tty: bool,
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
    pub fn new(fd: Option<Fd>, tty: bool) -> Stdin {
        Stdin {
            fd,
            tty,
            op: None,
            pending: None,
            owner: None,
            written: 0,
            waiters: Vec::new(),
        }
    }

    pub fn busy(&self) -> bool {
        self.op.is_some() || self.pending.is_some()
    }

    /// Connection `i` ended: a write of its record goes on, detached.
    pub fn release(&mut self, i: u32) {
        if self.owner == Some(i) {
            self.owner = None;
        }
    }
}

/// Decides and applies connection `i`'s next input record; false when it has to wait.
pub(super) fn process(ctx: &mut Ctx<'_>, i: u32) -> bool {
    let State::Input(session) = &mut conn::get(ctx, i).state else { return false };
    if session.writing {
        return false;
    }
    match session.next() {
        Step::Wait => false,
        Step::Claim => {
            claim(ctx, i);
            true
        }
        Step::Apply(action) => apply(ctx, i, action),
        Step::End => {
            let keep_alive = session.keep_alive && !conn::get(ctx, i).eof;
            conn::stop_timer(ctx, i);
            conn::respond(ctx, i, Answer::Ok, !keep_alive);
            if keep_alive {
                conn::get(ctx, i).state = State::Idle;
                conn::back_to_idle(ctx, i);
            }
            true
        }
        Step::Fail(answer) => {
            conn::respond(ctx, i, answer, true);
            true
        }
    }
}

/// The first record was valid: the request takes the input slot, or is told that another
/// holds it (its body is then read and dropped).
fn claim(ctx: &mut Ctx<'_>, i: u32) {
    // Counted even if the request is refused below: the agent acknowledges every one.
    *ctx.acks_outstanding += 1;
    if ctx.conns.input_owner.is_some() {
        let c = conn::get(ctx, i);
        let (keep_alive, body_ended) = match &c.state {
            State::Input(s) => (s.keep_alive, s.body_ended),
            _ => (false, true),
        };
        c.state = if !body_ended {
            State::Discard { keep_alive }
        } else if keep_alive {
            State::Idle
        } else {
            State::Closing
        };
        ctx.conns.counts.input_conflicts += 1;
        conn::queue_answer(ctx, i, &Answer::Conflict, !keep_alive);
        // The rest of the body (or the answer's way out) gets a deadline of its own.
        conn::start_timer(ctx, i, ctx.config.limits.head_timeout);
        conn::back_to_idle(ctx, i);
        return;
    }
    ctx.conns.input_owner = Some(i);
    ctx.conns.counts.input_requests += 1;
    if let State::Input(session) = &mut conn::get(ctx, i).state {
        session.started = true;
        session.records.set_max_record_len(session.max_record);
    }
    // The slot's holder may stay as long as it likes (an idle terminal); its request's
    // deadline ends here.
    conn::stop_timer(ctx, i);
    if ctx.redirect_finished {
        conn::start_timer(ctx, i, crate::config::INPUT_ANSWER_DELAY);
    }
}

/// Applies one valid input record; false when it must wait for stdin.
fn apply(ctx: &mut Ctx<'_>, i: u32, action: InputAction) -> bool {
    let needs_stdin = matches!(action, InputAction::Stdin(_) | InputAction::StdinEof);
    if needs_stdin && ctx.conns.stdin.busy() {
        // Another request's write is still going: keep the order of stdin bytes.
        if let State::Input(session) = &mut conn::get(ctx, i).state {
            session.parked = Some(action);
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
                conn::respond(ctx, i, Answer::StdinFailed(bad_fd()), true);
            } else {
                if let State::Input(session) = &mut conn::get(ctx, i).state {
                    session.writing = true;
                }
                ctx.conns.stdin.owner = Some(i);
                ctx.conns.stdin.written = 0;
                write(ctx, bytes, 0);
            }
        }
        InputAction::StdinEof => {
            // Only a pipe is closed: a PTY stays open (clients send ^D instead).
            if !ctx.conns.stdin.tty
                && let Some(fd) = ctx.conns.stdin.fd.take()
            {
                tracing::info!("closing the container's stdin");
                ctx.ring.close(fd);
            }
        }
        InputAction::Resize { rows, columns } => {
            // With a screen model, the terminal's windows decide (and the model follows).
            let size = (rows as u16, columns as u16);
            let terminal = match &conn::get(ctx, i).state {
                conn::State::Input(session) => session.terminal.clone(),
                _ => None,
            };
            let result = match (ctx.output.input_resize(terminal.as_deref(), size), ctx.conns.stdin.fd) {
                (Some(result), _) => result,
                (None, Some(fd)) => crate::tty::set_window_size(ctx.ring.borrow(fd), size.0, size.1),
                (None, None) => Err(std::io::Error::from_raw_os_error(libc::EBADF)),
            };
            if let Err(e) = result {
                conn::respond(ctx, i, Answer::WindowSize(crate::sys::strerror(&e)), true);
            }
        }
    }
    true
}

fn bad_fd() -> String {
    crate::sys::strerror_res(-libc::EBADF)
}

/// Writes `buf[start..]` to stdin (all of it, over as many writes as it takes).
fn write(ctx: &mut Ctx<'_>, buf: Vec<u8>, start: usize) {
    let Some(fd) = ctx.conns.stdin.fd else {
        return failed(ctx, bad_fd());
    };
    let op = ctx.ring.submit(
        Op::Write { fd, buf, start },
        Token::Conn(ConnOp::StdinWrite, 0).encode(),
    );
    ctx.conns.stdin.op = Some(op);
}

pub(super) fn on_written(ctx: &mut Ctx<'_>, c: Completion) {
    let stdin = &mut ctx.conns.stdin;
    stdin.op = None;
    let res = c.res;
    let buf = c.into_buf();
    let start = stdin.written;
    ctx.conns.counts.input_bytes += u64::try_from(res).unwrap_or(0);
    match res {
        n if n > 0 && start + (n as usize) < buf.len() => {
            stdin.written = start + n as usize;
            write(ctx, buf, start + n as usize);
        }
        n if n > 0 => done(ctx),
        e if e == -libc::EAGAIN => {
            // The pipe is full: wait until the container reads, then write again.
            let Some(fd) = stdin.fd else {
                return failed(ctx, bad_fd());
            };
            stdin.pending = Some((buf, start));
            let op = ctx.ring.submit(
                Op::Poll { fd, events: POLLOUT },
                Token::Conn(ConnOp::StdinWritable, 0).encode(),
            );
            ctx.conns.stdin.op = Some(op);
        }
        e if e == -libc::EINTR => write(ctx, buf, start),
        e => failed(ctx, crate::sys::strerror_res(e)),
    }
}

pub(super) fn on_writable(ctx: &mut Ctx<'_>) {
    ctx.conns.stdin.op = None;
    if let Some((buf, start)) = ctx.conns.stdin.pending.take() {
        write(ctx, buf, start);
    }
}

/// A write failed. Mesos then exits 1 and the agent kills the container; we answer the
/// request with Mesos's 500 and go on serving (output keeps flowing).
fn failed(ctx: &mut Ctx<'_>, why: String) {
    let answer = Answer::StdinFailed(why);
    tracing::warn!("{}", answer.text());
    let stdin = &mut ctx.conns.stdin;
    stdin.pending = None;
    stdin.written = 0;
    if let Some(i) = stdin.owner.take()
        && conn::exists(ctx, i)
    {
        if let State::Input(session) = &mut conn::get(ctx, i).state {
            session.writing = false;
        }
        conn::respond(ctx, i, answer, true);
        conn::drive(ctx, i);
    }
    wake_waiters(ctx);
}

/// A record reached stdin: its request goes on, and whoever waits for stdin.
fn done(ctx: &mut Ctx<'_>) {
    ctx.conns.stdin.written = 0;
    if let Some(i) = ctx.conns.stdin.owner.take()
        && conn::exists(ctx, i)
    {
        if let State::Input(session) = &mut conn::get(ctx, i).state {
            session.writing = false;
        }
        conn::drive(ctx, i);
    }
    wake_waiters(ctx);
}

/// Stdin is free: requests with a record parked for it go on, in the order they parked.
fn wake_waiters(ctx: &mut Ctx<'_>) {
    for i in std::mem::take(&mut ctx.conns.stdin.waiters) {
        if conn::exists(ctx, i) {
            conn::drive(ctx, i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(json: &str) -> Vec<u8> {
        let mut out = Vec::new();
        recordio::write_header(json.len(), &mut out);
        out.extend_from_slice(json.as_bytes());
        out
    }

    const FIRST: &str = r#"{"type":"ATTACH_CONTAINER_INPUT","attach_container_input":{"type":"CONTAINER_ID","container_id":{"value":"c"}}}"#;

    fn stdin(data_b64: &str) -> String {
        format!(
            r#"{{"type":"ATTACH_CONTAINER_INPUT","attach_container_input":{{"type":"PROCESS_IO","process_io":{{"type":"DATA","data":{{"type":"STDIN","data":"{data_b64}"}}}}}}}}"#
        )
    }

    fn session() -> Session {
        Session::new(Format::Json, 1 << 10, 1 << 10, true)
    }

    #[test]
    fn records_are_decided_one_by_one_as_they_arrive() {
        let mut s = session();
        let first = record(FIRST);
        s.body.extend(&first[..10]);
        assert_eq!(s.next(), Step::Wait);
        s.body.extend(&first[10..]);
        assert_eq!(s.next(), Step::Claim);
        s.started = true;
        s.body.extend(&record(&stdin("aGkK")));
        s.body.extend(&record(&stdin("")));
        assert_eq!(s.next(), Step::Apply(InputAction::Stdin(b"hi\n".to_vec())));
        assert_eq!(s.next(), Step::Apply(InputAction::StdinEof));
        assert_eq!(s.next(), Step::Wait);
        // A parked record comes back first.
        s.parked = Some(InputAction::Heartbeat);
        assert_eq!(s.next(), Step::Apply(InputAction::Heartbeat));
        // The end of the body, with a partial record dropped.
        s.body.extend(b"12\n{");
        s.body_ended = true;
        assert_eq!(s.next(), Step::End);
    }

    #[test]
    fn bad_bodies_fail_with_mesos_answers() {
        let mut s = session();
        s.body_ended = true;
        assert_eq!(s.next(), Step::Fail(Answer::EofBeforeFirstRecord));

        let mut s = session();
        s.body.extend(b"x\n");
        assert_eq!(s.next().fail_status(), 500);

        let mut s = session();
        s.body.extend(b"2000\n");
        assert_eq!(s.next().fail_status(), 413);

        let mut s = session();
        s.body.extend(&record("{"));
        assert_eq!(s.next().fail_status(), 500, "an undecodable first record");

        let mut s = session();
        s.body.extend(&record(r#"{"type":"ATTACH_CONTAINER_INPUT"}"#));
        assert_eq!(s.next().fail_status(), 400, "a first record without a container");

        let mut s = session();
        s.started = true;
        s.body.extend(&record("{"));
        assert_eq!(s.next().fail_status(), 400, "an undecodable later record");
        let mut s = session();
        s.started = true;
        s.body.extend(&record(FIRST));
        assert_eq!(
            s.next(),
            Step::Fail(Answer::InvalidRecord(input::InvalidRecord(
                "Expecting 'attach_container_input.type' to be 'PROCESS_IO' instead of: '1'".into()
            )))
        );
    }

    impl Step {
        fn fail_status(&self) -> u16 {
            match self {
                Step::Fail(a) => a.status(),
                other => panic!("{other:?} is not a failure"),
            }
        }
    }
}
