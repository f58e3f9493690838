//! Codec costs: encoding one DATA record in each format for 100-byte and
//! 64 KiB payloads (the prefix the server writes per format, plus the JSON payload,
//! which is made once per chunk and shared), and decoding input records (RecordIO
//! framing, the Call in each format, and its validation).
//!
//! Run: `cargo bench --bench codec`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use switchboard::wire::input::input_action;
use switchboard::wire::message::mesos::agent::Call;
use switchboard::wire::message::{self, Format, Stream};
use switchboard::wire::recordio;

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_data_record");
    for size in [100usize, 64 << 10] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 31) as u8).collect();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("protobuf", size), &payload, |b, p| {
            let mut out = Vec::with_capacity(64);
            b.iter(|| {
                out.clear();
                message::data_record_prefix(Format::Protobuf, Stream::Stdout, p.len(), &mut out);
                black_box(&out);
            })
        });
        group.bench_with_input(BenchmarkId::new("json", size), &payload, |b, p| {
            let mut body = Vec::with_capacity(size * 2);
            let mut prefix = Vec::with_capacity(64);
            b.iter(|| {
                body.clear();
                prefix.clear();
                message::json_data_payload(p, &mut body);
                message::data_record_prefix(Format::Json, Stream::Stdout, body.len(), &mut prefix);
                black_box((&prefix, &body));
            })
        });
        group.bench_with_input(BenchmarkId::new("generic_json_message", size), &payload, |b, p| {
            let m = message::data_message(Stream::Stdout, p);
            b.iter(|| black_box(message::record(Format::Json, &m)))
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_input_record");
    for size in [100usize, 64 << 10] {
        let data: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
        let call = Call {
            r#type: Some(18),
            attach_container_input: Some(message::mesos::agent::call::AttachContainerInput {
                r#type: Some(2),
                container_id: None,
                process_io: Some(message::mesos::agent::ProcessIo {
                    r#type: Some(1),
                    data: Some(message::mesos::agent::process_io::Data {
                        r#type: Some(1),
                        data: Some(data),
                    }),
                    control: None,
                }),
            }),
            ..Default::default()
        };
        group.throughput(Throughput::Bytes(size as u64));
        for format in [Format::Protobuf, Format::Json] {
            let stream = message::record(format, &call);
            let name = if format == Format::Json { "json" } else { "protobuf" };
            group.bench_with_input(BenchmarkId::new(name, size), &stream, |b, s| {
                b.iter(|| {
                    let mut d = recordio::Decoder::new(1 << 20);
                    let (_, rec) = d.decode(s).unwrap();
                    let call: Call = message::decode(format, &rec.unwrap()).unwrap();
                    black_box(input_action(&call).unwrap())
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
