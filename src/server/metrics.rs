//! `GET /metrics`: the server's figures in the Prometheus text format (version 0.0.4),
//! or in OpenMetrics when the request's `Accept` names it (docs/protocol.md §9.3).
//!
//! Written by hand rather than with `prometheus-client`: the server keeps plain counters
//! on its one thread and renders them when asked, and the format is a few lines per
//! family; that crate's metric types are atomics to be updated on the hot path, or a
//! collector that takes more code than the format itself.

use std::fmt::Write;

use super::conn::Ctx;

/// The media types of the two formats.
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPEN_METRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Info,
}

/// An exposition being written: families, each with its samples.
struct Exposition {
    out: String,
    open_metrics: bool,
}

impl Exposition {
    /// Starts family `name` (without `_total` or `_info`).
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let (type_name, exposed) = match (kind, self.open_metrics) {
            (Kind::Counter, true) => ("counter", name.to_string()),
            (Kind::Counter, false) => ("counter", format!("{name}_total")),
            (Kind::Gauge, _) => ("gauge", name.to_string()),
            (Kind::Info, true) => ("info", name.to_string()),
            (Kind::Info, false) => ("gauge", format!("{name}_info")),
        };
        let _ = writeln!(self.out, "# HELP {exposed} {help}");
        let _ = writeln!(self.out, "# TYPE {exposed} {type_name}");
    }

    /// One sample of the family `name` (with its suffix: `_total`, `_info`, or none).
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (k, (label, v)) in labels.iter().enumerate() {
                if k > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{label}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn counter(&mut self, name: &str, help: &str, samples: &[(&[(&str, &str)], u64)]) {
        self.family(name, Kind::Counter, help);
        let total = format!("{name}_total");
        for (labels, value) in samples {
            self.sample(&total, labels, value);
        }
    }

    fn gauge(&mut self, name: &str, help: &str, samples: &[(&[(&str, &str)], u64)]) {
        self.family(name, Kind::Gauge, help);
        for (labels, value) in samples {
            self.sample(name, labels, value);
        }
    }
}

/// A label value as the format quotes it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The exposition of the server's figures now: its media type and its text.
pub(super) fn exposition(ctx: &Ctx<'_>, open_metrics: bool) -> (&'static str, String) {
    let out = ctx.output.figures();
    let counts = ctx.conns.counts;
    let mut e = Exposition {
        out: String::with_capacity(4096),
        open_metrics,
    };
    let engine = ctx.ring.engine().to_string();
    e.family(
        "switchboard_build",
        Kind::Info,
        "The switchboard's version and the event engine it runs on.",
    );
    e.sample(
        "switchboard_build_info",
        &[("version", env!("CARGO_PKG_VERSION")), ("engine", &engine)],
        1,
    );
    e.family(
        "switchboard_uptime_seconds",
        Kind::Gauge,
        "Seconds since the server started.",
    );
    let uptime = format!("{:.3}", ctx.started.elapsed().as_secs_f64());
    e.sample("switchboard_uptime_seconds", &[], uptime);
    let streams: Vec<[(&str, &str); 1]> = out.streams.iter().map(|s| [("stream", *s)]).collect();
    let per_stream = |values: [u64; 2]| -> Vec<(&[(&str, &str)], u64)> {
        streams.iter().enumerate().map(|(s, l)| (&l[..], values[s])).collect()
    };
    e.counter(
        "switchboard_output_read_bytes",
        "Bytes of container output read, per stream.",
        &per_stream(out.stats.read),
    );
    e.counter(
        "switchboard_output_logged_bytes",
        "Bytes of container output written to the stream's logger.",
        &per_stream(out.stats.logged),
    );
    e.counter(
        "switchboard_output_sent_bytes",
        "Response bytes delivered to output clients, by delivery path.",
        &[
            (&[("path", "zero_copy")], out.stats.sent_zero_copy),
            (&[("path", "copies")], out.stats.sent_copies),
        ],
    );
    let clients: Vec<([(&str, &str); 2], u64)> = out
        .clients
        .iter()
        .map(|(format, path, n)| ([("format", *format), ("path", *path)], *n))
        .collect();
    let clients: Vec<(&[(&str, &str)], u64)> = clients.iter().map(|(l, n)| (&l[..], *n)).collect();
    e.gauge(
        "switchboard_output_clients",
        "Output clients attached now, by record format and delivery path.",
        &clients,
    );
    e.counter(
        "switchboard_output_clients_cut",
        "Output clients disconnected for falling further behind than the history holds.",
        &[(&[], out.stats.clients_cut)],
    );
    e.counter(
        "switchboard_output_lost_bytes",
        "Output bytes the disconnected clients had not received when cut.",
        &[(&[], out.stats.bytes_lost)],
    );
    e.counter(
        "switchboard_output_fell_behind",
        "Times a zero-copy client fell behind its pipe and was served from the history.",
        &[(&[], out.stats.fell_behind)],
    );
    e.gauge(
        "switchboard_history_bytes",
        "Output bytes the history keeps now (for lagging clients and the replay).",
        &[(&[], out.history.0)],
    );
    e.gauge(
        "switchboard_history_copied_bytes",
        "Of those, the bytes held in memory of the history's own (copied out of the read buffers).",
        &[(&[], out.history.1)],
    );
    e.counter(
        "switchboard_input_requests",
        "Input requests that held the container's stdin.",
        &[(&[], counts.input_requests)],
    );
    e.counter(
        "switchboard_input_conflicts",
        "Input requests refused (409) while another held stdin.",
        &[(&[], counts.input_conflicts)],
    );
    e.counter(
        "switchboard_input_bytes",
        "Bytes written to the container's stdin.",
        &[(&[], counts.input_bytes)],
    );
    e.gauge(
        "switchboard_connections",
        "Open connections that are not output clients.",
        &[(&[], ctx.conns.len() as u64)],
    );
    e.counter(
        "switchboard_connections_refused",
        "Connections refused: past --max_connections, or peers not among --allowed_uids.",
        &[
            (&[("reason", "max_connections")], counts.refused_limit),
            (&[("reason", "forbidden")], counts.refused_forbidden),
        ],
    );
    if open_metrics {
        e.out.push_str("# EOF\n");
    }
    (if open_metrics { OPEN_METRICS } else { TEXT }, e.out)
}
