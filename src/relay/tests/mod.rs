//! The relay against a simulated kernel: a plain vector stands in for the arena, reads
//! land in the windows the relay hands out, and sends are materialized only when they
//! "complete" (as the kernel reads them), after other reads may have happened. Any
//! overlap between a read and a pending send, any byte lost, reordered or duplicated,
//! shows up in the decoded streams; every client must get exactly the output from the
//! position it started at, in position order.

mod history;

use std::ops::Range;

use proptest::prelude::*;

use super::*;
use crate::msg::{Msg, Seg};
use crate::wire::frame;
use crate::wire::http::{ChunkedDecoder, Limits};
use crate::wire::message::{decode, mesos::agent::ProcessIo, mesos::agent::process_io};
use crate::wire::recordio;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

struct SimClient {
    id: ClientId,
    framing: Framing,
    /// The position it started at.
    from: u64,
    /// Bytes sent before the records (a stand-in HTTP head).
    front: Vec<u8>,
    received: Vec<u8>,
    pending: Option<Msg>,
    /// Never sent to (a stalled reader).
    stalled: bool,
}

/// The simulated arena, as the relay reads it.
struct SimArena<'a>(&'a [u8]);

impl ArenaBytes for SimArena<'_> {
    fn bytes(&self, range: Range<usize>) -> &[u8] {
        &self.0[range]
    }
}

struct Sim {
    relay: Relay,
    arena: Vec<u8>,
    rng: Rng,
    produced: [Vec<u8>; 2],
    /// Every read: its stream and its bytes' offsets in that stream, in position order.
    reads: Vec<(usize, Range<u64>)>,
    logged: [Vec<u8>; 2],
    logger_pending: [Option<Range<usize>>; 2],
    clients: Vec<SimClient>,
    streams: usize,
    /// Clients the relay cut off.
    cut: Vec<Cut>,
    /// Bytes spilled out of the arena.
    spills: usize,
}

impl Sim {
    fn new(config: Config, streams: usize, seed: u64) -> Sim {
        let relay = Relay::new(config, streams).unwrap();
        let arena = vec![0xAA; relay.arena_len()];
        Sim {
            relay,
            arena,
            rng: Rng(seed | 1),
            produced: [Vec::new(), Vec::new()],
            reads: Vec::new(),
            logged: [Vec::new(), Vec::new()],
            logger_pending: [None, None],
            clients: Vec::new(),
            streams,
            cut: Vec::new(),
            spills: 0,
        }
    }

    fn attach(&mut self, framing: Framing, front: &[u8], stalled: bool) {
        self.attach_at(framing, front, stalled, StartAt::Live, LagPolicy::Disconnect);
    }

    fn attach_at(&mut self, framing: Framing, front: &[u8], stalled: bool, at: StartAt, policy: LagPolicy) -> Start {
        let start = self.relay.locate(at, self.relay.position()).unwrap();
        let id = self
            .relay
            .add_client_at(framing, policy, front.to_vec(), start.position);
        self.clients.push(SimClient {
            id,
            framing,
            from: start.position,
            front: front.to_vec(),
            received: Vec::new(),
            pending: None,
            stalled,
        });
        start
    }

    /// Arena ranges that pending operations (logger writes, sends) read.
    fn pending_arena(&self) -> Vec<Range<usize>> {
        let mut out: Vec<Range<usize>> = self.logger_pending.iter().flatten().cloned().collect();
        for c in &self.clients {
            if let Some(m) = &c.pending {
                out.extend(m.segs.iter().filter_map(|s| match s {
                    Seg::Arena(r) => Some(r.clone()),
                    _ => None,
                }));
            }
        }
        out
    }

    /// Reads up to `max` fresh bytes into stream `s`, if it may read (spilling first when
    /// the relay says so).
    fn read(&mut self, s: usize, max: usize) -> bool {
        let w = loop {
            match self.relay.read_plan(s) {
                ReadPlan::Window(w) => break w,
                ReadPlan::Spill(r) => {
                    for p in self.pending_arena() {
                        assert!(
                            p.end <= r.start || r.end <= p.start,
                            "spill {r:?} of a range a pending operation reads {p:?}"
                        );
                    }
                    self.spills += r.len();
                    let bytes = self.arena[r].to_vec();
                    self.relay.spill(s, &bytes);
                }
                ReadPlan::Wait => return false,
            }
        };
        for p in self.pending_arena() {
            assert!(
                p.end <= w.start || w.end <= p.start,
                "read window {w:?} overlaps a pending operation {p:?}"
            );
        }
        let n = 1 + self.rng.below(max.min(w.len()));
        let start = self.produced[s].len() as u64;
        for i in 0..n {
            let byte = (self.rng.next() % 251) as u8 ^ s as u8;
            self.produced[s].push(byte);
            self.arena[w.start + i] = byte;
        }
        self.reads.push((s, start..start + n as u64));
        let data = self.arena[w.start..w.start + n].to_vec();
        self.cut.extend(self.relay.on_read(s, &data));
        true
    }

    fn log(&mut self, s: usize) {
        if let Some(r) = self.logger_pending[s].take() {
            let n = 1 + self.rng.below(r.len());
            self.logged[s].extend_from_slice(&self.arena[r.start..r.start + n]);
            self.relay.on_logged(s, n);
        } else {
            self.logger_pending[s] = self.relay.logger_range(s);
        }
    }

    fn materialize(arena: &[u8], msg: &Msg) -> Vec<u8> {
        let mut out = Vec::new();
        for seg in &msg.segs {
            match seg {
                Seg::Scratch(r) => out.extend_from_slice(&msg.scratch[r.clone()]),
                Seg::Arena(r) => out.extend_from_slice(&arena[r.clone()]),
                Seg::Held { index, range } => out.extend_from_slice(&msg.held[*index][range.clone()]),
            }
        }
        out
    }

    fn send(&mut self, i: usize, whole: bool) {
        let c = &mut self.clients[i];
        if c.stalled {
            return;
        }
        match c.pending.take() {
            Some(msg) => {
                let bytes = Self::materialize(&self.arena, &msg);
                assert_eq!(bytes.len(), msg.len());
                let n = if whole {
                    bytes.len()
                } else {
                    1 + self.rng.below(bytes.len())
                };
                c.received.extend_from_slice(&bytes[..n]);
                self.relay.on_sent(c.id, Ok(n));
            }
            None => {
                let mut msg = Msg::default();
                if self.relay.fill(c.id, &mut msg, &SimArena(&self.arena)) {
                    c.pending = Some(msg);
                }
            }
        }
    }

    /// Sends to client `i` until it has everything, completing each send whole.
    fn catch_up(&mut self, i: usize) {
        loop {
            self.send(i, true);
            if self.clients[i].pending.is_none() {
                self.send(i, true);
                if self.clients[i].pending.is_none() {
                    return;
                }
            }
        }
    }

    fn step(&mut self, max_read: usize) {
        match self.rng.below(4) {
            0 => {
                let s = self.rng.below(self.streams);
                self.read(s, max_read);
            }
            1 => {
                let s = self.rng.below(self.streams);
                self.log(s);
            }
            _ => {
                if !self.clients.is_empty() {
                    let i = self.rng.below(self.clients.len());
                    self.send(i, false);
                }
            }
        }
    }

    /// Finishes: ends the streams and drains the logger and every client.
    fn drain(&mut self) {
        for s in 0..self.streams {
            self.relay.on_eof(s);
        }
        self.relay.finish();
        for _ in 0..1_000_000 {
            let mut busy = false;
            for s in 0..self.streams {
                if self.logger_pending[s].is_some() || self.relay.logger_range(s).is_some() {
                    self.log(s);
                    busy = true;
                }
            }
            for i in 0..self.clients.len() {
                let c = &self.clients[i];
                if !c.stalled && self.relay.cut_reason(c.id).is_none() && !self.relay.has_ended(c.id) {
                    let whole = self.rng.below(2) == 0;
                    self.send(i, whole);
                    busy = true;
                }
            }
            if !busy {
                return;
            }
        }
        panic!("the relay did not drain");
    }

    /// The output from position `from` on, in position order: each read's stream and
    /// bytes.
    fn output_from(&self, from: u64) -> Vec<(usize, Vec<u8>)> {
        let mut pos = 0;
        let mut out = Vec::new();
        for (s, r) in &self.reads {
            let bytes = &self.produced[*s][r.start as usize..r.end as usize];
            let end = pos + bytes.len() as u64;
            if end > from {
                let skip = from.saturating_sub(pos) as usize;
                out.push((*s, bytes[skip..].to_vec()));
            }
            pos = end;
        }
        out
    }

    fn check(&self) {
        for s in 0..self.streams {
            assert_eq!(self.logged[s], self.produced[s], "logger of stream {s}");
        }
        for c in &self.clients {
            if c.stalled || self.relay.cut_reason(c.id).is_some() {
                continue;
            }
            assert!(self.relay.has_ended(c.id), "client {:?} did not reach the end", c.id);
            assert!(c.received.starts_with(&c.front));
            let received = &c.received[c.front.len()..];
            let expected = self.output_from(c.from);
            match c.framing {
                Framing::Raw => {
                    let all: Vec<u8> = expected.iter().flat_map(|(_, b)| b.iter().copied()).collect();
                    assert_eq!(received, all);
                }
                Framing::Chunked(format) => {
                    let (data, _) = decode_body(received, format);
                    // In position order, record by record (records split reads, never
                    // merge them): the same streams and bytes.
                    let mut want: Vec<(usize, Vec<u8>)> = Vec::new();
                    for (s, b) in expected {
                        match want.last_mut() {
                            Some((ls, lb)) if *ls == s => lb.extend(b),
                            _ => want.push((s, b)),
                        }
                    }
                    let mut got: Vec<(usize, Vec<u8>)> = Vec::new();
                    for (s, b) in data {
                        match got.last_mut() {
                            Some((ls, lb)) if *ls == s => lb.extend(b),
                            _ => got.push((s, b)),
                        }
                    }
                    assert_eq!(got, want, "client from {}", c.from);
                }
            }
        }
    }
}

/// Decodes an output response body: chunked, then RecordIO, then ProcessIO records.
/// Returns the DATA records (stream, bytes) in order, and how many heartbeats there were.
fn decode_body(body: &[u8], format: Format) -> (Vec<(usize, Vec<u8>)>, usize) {
    let mut chunked = ChunkedDecoder::new(&Limits::default());
    let mut records = recordio::Decoder::new(1 << 24);
    let mut data = Vec::new();
    let mut heartbeats = 0;
    let mut pos = 0;
    let mut done = false;
    while pos < body.len() {
        let d = chunked.decode(&body[pos..]).unwrap();
        pos += d.used;
        let mut bytes = d.data;
        while !bytes.is_empty() {
            let (used, rec) = records.decode(bytes).unwrap();
            bytes = &bytes[used..];
            if let Some(rec) = rec {
                let pio: ProcessIo = decode(format, &rec).unwrap();
                match process_io::Type::try_from(pio.r#type.unwrap()).unwrap() {
                    process_io::Type::Data => {
                        let d = pio.data.unwrap();
                        let s = usize::from(d.r#type == Some(process_io::data::Type::Stderr as i32));
                        assert!(!d.data.as_ref().unwrap().is_empty(), "DATA records are never empty");
                        data.push((s, d.data.unwrap()));
                    }
                    _ => heartbeats += 1,
                }
            }
        }
        if d.done {
            done = true;
            break;
        }
    }
    assert!(done, "the chunked body did not end");
    assert_eq!(pos, body.len(), "bytes after the last chunk");
    assert!(records.is_idle());
    (data, heartbeats)
}

fn small_config() -> Config {
    Config {
        buffer_bytes: 4096,
        max_read: 700,
        max_record: 300,
        history_bytes: 3000,
        replay_bytes: 0,
        max_records: 64,
        max_send_bytes: 2000,
        max_send_segments: 16,
    }
}

#[test]
fn config_limits_must_fit() {
    for bad in [
        Config {
            history_bytes: 600,
            ..small_config()
        },
        Config {
            replay_bytes: 3001,
            ..small_config()
        },
        Config {
            buffer_bytes: 600,
            ..small_config()
        },
    ] {
        assert!(Relay::new(bad, 2).is_err(), "{bad:?}");
    }
    assert!(Relay::new(Config::default(), 2).is_ok());
}

#[test]
fn heartbeats_reach_attached_chunked_clients_only() {
    let mut sim = Sim::new(small_config(), 1, 7);
    sim.attach(Framing::Chunked(Format::Json), b"HEAD", false);
    sim.attach(Framing::Raw, b"", false);
    let hb = |f| Rc::<[u8]>::from(frame::message_chunk(f, &message::heartbeat_message(10_000_000)));
    sim.relay.push_control(hb(Format::Json), hb(Format::Protobuf));
    sim.read(0, 100);
    sim.relay.push_control(hb(Format::Json), hb(Format::Protobuf));
    sim.drain();
    sim.check();
    let json = &sim.clients[0].received;
    assert!(json.starts_with(b"HEAD"));
    assert_eq!(decode_body(&json[4..], Format::Json).1, 2);
}

#[test]
fn a_client_that_fails_releases_its_records() {
    let mut sim = Sim::new(small_config(), 1, 5);
    sim.attach(Framing::Raw, b"", false);
    sim.read(0, 500);
    let id = sim.clients[0].id;
    let mut msg = Msg::default();
    assert!(sim.relay.fill(id, &mut msg, &SimArena(&sim.arena)));
    assert!(!sim.relay.on_sent(id, Err(())));
    assert_eq!(sim.relay.cut_reason(id), Some(CutReason::Gone));
    sim.relay.remove_client(id);
    sim.clients.clear();
    // With no client, only the logger holds the buffer.
    while sim.relay.logger_range(0).is_some() || sim.logger_pending[0].is_some() {
        sim.log(0);
    }
    assert!(matches!(sim.relay.read_plan(0), ReadPlan::Window(w) if w.len() == 700));
}

#[test]
fn a_slow_logger_pauses_reading() {
    let config = small_config();
    let mut sim = Sim::new(config, 1, 11);
    let mut reads = 0;
    while sim.read(0, config.max_read) {
        reads += 1;
        assert!(reads < 1000);
    }
    assert_eq!(sim.produced[0].len(), config.buffer_bytes);
    sim.log(0);
    sim.log(0);
    assert!(matches!(sim.relay.read_plan(0), ReadPlan::Window(_)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_client_gets_every_byte_in_order(seed in any::<u64>(), streams in 1usize..=2, clients in 1usize..6) {
        let config = small_config();
        let mut sim = Sim::new(config, streams, seed);
        for i in 0..clients {
            let framing = match i % 3 {
                0 => Framing::Raw,
                1 => Framing::Chunked(Format::Json),
                _ => Framing::Chunked(Format::Protobuf),
            };
            sim.attach(framing, if i % 2 == 0 { b"" } else { b"HTTP head" }, false);
        }
        // Keep clients within the history: at most three reads between catch-ups.
        for round in 0..400 {
            sim.step(config.max_read);
            if round % 3 == 0 {
                for i in 0..sim.clients.len() {
                    sim.catch_up(i);
                }
            }
        }
        sim.drain();
        sim.check();
        prop_assert!(sim.cut.is_empty());
    }
}
