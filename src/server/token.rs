//! What a completion is for. Every operation the server submits carries a [`Token`], a
//! 64-bit number the ring keeps with the operation and hands back with its completion:
//! the part of the server that owns the operation, which of its operations it is, and the
//! index of the stream, client or connection it is for. Routing a completion is a match
//! on the owner.

/// Declares an enum of operations numbered by their order, with the inverse of `as u8`.
macro_rules! numbered {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub(crate) enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            const ALL: &'static [$name] = &[$($name::$variant,)*];

            fn from_u8(n: u8) -> Option<$name> {
                Self::ALL.get(usize::from(n)).copied()
            }
        }
    };
}

numbered! {
    /// The server's own operations (no index).
    ServerOp {
        /// The listening socket's multishot accept.
        Accept,
        /// The pause before re-arming accept after an error (out of descriptors).
        AcceptRetry,
        /// A read of the signalfd.
        Signal,
        /// The heartbeat timer.
        Heartbeat,
        /// The end of the grace period for draining clients at exit.
        Drain,
        /// Output ended long enough ago: stop waiting for acknowledgements.
        AckTimeout,
    }
}

numbered! {
    /// The output engine's operations; the index is a stream's or a client's.
    OutputOp {
        /// A read of the stream into the arena, or a wait for the stream to be readable.
        Read,
        Readable,
        /// A logger write from the arena, or a wait for the logger to take more.
        Log,
        LoggerWritable,
        /// Zero copy: the stream's source is readable, or its logger writable (staging).
        StageReadable,
        StageLoggerWritable,
        /// A send to a copying client.
        Send,
        /// A pipe client's socket takes more.
        ClientWritable,
        /// A client hung up.
        Hangup,
        /// A blocking client holds the container back: is it making progress?
        BlockCheck,
    }
}

numbered! {
    /// The operations of connections that are not output clients; the index is the
    /// connection's (none for stdin's).
    ConnOp {
        Recv,
        Send,
        /// The connection's one timer (head, idle or answer deadline).
        Timer,
        /// A write to the container's stdin, or a wait for it to take more.
        StdinWrite,
        StdinWritable,
        /// The client of an input request whose body waits for stdin hung up.
        Hangup,
    }
}

/// The owner and purpose of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token {
    Server(ServerOp),
    Output(OutputOp, u32),
    Conn(ConnOp, u32),
}

const SERVER: u64 = 1;
const OUTPUT: u64 = 2;
const CONN: u64 = 3;

impl Token {
    pub(crate) fn encode(self) -> u64 {
        let (owner, op, index) = match self {
            Token::Server(op) => (SERVER, op as u8, 0),
            Token::Output(op, i) => (OUTPUT, op as u8, i),
            Token::Conn(op, i) => (CONN, op as u8, i),
        };
        (owner << 40) | (u64::from(op) << 32) | u64::from(index)
    }

    /// The token of a completion's user data. Only tokens this server encoded come back,
    /// so anything else is a bug.
    pub(crate) fn decode(data: u64) -> Token {
        let (owner, op, index) = ((data >> 40), (data >> 32) as u8, data as u32);
        let token = match owner {
            SERVER => ServerOp::from_u8(op).map(Token::Server),
            OUTPUT => OutputOp::from_u8(op).map(|op| Token::Output(op, index)),
            CONN => ConnOp::from_u8(op).map(|op| Token::Conn(op, index)),
            _ => None,
        };
        token.unwrap_or_else(|| panic!("unknown token {data:#x}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_round_trips() {
        let mut tokens: Vec<Token> = ServerOp::ALL.iter().map(|&op| Token::Server(op)).collect();
        for &op in OutputOp::ALL {
            tokens.extend([Token::Output(op, 0), Token::Output(op, u32::MAX)]);
        }
        for &op in ConnOp::ALL {
            tokens.extend([Token::Conn(op, 7), Token::Conn(op, u32::MAX)]);
        }
        for t in tokens {
            assert_eq!(Token::decode(t.encode()), t);
        }
        // Declaration order is the numbering.
        assert_eq!(
            OutputOp::from_u8(OutputOp::BlockCheck as u8),
            Some(OutputOp::BlockCheck)
        );
        assert_eq!(ServerOp::from_u8(ServerOp::ALL.len() as u8), None);
    }
}
