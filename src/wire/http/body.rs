//! Request bodies (fixed length, or chunked: extensions skipped, trailers read and
//! ignored, both bounded) and the request loop of one connection.

use super::{BodyLength, HttpError, Limits, RequestHead, parse_head};

/// What one step of body decoding produced.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// Input bytes consumed, framing included.
    pub used: usize,
    /// Body bytes (a slice of the input: no copy). May be empty.
    pub data: &'a [u8],
    /// The body is complete.
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hex size; `digits` so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size: then `;` (extensions) or CR.
    SizeWs {
        size: u64,
    },
    /// Extensions, up to CR.
    Extension {
        size: u64,
    },
    /// Saw CR of a size line.
    SizeLf {
        size: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    TrailerLf {
        empty: bool,
    },
    Done,
}

/// A strict decoder for `Transfer-Encoding: chunked` bodies.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
    line: usize,
    trailer: usize,
    max_line: usize,
    max_trailer: usize,
}

impl ChunkedDecoder {
    pub fn new(limits: &Limits) -> Self {
        ChunkedDecoder {
            state: ChunkState::Size { size: 0, digits: 0 },
            line: 0,
            trailer: 0,
            max_line: limits.max_chunk_line,
            max_trailer: limits.max_trailer_bytes,
        }
    }

    /// Decodes from `input` until body data is available, the input runs out, or the
    /// body ends.
    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Result<Decoded<'a>, HttpError> {
        let bad = |m: &str| HttpError::new(400, format!("Malformed chunked body: {m}"));
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Data { remaining } => {
                    let take = usize::try_from(remaining).unwrap_or(usize::MAX).min(input.len() - i);
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data { remaining: left }
                    };
                    return Ok(Decoded {
                        used: i + take,
                        data: &input[i..i + take],
                        done: false,
                    });
                }
                ChunkState::Done => break,
                _ => {}
            }
            i += 1;
            self.state = match self.state {
                ChunkState::Size { size, digits } => {
                    self.line += 1;
                    if let Some(d) = (b as char).to_digit(16) {
                        if digits >= 16 {
                            return Err(bad("chunk size too large"));
                        }
                        ChunkState::Size {
                            size: size << 4 | u64::from(d),
                            digits: digits + 1,
                        }
                    } else if digits == 0 {
                        return Err(bad("missing chunk size"));
                    } else if b == b'\r' {
                        ChunkState::SizeLf { size }
                    } else if b == b';' {
                        ChunkState::Extension { size }
                    } else if b == b' ' || b == b'\t' {
                        ChunkState::SizeWs { size }
                    } else {
                        return Err(bad("invalid chunk size"));
                    }
                }
                ChunkState::SizeWs { size } => {
                    self.line += 1;
                    if self.line > self.max_line {
                        return Err(bad("chunk size line too long"));
                    }
                    match b {
                        b' ' | b'\t' => ChunkState::SizeWs { size },
                        b';' => ChunkState::Extension { size },
                        b'\r' => ChunkState::SizeLf { size },
                        _ => return Err(bad("invalid chunk size")),
                    }
                }
                ChunkState::Extension { size } => {
                    self.line += 1;
                    if self.line > self.max_line {
                        return Err(bad("chunk size line too long"));
                    }
                    match b {
                        b'\r' => ChunkState::SizeLf { size },
                        b'\n' => return Err(bad("bare LF")),
                        _ => ChunkState::Extension { size },
                    }
                }
                ChunkState::SizeLf { size } => {
                    if b != b'\n' {
                        return Err(bad("expected LF after chunk size"));
                    }
                    self.line = 0;
                    if size == 0 {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data { remaining: size }
                    }
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(bad("missing CRLF after chunk data"));
                    }
                    ChunkState::DataLf
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(bad("missing CRLF after chunk data"));
                    }
                    ChunkState::Size { size: 0, digits: 0 }
                }
                ChunkState::TrailerStart | ChunkState::Trailer => {
                    let start = self.state == ChunkState::TrailerStart;
                    self.trailer += 1;
                    if self.trailer > self.max_trailer {
                        return Err(bad("trailer section too large"));
                    }
                    match b {
                        b'\r' => ChunkState::TrailerLf { empty: start },
                        b'\n' => return Err(bad("bare LF")),
                        _ => ChunkState::Trailer,
                    }
                }
                ChunkState::TrailerLf { empty } => {
                    if b != b'\n' {
                        return Err(bad("expected LF in trailer section"));
                    }
                    if empty {
                        self.state = ChunkState::Done;
                        return Ok(Decoded {
                            used: i,
                            data: &[],
                            done: true,
                        });
                    }
                    ChunkState::TrailerStart
                }
                ChunkState::Data { .. } | ChunkState::Done => unreachable!("handled above"),
            };
            if let ChunkState::Size { .. } = self.state
                && self.line > self.max_line
            {
                return Err(bad("chunk size line too long"));
            }
        }
        Ok(Decoded {
            used: i,
            data: &[],
            done: self.state == ChunkState::Done,
        })
    }
}

/// The body decoder of one request.
#[derive(Debug, Clone)]
pub enum BodyDecoder {
    Length { remaining: u64 },
    Chunked(ChunkedDecoder),
}

impl BodyDecoder {
    pub fn new(body: BodyLength, limits: &Limits) -> Self {
        match body {
            BodyLength::Length(n) => BodyDecoder::Length { remaining: n },
            BodyLength::Chunked => BodyDecoder::Chunked(ChunkedDecoder::new(limits)),
        }
    }

    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Result<Decoded<'a>, HttpError> {
        match self {
            BodyDecoder::Length { remaining } => {
                let take = usize::try_from(*remaining).unwrap_or(usize::MAX).min(input.len());
                *remaining -= take as u64;
                Ok(Decoded {
                    used: take,
                    data: &input[..take],
                    done: *remaining == 0,
                })
            }
            BodyDecoder::Chunked(c) => c.decode(input),
        }
    }
}

/// One step of a connection's request stream.
#[derive(Debug)]
pub enum Event<'a> {
    /// A request begins. Its body (possibly empty) follows, then [`Event::End`].
    Head(RequestHead),
    /// Body bytes of the current request.
    Body(&'a [u8]),
    /// The current request's body is complete; the next request may follow.
    End,
}

#[derive(Debug)]
enum ReaderState {
    Head,
    Body(BodyDecoder),
}

/// Splits one connection's bytes into requests, in order (pipelining included).
#[derive(Debug)]
pub struct RequestReader {
    limits: Limits,
    state: ReaderState,
}

impl RequestReader {
    pub fn new(limits: Limits) -> Self {
        RequestReader {
            limits,
            state: ReaderState::Head,
        }
    }

    /// The next event from `buf` (the connection's unconsumed bytes). Returns the number
    /// of bytes used and the event, or `None` when more bytes are needed.
    pub fn next<'a>(&mut self, buf: &'a [u8]) -> Result<(usize, Option<Event<'a>>), HttpError> {
        match &mut self.state {
            ReaderState::Head => match parse_head(buf, &self.limits)? {
                None => Ok((0, None)),
                Some((head, n)) => {
                    self.state = ReaderState::Body(BodyDecoder::new(head.body, &self.limits));
                    Ok((n, Some(Event::Head(head))))
                }
            },
            ReaderState::Body(body) => {
                let d = body.decode(buf)?;
                if d.done && d.data.is_empty() {
                    self.state = ReaderState::Head;
                    Ok((d.used, Some(Event::End)))
                } else if !d.data.is_empty() {
                    // A body that ends exactly at this data: the End comes on the next call.
                    if d.done {
                        self.state = ReaderState::Body(BodyDecoder::Length { remaining: 0 });
                    }
                    Ok((d.used, Some(Event::Body(d.data))))
                } else {
                    Ok((d.used, None))
                }
            }
        }
    }

    /// Whether the reader is between requests.
    pub fn at_request_boundary(&self) -> bool {
        matches!(self.state, ReaderState::Head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_chunked(input: &[u8], limits: &Limits) -> Result<(Vec<u8>, usize, bool), HttpError> {
        let mut d = ChunkedDecoder::new(limits);
        let mut out = Vec::new();
        let mut used = 0;
        loop {
            let step = d.decode(&input[used..])?;
            used += step.used;
            out.extend_from_slice(step.data);
            if step.done || (step.used == 0 && step.data.is_empty()) || used == input.len() {
                if !step.done && used < input.len() {
                    continue;
                }
                return Ok((out, used, step.done));
            }
        }
    }

    #[test]
    fn chunked_bodies() {
        let l = Limits::default();
        let body = b"4\r\nWiki\r\n5;name=val\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let (data, used, done) = decode_chunked(body, &l).unwrap();
        assert_eq!(data, b"Wikipedia in\r\n\r\nchunks.");
        assert_eq!(&body[used..], b"NEXT");
        assert!(done);
        let bad = |b: &[u8]| decode_chunked(b, &l).unwrap_err().status;
        assert_eq!(bad(b"x\r\n"), 400);
        assert_eq!(bad(b"\r\n"), 400);
        assert_eq!(bad(b"4\nWiki"), 400);
        assert_eq!(bad(b"4\r\nWikiXX"), 400);
        assert_eq!(bad(b"11111111111111111\r\n"), 400);
        assert_eq!(bad(b"0\r\nX: 1\n"), 400);
        assert_eq!(bad(b"1 0\r\n"), 400, "whitespace inside the size");
        // Whitespace before the extensions or the line end is allowed (BWS).
        assert_eq!(decode_chunked(b"2 \t;a=b\r\nhi\r\n0 \r\n\r\n", &l).unwrap().0, b"hi");
        let tight = Limits {
            max_chunk_line: 8,
            max_trailer_bytes: 8,
            ..l
        };
        assert_eq!(
            decode_chunked(b"1;aaaaaaaaaaaaaaaaaaaa\r\n", &tight)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            decode_chunked(b"0\r\nX-Long-Trailer: 1\r\n\r\n", &tight)
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn pipelined_requests_in_order() {
        let stream =
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcPOST /acknowledge_container_input_response HTTP/1.1\r\n\
                       Transfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\nPOST /3 HTTP/1.1\r\n\r\n";
        let mut r = RequestReader::new(Limits::default());
        let mut events = Vec::new();
        let mut pos = 0;
        while pos < stream.len() {
            let (used, ev) = r.next(&stream[pos..]).unwrap();
            pos += used;
            match ev {
                Some(Event::Head(h)) => events.push(format!("head {}", h.path)),
                Some(Event::Body(b)) => events.push(format!("body {}", String::from_utf8_lossy(b))),
                Some(Event::End) => events.push("end".into()),
                None => break,
            }
        }
        // The last request has an empty body: its End needs no more bytes.
        let (_, ev) = r.next(&[]).unwrap();
        assert!(matches!(ev, Some(Event::End)));
        assert_eq!(
            events,
            [
                "head /",
                "body abc",
                "end",
                "head /acknowledge_container_input_response",
                "body xy",
                "end",
                "head /3"
            ]
        );
        assert!(r.at_request_boundary());
    }

    proptest! {
        #[test]
        fn chunked_any_split(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..50), 0..6),
            cut in any::<usize>(),
        ) {
            let mut body = Vec::new();
            for c in &chunks {
                body.extend_from_slice(format!("{:X};ext\r\n", c.len()).as_bytes());
                body.extend_from_slice(c);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\nT: v\r\n\r\n");
            let cut = cut % (body.len() + 1);
            let mut d = ChunkedDecoder::new(&Limits::default());
            let mut data = Vec::new();
            let mut done = false;
            for part in [&body[..cut], &body[cut..]] {
                let mut pos = 0;
                while pos < part.len() && !done {
                    let step = d.decode(&part[pos..]).unwrap();
                    pos += step.used;
                    data.extend_from_slice(step.data);
                    done = step.done;
                }
            }
            prop_assert!(done);
            prop_assert_eq!(data, chunks.concat());
        }
    }
}
