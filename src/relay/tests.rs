//! The relay against a simulated kernel: a plain vector stands in for the arena, reads
//! land in the windows the relay hands out, and sends are materialized only when they
//! "complete" (as the kernel reads them), after other reads may have happened. Any
//! overlap between a read and a pending send, any byte lost, reordered or duplicated,
//! shows up in the decoded streams.

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
    /// Stream offsets at attach time.
    from: [u64; 2],
    /// Position in the read log at attach time (for raw clients).
    from_read: usize,
    /// Bytes sent before the records (a stand-in HTTP head).
    front: Vec<u8>,
    received: Vec<u8>,
    pending: Option<Msg>,
    /// Never sent to (a stalled reader).
    stalled: bool,
}

struct Sim {
    relay: Relay,
    arena: Vec<u8>,
    rng: Rng,
    produced: [Vec<u8>; 2],
    reads: Vec<(usize, Range<u64>)>,
    logged: [Vec<u8>; 2],
    logger_pending: [Option<Range<usize>>; 2],
    clients: Vec<SimClient>,
    streams: usize,
    /// Clients the relay cut off.
    cut: Vec<Cut>,
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
        }
    }

    fn attach(&mut self, framing: Framing, front: &[u8], stalled: bool) {
        let id = self.relay.add_client(framing, LagPolicy::Disconnect, front.to_vec());
        let from = [
            self.relay.streams[0].head,
            self.relay.streams.get(1).map_or(0, |b| b.head),
        ];
        self.clients.push(SimClient {
            id,
            framing,
            from,
            from_read: self.reads.len(),
            front: front.to_vec(),
            received: Vec::new(),
            pending: None,
            stalled,
        });
    }

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

    /// Reads up to `max` fresh bytes into stream `s`, if its window is open.
    fn read(&mut self, s: usize, max: usize) -> bool {
        let Some(w) = self.relay.read_window(s) else {
            return false;
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
                if self.relay.fill(c.id, &mut msg) {
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

    fn check(&self) {
        for s in 0..self.streams {
            assert_eq!(self.logged[s], self.produced[s], "logger of stream {s}");
        }
        for c in &self.clients {
            if c.stalled {
                continue;
            }
            assert!(self.relay.has_ended(c.id), "client {:?} did not reach the end", c.id);
            assert!(c.received.starts_with(&c.front));
            let received = &c.received[c.front.len()..];
            match c.framing {
                Framing::Raw => {
                    let expected: Vec<u8> = self.reads[c.from_read..]
                        .iter()
                        .flat_map(|(s, r)| self.produced[*s][r.start as usize..r.end as usize].iter().copied())
                        .collect();
                    assert_eq!(received, expected);
                }
                Framing::Chunked(format) => {
                    let (streams, _) = decode_body(received, format);
                    for (s, got) in streams.iter().enumerate().take(self.streams) {
                        assert_eq!(got[..], self.produced[s][c.from[s] as usize..], "client stream {s}");
                    }
                }
            }
        }
    }
}

/// Decodes an output response body: chunked, then RecordIO, then ProcessIO records.
/// Returns the stdout and stderr bytes, and how many heartbeats there were.
fn decode_body(body: &[u8], format: Format) -> ([Vec<u8>; 2], usize) {
    let mut chunked = ChunkedDecoder::new(&Limits::default());
    let mut records = recordio::Decoder::new(1 << 24);
    let mut streams = [Vec::new(), Vec::new()];
    let mut heartbeats = 0;
    let mut pos = 0;
    let mut done = false;
    while pos < body.len() {
        let d = chunked.decode(&body[pos..]).unwrap();
        pos += d.used;
        let mut data = d.data;
        while !data.is_empty() {
            let (used, rec) = records.decode(data).unwrap();
            data = &data[used..];
            if let Some(rec) = rec {
                let pio: ProcessIo = decode(format, &rec).unwrap();
                match process_io::Type::try_from(pio.r#type.unwrap()).unwrap() {
                    process_io::Type::Data => {
                        let d = pio.data.unwrap();
                        let s = usize::from(d.r#type == Some(process_io::data::Type::Stderr as i32));
                        assert!(!d.data.as_ref().unwrap().is_empty(), "DATA records are never empty");
                        streams[s].extend_from_slice(&d.data.unwrap());
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
    (streams, heartbeats)
}

fn small_config() -> Config {
    Config {
        buffer_bytes: 4096,
        max_read: 700,
        max_record: 300,
        lag_limit: 3000,
        max_records: 64,
        max_send_bytes: 2000,
        max_send_segments: 16,
    }
}

#[test]
fn config_limits_must_fit() {
    let bad = Config {
        lag_limit: 4000,
        ..small_config()
    };
    assert!(Relay::new(bad, 2).is_err());
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
fn a_stalled_client_is_cut_and_nobody_waits_for_it() {
    let config = small_config();
    let mut sim = Sim::new(config, 2, 99);
    sim.attach(Framing::Chunked(Format::Protobuf), b"", true);
    sim.attach(Framing::Chunked(Format::Protobuf), b"", false);
    sim.attach(Framing::Raw, b"", false);
    // Far more than the buffer: reading must go on while the stalled client holds nothing.
    while sim.produced[0].len() + sim.produced[1].len() < 20 * config.buffer_bytes {
        for s in 0..2 {
            if !sim.read(s, config.max_read) {
                sim.log(s);
                sim.log(s);
            }
        }
        sim.catch_up(1);
        sim.catch_up(2);
    }
    let stalled = sim.clients[0].id;
    assert_eq!(sim.cut.iter().map(|c| c.id).collect::<Vec<_>>(), [stalled]);
    assert_eq!(sim.relay.cut_reason(stalled), Some(CutReason::Lagging));
    assert!(sim.cut[0].lost > config.lag_limit as u64);
    sim.relay.remove_client(stalled);
    sim.drain();
    sim.check();
}

#[test]
fn clients_attach_mid_stream_without_replay() {
    let mut sim = Sim::new(small_config(), 2, 3);
    for _ in 0..50 {
        sim.step(700);
    }
    sim.attach(Framing::Chunked(Format::Json), b"", false);
    for round in 0..200 {
        sim.step(700);
        if round % 3 == 0 {
            sim.catch_up(0);
        }
    }
    sim.attach(Framing::Chunked(Format::Protobuf), b"front", false);
    for round in 0..200 {
        sim.step(700);
        if round % 3 == 0 {
            sim.catch_up(0);
            sim.catch_up(1);
        }
    }
    sim.drain();
    sim.check();
    assert!(sim.cut.is_empty());
}

#[test]
fn a_client_that_fails_releases_its_records() {
    let mut sim = Sim::new(small_config(), 1, 5);
    sim.attach(Framing::Raw, b"", false);
    sim.read(0, 500);
    let id = sim.clients[0].id;
    let mut msg = Msg::default();
    assert!(sim.relay.fill(id, &mut msg));
    assert!(!sim.relay.on_sent(id, Err(())));
    assert_eq!(sim.relay.cut_reason(id), Some(CutReason::Gone));
    sim.relay.remove_client(id);
    sim.clients.clear();
    // With no client, only the logger holds the buffer.
    while sim.relay.logger_range(0).is_some() || sim.logger_pending[0].is_some() {
        sim.log(0);
    }
    assert_eq!(sim.relay.read_window(0).map(|w| w.len()), Some(700));
}

#[test]
fn a_blocking_client_holds_back_reading_instead_of_being_cut() {
    let config = small_config();
    let mut sim = Sim::new(config, 1, 13);
    let id = sim.relay.add_client(Framing::Raw, LagPolicy::Block, Vec::new());
    sim.clients.push(SimClient {
        id,
        framing: Framing::Raw,
        from: [0, 0],
        from_read: 0,
        front: Vec::new(),
        received: Vec::new(),
        pending: None,
        stalled: false,
    });
    // The logger keeps up; the client does not read: reading stops at the buffer size.
    let mut total = 0;
    while sim.read(0, config.max_read) {
        while sim.relay.logger_range(0).is_some() || sim.logger_pending[0].is_some() {
            sim.log(0);
        }
        total += 1;
        assert!(total < 1000);
    }
    assert_eq!(sim.produced[0].len(), config.buffer_bytes);
    assert!(sim.cut.is_empty() && sim.relay.cut_reason(id).is_none());
    sim.catch_up(0);
    assert!(sim.relay.read_window(0).is_some());
    sim.drain();
    sim.check();
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
    assert!(sim.relay.read_window(0).is_some());
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
        // Keep clients within the lag limit: at most three reads between catch-ups.
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
