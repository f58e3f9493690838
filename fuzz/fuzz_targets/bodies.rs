//! The bodies of the fuzz targets, shared with `tests/fuzz_bodies.rs` (which runs them on
//! random inputs in CI). Each checks properties, not just the absence of panics: any split
//! of the input decodes as the whole does, and decoded messages round-trip.

#![allow(dead_code)]

use switchboard::wire::http::{ChunkedDecoder, Event, Limits, RequestReader, parse_head};
use switchboard::wire::input::{check_first_record, input_action};
use switchboard::wire::media::route;
use switchboard::wire::message::mesos::agent::Call;
use switchboard::wire::message::{Format, decode, encode};
use switchboard::wire::recordio;

/// The first byte picks where the input is cut in two.
fn split(data: &[u8]) -> (&[u8], usize) {
    match data.split_first() {
        Some((&cut, rest)) => (rest, usize::from(cut) % (rest.len() + 1)),
        None => (data, 0),
    }
}

/// A connection's bytes as requests: heads, bodies, ends; the same in one piece or two.
pub fn http_head(data: &[u8]) {
    let (data, cut) = split(data);
    let limits = Limits {
        max_head_bytes: 4096,
        max_headers: 16,
        max_chunk_line: 64,
        max_trailer_bytes: 256,
    };
    if let Ok(Some((head, _))) = parse_head(data, &limits) {
        let _ = route(&head);
    }
    let whole = events(&[data], limits);
    let parts = events(&[&data[..cut], &data[cut..]], limits);
    assert_eq!(whole, parts, "splitting the input changed the requests");
}

fn events(parts: &[&[u8]], limits: Limits) -> Vec<String> {
    let mut reader = RequestReader::new(limits);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for part in parts {
        buf.extend_from_slice(part);
        loop {
            match reader.next(&buf) {
                Err(e) => {
                    out.push(format!("error {}", e.status));
                    return out;
                }
                Ok((used, event)) => {
                    match event {
                        Some(Event::Head(h)) => out.push(format!("head {} {} {:?}", h.method, h.path, h.body)),
                        Some(Event::Body(b)) => match out.last_mut() {
                            Some(last) if last.starts_with("body ") => last.push_str(&String::from_utf8_lossy(b)),
                            _ => out.push(format!("body {}", String::from_utf8_lossy(b))),
                        },
                        Some(Event::End) => out.push("end".into()),
                        None => {
                            buf.drain(..used);
                            break;
                        }
                    }
                    buf.drain(..used);
                }
            }
        }
    }
    out
}

/// A chunked body: the same data in one piece or two, and never more than was sent.
pub fn chunked(data: &[u8]) {
    let (data, cut) = split(data);
    let limits = Limits {
        max_chunk_line: 64,
        max_trailer_bytes: 256,
        ..Limits::default()
    };
    let whole = dechunk(&[data], &limits);
    let parts = dechunk(&[&data[..cut], &data[cut..]], &limits);
    assert_eq!(whole, parts, "splitting the body changed it");
    if let Ok((body, _)) = &whole {
        assert!(body.len() <= data.len());
    }
}

fn dechunk(parts: &[&[u8]], limits: &Limits) -> Result<(Vec<u8>, bool), u16> {
    let mut d = ChunkedDecoder::new(limits);
    let mut body = Vec::new();
    for part in parts {
        let mut pos = 0;
        while pos < part.len() {
            let step = d.decode(&part[pos..]).map_err(|e| e.status)?;
            pos += step.used;
            body.extend_from_slice(step.data);
            if step.done {
                return Ok((body, true));
            }
            if step.used == 0 && step.data.is_empty() {
                break;
            }
        }
    }
    Ok((body, false))
}

/// A RecordIO stream: the same records in one piece or two, none larger than the limit.
pub fn recordio(data: &[u8]) {
    let (data, cut) = split(data);
    let whole = records(&[data]);
    let parts = records(&[&data[..cut], &data[cut..]]);
    assert_eq!(whole, parts, "splitting the stream changed the records");
}

fn records(parts: &[&[u8]]) -> (Vec<Vec<u8>>, Option<String>) {
    let mut d = recordio::Decoder::new(1024);
    let mut out = Vec::new();
    for part in parts {
        let mut pos = 0;
        while pos < part.len() {
            match d.decode(&part[pos..]) {
                Err(e) => return (out, Some(e.to_string())),
                Ok((used, rec)) => {
                    pos += used;
                    if let Some(rec) = rec {
                        assert!(rec.len() <= 1024);
                        out.push(rec);
                    }
                }
            }
        }
    }
    let end = d.finish().err().map(|e| e.to_string());
    (out, end)
}

/// An input record in either format: validation never panics, and what decodes
/// re-encodes to the same message.
pub fn input_call(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else { return };
    let format = if which & 1 == 0 { Format::Json } else { Format::Protobuf };
    if let Ok(call) = decode::<Call>(format, body) {
        let _ = check_first_record(&call);
        let _ = input_action(&call);
        for f in [Format::Json, Format::Protobuf] {
            let again: Call = decode(f, &encode(f, &call)).expect("our own encoding decodes");
            assert_eq!(again, call, "{f:?} round trip");
        }
    }
}
