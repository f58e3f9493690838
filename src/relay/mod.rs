//! The output relay: one read of container output, many deliveries.
//!
//! This room is logic only; it never touches the ring. The server's loop asks it where
//! the next read of each stream should land, tells it what was read, what the logger
//! wrote and what each client sent, and asks it what each client should send next.
//!
//! * Each stream has a byte buffer in the arena, addressed by stream offset (every byte
//!   of a stream has one, counted from 0). A read lands at the head; the logger writes
//!   from its own offset; the buffer's tail is the oldest byte still needed by the logger
//!   or any client. When the buffer is full, reading pauses: a slow logger holds back the
//!   container, never the clients.
//! * Reads become records (at most `max_record` payload bytes each) in a record log that
//!   clients walk with a cursor. A record refers to its payload by stream offset; the
//!   bytes are never copied for a client. Framing (HTTP chunk line, RecordIO length,
//!   protobuf tags or JSON text) is written per client around the shared payload; JSON's
//!   base64 is made once per record, when a JSON client is attached.
//! * A client's lag is how many payload bytes it is behind the live edge. Past
//!   `lag_limit` (or when the log holds `max_records`), the client is cut off: its loss is
//!   reported, and the container, the logger and the other clients never wait for it.
//!   A blocking client holds reading back instead.
//!
//! Those are the copying clients. The pipe clients of the zero-copy path keep their own
//! account ([`pipe`]): what their pipe holds, and what their lag policy makes of a full one.

pub mod pipe;
mod send;

use std::collections::VecDeque;
use std::ops::Range;
use std::rc::Rc;

use crate::config::{ConfigError, LagPolicy, RelayConfig as Config};
use crate::slab::{Key, Slab};
use crate::wire::message::{self, Format, Stream};

/// How a client's bytes are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Framing {
    /// The container's bytes alone, stdout and stderr interleaved; no control records.
    Raw,
    /// RecordIO records of `ProcessIO` in this format, each in one HTTP chunk, ended by
    /// the last chunk: an `ATTACH_CONTAINER_OUTPUT` response body.
    Chunked(Format),
}

/// A client handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId(Key);

impl ClientId {
    /// A number that identifies the client while it exists (for tokens and logs).
    pub fn index(self) -> u32 {
        self.0.index()
    }
}

/// Why a client stopped being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutReason {
    /// It fell behind what its path holds (the lag limit, or the oldest record of a full
    /// log; a pipe client, its pipe), or a blocking one stopped making progress.
    Lagging,
    /// Its connection failed or was closed.
    Gone,
}

#[derive(Debug)]
enum RecordKind {
    Data {
        stream: Stream,
        off: u64,
        len: usize,
        json: Option<Rc<[u8]>>,
    },
    /// A complete chunk per format (heartbeats).
    Control { json: Rc<[u8]>, protobuf: Rc<[u8]> },
}

#[derive(Debug)]
struct Record {
    /// Payload bytes appended to the log before this record.
    log_start: u64,
    kind: RecordKind,
}

#[derive(Debug)]
struct StreamBuf {
    /// Where the buffer starts in the arena, and its size.
    base: usize,
    cap: usize,
    /// Stream offset of the next byte to read.
    head: u64,
    /// Stream offset of the next byte the logger writes.
    logged: u64,
    /// Stream offset below which no client needs bytes.
    client_tail: u64,
    eof: bool,
}

impl StreamBuf {
    fn tail(&self) -> u64 {
        self.logged.min(self.client_tail)
    }

    fn arena(&self, off: u64, len: usize) -> Range<usize> {
        let start = self.base + (off % self.cap as u64) as usize;
        start..start + len
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientState {
    Live,
    Cut(CutReason),
}

#[derive(Debug)]
struct Client {
    framing: Framing,
    policy: LagPolicy,
    /// Bytes to send before any record (an HTTP response head), and how many were sent.
    front: Vec<u8>,
    front_sent: usize,
    /// The next record to send, and how many bytes of its framed form were sent.
    next: u64,
    offset: usize,
    /// Bytes of the end of the stream (the last chunk) sent.
    end_sent: usize,
    ended: bool,
    /// The send in flight: its length (0: none), and where each of its records ends in
    /// it, as (sequence number, end).
    sending: usize,
    front_in_send: usize,
    plan: Vec<(u64, usize)>,
    state: ClientState,
}

/// A client the relay cut off for lagging, and the payload bytes it was behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub id: ClientId,
    pub lost: u64,
}

/// The fan-out state of one container's output.
pub struct Relay {
    config: Config,
    streams: Vec<StreamBuf>,
    records: VecDeque<Record>,
    /// Sequence number of `records[0]`.
    first_seq: u64,
    /// Payload bytes ever appended to the log.
    log_total: u64,
    clients: Slab<Client>,
    json_clients: usize,
    live_clients: usize,
    finished: bool,
}

impl Relay {
    /// A relay for `streams` streams: 1 for a PTY (stdout only), 2 for pipes.
    pub fn new(config: Config, streams: usize) -> Result<Relay, ConfigError> {
        config.validate()?;
        assert!(
            streams == 1 || streams == 2,
            "a container has one or two output streams"
        );
        let streams = (0..streams)
            .map(|i| StreamBuf {
                base: i * config.buffer_bytes,
                cap: config.buffer_bytes,
                head: 0,
                logged: 0,
                client_tail: 0,
                eof: false,
            })
            .collect();
        Ok(Relay {
            config,
            streams,
            records: VecDeque::new(),
            first_seq: 0,
            log_total: 0,
            clients: Slab::default(),
            json_clients: 0,
            live_clients: 0,
            finished: false,
        })
    }

    /// Arena bytes the relay needs.
    pub fn arena_len(&self) -> usize {
        self.streams.len() * self.config.buffer_bytes
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Which stream a DATA record of `index` carries.
    pub fn stream_kind(index: usize) -> Stream {
        if index == 0 { Stream::Stdout } else { Stream::Stderr }
    }

    fn buf_of(&self, stream: Stream) -> &StreamBuf {
        &self.streams[usize::from(stream == Stream::Stderr).min(self.streams.len() - 1)]
    }

    // -----------------------------------------------------------------------------------
    // Reading and logging

    /// Records one read can add.
    fn records_per_read(&self) -> usize {
        self.config.max_read.div_ceil(self.config.max_record)
    }

    /// Where the next read of stream `s` should land, or `None` while its buffer is full,
    /// or the record log is (held by a blocking client), or the stream ended.
    pub fn read_window(&self, s: usize) -> Option<Range<usize>> {
        let b = &self.streams[s];
        if b.eof || self.records.len() + self.records_per_read() > self.config.max_records {
            return None;
        }
        let free = b.cap - (b.head - b.tail()) as usize;
        let pos = (b.head % b.cap as u64) as usize;
        let len = free.min(b.cap - pos).min(self.config.max_read);
        (len > 0).then(|| b.base + pos..b.base + pos + len)
    }

    /// `data` (the start of the window) was read from stream `s`. Returns the clients this
    /// cut off for lagging; their connections should be shut down.
    pub fn on_read(&mut self, s: usize, data: &[u8]) -> Vec<Cut> {
        let start = self.streams[s].head;
        self.streams[s].head += data.len() as u64;
        if self.live_clients == 0 {
            self.release_records();
            return Vec::new();
        }
        for (i, chunk) in data.chunks(self.config.max_record).enumerate() {
            let json = (self.json_clients > 0).then(|| {
                let mut out = Vec::with_capacity(chunk.len().div_ceil(3) * 4 + 16);
                message::json_data_payload(chunk, &mut out);
                Rc::from(out)
            });
            let off = start + (i * self.config.max_record) as u64;
            self.records.push_back(Record {
                log_start: self.log_total,
                kind: RecordKind::Data {
                    stream: Self::stream_kind(s),
                    off,
                    len: chunk.len(),
                    json,
                },
            });
            self.log_total += chunk.len() as u64;
        }
        self.enforce_limits()
    }

    /// Stream `s` reached its end.
    pub fn on_eof(&mut self, s: usize) {
        self.streams[s].eof = true;
    }

    pub fn is_eof(&self, s: usize) -> bool {
        self.streams[s].eof
    }

    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// What the logger of stream `s` should write next (contiguous in the arena).
    pub fn logger_range(&self, s: usize) -> Option<Range<usize>> {
        let b = &self.streams[s];
        let pos = (b.logged % b.cap as u64) as usize;
        let len = ((b.head - b.logged) as usize).min(b.cap - pos);
        (len > 0).then(|| b.base + pos..b.base + pos + len)
    }

    pub fn on_logged(&mut self, s: usize, n: usize) {
        let b = &mut self.streams[s];
        b.logged += n as u64;
        assert!(b.logged <= b.head, "the logger wrote more than was read");
    }

    /// Every byte read from every stream has reached the logger.
    pub fn logger_done(&self) -> bool {
        self.streams.iter().all(|b| b.logged == b.head)
    }

    /// Container output is over: each client's stream ends once it has every record.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Appends a control record (a heartbeat) for the clients attached now: a complete
    /// chunk in each format. Returns the clients this cut off.
    pub fn push_control(&mut self, json: Rc<[u8]>, protobuf: Rc<[u8]>) -> Vec<Cut> {
        // A heartbeat is only a sign of life: while the log is full (a blocking client
        // holds it), it is dropped rather than grow the log.
        if self.live_clients == 0
            || self.finished
            || self.records.len() + self.records_per_read() >= self.config.max_records
        {
            return Vec::new();
        }
        self.records.push_back(Record {
            log_start: self.log_total,
            kind: RecordKind::Control { json, protobuf },
        });
        self.enforce_limits()
    }

    // -----------------------------------------------------------------------------------
    // Clients

    /// Attaches a client at the live edge (no replay): it is sent `front` first, then every
    /// record appended from now on.
    pub fn add_client(&mut self, framing: Framing, policy: LagPolicy, front: Vec<u8>) -> ClientId {
        if framing == Framing::Chunked(Format::Json) {
            self.json_clients += 1;
        }
        self.live_clients += 1;
        ClientId(self.clients.insert(Client {
            framing,
            policy,
            front,
            front_sent: 0,
            next: self.first_seq + self.records.len() as u64,
            offset: 0,
            end_sent: 0,
            ended: false,
            sending: 0,
            front_in_send: 0,
            plan: Vec::new(),
            state: ClientState::Live,
        }))
    }

    fn client(&self, id: ClientId) -> &Client {
        self.clients
            .get(id.0)
            .unwrap_or_else(|| panic!("unknown client {id:?}"))
    }

    fn client_mut(&mut self, id: ClientId) -> &mut Client {
        self.clients
            .get_mut(id.0)
            .unwrap_or_else(|| panic!("unknown client {id:?}"))
    }

    /// Every client that exists, live or cut.
    pub fn client_ids(&self) -> Vec<ClientId> {
        self.clients.iter().map(|(key, _)| ClientId(key)).collect()
    }

    /// Clients being served.
    pub fn live_clients(&self) -> usize {
        self.live_clients
    }

    /// Payload bytes the client is behind the live edge.
    pub fn lag(&self, id: ClientId) -> u64 {
        let c = self.client(id);
        match self.records.get((c.next - self.first_seq) as usize) {
            Some(r) => self.log_total - r.log_start,
            None => 0,
        }
    }

    /// A live blocking client that holds the oldest record, and that record's sequence
    /// number: the client reading may be waiting for.
    pub fn blocking_holder(&self) -> Option<(ClientId, u64)> {
        if self.records.is_empty() {
            return None;
        }
        self.clients
            .iter()
            .find(|(_, c)| c.state == ClientState::Live && c.policy == LagPolicy::Block && c.next == self.first_seq)
            .map(|(key, c)| (ClientId(key), c.next))
    }

    /// Cuts a client off for lagging (a blocking client that stopped making progress);
    /// returns the payload bytes it was behind, if it was being served.
    pub fn cut_lagging(&mut self, id: ClientId) -> Option<u64> {
        if self.client(id).state != ClientState::Live {
            return None;
        }
        let lost = self.lag(id);
        self.cut(id, CutReason::Lagging);
        self.release_records();
        Some(lost)
    }

    /// The sequence number of the next record the client is to get: it moves as the
    /// client makes progress.
    pub fn progress(&self, id: ClientId) -> u64 {
        self.client(id).next
    }

    /// Why the client was cut off, if it was.
    pub fn cut_reason(&self, id: ClientId) -> Option<CutReason> {
        match self.client(id).state {
            ClientState::Live => None,
            ClientState::Cut(r) => Some(r),
        }
    }

    /// Whether a send to this client is in flight.
    pub fn is_sending(&self, id: ClientId) -> bool {
        self.client(id).sending > 0
    }

    /// The client received its whole stream, end included.
    pub fn has_ended(&self, id: ClientId) -> bool {
        self.client(id).ended
    }

    /// Stops serving a client. It keeps its place until [`Relay::remove_client`], so that a
    /// send in flight still refers to records that exist.
    pub fn cut(&mut self, id: ClientId, reason: CutReason) {
        let c = self.client_mut(id);
        if c.state != ClientState::Live {
            return;
        }
        c.state = ClientState::Cut(reason);
        let json = c.framing == Framing::Chunked(Format::Json);
        self.live_clients -= 1;
        if json {
            self.json_clients -= 1;
        }
    }

    /// Forgets a client; no send to it may be in flight.
    pub fn remove_client(&mut self, id: ClientId) {
        assert!(!self.is_sending(id), "client {id:?} removed with a send in flight");
        self.cut(id, CutReason::Gone);
        self.clients.remove(id.0);
        self.release_records();
    }

    /// Cuts the disconnecting clients that broke the limits, and returns them. A log too
    /// full for another read counts: clients holding its oldest record go, unless they
    /// block (then reading waits for them).
    fn enforce_limits(&mut self) -> Vec<Cut> {
        let limit = self.config.lag_limit as u64;
        let front_lagging = self
            .records
            .front()
            .is_some_and(|r| self.log_total - r.log_start > limit);
        let log_full = self.records.len() + self.records_per_read() > self.config.max_records;
        if !front_lagging && !log_full {
            return Vec::new();
        }
        let front_holder = log_full.then_some(self.first_seq);
        let mut cut = Vec::new();
        for id in self.client_ids() {
            let c = self.client(id);
            if c.state != ClientState::Live || c.policy == LagPolicy::Block {
                continue;
            }
            let lag = self.lag(id);
            if lag > limit || front_holder == Some(c.next) {
                self.cut(id, CutReason::Lagging);
                cut.push(Cut { id, lost: lag });
            }
        }
        self.release_records();
        cut
    }

    /// Drops the records no client needs any more, and moves the streams' client tails.
    fn release_records(&mut self) {
        let end = self.first_seq + self.records.len() as u64;
        // A cut client still holds its records while a send to it is in flight.
        let keep_from = self
            .clients
            .values()
            .filter(|c| c.state == ClientState::Live || c.sending > 0)
            .map(|c| c.next)
            .min()
            .unwrap_or(end);
        while self.first_seq < keep_from {
            let Some(r) = self.records.pop_front() else { break };
            self.first_seq += 1;
            if let RecordKind::Data { stream, off, len, .. } = r.kind {
                let s = usize::from(stream == Stream::Stderr).min(self.streams.len() - 1);
                self.streams[s].client_tail = off + len as u64;
            }
        }
        if self.records.is_empty() {
            for b in &mut self.streams {
                b.client_tail = b.head;
            }
        }
    }
}

#[cfg(test)]
mod tests;
