//! The io_uring core: one ring per thread, driven by a hand-written loop on the `io-uring`
//! crate. This room holds all of the crate's `unsafe` code that touches the kernel.
//!
//! * Every operation lives in a slot of an op slab from submission to its final
//!   completion, owning the buffers and the `msghdr`/iovecs/timespec the kernel reads
//!   ([`op`]). A slot is either in flight, or cancelled-but-in-flight (its owner has gone:
//!   the completion is swallowed and its resources freed, an accepted fd closed); it is
//!   freed when the last completion of the operation arrives.
//! * File descriptors are handles ([`Fd`]) into a table that closes a descriptor only once
//!   no operation on it is in flight.
//! * Container output is read into the arena, registered as a fixed buffer when the
//!   kernel and `RLIMIT_MEMLOCK` allow, and sent from there without user-space copies.
//! * Dropping the ring cancels what is still in flight and waits for it before freeing
//!   any memory the kernel could touch.

mod arena;
mod fd;
mod op;

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::{IoUring, Probe, cqueue, opcode, squeue, types};

use crate::msg::{Msg, Seg};
use crate::slab::{Key, Slab};
use arena::Arena;
pub use fd::Fd;
use fd::FdTable;
use op::CURRENT_POSITION;
pub use op::{Completion, Op, Output};

/// An operation handle, valid until its final completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpId(Key);

/// What a slot keeps alive for the kernel, and how to read its result.
enum Resources {
    None,
    /// A buffer the kernel fills (Read, Recv): its length grows by the result.
    Fill(Vec<u8>),
    /// A buffer the kernel reads (Write, Send).
    Drain(Vec<u8>),
    Msg(Box<MsgOp>),
    ArenaRead(Range<usize>),
    /// The timeout the kernel reads; only kept alive.
    Timespec {
        _kept: Box<types::Timespec>,
    },
    /// Each result is a new descriptor that we own.
    Accept,
}

/// A SENDMSG's message and the header that points into it.
struct MsgOp {
    msg: Msg,
    hdr: libc::msghdr,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    InFlight,
    /// The owner is gone: swallow completions, free resources.
    Forgotten,
}

struct Slot {
    token: u64,
    fd: Option<Fd>,
    resources: Resources,
    state: State,
}

pub use crate::config::RingConfig;

/// The opcodes the switchboard needs, with their names for error messages.
const REQUIRED_OPCODES: &[(u8, &str)] = &[
    (opcode::Read::CODE, "READ"),
    (opcode::Write::CODE, "WRITE"),
    (opcode::ReadFixed::CODE, "READ_FIXED"),
    (opcode::WriteFixed::CODE, "WRITE_FIXED"),
    (opcode::Recv::CODE, "RECV"),
    (opcode::Send::CODE, "SEND"),
    (opcode::SendMsg::CODE, "SENDMSG"),
    (opcode::Accept::CODE, "ACCEPT"),
    (opcode::PollAdd::CODE, "POLL_ADD"),
    (opcode::Timeout::CODE, "TIMEOUT"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
];

/// An io_uring instance with its op slab, fd table and arena.
pub struct Ring {
    uring: IoUring,
    slots: Slab<Slot>,
    fds: FdTable,
    arena: Arena,
    /// Completions taken off a full completion queue (to make room), not yet handed out.
    /// They stay raw until [`Ring::next`], so a slot lives (and can be forgotten) until
    /// its completion is delivered.
    backlog: VecDeque<cqueue::Entry>,
}

impl Ring {
    /// Sets up a ring, probing the kernel: fails with a message that names what is missing
    /// (io_uring disabled by sysctl or seccomp, or an opcode this kernel lacks).
    pub fn new(config: RingConfig) -> io::Result<Ring> {
        let entries = config.entries.max(8);
        let uring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(entries * 4)
            .build(entries)
            .or_else(|_| IoUring::builder().setup_cqsize(entries * 4).build(entries))
            .map_err(|e| {
                let why = match e.raw_os_error() {
                    Some(libc::ENOSYS) => "the kernel was built without io_uring",
                    Some(libc::EPERM) | Some(libc::EACCES) => {
                        "io_uring is disabled for this process: see /proc/sys/kernel/io_uring_disabled \
                         (0 allows it) and the seccomp profile of the container or service"
                    }
                    Some(libc::ENOMEM) => "not enough locked memory for the ring (RLIMIT_MEMLOCK)",
                    _ => "io_uring_setup failed",
                };
                io::Error::new(e.kind(), format!("cannot use io_uring: {why} ({e})"))
            })?;
        let mut probe = Probe::new();
        uring.submitter().register_probe(&mut probe).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot use io_uring: probing opcodes failed ({e}); Linux 6.1 or newer is needed"),
            )
        })?;
        let missing: Vec<&str> = REQUIRED_OPCODES
            .iter()
            .filter(|(code, _)| !probe.is_supported(*code))
            .map(|(_, name)| *name)
            .collect();
        if !missing.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "cannot use io_uring: this kernel lacks {}; Linux 6.1 or newer is needed",
                    missing.join(", ")
                ),
            ));
        }
        Ok(Ring {
            uring,
            slots: Slab::default(),
            fds: FdTable::default(),
            arena: Arena::new(0),
            backlog: VecDeque::new(),
        })
    }

    /// Allocates the arena (once) and registers it as a fixed buffer if the kernel allows;
    /// otherwise reads into it are plain READs. Returns whether it is registered.
    pub fn init_arena(&mut self, len: usize) -> bool {
        assert_eq!(self.arena.len(), 0, "the arena is allocated once");
        self.arena = Arena::new(len);
        let iov = [self.arena.iovec()];
        // SAFETY: the iovec describes the arena's live allocation, which stays allocated and
        // unmoved until the ring is dropped; Drop waits for every operation first, and the
        // registration dies with the ring.
        self.arena.registered = len > 0 && unsafe { self.uring.submitter().register_buffers(&iov) }.is_ok();
        self.arena.registered
    }

    pub fn arena_len(&self) -> usize {
        self.arena.len()
    }

    pub fn arena_registered(&self) -> bool {
        self.arena.registered
    }

    /// Arena bytes no read is writing (panics otherwise).
    pub fn arena(&self, range: Range<usize>) -> &[u8] {
        self.arena.slice(range)
    }

    /// Puts an owned descriptor under the ring's care.
    pub fn adopt(&mut self, fd: OwnedFd) -> Fd {
        self.fds.adopt(fd)
    }

    /// Takes ownership of a descriptor this process inherited by number (the switchboard
    /// is handed its container's fds this way). The same number adopted twice gives the
    /// same handle, so a descriptor is never owned twice. Fails if it is not open.
    pub fn adopt_inherited(&mut self, raw: RawFd) -> io::Result<Fd> {
        if let Some(fd) = self.fds.find_raw(raw) {
            return Ok(fd);
        }
        // SAFETY: F_GETFD only reads the descriptor flags of the number; on a closed
        // number it fails with EBADF and touches nothing.
        if unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the number is open (checked above) and names a descriptor this process
        // inherited for the switchboard, which nothing else in the process owns; the table
        // held no entry for it (checked above), so this is its only owner from now on.
        let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        Ok(self.fds.adopt(owned))
    }

    /// The descriptor, borrowed for direct syscalls (splice, fcntl, ioctl) while the
    /// ring is borrowed: it cannot be closed meanwhile.
    pub fn borrow(&self, fd: Fd) -> BorrowedFd<'_> {
        let raw = self.fds.raw(fd);
        // SAFETY: the table holds `raw` open (`raw` panics on a closed handle), and only
        // `&mut self` methods close table entries, which cannot run while this borrow of
        // the ring lives.
        unsafe { BorrowedFd::borrow_raw(raw) }
    }

    /// The descriptor number, for direct syscalls.
    pub fn raw(&self, fd: Fd) -> RawFd {
        self.fds.raw(fd)
    }

    pub fn is_open(&self, fd: Fd) -> bool {
        self.fds.is_open(fd)
    }

    /// Closes `fd` once no operation on it is in flight.
    pub fn close(&mut self, fd: Fd) {
        self.fds.close(fd);
    }

    /// Descriptors the ring still holds.
    pub fn live_fds(&self) -> usize {
        self.fds.live()
    }

    /// Operations in flight.
    pub fn in_flight(&self) -> usize {
        self.slots.len()
    }

    fn alloc_slot(&mut self, slot: Slot) -> OpId {
        OpId(self.slots.insert(slot))
    }

    /// Submits `op`; its completion will carry `token`.
    pub fn submit(&mut self, op: Op, token: u64) -> OpId {
        let fd = op.fd();
        let raw = fd.map(|fd| types::Fd(self.fds.acquire(fd)));
        let slot = Slot {
            token,
            fd,
            resources: Resources::None,
            state: State::InFlight,
        };
        let id = self.alloc_slot(slot);
        let (entry, resources) = self.build(op, raw);
        self.slots.get_mut(id.0).expect("just allocated").resources = resources;
        self.push(entry.user_data(id.0.to_u64()));
        id
    }

    fn build(&mut self, op: Op, fd: Option<types::Fd>) -> (squeue::Entry, Resources) {
        let fd = || fd.expect("operation has an fd");
        match op {
            Op::ReadArena { range, .. } => {
                let len = range.len() as u32;
                let ptr = self.arena.begin_write(range.clone());
                let entry = if self.arena.registered {
                    opcode::ReadFixed::new(fd(), ptr, len, 0)
                        .offset(CURRENT_POSITION)
                        .build()
                } else {
                    opcode::Read::new(fd(), ptr, len).offset(CURRENT_POSITION).build()
                };
                (entry, Resources::ArenaRead(range))
            }
            Op::WriteArena { range, .. } => {
                let ptr = self.arena.ptr(&range);
                let len = range.len() as u32;
                let entry = if self.arena.registered {
                    opcode::WriteFixed::new(fd(), ptr, len, 0)
                        .offset(CURRENT_POSITION)
                        .build()
                } else {
                    opcode::Write::new(fd(), ptr, len).offset(CURRENT_POSITION).build()
                };
                (entry, Resources::None)
            }
            Op::Read { mut buf, .. } => {
                let spare = buf.spare_capacity_mut();
                let entry = opcode::Read::new(fd(), spare.as_mut_ptr().cast(), spare.len() as u32)
                    .offset(CURRENT_POSITION)
                    .build();
                (entry, Resources::Fill(buf))
            }
            Op::Write { buf, start, .. } => {
                let bytes = &buf[start..];
                let entry = opcode::Write::new(fd(), bytes.as_ptr(), bytes.len() as u32)
                    .offset(CURRENT_POSITION)
                    .build();
                (entry, Resources::Drain(buf))
            }
            Op::Recv { mut buf, .. } => {
                let spare = buf.spare_capacity_mut();
                let entry = opcode::Recv::new(fd(), spare.as_mut_ptr().cast(), spare.len() as u32).build();
                (entry, Resources::Fill(buf))
            }
            Op::Send { buf, start, .. } => {
                let bytes = &buf[start..];
                let entry = opcode::Send::new(fd(), bytes.as_ptr(), bytes.len() as u32)
                    .flags(libc::MSG_NOSIGNAL)
                    .build();
                (entry, Resources::Drain(buf))
            }
            Op::SendMsg { mut msg, .. } => {
                msg.iov.clear();
                for seg in &msg.segs {
                    let (ptr, len) = match seg {
                        Seg::Scratch(r) => (msg.scratch[r.clone()].as_ptr(), r.len()),
                        Seg::Arena(r) => (self.arena.ptr(r).cast_const(), r.len()),
                        Seg::Held { index, range } => (msg.held[*index][range.clone()].as_ptr(), range.len()),
                    };
                    msg.iov.push(libc::iovec {
                        iov_base: ptr.cast_mut().cast(),
                        iov_len: len,
                    });
                }
                // SAFETY: an all-zero msghdr is valid: null pointers and zero lengths.
                let hdr: libc::msghdr = unsafe { std::mem::zeroed() };
                let mut op = Box::new(MsgOp { msg, hdr });
                op.hdr.msg_iov = op.msg.iov.as_mut_ptr();
                op.hdr.msg_iovlen = op.msg.iov.len() as _;
                let entry = opcode::SendMsg::new(fd(), &op.hdr)
                    .flags((libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) as u32)
                    .build();
                (entry, Resources::Msg(op))
            }
            Op::AcceptMulti { .. } => {
                let entry = opcode::AcceptMulti::new(fd()).flags(libc::SOCK_CLOEXEC).build();
                (entry, Resources::Accept)
            }
            Op::Poll { events, .. } => (opcode::PollAdd::new(fd(), events).build(), Resources::None),
            Op::Timeout { after } => {
                let ts = Box::new(types::Timespec::new().sec(after.as_secs()).nsec(after.subsec_nanos()));
                let entry = opcode::Timeout::new(&*ts).build();
                (entry, Resources::Timespec { _kept: ts })
            }
        }
    }

    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: everything the entry points to is owned by its slot (heap memory that
            // does not move while the slot lives) or is the arena, and lives until the
            // operation's final completion: slots are freed only on that CQE, and Drop
            // waits for all of them before freeing anything.
            if unsafe { self.uring.submission().push(&entry) }.is_ok() {
                return;
            }
            // The submission queue is full: hand it to the kernel and retry. EBUSY means the
            // completion queue is full too: reap it first.
            match self.uring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => self.reap_into_backlog(),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) => {}
                // Nothing can go on without the ring; fail loudly rather than lose track of
                // operations.
                Err(e) => panic!("io_uring_enter failed: {e}"),
            }
        }
    }

    /// Moves completions off a full completion queue, so submission can go on.
    fn reap_into_backlog(&mut self) {
        self.backlog.extend(self.uring.completion());
    }

    /// Asks the kernel to cancel `id`. Its completion still arrives (usually `-ECANCELED`)
    /// unless `forget` is set, in which case it is swallowed and its resources freed.
    pub fn cancel(&mut self, id: OpId, forget: bool) {
        let Some(slot) = self.slots.get_mut(id.0) else {
            return;
        };
        if forget {
            slot.state = State::Forgotten;
        }
        let cancel = Slot {
            token: 0,
            fd: None,
            resources: Resources::None,
            state: State::Forgotten,
        };
        let cancel_id = self.alloc_slot(cancel);
        self.push(
            opcode::AsyncCancel::new(id.0.to_u64())
                .build()
                .user_data(cancel_id.0.to_u64()),
        );
    }

    /// Submits what is queued and, if `block`, waits until a completion is ready (unless
    /// nothing is in flight). Take completions with [`Ring::next`].
    pub fn wait(&mut self, block: bool) -> io::Result<()> {
        let ready = !self.backlog.is_empty() || !self.uring.completion().is_empty();
        let want = usize::from(block && !ready && !self.slots.is_empty());
        loop {
            match self.uring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) && want == 0 => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // The completion queue is full: make room; there is something to handle.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    self.reap_into_backlog();
                    if !self.backlog.is_empty() {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The next completion, one at a time. An operation forgotten before its completion
    /// is handed out (even one already posted by the kernel) is swallowed here.
    #[allow(clippy::should_implement_trait)] // An iterator would borrow the ring between items.
    pub fn next(&mut self) -> Option<Completion> {
        loop {
            let cqe = match self.backlog.pop_front() {
                Some(cqe) => cqe,
                None => self.uring.completion().next()?,
            };
            if let Some(c) = self.complete(cqe) {
                return Some(c);
            }
        }
    }

    fn complete(&mut self, cqe: cqueue::Entry) -> Option<Completion> {
        let id = OpId(Key::from_u64(cqe.user_data()));
        let res = cqe.result();
        let more = cqueue::more(cqe.flags());
        let Some(slot) = self.slots.get_mut(id.0) else {
            panic!("completion for unknown operation {id:?}");
        };
        let (token, state) = (slot.token, slot.state);
        if more {
            // A multishot operation continues; its slot and resources stay.
            let output = match slot.resources {
                Resources::Accept => accepted(res),
                _ => Output::None,
            };
            return (state == State::InFlight).then_some(Completion {
                token,
                res,
                more,
                output,
            });
        }
        let slot = self.slots.remove(id.0).expect("checked above");
        if let Some(fd) = slot.fd {
            self.fds.release(fd);
        }
        let output = match slot.resources {
            Resources::None | Resources::Timespec { .. } => Output::None,
            Resources::Accept => accepted(res),
            Resources::Fill(mut buf) => {
                if res > 0 {
                    let new_len = buf.len() + res as usize;
                    assert!(
                        new_len <= buf.capacity(),
                        "the kernel reported more bytes than the buffer holds"
                    );
                    // SAFETY: the kernel wrote `res` bytes into the spare capacity that this
                    // buffer offered at submission (its length has not changed since: the
                    // slot owned it), and `new_len` is within the capacity (checked).
                    unsafe { buf.set_len(new_len) };
                }
                Output::Buf(buf)
            }
            Resources::Drain(buf) => Output::Buf(buf),
            Resources::Msg(op) => Output::Msg(op.msg),
            Resources::ArenaRead(range) => {
                self.arena.end_write(&range);
                Output::None
            }
        };
        // A forgotten operation's output is dropped here (an accepted fd is closed).
        (state == State::InFlight).then_some(Completion {
            token,
            res,
            more,
            output,
        })
    }
}

fn accepted(res: i32) -> Output {
    if res < 0 {
        return Output::None;
    }
    // SAFETY: a successful ACCEPT's result is a new descriptor the kernel created for this
    // process; nothing else refers to it, so we are its only owner.
    Output::Accepted(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(res) })
}

impl Drop for Ring {
    /// Cancels whatever is still in flight and waits for every operation to complete, so
    /// that the kernel touches no buffer after it is freed. If the kernel never completes
    /// them, the memory is leaked rather than freed under it.
    fn drop(&mut self) {
        if self.slots.is_empty() {
            return;
        }
        let pending: Vec<OpId> = self.slots.iter().map(|(key, _)| OpId(key)).collect();
        for id in pending {
            self.cancel(id, true);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.slots.is_empty() && Instant::now() < deadline {
            let ts = types::Timespec::new().nsec(100_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.uring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY)) => {}
                Err(_) => break,
            }
            while self.next().is_some() {}
        }
        if !self.slots.is_empty() {
            std::mem::forget(std::mem::replace(&mut self.arena, Arena::new(0)));
            std::mem::forget(std::mem::take(&mut self.slots));
        }
    }
}
