//! `switchboard serve`: the server with friendly flags, for people who hold their own
//! descriptors (the drop-in takes Mesos's flags instead).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::stout::FlagError;

use crate::config::{
    Config, ConfigError, Descriptors, EngineChoice, LagPolicy, Limits, RelayConfig, RingConfig, WindowPolicy,
};

/// Parses a duration: stout's form (`30secs`, `100ms`, `2mins`) or the short units
/// `s`, `m`, `h` (`30s`, `5m`).
pub fn parse_duration(s: &str) -> Result<Duration, FlagError> {
    let short = |suffix: &str, unit: u64| {
        let n = s.strip_suffix(suffix)?.parse::<u64>().ok()?;
        Some(
            n.checked_mul(unit)
                .map(Duration::from_secs)
                .ok_or_else(|| FlagError(format!("Duration '{s}' is too long"))),
        )
    };
    if let Some(d) = short("s", 1).or_else(|| short("m", 60)).or_else(|| short("h", 3600)) {
        return d;
    }
    super::stout::parse_duration(s)
}

/// What `switchboard serve` (and the servers `switchboard run` starts) keep for replay:
/// for late clients on pipes, and on a terminal too for clients that resume where their
/// connection dropped (a fresh attach to a terminal starts at the newest output: its
/// screen is not its bytes).
pub const DEFAULT_REPLAY: usize = 1 << 20;

/// `--lag-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LagPolicyArg {
    /// Disconnect it; it can resume where it was while the history holds it.
    Disconnect,
    /// The container waits for it (at most the block timeout without real progress).
    Block,
}

/// `--window-size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WindowSizeArg {
    Latest,
    Smallest,
    Largest,
}

/// The flags of `switchboard serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Unix socket path to serve the attach API on (created mode 0600; at most 95 bytes).
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// A PTY master: the container's stdin, stdout and stderr all at once (TTY mode).
    #[arg(long, value_name = "FD", conflicts_with_all = ["stdin_fd", "stdout_fd", "stderr_fd"])]
    pub pty_fd: Option<i32>,
    /// Where client input goes: the write end of the container's stdin pipe.
    #[arg(long, value_name = "FD", required_unless_present = "pty_fd")]
    pub stdin_fd: Option<i32>,
    /// The read end of the container's stdout pipe.
    #[arg(long, value_name = "FD", required_unless_present = "pty_fd")]
    pub stdout_fd: Option<i32>,
    /// The read end of the container's stderr pipe.
    #[arg(long, value_name = "FD", required_unless_present = "pty_fd")]
    pub stderr_fd: Option<i32>,
    /// Where every byte of the container's stdout is logged.
    #[arg(long, value_name = "FD", default_value_t = 1)]
    pub stdout_log_fd: i32,
    /// Where every byte of the container's stderr is logged (unused with --pty-fd).
    #[arg(long, value_name = "FD", default_value_t = 2)]
    pub stderr_log_fd: i32,
    /// Read nothing from the container until the first output client attaches (or a
    /// SIGTERM), so that client gets everything.
    #[arg(long)]
    pub wait_for_connection: bool,
    /// Send a heartbeat record to output clients this often (e.g. 30s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub heartbeat: Option<Duration>,
    /// The output history, in bytes (default 8 MiB, at most 1 GiB): recent output kept
    /// once for every client. A client that falls behind is served from it; one further behind than it
    /// holds is disconnected (or, with --lag-policy block, holds the container back).
    #[arg(long, value_name = "BYTES", alias = "lag-limit")]
    pub history_bytes: Option<usize>,
    /// Output kept for clients that attach later or resume, however far every client is
    /// (default: 1 MiB; at most the history).
    #[arg(long, value_name = "BYTES")]
    pub replay_bytes: Option<usize>,
    /// What happens to an output client further behind than the history holds.
    #[arg(long, value_enum, default_value = "disconnect")]
    pub lag_policy: LagPolicyArg,
    /// Output buffer per container stream, in bytes (default 1 MiB, at most 1 GiB).
    #[arg(long, value_name = "BYTES")]
    pub buffer_bytes: Option<usize>,
    /// How long clients get to take the end of their streams at exit.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// Users (numeric ids, comma-separated) who may connect besides this process's own;
    /// others are answered 403. The socket is then created with mode 0666, not 0600.
    #[arg(long, value_name = "UID,...", value_delimiter = ',')]
    pub allowed_uids: Option<Vec<u32>>,
    /// Serve every client by copies, not by tee and splice of pipe pages.
    #[arg(long)]
    pub no_zero_copy: bool,
    /// With --pty-fd, keep a model of the terminal's screen, so that a client that asks
    /// (Switchboard-Screen: 1; `switchboard attach` does) first gets a redraw of it. It
    /// costs CPU on every output byte (tuning.md).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub screen: bool,
    /// With --pty-fd, which size the terminal takes when several attached clients said
    /// theirs (Switchboard-Window): that of the latest, or the smallest or largest rows and
    /// columns among them.
    #[arg(long, value_enum, default_value = "latest")]
    pub window_size: WindowSizeArg,
    /// The event engine: auto (io_uring where the kernel allows it, else epoll, saying
    /// why in the log), io_uring (fail where it is refused) or epoll.
    #[arg(long, value_name = "ENGINE", env = "SWITCHBOARD_ENGINE", default_value = "auto", value_parser = EngineChoice::parse)]
    pub engine: EngineChoice,
    /// Write diagnostics to this file (once serving, never to stdout or stderr; a
    /// start-up failure is also said on stderr).
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Diagnostics level: error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,
}

impl ServeArgs {
    /// The server configuration these flags describe.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let (tty, stdin, stdout, stderr) = match self.pty_fd {
            Some(fd) => (true, fd, fd, fd),
            None => (
                false,
                self.stdin_fd.expect("clap requires it"),
                self.stdout_fd.expect("clap requires it"),
                self.stderr_fd.expect("clap requires it"),
            ),
        };
        let mut limits = Limits::default();
        limits.drain_timeout = self.drain_timeout.unwrap_or(limits.drain_timeout);
        let replay = self.replay_bytes.unwrap_or(DEFAULT_REPLAY);
        let relay = RelayConfig::sized(self.buffer_bytes, self.history_bytes, Some(replay))?;
        Ok(Config {
            fds: Descriptors {
                tty,
                stdin_to_fd: stdin,
                stdout_from_fd: stdout,
                stdout_to_fd: self.stdout_log_fd,
                stderr_from_fd: stderr,
                stderr_to_fd: self.stderr_log_fd,
            },
            wait_for_connection: self.wait_for_connection,
            socket: self.socket.clone(),
            heartbeat_interval: self.heartbeat,
            allowed_uids: self.allowed_uids.clone(),
            zero_copy: !self.no_zero_copy,
            limits,
            relay,
            lag_policy: match self.lag_policy {
                LagPolicyArg::Disconnect => LagPolicy::Disconnect,
                LagPolicyArg::Block => LagPolicy::Block,
            },
            screen: self.screen,
            window_policy: match self.window_size {
                WindowSizeArg::Latest => WindowPolicy::Latest,
                WindowSizeArg::Smallest => WindowPolicy::Smallest,
                WindowSizeArg::Largest => WindowPolicy::Largest,
            },
            ring: RingConfig {
                engine: self.engine,
                ..RingConfig::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("30secs"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration(&format!("{}h", u64::MAX)).is_err());
    }
}
