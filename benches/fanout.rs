//! The fan-out benchmark of the relay core (issues 3 and 4): one pipe stream relayed to N
//! unix-socket consumers, side by side in one run, by
//! * `naive`: read once, blocking `write()` to every consumer, then to the logger;
//! * `core`: our io_uring core on its copy path (SEND from registered memory);
//! * `zerocopy`: our core on its zero-copy path (tee into a pipe per client, splice into
//!   the socket, splice into the logger);
//! * `tee-splice`: the raw limit, a bare lockstep loop of blocking tee and splice calls
//!   with no framing, no lag bound and no event loop, in 256 KiB chunks (tuning.md, K2
//!   and K6).
//!
//! Placement is pinned (tuning.md, K4): producer and relay on CPU 0, consumers on CPU 1.
//! Relay CPU = process CPU - producer thread CPU - consumer threads CPU. Every case runs
//! `--reps` times, rep-major, and the table gives medians with [min-max].
//!
//! Run: `cargo bench --bench fanout -- [--reps 5] [--ns 1,8,64,256] [--quick]
//! [--framing raw|protobuf|json] [--modes naive,core,zerocopy,tee-splice]
//! [--source pipe|pty] [--vary KNOB=V1,V2,...]`. With `--source pty` the container writes
//! into a PTY in raw mode (the relay reads its master; there is no tee-splice row: tee
//! refuses a PTY). The ratio columns compare each mode with the copy path (`core`) of the
//! same N.
//!
//! `--vary` runs every case once per value of one knob (sizes take k and m suffixes):
//! `read` (largest read, the zero-copy round), `buffer` (stream buffer), `history` (the
//! output history), `record` (largest record payload), `ring` (submission queue entries)
//! or `pipe` (the container's pipe; the baselines read it too).

use std::fs::File;
use std::os::fd::OwnedFd;
use std::time::Instant;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::time::{ClockId, clock_gettime};
use switchboard::config::{LagPolicy, RelayConfig, RingConfig};
use switchboard::relay::Framing;
use switchboard::server::fanout::{self, FanoutSpec};
use switchboard::wire::Format;

#[path = "support/relays.rs"]
mod relays;

use relays::{naive, tee_splice, write_all};

const CHUNK: usize = 64 << 10;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Naive,
    Core,
    ZeroCopy,
    TeeSplice,
}

impl Mode {
    fn parse(s: &str) -> Mode {
        match s {
            "naive" => Mode::Naive,
            "core" => Mode::Core,
            "zerocopy" => Mode::ZeroCopy,
            "tee-splice" => Mode::TeeSplice,
            other => panic!("unknown mode {other}: naive, core, zerocopy or tee-splice"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Naive => "naive",
            Mode::Core => "core",
            Mode::ZeroCopy => "zerocopy",
            Mode::TeeSplice => "tee-splice",
        }
    }
}

/// The settings of a run: ours, and the container pipe's size.
#[derive(Clone, Copy, Debug)]
struct Knobs {
    relay: RelayConfig,
    ring: RingConfig,
    pipe: usize,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            relay: RelayConfig::default(),
            ring: RingConfig::default(),
            pipe: 1 << 20,
        }
    }
}

fn parse_size(v: &str) -> usize {
    let (digits, unit) = match v.as_bytes().last() {
        Some(b'k' | b'K') => (&v[..v.len() - 1], 1 << 10),
        Some(b'm' | b'M') => (&v[..v.len() - 1], 1 << 20),
        _ => (v, 1),
    };
    digits
        .parse::<usize>()
        .map(|n| n * unit)
        .unwrap_or_else(|_| panic!("bad size {v}"))
}

/// The settings of `--vary KNOB=V1,V2,...`, with their labels.
fn variants(spec: &str) -> Vec<(String, Knobs)> {
    let (knob, values) = spec.split_once('=').expect("--vary KNOB=V1,V2,...");
    values
        .split(',')
        .map(|v| {
            let mut k = Knobs::default();
            let size = parse_size(v);
            let r = &mut k.relay;
            match knob {
                "read" => r.max_read = size,
                "buffer" => r.buffer_bytes = size,
                "history" => r.history_bytes = size,
                "record" => r.max_record = size,
                "ring" => k.ring.entries = size as u32,
                "pipe" => k.pipe = size,
                other => panic!("unknown knob {other}: read, buffer, history, record, ring or pipe"),
            }
            r.validate().unwrap_or_else(|e| panic!("--vary {knob}={v}: {e}"));
            (format!("{knob}={v}"), k)
        })
        .collect()
}

struct Case {
    mode: Mode,
    knobs: Knobs,
    n: usize,
    source_bytes: u64,
    framing: Framing,
    pin: bool,
    /// The container writes into a PTY (raw mode) rather than a pipe.
    pty: bool,
}

struct Sample {
    gbps: f64,
    relay_cpu_per_gb: f64,
    /// Whether our relay's buffers were registered with the ring (RLIMIT_MEMLOCK).
    registered: Option<bool>,
}

fn cpu_ns(clock: ClockId) -> u64 {
    let t = clock_gettime(clock).expect("clock_gettime");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

fn pin(cpu: usize, enabled: bool) {
    if enabled {
        relays::pin(0, cpu);
    }
}

fn produce(w: OwnedFd, total: u64, pinned: bool) -> u64 {
    pin(0, pinned);
    let c0 = cpu_ns(ClockId::CLOCK_THREAD_CPUTIME_ID);
    let buf: Vec<u8> = (0..CHUNK).map(|i| i as u8).collect();
    let mut left = total;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        write_all(&w, &buf[..n]);
        left -= n as u64;
    }
    drop(w);
    cpu_ns(ClockId::CLOCK_THREAD_CPUTIME_ID) - c0
}

fn consume(s: OwnedFd, pinned: bool) -> (u64, u64) {
    pin(1, pinned);
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0u64;
    loop {
        match nix::unistd::read(&s, &mut buf) {
            Ok(0) => break,
            Ok(n) => got += n as u64,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    (got, cpu_ns(ClockId::CLOCK_THREAD_CPUTIME_ID))
}

fn run(case: &Case) -> Sample {
    let mut ours = Vec::new();
    let mut consumers = Vec::new();
    for _ in 0..case.n {
        let (a, b) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC).unwrap();
        ours.push(a);
        let pinned = case.pin;
        consumers.push(
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || consume(b, pinned))
                .expect("spawn"),
        );
    }
    let (src_r, src_w) = if case.pty {
        let pty = switchboard::tty::open().unwrap();
        let mut raw = nix::sys::termios::tcgetattr(&pty.slave).unwrap();
        nix::sys::termios::cfmakeraw(&mut raw);
        nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &raw).unwrap();
        (pty.master, pty.slave)
    } else {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        switchboard::sys::grow_pipe(&w, case.knobs.pipe).unwrap();
        (r, w)
    };
    let logger: OwnedFd = File::options().write(true).open("/dev/null").unwrap().into();
    // Let the consumers reach their first read.
    std::thread::sleep(std::time::Duration::from_millis(50));

    pin(0, case.pin);
    let t0 = Instant::now();
    let p0 = cpu_ns(ClockId::CLOCK_PROCESS_CPUTIME_ID);
    let (total, pinned) = (case.source_bytes, case.pin);
    let producer = std::thread::spawn(move || produce(src_w, total, pinned));
    let registered = match case.mode {
        Mode::Naive => {
            naive(src_r, ours, logger);
            None
        }
        Mode::TeeSplice => {
            tee_splice(src_r, ours, logger);
            None
        }
        Mode::Core | Mode::ZeroCopy => {
            let clients = ours.into_iter().map(|fd| (fd, case.framing, Vec::new())).collect();
            let spec = FanoutSpec {
                relay: case.knobs.relay,
                sources: vec![(src_r, case.pty)],
                loggers: vec![logger],
                clients,
                hangup_polls: true,
                policy: LagPolicy::Block,
                zero_copy: case.mode == Mode::ZeroCopy,
            };
            let report = fanout::run(spec, case.knobs.ring).expect("relay");
            assert!(report.failure.is_none() && report.stats.clients_cut == 0, "{report:?}");
            Some(report.registered)
        }
    };
    let producer_cpu = producer.join().unwrap();
    let mut consumers_cpu = 0u64;
    for c in consumers {
        let (got, cpu) = c.join().unwrap();
        // Raw consumers get exactly the container's bytes; framed ones get more.
        if case.framing == Framing::Raw || matches!(case.mode, Mode::Naive | Mode::TeeSplice) {
            assert_eq!(got, case.source_bytes, "a consumer missed bytes");
        } else {
            assert!(got > case.source_bytes, "a consumer missed bytes");
        }
        consumers_cpu += cpu;
    }
    let wall = t0.elapsed().as_secs_f64();
    let process_cpu = cpu_ns(ClockId::CLOCK_PROCESS_CPUTIME_ID) - p0;
    let relay_cpu = process_cpu.saturating_sub(producer_cpu + consumers_cpu) as f64 / 1e9;
    // Throughput counts container bytes delivered (framing overhead excluded).
    let gb = (case.source_bytes * case.n as u64) as f64 / 1e9;
    Sample {
        gbps: gb / wall,
        relay_cpu_per_gb: relay_cpu / gb,
        registered,
    }
}

fn median(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let reps: usize = arg("--reps").map_or(5, |v| v.parse().expect("--reps"));
    let ns: Vec<usize> = arg("--ns").map_or(vec![1, 8, 64, 256], |v| {
        v.split(',').map(|n| n.parse().expect("--ns")).collect()
    });
    let quick = args.iter().any(|a| a == "--quick");
    let pty = match arg("--source").as_deref() {
        None | Some("pipe") => false,
        Some("pty") => true,
        Some(other) => panic!("unknown --source {other}: pipe or pty"),
    };
    let framing = match arg("--framing").as_deref() {
        None | Some("raw") => Framing::Raw,
        Some("protobuf") => Framing::Chunked(Format::Protobuf),
        Some("json") => Framing::Chunked(Format::Json),
        Some(other) => panic!("unknown --framing {other}"),
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned = cpus >= 2;
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, limit.1, limit.1);
    eprintln!(
        "fan-out benchmark: {reps} reps, N = {ns:?}, framing {framing:?}, source {}, pinned: {pinned}",
        if pty { "PTY" } else { "pipe" }
    );
    let mut modes: Vec<Mode> = arg("--modes")
        .map_or(vec![Mode::Naive, Mode::Core, Mode::ZeroCopy, Mode::TeeSplice], |v| {
            v.split(',').map(Mode::parse).collect()
        });
    if pty {
        // tee(2) refuses a PTY (EINVAL): there is no raw tee loop to compare with.
        modes.retain(|m| *m != Mode::TeeSplice);
    }
    let variants = arg("--vary").map_or(vec![(String::new(), Knobs::default())], |v| variants(&v));
    let mut results: Vec<(usize, Mode, usize, Vec<Sample>)> = Vec::new();
    for n in &ns {
        for mode in &modes {
            for v in 0..variants.len() {
                results.push((*n, *mode, v, Vec::new()));
            }
        }
    }
    for rep in 0..reps {
        for (n, mode, v, samples) in &mut results {
            let mut source_bytes = ((2u64 << 30) / *n as u64).max(16 << 20);
            if quick {
                source_bytes /= 8;
            }
            let sample = run(&Case {
                mode: *mode,
                knobs: variants[*v].1,
                n: *n,
                source_bytes,
                framing,
                pin: pinned,
                pty,
            });
            eprintln!(
                "rep {} N={n:<4} {:<10} {:<12} {:6.2} GB/s  relay {:.3} CPU-s/GB{}",
                rep + 1,
                mode.name(),
                variants[*v].0,
                sample.gbps,
                sample.relay_cpu_per_gb,
                match sample.registered {
                    Some(false) => "  (buffers not registered: RLIMIT_MEMLOCK)",
                    _ => "",
                }
            );
            samples.push(sample);
        }
    }
    // Medians per case, then ratios against the copy path (and the naive relay) of the
    // same N, measured in the same run.
    let medians: Vec<(usize, Mode, usize, [f64; 6])> = results
        .iter()
        .map(|(n, mode, v, samples)| {
            let (g, gmin, gmax) = median(&mut samples.iter().map(|s| s.gbps).collect::<Vec<_>>());
            let (c, cmin, cmax) = median(&mut samples.iter().map(|s| s.relay_cpu_per_gb).collect::<Vec<_>>());
            (*n, *mode, *v, [g, gmin, gmax, c, cmin, cmax])
        })
        .collect();
    let find = |n: usize, mode: Mode, v: usize| {
        medians
            .iter()
            .find(|m| m.0 == n && m.1 == mode && m.2 == v)
            .map(|m| m.3)
    };
    let ratio = |a: f64, b: Option<f64>| b.map_or("-".to_string(), |b| format!("{:.2}", a / b));
    let framing_name = match framing {
        Framing::Raw => "raw",
        Framing::Chunked(Format::Protobuf) => "protobuf records",
        Framing::Chunked(Format::Json) => "JSON records",
    };
    println!(
        "| N | relay | GB/s median [min-max] | relay CPU s/GB median [min-max] | GB/s vs copy path | CPU/GB vs copy path | GB/s vs naive |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (n, mode, v, [g, gmin, gmax, c, cmin, cmax]) in &medians {
        let mut name = match mode {
            Mode::Naive => "naive read + write()".to_string(),
            Mode::Core => format!("switchboard copy path ({framing_name})"),
            Mode::ZeroCopy => format!("switchboard zero-copy path ({framing_name})"),
            Mode::TeeSplice => "raw tee + splice (no framing)".to_string(),
        };
        if !variants[*v].0.is_empty() {
            name = format!("{name}, {}", variants[*v].0);
        }
        let core = find(*n, Mode::Core, *v);
        let naive = find(*n, Mode::Naive, *v);
        println!(
            "| {n} | {name} | {g:.2} [{gmin:.2}-{gmax:.2}] | {c:.3} [{cmin:.3}-{cmax:.3}] | {} | {} | {} |",
            ratio(*g, core.map(|m| m[0])),
            ratio(*c, core.map(|m| m[3])),
            ratio(*g, naive.map(|m| m[0])),
        );
    }
}
