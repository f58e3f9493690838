//! A TTY container's terminal, as the output engine keeps it: the screen model
//! ([`crate::screen`], unless `--screen=false`), fed by the copy engine with every byte
//! read, and the sizes the attached clients asked for (`Switchboard-Window`), of which
//! `--window_size` picks the one the PTY takes. Its own descriptor of the PTY master (a
//! duplicate) sets the size.
//!
//! The model runs on what the container writes: should the emulator panic on some
//! sequence, the model is dropped (clients then get no redraw), never the server.

use std::os::fd::{AsFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::config::WindowPolicy;
use crate::screen::Screen;

/// A size the terminal takes when nothing said one (the PTY's own is 0 x 0).
const DEFAULT_SIZE: (u16, u16) = (24, 80);

/// A size an attached client asked for.
struct Window {
    /// The output client's index.
    client: usize,
    /// The terminal it named (`Switchboard-Terminal`): an input request that names it
    /// too resizes this window.
    terminal: Option<String>,
    size: (u16, u16),
    /// When it was said (larger: later).
    said: u64,
}

pub(super) struct Terminal {
    screen: Option<Screen>,
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

    /// Whether the screen is modelled.
    pub fn has_screen(&self) -> bool {
        self.screen.is_some()
    }

    /// Runs `f` on the model, if there is one; a panic in it drops the model.
    fn model<T>(&mut self, what: &str, f: impl FnOnce(&mut Screen) -> T) -> Option<T> {
        let screen = self.screen.as_mut()?;
        match catch_unwind(AssertUnwindSafe(|| f(screen))) {
            Ok(v) => Some(v),
            Err(_) => {
                tracing::error!("the screen model failed ({what}): it is dropped, and clients get no redraw");
                self.screen = None;
                None
            }
        }
    }

    /// The next output bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.model("reading output", |s| s.feed(bytes));
    }

    /// A redraw of the screen, if it is modelled, at the PTY's size (which the
    /// container may have set itself, with `stty rows`, since we last did).
    pub fn redraw(&mut self) -> Option<Vec<u8>> {
        if let Ok(size) = crate::tty::window_size(self.pty.as_fd())
            && size.0 > 0
            && size.1 > 0
            && size != self.size
        {
            self.size = size;
            self.model("resizing", |s| s.resize(size.0, size.1));
        }
        self.model("redrawing", |s| s.redraw())
    }

    /// Sets the PTY (its programs get SIGWINCH) and the model to `size`.
    fn set(&mut self, size: (u16, u16)) -> std::io::Result<()> {
        crate::tty::set_window_size(self.pty.as_fd(), size.0, size.1)?;
        if self.size != size {
            self.size = size;
            self.model("resizing", |s| s.resize(size.0, size.1));
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

    /// Output client `client` (of the terminal named `terminal`, if it named one)
    /// attached with a window of `size`.
    pub fn attached(&mut self, client: usize, terminal: Option<String>, size: (u16, u16)) {
        self.said += 1;
        self.windows.push(Window {
            client,
            terminal,
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

    /// An input request asked for `size`: when it names a terminal an attached client
    /// named, that terminal's window changes and the policy decides; otherwise (the
    /// Mesos agent) the size is set as asked.
    pub fn input_resize(&mut self, terminal: Option<&str>, size: (u16, u16)) -> std::io::Result<()> {
        self.said += 1;
        let said = self.said;
        let mut known = false;
        for w in self
            .windows
            .iter_mut()
            .filter(|w| terminal.is_some() && w.terminal.as_deref() == terminal)
        {
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
        let a = || Some("a".to_string());
        let b = || Some("b".to_string());
        t.attached(0, a(), (40, 120));
        t.attached(1, b(), (30, 150));
        assert_eq!(size(&pty), (30, 120));
        assert_eq!(t.screen.as_ref().unwrap().size(), (30, 120));
        t.detached(1);
        assert_eq!(size(&pty), (40, 120));

        let (mut t, pty) = terminal(WindowPolicy::Largest);
        t.attached(0, a(), (40, 120));
        t.attached(1, b(), (30, 150));
        assert_eq!(size(&pty), (40, 150));
        // An input resize of the same terminal is its window's.
        t.input_resize(Some("a"), (50, 100)).unwrap();
        assert_eq!(size(&pty), (50, 150));

        let (mut t, pty) = terminal(WindowPolicy::Latest);
        t.attached(0, a(), (40, 120));
        t.attached(1, b(), (30, 150));
        assert_eq!(size(&pty), (30, 150));
        t.input_resize(Some("a"), (20, 60)).unwrap();
        assert_eq!(size(&pty), (20, 60));
        // One that names no window sets the size as it asks.
        t.input_resize(None, (33, 99)).unwrap();
        assert_eq!(size(&pty), (33, 99));
        assert_eq!(t.screen.as_ref().unwrap().size(), (33, 99));
        t.detached(0);
        assert_eq!(size(&pty), (30, 150), "the latest window left");
    }

    #[test]
    fn a_size_the_container_set_itself_is_the_redraws() {
        let (mut t, pty) = terminal(WindowPolicy::Latest);
        crate::tty::set_window_size(pty.slave.as_fd(), 30, 100).unwrap();
        assert!(t.redraw().is_some());
        assert_eq!(t.screen.as_ref().unwrap().size(), (30, 100));
    }

    #[test]
    fn a_model_that_panics_is_dropped_not_the_server() {
        let (mut t, _pty) = terminal(WindowPolicy::Latest);
        t.feed(b"hello");
        assert!(t.redraw().is_some());
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let r = t.model("a test", |_| panic!("the emulator failed"));
        std::panic::set_hook(hook);
        assert_eq!(r, None::<()>);
        assert!(!t.has_screen());
        t.feed(b"more");
        assert_eq!(t.redraw(), None);
    }
}
