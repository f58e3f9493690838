//! Output chunks. Each record of an `ATTACH_CONTAINER_OUTPUT` body travels in an HTTP
//! chunk of its own (chunk-size line, RecordIO record, CRLF), and the body ends with the
//! last chunk (docs/protocol.md, "ATTACH_CONTAINER_OUTPUT"). This is the one place that
//! frames them: the copy path, the zero-copy path and heartbeats all come here.
//!
//! A DATA record's payload is never copied here: callers get what goes before it
//! ([`data_head`]) and after it ([`data_tail`]) and place the payload between, as arena
//! memory, pipe pages or base64 text.

use prost::{Message, Name};

use super::http::chunk_size_line;
use super::message::{self, Format, Stream};

pub use super::http::LAST_CHUNK;

/// Appends everything of a DATA record's chunk that comes before its payload: the
/// chunk-size line and the record's prefix (RecordIO length, message bytes up to the
/// payload). `payload_len` is the length of the payload that follows: the container's
/// bytes for protobuf, their base64 ([`message::json_data_payload`]) for JSON.
pub fn data_head(format: Format, stream: Stream, payload_len: usize, out: &mut Vec<u8>) {
    let start = out.len();
    message::data_record_prefix(format, stream, payload_len, out);
    let record_len = out.len() - start + payload_len + message::data_record_suffix(format).len();
    let mut line = [0u8; 20];
    let line = chunk_size_line(record_len, &mut line);
    // The prefix is a few dozen bytes: moving it behind the size line costs less than
    // measuring it apart.
    out.splice(start..start, line.iter().copied());
}

/// What follows a DATA record's payload in its chunk: the record's suffix and the
/// chunk's CRLF.
pub fn data_tail(format: Format) -> &'static [u8] {
    match format {
        Format::Protobuf => b"\r\n",
        Format::Json => b"\"}}\r\n",
    }
}

/// A whole chunk holding one record of `message` (a heartbeat, say).
pub fn message_chunk<T: Message + Name>(format: Format, message: &T) -> Vec<u8> {
    let record = message::record(format, message);
    let mut line = [0u8; 20];
    let line = chunk_size_line(record.len(), &mut line);
    let mut out = Vec::with_capacity(line.len() + record.len() + 2);
    out.extend_from_slice(line);
    out.extend_from_slice(&record);
    out.extend_from_slice(super::http::CHUNK_END);
    out
}

/// A whole chunk holding the DATA record of `data` (tests and small copies).
pub fn data_chunk(format: Format, stream: Stream, data: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    let payload = match format {
        Format::Protobuf => data,
        Format::Json => {
            message::json_data_payload(data, &mut payload);
            &payload[..]
        }
    };
    let mut out = Vec::with_capacity(payload.len() + 80);
    data_head(format, stream, payload.len(), &mut out);
    out.extend_from_slice(payload);
    out.extend_from_slice(data_tail(format));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::http::{ChunkedDecoder, Limits};

    #[test]
    fn chunks_decode_to_their_records() {
        for format in [Format::Protobuf, Format::Json] {
            for len in [0, 1, 15, 16, 255, 4096, 70_000] {
                let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                let mut chunk = data_chunk(format, Stream::Stderr, &data);
                chunk.extend_from_slice(LAST_CHUNK);
                let body = dechunk(&chunk);
                let mut records = crate::wire::recordio::Decoder::new(1 << 20);
                let (used, record) = records.decode(&body).unwrap();
                assert_eq!(used, body.len());
                let pio: crate::wire::message::mesos::agent::ProcessIo =
                    message::decode(format, &record.unwrap()).unwrap();
                assert_eq!(pio.data.unwrap().data.unwrap(), data);
            }
        }
    }

    #[test]
    fn size_lines_are_lowercase_hex() {
        let mut buf = [0u8; 20];
        assert_eq!(chunk_size_line(0, &mut buf), b"0\r\n");
        assert_eq!(chunk_size_line(0xabc, &mut buf), b"abc\r\n");
        assert_eq!(chunk_size_line(usize::MAX, &mut buf), b"ffffffffffffffff\r\n");
        let mut chunk = message_chunk(Format::Protobuf, &message::heartbeat_message(1));
        let record = message::record(Format::Protobuf, &message::heartbeat_message(1));
        chunk.extend_from_slice(LAST_CHUNK);
        assert_eq!(dechunk(&chunk), record);
    }

    /// The body of a complete chunked message.
    fn dechunk(mut input: &[u8]) -> Vec<u8> {
        let mut decoder = ChunkedDecoder::new(&Limits::default());
        let mut body = Vec::new();
        loop {
            let decoded = decoder.decode(input).unwrap();
            body.extend_from_slice(decoded.data);
            input = &input[decoded.used..];
            if decoded.done {
                assert!(input.is_empty());
                return body;
            }
            assert!(decoded.used > 0, "the chunked body is incomplete");
        }
    }
}
