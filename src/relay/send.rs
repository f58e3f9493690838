//! What each copying client is sent next: its response head, then its records, framed
//! for it around the shared payload, then the end of its stream; and what a completed
//! send means for its place in the record log.

use super::{ClientId, ClientState, CutReason, Framing, Record, RecordKind, Relay};
use crate::msg::Msg;
use crate::wire::frame::{self, LAST_CHUNK};
use crate::wire::message::Format;

impl Relay {
    /// Builds the next send to a client into `msg` (cleared first). Returns false when
    /// there is nothing to send now, or a send is already in flight.
    pub fn fill(&mut self, id: ClientId, msg: &mut Msg) -> bool {
        msg.clear();
        let cfg = self.config;
        let (first_seq, end_seq, finished) = (
            self.first_seq,
            self.first_seq + self.records.len() as u64,
            self.finished,
        );
        let c = self.client(id);
        if c.sending > 0 || c.state != ClientState::Live || c.ended {
            return false;
        }
        let (framing, mut seq, mut skip) = (c.framing, c.next, c.offset);
        let front = c.front.len() - c.front_sent;
        if front > 0 {
            msg.push_copy(&c.front[c.front_sent..]);
        }
        let mut plan = std::mem::take(&mut self.client_mut(id).plan);
        plan.clear();
        while seq < end_seq && msg.segments() + 3 <= cfg.max_send_segments && msg.len() < cfg.max_send_bytes {
            self.frame(framing, &self.records[(seq - first_seq) as usize], msg, skip);
            skip = 0;
            seq += 1;
            plan.push((seq, msg.len()));
        }
        let c = self.client_mut(id);
        c.plan = plan;
        if finished && seq == end_seq {
            match framing {
                Framing::Chunked(_) => msg.push_copy(&LAST_CHUNK[c.end_sent..]),
                // A raw stream just ends.
                Framing::Raw => {
                    if msg.is_empty() {
                        c.ended = true;
                    }
                }
            }
        }
        let len = msg.len();
        c.sending = len;
        c.front_in_send = front;
        len > 0
    }

    /// Appends the framed form of `record` for `framing`, minus its first `skip` bytes.
    fn frame(&self, framing: Framing, record: &Record, msg: &mut Msg, skip: usize) {
        match (&record.kind, framing) {
            (RecordKind::Control { .. }, Framing::Raw) => {}
            (RecordKind::Control { json, protobuf }, Framing::Chunked(f)) => {
                let bytes = if f == Format::Json { json } else { protobuf };
                msg.push_held(bytes, skip..bytes.len());
            }
            (RecordKind::Data { stream, off, len, .. }, Framing::Raw) => {
                let r = self.buf_of(*stream).arena(*off, *len);
                msg.push_arena(r.start + skip..r.end);
            }
            (RecordKind::Data { stream, off, len, json }, Framing::Chunked(f)) => {
                let payload_len = match (f, json) {
                    (Format::Json, Some(j)) => j.len(),
                    (Format::Json, None) => unreachable!("JSON payloads are made while JSON clients exist"),
                    (Format::Protobuf, _) => *len,
                };
                // Head, payload, tail; `skip` bytes of them went out in an earlier send.
                let head = msg.push_copy_with(skip, |out| frame::data_head(f, *stream, payload_len, out));
                let mut skip = skip.saturating_sub(head);
                if skip < payload_len {
                    match (f, json) {
                        (Format::Json, Some(j)) => msg.push_held(j, skip..payload_len),
                        _ => {
                            let r = self.buf_of(*stream).arena(*off, *len);
                            msg.push_arena(r.start + skip..r.end);
                        }
                    }
                    skip = 0;
                } else {
                    skip -= payload_len;
                }
                let tail = frame::data_tail(f);
                msg.push_copy(&tail[skip.min(tail.len())..]);
            }
        }
    }

    /// The send to a client completed: `Ok(n)` bytes went out, or it failed. Returns
    /// whether the client is still being served.
    pub fn on_sent(&mut self, id: ClientId, result: Result<usize, ()>) -> bool {
        let c = self.client_mut(id);
        let sending = std::mem::take(&mut c.sending);
        let Ok(n) = result else {
            self.cut(id, CutReason::Gone);
            self.release_records();
            return false;
        };
        assert!(n <= sending, "sent more than was submitted");
        let front = c.front_in_send.min(n);
        c.front_sent += front;
        if c.front_sent == c.front.len() {
            c.front = Vec::new();
            c.front_sent = 0;
        }
        // Where in this send each record began: after the front, then after each record.
        let mut start = c.front_in_send;
        let mut partial = false;
        for &(seq_after, end) in &c.plan {
            if n >= end {
                c.next = seq_after;
                c.offset = 0;
                start = end;
            } else {
                if n > start {
                    // The first record of a send started at its old offset, others at 0.
                    c.offset += n - start;
                }
                partial = true;
                break;
            }
        }
        if !partial && n > start {
            // Whatever went out after the last record is the end of the stream.
            c.end_sent += n - start;
            if c.end_sent == LAST_CHUNK.len() {
                c.ended = true;
            }
        }
        let live = c.state == ClientState::Live;
        self.release_records();
        live
    }
}
