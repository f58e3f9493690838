//! The body checker that tests and benchmarks use finds exactly what a body carries,
//! whatever its split and framing, and notices a wrong byte.

use common::{BodyChecker, Checker, Rng, fill_pattern};
use switchboard::wire::http::{CHUNK_END, write_chunk_size};
use switchboard::wire::message::{
    data_message, data_record_prefix, data_record_suffix, heartbeat_message, json_data_payload, record,
};
use switchboard::wire::{Format, Stream};

const SEEDS: [u64; 2] = [11, 12];

/// A body of random DATA records of both streams (framed as the server does, or by the
/// generic encoder) and heartbeats, then a 50,000-byte
/// stdout record, chunked either one record per chunk (as the server sends it) or at
/// random places. Returns it, the streams' lengths and the number of heartbeats.
fn body(rng: &mut Rng, format: Format, records: usize, one_per_chunk: bool) -> (Vec<u8>, [u64; 2], usize) {
    let mut pos = [0u64; 2];
    let mut heartbeats = 0;
    let mut recs = Vec::new();
    for i in 0..=records {
        if i < records && rng.below(8) == 0 {
            recs.push(record(format, &heartbeat_message(1_000_000_000)));
            heartbeats += 1;
            continue;
        }
        let s = rng.below(2) as usize;
        // Sizes around the varint and page edges as well as up to a record and more.
        let len = match rng.below(4) {
            _ if i == records => 50_000,
            0 => 1 + rng.below(200),
            1 => 16_000 + rng.below(800),
            _ => 1 + rng.below(70_000),
        } as usize;
        let s = if i == records { 0 } else { s };
        let mut data = vec![0; len];
        fill_pattern(SEEDS[s], pos[s], &mut data);
        pos[s] += len as u64;
        let stream = if s == 0 { Stream::Stdout } else { Stream::Stderr };
        if rng.below(2) == 0 {
            // As the server frames them (for JSON: its own fast shape).
            let mut payload = data.clone();
            if format == Format::Json {
                payload.clear();
                json_data_payload(&data, &mut payload);
            }
            let mut r = Vec::new();
            data_record_prefix(format, stream, payload.len(), &mut r);
            r.extend_from_slice(&payload);
            r.extend_from_slice(data_record_suffix(format));
            recs.push(r);
        } else {
            // Through the generic encoder.
            recs.push(record(format, &data_message(stream, &data)));
        }
    }
    let mut out = Vec::new();
    let chunk = |bytes: &[u8], out: &mut Vec<u8>| {
        write_chunk_size(bytes.len(), out);
        out.extend_from_slice(bytes);
        out.extend_from_slice(CHUNK_END);
    };
    if one_per_chunk {
        for r in &recs {
            chunk(r, &mut out);
        }
    } else {
        let all = recs.concat();
        let mut at = 0;
        while at < all.len() {
            let n = (1 + rng.below(100_000) as usize).min(all.len() - at);
            chunk(&all[at..at + n], &mut out);
            at += n;
        }
    }
    out.extend_from_slice(b"0\r\n\r\n");
    (out, pos, heartbeats)
}

/// Feeds `bytes` to `c` in pieces of random sizes (some of one byte).
fn feed(rng: &mut Rng, c: &mut dyn Checker, bytes: &[u8]) {
    let mut at = 0;
    while at < bytes.len() {
        let n = if rng.below(3) == 0 {
            1 + rng.below(8)
        } else {
            1 + rng.below(300_000)
        };
        let n = (n as usize).min(bytes.len() - at);
        c.feed(&bytes[at..at + n]);
        at += n;
    }
    c.finish();
}

#[test]
fn finds_what_the_body_carries_however_split() {
    let (mut streamed, mut decoded) = (0, 0);
    for format in [Format::Protobuf, Format::Json] {
        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let records = 1 + rng.below(60) as usize;
            let (body, lens, heartbeats) = body(&mut rng, format, records, seed % 2 == 0);
            let mut c = BodyChecker::new(format, SEEDS, Some(lens));
            // What comes before the body (a response head) is skipped.
            c.skip = 7;
            let mut bytes = b"HTTP/1".to_vec();
            bytes.push(b'\n');
            bytes.extend_from_slice(&body);
            feed(&mut rng, &mut c, &bytes);
            assert_eq!(c.pos, lens, "{format:?} seed {seed}");
            assert_eq!(c.heartbeats, heartbeats, "{format:?} seed {seed}");
            assert!(c.ended);
            streamed += c.json_streamed;
            decoded += c.json_decoded;
        }
    }
    // Both of the JSON checker's ways were taken.
    assert!(
        streamed > 100 && decoded > 100,
        "{streamed} JSON records streamed, {decoded} decoded"
    );
}

#[test]
fn finds_a_wrong_byte_a_short_body_and_bad_framing() {
    for format in [Format::Protobuf, Format::Json] {
        let mut rng = Rng(7);
        let (body, lens, _) = body(&mut rng, format, 30, true);
        let run = |bytes: Vec<u8>| {
            std::panic::catch_unwind(move || {
                let mut c = BodyChecker::new(format, SEEDS, Some(lens));
                c.feed(&bytes);
                c.finish();
            })
        };
        assert!(run(body.clone()).is_ok());
        // A payload byte changed (in the last record's; for JSON, a base64 letter).
        let mut wrong = body.clone();
        let at = wrong.len() - 1000;
        wrong[at] = if wrong[at] == b'A' { b'B' } else { b'A' };
        assert!(run(wrong).is_err(), "{format:?}: a changed payload byte went unnoticed");
        // The body cut short, and the last chunk missing.
        assert!(run(body[..body.len() / 2].to_vec()).is_err());
        assert!(run(body[..body.len() - 5].to_vec()).is_err());
        // A chunk's CRLF broken.
        let mut framing = body.clone();
        let first_end = framing.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&framing[..first_end]).unwrap(), 16).unwrap();
        framing[first_end + 2 + size] = b'x';
        assert!(run(framing).is_err(), "{format:?}: a broken chunk went unnoticed");
    }
}
