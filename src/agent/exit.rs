//! How a container ended, recorded beside its `info.json` (as `exit.json`) by the
//! process that waited for it, so that `ps -a`, `wait` and `rm` can tell later.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::{dirs, write_atomically};

const FILE: &str = "exit.json";

/// A container's end: its exit code, or the signal that ended it, and when; or why it
/// could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitRecord {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// Seconds since the epoch.
    pub finished: u64,
    /// Why the command could not be started (then `code` is 127).
    pub error: Option<String>,
}

impl ExitRecord {
    pub fn of(status: std::process::ExitStatus) -> ExitRecord {
        use std::os::unix::process::ExitStatusExt;
        ExitRecord {
            code: status.code(),
            signal: status.signal(),
            finished: now(),
            error: None,
        }
    }

    /// The command could not be started, for this reason (a shell says 127).
    pub fn not_started(error: String) -> ExitRecord {
        ExitRecord {
            code: Some(127),
            signal: None,
            finished: now(),
            error: Some(error),
        }
    }

    /// Waiting for the container failed, for this reason: how it ended is not known.
    pub fn unknown(error: String) -> ExitRecord {
        ExitRecord {
            code: None,
            signal: None,
            finished: now(),
            error: Some(error),
        }
    }

    /// The status a shell reports: the code, or 128 plus the signal.
    pub fn shell_code(&self) -> u8 {
        match (self.code, self.signal) {
            (Some(code), _) => code as u8,
            (None, Some(signal)) => (128 + signal) as u8,
            _ => 1,
        }
    }

    /// `exited (7)`, or `killed (SIGTERM)`.
    pub fn describe(&self) -> String {
        match (self.code, self.signal) {
            (Some(code), _) => format!("exited ({code})"),
            (None, Some(signal)) => match nix::sys::signal::Signal::try_from(signal) {
                Ok(s) => format!("killed ({})", s.as_str()),
                Err(_) => format!("killed (signal {signal})"),
            },
            _ => "ended".to_string(),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "code": self.code,
            "signal": self.signal,
            "finished": self.finished,
            "error": self.error,
        })
    }

    /// Records it in the container's directory `dir`.
    pub fn save(&self, dir: &Path) -> io::Result<()> {
        write_atomically(&dir.join(FILE), self.to_json().to_string().as_bytes())
    }

    /// The end recorded in `dir`, if there is one.
    pub fn load(dir: &Path) -> io::Result<Option<ExitRecord>> {
        let text = match dirs::read_owned(&dir.join(FILE)) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let v: Value = serde_json::from_slice(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let int = |k: &str| v.get(k).and_then(Value::as_i64).and_then(|n| i32::try_from(n).ok());
        Ok(Some(ExitRecord {
            code: int("code"),
            signal: int("signal"),
            finished: v.get("finished").and_then(Value::as_u64).unwrap_or(0),
            error: v.get("error").and_then(Value::as_str).map(String::from),
        }))
    }

    /// Waits until the container of `dir` ended and returns its end (see [`EndWatch`]).
    pub fn wait_for(dir: &Path) -> Result<ExitRecord, &'static str> {
        let mut watch = EndWatch::default();
        loop {
            if let Some(end) = watch.check(dir) {
                return end;
            }
            std::thread::sleep(EndWatch::EVERY);
        }
    }
}

/// Watches for a container's end, one look at a time (for waits that must be able to
/// stop). Its monitor records the end once the container and its switchboard are gone
/// (the log is complete then): gone for a second without a record, it had none, and the
/// error says why (its monitor was killed, or it was removed with `run --rm` before we
/// read it).
#[derive(Debug, Default)]
pub struct EndWatch {
    gone_since: Option<Instant>,
}

impl EndWatch {
    /// How often to look.
    pub const EVERY: Duration = Duration::from_millis(50);

    /// The end, once there is one to tell.
    pub fn check(&mut self, dir: &Path) -> Option<Result<ExitRecord, &'static str>> {
        if let Ok(Some(record)) = ExitRecord::load(dir) {
            return Some(Ok(record));
        }
        let alive = super::Info::load(dir).is_ok_and(|i| i.running());
        match (alive, self.gone_since) {
            (true, _) => self.gone_since = None,
            (false, None) => self.gone_since = Some(Instant::now()),
            (false, Some(t)) if t.elapsed() > Duration::from_secs(1) => {
                return Some(Err(match dir.exists() {
                    true => "how was not recorded",
                    false => "it was removed (run --rm) before its status was read",
                }));
            }
            (false, Some(_)) => {}
        }
        None
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_read_as_a_shell_would() {
        let dir = std::env::temp_dir().join(format!("sb-exit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(ExitRecord::load(&dir).unwrap(), None);
        let killed = ExitRecord {
            code: None,
            signal: Some(15),
            finished: 5,
            error: None,
        };
        killed.save(&dir).unwrap();
        assert_eq!(ExitRecord::load(&dir).unwrap(), Some(killed.clone()));
        assert_eq!(
            (killed.shell_code(), killed.describe().as_str()),
            (143, "killed (SIGTERM)")
        );
        let failed = ExitRecord::not_started("No such file or directory".into());
        assert_eq!((failed.shell_code(), failed.describe().as_str()), (127, "exited (127)"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
