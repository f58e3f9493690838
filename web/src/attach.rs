//! One WebSocket attachment: the container's output from its switchboard to the socket's
//! output channels, the socket's stdin and resize channels to the switchboard's input
//! request, and at the end the container's exit status on the error channel.
//!
//! The switchboard's client library is blocking: the output and the input each run on a
//! thread of their own, joined to the socket's task by bounded channels. A slow browser
//! holds back only its own output stream (which the switchboard then serves from its
//! history, or cuts, and the follower resumes at the next byte's position); a container
//! that does not read its stdin holds back only the reading of the socket (its output
//! still flows, and pings still find out whether the client is there).

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use serde_json::json;
use switchboard::agent::{EndWatch, Info};
use switchboard::client::{self, Begin, ClientError, Follower, InputStream, Piece, Terminal};
use switchboard::wire::message::mesos::agent::ProcessIo;
use tokio::sync::{mpsc, oneshot};

use crate::containers::Container;
use crate::k8s::{self, End, Frame, Incoming, Protocol};

/// What the client asked for, from the query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// Where the output starts (`from=`, our extension: `live`, `kept`, or a position);
    /// when given, text frames tell the position of the next output byte (see
    /// docs/web.md), so that a client that counts the bytes it got can resume there.
    pub from: Option<Begin>,
    /// `screen=1` (ours): at the newest output, a TTY container's switchboard first sends
    /// a redraw of its screen (as stdout, before the position frame: the redraw has no
    /// position); `rows` and `cols` size its terminal first.
    pub screen: bool,
    pub window: Option<(u16, u16)>,
}

impl Request {
    /// Reads `stdin`, `stdout`, `stderr` (`1` or `true`) and `from`.
    pub fn parse(query: Option<&str>) -> Result<Request, String> {
        let mut r = Request {
            stdin: false,
            stdout: false,
            stderr: false,
            from: None,
            screen: false,
            window: None,
        };
        let (mut rows, mut cols) = (None, None);
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let flag = || matches!(value, "1" | "true");
            match key {
                "stdin" => r.stdin = flag(),
                "stdout" => r.stdout = flag(),
                "stderr" => r.stderr = flag(),
                "screen" => r.screen = flag(),
                "rows" | "cols" => {
                    let n = value.parse::<u16>().ok().filter(|&n| n > 0);
                    let n = n.ok_or_else(|| format!("{key}={value}: give a number from 1 to 65535"))?;
                    *(if key == "rows" { &mut rows } else { &mut cols }) = Some(n);
                }
                "from" => {
                    r.from = Some(match value {
                        "live" => Begin::Live,
                        "kept" => Begin::Kept,
                        n => Begin::Position(
                            n.parse()
                                .map_err(|_| format!("from={n}: give live, kept, or a position (a number)"))?,
                        ),
                    })
                }
                _ => {}
            }
        }
        r.window = rows.zip(cols);
        match r.stdin || r.stdout || r.stderr {
            true => Ok(r),
            false => Err("you must specify at least 1 of stdin, stdout, stderr".into()),
        }
    }
}

/// What the output thread hands the socket's task.
enum Out {
    Output {
        stderr: bool,
        data: Vec<u8>,
    },
    /// A redraw of the terminal's screen (before the output; it has no position).
    Screen(Vec<u8>),
    /// The stream goes on elsewhere than where the client counts: after a dropped
    /// connection (`skipped` bytes the switchboard no longer had; `restarted`: another
    /// switchboard, numbering anew), or at a later start than asked.
    Moved {
        position: Option<u64>,
        skipped: u64,
        restarted: bool,
    },
    /// The output ended: the container is done.
    Ended,
    Failed(String),
}

/// What the socket's task hands the input thread.
enum In {
    Record(ProcessIo),
    /// End the input request's body (the output ended).
    End,
}

/// At most this much stdin goes in one record (the switchboard takes records of 1 MiB).
const STDIN_RECORD: usize = 64 * 1024;

/// How long a closing client gets to answer our close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// How often the client is pinged, and how long it may stay silent (pongs count) before
/// it is taken for gone (a laptop that slept, a network that parted).
const PING_EVERY: Duration = Duration::from_secs(20);
const SILENT_FOR: Duration = Duration::from_secs(60);

/// The input side, while there is one.
struct InputSide {
    records: mpsc::Sender<In>,
    /// Its answer (a refusal such as a 409 comes after the request began).
    answer: oneshot::Receiver<Result<(), ClientError>>,
    /// The connection, to drop it on a detach without waiting for the writer.
    connection: InputStream,
}

/// Runs an attachment on `ws` until the container's output ends or the client leaves.
pub async fn session(mut ws: WebSocket, protocol: Protocol, container: Container, request: Request) {
    let begin = request.from.unwrap_or(Begin::Live);
    // Its output and input name one terminal, so that its resizes are its window's.
    let terminal = match request.window {
        Some(window) => Terminal::named(Some(window)),
        None => Terminal::default(),
    };
    let screen = request.screen && begin == Begin::Live;
    let (follower, restarted) = match open_output(&container, begin, screen, &terminal).await {
        Ok(opened) => opened,
        // Nothing to attach to: tell how it ended, if it did.
        Err(ClientError::NoServer { .. } | ClientError::Gone) => {
            return end_when_ended(&mut ws, protocol, &container.dir).await;
        }
        Err(e) => return finish(&mut ws, protocol, &failed(format!("attaching to the output: {e}"))).await,
    };
    let input = match request.stdin {
        true => match open_input(&container.socket, &terminal).await {
            Ok(input) => input,
            Err(e) => return finish(&mut ws, protocol, &failed(format!("attaching to the input: {e}"))).await,
        },
        false => None,
    };
    // (Kept apart: the loop's futures borrow one while its handlers change another.)
    let (mut records, mut connection, mut answer, mut answer_due) = match input {
        Some(i) => (Some(i.records), Some(i.connection), i.answer, true),
        None => (None, None, oneshot::channel().1, false),
    };

    // The kubelet's first message: an empty one on the lowest output channel.
    let first = match (request.stdout, request.stderr) {
        (true, _) => k8s::STDOUT,
        (false, true) => k8s::STDERR,
        (false, false) => k8s::ERROR,
    };
    let mut open = send(&mut ws, protocol.frame(first, b"")).await;
    let start = follower.position();
    // (A redraw first: the position follows it, since the redraw has none.)
    if let (Some(_), Some(position), false) = (request.from, start, follower.redraw_first()) {
        let mut located = json!({ "position": position });
        if restarted {
            located["restarted"] = json!(true);
        }
        open = open && ws.send(Message::Text(located.to_string().into())).await.is_ok();
    }

    let stop = follower.stopper();
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(16);
    std::thread::spawn(move || read_output(follower, out_tx));

    // Stdin records of the last frame, waiting for room in the input queue: while there
    // are any, the socket is not read.
    let mut pending: VecDeque<ProcessIo> = VecDeque::new();
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut heard = Instant::now();
    while open {
        let has_input = records.is_some();
        tokio::select! {
            message = ws.recv(), if pending.is_empty() => {
                heard = Instant::now();
                match message {
                    Some(Ok(Message::Binary(b))) => {
                        incoming(protocol, &request, container.tty, &b, &mut pending)
                    }
                    Some(Ok(Message::Text(t))) if protocol == Protocol::Base64 => {
                        incoming(protocol, &request, container.tty, t.as_bytes(), &mut pending)
                    }
                    // Pings are answered by the socket itself; other text is not ours.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Text(_))) => {}
                    // The client left (a detach): the container goes on.
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                }
                if !has_input {
                    pending.clear();
                }
            }
            permit = reserve(records.clone()), if !pending.is_empty() => match permit {
                Some(permit) => {
                    permit.send(In::Record(pending.pop_front().expect("pending")));
                }
                None => pending.clear(),
            },
            answered = &mut answer, if answer_due => {
                answer_due = false;
                records = None;
                connection = None;
                match answered.unwrap_or(Err(ClientError::Gone)) {
                    Err(ClientError::Refused { status: 409, .. }) => {
                        let end = End::Failed {
                            reason: "Conflict",
                            code: 409,
                            message: "another client is attached to the container's stdin".into(),
                        };
                        stop.stop();
                        return finish(&mut ws, protocol, &end).await;
                    }
                    // (Stdin is closed, or the switchboard is finishing: the output
                    // tells the rest.)
                    Err(e) => tracing::info!("the input request ended: {e}"),
                    Ok(()) => {}
                }
            }
            _ = ping.tick() => {
                // A client not read (stdin is full) is not expected to be heard.
                if pending.is_empty() && heard.elapsed() > SILENT_FOR {
                    tracing::info!("a client silent for {SILENT_FOR:?}: taken for gone");
                    break;
                }
                open = ws.send(Message::Ping(Vec::new().into())).await.is_ok();
            }
            out = out_rx.recv() => match out {
                Some(Out::Output { stderr, data }) => {
                    let (channel, wanted) = match stderr {
                        true => (k8s::STDERR, request.stderr),
                        false => (k8s::STDOUT, request.stdout),
                    };
                    if wanted {
                        open = send(&mut ws, protocol.frame(channel, &data)).await;
                    }
                }
                Some(Out::Screen(data)) => {
                    open = send(&mut ws, protocol.frame(k8s::STDOUT, &data)).await;
                    if let (Some(_), Some(position), true) = (request.from, start, open) {
                        let located = json!({ "position": position }).to_string();
                        open = ws.send(Message::Text(located.into())).await.is_ok();
                    }
                }
                Some(Out::Moved { position, skipped, restarted }) => {
                    if request.from.is_some() {
                        let moved = json!({"position": position, "skipped": skipped, "restarted": restarted});
                        open = ws.send(Message::Text(moved.to_string().into())).await.is_ok();
                    }
                }
                Some(Out::Ended) => {
                    if let Some(r) = &records {
                        let _ = r.try_send(In::End);
                    }
                    return end_when_ended(&mut ws, protocol, &container.dir).await;
                }
                Some(Out::Failed(why)) => {
                    drop_input(connection);
                    // (Cut near its end, the output may fail as the container ends.)
                    let dir = container.dir.clone();
                    let running = tokio::task::spawn_blocking(move || Info::load(&dir).is_ok_and(|i| i.running()));
                    return match running.await {
                        Ok(false) => end_when_ended(&mut ws, protocol, &container.dir).await,
                        _ => finish(&mut ws, protocol, &failed(why)).await,
                    };
                }
                None => break,
            },
        }
    }
    stop.stop();
    drop_input(connection);
}

/// Opens the output at `begin` (with `screen`: at the newest output as a terminal of this
/// size, with a redraw first); whether it started over at the oldest kept output
/// because the position asked for is past the newest (another switchboard, which
/// numbers anew, serves the container now).
async fn open_output(
    container: &Container,
    begin: Begin,
    screen: bool,
    terminal: &Terminal,
) -> Result<(Follower, bool), ClientError> {
    let socket = container.socket.clone();
    let terminal = terminal.clone();
    let opened = tokio::task::spawn_blocking(move || match screen {
        true => Follower::open_terminal(&socket, terminal).map(|f| (f, false)),
        false => match Follower::open(&socket, begin) {
            Err(ClientError::Refused { status: 400, body }) if body.contains("past the newest output") => {
                Follower::open(&socket, Begin::Kept).map(|f| (f, true))
            }
            other => other.map(|f| (f, false)),
        },
    });
    opened.await.map_err(|e| ClientError::Io(std::io::Error::other(e)))?
}

/// Room for one more record in the input queue; `None` when there is no input side.
async fn reserve(records: Option<mpsc::Sender<In>>) -> Option<mpsc::OwnedPermit<In>> {
    records?.reserve_owned().await.ok()
}

/// Drops the input request's connection: the switchboard frees the input slot at once,
/// and the writer, if it waits on a full stdin, fails and ends.
fn drop_input(connection: Option<InputStream>) {
    if let Some(c) = connection {
        c.abort();
    }
}

async fn send(ws: &mut WebSocket, frame: Frame) -> bool {
    let message = match frame {
        Frame::Binary(b) => Message::Binary(b.into()),
        Frame::Text(t) => Message::Text(t.into()),
    };
    ws.send(message).await.is_ok()
}

/// Turns a client's frame into input records (a resize only on a terminal: on a pipe the
/// switchboard would refuse it and end the input request).
fn incoming(protocol: Protocol, request: &Request, tty: bool, frame: &[u8], pending: &mut VecDeque<ProcessIo>) {
    match protocol.incoming(frame) {
        Incoming::Stdin(data) if request.stdin => {
            pending.extend(data.chunks(STDIN_RECORD).map(client::stdin));
        }
        Incoming::Resize { rows, columns } if tty => pending.push_back(client::resize(rows, columns)),
        Incoming::Close(k8s::STDIN) if request.stdin => pending.push_back(client::stdin(b"")),
        Incoming::Bad(why) => tracing::debug!("a client frame that is not the protocol: {why}"),
        Incoming::Stdin(_) | Incoming::Resize { .. } | Incoming::Close(_) => {}
    }
}

/// Opens the input request and starts its writer and the watcher of its answer; `None`
/// when the switchboard already left (a short-lived container: the output, opened
/// first, still has everything).
async fn open_input(socket: &Path, terminal: &Terminal) -> Result<Option<InputSide>, ClientError> {
    let socket = socket.to_path_buf();
    let terminal = terminal.clone();
    let opened = tokio::task::spawn_blocking(move || {
        let input = InputStream::open_as(&socket, &terminal)?;
        Ok::<_, ClientError>((input.try_clone()?, input.try_clone()?, input, socket))
    });
    let (mut answer, connection, input, socket) = match opened.await.map_err(std::io::Error::other)? {
        Ok(opened) => opened,
        Err(ClientError::NoServer { .. } | ClientError::Gone) => return Ok(None),
        Err(e) => return Err(e),
    };
    let (records, rx) = mpsc::channel::<In>(16);
    std::thread::spawn(move || write_input(input, rx));
    // The switchboard waits for the acknowledgement of every answer before it ends the
    // output: acknowledge whenever it comes.
    let (answer_tx, answer_rx) = oneshot::channel();
    std::thread::spawn(move || {
        let result = answer.response();
        let _ = client::acknowledge(&socket);
        let _ = answer_tx.send(result);
    });
    Ok(Some(InputSide {
        records,
        answer: answer_rx,
        connection,
    }))
}

/// The output thread: pieces to the socket's task until the output ends or fails.
fn read_output(mut follower: Follower, out: mpsc::Sender<Out>) {
    loop {
        let next = match follower.next_piece() {
            Ok(Some(Piece::Output { stderr, data })) => Out::Output { stderr, data },
            Ok(Some(Piece::Resumed { skipped, restarted })) => Out::Moved {
                position: follower.position(),
                skipped,
                restarted,
            },
            Ok(Some(Piece::StartedLater { skipped })) => Out::Moved {
                position: follower.position(),
                skipped,
                restarted: false,
            },
            Ok(Some(Piece::Screen { data })) => Out::Screen(data),
            Ok(Some(Piece::NoPositions)) => continue,
            Ok(None) => Out::Ended,
            Err(e) => Out::Failed(format!("the output stream failed: {e}")),
        };
        let last = matches!(next, Out::Ended | Out::Failed(_));
        // (The socket's task is gone: the client left.)
        if out.blocking_send(next).is_err() || last {
            return;
        }
    }
}

/// The input thread: records to the input request until told to end it, or the
/// connection fails (dropped on a detach, or the switchboard left).
fn write_input(mut input: InputStream, mut records: mpsc::Receiver<In>) {
    while let Some(message) = records.blocking_recv() {
        match message {
            In::Record(pio) => {
                if input.send(pio).is_err() {
                    return;
                }
            }
            In::End => break,
        }
    }
    let _ = input.end();
}

fn failed(message: String) -> End {
    End::Failed {
        reason: "InternalError",
        code: 500,
        message,
    }
}

/// Waits (as long as it takes, unless the client leaves) for the container of `dir` to
/// end, then tells how.
async fn end_when_ended(ws: &mut WebSocket, protocol: Protocol, dir: &Path) {
    let mut watch = EndWatch::default();
    let end = loop {
        if let Some(end) = watch.check(dir) {
            break match end {
                Ok(record) => End::Exited(record.shell_code()),
                Err(why) => failed(format!("the container ended, and {why}")),
            };
        }
        tokio::select! {
            _ = tokio::time::sleep(EndWatch::EVERY) => {}
            // (A client that leaves meanwhile.)
            _ = drained(ws) => return,
        }
    };
    finish(ws, protocol, &end).await
}

/// Reads the socket until the client leaves.
async fn drained(ws: &mut WebSocket) {
    while let Some(Ok(message)) = ws.recv().await {
        if let Message::Close(_) = message {
            return;
        }
    }
}

/// Tells how it ended on the error channel, then closes with 1000.
async fn finish(ws: &mut WebSocket, protocol: Protocol, end: &End) {
    if let Some(frame) = protocol.end(end)
        && !send(ws, frame).await
    {
        return;
    }
    let close = CloseFrame {
        code: 1000,
        reason: "".into(),
    };
    if ws.send(Message::Close(Some(close))).await.is_ok() {
        let _ = tokio::time::timeout(CLOSE_WAIT, drained(ws)).await;
    }
}
