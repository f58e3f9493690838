//! What each copying client is sent next: its response head, then its records, framed
//! for it around the shared payload, then the end of its stream; and what a completed
//! send means for its place in the record log.

use std::rc::Rc;

use super::{ArenaBytes, ClientId, ClientState, CutReason, Framing, Payload, Record, RecordKind, Relay, json_payload};
use crate::msg::Msg;
use crate::wire::frame::{self, LAST_CHUNK};
use crate::wire::message::{Format, Stream};

impl Relay {
    /// Builds the next send to a client into `msg` (cleared first). Returns false when
    /// there is nothing to send now, or a send is already in flight.
    pub fn fill(&mut self, id: ClientId, msg: &mut Msg, arena: &dyn ArenaBytes) -> bool {
        msg.clear();
        let cfg = self.config;
        let c = self.client(id);
        if c.sending > 0 || c.state != ClientState::Live || c.ended {
            return false;
        }
        self.skip_to_start(id);
        let end_seq = self.first_seq + self.records.len() as u64;
        let c = self.client(id);
        let (framing, from, mut seq, mut skip) = (c.framing, c.from, c.next, c.offset);
        let front = c.front.len() - c.front_sent;
        if front > 0 {
            msg.push_copy(&c.front[c.front_sent..]);
        }
        let mut plan = std::mem::take(&mut self.client_mut(id).plan);
        plan.clear();
        while seq < end_seq && msg.segments() + 3 <= cfg.max_send_segments && msg.len() < cfg.max_send_bytes {
            let index = (seq - self.first_seq) as usize;
            if framing == Framing::Chunked(Format::Json) {
                self.make_json(index, arena);
            }
            let record = &self.records[index];
            // Payload before the client's start is not its own.
            let cut = from.saturating_sub(record.pos) as usize;
            self.frame(framing, record, cut, msg, skip, arena);
            skip = 0;
            seq += 1;
            plan.push((seq, msg.len()));
        }
        let finished = self.finished;
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

    /// Moves a client that starts past some records (a resume, a start inside the
    /// history) beyond those it gets nothing of.
    fn skip_to_start(&mut self, id: ClientId) {
        let end_seq = self.first_seq + self.records.len() as u64;
        let c = self.client(id);
        if c.offset > 0 {
            return;
        }
        let (from, mut next) = (c.from, c.next.max(self.first_seq));
        while next < end_seq {
            let r = &self.records[(next - self.first_seq) as usize];
            let nothing = match r.kind {
                RecordKind::Data { .. } => r.end() <= from,
                RecordKind::Control { .. } => r.pos < from,
            };
            if !nothing {
                break;
            }
            next += 1;
        }
        self.client_mut(id).next = next;
    }

    /// Gives record `index` its JSON payload, if it has none (it was read while no JSON
    /// client was attached, or spilled).
    fn make_json(&mut self, index: usize, arena: &dyn ArenaBytes) {
        let payload = match &self.records[index].kind {
            RecordKind::Data {
                json: None,
                stream,
                len,
                at,
            } => Some(json_payload(self.payload_bytes(*stream, *len, at, 0, arena))),
            _ => None,
        };
        if let (Some(p), RecordKind::Data { json, .. }) = (payload, &mut self.records[index].kind) {
            *json = Some(p);
        }
    }

    /// The bytes of a payload from `skip` on.
    fn payload_bytes<'a>(
        &'a self,
        stream: Stream,
        len: usize,
        at: &'a Payload,
        skip: usize,
        arena: &'a dyn ArenaBytes,
    ) -> &'a [u8] {
        match at {
            Payload::Held { chunk, start } => &chunk[start + skip..start + len],
            Payload::Arena { off } => {
                let r = self.streams[self.stream_index(stream)].arena(*off, len);
                arena.bytes(r.start + skip..r.end)
            }
        }
    }

    /// Appends the payload of a record, minus its first `skip` bytes.
    fn push_payload(&self, record: &Record, skip: usize, msg: &mut Msg) {
        let RecordKind::Data { stream, len, at, .. } = &record.kind else { return };
        match at {
            Payload::Arena { off } => {
                let r = self.streams[self.stream_index(*stream)].arena(*off, *len);
                msg.push_arena(r.start + skip..r.end);
            }
            Payload::Held { chunk, start } => msg.push_held(chunk, start + skip..start + len),
        }
    }

    /// Appends the framed form of `record` for `framing`, minus its first `skip` bytes;
    /// of a DATA record only the payload from `cut` on is the client's.
    fn frame(&self, framing: Framing, record: &Record, cut: usize, msg: &mut Msg, skip: usize, arena: &dyn ArenaBytes) {
        match (&record.kind, framing) {
            (RecordKind::Control { .. }, Framing::Raw) => {}
            (RecordKind::Control { json, protobuf }, Framing::Chunked(f)) => {
                let bytes = if f == Format::Json { json } else { protobuf };
                msg.push_held(bytes, skip..bytes.len());
            }
            (RecordKind::Data { .. }, Framing::Raw) => self.push_payload(record, cut + skip, msg),
            (RecordKind::Data { stream, len, json, at }, Framing::Chunked(f)) => {
                // The JSON payload of a record the client starts inside is its own.
                let own_json: Option<Rc<[u8]>> = match (f, cut) {
                    (Format::Json, 0) => None,
                    (Format::Json, _) => Some(json_payload(self.payload_bytes(*stream, *len, at, cut, arena))),
                    _ => None,
                };
                let json = own_json.as_ref().or(json.as_ref());
                let payload_len = match (f, json) {
                    (Format::Json, Some(j)) => j.len(),
                    (Format::Json, None) => unreachable!("JSON payloads are made before a JSON client's send"),
                    (Format::Protobuf, _) => *len - cut,
                };
                // Head, payload, tail; `skip` bytes of them went out in an earlier send.
                let head = msg.push_copy_with(skip, |out| frame::data_head(f, *stream, payload_len, out));
                let mut skip = skip.saturating_sub(head);
                if skip < payload_len {
                    match (f, json) {
                        (Format::Json, Some(j)) => msg.push_held(j, skip..payload_len),
                        _ => self.push_payload(record, cut + skip, msg),
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
