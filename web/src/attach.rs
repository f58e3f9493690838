//! One WebSocket attachment: the container's output from its switchboard to the socket's
//! output channels, the socket's stdin and resize channels to the switchboard's input
//! request, and at the end the container's exit status on the error channel.
//!
//! The switchboard's client library is blocking: each side runs on a thread of its own,
//! joined to the socket's task by bounded channels, so a slow browser holds back only its
//! own output stream (which the switchboard then serves from its history, or cuts and we
//! resume at the next byte's position).

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use serde_json::json;
use switchboard::agent::ExitRecord;
use switchboard::client::{self, Begin, ClientError, Follower, InputStream, Piece};
use switchboard::wire::message::mesos::agent::ProcessIo;
use tokio::sync::mpsc;

use crate::containers::Container;
use crate::k8s::{self, End, Frame, Incoming, Protocol};

/// What the client asked for, from the query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// Where the output starts (`from=`, our extension: `live`, `kept`, or a position);
    /// when given, a text frame `{"position":P,"skipped":S}` comes before the output, so
    /// that a client that counts the bytes it got can resume at the next one.
    pub from: Option<Begin>,
}

impl Request {
    /// Reads `stdin`, `stdout`, `stderr` (`1` or `true`) and `from`.
    pub fn parse(query: Option<&str>) -> Result<Request, String> {
        let mut r = Request {
            stdin: false,
            stdout: false,
            stderr: false,
            from: None,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let flag = || matches!(value, "1" | "true");
            match key {
                "stdin" => r.stdin = flag(),
                "stdout" => r.stdout = flag(),
                "stderr" => r.stderr = flag(),
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
    /// The stream went on after a dropped connection, `skipped` bytes later.
    Skipped(u64),
    /// The output ended: the container is done.
    Ended,
    Failed(String),
}

/// What the socket's task hands the input thread.
enum In {
    Record(ProcessIo),
    /// End the input request's body (the client detached, or the output ended).
    End,
}

/// At most this much stdin goes in one record (the switchboard takes records of 1 MiB).
const STDIN_RECORD: usize = 64 * 1024;

/// How long a closing client gets to answer our close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Runs an attachment on `ws` until the container's output ends or the client leaves.
pub async fn session(mut ws: WebSocket, protocol: Protocol, container: Container, request: Request) {
    let socket = container.socket.clone();
    let begin = request.from.unwrap_or(Begin::Live);
    let opened = tokio::task::spawn_blocking(move || Follower::open(&socket, begin)).await;
    let follower = match opened {
        Ok(Ok(f)) => f,
        // Nothing to attach to: tell how it ended, if it did.
        Ok(Err(ClientError::NoServer { .. } | ClientError::Gone)) => {
            let end = ended(&container.dir).await;
            return finish(&mut ws, protocol, &end).await;
        }
        Ok(Err(e)) => return finish(&mut ws, protocol, &failed(format!("attaching to the output: {e}"))).await,
        Err(e) => return finish(&mut ws, protocol, &failed(e.to_string())).await,
    };
    let input = match request.stdin {
        true => match open_input(&container.socket).await {
            Ok(input) => input,
            Err(ClientError::Refused { status: 409, .. }) => {
                let end = End::Failed {
                    reason: "Conflict",
                    code: 409,
                    message: "another client is attached to the container's stdin".into(),
                };
                return finish(&mut ws, protocol, &end).await;
            }
            Err(e) => return finish(&mut ws, protocol, &failed(format!("attaching to the input: {e}"))).await,
        },
        false => None,
    };

    // The kubelet's first message: an empty one on the lowest output channel.
    let first = match (request.stdout, request.stderr) {
        (true, _) => k8s::STDOUT,
        (false, true) => k8s::STDERR,
        (false, false) => k8s::ERROR,
    };
    let mut sent = send(&mut ws, protocol.frame(first, b"")).await;
    // (A start the switchboard no longer had comes next, as a `skipped`.)
    if let (Some(_), Some(position)) = (request.from, follower.position()) {
        let located = json!({ "position": position }).to_string();
        sent = sent && ws.send(Message::Text(located.into())).await.is_ok();
    }

    let stop = follower.stopper();
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(16);
    std::thread::spawn(move || read_output(follower, out_tx));
    let (in_tx, in_rx) = mpsc::channel::<In>(16);
    if let Some(input) = input {
        let socket = container.socket.clone();
        std::thread::spawn(move || write_input(input, in_rx, socket));
    }

    let mut open = sent;
    while open {
        tokio::select! {
            message = ws.recv() => match message {
                Some(Ok(Message::Binary(b))) => open = incoming(protocol, &request, &b, &in_tx).await,
                Some(Ok(Message::Text(t))) if protocol == Protocol::Base64 => {
                    open = incoming(protocol, &request, t.as_bytes(), &in_tx).await
                }
                // Pings are answered by the socket itself; other text is not ours.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Text(_))) => {}
                // The client left (a detach): the container goes on.
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
            },
            out = out_rx.recv() => match out {
                Some(Out::Output { stderr, data }) => {
                    let channel = if stderr { k8s::STDERR } else { k8s::STDOUT };
                    let wanted = if stderr { request.stderr } else { request.stdout };
                    if wanted {
                        open = send(&mut ws, protocol.frame(channel, &data)).await;
                    }
                }
                Some(Out::Skipped(n)) => {
                    if request.from.is_some() {
                        open = ws.send(Message::Text(json!({"skipped": n}).to_string().into())).await.is_ok();
                    }
                }
                Some(Out::Ended) => {
                    let _ = in_tx.send(In::End).await;
                    let end = tokio::select! {
                        end = ended(&container.dir) => end,
                        // (A client that leaves while we wait for the status.)
                        _ = drained(&mut ws) => return,
                    };
                    return finish(&mut ws, protocol, &end).await;
                }
                Some(Out::Failed(why)) => {
                    let _ = in_tx.send(In::End).await;
                    return finish(&mut ws, protocol, &failed(why)).await;
                }
                None => break,
            },
        }
    }
    stop.stop();
    let _ = in_tx.send(In::End).await;
}

async fn send(ws: &mut WebSocket, frame: Frame) -> bool {
    let message = match frame {
        Frame::Binary(b) => Message::Binary(b.into()),
        Frame::Text(t) => Message::Text(t.into()),
    };
    ws.send(message).await.is_ok()
}

/// Acts on a client's frame; `false` ends the attachment.
async fn incoming(protocol: Protocol, request: &Request, frame: &[u8], input: &mpsc::Sender<In>) -> bool {
    let record = match protocol.incoming(frame) {
        Incoming::Stdin(data) if request.stdin => {
            for chunk in data.chunks(STDIN_RECORD) {
                if input.send(In::Record(client::stdin(chunk))).await.is_err() {
                    return true;
                }
            }
            return true;
        }
        Incoming::Resize { rows, columns } => client::resize(rows, columns),
        Incoming::Close(k8s::STDIN) if request.stdin => client::stdin(b""),
        Incoming::Stdin(_) | Incoming::Close(_) => return true,
        Incoming::Bad(why) => {
            tracing::debug!("a client frame that is not the protocol: {why}");
            return true;
        }
    };
    // (No input side, or it ended: there is nobody to tell.)
    let _ = input.send(In::Record(record)).await;
    true
}

/// Opens the input request; `None` when the switchboard already left (a short-lived
/// container: the output, opened first, still has everything).
async fn open_input(socket: &Path) -> Result<Option<InputStream>, ClientError> {
    let socket = socket.to_path_buf();
    let opened = tokio::task::spawn_blocking(move || InputStream::open(&socket)).await;
    match opened.map_err(|e| ClientError::Io(std::io::Error::other(e)))? {
        Ok(input) => Ok(Some(input)),
        Err(ClientError::NoServer { .. } | ClientError::Gone) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The output thread: pieces to the socket's task until the output ends or fails.
fn read_output(mut follower: Follower, out: mpsc::Sender<Out>) {
    loop {
        let next = match follower.next_piece() {
            Ok(Some(Piece::Output { stderr, data })) => Out::Output { stderr, data },
            Ok(Some(Piece::Resumed { skipped, .. } | Piece::StartedLater { skipped })) => Out::Skipped(skipped),
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

/// The input thread: records to the input request until told to end it. Its answer is
/// read and acknowledged whenever it comes (the switchboard waits for acknowledgements
/// before it ends the output).
fn write_input(mut input: InputStream, mut records: mpsc::Receiver<In>, socket: PathBuf) {
    if let Ok(mut answer) = input.try_clone() {
        std::thread::spawn(move || {
            if let Err(e) = answer.response() {
                tracing::debug!("the input request ended: {e}");
            }
            let _ = client::acknowledge(&socket);
        });
    }
    while let Some(message) = records.blocking_recv() {
        match message {
            In::Record(pio) => {
                if input.send(pio).is_err() {
                    return;
                }
            }
            In::End => {
                let _ = input.end();
                return;
            }
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

/// How the container of `dir` ended, once it did.
async fn ended(dir: &Path) -> End {
    let dir = dir.to_path_buf();
    match tokio::task::spawn_blocking(move || ExitRecord::wait_for(&dir)).await {
        Ok(Ok(record)) => End::Exited(record.shell_code()),
        Ok(Err(why)) => failed(format!("the container ended, and {why}")),
        Err(e) => failed(e.to_string()),
    }
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
