//! `GET /metrics` on a switchboard's socket, against a known workload: bytes read and
//! logged per stream, bytes sent per path, clients attached by format and path, a
//! client cut with what it missed, input, refused connections; the exposition's format
//! (every sample's family has its HELP and TYPE, OpenMetrics ends with `# EOF`); and
//! `switchboard stats`, which shows them.

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use common::http::read_stdout;
use common::sb::*;
use common::{fill_pattern, wait_until, within};
use switchboard::client::metrics::{self, Figures};
use switchboard::wire::Format;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_pattern(seed, 0, &mut v);
    v
}

/// The exposition as `curl` fetches it, with `accept` as its Accept header.
fn curl_metrics(sb: &Sb, accept: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-H",
            &format!("Accept: {accept}"),
            "--unix-socket",
        ])
        .arg(&sb.socket)
        .arg("http://switchboard/metrics")
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Every sample belongs to a family announced with HELP and TYPE before it.
fn check_families(text: &str, open_metrics: bool) {
    let mut announced: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            announced.push((name.to_string(), kind.to_string()));
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = announced
                .iter()
                .rev()
                .find(|(f, kind)| match (open_metrics, kind.as_str()) {
                    (true, "counter") => name == format!("{f}_total"),
                    (true, "info") => name == format!("{f}_info"),
                    _ => name == f,
                });
            assert!(family.is_some(), "{name} has no family announced before it:\n{text}");
        }
    }
    let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
    assert_eq!(helps, announced.len(), "a HELP for every TYPE");
    assert_eq!(text.ends_with("# EOF\n"), open_metrics);
}

#[test]
fn the_counters_match_a_known_workload() {
    within(90, || {
        let mut sb = Sb::start(Opts {
            // Readers hold the container back rather than be cut when they fall behind
            // on a busy host; the one that never reads is cut after the block timeout.
            extra: vec![
                "--max_connections=8".into(),
                "--lag_policy=block".into(),
                "--block_timeout=1secs".into(),
            ],
            ..Opts::default()
        });
        // Two protobuf clients (zero copy), one JSON client (copies), and one JSON client
        // that never reads: it holds the container back until it is cut.
        let readers: Vec<_> = [true, true, false]
            .into_iter()
            .map(|protobuf| {
                let (s, rest) = sb.attach_output(protobuf);
                let format = if protobuf { Format::Protobuf } else { Format::Json };
                std::thread::spawn(move || read_stdout(s, rest, format))
            })
            .collect();
        let (stalled, _) = sb.attach_output(false);
        let f = metrics::fetch(&sb.socket).unwrap();
        assert_eq!(
            f.get(
                "switchboard_output_clients",
                &[("format", "protobuf"), ("path", "zero_copy")]
            ),
            Some(2.0)
        );
        assert_eq!(
            f.get("switchboard_output_clients", &[("format", "json"), ("path", "copies")]),
            Some(2.0)
        );
        assert_eq!(sb.send_input(b"typed\n"), 200);
        let (out, err) = (pattern(1, 4 << 20), pattern(2, 100 << 10));
        sb.write_stdout(&out);
        sb.write_stderr(&err);
        let total = (out.len() + err.len()) as u64;
        wait_until("the logger to have every byte", || {
            (sb.stdout_log.lock().unwrap().len() + sb.stderr_log.lock().unwrap().len()) as u64 == total
        });
        wait_until("the stalled client to be cut", || {
            metrics::fetch(&sb.socket)
                .unwrap()
                .sum("switchboard_output_clients_cut_total")
                == 1.0
        });
        // Connections past --max_connections are closed at once: idle ones are opened
        // until one is.
        let mut idle = Vec::new();
        let refused = loop {
            assert!(idle.len() < 8, "no connection was refused");
            let mut s = sb.connect();
            s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            match s.read(&mut [0u8; 1]) {
                Ok(0) => break s,
                _ => idle.push(s),
            }
        };
        drop(idle);
        // Until the server has seen them go, a fetch may be refused too (and counted).
        let mut refusals = 1;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "the idle connections were never closed");
            match metrics::fetch(&sb.socket) {
                Ok(f) if f.get("switchboard_connections", &[]) == Some(1.0) => break,
                Ok(_) => {}
                Err(_) => refusals += 1,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = curl_metrics(&sb, "text/plain");
        check_families(&text, false);
        let f = Figures::parse(&text).unwrap();
        let get = |name: &str, labels: &[(&str, &str)]| f.get(name, labels).unwrap_or_else(|| panic!("{name}"));
        let engine = std::env::var("SWITCHBOARD_ENGINE").unwrap_or_else(|_| "io_uring".into());
        assert_eq!(f.label("switchboard_build_info", "engine"), Some(engine.as_str()));
        assert_eq!(
            get("switchboard_output_read_bytes_total", &[("stream", "stdout")]),
            out.len() as f64
        );
        assert_eq!(
            get("switchboard_output_read_bytes_total", &[("stream", "stderr")]),
            err.len() as f64
        );
        assert_eq!(
            get("switchboard_output_logged_bytes_total", &[("stream", "stdout")]),
            out.len() as f64
        );
        assert_eq!(
            get("switchboard_output_logged_bytes_total", &[("stream", "stderr")]),
            err.len() as f64
        );
        assert_eq!(get("switchboard_output_clients_cut_total", &[]), 1.0);
        assert!(get("switchboard_output_lost_bytes_total", &[]) > 0.0);
        assert_eq!(get("switchboard_input_requests_total", &[]), 1.0);
        assert_eq!(get("switchboard_input_bytes_total", &[]), 6.0);
        assert_eq!(
            get(
                "switchboard_connections_refused_total",
                &[("reason", "max_connections")]
            ),
            f64::from(refusals)
        );
        assert!(get("switchboard_uptime_seconds", &[]) > 0.0);
        // The cut client is no longer counted; the others are.
        assert_eq!(f.sum("switchboard_output_clients"), 3.0);
        // `switchboard stats` shows the same, once.
        let stats = Command::new(BIN)
            .args(["stats", "--no-stream"])
            .arg(&sb.socket)
            .output()
            .unwrap();
        assert!(stats.status.success(), "{}", String::from_utf8_lossy(&stats.stderr));
        let table = String::from_utf8_lossy(&stats.stdout);
        let row: Vec<&str> = table.lines().nth(1).expect("a row").split_whitespace().collect();
        assert_eq!(&row[1..4], [engine.as_str(), "3", "4.1MiB"], "{table}");
        // Everything reached the readers; what they got went out as counted.
        drop((stalled, refused));
        sb.close_output();
        for (k, r) in readers.into_iter().enumerate() {
            assert!(r.join().unwrap() == out, "reader {k}");
        }
        assert!(sb.wait(20).success());
        let sent_zero_copy = get("switchboard_output_sent_bytes_total", &[("path", "zero_copy")]);
        let sent_copies = get("switchboard_output_sent_bytes_total", &[("path", "copies")]);
        // Two protobuf bodies of the stdout, framed, at the time of the fetch (they may
        // have been a little behind); the JSON one's base64 is a third larger.
        assert!(sent_zero_copy > 1.9 * out.len() as f64, "{sent_zero_copy}");
        assert!(sent_copies > out.len() as f64, "{sent_copies}");
    });
}

#[test]
fn open_metrics_when_asked_and_post_still_405() {
    within(30, || {
        let mut sb = Sb::start(Opts::default());
        let text = curl_metrics(&sb, "application/openmetrics-text;version=1.0.0,text/plain;q=0.5");
        check_families(&text, true);
        assert!(
            text.contains("# TYPE switchboard_output_read_bytes counter\n"),
            "{text}"
        );
        assert!(
            text.contains("switchboard_output_read_bytes_total{stream=\"stdout\"} 0\n"),
            "{text}"
        );
        // Any other GET is Mesos's 405.
        let mut s = sb.connect();
        s.write_all(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut rest = Vec::new();
        let r = common::http::read_response(&mut s, &mut rest).unwrap();
        assert_eq!((r.status, r.text().as_str()), (405, "Expecting 'POST', received 'GET'"));
        sb.close_output();
        assert!(sb.wait(20).success());
    });
}
