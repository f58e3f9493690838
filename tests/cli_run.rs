//! `switchboard run` and `switchboard attach` on real terminals: a shell under
//! `run --tty`, typed input echoed, resizes seen by `stty size`, detach and attach again,
//! a lone detach key passed through, exit statuses, separate stdout and stderr without a
//! terminal, a dozen attachers at once, and clear messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::sb::Runtime;
use common::term::Term;
use common::within;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// `switchboard` with its own runtime directory.
fn switchboard(runtime: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("XDG_RUNTIME_DIR", runtime)
        .env("TERM", "dumb")
        .env("PS1", "sb$ ");
    cmd
}

/// The only container directory under `runtime`.
fn container_dir(runtime: &Path) -> PathBuf {
    let dir = runtime.join("switchboard");
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries.pop().unwrap()
}

/// `switchboard logs` of the only container: its stdout and stderr.
fn logs(runtime: &Path) -> (String, String) {
    let id = container_dir(runtime)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let out = switchboard(runtime).args(["logs", &id]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn info(runtime: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(container_dir(runtime).join("info.json")).unwrap()).unwrap()
}

/// Ends a container that was left running, by its pid.
fn kill_container(runtime: &Path) {
    if let Some(pid) = info(runtime)["container_pid"].as_i64() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn wait_for(cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_shell_under_run_tty_echoes_resizes_and_exits_with_its_status() {
    within(60, || {
        let guard = Runtime::new("run-tty");
        let runtime = guard.path.clone();
        let mut cmd = switchboard(&runtime);
        cmd.args(["run", "--tty", "--", "sh"]);
        let mut t = Term::spawn(cmd, 24, 80);
        t.expect("sb$ ", 20);
        t.type_bytes(b"echo hel''lo $((6*7))\r");
        let at = t.expect("hello 42", 20);
        // The window size was set before any input; changes follow.
        t.type_bytes(b"stty size\r");
        let at = t.expect_from(at, "24 80", 10);
        t.resize(33, 91);
        std::thread::sleep(Duration::from_millis(300));
        t.type_bytes(b"stty size\r");
        t.expect_from(at, "33 91", 10);
        t.type_bytes(b"exit 5\r");
        assert_eq!(t.wait(20).code(), Some(5));
        // Both streams were logged, merged, as stdout.
        let (log, _) = logs(&runtime);
        assert!(log.contains("hello 42"), "{log}");
    });
}

#[test]
fn detach_leaves_it_running_and_a_second_attach_sees_new_output() {
    within(60, || {
        let guard = Runtime::new("run-detach");
        let runtime = guard.path.clone();
        let mut cmd = switchboard(&runtime);
        cmd.args(["run", "--tty", "--", "sh"]);
        let mut t = Term::spawn(cmd, 24, 80);
        // The prompt shows once the attachment streams (and this terminal is raw).
        let at = t.expect("sb$ ", 20);
        t.type_bytes(b"echo fi''rst\r");
        t.expect_from(at, "first", 20);
        t.type_bytes(&[0x10, 0x11]); // ctrl-p ctrl-q
        assert_eq!(t.wait(20).code(), Some(0));
        assert!(t.text().contains("detached"), "{}", t.text());
        let socket = info(&runtime)["socket"].as_str().unwrap().to_string();
        let pid = info(&runtime)["container_pid"].as_i64().unwrap() as i32;
        assert!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok(),
            "the shell must still run"
        );

        let mut cmd = switchboard(&runtime);
        cmd.args(["attach", &socket]);
        let mut again = Term::spawn(cmd, 24, 80);
        std::thread::sleep(Duration::from_millis(500));
        again.type_bytes(b"echo se''cond\r");
        again.expect("second", 20);
        again.type_bytes(b"exit\r");
        assert_eq!(again.wait(20).code(), Some(0));
    });
}

#[test]
fn a_lone_ctrl_p_reaches_the_program_after_a_pause() {
    within(60, || {
        let guard = Runtime::new("run-ctrlp");
        let runtime = guard.path.clone();
        let mut cmd = switchboard(&runtime);
        cmd.args([
            "run",
            "--tty",
            "--",
            "sh",
            "-c",
            "stty raw -echo; dd bs=1 count=2 2>/dev/null | od -An -tx1",
        ]);
        let mut t = Term::spawn(cmd, 24, 80);
        std::thread::sleep(Duration::from_millis(700));
        t.type_bytes(&[0x10]);
        std::thread::sleep(Duration::from_millis(800));
        t.type_bytes(b"x");
        t.expect("10 78", 20);
        assert_eq!(t.wait(20).code(), Some(0));
    });
}

#[test]
fn without_a_terminal_stdout_and_stderr_stay_apart() {
    within(60, || {
        let guard = Runtime::new("run-pipes");
        let runtime = guard.path.clone();
        let out = switchboard(&runtime)
            .args(["run", "--", "sh", "-c", "read x; echo \"out $x\"; echo err >&2; exit 3"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(b"typed\n")?;
                c.wait_with_output()
            })
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out typed\n");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("\nerr\n"), "{err}");
        assert_eq!(logs(&runtime), ("out typed\n".to_string(), "err\n".to_string()));
    });
}

#[test]
fn a_dozen_attachers_see_the_same_output() {
    within(90, || {
        let guard = Runtime::new("run-dozen");
        let runtime = guard.path.clone();
        let out = switchboard(&runtime)
            .args([
                "run",
                "--detach",
                "--",
                "sh",
                "-c",
                "sleep 2; i=0; while [ $i -lt 200 ]; do echo line $i; i=$((i+1)); done",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let socket = info(&runtime)["socket"].as_str().unwrap().to_string();
        let attachers: Vec<_> = (0..12)
            .map(|_| {
                switchboard(&runtime)
                    .args(["attach", "--no-stdin", &socket])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outputs: Vec<_> = attachers.into_iter().map(|a| a.wait_with_output().unwrap()).collect();
        let expected: String = (0..200).map(|i| format!("line {i}\n")).collect();
        for o in outputs {
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            assert_eq!(String::from_utf8_lossy(&o.stdout), expected);
        }
    });
}

#[test]
fn clear_messages_for_a_missing_socket_and_a_taken_stdin() {
    within(60, || {
        let guard = Runtime::new("run-msgs");
        let runtime = guard.path.clone();
        let out = switchboard(&runtime)
            .args(["attach", "/nonexistent/sock"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "switchboard attach: no switchboard is listening at /nonexistent/sock: No such file or directory\n"
        );
        let out = switchboard(&runtime)
            .args(["run", "--detach", "--", "cat"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let socket = info(&runtime)["socket"].as_str().unwrap().to_string();
        // The first attacher holds stdin (its input stays open: it never ends). Its line
        // coming back from cat (after the terminal's own echo) shows it is attached.
        let mut cmd = switchboard(&runtime);
        cmd.args(["attach", &socket]);
        let mut holder = Term::spawn(cmd, 24, 80);
        std::thread::sleep(Duration::from_millis(300));
        holder.type_bytes(b"ping\r");
        let at = holder.expect("ping", 20);
        holder.expect_from(at, "ping", 20);
        let mut second = switchboard(&runtime)
            .args(["attach", &socket])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = Vec::new();
        wait_for(|| {
            let path = format!("/proc/{}/fd/2", second.id());
            std::fs::metadata(path).is_ok()
        });
        std::thread::sleep(Duration::from_millis(500));
        let _ = second.kill();
        let _ = second.wait();
        std::io::Read::read_to_end(&mut second.stderr.take().unwrap(), &mut err).unwrap();
        assert!(
            String::from_utf8_lossy(&err)
                .contains("another client is attached to the container's stdin; showing output only"),
            "{}",
            String::from_utf8_lossy(&err)
        );
        drop(holder);
        kill_container(&runtime);
    });
}

#[test]
fn the_terminal_is_restored_when_attach_is_killed_and_a_vanished_server_is_reported() {
    within(60, || {
        let guard = Runtime::new("run-restore");
        let runtime = guard.path.clone();
        let out = switchboard(&runtime)
            .args(["run", "--detach", "--tty", "--", "sh"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let socket = info(&runtime)["socket"].as_str().unwrap().to_string();
        let mut cmd = switchboard(&runtime);
        cmd.args(["attach", &socket]);
        let mut t = Term::spawn(cmd, 24, 80);
        t.type_bytes(b"echo up''now\r");
        t.expect("upnow", 20);
        assert!(!t.is_cooked(), "attach puts the terminal in raw mode");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(t.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        assert_eq!(t.wait(20).code(), Some(128 + 15));
        assert!(t.is_cooked(), "the terminal settings must be restored");

        // The switchboard dies under an attached client: the client says so.
        let mut cmd = switchboard(&runtime);
        cmd.args(["attach", &socket]);
        let mut t = Term::spawn(cmd, 24, 80);
        t.type_bytes(b"echo up''again\r");
        t.expect("upagain", 20);
        let server = info(&runtime)["server_pid"].as_i64().unwrap() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(server), nix::sys::signal::Signal::SIGKILL).unwrap();
        assert_eq!(t.wait(20).code(), Some(1));
        assert!(t.text().contains("the switchboard went away"), "{}", t.text());
        assert!(t.is_cooked());
        kill_container(&runtime);
    });
}

#[test]
fn stop_kills_what_the_container_left_running_after_its_leader_exited() {
    within(60, || {
        let guard = Runtime::new("run-orphan");
        let runtime = guard.path.clone();
        let pid_file = runtime.join("child.pid");
        // The shell exits at once; its background child keeps stdout open.
        let script = format!("sleep 1000 & echo $! > {}", pid_file.display());
        let out = switchboard(&runtime)
            .args(["run", "--detach", "--", "sh", "-c", &script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        wait_for(|| std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n')));
        let child: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        // However the test ends, the child ends with it (by its pid, while it is still
        // that process).
        struct Kill(i32, Option<u64>);
        impl Drop for Kill {
            fn drop(&mut self) {
                if switchboard::agent::supervisor::start_time(self.0) == self.1 {
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
        let _kill = Kill(child, switchboard::agent::supervisor::start_time(child));
        let leader = info(&runtime)["container_pid"].as_i64().unwrap() as i32;
        let running = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| !s[s.rfind(')').unwrap() + 2..].starts_with('Z'))
        };
        wait_for(|| !running(leader));
        assert!(running(child));
        let id = info(&runtime)["id"].as_str().unwrap().to_string();
        let started = std::time::Instant::now();
        let out = switchboard(&runtime)
            .args(["stop", "--grace", "2s", &id])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(!running(child), "the background child must be gone");
        assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    });
}

#[test]
fn run_over_a_stale_socket_attaches_and_a_server_that_cannot_start_says_why() {
    within(60, || {
        let guard = Runtime::new("run-stale");
        let runtime = guard.path.clone();
        // A socket file an earlier server left behind.
        let socket = runtime.join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        assert!(socket.exists());
        let out = switchboard(&runtime)
            .args(["run", "--socket", socket.to_str().unwrap(), "--", "sh", "-c", "echo hi"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
        // A socket path the server cannot bind: its own reason, not "no diagnostics".
        let long = runtime.join("x".repeat(120));
        let out = switchboard(&runtime)
            .args(["run", "--socket", long.to_str().unwrap(), "--", "true"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Path too long, must be less than 108 bytes"), "{err}");
    });
}
