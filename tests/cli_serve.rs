//! `switchboard serve`: the server with friendly flags, on descriptors the caller holds.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use common::http::*;
use common::sb::*;
use common::*;
use switchboard::wire::Format;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

#[test]
fn serve_relays_output_and_logs_it() {
    within(60, || {
        let dir = temp_dir("serve");
        let socket = dir.join("s");
        let (stdin_r, stdin_w) = pipe(1 << 16);
        let (out_r, out_w) = pipe(1 << 16);
        let (err_r, err_w) = pipe(1 << 16);
        let (log_r, log_w) = pipe(1 << 16);
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--socket"]).arg(&socket);
        cmd.args([
            "--stdin-fd",
            "3",
            "--stdout-fd",
            "4",
            "--stderr-fd",
            "5",
            "--heartbeat",
            "30s",
        ]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log_w))
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
        let mut child = cmd.spawn().unwrap();
        drop(cmd);
        while !socket.exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        s.write_all(&output_request(true)).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        write_all(&out_w, b"served\n");
        drop((out_w, err_w));
        let mut rest = Vec::new();
        assert_eq!(read_head(&mut s, &mut rest).unwrap().0, 200);
        let (mut collector, out) = Collector::new(Format::Protobuf);
        let mut ended = collector.push(&rest);
        let mut buf = [0u8; 4096];
        while !ended {
            let n = std::io::Read::read(&mut s, &mut buf).unwrap();
            assert!(n > 0);
            ended = collector.push(&buf[..n]);
        }
        assert_eq!(out.lock().unwrap().stdout, b"served\n");
        assert!(child.wait().unwrap().success());
        let mut log = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(log_r), &mut log).unwrap();
        assert_eq!(log, b"served\n");
        drop(stdin_r);
        let _ = std::fs::remove_dir_all(dir);
    });
}

#[test]
fn serve_usage_errors() {
    let out = Command::new(BIN)
        .args(["serve", "--socket", "/tmp/x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--stdin-fd"));
    let out = Command::new(BIN)
        .args(["serve", "--socket", "/tmp/x", "--pty-fd", "3", "--heartbeat", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN)
        .args([
            "serve",
            "--socket",
            "/tmp/x",
            "--pty-fd",
            "3",
            "--lag-limit",
            "99999999",
            "--buffer-bytes",
            "1000",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the stream buffer (1000) must hold a read"));
    // Sizes past 1 GiB are refused, not allocated when output comes.
    for (flag, what) in [("--history-bytes", "history"), ("--buffer-bytes", "stream buffer")] {
        let out = Command::new(BIN)
            .args([
                "serve",
                "--socket",
                "/tmp/x",
                "--pty-fd",
                "3",
                flag,
                "18446744073709551615",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("switchboard serve: the {what} (18446744073709551615 bytes) may be at most 1073741824 bytes\n")
        );
    }
}
