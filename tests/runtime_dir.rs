//! A runtime directory nobody else controls: one another user made first (open to all,
//! or theirs), or a link, is refused by `run`, `ps` and `stop` with a clear message; a
//! record is trusted only for what lies in its own directory: `stop` and `rm` never
//! unlink a file a record names elsewhere.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::sb::Runtime;
use common::within;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

fn switchboard(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `run`, `ps` and `stop` on `dir` fail, saying `why`; nothing is started.
fn all_refuse(dir: &Path, why: &str) {
    let d = dir.to_str().unwrap();
    for args in [
        vec!["run", "--detach", "--runtime-dir", d, "--", "true"],
        vec!["ps", "--runtime-dir", d],
        vec!["stop", "--runtime-dir", d, "some-id"],
    ] {
        let out = switchboard(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let text = stderr(&out);
        assert!(text.contains(&format!("refusing {d}: {why}")), "{args:?}: {text}");
    }
}

#[test]
fn a_runtime_directory_others_control_is_refused() {
    within(60, || {
        let guard = Runtime::new("rt-refuse");
        // Open to everybody.
        let open = guard.path.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        all_refuse(&open, "other users may use it (mode 777; it must be 700)");
        // Made first by another user (as root, the tests can make one).
        if nix::unistd::geteuid().is_root() {
            let theirs = guard.path.join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
            nix::unistd::chown(&theirs, Some(65534.into()), Some(65534.into())).unwrap();
            all_refuse(&theirs, "it belongs to uid 65534, not to us (uid 0)");
        }
        // A link, even to a directory of ours.
        let ours = guard.path.join("ours");
        std::fs::create_dir(&ours).unwrap();
        std::fs::set_permissions(&ours, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = guard.path.join("link");
        std::os::unix::fs::symlink(&ours, &link).unwrap();
        all_refuse(&link, "it is a symbolic link");
        assert_eq!(std::fs::read_dir(&ours).unwrap().count(), 0, "nothing was started");
    });
}

#[test]
fn stop_never_unlinks_what_a_record_names_outside_its_directory() {
    within(60, || {
        let guard = Runtime::new("rt-forged");
        let rt = guard.path.join("rt");
        let d = rt.to_str().unwrap();
        let out = switchboard(&[
            "run",
            "--detach",
            "--runtime-dir",
            d,
            "--name",
            "c1",
            "--",
            "sleep",
            "1000",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        // The record now names a file elsewhere as its socket.
        let victim = guard.path.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let record = rt.join("c1").join("info.json");
        let mut info: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
        info["socket"] = victim.to_str().unwrap().into();
        std::fs::write(&record, info.to_string()).unwrap();
        let out = switchboard(&["stop", "--runtime-dir", d, "--grace", "1s", "c1"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(rt.join("c1").exists(), "stop keeps the records");
        let out = switchboard(&["rm", "--runtime-dir", d, "c1"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!rt.join("c1").exists(), "its own directory is removed");
    });
}

#[test]
fn attach_refuses_another_users_server_and_stop_takes_only_names() {
    within(60, || {
        let guard = Runtime::new("rt-peer");
        let d = guard.path.to_str().unwrap();
        // `..` is no container's name, and no way out of the runtime directory.
        let out = switchboard(&["stop", "--runtime-dir", d, ".."]);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("no container '..'"), "{}", stderr(&out));
        // A log directory others may write to (sticky or not) is refused.
        let open_logs = guard.path.join("logs");
        std::fs::create_dir(&open_logs).unwrap();
        std::fs::set_permissions(&open_logs, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let rt = guard.path.join("rt");
        let out = switchboard(&[
            "run",
            "--detach",
            "--runtime-dir",
            rt.to_str().unwrap(),
            "--log-dir",
            open_logs.to_str().unwrap(),
            "--",
            "true",
        ]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains("other users may write to it (mode 1777)"),
            "{}",
            stderr(&out)
        );
        // A switchboard of another user at the socket's path: attach refuses it (it would
        // hand that user our keystrokes). Root may start one as `nobody`.
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let mut sb = common::sb::Sb::start(common::sb::Opts {
            user: Some(65534),
            ..Default::default()
        });
        let out = Command::new(BIN)
            .args(["attach", "--no-stdin", sb.socket.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            stderr(&out),
            format!(
                "switchboard attach: refusing {}: its server runs as uid 65534, neither you nor root\n",
                sb.socket.display()
            )
        );
        sb.close_output();
        assert!(sb.wait(20).success());
    });
}
