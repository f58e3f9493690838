//! Helpers shared by the integration tests: real pipes and sockets, a byte pattern that
//! checkers can verify incrementally (nothing is stored), body checkers for the output
//! protocol, and a watchdog so a hang fails instead of blocking CI.

#![allow(dead_code)]

pub mod sb;
pub mod term;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use switchboard::wire::http::{ChunkedDecoder, Limits};
use switchboard::wire::message::mesos::agent::{ProcessIo, process_io};
use switchboard::wire::message::{Format, Stream, data_record_prefix, data_record_suffix, decode};
use switchboard::wire::recordio;

/// The period of the test pattern: a prime, so that it never lines up with chunk sizes.
const PERIOD: usize = 1_048_573;

fn block(seed: u64) -> &'static [u8] {
    static BLOCKS: std::sync::Mutex<Vec<(u64, &'static [u8])>> = std::sync::Mutex::new(Vec::new());
    let mut blocks = BLOCKS.lock().unwrap();
    if let Some((_, b)) = blocks.iter().find(|(s, _)| *s == seed) {
        return b;
    }
    let mut z = seed;
    let b: Vec<u8> = (0..PERIOD + 8)
        .map(|_| {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (x ^ (x >> 31)) as u8
        })
        .collect();
    let b: &'static [u8] = Box::leak(b.into_boxed_slice());
    blocks.push((seed, b));
    b
}

/// Byte `i` of the pattern of stream `seed`: any position can be checked on its own.
pub fn pattern(seed: u64, i: u64) -> u8 {
    block(seed)[(i % PERIOD as u64) as usize]
}

/// Fills `buf` with the pattern from position `start`.
pub fn fill_pattern(seed: u64, start: u64, buf: &mut [u8]) {
    let b = block(seed);
    let mut done = 0;
    while done < buf.len() {
        let at = ((start + done as u64) % PERIOD as u64) as usize;
        let n = (PERIOD - at).min(buf.len() - done);
        buf[done..done + n].copy_from_slice(&b[at..at + n]);
        done += n;
    }
}

/// Whether `bytes` are the pattern from position `start`.
pub fn is_pattern(seed: u64, start: u64, bytes: &[u8]) -> bool {
    let b = block(seed);
    let mut done = 0;
    while done < bytes.len() {
        let at = ((start + done as u64) % PERIOD as u64) as usize;
        let n = (PERIOD - at).min(bytes.len() - done);
        if bytes[done..done + n] != b[at..at + n] {
            return false;
        }
        done += n;
    }
    true
}

/// Payload bytes each reading client has verified, so that a producer can keep pace
/// with its readers (as a container's output normally does) instead of outrunning them
/// into the lag limit.
#[derive(Clone, Default)]
pub struct Progress(pub std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<std::sync::atomic::AtomicU64>>>>);

impl Progress {
    pub fn counter(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        let c = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        self.0.lock().unwrap().push(c.clone());
        c
    }

    /// Waits until every counter is within `window` bytes of `produced`.
    pub fn wait_within(&self, produced: u64, window: u64) {
        loop {
            let behind = self
                .0
                .lock()
                .unwrap()
                .iter()
                .any(|c| produced.saturating_sub(c.load(std::sync::atomic::Ordering::Relaxed)) > window);
            if !behind {
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// A tiny xorshift, so runs are repeatable.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A pipe (read end, write end), close-on-exec, raised to `size` bytes.
pub fn pipe(size: usize) -> (OwnedFd, OwnedFd) {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    switchboard::sys::grow_pipe(&r, size).unwrap();
    (r, w)
}

pub fn socket_pair() -> (OwnedFd, OwnedFd) {
    socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC).unwrap()
}

/// Runs `f` on a thread and fails the test if it takes longer than `secs`.
pub fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("timed out after {secs} s"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the test thread panicked"),
    }
}

/// Writes `len` pattern bytes of each stream into its pipe, in chunks of random sizes
/// up to `max_chunk`, interleaving the streams; closes the pipes at the end. With a
/// `gate`, it waits while any reader is more than `window` bytes behind.
pub fn produce(writers: Vec<(OwnedFd, u64)>, len: u64, max_chunk: usize, seed: u64, gate: Option<(Progress, u64)>) {
    let mut rng = Rng(seed | 1);
    let mut next = || rng.next();
    let mut pos = vec![0u64; writers.len()];
    let mut buf = vec![0u8; max_chunk];
    while pos.iter().any(|&p| p < len) {
        let s = (next() % writers.len() as u64) as usize;
        if pos[s] == len {
            continue;
        }
        let n = ((next() % max_chunk as u64) + 1).min(len - pos[s]) as usize;
        if let Some((progress, window)) = &gate {
            progress.wait_within(pos.iter().sum::<u64>(), *window);
        }
        fill_pattern(writers[s].1, pos[s], &mut buf[..n]);
        let mut written = 0;
        while written < n {
            written += nix::unistd::write(&writers[s].0, &buf[written..n]).unwrap();
        }
        pos[s] += n as u64;
    }
}

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

/// An output response body (chunked RecordIO of ProcessIO records) whose DATA records
/// carry the patterns `seeds[0]` (stdout) and `seeds[1]` (stderr).
pub struct BodyChecker {
    format: Format,
    seeds: [u64; 2],
    pub pos: [u64; 2],
    chunked: ChunkedDecoder,
    records: recordio::Decoder,
    pub ended: bool,
    pub heartbeats: usize,
    /// Lengths the streams must reach; `None` for a client that may be cut off.
    pub expect_len: Option<[u64; 2]>,
    /// Bytes before the body (an HTTP response head), skipped.
    pub skip: usize,
    pub progress: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

impl BodyChecker {
    pub fn new(format: Format, seeds: [u64; 2], expect_len: Option<[u64; 2]>) -> Self {
        BodyChecker {
            format,
            seeds,
            pos: [0, 0],
            chunked: ChunkedDecoder::new(&Limits::default()),
            records: recordio::Decoder::new(1 << 24),
            ended: false,
            heartbeats: 0,
            expect_len,
            skip: 0,
            progress: None,
        }
    }

    fn record(&mut self, rec: &[u8]) {
        match record_data(self.format, rec) {
            Some((s, bytes)) => {
                assert!(
                    is_pattern(self.seeds[s], self.pos[s], &bytes),
                    "stream {s} bytes from {} differ",
                    self.pos[s]
                );
                self.pos[s] += bytes.len() as u64;
                if let Some(p) = &self.progress {
                    p.store(self.pos[0] + self.pos[1], std::sync::atomic::Ordering::Relaxed);
                }
            }
            None => self.heartbeats += 1,
        }
    }
}

/// A whole record decoded: its DATA payload and stream (0 stdout, 1 stderr), or `None`
/// for a control record (a heartbeat).
fn record_data(format: Format, rec: &[u8]) -> Option<(usize, Vec<u8>)> {
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

impl Checker for BodyChecker {
    fn feed(&mut self, mut bytes: &[u8]) {
        let skip = self.skip.min(bytes.len());
        self.skip -= skip;
        bytes = &bytes[skip..];
        while !bytes.is_empty() {
            assert!(!self.ended, "bytes after the last chunk");
            let d = self.chunked.decode(bytes).unwrap();
            bytes = &bytes[d.used..];
            let mut data = d.data;
            while !data.is_empty() {
                let (used, rec) = self.records.decode(data).unwrap();
                data = &data[used..];
                if let Some(rec) = rec {
                    self.record(&rec);
                }
            }
            self.ended |= d.done;
        }
    }

    fn finish(&mut self) {
        if let Some(len) = self.expect_len {
            assert!(
                self.ended,
                "the body did not end with the last chunk (at {:?} of {:?})",
                self.pos, len
            );
            assert_eq!(self.pos, len, "stream lengths");
        }
    }
}

/// Collects what an output response body carries, for checks after the fact.
#[derive(Default, Clone)]
pub struct Collected {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub heartbeats: usize,
    pub ended: bool,
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
                    if d.r#type == Some(process_io::data::Type::Stderr as i32) {
                        out.stderr.extend(d.data.unwrap());
                    } else {
                        out.stdout.extend(d.data.unwrap());
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

/// The resident set size of this process, in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// An output body (chunked RecordIO of ProcessIO records) checked as it streams:
/// protobuf payloads are compared with the patterns where they lie, nothing is copied;
/// JSON DATA records of the server's own shape have their base64 decoded on the way
/// (any other JSON record is decoded whole). [`BodyChecker`] decodes each record into
/// messages; this is for clients that must keep up with gigabytes a second.
pub struct StreamingBodyChecker {
    format: Format,
    seeds: [u64; 2],
    pub pos: [u64; 2],
    pub heartbeats: usize,
    /// JSON records streamed (of the server's DATA shape), and decoded whole.
    pub json_streamed: usize,
    pub json_decoded: usize,
    pub ended: bool,
    expect_len: Option<[u64; 2]>,
    pub progress: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    chunked: ChunkedDecoder,
    /// RecordIO: the length line so far, or the bytes of the record still to come.
    record_len: Vec<u8>,
    record_left: u64,
    pb: Pb,
    json: JsonRecord,
    /// [`json_data_shape`].
    json_heads: [Vec<u8>; 2],
    json_suffix: &'static [u8],
}

/// Where the parse of a JSON record stands.
#[derive(Default)]
struct JsonRecord {
    /// The record's first bytes, until they tell whether it is a DATA record of ours;
    /// a record that is not is kept whole here and decoded at its end.
    head: Vec<u8>,
    /// The stream of a DATA record being streamed, once its head matched.
    stream: Option<usize>,
    /// In the payload: base64 characters of a quad so far, a `\` pending, the payload
    /// decoded but not yet checked; then the bytes of the suffix seen.
    quad: [u8; 4],
    quad_len: usize,
    escaped: bool,
    decoded: Vec<u8>,
    suffix: Option<usize>,
}

/// What comes before the base64 payload of the server's JSON DATA records of stdout and
/// stderr, and what follows its closing quote: from the server's own encoder.
fn json_data_shape() -> ([Vec<u8>; 2], &'static [u8]) {
    let head = |stream| {
        let mut prefix = Vec::new();
        data_record_prefix(Format::Json, stream, 0, &mut prefix);
        // Without the RecordIO length line.
        let line = prefix.iter().position(|&b| b == b'\n').unwrap();
        prefix.split_off(line + 1)
    };
    let suffix = data_record_suffix(Format::Json);
    assert_eq!(suffix.first(), Some(&b'"'), "a JSON payload ends with its quote");
    ([head(Stream::Stdout), head(Stream::Stderr)], &suffix[1..])
}

/// Base64 letters' values; 0xff for anything else (`=`, an escape, the closing quote).
const BASE64: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 64 {
        t[b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Where the protobuf parse of a record stands.
#[derive(Default)]
struct Pb {
    /// Offset in the record.
    off: u64,
    /// The varint being read, its shift, and what it is for.
    var: u64,
    shift: u32,
    want: Want,
    /// Ends (record offsets) of the messages entered: ProcessIO's `data` (1 deep).
    data_end: Option<u64>,
    /// ProcessIO.type (DATA 1, CONTROL 2) and Data.type, once read.
    io_type: Option<u64>,
    data_type: Option<u64>,
    /// Bytes of a payload left to check, or of an unknown field to skip.
    payload_left: u64,
    skip_left: u64,
}

#[derive(Default, Clone, Copy, PartialEq, Debug)]
enum Want {
    #[default]
    Tag,
    /// A varint field's value (field number).
    Value(u64),
    /// A length-delimited field's length (field number).
    Len(u64),
}

impl StreamingBodyChecker {
    pub fn new(format: Format, seeds: [u64; 2], expect_len: Option<[u64; 2]>) -> Self {
        let (json_heads, json_suffix) = json_data_shape();
        StreamingBodyChecker {
            json_heads,
            json_suffix,
            format,
            seeds,
            pos: [0, 0],
            heartbeats: 0,
            json_streamed: 0,
            json_decoded: 0,
            ended: false,
            expect_len,
            progress: None,
            chunked: ChunkedDecoder::new(&Limits::default()),
            record_len: Vec::new(),
            record_left: 0,
            pb: Pb::default(),
            json: JsonRecord::default(),
        }
    }

    /// Payload bytes of stream `s`, in order.
    fn payload(&mut self, s: usize, bytes: &[u8]) {
        assert!(
            is_pattern(self.seeds[s], self.pos[s], bytes),
            "stream {s} bytes from {} differ",
            self.pos[s]
        );
        self.pos[s] += bytes.len() as u64;
        if let Some(p) = &self.progress {
            p.store(self.pos[0] + self.pos[1], std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Bytes of the current JSON record.
    fn json_record(&mut self, mut bytes: &[u8]) {
        let head_len = self.json_heads[0].len();
        while !bytes.is_empty() {
            let j = &mut self.json;
            if j.stream.is_none() {
                // Not yet known (or not ours: then kept whole).
                let take = if j.head.len() < head_len {
                    (head_len - j.head.len()).min(bytes.len())
                } else {
                    bytes.len()
                };
                j.head.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if j.head.len() == head_len
                    && let Some(s) = self.json_heads.iter().position(|h| *h == j.head)
                {
                    j.stream = Some(s);
                    j.head.clear();
                }
                continue;
            }
            let s = j.stream.unwrap();
            if let Some(seen) = j.suffix {
                let suffix = self.json_suffix;
                let n = (suffix.len() - seen).min(bytes.len());
                assert_eq!(&bytes[..n], &suffix[seen..seen + n], "a DATA record's end");
                j.suffix = Some(seen + n);
                bytes = &bytes[n..];
                continue;
            }
            let mut ended = false;
            let mut used = 0;
            while used < bytes.len() {
                // Whole quads of plain base64 letters, four at a time.
                if j.quad_len == 0 && !j.escaped {
                    for q in bytes[used..].chunks_exact(4) {
                        let v = q.iter().map(|&c| BASE64[c as usize]);
                        if v.clone().any(|x| x == 0xff) {
                            break;
                        }
                        let n = v.fold(0u32, |n, x| (n << 6) | u32::from(x));
                        j.decoded.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
                        used += 4;
                    }
                    if used == bytes.len() {
                        break;
                    }
                }
                let c = bytes[used];
                used += 1;
                if j.escaped {
                    assert_eq!(c, b'/', "an escape in base64");
                    j.escaped = false;
                } else if c == b'\\' {
                    j.escaped = true;
                    continue;
                } else if c == b'"' {
                    ended = true;
                    break;
                }
                j.quad[j.quad_len] = c;
                j.quad_len += 1;
                if j.quad_len == 4 {
                    j.quad_len = 0;
                    let q = j.quad;
                    let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
                    let mut n = 0u32;
                    for &c in &q[..4 - pad] {
                        let x = BASE64[c as usize];
                        assert!(x != 0xff, "{c:?} in a base64 payload");
                        n = (n << 6) | u32::from(x);
                    }
                    n <<= 6 * pad as u32;
                    let out = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
                    j.decoded.extend_from_slice(&out[..3 - pad]);
                }
            }
            bytes = &bytes[used..];
            if ended || self.json.decoded.len() >= 48 << 10 {
                let decoded = std::mem::take(&mut self.json.decoded);
                self.payload(s, &decoded);
                self.json.decoded = decoded;
                self.json.decoded.clear();
            }
            if ended {
                let j = &mut self.json;
                assert!(j.quad_len == 0 && !j.escaped, "a base64 payload cut short");
                j.suffix = Some(0);
            }
        }
    }

    fn json_record_end(&mut self) {
        let j = std::mem::take(&mut self.json);
        if j.stream.is_some() {
            assert_eq!(j.suffix, Some(self.json_suffix.len()), "a DATA record ends early");
            self.json_streamed += 1;
            return;
        }
        self.json_decoded += 1;
        // Not of the server's DATA shape: decoded whole.
        match record_data(Format::Json, &j.head) {
            Some((s, bytes)) => self.payload(s, &bytes),
            None => self.heartbeats += 1,
        }
    }

    /// A chunk's data: RecordIO records.
    fn data(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.record_left == 0 {
                let b = bytes[0];
                bytes = &bytes[1..];
                if b == b'\n' {
                    let len = std::str::from_utf8(&self.record_len).unwrap();
                    self.record_left = len.parse().unwrap_or_else(|_| panic!("RecordIO length {len:?}"));
                    assert!(self.record_left > 0, "an empty record");
                    self.record_len.clear();
                    self.pb = Pb::default();
                    self.json = JsonRecord::default();
                } else {
                    assert!(
                        b.is_ascii_digit() && self.record_len.len() < 20,
                        "RecordIO length byte {b}"
                    );
                    self.record_len.push(b);
                }
                continue;
            }
            let n = (self.record_left.min(bytes.len() as u64)) as usize;
            match self.format {
                Format::Protobuf => self.record(&bytes[..n]),
                Format::Json => self.json_record(&bytes[..n]),
            }
            self.record_left -= n as u64;
            bytes = &bytes[n..];
            if self.record_left == 0 {
                match self.format {
                    Format::Protobuf => self.record_end(),
                    Format::Json => self.json_record_end(),
                }
            }
        }
    }

    /// Bytes of the current record.
    fn record(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let pb = &mut self.pb;
            if pb.payload_left > 0 {
                let n = (pb.payload_left.min(bytes.len() as u64)) as usize;
                // Data.Type: STDOUT is 2, STDERR 3.
                let s = match pb.data_type {
                    Some(2) => 0,
                    Some(3) => 1,
                    other => panic!("a payload of stream type {other:?} (before its type?)"),
                };
                pb.payload_left -= n as u64;
                pb.off += n as u64;
                self.payload(s, &bytes[..n]);
                bytes = &bytes[n..];
                self.field_end();
                continue;
            }
            if pb.skip_left > 0 {
                let n = (pb.skip_left.min(bytes.len() as u64)) as usize;
                pb.skip_left -= n as u64;
                pb.off += n as u64;
                bytes = &bytes[n..];
                self.field_end();
                continue;
            }
            let b = bytes[0];
            bytes = &bytes[1..];
            pb.off += 1;
            assert!(pb.shift < 64, "a varint too long");
            pb.var |= u64::from(b & 0x7f) << pb.shift;
            pb.shift += 7;
            if b & 0x80 != 0 {
                continue;
            }
            let v = std::mem::take(&mut pb.var);
            pb.shift = 0;
            let inside = pb.data_end.is_some();
            match pb.want {
                Want::Tag => {
                    let (field, wire) = (v >> 3, v & 7);
                    pb.want = match wire {
                        0 => Want::Value(field),
                        2 => Want::Len(field),
                        _ => panic!("wire type {wire} in a ProcessIO record"),
                    };
                }
                Want::Value(field) => {
                    pb.want = Want::Tag;
                    match (inside, field) {
                        (false, 1) => pb.io_type = Some(v),
                        (true, 1) => pb.data_type = Some(v),
                        _ => {}
                    }
                    self.field_end();
                }
                Want::Len(field) => {
                    pb.want = Want::Tag;
                    match (inside, field) {
                        (false, 2) => pb.data_end = Some(pb.off + v),
                        (true, 2) => {
                            assert!(v > 0, "an empty DATA record");
                            pb.payload_left = v;
                        }
                        _ => pb.skip_left = v,
                    }
                    self.field_end();
                }
            }
        }
    }

    /// After a field: leaves the Data message at its end.
    fn field_end(&mut self) {
        let pb = &mut self.pb;
        if pb.payload_left == 0 && pb.skip_left == 0 && pb.want == Want::Tag && pb.data_end == Some(pb.off) {
            pb.data_end = None;
        }
    }

    fn record_end(&mut self) {
        let pb = &self.pb;
        assert!(
            pb.want == Want::Tag && pb.payload_left == 0 && pb.skip_left == 0 && pb.data_end.is_none(),
            "a record ends inside a field"
        );
        match pb.io_type {
            Some(1) => assert!(pb.data_type.is_some(), "a DATA record without data"),
            Some(2) => self.heartbeats += 1,
            other => panic!("a ProcessIO record of type {other:?}"),
        }
    }
}

impl Checker for StreamingBodyChecker {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            assert!(!self.ended, "bytes after the last chunk");
            let d = self.chunked.decode(bytes).unwrap();
            bytes = &bytes[d.used..];
            self.data(d.data);
            self.ended |= d.done;
        }
    }

    fn finish(&mut self) {
        if let Some(len) = self.expect_len {
            assert!(
                self.ended,
                "the body did not end with the last chunk (at {:?} of {len:?})",
                self.pos
            );
            assert_eq!(self.pos, len, "stream lengths");
            assert_eq!(self.record_left, 0, "a record cut short");
        }
    }
}
