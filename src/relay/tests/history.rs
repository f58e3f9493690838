//! The history against the simulated kernel: clients that stall, lag past the arena,
//! start anywhere the history holds, or block reading at its end.

use proptest::prelude::*;

use super::*;

/// A history larger than the arena: clients far behind are served from spilled memory.
fn history_config() -> Config {
    Config {
        history_bytes: 20_000,
        max_records: 256,
        ..small_config()
    }
}

#[test]
fn a_stalled_client_is_cut_once_the_history_cannot_hold_it_and_nobody_waits_for_it() {
    let config = small_config();
    let mut sim = Sim::new(config, 2, 99);
    sim.attach(Framing::Chunked(Format::Protobuf), b"", true);
    sim.attach(Framing::Chunked(Format::Protobuf), b"", false);
    sim.attach(Framing::Raw, b"", false);
    // Far more than the buffer and the history: reading goes on.
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
    assert!(sim.cut[0].lost > config.history_bytes as u64);
    sim.relay.remove_client(stalled);
    // Nobody lags: the history let everything go.
    assert_eq!(sim.relay.history().1, 0);
    sim.drain();
    sim.check();
}

#[test]
fn a_client_behind_the_arena_is_served_from_the_history() {
    let config = history_config();
    let mut sim = Sim::new(config, 2, 5);
    for i in 0..3 {
        let framing = [
            Framing::Raw,
            Framing::Chunked(Format::Json),
            Framing::Chunked(Format::Protobuf),
        ][i];
        sim.attach(framing, b"", false);
    }
    // The clients do not read while four buffers' worth is produced and logged.
    while sim.produced[0].len() + sim.produced[1].len() < 4 * config.buffer_bytes {
        let s = sim.rng.below(2);
        if !sim.read(s, config.max_read) {
            sim.log(s);
        }
        sim.log(s);
    }
    assert!(sim.spills > 0, "nothing left the arena");
    let (kept, spilled) = sim.relay.history();
    assert!(kept <= config.history_bytes as u64 && spilled > 0, "{kept} {spilled}");
    assert!(sim.cut.is_empty());
    sim.drain();
    sim.check();
    // Caught up: nothing is kept.
    assert_eq!(sim.relay.history(), (0, 0));
}

#[test]
fn clients_start_anywhere_the_history_holds() {
    let config = Config {
        replay_bytes: 5000,
        ..history_config()
    };
    let mut sim = Sim::new(config, 2, 21);
    for _ in 0..200 {
        sim.step(config.max_read);
    }
    let newest = sim.relay.position();
    assert!(newest > 6000);
    // Kept for replay with no client attached: the last 5000 bytes, and a little more
    // (whole records).
    let (kept, _) = sim.relay.history();
    assert!((5000..5000 + config.max_record as u64).contains(&kept), "{kept}");
    // A tail, a resume inside a record, and a start the history no longer holds.
    let tail = sim.attach_at(Framing::Raw, b"", false, StartAt::Tail(100), LagPolicy::Disconnect);
    assert_eq!(
        tail,
        Start {
            position: newest - 100,
            skipped: 0,
            newest
        }
    );
    let p = newest - 4321;
    let resume = sim.attach_at(
        Framing::Chunked(Format::Json),
        b"H",
        false,
        StartAt::Position(p),
        LagPolicy::Disconnect,
    );
    assert_eq!(
        resume,
        Start {
            position: p,
            skipped: 0,
            newest
        }
    );
    let old = sim.attach_at(
        Framing::Chunked(Format::Protobuf),
        b"",
        false,
        StartAt::Position(10),
        LagPolicy::Disconnect,
    );
    assert_eq!(old.position + kept - newest, 0, "{old:?} {kept}");
    assert_eq!(old.skipped, old.position - 10);
    assert!(sim.relay.locate(StartAt::Position(newest + 1), newest).is_err());
    // Then live output, and everybody gets exactly theirs.
    for round in 0..300 {
        sim.step(config.max_read);
        if round % 5 == 0 {
            for i in 0..sim.clients.len() {
                sim.catch_up(i);
            }
        }
    }
    sim.drain();
    sim.check();
    assert!(sim.cut.is_empty());
}

#[test]
fn a_blocking_client_holds_back_reading_at_the_end_of_the_history() {
    let config = history_config();
    let mut sim = Sim::new(config, 1, 13);
    sim.attach_at(Framing::Raw, b"", false, StartAt::Live, LagPolicy::Block);
    let id = sim.clients[0].id;
    // The logger keeps up; the client does not read: reading stops once the history is
    // full (past the arena).
    let mut total = 0;
    while sim.read(0, config.max_read) {
        while sim.relay.logger_range(0).is_some() || sim.logger_pending[0].is_some() {
            sim.log(0);
        }
        total += 1;
        assert!(total < 10_000);
    }
    let produced = sim.produced[0].len();
    assert!(produced > config.buffer_bytes, "{produced}");
    assert!(produced <= config.history_bytes, "{produced}");
    assert!(sim.cut.is_empty() && sim.relay.cut_reason(id).is_none());
    assert_eq!(sim.relay.blocking_holder().map(|(c, _)| c), Some(id));
    sim.catch_up(0);
    assert!(matches!(sim.relay.read_plan(0), ReadPlan::Window(_)));
    sim.drain();
    sim.check();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn lagging_and_resuming_clients_get_exactly_their_output(seed in any::<u64>(), streams in 1usize..=2) {
        let config = Config {
            replay_bytes: 2000,
            ..history_config()
        };
        let mut sim = Sim::new(config, streams, seed);
        let mut rng = Rng(seed ^ 0x5eed);
        for round in 0..600 {
            sim.step(config.max_read);
            if round % 50 == 0 {
                // Now and then a client attaches anywhere, of any kind.
                let newest = sim.relay.position();
                let at = match rng.below(3) {
                    0 => StartAt::Live,
                    1 => StartAt::Tail(rng.below(3000) as u64),
                    _ => StartAt::Position(newest.saturating_sub(rng.below(6000) as u64)),
                };
                let framing = [Framing::Raw, Framing::Chunked(Format::Json), Framing::Chunked(Format::Protobuf)][rng.below(3)];
                sim.attach_at(framing, b"h", false, at, LagPolicy::Disconnect);
            }
            // Clients catch up rarely: they lag, within the history.
            if round % 17 == 0 {
                for i in 0..sim.clients.len() {
                    sim.catch_up(i);
                }
            }
        }
        sim.drain();
        sim.check();
        let (kept, _) = sim.relay.history();
        prop_assert!(kept <= config.history_bytes as u64 + config.max_read as u64);
    }
}
