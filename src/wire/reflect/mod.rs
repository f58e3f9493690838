//! Schema-driven protobuf handling that prost does not do for us:
//!
//! * the proto2 `required` check (`IsInitialized` / `InitializationErrorString`) on raw
//!   protobuf bytes, with Mesos's error paths (`a.b`, `list[2].c`);
//! * Mesos JSON reading (`stout protobuf::parse`): JSON is turned into protobuf bytes that
//!   prost then decodes;
//! * Mesos JSON writing (`JSON::Protobuf`): protobuf bytes, as prost encodes them, turned
//!   into compact JSON with keys in declaration order.
//!
//! JSON reading is in [`from_json`]. Everything is driven by `schema::MESSAGES`, generated from `proto/` by `build.rs`.
//! Nesting is bounded by [`MAX_DEPTH`] so hostile input cannot exhaust the stack.

mod from_json;

pub(crate) use from_json::from_json;

use super::json;
use super::schema::{ENUMS, FieldDesc, Kind, Label, MESSAGES, MessageDesc};

/// Maximum message nesting accepted in either direction (prost's own limit is 100).
pub(crate) const MAX_DEPTH: usize = 64;

/// Malformed protobuf bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WireError {
    Truncated,
    BadVarint,
    BadWireType,
    BadFieldNumber,
    TooDeep,
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

#[derive(Debug, Clone, Copy)]
enum WireValue<'a> {
    Varint(u64),
    /// A fixed32 or fixed64 value: no field of ours has one, so it is only skipped.
    Fixed,
    Len(&'a [u8]),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = *self.buf.get(self.pos).ok_or(WireError::Truncated)?;
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(WireError::BadVarint);
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(WireError::BadVarint)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn key(&mut self) -> Result<(u32, u8), WireError> {
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| WireError::BadFieldNumber)?;
        if number == 0 || number > 536_870_911 {
            return Err(WireError::BadFieldNumber);
        }
        Ok((number, (key & 7) as u8))
    }

    /// The next field, skipping groups (which no message of ours has, so they can only be
    /// unknown fields).
    fn next(&mut self) -> Result<Option<(u32, WireValue<'a>)>, WireError> {
        loop {
            if self.pos == self.buf.len() {
                return Ok(None);
            }
            let (number, wire_type) = self.key()?;
            let value = match wire_type {
                VARINT => WireValue::Varint(self.varint()?),
                FIXED64 => {
                    self.take(8)?;
                    WireValue::Fixed
                }
                LEN => {
                    let n = usize::try_from(self.varint()?).map_err(|_| WireError::Truncated)?;
                    WireValue::Len(self.take(n)?)
                }
                FIXED32 => {
                    self.take(4)?;
                    WireValue::Fixed
                }
                START_GROUP => {
                    self.skip_group(number, 0)?;
                    continue;
                }
                _ => return Err(WireError::BadWireType),
            };
            return Ok(Some((number, value)));
        }
    }

    fn skip_group(&mut self, number: u32, depth: usize) -> Result<(), WireError> {
        if depth >= MAX_DEPTH {
            return Err(WireError::TooDeep);
        }
        loop {
            if self.pos == self.buf.len() {
                return Err(WireError::Truncated);
            }
            let (n, wire_type) = self.key()?;
            match wire_type {
                VARINT => {
                    self.varint()?;
                }
                FIXED64 => {
                    self.take(8)?;
                }
                LEN => {
                    let len = usize::try_from(self.varint()?).map_err(|_| WireError::Truncated)?;
                    self.take(len)?;
                }
                FIXED32 => {
                    self.take(4)?;
                }
                START_GROUP => self.skip_group(n, depth + 1)?,
                END_GROUP if n == number => return Ok(()),
                _ => return Err(WireError::BadWireType),
            }
        }
    }
}

fn is_varint_kind(kind: Kind) -> bool {
    matches!(kind, Kind::Int64 | Kind::Uint32 | Kind::Bool | Kind::Enum(_))
}

/// Checks that a value's wire type fits the field, as prost's decoder will.
fn check_wire_type(field: &FieldDesc, value: &WireValue<'_>) -> Result<(), WireError> {
    let ok = match (field.kind, value) {
        (Kind::String | Kind::Bytes | Kind::Message(_), WireValue::Len(_)) => true,
        // Packed repeated scalars.
        (_, WireValue::Len(_)) => field.label == Label::Repeated,
        (k, WireValue::Varint(_)) => is_varint_kind(k),
        _ => false,
    };
    if ok { Ok(()) } else { Err(WireError::BadWireType) }
}

fn field_by_number(desc: &MessageDesc, number: u32) -> Option<(usize, &'static FieldDesc)> {
    desc.fields.iter().enumerate().find(|(_, f)| f.number == number)
}

/// Field values of one message, grouped by field (declaration index). A message may
/// arrive in several pieces (a singular sub-message that occurs twice is merged, which
/// on the wire is concatenation), so every walk takes a list of pieces.
struct Fields<'a> {
    values: Vec<Vec<WireValue<'a>>>,
}

fn collect<'a>(desc: &MessageDesc, pieces: &[&'a [u8]]) -> Result<Fields<'a>, WireError> {
    let mut values = vec![Vec::new(); desc.fields.len()];
    for piece in pieces {
        let mut reader = Reader::new(piece);
        while let Some((number, value)) = reader.next()? {
            if let Some((i, field)) = field_by_number(desc, number) {
                check_wire_type(field, &value)?;
                values[i].push(value);
            }
        }
    }
    Ok(Fields { values })
}

/// Expands one field's values into scalars, unpacking packed encodings.
fn scalars<'a>(field: &FieldDesc, values: &[WireValue<'a>]) -> Result<Vec<WireValue<'a>>, WireError> {
    let mut out = Vec::with_capacity(values.len());
    for value in values {
        match (field.kind, value) {
            (Kind::String | Kind::Bytes | Kind::Message(_), _) => out.push(*value),
            // Packed: every scalar kind we support is a varint.
            (_, WireValue::Len(packed)) => {
                let mut r = Reader::new(packed);
                while r.pos < packed.len() {
                    out.push(WireValue::Varint(r.varint()?));
                }
            }
            _ => out.push(*value),
        }
    }
    Ok(out)
}

/// Whether an enum value is one the schema knows. Like C++ proto2, an unknown enum number
/// is kept aside as an unknown field: the field then reads as unset.
fn known_enum(kind: Kind, value: &WireValue<'_>) -> bool {
    match (kind, value) {
        (Kind::Enum(e), WireValue::Varint(v)) => ENUMS[e].name_of(*v as i32).is_some(),
        _ => true,
    }
}

/// The `required` fields missing from `bytes` (a message of type `msg`), as protobuf's
/// `FindInitializationErrors` lists them: this message's missing fields in declaration
/// order, then those of set sub-messages in field-number order.
pub(crate) fn missing_required(msg: usize, bytes: &[u8]) -> Result<Vec<String>, WireError> {
    let mut errors = Vec::new();
    find_missing(msg, &[bytes], "", &mut errors, 0)?;
    Ok(errors)
}

fn find_missing(
    msg: usize,
    pieces: &[&[u8]],
    prefix: &str,
    errors: &mut Vec<String>,
    depth: usize,
) -> Result<(), WireError> {
    if depth >= MAX_DEPTH {
        return Err(WireError::TooDeep);
    }
    let desc = &MESSAGES[msg];
    let fields = collect(desc, pieces)?;
    for (field, values) in desc.fields.iter().zip(&fields.values) {
        if field.label == Label::Required && !values.iter().any(|v| known_enum(field.kind, v)) {
            errors.push(format!("{prefix}{}", field.name));
        }
    }
    let mut by_number: Vec<(&FieldDesc, &Vec<WireValue<'_>>)> = desc.fields.iter().zip(&fields.values).collect();
    by_number.sort_by_key(|(f, _)| f.number);
    for (field, values) in by_number {
        let Kind::Message(sub) = field.kind else { continue };
        let bodies = len_bodies(values);
        if bodies.is_empty() {
            continue;
        }
        if field.label == Label::Repeated {
            for (i, body) in bodies.iter().enumerate() {
                let p = format!("{prefix}{}[{i}].", field.name);
                find_missing(sub, &[body], &p, errors, depth + 1)?;
            }
        } else {
            let p = format!("{prefix}{}.", field.name);
            find_missing(sub, &bodies, &p, errors, depth + 1)?;
        }
    }
    Ok(())
}

/// Removes fields whose enum value the schema does not know (C++ proto2 keeps them as
/// unknown fields, so the field reads as unset; prost would keep the number). Returns
/// `None` when there is none, the usual case, so nothing is copied.
pub(crate) fn strip_unknown_enums(msg: usize, bytes: &[u8]) -> Result<Option<Vec<u8>>, WireError> {
    if !has_unknown_enum(msg, bytes, 0)? {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(bytes.len());
    rewrite_known(msg, bytes, &mut out, 0)?;
    Ok(Some(out))
}

fn has_unknown_enum(msg: usize, bytes: &[u8], depth: usize) -> Result<bool, WireError> {
    if depth >= MAX_DEPTH {
        return Err(WireError::TooDeep);
    }
    let desc = &MESSAGES[msg];
    let mut reader = Reader::new(bytes);
    while let Some((number, value)) = reader.next()? {
        let Some((_, field)) = field_by_number(desc, number) else { continue };
        match (field.kind, value) {
            (Kind::Enum(_), WireValue::Varint(_)) if !known_enum(field.kind, &value) => return Ok(true),
            (Kind::Message(sub), WireValue::Len(b)) if has_unknown_enum(sub, b, depth + 1)? => return Ok(true),
            _ => {}
        }
    }
    Ok(false)
}

fn rewrite_known(msg: usize, bytes: &[u8], out: &mut Vec<u8>, depth: usize) -> Result<(), WireError> {
    if depth >= MAX_DEPTH {
        return Err(WireError::TooDeep);
    }
    let desc = &MESSAGES[msg];
    let mut reader = Reader::new(bytes);
    loop {
        let start = reader.pos;
        let Some((number, value)) = reader.next()? else { return Ok(()) };
        let raw = &bytes[start..reader.pos];
        match (field_by_number(desc, number), value) {
            (Some((_, f)), WireValue::Varint(_)) if !known_enum(f.kind, &value) => {}
            (Some((_, f)), WireValue::Len(b)) if matches!(f.kind, Kind::Message(_)) => {
                let Kind::Message(sub) = f.kind else { unreachable!("matched above") };
                let mut inner = Vec::with_capacity(b.len());
                rewrite_known(sub, b, &mut inner, depth + 1)?;
                put_len(number, &inner, out);
            }
            _ => out.extend_from_slice(raw),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Protobuf bytes -> Mesos JSON

/// Appends the Mesos JSON form of `bytes` (a message of type `msg`) to `out`.
pub(crate) fn to_json(msg: usize, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
    write_message(msg, &[bytes], out, 0)
}

fn write_message(msg: usize, pieces: &[&[u8]], out: &mut Vec<u8>, depth: usize) -> Result<(), WireError> {
    if depth >= MAX_DEPTH {
        return Err(WireError::TooDeep);
    }
    let desc = &MESSAGES[msg];
    let fields = collect(desc, pieces)?;
    out.push(b'{');
    let mut first = true;
    let mut key = |name: &str, out: &mut Vec<u8>| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        json::write_string(name.as_bytes(), out);
        out.push(b':');
    };
    for (field, values) in desc.fields.iter().zip(&fields.values) {
        if field.label == Label::Repeated {
            let elements: Vec<WireValue<'_>> = scalars(field, values)?
                .into_iter()
                .filter(|v| known_enum(field.kind, v))
                .collect();
            if elements.is_empty() {
                continue;
            }
            key(field.name, out);
            out.push(b'[');
            for (i, value) in elements.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(field, &[*value], out, depth)?;
            }
            out.push(b']');
        } else if let Kind::Message(_) = field.kind {
            if !values.is_empty() {
                key(field.name, out);
                write_value(field, values, out, depth)?;
            }
        } else if let Some(last) = values.iter().rev().find(|v| known_enum(field.kind, v)) {
            key(field.name, out);
            write_value(field, &[*last], out, depth)?;
        } else if let (Some(default), false) = (field.default, field.deprecated) {
            key(field.name, out);
            write_default(field, default, out);
        }
    }
    out.push(b'}');
    Ok(())
}

/// The bodies of a message field's values (their wire types were checked).
fn len_bodies<'a>(values: &[WireValue<'a>]) -> Vec<&'a [u8]> {
    values
        .iter()
        .map(|v| match v {
            WireValue::Len(b) => *b,
            _ => unreachable!("wire types were checked"),
        })
        .collect()
}

fn write_value(field: &FieldDesc, values: &[WireValue<'_>], out: &mut Vec<u8>, depth: usize) -> Result<(), WireError> {
    let text = match (field.kind, values[0]) {
        (Kind::Message(sub), _) => {
            let bodies = len_bodies(values);
            return write_message(sub, &bodies, out, depth + 1);
        }
        (Kind::String, WireValue::Len(s)) => {
            json::write_string(s, out);
            return Ok(());
        }
        (Kind::Bytes, WireValue::Len(b)) => {
            out.push(b'"');
            json::write_base64(b, out);
            out.push(b'"');
            return Ok(());
        }
        (Kind::Enum(e), WireValue::Varint(v)) => {
            let name = ENUMS[e].name_of(v as i32).expect("unknown enum values are filtered");
            json::write_string(name.as_bytes(), out);
            return Ok(());
        }
        (Kind::Bool, WireValue::Varint(v)) => (if v != 0 { "true" } else { "false" }).to_string(),
        (Kind::Int64, WireValue::Varint(v)) => (v as i64).to_string(),
        (Kind::Uint32, WireValue::Varint(v)) => (v as u32).to_string(),
        _ => return Err(WireError::BadWireType),
    };
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

fn write_default(field: &FieldDesc, default: &str, out: &mut Vec<u8>) {
    match field.kind {
        Kind::String | Kind::Enum(_) => json::write_string(default.as_bytes(), out),
        // Numbers and booleans: protoc's text is already the JSON text.
        _ => out.extend_from_slice(default.as_bytes()),
    }
}

// ---------------------------------------------------------------------------------------
// Writing protobuf bytes

fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(number: u32, wire_type: u8, out: &mut Vec<u8>) {
    put_varint((u64::from(number) << 3) | u64::from(wire_type), out);
}

fn put_len(number: u32, bytes: &[u8], out: &mut Vec<u8>) {
    put_key(number, LEN, out);
    put_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::schema::message_index;

    fn idx(name: &str) -> usize {
        message_index(name).unwrap()
    }

    fn json_of(msg: &str, bytes: &[u8]) -> String {
        let mut out = Vec::new();
        to_json(idx(msg), bytes, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn heartbeat_json_in_declaration_order() {
        // A HEARTBEAT of 30 s (docs/protocol.md §14.2).
        let pb = [
            0x08, 0x02, 0x1a, 0x0c, 0x08, 0x02, 0x1a, 0x08, 0x0a, 0x06, 0x08, 0x80, 0xd8, 0x8e, 0xe1, 0x6f,
        ];
        assert_eq!(
            json_of("mesos.agent.ProcessIO", &pb),
            r#"{"type":"CONTROL","control":{"type":"HEARTBEAT","heartbeat":{"interval":{"nanoseconds":30000000000}}}}"#
        );
    }

    #[test]
    fn json_round_trips_to_the_golden_bytes() {
        let call = serde_json::json!({
            "type": "ATTACH_CONTAINER_INPUT",
            "attach_container_input": {"type": "PROCESS_IO", "process_io": {
                "type": "CONTROL", "control": {"type": "TTY_INFO",
                    "tty_info": {"window_size": {"rows": 24, "columns": 80}}}}}
        });
        // from_json writes fields in key order; prost re-encodes them in field order.
        let pb = from_json(idx("mesos.agent.Call"), &call).unwrap();
        let pb = <crate::wire::message::mesos::agent::Call as prost::Message>::decode(pb.as_slice()).unwrap();
        let pb = prost::Message::encode_to_vec(&pb);
        assert_eq!(
            pb,
            [
                0x08, 0x12, 0x52, 0x12, 0x08, 0x02, 0x1a, 0x0e, 0x08, 0x02, 0x1a, 0x0a, 0x08, 0x01, 0x12, 0x06, 0x0a,
                0x04, 0x08, 0x18, 0x10, 0x50
            ]
        );
        assert_eq!(
            json_of("mesos.agent.Call", &pb),
            r#"{"type":"ATTACH_CONTAINER_INPUT","attach_container_input":{"type":"PROCESS_IO","process_io":{"type":"CONTROL","control":{"type":"TTY_INFO","tty_info":{"window_size":{"rows":24,"columns":80}}}}}}"#
        );
    }

    #[test]
    fn defaults_are_written_for_unset_optional_fields() {
        // CommandInfo.shell has [default = true]; Environment.Variable.type [default = VALUE].
        assert_eq!(
            json_of("mesos.CommandInfo", &[0x1a, 0x02, b'l', b's']),
            r#"{"shell":true,"value":"ls"}"#
        );
        assert_eq!(
            json_of("mesos.Environment", &[0x0a, 0x03, 0x0a, 0x01, b'A']),
            r#"{"variables":[{"name":"A","type":"VALUE"}]}"#
        );
    }

    #[test]
    fn required_fields_are_reported_with_paths() {
        let call = idx("mesos.agent.Call");
        let v = serde_json::json!({"type": "ATTACH_CONTAINER_OUTPUT", "attach_container_output": {}});
        assert_eq!(
            from_json(call, &v).unwrap_err(),
            "Missing required fields: attach_container_output.container_id"
        );
        let v = serde_json::json!({"attach_container_input": {"container_id": {"parent": {}}}});
        assert_eq!(
            from_json(call, &v).unwrap_err(),
            "Missing required fields: attach_container_input.container_id.value, \
             attach_container_input.container_id.parent.value"
        );
        let env = serde_json::json!({"variables": [{"name": "a"}, {}]});
        assert_eq!(
            from_json(idx("mesos.Environment"), &env).unwrap_err(),
            "Missing required fields: variables[1].name"
        );
    }

    #[test]
    fn unknown_enum_values_read_as_unset_like_cpp_proto2() {
        let call = idx("mesos.agent.Call");
        // type = 33 (unknown), then attach_container_input { type = 9 (unknown), container_id {value "a"} }.
        let bytes = [0x08, 33, 0x52, 0x07, 0x08, 0x09, 0x12, 0x03, 0x0a, 0x01, b'a'];
        let clean = strip_unknown_enums(call, &bytes).unwrap().unwrap();
        assert_eq!(clean, [0x52, 0x05, 0x12, 0x03, 0x0a, 0x01, b'a']);
        assert_eq!(strip_unknown_enums(call, &clean).unwrap(), None);
    }

    #[test]
    fn malformed_wire_is_an_error_not_a_panic() {
        let pio = idx("mesos.agent.ProcessIO");
        for bad in [
            &[0x08][..],
            &[0x12, 0x05, 0x00],
            &[0x0a, 0x01, 0x00],
            &[0x00],
            &[0xff; 11],
        ] {
            assert!(missing_required(pio, bad).is_err(), "{bad:?}");
        }
        // A deep ContainerID chain is refused, not recursed into without bound.
        let mut nested = vec![0x0a, 0x01, b'x'];
        for _ in 0..100 {
            let mut outer = vec![0x0a, 0x01, b'x', 0x12];
            put_varint(nested.len() as u64, &mut outer);
            outer.extend_from_slice(&nested);
            nested = outer;
        }
        assert_eq!(
            missing_required(idx("mesos.ContainerID"), &nested),
            Err(WireError::TooDeep)
        );
    }
}
