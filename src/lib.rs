//! switchboard: an io_uring I/O switchboard for containers.
//!
//! A per-container server owns the container's stdio (pipes, or a PTY master), copies
//! every output byte to the container's logger, fans the same bytes out to any number of
//! attached clients, and feeds one client's input to the container. It speaks the HTTP +
//! RecordIO + protobuf/JSON protocol of Apache Mesos's `mesos-io-switchboard` on a unix
//! socket, and is a drop-in replacement for it.
//!
//! Rooms (docs/design.md): [`wire`] holds the sans-IO codecs of everything that crosses
//! the socket; [`ring`] the io_uring core (with [`tty`], the only room with `unsafe`);
//! [`relay`] the fan-out logic; [`server`] the server that ties them together; [`config`]
//! every setting; [`cli`] the command lines; [`client`] a client of the attach API;
//! [`agent`] launching and tracking switchboards for containers.

#![deny(unsafe_code)]

/// Declares an error that is a text, answered or printed as it is (Mesos's or stout's).
macro_rules! text_error {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(pub String);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::error::Error for $name {}
    };
}

pub mod agent;
pub mod cli;
pub mod client;
pub mod config;
pub mod msg;
pub mod relay;
#[allow(unsafe_code)]
pub mod ring;
pub mod screen;
pub mod server;
pub mod slab;
pub mod sys;
#[allow(unsafe_code)]
pub mod tty;
pub mod wire;
