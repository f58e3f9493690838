//! The containers recorded under a runtime directory, and whether each runs or how it
//! ended: what `ps`, `stats` and the web page list.

use std::io;
use std::path::{Path, PathBuf};

use super::{ExitRecord, Info};

/// One container under a runtime directory, as `ps` shows it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dir: PathBuf,
    pub info: Info,
    pub alive: bool,
}

/// What `ps` says of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Running,
    Ended(ExitRecord),
    /// Not running, and how it ended was not recorded.
    Gone,
}

impl Entry {
    /// Whether it runs, or how it ended.
    pub fn state(&self) -> State {
        let container_alive = self.info.container().is_some_and(|c| c.group_alive());
        match ExitRecord::load(&self.dir).ok().flatten() {
            Some(record) if !container_alive => State::Ended(record),
            _ if self.alive || container_alive => State::Running,
            _ => State::Gone,
        }
    }
}

/// Every container recorded under `runtime_dir`, by id; an error when the runtime
/// directory is not private to us (see [`super::dirs`]). Records that are not ours are
/// skipped.
pub fn list(runtime_dir: &Path) -> io::Result<Vec<Entry>> {
    if !super::dirs::check_private(runtime_dir)? {
        return Ok(Vec::new());
    }
    let dirs = std::fs::read_dir(runtime_dir)?;
    let mut entries: Vec<Entry> = dirs
        .flatten()
        .filter_map(|d| {
            let dir = d.path();
            let info = Info::load(&dir).ok()?;
            let alive = info.server().is_some_and(|p| p.is_alive());
            Some(Entry { dir, info, alive })
        })
        .collect();
    entries.sort_by(|a, b| a.info.id.cmp(&b.info.id));
    Ok(entries)
}
