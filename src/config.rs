//! Every setting of a server in one place: what clients may make it hold, how long each
//! wait lasts, the sizes of the output relay, the delivery path and the ring. Plain data,
//! checked here; the drop-in builds a [`Config`] from Mesos's flags (`cli::mesos`),
//! `switchboard serve` from its own (`cli::serve`). tuning.md says what each knob costs
//! and buys.

use std::fmt;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use crate::wire::http;

/// The size container pipes are raised to: a reader on another core drains a 1 MiB pipe
/// about three times as fast as a 64 KiB one (tuning.md, "Kernel facts").
pub const PIPE_BYTES: usize = 1 << 20;

/// A heartbeat interval of zero would be a busy loop (Mesos spins); this is the least.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

/// Mesos answers the input requests still open when the container's output ends this
/// long after the end (docs/protocol.md, "Lifecycle").
pub const INPUT_ANSWER_DELAY: Duration = Duration::from_secs(1);

/// A peer that is refused (`--allowed_uids`) gets this long to send its request head, to
/// be told 403.
pub const FORBIDDEN_HEAD_TIMEOUT: Duration = Duration::from_secs(1);

/// Limits on what clients can make the server hold, and how long each wait lasts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub http: http::Limits,
    /// Largest record of an input stream.
    pub max_record: usize,
    /// Largest body of a non-streaming call (`ATTACH_CONTAINER_OUTPUT`).
    pub max_call_body: usize,
    /// Input body bytes buffered ahead of the container's stdin before we stop reading.
    pub input_buffer: usize,
    /// Bytes held at once, in all, for connections that do not hold the input slot
    /// (request heads, call bodies, first records of input requests); past it, those
    /// connections are not read until others free some (or their deadlines close them).
    pub request_budget: usize,
    /// Open connections (output clients included); more are closed at once.
    pub max_connections: usize,
    /// How long clients get to take the rest of their streams at exit.
    pub drain_timeout: Duration,
    /// How long a connection may take to send a request head and bring its body to a
    /// decision (a call body, an acknowledgement, an input request's first record), and
    /// then to take a final response or to let an answered body go.
    pub head_timeout: Duration,
    /// How long a blocking client may hold the container back without reading.
    pub block_timeout: Duration,
    /// How long, once output ended, acknowledgements are waited for before exiting.
    pub ack_timeout: Duration,
    /// The listen backlog.
    pub backlog: i32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            http: http::Limits::default(),
            max_record: 1 << 20,
            max_call_body: 64 << 10,
            input_buffer: 1 << 20,
            request_budget: 32 << 20,
            max_connections: 4096,
            drain_timeout: Duration::from_secs(5),
            head_timeout: Duration::from_secs(30),
            block_timeout: Duration::from_secs(30),
            ack_timeout: Duration::from_secs(10),
            backlog: 1024,
        }
    }
}

/// What happens to an output client that falls behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LagPolicy {
    /// Past the lag limit it is cut off; nobody waits for it (the default).
    #[default]
    Disconnect,
    /// It holds back reading, as the logger does: back-pressure reaches the container.
    /// For consumers that must not lose a byte (a log shipper, a benchmark).
    Block,
}

/// Which size a TTY container's terminal takes when several attached clients said theirs
/// (`Switchboard-Window`), as tmux's `window-size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WindowPolicy {
    /// The size of the client that attached (or resized) last (the default).
    #[default]
    Latest,
    /// The smallest rows and the smallest columns of the clients attached.
    Smallest,
    /// The largest rows and the largest columns of the clients attached.
    Largest,
}

impl WindowPolicy {
    pub fn parse(text: &str) -> Result<WindowPolicy, String> {
        match text {
            "latest" => Ok(WindowPolicy::Latest),
            "smallest" => Ok(WindowPolicy::Smallest),
            "largest" => Ok(WindowPolicy::Largest),
            other => Err(format!("must be 'latest', 'smallest' or 'largest', not '{other}'")),
        }
    }
}

/// Sizes and limits of the relay and the output history. Every buffer it keeps is
/// bounded by these.
#[derive(Debug, Clone, Copy)]
pub struct RelayConfig {
    /// Buffer bytes per stream (in the arena, which container output is read into).
    pub buffer_bytes: usize,
    /// Largest single read from a stream.
    pub max_read: usize,
    /// Largest payload of one record (Mesos sends at most 64 KiB).
    pub max_record: usize,
    /// The output history: payload bytes kept at most, both streams together, for
    /// clients that lag, resume or attach with a replay. A disconnecting client further
    /// behind than this is cut off; a blocking one holds reading back.
    pub history_bytes: usize,
    /// Payload bytes kept for replay however far every client is: the last this many
    /// bytes of output (at most `history_bytes`).
    pub replay_bytes: usize,
    /// Records kept at most (a record is one read's worth of a stream, at most
    /// `max_record`); a client holding the oldest when the log is full is cut.
    pub max_records: usize,
    /// Bytes per send to one client.
    pub max_send_bytes: usize,
    /// Segments (iovecs) per send to one client.
    pub max_send_segments: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            buffer_bytes: 1 << 20,
            max_read: 256 << 10,
            max_record: 64 << 10,
            history_bytes: 8 << 20,
            replay_bytes: 0,
            max_records: 16 << 10,
            max_send_bytes: 1 << 20,
            max_send_segments: 256,
        }
    }
}

/// Relay sizes that do not fit together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A size is zero, or a send may hold fewer than 4 segments.
    ZeroSize,
    /// The record log cannot hold two reads.
    LogTooSmall {
        max_records: usize,
        max_read: usize,
        max_record: usize,
    },
    /// A stream's buffer cannot hold one read.
    BufferTooSmall { buffer_bytes: usize, max_read: usize },
    /// The history cannot hold one read, or the replay does not fit in it.
    HistoryTooSmall {
        history_bytes: usize,
        max_read: usize,
        replay_bytes: usize,
    },
    /// A size past what the server takes ([`MAX_SIZE`]).
    TooLarge { what: &'static str, bytes: usize },
}

/// The largest stream buffer or history the server takes: 1 GiB.
pub const MAX_SIZE: usize = 1 << 30;

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ZeroSize => {
                write!(
                    f,
                    "relay sizes must be positive (and allow at least 4 segments per send)"
                )
            }
            ConfigError::LogTooSmall {
                max_records,
                max_read,
                max_record,
            } => write!(
                f,
                "the record log ({max_records} records) must hold at least two reads of {max_read} bytes in records of {max_record} bytes"
            ),
            ConfigError::BufferTooSmall { buffer_bytes, max_read } => {
                write!(f, "the stream buffer ({buffer_bytes}) must hold a read ({max_read})")
            }
            ConfigError::HistoryTooSmall {
                history_bytes,
                max_read,
                replay_bytes,
            } => write!(
                f,
                "the history ({history_bytes}) must hold a read ({max_read}) and the replay ({replay_bytes})"
            ),
            ConfigError::TooLarge { what, bytes } => {
                write!(f, "the {what} ({bytes} bytes) may be at most {MAX_SIZE} bytes")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl RelayConfig {
    /// The defaults with the given buffer, history and replay sizes, checked.
    pub fn sized(
        buffer_bytes: Option<usize>,
        history_bytes: Option<usize>,
        replay_bytes: Option<usize>,
    ) -> Result<RelayConfig, ConfigError> {
        let mut c = RelayConfig::default();
        c.buffer_bytes = buffer_bytes.unwrap_or(c.buffer_bytes);
        c.history_bytes = history_bytes.unwrap_or(c.history_bytes);
        c.replay_bytes = replay_bytes.unwrap_or(c.replay_bytes);
        c.validate()?;
        Ok(c)
    }

    /// Checks that the limits fit together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_read == 0 || self.max_record == 0 || self.max_records == 0 || self.max_send_segments < 4 {
            return Err(ConfigError::ZeroSize);
        }
        if self.max_records < 2 * self.max_read.div_ceil(self.max_record) {
            return Err(ConfigError::LogTooSmall {
                max_records: self.max_records,
                max_read: self.max_read,
                max_record: self.max_record,
            });
        }
        for (what, bytes) in [
            ("stream buffer", self.buffer_bytes),
            ("history", self.history_bytes),
            ("replay", self.replay_bytes),
        ] {
            if bytes > MAX_SIZE {
                return Err(ConfigError::TooLarge { what, bytes });
            }
        }
        if self.buffer_bytes < self.max_read {
            return Err(ConfigError::BufferTooSmall {
                buffer_bytes: self.buffer_bytes,
                max_read: self.max_read,
            });
        }
        if self.history_bytes < self.max_read || self.replay_bytes > self.history_bytes {
            return Err(ConfigError::HistoryTooSmall {
                history_bytes: self.history_bytes,
                max_read: self.max_read,
                replay_bytes: self.replay_bytes,
            });
        }
        Ok(())
    }
}

/// The event engine and its sizes.
#[derive(Debug, Clone, Copy)]
pub struct RingConfig {
    /// Submission queue entries (the completion queue gets four times as many).
    pub entries: u32,
    /// Which engine drives the operations.
    pub engine: EngineChoice,
}

impl Default for RingConfig {
    /// 256 entries, and the engine `$SWITCHBOARD_ENGINE` names (auto when it names none).
    fn default() -> Self {
        RingConfig {
            entries: 256,
            engine: EngineChoice::from_env().ok().flatten().unwrap_or_default(),
        }
    }
}

/// Which engine serves: io_uring where the kernel allows it, else epoll (`Auto`); or one
/// of them only. The epoll engine never touches io_uring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    #[default]
    Auto,
    IoUring,
    Epoll,
}

/// The variable that chooses the engine where no flag does (the CLI's own servers, tests).
pub const ENGINE_VAR: &str = "SWITCHBOARD_ENGINE";

impl EngineChoice {
    pub const NAMES: &str = "auto, io_uring or epoll";

    pub fn parse(text: &str) -> Result<EngineChoice, String> {
        match text {
            "auto" => Ok(EngineChoice::Auto),
            "io_uring" | "io-uring" | "uring" => Ok(EngineChoice::IoUring),
            "epoll" => Ok(EngineChoice::Epoll),
            other => Err(format!("'{other}' is not an engine: use {}", Self::NAMES)),
        }
    }

    /// The engine `$SWITCHBOARD_ENGINE` names, if it is set (and not empty).
    pub fn from_env() -> Result<Option<EngineChoice>, String> {
        match std::env::var(ENGINE_VAR) {
            Ok(v) if !v.is_empty() => Self::parse(&v).map(Some).map_err(|e| format!("${ENGINE_VAR}: {e}")),
            _ => Ok(None),
        }
    }
}

/// The container's descriptors: numbers this process inherited (Mesos's flags of the same
/// names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptors {
    /// One PTY master serves as stdin and stdout (stderr is not read).
    pub tty: bool,
    /// Where input goes: the write end of the container's stdin pipe, or the PTY master.
    pub stdin_to_fd: RawFd,
    /// The container's stdout (and stderr) to read, and the loggers they go to.
    pub stdout_from_fd: RawFd,
    pub stdout_to_fd: RawFd,
    pub stderr_from_fd: RawFd,
    pub stderr_to_fd: RawFd,
}

/// Everything a server needs: the container's descriptors and Mesos's other flags, and
/// our limits.
#[derive(Debug, Clone)]
pub struct Config {
    pub fds: Descriptors,
    pub wait_for_connection: bool,
    pub socket: PathBuf,
    pub heartbeat_interval: Option<Duration>,
    /// Users who may connect besides our own (SO_PEERCRED); others get 403. With a list,
    /// the socket is created with mode 0666 instead of 0600 (the check is ours, then).
    pub allowed_uids: Option<Vec<u32>>,
    /// Serve protobuf clients by tee and splice (pipe pages) rather than by copies.
    pub zero_copy: bool,
    pub limits: Limits,
    pub relay: RelayConfig,
    pub lag_policy: LagPolicy,
    /// With a TTY: keep a model of the terminal's screen, for clients that ask for a
    /// redraw when they attach (`Switchboard-Screen`).
    pub screen: bool,
    pub window_policy: WindowPolicy,
    pub ring: RingConfig,
}
