//! Every answer the server gives that is not an output stream: its status and its text,
//! in one place. Where Mesos answers the same case, the text is Mesos's, byte for byte
//! (the catalogue is docs/protocol.md §15).

use std::borrow::Cow;

use crate::wire::http::HttpError;
use crate::wire::input::InvalidRecord;
use crate::wire::message::DecodeError;
use crate::wire::recordio;

/// A complete response to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// 200, empty: an input request that ended well, or an acknowledgement.
    Ok,
    /// The request head or body broke HTTP, or asked for what we do not serve.
    Refused(HttpError),
    /// The server is terminating: requests in progress are refused.
    ShuttingDown,
    /// The peer is not among `--allowed_uids`.
    Forbidden,
    /// A request head was started and not finished in time.
    HeadTimeout,
    /// A request's body did not come to a decision in time (a call body, an
    /// acknowledgement's body, an input request's first record).
    BodyTimeout,
    /// A call body over `--max_call_body`.
    BodyTooLarge(usize),
    /// An output call that decoded into another call.
    NotAnOutputCall,
    /// An input body that ended before its first record.
    EofBeforeFirstRecord,
    /// An input body that stopped short: the client went away.
    BodyCutShort,
    /// An input record over `--max_record`.
    RecordTooLarge(recordio::Error),
    /// Input that is not RecordIO.
    RecordFraming(recordio::Error),
    /// A record that is not a message: the first record's failure is Mesos's 500, a later
    /// one's its 400.
    Undecodable { first: bool, error: DecodeError },
    /// A record that decodes but breaks the input rules.
    InvalidRecord(InvalidRecord),
    /// Another input request holds the input slot.
    Conflict,
    /// A window size the terminal did not take.
    WindowSize(String),
    /// A write to the container's stdin failed, for this reason.
    StdinFailed(String),
    /// 200: the server's figures (`GET /metrics`), in this format.
    Metrics { content_type: &'static str, text: String },
}

impl Answer {
    pub(crate) fn status(&self) -> u16 {
        match self {
            Answer::Ok | Answer::Metrics { .. } => 200,
            Answer::Refused(e) => e.status,
            Answer::ShuttingDown => 503,
            Answer::Forbidden => 403,
            Answer::HeadTimeout | Answer::BodyTimeout => 408,
            Answer::BodyTooLarge(_) | Answer::RecordTooLarge(_) => 413,
            Answer::RecordFraming(_) | Answer::BodyCutShort | Answer::StdinFailed(_) => 500,
            Answer::Undecodable { first: true, .. } => 500,
            Answer::Undecodable { first: false, .. } => 400,
            Answer::NotAnOutputCall
            | Answer::EofBeforeFirstRecord
            | Answer::InvalidRecord(_)
            | Answer::WindowSize(_) => 400,
            Answer::Conflict => 409,
        }
    }

    /// The media type of [`Answer::text`].
    pub(crate) fn content_type(&self) -> &'static str {
        match self {
            Answer::Metrics { content_type, .. } => content_type,
            _ => "text/plain; charset=utf-8",
        }
    }

    pub(crate) fn text(&self) -> Cow<'_, str> {
        match self {
            Answer::Ok => "".into(),
            Answer::Metrics { text, .. } => text.as_str().into(),
            Answer::Refused(e) => e.message.as_str().into(),
            Answer::ShuttingDown => "The io switchboard server is shutting down".into(),
            Answer::Forbidden => "This user may not use the io switchboard".into(),
            Answer::HeadTimeout => "No request arrived in time".into(),
            Answer::BodyTimeout => "The request body did not arrive in time".into(),
            Answer::BodyTooLarge(limit) => format!("The request body exceeds {limit} bytes").into(),
            Answer::NotAnOutputCall => {
                "Expecting 'type' to be 'ATTACH_CONTAINER_OUTPUT' for non-streaming requests".into()
            }
            Answer::EofBeforeFirstRecord => "IOSwitchboard received EOF while reading request body".into(),
            Answer::BodyCutShort => "The connection closed in the middle of the request body".into(),
            Answer::RecordTooLarge(e) => e.to_string().into(),
            Answer::RecordFraming(e) => format!("Decoder failure: {e}").into(),
            Answer::Undecodable { error, .. } => error.0.as_str().into(),
            Answer::InvalidRecord(invalid) => invalid.0.as_str().into(),
            Answer::Conflict => "Multiple input connections are not allowed".into(),
            Answer::WindowSize(why) => format!("Unable to set the window size: {why}").into(),
            Answer::StdinFailed(why) => format!("Failed writing to stdin: Failed: {why}").into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesos_texts_and_statuses() {
        let cases = [
            (Answer::Conflict, 409, "Multiple input connections are not allowed"),
            (
                Answer::EofBeforeFirstRecord,
                400,
                "IOSwitchboard received EOF while reading request body",
            ),
            (
                Answer::StdinFailed("Bad file descriptor".into()),
                500,
                "Failed writing to stdin: Failed: Bad file descriptor",
            ),
            (
                Answer::Undecodable {
                    first: true,
                    error: DecodeError("Failed to parse body into a protobuf object".into()),
                },
                500,
                "Failed to parse body into a protobuf object",
            ),
            (
                Answer::Undecodable {
                    first: false,
                    error: DecodeError("x".into()),
                },
                400,
                "x",
            ),
            (Answer::ShuttingDown, 503, "The io switchboard server is shutting down"),
            (Answer::BodyTooLarge(65536), 413, "The request body exceeds 65536 bytes"),
            (Answer::BodyTimeout, 408, "The request body did not arrive in time"),
        ];
        for (answer, status, text) in cases {
            assert_eq!((answer.status(), answer.text().as_ref()), (status, text), "{answer:?}");
        }
    }
}
