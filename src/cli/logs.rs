//! `switchboard logs`: a container's output from its log, as `docker logs`: stdout to
//! stdout and stderr to stderr, the last lines (`--tail`), since a time (`--since`), with
//! timestamps (`-t`), following it while the container runs and across rotation (`-f`).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::agent::cri::{self, Entry};
use crate::agent::{self, ExitRecord, Info};

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The container: its id, or its socket path.
    #[arg(value_name = "ID|SOCKET")]
    pub target: String,
    /// Go on printing the output as it comes, until the container exited.
    #[arg(long, short)]
    pub follow: bool,
    /// Only the last N lines (both streams together).
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// Only output since this time: a duration ago (10s, 5m, 2h) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Put each line's time (RFC 3339, nanoseconds) before it.
    #[arg(long, short)]
    pub timestamps: bool,
    /// Only stdout.
    #[arg(long)]
    pub stdout: bool,
    /// Only stderr.
    #[arg(long)]
    pub stderr: bool,
    /// The runtime directory (default: as for `run`).
    #[arg(long, value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
}

/// A whole line of one stream (or what there is of an unfinished one), and its time.
struct Line {
    time_ns: u128,
    stderr: bool,
    text: Vec<u8>,
}

/// What is printed, and how.
struct Printer {
    out: io::BufWriter<io::Stdout>,
    err: io::BufWriter<io::Stderr>,
    since: u128,
    stdout: bool,
    stderr: bool,
    timestamps: bool,
    /// Each stream's line in progress (its entries so far were partial).
    partial: [Option<Line>; 2],
}

impl Printer {
    /// Takes an entry; a line it completes comes back.
    fn entry(&mut self, e: Entry) -> Option<Line> {
        let slot = &mut self.partial[usize::from(e.stderr)];
        let line = slot.get_or_insert_with(|| Line {
            time_ns: e.time_ns,
            stderr: e.stderr,
            text: Vec::new(),
        });
        line.text.extend_from_slice(&e.content);
        if e.partial {
            return None;
        }
        let mut line = slot.take().expect("inserted above");
        line.text.push(b'\n');
        self.wanted(&line).then_some(line)
    }

    /// The unfinished lines, at the end of a log that will not grow.
    fn rest(&mut self) -> Vec<Line> {
        let lines: Vec<Line> = self.partial.iter_mut().filter_map(Option::take).collect();
        lines.into_iter().filter(|l| self.wanted(l)).collect()
    }

    fn wanted(&self, l: &Line) -> bool {
        l.time_ns >= self.since && if l.stderr { self.stderr } else { self.stdout }
    }

    fn print(&mut self, l: &Line) -> io::Result<()> {
        let to: &mut dyn Write = if l.stderr { &mut self.err } else { &mut self.out };
        if self.timestamps {
            to.write_all(cri::rfc3339_nano(l.time_ns).as_bytes())?;
            to.write_all(b" ")?;
        }
        to.write_all(&l.text)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.err.flush()
    }
}

pub fn logs(args: &LogsArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (a pager quit): not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard logs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &LogsArgs) -> io::Result<()> {
    let runtime = args.runtime_dir.clone().unwrap_or_else(agent::default_runtime_dir);
    let dir = super::manage::resolve(&runtime, &args.target).map_err(io::Error::other)?;
    let info = Info::load(&dir)?;
    let since = match &args.since {
        None => 0,
        Some(s) => since(s).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("--since: '{s}' is neither a duration (10s, 5m, 2h) nor an RFC 3339 time"),
            )
        })?,
    };
    let both = args.stdout == args.stderr;
    let mut p = Printer {
        out: io::BufWriter::with_capacity(256 * 1024, io::stdout()),
        err: io::BufWriter::with_capacity(64 * 1024, io::stderr()),
        since,
        stdout: both || args.stdout,
        stderr: both || args.stderr,
        timestamps: args.timestamps,
        partial: [None, None],
    };
    if !info.cri {
        if args.timestamps || args.since.is_some() {
            return Err(io::Error::other(
                "this container's logs are raw bytes (run --log-format raw): they have no times",
            ));
        }
        return raw(args, &dir, &info, (p.stdout, p.stderr));
    }
    let log_dir = info.stdout_log.parent().unwrap_or(&dir).to_path_buf();
    let mut follower = Follower::open(&log_dir)?;
    // What is there now: the last `--tail` lines of it.
    let mut lines = VecDeque::new();
    while let Some(e) = follower.next_entry(false)? {
        if let Some(line) = p.entry(e) {
            lines.push_back(line);
            if args.tail.is_some_and(|n| lines.len() > n) {
                lines.pop_front();
            }
        }
    }
    if !args.follow {
        // Unfinished lines take their place by the time they began.
        let mut all: Vec<Line> = lines.into_iter().chain(p.rest()).collect();
        all.sort_by_key(|l| l.time_ns);
        let skip = args.tail.map_or(0, |n| all.len().saturating_sub(n));
        all[skip..].iter().try_for_each(|l| p.print(l))?;
        return p.flush();
    }
    lines.iter().try_for_each(|l| p.print(l))?;
    // Then what comes, until the container ended and its log is complete (its end is
    // recorded only once the log is).
    loop {
        let ended = ExitRecord::load(&dir).ok().flatten().is_some() || !dir.exists();
        while let Some(e) = follower.next_entry(true)? {
            if let Some(line) = p.entry(e) {
                p.print(&line)?;
            }
        }
        if ended {
            for l in p.rest() {
                p.print(&l)?;
            }
            return p.flush();
        }
        p.flush()?;
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Nanoseconds since the epoch of `--since`: a duration ago, or an RFC 3339 time.
fn since(text: &str) -> Option<u128> {
    if let Some(t) = cri::parse_rfc3339(text) {
        return Some(t);
    }
    let ago = crate::cli::serve::parse_duration(text).ok()?;
    Some(cri::now_ns().saturating_sub(ago.as_nanos()))
}

/// Raw logs: each file as it is (the last `--tail` lines of each), followed with `-f`.
fn raw(args: &LogsArgs, dir: &Path, info: &Info, (want_out, want_err): (bool, bool)) -> io::Result<()> {
    let mut files: Vec<(File, bool)> = Vec::new();
    for (path, stderr) in [(Some(&info.stdout_log), false), (info.stderr_log.as_ref(), true)] {
        let Some(path) = path else { continue };
        if (stderr && !want_err) || (!stderr && !want_out) {
            continue;
        }
        let mut f = File::open(path)?;
        let mut text = Vec::new();
        f.read_to_end(&mut text)?;
        let start = match args.tail {
            Some(n) => tail_start(&text, n),
            None => 0,
        };
        write_stream(stderr, &text[start..])?;
        files.push((f, stderr));
    }
    if !args.follow {
        return Ok(());
    }
    loop {
        let ended = ExitRecord::load(dir).ok().flatten().is_some() || !dir.exists();
        for (f, stderr) in &mut files {
            let mut text = Vec::new();
            f.read_to_end(&mut text)?;
            write_stream(*stderr, &text)?;
        }
        if ended {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write_stream(stderr: bool, text: &[u8]) -> io::Result<()> {
    match stderr {
        true => io::stderr().lock().write_all(text),
        false => io::stdout().lock().write_all(text),
    }
}

/// Where the last `n` lines of `text` start.
fn tail_start(text: &[u8], n: usize) -> usize {
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, &b) in body.iter().enumerate().rev() {
        if b == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    if n == 0 { text.len() } else { 0 }
}

/// Reads a CRI log's entries in order, across rotation: each file is read to its end
/// through a descriptor kept open (so a file rotated, or removed, meanwhile is still read
/// whole), then the one written after it.
struct Follower {
    dir: PathBuf,
    /// Locked (shared) while it is read: the writer does not remove it meanwhile.
    file: nix::fcntl::Flock<File>,
    inode: u64,
    buf: Vec<u8>,
    /// Bytes of `buf` already taken.
    at: usize,
}

impl Follower {
    /// At the oldest file of the log (which must exist).
    fn open(dir: &Path) -> io::Result<Follower> {
        let first = cri::files(dir)
            .into_iter()
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no log in {}", dir.display())))?;
        let file = cri::open_following(&first)?;
        let inode = file.metadata()?.ino();
        Ok(Follower {
            dir: dir.to_path_buf(),
            file,
            inode,
            buf: Vec::new(),
            at: 0,
        })
    }

    /// The next whole entry; `None` at the end of what is written now. A line that is
    /// not an entry is skipped. `growing`: the log may still grow (a last line without its
    /// newline is waited for, not taken).
    fn next_entry(&mut self, growing: bool) -> io::Result<Option<Entry>> {
        loop {
            if let Some(nl) = self.buf[self.at..].iter().position(|&b| b == b'\n') {
                let line = &self.buf[self.at..self.at + nl];
                self.at += nl + 1;
                match Entry::parse(line) {
                    Some(e) => return Ok(Some(e)),
                    None => continue,
                }
            }
            self.buf.drain(..self.at);
            self.at = 0;
            let mut chunk = vec![0u8; 256 * 1024];
            let n = self.file.read(&mut chunk)?;
            if n > 0 {
                self.buf.extend_from_slice(&chunk[..n]);
                continue;
            }
            // The end of this file: on to the next one, if it was rotated.
            match self.successor()? {
                Some(next) => {
                    self.inode = next.metadata()?.ino();
                    self.file = next;
                }
                None if !growing && !self.buf.is_empty() => {
                    // A last line without its newline, in a log that is complete.
                    let line = std::mem::take(&mut self.buf);
                    return Ok(Entry::parse(&line));
                }
                None => return Ok(None),
            }
        }
    }

    /// The file written after this one, if this one is no longer the current file. The
    /// names move as the log rotates: the file opened must be the one that followed this
    /// one when they were listed, else they are listed again.
    fn successor(&self) -> io::Result<Option<nix::fcntl::Flock<File>>> {
        loop {
            let files = cri::files(&self.dir);
            let inodes: Vec<u64> = files
                .iter()
                .map(|f| std::fs::metadata(f).map_or(0, |m| m.ino()))
                .collect();
            let next = match inodes.iter().position(|&i| i == self.inode) {
                // The current file: nothing after it yet.
                Some(k) if k + 1 == files.len() => return Ok(None),
                Some(k) => k + 1,
                // Rotated away entirely: the oldest file there is comes next.
                None if files.is_empty() => return Ok(None),
                None => 0,
            };
            // (Locked before this one lets go: nothing after this one can go meanwhile.)
            match cri::open_following(&files[next]) {
                Ok(f) if f.metadata()?.ino() == inodes[next] => return Ok(Some(f)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_of_raw_text() {
        assert_eq!(tail_start(b"a\nb\nc\n", 2), 2);
        assert_eq!(tail_start(b"a\nb\nc", 1), 4);
        assert_eq!(tail_start(b"a\nb\n", 5), 0);
        assert_eq!(tail_start(b"a\nb\n", 0), 4);
    }
}
