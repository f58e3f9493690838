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

use super::{ClientError, OutputStream};
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
    /// `--from`'s position is older than what the server kept: the stream starts
    /// `skipped` bytes later.
    StartedLater { skipped: u64 },
}

/// The container's output, followed across dropped connections.
pub struct Follower {
    socket: PathBuf,
    stream: OutputStream,
    /// The live connection, for [`Follower::shutdown_handle`]'s holders to stop.
    current: Arc<Mutex<Option<UnixStream>>>,
    /// While the backlog of a `Lines` start is read: up to where, and what it holds.
    tail: Option<(u64, TailLines)>,
    ready: VecDeque<Piece>,
    /// Set when the stream must end at the next error (the owner stops it).
    stopping: Arc<AtomicBool>,
}

impl Follower {
    /// Attaches at `from`.
    pub fn open(socket: &Path, from: Begin) -> Result<Follower, ClientError> {
        let at = match from {
            Begin::Live => StartAt::Live,
            Begin::Kept | Begin::Lines(_) => StartAt::Position(0),
            Begin::Position(p) => StartAt::Position(p),
        };
        let stream = OutputStream::open_at(socket, at)?;
        let mut ready = VecDeque::new();
        let mut tail = None;
        if let Some(l) = stream.located() {
            match from {
                Begin::Position(_) if l.skipped > 0 => ready.push_back(Piece::StartedLater { skipped: l.skipped }),
                Begin::Lines(n) if l.newest > l.position => tail = Some((l.newest, TailLines::new(n))),
                _ => {}
            }
        }
        let current = Arc::new(Mutex::new(Some(stream.shutdown_handle()?)));
        Ok(Follower {
            socket: socket.to_path_buf(),
            stream,
            current,
            tail,
            ready,
            stopping: Default::default(),
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

    /// The position of the next byte; `None` from a server without positions.
    pub fn position(&self) -> Option<u64> {
        self.stream.position()
    }

    /// The next piece, or `None` at the clean end of the output.
    pub fn next_piece(&mut self) -> Result<Option<Piece>, ClientError> {
        loop {
            if let Some(p) = self.ready.pop_front() {
                return Ok(Some(p));
            }
            let before = self.stream.position();
            let pio = match self.stream.next_record() {
                Ok(Some(pio)) => pio,
                Ok(None) => return Ok(None),
                Err(e) => {
                    self.resume(e)?;
                    continue;
                }
            };
            let Some(data) = pio.data else { continue };
            let stderr = data.r#type == Some(process_io::data::Type::Stderr as i32);
            let mut bytes = data.data.unwrap_or_default();
            if let (Some((end, tail)), Some(at)) = (&mut self.tail, before) {
                // The backlog goes to the tail; the first newer byte ends it.
                let backlog = (end.saturating_sub(at) as usize).min(bytes.len());
                let rest = bytes.split_off(backlog);
                tail.push(stderr, bytes);
                if at + backlog as u64 >= *end {
                    let (_, tail) = self.tail.take().expect("matched above");
                    self.ready.extend(
                        tail.finish()
                            .into_iter()
                            .map(|(stderr, data)| Piece::Output { stderr, data }),
                    );
                }
                bytes = rest;
            }
            if !bytes.is_empty() {
                self.ready.push_back(Piece::Output { stderr, data: bytes });
            }
        }
    }

    /// After the connection failed with `error`: attaches again at the next byte's
    /// position, trying for [`RECONNECT_FOR`]; the error itself when there is no position
    /// to resume from, or the follower was stopped.
    fn resume(&mut self, error: ClientError) -> Result<(), ClientError> {
        let flag = self.stopping.clone();
        let stopping = || flag.load(Ordering::SeqCst);
        let (Some(position), Some(instance)) = (
            self.stream.position(),
            self.stream.located().map(|l| l.instance.clone()),
        ) else {
            return Err(error);
        };
        if stopping() || !matches!(error, ClientError::Gone | ClientError::Io(_)) {
            return Err(error);
        }
        let deadline = Instant::now() + RECONNECT_FOR;
        let mut pause = Duration::from_millis(20);
        let (stream, piece) = loop {
            let attempt = OutputStream::open_at(&self.socket, StartAt::Position(position));
            let restarted = match &attempt {
                Ok(s) => s.located().is_none_or(|l| l.instance != instance),
                // Positions past the newest output: another server.
                Err(ClientError::Refused { status: 400, body }) => body.contains("past the newest output"),
                Err(_) => false,
            };
            match attempt {
                _ if restarted => {
                    let stream = OutputStream::open_at(&self.socket, StartAt::Position(0))?;
                    break (
                        stream,
                        Piece::Resumed {
                            skipped: 0,
                            restarted: true,
                        },
                    );
                }
                Ok(stream) => {
                    let skipped = stream.located().map_or(0, |l| l.skipped);
                    break (
                        stream,
                        Piece::Resumed {
                            skipped,
                            restarted: false,
                        },
                    );
                }
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
        // A stop that came while we were connecting also stops this connection.
        *self.current.lock().unwrap() = Some(stream.shutdown_handle()?);
        if stopping() {
            let _ = stream.shutdown_handle()?.shutdown(std::net::Shutdown::Both);
        }
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
    pieces: VecDeque<(bool, Vec<u8>)>,
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
        self.newlines += newlines(&data);
        self.bytes += data.len();
        self.pieces.push_back((stderr, data));
        // A front piece goes once the rest has more newlines than lines are wanted: the
        // last lines start after one of those.
        while let Some((_, front)) = self.pieces.front() {
            let n = newlines(front);
            if self.newlines - n <= self.lines && self.bytes - front.len() < TAIL_MAX_BYTES {
                break;
            }
            self.newlines -= n;
            self.bytes -= front.len();
            self.pieces.pop_front();
        }
    }

    /// The pieces of the last lines.
    fn finish(mut self) -> VecDeque<(bool, Vec<u8>)> {
        let ends_a_line = self.pieces.back().is_none_or(|(_, d)| d.ends_with(b"\n"));
        let lines = self.newlines + u64::from(!ends_a_line);
        if self.lines >= lines {
            return self.pieces;
        }
        // Skip past the newline that ends the first line not wanted.
        let mut skip = lines - self.lines;
        while let Some((stderr, data)) = self.pieces.pop_front() {
            let n = newlines(&data);
            if n < skip {
                skip -= n;
                continue;
            }
            let (at, _) = data
                .iter()
                .enumerate()
                .filter(|&(_, &b)| b == b'\n')
                .nth((skip - 1) as usize)
                .expect("counted");
            if at + 1 < data.len() {
                self.pieces.push_front((stderr, data[at + 1..].to_vec()));
            }
            break;
        }
        self.pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let kept: Vec<_> = t.finish().into_iter().collect();
        assert_eq!(
            kept,
            vec![(true, b"line 998\n".to_vec()), (false, b"line 999\n".to_vec())]
        );
    }
}
