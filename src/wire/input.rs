//! The records of an `ATTACH_CONTAINER_INPUT` stream (docs/protocol.md §11.2, §11.3):
//! the first record names the container, every later one carries a `ProcessIO`.
//! Validation produces Mesos's exact 400 texts; where Mesos aborts (a record that is not
//! an input call at all) we answer 400 too (docs/protocol.md §15, §16).

use super::message::mesos::agent::call::{self, AttachContainerInput};
use super::message::mesos::agent::process_io::{self, control, data};
use super::message::mesos::agent::{Call, ProcessIo};

text_error! {
    /// A record that breaks the input rules, with the text Mesos answers it with (400).
    InvalidRecord
}

fn invalid(text: impl Into<String>) -> InvalidRecord {
    InvalidRecord(text.into())
}

/// What a valid later record asks the server to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputAction {
    /// Write these bytes (never empty) to the container's stdin.
    Stdin(Vec<u8>),
    /// An empty STDIN DATA record: close stdin (non-TTY); a no-op on a TTY.
    StdinEof,
    /// Set the terminal window size. Mesos truncates both to 16 bits when applying.
    Resize { rows: u32, columns: u32 },
    /// A heartbeat from the client: nothing to do.
    Heartbeat,
}

/// A known enum value, or `None` for unset and for numbers the schema does not know
/// (which C++ proto2 keeps as unknown fields, so the field reads as unset).
fn known<E: TryFrom<i32>>(value: Option<i32>) -> Option<E> {
    value.and_then(|v| E::try_from(v).ok())
}

fn input_call(call: &Call) -> Option<&AttachContainerInput> {
    match known::<call::Type>(call.r#type) {
        Some(call::Type::AttachContainerInput) => call.attach_container_input.as_ref(),
        _ => None,
    }
}

/// Checks the first record: an input call of type `CONTAINER_ID` carrying a container ID.
/// The ID itself is not compared with anything (the server does not know its container).
pub fn check_first_record(call: &Call) -> Result<(), InvalidRecord> {
    let aci =
        input_call(call).ok_or_else(|| invalid("Expecting the first record to be an 'ATTACH_CONTAINER_INPUT' call"))?;
    if known::<call::attach_container_input::Type>(aci.r#type) != Some(call::attach_container_input::Type::ContainerId)
    {
        return Err(invalid("Expecting 'attach_container_input.type' to be CONTAINER_ID"));
    }
    if aci.container_id.is_none() {
        return Err(invalid("Expecting 'attach_container_input.container_id' to be present"));
    }
    Ok(())
}

/// Validates a later record and says what to do with it.
pub fn input_action(call: &Call) -> Result<InputAction, InvalidRecord> {
    let aci = input_call(call).ok_or_else(|| invalid("Expecting 'type' to be 'ATTACH_CONTAINER_INPUT'"))?;
    let aci_type =
        known::<call::attach_container_input::Type>(aci.r#type).unwrap_or(call::attach_container_input::Type::Unknown);
    if aci_type != call::attach_container_input::Type::ProcessIo {
        return Err(invalid(format!(
            "Expecting 'attach_container_input.type' to be 'PROCESS_IO' instead of: '{}'",
            aci_type as i32
        )));
    }
    let pio: &ProcessIo = aci
        .process_io
        .as_ref()
        .ok_or_else(|| invalid("Expecting 'attach_container_input.process_io' to be present"))?;
    match known::<process_io::Type>(pio.r#type) {
        None => Err(invalid("Expecting 'process_io.type' to be present")),
        Some(process_io::Type::Unknown) => Err(invalid("'process_io.type' is unknown")),
        Some(process_io::Type::Control) => {
            let control = pio
                .control
                .as_ref()
                .ok_or_else(|| invalid("Expecting 'process_io.control' to be present"))?;
            match known::<control::Type>(control.r#type) {
                None => Err(invalid("Expecting 'process_io.control.type' to be present")),
                Some(control::Type::Unknown) => Err(invalid("'process_io.control.type' is unknown")),
                Some(control::Type::TtyInfo) => {
                    let tty = control
                        .tty_info
                        .as_ref()
                        .ok_or_else(|| invalid("Expecting 'process_io.control.tty_info' to be present"))?;
                    let size = tty
                        .window_size
                        .as_ref()
                        .ok_or_else(|| invalid("Expecting 'tty_info.window_size' to be present"))?;
                    Ok(InputAction::Resize {
                        rows: size.rows,
                        columns: size.columns,
                    })
                }
                Some(control::Type::Heartbeat) => match control.heartbeat {
                    Some(_) => Ok(InputAction::Heartbeat),
                    None => Err(invalid("Expecting 'process_io.control.heartbeat' to be present")),
                },
            }
        }
        Some(process_io::Type::Data) => {
            let data = pio
                .data
                .as_ref()
                .ok_or_else(|| invalid("Expecting 'process_io.data' to be present"))?;
            match known::<data::Type>(data.r#type) {
                None => Err(invalid("Expecting 'process_io.data.type' to be present")),
                Some(data::Type::Stdin) => match &data.data {
                    None => Err(invalid("Expecting 'process_io.data.data' to be present")),
                    Some(bytes) if bytes.is_empty() => Ok(InputAction::StdinEof),
                    Some(bytes) => Ok(InputAction::Stdin(bytes.clone())),
                },
                Some(_) => Err(invalid("Expecting 'process_io.data.type' to be 'STDIN'")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::message::{Format, decode};

    fn call(json: &str) -> Call {
        decode(Format::Json, json.as_bytes()).unwrap()
    }

    fn later(pio: &str) -> Result<InputAction, InvalidRecord> {
        input_action(&call(&format!(
            r#"{{"type":"ATTACH_CONTAINER_INPUT","attach_container_input":{{"type":"PROCESS_IO","process_io":{pio}}}}}"#
        )))
    }

    #[test]
    fn first_record_rules() {
        assert_eq!(
            check_first_record(&call(
                r#"{"type":"ATTACH_CONTAINER_INPUT","attach_container_input":{"type":"CONTAINER_ID","container_id":{"value":"abc"}}}"#
            )),
            Ok(())
        );
        for bad in [
            r#"{"type":"ATTACH_CONTAINER_OUTPUT","attach_container_output":{"container_id":{"value":"a"}}}"#,
            r#"{"type":"ATTACH_CONTAINER_INPUT"}"#,
            r#"{"type":"ATTACH_CONTAINER_INPUT","attach_container_input":{"type":"PROCESS_IO"}}"#,
            r#"{"type":"ATTACH_CONTAINER_INPUT","attach_container_input":{"type":"CONTAINER_ID"}}"#,
            r#"{}"#,
        ] {
            assert!(check_first_record(&call(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_400_texts_of_later_records() {
        let cases = [
            (r#"{}"#, "Expecting 'process_io.type' to be present"),
            (r#"{"type":"UNKNOWN"}"#, "'process_io.type' is unknown"),
            (r#"{"type":"CONTROL"}"#, "Expecting 'process_io.control' to be present"),
            (
                r#"{"type":"CONTROL","control":{}}"#,
                "Expecting 'process_io.control.type' to be present",
            ),
            (
                r#"{"type":"CONTROL","control":{"type":"UNKNOWN"}}"#,
                "'process_io.control.type' is unknown",
            ),
            (
                r#"{"type":"CONTROL","control":{"type":"TTY_INFO"}}"#,
                "Expecting 'process_io.control.tty_info' to be present",
            ),
            (
                r#"{"type":"CONTROL","control":{"type":"TTY_INFO","tty_info":{}}}"#,
                "Expecting 'tty_info.window_size' to be present",
            ),
            (
                r#"{"type":"CONTROL","control":{"type":"HEARTBEAT"}}"#,
                "Expecting 'process_io.control.heartbeat' to be present",
            ),
            (r#"{"type":"DATA"}"#, "Expecting 'process_io.data' to be present"),
            (
                r#"{"type":"DATA","data":{}}"#,
                "Expecting 'process_io.data.type' to be present",
            ),
            (
                r#"{"type":"DATA","data":{"type":"STDOUT","data":""}}"#,
                "Expecting 'process_io.data.type' to be 'STDIN'",
            ),
            (
                r#"{"type":"DATA","data":{"type":"STDIN"}}"#,
                "Expecting 'process_io.data.data' to be present",
            ),
        ];
        for (pio, text) in cases {
            assert_eq!(later(pio), Err(invalid(text)), "{pio}");
        }
        for (t, n) in [
            ("", "0"),
            (r#","type":"UNKNOWN""#, "0"),
            (r#","type":"CONTAINER_ID""#, "1"),
        ] {
            let c = call(&format!(
                r#"{{"type":"ATTACH_CONTAINER_INPUT","attach_container_input":{{"process_io":{{}}{t}}}}}"#
            ));
            assert_eq!(
                input_action(&c),
                Err(invalid(format!(
                    "Expecting 'attach_container_input.type' to be 'PROCESS_IO' instead of: '{n}'"
                )))
            );
        }
        assert_eq!(
            input_action(&call(
                r#"{"type":"ATTACH_CONTAINER_INPUT","attach_container_input":{"type":"PROCESS_IO"}}"#
            )),
            Err(invalid("Expecting 'attach_container_input.process_io' to be present"))
        );
        assert!(input_action(&call(r#"{"type":"GET_HEALTH"}"#)).is_err());
    }

    #[test]
    fn actions() {
        assert_eq!(
            later(r#"{"type":"DATA","data":{"type":"STDIN","data":"aGkK"}}"#),
            Ok(InputAction::Stdin(b"hi\n".to_vec()))
        );
        assert_eq!(
            later(r#"{"type":"DATA","data":{"type":"STDIN","data":""}}"#),
            Ok(InputAction::StdinEof)
        );
        assert_eq!(
            later(
                r#"{"type":"CONTROL","control":{"type":"TTY_INFO","tty_info":{"window_size":{"rows":24,"columns":80}}}}"#
            ),
            Ok(InputAction::Resize { rows: 24, columns: 80 })
        );
        assert_eq!(
            later(
                r#"{"type":"CONTROL","control":{"type":"HEARTBEAT","heartbeat":{"interval":{"nanoseconds":10000000}}}}"#
            ),
            Ok(InputAction::Heartbeat)
        );
        // Extra fields (the Mesos tests send container_id on PROCESS_IO records) are ignored.
        let c = call(
            r#"{"type":"ATTACH_CONTAINER_INPUT","attach_container_input":{"type":"PROCESS_IO","container_id":{"value":"x"},
               "process_io":{"type":"CONTROL","control":{"type":"HEARTBEAT","heartbeat":{}}}}}"#,
        );
        assert_eq!(input_action(&c), Ok(InputAction::Heartbeat));
    }
}
