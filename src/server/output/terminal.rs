//! A TTY container's terminal, as the output engine keeps it: the screen model
//! ([`crate::screen`], unless `--screen=false`), fed by the copy engine with every byte
//! read, and the sizes the attached clients asked for (`Switchboard-Window`), of which
//! `--window_size` picks the one the PTY takes. Its own descriptor of the PTY master (a
//! duplicate) sets the size.

use std::os::fd::{AsFd, OwnedFd};

use crate::config::WindowPolicy;
use crate::screen::Screen;

/// A size the terminal takes when nothing said one (the PTY's own is 0 x 0).
const DEFAULT_SIZE: (u16, u16) = (24, 80);

/// A size an attached client asked for.
struct Window {
    /// The output client's index.
    client: usize,
    /// Its peer's process: an input resize from the same process is the same terminal's.
    pid: Option<i32>,
    size: (u16, u16),
    /// When it was said (larger: later).
    said: u64,
}

pub(super) struct Terminal {
    pub screen: Option<Screen>,
    /// Its size (the model's, when there is one).
    size: (u16, u16),
    pty: OwnedFd,
    policy: WindowPolicy,
    windows: Vec<Window>,
    said: u64,
}

impl Terminal {
    /// The terminal of the PTY master `pty`, at its present size, with a screen model
    /// when `screen`.
    pub fn new(pty: OwnedFd, policy: WindowPolicy, screen: bool) -> Terminal {
        let (rows, columns) = match crate::tty::window_size(pty.as_fd()) {
            Ok((rows, columns)) if rows > 0 && columns > 0 => (rows, columns),
            _ => DEFAULT_SIZE,
        };
        Terminal {
            screen: screen.then(|| Screen::new(rows, columns)),
            size: (rows, columns),
            pty,
            policy,
            windows: Vec::new(),
            said: 0,
        }
    }

    /// The size the attached clients' windows make, by the policy; `None` without any.
    fn decided(&self) -> Option<(u16, u16)> {
        let sizes = self.windows.iter().map(|w| w.size);
        match self.policy {
            WindowPolicy::Latest => self.windows.iter().max_by_key(|w| w.said).map(|w| w.size),
            WindowPolicy::Smallest => sizes.reduce(|a, b| (a.0.min(b.0), a.1.min(b.1))),
            WindowPolicy::Largest => sizes.reduce(|a, b| (a.0.max(b.0), a.1.max(b.1))),
        }
    }

    /// Sets the PTY (its programs get SIGWINCH) and the model to `size`.
    fn set(&mut self, size: (u16, u16)) -> std::io::Result<()> {
        crate::tty::set_window_size(self.pty.as_fd(), size.0, size.1)?;
        if self.size != size {
            self.size = size;
            if let Some(screen) = &mut self.screen {
                screen.resize(size.0, size.1);
            }
        }
        Ok(())
    }

    /// Takes the size the windows decide, if they decide one.
    fn settle(&mut self) {
        if let Some(size) = self.decided()
            && let Err(e) = self.set(size)
        {
            tracing::warn!("cannot set the terminal's size to {}x{}: {e}", size.0, size.1);
        }
    }

    /// Output client `client` (of process `pid`) attached with a window of `size`.
    pub fn attached(&mut self, client: usize, pid: Option<i32>, size: (u16, u16)) {
        self.said += 1;
        self.windows.push(Window {
            client,
            pid,
            size,
            said: self.said,
        });
        self.settle();
    }

    /// Output client `client` left: its window no longer counts.
    pub fn detached(&mut self, client: usize) {
        let before = self.windows.len();
        self.windows.retain(|w| w.client != client);
        if self.windows.len() != before {
            self.settle();
        }
    }

    /// An input request (of process `pid`) asked for `size`: the window of that process's
    /// attached clients changes with it; a process with none (the Mesos agent) sets the
    /// size as it asks.
    pub fn input_resize(&mut self, pid: Option<i32>, size: (u16, u16)) -> std::io::Result<()> {
        self.said += 1;
        let said = self.said;
        let mut known = false;
        for w in self.windows.iter_mut().filter(|w| pid.is_some() && w.pid == pid) {
            w.size = size;
            w.said = said;
            known = true;
        }
        match known {
            true => match self.decided() {
                Some(decided) => self.set(decided),
                None => Ok(()),
            },
            false => self.set(size),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terminal(policy: WindowPolicy) -> (Terminal, crate::tty::Pty) {
        let pty = crate::tty::open().unwrap();
        let master = pty.master.as_fd().try_clone_to_owned().unwrap();
        (Terminal::new(master, policy, true), pty)
    }

    fn size(pty: &crate::tty::Pty) -> (u16, u16) {
        crate::tty::window_size(pty.slave.as_fd()).unwrap()
    }

    #[test]
    fn the_policy_picks_the_size_among_the_windows() {
        let (mut t, pty) = terminal(WindowPolicy::Smallest);
        assert_eq!(t.screen.as_ref().unwrap().size(), DEFAULT_SIZE, "a PTY of 0 x 0");
        t.attached(0, Some(10), (40, 120));
        t.attached(1, Some(11), (30, 150));
        assert_eq!(size(&pty), (30, 120));
        assert_eq!(t.screen.as_ref().unwrap().size(), (30, 120));
        t.detached(1);
        assert_eq!(size(&pty), (40, 120));

        let (mut t, pty) = terminal(WindowPolicy::Largest);
        t.attached(0, Some(10), (40, 120));
        t.attached(1, Some(11), (30, 150));
        assert_eq!(size(&pty), (40, 150));
        // The same process's input resize is its window's.
        t.input_resize(Some(10), (50, 100)).unwrap();
        assert_eq!(size(&pty), (50, 150));

        let (mut t, pty) = terminal(WindowPolicy::Latest);
        t.attached(0, Some(10), (40, 120));
        t.attached(1, Some(11), (30, 150));
        assert_eq!(size(&pty), (30, 150));
        t.input_resize(Some(10), (20, 60)).unwrap();
        assert_eq!(size(&pty), (20, 60));
        // A process without a window sets the size as it asks.
        t.input_resize(Some(99), (33, 99)).unwrap();
        assert_eq!(size(&pty), (33, 99));
        assert_eq!(t.screen.as_ref().unwrap().size(), (33, 99));
        t.detached(0);
        assert_eq!(size(&pty), (30, 150), "the latest window left");
    }
}
