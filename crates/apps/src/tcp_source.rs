//! TCP source: one connection that sends exactly `bytes` bytes of a seeded stream
//! ([`crate::stream::SeededStream`]), closes with FIN and waits until the connection is
//! closed; the client of `melange source`.
//!
//! The stream is generated straight into pool buffers, a chunk at a time, and hashed as it is
//! generated, so what the digest covers is what was offered to the transport, byte for byte
//! and in order; a chunk the transport takes only in part keeps its rest, offered again at
//! the next `Sent` (IX's flow control, as in the load generator). A chunk is generated only
//! once all of its buffers were allocated: a pool that runs dry midway must not advance the
//! stream or the digest (the generator and the digest state are copied before, a few hundred
//! bytes against a 16 KiB chunk, and put back).
//!
//! The transfer is complete when the connection closes in order after every byte was
//! generated and taken: on Melange's TCP `Closed` comes once our FIN was acknowledged and the
//! peer's FIN arrived, and a sink sends its FIN only after reading ours, so it has read every
//! byte; on kernel sockets the same holds of the kernel's TCP. Anything else (a refused or
//! failed connect, a reset, a peer that closes first) ends the transfer as
//! [`SourceEnd`] says, and is never a panic.

use crate::stream::{SeededStream, Sha256Digest};
use melange_core::contract::{CloseReason, Command, CommandError, Outcome};
use melange_core::{App, BufChain, ConnId, Event, IoContext};
use sha2::{Digest, Sha256};
use std::net::SocketAddrV4;

/// Largest transfer: 1 TiB (hours at line rate; beyond that is a typo).
pub const TCP_SOURCE_BYTES_MAX: u64 = 1 << 40;
/// Bytes generated per chunk (one `Send`).
pub const TCP_SOURCE_CHUNK_LEN: usize = 16 * 1024;
/// Most chunks offered per call: the transport's partial `Accepted` normally ends the loop
/// first; this bounds one pass when it takes everything.
pub const TCP_SOURCE_CHUNKS_PER_FILL_MAX: usize = 64;
/// How long the source waits for buffers when the pool is empty.
pub const TCP_SOURCE_RETRY_NS: u64 = 1_000_000;

const TOKEN_RETRY: u64 = 1;

/// TCP source configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSourceConfig {
    /// The sink.
    pub target: SocketAddrV4,
    /// Bytes to send, 1..=[`TCP_SOURCE_BYTES_MAX`].
    pub bytes: u64,
    /// The stream's seed.
    pub seed: u64,
}

/// How a transfer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceEnd {
    /// Every byte was sent and the connection closed in order.
    Complete,
    /// The transport refused the connect at once (no route, no free port).
    ConnectRefused(CommandError),
    /// The connection could not be opened (refused by the peer, timed out).
    ConnectFailed(CloseReason),
    /// The peer closed its side before the stream was over.
    PeerClosedEarly,
    /// The connection ended before the stream was over, or not in order.
    Broken(CloseReason),
}

/// What a source did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceReport {
    /// Bytes generated and taken by the transport.
    pub bytes_sent: u64,
    /// Bytes the transport reported back (acknowledged on Melange's TCP, taken by the kernel
    /// on kernel sockets).
    pub bytes_acked: u64,
    /// SHA-256 of the whole stream, once every byte was taken by the transport.
    pub sha256: Option<Sha256Digest>,
    /// From the connect to the end (so far, while running).
    pub elapsed_ns: u64,
    /// How it ended; `None` while it runs.
    pub end: Option<SourceEnd>,
}

impl SourceReport {
    /// Megabytes (10^6 bytes) per second over `elapsed_ns`.
    pub fn mb_per_s(&self) -> f64 {
        if self.elapsed_ns == 0 {
            0.0
        } else {
            self.bytes_sent as f64 * 1e3 / self.elapsed_ns as f64
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Sending,
    /// FIN asked for; waiting for `Closed`.
    Closing,
    Done,
}

/// The TCP source app. See the module documentation.
pub struct TcpSourceApp {
    config: TcpSourceConfig,
    state: State,
    conn: Option<ConnId>,
    stream: SeededStream,
    hasher: Sha256,
    sha256: Option<Sha256Digest>,
    /// Bytes generated (into buffers, offered or pending).
    generated: u64,
    taken: u64,
    acked: u64,
    pending: Option<BufChain>,
    retry_armed: bool,
    start_ns: u64,
    end_ns: Option<u64>,
    now_ns: u64,
    end: Option<SourceEnd>,
    /// Bytes the peer sent us (a sink sends none), read and dropped.
    unexpected_bytes: u64,
}

impl std::fmt::Debug for TcpSourceApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpSourceApp")
            .field("config", &self.config)
            .field("state", &self.state)
            .field("generated", &self.generated)
            .field("taken", &self.taken)
            .field("acked", &self.acked)
            .finish()
    }
}

impl TcpSourceApp {
    /// A source; `bytes` is clamped to 1..=[`TCP_SOURCE_BYTES_MAX`] (the command line refuses
    /// values outside before they get here).
    pub fn new(mut config: TcpSourceConfig) -> Self {
        config.bytes = config.bytes.clamp(1, TCP_SOURCE_BYTES_MAX);
        Self {
            stream: SeededStream::new(config.seed),
            config,
            state: State::Connecting,
            conn: None,
            hasher: Sha256::new(),
            sha256: None,
            generated: 0,
            taken: 0,
            acked: 0,
            pending: None,
            retry_armed: false,
            start_ns: 0,
            end_ns: None,
            now_ns: 0,
            end: None,
            unexpected_bytes: 0,
        }
    }

    /// The report so far (final once [`App::is_done`]).
    pub fn report(&self) -> SourceReport {
        let end_ns = self.end_ns.unwrap_or(self.now_ns);
        SourceReport {
            bytes_sent: self.taken,
            bytes_acked: self.acked,
            // A digest of bytes that were not all sent would name no transfer.
            sha256: self.sha256.filter(|_| self.taken == self.config.bytes),
            elapsed_ns: end_ns.saturating_sub(self.start_ns),
            end: self.end,
        }
    }

    /// Bytes the peer sent, which a sink never does.
    pub fn unexpected_bytes(&self) -> u64 {
        self.unexpected_bytes
    }

    fn finish(&mut self, io: &mut IoContext<'_>, end: SourceEnd) {
        self.state = State::Done;
        self.end.get_or_insert(end);
        self.end_ns.get_or_insert(io.now_ns());
        if let Some(pending) = self.pending.take() {
            io.free_chain(pending);
        }
        self.conn = None;
    }

    /// Offers the pending bytes; true when all were taken.
    fn flush(&mut self, io: &mut IoContext<'_>) -> bool {
        let (Some(conn), Some(data)) = (self.conn, self.pending.take()) else {
            return true;
        };
        match io.submit(Command::Send { conn, data }) {
            Ok(Outcome::Accepted { bytes, rest }) => {
                self.taken += u64::from(bytes);
                self.pending = rest;
                self.pending.is_none()
            }
            Ok(_) => true,
            Err(refused) => {
                // The connection broke; its `Closed` follows and says why.
                if let Some(data) = refused.data {
                    io.free_chain(data);
                }
                false
            }
        }
    }

    /// Generates and offers chunks while the transport takes them; closes after the last.
    fn fill(&mut self, io: &mut IoContext<'_>) {
        for _ in 0..TCP_SOURCE_CHUNKS_PER_FILL_MAX {
            if self.state != State::Sending || !self.flush(io) {
                return;
            }
            if self.generated == self.config.bytes {
                if let Some(conn) = self.conn {
                    self.state = State::Closing;
                    let _ = io.submit(Command::Close { conn });
                }
                return;
            }
            let len = (self.config.bytes - self.generated).min(TCP_SOURCE_CHUNK_LEN as u64);
            let Some(chunk) = self.generate(io, len as usize) else {
                // The pool is empty (our own chunks wait to be acknowledged): try again soon.
                if !self.retry_armed
                    && io
                        .arm_timer(io.now_ns() + TCP_SOURCE_RETRY_NS, TOKEN_RETRY)
                        .is_ok()
                {
                    self.retry_armed = true;
                }
                return;
            };
            self.generated += len;
            if self.generated == self.config.bytes {
                self.sha256 = Some(self.hasher.finalize_reset().into());
            }
            self.pending = Some(chunk);
        }
    }

    /// The next `len` bytes of the stream in pool buffers, hashed; `None` (the stream and the
    /// digest unchanged) when the pool runs out.
    fn generate(&mut self, io: &mut IoContext<'_>, len: usize) -> Option<BufChain> {
        let saved = (self.stream.clone(), self.hasher.clone());
        let (stream, hasher) = (&mut self.stream, &mut self.hasher);
        let chunk = crate::tcp_loadgen::build_chain(io, len, |_, out| {
            stream.fill(out);
            hasher.update(&*out);
        });
        if chunk.is_none() {
            (self.stream, self.hasher) = saved;
        }
        chunk
    }
}

impl App for TcpSourceApp {
    fn start(&mut self, io: &mut IoContext<'_>) {
        self.start_ns = io.now_ns();
        self.now_ns = self.start_ns;
        match io.submit(Command::Connect {
            to: self.config.target,
            token: 0,
        }) {
            Ok(Outcome::Conn(conn)) => self.conn = Some(conn),
            Ok(_) => self.finish(io, SourceEnd::ConnectFailed(CloseReason::Refused)),
            Err(refused) => self.finish(io, SourceEnd::ConnectRefused(refused.error)),
        }
    }

    fn is_done(&self) -> bool {
        self.state == State::Done
    }

    fn run_io(&mut self, io: &mut IoContext<'_>) {
        self.now_ns = io.now_ns();
        while let Some(event) = io.next_event() {
            match event {
                Event::Connected { conn, .. } if Some(conn) == self.conn => {
                    if self.state == State::Connecting {
                        self.state = State::Sending;
                        self.fill(io);
                    }
                }
                Event::ConnectFailed { reason, .. } if self.state == State::Connecting => {
                    self.finish(io, SourceEnd::ConnectFailed(reason));
                }
                Event::Sent { conn, bytes, data } => {
                    if let Some(data) = data {
                        io.free_chain(data);
                    }
                    if Some(conn) == self.conn {
                        self.acked += u64::from(bytes);
                        self.fill(io);
                    }
                }
                Event::Recv { conn, data } => {
                    let bytes = data.len() as u32;
                    self.unexpected_bytes += u64::from(bytes);
                    io.free_chain(data);
                    if Some(conn) == self.conn {
                        let _ = io.submit(Command::RecvDone { conn, bytes });
                    }
                }
                Event::PeerClosed { conn } if Some(conn) == self.conn => {
                    if self.state == State::Sending {
                        // The peer gave up before the stream was over: stop and close.
                        self.end = Some(SourceEnd::PeerClosedEarly);
                        self.state = State::Closing;
                        let _ = io.submit(Command::Close { conn });
                    }
                }
                Event::Closed { conn, reason } if Some(conn) == self.conn => {
                    let all_taken =
                        self.generated == self.config.bytes && self.taken == self.config.bytes;
                    let end = if reason == CloseReason::Closed && all_taken {
                        SourceEnd::Complete
                    } else {
                        SourceEnd::Broken(reason)
                    };
                    self.finish(io, end);
                }
                Event::Timer {
                    token: TOKEN_RETRY, ..
                } => {
                    self.retry_armed = false;
                    self.fill(io);
                }
                other => {
                    if let Some(data) = other.into_data() {
                        io.free_chain(data);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::stream_sha256;
    use crate::test_tcp::TcpTestIo;
    use std::net::Ipv4Addr;

    fn config(bytes: u64) -> TcpSourceConfig {
        TcpSourceConfig {
            target: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 9000),
            bytes,
            seed: 77,
        }
    }

    #[test]
    fn sends_exactly_the_stream_through_partial_sends_then_fin() {
        let mut io = TcpTestIo::new(128);
        io.send_room = 50_000;
        let total = 1_000_003;
        let mut app = TcpSourceApp::new(config(total));
        app.start(&mut IoContext::new(&mut io));
        io.establish_all();
        io.now_ns = 1_000;
        app.run_io(&mut IoContext::new(&mut io));
        assert_eq!(
            io.bytes_taken(),
            50_000,
            "up to the room, a chunk cut in two"
        );
        let mut rounds = 0;
        while io.closing_conns() == 0 {
            rounds += 1;
            assert!(rounds < 1000, "the source stalled: {:?}", app.report());
            io.now_ns += 1_000;
            io.ack_all();
            app.run_io(&mut IoContext::new(&mut io));
        }
        let stream = io.conns[0].stream.clone();
        assert_eq!(stream.len() as u64, total);
        let mut expected = vec![0u8; total as usize];
        SeededStream::new(77).fill(&mut expected);
        assert!(stream == expected, "the bytes on the wire are the stream");
        let report = app.report();
        assert_eq!(report.sha256, Some(stream_sha256(77, total)));
        assert_eq!(report.end, None, "waiting for Closed");
        io.ack_all();
        let conn = io.conns[0].id;
        io.end(conn, CloseReason::Closed);
        io.now_ns += 1_000;
        app.run_io(&mut IoContext::new(&mut io));
        let report = app.report();
        assert_eq!(report.end, Some(SourceEnd::Complete), "{report:?}");
        assert_eq!(report.bytes_sent, total);
        assert_eq!(report.bytes_acked, total);
        assert!(report.mb_per_s() > 0.0);
        assert!(app.is_done());
        io.finish(&mut app);
    }

    #[test]
    fn an_empty_pool_neither_advances_the_stream_nor_stalls() {
        // Six frames: less than one chunk (ten frames of 1,792 bytes).
        let mut io = TcpTestIo::new(6);
        let mut app = TcpSourceApp::new(config(100_000));
        app.start(&mut IoContext::new(&mut io));
        io.establish_all();
        app.run_io(&mut IoContext::new(&mut io));
        assert_eq!(io.bytes_taken(), 0);
        assert_eq!(io.timers_with_token(TOKEN_RETRY), 1);
        let report = app.report();
        assert_eq!((report.bytes_sent, report.end), (0, None));
        io.finish(&mut app);
        assert!(matches!(app.report().end, Some(SourceEnd::Broken(_))));
    }

    #[test]
    fn failures_end_the_transfer_with_a_reason() {
        let mut io = TcpTestIo::new(64);
        io.refuse_connects = true;
        let mut app = TcpSourceApp::new(config(10));
        app.start(&mut IoContext::new(&mut io));
        assert!(matches!(
            app.report().end,
            Some(SourceEnd::ConnectRefused(_))
        ));
        assert!(app.is_done());

        let mut io = TcpTestIo::new(64);
        let mut app = TcpSourceApp::new(config(10));
        app.start(&mut IoContext::new(&mut io));
        let conn = io.connects[0];
        io.fail_connect(conn);
        app.run_io(&mut IoContext::new(&mut io));
        assert_eq!(
            app.report().end,
            Some(SourceEnd::ConnectFailed(CloseReason::Refused))
        );

        let mut io = TcpTestIo::new(64);
        io.send_room = 10;
        let mut app = TcpSourceApp::new(config(1000));
        app.start(&mut IoContext::new(&mut io));
        io.establish_all();
        app.run_io(&mut IoContext::new(&mut io));
        let conn = io.connects[0];
        io.peer_close(conn);
        app.run_io(&mut IoContext::new(&mut io));
        assert_eq!(io.closing_conns(), 1);
        io.close_all_closing();
        app.run_io(&mut IoContext::new(&mut io));
        assert_eq!(app.report().end, Some(SourceEnd::PeerClosedEarly));
        assert_eq!(app.report().sha256, None, "the stream never finished");
        io.finish(&mut app);
    }
}
