//! RecordIO framing (docs/protocol.md §13): `record = length LF payload`, with no delimiter
//! after the payload.
//!
//! We write canonical decimal. We read strictly: the length is ASCII decimal digits only
//! (Mesos's signs, hex, whitespace and CR are refused), at most [`MAX_LENGTH_DIGITS`]
//! long, and at most the decoder's `max_record_len`, which is checked before any payload
//! is buffered. A stream that ends inside a record is reported by [`Decoder::finish`].

use std::fmt;

/// A `u64` has at most 20 decimal digits; longer length lines are refused at once.
pub const MAX_LENGTH_DIGITS: usize = 20;

/// Appends the length line of a record whose payload has `len` bytes.
pub fn write_header(len: usize, out: &mut Vec<u8>) {
    let mut digits = [0u8; MAX_LENGTH_DIGITS];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.push(b'\n');
}

/// A framing error. The decoder stays failed after one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The length line is not a decimal number (the text seen so far is kept, lossily).
    BadLength(String),
    /// The record is larger than the decoder's limit.
    TooLarge { len: u64, max: usize },
    /// The stream ended inside a record.
    Truncated,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Mesos's text for an undecodable length line.
            Error::BadLength(h) => write!(f, "Failed to decode length '{h}': Failed to convert '{h}' to number"),
            Error::TooLarge { len, max } => write!(f, "Record of {len} bytes exceeds the limit of {max} bytes"),
            Error::Truncated => write!(f, "The stream ended inside a record"),
        }
    }
}

impl std::error::Error for Error {}

#[derive(Debug)]
enum State {
    Header,
    Payload { remaining: usize },
    Failed(Error),
}

/// An incremental RecordIO decoder: feed it bytes split anywhere, get whole records out.
#[derive(Debug)]
pub struct Decoder {
    max_record_len: usize,
    header: Vec<u8>,
    payload: Vec<u8>,
    state: State,
}

impl Decoder {
    /// Records from now on may be up to `max_record_len` bytes.
    pub fn set_max_record_len(&mut self, max_record_len: usize) {
        self.max_record_len = max_record_len;
    }

    /// The memory held for a record started and not yet returned.
    pub fn buffered(&self) -> usize {
        self.header.capacity() + self.payload.capacity()
    }

    /// A decoder that refuses records longer than `max_record_len` bytes.
    pub fn new(max_record_len: usize) -> Self {
        Decoder {
            max_record_len,
            header: Vec::new(),
            payload: Vec::new(),
            state: State::Header,
        }
    }

    /// Consumes bytes from `input` up to the end of at most one record. Returns how many
    /// bytes were used, and the record if one was completed; call again with the rest.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Option<Vec<u8>>), Error> {
        let mut used = 0;
        loop {
            match &mut self.state {
                State::Failed(e) => return Err(e.clone()),
                State::Header => {
                    let Some(&b) = input.get(used) else {
                        return Ok((used, None));
                    };
                    used += 1;
                    if b == b'\n' {
                        let len = self.parse_length()?;
                        self.header.clear();
                        if len == 0 {
                            return Ok((used, Some(Vec::new())));
                        }
                        self.payload = Vec::with_capacity(len.min(64 * 1024));
                        self.state = State::Payload { remaining: len };
                    } else if b.is_ascii_digit() && self.header.len() < MAX_LENGTH_DIGITS {
                        self.header.push(b);
                    } else {
                        self.header.push(b);
                        return Err(self.fail(Error::BadLength(String::from_utf8_lossy(&self.header).into_owned())));
                    }
                }
                State::Payload { remaining } => {
                    let take = (*remaining).min(input.len() - used);
                    self.payload.extend_from_slice(&input[used..used + take]);
                    used += take;
                    *remaining -= take;
                    if *remaining > 0 {
                        return Ok((used, None));
                    }
                    self.state = State::Header;
                    return Ok((used, Some(std::mem::take(&mut self.payload))));
                }
            }
        }
    }

    /// Call at the end of the stream: an error if it ended inside a record.
    pub fn finish(&self) -> Result<(), Error> {
        match &self.state {
            State::Failed(e) => Err(e.clone()),
            State::Header if self.header.is_empty() => Ok(()),
            _ => Err(Error::Truncated),
        }
    }

    /// Whether the decoder is between records (nothing of a record buffered).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Header) && self.header.is_empty()
    }

    fn parse_length(&mut self) -> Result<usize, Error> {
        let text = String::from_utf8_lossy(&self.header).into_owned();
        let parsed = if self.header.is_empty() {
            None
        } else {
            text.parse::<u64>().ok()
        };
        let Some(len) = parsed else {
            return Err(self.fail(Error::BadLength(text)));
        };
        match usize::try_from(len) {
            Ok(n) if n <= self.max_record_len => Ok(n),
            _ => Err(self.fail(Error::TooLarge {
                len,
                max: self.max_record_len,
            })),
        }
    }

    fn fail(&mut self, e: Error) -> Error {
        self.state = State::Failed(e.clone());
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(d: &mut Decoder, mut input: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
        let mut out = Vec::new();
        while !input.is_empty() {
            let (used, rec) = d.decode(input)?;
            input = &input[used..];
            out.extend(rec);
        }
        Ok(out)
    }

    #[test]
    fn canonical_headers() {
        let mut out = Vec::new();
        write_header(0, &mut out);
        write_header(54, &mut out);
        write_header(usize::MAX, &mut out);
        assert_eq!(out, format!("0\n54\n{}\n", usize::MAX).as_bytes());
    }

    #[test]
    fn refuses_what_mesos_tolerates() {
        for bad in [
            "+3\nabc", "-1\n", "0x10\n", " 3\nabc", "3 \nabc", "3\r\nabc", "\n", "abc\n", "1.0\n",
        ] {
            let mut d = Decoder::new(1024);
            let err = decode_all(&mut d, bad.as_bytes()).unwrap_err();
            assert!(matches!(err, Error::BadLength(_)), "{bad:?}: {err:?}");
            // The decoder stays failed.
            assert!(d.decode(b"1\nx").is_err());
        }
        let mut d = Decoder::new(1024);
        assert_eq!(
            decode_all(&mut d, b"0x10\n").unwrap_err().to_string(),
            "Failed to decode length '0x': Failed to convert '0x' to number"
        );
    }

    #[test]
    fn huge_lengths_are_refused_before_buffering() {
        let mut d = Decoder::new(1 << 20);
        assert_eq!(
            decode_all(&mut d, b"1000000000000000\n"),
            Err(Error::TooLarge {
                len: 1_000_000_000_000_000,
                max: 1 << 20
            })
        );
        let mut d = Decoder::new(1 << 20);
        assert!(matches!(
            decode_all(&mut d, b"99999999999999999999999\n"),
            Err(Error::BadLength(_))
        ));
        let mut d = Decoder::new(1 << 20);
        assert!(matches!(decode_all(&mut d, &[b'1'; 1 << 20]), Err(Error::BadLength(_))));
    }

    #[test]
    fn truncation_is_an_error() {
        let mut d = Decoder::new(100);
        assert_eq!(decode_all(&mut d, b"5\nab").unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(d.finish(), Err(Error::Truncated));
        let mut d = Decoder::new(100);
        decode_all(&mut d, b"5").unwrap();
        assert_eq!(d.finish(), Err(Error::Truncated));
        let mut d = Decoder::new(100);
        assert_eq!(decode_all(&mut d, b"2\nab0\n").unwrap(), vec![b"ab".to_vec(), vec![]]);
        assert_eq!(d.finish(), Ok(()));
        assert!(d.is_idle());
    }

    proptest! {
        #[test]
        fn any_split_decodes_the_same(
            records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            cuts in proptest::collection::vec(any::<usize>(), 0..10),
        ) {
            let mut stream = Vec::new();
            for r in &records {
                write_header(r.len(), &mut stream);
                stream.extend_from_slice(r);
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.sort();
            let mut d = Decoder::new(300);
            let mut got = Vec::new();
            let mut start = 0;
            for end in cuts.into_iter().chain([stream.len()]) {
                got.extend(decode_all(&mut d, &stream[start..end]).unwrap());
                start = end;
            }
            prop_assert_eq!(got, records);
            prop_assert_eq!(d.finish(), Ok(()));
        }
    }
}
