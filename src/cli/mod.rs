//! Command lines: the stout flag grammar of the Mesos drop-in ([`stout`], [`mesos`]), and
//! the `switchboard` command's verbs ([`run`], [`attach`], [`serve`], and `ps`/`stop` in [`manage`]).

pub mod attach;
pub mod manage;
pub mod mesos;
pub mod run;
pub mod serve;
pub mod stout;

use std::path::Path;

/// Sends diagnostics (`tracing`) to `file` at `level` (default `info`); without a file
/// they are off. The drop-in never writes them to fds 1 and 2.
pub fn init_logging(file: Option<&Path>, level: Option<&str>) -> Result<(), String> {
    let Some(path) = file else { return Ok(()) };
    let level: tracing::Level = match level.unwrap_or("info") {
        l @ ("error" | "warn" | "info" | "debug" | "trace") => l.parse().expect("a level name"),
        other => {
            return Err(format!(
                "Unknown log level '{other}': use error, warn, info, debug or trace"
            ));
        }
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| {
            format!(
                "Failed to open the log file '{}': {}",
                path.display(),
                crate::sys::strerror(&e)
            )
        })?;
    tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .with_max_level(level)
        .with_target(false)
        .init();
    Ok(())
}
