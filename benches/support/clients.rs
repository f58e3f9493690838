//! The end-to-end benchmark's clients: one light epoll loop over every connection (HTTP
//! output attaches of the drop-in, raw streams of the baselines, conmon's SEQPACKET
//! messages), pinned to CPU 1, reading 256 KiB at a time. Client 0 checks every byte;
//! the others count (and with `--verify`, hash) theirs.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::Checker;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

use super::{Shared, pin, thread_cpu_s};

/// A fast position-sensitive hash of a byte stream split anywhere (words of 8 bytes,
/// the remainder carried).
#[derive(Default, Clone, Copy, PartialEq, Debug)]
pub struct Hash {
    h: u64,
    carry: u64,
    carried: u32,
}

impl Hash {
    fn feed(&mut self, mut bytes: &[u8]) {
        while self.carried > 0 && !bytes.is_empty() {
            self.push_byte(bytes[0]);
            bytes = &bytes[1..];
        }
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.word(u64::from_le_bytes(w.try_into().unwrap()));
        }
        for &b in words.remainder() {
            self.push_byte(b);
        }
    }

    fn push_byte(&mut self, b: u8) {
        self.carry |= u64::from(b) << (8 * self.carried);
        self.carried += 1;
        if self.carried == 8 {
            let w = self.carry;
            self.carry = 0;
            self.carried = 0;
            self.word(w);
        }
    }

    fn word(&mut self, w: u64) {
        self.h = (self.h.rotate_left(5) ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// How a connection's bytes come.
#[derive(Clone, Copy, PartialEq)]
pub enum Wire {
    /// An HTTP response head, then the body.
    Http,
    /// The raw stream.
    Raw,
    /// conmon's messages: a stream byte (2: stdout), then the output.
    Packet,
}

pub struct Conn {
    fd: OwnedFd,
    wire: Wire,
    /// The response head so far (HTTP only, until it ends).
    head: Option<Vec<u8>>,
    body: u64,
    hash: Hash,
}

impl Conn {
    pub fn new(fd: OwnedFd, wire: Wire) -> Conn {
        Conn {
            fd,
            wire,
            head: (wire == Wire::Http).then(Vec::new),
            body: 0,
            hash: Hash::default(),
        }
    }
}

/// Client 0's map from body bytes to container bytes (at each of its reads), so that
/// the others' progress can be told from their body bytes alone: they get the same body.
struct Progress {
    marks: std::collections::VecDeque<(u64, u64)>,
    floor: u64,
}

impl Progress {
    fn delivered_at(&mut self, body: u64) -> u64 {
        while let Some(&(b, p)) = self.marks.front() {
            if b > body {
                break;
            }
            self.floor = p;
            self.marks.pop_front();
        }
        self.floor
    }
}

pub struct ClientReport {
    pub cpu_s: f64,
    pub bodies: Vec<u64>,
    pub hashes: Vec<Hash>,
}

/// Bytes a client asks for per read.
const READ_BYTES: usize = 256 << 10;
/// Reads per connection per wakeup at most.
const READS_PER_WAKEUP: usize = 16;
/// Room for one conmon message (its stream byte and up to 8192 bytes; a smaller buffer
/// would truncate it), and how many one `recvmmsg` takes at most.
const PACKET: usize = 8193;
const PACKETS: usize = 30;

/// Receives up to [`PACKETS`] messages into `buf`, the k-th at `k * PACKET`; their
/// lengths (a 0 is the end), or `None` when there was none.
fn recv_packets(fd: &OwnedFd, buf: &mut [u8]) -> Option<Vec<usize>> {
    use nix::sys::socket::{MsgFlags, MultiHeaders, recvmmsg};
    let mut headers = MultiHeaders::<()>::preallocate(PACKETS, None);
    let mut slices: Vec<[std::io::IoSliceMut; 1]> = buf[..PACKET * PACKETS]
        .chunks_mut(PACKET)
        .map(|b| [std::io::IoSliceMut::new(b)])
        .collect();
    match recvmmsg(
        fd.as_raw_fd(),
        &mut headers,
        slices.iter_mut(),
        MsgFlags::MSG_DONTWAIT,
        None,
    ) {
        Ok(msgs) => Some(msgs.map(|m| m.bytes).collect()),
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => None,
        Err(e) => panic!("recvmmsg: {e}"),
    }
}

/// What the client loop does with body bytes: count them, hash them (`--verify`), and
/// for client 0, check them and note how far the container's stream has come.
struct Sink {
    verify: bool,
    checker: Box<dyn Checker>,
    checked: Arc<AtomicU64>,
    progress: Progress,
}

impl Sink {
    fn body(&mut self, i: usize, c: &mut Conn, bytes: &[u8]) {
        c.body += bytes.len() as u64;
        if self.verify {
            c.hash.feed(bytes);
        }
        if i == 0 {
            self.checker.feed(bytes);
            self.progress
                .marks
                .push_back((c.body, self.checked.load(Ordering::Relaxed)));
        }
    }

    /// Connection `i` reached its end: it is watched no more.
    fn ended(&mut self, epoll: &Epoll, i: usize, c: &Conn) {
        epoll.delete(&c.fd).expect("epoll delete");
        if i == 0 {
            self.checker.finish();
        }
    }

    /// Bytes just read from connection `i`. Returns whether its response head just ended.
    fn take(&mut self, i: usize, c: &mut Conn, bytes: &[u8]) -> bool {
        match c.wire {
            Wire::Raw => self.body(i, c, bytes),
            Wire::Packet => {
                assert_eq!(bytes[0], 2, "client {i}: a conmon message not of stdout");
                self.body(i, c, &bytes[1..]);
            }
            Wire::Http => {
                let Some(head) = &mut c.head else {
                    self.body(i, c, bytes);
                    return false;
                };
                head.extend_from_slice(bytes);
                let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
                assert!(
                    head.starts_with(b"HTTP/1.1 200"),
                    "client {i}: {}",
                    String::from_utf8_lossy(head)
                );
                let rest = head.split_off(end + 4);
                c.head = None;
                self.body(i, c, &rest);
                return true;
            }
        }
        false
    }
}

/// The light client: one epoll loop over every connection, pinned to CPU 1.
pub fn clients(
    mut conns: Vec<Conn>,
    checker: Box<dyn Checker>,
    checked: Arc<AtomicU64>,
    shared: Arc<Shared>,
    verify: bool,
    spin: bool,
) -> ClientReport {
    pin(1);
    let c0 = thread_cpu_s();
    let mut buf = vec![0u8; READ_BYTES];
    let mut sink = Sink {
        verify,
        checker,
        checked,
        progress: Progress {
            marks: Default::default(),
            floor: 0,
        },
    };
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).expect("epoll");
    for (i, c) in conns.iter().enumerate() {
        epoll
            .add(&c.fd, EpollEvent::new(EpollFlags::EPOLLIN, i as u64))
            .expect("epoll add");
    }
    let mut events = vec![EpollEvent::empty(); 1024];
    let mut heads_left = conns.iter().filter(|c| c.head.is_some()).count();
    if heads_left == 0 {
        shared.attached.store(true, Ordering::SeqCst);
    }
    let mut open = conns.len();
    let mut latencies = Vec::new();
    let mut last_seq = 0;
    while open > 0 {
        let ready = match epoll.wait(&mut events, if spin { 0u16 } else { 1000 }) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => panic!("epoll_wait: {e}"),
        };
        for ev in &events[..ready] {
            let i = ev.data() as usize;
            let c = &mut conns[i];
            if c.wire == Wire::Packet {
                // conmon's messages, many per call.
                match recv_packets(&c.fd, &mut buf) {
                    None => {}
                    Some(lens) if lens.contains(&0) => {
                        sink.ended(&epoll, i, c);
                        open -= 1;
                    }
                    Some(lens) => {
                        for (k, n) in lens.into_iter().enumerate() {
                            sink.take(i, c, &buf[k * PACKET..k * PACKET + n]);
                        }
                    }
                }
                continue;
            }
            for _ in 0..READS_PER_WAKEUP {
                let n = match nix::unistd::read(&c.fd, &mut buf) {
                    Ok(n) => n,
                    Err(nix::errno::Errno::EAGAIN) => break,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => panic!("client {i}: read: {e}"),
                };
                if n == 0 {
                    sink.ended(&epoll, i, c);
                    open -= 1;
                    break;
                }
                if sink.take(i, c, &buf[..n]) {
                    heads_left -= 1;
                    if heads_left == 0 {
                        shared.attached.store(true, Ordering::SeqCst);
                    }
                }
                // A short read drained the socket.
                if n < buf.len() {
                    break;
                }
            }
        }
        let slowest = conns
            .iter()
            .filter(|c| c.head.is_none())
            .map(|c| c.body)
            .min()
            .unwrap_or(0);
        let delivered = sink.progress.delivered_at(slowest);
        if delivered >= shared.total && shared.delivered.load(Ordering::SeqCst) < shared.total {
            shared
                .done_at
                .store(shared.base.elapsed().as_nanos() as u64, Ordering::SeqCst);
        }
        shared.delivered.store(delivered, Ordering::SeqCst);
        let seq = shared.seq.load(Ordering::SeqCst);
        if seq > last_seq && delivered >= seq {
            let now = shared.base.elapsed().as_nanos() as u64;
            latencies.push(now.saturating_sub(shared.t_write.load(Ordering::SeqCst)));
            last_seq = seq;
        }
        // (After the latency sample: its write's time is taken.)
        if delivered >= shared.wanted.load(Ordering::SeqCst)
            && let Some(w) = &*shared.workload.lock().unwrap()
        {
            w.unpark();
        }
    }
    *shared.latencies.lock().unwrap() = latencies;
    ClientReport {
        cpu_s: thread_cpu_s() - c0,
        bodies: conns.iter().map(|c| c.body).collect(),
        hashes: conns.iter().map(|c| c.hash).collect(),
    }
}
