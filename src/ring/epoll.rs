//! The epoll engine, for hosts that refuse io_uring (`kernel.io_uring_disabled`, the
//! seccomp profiles of container runtimes). It serves the same operations with the same
//! completions: each is tried at once without blocking, and one that cannot go on yet
//! waits for its descriptor's readiness (level-triggered epoll) and is tried again.
//!
//! * Not blocking: sockets take `MSG_DONTWAIT`; reads and writes take `RWF_NOWAIT`
//!   (`preadv2`/`pwritev2`: pipes, FIFOs, sockets, `/dev/null`). A descriptor without it
//!   is read or written plainly when it is a regular file, non-blocking, or ready now by
//!   `poll` (a terminal: then at most [`BLOCKING_WRITE_MAX`] bytes at a time).
//! * A SENDMSG answers `-EAGAIN` at once, as it does on io_uring (`MSG_DONTWAIT`); every
//!   other operation on a descriptor that is not ready waits, as io_uring's do.
//! * Timeouts are kept in a heap and bound `epoll_wait`; a cancelled operation completes
//!   with `-ECANCELED`. Nothing is ever in the kernel's hands between calls, so dropping
//!   the engine needs no waiting.
//!
//! Simple and plain on purpose: this engine exists for correctness where io_uring is
//! refused; tuning.md measures what it costs.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use super::op::{Done, Prepared};

/// The most written at once to a blocking descriptor that has no non-blocking write (a
/// terminal), once it polls writable: small enough to be taken without waiting.
const BLOCKING_WRITE_MAX: usize = 4096;

/// Events always reported, asked for or not.
const ALWAYS: u32 = (libc::EPOLLERR | libc::EPOLLHUP) as u32;

pub(super) struct Epoll {
    epfd: OwnedFd,
    /// Operations not finished: what each runs.
    waiting: HashMap<u64, Prepared>,
    /// Per descriptor: the operations waiting for it, and the events it is registered for.
    by_fd: HashMap<RawFd, Registered>,
    /// Timeouts by deadline (entries of finished operations are skipped).
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Completions handed out by `next`, made at the last `wait`.
    ready: VecDeque<Done>,
    /// Completions made since the last `wait` (an operation that finished as it was
    /// submitted, a cancel): handed out after the next one, so that a stream that is
    /// always ready cannot keep the loop from timers, signals and other descriptors (as
    /// io_uring's submissions wait for the next `io_uring_enter`).
    done: VecDeque<Done>,
    events: Vec<libc::epoll_event>,
}

#[derive(Default)]
struct Registered {
    keys: Vec<u64>,
    events: u32,
}

/// What one try at an operation came to.
enum Attempt {
    Done(i32),
    /// Not ready: wait for these events.
    Wait(u32),
}

impl Epoll {
    pub(super) fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new
        // descriptor that nothing else owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            // SAFETY: `fd` was just created for us (checked above).
            epfd: unsafe { OwnedFd::from_raw_fd(fd) },
            waiting: HashMap::new(),
            by_fd: HashMap::new(),
            timers: BinaryHeap::new(),
            ready: VecDeque::new(),
            done: VecDeque::new(),
            events: Vec::with_capacity(256),
        })
    }

    /// Starts operation `key`: tries it now, or waits for its descriptor or deadline.
    pub(super) fn start(&mut self, key: u64, op: Prepared) {
        self.waiting.insert(key, op);
        match op {
            Prepared::Timeout { after, .. } => {
                self.timers.push(Reverse((Instant::now() + after, key)));
                self.compact_timers();
            }
            Prepared::Poll { fd, events } => match poll_now(fd, events) {
                0 => self.wait_for(key, fd, events),
                revents => self.finish(key, revents as i32),
            },
            Prepared::Accept { fd } => {
                // Our own listener: non-blocking, so that a wake-up takes every waiting
                // connection (the connections it hands out are blocking, as io_uring's).
                if let Err(e) = crate::sys::set_nonblocking(borrow(fd)) {
                    return self.finish(key, neg(&e));
                }
                self.wait_for(key, fd, libc::EPOLLIN as u32);
            }
            _ => self.try_io(key, op),
        }
    }

    /// Tries a read, write, receive or send; finishes it, or leaves it waiting.
    fn try_io(&mut self, key: u64, op: Prepared) {
        match attempt(op) {
            Attempt::Done(res) => self.finish(key, res),
            Attempt::Wait(events) => {
                let fd = fd_of(op).expect("I/O has a descriptor");
                if !self.by_fd.get(&fd).is_some_and(|r| r.keys.contains(&key)) {
                    self.wait_for(key, fd, events);
                }
            }
        }
    }

    /// Adds `key` to the operations waiting on `fd` for `events`. A descriptor epoll
    /// cannot watch (a regular file) is always ready: a read or write is then made
    /// plainly, a poll answers at once.
    fn wait_for(&mut self, key: u64, fd: RawFd, events: u32) {
        let reg = self.by_fd.entry(fd).or_default();
        reg.keys.push(key);
        // (Errors and hang-ups are always reported: a poll for nothing else still ends.)
        let (old, new) = (reg.events, reg.events | events | ALWAYS);
        if old == new {
            return;
        }
        reg.events = new;
        let op = if old == 0 {
            libc::EPOLL_CTL_ADD
        } else {
            libc::EPOLL_CTL_MOD
        };
        if let Err(e) = self.ctl(op, fd, new) {
            self.unwait(key, fd);
            let res = match (e.raw_os_error(), self.waiting[&key]) {
                (Some(libc::EPERM), op @ (Prepared::Read { .. } | Prepared::Write { .. })) => blocking_io(op),
                (Some(libc::EPERM), Prepared::Poll { events, .. }) => {
                    (events & (libc::POLLIN | libc::POLLOUT) as u32) as i32
                }
                _ => neg(&e),
            };
            self.finish(key, res);
        }
    }

    fn ctl(&self, op: i32, fd: RawFd, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: fd as u64 };
        // SAFETY: `ev` is a valid epoll_event for the call's duration; `fd` is held open
        // by the ring's table while an operation on it is in flight, and it is
        // registered only while one is.
        match unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), op, fd, &mut ev) } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// Takes `key` off `fd`'s waiting list and registers `fd` for what the rest wait for
    /// (or not at all).
    fn unwait(&mut self, key: u64, fd: RawFd) {
        let Some(reg) = self.by_fd.get_mut(&fd) else { return };
        reg.keys.retain(|k| *k != key);
        let wanted = match reg.keys.is_empty() {
            true => 0,
            false => reg
                .keys
                .iter()
                .map(|k| interest(self.waiting[k]))
                .fold(ALWAYS, |a, b| a | b),
        };
        if wanted == reg.events {
            return;
        }
        let registered = reg.events;
        if wanted == 0 {
            self.by_fd.remove(&fd);
            if registered != 0 {
                let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0);
            }
        } else {
            reg.events = wanted;
            let _ = self.ctl(libc::EPOLL_CTL_MOD, fd, wanted);
        }
    }

    /// Operation `key` is over with `res`.
    fn finish(&mut self, key: u64, res: i32) {
        if let Some(fd) = self.waiting.get(&key).copied().and_then(fd_of) {
            self.unwait(key, fd);
        }
        self.waiting.remove(&key);
        self.done.push_back(Done { key, res, more: false });
    }

    /// Cancels `key` if it has not finished: it completes with `-ECANCELED`.
    pub(super) fn cancel(&mut self, key: u64) {
        if self.waiting.contains_key(&key) {
            self.finish(key, -libc::ECANCELED);
        }
    }

    /// Waits (if `block` and nothing is ready) for readiness or the next deadline, and
    /// moves what became ready on.
    pub(super) fn wait(&mut self, block: bool) -> io::Result<()> {
        let timeout = match block && self.ready.is_empty() && self.done.is_empty() {
            false => 0,
            true => self.next_deadline().map_or(-1, |d| {
                let left = d.saturating_duration_since(Instant::now());
                // Rounded up: waking before the deadline would only wait again.
                i32::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX)
            }),
        };
        self.events.clear();
        // SAFETY: the buffer has room for `capacity` events, which is what we pass; the
        // kernel writes at most that many and returns how many.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.capacity() as i32,
                timeout,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            self.ready.append(&mut self.done);
            return match e.raw_os_error() {
                Some(libc::EINTR) => Ok(()),
                _ => Err(e),
            };
        }
        // SAFETY: the kernel initialised the first `n` events (n <= capacity).
        unsafe { self.events.set_len(n as usize) };
        let events = std::mem::take(&mut self.events);
        for ev in &events {
            let (fd, revents) = (ev.u64 as RawFd, ev.events);
            self.on_ready(fd, revents);
        }
        self.events = events;
        self.expire(Instant::now());
        self.ready.append(&mut self.done);
        Ok(())
    }

    /// Drops the entries of finished timeouts once they are most of the heap (a timer
    /// stopped early leaves its entry until its deadline otherwise: with a request
    /// deadline per connection, that would grow with the request rate).
    fn compact_timers(&mut self) {
        if self.timers.len() > 64 && self.timers.len() > 2 * self.waiting.len() {
            let waiting = &self.waiting;
            self.timers.retain(|Reverse((_, key))| waiting.contains_key(key));
        }
    }

    /// The earliest deadline of a timeout still waiting.
    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((deadline, key))) = self.timers.peek().copied() {
            if self.waiting.contains_key(&key) {
                return Some(deadline);
            }
            self.timers.pop();
        }
        None
    }

    fn expire(&mut self, now: Instant) {
        while let Some(Reverse((deadline, key))) = self.timers.peek().copied() {
            if deadline > now {
                break;
            }
            self.timers.pop();
            if self.waiting.contains_key(&key) {
                self.finish(key, -libc::ETIME);
            }
        }
    }

    /// `fd` reported `revents`: each operation waiting on it for one of them goes on.
    fn on_ready(&mut self, fd: RawFd, revents: u32) {
        let Some(reg) = self.by_fd.get(&fd) else { return };
        for key in reg.keys.clone() {
            let Some(&op) = self.waiting.get(&key) else { continue };
            if revents & (interest(op) | ALWAYS) == 0 {
                continue;
            }
            match op {
                Prepared::Poll { events, .. } => {
                    let mask = events | (libc::POLLERR | libc::POLLHUP) as u32;
                    self.finish(key, (revents & mask) as i32);
                }
                Prepared::Accept { fd } => self.accept(key, fd),
                _ => self.try_io(key, op),
            }
        }
    }

    /// Takes every connection waiting on the listener; an error ends the accept (as a
    /// multishot accept on io_uring ends).
    fn accept(&mut self, key: u64, fd: RawFd) {
        loop {
            // SAFETY: null address pointers ask for no peer address; `fd` is held open
            // by the ring's table while the accept is in flight.
            let res = unsafe { libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
            if res >= 0 {
                self.done.push_back(Done { key, res, more: true });
                continue;
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN) => return,
                e => return self.finish(key, -e.unwrap_or(libc::EIO)),
            }
        }
    }

    pub(super) fn next(&mut self) -> Option<Done> {
        self.ready.pop_front()
    }

    /// Every completion made, whether or not a `wait` came since (for dropping the ring:
    /// accepted descriptors among them are then closed).
    pub(super) fn drain(&mut self) -> Option<Done> {
        self.ready.pop_front().or_else(|| self.done.pop_front())
    }
}

/// The events an operation waits for.
fn interest(op: Prepared) -> u32 {
    match op {
        Prepared::Read { .. } | Prepared::Recv { .. } | Prepared::Accept { .. } => libc::EPOLLIN as u32,
        Prepared::Write { .. } | Prepared::Send { .. } | Prepared::SendMsg { .. } => libc::EPOLLOUT as u32,
        Prepared::Poll { events, .. } => events,
        Prepared::Timeout { .. } => 0,
    }
}

fn fd_of(op: Prepared) -> Option<RawFd> {
    match op {
        Prepared::Read { fd, .. }
        | Prepared::Write { fd, .. }
        | Prepared::Recv { fd, .. }
        | Prepared::Send { fd, .. }
        | Prepared::SendMsg { fd, .. }
        | Prepared::Accept { fd }
        | Prepared::Poll { fd, .. } => Some(fd),
        Prepared::Timeout { .. } => None,
    }
}

/// The negated errno of `e`, as a completion carries it.
fn neg(e: &io::Error) -> i32 {
    -e.raw_os_error().unwrap_or(libc::EIO)
}

/// A syscall's result as a completion carries it: the count, or the negated errno.
fn result(ret: isize) -> i32 {
    match ret {
        n if n >= 0 => i32::try_from(n).unwrap_or(i32::MAX),
        _ => neg(&io::Error::last_os_error()),
    }
}

/// One try at a read, write, receive or send, without blocking.
fn attempt(op: Prepared) -> Attempt {
    loop {
        let res = match op {
            Prepared::Read { fd, ptr, len, .. } => nowait_rw(fd, ptr, len, false),
            Prepared::Write { fd, ptr, len, .. } => nowait_rw(fd, ptr.cast_mut(), len, true),
            Prepared::Recv { fd, ptr, len } => {
                // SAFETY: `ptr..ptr+len` is memory the operation's slot owns, valid until
                // its final completion.
                result(unsafe { libc::recv(fd, ptr.cast(), len, libc::MSG_DONTWAIT) })
            }
            Prepared::Send { fd, ptr, len } => {
                let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
                // SAFETY: `ptr..ptr+len` is memory the operation's slot owns, valid until
                // its final completion.
                result(unsafe { libc::send(fd, ptr.cast(), len, flags) })
            }
            Prepared::SendMsg { fd, hdr } => {
                let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
                // SAFETY: the header, its iovecs and the memory they name (the slot's
                // message, or the arena) live until the operation's final completion.
                result(unsafe { libc::sendmsg(fd, hdr, flags) })
            }
            Prepared::Accept { .. } | Prepared::Poll { .. } | Prepared::Timeout { .. } => {
                unreachable!("not a read or write")
            }
        };
        match res {
            e if e == -libc::EINTR => {}
            // A SENDMSG answers at once (it asked not to wait), as on io_uring.
            e if e == -libc::EAGAIN && !matches!(op, Prepared::SendMsg { .. }) => return Attempt::Wait(interest(op)),
            res => return Attempt::Done(res),
        }
    }
}

/// A read or write that does not block: `RWF_NOWAIT` where the descriptor has it, else
/// a plain one when it cannot block for long (see the module's notes); `-EAGAIN` when it
/// is not ready.
fn nowait_rw(fd: RawFd, ptr: *mut u8, len: usize, write: bool) -> i32 {
    let iov = libc::iovec {
        iov_base: ptr.cast(),
        iov_len: len,
    };
    // SAFETY: `iov` points to memory the operation's slot owns (or the arena) for `len`
    // bytes, valid until its final completion; offset -1 is the file's current position.
    let ret = unsafe {
        match write {
            true => libc::pwritev2(fd, &iov, 1, -1, libc::RWF_NOWAIT),
            false => libc::preadv2(fd, &iov, 1, -1, libc::RWF_NOWAIT),
        }
    };
    let res = result(ret);
    // No RWF_NOWAIT here: EOPNOTSUPP, or EINVAL for a buffered write to a file whose
    // filesystem cannot do it without blocking (ext4 on some kernels).
    if res != -libc::EOPNOTSUPP && res != -libc::EINVAL {
        return res;
    }
    let len = match plain_kind(fd) {
        Plain::Always => len,
        Plain::IfReady => {
            let want = if write { libc::POLLOUT } else { libc::POLLIN } as u32;
            if poll_now(fd, want) == 0 {
                return -libc::EAGAIN;
            }
            if write { len.min(BLOCKING_WRITE_MAX) } else { len }
        }
    };
    plain_rw(fd, ptr, len, write)
}

/// How a descriptor without `RWF_NOWAIT` is read or written.
enum Plain {
    /// It never waits for long (a regular file or block device) or not at all (non-blocking).
    Always,
    /// Only once `poll` says it is ready.
    IfReady,
}

fn plain_kind(fd: RawFd) -> Plain {
    // SAFETY: an all-zero stat is a valid buffer for fstat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid buffer; `fd` is held open by the ring's table.
    let file =
        unsafe { libc::fstat(fd, &mut st) } == 0 && matches!(st.st_mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFBLK);
    match file || crate::sys::is_nonblocking(borrow(fd)) {
        true => Plain::Always,
        false => Plain::IfReady,
    }
}

fn plain_rw(fd: RawFd, ptr: *mut u8, len: usize, write: bool) -> i32 {
    // SAFETY: `ptr..ptr+len` is memory the operation's slot owns (or the arena), valid
    // until its final completion.
    result(unsafe {
        match write {
            true => libc::write(fd, ptr.cast_const().cast(), len),
            false => libc::read(fd, ptr.cast(), len),
        }
    })
}

/// A read or write on a descriptor epoll cannot watch (a regular file, which is always
/// ready): made plainly.
fn blocking_io(op: Prepared) -> i32 {
    loop {
        let res = match op {
            Prepared::Read { fd, ptr, len, .. } => plain_rw(fd, ptr, len, false),
            Prepared::Write { fd, ptr, len, .. } => plain_rw(fd, ptr.cast_mut(), len, true),
            _ => unreachable!("only reads and writes"),
        };
        if res != -libc::EINTR {
            return res;
        }
    }
}

/// The events of `events` that `fd` has now (with POLLERR, POLLHUP, POLLNVAL); 0 if none.
fn poll_now(fd: RawFd, events: u32) -> u32 {
    let mut p = libc::pollfd {
        fd,
        events: events as i16,
        revents: 0,
    };
    // SAFETY: one valid pollfd, a zero timeout.
    match unsafe { libc::poll(&mut p, 1, 0) } {
        1 => u32::from(p.revents as u16),
        _ => 0,
    }
}

/// An operation's descriptor, for the helpers that take a borrowed one.
fn borrow<'a>(fd: RawFd) -> std::os::fd::BorrowedFd<'a> {
    // SAFETY: only called with the descriptor of an operation in flight, which the ring's
    // table holds open until that operation's final completion, and only for calls made
    // within this engine's handling of it.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}
