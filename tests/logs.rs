//! Container logs in the CRI format and `switchboard logs`: every line `run` logs
//! parses with the format's grammar and the contents are what the container wrote;
//! `logs` with `--tail`, `-t`, `--stderr`, `--since`; a long line comes back whole; and
//! `logs -f` started before the first byte of a 50 MiB output, rotated at 1 MiB with 3
//! files kept, prints every byte exactly once and ends when the container exits.

use std::path::Path;
use std::process::{Command, Stdio};

use common::sb::{Runtime, cli};
use common::within;
use switchboard::agent::cri::{Entry, parse_rfc3339};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

fn run_detached(runtime: &Path, name: &str, extra: &[&str], script: &str) {
    let out = Command::new(BIN)
        .args(["run", "-d", "--name", name, "--runtime-dir"])
        .arg(runtime)
        .args(extra)
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Checks every line of a CRI file with the format's grammar; returns its entries.
fn parse_strictly(path: &Path) -> Vec<Entry> {
    let data = std::fs::read(path).unwrap();
    assert!(data.ends_with(b"\n"), "whole lines only");
    data[..data.len() - 1]
        .split(|&b| b == b'\n')
        .map(|line| {
            // timestamp SP stream SP tag SP content
            let mut parts = line.splitn(4, |&b| b == b' ');
            let time = std::str::from_utf8(parts.next().unwrap()).unwrap();
            assert!(time.ends_with('Z') && time.len() == 30, "RFC3339Nano in UTC: {time}");
            assert!(parse_rfc3339(time).is_some(), "{time}");
            let stream = parts.next().unwrap();
            assert!(stream == b"stdout" || stream == b"stderr");
            let tag = parts.next().unwrap();
            assert!(tag == b"P" || tag == b"F");
            assert!(parts.next().is_some(), "a content field, even if empty");
            Entry::parse(line).unwrap()
        })
        .collect()
}

#[test]
fn a_cri_log_holds_what_the_container_wrote_and_logs_prints_it() {
    within(60, || {
        let guard = Runtime::new("logs-cri");
        let runtime = guard.path.clone();
        let long = "y".repeat(40_000);
        let script = format!("echo one; echo two >&2; echo {long}; printf 'no newline'; sleep 0.3; echo three >&2");
        run_detached(&runtime, "c", &[], &script);
        assert_eq!(cli(&runtime, &["wait", "c"]).status.code(), Some(0));
        let entries = parse_strictly(&runtime.join("c/container.log"));
        // The contents of each stream, joined as the tags say, are what it wrote.
        let joined = |stderr: bool| -> String {
            entries
                .iter()
                .filter(|e| e.stderr == stderr)
                .map(|e| format!("{}{}", text(&e.content), if e.partial { "" } else { "\n" }))
                .collect()
        };
        assert_eq!(joined(false), format!("one\n{long}\nno newline"));
        assert_eq!(joined(true), "two\nthree\n");
        assert!(
            entries.iter().any(|e| e.partial && e.content.len() == 16 * 1024),
            "the long line is cut"
        );
        // logs: each stream to its own, the long line whole.
        let out = cli(&runtime, &["logs", "c"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("one\n{long}\nno newline"));
        assert_eq!(text(&out.stderr), "two\nthree\n");
        let out = cli(&runtime, &["logs", "--tail", "1", "c"]);
        assert_eq!(
            (text(&out.stdout), text(&out.stderr)),
            (String::new(), "three\n".to_string())
        );
        let out = cli(&runtime, &["logs", "--stderr", "c"]);
        assert_eq!(
            (text(&out.stdout), text(&out.stderr)),
            (String::new(), "two\nthree\n".to_string())
        );
        // -t: each line after its time; the times do not go back.
        let out = cli(&runtime, &["logs", "-t", "--stdout", "c"]);
        let times: Vec<u128> = text(&out.stdout)
            .lines()
            .map(|l| parse_rfc3339(l.split(' ').next().unwrap()).unwrap())
            .collect();
        assert_eq!(times.len(), 3);
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        // --since a time after the first lines: only what came later.
        let late = entries.iter().find(|e| text(&e.content) == "three").unwrap().time_ns;
        let stamp = switchboard::agent::cri::rfc3339_nano(late);
        let out = cli(&runtime, &["logs", "--since", &stamp, "c"]);
        assert_eq!(
            (text(&out.stdout), text(&out.stderr)),
            (String::new(), "three\n".to_string())
        );
        let out = cli(&runtime, &["logs", "--since", "yesterday", "c"]);
        assert_eq!(out.status.code(), Some(1));
    });
}

#[test]
fn logs_follow_reads_a_rotating_log_exactly_once() {
    within(120, || {
        let guard = Runtime::new("logs-follow");
        let runtime = guard.path.clone();
        // 50 MiB of numbered lines, written after logs -f started.
        let lines = 1_000_000;
        let script = format!("sleep 0.5; seq -w 1 {lines} | sed 's/$/ abcdefghijklmnopqrstuvwxyz0123456789abcdefghi/'");
        run_detached(
            &runtime,
            "big",
            &["--log-max-size", "1m", "--log-max-files", "3"],
            &script,
        );
        let follow = Command::new(BIN)
            .args(["logs", "-f", "big", "--runtime-dir"])
            .arg(&runtime)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = follow.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let want: String = (1..=lines)
            .map(|i| format!("{i:07} abcdefghijklmnopqrstuvwxyz0123456789abcdefghi\n"))
            .collect();
        assert!(want.len() > 50 << 20);
        assert_eq!(out.stdout.len(), want.len(), "every byte, once");
        assert!(out.stdout == want.as_bytes(), "in order");
        // At most 3 files, none past the size.
        let files = switchboard::agent::cri::files(&runtime.join("big"));
        assert!(files.len() <= 3, "{files:?}");
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() <= 1 << 20, "{f:?}");
        }
    });
}
