//! Following a container's output across dropped connections: where to start (the newest
//! output, a position, the last lines of what the server kept), and, when the connection
//! drops while the container runs (a cut, a restarted server), attaching again at the
//! position of the next byte, so nothing arrives twice and nothing is missed that the
//! server still has (docs/protocol.md §10.8).

use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{ClientError, OutputStream, Terminal};
use crate::wire::media::StartAt;
use crate::wire::message::mesos::agent::process_io;

/// How long a dropped connection is tried again before the follower gives up.
pub const RECONNECT_FOR: Duration = Duration::from_secs(5);

/// At most this much output is held while looking for the last lines of the history (a
/// history without newlines is cut to its last bytes).
const TAIL_MAX_BYTES: usize = 64 << 20;

/// Where a follower starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// At the newest output.
    Live,
    /// At the oldest output the server kept.
    Kept,
    /// At the start of the last this many lines the server kept (counted over stdout and
    /// stderr together, in the order they were written).
    Lines(u64),
    /// At this position.
    Position(u64),
}

/// What a follower returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Output bytes, of stderr or stdout.
    Output { stderr: bool, data: Vec<u8> },
    /// The connection dropped and a new one continues the stream. `skipped` bytes were
    /// lost: the server no longer had them. `restarted` says that it is another server
    /// (its positions are not the old one's): it starts at its oldest output, and what
    /// the old server wrote after the drop is unknown.
    Resumed { skipped: u64, restarted: bool },
    /// A `Position` start older than what the server kept: the stream starts `skipped`
    /// bytes later.
    StartedLater { skipped: u64 },
    /// The server keeps no positions (Mesos's): it starts at the newest output, whatever
    /// was asked, and a dropped connection ends the stream.
    NoPositions,
    /// Bytes that redraw the terminal's screen as the output before the stream's start
    /// made it (first, when the follower was opened with [`Follower::open_terminal`] on a
    /// server that keeps a screen model).
    Screen { data: Vec<u8> },
}

/// The container's output, followed across dropped connections.
pub struct Follower {
    socket: PathBuf,
    stream: OutputStream,
    /// The server that numbered the positions, when it said.
    instance: Option<String>,
    /// The live connection, for [`Follower::stopper`]'s holders to stop.
    current: Arc<Mutex<Option<UnixStream>>>,
    /// While the backlog of a `Lines` start is read: up to where, and what it holds.
    tail: Option<(u64, TailLines)>,
    ready: VecDeque<Piece>,
    /// Output bytes in `ready`.
    ready_bytes: u64,
    /// Why the stream failed, once what came before is returned.
    failed: Option<ClientError>,
    ended: bool,
    /// Since the connection last dropped without output coming after: until when to
    /// keep trying, and the pause before the next try.
    retry: Option<(Instant, Duration)>,
    /// Set when the stream must end at the next error (the owner stops it).
    stopping: Arc<AtomicBool>,
    /// The terminal it attached from, said again on every connection.
    terminal: Terminal,
}

impl Follower {
    /// Attaches at `from`.
    pub fn open(socket: &Path, from: Begin) -> Result<Follower, ClientError> {
        let at = match from {
            Begin::Live => StartAt::Live,
            Begin::Kept | Begin::Lines(_) => StartAt::Position(0),
            Begin::Position(p) => StartAt::Position(p),
        };
        Follower::with(socket, from, OutputStream::open_at(socket, at)?)
    }

    /// Attaches at the newest output from `terminal`: a TTY container's server sets its
    /// terminal to that size and starts with a [`Piece::Screen`] redraw (see
    /// [`OutputStream::open_terminal`]). A connection made again after a drop says the
    /// terminal again (its window counts again), and asks for no redraw.
    pub fn open_terminal(socket: &Path, terminal: Terminal) -> Result<Follower, ClientError> {
        let mut f = Follower::with(socket, Begin::Live, OutputStream::open_terminal(socket, &terminal)?)?;
        f.terminal = terminal;
        Ok(f)
    }

    /// Whether the stream starts with a redraw of the screen (a [`Piece::Screen`]).
    pub fn redraw_first(&self) -> bool {
        self.stream.redraw_first()
    }

    fn with(socket: &Path, from: Begin, stream: OutputStream) -> Result<Follower, ClientError> {
        let mut ready = VecDeque::new();
        let mut tail = None;
        match (stream.located(), from) {
            (None, Begin::Lines(_) | Begin::Position(_)) => ready.push_back(Piece::NoPositions),
            (Some(l), Begin::Position(_)) if l.skipped > 0 => {
                ready.push_back(Piece::StartedLater { skipped: l.skipped })
            }
            (Some(l), Begin::Lines(n)) if l.newest > l.position => tail = Some((l.newest, TailLines::new(n))),
            _ => {}
        }
        let current = Arc::new(Mutex::new(Some(stream.shutdown_handle()?)));
        Ok(Follower {
            socket: socket.to_path_buf(),
            instance: stream.located().map(|l| l.instance.clone()),
            stream,
            current,
            tail,
            ready,
            ready_bytes: 0,
            failed: None,
            ended: false,
            retry: None,
            stopping: Default::default(),
            terminal: Terminal::default(),
        })
    }

    /// A handle that stops the follower from another thread: [`Stop::stop`] shuts the
    /// connection down, and [`Follower::next_piece`] then fails instead of reconnecting.
    pub fn stopper(&self) -> Stop {
        Stop {
            current: self.current.clone(),
            stopping: self.stopping.clone(),
        }
    }

    /// The position of the next byte this follower will return (bytes it holds, such
    /// as the backlog of a `Lines` start, are not returned yet); `None` from a server
    /// without positions.
    pub fn position(&self) -> Option<u64> {
        let held = self.ready_bytes + self.tail.as_ref().map_or(0, |(_, t)| t.bytes as u64);
        Some(self.stream.position()?.saturating_sub(held))
    }

    /// The next piece, or `None` at the clean end of the output.
    pub fn next_piece(&mut self) -> Result<Option<Piece>, ClientError> {
        loop {
            if let Some(p) = self.ready.pop_front() {
                if let Piece::Output { data, .. } = &p {
                    self.ready_bytes -= data.len() as u64;
                }
                return Ok(Some(p));
            }
            if let Some(e) = self.failed.take() {
                return Err(e);
            }
            if self.ended {
                return Ok(None);
            }
            let before = self.stream.position();
            let pio = match self.stream.next_record_or_redraw() {
                Ok(Some((pio, true))) => {
                    let data = pio.data.and_then(|d| d.data).unwrap_or_default();
                    self.ready.push_back(Piece::Screen { data });
                    continue;
                }
                Ok(Some((pio, false))) => pio,
                Ok(None) => {
                    self.flush_tail();
                    self.ended = true;
                    continue;
                }
                Err(e) => {
                    if let Err(e) = self.resume(e) {
                        if !self.stopping.load(Ordering::SeqCst) {
                            self.flush_tail();
                        }
                        self.failed = Some(e);
                    }
                    continue;
                }
            };
            let Some(data) = pio.data else { continue };
            let stderr = data.r#type == Some(process_io::data::Type::Stderr as i32);
            let mut bytes = data.data.unwrap_or_default();
            if !bytes.is_empty() {
                self.retry = None;
            }
            if let (Some((end, tail)), Some(at)) = (&mut self.tail, before) {
                // The backlog goes to the tail; the first newer byte ends it.
                let backlog = (end.saturating_sub(at) as usize).min(bytes.len());
                let rest = bytes.split_off(backlog);
                tail.push(stderr, bytes);
                if at.saturating_add(backlog as u64) >= *end {
                    self.flush_tail();
                }
                bytes = rest;
            }
            self.push_output(stderr, bytes);
        }
    }

    fn push_output(&mut self, stderr: bool, data: Vec<u8>) {
        if !data.is_empty() {
            self.ready_bytes += data.len() as u64;
            self.ready.push_back(Piece::Output { stderr, data });
        }
    }

    /// The last lines of the backlog held so far go out.
    fn flush_tail(&mut self) {
        if let Some((_, tail)) = self.tail.take() {
            for (stderr, data) in tail.finish() {
                self.push_output(stderr, data);
            }
        }
    }

    /// After the connection failed with `error`: attaches again at the next byte's
    /// position, trying for [`RECONNECT_FOR`] from the first drop that no output
    /// followed; the error itself when there is no position to resume from, or the
    /// follower was stopped.
    fn resume(&mut self, error: ClientError) -> Result<(), ClientError> {
        let flag = self.stopping.clone();
        let stopping = || flag.load(Ordering::SeqCst);
        let (Some(position), Some(instance)) = (self.stream.position(), self.instance.clone()) else {
            return Err(error);
        };
        if stopping() || !matches!(error, ClientError::Gone | ClientError::Io(_)) {
            return Err(error);
        }
        // A connection that drops again before any output came waits a little first.
        let again = self.retry.is_some();
        let (deadline, pause) = self
            .retry
            .get_or_insert((Instant::now() + RECONNECT_FOR, Duration::from_millis(20)));
        let (deadline, mut pause) = (*deadline, *pause);
        if again {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(1));
        }
        let mut at = StartAt::Position(position);
        let mut restarted = false;
        let stream = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let limit = Some(left.max(Duration::from_millis(100)));
            let attempt = OutputStream::open_asking(&self.socket, at, false, &self.terminal, limit);
            let other = match &attempt {
                Ok(s) => !restarted && s.located().is_none_or(|l| l.instance != instance),
                // Positions past the newest output: another server.
                Err(ClientError::Refused { status: 400, body }) => body.contains("past the newest output"),
                Err(_) => false,
            };
            match attempt {
                // Another server: its oldest output, on a connection of its own.
                _ if other && !restarted => {
                    (at, restarted) = (StartAt::Position(0), true);
                    continue;
                }
                Ok(stream) => break stream,
                Err(ClientError::NoServer { .. } | ClientError::Gone | ClientError::Io(_)) => {
                    // Nobody answers: the switchboard went away, unless one comes back.
                    if Instant::now() + pause >= deadline || stopping() {
                        return Err(error);
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        };
        self.retry = Some((deadline, pause));
        // A stop that came while we were connecting also stops this connection.
        *self.current.lock().unwrap() = Some(stream.shutdown_handle()?);
        if stopping() {
            let _ = stream.shutdown_handle()?.shutdown(std::net::Shutdown::Both);
        }
        let piece = match restarted {
            true => {
                // What the old server's backlog held goes out before the note.
                self.flush_tail();
                self.instance = stream.located().map(|l| l.instance.clone());
                Piece::Resumed {
                    skipped: 0,
                    restarted: true,
                }
            }
            false => Piece::Resumed {
                skipped: stream.located().map_or(0, |l| l.skipped),
                restarted: false,
            },
        };
        self.stream = stream;
        self.ready.push_back(piece);
        Ok(())
    }
}

/// Stops a [`Follower`] from another thread.
#[derive(Clone)]
pub struct Stop {
    current: Arc<Mutex<Option<UnixStream>>>,
    stopping: Arc<AtomicBool>,
}

impl Stop {
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(s) = self.current.lock().unwrap().as_ref() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The last lines of a backlog, held while it is read: whole pieces that the last lines
/// cannot reach are let go as more come.
#[derive(Debug)]
struct TailLines {
    lines: u64,
    /// Pieces of output: stream, bytes, and the newlines in them.
    pieces: VecDeque<(bool, Vec<u8>, u64)>,
    newlines: u64,
    bytes: usize,
}

fn newlines(data: &[u8]) -> u64 {
    data.iter().filter(|&&b| b == b'\n').count() as u64
}

impl TailLines {
    fn new(lines: u64) -> TailLines {
        TailLines {
            lines,
            pieces: VecDeque::new(),
            newlines: 0,
            bytes: 0,
        }
    }

    fn push(&mut self, stderr: bool, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        let n = newlines(&data);
        self.newlines += n;
        self.bytes += data.len();
        self.pieces.push_back((stderr, data, n));
        // A front piece goes once the rest has more newlines than lines are wanted: the
        // last lines start after one of those.
        while let Some((_, front, n)) = self.pieces.front() {
            if self.newlines - n <= self.lines && self.bytes - front.len() < TAIL_MAX_BYTES {
                break;
            }
            self.newlines -= n;
            self.bytes -= front.len();
            self.pieces.pop_front();
        }
    }

    /// The pieces of the last lines.
    fn finish(mut self) -> Vec<(bool, Vec<u8>)> {
        let ends_a_line = self.pieces.back().is_none_or(|(_, d, _)| d.ends_with(b"\n"));
        let lines = self.newlines + u64::from(!ends_a_line);
        // Past the newline that ends the first line not wanted, if any.
        let mut skip = lines.saturating_sub(self.lines);
        while skip > 0
            && let Some((stderr, data, n)) = self.pieces.pop_front()
        {
            if n < skip {
                skip -= n;
                continue;
            }
            let at = data
                .iter()
                .enumerate()
                .filter(|&(_, &b)| b == b'\n')
                .nth((skip - 1) as usize)
                .map_or(data.len(), |(at, _)| at + 1);
            if at < data.len() {
                self.pieces.push_front((stderr, data[at..].to_vec(), 0));
            }
            skip = 0;
        }
        self.pieces
            .into_iter()
            .map(|(stderr, data, _)| (stderr, data))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    use super::*;
    use crate::wire::message::mesos::agent::ProcessIo;
    use crate::wire::message::mesos::agent::process_io::{Data, Type, data};
    use crate::wire::message::{self, Format};

    /// One DATA record as a chunk of an output response.
    fn chunk(stderr: bool, payload: &str) -> Vec<u8> {
        let kind = if stderr { data::Type::Stderr } else { data::Type::Stdout };
        let pio = ProcessIo {
            r#type: Some(Type::Data as i32),
            data: Some(Data {
                r#type: Some(kind as i32),
                data: Some(payload.as_bytes().to_vec()),
            }),
            control: None,
        };
        let rec = message::record(Format::Protobuf, &pio);
        [format!("{:x}\r\n", rec.len()).as_bytes(), &rec, b"\r\n"].concat()
    }

    /// A server that answers each connection in turn with the next of `answers` (a head's
    /// extra fields, and a body), then closes it; it returns the request heads it got.
    fn fake_server(path: &Path, answers: Vec<(String, Vec<u8>)>) -> std::thread::JoinHandle<Vec<String>> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let mut heads = Vec::new();
            for (fields, body) in answers {
                let (mut s, _) = listener.accept().unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).unwrap();
                    req.extend_from_slice(&buf[..n]);
                }
                heads.push(String::from_utf8_lossy(&req).into_owned());
                let head = format!("HTTP/1.1 200 OK\r\n{fields}Transfer-Encoding: chunked\r\n\r\n");
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(&body);
            }
            heads
        })
    }

    fn located(position: u64, newest: u64, instance: &str) -> String {
        format!(
            "Switchboard-Position: {position}\r\nSwitchboard-Newest: {newest}\r\nSwitchboard-Instance: {instance}\r\n"
        )
    }

    fn out(stderr: bool, data: &str) -> Piece {
        Piece::Output {
            stderr,
            data: data.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_tail_ends_inside_a_record_and_another_server_starts_over() {
        let path = std::env::temp_dir().join(format!("sb-follow-{}", std::process::id()));
        // The backlog is 10 bytes, "abc\nde" and "f\ngh" (the second record goes on
        // with new output); the connection drops; the server that answers next is
        // another (its instance differs): the follower starts over at its oldest byte.
        let server = fake_server(
            &path,
            vec![
                (
                    located(0, 10, "a"),
                    [chunk(false, "abc\nde"), chunk(true, "f\ngh\nij")].concat(),
                ),
                (located(13, 20, "b"), chunk(false, "zzz")),
                (
                    located(0, 3, "b"),
                    [chunk(false, "xyz"), b"0\r\n\r\n".to_vec()].concat(),
                ),
            ],
        );
        let mut f = Follower::open(&path, Begin::Lines(1)).unwrap();
        let mut got = Vec::new();
        while let Some(p) = f.next_piece().unwrap() {
            got.push(p);
        }
        assert_eq!(
            got,
            vec![
                out(true, "gh"),
                out(true, "\nij"),
                Piece::Resumed {
                    skipped: 0,
                    restarted: true
                },
                out(false, "xyz"),
            ]
        );
        assert_eq!(f.position(), Some(3));
        let heads = server.join().unwrap();
        assert!(heads[0].contains("Switchboard-From: 0\r\n"), "{}", heads[0]);
        assert!(heads[1].contains("Switchboard-From: 13\r\n"), "{}", heads[1]);
        assert!(heads[2].contains("Switchboard-From: 0\r\n"), "{}", heads[2]);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn without_positions_a_drop_ends_the_stream() {
        let path = std::env::temp_dir().join(format!("sb-follow-mesos-{}", std::process::id()));
        let server = fake_server(&path, vec![(String::new(), chunk(false, "live"))]);
        let mut f = Follower::open(&path, Begin::Lines(5)).unwrap();
        assert_eq!(f.next_piece().unwrap(), Some(Piece::NoPositions));
        assert_eq!(f.next_piece().unwrap(), Some(out(false, "live")));
        assert!(matches!(f.next_piece(), Err(ClientError::Gone)));
        assert_eq!(f.position(), None);
        server.join().unwrap();
        let _ = std::fs::remove_file(&path);
    }

    fn tail(lines: u64, pieces: &[&str]) -> String {
        let mut t = TailLines::new(lines);
        for p in pieces {
            t.push(false, p.as_bytes().to_vec());
        }
        t.finish()
            .into_iter()
            .map(|(_, d)| String::from_utf8(d).unwrap())
            .collect()
    }

    #[test]
    fn the_last_lines() {
        assert_eq!(tail(2, &["a\nb\n", "c\n"]), "b\nc\n");
        assert_eq!(tail(2, &["a\nb", "\nc"]), "b\nc");
        assert_eq!(tail(1, &["a\nb\nc\n"]), "c\n");
        assert_eq!(tail(5, &["a\nb\n"]), "a\nb\n");
        assert_eq!(tail(0, &["a\nb\n"]), "");
        assert_eq!(tail(0, &["a\nb"]), "");
        assert_eq!(tail(1, &["no newline at all"]), "no newline at all");
        assert_eq!(tail(3, &["1\n2\n3\n4\n5\n", "6", "\n7\n"]), "5\n6\n7\n");
        assert_eq!(tail(2, &[]), "");
    }

    #[test]
    fn pieces_the_last_lines_cannot_reach_are_let_go() {
        let mut t = TailLines::new(2);
        for i in 0..1000 {
            t.push(i % 2 == 0, format!("line {i}\n").into_bytes());
        }
        assert!(t.pieces.len() <= 3, "{}", t.pieces.len());
        let kept = t.finish();
        assert_eq!(
            kept,
            vec![(true, b"line 998\n".to_vec()), (false, b"line 999\n".to_vec())]
        );
    }
}
