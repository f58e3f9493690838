//! Where io_uring is refused (a seccomp filter answering `io_uring_setup`, `_enter` and
//! `_register` with EPERM, as Docker's default profile does, or ENOSYS): the drop-in and
//! `switchboard run` serve on the epoll engine, every byte arrives, and the log says
//! which engine and why. `--engine=io_uring` fails there with a clear message, and
//! `--engine=epoll` never makes an io_uring call (a filter that kills on one).

use std::process::{Command, Stdio};

use common::engine::{Refuse, refuse_io_uring};
use common::http::read_stdout;
use common::sb::*;
use common::{fill_pattern, within};
use switchboard::wire::Format;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// A drop-in started under `how` with `flags`: an output client on each path (protobuf
/// by zero copy, JSON by copies) gets 4 MiB of stdout, the logger gets it, and input
/// reaches the container's stdin. Returns the server's log.
fn serves_everything(how: Refuse, flags: &[&str]) -> String {
    let dir = temp_dir("engines");
    let log = dir.join("switchboard.log");
    let mut extra = vec![format!("--log_file={}", log.display())];
    extra.extend(flags.iter().map(|f| f.to_string()));
    let mut sb = Sb::start(Opts {
        refuse_io_uring: Some(how),
        extra,
        ..Opts::default()
    });
    let readers: Vec<_> = [(true, Format::Protobuf), (false, Format::Json)]
        .into_iter()
        .map(|(protobuf, format)| {
            let (s, rest) = sb.attach_output(protobuf);
            std::thread::spawn(move || read_stdout(s, rest, format))
        })
        .collect();
    assert_eq!(sb.send_input(b"typed\n"), 200);
    let mut typed = [0u8; 6];
    let stdin = sb.stdin.take().unwrap();
    let mut got = 0;
    while got < typed.len() {
        got += nix::unistd::read(&stdin, &mut typed[got..]).unwrap();
    }
    assert_eq!(&typed, b"typed\n");
    let mut data = vec![0u8; 4 << 20];
    fill_pattern(11, 0, &mut data);
    sb.write_stdout(&data);
    sb.close_output();
    for r in readers {
        assert!(r.join().unwrap() == data, "a client missed bytes");
    }
    assert!(sb.wait(20).success());
    assert!(*sb.stdout_log.lock().unwrap() == data, "the logger missed bytes");
    std::fs::read_to_string(log).unwrap()
}

#[test]
fn the_drop_in_serves_on_epoll_where_io_uring_is_refused() {
    within(60, || {
        for (errno, why) in [
            (libc::EPERM, "io_uring is disabled for this process"),
            (libc::ENOSYS, "a seccomp filter refuses it"),
        ] {
            let log = serves_everything(Refuse::Errno(errno), &[]);
            let line = log
                .lines()
                .find(|l| l.contains("engine"))
                .expect("a line on the engine");
            assert!(line.contains("WARN"), "{line}");
            assert!(line.contains(why), "{line}");
            assert!(line.ends_with("serving on the epoll engine instead"), "{line}");
        }
        // Told to use only epoll, it never makes an io_uring call (one would kill it).
        let log = serves_everything(Refuse::Kill, &["--engine=epoll"]);
        assert!(log.contains("INFO serving on the epoll engine"), "{log}");
    });
}

#[test]
fn io_uring_only_fails_with_its_reason_and_auto_prefers_it() {
    within(60, || {
        let dir = temp_dir("engines-only");
        let (_r, w) = common::pipe(1 << 16);
        let mut cmd = Command::new(drop_in());
        cmd.args([
            "--help=false",
            &format!("--socket_address={}", dir.join("sock").display()),
            "--stdin_to_fd=3",
            "--stdout_from_fd=3",
            "--stdout_to_fd=1",
            "--stderr_from_fd=3",
            "--stderr_to_fd=2",
            "--tty=true",
            "--engine=io_uring",
        ])
        .stdin(Stdio::null());
        command_fds::CommandFdExt::fd_mappings(
            &mut cmd,
            vec![command_fds::FdMapping {
                parent_fd: w,
                child_fd: 3,
            }],
        )
        .unwrap();
        refuse_io_uring(&mut cmd, Refuse::Errno(libc::EPERM));
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("cannot use io_uring: io_uring is disabled for this process"),
            "{err}"
        );
        // Where nothing refuses it, auto runs on io_uring (unless the environment chose).
        if std::env::var_os("SWITCHBOARD_ENGINE").is_none() {
            let line = common::engine::of_a_server();
            assert!(line.contains("INFO serving on the io_uring engine"), "{line}");
        }
    });
}

#[test]
fn run_serves_on_epoll_where_io_uring_is_refused() {
    within(60, || {
        for errno in [libc::EPERM, libc::ENOSYS] {
            let guard = Runtime::new("engines-run");
            let runtime = guard.path.clone();
            let mut cmd = Command::new(BIN);
            cmd.env("XDG_RUNTIME_DIR", &runtime)
                .args(["run", "--"])
                .args(["sh", "-c", "seq 1 200000; echo done >&2"])
                .stdin(Stdio::null());
            refuse_io_uring(&mut cmd, Refuse::Errno(errno));
            let out = cmd.output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let want: String = (1..=200000).map(|i| format!("{i}\n")).collect();
            assert!(out.stdout == want.as_bytes(), "stdout differs");
            assert!(String::from_utf8_lossy(&out.stderr).ends_with("done\n"));
            // The container's directory holds the server's log.
            let dir = std::fs::read_dir(runtime.join("switchboard"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.join("switchboard.log").exists())
                .expect("a container directory");
            let log = std::fs::read_to_string(dir.join("switchboard.log")).unwrap();
            assert!(log.contains("cannot use io_uring"), "{log}");
            assert!(log.contains("serving on the epoll engine instead"), "{log}");
        }
    });
}
