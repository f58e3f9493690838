//! Container logs in the CRI format that kubelet and conmon write and that log shippers
//! (fluent-bit, vector, promtail) read: one entry per line,
//! `RFC3339Nano-timestamp stream tag content`, where the stream is `stdout` or `stderr`
//! and the tag is `F` for an entry that ends a line, `P` for a partial one (cut at
//! [`MAX_ENTRY`] or at the end of what was read). Files rotate by size: `container.log`,
//! then `container.log.1` (newest) up to `.N`; an entry is never split across files.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The largest content of one entry (kubelet's and conmon's buffer size).
pub const MAX_ENTRY: usize = 16 * 1024;

/// The current log file's name in a container's directory.
pub const FILE: &str = "container.log";

/// One entry of a CRI log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Nanoseconds since the epoch.
    pub time_ns: u128,
    pub stderr: bool,
    /// `P`: the line goes on in the next entry of its stream.
    pub partial: bool,
    pub content: Vec<u8>,
}

/// `2026-12-04T22:31:13.123456789Z` for nanoseconds since the epoch.
pub fn rfc3339_nano(time_ns: u128) -> String {
    let secs = (time_ns / 1_000_000_000) as i64;
    let nanos = (time_ns % 1_000_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Nanoseconds since the epoch of an RFC 3339 time (`Z` or `±hh:mm`, any fraction).
pub fn parse_rfc3339(text: &str) -> Option<u128> {
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, s) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut nanos: u128 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<9}", &frac[..digits.min(9)]);
        nanos = padded.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            sign * (rest[1..3].parse::<i64>().ok()? * 3600 + rest[4..6].parse::<i64>().ok()? * 60)
        }
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - offset;
    u128::try_from(secs).ok().map(|s| s * 1_000_000_000 + nanos)
}

/// Days since 1970-01-01 of a date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

pub fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

impl Entry {
    /// The entry as a line of the log, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = format!(
            "{} {} {} ",
            rfc3339_nano(self.time_ns),
            if self.stderr { "stderr" } else { "stdout" },
            if self.partial { "P" } else { "F" }
        )
        .into_bytes();
        line.extend_from_slice(&self.content);
        line.push(b'\n');
        line
    }

    /// Reads one line of a log (without its newline); `None` if it is not an entry.
    pub fn parse(line: &[u8]) -> Option<Entry> {
        let mut parts = line.splitn(4, |&b| b == b' ');
        let time = std::str::from_utf8(parts.next()?).ok()?;
        let stderr = match parts.next()? {
            b"stdout" => false,
            b"stderr" => true,
            _ => return None,
        };
        let partial = match parts.next()? {
            b"P" => true,
            b"F" => false,
            _ => return None,
        };
        Some(Entry {
            time_ns: parse_rfc3339(time)?,
            stderr,
            partial,
            content: parts.next().unwrap_or_default().to_vec(),
        })
    }
}

/// Cuts what a stream wrote into entries: whole lines (`F`), pieces of a line longer than
/// [`MAX_ENTRY`] and the unfinished end of what was read (`P`).
pub fn entries(time_ns: u128, stderr: bool, data: &[u8]) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let window = &rest[..rest.len().min(MAX_ENTRY)];
        let (content, partial, used) = match window.iter().position(|&b| b == b'\n') {
            Some(nl) => (&window[..nl], false, nl + 1),
            None => (window, true, window.len()),
        };
        out.push(Entry {
            time_ns,
            stderr,
            partial,
            content: content.to_vec(),
        });
        rest = &rest[used..];
    }
    out
}

/// A log in CRI format that rotates at `max_size` bytes, keeping `max_files` files.
pub struct Writer {
    dir: PathBuf,
    max_size: u64,
    max_files: usize,
    file: File,
    size: u64,
}

impl Writer {
    /// Opens (appends to) `dir`'s `container.log`.
    pub fn open(dir: &Path, max_size: u64, max_files: usize) -> io::Result<Writer> {
        let file = super::dirs::open_log(&dir.join(FILE))?;
        let size = file.metadata()?.len();
        Ok(Writer {
            dir: dir.to_path_buf(),
            max_size: max_size.max(1),
            max_files: max_files.max(1),
            file,
            size,
        })
    }

    /// Appends what a stream wrote, as entries; rotates first when an entry would not fit.
    pub fn write(&mut self, stderr: bool, data: &[u8]) -> io::Result<()> {
        // The entries that go into the current file are written together.
        let mut batch = Vec::with_capacity(data.len() + 64);
        for entry in entries(now_ns(), stderr, data) {
            let line = entry.to_line();
            if self.size > 0 && self.size + line.len() as u64 > self.max_size {
                self.file.write_all(&batch)?;
                batch.clear();
                self.rotate()?;
            }
            batch.extend_from_slice(&line);
            self.size += line.len() as u64;
        }
        self.file.write_all(&batch)
    }

    /// `container.log` becomes `.1`, `.1` becomes `.2`, ...; the oldest beyond
    /// `max_files` goes, once no follower (`switchboard logs -f`) still reads it: a
    /// follower holds a shared lock on the file it reads, and the file is removed when an
    /// exclusive lock can be had, or after [`FOLLOWER_WAIT`] (a stopped follower must not
    /// hold the container back for ever).
    fn rotate(&mut self) -> io::Result<()> {
        let path = |n: usize| match n {
            0 => self.dir.join(FILE),
            n => self.dir.join(format!("{FILE}.{n}")),
        };
        wait_for_followers(&path(self.max_files - 1));
        let _ = std::fs::remove_file(path(self.max_files - 1));
        for n in (0..self.max_files - 1).rev() {
            match std::fs::rename(path(n), path(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        if self.max_files == 1 {
            let _ = std::fs::remove_file(path(0));
        }
        self.file = super::dirs::open_log(&path(0))?;
        self.size = 0;
        Ok(())
    }
}

/// How long a log file that a follower still reads is kept past its turn to go.
pub const FOLLOWER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits until no follower holds `path` (or [`FOLLOWER_WAIT`] passed).
fn wait_for_followers(path: &Path) {
    use nix::fcntl::{Flock, FlockArg};
    let deadline = std::time::Instant::now() + FOLLOWER_WAIT;
    let Ok(mut file) = File::open(path) else { return };
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(_) => return,
            Err((f, _)) if std::time::Instant::now() < deadline => {
                file = f;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(_) => return,
        }
    }
}

/// Opens a log file for following: with a shared lock, so that the writer keeps it
/// until the follower moved on.
pub fn open_following(path: &Path) -> io::Result<nix::fcntl::Flock<File>> {
    use nix::fcntl::{Flock, FlockArg};
    let file = File::open(path)?;
    Flock::lock(file, FlockArg::LockShared).map_err(|(_, e)| io::Error::from(e))
}

/// Copies what a switchboard logs into its pipes (stdout's, and stderr's without a TTY)
/// into the CRI log `writer` writes, as it comes, until both pipes ended (the switchboard
/// exited).
pub fn drain(stdout: OwnedFd, stderr: Option<OwnedFd>, mut writer: Writer) -> io::Result<()> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut open: Vec<(OwnedFd, bool)> = vec![(stdout, false)];
    if let Some(e) = stderr {
        open.push((e, true));
    }
    let mut buf = vec![0u8; 64 * 1024];
    while !open.is_empty() {
        let mut fds: Vec<PollFd> = open
            .iter()
            .map(|(fd, _)| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect();
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(fds);
        let mut ended = Vec::new();
        for (k, (fd, stderr)) in open.iter().enumerate() {
            if !ready[k] {
                continue;
            }
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) => ended.push(k),
                Ok(n) => writer.write(*stderr, &buf[..n])?,
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for k in ended.into_iter().rev() {
            open.remove(k);
        }
    }
    Ok(())
}

/// The files of a container's log, oldest first.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix(FILE)?.strip_prefix('.')?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut all: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    if dir.join(FILE).exists() {
        all.push(dir.join(FILE));
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        let t = 1_796_422_171_123_456_789u128;
        let text = rfc3339_nano(t);
        assert_eq!(text, "2026-12-04T22:09:31.123456789Z");
        assert_eq!(parse_rfc3339(&text), Some(t));
        assert_eq!(
            parse_rfc3339("2026-12-04T23:09:31.5+01:00"),
            Some(1_796_422_171_500_000_000)
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-13-04T23:49:31Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn lines_become_entries_and_back() {
        let mut long = vec![b'x'; MAX_ENTRY + 10];
        long.push(b'\n');
        let mut data = b"one\ntwo\n".to_vec();
        data.extend_from_slice(&long);
        data.extend_from_slice(b"unfinished");
        let es = entries(7, true, &data);
        let tags: Vec<(bool, usize)> = es.iter().map(|e| (e.partial, e.content.len())).collect();
        assert_eq!(
            tags,
            [(false, 3), (false, 3), (true, MAX_ENTRY), (false, 10), (true, 10)]
        );
        for e in &es {
            let line = e.to_line();
            assert_eq!(Entry::parse(&line[..line.len() - 1]).as_ref(), Some(e));
        }
        assert_eq!(
            Entry::parse(b"2026-12-04T22:09:31Z stdout F"),
            Some(Entry {
                time_ns: 1_796_422_171_000_000_000,
                stderr: false,
                partial: false,
                content: Vec::new(),
            })
        );
        assert_eq!(Entry::parse(b"2026-12-04T22:49:31Z stdin F x"), None);
    }

    #[test]
    fn rotation_keeps_at_most_max_files() {
        let dir = std::env::temp_dir().join(format!("sb-cri-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = Writer::open(&dir, 200, 3).unwrap();
        for i in 0..40 {
            w.write(i % 2 == 1, format!("line {i}\n").as_bytes()).unwrap();
        }
        let files = files(&dir);
        assert_eq!(files.len(), 3, "{files:?}");
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() <= 200);
        }
        // The newest entries are all there, in order, each once.
        let text: String = files.iter().map(|f| std::fs::read_to_string(f).unwrap()).collect();
        let contents: Vec<String> = text
            .lines()
            .map(|l| String::from_utf8(Entry::parse(l.as_bytes()).unwrap().content).unwrap())
            .collect();
        let first: usize = contents[0].strip_prefix("line ").unwrap().parse().unwrap();
        let want: Vec<String> = (first..40).map(|i| format!("line {i}")).collect();
        assert_eq!(contents, want);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
