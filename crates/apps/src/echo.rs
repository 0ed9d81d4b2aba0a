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
//!
//! # Reflection guard
//!
//! An echo service answers whoever the source address claims to be, so one spoofed datagram
//! "from" another echo (or chargen, daytime, NTP, DNS ...) service starts a loop between the
//! two that never ends, or turns us into an amplifier against a third party. Deployed echo
//! services (inetd's internal echo, for one) refuse requests from the well-known ports of
//! such services; so do we ([`REFLECTOR_PORTS`]), and from our own ports, and from port 0
//! ("no port", RFC 768, which cannot be answered). Each refusal is counted, never answered.

use melange_core::contract::CommandError;
use melange_core::{App, BufChain, Event, IoContext, SocketId};
use std::net::SocketAddrV4;

/// Source ports of services that answer whatever arrives, so that echoing to them would
/// start a loop or amplify: echo (7), discard (9, answers nothing, but a spoofed source at 9
/// is never a real client), daytime (13), qotd (17), chargen (19), time (37), DNS (53),
/// NTP (123), NetBIOS (137, 138), SNMP (161, 162), LDAP (389), syslog (514), RIP (520),
/// SSDP (1900), mDNS (5353), memcached (11211).
pub const REFLECTOR_PORTS: [u16; 18] = [
    7, 9, 13, 17, 19, 37, 53, 123, 137, 138, 161, 162, 389, 514, 520, 1900, 5353, 11211,
];

/// Most ports one echo app serves.
pub const ECHO_PORTS_MAX: usize = 64;

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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EchoConfig {
    /// The ports to serve (bound when the engine starts), at most [`ECHO_PORTS_MAX`].
    pub ports: Vec<u16>,
    /// Simulated application work per request, in nanoseconds.
    pub work_ns: u64,
    /// What to answer.
    pub protocol: EchoProtocol,
}

/// Counters of an echo server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EchoCounters {
    /// Replies the engine accepted for transmit.
    pub echoed: u64,
    /// Replies the engine refused (no room on the device, no route ...); the request was
    /// dropped.
    pub send_errors: u64,
    /// Datagrams received and deliberately not answered (sockperf messages that ask for no
    /// reply, or too short to be sockperf messages).
    pub unanswered: u64,
    /// Requests refused by the reflection guard (see the module documentation).
    pub reflector_refused: u64,
    /// Ports that could not be bound at start (each logged by the shell through this count).
    pub bind_errors: u64,
}

/// The echo server app.
pub struct EchoApp {
    config: EchoConfig,
    spin_ns: fn(u64),
    sockets: Vec<SocketId>,
    bind_error: Option<CommandError>,
    counters: EchoCounters,
    /// One bit per source port that is never answered (port 0, the reflectors, our own
    /// ports): one load and a mask per request, whatever the number of ports (8 KiB).
    refused_sources: Box<[u64; 1024]>,
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
        let mut refused_sources = Box::new([0u64; 1024]);
        for &port in REFLECTOR_PORTS.iter().chain(&config.ports).chain(&[0]) {
            refused_sources[usize::from(port) / 64] |= 1 << (port % 64);
        }
        Self {
            sockets: Vec::with_capacity(config.ports.len().min(ECHO_PORTS_MAX)),
            config,
            spin_ns,
            bind_error: None,
            counters: EchoCounters::default(),
            refused_sources,
        }
    }
    /// The first port that could not be bound at start, and why. A server that cannot serve
    /// every port it was given stops at once (its engine ends) rather than serve a part.
    pub fn bind_error(&self) -> Option<CommandError> {
        self.bind_error
    }
    /// Counters so far.
    pub fn counters(&self) -> EchoCounters {
        self.counters
    }
    /// Ports bound at start.
    pub fn bound_ports(&self) -> usize {
        self.sockets.len()
    }

    /// Whether a request from `from` may be answered (see the module documentation).
    fn answerable(&self, from: SocketAddrV4) -> bool {
        let port = from.port();
        self.refused_sources[usize::from(port) / 64] & (1 << (port % 64)) == 0
    }

    fn handle(
        &mut self,
        io: &mut IoContext<'_>,
        socket: SocketId,
        data: BufChain,
        from: SocketAddrV4,
    ) {
        if !self.answerable(from) {
            self.counters.reflector_refused += 1;
            io.free_chain(data);
            return;
        }
        if self.config.work_ns > 0 {
            (self.spin_ns)(self.config.work_ns);
        }
        if self.config.protocol == EchoProtocol::Sockperf {
            let answer = match data.frames() {
                1 => sockperf_answer(io.payload_mut(data.head())),
                // A sockperf message never spans frames; answer nothing rather than copy.
                _ => false,
            };
            if !answer {
                io.free_chain(data);
                self.counters.unanswered += 1;
                return;
            }
        }
        match io.send_to(socket, from, data) {
            Ok(()) => self.counters.echoed += 1,
            Err((_, data)) => {
                io.free_chain(data);
                self.counters.send_errors += 1;
            }
        }
    }
}

impl App for EchoApp {
    fn start(&mut self, io: &mut IoContext<'_>) {
        for &port in self.config.ports.iter().take(ECHO_PORTS_MAX) {
            match io.bind_udp(port) {
                Ok(socket) => self.sockets.push(socket),
                Err(error) => {
                    self.counters.bind_errors += 1;
                    self.bind_error.get_or_insert(error);
                }
            }
        }
    }

    fn is_done(&self) -> bool {
        self.bind_error.is_some()
    }

    fn run_io(&mut self, io: &mut IoContext<'_>) {
        while let Some(event) = io.next_event() {
            match event {
                Event::Datagram {
                    socket, data, from, ..
                } => self.handle(io, socket, data, from),
                other => {
                    // Nothing else is asked for; give back any buffers it carries.
                    if let Some(data) = other.into_data() {
                        io.free_chain(data);
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

/// Largest message [`fuzz_sockperf`] delivers (one test frame holds it).
pub const FUZZ_MESSAGE_MAX: usize = 1500;

/// Fuzz body of the `apps_sockperf` target: `data` is one datagram from a sockperf client
/// (truncated to [`FUZZ_MESSAGE_MAX`]), served by a sockperf-mode echo over
/// [`melange_core::test_io::TestIo`]. Panics only on a bug: anything but exactly one of
/// "answered" or "unanswered"; an answer to a message that asked for none, to another
/// address, of another length, or that differs from the message in more than the client
/// flag; or a buffer not back in the pool. Returns the counters.
pub fn fuzz_sockperf(data: &[u8]) -> EchoCounters {
    use melange_core::test_io::TestIo;
    let message = &data[..data.len().min(FUZZ_MESSAGE_MAX)];
    let mut app = EchoApp::new(
        EchoConfig {
            ports: vec![11111],
            work_ns: 0,
            protocol: EchoProtocol::Sockperf,
        },
        |_| {},
    );
    let mut io = TestIo::new(4);
    app.start(&mut IoContext::new(&mut io));
    let client = SocketAddrV4::new(std::net::Ipv4Addr::new(10, 77, 0, 1), 40000);
    io.deliver(message, client);
    app.run_io(&mut IoContext::new(&mut io));
    let counters = app.counters();
    assert_eq!(counters.echoed + counters.unanswered, 1, "{counters:?}");
    let sent = io.take_sent();
    // The flags are big-endian: both bits live in their low byte.
    let low = SOCKPERF_FLAGS.end - 1;
    match sent.as_slice() {
        [] => assert_eq!(counters.unanswered, 1),
        [(to, answer)] => {
            assert_eq!(*to, client, "the answer goes to the client");
            assert!(
                message.len() >= SOCKPERF_HEADER_LEN,
                "a short message was answered"
            );
            assert_ne!(
                u16::from(message[low]) & SOCKPERF_FLAG_PONG_REQUEST,
                0,
                "a message that asked for no pong was answered"
            );
            assert_eq!(answer.len(), message.len());
            for (at, (a, m)) in answer.iter().zip(message).enumerate() {
                let expected = if at == low {
                    m & !(SOCKPERF_FLAG_CLIENT as u8)
                } else {
                    *m
                };
                assert_eq!(*a, expected, "the answer differs at byte {at}");
            }
        }
        more => panic!("one message, {} answers", more.len()),
    }
    assert_eq!(io.pool.available(), io.pool.capacity(), "a buffer leaked");
    counters
}

#[cfg(test)]
mod tests {
    use super::*;
    use melange_core::test_io::TestIo;
    use std::net::Ipv4Addr;

    #[test]
    fn fuzz_body_on_real_and_random_messages() {
        // The captured ping-pong request of the test below, then deterministic noise.
        let mut ping = [0u8; 24];
        ping[..16].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 3, 0, 0, 0, 0x40, 0x96, 0x8f]);
        assert_eq!(fuzz_sockperf(&ping).echoed, 1);
        ping[9] = 1;
        assert_eq!(fuzz_sockperf(&ping).unanswered, 1, "throughput mode");
        assert_eq!(fuzz_sockperf(&[]).unanswered, 1);
        assert_eq!(fuzz_sockperf(&[0xff; 4000]).echoed, 1);
        let mut rng = melange_core::rng::SplitMix64::new(11);
        for _ in 0..200 {
            let len = rng.below(64) as usize;
            let message: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            fuzz_sockperf(&message);
        }
    }

    fn echo(protocol: EchoProtocol) -> (EchoApp, TestIo) {
        let mut app = EchoApp::new(
            EchoConfig {
                ports: vec![7777],
                work_ns: 0,
                protocol,
            },
            |_| {},
        );
        let mut io = TestIo::new(16);
        app.start(&mut IoContext::new(&mut io));
        assert_eq!(app.bound_ports(), 1);
        (app, io)
    }

    #[test]
    fn a_port_that_cannot_be_bound_ends_the_server_with_the_reason() {
        let mut app = EchoApp::new(
            EchoConfig {
                ports: vec![7777, 7777],
                ..EchoConfig::default()
            },
            |_| {},
        );
        let mut io = TestIo::new(16);
        assert!(!app.is_done());
        app.start(&mut IoContext::new(&mut io));
        // TestIo refuses the second bind of one port, as a kernel without SO_REUSEPORT does.
        assert_eq!(app.bound_ports(), 1);
        assert_eq!(app.counters().bind_errors, 1);
        assert!(app.is_done());
        assert!(matches!(
            app.bind_error(),
            Some(CommandError::Bind { port: 7777, .. })
        ));
    }

    #[test]
    fn echoes_to_the_sender_and_counts_what_was_accepted() {
        let (mut app, mut io) = echo(EchoProtocol::Plain);
        let client = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 1), 40000);
        io.deliver(b"hello", client);
        io.deliver(b"again", client);
        app.run_io(&mut IoContext::new(&mut io));
        assert_eq!(
            io.take_sent(),
            vec![(client, b"hello".to_vec()), (client, b"again".to_vec())]
        );
        assert_eq!(app.counters().echoed, 2);
        // A refused reply is a send error, not an echo, and its buffer is not lost.
        io.refuse_sends = Some(melange_core::SendError::TxQueueFull);
        io.deliver(b"full", client);
        app.run_io(&mut IoContext::new(&mut io));
        assert_eq!(app.counters().echoed, 2);
        assert_eq!(app.counters().send_errors, 1);
        assert_eq!(io.pool.available(), io.pool.capacity());
    }

    #[test]
    fn reflectors_and_our_own_port_are_never_answered() {
        let (mut app, mut io) = echo(EchoProtocol::Plain);
        let ip = Ipv4Addr::new(10, 77, 0, 3);
        for port in [7, 19, 123, 0, 7777] {
            io.deliver(b"loop?", SocketAddrV4::new(ip, port));
        }
        io.deliver(b"real", SocketAddrV4::new(ip, 50000));
        app.run_io(&mut IoContext::new(&mut io));
        let sent = io.take_sent();
        assert_eq!(sent, vec![(SocketAddrV4::new(ip, 50000), b"real".to_vec())]);
        assert_eq!(app.counters().reflector_refused, 5);
        assert_eq!(io.pool.available(), io.pool.capacity());
    }

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
