//! A real terminal for a command under test: the command gets a PTY slave as its stdin,
//! stdout, stderr and controlling terminal; the test types into the master and reads
//! what the command shows.

use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

pub struct Term {
    pub master: OwnedFd,
    /// A slave descriptor of our own, to look at the terminal's settings.
    pub slave: OwnedFd,
    pub child: Child,
    /// Everything the command has shown so far.
    pub screen: Vec<u8>,
}

impl Term {
    /// Starts `cmd` on a new terminal of `rows` x `columns`.
    pub fn spawn(mut cmd: Command, rows: u16, columns: u16) -> Term {
        let pty = switchboard::tty::open().unwrap();
        switchboard::tty::set_window_size(pty.master.as_fd(), rows, columns).unwrap();
        cmd.stdin(Stdio::from(pty.slave.try_clone().unwrap()))
            .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
            .stderr(Stdio::from(pty.slave.try_clone().unwrap()));
        switchboard::tty::new_session(&mut cmd, true, 2);
        let child = cmd.spawn().unwrap();
        drop(cmd);
        Term {
            master: pty.master,
            slave: pty.slave,
            child,
            screen: Vec::new(),
        }
    }

    pub fn type_bytes(&self, bytes: &[u8]) {
        super::sb::write_all(&self.master, bytes);
    }

    pub fn resize(&self, rows: u16, columns: u16) {
        switchboard::tty::set_window_size(self.master.as_fd(), rows, columns).unwrap();
    }

    /// Reads what the command shows for up to `wait`.
    fn pump(&mut self, wait: Duration) -> bool {
        let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
        if poll(&mut fds, PollTimeout::from(ms)).unwrap_or(0) == 0 {
            return false;
        }
        let mut buf = [0u8; 4096];
        match nix::unistd::read(&self.master, &mut buf) {
            Ok(n) if n > 0 => {
                self.screen.extend_from_slice(&buf[..n]);
                true
            }
            _ => false,
        }
    }

    /// Waits until the screen shows `text` after position `from`; returns where it ends.
    pub fn expect_from(&mut self, from: usize, text: &str, secs: u64) -> usize {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(i) = find(&self.screen[from.min(self.screen.len())..], text.as_bytes()) {
                return from + i + text.len();
            }
            assert!(
                Instant::now() < deadline,
                "waited for {text:?}; the screen shows {:?}",
                String::from_utf8_lossy(&self.screen[from.min(self.screen.len())..])
            );
            self.pump(Duration::from_millis(50));
        }
    }

    pub fn expect(&mut self, text: &str, secs: u64) -> usize {
        self.expect_from(0, text, secs)
    }

    /// Waits for the command to exit, reading the screen meanwhile.
    pub fn wait(&mut self, secs: u64) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                while self.pump(Duration::from_millis(20)) {}
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the command did not exit; the screen shows {:?}",
                self.text()
            );
            self.pump(Duration::from_millis(20));
        }
    }

    /// Whether the terminal is in its normal (cooked) mode: line editing and echo on.
    pub fn is_cooked(&self) -> bool {
        use nix::sys::termios::LocalFlags;
        let t = nix::sys::termios::tcgetattr(&self.slave).unwrap();
        t.local_flags.contains(LocalFlags::ICANON | LocalFlags::ECHO)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.screen).into_owned()
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
