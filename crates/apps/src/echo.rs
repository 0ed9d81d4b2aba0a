//! UDP echo: every datagram goes back to its sender, zero-copy.
//!
//! The received buffer is sent back as it is: the stack writes the reply's headers into the
//! headroom in front of the payload, so an echo costs no copy and no allocation. An optional
//! per-request delay spins for `work_ns`, as Arrakis' echo benchmark does to model
//! application work.
//!
//! With [`EchoProtocol::Sockperf`] the server speaks just enough of sockperf's message header
//! to serve the `sockperf` client: a message is `seq: u64, flags: u16, len: u32, ...` in network
//! order; the client sets flag 1 ("from a client") and, when it wants an answer, flag 2 ("pong
//! requested": every message in ping-pong mode, none in throughput mode). The sockperf server
//! answers only messages that request it, with the client flag cleared; so do we.

use melange_core::{App, Event, IoContext};

/// What the echo server answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EchoProtocol {
    /// Every datagram goes back unchanged.
    #[default]
    Plain,
    /// sockperf's protocol: answer only messages that ask for it, as a server.
    Sockperf,
}

/// sockperf's flag bits, at byte offset 8 of every message.
const SOCKPERF_FLAGS: std::ops::Range<usize> = 8..10;
const SOCKPERF_FLAG_CLIENT: u16 = 1;
const SOCKPERF_FLAG_PONG_REQUEST: u16 = 2;
/// Shortest sockperf message: seq (8), flags (2), length (4).
const SOCKPERF_HEADER_LEN: usize = 14;

/// Echo configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EchoConfig {
    /// Simulated application work per request, in nanoseconds.
    pub work_ns: u64,
    /// What to answer.
    pub protocol: EchoProtocol,
}

/// Counters of an echo server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EchoCounters {
    /// Datagrams echoed.
    pub echoed: u64,
    /// Replies the engine could not queue (command queue full).
    pub send_errors: u64,
    /// Datagrams received and deliberately not answered (sockperf messages that ask for no
    /// reply, or too short to be sockperf messages).
    pub unanswered: u64,
}

/// The echo server app.
pub struct EchoApp {
    config: EchoConfig,
    spin_ns: fn(u64),
    counters: EchoCounters,
}

impl std::fmt::Debug for EchoApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoApp")
            .field("config", &self.config)
            .field("counters", &self.counters)
            .finish()
    }
}

impl EchoApp {
    /// An echo server; `spin_ns` performs `work_ns` of work (the shell's choice).
    pub fn new(config: EchoConfig, spin_ns: fn(u64)) -> Self {
        Self {
            config,
            spin_ns,
            counters: EchoCounters::default(),
        }
    }
    /// Counters so far.
    pub fn counters(&self) -> EchoCounters {
        self.counters
    }
}

impl App for EchoApp {
    fn run_io(&mut self, io: &mut IoContext<'_>) {
        while let Some(event) = io.next_event() {
            if let Event::Datagram {
                buf,
                from,
                local_port,
            } = event
            {
                if self.config.work_ns > 0 {
                    (self.spin_ns)(self.config.work_ns);
                }
                if self.config.protocol == EchoProtocol::Sockperf
                    && !sockperf_answer(io.payload_mut(&buf))
                {
                    io.free(buf);
                    self.counters.unanswered += 1;
                    continue;
                }
                match io.send_to(buf, local_port, from) {
                    Ok(()) => self.counters.echoed += 1,
                    Err((_, buf)) => {
                        io.free(buf);
                        self.counters.send_errors += 1;
                    }
                }
            }
        }
    }
}

/// Turns a sockperf client message into the server's answer in place. Returns false when the
/// message asks for no answer (or is not a sockperf message).
fn sockperf_answer(message: &mut [u8]) -> bool {
    if message.len() < SOCKPERF_HEADER_LEN {
        return false;
    }
    let flags = u16::from_be_bytes([
        message[SOCKPERF_FLAGS.start],
        message[SOCKPERF_FLAGS.start + 1],
    ]);
    if flags & SOCKPERF_FLAG_PONG_REQUEST == 0 {
        return false;
    }
    message[SOCKPERF_FLAGS].copy_from_slice(&(flags & !SOCKPERF_FLAG_CLIENT).to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockperf_messages_as_the_sockperf_server_answers_them() {
        // Captured from sockperf 3.7: a ping-pong request and the real server's answer.
        let mut ping = [0u8; 24];
        ping[..16].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 3, 0, 0, 0, 0x40, 0x96, 0x8f]);
        assert!(sockperf_answer(&mut ping));
        assert_eq!(
            &ping[..16],
            &[0, 0, 0, 0, 0, 0, 0, 1, 0, 2, 0, 0, 0, 0x40, 0x96, 0x8f]
        );
        // Throughput mode: client flag only, no answer.
        let mut one_way = [0u8; 24];
        one_way[9] = 1;
        assert!(!sockperf_answer(&mut one_way));
        assert!(!sockperf_answer(&mut [0u8; 4]));
    }
}
