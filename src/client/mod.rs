//! A client of the attach API on a switchboard's socket, over blocking unix sockets: the
//! output stream, the input stream, and the acknowledgement handshake (docs/protocol.md
//! §10-§12). It speaks protobuf records and works against any server of the protocol, Mesos's
//! included.

mod follow;
pub mod metrics;

pub use follow::{Begin, Follower, Piece, RECONNECT_FOR, Stop};

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::wire::http::{self, ChunkedDecoder, Limits};
use crate::wire::media::{self, StartAt};
use crate::wire::message::mesos::ContainerId;
use crate::wire::message::mesos::agent::call::{AttachContainerInput, attach_container_input};
use crate::wire::message::mesos::agent::process_io::{self, Control, Data, control};
use crate::wire::message::mesos::agent::{Call, ProcessIo, call};
use crate::wire::message::mesos::{TtyInfo, tty_info};
use crate::wire::message::{self, Format};
use crate::wire::recordio;

/// What went wrong talking to a switchboard.
#[derive(Debug)]
pub enum ClientError {
    /// Nothing to connect to at the path.
    NoServer { path: PathBuf, error: io::Error },
    /// The server answered a request with an error status.
    Refused { status: u16, body: String },
    /// The connection ended in the middle of a response.
    Gone,
    /// An I/O error on an established connection.
    Io(io::Error),
    /// The server sent something that is not the protocol.
    Protocol(String),
    /// The server at the path runs as another user (not root).
    Untrusted { path: PathBuf, uid: u32 },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::NoServer { path, error } => {
                write!(
                    f,
                    "no switchboard is listening at {}: {}",
                    path.display(),
                    crate::sys::strerror(error)
                )
            }
            ClientError::Refused { status: 409, .. } => {
                write!(f, "another client is attached to the container's stdin (409 Conflict)")
            }
            ClientError::Refused { status, body } => write!(f, "the switchboard refused the request: {status} {body}"),
            ClientError::Gone => write!(f, "the switchboard went away (its stream ended before its end)"),
            ClientError::Io(e) => write!(f, "{e}"),
            ClientError::Protocol(e) => write!(f, "the switchboard spoke no protocol we know: {e}"),
            ClientError::Untrusted { path, uid } => write!(
                f,
                "refusing {}: its server runs as uid {uid}, neither you nor root",
                path.display()
            ),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// Connects to the server at `socket`, which must run as this user or as root: another
/// user's server at that path (planted in a directory others can write to) would be
/// handed our keystrokes.
fn connect(socket: &Path) -> Result<UnixStream, ClientError> {
    let sock = UnixStream::connect(socket).map_err(|error| ClientError::NoServer {
        path: socket.to_path_buf(),
        error,
    })?;
    let peer = nix::sys::socket::getsockopt(&sock, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| ClientError::Io(e.into()))?;
    let me = nix::unistd::geteuid().as_raw();
    if peer.uid() != me && peer.uid() != 0 {
        return Err(ClientError::Untrusted {
            path: socket.to_path_buf(),
            uid: peer.uid(),
        });
    }
    Ok(sock)
}

/// A response head: status and headers (lower-case names).
pub type Head = crate::wire::http::ResponseHead;

/// Reads a response head, skipping interim 100 responses; bytes after it stay in `buf`.
pub fn read_head(sock: &mut UnixStream, buf: &mut Vec<u8>) -> Result<Head, ClientError> {
    loop {
        let parsed = http::parse_response_head(buf, 64 * 1024).map_err(|e| ClientError::Protocol(e.message))?;
        if let Some((head, n)) = parsed {
            buf.drain(..n);
            if head.status != 100 {
                return Ok(head);
            }
            continue;
        }
        let mut chunk = [0u8; 4096];
        match sock.read(&mut chunk)? {
            0 => return Err(ClientError::Gone),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads a fixed-length response body (errors are short texts).
fn read_body(sock: &mut UnixStream, head: &Head, mut buf: Vec<u8>) -> Result<String, ClientError> {
    let len: usize = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(1 << 20);
    while buf.len() < len {
        let mut chunk = [0u8; 4096];
        match sock.read(&mut chunk)? {
            0 => break,
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.truncate(len);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Where an output response starts, as the server said (docs/protocol.md §10.8). Mesos
/// says nothing of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The position of the first payload byte.
    pub position: u64,
    /// Bytes asked for that the server's history no longer had.
    pub skipped: u64,
    /// The position of the newest output when the response began.
    pub newest: u64,
    /// The server that numbered these positions.
    pub instance: String,
}

impl Located {
    fn from_head(head: &Head) -> Option<Located> {
        let number = |name: &str| {
            head.header(&name.to_ascii_lowercase())
                .and_then(|v| v.trim().parse().ok())
        };
        Some(Located {
            position: number(media::POSITION_HEADER)?,
            skipped: number(media::SKIPPED_HEADER).unwrap_or(0),
            newest: number(media::NEWEST_HEADER)?,
            instance: head.header(&media::INSTANCE_HEADER.to_ascii_lowercase())?.to_string(),
        })
    }
}

/// The container's output, record by record.
pub struct OutputStream {
    sock: UnixStream,
    buf: Vec<u8>,
    chunked: ChunkedDecoder,
    records: recordio::Decoder,
    pending: std::collections::VecDeque<Vec<u8>>,
    ended: bool,
    located: Option<Located>,
    /// The position of the next payload byte, when the server told where it started.
    position: Option<u64>,
    /// The first record is a redraw of the screen, not output (it has no position).
    redraw: bool,
}

/// The terminal a client attaches from (docs/protocol.md §10.9): its size, and a name
/// its output and input requests give, so that its input's resizes are its window's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Terminal {
    /// Rows and columns.
    pub window: Option<(u16, u16)>,
    pub name: Option<String>,
}

impl Terminal {
    /// A terminal of `window` with a random name.
    pub fn named(window: Option<(u16, u16)>) -> Terminal {
        // (Without the kernel's randomness, our process is unique enough on this host.)
        let name = crate::sys::random_hex(8).unwrap_or_else(|_| format!("pid-{}", std::process::id()));
        Terminal {
            window,
            name: Some(name),
        }
    }

    /// The header line that names it, if it has a name.
    fn header(&self) -> String {
        match &self.name {
            Some(name) => format!("{}: {name}\r\n", media::TERMINAL_HEADER),
            None => String::new(),
        }
    }
}

impl OutputStream {
    /// Attaches to the output at the newest output (`ATTACH_CONTAINER_OUTPUT`, protobuf
    /// records), as every Mesos client does.
    pub fn open(socket: &Path) -> Result<OutputStream, ClientError> {
        OutputStream::open_at(socket, StartAt::Live)
    }

    /// Attaches to the output starting at `at`: at the newest output, at a position, or
    /// some bytes before the newest output (a server without a history, Mesos's,
    /// starts at the newest output whatever is asked).
    pub fn open_at(socket: &Path, at: StartAt) -> Result<OutputStream, ClientError> {
        OutputStream::open_asking(socket, at, false, &Terminal::default(), None)
    }

    /// Attaches at the newest output of a TTY container as a terminal of `window` (rows,
    /// columns): the server sets the terminal to that size (as its `--window_size`
    /// decides), and the stream starts with a redraw of the screen
    /// ([`OutputStream::next_record_or_redraw`] tells it apart). A server without a screen
    /// model (pipes, `--screen=false`, Mesos) just starts at the newest output.
    pub fn open_terminal(socket: &Path, terminal: &Terminal) -> Result<OutputStream, ClientError> {
        OutputStream::open_asking(socket, StartAt::Live, true, terminal, None)
    }

    /// Attaches at `at` with a redraw first (`screen`, at the newest output only), as
    /// `terminal`, giving up when the server has not answered within `limit`.
    pub fn open_asking(
        socket: &Path,
        at: StartAt,
        screen: bool,
        terminal: &Terminal,
        limit: Option<Duration>,
    ) -> Result<OutputStream, ClientError> {
        let mut sock = connect(socket)?;
        sock.set_read_timeout(limit)?;
        sock.set_write_timeout(limit)?;
        let call = Call {
            r#type: Some(call::Type::AttachContainerOutput as i32),
            attach_container_output: Some(call::AttachContainerOutput {
                container_id: container_id(),
            }),
            ..Default::default()
        };
        let body = message::encode(Format::Protobuf, &call);
        let start = match at {
            StartAt::Live => String::new(),
            StartAt::Position(p) => format!("{}: {p}\r\n", media::FROM_HEADER),
            StartAt::Tail(n) => format!("{}: {n}\r\n", media::TAIL_HEADER),
        };
        let mut start = start;
        if screen {
            start.push_str(&format!("{}: 1\r\n", media::SCREEN_HEADER));
        }
        if let Some((rows, columns)) = terminal.window {
            start.push_str(&format!("{}: {rows}x{columns}\r\n", media::WINDOW_HEADER));
        }
        start.push_str(&terminal.header());
        let mut req = format!(
            "POST / HTTP/1.1\r\nHost:\r\nContent-Type: application/x-protobuf\r\nAccept: application/recordio\r\n\
             Message-Accept: application/x-protobuf\r\n{start}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        sock.write_all(&req)?;
        let mut buf = Vec::new();
        let head = read_head(&mut sock, &mut buf)?;
        if head.status != 200 {
            let body = read_body(&mut sock, &head, buf)?;
            return Err(ClientError::Refused {
                status: head.status,
                body,
            });
        }
        let located = Located::from_head(&head);
        let redraw = head.header(&media::SCREEN_HEADER.to_ascii_lowercase()).map(str::trim) == Some("1");
        sock.set_read_timeout(None)?;
        sock.set_write_timeout(None)?;
        Ok(OutputStream {
            sock,
            buf,
            chunked: ChunkedDecoder::new(&Limits::default()),
            records: recordio::Decoder::new(16 << 20),
            pending: Default::default(),
            ended: false,
            position: located.as_ref().map(|l| l.position),
            located,
            redraw,
        })
    }

    /// Whether the stream starts with a redraw of the screen, not yet returned.
    pub fn redraw_first(&self) -> bool {
        self.redraw
    }

    /// Where the server said this stream starts; `None` from a server without positions.
    pub fn located(&self) -> Option<&Located> {
        self.located.as_ref()
    }

    /// The position of the next payload byte this stream will return (the position after
    /// the last one returned); `None` from a server without positions.
    pub fn position(&self) -> Option<u64> {
        self.position
    }

    /// A handle to the connection, to stop the stream from another thread (shut it down:
    /// [`OutputStream::next_record`] then fails).
    pub fn shutdown_handle(&self) -> io::Result<UnixStream> {
        self.sock.try_clone()
    }

    /// The next record, or `None` at the clean end of the stream.
    pub fn next_record(&mut self) -> Result<Option<ProcessIo>, ClientError> {
        Ok(self.next_record_or_redraw()?.map(|(pio, _)| pio))
    }

    /// The next record, and whether it is the redraw of the screen that the server sent
    /// first (see [`OutputStream::open_terminal`]); `None` at the clean end.
    pub fn next_record_or_redraw(&mut self) -> Result<Option<(ProcessIo, bool)>, ClientError> {
        loop {
            if let Some(rec) = self.pending.pop_front() {
                let pio: ProcessIo = message::decode(Format::Protobuf, &rec).map_err(|e| ClientError::Protocol(e.0))?;
                // (A heartbeat before it leaves the redraw to come.)
                let redraw = self.redraw && pio.data.is_some();
                self.redraw &= !redraw;
                if let (Some(p), Some(data), false) = (&mut self.position, &pio.data, redraw) {
                    *p = p.saturating_add(data.data.as_ref().map_or(0, |d| d.len() as u64));
                }
                return Ok(Some((pio, redraw)));
            }
            if self.ended {
                return Ok(None);
            }
            let mut pos = 0;
            while pos < self.buf.len() && self.pending.is_empty() && !self.ended {
                let d = self
                    .chunked
                    .decode(&self.buf[pos..])
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                pos += d.used;
                let mut data = d.data;
                while !data.is_empty() {
                    let (used, rec) = self
                        .records
                        .decode(data)
                        .map_err(|e| ClientError::Protocol(e.to_string()))?;
                    data = &data[used..];
                    self.pending.extend(rec);
                }
                self.ended = d.done;
            }
            self.buf.drain(..pos);
            if !self.pending.is_empty() || self.ended {
                continue;
            }
            let mut chunk = vec![0u8; 64 * 1024];
            match self.sock.read(&mut chunk) {
                Ok(0) | Err(_) => return Err(ClientError::Gone),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

fn container_id() -> ContainerId {
    ContainerId {
        value: "switchboard".into(),
        parent: None,
    }
}

fn input_call(pio: Option<ProcessIo>) -> Call {
    let (kind, container_id) = match pio {
        Some(_) => (attach_container_input::Type::ProcessIo, None),
        None => (attach_container_input::Type::ContainerId, Some(container_id())),
    };
    Call {
        r#type: Some(call::Type::AttachContainerInput as i32),
        attach_container_input: Some(AttachContainerInput {
            r#type: Some(kind as i32),
            container_id,
            process_io: pio,
        }),
        ..Default::default()
    }
}

/// A STDIN record (empty data: end of input on a pipe).
pub fn stdin(data: &[u8]) -> ProcessIo {
    ProcessIo {
        r#type: Some(process_io::Type::Data as i32),
        data: Some(Data {
            r#type: Some(process_io::data::Type::Stdin as i32),
            data: Some(data.to_vec()),
        }),
        control: None,
    }
}

/// A TTY_INFO record.
pub fn resize(rows: u16, columns: u16) -> ProcessIo {
    ProcessIo {
        r#type: Some(process_io::Type::Control as i32),
        data: None,
        control: Some(Control {
            r#type: Some(control::Type::TtyInfo as i32),
            tty_info: Some(TtyInfo {
                window_size: Some(tty_info::WindowSize {
                    rows: u32::from(rows),
                    columns: u32::from(columns),
                }),
            }),
            heartbeat: None,
        }),
    }
}

/// A HEARTBEAT record.
pub fn heartbeat(interval: std::time::Duration) -> ProcessIo {
    crate::wire::message::heartbeat_message(interval.as_nanos().min(i64::MAX as u128) as i64)
}

/// An input stream (`ATTACH_CONTAINER_INPUT`): records go out as they are sent, one HTTP
/// chunk each; [`InputStream::finish`] ends the body and reads the answer.
pub struct InputStream {
    sock: UnixStream,
}

impl InputStream {
    /// Opens an input stream (its first record names the container).
    pub fn open(socket: &Path) -> Result<InputStream, ClientError> {
        InputStream::open_as(socket, &Terminal::default())
    }

    /// Opens an input stream from `terminal`: its resizes are the window it attached with.
    pub fn open_as(socket: &Path, terminal: &Terminal) -> Result<InputStream, ClientError> {
        let sock = connect(socket)?;
        let mut stream = InputStream { sock };
        let head = format!(
            "POST / HTTP/1.1\r\nHost:\r\nContent-Type: application/recordio\r\n\
             Message-Content-Type: application/x-protobuf\r\nAccept: application/json\r\n{}\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            terminal.header()
        );
        let sent = stream
            .sock
            .write_all(head.as_bytes())
            .and_then(|()| stream.send_call(&input_call(None)));
        match sent {
            Ok(()) => Ok(stream),
            // Refused before we were done (403, 503): the answer says why.
            Err(e) if closed_early(&e) => Err(match stream.response() {
                Err(refused @ ClientError::Refused { .. }) => refused,
                _ => ClientError::Io(e),
            }),
            Err(e) => Err(e.into()),
        }
    }

    fn send_call(&mut self, call: &Call) -> io::Result<()> {
        let rec = message::record(Format::Protobuf, call);
        let mut chunk = format!("{:x}\r\n", rec.len()).into_bytes();
        chunk.extend_from_slice(&rec);
        chunk.extend_from_slice(b"\r\n");
        self.sock.write_all(&chunk)
    }

    /// Sends one record.
    pub fn send(&mut self, pio: ProcessIo) -> io::Result<()> {
        self.send_call(&input_call(Some(pio)))
    }

    /// A handle to write records from another thread.
    pub fn try_clone(&self) -> io::Result<InputStream> {
        Ok(InputStream {
            sock: self.sock.try_clone()?,
        })
    }

    /// Ends the body and reads the answer: `Ok` for 200, the refusal otherwise. A server
    /// that answered early (a refusal) may have closed the connection already: its answer
    /// is read all the same.
    pub fn finish(mut self) -> Result<(), ClientError> {
        match self.end() {
            Ok(()) => self.response(),
            Err(e) if closed_early(&e) => self.response().map_err(|r| match r {
                ClientError::Gone | ClientError::Io(_) => ClientError::Io(e),
                refused => refused,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Ends the body (the answer is read by whoever reads [`InputStream::response`]).
    pub fn end(&mut self) -> io::Result<()> {
        self.sock.write_all(b"0\r\n\r\n")
    }

    /// Reads the answer without ending the body (a server can answer early: 409, or 200
    /// after the container's output ended).
    pub fn response(&mut self) -> Result<(), ClientError> {
        let mut buf = Vec::new();
        let head = read_head(&mut self.sock, &mut buf)?;
        if head.status == 200 {
            return Ok(());
        }
        let body = read_body(&mut self.sock, &head, buf)?;
        Err(ClientError::Refused {
            status: head.status,
            body,
        })
    }

    /// Stops sending: shuts the connection's write side without ending the body.
    pub fn abort(&self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

/// Whether a write failed because the server closed the connection (after answering).
fn closed_early(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset)
}

/// Acknowledges an input response (docs/protocol.md §12), as the agent does after each.
pub fn acknowledge(socket: &Path) -> Result<(), ClientError> {
    let mut sock = connect(socket)?;
    sock.write_all(
        b"POST /acknowledge_container_input_response HTTP/1.1\r\nHost:\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )?;
    let head = read_head(&mut sock, &mut Vec::new())?;
    match head.status {
        200 => Ok(()),
        status => Err(ClientError::Refused {
            status,
            body: String::new(),
        }),
    }
}

/// What a probe learned about the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The input slot is free and the container has a terminal (the window size is set).
    Tty,
    /// The input slot is free; the container's stdin is a pipe.
    Pipe,
    /// The slot is free; no size was sent, so whether it is a terminal is not known.
    Free,
}

/// A complete input request that only names the container and, with `size`, sets the
/// window size: it tells whether stdin can be attached and whether the container has a
/// terminal (a resize on a pipe is refused with `Inappropriate ioctl`). Acknowledged.
pub fn probe(socket: &Path, size: Option<(u16, u16)>, terminal: &Terminal) -> Result<Probe, ClientError> {
    let mut input = InputStream::open_as(socket, terminal)?;
    if let Some((rows, columns)) = size
        && let Err(e) = input.send(resize(rows, columns))
        && !closed_early(&e)
    {
        return Err(e.into());
    }
    let answer = input.finish();
    acknowledge(socket)?;
    match (answer, size) {
        (Ok(()), Some(_)) => Ok(Probe::Tty),
        (Ok(()), None) => Ok(Probe::Free),
        (Err(ClientError::Refused { status: 400, body }), Some(_))
            if body.starts_with("Unable to set the window size") =>
        {
            Ok(Probe::Pipe)
        }
        (Err(e), _) => Err(e),
    }
}
