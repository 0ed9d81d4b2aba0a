//! TCP sink: accepts connections, reads each until the peer's FIN, and reports how many bytes
//! it carried, their SHA-256 and how long it took; the server of `melange sink`, of the
//! source/sink transfer check and of the load generator's bulk mode.
//!
//! Received buffers are hashed where they lie (zero-copy, one pass over each byte) and given
//! back at once with `RecvDone`, so the sink reads as fast as the transport delivers and never
//! holds more than one batch. The digest state lives in the connection's slot (a few hundred
//! bytes, the slot table grown once to the transport's largest handle index, as the TCP echo
//! does), so nothing is allocated per packet or per connection after warm-up.
//!
//! When the peer closes its side the stream is complete: the sink reports it and closes its
//! own side. A connection that ends any other way (reset, timed out) is reported too, as
//! incomplete, with what arrived until then. The report goes to a callback the shell supplies
//! (printing one line per connection, or JSON), so the app itself stays pure: no clock, no
//! system call, the same in the simulator as on AF_XDP.

use crate::stream::Sha256Digest;
use melange_core::contract::{CloseReason, Command, CommandError, Outcome};
use melange_core::{App, BufChain, ConnId, Event, IoContext, ListenerId};
use sha2::{Digest, Sha256};
use std::net::SocketAddrV4;

/// Most ports one sink listens on.
pub const TCP_SINK_PORTS_MAX: usize = 64;
/// Connection slots the sink tracks (the handle index of a connection selects its slot); a
/// transport never hands out more connections than its table holds, which is at most this.
pub const TCP_SINK_CONNECTIONS_MAX: usize = 65_536;
/// Listen backlog asked for.
pub const TCP_SINK_BACKLOG: u32 = 4096;

/// TCP sink configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpSinkConfig {
    /// Ports to listen on, at most [`TCP_SINK_PORTS_MAX`].
    pub ports: Vec<u16>,
    /// End once this many connections have been reported; `None` serves until stopped.
    pub connections_max: Option<u64>,
}

/// One finished connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkRecord {
    /// The peer.
    pub peer: SocketAddrV4,
    /// Bytes received.
    pub bytes: u64,
    /// SHA-256 of the bytes received, in order.
    pub sha256: Sha256Digest,
    /// From the accept to the peer's FIN (or to the end of an incomplete connection).
    pub elapsed_ns: u64,
    /// The peer closed in order, so `bytes` is the whole stream; otherwise see `reason`.
    pub complete: bool,
    /// How the connection ended: `Closed` for a complete stream.
    pub reason: CloseReason,
}

impl SinkRecord {
    /// Megabytes (10^6 bytes) per second over `elapsed_ns`.
    pub fn mb_per_s(&self) -> f64 {
        if self.elapsed_ns == 0 {
            0.0
        } else {
            self.bytes as f64 * 1e3 / self.elapsed_ns as f64
        }
    }
}

/// What the sink does with each [`SinkRecord`]: the shell's choice (print it, collect it).
pub type SinkReporter = Box<dyn FnMut(&SinkRecord) + Send>;

/// Counters of a sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpSinkCounters {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections the peer closed in order (complete streams).
    pub complete: u64,
    /// Connections that ended otherwise.
    pub incomplete: u64,
    /// Bytes received, over every connection.
    pub bytes: u64,
    /// Listen failures at start.
    pub listen_errors: u64,
}

struct SinkConn {
    id: ConnId,
    peer: SocketAddrV4,
    hasher: Sha256,
    bytes: u64,
    start_ns: u64,
    /// Reported already (at the peer's FIN); the slot waits for `Closed`.
    reported: bool,
}

/// The TCP sink app. See the module documentation.
pub struct TcpSinkApp {
    config: TcpSinkConfig,
    report: SinkReporter,
    listeners: Vec<ListenerId>,
    listen_error: Option<CommandError>,
    slots: Vec<Option<SinkConn>>,
    live: usize,
    counters: TcpSinkCounters,
}

impl std::fmt::Debug for TcpSinkApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpSinkApp")
            .field("config", &self.config)
            .field("counters", &self.counters)
            .field("live", &self.live)
            .finish()
    }
}

impl TcpSinkApp {
    /// A sink that hands each finished connection to `report`.
    pub fn new(config: TcpSinkConfig, report: SinkReporter) -> Self {
        Self {
            config,
            report,
            listeners: Vec::new(),
            listen_error: None,
            slots: Vec::new(),
            live: 0,
            counters: TcpSinkCounters::default(),
        }
    }

    /// The first port that could not be listened on, and why; the app then ends.
    pub fn listen_error(&self) -> Option<CommandError> {
        self.listen_error
    }

    /// Counters so far.
    pub fn counters(&self) -> TcpSinkCounters {
        self.counters
    }

    /// Connections accepted and not yet ended.
    pub fn live(&self) -> usize {
        self.live
    }

    fn slot(&mut self, conn: ConnId) -> Option<&mut SinkConn> {
        self.slots
            .get_mut(conn.index() as usize)?
            .as_mut()
            .filter(|c| c.id == conn)
    }

    /// Reports connection `conn` (once) as ended for `reason`.
    fn finish(&mut self, conn: ConnId, now_ns: u64, reason: CloseReason) {
        let Some(slot) = self.slot(conn) else { return };
        if slot.reported {
            return;
        }
        slot.reported = true;
        let record = SinkRecord {
            peer: slot.peer,
            bytes: slot.bytes,
            sha256: slot.hasher.finalize_reset().into(),
            elapsed_ns: now_ns.saturating_sub(slot.start_ns),
            complete: reason == CloseReason::Closed,
            reason,
        };
        if record.complete {
            self.counters.complete += 1;
        } else {
            self.counters.incomplete += 1;
        }
        (self.report)(&record);
    }

    fn reported(&self) -> u64 {
        self.counters.complete + self.counters.incomplete
    }
}

impl App for TcpSinkApp {
    fn start(&mut self, io: &mut IoContext<'_>) {
        for &port in self.config.ports.iter().take(TCP_SINK_PORTS_MAX) {
            match io.submit(Command::Listen {
                port,
                backlog: TCP_SINK_BACKLOG,
            }) {
                Ok(Outcome::Listener(listener)) => self.listeners.push(listener),
                Ok(_) => {}
                Err(refused) => {
                    self.counters.listen_errors += 1;
                    self.listen_error.get_or_insert(refused.error);
                }
            }
        }
    }

    fn is_done(&self) -> bool {
        self.listen_error.is_some()
            || self
                .config
                .connections_max
                .is_some_and(|n| self.reported() >= n && self.live == 0)
    }

    fn run_io(&mut self, io: &mut IoContext<'_>) {
        let now = io.now_ns();
        while let Some(event) = io.next_event() {
            match event {
                Event::Accepted { conn, peer, .. } => {
                    let index = conn.index() as usize;
                    let full = self
                        .config
                        .connections_max
                        .is_some_and(|n| self.reported() + self.live as u64 >= n);
                    if index >= TCP_SINK_CONNECTIONS_MAX || full {
                        let _ = io.submit(Command::Abort { conn });
                        continue;
                    }
                    if index >= self.slots.len() {
                        // Grows to the largest handle index the transport uses, once.
                        self.slots.resize_with(index + 1, || None);
                    }
                    if self.slots[index].is_none() {
                        self.live += 1;
                    }
                    self.slots[index] = Some(SinkConn {
                        id: conn,
                        peer,
                        hasher: Sha256::new(),
                        bytes: 0,
                        start_ns: now,
                        reported: false,
                    });
                    self.counters.accepted += 1;
                }
                Event::Recv { conn, data } => {
                    let bytes = data.len() as u32;
                    if let Some(slot) = self.slots.get_mut(conn.index() as usize) {
                        if let Some(slot) = slot.as_mut().filter(|c| c.id == conn) {
                            hash_chain(io, &mut slot.hasher, data);
                            slot.bytes += u64::from(bytes);
                            self.counters.bytes += u64::from(bytes);
                            let _ = io.submit(Command::RecvDone { conn, bytes });
                            continue;
                        }
                    }
                    io.free_chain(data);
                }
                Event::PeerClosed { conn } => {
                    self.finish(conn, now, CloseReason::Closed);
                    let _ = io.submit(Command::Close { conn });
                }
                Event::Closed { conn, reason } => {
                    // Reported at the peer's FIN already, unless it ended before: then the
                    // stream is incomplete.
                    self.finish(conn, now, reason);
                    if let Some(slot) = self.slots.get_mut(conn.index() as usize) {
                        if slot.as_ref().is_some_and(|c| c.id == conn) {
                            *slot = None;
                            self.live -= 1;
                        }
                    }
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

/// Hashes a received chain in order and frees its buffers.
pub(crate) fn hash_chain(io: &mut IoContext<'_>, hasher: &mut Sha256, data: BufChain) {
    let mut rest = Some(data);
    while let Some(chain) = rest.take() {
        let (buf, next) = io.chain_pop_front(chain);
        hasher.update(io.payload(&buf));
        io.free(buf);
        rest = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{hex, SeededStream};
    use crate::test_tcp::TcpTestIo;
    use std::net::Ipv4Addr;
    use std::sync::{Arc, Mutex};

    fn collecting() -> (SinkReporter, Arc<Mutex<Vec<SinkRecord>>>) {
        let records = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&records);
        let report: SinkReporter = Box::new(move |r: &SinkRecord| sink.lock().unwrap().push(*r));
        (report, records)
    }

    fn peer(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), port)
    }

    #[test]
    fn each_stream_is_hashed_and_reported_at_the_peers_fin() {
        let (report, records) = collecting();
        let mut app = TcpSinkApp::new(
            TcpSinkConfig {
                ports: vec![7000],
                connections_max: Some(2),
            },
            report,
        );
        let mut io = TcpTestIo::new(256);
        app.start(&mut IoContext::new(&mut io));
        assert_eq!(io.listened, vec![7000]);
        let mut a = vec![0u8; 200_000];
        SeededStream::new(5).fill(&mut a);
        let b = b"hello".to_vec();
        let ca = io.accept(peer(1));
        let cb = io.accept(peer(2));
        app.run_io(&mut IoContext::new(&mut io));
        // The streams arrive interleaved, in pieces of odd sizes.
        for (k, part) in a.chunks(30_001).enumerate() {
            io.deliver(ca, part, 999);
            if k == 2 {
                io.deliver(cb, &b, 2);
            }
            io.now_ns += 1_000_000;
            app.run_io(&mut IoContext::new(&mut io));
        }
        io.peer_close(ca);
        app.run_io(&mut IoContext::new(&mut io));
        assert_eq!(
            io.closing_conns(),
            1,
            "the sink closes after the peer's FIN"
        );
        io.close_all_closing();
        // The other one is reset: reported as incomplete.
        io.end(cb, CloseReason::Reset);
        app.run_io(&mut IoContext::new(&mut io));
        let records = records.lock().unwrap().clone();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].peer, peer(1));
        assert_eq!(records[0].bytes, 200_000);
        assert!(records[0].complete);
        assert_eq!(
            hex(&records[0].sha256),
            hex(&crate::stream::stream_sha256(5, 200_000))
        );
        assert_eq!(records[0].elapsed_ns, 7_000_000);
        assert!(records[0].mb_per_s() > 0.0);
        assert_eq!(records[1].bytes, 5);
        assert!(!records[1].complete);
        assert_eq!(records[1].reason, CloseReason::Reset);
        let expected: Sha256Digest = Sha256::digest(b"hello").into();
        assert_eq!(records[1].sha256, expected);
        assert_eq!(io.conns[ca.index() as usize].recv_done, 200_000);
        assert_eq!(app.counters().complete, 1);
        assert_eq!(app.counters().incomplete, 1);
        assert!(app.is_done(), "two connections served");
        io.finish(&mut app);
    }

    #[test]
    fn a_sink_that_cannot_listen_ends() {
        let (report, _) = collecting();
        let mut app = TcpSinkApp::new(TcpSinkConfig::default(), report);
        let mut io = melange_core::test_io::TestIo::new(8);
        app.config.ports = vec![1];
        // TestIo serves no TCP: the listen is refused.
        app.start(&mut IoContext::new(&mut io));
        assert!(app.listen_error().is_some());
        assert!(app.is_done());
    }

    #[test]
    fn a_server_without_a_limit_never_ends_and_bytes_for_no_connection_are_freed() {
        let (report, records) = collecting();
        let mut app = TcpSinkApp::new(
            TcpSinkConfig {
                ports: vec![7000],
                connections_max: None,
            },
            report,
        );
        let mut io = TcpTestIo::new(64);
        app.start(&mut IoContext::new(&mut io));
        let stale = melange_core::Handle::from_parts(40, 3);
        io.deliver(stale, b"nobody", 3);
        app.run_io(&mut IoContext::new(&mut io));
        assert!(records.lock().unwrap().is_empty());
        assert!(!app.is_done());
        io.finish(&mut app);
    }
}
