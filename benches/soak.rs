//! Soak: the drop-in under steady output with clients coming and going for a
//! long time. Readers attach and leave, curl clients are SIGKILLed mid-stream, stalled
//! clients are cut at the lag limit, input requests feed stdin and are acknowledged.
//! Every 10 s it samples the server's RSS, descriptors and CPU. At the end the log must
//! hold every byte in order, the descriptors must be back at their start, and RSS must
//! be flat (the last sample within 1 MiB of the first sample after warm-up).
//!
//! Run (not part of CI): `cargo bench --bench soak -- [--secs 600]`

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::Rng;
use common::http::*;
use common::sb::*;

const SEED: u64 = 77;

struct Counts {
    attached: AtomicU64,
    killed: AtomicU64,
    stalled: AtomicU64,
    inputs: AtomicU64,
    refused: AtomicU64,
}

/// One client's life: what kind is drawn at random.
fn client(socket: &std::path::Path, rng: &mut Rng, counts: &Counts) {
    match rng.below(10) {
        // A reader that stays 0.1 to 3 s and leaves.
        0..=4 => {
            let Ok(mut s) = UnixStream::connect(socket) else { return };
            let _ = s.write_all(&output_request(rng.below(2) == 0));
            let until = Instant::now() + Duration::from_millis(100 + rng.below(2900));
            s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let mut buf = vec![0u8; 64 << 10];
            while Instant::now() < until {
                // Timeouts only wake the loop up; the end of the stream ends it.
                if let Ok(0) = s.read(&mut buf) {
                    break;
                }
            }
            counts.attached.fetch_add(1, Ordering::Relaxed);
        }
        // A curl killed after 0.1 to 2 s.
        5 | 6 => {
            let mut c = curl_attach(socket, false);
            std::thread::sleep(Duration::from_millis(100 + rng.below(1900)));
            let _ = c.kill();
            let _ = c.wait();
            counts.killed.fetch_add(1, Ordering::Relaxed);
        }
        // A client that never reads: cut at the lag limit, then closed by us.
        7 => {
            let Ok(mut s) = UnixStream::connect(socket) else { return };
            let _ = s.write_all(&output_request(true));
            std::thread::sleep(Duration::from_secs(2));
            counts.stalled.fetch_add(1, Ordering::Relaxed);
        }
        // An input request with a few records, acknowledged (409 if another is active).
        _ => {
            let mut req = input_head(false);
            req.extend(record(FIRST_RECORD));
            for _ in 0..1 + rng.below(5) {
                req.extend(record(&stdin_record(b"soak input\n")));
            }
            req.extend_from_slice(LAST_CHUNK);
            match exchange(socket, &req).map(|r| r.status) {
                Some(200) => {
                    counts.inputs.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    counts.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            let _ = exchange(socket, &ack_request(false));
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = args
        .iter()
        .position(|a| a == "--secs")
        .and_then(|i| args.get(i + 1))
        .map_or(600, |v| v.parse().expect("--secs takes a number"));
    let mut sb = Sb::start(Opts::default());
    let socket = sb.socket.clone();
    let baseline_fds = sb.fd_count();
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts {
        attached: AtomicU64::new(0),
        killed: AtomicU64::new(0),
        stalled: AtomicU64::new(0),
        inputs: AtomicU64::new(0),
        refused: AtomicU64::new(0),
    });

    // The container: about 8 MB/s of pattern on stdout, in writes of random sizes, and a
    // reader of its stdin.
    let out = sb.stdout.take().unwrap();
    sb.stderr = None;
    let producer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            let mut buf = vec![0u8; 64 << 10];
            let mut pos = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let n = 1 + rng.below(64 << 10) as usize;
                common::fill_pattern(SEED, pos, &mut buf[..n]);
                write_all(&out, &buf[..n]);
                pos += n as u64;
                std::thread::sleep(Duration::from_micros(4000));
            }
            // The pipe stays open until the end is measured.
            (pos, out)
        })
    };
    let stdin = sb.stdin.take().unwrap();
    let stdin_reader = std::thread::spawn(move || {
        let mut f = std::fs::File::from(stdin);
        let mut buf = [0u8; 4096];
        let mut n = 0u64;
        while let Ok(k @ 1..) = f.read(&mut buf) {
            n += k as u64;
        }
        n
    });

    // Clients: four threads, each starting one client after another.
    let churn: Vec<_> = (0..4)
        .map(|t| {
            let (stop, counts, socket) = (stop.clone(), counts.clone(), socket.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ (t + 1));
                while !stop.load(Ordering::Relaxed) {
                    client(&socket, &mut rng, &counts);
                }
            })
        })
        .collect();

    println!(
        "{:>6} {:>9} {:>5} {:>8} {:>9} {:>7} {:>8} {:>7} {:>7}",
        "t (s)", "RSS KiB", "fds", "CPU s", "logged MB", "readers", "killed", "stalled", "inputs"
    );
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut next = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(secs) {
        if started.elapsed() >= next {
            let (rss, fds, cpu) = (sb.rss_kib(), sb.fd_count(), sb.cpu_ticks());
            let logged = sb.stdout_log.lock().unwrap().len();
            println!(
                "{:>6} {:>9} {:>5} {:>8.1} {:>9.1} {:>7} {:>8} {:>7} {:>7}",
                next.as_secs(),
                rss,
                fds,
                cpu as f64 / 100.0,
                logged as f64 / 1e6,
                counts.attached.load(Ordering::Relaxed),
                counts.killed.load(Ordering::Relaxed),
                counts.stalled.load(Ordering::Relaxed),
                counts.inputs.load(Ordering::Relaxed),
            );
            samples.push((next.as_secs(), rss, fds));
            next += Duration::from_secs(10);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    for c in churn {
        c.join().unwrap();
    }
    let (produced, out) = producer.join().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let end_fds = sb.fd_count();
    let end_rss = sb.rss_kib();
    drop(out);
    let status = sb.wait(60);
    drop(sb.stdin.take());
    let log = sb.stdout_log.lock().unwrap().clone();
    let stdin_bytes = stdin_reader.join().unwrap();

    let warm = samples
        .iter()
        .find(|s| s.0 >= 60)
        .or(samples.last())
        .map_or(end_rss, |s| s.1);
    let max_rss = samples.iter().map(|s| s.1).max().unwrap_or(end_rss);
    println!(
        "\n{secs} s: {:.1} MB produced and logged; clients: {} readers, {} killed, {} stalled, {} inputs ({} refused, {stdin_bytes} bytes reached stdin)",
        produced as f64 / 1e6,
        counts.attached.load(Ordering::Relaxed),
        counts.killed.load(Ordering::Relaxed),
        counts.stalled.load(Ordering::Relaxed),
        counts.inputs.load(Ordering::Relaxed),
        counts.refused.load(Ordering::Relaxed),
    );
    println!(
        "RSS: {warm} KiB after warm-up, {end_rss} KiB at the end, {max_rss} KiB at most; descriptors: {baseline_fds} at the start, {end_fds} at the end"
    );
    let mut failed = Vec::new();
    if !status.success() {
        failed.push(format!("the server exited with {status}"));
    }
    if log.len() as u64 != produced || !common::is_pattern(SEED, 0, &log) {
        failed.push(format!(
            "the log has {} of {produced} bytes, or not in order",
            log.len()
        ));
    }
    if end_fds != baseline_fds {
        failed.push(format!(
            "descriptors: {baseline_fds} at the start, {end_fds} at the end"
        ));
    }
    if end_rss > warm + 1024 {
        failed.push(format!("RSS grew from {warm} KiB to {end_rss} KiB"));
    }
    if failed.is_empty() {
        println!("soak passed");
    } else {
        println!("soak FAILED:\n  {}", failed.join("\n  "));
        std::process::exit(1);
    }
}
