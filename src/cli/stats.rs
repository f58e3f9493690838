//! `switchboard stats`: what running switchboards are doing (their `/metrics`), one row
//! each, refreshed every second until interrupted, as `docker stats`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

use crate::agent::{self, supervisor};
use crate::client::metrics::{self, Figures};

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Containers (ids, or socket paths); all running ones under the runtime directory
    /// when none is named.
    #[arg(value_name = "ID|SOCKET")]
    pub targets: Vec<String>,
    /// Print the figures once and exit.
    #[arg(long)]
    pub no_stream: bool,
    /// The runtime directory (default: as for `run`).
    #[arg(long, value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
}

/// A container to show: its name in the table, and its socket.
struct Target {
    name: String,
    socket: PathBuf,
}

pub fn stats(args: &StatsArgs) -> ExitCode {
    let runtime = args.runtime_dir.clone().unwrap_or_else(agent::default_runtime_dir);
    let targets = match targets(args, &runtime) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("switchboard stats: {e}");
            return ExitCode::FAILURE;
        }
    };
    let terminal = crate::tty::is_terminal(std::os::fd::AsFd::as_fd(&std::io::stdout()));
    let mut last: Vec<Option<(Instant, Figures)>> = vec![None; targets.len()];
    loop {
        let mut out = String::new();
        let mut failed = false;
        out.push_str(&format!(
            "{:<14} {:<8} {:>7} {:>10} {:>10} {:>10} {:>10} {:>5} {:>10} {:>10} {:>9}\n",
            "CONTAINER",
            "ENGINE",
            "CLIENTS",
            "OUTPUT",
            "OUTPUT/S",
            "LOGGED",
            "SENT",
            "CUT",
            "HISTORY",
            "INPUT",
            "UPTIME"
        ));
        for (t, last) in targets.iter().zip(last.iter_mut()) {
            match metrics::fetch(&t.socket) {
                Ok(f) => {
                    let now = Instant::now();
                    out.push_str(&row(&t.name, &f, last.as_ref().map(|(at, prev)| (now - *at, prev))));
                    *last = Some((now, f));
                }
                Err(e) => {
                    failed = true;
                    out.push_str(&format!("{:<14} {e}\n", t.name));
                }
            }
        }
        if terminal && !args.no_stream {
            // Clear the screen and draw again from its top.
            out.insert_str(0, "\x1b[H\x1b[2J");
        }
        let mut stdout = std::io::stdout().lock();
        if stdout.write_all(out.as_bytes()).and_then(|()| stdout.flush()).is_err() {
            return ExitCode::SUCCESS;
        }
        if args.no_stream {
            return if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS };
        }
        drop(stdout);
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The named containers, or every running one.
fn targets(args: &StatsArgs, runtime: &std::path::Path) -> Result<Vec<Target>, String> {
    let by_socket = |t: &String| t.contains('/');
    // Sockets alone need no runtime directory (a drop-in's socket is in none); its
    // records only name them.
    let entries = match supervisor::list(runtime) {
        Ok(entries) => entries,
        Err(_) if !args.targets.is_empty() && args.targets.iter().all(by_socket) => Vec::new(),
        Err(e) => return Err(e.to_string()),
    };
    if args.targets.is_empty() {
        return Ok(entries
            .into_iter()
            .filter(|e| e.alive)
            .map(|e| Target {
                name: e.info.id,
                socket: e.info.socket,
            })
            .collect());
    }
    args.targets
        .iter()
        .map(|t| {
            if by_socket(t) {
                let socket = PathBuf::from(t);
                let name = entries
                    .iter()
                    .find(|e| e.info.socket == socket)
                    .map_or_else(|| t.clone(), |e| e.info.id.clone());
                return Ok(Target { name, socket });
            }
            entries
                .iter()
                .find(|e| e.info.id == *t)
                .map(|e| Target {
                    name: e.info.id.clone(),
                    socket: e.info.socket.clone(),
                })
                .ok_or_else(|| format!("no container '{t}' under {}", runtime.display()))
        })
        .collect()
}

/// One container's row; `since` is the previous sample, for the output rate.
fn row(name: &str, f: &Figures, since: Option<(Duration, &Figures)>) -> String {
    let output = f.sum("switchboard_output_read_bytes_total");
    let rate = match since {
        Some((dt, prev)) if dt.as_secs_f64() > 0.0 => {
            let delta = (output - prev.sum("switchboard_output_read_bytes_total")).max(0.0);
            format!("{}/s", bytes(delta / dt.as_secs_f64()))
        }
        _ => "-".to_string(),
    };
    format!(
        "{:<14} {:<8} {:>7} {:>10} {:>10} {:>10} {:>10} {:>5} {:>10} {:>10} {:>9}\n",
        name,
        f.label("switchboard_build_info", "engine").unwrap_or("?"),
        f.sum("switchboard_output_clients") as u64,
        bytes(output),
        rate,
        bytes(f.sum("switchboard_output_logged_bytes_total")),
        bytes(f.sum("switchboard_output_sent_bytes_total")),
        f.sum("switchboard_output_clients_cut_total") as u64,
        bytes(f.sum("switchboard_history_bytes")),
        bytes(f.sum("switchboard_input_bytes_total")),
        duration(f.sum("switchboard_uptime_seconds")),
    )
}

/// A byte count in B, KiB, MiB or GiB.
fn bytes(n: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{v:.0}B"),
        _ => format!("{v:.1}{}", UNITS[unit]),
    }
}

/// Seconds as `1h02m`, `3m04s` or `5s`.
fn duration(secs: f64) -> String {
    let s = secs as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(bytes(512.0), "512B");
        assert_eq!(bytes(1536.0), "1.5KiB");
        assert_eq!(bytes(3.0 * 1024.0 * 1024.0 * 1024.0), "3.0GiB");
        assert_eq!(duration(5.9), "5s");
        assert_eq!(duration(184.0), "3m04s");
        assert_eq!(duration(3720.0), "1h02m");
    }
}
