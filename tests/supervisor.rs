//! The agent-side supervisor with real processes: a supervisor process launches
//! containers and is SIGKILLed; a new one recovers them, attaches again, and finds the
//! logs complete; orphans are cleaned up, dead switchboards reported, reused pids not
//! adopted, a switchboard that ignores SIGTERM ends with SIGKILL in time, and nothing is
//! left behind.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::sb::Runtime;
use common::within;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use switchboard::agent::{self, Ended, Launch, ProcessId, Supervisor, SupervisorError, Timeouts};
use switchboard::client::OutputStream;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// A container printing numbered lines until it is killed.
const TICKER: &str = "i=0; while :; do echo \"tick $i\"; i=$((i+1)); sleep 0.02; done";

fn launch(command: &[&str]) -> Launch {
    Launch {
        id: None,
        tty: false,
        runtime_dir: PathBuf::new(),
        socket: None,
        log_dir: None,
        wait_for_connection: false,
        heartbeat: None,
        command: command.iter().map(|s| s.to_string()).collect(),
        server_exe: PathBuf::new(),
        cri: false,
        window: None,
    }
}

/// Starts a container under `sup`: its command on the container's side of the stdio.
fn start(sup: &mut Supervisor, id: &str, command: &[&str]) -> i32 {
    let io = sup.prepare(id, launch(command)).unwrap();
    let child = Command::new(command[0])
        .args(&command[1..])
        .stdin(Stdio::from(io.stdin))
        .stdout(Stdio::from(io.stdout))
        .stderr(Stdio::from(io.stderr))
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    sup.set_container(id, pid).unwrap();
    // The container is reaped by whoever inherits it; its pid is recorded.
    std::mem::forget(child);
    pid
}

/// A child process killed (by pid) and reaped when the test ends, however it ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn timeouts() -> Timeouts {
    Timeouts {
        grace: Duration::from_millis(300),
        terminate: Duration::from_millis(500),
        connect: Duration::from_secs(5),
    }
}

/// The supervisor process of `recovery_after_the_supervisor_is_killed`: this test binary,
/// run again with SB_SUPERVISOR set to a runtime directory.
#[test]
fn supervisor_process() {
    let Some(runtime) = std::env::var_os("SB_SUPERVISOR") else { return };
    let mut sup = Supervisor::new(runtime.into(), BIN.into(), timeouts());
    for id in ["kept", "orphan", "dead"] {
        start(&mut sup, id, &["sh", "-c", TICKER]);
    }
    println!("ready");
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn tick_numbers(log: &str) -> Vec<u64> {
    log.lines()
        .map(|l| l.strip_prefix("tick ").unwrap().parse().unwrap())
        .collect()
}

fn container_pid(runtime: &Path, id: &str) -> i32 {
    agent::Info::load(&runtime.join(id)).unwrap().container_pid.unwrap()
}

#[test]
fn recovery_after_the_supervisor_is_killed() {
    within(120, || {
        let guard = Runtime::new("supervisor");
        let runtime = guard.path.clone();
        let mut first = Reaped(
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    &common::test_name(module_path!(), "supervisor_process"),
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("SB_SUPERVISOR", &runtime)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        // libtest writes "test supervisor_process ... " before the test's own output.
        let mut lines = BufReader::new(first.0.stdout.take().unwrap()).lines();
        while !lines
            .next()
            .expect("the supervisor process ended early")
            .unwrap()
            .ends_with("ready")
        {}
        let kept_container = container_pid(&runtime, "kept");
        let orphan_container = container_pid(&runtime, "orphan");
        let dead_server = agent::Info::load(&runtime.join("dead")).unwrap().server_pid;
        std::thread::sleep(Duration::from_millis(300));
        // The agent dies; the switchboards live on (sessions of their own).
        drop(first);
        kill(Pid::from_raw(dead_server), Signal::SIGKILL).unwrap();
        std::thread::sleep(Duration::from_millis(200));

        // A launch still starting (no record yet) is left alone.
        std::fs::create_dir(runtime.join("starting")).unwrap();
        let mut sup = Supervisor::new(runtime.clone(), BIN.into(), timeouts());
        let recovery = sup.recover(&["kept", "dead"]).unwrap();
        assert_eq!(recovery.adopted, ["kept"]);
        assert_eq!(recovery.gone, ["dead"]);
        assert_eq!(recovery.orphans, ["orphan"]);
        // The orphan's container and switchboard are gone, with their records.
        assert!(!runtime.join("orphan").exists());
        assert!(kill(Pid::from_raw(orphan_container), None).is_err() || is_zombie(orphan_container));
        assert!(runtime.join("starting").exists());
        // The dead one's records can be cleaned up.
        assert_eq!(sup.cleanup("dead").unwrap(), Ended::AlreadyGone);
        assert!(!runtime.join("dead").exists());

        // Attach again: the output goes on.
        let socket = sup.info("kept").unwrap().socket.clone();
        let mut output = OutputStream::open(&socket).unwrap();
        let mut seen = 0;
        while seen < 5 {
            let record = output.next_record().unwrap().unwrap();
            if record.data.is_some() {
                seen += 1;
            }
        }
        drop(output);

        // Its container ends: the switchboard exits by itself at the end of the output, and
        // the log, written across the supervisor's death, holds every tick, none missing.
        let log_path = sup.info("kept").unwrap().stdout_log.clone();
        kill(Pid::from_raw(kept_container), Signal::SIGKILL).unwrap();
        assert!(
            sup.watch("kept", Duration::from_secs(5)).unwrap().is_some(),
            "it exits at the end of output"
        );
        let ticks = tick_numbers(&std::fs::read_to_string(&log_path).unwrap());
        assert!(ticks.len() > 10);
        assert_eq!(
            ticks,
            (0..ticks.len() as u64).collect::<Vec<_>>(),
            "the log has every line, in order"
        );
        assert_eq!(sup.cleanup("kept").unwrap(), Ended::AlreadyGone);
        assert!(!runtime.join("kept").exists());
    });
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

#[test]
fn the_log_is_complete_across_a_restart() {
    within(60, || {
        let guard = Runtime::new("supervisor-log");
        let runtime = guard.path.clone();
        let mut sup = Supervisor::new(runtime.clone(), BIN.into(), timeouts());
        let container = start(&mut sup, "c", &["sh", "-c", TICKER]);
        std::thread::sleep(Duration::from_millis(300));
        // A new supervisor (the old one is dropped, as after a crash) adopts it.
        drop(sup);
        let mut sup = Supervisor::new(runtime.clone(), BIN.into(), timeouts());
        assert_eq!(sup.recover(&["c"]).unwrap().adopted, ["c"]);
        std::thread::sleep(Duration::from_millis(300));
        let log_path = sup.info("c").unwrap().stdout_log.clone();
        kill(Pid::from_raw(container), Signal::SIGKILL).unwrap();
        // Wait until the switchboard has the end of the output and exits.
        assert!(sup.watch("c", Duration::from_secs(10)).unwrap().is_some());
        let log = std::fs::read_to_string(&log_path).unwrap();
        let ticks = tick_numbers(&log);
        assert!(ticks.len() > 10);
        assert_eq!(
            ticks,
            (0..ticks.len() as u64).collect::<Vec<_>>(),
            "the log has every line, in order"
        );
        assert!(matches!(
            sup.cleanup("c").unwrap(),
            Ended::AlreadyGone | Ended::Exited(_)
        ));
        assert!(!runtime.join("c").exists());
    });
}

#[test]
fn a_reused_pid_is_not_adopted() {
    within(30, || {
        let guard = Runtime::new("supervisor-pid");
        let runtime = guard.path.clone();
        let mut sup = Supervisor::new(runtime.clone(), BIN.into(), timeouts());
        let container = start(&mut sup, "c", &["sleep", "1000"]);
        // Pretend the switchboard's pid now belongs to another process: a live process
        // with a different start time (start times count clock ticks: one passes first).
        std::thread::sleep(Duration::from_millis(50));
        let mut imposter = Reaped(Command::new("sleep").arg("1000").spawn().unwrap());
        let mut info = agent::Info::load(&runtime.join("c")).unwrap();
        let real = ProcessId::of(info.server_pid).unwrap();
        info.server_pid = imposter.0.id() as i32;
        info.save(&runtime.join("c")).unwrap();
        drop(sup);
        let mut sup = Supervisor::new(runtime.clone(), BIN.into(), timeouts());
        let recovery = sup.recover(&["c"]).unwrap();
        assert!(recovery.adopted.is_empty());
        assert_eq!(recovery.gone, ["c"]);
        assert!(
            imposter.0.try_wait().unwrap().is_none(),
            "the imposter must not be signalled"
        );
        real.signal(Signal::SIGKILL);
        kill(Pid::from_raw(container), Signal::SIGKILL).unwrap();
    });
}

#[test]
fn a_switchboard_that_ignores_sigterm_is_killed_in_time_and_nothing_leaks() {
    within(30, || {
        let guard = Runtime::new("supervisor-kill");
        let runtime = guard.path.clone();
        let mut sup = Supervisor::new(runtime.clone(), BIN.into(), timeouts());
        // Its container still runs, so its output never ends: SIGTERM only "unblocks" it.
        let container = start(&mut sup, "c", &["sleep", "1000"]);
        // The container's pipes, which this process must not hold once it is cleaned up.
        let pipes: Vec<PathBuf> = (0..3)
            .map(|fd| std::fs::read_link(format!("/proc/{container}/fd/{fd}")).unwrap())
            .collect();
        let server = ProcessId::of(sup.info("c").unwrap().server_pid).unwrap();
        let started = Instant::now();
        assert_eq!(sup.cleanup("c").unwrap(), Ended::Killed);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_secs(5),
            "{took:?}"
        );
        assert!(!server.is_alive());
        assert!(!runtime.join("c").exists());
        // The switchboard was our child: it was reaped, and none of the pipes stayed open.
        assert!(!is_zombie(server.pid));
        for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                assert!(!pipes.contains(&target), "{target:?} stayed open");
            }
        }
        kill(Pid::from_raw(container), Signal::SIGKILL).unwrap();
    });
}

#[test]
fn ps_lists_and_stop_cleans_up() {
    within(60, || {
        let guard = Runtime::new("supervisor-cli");
        let runtime = guard.path.clone();
        let out = Command::new(BIN)
            .args(["run", "--detach", "--name", "web", "--runtime-dir"])
            .arg(&runtime)
            .args(["--", "sleep", "1000"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "web\n");
        let ps = Command::new(BIN)
            .args(["ps", "--runtime-dir"])
            .arg(&runtime)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&ps.stdout);
        let mut lines = text.lines();
        assert!(lines.next().unwrap().starts_with("ID  "));
        let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(row[0], "web");
        assert_eq!(row[2], "running");
        assert!(row[3].ends_with("/web/sock"));
        assert_eq!(&row[4..], ["sleep", "1000"]);
        let container = container_pid(&runtime, "web");
        let stop = Command::new(BIN)
            .args(["stop", "web", "--grace", "1s", "--timeout", "2s", "--runtime-dir"])
            .arg(&runtime)
            .output()
            .unwrap();
        assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
        // Its records and logs stay (for `ps -a` and `rm`); its socket goes.
        assert!(runtime.join("web/info.json").exists());
        assert!(!runtime.join("web/sock").exists());
        assert!(kill(Pid::from_raw(container), None).is_err() || is_zombie(container));
        let ps = Command::new(BIN)
            .args(["ps", "--runtime-dir"])
            .arg(&runtime)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&ps.stdout).lines().count(), 1);
    });
}

/// Runs test `name` alone in a process of its own (this test binary again), so that no
/// other test's descriptors or children come and go while it counts its own. Returns
/// whether the caller is that process.
fn alone(name: &str) -> bool {
    if std::env::var_os("SB_ALONE").is_some() {
        return true;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &common::test_name(module_path!(), name), "--test-threads=1"])
        .env("SB_ALONE", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && report.contains("1 passed"), "{report}");
    false
}

fn children() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| c.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

#[test]
fn a_failed_prepare_leaves_no_descriptor_process_or_file() {
    if !alone("a_failed_prepare_leaves_no_descriptor_process_or_file") {
        return;
    }
    let guard = Runtime::new("supervisor-fail");
    let runtime = guard.path.clone();
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let before = fds();
    // No such program; a program that exits at once instead of serving; a bad id.
    for (exe, id) in [("/nonexistent/switchboard", "c"), ("/bin/false", "c"), (BIN, "../c")] {
        for tty in [false, true] {
            let mut sup = Supervisor::new(runtime.clone(), exe.into(), timeouts());
            let err = sup
                .prepare(
                    id,
                    Launch {
                        tty,
                        ..launch(&["true"])
                    },
                )
                .unwrap_err();
            assert!(matches!(err, SupervisorError::Prepare { .. }), "{err:?}");
            assert!(err.to_string().contains(&format!("'{id}'")), "{err}");
            assert!(sup.info(id).is_none());
        }
    }
    assert_eq!(
        std::fs::read_dir(&runtime).unwrap().count(),
        0,
        "nothing under the runtime directory"
    );
    assert_eq!(fds(), before, "no descriptor left open");
    assert_eq!(
        children(),
        Vec::<String>::new(),
        "no child process left, not even a zombie"
    );
    // The id of a running container is not taken twice, and the first is untouched.
    let mut sup = Supervisor::new(runtime.clone(), BIN.into(), timeouts());
    let container = start(&mut sup, "c", &["sleep", "1000"]);
    let err = sup.prepare("c", launch(&["true"])).unwrap_err();
    assert!(err.to_string().contains("exists already"), "{err}");
    assert!(sup.is_running("c"));
    kill(Pid::from_raw(container), Signal::SIGKILL).unwrap();
    assert!(matches!(sup.cleanup("c").unwrap(), Ended::Exited(Some(_))));
}

#[test]
fn stop_ends_the_containers_children_too() {
    within(60, || {
        let guard = Runtime::new("supervisor-group");
        let runtime = guard.path.clone();
        // The container's child holds its stdout as well.
        let out = Command::new(BIN)
            .args(["run", "--detach", "--name", "tree", "--runtime-dir"])
            .arg(&runtime)
            .args(["--", "sh", "-c", "sleep 1000 & wait"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let container = container_pid(&runtime, "tree");
        let mut child = None;
        for _ in 0..200 {
            let children = std::fs::read_to_string(format!("/proc/{container}/task/{container}/children")).unwrap();
            if let Some(pid) = children.split_whitespace().next() {
                child = Some(pid.parse::<i32>().unwrap());
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let child = ProcessId::of(child.expect("the container's child")).unwrap();
        let started = Instant::now();
        let stop = Command::new(BIN)
            .args(["stop", "tree", "--grace", "2s", "--timeout", "2s", "--runtime-dir"])
            .arg(&runtime)
            .output()
            .unwrap();
        assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
        // The whole group went at SIGTERM: the switchboard saw the end of the output and
        // exited by itself, well within the grace periods.
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        assert!(!child.is_alive(), "the container's child outlived stop");
        assert!(runtime.join("tree/info.json").exists(), "stop keeps the records");
    });
}

#[test]
fn a_command_that_cannot_start_fails_at_once() {
    within(30, || {
        let guard = Runtime::new("supervisor-nocmd");
        let started = Instant::now();
        let out = Command::new(BIN)
            .args(["run", "--runtime-dir"])
            .arg(&guard.path)
            .args(["--", "/nonexistent/command"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(127));
        assert!(String::from_utf8_lossy(&out.stderr).contains("cannot start /nonexistent/command"));
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        assert!(
            agent::supervisor::list(&guard.path).unwrap().is_empty(),
            "nothing left behind"
        );
    });
}

#[test]
fn leaked_descriptors_reach_neither_switchboard_nor_container() {
    if !alone("leaked_descriptors_reach_neither_switchboard_nor_container") {
        return;
    }
    let guard = Runtime::new("supervisor-leak");
    let runtime = guard.path.clone();
    // A descriptor this process holds without close-on-exec, as a careless parent leaks.
    let marker = runtime.join("leaked-marker");
    std::fs::write(&marker, b"x").unwrap();
    let leaked = nix::fcntl::open(&marker, nix::fcntl::OFlag::O_RDONLY, nix::sys::stat::Mode::empty()).unwrap();
    let out = Command::new(BIN)
        .args(["run", "--detach", "--name", "c", "--runtime-dir"])
        .arg(&runtime)
        .args(["--", "sleep", "1000"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info = agent::Info::load(&runtime.join("c")).unwrap();
    let holds_marker = |pid: i32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == marker))
    };
    assert!(
        !holds_marker(info.server_pid),
        "the switchboard inherited the leaked descriptor"
    );
    assert!(
        !holds_marker(info.container_pid.unwrap()),
        "the container inherited the leaked descriptor"
    );
    // The container has its three standard descriptors and nothing else, once it runs
    // `sleep` itself: while the dynamic loader maps its libraries it briefly holds one
    // more, so the count is read until it settles.
    let container = info.container_pid.unwrap();
    let fds = || {
        let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{container}/fd"))
            .unwrap()
            .flatten()
            .map(|fd| {
                format!(
                    "{} -> {:?}",
                    fd.file_name().to_string_lossy(),
                    std::fs::read_link(fd.path())
                )
            })
            .collect();
        fds.sort();
        fds
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = fds();
    while seen.len() != 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        seen = fds();
    }
    assert_eq!(seen.len(), 3, "the container holds {seen:#?}");
    drop(leaked);
}
