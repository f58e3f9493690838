//! The output body checker: an `ATTACH_CONTAINER_OUTPUT` body (chunked RecordIO of
//! ProcessIO records) checked as it streams, whatever its split.

use switchboard::wire::http::{ChunkedDecoder, Limits};
use switchboard::wire::message::{Format, Stream, data_record_prefix, data_record_suffix};

use crate::checkers::{Checker, record_data};
use crate::pattern::is_pattern;

/// An output body whose DATA records carry the patterns `seeds[0]` (stdout) and
/// `seeds[1]` (stderr), checked as it streams: protobuf payloads are compared with the
/// patterns where they lie, nothing is copied; JSON DATA records of the server's own
/// shape have their base64 decoded on the way, and any other JSON record is decoded
/// whole. Fast enough for clients that take gigabytes a second.
pub struct BodyChecker {
    format: Format,
    seeds: [u64; 2],
    pub pos: [u64; 2],
    pub heartbeats: usize,
    /// JSON records streamed (of the server's DATA shape), and decoded whole.
    pub json_streamed: usize,
    pub json_decoded: usize,
    pub ended: bool,
    /// Lengths the streams must reach; `None` for a client that may be cut off.
    expect_len: Option<[u64; 2]>,
    /// Payload bytes checked, all streams, for a producer that keeps pace.
    pub progress: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// Bytes before the body (an HTTP response head) still to skip.
    pub skip: usize,
    chunked: ChunkedDecoder,
    /// RecordIO: the length line so far, or the bytes of the record still to come.
    record_len: Vec<u8>,
    record_left: u64,
    pb: Pb,
    json: JsonRecord,
    /// [`json_data_shape`].
    json_heads: [Vec<u8>; 2],
    json_suffix: &'static [u8],
}

/// Where the parse of a JSON record stands.
#[derive(Default)]
struct JsonRecord {
    /// The record's first bytes, until they tell whether it is a DATA record of ours;
    /// a record that is not is kept whole here and decoded at its end.
    head: Vec<u8>,
    /// The stream of a DATA record being streamed, once its head matched.
    stream: Option<usize>,
    /// In the payload: base64 characters of a quad so far, a `\` pending, the payload
    /// decoded but not yet checked; then the bytes of the suffix seen.
    quad: [u8; 4],
    quad_len: usize,
    escaped: bool,
    decoded: Vec<u8>,
    suffix: Option<usize>,
}

/// What comes before the base64 payload of the server's JSON DATA records of stdout and
/// stderr, and what follows its closing quote: from the server's own encoder.
fn json_data_shape() -> ([Vec<u8>; 2], &'static [u8]) {
    let head = |stream| {
        let mut prefix = Vec::new();
        data_record_prefix(Format::Json, stream, 0, &mut prefix);
        // Without the RecordIO length line.
        let line = prefix.iter().position(|&b| b == b'\n').unwrap();
        prefix.split_off(line + 1)
    };
    let suffix = data_record_suffix(Format::Json);
    assert_eq!(suffix.first(), Some(&b'"'), "a JSON payload ends with its quote");
    ([head(Stream::Stdout), head(Stream::Stderr)], &suffix[1..])
}

/// Base64 letters' values; 0xff for anything else (`=`, an escape, the closing quote).
const BASE64: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 64 {
        t[b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Where the protobuf parse of a record stands.
#[derive(Default)]
struct Pb {
    /// Offset in the record.
    off: u64,
    /// The varint being read, its shift, and what it is for.
    var: u64,
    shift: u32,
    want: Want,
    /// Ends (record offsets) of the messages entered: ProcessIO's `data` (1 deep).
    data_end: Option<u64>,
    /// ProcessIO.type (DATA 1, CONTROL 2) and Data.type, once read.
    io_type: Option<u64>,
    data_type: Option<u64>,
    /// Bytes of a payload left to check, or of an unknown field to skip.
    payload_left: u64,
    skip_left: u64,
}

#[derive(Default, Clone, Copy, PartialEq, Debug)]
enum Want {
    #[default]
    Tag,
    /// A varint field's value (field number).
    Value(u64),
    /// A length-delimited field's length (field number).
    Len(u64),
}

impl BodyChecker {
    pub fn new(format: Format, seeds: [u64; 2], expect_len: Option<[u64; 2]>) -> Self {
        let (json_heads, json_suffix) = json_data_shape();
        BodyChecker {
            json_heads,
            json_suffix,
            format,
            seeds,
            pos: [0, 0],
            heartbeats: 0,
            json_streamed: 0,
            json_decoded: 0,
            ended: false,
            expect_len,
            progress: None,
            skip: 0,
            chunked: ChunkedDecoder::new(&Limits::default()),
            record_len: Vec::new(),
            record_left: 0,
            pb: Pb::default(),
            json: JsonRecord::default(),
        }
    }

    /// Payload bytes of stream `s`, in order.
    fn payload(&mut self, s: usize, bytes: &[u8]) {
        assert!(
            is_pattern(self.seeds[s], self.pos[s], bytes),
            "stream {s} bytes from {} differ",
            self.pos[s]
        );
        self.pos[s] += bytes.len() as u64;
        if let Some(p) = &self.progress {
            p.store(self.pos[0] + self.pos[1], std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Bytes of the current JSON record.
    fn json_record(&mut self, mut bytes: &[u8]) {
        let head_len = self.json_heads[0].len();
        while !bytes.is_empty() {
            let j = &mut self.json;
            if j.stream.is_none() {
                // Not yet known (or not ours: then kept whole).
                let take = if j.head.len() < head_len {
                    (head_len - j.head.len()).min(bytes.len())
                } else {
                    bytes.len()
                };
                j.head.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if j.head.len() == head_len
                    && let Some(s) = self.json_heads.iter().position(|h| *h == j.head)
                {
                    j.stream = Some(s);
                    j.head.clear();
                }
                continue;
            }
            let s = j.stream.unwrap();
            if let Some(seen) = j.suffix {
                let suffix = self.json_suffix;
                let n = (suffix.len() - seen).min(bytes.len());
                assert_eq!(&bytes[..n], &suffix[seen..seen + n], "a DATA record's end");
                j.suffix = Some(seen + n);
                bytes = &bytes[n..];
                continue;
            }
            let mut ended = false;
            let mut used = 0;
            while used < bytes.len() {
                // Whole quads of plain base64 letters, four at a time.
                if j.quad_len == 0 && !j.escaped {
                    for q in bytes[used..].chunks_exact(4) {
                        let v = q.iter().map(|&c| BASE64[c as usize]);
                        if v.clone().any(|x| x == 0xff) {
                            break;
                        }
                        let n = v.fold(0u32, |n, x| (n << 6) | u32::from(x));
                        j.decoded.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
                        used += 4;
                    }
                    if used == bytes.len() {
                        break;
                    }
                }
                let c = bytes[used];
                used += 1;
                if j.escaped {
                    assert_eq!(c, b'/', "an escape in base64");
                    j.escaped = false;
                } else if c == b'\\' {
                    j.escaped = true;
                    continue;
                } else if c == b'"' {
                    ended = true;
                    break;
                }
                j.quad[j.quad_len] = c;
                j.quad_len += 1;
                if j.quad_len == 4 {
                    j.quad_len = 0;
                    let q = j.quad;
                    let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
                    let mut n = 0u32;
                    for &c in &q[..4 - pad] {
                        let x = BASE64[c as usize];
                        assert!(x != 0xff, "{c:?} in a base64 payload");
                        n = (n << 6) | u32::from(x);
                    }
                    n <<= 6 * pad as u32;
                    let out = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
                    j.decoded.extend_from_slice(&out[..3 - pad]);
                }
            }
            bytes = &bytes[used..];
            if ended || self.json.decoded.len() >= 48 << 10 {
                let decoded = std::mem::take(&mut self.json.decoded);
                self.payload(s, &decoded);
                self.json.decoded = decoded;
                self.json.decoded.clear();
            }
            if ended {
                let j = &mut self.json;
                assert!(j.quad_len == 0 && !j.escaped, "a base64 payload cut short");
                j.suffix = Some(0);
            }
        }
    }

    fn json_record_end(&mut self) {
        let j = std::mem::take(&mut self.json);
        if j.stream.is_some() {
            assert_eq!(j.suffix, Some(self.json_suffix.len()), "a DATA record ends early");
            self.json_streamed += 1;
            return;
        }
        self.json_decoded += 1;
        // Not of the server's DATA shape: decoded whole.
        match record_data(Format::Json, &j.head) {
            Some((s, bytes)) => self.payload(s, &bytes),
            None => self.heartbeats += 1,
        }
    }

    /// A chunk's data: RecordIO records.
    fn data(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.record_left == 0 {
                let b = bytes[0];
                bytes = &bytes[1..];
                if b == b'\n' {
                    let len = std::str::from_utf8(&self.record_len).unwrap();
                    self.record_left = len.parse().unwrap_or_else(|_| panic!("RecordIO length {len:?}"));
                    assert!(self.record_left > 0, "an empty record");
                    self.record_len.clear();
                    self.pb = Pb::default();
                    self.json = JsonRecord::default();
                } else {
                    assert!(
                        b.is_ascii_digit() && self.record_len.len() < 20,
                        "RecordIO length byte {b}"
                    );
                    self.record_len.push(b);
                }
                continue;
            }
            let n = (self.record_left.min(bytes.len() as u64)) as usize;
            match self.format {
                Format::Protobuf => self.record(&bytes[..n]),
                Format::Json => self.json_record(&bytes[..n]),
            }
            self.record_left -= n as u64;
            bytes = &bytes[n..];
            if self.record_left == 0 {
                match self.format {
                    Format::Protobuf => self.record_end(),
                    Format::Json => self.json_record_end(),
                }
            }
        }
    }

    /// Bytes of the current record.
    fn record(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let pb = &mut self.pb;
            if pb.payload_left > 0 {
                let n = (pb.payload_left.min(bytes.len() as u64)) as usize;
                // Data.Type: STDOUT is 2, STDERR 3.
                let s = match pb.data_type {
                    Some(2) => 0,
                    Some(3) => 1,
                    other => panic!("a payload of stream type {other:?} (before its type?)"),
                };
                pb.payload_left -= n as u64;
                pb.off += n as u64;
                self.payload(s, &bytes[..n]);
                bytes = &bytes[n..];
                self.field_end();
                continue;
            }
            if pb.skip_left > 0 {
                let n = (pb.skip_left.min(bytes.len() as u64)) as usize;
                pb.skip_left -= n as u64;
                pb.off += n as u64;
                bytes = &bytes[n..];
                self.field_end();
                continue;
            }
            let b = bytes[0];
            bytes = &bytes[1..];
            pb.off += 1;
            assert!(pb.shift < 64, "a varint too long");
            pb.var |= u64::from(b & 0x7f) << pb.shift;
            pb.shift += 7;
            if b & 0x80 != 0 {
                continue;
            }
            let v = std::mem::take(&mut pb.var);
            pb.shift = 0;
            let inside = pb.data_end.is_some();
            match pb.want {
                Want::Tag => {
                    let (field, wire) = (v >> 3, v & 7);
                    pb.want = match wire {
                        0 => Want::Value(field),
                        2 => Want::Len(field),
                        _ => panic!("wire type {wire} in a ProcessIO record"),
                    };
                }
                Want::Value(field) => {
                    pb.want = Want::Tag;
                    match (inside, field) {
                        (false, 1) => pb.io_type = Some(v),
                        (true, 1) => pb.data_type = Some(v),
                        _ => {}
                    }
                    self.field_end();
                }
                Want::Len(field) => {
                    pb.want = Want::Tag;
                    match (inside, field) {
                        (false, 2) => pb.data_end = Some(pb.off + v),
                        (true, 2) => {
                            assert!(v > 0, "an empty DATA record");
                            pb.payload_left = v;
                        }
                        _ => pb.skip_left = v,
                    }
                    self.field_end();
                }
            }
        }
    }

    /// After a field: leaves the Data message at its end.
    fn field_end(&mut self) {
        let pb = &mut self.pb;
        if pb.payload_left == 0 && pb.skip_left == 0 && pb.want == Want::Tag && pb.data_end == Some(pb.off) {
            pb.data_end = None;
        }
    }

    fn record_end(&mut self) {
        let pb = &self.pb;
        assert!(
            pb.want == Want::Tag && pb.payload_left == 0 && pb.skip_left == 0 && pb.data_end.is_none(),
            "a record ends inside a field"
        );
        match pb.io_type {
            Some(1) => assert!(pb.data_type.is_some(), "a DATA record without data"),
            Some(2) => self.heartbeats += 1,
            other => panic!("a ProcessIO record of type {other:?}"),
        }
    }
}

impl Checker for BodyChecker {
    fn feed(&mut self, mut bytes: &[u8]) {
        let skip = self.skip.min(bytes.len());
        self.skip -= skip;
        bytes = &bytes[skip..];
        while !bytes.is_empty() {
            assert!(!self.ended, "bytes after the last chunk");
            let d = self.chunked.decode(bytes).unwrap();
            bytes = &bytes[d.used..];
            self.data(d.data);
            self.ended |= d.done;
        }
    }

    fn finish(&mut self) {
        if let Some(len) = self.expect_len {
            assert!(
                self.ended,
                "the body did not end with the last chunk (at {:?} of {len:?})",
                self.pos
            );
            assert_eq!(self.pos, len, "stream lengths");
            assert_eq!(self.record_left, 0, "a record cut short");
        }
    }
}
