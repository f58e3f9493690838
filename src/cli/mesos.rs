//! The command line of the drop-in `mesos-io-switchboard` (docs/protocol.md §2.1, §2.3): Mesos's
//! flags with Mesos's help texts, parsed with the stout grammar, and the checks and
//! messages of `switchboard_main.cpp`.

use std::path::PathBuf;
use std::time::Duration;

use super::stout::{self, Kind, Spec};
use crate::config::{
    Config, ConfigError, Descriptors, EngineChoice, LagPolicy, Limits, RelayConfig, RingConfig, WindowPolicy,
};

/// The program name Mesos prints in its usage, whatever `argv[0]` is.
pub const NAME: &str = "mesos-io-switchboard";

const USAGE_MESSAGE: &str = "Usage: mesos-io-switchboard [options]\n\
The io switchboard server is designed to feed stdin to a container\n\
from an external source, as well as redirect the stdin/stdout of a\n\
container to multiple targets.\n\
\n\
It runs an HTTP server over a unix domain socket in order to process\n\
incoming `ATTACH_CONTAINER_INPUT` and `ATTACH_CONTAINER_OUTPUT`\n\
calls and redirect a containers `stdin/stdout/stderr` through them.\n\
\n\
The primary motivation of this component is to enable support in\n\
mesos similar to `docker attach` and `docker exec` whereby an\n\
external client can attach to the stdin/stdout/stderr of a running\n\
container as well as launch arbitrary subcommands inside a container\n\
and attach to its stdin/stdout/stderr.\n";

/// Mesos's flags, with Mesos's help texts.
pub const SPECS: &[Spec] = &[
    Spec {
        name: "help",
        kind: Kind::Bool { default: false },
        help: "Prints this help message",
    },
    Spec {
        name: "tty",
        kind: Kind::Bool { default: false },
        help: "If a pseudo terminal has been allocated for the container.",
    },
    Spec {
        name: "stdin_to_fd",
        kind: Kind::Int,
        help: "The file descriptor where incoming stdin data should be written.",
    },
    Spec {
        name: "stdout_from_fd",
        kind: Kind::Int,
        help: "The file descriptor that should be read to consume stdout data.",
    },
    Spec {
        name: "stdout_to_fd",
        kind: Kind::Int,
        help: "A file descriptor where data read from\n'stdout_from_fd' should be redirected to.",
    },
    Spec {
        name: "stderr_from_fd",
        kind: Kind::Int,
        help: "The file descriptor that should be read to consume stderr data.",
    },
    Spec {
        name: "stderr_to_fd",
        kind: Kind::Int,
        help: "A file descriptor where data read from\n'stderr_from_fd' should be redirected to.",
    },
    Spec {
        name: "wait_for_connection",
        kind: Kind::Bool { default: false },
        help: "A boolean indicating whether the server should wait for the\n\
               first connection before reading any data from the '*_from_fd's.",
    },
    Spec {
        name: "socket_address",
        kind: Kind::String,
        help: "The path of the unix domain socket this\nio switchboard should attach itself to.",
    },
    Spec {
        name: "heartbeat_interval",
        kind: Kind::Duration,
        help: "A heartbeat interval (e.g. '5secs', '10mins') for messages to\n\
               be sent to any open 'ATTACH_CONTAINER_OUTPUT' connections.",
    },
    // Ours (Mesos never passes them): diagnostics, which never go to fds 1 and 2.
    Spec {
        name: "log_file",
        kind: Kind::String,
        help: "Where this switchboard writes its own diagnostics (never to stdout or\n\
               stderr, which carry the container's output). Also $SWITCHBOARD_LOG_FILE.\n\
               Off by default.",
    },
    Spec {
        name: "log_level",
        kind: Kind::String,
        help: "error, warn, info (the default), debug or trace.",
    },
    // Ours: limits (tuning.md says what each costs and buys).
    Spec {
        name: "history_bytes",
        kind: Kind::Int,
        help: "The output history: recent output kept once for every client, both\n\
               streams, in bytes (default: 8388608). A client that falls behind is\n\
               served from it; one further behind than it holds is disconnected (or,\n\
               with --lag_policy=block, holds the container back). Memory is taken\n\
               only while a client lags or --replay_bytes keeps output.",
    },
    Spec {
        name: "replay_bytes",
        kind: Kind::Int,
        help: "Output kept for clients that attach later (Switchboard-Tail) or\n\
               resume (Switchboard-From), however far every client is, in bytes\n\
               (default: 0). At most --history_bytes.",
    },
    Spec {
        name: "lag_policy",
        kind: Kind::String,
        help: "What happens to an output client further behind than the history\n\
               holds: 'disconnect' (the default; it can resume with Switchboard-From)\n\
               or 'block' (the container waits for it, for at most --block_timeout).",
    },
    Spec {
        name: "lag_limit",
        kind: Kind::Int,
        help: "An alias of --history_bytes (the lag an output client may have before\n\
               it is disconnected).",
    },
    Spec {
        name: "buffer_bytes",
        kind: Kind::Int,
        help: "Output buffer per container stream, in bytes (default: 1048576).",
    },
    Spec {
        name: "block_timeout",
        kind: Kind::Duration,
        help: "How long a blocking client (the one a --wait_for_connection server\n\
               waited for, or any with --lag_policy=block) may hold the container back\n\
               without taking half of what it is behind before it is disconnected\n\
               (default: 30secs).",
    },
    Spec {
        name: "ack_timeout",
        kind: Kind::Duration,
        help: "How long, once the input requests open at the end of output were\n\
               answered, their acknowledgements are waited for before exiting\n\
               anyway (default: 10secs).",
    },
    Spec {
        name: "drain_timeout",
        kind: Kind::Duration,
        help: "How long clients get to take the end of their streams at exit\n\
               (default: 5secs).",
    },
    Spec {
        name: "head_timeout",
        kind: Kind::Duration,
        help: "How long a connection may take to send a request head and bring its body\n\
               to a decision (a call body, an acknowledgement, an input request's first\n\
               record), and then to take a final response or to end a refused body\n\
               (default: 30secs). The input slot's holder has no time limit.",
    },
    Spec {
        name: "max_connections",
        kind: Kind::Int,
        help: "Open connections at most; more are closed at once (default: 4096).",
    },
    Spec {
        name: "max_head_bytes",
        kind: Kind::Int,
        help: "Largest request head (request line and headers), in bytes; larger\n\
               heads get 431 (default: 16384).",
    },
    Spec {
        name: "max_headers",
        kind: Kind::Int,
        help: "Most header fields in a request head; more get 431 (default: 64).",
    },
    Spec {
        name: "max_chunk_line",
        kind: Kind::Int,
        help: "Longest chunk-size line of a chunked body, extensions included, in\n\
               bytes; longer ones get 400 (default: 1024).",
    },
    Spec {
        name: "max_trailer_bytes",
        kind: Kind::Int,
        help: "Largest trailer section of a chunked body, in bytes; larger ones get\n\
               400 (default: 8192).",
    },
    Spec {
        name: "max_call_body",
        kind: Kind::Int,
        help: "Largest body of an ATTACH_CONTAINER_OUTPUT call, and largest first record\n\
               of an input request (the call that names the container), in bytes;\n\
               larger ones get 413 (default: 65536).",
    },
    Spec {
        name: "input_buffer",
        kind: Kind::Int,
        help: "Input bytes read ahead of a container that is slow to read its stdin;\n\
               past it the input connection is not read (default: 1048576).",
    },
    Spec {
        name: "zero_copy",
        kind: Kind::Bool { default: true },
        help: "Serve protobuf output clients by tee and splice of pipe pages rather\n\
               than by copies (JSON clients are always served by copies).",
    },
    Spec {
        name: "screen",
        kind: Kind::Bool { default: false },
        help: "With --tty, keep a model of the terminal's screen, so that an output\n\
               client that asks (Switchboard-Screen: 1) first gets one record that\n\
               redraws it. Off by default: Mesos's clients never ask, and it costs\n\
               CPU on every output byte (tuning.md).",
    },
    Spec {
        name: "window_size",
        kind: Kind::String,
        help: "With --tty, which size the terminal takes when several output clients\n\
               said theirs (Switchboard-Window): 'latest' (the default), 'smallest'\n\
               or 'largest'.",
    },
    Spec {
        name: "engine",
        kind: Kind::String,
        help: "The event engine: 'io_uring', 'epoll', or 'auto' (the default; also\n\
               taken from $SWITCHBOARD_ENGINE): io_uring where the kernel allows it,\n\
               else epoll, saying why in the log. 'io_uring' fails where it is\n\
               refused; 'epoll' never uses io_uring.",
    },
    Spec {
        name: "allowed_uids",
        kind: Kind::String,
        help: "Comma-separated user ids that may connect besides this process's own\n\
               user; others are answered 403. The socket is then created with mode\n\
               0666 instead of 0600. Off by default.",
    },
    Spec {
        name: "max_record",
        kind: Kind::Int,
        help: "Largest record of an input stream, in bytes (default: 1048576).",
    },
];

/// Our limits from the command line (unset: the defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tuning {
    pub history_bytes: Option<usize>,
    pub replay_bytes: Option<usize>,
    pub lag_policy: Option<LagPolicy>,
    pub buffer_bytes: Option<usize>,
    pub block_timeout: Option<Duration>,
    pub ack_timeout: Option<Duration>,
    pub drain_timeout: Option<Duration>,
    pub head_timeout: Option<Duration>,
    pub max_connections: Option<usize>,
    pub max_record: Option<usize>,
    pub max_head_bytes: Option<usize>,
    pub max_headers: Option<usize>,
    pub max_chunk_line: Option<usize>,
    pub max_trailer_bytes: Option<usize>,
    pub max_call_body: Option<usize>,
    pub input_buffer: Option<usize>,
    pub allowed_uids: Option<Vec<u32>>,
    pub zero_copy: Option<bool>,
    pub screen: Option<bool>,
    pub window_policy: Option<WindowPolicy>,
    pub engine: Option<EngineChoice>,
}

/// The validated flags of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flags {
    pub fds: Descriptors,
    pub wait_for_connection: bool,
    pub socket_address: PathBuf,
    pub heartbeat_interval: Option<Duration>,
    /// Ours: where diagnostics go, and how many; limits.
    pub log_file: Option<PathBuf>,
    pub log_level: Option<String>,
    pub tuning: Tuning,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Print this to stdout and exit 0.
    Help(String),
    /// Print this to stderr and exit 1.
    Usage(String),
    Run(Box<Flags>),
}

/// The full usage text, optionally preceded by a message.
pub fn usage(message: Option<&str>) -> String {
    stout::usage(SPECS, USAGE_MESSAGE, message)
}

/// Parses the arguments after `argv[0]` as `switchboard_main.cpp` does: `--help` (if it
/// was loaded before any error) prints usage; a load error prints itself and usage; then
/// the required flags are checked in Mesos's order, with Mesos's messages (the socket
/// flag's message says `--socket_path`, as Mesos's does).
pub fn parse(args: &[String]) -> Parsed {
    let outcome = stout::load(SPECS, args);
    let f = &outcome.loaded;
    if f.bool("help") {
        return Parsed::Help(usage(None) + "\n");
    }
    if let Some(e) = &outcome.error {
        return Parsed::Usage(usage(Some(e)) + "\n");
    }
    let required = |name: &str, shown: &str| {
        f.int(name).ok_or_else(|| {
            format!(
                "EXIT with status 1: {}",
                usage(Some(&format!("'--{shown}' is missing")))
            )
        })
    };
    let flags = (|| {
        let stdin_to_fd = required("stdin_to_fd", "stdin_to_fd")?;
        let stdout_from_fd = required("stdout_from_fd", "stdout_from_fd")?;
        let stdout_to_fd = required("stdout_to_fd", "stdout_to_fd")?;
        let stderr_from_fd = required("stderr_from_fd", "stderr_from_fd")?;
        let stderr_to_fd = required("stderr_to_fd", "stderr_to_fd")?;
        let socket_address = f
            .string("socket_address")
            .ok_or_else(|| format!("EXIT with status 1: {}", usage(Some("'--socket_path' is missing"))))?;
        Ok(Flags {
            fds: Descriptors {
                tty: f.bool("tty"),
                stdin_to_fd,
                stdout_from_fd,
                stdout_to_fd,
                stderr_from_fd,
                stderr_to_fd,
            },
            wait_for_connection: f.bool("wait_for_connection"),
            socket_address: PathBuf::from(socket_address),
            heartbeat_interval: f.duration("heartbeat_interval"),
            log_file: f.string("log_file").map(PathBuf::from),
            log_level: f.string("log_level").map(String::from),
            tuning: Tuning {
                history_bytes: history_bytes(f)?,
                replay_bytes: match f.int("replay_bytes") {
                    Some(0) => Some(0),
                    _ => positive(f, "replay_bytes", 1 << 30)?,
                },
                lag_policy: f.string("lag_policy").map(parse_lag_policy).transpose()?,
                buffer_bytes: positive(f, "buffer_bytes", 1 << 30)?,
                block_timeout: f.duration("block_timeout"),
                ack_timeout: f.duration("ack_timeout"),
                drain_timeout: f.duration("drain_timeout"),
                head_timeout: f.duration("head_timeout"),
                max_connections: positive(f, "max_connections", 1 << 20)?,
                max_record: positive(f, "max_record", 1 << 30)?,
                max_head_bytes: positive(f, "max_head_bytes", 1 << 20)?,
                max_headers: positive(f, "max_headers", 1024)?,
                max_chunk_line: positive(f, "max_chunk_line", 64 << 10)?,
                max_trailer_bytes: positive(f, "max_trailer_bytes", 1 << 20)?,
                max_call_body: positive(f, "max_call_body", 64 << 20)?,
                input_buffer: positive(f, "input_buffer", 1 << 30)?,
                allowed_uids: f.string("allowed_uids").map(parse_uids).transpose()?,
                // `None` is the default (on).
                zero_copy: (!f.bool("zero_copy")).then_some(false),
                screen: f.bool("screen").then_some(true),
                window_policy: f
                    .string("window_size")
                    .map(|w| WindowPolicy::parse(w).map_err(|e| usage(Some(&format!("Flag 'window_size' {e}"))) + "\n"))
                    .transpose()?,
                engine: match f.string("engine") {
                    Some(name) => Some(
                        EngineChoice::parse(name).map_err(|e| usage(Some(&format!("Flag 'engine': {e}"))) + "\n")?,
                    ),
                    None => EngineChoice::from_env().map_err(|e| usage(Some(&e)) + "\n")?,
                },
            },
        })
    })();
    match flags {
        Ok(flags) => Parsed::Run(Box::new(flags)),
        Err(text) => Parsed::Usage(text),
    }
}

impl Flags {
    /// The server configuration: Mesos's flags, our limit flags, and our defaults for the
    /// rest. Fails if the limits do not fit together.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let t = &self.tuning;
        let mut limits = Limits::default();
        limits.max_record = t.max_record.unwrap_or(limits.max_record);
        limits.max_connections = t.max_connections.unwrap_or(limits.max_connections);
        limits.drain_timeout = t.drain_timeout.unwrap_or(limits.drain_timeout);
        limits.head_timeout = t.head_timeout.unwrap_or(limits.head_timeout);
        limits.block_timeout = t.block_timeout.unwrap_or(limits.block_timeout);
        limits.ack_timeout = t.ack_timeout.unwrap_or(limits.ack_timeout);
        limits.max_call_body = t.max_call_body.unwrap_or(limits.max_call_body);
        limits.input_buffer = t.input_buffer.unwrap_or(limits.input_buffer);
        let http = &mut limits.http;
        http.max_head_bytes = t.max_head_bytes.unwrap_or(http.max_head_bytes);
        http.max_headers = t.max_headers.unwrap_or(http.max_headers);
        http.max_chunk_line = t.max_chunk_line.unwrap_or(http.max_chunk_line);
        http.max_trailer_bytes = t.max_trailer_bytes.unwrap_or(http.max_trailer_bytes);
        Ok(Config {
            fds: self.fds,
            wait_for_connection: self.wait_for_connection,
            socket: self.socket_address.clone(),
            heartbeat_interval: self.heartbeat_interval,
            allowed_uids: t.allowed_uids.clone(),
            zero_copy: t.zero_copy.unwrap_or(true),
            limits,
            relay: RelayConfig::sized(t.buffer_bytes, t.history_bytes, t.replay_bytes)?,
            lag_policy: t.lag_policy.unwrap_or_default(),
            screen: t.screen.unwrap_or(false),
            window_policy: t.window_policy.unwrap_or_default(),
            ring: RingConfig {
                engine: t.engine.unwrap_or_default(),
                ..RingConfig::default()
            },
        })
    }
}

/// `--history_bytes`, or its alias `--lag_limit` (not both).
fn history_bytes(f: &stout::Loaded) -> Result<Option<usize>, String> {
    match (
        positive(f, "history_bytes", 1 << 30)?,
        positive(f, "lag_limit", 1 << 30)?,
    ) {
        (Some(_), Some(_)) => Err(usage(Some(
            "Flags 'history_bytes' and 'lag_limit' name the same size: give one",
        )) + "\n"),
        (h, l) => Ok(h.or(l)),
    }
}

/// `--lag_policy`: disconnect or block.
fn parse_lag_policy(text: &str) -> Result<LagPolicy, String> {
    match text {
        "disconnect" => Ok(LagPolicy::Disconnect),
        "block" => Ok(LagPolicy::Block),
        other => Err(usage(Some(&format!(
            "Flag 'lag_policy' must be 'disconnect' or 'block', not '{other}'"
        ))) + "\n"),
    }
}

/// A comma-separated list of numeric user ids.
fn parse_uids(list: &str) -> Result<Vec<u32>, String> {
    list.split(',')
        .map(|u| u.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| {
            usage(Some(&format!(
                "Flag 'allowed_uids' must be user ids separated by commas, not '{list}'"
            ))) + "\n"
        })
}

/// A limit flag, which must be positive and at most `max` when given (past the bounds a
/// limit stops protecting anything, or costs memory at once).
fn positive(f: &stout::Loaded, name: &str, max: usize) -> Result<Option<usize>, String> {
    match f.int(name) {
        None => Ok(None),
        Some(v) if v > 0 && v as u64 <= max as u64 => Ok(Some(v as usize)),
        Some(v) => Err(usage(Some(&format!("Flag '{name}' must be between 1 and {max}, not {v}"))) + "\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_agents_argv_parses() {
        let argv = args(
            "--heartbeat_interval=30secs --help=false \
             --socket_address=/tmp/mesos-io-switchboard-1b4e28ba-2fa1-11d2-883f-0016d3cca427 \
             --stderr_from_fd=31 --stderr_to_fd=2 --stdin_to_fd=27 --stdout_from_fd=29 \
             --stdout_to_fd=1 --tty=false --wait_for_connection=false",
        );
        assert_eq!(
            parse(&argv),
            Parsed::Run(Box::new(Flags {
                fds: Descriptors {
                    tty: false,
                    stdin_to_fd: 27,
                    stdout_from_fd: 29,
                    stdout_to_fd: 1,
                    stderr_from_fd: 31,
                    stderr_to_fd: 2,
                },
                wait_for_connection: false,
                socket_address: "/tmp/mesos-io-switchboard-1b4e28ba-2fa1-11d2-883f-0016d3cca427".into(),
                heartbeat_interval: Some(Duration::from_secs(30)),
                log_file: None,
                log_level: None,
                tuning: Tuning::default(),
            }))
        );
        let tty = args(
            "--help=false --socket_address=/s --stderr_from_fd=27 --stderr_to_fd=2 --stdin_to_fd=27 --stdout_from_fd=27 --stdout_to_fd=1 --tty=true --wait_for_connection=true",
        );
        let Parsed::Run(f) = parse(&tty) else { panic!() };
        assert!(f.fds.tty && f.wait_for_connection && f.heartbeat_interval.is_none());
    }

    #[test]
    fn help_has_mesos_layout_and_texts() {
        let Parsed::Help(text) = parse(&args("--help")) else { panic!() };
        // Mesos's own flags alone print exactly Mesos's --help (2021 bytes); ours are
        // listed among them, in the same layout.
        let mesos_only = stout::usage(&SPECS[..10], USAGE_MESSAGE, None) + "\n";
        assert_eq!(mesos_only.len(), 2021);
        assert!(mesos_only.contains(
            "\n\n\n  --heartbeat_interval=VALUE     A heartbeat interval (e.g. '5secs', '10mins') for messages to\n                                 be sent to"
        ));
        assert!(mesos_only.ends_with("  --[no-]wait_for_connection     A boolean indicating whether the server should wait for the\n                                 first connection before reading any data from the '*_from_fd's. (default: false)\n\n"));
        for line in mesos_only.lines() {
            let line = line.trim_start();
            assert!(text.contains(line), "{line}");
        }
        assert!(text.contains("--log_file=VALUE"));
        assert!(text.starts_with("Usage: mesos-io-switchboard [options]\nThe io switchboard server"));
        let Parsed::Usage(e) = parse(&args("--foo")) else { panic!() };
        assert_eq!(e, format!("Failed to load unknown flag 'foo'\n\n{text}"));
    }

    #[test]
    fn limits_are_bounded_and_uids_numeric() {
        let base = "--socket_address=/s --stdin_to_fd=0 --stdout_from_fd=3 --stdout_to_fd=1 --stderr_from_fd=4 --stderr_to_fd=2";
        let first_line = |extra: &str| match parse(&args(&format!("{base} {extra}"))) {
            Parsed::Usage(u) => u.lines().next().unwrap().to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            first_line("--max_headers=5000"),
            "Flag 'max_headers' must be between 1 and 1024, not 5000"
        );
        assert_eq!(
            first_line("--lag_limit=0"),
            "Flag 'lag_limit' must be between 1 and 1073741824, not 0"
        );
        assert_eq!(
            first_line("--allowed_uids=1,x"),
            "Flag 'allowed_uids' must be user ids separated by commas, not '1,x'"
        );
        let Parsed::Run(f) = parse(&args(&format!("{base} --max_headers=1024 --allowed_uids=7,8"))) else {
            panic!()
        };
        assert_eq!(f.tuning.max_headers, Some(1024));
        assert_eq!(f.tuning.allowed_uids, Some(vec![7, 8]));
        assert_eq!(
            first_line("--lag_policy=wait"),
            "Flag 'lag_policy' must be 'disconnect' or 'block', not 'wait'"
        );
        assert_eq!(
            first_line("--lag_limit=1000000 --history_bytes=2000000"),
            "Flags 'history_bytes' and 'lag_limit' name the same size: give one"
        );
        let history = |extra: &str| {
            let Parsed::Run(f) = parse(&args(&format!("{base} {extra}"))) else { panic!() };
            let c = f.config().unwrap();
            (c.relay.history_bytes, c.relay.replay_bytes, c.lag_policy)
        };
        assert_eq!(history(""), (8 << 20, 0, LagPolicy::Disconnect));
        assert_eq!(
            history("--lag_limit=1000000 --replay_bytes=4096 --lag_policy=block"),
            (1_000_000, 4096, LagPolicy::Block)
        );
        let Parsed::Run(f) = parse(&args(&format!("{base} --history_bytes=300000 --replay_bytes=400000"))) else {
            panic!()
        };
        assert!(f.config().is_err(), "a replay larger than the history");
        assert_eq!(
            first_line("--engine=uring9"),
            "Flag 'engine': 'uring9' is not an engine: use auto, io_uring or epoll"
        );
        let engine = |extra: &str| {
            let Parsed::Run(f) = parse(&args(&format!("{base} {extra}"))) else { panic!() };
            f.config().unwrap().ring.engine
        };
        assert_eq!(engine("--engine=epoll"), EngineChoice::Epoll);
        assert_eq!(engine("--engine=io_uring"), EngineChoice::IoUring);
        assert_eq!(engine("--engine=auto"), EngineChoice::Auto);
    }

    #[test]
    fn missing_flags_in_mesos_order() {
        let missing = |a: &str| match parse(&args(a)) {
            Parsed::Usage(u) => u.lines().next().unwrap().to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(missing(""), "EXIT with status 1: '--stdin_to_fd' is missing");
        assert_eq!(
            missing("--stdin_to_fd=0 --stdout_from_fd=3 --stdout_to_fd=1 --stderr_from_fd=4"),
            "EXIT with status 1: '--stderr_to_fd' is missing"
        );
        assert_eq!(
            missing("--stdin_to_fd=0 --stdout_from_fd=3 --stdout_to_fd=1 --stderr_from_fd=4 --stderr_to_fd=2"),
            "EXIT with status 1: '--socket_path' is missing"
        );
        assert_eq!(missing("--socket_path=/x"), "Failed to load unknown flag 'socket_path'");
    }
}
