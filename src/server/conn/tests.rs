//! The connection's decisions without I/O: what a state does next.

use super::*;

fn input(f: impl FnOnce(&mut Session)) -> State {
    let mut s = Session::new(Format::Protobuf, 1024, 1024, true);
    f(&mut s);
    State::Input(s)
}

#[test]
fn requests_wait_for_earlier_responses_and_input_for_stdin() {
    // A head is parsed only once earlier responses are out.
    assert_eq!(next(&State::Idle, false, false, 8), Next::Wait);
    assert_eq!(next(&State::Idle, true, false, 8), Next::Parse);
    let hand_over = || State::HandOver {
        framing: Framing::Raw,
        response: ResponseFormat::Plain(Format::Json),
        ask: OutputAsk::LIVE,
    };
    assert_eq!(next(&hand_over(), false, false, 8), Next::Wait);
    assert_eq!(next(&hand_over(), true, false, 8), Next::HandOver);
    assert_eq!(next(&State::Closing, true, false, 8), Next::Wait);
    // An input request reads its body while its record is written...
    assert_eq!(next(&input(|s| s.writing = true), true, true, 8), Next::Parse);
    // ...up to the input buffer, then waits.
    let full = input(|s| {
        s.writing = true;
        s.body.extend(&[0; 8]);
    });
    assert_eq!(next(&full, true, true, 8), Next::Wait);
    // A record parked for stdin goes on once stdin is free.
    let parked = || input(|s| s.parked = Some(crate::wire::input::InputAction::Heartbeat));
    assert_eq!(next(&parked(), true, true, 8), Next::Parse);
    assert_eq!(next(&parked(), true, false, 8), Next::Records);
    // A full buffer, or the end of the body, is decoded before reading more.
    assert_eq!(next(&input(|s| s.body.extend(&[0; 8])), true, false, 8), Next::Records);
    assert_eq!(next(&input(|s| s.body_ended = true), true, false, 8), Next::Records);
    assert_eq!(next(&input(|_| {}), true, false, 8), Next::Parse);
}

#[test]
fn pending_bytes_compact_lazily() {
    let mut p = Pending::default();
    p.extend(b"abcdef");
    p.consume(2);
    assert_eq!(p.data(), b"cdef");
    p.consume(2);
    p.extend(b"gh");
    assert_eq!((p.data(), p.start), (&b"efgh"[..], 0));
    p.consume(4);
    assert!(p.is_empty() && p.buf.is_empty());
}
