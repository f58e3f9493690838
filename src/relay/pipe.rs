//! The accounting of a pipe client: a client on the zero-copy path, whose output is
//! teed into a pipe of its own and spliced from there into its socket.
//!
//! A pipe holds a fixed number of buffers (slots), each at most a page, and the kernel
//! does not say how many are in use. A `tee` takes a slot per page of what it duplicates
//! (plus a partial page at each end), however small the pages are; a `write` fills the
//! last slot's page before it takes new ones. So we count, conservatively, what each run
//! of bytes in the pipe may take, and offer a client only what fits: a write or a tee that
//! the kernel takes only in part would tear a record in the client's stream.
//!
//! When a round does not fit, the client's lag policy decides ([`PipeAccount::no_room`]):
//! a disconnecting client falls behind, to be served from the output history until it
//! catches up, a blocking one holds the round back, as the logger would. A blocking
//! client counts every run at its most
//! (fragmented writes), so that a round never tears in its pipe; the others count whole
//! pages and are cut when their pipe turns out fuller than that.

use std::collections::VecDeque;

use crate::config::LagPolicy;

/// A pipe buffer's page.
pub const PAGE: usize = 4096;

/// Slots kept free in a client pipe for the error of our count of its slots (a page
/// shared by small writes is counted once, and may outlive the write that took it).
pub const SLOT_MARGIN: usize = 2;

/// Pipe buffers (slots) a run of `len` bytes takes when it was written in whole pages:
/// its pages plus a partial one at each end.
pub fn slots_for(len: usize) -> usize {
    len.div_ceil(PAGE) + 1
}

/// Pipe buffers a run of `len` bytes may take however it was written: a write starts a
/// new buffer only when it does not fit the last one, so two buffers in a row hold more
/// than a page.
pub fn max_buffers(len: usize) -> usize {
    2 * len.div_ceil(PAGE) + 2
}

/// The sizes of one staged round, as a client's pipe sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoundSize {
    /// Payload bytes (the container's output).
    pub len: usize,
    /// Bytes of the round framed as records (chunk lines and record heads around the
    /// payload), and the slots they take: counted in whole pages, and at most.
    pub framed: usize,
    pub framed_slots: usize,
    pub framed_slots_max: usize,
    /// The most slots the payload alone may take.
    pub raw_slots_max: usize,
}

/// What a client whose pipe has no room for a round does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoom {
    /// It holds the round back until it drains (a blocking client).
    Wait,
    /// It falls behind: the history serves it from this round on, until it catches up.
    FallBehind,
}

/// What one client's pipe holds, as far as we can tell.
#[derive(Debug)]
pub struct PipeAccount {
    policy: LagPolicy,
    /// Slots the pipe has.
    capacity_slots: usize,
    /// Bytes in the pipe, and the slots each run of them may take (oldest first).
    queued: usize,
    runs: VecDeque<(usize, usize)>,
    slots: usize,
    /// Room left in the page the last write went to (the next write that fits shares
    /// it); 0 after a tee, or once the pipe is empty.
    tail_room: usize,
    /// Payload bytes put into the pipe.
    delivered: u64,
    /// Bytes that reached the socket (through the pipe, or sent directly): its progress.
    moved: u64,
}

impl PipeAccount {
    /// The account of an empty pipe of `capacity` bytes.
    pub fn new(capacity: usize, policy: LagPolicy) -> PipeAccount {
        PipeAccount {
            policy,
            capacity_slots: capacity / PAGE,
            queued: 0,
            runs: VecDeque::new(),
            slots: 0,
            tail_room: 0,
            delivered: 0,
            moved: 0,
        }
    }

    pub fn policy(&self) -> LagPolicy {
        self.policy
    }

    /// Bytes in the pipe, not yet taken by the socket.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Payload bytes put into the pipe so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Bytes that reached the socket so far: what a progress check compares.
    pub fn moved(&self) -> u64 {
        self.moved
    }

    /// What the client does when a round does not fit.
    pub fn no_room(&self) -> NoRoom {
        match self.policy {
            LagPolicy::Block => NoRoom::Wait,
            LagPolicy::Disconnect => NoRoom::FallBehind,
        }
    }

    fn fits(&self, slots: usize) -> bool {
        self.slots + slots + SLOT_MARGIN <= self.capacity_slots
    }

    /// The slots a write of `len` bytes takes (0 when it shares the last page), if it
    /// fits.
    pub fn plan_write(&self, len: usize) -> Option<usize> {
        let slots = if len <= self.tail_room { 0 } else { len.div_ceil(PAGE) };
        self.fits(slots).then_some(slots)
    }

    /// A write of `len` bytes, planned to take `slots`, went into the pipe whole.
    pub fn wrote(&mut self, len: usize, slots: usize) {
        self.tail_room = if slots == 0 {
            self.tail_room - len
        } else {
            slots * PAGE - len
        };
        self.push_run(len, slots);
    }

    /// The bytes and slots a tee of `round` takes (framed as records, or the payload
    /// alone), if it fits.
    pub fn plan_tee(&self, framed: bool, round: &RoundSize) -> Option<(usize, usize)> {
        let blocking = self.policy == LagPolicy::Block;
        let (len, slots) = match (framed, blocking) {
            (true, false) => (round.framed, round.framed_slots),
            (true, true) => (round.framed, round.framed_slots_max),
            (false, false) => (round.len, slots_for(round.len)),
            (false, true) => (round.len, round.raw_slots_max),
        };
        self.fits(slots).then_some((len, slots))
    }

    /// A tee of `len` bytes, planned to take `slots`, went into the pipe whole; it
    /// carried `payload` bytes of output.
    pub fn teed(&mut self, len: usize, slots: usize, payload: usize) {
        self.tail_room = 0;
        self.push_run(len, slots);
        self.delivered += payload as u64;
    }

    /// `payload` bytes of output reached the client in a write (or went to its socket
    /// directly).
    pub fn delivered_small(&mut self, payload: usize) {
        self.delivered += payload as u64;
    }

    /// Bytes went to the socket directly, past the pipe (it was empty).
    pub fn sent_directly(&mut self, len: usize) {
        self.moved += len as u64;
    }

    fn push_run(&mut self, len: usize, slots: usize) {
        self.queued += len;
        self.runs.push_back((len, slots));
        self.slots += slots;
    }

    /// The socket took `n` bytes from the pipe.
    pub fn sent(&mut self, mut n: usize) {
        assert!(n <= self.queued, "the socket took more than the pipe held");
        self.queued -= n;
        self.moved += n as u64;
        if self.queued == 0 {
            // An empty pipe: the next write starts a page of its own.
            self.tail_room = 0;
        }
        while n > 0 {
            let Some((len, slots)) = self.runs.front_mut() else { break };
            if n >= *len {
                n -= *len;
                self.slots -= *slots;
                self.runs.pop_front();
            } else {
                // A run partly sent: how many buffers its rest takes is not known. A
                // client that holds the container back keeps the whole count until the
                // run is gone (its rounds must never tear); the others count the rest
                // as whole pages (a tee that then comes up short cuts them, as lagging).
                *len -= n;
                if self.policy == LagPolicy::Disconnect {
                    let left = slots_for(*len).min(*slots);
                    self.slots -= *slots - left;
                    *slots = left;
                }
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(len: usize) -> RoundSize {
        RoundSize {
            len,
            framed: len + 20,
            framed_slots: slots_for(len) + 2,
            framed_slots_max: max_buffers(len) + 2,
            raw_slots_max: max_buffers(len),
        }
    }

    #[test]
    fn small_writes_share_a_page() {
        let mut a = PipeAccount::new(16 * PAGE, LagPolicy::Disconnect);
        assert_eq!(a.plan_write(100), Some(1));
        a.wrote(100, 1);
        // The next small write fits in the rest of that page.
        assert_eq!(a.plan_write(PAGE - 100), Some(0));
        a.wrote(PAGE - 100, 0);
        assert_eq!(a.plan_write(1), Some(1));
        // A tee never shares: the write after it starts a page.
        a.teed(10, 2, 10);
        assert_eq!(a.plan_write(1), Some(1));
        assert_eq!(a.queued(), PAGE + 10);
        assert_eq!(a.delivered(), 10);
    }

    #[test]
    fn the_margin_is_kept_and_a_full_pipe_has_no_room() {
        let mut a = PipeAccount::new(8 * PAGE, LagPolicy::Disconnect);
        // 8 slots, 2 kept free: 6 usable.
        assert_eq!(a.plan_write(6 * PAGE), Some(6));
        assert_eq!(a.plan_write(6 * PAGE + 1), None);
        a.wrote(6 * PAGE, 6);
        assert_eq!(a.plan_write(1), None);
        assert_eq!(a.plan_tee(false, &round(1)), None);
        assert_eq!(a.no_room(), NoRoom::FallBehind);
        // Draining gives the room back.
        a.sent(6 * PAGE);
        assert_eq!(a.plan_write(1), Some(1));
        assert_eq!(a.moved(), 6 * PAGE as u64);
    }

    #[test]
    fn blocking_clients_count_rounds_at_their_most() {
        let r = round(64 << 10);
        let cutting = PipeAccount::new(1 << 20, LagPolicy::Disconnect);
        let blocking = PipeAccount::new(1 << 20, LagPolicy::Block);
        assert_eq!(cutting.plan_tee(true, &r), Some((r.framed, r.framed_slots)));
        assert_eq!(blocking.plan_tee(true, &r), Some((r.framed, r.framed_slots_max)));
        assert_eq!(cutting.plan_tee(false, &r), Some((r.len, slots_for(r.len))));
        assert_eq!(blocking.plan_tee(false, &r), Some((r.len, r.raw_slots_max)));
        assert_eq!(blocking.no_room(), NoRoom::Wait);
    }

    #[test]
    fn a_run_partly_sent_is_recounted_only_for_disconnecting_clients() {
        for (policy, left) in [(LagPolicy::Disconnect, slots_for(PAGE)), (LagPolicy::Block, 40)] {
            let mut a = PipeAccount::new(64 * PAGE, policy);
            a.teed(10 * PAGE, 40, 10 * PAGE);
            a.sent(9 * PAGE);
            assert_eq!(a.slots, left, "{policy:?}");
            assert_eq!(a.queued(), PAGE);
            a.sent(PAGE);
            assert_eq!((a.slots, a.queued(), a.runs.len()), (0, 0, 0));
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(slots_for(0), 1);
        assert_eq!(slots_for(PAGE), 2);
        assert_eq!(slots_for(PAGE + 1), 3);
        assert_eq!(max_buffers(1), 4);
        assert_eq!(max_buffers(64 << 10), 34);
    }
}
