//! Sans-IO codecs for everything that crosses the unix socket: HTTP/1.1 heads and chunked
//! bodies ([`http`]), output records in their chunks ([`frame`]), media-type negotiation
//! and routing ([`media`]), RecordIO framing ([`recordio`]), the Mesos messages in
//! protobuf and Mesos JSON ([`message`]), and the validation of input records ([`input`]). Every decoder takes bytes split anywhere and
//! has a size limit.

pub mod frame;
pub mod http;
pub mod input;
mod json;
pub mod media;
pub mod message;
pub mod recordio;
mod reflect;
mod schema;

pub use message::{Format, Stream};
