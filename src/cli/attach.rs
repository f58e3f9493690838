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

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use clap::Args;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};

use crate::client::{self, Begin, ClientError, Follower, InputStream, Piece, Probe, Stop};
use crate::tty::{self, RawMode};
use crate::wire::message::mesos::agent::ProcessIo;

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

    let (mut output, target) = open(socket, options)?;
    let detached = Arc::new(AtomicBool::new(false));
    let raw: Arc<Mutex<Option<RawMode>>> = Arc::new(Mutex::new(None));
    let input = match target {
        Some(target) => Some(start_input(socket, options, target, &raw, &detached, output.stopper())?),
        None => None,
    };
    {
        let raw = raw.clone();
        let resize = input.as_ref().map(|i| i.records.clone());
        std::thread::spawn(move || handle_signals(mask, raw, resize));
    }
    let result = follow(&mut output, &raw, &detached);
    // Restore the terminal before anything else is printed.
    if let Some(r) = raw.lock().unwrap().take() {
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
fn open(socket: &Path, options: &Options) -> Result<(Follower, Option<Target>), ClientError> {
    let known = options.begin.or(options.tty_hint.map(default_begin));
    let output = Follower::open(socket, known.unwrap_or(Begin::Live))?;
    let target = match options.stdin {
        true => probe_input(socket, options)?,
        false => None,
    };
    match (known, &target) {
        (None, Some(Target { tty: false, .. })) => Ok((Follower::open(socket, Begin::Kept)?, target)),
        _ => Ok((output, target)),
    }
}

/// Copies the output here until it ends, the detach keys are typed, or it fails.
fn follow(output: &mut Follower, raw: &Mutex<Option<RawMode>>, detached: &AtomicBool) -> Result<Ended, ClientError> {
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
            Piece::Output { stderr: false, data } => {
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

/// Messages to the input writer.
enum ToWriter {
    Record(ProcessIo),
    /// End the body (stdin ended, or the detach keys).
    End,
}

struct InputSide {
    records: mpsc::Sender<ToWriter>,
}

/// What the probe learned of the input side.
struct Target {
    /// Whether this process's stdin is a terminal.
    local_tty: bool,
    /// Its window size, when it is.
    size: Option<(u16, u16)>,
    /// Whether the container's stdin is a terminal.
    tty: bool,
}

/// Probes the input slot (setting the window size); `None` when another client has it.
fn probe_input(socket: &Path, options: &Options) -> Result<Option<Target>, ClientError> {
    let stdin = io::stdin();
    let local_tty = tty::is_terminal(stdin.as_fd());
    let size = if local_tty {
        tty::window_size(stdin.as_fd()).ok()
    } else {
        None
    };
    let tty = match client::probe(socket, size) {
        Ok(Probe::Tty) => true,
        Ok(Probe::Pipe) => false,
        Ok(Probe::Free) => options.tty_hint.unwrap_or(false),
        Err(ClientError::Refused { status: 409, .. }) => {
            eprintln!("switchboard: another client is attached to the container's stdin; showing output only");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    Ok(Some(Target { local_tty, size, tty }))
}

/// The input request's connection, made again when it drops while the container runs
/// (as the output's is).
struct InputLink {
    socket: PathBuf,
    /// The connection records go to; `None` once it could not be made again.
    stream: Mutex<Option<InputStream>>,
    /// Bumped at every new connection.
    generation: AtomicU64,
    /// The window size last sent: a new connection sends it first.
    size: Mutex<Option<ProcessIo>>,
    detached: Arc<AtomicBool>,
    raw: Arc<Mutex<Option<RawMode>>>,
    /// Stops the output (on detach).
    output: Stop,
}

impl InputLink {
    /// Sends a record, waiting for a new connection if this one dropped; the record is
    /// dropped if none comes.
    fn send(&self, pio: ProcessIo) {
        if is_resize(&pio) {
            *self.size.lock().unwrap() = Some(pio.clone());
        }
        let deadline = std::time::Instant::now() + client::RECONNECT_FOR + Duration::from_secs(1);
        loop {
            let generation = self.generation.load(Ordering::SeqCst);
            match self.stream.lock().unwrap().as_mut().map(|s| s.send(pio.clone())) {
                Some(Ok(())) | None => return,
                Some(Err(_)) => {}
            }
            while self.generation.load(Ordering::SeqCst) == generation {
                if std::time::Instant::now() >= deadline || self.stream.lock().unwrap().is_none() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// A new connection after `error` dropped the last one; `None` if none could be made
    /// (the link is then gone).
    fn reconnect(&self, error: &ClientError) -> Option<InputStream> {
        let deadline = std::time::Instant::now() + client::RECONNECT_FOR;
        let made = loop {
            match InputStream::open(&self.socket) {
                Ok(mut s) => {
                    let size = self.size.lock().unwrap().clone();
                    match size.map_or(Ok(()), |pio| s.send(pio)) {
                        Ok(()) => break Ok(s),
                        Err(e) => break Err(ClientError::Io(e)),
                    }
                }
                // (A 409: the server may not have seen the old connection go yet.)
                Err(
                    ClientError::NoServer { .. }
                    | ClientError::Gone
                    | ClientError::Io(_)
                    | ClientError::Refused { status: 409, .. },
                ) if std::time::Instant::now() < deadline && !self.detached.load(Ordering::SeqCst) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => break Err(e),
            }
        };
        let mut current = self.stream.lock().unwrap();
        match made.and_then(|s| Ok((s.try_clone()?, s))) {
            Ok((answer, s)) => {
                *current = Some(s);
                self.generation.fetch_add(1, Ordering::SeqCst);
                Some(answer)
            }
            Err(e) => {
                *current = None;
                if !self.detached.load(Ordering::SeqCst) {
                    note(
                        &self.raw,
                        &format!("input: the connection dropped ({error}) and could not be made again: {e}"),
                    );
                }
                None
            }
        }
    }

    /// Ends the body of the current connection.
    fn end(&self) {
        if let Some(s) = self.stream.lock().unwrap().as_mut() {
            let _ = s.end();
        }
    }
}

fn is_resize(pio: &ProcessIo) -> bool {
    pio.control.as_ref().is_some_and(|c| c.tty_info.is_some())
}

fn start_input(
    socket: &Path,
    options: &Options,
    target: Target,
    raw: &Arc<Mutex<Option<RawMode>>>,
    detached: &Arc<AtomicBool>,
    output: Stop,
) -> Result<InputSide, ClientError> {
    let Target {
        local_tty,
        size,
        tty: target_tty,
    } = target;
    let stdin = io::stdin();
    let mut input = InputStream::open(socket)?;
    let resize = size
        .filter(|_| local_tty && target_tty)
        .map(|(rows, columns)| client::resize(rows, columns));
    if let Some(pio) = &resize {
        input.send(pio.clone())?;
    }
    if local_tty && target_tty {
        *raw.lock().unwrap() = Some(RawMode::enable(stdin.as_fd())?);
    }
    // The response can come before we end the body (after the container's output ended,
    // or a refusal): read it whenever it comes, and acknowledge it at once, or the
    // switchboard would wait for us before ending the output.
    let answer = input.try_clone()?;
    let link = Arc::new(InputLink {
        socket: socket.to_path_buf(),
        stream: Mutex::new(Some(input)),
        generation: AtomicU64::new(0),
        size: Mutex::new(resize),
        detached: detached.clone(),
        raw: raw.clone(),
        output,
    });
    let (tx, rx) = mpsc::channel::<ToWriter>();
    {
        let link = link.clone();
        std::thread::spawn(move || watch_answers(answer, &link));
    }
    {
        let link = link.clone();
        std::thread::spawn(move || write_records(&link, rx));
    }
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            while tx.send(ToWriter::Record(client::heartbeat(HEARTBEAT))).is_ok() {
                std::thread::sleep(HEARTBEAT);
            }
        });
    }
    {
        let tx = tx.clone();
        let keys = if local_tty && target_tty {
            options.detach_keys.clone()
        } else {
            Vec::new()
        };
        std::thread::spawn(move || read_stdin(tx, keys, target_tty, &link));
    }
    Ok(InputSide { records: tx })
}

/// Waits for each input connection's answer, acknowledges it, and says what a refusal
/// was; a connection that drops without an answer while we are attached is made again.
/// After a detach, the answer to the ended body comes first, then the output stops.
fn watch_answers(mut answer: InputStream, link: &InputLink) {
    loop {
        let result = answer.response();
        let _ = client::acknowledge(&link.socket);
        match result {
            Err(e @ (ClientError::Gone | ClientError::Io(_))) if !link.detached.load(Ordering::SeqCst) => {
                if let Some(next) = link.reconnect(&e) {
                    answer = next;
                    continue;
                }
            }
            // A refusal is news; a 503 means the switchboard is finishing, which the
            // output stream tells on its own.
            Err(ClientError::Refused { status, body }) if status != 503 => {
                let e = ClientError::Refused { status, body };
                note(&link.raw, &format!("input: {e}"));
            }
            _ => {}
        }
        if link.detached.load(Ordering::SeqCst) {
            link.output.stop();
        }
        return;
    }
}

/// Sends the records in order, then the end of the body.
fn write_records(link: &InputLink, rx: mpsc::Receiver<ToWriter>) {
    for msg in rx {
        match msg {
            ToWriter::Record(pio) => link.send(pio),
            ToWriter::End => {
                link.end();
                return;
            }
        }
    }
}

/// Reads this process's stdin into STDIN records, watching for the detach keys.
fn read_stdin(tx: mpsc::Sender<ToWriter>, keys: Vec<u8>, target_tty: bool, link: &InputLink) {
    let stdin = io::stdin();
    let mut lock = stdin.lock();
    let mut buf = [0u8; 4096];
    // How much of the detach sequence the bytes held back so far match.
    let mut matched = 0usize;
    loop {
        let n = if matched > 0 {
            // A partial sequence: wait briefly for the rest, else let the keys through.
            let mut fds = [PollFd::new(lock.as_fd(), PollFlags::POLLIN)];
            let ready = poll(
                &mut fds,
                PollTimeout::try_from(DETACH_PAUSE).unwrap_or(PollTimeout::NONE),
            )
            .unwrap_or(0);
            if ready == 0 {
                let _ = tx.send(ToWriter::Record(client::stdin(&keys[..matched])));
                matched = 0;
                continue;
            }
            lock.read(&mut buf)
        } else {
            lock.read(&mut buf)
        };
        let n = match n {
            Ok(0) | Err(_) => {
                // End of input: EOT on a terminal (the line discipline makes it EOF), an
                // empty DATA record on a pipe (the switchboard closes it).
                let end = if target_tty {
                    client::stdin(&[4])
                } else {
                    client::stdin(&[])
                };
                let _ = tx.send(ToWriter::Record(end));
                let _ = tx.send(ToWriter::End);
                return;
            }
            Ok(n) => n,
        };
        let mut out = Vec::with_capacity(n + matched);
        for &b in &buf[..n] {
            if !keys.is_empty() && b == keys[matched] {
                matched += 1;
                if matched == keys.len() {
                    if !out.is_empty() {
                        let _ = tx.send(ToWriter::Record(client::stdin(&out)));
                    }
                    link.detached.store(true, Ordering::SeqCst);
                    let _ = tx.send(ToWriter::End);
                    // The answer to the ended body stops the output; with no input
                    // connection left, nothing will answer.
                    if link.stream.lock().unwrap().is_none() {
                        link.output.stop();
                    }
                    return;
                }
                continue;
            }
            // Not the sequence after all: what was held goes through first.
            out.extend_from_slice(&keys[..matched]);
            matched = 0;
            if !keys.is_empty() && b == keys[0] {
                matched = 1;
            } else {
                out.push(b);
            }
        }
        if !out.is_empty() && tx.send(ToWriter::Record(client::stdin(&out))).is_err() {
            return;
        }
    }
}

fn handle_signals(mask: SigSet, raw: Arc<Mutex<Option<RawMode>>>, resize: Option<mpsc::Sender<ToWriter>>) {
    loop {
        let Ok(signal) = mask.wait() else { return };
        if signal == Signal::SIGWINCH {
            if let Some(tx) = &resize
                && raw.lock().unwrap().is_some()
                && let Ok((rows, columns)) = tty::window_size(io::stdin().as_fd())
            {
                let _ = tx.send(ToWriter::Record(client::resize(rows, columns)));
            }
            continue;
        }
        if let Some(r) = raw.lock().unwrap().take() {
            r.restore();
        }
        std::process::exit(128 + signal as i32);
    }
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
    fn detach_key_specs() {
        assert_eq!(parse_detach_keys("ctrl-p,ctrl-q"), Ok(vec![0x10, 0x11]));
        assert_eq!(parse_detach_keys("ctrl-a,d"), Ok(vec![0x01, b'd']));
        assert_eq!(parse_detach_keys(""), Ok(vec![]));
        assert!(parse_detach_keys("ctrl-1").is_err());
        assert!(parse_detach_keys("alt-x").is_err());
    }
}
