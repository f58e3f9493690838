//! The ring room on a real kernel: operations, deferred closes, and shutdown with
//! operations in flight.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use common::*;
use switchboard::config::RingConfig;
use switchboard::msg::Msg;
use switchboard::ring::{Op, Output, Ring};

/// Waits (if `block`) and takes every completion that is ready.
fn collect(ring: &mut Ring, out: &mut Vec<switchboard::ring::Completion>, block: bool) {
    ring.wait(block).unwrap();
    while let Some(c) = ring.next() {
        out.push(c);
    }
}

/// Whether `fd` is an open descriptor of this process.
fn is_open(fd: i32) -> bool {
    std::fs::symlink_metadata(format!("/proc/self/fd/{fd}")).is_ok()
}

#[test]
fn sends_receives_and_reads_into_the_arena() {
    within(30, || {
        let mut ring = Ring::new(RingConfig::default()).unwrap();
        ring.init_arena(4096);
        let (r, w) = pipe(1 << 16);
        let (a, b) = socket_pair();
        let (r, a) = (ring.adopt(r), ring.adopt(a));
        nix::unistd::write(&w, b"container bytes").unwrap();
        ring.submit(Op::ReadArena { fd: r, range: 100..200 }, 1);
        ring.submit(
            Op::Recv {
                fd: a,
                buf: Vec::with_capacity(64),
            },
            2,
        );
        nix::unistd::write(&b, b"from the client").unwrap();
        let mut done = Vec::new();
        while done.len() < 2 {
            collect(&mut ring, &mut done, true);
        }
        done.sort_by_key(|c| c.token);
        assert_eq!(done[0].result().unwrap(), 15);
        assert_eq!(ring.arena(100..115), b"container bytes");
        assert_eq!(done.pop().unwrap().into_buf(), b"from the client");
        // One SENDMSG from arena memory and copied framing.
        let mut msg = Msg::default();
        msg.push_copy(b"[");
        msg.push_arena(100..115);
        msg.push_copy(b"]");
        ring.submit(Op::SendMsg { fd: a, msg }, 3);
        done.clear();
        collect(&mut ring, &mut done, true);
        assert_eq!(done[0].result().unwrap(), 17);
        assert!(matches!(done[0].output, Output::Msg(_)));
        let mut buf = [0u8; 64];
        let n = nix::unistd::read(&b, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"[container bytes]");
    });
}

#[test]
fn a_close_waits_for_the_operations_on_the_fd() {
    within(30, || {
        let mut ring = Ring::new(RingConfig::default()).unwrap();
        let (a, b): (OwnedFd, OwnedFd) = socket_pair();
        let raw = a.as_raw_fd();
        let a = ring.adopt(a);
        ring.submit(
            Op::Recv {
                fd: a,
                buf: Vec::with_capacity(16),
            },
            1,
        );
        ring.close(a);
        assert!(is_open(raw), "closed while a receive was in flight");
        assert_eq!(ring.live_fds(), 1);
        nix::unistd::write(&b, b"x").unwrap();
        let mut done = Vec::new();
        collect(&mut ring, &mut done, true);
        assert_eq!(done.len(), 1);
        assert_eq!(ring.live_fds(), 0);
    });
}

#[test]
fn timeouts_and_cancellation() {
    within(30, || {
        let mut ring = Ring::new(RingConfig::default()).unwrap();
        ring.submit(
            Op::Timeout {
                after: Duration::from_millis(10),
            },
            1,
        );
        let (a, _b) = socket_pair();
        let a = ring.adopt(a);
        let recv = ring.submit(
            Op::Recv {
                fd: a,
                buf: Vec::with_capacity(16),
            },
            2,
        );
        ring.cancel(recv, false);
        let forgotten = ring.submit(
            Op::Recv {
                fd: a,
                buf: Vec::with_capacity(16),
            },
            3,
        );
        ring.cancel(forgotten, true);
        let mut done = Vec::new();
        while ring.in_flight() > 0 {
            collect(&mut ring, &mut done, true);
        }
        done.sort_by_key(|c| c.token);
        let tokens: Vec<(u64, i32)> = done.iter().map(|c| (c.token, c.res)).collect();
        assert_eq!(tokens, [(1, -libc::ETIME), (2, -libc::ECANCELED)]);
    });
}

#[test]
fn dropping_the_ring_cancels_what_is_in_flight() {
    within(30, || {
        let (r, w) = pipe(1 << 16);
        let (a, _b) = socket_pair();
        let listener = std::os::unix::net::UnixListener::bind(
            std::env::temp_dir().join(format!("ring-test-{}.sock", std::process::id())),
        )
        .unwrap();
        {
            let mut ring = Ring::new(RingConfig::default()).unwrap();
            ring.init_arena(1 << 16);
            // Duplicates: the ring closes its own, and the test reads on after it.
            let r = ring.adopt(r.try_clone().unwrap());
            let a = ring.adopt(a);
            let l = ring.adopt(std::os::fd::OwnedFd::from(listener.try_clone().unwrap()));
            ring.submit(Op::ReadArena { fd: r, range: 0..4096 }, 1);
            ring.submit(
                Op::Recv {
                    fd: a,
                    buf: Vec::with_capacity(4096),
                },
                2,
            );
            ring.submit(
                Op::Poll {
                    fd: a,
                    events: libc::POLLIN as u32,
                },
                3,
            );
            ring.submit(Op::AcceptMulti { fd: l }, 4);
            ring.submit(
                Op::Timeout {
                    after: Duration::from_secs(3600),
                },
                5,
            );
            let mut done = Vec::new();
            collect(&mut ring, &mut done, false);
            assert!(done.is_empty());
            assert_eq!(ring.in_flight(), 5);
        }
        // The cancelled read did not take what is written now: it is still in the pipe.
        nix::unistd::write(&w, b"late").unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(nix::unistd::read(&r, &mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"late");
        let _ = std::fs::remove_file(std::env::temp_dir().join(format!("ring-test-{}.sock", std::process::id())));
    });
}
