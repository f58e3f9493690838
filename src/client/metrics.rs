//! A switchboard's figures (`GET /metrics`, docs/protocol.md §9.3), fetched and read:
//! the Prometheus text format's samples, checked line by line.

use std::io::Write;
use std::path::Path;

use super::{ClientError, connect, read_body, read_head};

/// One sample: a metric name, its labels, and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// The samples of one exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub samples: Vec<Sample>,
}

impl Figures {
    /// Reads an exposition in the Prometheus text format (comments, `# HELP`, `# TYPE`
    /// and `# EOF` lines are skipped); an error names the first line that is not one.
    pub fn parse(text: &str) -> Result<Figures, String> {
        let mut samples = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            samples.push(sample(line).ok_or_else(|| format!("line {}: not a sample: {line}", n + 1))?);
        }
        Ok(Figures { samples })
    }

    /// The value of `name` with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
            })
            .map(|s| s.value)
    }

    /// The sum of `name` over all its label sets (0 when there are none).
    pub fn sum(&self, name: &str) -> f64 {
        self.samples.iter().filter(|s| s.name == name).map(|s| s.value).sum()
    }

    /// The value of `label` on the first sample of `name`.
    pub fn label(&self, name: &str, label: &str) -> Option<&str> {
        let s = self.samples.iter().find(|s| s.name == name)?;
        s.labels.iter().find(|(k, _)| k == label).map(|(_, v)| v.as_str())
    }
}

/// `name`, `name{a="b",...}`, then a value.
fn sample(line: &str) -> Option<Sample> {
    let name_end = line.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))?;
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=')?;
            let key = &rest[..eq];
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return None;
            }
            let (value, after) = quoted(rest[eq + 1..].strip_prefix('"')?)?;
            labels.push((key.to_string(), value));
            rest = after.strip_prefix(',').unwrap_or(after);
        }
    }
    let value = rest.strip_prefix(' ')?.split(' ').next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// A label value up to its closing quote (escapes undone), and what follows it.
fn quoted(text: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &text[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// How long [`fetch`] waits for an answer.
pub const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Fetches the figures of the switchboard at `socket`.
pub fn fetch(socket: &Path) -> Result<Figures, ClientError> {
    let mut sock = connect(socket)?;
    // A server answers at once, busy or not: one that does not is stuck, not slow.
    sock.set_read_timeout(Some(ANSWER_WITHIN))?;
    sock.set_write_timeout(Some(ANSWER_WITHIN))?;
    sock.write_all(b"GET /metrics HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    let head = read_head(&mut sock, &mut buf)?;
    let body = read_body(&mut sock, &head, buf)?;
    if head.status != 200 {
        return Err(ClientError::Refused {
            status: head.status,
            body,
        });
    }
    Figures::parse(&body).map_err(ClientError::Protocol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_their_labels() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{stream=\"stdout\"} 3\n\
                    a_total{stream=\"std\\\"err\"} 4\nb 1.5\n# EOF\n";
        let f = Figures::parse(text).unwrap();
        assert_eq!(f.get("a_total", &[("stream", "stdout")]), Some(3.0));
        assert_eq!(f.get("a_total", &[("stream", "std\"err")]), Some(4.0));
        assert_eq!(f.sum("a_total"), 7.0);
        assert_eq!(f.get("b", &[]), Some(1.5));
        assert_eq!(f.sum("c"), 0.0);
        assert!(Figures::parse("a{x=1} 2").is_err());
        assert!(Figures::parse("9a 2").is_err());
        assert!(Figures::parse("a 2x").is_err());
    }
}
