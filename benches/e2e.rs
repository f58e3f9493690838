//! The end-to-end fan-out benchmark: the real `mesos-io-switchboard` binary, a
//! workload writing into the container's side (a pipe, or a PTY in raw mode), and N
//! clients attached over the real protocol (HTTP + RecordIO, protobuf or JSON records),
//! side by side with baselines in one run:
//!
//! * `switchboard`: the drop-in as it ships (zero-copy path for protobuf clients);
//! * `switchboard-copy`: the same binary with `--zero_copy=false`;
//! * `naive`: read once, blocking `write()` to every client (raw bytes, no protocol);
//! * `tee-splice`: the raw limit, a lockstep loop of blocking tee into a pipe per client and
//!   splice into its socket, 256 KiB at a time (raw bytes, no protocol; pipes only);
//! * `conmon`: conmon (Debian package `conmon`), when it is installed, driven through a
//!   fake OCI runtime (benches/support/conmon.rs), its log `--conmon-log` (`none:` by
//!   default), its clients on its SEQPACKET attach socket; when it is not installed, the
//!   run says so and goes on.
//!
//! Placement (tuning.md, K4): the workload and the server (conmon, or relay thread) on
//! CPU 0; the clients, one light epoll loop of ours (`--spin`: never sleeping), on CPU 1.
//! The workload keeps within a window of the slowest client, so nobody is cut for
//! lagging and throughput is what the relay and the clients can move. Client 0 decodes
//! and checks every byte it gets, as the body streams (protobuf payloads where they lie,
//! JSON ones as their base64 is decoded);
//! the others count body bytes (and with `--verify`, hash them: every body must be
//! identical to client 0's).
//!
//! Workloads: `chunks` (64 KiB writes; GB/s of container bytes delivered to all clients),
//! `lines` (100-byte writes; lines per second, each delivered to every client), `latency`
//! (1-byte writes, one at a time: from the workload's write to receipt by every client).
//!
//! Run (not part of CI): `cargo bench --bench e2e -- [--ns 1,16,64,256,1024] [--reps 3]
//! [--work chunks|lines|latency] [--format protobuf|json] [--source pipe|pty]
//! [--modes switchboard,switchboard-copy,naive,tee-splice,conmon] [--mib 1024] [--verify]
//! [--spin] [--conmon-log none:|k8s-file:/dev/null] [--idle 10000] [--base-bin PATH]
//! [--unpaced] [--server-args A,B] [--stalled K] [--engines]`.
//! `--idle N` instead attaches N idle clients to one server and reports the server's RSS
//! before and per attached client (for the `--base-bin` build too). `--base-bin PATH` adds
//! the rows `switchboard-base` and `switchboard-copy-base`: the same runs by another
//! build of the drop-in (the commit before a change, built in a git worktree),
//! alternating with this build's in every rep. `--unpaced` lets the workload write at
//! full speed, whoever keeps up (the drop-in then cuts clients that fall behind its
//! history, unless `--server-args --lag_policy=block`); `--server-args` adds flags to
//! every drop-in run (this build's only, not the base's); `--stalled K` attaches K more
//! clients to the drop-in that never read (they are cut, or hold the container back with
//! `--lag_policy=block`): the RSS column then shows what a stalled client costs.
//! `--engines` adds the rows `switchboard-epoll` and `switchboard-copy-epoll`: this build
//! on its epoll engine, alternating with its io_uring rows (then run with
//! `--engine=io_uring`) in every rep.

#[path = "support/clients.rs"]
mod clients;
#[path = "support/conmon.rs"]
mod conmon;
#[path = "support/relays.rs"]
mod relays;

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clients::{Conn, Wire, clients};
use command_fds::{CommandFdExt, FdMapping};
use common::http::output_request;
use common::{BodyChecker, Checker, RawChecker, fill_pattern};
use conmon::Conmon;
use nix::sys::resource::{UsageWho, getrusage};
use relays::{naive, tee_splice, write_all};
use switchboard::wire::Format;

const BIN: &str = env!("CARGO_BIN_EXE_mesos-io-switchboard");
/// `--base-bin`: another build of the drop-in (the commit before a change, built in a git
/// worktree), run in the same reps as this one.
static BASE_BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
/// `--server-args`: more flags for this build's drop-in.
static SERVER_ARGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
/// `--engines`: this build's drop-in rows run on each engine, alternating.
static ENGINES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
const SEED: u64 = 5;
/// How far (container bytes) the workload may run ahead of the slowest client.
const WINDOW: u64 = 512 << 10;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Switchboard,
    SwitchboardCopy,
    /// The same two, run by the binary of `--base-bin` (another build, to compare with).
    SwitchboardBase,
    SwitchboardCopyBase,
    /// The same two, this build on its epoll engine (`--engine=epoll`; the two above
    /// are then run with `--engine=io_uring`).
    SwitchboardEpoll,
    SwitchboardCopyEpoll,
    Naive,
    TeeSplice,
    Conmon,
}

impl Mode {
    fn parse(s: &str) -> Mode {
        match s {
            "switchboard" => Mode::Switchboard,
            "switchboard-copy" => Mode::SwitchboardCopy,
            "switchboard-base" => Mode::SwitchboardBase,
            "switchboard-copy-base" => Mode::SwitchboardCopyBase,
            "switchboard-epoll" => Mode::SwitchboardEpoll,
            "switchboard-copy-epoll" => Mode::SwitchboardCopyEpoll,
            "naive" => Mode::Naive,
            "tee-splice" => Mode::TeeSplice,
            "conmon" => Mode::Conmon,
            other => panic!(
                "unknown mode {other}: switchboard, switchboard-copy, switchboard-base, switchboard-copy-base, \
                 switchboard-epoll, switchboard-copy-epoll, naive, tee-splice or conmon"
            ),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Switchboard => "switchboard (zero copy)",
            Mode::SwitchboardCopy => "switchboard --zero_copy=false",
            Mode::SwitchboardBase => "base: switchboard (zero copy)",
            Mode::SwitchboardCopyBase => "base: switchboard --zero_copy=false",
            Mode::SwitchboardEpoll => "switchboard (zero copy) on epoll",
            Mode::SwitchboardCopyEpoll => "switchboard --zero_copy=false on epoll",
            Mode::Naive => "naive read + write() (raw)",
            Mode::TeeSplice => "raw tee + splice (raw)",
            Mode::Conmon => "conmon (SEQPACKET)",
        }
    }

    fn framed(self) -> bool {
        self.server().is_some()
    }

    /// For the drop-in's modes: its binary, whether zero copy is on, and the engine flag
    /// (this build's; none for the base build, which may not know it).
    fn server(self) -> Option<(&'static Path, bool, Option<&'static str>)> {
        let base = || BASE_BIN.get().expect("--base-bin").as_path();
        let ours = || match ENGINES.get() {
            Some(true) => Some("--engine=io_uring"),
            _ => None,
        };
        match self {
            Mode::Switchboard => Some((Path::new(BIN), true, ours())),
            Mode::SwitchboardCopy => Some((Path::new(BIN), false, ours())),
            Mode::SwitchboardBase => Some((base(), true, None)),
            Mode::SwitchboardCopyBase => Some((base(), false, None)),
            Mode::SwitchboardEpoll => Some((Path::new(BIN), true, Some("--engine=epoll"))),
            Mode::SwitchboardCopyEpoll => Some((Path::new(BIN), false, Some("--engine=epoll"))),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Work {
    Chunks,
    Lines,
    Latency,
}

#[derive(Clone, Copy)]
struct Case {
    mode: Mode,
    n: usize,
    work: Work,
    format: Format,
    pty: bool,
    bytes: u64,
    verify: bool,
    /// conmon's `--log-path`.
    conmon_log: &'static str,
    /// The clients poll without sleeping.
    spin: bool,
    /// The workload keeps within [`WINDOW`] of the slowest client.
    paced: bool,
    /// Clients of the drop-in that attach and never read.
    stalled: usize,
}

#[derive(Default, Clone, Copy)]
struct Sample {
    /// Container bytes delivered to all clients per second (GB/s), or lines per second
    /// (millions) each delivered to every client.
    rate: f64,
    cpu_per_gib: f64,
    rss_kib: Option<u64>,
    rss_per_client_kib: Option<f64>,
    p50_us: f64,
    p99_us: f64,
    /// Share of CPU 1 the clients used.
    client_load: f64,
    /// Share of the machine's CPU time the hypervisor gave to others meanwhile (%).
    steal_pct: f64,
}

fn pin(cpu: usize) {
    relays::pin(0, cpu);
}

fn thread_cpu_s() -> f64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
    t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9
}

fn children_cpu_s() -> f64 {
    let u = getrusage(UsageWho::RUSAGE_CHILDREN).unwrap();
    let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    tv(u.user_time()) + tv(u.system_time())
}

fn status_kib(pid: i32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What the clients and the workload share.
struct Shared {
    base: Instant,
    /// Container bytes every client has (a lower bound), from client 0's decoding.
    delivered: AtomicU64,
    /// Every client has its response head.
    attached: AtomicBool,
    /// The latency workload's current write: its sequence number (bytes written so far)
    /// and when it was made (ns since `base`).
    seq: AtomicU64,
    t_write: AtomicU64,
    latencies: Mutex<Vec<u64>>,
    /// The workload's thread, and what it waits for (`u64::MAX`: nothing): the clients
    /// wake it once every one of them has that many container bytes.
    workload: Mutex<Option<std::thread::Thread>>,
    wanted: AtomicU64,
    /// Container bytes the workload writes.
    total: u64,
    /// When the workload started, and when every client had its last byte (ns since
    /// `base`).
    started: AtomicU64,
    done_at: AtomicU64,
}

impl Shared {
    /// Parks the workload until every client has `delivered` container bytes: spinning
    /// or polling would take the CPU it shares with the relay.
    fn wait_for(&self, delivered: u64) {
        while self.delivered.load(Ordering::SeqCst) < delivered {
            self.wanted.store(delivered, Ordering::SeqCst);
            if self.delivered.load(Ordering::SeqCst) < delivered {
                std::thread::park_timeout(Duration::from_millis(10));
            }
            self.wanted.store(u64::MAX, Ordering::SeqCst);
        }
    }
}

/// The workload: writes `total` bytes of the pattern into `out`, keeping within
/// [`WINDOW`] of the slowest client when paced (or, for latency, one byte at a time, waiting for
/// every client to have it).
fn workload(out: OwnedFd, case: Case, shared: Arc<Shared>) {
    pin(0);
    *shared.workload.lock().unwrap() = Some(std::thread::current());
    while !shared.attached.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    shared
        .started
        .store(shared.base.elapsed().as_nanos() as u64, Ordering::SeqCst);
    let size = match case.work {
        Work::Chunks => 64 << 10,
        Work::Lines => 100,
        Work::Latency => 1,
    };
    let mut buf = vec![0u8; size];
    let mut pos = 0u64;
    while pos < case.bytes {
        let n = (size as u64).min(case.bytes - pos) as usize;
        fill_pattern(SEED, pos, &mut buf[..n]);
        if case.work == Work::Latency {
            shared
                .t_write
                .store(shared.base.elapsed().as_nanos() as u64, Ordering::SeqCst);
            shared.seq.store(pos + n as u64, Ordering::SeqCst);
            write_all(&out, &buf[..n]);
            shared.wait_for(pos + n as u64);
            // A pause between writes, as a terminal user or a log line would leave.
            std::thread::sleep(Duration::from_micros(200));
        } else {
            if case.paced {
                shared.wait_for(pos.saturating_sub(WINDOW));
            }
            write_all(&out, &buf[..n]);
        }
        pos += n as u64;
    }
}

/// The container's side: where the workload writes, and what the relay reads.
struct Container {
    /// Workload end (pipe write end, or PTY slave).
    out: OwnedFd,
    /// Relay end (pipe read end, or PTY master).
    src: OwnedFd,
    /// The container's stdin (pipe read end; the PTY slave for a PTY).
    stdin: Option<(OwnedFd, OwnedFd)>,
}

/// The container's stdout pipe, as the agent (and `switchboard run`) make it.
const CONTAINER_PIPE: usize = 1 << 20;

/// Puts the terminal behind `fd` (a PTY slave) in raw mode.
fn raw_mode(fd: &OwnedFd) {
    let mut raw = nix::sys::termios::tcgetattr(fd).unwrap();
    nix::sys::termios::cfmakeraw(&mut raw);
    nix::sys::termios::tcsetattr(fd, nix::sys::termios::SetArg::TCSANOW, &raw).unwrap();
}

fn container(pty: bool) -> Container {
    if pty {
        let p = switchboard::tty::open().unwrap();
        raw_mode(&p.slave);
        Container {
            out: p.slave,
            src: p.master,
            stdin: None,
        }
    } else {
        let (r, w) = common::pipe(CONTAINER_PIPE);
        let (ir, iw) = common::pipe(1 << 16);
        Container {
            out: w,
            src: r,
            stdin: Some((ir, iw)),
        }
    }
}

fn devnull() -> OwnedFd {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap()
        .into()
}

fn tmp_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sb-e2e-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts the drop-in on the container's relay end `src` (and its stdin's write end);
/// returns it and its socket.
fn start_server(
    bin: &Path,
    src: &OwnedFd,
    stdin: Option<&(OwnedFd, OwnedFd)>,
    zero_copy: bool,
    pty: bool,
    extra: &[String],
) -> (Child, PathBuf) {
    let dir = tmp_dir();
    let socket = dir.join("sock");
    let mut mappings = vec![FdMapping {
        parent_fd: src.try_clone().unwrap(),
        child_fd: 3,
    }];
    let mut args = vec![
        "--help=false".to_string(),
        format!("--socket_address={}", socket.display()),
        "--stdout_to_fd=1".into(),
        "--stderr_to_fd=2".into(),
        format!("--tty={pty}"),
        "--wait_for_connection=false".into(),
        format!("--zero_copy={zero_copy}"),
    ];
    args.extend(extra.iter().cloned());
    if pty {
        args.extend(["--stdin_to_fd=3", "--stdout_from_fd=3", "--stderr_from_fd=3"].map(String::from));
    } else {
        // stderr: a pipe nobody writes to (its write end is closed at once).
        let (err_r, _err_w) = common::pipe(1 << 16);
        mappings.push(FdMapping {
            parent_fd: err_r,
            child_fd: 4,
        });
        let (_, iw) = stdin.unwrap();
        mappings.push(FdMapping {
            parent_fd: iw.try_clone().unwrap(),
            child_fd: 5,
        });
        args.extend(["--stdout_from_fd=3", "--stderr_from_fd=4", "--stdin_to_fd=5"].map(String::from));
    }
    let mut cmd = Command::new(bin);
    // Its loggers: /dev/null.
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(devnull()))
        .stderr(Stdio::from(devnull()));
    cmd.fd_mappings(mappings).unwrap();
    let child = cmd.spawn().expect("start mesos-io-switchboard");
    relays::pin(child.id() as i32, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "the switchboard did not listen");
        std::thread::sleep(Duration::from_millis(2));
    }
    (child, socket)
}

fn connect(socket: &Path, format: Format) -> OwnedFd {
    let mut s = UnixStream::connect(socket).unwrap();
    s.write_all(&output_request(format == Format::Protobuf)).unwrap();
    s.set_nonblocking(true).unwrap();
    s.into()
}

fn checker(case: &Case, checked: Arc<AtomicU64>) -> Box<dyn Checker> {
    let lens = Some([case.bytes, 0]);
    if case.mode.framed() {
        let mut c = BodyChecker::new(case.format, [SEED, SEED + 1], lens);
        c.progress = Some(checked);
        Box::new(c)
    } else {
        Box::new(RawChecker {
            seed: SEED,
            pos: 0,
            expect_len: Some(case.bytes),
            progress: Some(checked),
        })
    }
}

/// What relays the container's output in a run.
enum Relay {
    Server(Child, PathBuf),
    Thread(std::thread::JoinHandle<f64>),
    Conmon(Conmon),
}

impl Relay {
    /// The relay's process, when it has its own.
    fn pid(&self) -> Option<i32> {
        match self {
            Relay::Server(child, _) => Some(child.id() as i32),
            Relay::Conmon(c) => Some(c.pid),
            Relay::Thread(_) => None,
        }
    }
}

fn run(case: &Case) -> Sample {
    let steal0 = steal_and_total();
    let shared = Arc::new(Shared {
        base: Instant::now(),
        delivered: AtomicU64::new(0),
        attached: AtomicBool::new(false),
        seq: AtomicU64::new(0),
        t_write: AtomicU64::new(0),
        latencies: Mutex::new(Vec::new()),
        workload: Mutex::new(None),
        wanted: AtomicU64::new(u64::MAX),
        total: case.bytes,
        started: AtomicU64::new(0),
        done_at: AtomicU64::new(0),
    });
    let checked = Arc::new(AtomicU64::new(0));
    let cpu0 = children_cpu_s();
    let mut rss_idle = None;
    let mut stalled = Vec::new();
    // The relay, the clients' connections, the workload's end and the container's stdin.
    let (relay, conns, out, stdin) = match case.mode {
        Mode::Switchboard
        | Mode::SwitchboardCopy
        | Mode::SwitchboardBase
        | Mode::SwitchboardCopyBase
        | Mode::SwitchboardEpoll
        | Mode::SwitchboardCopyEpoll => {
            let (bin, zero_copy, engine) = case.mode.server().expect("a drop-in mode");
            let Container { out, src, stdin } = container(case.pty);
            let mut extra = match bin == Path::new(BIN) {
                true => SERVER_ARGS.get().cloned().unwrap_or_default(),
                false => Vec::new(),
            };
            extra.extend(engine.map(String::from));
            let (child, socket) = start_server(bin, &src, stdin.as_ref(), zero_copy, case.pty, &extra);
            rss_idle = status_kib(child.id() as i32, "VmRSS:");
            let conns = (0..case.n)
                .map(|_| Conn::new(connect(&socket, case.format), Wire::Http))
                .collect();
            stalled = (0..case.stalled).map(|_| connect(&socket, case.format)).collect();
            (Relay::Server(child, socket), conns, out, stdin)
        }
        Mode::Naive | Mode::TeeSplice => {
            let Container { out, src, stdin } = container(case.pty);
            let dir = tmp_dir();
            let listener = UnixListener::bind(dir.join("sock")).unwrap();
            let mut ours = Vec::new();
            let mut conns = Vec::new();
            for _ in 0..case.n {
                let s = UnixStream::connect(dir.join("sock")).unwrap();
                s.set_nonblocking(true).unwrap();
                conns.push(Conn::new(s.into(), Wire::Raw));
                ours.push(OwnedFd::from(listener.accept().unwrap().0));
            }
            let _ = std::fs::remove_dir_all(&dir);
            let mode = case.mode;
            let relay = std::thread::spawn(move || {
                pin(0);
                let t0 = thread_cpu_s();
                match mode {
                    Mode::Naive => naive(src, ours, devnull()),
                    _ => tee_splice(src, ours, devnull()),
                }
                thread_cpu_s() - t0
            });
            (Relay::Thread(relay), conns, out, stdin)
        }
        Mode::Conmon => {
            let (c, out) = Conmon::start(&tmp_dir(), case.pty, case.conmon_log, 0, CONTAINER_PIPE);
            if case.pty {
                raw_mode(&out);
            }
            rss_idle = status_kib(c.pid, "VmRSS:");
            // (Once start-up is over: with a PTY, conmon closes its console socket.)
            let mut before = c.sockets();
            for _ in 0..100 {
                std::thread::sleep(Duration::from_millis(10));
                let now = c.sockets();
                if now == before {
                    break;
                }
                before = now;
            }
            let conns = (0..case.n)
                .map(|_| {
                    let s = nix::sys::socket::socket(
                        nix::sys::socket::AddressFamily::Unix,
                        nix::sys::socket::SockType::SeqPacket,
                        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                        None,
                    )
                    .unwrap();
                    let addr = nix::sys::socket::UnixAddr::new(&c.attach).unwrap();
                    nix::sys::socket::connect(s.as_raw_fd(), &addr).expect("connect to conmon");
                    switchboard::sys::set_nonblocking(&s).unwrap();
                    Conn::new(s, Wire::Packet)
                })
                .collect();
            // Output reaches only the clients conmon has accepted.
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.sockets() < before + case.n {
                assert!(Instant::now() < deadline, "conmon did not accept {} clients", case.n);
                std::thread::sleep(Duration::from_millis(2));
            }
            (Relay::Conmon(c), conns, out, None)
        }
    };
    let (verify, spin) = (case.verify, case.spin);
    let checker = checker(case, checked.clone());
    let client_shared = shared.clone();
    let client = std::thread::spawn(move || clients(conns, checker, checked, client_shared, verify, spin));
    // Attached: the relay's RSS with every client in place, before any output.
    while !shared.attached.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let rss_attached = relay.pid().and_then(|pid| status_kib(pid, "VmRSS:"));
    let case_copy = *case;
    let work_shared = shared.clone();
    let writer = std::thread::spawn(move || workload(out, case_copy, work_shared));
    // Peak RSS while it runs: the kernel's high-water mark (a burst into the history
    // comes and goes between two samples).
    let mut rss_peak = rss_attached;
    let sample_rss = |peak: &mut Option<u64>| {
        if let Some(r) = relay.pid().and_then(|pid| status_kib(pid, "VmHWM:")) {
            *peak = Some(peak.unwrap_or(0).max(r));
        }
    };
    // (conmon's clients end when its container does, after the last byte is delivered.)
    let delivered_all = || shared.delivered.load(Ordering::SeqCst) >= case.bytes;
    let conmon = matches!(relay, Relay::Conmon(_));
    while !(client.is_finished() || conmon && writer.is_finished() && delivered_all()) {
        sample_rss(&mut rss_peak);
        std::thread::sleep(Duration::from_millis(20));
    }
    writer.join().unwrap();
    let relay_cpu = match relay {
        Relay::Conmon(c) => {
            let cpu = c.cpu_s();
            // (Its container ends: conmon closes its clients and exits.)
            drop(c);
            cpu
        }
        Relay::Server(mut child, socket) => {
            let status = child.wait().unwrap();
            assert!(status.success(), "the switchboard exited with {status}");
            let _ = std::fs::remove_dir_all(socket.parent().unwrap());
            children_cpu_s() - cpu0
        }
        Relay::Thread(relay) => relay.join().unwrap(),
    };
    let report = client.join().unwrap();
    drop(stdin);
    drop(stalled);
    // From the workload's first write to the last byte's receipt by every client.
    let ns = |a: &AtomicU64| a.load(Ordering::SeqCst) as f64 / 1e9;
    let wall = ns(&shared.done_at) - ns(&shared.started);
    // Every client got every byte: client 0 checked its content; the others have its
    // body, byte for byte when verifying.
    for (i, b) in report.bodies.iter().enumerate() {
        assert_eq!(
            *b, report.bodies[0],
            "client {i} got {b} body bytes, client 0 {}",
            report.bodies[0]
        );
        if case.verify {
            assert_eq!(
                report.hashes[i], report.hashes[0],
                "client {i}'s body differs from client 0's"
            );
        }
    }
    let delivered = case.bytes as f64 * case.n as f64;
    let gib = delivered / (1u64 << 30) as f64;
    let mut lat = shared.latencies.lock().unwrap().clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            0.0
        } else {
            lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1e3
        }
    };
    Sample {
        rate: match case.work {
            Work::Lines => case.bytes as f64 / 100.0 / wall / 1e6,
            _ => delivered / wall / 1e9,
        },
        cpu_per_gib: relay_cpu / gib,
        rss_kib: rss_peak,
        rss_per_client_kib: match (rss_idle, rss_attached) {
            (Some(i), Some(a)) => Some(a.saturating_sub(i) as f64 / case.n as f64),
            _ => None,
        },
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        client_load: report.cpu_s / wall,
        steal_pct: steal_pct(steal0, steal_and_total()),
    }
}

/// `--idle N`: one server (of `bin`) with N idle attached clients; its RSS before and
/// per client.
fn idle(bin: &Path, n: usize, format: Format) {
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, limit.1, limit.1);
    let c = container(false);
    let extra = [format!("--max_connections={}", n + 16)];
    let (mut child, socket) = start_server(bin, &c.src, c.stdin.as_ref(), true, false, &extra);
    let pid = child.id() as i32;
    std::thread::sleep(Duration::from_millis(100));
    let before = status_kib(pid, "VmRSS:").unwrap();
    let mut conns = Vec::new();
    for i in 0..n {
        conns.push(connect(&socket, format));
        // Let the server keep up with the attaches (its accept backlog is finite).
        if i % 256 == 255 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Wait for every response head.
    let mut heads = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 4096];
    let mut pending: Vec<&OwnedFd> = conns.iter().collect();
    while heads < n {
        assert!(Instant::now() < deadline, "only {heads} of {n} clients attached");
        pending.retain(|fd| match nix::unistd::read(fd, &mut buf) {
            Ok(k) if k > 0 => {
                assert!(
                    buf.starts_with(b"HTTP/1.1 200"),
                    "{}",
                    String::from_utf8_lossy(&buf[..k])
                );
                heads += 1;
                false
            }
            _ => true,
        });
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    let after = status_kib(pid, "VmRSS:").unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    println!(
        "{}: {n} idle attached {format:?} clients: server RSS {before} KiB before, {after} KiB attached: {:.2} KiB per client ({fds} descriptors)",
        bin.display(),
        after.saturating_sub(before) as f64 / n as f64
    );
    drop(conns);
    drop(c);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(socket.parent().unwrap());
}

/// The machine's steal and total CPU ticks so far (/proc/stat).
fn steal_and_total() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .map(|l| l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    (ticks.get(7).copied().unwrap_or(0), ticks.iter().take(8).sum())
}

/// Steal ticks and all ticks between two readings.
/// The steal share (%) of the CPU time between two [`steal_and_total`] readings.
fn steal_pct(a: (u64, u64), b: (u64, u64)) -> f64 {
    (b.0 - a.0) as f64 * 100.0 / ((b.1 - a.1) as f64).max(1.0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    // conmon runs this binary as its OCI runtime.
    conmon::dispatch();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let format = match arg("--format").as_deref() {
        None | Some("protobuf") => Format::Protobuf,
        Some("json") => Format::Json,
        Some(other) => panic!("unknown --format {other}: protobuf or json"),
    };
    if let Some(n) = arg("--idle") {
        let n = n.parse().expect("--idle");
        idle(Path::new(BIN), n, format);
        if let Some(base) = arg("--base-bin") {
            idle(Path::new(&base), n, format);
        }
        return;
    }
    let reps: usize = arg("--reps").map_or(3, |v| v.parse().expect("--reps"));
    let ns: Vec<usize> = arg("--ns").map_or(vec![1, 16, 64, 256, 1024], |v| {
        v.split(',').map(|n| n.parse().expect("--ns")).collect()
    });
    let work = match arg("--work").as_deref() {
        None | Some("chunks") => Work::Chunks,
        Some("lines") => Work::Lines,
        Some("latency") => Work::Latency,
        Some(other) => panic!("unknown --work {other}: chunks, lines or latency"),
    };
    let pty = match arg("--source").as_deref() {
        None | Some("pipe") => false,
        Some("pty") => true,
        Some(other) => panic!("unknown --source {other}: pipe or pty"),
    };
    let mut modes: Vec<Mode> = arg("--modes").map_or(
        vec![
            Mode::Switchboard,
            Mode::SwitchboardCopy,
            Mode::Naive,
            Mode::TeeSplice,
            Mode::Conmon,
        ],
        |v| v.split(',').map(Mode::parse).collect(),
    );
    if let Some(base) = arg("--base-bin") {
        let base = std::fs::canonicalize(&base).unwrap_or_else(|e| panic!("--base-bin {base}: {e}"));
        BASE_BIN.set(base).expect("set once");
        if arg("--modes").is_none() {
            // Each build's rows right after the other's, in every rep.
            modes.insert(1, Mode::SwitchboardBase);
            modes.insert(3, Mode::SwitchboardCopyBase);
        }
    }
    if args.iter().any(|a| a == "--engines") {
        ENGINES.set(true).expect("set once");
        if arg("--modes").is_none() {
            // Each engine's row right after the other's, in every rep.
            for (ours, epoll) in [
                (Mode::Switchboard, Mode::SwitchboardEpoll),
                (Mode::SwitchboardCopy, Mode::SwitchboardCopyEpoll),
            ] {
                let at = modes.iter().position(|m| *m == ours).expect("a default mode");
                modes.insert(at + 1, epoll);
            }
        }
    }
    if pty {
        // tee(2) refuses a PTY.
        modes.retain(|m| *m != Mode::TeeSplice);
    }
    let verify = args.iter().any(|a| a == "--verify");
    let spin = args.iter().any(|a| a == "--spin");
    let paced = !args.iter().any(|a| a == "--unpaced");
    let stalled: usize = arg("--stalled").map_or(0, |v| v.parse().expect("--stalled"));
    if let Some(extra) = arg("--server-args") {
        SERVER_ARGS
            .set(extra.split(',').map(String::from).collect())
            .expect("set once");
    }
    let conmon_log: &'static str = arg("--conmon-log").map_or("none:", |v| v.leak());
    let mib: Option<u64> = arg("--mib").map(|v| v.parse().expect("--mib"));
    assert!(
        std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2,
        "the benchmark pins the clients to CPU 1: it needs two CPUs"
    );
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, limit.1, limit.1);
    let conmon = conmon::installed();
    eprintln!(
        "end-to-end benchmark: {reps} reps, N = {ns:?}, {work:?}, {format:?} records, source {}, workload {}, \
         drop-in flags {:?}, {stalled} stalled client(s)",
        if pty { "PTY" } else { "pipe" },
        if paced { "paced" } else { "unpaced" },
        SERVER_ARGS.get().cloned().unwrap_or_default(),
    );
    match &conmon {
        Some(version) => eprintln!("{version} (Debian package conmon) is installed: conmon rows included"),
        None => {
            eprintln!("conmon is not installed (Debian package conmon): no conmon rows");
            modes.retain(|m| *m != Mode::Conmon);
        }
    }
    let mut results: Vec<(usize, Mode, Vec<Sample>)> = Vec::new();
    for n in &ns {
        for m in &modes {
            results.push((*n, *m, Vec::new()));
        }
    }
    let steal0 = steal_and_total();
    for rep in 0..reps {
        for (n, mode, samples) in &mut results {
            let bytes = match work {
                // 1 GiB streams up to N=16, then 16 GiB delivered in all, 256 MiB at least.
                Work::Chunks => mib.map_or(((16u64 << 30) / *n as u64).clamp(256 << 20, 1 << 30), |m| m << 20),
                Work::Lines => mib.map_or(((64u64 << 20) / *n as u64).max(4 << 20), |m| m << 20),
                Work::Latency => 2000,
            };
            let s = run(&Case {
                mode: *mode,
                n: *n,
                work,
                format,
                pty,
                bytes,
                verify,
                conmon_log,
                spin,
                paced,
                stalled,
            });
            eprintln!(
                "rep {} N={n:<5} {:<30} {:8.3} {}  {:.3} CPU-s/GiB  p50 {:.0} us p99 {:.0} us  clients {:.0}% of a CPU  \
                 steal {:.0}%",
                rep + 1,
                mode.name(),
                s.rate,
                if work == Work::Lines { "M lines/s" } else { "GB/s" },
                s.cpu_per_gib,
                s.p50_us,
                s.p99_us,
                s.client_load * 100.0,
                s.steal_pct,
            );
            samples.push(s);
        }
    }
    // Time the hypervisor gave the CPUs to others: runs in a noisy stretch show it.
    println!(
        "host steal during the runs: {:.1}% of CPU time",
        steal_pct(steal0, steal_and_total())
    );
    let unit = if work == Work::Lines { "M lines/s" } else { "GB/s" };
    println!(
        "| N | relay | {unit} | server CPU s/GiB | server RSS peak MiB | RSS per attached client KiB | p50 us | p99 us | \
         {unit} vs raw tee+splice | host steal % |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let med =
        |samples: &Vec<Sample>, f: &dyn Fn(&Sample) -> f64| median(&mut samples.iter().map(f).collect::<Vec<_>>());
    for (n, mode, samples) in &results {
        let rate = med(samples, &|s| s.rate);
        let raw = results
            .iter()
            .find(|(m, md, _)| m == n && *md == Mode::TeeSplice)
            .map(|(_, _, s)| med(s, &|s| s.rate));
        let rss = samples[0].rss_kib.map_or("-".into(), |_| {
            format!("{:.1}", med(samples, &|s| s.rss_kib.unwrap_or(0) as f64) / 1024.0)
        });
        let per = samples[0].rss_per_client_kib.map_or("-".into(), |_| {
            format!("{:.1}", med(samples, &|s| s.rss_per_client_kib.unwrap_or(0.0)))
        });
        let (p50, p99) = if work == Work::Latency {
            (
                format!("{:.0}", med(samples, &|s| s.p50_us)),
                format!("{:.0}", med(samples, &|s| s.p99_us)),
            )
        } else {
            ("-".into(), "-".into())
        };
        // (A latency run moves a few KiB: its rate and CPU per GiB mean nothing.)
        let (rate, cpu, vs_raw) = if work == Work::Latency {
            ("-".to_string(), "-".to_string(), "-".to_string())
        } else {
            (
                format!("{rate:.3}"),
                format!("{:.3}", med(samples, &|s| s.cpu_per_gib)),
                raw.map_or("-".into(), |r| format!("{:.2}", rate / r)),
            )
        };
        println!(
            "| {n} | {} | {rate} | {cpu} | {rss} | {per} | {p50} | {p99} | {vs_raw} | {:.1} |",
            mode.name(),
            med(samples, &|s| s.steal_pct)
        );
    }
}
