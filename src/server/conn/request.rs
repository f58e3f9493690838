//! One request's way through a connection: its head routed, its body read, and its end:
//! an answer, the hand-over of an output call to the output engine, or an input request
//! that `input.rs` takes on.

use crate::config::LagPolicy;
use crate::relay::Framing;
use crate::relay::Start;
use crate::wire::http::{self, Event, HttpError, RequestHead};
use crate::wire::media::{self, BodyFormat, OutputAsk, ResponseFormat, Route};
use crate::wire::message::mesos::agent::{Call, call};
use crate::wire::message::{self, Format};

use super::{Ctx, State, close, get, respond, start_timer};
use crate::server::answer::Answer;
use crate::server::input::{self, Session};

/// Reads the next HTTP event (a head, body bytes, the end of a body) from what was
/// received; false when nothing more can happen now.
pub(super) fn parse(ctx: &mut Ctx<'_>, i: u32) -> bool {
    let c = get(ctx, i);
    let (used, event) = match c.reader.next(c.buf.data()) {
        Err(e) => {
            respond(ctx, i, Answer::Refused(e), true);
            return true;
        }
        Ok((used, event)) => (
            used,
            event.map(|e| match e {
                Event::Head(h) => Ok(h),
                Event::Body(b) => Err(Some(b.to_vec())),
                Event::End => Err(None),
            }),
        ),
    };
    c.buf.consume(used);
    match event {
        Some(Ok(head)) => on_head(ctx, i, head),
        Some(Err(Some(body))) => on_body(ctx, i, body),
        Some(Err(None)) => on_end(ctx, i),
        // More bytes are needed: decode what the body has so far, or wait.
        None if matches!(get(ctx, i).state, State::Input(_)) && input::process(ctx, i) => {}
        None if get(ctx, i).eof => return at_eof(ctx, i),
        None => return false,
    }
    true
}

/// The peer sent all it will send and the current request needs more: finish or close.
fn at_eof(ctx: &mut Ctx<'_>, i: u32) -> bool {
    let c = get(ctx, i);
    let flushed = c.flushed();
    match &c.state {
        State::Idle if flushed && c.buf.is_empty() => close(ctx, i),
        State::Idle if c.buf.is_empty() => c.state = State::Closing,
        // The body stopped short: the request fails (Mesos's answer is a 500 the client
        // will not read); the input slot is freed with it.
        State::Input(_) => respond(ctx, i, Answer::BodyCutShort, true),
        _ if flushed => close(ctx, i),
        _ => c.state = State::Closing,
    }
    false
}

fn on_head(ctx: &mut Ctx<'_>, i: u32, head: RequestHead) {
    // The timer that ran for the head runs on for the body: a request has one deadline
    // to come to a decision, head and body together.
    tracing::debug!("{} {} on connection {i}", head.method, head.target);
    if get(ctx, i).forbidden {
        ctx.conns.counts.refused_forbidden += 1;
        return respond(ctx, i, Answer::Forbidden, true);
    }
    let route = match media::route(&head) {
        Ok(r) => r,
        Err(e) => return respond(ctx, i, Answer::Refused(e), true),
    };
    let limits = ctx.config.limits;
    if let (
        Route::Call {
            body: BodyFormat::Single(_),
            ..
        },
        http::BodyLength::Length(n),
    ) = (&route, head.body)
        && n > limits.max_call_body as u64
    {
        // Refused before a byte of it is read.
        return respond(ctx, i, Answer::BodyTooLarge(limits.max_call_body), true);
    }
    let c = get(ctx, i);
    if head.expect_continue && head.body != http::BodyLength::Length(0) {
        c.sendq.push_back(http::CONTINUE.to_vec());
    }
    c.state = match route {
        Route::Acknowledge => State::Ack {
            keep_alive: head.keep_alive,
        },
        Route::Metrics { open_metrics } => State::Metrics {
            keep_alive: head.keep_alive,
            open_metrics,
        },
        Route::Call {
            body: BodyFormat::Single(format),
            response,
        } => match media::output_ask(&head) {
            Ok(ask) => State::Call {
                format,
                response,
                ask,
                body: Vec::new(),
            },
            Err(e) => return respond(ctx, i, Answer::Refused(e), true),
        },
        Route::Call {
            body: BodyFormat::Streaming(format),
            ..
        } => match media::terminal_named(&head) {
            Ok(terminal) => {
                let mut session = Session::new(format, limits.max_call_body, limits.max_record, head.keep_alive);
                session.terminal = terminal;
                State::Input(session)
            }
            Err(e) => return respond(ctx, i, Answer::Refused(e), true),
        },
    };
}

fn on_body(ctx: &mut Ctx<'_>, i: u32, data: Vec<u8>) {
    let limit = ctx.config.limits.max_call_body;
    match &mut get(ctx, i).state {
        State::Call { body, .. } => {
            if body.len() + data.len() > limit {
                return respond(ctx, i, Answer::BodyTooLarge(limit), true);
            }
            body.extend_from_slice(&data);
        }
        State::Input(session) => session.body.extend(&data),
        // Acknowledgement bodies and discarded bodies are ignored.
        _ => {}
    }
}

fn on_end(ctx: &mut Ctx<'_>, i: u32) {
    let c = get(ctx, i);
    match std::mem::replace(&mut c.state, State::Idle) {
        State::Call {
            format,
            response,
            ask,
            body,
        } => output_call(ctx, i, format, response, ask, &body),
        State::Ack { keep_alive } => {
            if *ctx.acks_outstanding > 0 {
                *ctx.acks_outstanding -= 1;
            } else {
                // Mesos aborts here; an unexpected acknowledgement is harmless.
                tracing::info!("an acknowledgement with none outstanding");
            }
            respond(ctx, i, Answer::Ok, !keep_alive);
            back_to_idle(ctx, i);
        }
        State::Metrics {
            keep_alive,
            open_metrics,
        } => {
            let (content_type, text) = crate::server::metrics::exposition(ctx, open_metrics);
            respond(ctx, i, Answer::Metrics { content_type, text }, !keep_alive);
            back_to_idle(ctx, i);
        }
        State::Discard { keep_alive } => {
            if keep_alive {
                back_to_idle(ctx, i);
            } else {
                c.state = State::Closing;
            }
        }
        State::Input(mut session) => {
            session.body_ended = true;
            c.state = State::Input(session);
        }
        other => c.state = other,
    }
}

/// Between requests, a connection has `head_timeout` to send the next head.
pub(in crate::server) fn back_to_idle(ctx: &mut Ctx<'_>, i: u32) {
    if matches!(get(ctx, i).state, State::Idle) {
        start_timer(ctx, i, ctx.config.limits.head_timeout);
    }
}

fn output_call(ctx: &mut Ctx<'_>, i: u32, format: Format, response: ResponseFormat, ask: OutputAsk, body: &[u8]) {
    let call: Call = match message::decode(format, body) {
        Ok(c) => c,
        Err(error) => return respond(ctx, i, Answer::Undecodable { first: false, error }, true),
    };
    if call.r#type != Some(call::Type::AttachContainerOutput as i32) {
        return respond(ctx, i, Answer::NotAnOutputCall, true);
    }
    if ctx.terminating {
        return respond(ctx, i, Answer::ShuttingDown, true);
    }
    if let Err(f) = ctx.output.locate(ask.at) {
        let text = format!(
            "{} {} is past the newest output ({})",
            media::FROM_HEADER,
            f.asked,
            f.newest
        );
        return respond(ctx, i, Answer::Refused(HttpError::new(400, text)), true);
    }
    get(ctx, i).state = State::HandOver {
        framing: Framing::Chunked(response.record_format()),
        response,
        ask,
    };
}

/// The head of an output response that starts at `start` (with a redraw of the screen
/// first when `screen`).
fn output_head(response: ResponseFormat, start: Start, screen: bool, instance: &str) -> Vec<u8> {
    let position = start.position.to_string();
    let skipped = start.skipped.to_string();
    let newest = start.newest.to_string();
    let mut headers = vec![("Content-Type", response.content_type())];
    if let Some(mct) = response.message_content_type() {
        headers.push(("Message-Content-Type", mct));
    }
    headers.push((media::POSITION_HEADER, &position));
    if start.skipped > 0 {
        headers.push((media::SKIPPED_HEADER, &skipped));
    }
    headers.push((media::NEWEST_HEADER, &newest));
    headers.push((media::INSTANCE_HEADER, instance));
    if screen {
        headers.push((media::SCREEN_HEADER, "1"));
    }
    headers.push(("Transfer-Encoding", "chunked"));
    let mut head = Vec::with_capacity(240);
    http::write_response_head(200, &headers, &mut head);
    head
}

/// Gives an output call's connection to the output engine.
pub(super) fn hand_over(ctx: &mut Ctx<'_>, i: u32) {
    let c = ctx.conns.take(i);
    // Nothing of this connection's may complete here any more: a receive armed while an
    // earlier response was going out (the client pipelined this request behind another)
    // and the head timer are forgotten. Mesos never answers requests behind an output
    // stream, so bytes that receive took are not wanted either. No send is in flight:
    // the hand-over waits until the connection is flushed.
    assert!(c.flushed(), "hand-over of an unflushed connection");
    for op in [c.recv, c.timer, c.hangup].into_iter().flatten() {
        ctx.ring.cancel(op, true);
    }
    let State::HandOver { framing, response, ask } = c.state else {
        unreachable!("only called in HandOver")
    };
    // The client redirection waited for (the agent's attach to a DEBUG session) must get
    // every byte, as in Mesos: it holds the container back rather than being cut off.
    let policy = if ctx.output.is_started() {
        ctx.config.lag_policy
    } else {
        LagPolicy::Block
    };
    tracing::debug!("connection {i} attached to the output ({policy:?})");
    let instance = ctx.instance;
    // (The head says whether a redraw follows it.)
    let head = |start, screen| output_head(response, start, screen, instance);
    ctx.output.add_client(ctx.ring, c.fd, framing, policy, ask, head);
    // The first output client starts redirection when we waited for it.
    ctx.output.start(ctx.ring);
}
