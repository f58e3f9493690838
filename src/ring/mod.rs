//! The event core: one engine per thread, behind one interface. Callers submit
//! operations that own their buffers and take completions, whichever engine runs them:
//! io_uring ([`uring`], a hand-written loop on the `io-uring` crate) where the kernel
//! allows it, else epoll readiness and non-blocking syscalls ([`epoll`]). This room holds
//! all of the crate's `unsafe` code that touches the kernel.
//!
//! * Every operation lives in a slot of an op slab from submission to its final
//!   completion, owning the buffers and the `msghdr`/iovecs/timespec the kernel reads
//!   ([`op`]). A slot is either in flight, or cancelled-but-in-flight (its owner has gone:
//!   the completion is swallowed and its resources freed, an accepted fd closed); it is
//!   freed when the last completion of the operation arrives.
//! * File descriptors are handles ([`Fd`]) into a table that closes a descriptor only once
//!   no operation on it is in flight.
//! * Container output is read into the arena, registered as a fixed buffer when the
//!   kernel and `RLIMIT_MEMLOCK` allow (io_uring), and sent from there without user-space
//!   copies.
//! * Dropping the ring cancels what is still in flight and waits for it before freeing
//!   any memory the kernel could touch.

mod arena;
mod epoll;
mod fd;
mod op;
mod uring;

use std::fmt;
use std::io;
use std::ops::Range;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::types;

use crate::config::EngineChoice;
use crate::msg::{Msg, Seg};
use crate::slab::{Key, Slab};
use arena::Arena;
pub use fd::Fd;
use fd::FdTable;
use op::Prepared;
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

/// The engine a ring runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    IoUring,
    Epoll,
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Engine::IoUring => "io_uring",
            Engine::Epoll => "epoll",
        })
    }
}

enum Backend {
    Uring(uring::Uring),
    Epoll(epoll::Epoll),
}

/// The event core: an engine with its op slab, fd table and arena.
pub struct Ring {
    backend: Backend,
    slots: Slab<Slot>,
    fds: FdTable,
    arena: Arena,
    /// Why io_uring was not used, when the choice was `auto` and it was refused.
    fallback: Option<String>,
}

impl Ring {
    /// Sets up the engine `config` chooses. io_uring is probed (set-up and every opcode we
    /// use): `IoUring` fails with a message that names what is missing (io_uring disabled
    /// by sysctl or seccomp, an opcode this kernel lacks); `Auto` then runs on epoll and
    /// says why in [`Ring::fallback`]. `Epoll` never touches io_uring.
    pub fn new(config: RingConfig) -> io::Result<Ring> {
        let mut fallback = None;
        let backend = match config.engine {
            EngineChoice::IoUring => Backend::Uring(uring::Uring::new(config.entries)?),
            EngineChoice::Epoll => Backend::Epoll(epoll::Epoll::new()?),
            EngineChoice::Auto => match uring::Uring::new(config.entries) {
                Ok(u) => Backend::Uring(u),
                Err(e) => {
                    fallback = Some(e.to_string());
                    Backend::Epoll(epoll::Epoll::new()?)
                }
            },
        };
        Ok(Ring {
            backend,
            slots: Slab::default(),
            fds: FdTable::default(),
            arena: Arena::new(0),
            fallback,
        })
    }

    /// The engine this ring runs on.
    pub fn engine(&self) -> Engine {
        match self.backend {
            Backend::Uring(_) => Engine::IoUring,
            Backend::Epoll(_) => Engine::Epoll,
        }
    }

    /// Why io_uring was refused, when `auto` fell back to epoll.
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// Allocates the arena (once) and registers it as a fixed buffer if the engine and
    /// kernel allow; otherwise reads into it are plain reads. Returns whether it is
    /// registered.
    pub fn init_arena(&mut self, len: usize) -> bool {
        assert_eq!(self.arena.len(), 0, "the arena is allocated once");
        self.arena = Arena::new(len);
        self.arena.registered = match &mut self.backend {
            Backend::Uring(u) => len > 0 && u.register(self.arena.iovec()),
            Backend::Epoll(_) => false,
        };
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

    /// Submits `op`; its completion will carry `token`.
    pub fn submit(&mut self, op: Op, token: u64) -> OpId {
        let fd = op.fd();
        let raw = fd.map(|fd| self.fds.acquire(fd));
        let slot = Slot {
            token,
            fd,
            resources: Resources::None,
            state: State::InFlight,
        };
        let id = OpId(self.slots.insert(slot));
        let (prepared, resources) = self.prepare(op, raw);
        self.slots.get_mut(id.0).expect("just allocated").resources = resources;
        match &mut self.backend {
            Backend::Uring(u) => u.push_op(id.0.to_u64(), prepared),
            Backend::Epoll(e) => e.start(id.0.to_u64(), prepared),
        }
        id
    }

    /// Turns `op` into what either engine runs, and the resources its slot keeps.
    fn prepare(&mut self, op: Op, fd: Option<RawFd>) -> (Prepared, Resources) {
        let fd = || fd.expect("operation has an fd");
        let fixed = self.arena.registered;
        match op {
            Op::ReadArena { range, .. } => {
                let len = range.len();
                let ptr = self.arena.begin_write(range.clone());
                (
                    Prepared::Read {
                        fd: fd(),
                        ptr,
                        len,
                        fixed,
                    },
                    Resources::ArenaRead(range),
                )
            }
            Op::WriteArena { range, .. } => {
                let ptr = self.arena.ptr(&range).cast_const();
                (
                    Prepared::Write {
                        fd: fd(),
                        ptr,
                        len: range.len(),
                        fixed,
                    },
                    Resources::None,
                )
            }
            Op::Read { mut buf, .. } => {
                let spare = buf.spare_capacity_mut();
                let (ptr, len) = (spare.as_mut_ptr().cast(), spare.len());
                let fixed = false;
                (
                    Prepared::Read {
                        fd: fd(),
                        ptr,
                        len,
                        fixed,
                    },
                    Resources::Fill(buf),
                )
            }
            Op::Write { buf, start, .. } => {
                let bytes = &buf[start..];
                let (ptr, len, fixed) = (bytes.as_ptr(), bytes.len(), false);
                (
                    Prepared::Write {
                        fd: fd(),
                        ptr,
                        len,
                        fixed,
                    },
                    Resources::Drain(buf),
                )
            }
            Op::Recv { mut buf, .. } => {
                let spare = buf.spare_capacity_mut();
                let (ptr, len) = (spare.as_mut_ptr().cast(), spare.len());
                (Prepared::Recv { fd: fd(), ptr, len }, Resources::Fill(buf))
            }
            Op::Send { buf, start, .. } => {
                let bytes = &buf[start..];
                let (ptr, len) = (bytes.as_ptr(), bytes.len());
                (Prepared::Send { fd: fd(), ptr, len }, Resources::Drain(buf))
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
                let hdr = &raw const op.hdr;
                (Prepared::SendMsg { fd: fd(), hdr }, Resources::Msg(op))
            }
            Op::AcceptMulti { .. } => (Prepared::Accept { fd: fd() }, Resources::Accept),
            Op::Poll { events, .. } => (Prepared::Poll { fd: fd(), events }, Resources::None),
            Op::Timeout { after } => {
                let ts = Box::new(types::Timespec::new().sec(after.as_secs()).nsec(after.subsec_nanos()));
                let ptr = &raw const *ts;
                (Prepared::Timeout { ts: ptr, after }, Resources::Timespec { _kept: ts })
            }
        }
    }

    /// Asks the engine to cancel `id`. Its completion still arrives (usually
    /// `-ECANCELED`) unless `forget` is set, in which case it is swallowed and its
    /// resources freed.
    pub fn cancel(&mut self, id: OpId, forget: bool) {
        let Some(slot) = self.slots.get_mut(id.0) else {
            return;
        };
        if forget {
            slot.state = State::Forgotten;
        }
        match &mut self.backend {
            Backend::Uring(u) => {
                let cancel = self.slots.insert(Slot {
                    token: 0,
                    fd: None,
                    resources: Resources::None,
                    state: State::Forgotten,
                });
                u.push_cancel(id.0.to_u64(), cancel.to_u64());
            }
            Backend::Epoll(e) => e.cancel(id.0.to_u64()),
        }
    }

    /// Submits what is queued and, if `block`, waits until a completion is ready (unless
    /// nothing is in flight). Take completions with [`Ring::next`].
    pub fn wait(&mut self, block: bool) -> io::Result<()> {
        let in_flight = !self.slots.is_empty();
        match &mut self.backend {
            Backend::Uring(u) => u.wait(block && in_flight),
            Backend::Epoll(e) => e.wait(block && in_flight),
        }
    }

    /// The next completion, one at a time. An operation forgotten before its completion
    /// is handed out (even one the kernel already finished) is swallowed here.
    #[allow(clippy::should_implement_trait)] // An iterator would borrow the ring between items.
    pub fn next(&mut self) -> Option<Completion> {
        loop {
            let done = match &mut self.backend {
                Backend::Uring(u) => u.next(),
                Backend::Epoll(e) => e.next(),
            }?;
            if let Some(c) = self.complete(done) {
                return Some(c);
            }
        }
    }

    fn complete(&mut self, done: op::Done) -> Option<Completion> {
        let op::Done { key, res, more } = done;
        let id = OpId(Key::from_u64(key));
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
    // SAFETY: a successful accept's result is a new descriptor the kernel created for this
    // process; nothing else refers to it, so we are its only owner.
    Output::Accepted(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(res) })
}

impl Drop for Ring {
    /// Cancels whatever is still in flight and waits for every operation to complete, so
    /// that the kernel touches no buffer after it is freed. If the kernel never completes
    /// them, the memory is leaked rather than freed under it. (On epoll nothing is ever
    /// in the kernel's hands between calls: the slots are freed as they are.)
    fn drop(&mut self) {
        if matches!(self.backend, Backend::Epoll(_)) {
            // Nothing is in the kernel's hands; what completed is handed out and dropped
            // (accepted descriptors closed), what did not is freed with its slot.
            while let Backend::Epoll(e) = &mut self.backend
                && let Some(done) = e.drain()
            {
                drop(self.complete(done));
            }
            return;
        }
        if self.slots.is_empty() {
            return;
        }
        let pending: Vec<OpId> = self.slots.iter().map(|(key, _)| OpId(key)).collect();
        for id in pending {
            self.cancel(id, true);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.slots.is_empty() && Instant::now() < deadline {
            if let Backend::Uring(u) = &mut self.backend
                && !u.wait_a_little()
            {
                break;
            }
            while self.next().is_some() {}
        }
        if !self.slots.is_empty() {
            std::mem::forget(std::mem::replace(&mut self.arena, Arena::new(0)));
            std::mem::forget(std::mem::take(&mut self.slots));
        }
    }
}
