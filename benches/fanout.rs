//! The fan-out benchmark of the relay core (issue 3): one pipe stream relayed to N
//! unix-socket consumers, by our io_uring core and by a naive relay (read once, blocking
//! `write()` to every consumer, then to the logger), side by side in one run.
//!
//! Placement is pinned (LIMITS.md §B): producer and relay on CPU 0, consumers on CPU 1.
//! Relay CPU = process CPU - producer thread CPU - consumer threads CPU. Every case runs
//! `--reps` times, rep-major, and the table gives medians with [min-max].
//!
//! Run: `cargo bench --bench fanout -- [--reps 5] [--ns 1,8,64,256] [--quick] [--framing raw|protobuf]`

use std::fs::File;
use std::os::fd::OwnedFd;
use std::time::Instant;

use nix::sched::{CpuSet, sched_setaffinity};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::time::{ClockId, clock_gettime};
use nix::unistd::Pid;
use switchboard::relay::{self, Framing, LagPolicy};
use switchboard::ring::RingConfig;
use switchboard::server::fanout::{self, FanoutSpec};
use switchboard::wire::Format;

const CHUNK: usize = 64 << 10;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Naive,
    Core,
}

struct Case {
    mode: Mode,
    n: usize,
    source_bytes: u64,
    framing: Framing,
    pin: bool,
}

struct Sample {
    gbps: f64,
    relay_cpu_per_gb: f64,
}

fn cpu_ns(clock: ClockId) -> u64 {
    let t = clock_gettime(clock).expect("clock_gettime");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

fn pin(cpu: usize, enabled: bool) {
    if !enabled {
        return;
    }
    let mut set = CpuSet::new();
    set.set(cpu).expect("cpu index");
    sched_setaffinity(Pid::from_raw(0), &set).expect("sched_setaffinity");
}

fn write_all(fd: &OwnedFd, mut buf: &[u8]) {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => panic!("write: {e}"),
        }
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

fn naive(src: OwnedFd, socks: Vec<OwnedFd>, logger: OwnedFd) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match nix::unistd::read(&src, &mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => panic!("read: {e}"),
        };
        for s in &socks {
            write_all(s, &buf[..n]);
        }
        write_all(&logger, &buf[..n]);
    }
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
    let (src_r, src_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    switchboard::sys::grow_pipe(&src_w, 1 << 20).unwrap();
    let logger: OwnedFd = File::options().write(true).open("/dev/null").unwrap().into();
    // Let the consumers reach their first read.
    std::thread::sleep(std::time::Duration::from_millis(50));

    pin(0, case.pin);
    let t0 = Instant::now();
    let p0 = cpu_ns(ClockId::CLOCK_PROCESS_CPUTIME_ID);
    let (total, pinned) = (case.source_bytes, case.pin);
    let producer = std::thread::spawn(move || produce(src_w, total, pinned));
    match case.mode {
        Mode::Naive => naive(src_r, ours, logger),
        Mode::Core => {
            let clients = ours.into_iter().map(|fd| (fd, case.framing, Vec::new())).collect();
            let spec = FanoutSpec {
                relay: relay::Config::default(),
                sources: vec![(src_r, false)],
                loggers: vec![logger],
                clients,
                hangup_polls: true,
                policy: LagPolicy::Block,
                zero_copy: false,
            };
            let report = fanout::run(spec, RingConfig::default()).expect("relay");
            assert!(report.failure.is_none() && report.stats.clients_cut == 0, "{report:?}");
        }
    }
    let producer_cpu = producer.join().unwrap();
    let mut consumers_cpu = 0u64;
    for c in consumers {
        let (got, cpu) = c.join().unwrap();
        // Raw consumers get exactly the container's bytes; framed ones get more.
        if case.framing == Framing::Raw || case.mode == Mode::Naive {
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
    eprintln!("fan-out benchmark: {reps} reps, N = {ns:?}, framing {framing:?}, pinned: {pinned}");
    let mut results: Vec<(usize, Mode, Vec<Sample>)> = Vec::new();
    for n in &ns {
        for mode in [Mode::Naive, Mode::Core] {
            results.push((*n, mode, Vec::new()));
        }
    }
    for rep in 0..reps {
        for (n, mode, samples) in &mut results {
            let mut source_bytes = ((2u64 << 30) / *n as u64).max(16 << 20);
            if quick {
                source_bytes /= 8;
            }
            let sample = run(&Case {
                mode: *mode,
                n: *n,
                source_bytes,
                framing,
                pin: pinned,
            });
            eprintln!(
                "rep {} N={n:<4} {:<5} {:6.2} GB/s  relay {:.3} CPU-s/GB",
                rep + 1,
                format!("{mode:?}").to_lowercase(),
                sample.gbps,
                sample.relay_cpu_per_gb
            );
            samples.push(sample);
        }
    }
    println!(
        "| N | relay | GB/s median [min-max] | relay CPU s/GB median [min-max] | GB/s vs naive | CPU/GB vs naive |"
    );
    println!("|---|---|---|---|---|---|");
    let mut naive_row = (0.0, 0.0);
    for (n, mode, samples) in &mut results {
        let (g, gmin, gmax) = median(&mut samples.iter().map(|s| s.gbps).collect::<Vec<_>>());
        let (c, cmin, cmax) = median(&mut samples.iter().map(|s| s.relay_cpu_per_gb).collect::<Vec<_>>());
        let ratios = if *mode == Mode::Naive {
            naive_row = (g, c);
            "| 1.00 | 1.00 |".to_string()
        } else {
            format!("| {:.2} | {:.2} |", g / naive_row.0, c / naive_row.1)
        };
        let name = match mode {
            Mode::Naive => "naive read + write()".to_string(),
            Mode::Core => format!(
                "switchboard core ({})",
                if framing == Framing::Raw {
                    "raw"
                } else {
                    "chunked records"
                }
            ),
        };
        println!("| {n} | {name} | {g:.2} [{gmin:.2}-{gmax:.2}] | {c:.3} [{cmin:.3}-{cmax:.3}] {ratios}");
    }
}
