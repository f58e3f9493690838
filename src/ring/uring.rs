//! The io_uring engine: operations become submission entries, completions come off the
//! completion queue. Set-up probes every opcode the switchboard uses, so a kernel or a
//! seccomp profile that refuses any of them is known before anything is served.

use std::collections::VecDeque;
use std::io;

use io_uring::{IoUring, Probe, cqueue, opcode, squeue, types};

use super::op::{CURRENT_POSITION, Done, Prepared};

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

pub(super) struct Uring {
    uring: IoUring,
    /// Completions taken off a full completion queue (to make room), not yet handed out.
    /// They stay raw until [`Uring::next`], so a slot lives (and can be forgotten) until
    /// its completion is delivered.
    backlog: VecDeque<cqueue::Entry>,
}

impl Uring {
    /// Sets up a ring, probing the kernel: fails with a message that names what is missing
    /// (io_uring disabled by sysctl or seccomp, or an opcode this kernel lacks).
    pub(super) fn new(entries: u32) -> io::Result<Uring> {
        let entries = entries.max(8);
        let uring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(entries * 4)
            .build(entries)
            .or_else(|_| IoUring::builder().setup_cqsize(entries * 4).build(entries))
            .map_err(|e| {
                let why = match e.raw_os_error() {
                    Some(libc::ENOSYS) => "the kernel was built without io_uring, or a seccomp filter refuses it",
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
        Ok(Uring {
            uring,
            backlog: VecDeque::new(),
        })
    }

    /// Registers the arena as fixed buffer 0; false if the kernel refuses.
    pub(super) fn register(&mut self, arena: libc::iovec) -> bool {
        // SAFETY: the iovec describes the arena's live allocation, which stays allocated and
        // unmoved until the ring is dropped; Drop waits for every operation first, and the
        // registration dies with the ring.
        unsafe { self.uring.submitter().register_buffers(&[arena]) }.is_ok()
    }

    pub(super) fn push_op(&mut self, key: u64, op: Prepared) {
        let entry = build(op);
        self.push(entry.user_data(key));
    }

    /// Asks the kernel to cancel the operation `target`; the cancel's own completion
    /// carries `key`.
    pub(super) fn push_cancel(&mut self, target: u64, key: u64) {
        self.push(opcode::AsyncCancel::new(target).build().user_data(key));
    }

    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: everything the entry points to is owned by its slot (heap memory that
            // does not move while the slot lives) or is the arena, and lives until the
            // operation's final completion: slots are freed only on that CQE, and the
            // ring's Drop waits for all of them before freeing anything.
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

    /// Submits what is queued and, if `block`, waits until a completion is ready.
    pub(super) fn wait(&mut self, block: bool) -> io::Result<()> {
        let ready = !self.backlog.is_empty() || !self.uring.completion().is_empty();
        let want = usize::from(block && !ready);
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

    /// Submits, and waits up to 100 ms for a completion (for shutting down); false if
    /// the ring is unusable.
    pub(super) fn wait_a_little(&mut self) -> bool {
        let ts = types::Timespec::new().nsec(100_000_000);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.uring.submitter().submit_with_args(1, &args) {
            Ok(_) => true,
            Err(e) => matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY)),
        }
    }

    pub(super) fn next(&mut self) -> Option<Done> {
        let cqe = match self.backlog.pop_front() {
            Some(cqe) => cqe,
            None => self.uring.completion().next()?,
        };
        Some(Done {
            key: cqe.user_data(),
            res: cqe.result(),
            more: cqueue::more(cqe.flags()),
        })
    }
}

/// The submission entry for `op`. Reads and writes use the current file position
/// (offset -1): a regular file is read sequentially, and a pipe, socket or terminal
/// ignores the offset anyway.
fn build(op: Prepared) -> squeue::Entry {
    match op {
        Prepared::Read { fd, ptr, len, fixed } => {
            let (fd, len) = (types::Fd(fd), len as u32);
            match fixed {
                true => opcode::ReadFixed::new(fd, ptr, len, 0).offset(CURRENT_POSITION).build(),
                false => opcode::Read::new(fd, ptr, len).offset(CURRENT_POSITION).build(),
            }
        }
        Prepared::Write { fd, ptr, len, fixed } => {
            let (fd, len) = (types::Fd(fd), len as u32);
            match fixed {
                true => opcode::WriteFixed::new(fd, ptr, len, 0)
                    .offset(CURRENT_POSITION)
                    .build(),
                false => opcode::Write::new(fd, ptr, len).offset(CURRENT_POSITION).build(),
            }
        }
        Prepared::Recv { fd, ptr, len } => opcode::Recv::new(types::Fd(fd), ptr, len as u32).build(),
        Prepared::Send { fd, ptr, len } => opcode::Send::new(types::Fd(fd), ptr, len as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build(),
        Prepared::SendMsg { fd, hdr } => opcode::SendMsg::new(types::Fd(fd), hdr)
            .flags((libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) as u32)
            .build(),
        Prepared::Accept { fd } => opcode::AcceptMulti::new(types::Fd(fd))
            .flags(libc::SOCK_CLOEXEC)
            .build(),
        Prepared::Poll { fd, events } => opcode::PollAdd::new(types::Fd(fd), events).build(),
        Prepared::Timeout { ts, .. } => opcode::Timeout::new(ts).build(),
    }
}
