//! The Kubernetes streaming protocol over WebSocket, as the kubelet speaks it for `attach`
//! and `exec` (the `channel.k8s.io` family): every message is one frame whose first byte
//! is the channel (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize), and the rest its
//! payload. The versions differ in what they add:
//!
//! * `channel.k8s.io` (v1): binary frames; the error channel carries a plain text.
//! * `base64.channel.k8s.io`: text frames, the channel as an ASCII digit and the payload
//!   in base64; otherwise v1.
//! * `v4.channel.k8s.io`: v1, with the end told as one `metav1.Status` JSON on channel 3
//!   (and the resize channel, as since v3).
//! * `v5.channel.k8s.io`: v4, and a frame `[255, c]` closes channel `c` (a client closes
//!   stdin, channel 0, to send end of file).

use base64::Engine;
use serde_json::{Value, json};

/// The channels.
pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// The first byte of a v5 close: `[CLOSE, channel]`.
pub const CLOSE: u8 = 255;

/// The subprotocols we speak, most preferred first (a client lists its own order; the
/// first of its list that is here is chosen).
pub const PROTOCOLS: [&str; 4] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V1,
    Base64,
    V4,
    V5,
}

/// A frame to send: binary or text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Binary(Vec<u8>),
    Text(String),
}

/// What a client's frame asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Stdin(Vec<u8>),
    /// A window size: rows and columns.
    Resize {
        rows: u16,
        columns: u16,
    },
    /// `[255, c]`: the client closed channel `c` (0: end of stdin).
    Close(u8),
    /// Not a frame of the protocol: why.
    Bad(String),
}

impl Protocol {
    /// The protocol a negotiated subprotocol names; no subprotocol is v1, as with the
    /// kubelet.
    pub fn named(name: Option<&str>) -> Protocol {
        match name {
            Some("v5.channel.k8s.io") => Protocol::V5,
            Some("v4.channel.k8s.io") => Protocol::V4,
            Some("base64.channel.k8s.io") => Protocol::Base64,
            _ => Protocol::V1,
        }
    }

    /// One message on `channel`.
    pub fn frame(self, channel: u8, data: &[u8]) -> Frame {
        match self {
            Protocol::Base64 => {
                let mut text = String::with_capacity(1 + data.len().div_ceil(3) * 4);
                text.push(char::from(b'0' + channel));
                base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
                Frame::Text(text)
            }
            _ => {
                let mut bytes = Vec::with_capacity(1 + data.len());
                bytes.push(channel);
                bytes.extend_from_slice(data);
                Frame::Binary(bytes)
            }
        }
    }

    /// What a client's binary frame (or, on base64, text frame) asks.
    pub fn incoming(self, frame: &[u8]) -> Incoming {
        let decoded;
        let frame = match self {
            Protocol::Base64 => {
                let Some((&digit, rest)) = frame.split_first() else {
                    return Incoming::Bad("an empty frame".into());
                };
                let mut bytes = vec![digit.wrapping_sub(b'0')];
                match base64::engine::general_purpose::STANDARD.decode(rest) {
                    Ok(d) => bytes.extend(d),
                    Err(e) => return Incoming::Bad(format!("not base64: {e}")),
                }
                decoded = bytes;
                &decoded[..]
            }
            _ => frame,
        };
        match frame.split_first() {
            None => Incoming::Bad("an empty frame".into()),
            Some((&STDIN, data)) => Incoming::Stdin(data.to_vec()),
            Some((&RESIZE, data)) => resize(data),
            Some((&CLOSE, &[channel])) if self == Protocol::V5 => Incoming::Close(channel),
            Some((&channel, _)) => Incoming::Bad(format!("channel {channel} is not one a client writes")),
        }
    }

    /// Whether the end is told as a `Status` object (v4 and v5) rather than a text.
    fn status_objects(self) -> bool {
        matches!(self, Protocol::V4 | Protocol::V5)
    }

    /// The message that tells how the attachment ended, on the error channel; `None`
    /// when nothing is said (a success, on v1).
    pub fn end(self, end: &End) -> Option<Frame> {
        match (self.status_objects(), end) {
            (true, _) => Some(self.frame(ERROR, end.status().to_string().as_bytes())),
            (false, End::Exited(0)) => None,
            (false, _) => Some(self.frame(ERROR, end.message().as_bytes())),
        }
    }
}

/// A resize message: `{"Width":W,"Height":H}`.
fn resize(data: &[u8]) -> Incoming {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return Incoming::Bad("a resize that is not JSON".into());
    };
    let dim = |k: &str| v.get(k).and_then(Value::as_u64).and_then(|n| u16::try_from(n).ok());
    match (dim("Height"), dim("Width")) {
        (Some(rows), Some(columns)) => Incoming::Resize { rows, columns },
        _ => Incoming::Bad("a resize without Width and Height of at most 65535".into()),
    }
}

/// How an attachment ended, as the error channel tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The container exited with this status (as a shell reports it).
    Exited(u8),
    /// Something else: the reason (a `metav1.StatusReason`), the HTTP-like code, and the
    /// message.
    Failed {
        reason: &'static str,
        code: u16,
        message: String,
    },
}

impl End {
    fn message(&self) -> String {
        match self {
            End::Exited(code) => format!("command terminated with non-zero exit code: exit status {code}"),
            End::Failed { message, .. } => message.clone(),
        }
    }

    /// The `metav1.Status` the kubelet sends: `Success`, or `Failure` with the reason;
    /// a non-zero exit is `NonZeroExitCode` with the code in `details.causes`.
    pub fn status(&self) -> Value {
        match self {
            End::Exited(0) => json!({"metadata": {}, "status": "Success"}),
            End::Exited(code) => json!({
                "metadata": {},
                "status": "Failure",
                "message": self.message(),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            }),
            End::Failed { reason, code, message } => json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": reason,
                "code": code,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_their_channel_first() {
        assert_eq!(Protocol::V5.frame(STDOUT, b"hi"), Frame::Binary(vec![1, b'h', b'i']));
        assert_eq!(Protocol::V1.frame(STDERR, b""), Frame::Binary(vec![2]));
        assert_eq!(Protocol::Base64.frame(STDOUT, b"hi"), Frame::Text("1aGk=".into()));
    }

    #[test]
    fn client_frames_are_read_by_channel() {
        let v5 = Protocol::V5;
        assert_eq!(v5.incoming(&[0, b'l', b's']), Incoming::Stdin(b"ls".to_vec()));
        assert_eq!(
            v5.incoming(b"\x04{\"Width\":120,\"Height\":40}"),
            Incoming::Resize { rows: 40, columns: 120 }
        );
        assert_eq!(v5.incoming(&[255, 0]), Incoming::Close(0));
        assert!(matches!(Protocol::V4.incoming(&[255, 0]), Incoming::Bad(_)));
        assert!(matches!(v5.incoming(&[]), Incoming::Bad(_)));
        assert!(matches!(v5.incoming(&[1, b'x']), Incoming::Bad(_)));
        assert!(matches!(
            v5.incoming(b"\x04{\"Width\":70000,\"Height\":4}"),
            Incoming::Bad(_)
        ));
        assert!(matches!(v5.incoming(b"\x04nope"), Incoming::Bad(_)));
        assert_eq!(Protocol::Base64.incoming(b"0bHM="), Incoming::Stdin(b"ls".to_vec()));
        assert!(matches!(Protocol::Base64.incoming(b"0***"), Incoming::Bad(_)));
    }

    #[test]
    fn the_end_is_a_status_on_v4_and_v5_and_a_text_before() {
        let ok = End::Exited(0);
        let three = End::Exited(3);
        let Some(Frame::Binary(f)) = Protocol::V5.end(&ok) else { panic!() };
        assert_eq!(f[0], ERROR);
        assert_eq!(
            serde_json::from_slice::<Value>(&f[1..]).unwrap(),
            json!({"metadata": {}, "status": "Success"})
        );
        let Some(Frame::Binary(f)) = Protocol::V4.end(&three) else { panic!() };
        let v: Value = serde_json::from_slice(&f[1..]).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0], json!({"reason": "ExitCode", "message": "3"}));
        assert_eq!(Protocol::V1.end(&ok), None);
        assert_eq!(
            Protocol::V1.end(&three),
            Some(Frame::Binary(
                b"\x03command terminated with non-zero exit code: exit status 3".to_vec()
            ))
        );
    }

    #[test]
    fn no_subprotocol_is_v1() {
        assert_eq!(Protocol::named(None), Protocol::V1);
        assert_eq!(Protocol::named(Some("v5.channel.k8s.io")), Protocol::V5);
        for name in PROTOCOLS {
            assert_eq!(Protocol::named(Some(name)) == Protocol::V1, name == "channel.k8s.io");
        }
    }
}
