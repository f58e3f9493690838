//! A container's life from the CLI: `wait` returns its status, `ps` shows running ones
//! and `ps -a` exited ones with how they ended, `stop` keeps the records and logs, `rm`
//! removes them (a running container only with `-f`), and `run --rm` leaves nothing.

use std::path::Path;
use std::process::{Command, Stdio};

use common::sb::{Runtime, cli};
use common::{wait_until, within};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// `run -d --name NAME ARGS -- CMD`.
fn run_detached(runtime: &Path, name: &str, extra: &[&str], cmd: &[&str]) {
    let out = Command::new(BIN)
        .args(["run", "-d", "--name", name, "--runtime-dir"])
        .arg(runtime)
        .args(extra)
        .arg("--")
        .args(cmd)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `ps --format json` (with `-a` when `all`): each container's id and object.
fn ps(runtime: &Path, all: bool) -> Vec<serde_json::Value> {
    let mut args = vec!["ps", "--format", "json"];
    if all {
        args.push("-a");
    }
    let out = cli(runtime, &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn find<'a>(list: &'a [serde_json::Value], id: &str) -> Option<&'a serde_json::Value> {
    list.iter().find(|c| c["id"] == id)
}

#[test]
fn wait_and_ps_tell_how_a_container_ended() {
    within(60, || {
        let guard = Runtime::new("life-wait");
        let runtime = guard.path.clone();
        run_detached(&runtime, "seven", &[], &["sh", "-c", "sleep 0.3; exit 7"]);
        run_detached(&runtime, "up", &[], &["sleep", "100"]);
        let out = cli(&runtime, &["wait", "seven"]);
        assert_eq!(out.status.code(), Some(7));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "7\n");
        // ps: only what runs; ps -a: the exited one too, with its status.
        let running = ps(&runtime, false);
        assert!(find(&running, "seven").is_none());
        assert_eq!(find(&running, "up").unwrap()["status"], "running");
        let all = ps(&runtime, true);
        let seven = find(&all, "seven").unwrap();
        assert_eq!(
            (seven["status"].as_str(), seven["exit_code"].as_u64()),
            (Some("exited"), Some(7))
        );
        let table = String::from_utf8_lossy(&cli(&runtime, &["ps", "-a"]).stdout).into_owned();
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("seven") && l.contains("exited (7)")),
            "{table}"
        );
        // A container killed by a signal: 128 + the signal, as a shell says.
        let up_pid = find(&running, "up").unwrap()["container_pid"].as_i64().unwrap() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(up_pid), nix::sys::signal::Signal::SIGKILL).unwrap();
        let out = cli(&runtime, &["wait", "up"]);
        assert_eq!(out.status.code(), Some(137));
        let all = ps(&runtime, true);
        assert_eq!(find(&all, "up").unwrap()["signal"], 9);
        // A container whose background child keeps its output open has not ended for
        // wait until that child is gone too (its log is complete only then); its log
        // can be read from the moment run returned.
        run_detached(&runtime, "bg", &[], &["sh", "-c", "sleep 1 & exit 3"]);
        assert!(cli(&runtime, &["logs", "bg"]).status.success());
        let out = cli(&runtime, &["wait", "bg"]);
        assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
        // A command that cannot start: 127, and its reason.
        let out = Command::new(BIN)
            .args(["run", "--runtime-dir"])
            .arg(&runtime)
            .args(["--", "/no/such/command"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(127));
        assert!(String::from_utf8_lossy(&out.stderr).contains("cannot start /no/such/command"));
    });
}

#[test]
fn stop_keeps_the_logs_and_rm_removes_them() {
    within(60, || {
        let guard = Runtime::new("life-rm");
        let runtime = guard.path.clone();
        run_detached(&runtime, "web", &[], &["sh", "-c", "echo served; exec sleep 100"]);
        let dir = runtime.join("web");
        wait_until("its output logged", || {
            cli(&runtime, &["logs", "web"]).stdout == b"served\n"
        });
        // A running container is not removed without -f.
        let out = cli(&runtime, &["rm", "web"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("web is running"));
        let out = cli(&runtime, &["stop", "--grace", "2s", "web"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // Stopped: not running, its logs and how it ended are kept.
        assert!(find(&ps(&runtime, false), "web").is_none());
        assert_eq!(find(&ps(&runtime, true), "web").unwrap()["signal"], 15);
        assert_eq!(cli(&runtime, &["logs", "web"]).stdout, b"served\n");
        let out = cli(&runtime, &["rm", "web"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(!dir.exists());
        assert!(find(&ps(&runtime, true), "web").is_none());
        // -f stops a running one first.
        run_detached(&runtime, "busy", &[], &["sleep", "100"]);
        let pid = find(&ps(&runtime, false), "busy").unwrap()["container_pid"]
            .as_i64()
            .unwrap() as i32;
        let out = cli(&runtime, &["rm", "-f", "busy"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(!runtime.join("busy").exists());
        let gone = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |s| s[s.rfind(')').unwrap() + 2..].starts_with('Z'));
        assert!(gone, "the container outlived rm -f");
        // Nothing by that name.
        assert_eq!(cli(&runtime, &["rm", "nobody"]).status.code(), Some(1));
    });
}

#[test]
fn run_rm_leaves_nothing_behind() {
    within(60, || {
        let guard = Runtime::new("life-run-rm");
        let runtime = guard.path.clone();
        // Attached: gone when run returns, with the command's status.
        let out = Command::new(BIN)
            .args(["run", "--rm", "--name", "once", "--runtime-dir"])
            .arg(&runtime)
            .args(["--", "sh", "-c", "echo once; exit 3"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "once\n");
        assert!(!runtime.join("once").exists());
        // Detached: gone once it ended.
        run_detached(&runtime, "later", &["--rm"], &["sh", "-c", "sleep 0.2"]);
        assert!(runtime.join("later").exists());
        wait_until("the container's removal", || !runtime.join("later").exists());
        assert!(ps(&runtime, true).is_empty());
    });
}
