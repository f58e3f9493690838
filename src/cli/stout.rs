//! The stout flags grammar that Mesos binaries use (docs/protocol.md §2.2), byte-compatible in
//! its parsing, its error texts and its usage layout:
//!
//! * `--name=value`, `--name` (booleans: true), `--no-name` (booleans: false); names are
//!   lower-cased, arguments trimmed of ` \t\n\r`; a bare `--` ends the flags and other
//!   arguments are ignored;
//! * arguments are applied in sorted order of their names (stout keeps them in a
//!   `std::multimap`), and the first error stops the load;
//! * `file://PATH` values are replaced by the file's contents, untrimmed;
//! * booleans are `true`/`1`/empty or `false`/`0`; integers follow C++ `istream >> int`;
//!   durations are `<number><unit>` with units `ns us ms secs mins hrs days weeks`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The type of a flag and, for booleans, its default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool { default: bool },
    Int,
    Duration,
    String,
}

/// One flag of a flag set.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub name: &'static str,
    pub kind: Kind,
    /// Help text; may contain newlines, each continued under the help column.
    pub help: &'static str,
}

/// A loaded value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Bool(bool),
    Int(i32),
    Duration(Duration),
    String(String),
}

/// The flags loaded from a command line. Booleans that were not given hold their default;
/// other flags that were not given are absent.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    values: BTreeMap<&'static str, Value>,
}

impl Loaded {
    pub fn bool(&self, name: &str) -> bool {
        matches!(self.values.get(name), Some(Value::Bool(true)))
    }

    pub fn int(&self, name: &str) -> Option<i32> {
        match self.values.get(name) {
            Some(Value::Int(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn duration(&self, name: &str) -> Option<Duration> {
        match self.values.get(name) {
            Some(Value::Duration(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn string(&self, name: &str) -> Option<&str> {
        match self.values.get(name) {
            Some(Value::String(v)) => Some(v),
            _ => None,
        }
    }
}

/// The outcome of a load: the values (complete up to the first error, as stout leaves
/// them), and the error if there was one. `--help` is honoured when it was loaded before
/// the error, exactly as the Mesos mains check `flags.help` before the load error.
#[derive(Debug)]
pub struct Outcome {
    pub loaded: Loaded,
    pub error: Option<String>,
}

/// Loads `args` (without the program name) against `specs`.
pub fn load(specs: &[Spec], args: &[String]) -> Outcome {
    // The multimap: sorted by name, argv order kept among equal names.
    let mut entries: Vec<(String, Option<String>)> = Vec::new();
    for arg in args {
        let arg = arg.trim_matches([' ', '\t', '\n', '\r']);
        if arg == "--" {
            break;
        }
        let Some(rest) = arg.strip_prefix("--") else { continue };
        let (name, value) = match rest.find('=') {
            Some(i) => (&rest[..i], Some(rest[i + 1..].to_string())),
            None => (rest, None),
        };
        entries.push((name.to_ascii_lowercase(), value));
    }
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));

    let mut loaded = Loaded::default();
    for spec in specs {
        if let Kind::Bool { default } = spec.kind {
            loaded.values.insert(spec.name, Value::Bool(default));
        }
    }
    let mut loaded_names: BTreeSet<&'static str> = BTreeSet::new();
    for (name, value) in entries {
        let negated = name.starts_with("no-");
        let flag_name = if negated { &name[3..] } else { name.as_str() };
        let Some(spec) = specs.iter().find(|s| s.name == flag_name) else {
            let via = if negated {
                format!(" via '{name}'")
            } else {
                String::new()
            };
            return Outcome {
                loaded,
                error: Some(format!("Failed to load unknown flag '{flag_name}'{via}")),
            };
        };
        if loaded_names.contains(spec.name) {
            let e = format!("Flag '{flag_name}' is already loaded via name '{}'", spec.name);
            return Outcome { loaded, error: Some(e) };
        }
        let text = match (spec.kind, value) {
            (Kind::Bool { .. }, None) => (if negated { "false" } else { "true" }).to_string(),
            (Kind::Bool { .. }, Some(v)) if v.is_empty() => (if negated { "false" } else { "true" }).to_string(),
            (Kind::Bool { .. }, Some(v)) if !negated => v,
            (Kind::Bool { .. }, Some(v)) => {
                let e = format!("Failed to load boolean flag '{flag_name}' via '{name}' with value '{v}'");
                return Outcome { loaded, error: Some(e) };
            }
            (_, _) if negated => {
                let e = format!("Failed to load non-boolean flag '{flag_name}' via '{name}'");
                return Outcome { loaded, error: Some(e) };
            }
            (_, None) => {
                let e = format!("Failed to load non-boolean flag '{flag_name}': Missing value");
                return Outcome { loaded, error: Some(e) };
            }
            (_, Some(v)) => v,
        };
        match fetch(spec.kind, &text) {
            Ok(v) => {
                loaded.values.insert(spec.name, v);
                loaded_names.insert(spec.name);
            }
            Err(e) => {
                let e = format!("Failed to load flag '{flag_name}': Failed to load value '{text}': {e}");
                return Outcome { loaded, error: Some(e) };
            }
        }
    }
    Outcome { loaded, error: None }
}

text_error! {
    /// A flag value that does not parse, with stout's text for it.
    FlagError
}

fn fetch(kind: Kind, value: &str) -> Result<Value, FlagError> {
    if let Some(path) = value.strip_prefix("file://") {
        let contents = std::fs::read(path)
            .map_err(|e| FlagError(format!("Error reading file '{path}': {}", crate::sys::strerror(&e))))?;
        return parse(kind, &String::from_utf8_lossy(&contents));
    }
    parse(kind, value)
}

fn parse(kind: Kind, value: &str) -> Result<Value, FlagError> {
    match kind {
        Kind::Bool { .. } => match value {
            "true" | "1" => Ok(Value::Bool(true)),
            "false" | "0" => Ok(Value::Bool(false)),
            _ => Err(FlagError("Expecting a boolean (e.g., true or false)".into())),
        },
        Kind::Int => parse_int(value)
            .map(Value::Int)
            .ok_or_else(|| FlagError("Failed to convert into required type".into())),
        Kind::Duration => parse_duration(value).map(Value::Duration),
        Kind::String => Ok(Value::String(value.to_string())),
    }
}

/// `std::istringstream(value) >> int`, with the whole string consumed: leading C
/// whitespace, an optional sign, decimal digits, within `int` range.
fn parse_int(value: &str) -> Option<i32> {
    let s = value.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    s.parse::<i32>().ok()
}

/// stout's `Duration::parse`.
pub fn parse_duration(s: &str) -> Result<Duration, FlagError> {
    let Some(index) = s.find(|c: char| !(c.is_ascii_digit() || c == '.')) else {
        return Err(FlagError(format!("Invalid duration '{s}'")));
    };
    let number = &s[..index];
    let value: f64 = number
        .parse()
        .map_err(|_| FlagError(format!("Failed to convert '{number}' to number")))?;
    let factor: f64 = match &s[index..] {
        "ns" => 1.0,
        "us" => 1e3,
        "ms" => 1e6,
        "secs" => 1e9,
        "mins" => 60e9,
        "hrs" => 3600e9,
        "days" => 86_400e9,
        "weeks" => 604_800e9,
        unit => {
            return Err(FlagError(format!(
                "Unknown duration unit '{unit}'; supported units are 'ns', 'us', 'ms', 'secs', 'mins', 'hrs', 'days', and 'weeks'"
            )));
        }
    };
    let nanos = value * factor;
    if nanos >= i64::MAX as f64 {
        return Err(FlagError(
            "Argument out of the range that a Duration can represent due to int64_t's size limit".into(),
        ));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// The usage text: `message` and a blank line (if given), the usage message and a blank
/// line, then one line per flag sorted by name, help aligned five columns past the widest
/// flag, each help line break continued under the help column. Booleans show their
/// default.
pub fn usage(specs: &[Spec], usage_message: &str, message: Option<&str>) -> String {
    const PAD: usize = 5;
    let mut out = String::new();
    if let Some(m) = message {
        out.push_str(m);
        out.push_str("\n\n");
    }
    out.push_str(usage_message);
    out.push_str("\n\n");
    let mut sorted: Vec<&Spec> = specs.iter().collect();
    sorted.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let column = |s: &Spec| match s.kind {
        Kind::Bool { .. } => format!("  --[no-]{}", s.name),
        _ => format!("  --{}=VALUE", s.name),
    };
    let width = sorted.iter().map(|s| column(s).len()).max().unwrap_or(0);
    for spec in sorted {
        let mut help = spec.help.to_string();
        if let Kind::Bool { default } = spec.kind {
            let same_line = !help.is_empty() && !help.ends_with(['\n', '\r']);
            help.push_str(if same_line { " (default: " } else { "(default: " });
            help.push_str(if default { "true" } else { "false" });
            help.push(')');
        }
        let col = column(spec);
        let mut lines = help.split(['\n', '\r']);
        out.push_str(&col);
        out.push_str(&" ".repeat(PAD + width - col.len()));
        out.push_str(lines.next().unwrap_or(""));
        out.push('\n');
        for line in lines {
            out.push_str(&" ".repeat(PAD + width));
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECS: &[Spec] = &[
        Spec {
            name: "help",
            kind: Kind::Bool { default: false },
            help: "Prints this help message",
        },
        Spec {
            name: "tty",
            kind: Kind::Bool { default: false },
            help: "TTY.",
        },
        Spec {
            name: "fd",
            kind: Kind::Int,
            help: "An fd.",
        },
        Spec {
            name: "every",
            kind: Kind::Duration,
            help: "Period.",
        },
        Spec {
            name: "path",
            kind: Kind::String,
            help: "A path.",
        },
    ];

    fn run(args: &[&str]) -> Outcome {
        load(SPECS, &args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn err(args: &[&str]) -> String {
        run(args).error.expect("an error")
    }

    #[test]
    fn grammar() {
        let o = run(&[
            "--tty",
            " --FD=-7 ",
            "--every=1.5mins",
            "--path=a=b",
            "ignored",
            "-x",
            "--",
            "--bogus",
        ]);
        assert_eq!(o.error, None);
        assert!(o.loaded.bool("tty"));
        assert_eq!(o.loaded.int("fd"), Some(-7));
        assert_eq!(o.loaded.duration("every"), Some(Duration::from_secs(90)));
        assert_eq!(o.loaded.string("path"), Some("a=b"));
        assert!(!run(&["--no-tty"]).loaded.bool("tty"));
        assert!(run(&["--tty="]).loaded.bool("tty"));
        assert!(!run(&["--tty=0"]).loaded.bool("tty"));
        assert_eq!(run(&["--fd=+3"]).loaded.int("fd"), Some(3));
        assert_eq!(run(&["--fd= 3"]).loaded.int("fd"), Some(3));
        assert_eq!(run(&["--path="]).loaded.string("path"), Some(""));
    }

    #[test]
    fn error_texts() {
        assert_eq!(err(&["--foo"]), "Failed to load unknown flag 'foo'");
        assert_eq!(err(&["--no-foo"]), "Failed to load unknown flag 'foo' via 'no-foo'");
        assert_eq!(err(&["--tty", "--tty"]), "Flag 'tty' is already loaded via name 'tty'");
        assert_eq!(
            err(&["--tty", "--no-tty"]),
            "Flag 'tty' is already loaded via name 'tty'"
        );
        assert_eq!(err(&["--fd"]), "Failed to load non-boolean flag 'fd': Missing value");
        assert_eq!(err(&["--no-fd"]), "Failed to load non-boolean flag 'fd' via 'no-fd'");
        assert_eq!(
            err(&["--no-tty=true"]),
            "Failed to load boolean flag 'tty' via 'no-tty' with value 'true'"
        );
        assert_eq!(
            err(&["--TTY=TRUE"]),
            "Failed to load flag 'tty': Failed to load value 'TRUE': Expecting a boolean (e.g., true or false)"
        );
        for bad in ["", "abc", "5x", "0x10", "1.0", "5 3", "99999999999"] {
            assert_eq!(
                err(&[&format!("--fd={bad}")]),
                format!(
                    "Failed to load flag 'fd': Failed to load value '{}': Failed to convert into required type",
                    bad.trim()
                )
            );
        }
        assert_eq!(
            err(&["--every=5"]),
            "Failed to load flag 'every': Failed to load value '5': Invalid duration '5'"
        );
        assert_eq!(
            err(&["--every=-5secs"]),
            "Failed to load flag 'every': Failed to load value '-5secs': Failed to convert '' to number"
        );
        assert!(err(&["--every=5 secs"]).ends_with("Unknown duration unit ' secs'; supported units are 'ns', 'us', 'ms', 'secs', 'mins', 'hrs', 'days', and 'weeks'"));
        assert!(
            err(&["--every=999999999999weeks"])
                .ends_with("Argument out of the range that a Duration can represent due to int64_t's size limit")
        );
        assert_eq!(
            err(&["--fd=file:///nonexistent/x"]),
            "Failed to load flag 'fd': Failed to load value 'file:///nonexistent/x': Error reading file '/nonexistent/x': No such file or directory"
        );
        // Sorted order decides which error wins, and whether --help was loaded first.
        assert_eq!(
            err(&["--zzz", "--fd"]),
            "Failed to load non-boolean flag 'fd': Missing value"
        );
        let o = run(&["--zzz", "--help"]);
        assert!(o.loaded.bool("help") && o.error.is_some());
        let o = run(&["--bogus", "--help"]);
        assert!(!o.loaded.bool("help") && o.error.is_some());
    }

    #[test]
    fn file_values_are_untrimmed() {
        let dir = std::env::temp_dir().join(format!("stout-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ok, bad) = (dir.join("ok"), dir.join("bad"));
        std::fs::write(&ok, "42").unwrap();
        std::fs::write(&bad, "42\n").unwrap();
        assert_eq!(
            run(&[&format!("--fd=file://{}", ok.display())]).loaded.int("fd"),
            Some(42)
        );
        assert!(
            run(&[&format!("--fd=file://{}", bad.display())])
                .error
                .unwrap()
                .ends_with("Failed to convert into required type")
        );
        assert_eq!(
            run(&[&format!("--path=file://{}", bad.display())])
                .loaded
                .string("path"),
            Some("42\n")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30secs"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration(".5us"), Ok(Duration::from_nanos(500)));
        assert_eq!(parse_duration("0secs"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("2weeks"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_duration(""), Err(FlagError("Invalid duration ''".to_string())));
        assert_eq!(
            parse_duration("1.2.3secs"),
            Err(FlagError("Failed to convert '1.2.3' to number".to_string()))
        );
    }
}
