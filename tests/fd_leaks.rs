//! A whole relay run leaves no descriptor of this process open (its own binary, so that
//! no other test opens descriptors meanwhile).

use common::*;
use switchboard::config::{LagPolicy, RelayConfig, RingConfig};
use switchboard::relay::Framing;
use switchboard::server::fanout::{self, FanoutSpec};
use switchboard::wire::Format;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_relay_run_closes_every_descriptor() {
    within(60, || {
        // Warm up lazily opened descriptors (the test pattern, thread machinery).
        fill_pattern(1, 0, &mut [0u8; 16]);
        let before = open_fds();
        for round in 0..4 {
            let (src_r, src_w) = pipe(1 << 20);
            let (log_r, log_w) = pipe(1 << 20);
            let mut clients = Vec::new();
            let mut readers: Vec<(std::os::fd::OwnedFd, Box<dyn Checker>)> = Vec::new();
            for i in 0..8 {
                let (ours, theirs) = socket_pair();
                clients.push((ours, Framing::Chunked(Format::Protobuf), Vec::new()));
                if i == 3 {
                    drop(theirs); // one leaves at once
                } else {
                    readers.push((theirs, Box::new(BodyChecker::new(Format::Protobuf, [5, 0], None))));
                }
            }
            let spec = FanoutSpec {
                relay: RelayConfig::default(),
                sources: vec![(src_r, false)],
                loggers: vec![log_w],
                clients,
                hangup_polls: true,
                policy: LagPolicy::Disconnect,
                // By copies, then by pipe pages (each client has a pipe of its own).
                zero_copy: round % 2 == 1,
            };
            let relay = std::thread::spawn(move || fanout::run(spec, RingConfig::default()).unwrap());
            let producer = std::thread::spawn(move || produce(vec![(src_w, 5)], 1 << 20, 65536, 1, None));
            let logger = std::thread::spawn(move || {
                read_all(
                    vec![(
                        log_r,
                        Box::new(RawChecker {
                            seed: 5,
                            pos: 0,
                            expect_len: Some(1 << 20),
                            progress: None,
                        }),
                    )],
                    &[],
                )
            });
            read_all(readers, &[]);
            producer.join().unwrap();
            logger.join().unwrap();
            let report = relay.join().unwrap();
            assert_eq!(report.leaked_fds, 0);
        }
        assert_eq!(open_fds(), before, "descriptors left open");
    });
}
