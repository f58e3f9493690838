//! What a completion is for: every operation the server submits carries a [`Token`],
//! packed into the 64-bit user data of its ring completion.

/// The owner and purpose of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token {
    /// A read of container stream `n`, or a wait for it to become readable.
    Read(u32),
    ReadPoll(u32),
    /// A logger write of stream `n`, or a wait for the logger to take more.
    Log(u32),
    LogPoll(u32),
    /// A send to output client `n`, or a wait for its hang-up.
    ClientSend(u32),
    ClientPoll(u32),
    /// The listening socket's multishot accept, and the pause before re-arming it after
    /// an error (out of descriptors).
    Accept,
    AcceptRetry,
    /// A read of the signalfd.
    Signal,
    /// The heartbeat timer.
    Heartbeat,
    /// Connection `n`: receive, send, timer.
    ConnRecv(u32),
    ConnSend(u32),
    ConnTimer(u32),
    /// A write to the container's stdin, or a wait for it to take more.
    Stdin,
    StdinPoll,
    /// The end of the grace period for draining clients at exit.
    Drain,
    /// Reading waits for a blocking client: is it still making progress?
    BlockCheck,
    /// Output ended long enough ago: stop waiting for acknowledgements.
    AckTimeout,
    /// Zero copy: stream `n`'s source is readable, or its logger writable (staging).
    StagePoll(u32),
    StageLogPoll(u32),
    /// Zero-copy client `n`'s socket takes more, or it hung up.
    ZcOut(u32),
    ZcHup(u32),
    /// A blocking zero-copy client holds a round back: is it making progress?
    ZcBlockCheck,
}

impl Token {
    pub(crate) fn encode(self) -> u64 {
        let (kind, n) = match self {
            Token::Read(n) => (1, n),
            Token::ReadPoll(n) => (2, n),
            Token::Log(n) => (3, n),
            Token::LogPoll(n) => (4, n),
            Token::ClientSend(n) => (5, n),
            Token::ClientPoll(n) => (6, n),
            Token::Accept => (7, 0),
            Token::Signal => (8, 0),
            Token::Heartbeat => (9, 0),
            Token::ConnRecv(n) => (10, n),
            Token::ConnSend(n) => (11, n),
            Token::ConnTimer(n) => (12, n),
            Token::Stdin => (13, 0),
            Token::StdinPoll => (14, 0),
            Token::Drain => (15, 0),
            Token::AcceptRetry => (16, 0),
            Token::BlockCheck => (17, 0),
            Token::AckTimeout => (18, 0),
            Token::StagePoll(n) => (19, n),
            Token::StageLogPoll(n) => (20, n),
            Token::ZcOut(n) => (21, n),
            Token::ZcHup(n) => (22, n),
            Token::ZcBlockCheck => (23, 0),
        };
        (kind << 32) | u64::from(n)
    }

    pub(crate) fn decode(data: u64) -> Token {
        let n = data as u32;
        match data >> 32 {
            1 => Token::Read(n),
            2 => Token::ReadPoll(n),
            3 => Token::Log(n),
            4 => Token::LogPoll(n),
            5 => Token::ClientSend(n),
            6 => Token::ClientPoll(n),
            7 => Token::Accept,
            8 => Token::Signal,
            9 => Token::Heartbeat,
            10 => Token::ConnRecv(n),
            11 => Token::ConnSend(n),
            12 => Token::ConnTimer(n),
            13 => Token::Stdin,
            14 => Token::StdinPoll,
            15 => Token::Drain,
            16 => Token::AcceptRetry,
            17 => Token::BlockCheck,
            18 => Token::AckTimeout,
            19 => Token::StagePoll(n),
            20 => Token::StageLogPoll(n),
            21 => Token::ZcOut(n),
            22 => Token::ZcHup(n),
            23 => Token::ZcBlockCheck,
            _ => panic!("unknown token {data:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Token;

    #[test]
    fn tokens_round_trip() {
        for t in [
            Token::Read(1),
            Token::ClientSend(u32::MAX),
            Token::Accept,
            Token::ConnTimer(7),
            Token::Drain,
        ] {
            assert_eq!(Token::decode(t.encode()), t);
        }
    }
}
