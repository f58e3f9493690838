//! Mesos JSON reading (`stout protobuf::parse`): a JSON value is turned into the protobuf
//! bytes of a message, which prost then decodes.

use serde_json::{Map, Number, Value};

use super::{MAX_DEPTH, VARINT, missing_required, put_key, put_len, put_varint};
use crate::wire::json;
use crate::wire::schema::{ENUMS, FieldDesc, Kind, Label, MESSAGES};

/// Converts a JSON value into the protobuf bytes of message `msg`, the way stout's
/// `protobuf::parse` fills a message: keys in sorted order (stout's `std::map`), unknown
/// keys ignored, `null` meaning unset, and the required-field check at the end. Errors
/// carry Mesos's texts.
pub(crate) fn from_json(msg: usize, value: &Value) -> Result<Vec<u8>, String> {
    let Value::Object(object) = value else {
        return Err("Expecting a JSON object".to_string());
    };
    let mut out = Vec::new();
    encode_object(msg, object, &mut out, 0)?;
    let missing = missing_required(msg, &out).map_err(|e| format!("Failed to encode JSON: {e:?}"))?;
    if !missing.is_empty() {
        return Err(format!("Missing required fields: {}", missing.join(", ")));
    }
    Ok(out)
}

fn encode_object(msg: usize, object: &Map<String, Value>, out: &mut Vec<u8>, depth: usize) -> Result<(), String> {
    if depth >= MAX_DEPTH {
        return Err("JSON nesting too deep".to_string());
    }
    let desc = &MESSAGES[msg];
    for (name, value) in object {
        if let Some(field) = desc.fields.iter().find(|f| f.name == name) {
            encode_field(field, value, out, depth)?;
        }
    }
    Ok(())
}

/// Writes an integer field: `signed` and `unsigned` are the same number as C++ would
/// `static_cast` it to each type.
fn put_integer(field: &FieldDesc, signed: i64, unsigned: u64, out: &mut Vec<u8>) {
    put_key(field.number, VARINT, out);
    match field.kind {
        Kind::Int64 => put_varint(signed as u64, out),
        Kind::Uint32 => put_varint(u64::from(unsigned as u32), out),
        _ => unreachable!("put_integer is only called for integer kinds"),
    }
}

fn is_integer_kind(kind: Kind) -> bool {
    matches!(kind, Kind::Int64 | Kind::Uint32)
}

/// A JSON number as C++ `static_cast`s it: integers wrap, floats truncate toward zero.
fn number_parts(n: &Number) -> (i64, u64) {
    if let Some(i) = n.as_i64() {
        (i, i as u64)
    } else if let Some(u) = n.as_u64() {
        (u as i64, u)
    } else {
        let f = n.as_f64().unwrap_or(0.0);
        (f as i64, if f < 0.0 { (f as i64) as u64 } else { f as u64 })
    }
}

fn not_expecting(what: &str, field: &FieldDesc) -> String {
    format!("Not expecting a JSON {what} for field '{}'", field.name)
}

fn encode_field(field: &FieldDesc, value: &Value, out: &mut Vec<u8>, depth: usize) -> Result<(), String> {
    match value {
        Value::Null => Ok(()),
        Value::Array(items) => {
            if field.label != Label::Repeated {
                return Err(not_expecting("array", field));
            }
            for item in items {
                encode_field(field, item, out, depth)?;
            }
            Ok(())
        }
        Value::Object(object) => {
            let Kind::Message(sub) = field.kind else {
                return Err(not_expecting("object", field));
            };
            let mut body = Vec::new();
            encode_object(sub, object, &mut body, depth + 1)?;
            put_len(field.number, &body, out);
            Ok(())
        }
        Value::Bool(b) => {
            if field.kind != Kind::Bool {
                return Err(not_expecting("boolean", field));
            }
            put_key(field.number, VARINT, out);
            put_varint(u64::from(*b), out);
            Ok(())
        }
        Value::Number(n) => {
            if !is_integer_kind(field.kind) {
                return Err(not_expecting("number", field));
            }
            let (signed, unsigned) = number_parts(n);
            put_integer(field, signed, unsigned, out);
            Ok(())
        }
        Value::String(s) => match field.kind {
            Kind::String => {
                put_len(field.number, s.as_bytes(), out);
                Ok(())
            }
            Kind::Bytes => {
                let bytes = json::decode_base64_lenient(s)
                    .map_err(|e| format!("Failed to base64 decode bytes field '{}': {e}", field.name))?;
                put_len(field.number, &bytes, out);
                Ok(())
            }
            Kind::Enum(e) => match ENUMS[e].number_of(s) {
                Some(number) => {
                    put_key(field.number, VARINT, out);
                    put_varint(i64::from(number) as u64, out);
                    Ok(())
                }
                None if field.label == Label::Required => Err(format!("Failed to find enum for '{s}'")),
                // Proto2 drops an unknown value of an optional enum: the field stays unset.
                None => Ok(()),
            },
            kind if is_integer_kind(kind) => {
                let n: Number = s
                    .trim()
                    .parse::<i64>()
                    .map(Number::from)
                    .or_else(|_| s.trim().parse::<u64>().map(Number::from))
                    .ok()
                    .or_else(|| s.trim().parse::<f64>().ok().and_then(Number::from_f64))
                    .ok_or_else(|| format!("Failed to convert '{s}' to number for field '{}'", field.name))?;
                let (signed, unsigned) = number_parts(&n);
                put_integer(field, signed, unsigned, out);
                Ok(())
            }
            _ => Err(not_expecting("string", field)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::schema::message_index;

    fn idx(name: &str) -> usize {
        message_index(name).unwrap()
    }

    #[test]
    fn lenient_reading_rules() {
        let call = idx("mesos.agent.Call");
        let pio = idx("mesos.agent.ProcessIO");
        // Unknown keys are ignored, null is unset, unknown optional enum names are dropped.
        assert_eq!(
            from_json(call, &serde_json::json!({"typo": 1, "type": null})).unwrap(),
            Vec::<u8>::new()
        );
        assert_eq!(
            from_json(call, &serde_json::json!({"type": "FOO"})).unwrap(),
            Vec::<u8>::new()
        );
        // Numeric strings for integers.
        let hb = serde_json::json!({"type": "CONTROL", "control": {"type": "HEARTBEAT",
            "heartbeat": {"interval": {"nanoseconds": "30000000000"}}}});
        assert_eq!(from_json(pio, &hb).unwrap().len(), 16);
        // Type errors.
        assert_eq!(
            from_json(call, &serde_json::json!({"type": 18})).unwrap_err(),
            "Not expecting a JSON number for field 'type'"
        );
        assert_eq!(
            from_json(call, &serde_json::json!({"type": ["X"]})).unwrap_err(),
            "Not expecting a JSON array for field 'type'"
        );
        assert_eq!(
            from_json(call, &serde_json::json!({"type": {}})).unwrap_err(),
            "Not expecting a JSON object for field 'type'"
        );
        assert_eq!(
            from_json(call, &serde_json::json!({"type": true})).unwrap_err(),
            "Not expecting a JSON boolean for field 'type'"
        );
        assert_eq!(
            from_json(call, &serde_json::json!([])).unwrap_err(),
            "Expecting a JSON object"
        );
        let bad = serde_json::json!({"data": {"data": "a-b"}});
        assert_eq!(
            from_json(pio, &bad).unwrap_err(),
            "Failed to base64 decode bytes field 'data': Invalid character '-'"
        );
        let bad_required_enum = serde_json::json!({"type": "NOPE"});
        assert_eq!(
            from_json(idx("mesos.ContainerInfo"), &bad_required_enum).unwrap_err(),
            "Failed to find enum for 'NOPE'"
        );
    }
}
