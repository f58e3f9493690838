//! The input side of an attachment: the probe that learns whether the container has a
//! terminal (and sets the window size), the input request's connection (made again when
//! it drops), the writer of its records, the reader of this terminal that watches for
//! the detach keys, and the watcher of the request's answer.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};

use super::{DETACH_PAUSE, HEARTBEAT, Options, note};
use crate::client::{self, ClientError, InputStream, Probe, Stop, Terminal};
use crate::tty::{self, RawMode};
use crate::wire::message::mesos::agent::ProcessIo;

/// Messages to the input writer.
pub(super) enum ToWriter {
    Record(ProcessIo),
    /// End the body (stdin ended, or the detach keys).
    End,
}

pub(super) struct InputSide {
    pub records: mpsc::Sender<ToWriter>,
}

/// What the probe learned of the input side.
pub(super) struct Target {
    /// Whether this process's stdin is a terminal.
    pub local_tty: bool,
    /// Its window size, when it is.
    pub size: Option<(u16, u16)>,
    /// Whether the container's stdin is a terminal.
    pub tty: bool,
}

/// Probes the input slot (setting the window size); `None` when another client has it.
pub(super) fn probe_input(
    socket: &Path,
    options: &Options,
    terminal: &Terminal,
) -> Result<Option<Target>, ClientError> {
    let stdin = io::stdin();
    let local_tty = tty::is_terminal(stdin.as_fd());
    let size = if local_tty {
        tty::window_size(stdin.as_fd()).ok()
    } else {
        None
    };
    let tty = match client::probe(socket, size, terminal) {
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
    /// The terminal our requests name.
    terminal: Terminal,
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
            match InputStream::open_as(&self.socket, &self.terminal) {
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

#[allow(clippy::too_many_arguments)] // One attachment's input side, as attach hands it over.
pub(super) fn start_input(
    socket: &Path,
    options: &Options,
    target: Target,
    terminal: &Terminal,
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
    let mut input = InputStream::open_as(socket, terminal)?;
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
        terminal: terminal.clone(),
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

/// Restores the terminal and exits on the fatal signals; turns SIGWINCH into a resize
/// record.
pub(super) fn handle_signals(mask: SigSet, raw: Arc<Mutex<Option<RawMode>>>, resize: Option<mpsc::Sender<ToWriter>>) {
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
