//! Checkers of what clients receive, fed as bytes arrive, and a reader that feeds many
//! clients' sockets to theirs. [`crate::body::BodyChecker`] checks whole output bodies.

use std::os::fd::{AsFd, OwnedFd};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use switchboard::wire::http::{ChunkedDecoder, Limits};
use switchboard::wire::message::mesos::agent::{ProcessIo, process_io};
use switchboard::wire::message::{Format, decode};
use switchboard::wire::recordio;

use crate::pattern::is_pattern;

/// Checks bytes as they arrive.
pub trait Checker: Send {
    fn feed(&mut self, bytes: &[u8]);
    /// Called at EOF of the connection.
    fn finish(&mut self);
}

/// A raw stream of one source's pattern.
pub struct RawChecker {
    pub seed: u64,
    pub pos: u64,
    pub expect_len: Option<u64>,
    pub progress: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

impl Checker for RawChecker {
    fn feed(&mut self, bytes: &[u8]) {
        assert!(
            is_pattern(self.seed, self.pos, bytes),
            "raw bytes from {} differ",
            self.pos
        );
        self.pos += bytes.len() as u64;
        if let Some(p) = &self.progress {
            p.store(self.pos, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn finish(&mut self) {
        if let Some(len) = self.expect_len {
            assert_eq!(self.pos, len, "raw stream length");
        }
    }
}

/// A whole record decoded: its DATA payload and stream (0 stdout, 1 stderr), or `None`
/// for a control record (a heartbeat).
pub(crate) fn record_data(format: Format, rec: &[u8]) -> Option<(usize, Vec<u8>)> {
    let pio: ProcessIo = decode(format, rec).unwrap();
    if pio.r#type != Some(process_io::Type::Data as i32) {
        return None;
    }
    let data = pio.data.unwrap();
    let s = usize::from(data.r#type == Some(process_io::data::Type::Stderr as i32));
    let bytes = data.data.unwrap();
    assert!(!bytes.is_empty(), "an empty DATA record");
    Some((s, bytes))
}

/// Collects what an output response body carries, for checks after the fact.
#[derive(Default, Clone)]
pub struct Collected {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Both streams in the order the body carried them: (0 stdout or 1 stderr, bytes),
    /// runs of one stream joined.
    pub interleaved: Vec<(usize, Vec<u8>)>,
    pub heartbeats: usize,
    pub ended: bool,
}

impl Collected {
    /// Payload bytes of both streams.
    pub fn len(&self) -> usize {
        self.stdout.len() + self.stderr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct Collector {
    format: Format,
    chunked: ChunkedDecoder,
    records: recordio::Decoder,
    pub out: std::sync::Arc<std::sync::Mutex<Collected>>,
}

impl Collector {
    pub fn new(format: Format) -> (Self, std::sync::Arc<std::sync::Mutex<Collected>>) {
        let out = std::sync::Arc::new(std::sync::Mutex::new(Collected::default()));
        let c = Collector {
            format,
            chunked: ChunkedDecoder::new(&Limits::default()),
            records: recordio::Decoder::new(1 << 24),
            out: out.clone(),
        };
        (c, out)
    }

    /// Feeds body bytes; returns whether the body ended.
    pub fn push(&mut self, mut bytes: &[u8]) -> bool {
        let mut out = self.out.lock().unwrap();
        while !bytes.is_empty() && !out.ended {
            let d = self.chunked.decode(bytes).unwrap();
            bytes = &bytes[d.used..];
            let mut data = d.data;
            while !data.is_empty() {
                let (used, rec) = self.records.decode(data).unwrap();
                data = &data[used..];
                let Some(rec) = rec else { continue };
                let pio: ProcessIo = decode(self.format, &rec).unwrap();
                if pio.r#type == Some(process_io::Type::Data as i32) {
                    let d = pio.data.unwrap();
                    let s = usize::from(d.r#type == Some(process_io::data::Type::Stderr as i32));
                    let bytes = d.data.unwrap();
                    match out.interleaved.last_mut() {
                        Some((last, run)) if *last == s => run.extend_from_slice(&bytes),
                        _ => out.interleaved.push((s, bytes.clone())),
                    }
                    if s == 1 {
                        out.stderr.extend(bytes);
                    } else {
                        out.stdout.extend(bytes);
                    }
                } else {
                    out.heartbeats += 1;
                }
            }
            out.ended |= d.done;
        }
        out.ended
    }
}

impl Checker for Collector {
    fn feed(&mut self, bytes: &[u8]) {
        self.push(bytes);
    }

    fn finish(&mut self) {}
}

/// Reads every socket to EOF on one thread, feeding its checker. Sockets in `stalled`
/// are not read until all others reached EOF (a client that stopped reading).
pub fn read_all(mut conns: Vec<(OwnedFd, Box<dyn Checker>)>, stalled: &[usize]) -> Vec<Box<dyn Checker>> {
    let mut open: Vec<bool> = vec![true; conns.len()];
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let others_done = open.iter().enumerate().all(|(i, o)| !o || stalled.contains(&i));
        let active: Vec<usize> = (0..conns.len())
            .filter(|&i| open[i] && (others_done || !stalled.contains(&i)))
            .collect();
        if active.is_empty() {
            break;
        }
        let mut fds: Vec<PollFd> = active
            .iter()
            .map(|&i| PollFd::new(conns[i].0.as_fd(), PollFlags::POLLIN))
            .collect();
        poll(&mut fds, PollTimeout::from(1000u16)).unwrap();
        let ready: Vec<usize> = fds
            .iter()
            .zip(&active)
            .filter(|(p, _)| p.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, &i)| i)
            .collect();
        drop(fds);
        for i in ready {
            match nix::unistd::read(&conns[i].0, &mut buf) {
                Ok(0) | Err(nix::errno::Errno::ECONNRESET) => {
                    open[i] = false;
                    conns[i].1.finish();
                }
                Ok(n) => conns[i].1.feed(&buf[..n]),
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                Err(e) => panic!("reading client {i}: {e}"),
            }
        }
    }
    conns.into_iter().map(|(_, c)| c).collect()
}
