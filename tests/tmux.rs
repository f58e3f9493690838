//! Detach from a full-screen program and attach again, in a real terminal (tmux): the
//! pane shows what it showed before detaching (the switchboard redraws its screen model),
//! and attaching from a larger terminal gives the program that size.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::sb::{Runtime, binary};

/// A tmux server of its own (`-L`), ended by its pid when dropped.
struct Tmux {
    name: String,
    pid: Option<i32>,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.name, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux runs");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pane's visible text, rows with their trailing blanks cut.
    fn pane(&self) -> String {
        let text = self.run(&["capture-pane", "-p", "-t", "t"]);
        text.lines().map(str::trim_end).collect::<Vec<_>>().join("\n")
    }

    fn wait_for(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pane = self.pane();
            if cond(&pane) {
                return pane;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the pane:\n{pane}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        self.run(&args);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Draws on the alternate screen with cursor addressing, and says its size on SIGWINCH.
const PROGRAM: &str = r#"printf '\033[?1049h\033[2J'
i=1
while [ $i -le 10 ]; do printf '\033[%d;%dH\033[1mrow %d\033[0m' $i $((i * 3)) $i; i=$((i + 1)); done
printf '\033[12;1Hstarted at %s' "$(stty size)"
trap 'printf "\033[14;1Hnow %s" "$(stty size)"' WINCH
while :; do sleep 0.1; done"#;

#[test]
fn attaching_again_shows_the_same_screen_and_a_larger_terminal_resizes_the_program() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("\n*** the tmux test DID NOT RUN: tmux is missing (Debian: apt-get install tmux) ***\n");
        return;
    }
    let rt = Runtime::new("tmux");
    let sb = binary("switchboard");
    let mut tmux = Tmux {
        name: format!("sb-test-{}", std::process::id()),
        pid: None,
    };
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "80",
        "-y",
        "24",
        "env PS1='$ ' sh",
    ]);
    tmux.pid = tmux.run(&["display-message", "-p", "#{pid}"]).trim().parse().ok();
    let script = rt.path.join("program.sh");
    std::fs::write(&script, PROGRAM).unwrap();
    let run = format!(
        "{} run --tty --name full --runtime-dir {} -- sh {}",
        sb.display(),
        rt.path.display(),
        script.display()
    );
    tmux.keys(&[&run, "Enter"]);
    let before = tmux.wait_for("the program's screen", |p| {
        p.contains("row 10") && p.contains("started at 24 80")
    });

    // Detach (ctrl-p ctrl-q), and attach again from the same terminal.
    tmux.keys(&["C-p", "C-q"]);
    // The detach leaves the program's alternate screen: the pane shows the shell again.
    let detached = tmux.wait_for("the detach", |p| p.contains("detached"));
    assert!(!detached.contains("row 10"), "{detached}");
    let socket = socket_of(&rt.path, "full");
    tmux.keys(&[&format!("clear; {} attach {}", sb.display(), socket), "Enter"]);
    // The pane shows what it showed before the detach.
    tmux.wait_for("the screen as it was", |p| p == before);

    // From a terminal of 120x40: the program gets that size, and says so.
    tmux.keys(&["C-p", "C-q"]);
    tmux.wait_for("the second detach", |p| p.contains("detached"));
    tmux.run(&["resize-window", "-t", "t", "-x", "120", "-y", "40"]);
    tmux.keys(&[&format!("clear; {} attach {}", sb.display(), socket), "Enter"]);
    let larger = tmux.wait_for("the new size", |p| p.contains("now 40 120"));
    assert!(
        larger.contains("row 10") && larger.contains("started at 24 80"),
        "{larger}"
    );
}

/// The socket of container `id`, from `switchboard ps`.
fn socket_of(runtime: &Path, id: &str) -> String {
    let out = common::sb::cli(runtime, &["ps", "--format", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .expect("the container");
    c["socket"].as_str().unwrap().to_string()
}
