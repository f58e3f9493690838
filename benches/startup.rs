//! Start-up and idle cost of the drop-in: the time from spawning
//! `mesos-io-switchboard` (as an agent does, container fds inherited) until its socket
//! accepts a connection, and the resident memory of the idle server. Medians of `--runs`.
//!
//! Run: `cargo bench --bench startup -- [--runs 50]`

use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};

const BIN: &str = env!("CARGO_BIN_EXE_mesos-io-switchboard");

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .map_or(50, |v| v.parse().unwrap());
    let dir = std::env::temp_dir().join(format!("sb-startup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut startup = Vec::new();
    let mut rss = Vec::new();
    let mut rss_after_output = Vec::new();
    for run in 0..runs {
        let socket = dir.join(format!("s{run}"));
        let (stdin_r, stdin_w) = pipe();
        let (out_r, out_w) = pipe();
        let (err_r, err_w) = pipe();
        let mut cmd = Command::new(BIN);
        cmd.args([
            "--heartbeat_interval=30secs",
            "--help=false",
            &format!("--socket_address={}", socket.display()),
            "--stderr_from_fd=5",
            "--stderr_to_fd=2",
            "--stdin_to_fd=3",
            "--stdout_from_fd=4",
            "--stdout_to_fd=1",
            "--tty=false",
            "--wait_for_connection=false",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        cmd.fd_mappings(vec![
            FdMapping {
                parent_fd: stdin_w,
                child_fd: 3,
            },
            FdMapping {
                parent_fd: out_r,
                child_fd: 4,
            },
            FdMapping {
                parent_fd: err_r,
                child_fd: 5,
            },
        ])
        .unwrap();
        let t0 = Instant::now();
        let mut child = cmd.spawn().unwrap();
        // The agent polls for the final path; we poll harder, to measure the server.
        loop {
            if socket.exists() && UnixStream::connect(&socket).is_ok() {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "no socket");
            std::thread::sleep(Duration::from_micros(50));
        }
        startup.push(t0.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(100));
        rss.push(rss_kib(child.id()) as f64);
        // After the container printed something (the output buffers are in use).
        nix::unistd::write(&out_w, b"a line of output\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        rss_after_output.push(rss_kib(child.id()) as f64);
        child.kill().unwrap();
        child.wait().unwrap();
        drop((stdin_r, out_w, err_w));
        let _ = std::fs::remove_file(&socket);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (v[v.len() / 2], v[v.len() * 9 / 10], v[0], v[v.len() - 1])
    };
    let (m, p90, lo, hi) = stats(&mut startup);
    println!("start-up to a connectable socket, {runs} runs: median {m:.2} ms, p90 {p90:.2} ms [{lo:.2}-{hi:.2}]");
    let (m, _, lo, hi) = stats(&mut rss);
    println!(
        "idle RSS: median {:.2} MiB [{:.2}-{:.2}]",
        m / 1024.0,
        lo / 1024.0,
        hi / 1024.0
    );
    let (m, _, lo, hi) = stats(&mut rss_after_output);
    println!(
        "RSS after the first output: median {:.2} MiB [{:.2}-{:.2}]",
        m / 1024.0,
        lo / 1024.0,
        hi / 1024.0
    );
}
