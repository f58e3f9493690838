//! What the fan-out benchmarks share: CPU pinning, and the baseline relays they measure
//! ours against (a naive relay, and the raw tee + splice limit).

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{SpliceFFlags, splice, tee};
use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;

/// Chunks of the naive relay's reads.
pub const NAIVE_CHUNK: usize = 64 << 10;
/// Chunks of the raw tee + splice loop (tuning.md, K6: 256 KiB beat 64 KiB).
pub const TEE_CHUNK: usize = 256 << 10;

/// Pins the calling thread (0) or process `pid` to `cpu`.
pub fn pin(pid: i32, cpu: usize) {
    let mut set = CpuSet::new();
    set.set(cpu).expect("cpu index");
    sched_setaffinity(Pid::from_raw(pid), &set).expect("sched_setaffinity");
}

pub fn write_all(fd: impl AsFd, mut buf: &[u8]) {
    while !buf.is_empty() {
        match nix::unistd::write(&fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => {}
            Err(e) => panic!("write: {e}"),
        }
    }
}

/// Reads once, then a blocking `write()` to every consumer and to the logger, until the
/// source ends (a PTY master's EIO included).
pub fn naive(src: OwnedFd, socks: Vec<OwnedFd>, logger: OwnedFd) {
    let mut buf = vec![0u8; NAIVE_CHUNK];
    loop {
        let n = match nix::unistd::read(&src, &mut buf) {
            Ok(0) | Err(Errno::EIO) => return,
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => panic!("read: {e}"),
        };
        for s in &socks {
            write_all(s, &buf[..n]);
        }
        write_all(&logger, &buf[..n]);
    }
}

/// Blocking tee of up to `len` bytes; 0 at the end of the source.
fn tee_blocking(src: &OwnedFd, dst: &OwnedFd, len: usize) -> usize {
    loop {
        match tee(src, dst, len, SpliceFFlags::empty()) {
            Ok(n) => return n,
            Err(Errno::EINTR) => {}
            Err(e) => panic!("tee: {e}"),
        }
    }
}

fn splice_exact(from: &OwnedFd, to: &OwnedFd, mut len: usize) {
    while len > 0 {
        match splice(from, None, to, None, len, SpliceFFlags::SPLICE_F_MOVE) {
            Ok(0) => panic!("splice: the source ended early"),
            Ok(n) => len -= n,
            Err(Errno::EINTR) => {}
            Err(e) => panic!("splice: {e}"),
        }
    }
}

/// The raw limit: tee every chunk into each consumer's pipe, splice each pipe into its
/// socket, then splice the chunk into the logger, in lockstep, with no framing, no lag
/// bound and no event loop.
pub fn tee_splice(src: OwnedFd, socks: Vec<OwnedFd>, logger: OwnedFd) {
    let pipes: Vec<(OwnedFd, OwnedFd)> = socks
        .iter()
        .map(|_| {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
            switchboard::sys::grow_pipe(&w, TEE_CHUNK).unwrap();
            (r, w)
        })
        .collect();
    loop {
        let n = tee_blocking(&src, &pipes[0].1, TEE_CHUNK);
        if n == 0 {
            return;
        }
        for (_, w) in &pipes[1..] {
            assert_eq!(tee_blocking(&src, w, n), n, "short tee");
        }
        for ((r, _), s) in pipes.iter().zip(&socks) {
            splice_exact(r, s, n);
        }
        splice_exact(&src, &logger, n);
    }
}
