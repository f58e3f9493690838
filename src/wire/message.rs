//! The Mesos messages (prost types generated from `proto/`) and their two encodings,
//! binary protobuf and Mesos JSON, with the error texts Mesos answers bad bodies with.
//!
//! Output records are framed here too. A DATA record is split into a small prefix, the
//! payload, and a suffix, so that the server can send one shared payload buffer behind
//! per-format prefixes without copying it:
//!
//! * protobuf: prefix = RecordIO length line + the `ProcessIO`/`Data` tags and lengths,
//!   payload = the container's bytes themselves, no suffix;
//! * JSON: prefix = length line + `{"type":"DATA","data":{"type":"STDOUT","data":"`,
//!   payload = the escaped base64 of the bytes (encoded once, shared by every JSON
//!   client), suffix = `"}}`.

use prost::{Message, Name};

use super::{recordio, reflect, schema};

/// The prost types of `proto/`, in their Mesos packages.
#[allow(clippy::all, missing_docs)]
pub mod mesos {
    include!(concat!(env!("OUT_DIR"), "/mesos.rs"));

    /// Package `mesos.agent`.
    pub mod agent {
        include!(concat!(env!("OUT_DIR"), "/mesos.agent.rs"));
    }
}

use mesos::agent::ProcessIo;
use mesos::agent::process_io::{self, Control, Data, control};

/// A record encoding: the media types `application/json` and `application/x-protobuf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    Protobuf,
}

impl Format {
    /// The canonical media type.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Protobuf => "application/x-protobuf",
        }
    }
}

/// Which container stream a DATA record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn data_type(self) -> process_io::data::Type {
        match self {
            Stream::Stdout => process_io::data::Type::Stdout,
            Stream::Stderr => process_io::data::Type::Stderr,
        }
    }
}

fn schema_index<T: Name>() -> usize {
    schema::message_index(&T::full_name()).expect("every prost type of proto/ is in the schema")
}

text_error! {
    /// A body that is not the message it should be, with the text Mesos answers it with.
    DecodeError
}

/// Decodes a message the way Mesos's `deserialize<T>` does, with its error texts:
/// `Failed to parse body into JSON: ...`, the JSON-to-protobuf conversion errors, and
/// `Failed to parse body into a protobuf object` (which includes missing required fields).
pub fn decode<T: Message + Name + Default>(format: Format, body: &[u8]) -> Result<T, DecodeError> {
    decode_text(format, body).map_err(DecodeError)
}

fn decode_text<T: Message + Name + Default>(format: Format, body: &[u8]) -> Result<T, String> {
    const BAD_PROTOBUF: &str = "Failed to parse body into a protobuf object";
    let index = schema_index::<T>();
    match format {
        Format::Protobuf => {
            match reflect::missing_required(index, body) {
                Ok(missing) if missing.is_empty() => {}
                _ => return Err(BAD_PROTOBUF.to_string()),
            }
            // An unknown enum number reads as unset, as in C++ proto2 (and in our JSON).
            match reflect::strip_unknown_enums(index, body) {
                Ok(None) => T::decode(body),
                Ok(Some(clean)) => T::decode(clean.as_slice()),
                Err(_) => return Err(BAD_PROTOBUF.to_string()),
            }
            .map_err(|_| BAD_PROTOBUF.to_string())
        }
        Format::Json => {
            let value: serde_json::Value =
                serde_json::from_slice(body).map_err(|e| format!("Failed to parse body into JSON: {e}"))?;
            let bytes = reflect::from_json(index, &value)?;
            T::decode(bytes.as_slice()).map_err(|e| format!("Failed to convert JSON into a protobuf object: {e}"))
        }
    }
}

/// Encodes a message: protobuf as prost does (field-number order, as C++ does for our
/// messages), JSON as Mesos writes it.
pub fn encode<T: Message + Name>(format: Format, message: &T) -> Vec<u8> {
    let bytes = message.encode_to_vec();
    match format {
        Format::Protobuf => bytes,
        Format::Json => {
            let mut out = Vec::with_capacity(bytes.len() * 2 + 16);
            reflect::to_json(schema_index::<T>(), &bytes, &mut out).expect("prost output is well-formed protobuf");
            out
        }
    }
}

/// A whole RecordIO record (length line and payload) of `message`.
pub fn record<T: Message + Name>(format: Format, message: &T) -> Vec<u8> {
    let payload = encode(format, message);
    let mut out = Vec::with_capacity(payload.len() + 12);
    recordio::write_header(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

/// The `ProcessIO` DATA message for one chunk of container output.
pub fn data_message(stream: Stream, data: &[u8]) -> ProcessIo {
    ProcessIo {
        r#type: Some(process_io::Type::Data as i32),
        data: Some(Data {
            r#type: Some(stream.data_type() as i32),
            data: Some(data.to_vec()),
        }),
        control: None,
    }
}

/// The `ProcessIO` CONTROL/HEARTBEAT message the server sends every interval.
pub fn heartbeat_message(interval_ns: i64) -> ProcessIo {
    ProcessIo {
        r#type: Some(process_io::Type::Control as i32),
        data: None,
        control: Some(Control {
            r#type: Some(control::Type::Heartbeat as i32),
            tty_info: None,
            heartbeat: Some(control::Heartbeat {
                interval: Some(mesos::DurationInfo {
                    nanoseconds: interval_ns,
                }),
            }),
        }),
    }
}

fn varint_len(v: usize) -> usize {
    (usize::BITS as usize - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(mut v: usize, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn json_data_head(stream: Stream) -> &'static [u8] {
    match stream {
        Stream::Stdout => br#"{"type":"DATA","data":{"type":"STDOUT","data":""#,
        Stream::Stderr => br#"{"type":"DATA","data":{"type":"STDERR","data":""#,
    }
}

const JSON_DATA_SUFFIX: &[u8] = br#""}}"#;

/// Appends everything of a DATA record that comes before its payload: the RecordIO length
/// line and the message bytes up to the payload. `payload_len` is the length of the
/// payload that follows: the container bytes for protobuf, the output of
/// [`json_data_payload`] for JSON.
pub fn data_record_prefix(format: Format, stream: Stream, payload_len: usize, out: &mut Vec<u8>) {
    match format {
        Format::Protobuf => {
            // ProcessIO { type: DATA (1), data (2): Data { type (1), data (2): payload } }
            let inner = 2 + 1 + varint_len(payload_len) + payload_len;
            let total = 2 + 1 + varint_len(inner) + inner;
            recordio::write_header(total, out);
            out.extend_from_slice(&[0x08, process_io::Type::Data as u8, 0x12]);
            put_varint(inner, out);
            out.extend_from_slice(&[0x08, stream.data_type() as u8, 0x12]);
            put_varint(payload_len, out);
        }
        Format::Json => {
            let head = json_data_head(stream);
            recordio::write_header(head.len() + payload_len + JSON_DATA_SUFFIX.len(), out);
            out.extend_from_slice(head);
        }
    }
}

/// What follows a DATA record's payload.
pub fn data_record_suffix(format: Format) -> &'static [u8] {
    match format {
        Format::Protobuf => b"",
        Format::Json => JSON_DATA_SUFFIX,
    }
}

/// Appends the JSON payload of a DATA record for `data`: its standard base64, with `/`
/// escaped as Mesos writes it.
pub fn json_data_payload(data: &[u8], out: &mut Vec<u8>) {
    super::json::write_base64(data, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesos::agent::{Call, call};
    use proptest::prelude::*;

    fn data_record(format: Format, stream: Stream, data: &[u8]) -> Vec<u8> {
        let mut payload = Vec::new();
        let payload = match format {
            Format::Protobuf => data,
            Format::Json => {
                json_data_payload(data, &mut payload);
                &payload[..]
            }
        };
        let mut out = Vec::new();
        data_record_prefix(format, stream, payload.len(), &mut out);
        out.extend_from_slice(payload);
        out.extend_from_slice(data_record_suffix(format));
        out
    }

    #[test]
    fn golden_records_of_protocol_2_13() {
        assert_eq!(
            data_record(Format::Json, Stream::Stdout, b"hi\n"),
            b"54\n{\"type\":\"DATA\",\"data\":{\"type\":\"STDOUT\",\"data\":\"aGkK\"}}"
        );
        assert_eq!(
            data_record(Format::Protobuf, Stream::Stdout, b"hi\n"),
            b"11\n\x08\x01\x12\x07\x08\x02\x12\x03hi\n"
        );
        let hb = record(Format::Json, &heartbeat_message(30_000_000_000));
        assert_eq!(
            hb,
            b"102\n{\"type\":\"CONTROL\",\"control\":{\"type\":\"HEARTBEAT\",\"heartbeat\":{\"interval\":{\"nanoseconds\":30000000000}}}}"
        );
        assert_eq!(
            encode(Format::Protobuf, &heartbeat_message(30_000_000_000)),
            [
                0x08, 0x02, 0x1a, 0x0c, 0x08, 0x02, 0x1a, 0x08, 0x0a, 0x06, 0x08, 0x80, 0xd8, 0x8e, 0xe1, 0x6f
            ]
        );
    }

    #[test]
    fn golden_input_calls_decode() {
        let first: Call = decode(
            Format::Protobuf,
            &[
                0x08, 0x12, 0x52, 0x09, 0x08, 0x01, 0x12, 0x05, 0x0a, 0x03, b'a', b'b', b'c',
            ],
        )
        .unwrap();
        let json: Call = decode(
            Format::Json,
            br#"{"type":"ATTACH_CONTAINER_INPUT","attach_container_input":{"type":"CONTAINER_ID","container_id":{"value":"abc"}}}"#,
        )
        .unwrap();
        assert_eq!(first, json);
        assert_eq!(first.r#type, Some(call::Type::AttachContainerInput as i32));
        let stdin: Call = decode(
            Format::Protobuf,
            &[
                0x08, 0x12, 0x52, 0x0d, 0x08, 0x02, 0x1a, 0x09, 0x08, 0x01, 0x12, 0x05, 0x08, 0x01, 0x12, 0x01, b'x',
            ],
        )
        .unwrap();
        let data = stdin.attach_container_input.unwrap().process_io.unwrap().data.unwrap();
        assert_eq!(data.data.as_deref(), Some(&b"x"[..]));
    }

    #[test]
    fn decode_errors_carry_mesos_texts() {
        let e = decode::<Call>(Format::Json, b"{\"type\":").unwrap_err().0;
        assert!(e.starts_with("Failed to parse body into JSON: "), "{e}");
        assert!(
            decode::<Call>(Format::Json, b"{} trailing")
                .unwrap_err()
                .0
                .starts_with("Failed to parse body into JSON: ")
        );
        assert_eq!(
            decode::<Call>(Format::Protobuf, b"\xff").unwrap_err().0,
            "Failed to parse body into a protobuf object"
        );
        // Missing required field in binary: AttachContainerOutput without container_id.
        assert_eq!(
            decode::<Call>(Format::Protobuf, &[0x08, 0x13, 0x5a, 0x00])
                .unwrap_err()
                .0,
            "Failed to parse body into a protobuf object"
        );
        assert_eq!(
            decode::<Call>(
                Format::Json,
                br#"{"type":"ATTACH_CONTAINER_OUTPUT","attach_container_output":{}}"#
            )
            .unwrap_err()
            .0,
            "Missing required fields: attach_container_output.container_id"
        );
        assert!(decode::<Call>(Format::Json, br#"{"type":"ATTACH_CONTAINER_OUTPUT"}"#).is_ok());
    }

    proptest! {
        #[test]
        fn data_records_decode_back(data in proptest::collection::vec(any::<u8>(), 0..2000), json in any::<bool>(), err in any::<bool>()) {
            let format = if json { Format::Json } else { Format::Protobuf };
            let stream = if err { Stream::Stderr } else { Stream::Stdout };
            let framed = data_record(format, stream, &data);
            let expected = record(format, &data_message(stream, &data));
            prop_assert_eq!(&framed, &expected);
            let mut decoder = recordio::Decoder::new(1 << 20);
            let (used, rec) = decoder.decode(&framed).unwrap();
            prop_assert_eq!(used, framed.len());
            let message: ProcessIo = decode(format, &rec.unwrap()).unwrap();
            prop_assert_eq!(message, data_message(stream, &data));
        }
    }
}
