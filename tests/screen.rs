//! A TTY container's screen model: an output attach that asks (`Switchboard-Screen: 1`)
//! first gets a redraw that stands exactly for the output before its position, so that the
//! redraw and the live output after it make, on a fresh terminal emulator, the same
//! screen as the whole output from the start; its size (`Switchboard-Window`) reaches the
//! PTY before its response, as `--window_size` decides among the attached clients.

use std::os::fd::AsFd;

use common::sb::{Opts, Sb};
use common::{wait_until, within};
use switchboard::client::{OutputStream, Piece, Terminal};
use switchboard::screen::Screen;

/// A full-screen program's drawing: the normal screen, then the alternate one with
/// positioned, coloured text, application cursor keys and bracketed paste, the cursor
/// hidden and put somewhere.
fn drawing(round: u32) -> Vec<u8> {
    let mut out = format!("$ top # round {round}\r\n").into_bytes();
    out.extend_from_slice(b"\x1b[?1049h\x1b[H\x1b[2J\x1b[?1h\x1b[?2004h");
    for row in 1..=12u32 {
        let line = format!(
            "\x1b[{row};{}H\x1b[1;3{}mrow {row} round {round}\x1b[0m",
            row * 3,
            row % 8
        );
        out.extend_from_slice(line.as_bytes());
    }
    out.extend_from_slice(b"\x1b[20;40H\x1b[7m inverse \x1b[27m\x1b[?25l\x1b[15;7H");
    out
}

/// Reads a stream's records into `screen` until `done` says so: the redraw first (if
/// the server sent one: its first record), then output.
fn read_into(stream: &mut OutputStream, screen: &mut Screen, redraws: &mut usize, done: impl Fn(&Screen) -> bool) {
    while !done(screen) {
        let (pio, redraw) = stream.next_record_or_redraw().unwrap().expect("the stream goes on");
        if let Some(data) = pio.data.and_then(|d| d.data) {
            *redraws += usize::from(redraw);
            screen.feed(&data);
        }
    }
}

fn shows(text: &'static str) -> impl Fn(&Screen) -> bool {
    move |s: &Screen| {
        s.cells()
            .iter()
            .any(|row| row.iter().map(|c| c.text.as_str()).collect::<String>().contains(text))
    }
}

#[test]
fn the_redraw_and_the_live_output_make_the_screen_the_whole_output_makes() {
    within(60, || {
        let mut sb = Sb::start(Opts {
            tty: true,
            extra: vec!["--screen".to_string()],
            ..Opts::default()
        });
        sb.wait_for_socket();
        // The reference: a client from the start, fed everything into its own emulator.
        let mut whole = OutputStream::open(&sb.socket).unwrap();
        let mut reference = Screen::new(24, 80);
        sb.write_stdout(&drawing(1));
        read_into(&mut whole, &mut reference, &mut 0, shows("row 12 round 1"));

        // A terminal attaches (its size is the PTY's: the screens compare cell by cell).
        let mut late = OutputStream::open_terminal(&sb.socket, &Terminal::named(Some((24, 80)))).unwrap();
        let mut fresh = Screen::new(24, 80);
        let mut redraws = 0;
        read_into(&mut late, &mut fresh, &mut redraws, shows("row 12 round 1"));
        assert_eq!(redraws, 1, "one redraw record first");
        assert_eq!(fresh.cells(), reference.cells());
        assert_eq!(fresh.cursor(), reference.cursor());
        assert_eq!(fresh.cursor(), (14, 6, true, true), "hidden, on the alternate screen");

        // Live output goes on from exactly there: no gap, no duplicate.
        let more = b"\x1b[3;3Hlive\x1b[?25h\x1b[?1049l$ done\r\n";
        sb.write_stdout(more);
        read_into(&mut whole, &mut reference, &mut 0, shows("$ done"));
        read_into(&mut late, &mut fresh, &mut redraws, shows("$ done"));
        assert_eq!(fresh.cells(), reference.cells());
        assert_eq!(fresh.cursor(), reference.cursor());
        assert!(shows("round 1")(&fresh), "the normal screen came back as it was");
        assert_eq!(redraws, 1);

        // A client that does not ask gets no redraw, and no header says one came.
        let plain = OutputStream::open(&sb.socket).unwrap();
        assert!(!plain.redraw_first());
        sb.stdin = None;
        sb.close_output();
        assert!(sb.wait(30).success());
    });
}

#[test]
fn the_window_reaches_the_pty_before_the_response_and_the_policy_picks_among_clients() {
    within(60, || {
        let cases = [
            ("latest", (30, 150), (20, 200)),
            ("smallest", (30, 120), (20, 150)),
            ("largest", (40, 150), (30, 200)),
        ];
        for (policy, expected, after_resize) in cases {
            let mut sb = Sb::start(Opts {
                tty: true,
                extra: vec![format!("--window_size={policy}"), "--screen".to_string()],
                ..Opts::default()
            });
            sb.wait_for_socket();
            let slave = sb.stdin.as_ref().unwrap().try_clone().unwrap();
            let size = || switchboard::tty::window_size(slave.as_fd()).unwrap();
            let one = Terminal::named(Some((40, 120)));
            let first = OutputStream::open_terminal(&sb.socket, &one).unwrap();
            assert!(first.redraw_first(), "the head says a redraw comes");
            // (The response is the client's: its size was set before it.)
            assert_eq!(size(), (40, 120), "{policy}");
            let second = OutputStream::open_terminal(&sb.socket, &Terminal::named(Some((30, 150)))).unwrap();
            assert_eq!(size(), expected, "{policy}");
            // The first terminal resizes (its input request names it): its window
            // changes, and the policy decides again.
            let mut input = switchboard::client::InputStream::open_as(&sb.socket, &one).unwrap();
            input.send(switchboard::client::resize(20, 200)).unwrap();
            wait_until("the resize", || size() == after_resize);
            input.finish().unwrap();
            switchboard::client::acknowledge(&sb.socket).unwrap();
            drop(second);
            // The second left: the first's size alone decides.
            wait_until("the size after a client left", || size() == (20, 200));
            drop(first);
            drop(slave);
            sb.stdin = None;
            sb.close_output();
            assert!(sb.wait(30).success());
        }
    });
}

#[test]
fn without_the_model_there_is_no_redraw() {
    within(60, || {
        // (The drop-in's default.)
        let mut sb = Sb::start(Opts {
            tty: true,
            ..Opts::default()
        });
        sb.wait_for_socket();
        // (Once a first client has it, the server has read it.)
        let mut first = OutputStream::open(&sb.socket).unwrap();
        sb.write_stdout(b"before\n");
        assert!(first.next_record().unwrap().is_some());
        let terminal = Terminal::named(Some((24, 80)));
        let mut follower = switchboard::client::Follower::open_terminal(&sb.socket, terminal).unwrap();
        assert!(!follower.redraw_first());
        sb.write_stdout(b"after\n");
        match follower.next_piece().unwrap() {
            Some(Piece::Output { data, .. }) => assert_eq!(data, b"after\r\n"),
            other => panic!("{other:?}"),
        }
        // The size still travels with the attach.
        let slave = sb.stdin.as_ref().unwrap();
        assert_eq!(switchboard::tty::window_size(slave.as_fd()).unwrap(), (24, 80));
        sb.stdin = None;
        sb.close_output();
        assert!(sb.wait(30).success());
    });
}

#[test]
fn a_bad_screen_or_window_header_is_a_400() {
    within(60, || {
        let mut sb = Sb::start(Opts {
            tty: true,
            ..Opts::default()
        });
        sb.wait_for_socket();
        for bad in ["Switchboard-Window: 24by80", "Switchboard-Screen: maybe"] {
            let body =
                br#"{"type":"ATTACH_CONTAINER_OUTPUT","attach_container_output":{"container_id":{"value":"x"}}}"#;
            let req = format!(
                "POST / HTTP/1.1\r\nHost:\r\nContent-Type: application/json\r\nAccept: application/json\r\n{bad}\r\n\
                 Content-Length: {}\r\n\r\n",
                body.len()
            );
            let mut all = req.into_bytes();
            all.extend_from_slice(body);
            let r = common::http::exchange(&sb.socket, &all).unwrap();
            assert_eq!(r.status, 400, "{bad}");
        }
        sb.stdin = None;
        sb.close_output();
        assert!(sb.wait(30).success());
    });
}

#[test]
fn terminals_attaching_mid_stream_see_what_the_whole_output_made() {
    within(120, || {
        let mut sb = Sb::start(Opts {
            tty: true,
            extra: vec!["--screen".to_string()],
            ..Opts::default()
        });
        sb.wait_for_socket();
        // A zero-copy client throughout (rounds are staged ahead of the copy engine), and
        // the reference.
        let (_pipe_client, _) = sb.attach_output(true);
        let mut whole = OutputStream::open(&sb.socket).unwrap();
        // Numbered lines that scroll, in colour: a gap or a duplicate shows.
        let lines = |from: u32, to: u32| -> Vec<u8> {
            (from..to)
                .flat_map(|n| {
                    format!("\x1b[3{}mline {n}\x1b[0m {}\r\n", n % 8, "x".repeat((n % 50) as usize)).into_bytes()
                })
                .collect()
        };
        let mut lates = Vec::new();
        for round in 0..5u32 {
            sb.write_stdout(&lines(round * 400, round * 400 + 400));
            // (No wait for the server: a round may be staged and not yet read.)
            let late = OutputStream::open_terminal(&sb.socket, &Terminal::named(Some((24, 80)))).unwrap();
            lates.push((late, Screen::new(24, 80), 0usize));
        }
        sb.write_stdout(b"\x1b[2Kthe end\r\n");
        let mut reference = Screen::new(24, 80);
        read_into(&mut whole, &mut reference, &mut 0, shows("the end"));
        for (i, (late, screen, redraws)) in lates.iter_mut().enumerate() {
            read_into(late, screen, redraws, shows("the end"));
            assert_eq!(*redraws, 1, "terminal {i}");
            assert_eq!(screen.cells(), reference.cells(), "terminal {i}");
            assert_eq!(screen.cursor(), reference.cursor(), "terminal {i}");
        }
        sb.stdin = None;
        sb.close_output();
        assert!(sb.wait(30).success());
    });
}
