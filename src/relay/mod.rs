//! The output relay: one read of container output, many deliveries, and the output
//! history.
//!
//! This room is logic only; it never touches the ring. The server's loop asks it where
//! the next read of each stream should land, tells it what was read, what the logger
//! wrote and what each client sent, and asks it what each client should send next.
//!
//! * Every output byte has a *position*: the payload bytes of both streams the server
//!   read before it. Positions order stdout and stderr into one sequence, the order every
//!   client sees.
//! * Each stream has a byte buffer in the arena, addressed by stream offset. A read lands
//!   at the head; the logger writes from its own offset; the buffer's tail is the oldest
//!   byte the logger or a record still needs. A slow logger holds back the container,
//!   never the clients.
//! * Reads become records (at most `max_record` payload bytes each) in a record log that
//!   clients walk with a cursor. A record refers to its payload where it lies: in the
//!   arena, or, once it had to leave the arena while still kept, in the history's
//!   memory (*spilled*: copied once, shared by every client). Framing (HTTP chunk line,
//!   RecordIO length, protobuf tags or JSON text) is written per client around the shared
//!   payload; JSON's base64 is made once per record.
//! * The log is the output history: a record is kept while a client still needs it or
//!   it is within `replay_bytes` of the newest output, and never beyond `history_bytes`
//!   (and `max_records`). A client starts at any position the history still holds: the
//!   live edge, a position it asks for (a resume), or some bytes before the edge.
//! * A client's lag is how many payload bytes it is behind the newest output. A
//!   disconnecting client further behind than the history holds is cut off (its loss
//!   reported); the container, the logger and the other clients never wait for it. A
//!   blocking client holds reading back instead, once the history is full.
//!
//! Those are the copying clients. The pipe clients of the zero-copy path keep their own
//! account ([`pipe`]): what their pipe holds, and what their lag policy makes of a full one.

mod history;
pub mod pipe;
mod send;

use std::collections::VecDeque;
use std::ops::Range;
use std::rc::Rc;

use crate::config::{ConfigError, LagPolicy, RelayConfig as Config};
use crate::slab::{Key, Slab};
pub use crate::wire::media::StartAt;
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
    /// It fell behind what the history (or its pipe) holds, or a blocking one stopped
    /// making progress.
    Lagging,
    /// Its connection failed or was closed.
    Gone,
}

/// Where a new client starts, as the history has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// The position of the first byte it gets.
    pub position: u64,
    /// Bytes it asked for that the history no longer holds.
    pub skipped: u64,
    /// The position of the newest output when it attached: what it gets before this is
    /// history, what it gets from here on was new.
    pub newest: u64,
}

/// A start past the newest output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Future {
    pub asked: u64,
    pub newest: u64,
}

/// Where a record's payload lies.
#[derive(Debug)]
enum Payload {
    /// In its stream's arena buffer, at this stream offset.
    Arena { off: u64 },
    /// Spilled: in a chunk of the history's memory, from `start`.
    Held { chunk: Rc<[u8]>, start: usize },
}

#[derive(Debug)]
enum RecordKind {
    Data {
        stream: Stream,
        len: usize,
        at: Payload,
        /// Its JSON payload (base64), made once while JSON clients need it.
        json: Option<Rc<[u8]>>,
    },
    /// A complete chunk per format (heartbeats).
    Control { json: Rc<[u8]>, protobuf: Rc<[u8]> },
}

#[derive(Debug)]
struct Record {
    /// The position of its first payload byte (for a control record: of the payload byte
    /// after it).
    pos: u64,
    kind: RecordKind,
}

impl Record {
    /// Payload bytes.
    fn len(&self) -> usize {
        match self.kind {
            RecordKind::Data { len, .. } => len,
            RecordKind::Control { .. } => 0,
        }
    }

    fn end(&self) -> u64 {
        self.pos + self.len() as u64
    }
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
    /// Stream offset of the oldest byte a record still has in the arena (when one has).
    client_tail: u64,
    /// Records of this stream whose payload is in the arena.
    resident: usize,
    eof: bool,
}

impl StreamBuf {
    /// The oldest byte the logger or a record in the arena still needs.
    fn tail(&self) -> u64 {
        if self.resident == 0 {
            self.logged
        } else {
            self.logged.min(self.client_tail)
        }
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
    /// The position it starts at: payload before it is not sent (a record it falls in is
    /// sent from there).
    from: u64,
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

/// Read access to the arena's bytes where no read is writing (the relay decides what
/// lands where, but does not hold the memory).
pub trait ArenaBytes {
    fn bytes(&self, range: Range<usize>) -> &[u8];
}

/// What the next read of a stream needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadPlan {
    /// Read into this arena range.
    Window(Range<usize>),
    /// First copy these arena bytes out of the arena, into the history
    /// ([`Relay::spill`]): records still kept hold them.
    Spill(Range<usize>),
    /// Not now: the stream ended, or the logger, the record log or a blocking client at
    /// the end of the history holds reading back.
    Wait,
}

/// The fan-out state of one container's output.
pub struct Relay {
    config: Config,
    streams: Vec<StreamBuf>,
    records: VecDeque<Record>,
    /// Sequence number of `records[0]`.
    first_seq: u64,
    /// The position of the next payload byte: all output read so far.
    position: u64,
    /// Payload bytes of the records kept, and of those spilled out of the arena.
    retained: u64,
    spilled: u64,
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
                resident: 0,
                eof: false,
            })
            .collect();
        Ok(Relay {
            config,
            streams,
            records: VecDeque::new(),
            first_seq: 0,
            position: 0,
            retained: 0,
            spilled: 0,
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

    fn stream_index(&self, stream: Stream) -> usize {
        usize::from(stream == Stream::Stderr).min(self.streams.len() - 1)
    }

    /// The position of the next output byte: all output so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    // -----------------------------------------------------------------------------------
    // Reading and logging

    /// Records one read can add.
    fn records_per_read(&self) -> usize {
        self.config.max_read.div_ceil(self.config.max_record)
    }

    /// `data` (the start of the window) was read from stream `s`. Returns the clients this
    /// cut off for lagging; their connections should be shut down.
    pub fn on_read(&mut self, s: usize, data: &[u8]) -> Vec<Cut> {
        let start = self.streams[s].head;
        self.streams[s].head += data.len() as u64;
        let pos = self.position;
        self.position += data.len() as u64;
        if self.live_clients == 0 && !self.keeps_replay() {
            self.release_records();
            return Vec::new();
        }
        for (i, chunk) in data.chunks(self.config.max_record).enumerate() {
            let json = (self.json_clients > 0).then(|| json_payload(chunk));
            let at = i * self.config.max_record;
            self.records.push_back(Record {
                pos: pos + at as u64,
                kind: RecordKind::Data {
                    stream: Self::stream_kind(s),
                    len: chunk.len(),
                    at: Payload::Arena { off: start + at as u64 },
                    json,
                },
            });
            self.retained += chunk.len() as u64;
            let b = &mut self.streams[s];
            if b.resident == 0 {
                b.client_tail = start + at as u64;
            }
            b.resident += 1;
        }
        self.enforce_limits()
    }

    /// Output that went by without the relay (the zero-copy path moved it into the logger
    /// while no copying client or replay needed it): positions move on.
    pub fn advance(&mut self, len: usize) {
        self.position += len as u64;
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
            pos: self.position,
            kind: RecordKind::Control { json, protobuf },
        });
        self.enforce_limits()
    }

    // -----------------------------------------------------------------------------------
    // Clients

    /// Attaches a client at the live edge: it is sent `front` first, then every record
    /// appended from now on.
    pub fn add_client(&mut self, framing: Framing, policy: LagPolicy, front: Vec<u8>) -> ClientId {
        self.add_client_at(framing, policy, front, self.position)
    }

    /// Attaches a client that starts at position `from` (from [`Relay::locate`]): it is
    /// sent `front` first, then the payload from `from` on.
    pub fn add_client_at(&mut self, framing: Framing, policy: LagPolicy, front: Vec<u8>, from: u64) -> ClientId {
        if framing == Framing::Chunked(Format::Json) {
            self.json_clients += 1;
        }
        self.live_clients += 1;
        // The first record it needs: data that ends past `from`, or control records at it
        // or after.
        let index = self.records.partition_point(|r| match r.kind {
            RecordKind::Data { .. } => r.end() <= from,
            RecordKind::Control { .. } => r.pos < from,
        });
        ClientId(self.clients.insert(Client {
            framing,
            policy,
            front,
            front_sent: 0,
            from,
            next: self.first_seq + index as u64,
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

    /// Whether the relay needs the output in its records: a client is served, or the
    /// replay window keeps it.
    pub fn wants_output(&self) -> bool {
        self.live_clients > 0 || self.keeps_replay()
    }

    /// The position a client has reached: every payload byte before it was sent to it.
    pub fn reached(&self, id: ClientId) -> u64 {
        let c = self.client(id);
        let at = self
            .records
            .get((c.next - self.first_seq) as usize)
            .map_or(self.position, |r| r.pos);
        at.max(c.from)
    }

    /// Payload bytes the client is behind the newest output.
    pub fn lag(&self, id: ClientId) -> u64 {
        self.position - self.reached(id).min(self.position)
    }

    /// A live blocking client that holds the oldest record, and the position it reached:
    /// the client reading may be waiting for.
    pub fn blocking_holder(&self) -> Option<(ClientId, u64)> {
        if self.records.is_empty() {
            return None;
        }
        self.clients
            .iter()
            .find(|(_, c)| c.state == ClientState::Live && c.policy == LagPolicy::Block && c.next == self.first_seq)
            .map(|(key, _)| (ClientId(key), self.reached(ClientId(key))))
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

    /// Whether the client has every record there is (and no send in flight).
    pub fn caught_up(&self, id: ClientId) -> bool {
        let c = self.client(id);
        c.sending == 0 && c.front_sent == c.front.len() && c.next == self.first_seq + self.records.len() as u64
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
}

/// The JSON payload of a DATA record: base64.
fn json_payload(data: &[u8]) -> Rc<[u8]> {
    let mut out = Vec::with_capacity(data.len().div_ceil(3) * 4 + 16);
    message::json_data_payload(data, &mut out);
    Rc::from(out)
}

#[cfg(test)]
mod tests;
