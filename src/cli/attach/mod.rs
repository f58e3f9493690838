//! `switchboard attach`: this terminal on a switchboard's socket, like `docker attach`.
//!
//! Output records go to stdout and stderr as they say. With input, a probe request first
//! learns whether the container has a terminal (a resize to the current window size is
//! refused on a pipe), which also sets the size before any input. When both ends are
//! terminals, this one goes raw (restored on every exit path, signals included), window
//! changes are sent as they happen, and the detach keys (ctrl-p ctrl-q by default) leave
//! the container running; a first detach key alone goes through after a short pause.
//! End of input is an empty DATA record on a pipe and EOT (^D) on a terminal. Every input
//! response is acknowledged, as the Mesos agent does.
//!
//! Output starts with what the switchboard kept on pipes (its `--replay-bytes`), at the
//! newest output on a terminal (old screen bytes would garble this one) or when that is
//! not known, or where `--tail` or `--from` say. When a connection drops while the
//! container runs, output and input are made again: output at the next byte's position,
//! saying on stderr if bytes were lost.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use nix::sys::signal::{SigSet, Signal};

use crate::client::{Begin, ClientError, Follower, Piece, Terminal};
use crate::tty::{self, RawMode};

/// How long a lone first detach key waits for the rest of the sequence.
pub const DETACH_PAUSE: Duration = Duration::from_millis(300);

/// How often input heartbeats go out (as the Mesos CLI sends them).
const HEARTBEAT: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The switchboard's socket.
    #[arg(value_name = "SOCKET")]
    pub socket: PathBuf,
    /// Only watch the output: do not attach this terminal's input.
    #[arg(long)]
    pub no_stdin: bool,
    /// The keys that detach this terminal and leave the container running, e.g.
    /// ctrl-p,ctrl-q or ctrl-a,d; empty to have none.
    #[arg(long, value_name = "KEYS", default_value = "ctrl-p,ctrl-q")]
    pub detach_keys: String,
    /// Start with the last N lines of the output the switchboard kept (stdout and stderr
    /// together, as written), then follow. Without --tail or --from: all it kept when the
    /// container has pipes, nothing when it has a terminal or attach cannot tell.
    #[arg(long, value_name = "N", conflicts_with = "from")]
    pub tail: Option<u64>,
    /// Start at output position P (a detach prints where it left off), or at the oldest
    /// output kept if P is older (saying how much is missing).
    #[arg(long, value_name = "P")]
    pub from: Option<u64>,
}

/// Parses detach keys: comma-separated `ctrl-<key>` or single characters.
pub fn parse_detach_keys(spec: &str) -> Result<Vec<u8>, String> {
    if spec.is_empty() {
        return Ok(Vec::new());
    }
    spec.split(',')
        .map(|key| {
            let key = key.trim();
            if let Some(k) = key.strip_prefix("ctrl-") {
                match k.as_bytes() {
                    [c @ (b'a'..=b'z' | b'@' | b'[' | b'\\' | b']' | b'^' | b'_')] => Ok(c & 0x1f),
                    _ => Err(format!("'{key}' is not a control key (ctrl-a to ctrl-z, ctrl-@, ctrl-[, ctrl-\\, ctrl-], ctrl-^, ctrl-_)")),
                }
            } else if key.len() == 1 {
                Ok(key.as_bytes()[0])
            } else {
                Err(format!("'{key}' is not a key: use ctrl-<letter> or one character"))
            }
        })
        .collect()
}

/// How an attachment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The container's output ended (the switchboard is done).
    Output,
    /// The detach keys were typed: the container goes on.
    Detached,
}

/// Options of an attachment.
#[derive(Debug, Clone)]
pub struct Options {
    pub stdin: bool,
    pub detach_keys: Vec<u8>,
    /// Whether the container has a terminal, when known without a probe.
    pub tty_hint: Option<bool>,
    /// Where the output starts; `None`: what the switchboard kept on pipes, the newest
    /// output on a terminal (or when it is not known which).
    pub begin: Option<Begin>,
}

mod input;

use input::{Target, handle_signals, probe_input, start_input};

/// Leaves what a full-screen program may have set in this terminal: attributes, a
/// hidden cursor, application cursor keys and keypad, bracketed paste, mouse reporting;
/// and [`LEAVE_ALTERNATE`] when it was on the alternate screen (only then: on the normal
/// screen, leaving it again would move the cursor to wherever it was last saved).
const LEAVE_PROGRAM_MODES: &[u8] =
    b"\x1b[0m\x1b[?25h\x1b[?1l\x1b>\x1b[?2004l\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l";
const LEAVE_ALTERNATE: &[u8] = b"\x1b[?1049l";
const ENTER_ALTERNATE: &[u8] = b"\x1b[?1049h";

/// Whether output left the terminal on the alternate screen, after `data` when it was
/// `before` (the last of the switches in it decides).
fn on_alternate(before: bool, data: &[u8]) -> bool {
    let last = |needle: &[u8]| data.windows(needle.len()).rposition(|w| w == needle);
    match (last(ENTER_ALTERNATE), last(LEAVE_ALTERNATE)) {
        (Some(enter), Some(leave)) => enter > leave,
        (Some(_), None) => true,
        (None, Some(_)) => false,
        (None, None) => before,
    }
}

/// Signals that end an attachment (the terminal is restored first).
const FATAL: [Signal; 4] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT];

/// Attaches this process's stdin, stdout and stderr to the switchboard at `socket`.
pub fn attach(socket: &Path, options: &Options) -> Result<Ended, ClientError> {
    // Signals go to one thread, which restores the terminal before dying; SIGWINCH
    // becomes a resize record.
    let mut mask = SigSet::empty();
    for s in FATAL {
        mask.add(s);
    }
    mask.add(Signal::SIGWINCH);
    mask.thread_block().map_err(|e| ClientError::Io(e.into()))?;

    let terminal = this_terminal();
    let (mut output, target) = open(socket, options, &terminal)?;
    let detached = Arc::new(AtomicBool::new(false));
    let raw: Arc<Mutex<Option<RawMode>>> = Arc::new(Mutex::new(None));
    let input = match target {
        Some(target) => match start_input(socket, options, target, &terminal, &raw, &detached, output.stopper()) {
            Ok(input) => Some(input),
            // The output is open: what the container wrote still comes on it.
            Err(e) if server_left(&e) => None,
            Err(e) => return Err(e),
        },
        None => None,
    };
    {
        let raw = raw.clone();
        let resize = input.as_ref().map(|i| i.records.clone());
        std::thread::spawn(move || handle_signals(mask, raw, resize));
    }
    let mut alternate = false;
    let result = follow(&mut output, &raw, &detached, &mut alternate);
    // Restore the terminal before anything else is printed; after a detach, also what
    // the container's program left set in it (as tmux does on detach).
    if let Some(r) = raw.lock().unwrap().take() {
        if let Ok(Ended::Detached) = result {
            let mut out = io::stdout().lock();
            let leave = if alternate { LEAVE_ALTERNATE } else { b"" };
            let _ = out
                .write_all(leave)
                .and_then(|()| out.write_all(LEAVE_PROGRAM_MODES))
                .and_then(|()| out.flush());
        }
        r.restore();
    }
    if let Ok(Ended::Detached) = result {
        match output.position() {
            Some(p) => eprintln!(
                "\r\ndetached at output position {p}: the container is still running (continue from \
                 there with: switchboard attach --from {p} {})",
                socket.display()
            ),
            None => eprintln!("\r\ndetached: the container is still running"),
        }
    }
    result
}

/// This terminal, when stdin and stdout both are one: its size, and a name our output
/// and input requests give, so that our resizes are our window's.
fn this_terminal() -> Terminal {
    let (stdin, stdout) = (io::stdin(), io::stdout());
    let window = match tty::is_terminal(stdin.as_fd()) && tty::is_terminal(stdout.as_fd()) {
        true => tty::window_size(stdin.as_fd()).ok().filter(|&(r, c)| r > 0 && c > 0),
        false => None,
    };
    match window {
        Some(_) => Terminal::named(window),
        None => Terminal::default(),
    }
}

/// Where the output starts when nothing says: what was kept on pipes, the newest output
/// on a terminal (old screen bytes would garble this one).
fn default_begin(tty: bool) -> Begin {
    match tty {
        true => Begin::Live,
        false => Begin::Kept,
    }
}

/// Opens the output, then probes the input side. The output comes first: the probe's
/// resize makes full-screen programs redraw, which must reach us. Where the output
/// starts may depend on what the probe is the first to tell (whether the container has
/// a terminal): on pipes, it is then opened again at what was kept.
fn open(socket: &Path, options: &Options, terminal: &Terminal) -> Result<(Follower, Option<Target>), ClientError> {
    let known = options.begin.or(options.tty_hint.map(default_begin));
    // At the newest output from a terminal, the switchboard is asked to size the
    // container's terminal as ours and to redraw its screen first (a server without a
    // screen model, or pipes, just starts at the newest output).
    let output = match (known.unwrap_or(Begin::Live), terminal.window) {
        (Begin::Live, Some(_)) if options.tty_hint != Some(false) => Follower::open_terminal(socket, terminal.clone())?,
        (begin, _) => Follower::open(socket, begin)?,
    };
    let target = match options.stdin {
        true => match probe_input(socket, options, terminal) {
            Ok(target) => target,
            // The output is open: what the container wrote still comes on it.
            Err(e) if server_left(&e) => None,
            Err(e) => return Err(e),
        },
        false => None,
    };
    match (known, &target) {
        (None, Some(Target { tty: false, .. })) => Ok((Follower::open(socket, Begin::Kept)?, target)),
        _ => Ok((output, target)),
    }
}

/// Whether an input connection failed because the server already left. A server exits
/// once the container's output ended and its clients have it all, which can come before
/// the input side connects (a short-lived container); the output connection, opened
/// first, still delivers everything.
fn server_left(error: &ClientError) -> bool {
    match error {
        ClientError::NoServer { .. } | ClientError::Gone => true,
        ClientError::Io(e) => matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// Copies the output here until it ends, the detach keys are typed, or it fails.
fn follow(
    output: &mut Follower,
    raw: &Mutex<Option<RawMode>>,
    detached: &AtomicBool,
    alternate: &mut bool,
) -> Result<Ended, ClientError> {
    let stdout = io::stdout();
    let stderr = io::stderr();
    loop {
        let piece = match output.next_piece() {
            Ok(Some(piece)) => piece,
            Ok(None) => return Ok(Ended::Output),
            Err(_) if detached.load(Ordering::SeqCst) => return Ok(Ended::Detached),
            Err(e) => return Err(e),
        };
        let text = match piece {
            Piece::Output { stderr: true, data } => {
                let mut e = stderr.lock();
                e.write_all(&data).and_then(|_| e.flush())?;
                continue;
            }
            Piece::Output { stderr: false, data } | Piece::Screen { data } => {
                *alternate = on_alternate(*alternate, &data);
                let mut o = stdout.lock();
                o.write_all(&data).and_then(|_| o.flush())?;
                continue;
            }
            Piece::Resumed { restarted: true, .. } => "the connection dropped and the switchboard restarted: \
                 continuing with the oldest output it kept; output in between may be missing"
                .to_string(),
            Piece::Resumed { skipped: 0, .. } => {
                "the connection dropped; continuing where it was, nothing missed".to_string()
            }
            Piece::Resumed { skipped, .. } => format!(
                "the connection dropped; continuing, {skipped} bytes of output missing (the switchboard no \
                 longer had them)"
            ),
            Piece::StartedLater { skipped } => {
                format!("starting {skipped} bytes later than asked: the switchboard no longer has them")
            }
            Piece::NoPositions => "this switchboard keeps no output history: starting at the newest output".to_string(),
        };
        note(raw, &text);
    }
}

/// Says something on stderr, between output lines (in raw mode, lines end with CR LF).
fn note(raw: &Mutex<Option<RawMode>>, text: &str) {
    let end = match raw.lock().unwrap().is_some() {
        true => "\r\n",
        false => "\n",
    };
    eprint!("{end}switchboard attach: {text}{end}");
}

/// Runs `switchboard attach`; returns the exit code.
pub fn run(args: &AttachArgs) -> std::process::ExitCode {
    let keys = match parse_detach_keys(&args.detach_keys) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("switchboard attach: --detach-keys: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let tty_hint = crate::agent::Info::next_to_socket(&args.socket).map(|i| i.tty);
    let begin = match (args.tail, args.from) {
        (Some(n), _) => Some(Begin::Lines(n)),
        (None, Some(p)) => Some(Begin::Position(p)),
        (None, None) => None,
    };
    let options = Options {
        stdin: !args.no_stdin,
        detach_keys: keys,
        tty_hint,
        begin,
    };
    match attach(&args.socket, &options) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard attach: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_switch_tells_the_screen() {
        assert!(on_alternate(false, b"x\x1b[?1049hdraw"));
        assert!(!on_alternate(true, b"\x1b[?1049h..\x1b[?1049l$ "));
        assert!(on_alternate(true, b"more"));
        assert!(!on_alternate(false, b"more"));
    }

    #[test]
    fn detach_key_specs() {
        assert_eq!(parse_detach_keys("ctrl-p,ctrl-q"), Ok(vec![0x10, 0x11]));
        assert_eq!(parse_detach_keys("ctrl-a,d"), Ok(vec![0x01, b'd']));
        assert_eq!(parse_detach_keys(""), Ok(vec![]));
        assert!(parse_detach_keys("ctrl-1").is_err());
        assert!(parse_detach_keys("alt-x").is_err());
    }
}
