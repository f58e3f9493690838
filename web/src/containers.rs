//! The containers of the runtime directory, as the page lists them (the same records
//! `switchboard ps -a` reads; only the user's own runtime directory is read).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use switchboard::agent::supervisor::{self, State};
use switchboard::client::metrics;

/// Every container: id, command, terminal or not, running or how it ended, and how many
/// clients its switchboard serves (when it runs).
pub fn list(runtime: &Path) -> Result<Vec<Value>, String> {
    let entries = supervisor::list(runtime).map_err(|e| format!("{}: {e}", runtime.display()))?;
    Ok(entries
        .iter()
        .map(|e| {
            let (status, exit) = match e.state() {
                State::Running => ("running", None),
                State::Ended(r) => ("exited", Some(r)),
                State::Gone => ("gone", None),
            };
            let clients = match e.alive {
                true => metrics::fetch(&e.info.socket)
                    .ok()
                    .map(|f| f.sum("switchboard_output_clients") as u64),
                false => None,
            };
            json!({
                "id": e.info.id,
                "command": e.info.command,
                "tty": e.info.tty,
                "status": status,
                "exit_code": exit.as_ref().map(|r| r.shell_code()),
                "ended": exit.as_ref().map(|r| r.describe()),
                "created": e.info.created,
                "clients": clients,
            })
        })
        .collect())
}

/// A container of the runtime directory: its directory, its switchboard's socket, and
/// whether it has a terminal.
#[derive(Debug, Clone)]
pub struct Container {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub tty: bool,
}

/// The container `id` (a name: no path), if the runtime directory has it.
pub fn find(runtime: &Path, id: &str) -> Option<Container> {
    if id.contains('/') {
        return None;
    }
    let dir = switchboard::cli::manage::resolve(runtime, id).ok()?;
    let info = switchboard::agent::Info::load(&dir).ok()?;
    Some(Container {
        dir,
        socket: info.socket,
        tty: info.tty,
    })
}
