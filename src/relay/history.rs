//! The output history: which records the log keeps (for the slowest client and the
//! replay, never beyond `history_bytes`), where a client that asks for a position
//! starts, and how kept records leave the arena for the history's own memory.

use std::ops::Range;
use std::rc::Rc;

use super::{ClientState, Cut, CutReason, Future, Payload, ReadPlan, Record, RecordKind, Relay, Start, StartAt};
use crate::config::LagPolicy;
use crate::wire::message::Stream;

impl Relay {
    /// Payload bytes the history keeps, and how many of them were copied out of the arena
    /// (its own memory).
    pub fn history(&self) -> (u64, u64) {
        (self.retained, self.spilled)
    }

    /// Whether records must be kept for no client (a replay window).
    pub(super) fn keeps_replay(&self) -> bool {
        self.config.replay_bytes > 0
    }

    /// What the next read of stream `s` needs: a window to read into, arena bytes to
    /// spill first, or a wait.
    pub fn read_plan(&self, s: usize) -> ReadPlan {
        let b = &self.streams[s];
        if b.eof || self.records.len() + self.records_per_read() > self.config.max_records {
            return ReadPlan::Wait;
        }
        if self.history_full_for_blocker() {
            return ReadPlan::Wait;
        }
        let pos = (b.head % b.cap as u64) as usize;
        let wanted = self.config.max_read.min(b.cap - pos);
        let free = b.cap - (b.head - b.tail()) as usize;
        if free >= wanted {
            return ReadPlan::Window(b.base + pos..b.base + pos + wanted);
        }
        // Records kept for clients hold the space the logger has freed: they leave the
        // arena for the history's memory.
        if let Some(range) = self.spill_range(s) {
            return ReadPlan::Spill(range);
        }
        let len = free.min(b.cap - pos);
        if len > 0 {
            ReadPlan::Window(b.base + pos..b.base + pos + len)
        } else {
            ReadPlan::Wait
        }
    }

    /// The arena range of stream `s`'s oldest records still in the arena that the logger
    /// has written: whole records, about a read's worth, up to the buffer's end. (A
    /// stream's records in the arena lie one after the other from its client tail.)
    pub(super) fn spill_range(&self, s: usize) -> Option<Range<usize>> {
        let b = &self.streams[s];
        let cap = b.cap as u64;
        let budget = b.client_tail + self.config.max_read as u64;
        let wrap = (b.client_tail / cap + 1) * cap;
        // Records a send in flight may be reading stay where they are.
        let in_flight = self
            .clients
            .values()
            .filter(|c| c.sending > 0)
            .map(|c| c.next)
            .min()
            .unwrap_or(u64::MAX);
        let mut end = b.client_tail;
        for (i, r) in self.records.iter().enumerate() {
            if self.first_seq + i as u64 >= in_flight {
                break;
            }
            let RecordKind::Data {
                stream,
                len,
                at: Payload::Arena { off },
                ..
            } = &r.kind
            else {
                continue;
            };
            if self.stream_index(*stream) != s {
                continue;
            }
            let next = off + *len as u64;
            if *off != end || next > b.logged || next > wrap || (end > b.client_tail && next > budget) {
                break;
            }
            end = next;
        }
        (end > b.client_tail).then(|| b.arena(b.client_tail, (end - b.client_tail) as usize))
    }

    /// The bytes of the range [`ReadPlan::Spill`] named (copied out of the arena): the
    /// records they hold now refer to the history's memory, and the arena space is free.
    pub fn spill(&mut self, s: usize, bytes: &[u8]) {
        let chunk: Rc<[u8]> = Rc::from(bytes);
        let (from, to) = {
            let b = &self.streams[s];
            (b.client_tail, b.client_tail + bytes.len() as u64)
        };
        let mut moved = 0;
        for r in &mut self.records {
            let RecordKind::Data { stream, len, at, json } = &mut r.kind else { continue };
            let Payload::Arena { off } = *at else { continue };
            if usize::from(*stream == Stream::Stderr).min(self.streams.len() - 1) != s || off < from || off >= to {
                continue;
            }
            *at = Payload::Held {
                chunk: chunk.clone(),
                start: (off - from) as usize,
            };
            // Its base64, if any, is made again when a JSON client gets to it: kept, it
            // would be a third of the history again.
            *json = None;
            moved += 1;
            self.spilled += *len as u64;
        }
        let b = &mut self.streams[s];
        b.resident -= moved;
        b.client_tail = to;
    }

    /// Where a client that asks for `at` starts, the newest output being at `newest`
    /// (this relay's [`Relay::position`], or past it by output the server has and the
    /// relay will get). A start the history no longer holds moves to its oldest byte.
    pub fn locate(&self, at: StartAt, newest: u64) -> Result<Start, Future> {
        debug_assert!(newest >= self.position);
        let asked = match at {
            StartAt::Live => newest,
            StartAt::Position(p) => p,
            StartAt::Tail(n) => newest.saturating_sub(n),
        };
        if asked > newest {
            return Err(Future { asked, newest });
        }
        let oldest = self
            .records
            .iter()
            .find(|r| matches!(r.kind, RecordKind::Data { .. }))
            .map_or(self.position, |r| r.pos);
        Ok(if asked < oldest {
            Start {
                position: oldest,
                skipped: oldest - asked,
                newest,
            }
        } else {
            Start {
                position: asked,
                skipped: 0,
                newest,
            }
        })
    }

    /// Whether a blocking client holds the oldest record while the history is full: then
    /// reading waits for it.
    pub(super) fn history_full_for_blocker(&self) -> bool {
        self.retained + self.config.max_read as u64 > self.config.history_bytes as u64
            && self.blocking_holder().is_some()
    }

    /// Cuts the disconnecting clients that broke the limits, and returns them: those
    /// further behind than the history holds, and, when the log is too full for another
    /// read, those holding its oldest record. Blocking clients are never cut here
    /// (reading waits for them).
    pub(super) fn enforce_limits(&mut self) -> Vec<Cut> {
        let limit = self.config.history_bytes as u64;
        let log_full = self.records.len() + self.records_per_read() > self.config.max_records;
        let mut cut = Vec::new();
        for id in self.client_ids() {
            let c = self.client(id);
            if c.state != ClientState::Live || c.policy == LagPolicy::Block {
                continue;
            }
            let lag = self.lag(id);
            if lag > limit || (log_full && c.next == self.first_seq) {
                self.cut(id, CutReason::Lagging);
                cut.push(Cut { id, lost: lag });
            }
        }
        self.release_records();
        cut
    }

    /// Drops the records nobody keeps: no client needs them (a cut client still holds its
    /// records while a send to it is in flight), they are older than the replay window,
    /// or the history is over its size.
    pub(super) fn release_records(&mut self) {
        let end = self.first_seq + self.records.len() as u64;
        let keep_from = self
            .clients
            .values()
            .filter(|c| c.state == ClientState::Live || c.sending > 0)
            .map(|c| c.next)
            .min()
            .unwrap_or(end);
        let replay_from = self.position.saturating_sub(self.config.replay_bytes as u64);
        while let Some(r) = self.records.front() {
            let needed = keep_from <= self.first_seq;
            let replayed = matches!(r.kind, RecordKind::Data { .. }) && r.end() > replay_from;
            let over = self.retained > self.config.history_bytes as u64;
            if needed || (replayed && !over) {
                break;
            }
            let r = self.records.pop_front().expect("checked above");
            self.first_seq += 1;
            self.drop_record(r);
        }
    }

    /// A record left the log: its arena space or its share of a history chunk is free.
    pub(super) fn drop_record(&mut self, r: Record) {
        let RecordKind::Data { stream, len, at, .. } = r.kind else { return };
        self.retained -= len as u64;
        let s = self.stream_index(stream);
        match at {
            Payload::Held { .. } => self.spilled -= len as u64,
            Payload::Arena { off } => {
                let b = &mut self.streams[s];
                b.resident -= 1;
                b.client_tail = off + len as u64;
            }
        }
    }
}
