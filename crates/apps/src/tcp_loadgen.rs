//! A TCP load generator on the app contract: `connections` connections, each keeping
//! `inflight` fixed-size requests outstanding (closed loop), timed and checked byte for byte.
//!
//! It is written against the contract, not against sockets, so the same app drives a server
//! from kernel sockets today and from Melange's own TCP over AF_XDP once that lands (where a
//! kernel client would saturate its own core first, as DESIGN.md notes).
//!
//! Requests on one connection are answered in order (an echo returns the byte stream as
//! sent), so a connection keeps a small ring of send times, and a reply is complete once
//! `message_len` more bytes arrived. Every request's bytes follow a pattern of the connection,
//! the request's sequence number and the byte's offset, so any lost, duplicated, reordered or
//! corrupted byte is found while the reply is read, without keeping a copy. Sends the
//! transport takes only in part keep their rest and resend it at the connection's next
//! `Sent` (IX's explicit flow control).
//!
//! The run: connect everything at start, measure replies received in
//! [`TcpLoadgenConfig::warmup_ns`, + `duration_ns`), stop sending at the end of the window,
//! wait up to `drain_ns` for outstanding replies, close every connection, and end once all are
//! closed (or the drain time is up).

use crate::loadgen::LoadgenReport;
use hdrhistogram::Histogram;
use melange_core::contract::{Command, Outcome};
use melange_core::{App, BufChain, ConnId, Event, IoContext};
use std::net::SocketAddrV4;

/// Most connections of one load generator engine.
pub const TCP_LOADGEN_CONNECTIONS_MAX: usize = 10_000;
/// Most requests in flight on one connection.
pub const TCP_LOADGEN_INFLIGHT_MAX: usize = 64;
/// Largest request.
pub const TCP_LOADGEN_MESSAGE_MAX: usize = 1 << 20;
/// Handshakes the load generator keeps in flight at once: opening 10,000 connections in one
/// burst overflows receive rings with the answers, and the retries then come back as one
/// burst too; a bounded number of opens in flight keeps the handshakes flowing.
pub const TCP_LOADGEN_CONNECTS_IN_FLIGHT_MAX: usize = 256;

/// Timer tokens.
const TOKEN_MEASURE_START: u64 = 1;
const TOKEN_MEASURE_END: u64 = 2;
const TOKEN_DRAIN_END: u64 = 3;
const TOKEN_GIVE_UP: u64 = 4;

/// TCP load generator configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLoadgenConfig {
    /// The server.
    pub target: SocketAddrV4,
    /// Connections to open, 1..=[`TCP_LOADGEN_CONNECTIONS_MAX`].
    pub connections: usize,
    /// Requests outstanding per connection, 1..=[`TCP_LOADGEN_INFLIGHT_MAX`].
    pub inflight: usize,
    /// Bytes per request (and reply), 1..=[`TCP_LOADGEN_MESSAGE_MAX`].
    pub message_len: usize,
    /// Time before measuring starts.
    pub warmup_ns: u64,
    /// Measured time.
    pub duration_ns: u64,
    /// Time allowed after the window for outstanding replies.
    pub drain_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Open,
    /// Close was asked; waiting for `Closed`.
    Closing,
    /// Gone (closed, failed, reset).
    Done,
}

struct Conn {
    id: Option<ConnId>,
    state: State,
    /// Send times of the outstanding requests, oldest at `head`.
    sent_ns: [u64; TCP_LOADGEN_INFLIGHT_MAX],
    head: usize,
    outstanding: usize,
    /// Sequence number of the next request to build.
    next_seq: u64,
    /// Sequence number of the reply being read, and how many of its bytes arrived.
    reply_seq: u64,
    reply_at: usize,
    /// Bytes of built requests the transport has not taken yet.
    pending: Option<BufChain>,
}

impl Conn {
    fn new() -> Self {
        Self {
            id: None,
            state: State::Connecting,
            sent_ns: [0; TCP_LOADGEN_INFLIGHT_MAX],
            head: 0,
            outstanding: 0,
            next_seq: 0,
            reply_seq: 0,
            reply_at: 0,
            pending: None,
        }
    }
}

/// The byte at `offset` of request `seq` on connection `conn`.
fn pattern(conn: usize, seq: u64, offset: usize) -> u8 {
    (conn as u64)
        .wrapping_mul(0x9e37_79b9)
        .wrapping_add(seq.wrapping_mul(0x85eb_ca6b))
        .wrapping_add(offset as u64)
        .wrapping_mul(0x2545_f491) as u8
        ^ (offset as u8)
}

/// The TCP load generator app. See the module documentation.
pub struct TcpLoadgenApp {
    config: TcpLoadgenConfig,
    conns: Vec<Conn>,
    /// Connection index by handle index (grown to the transport's largest handle index).
    by_handle: Vec<u32>,
    measuring: bool,
    sending: bool,
    draining_over: bool,
    histogram: Histogram<u64>,
    sent: u64,
    received: u64,
    measured: u64,
    corrupt: u64,
    unexpected: u64,
    send_failures: u64,
    connect_failures: u64,
    resets: u64,
    /// Connections whose handshake completed (`Connected`) while the run was sending.
    opened: u64,
    open: usize,
    /// Handshakes in flight.
    connecting: usize,
    /// The next connection to open.
    next_connect: usize,
}

impl std::fmt::Debug for TcpLoadgenApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpLoadgenApp")
            .field("config", &self.config)
            .field("sent", &self.sent)
            .field("received", &self.received)
            .field("open", &self.open)
            .finish()
    }
}

const NO_CONN: u32 = u32::MAX;

impl TcpLoadgenApp {
    /// A load generator; the counts are clamped to their ranges (the command line refuses
    /// values outside before they get here).
    pub fn new(mut config: TcpLoadgenConfig) -> Self {
        config.connections = config.connections.clamp(1, TCP_LOADGEN_CONNECTIONS_MAX);
        config.inflight = config.inflight.clamp(1, TCP_LOADGEN_INFLIGHT_MAX);
        config.message_len = config.message_len.clamp(1, TCP_LOADGEN_MESSAGE_MAX);
        Self {
            conns: (0..config.connections).map(|_| Conn::new()).collect(),
            by_handle: Vec::new(),
            config,
            measuring: false,
            sending: true,
            draining_over: false,
            histogram: Histogram::new_with_bounds(1, 60_000_000_000, 3)
                .expect("static histogram bounds are valid"),
            sent: 0,
            received: 0,
            measured: 0,
            corrupt: 0,
            unexpected: 0,
            send_failures: 0,
            connect_failures: 0,
            resets: 0,
            opened: 0,
            open: 0,
            connecting: 0,
            next_connect: 0,
        }
    }

    /// Connections that could not be opened.
    pub fn connect_failures(&self) -> u64 {
        self.connect_failures
    }

    /// Connections whose handshake completed while the run was still sending (a connection
    /// reported open only once the run stopped sending never carried a request).
    pub fn connections_opened(&self) -> u64 {
        self.opened
    }

    /// Connections the server reset or that ended before the run did.
    pub fn resets(&self) -> u64 {
        self.resets
    }

    /// The report so far (final once [`App::is_done`]). `timeouts` is always 0: TCP
    /// retransmits, so a reply is late, never lost, unless its connection ends (`resets`).
    pub fn report(&self) -> LoadgenReport {
        LoadgenReport::from_counts(
            crate::loadgen::ReportCounts {
                sent: self.sent,
                received: self.received,
                measured: self.measured,
                timeouts: 0,
                corrupt: self.corrupt,
                unexpected: self.unexpected,
                send_failures: self.send_failures,
                window_ns: self.config.duration_ns,
            },
            self.histogram.clone(),
        )
    }

    fn index_of(&self, conn: ConnId) -> Option<usize> {
        let at = *self.by_handle.get(conn.index() as usize)?;
        let index = at as usize;
        (at != NO_CONN && self.conns[index].id == Some(conn)).then_some(index)
    }

    /// Builds and offers as many requests as the window allows on connection `i`.
    fn fill(&mut self, io: &mut IoContext<'_>, i: usize) {
        if self.conns[i].pending.is_some() {
            self.flush(io, i);
        }
        while self.sending
            && self.conns[i].state == State::Open
            && self.conns[i].pending.is_none()
            && self.conns[i].outstanding < self.config.inflight
        {
            let Some(request) = self.build(io, i) else {
                self.send_failures += 1;
                return;
            };
            let conn = &mut self.conns[i];
            let slot = (conn.head + conn.outstanding) % TCP_LOADGEN_INFLIGHT_MAX;
            conn.sent_ns[slot] = io.now_ns();
            conn.outstanding += 1;
            conn.next_seq += 1;
            conn.pending = Some(request);
            self.sent += 1;
            self.flush(io, i);
        }
    }

    /// One request of connection `i` in pool buffers, or `None` if the pool is empty.
    fn build(&mut self, io: &mut IoContext<'_>, i: usize) -> Option<BufChain> {
        let seq = self.conns[i].next_seq;
        let mut chain: Option<BufChain> = None;
        let mut offset = 0;
        while offset < self.config.message_len {
            let Some(mut buf) = io.alloc() else {
                if let Some(chain) = chain {
                    io.free_chain(chain);
                }
                return None;
            };
            let len = io.tailroom(&buf).min(self.config.message_len - offset);
            if io.set_payload_len(&mut buf, len).is_err() {
                io.free(buf);
                if let Some(chain) = chain {
                    io.free_chain(chain);
                }
                return None;
            }
            for (k, byte) in io.payload_mut(&buf).iter_mut().enumerate() {
                *byte = pattern(i, seq, offset + k);
            }
            offset += len;
            match chain.as_mut() {
                None => chain = Some(BufChain::from(buf)),
                Some(c) => {
                    if let Err((_, buf)) = io.chain_push(c, buf) {
                        io.free(buf);
                        let chain = chain.take().expect("set above");
                        io.free_chain(chain);
                        return None;
                    }
                }
            }
        }
        chain
    }

    /// Offers connection `i`'s pending bytes.
    fn flush(&mut self, io: &mut IoContext<'_>, i: usize) {
        let (Some(conn), Some(data)) = (self.conns[i].id, self.conns[i].pending.take()) else {
            return;
        };
        match io.submit(Command::Send { conn, data }) {
            Ok(Outcome::Accepted { rest, .. }) => self.conns[i].pending = rest,
            Ok(_) => {}
            Err(refused) => {
                // The connection broke; its `Closed` follows.
                self.send_failures += 1;
                if let Some(data) = refused.data {
                    io.free_chain(data);
                }
            }
        }
    }

    /// Checks received bytes of connection `i` against the pattern and completes replies.
    fn receive(&mut self, io: &mut IoContext<'_>, i: usize, data: BufChain) {
        let bytes = data.len() as u32;
        let now = io.now_ns();
        let mut rest = Some(data);
        while let Some(chain) = rest.take() {
            let (buf, next) = io.chain_pop_front(chain);
            rest = next;
            let mut corrupt = false;
            let mut completed = 0u32;
            {
                let payload = io.payload(&buf);
                let conn = &mut self.conns[i];
                for &byte in payload {
                    if conn.outstanding == 0 {
                        // Bytes nobody asked for.
                        corrupt = true;
                        break;
                    }
                    if byte != pattern(i, conn.reply_seq, conn.reply_at) {
                        corrupt = true;
                    }
                    conn.reply_at += 1;
                    if conn.reply_at == self.config.message_len {
                        let sent = conn.sent_ns[conn.head];
                        conn.head = (conn.head + 1) % TCP_LOADGEN_INFLIGHT_MAX;
                        conn.outstanding -= 1;
                        conn.reply_seq += 1;
                        conn.reply_at = 0;
                        completed += 1;
                        if self.measuring {
                            let _ = self.histogram.record(now.saturating_sub(sent).max(1));
                        }
                    }
                }
            }
            io.free(buf);
            if corrupt {
                self.corrupt += 1;
            }
            self.received += u64::from(completed);
            if self.measuring {
                self.measured += u64::from(completed);
            }
        }
        if let Some(conn) = self.conns[i].id {
            let _ = io.submit(Command::RecvDone { conn, bytes });
        }
        self.fill(io, i);
        self.maybe_close(io, i);
    }

    /// After the window, a connection with nothing outstanding is closed.
    fn maybe_close(&mut self, io: &mut IoContext<'_>, i: usize) {
        let conn = &mut self.conns[i];
        let quiet = conn.outstanding == 0 && conn.pending.is_none();
        if !self.sending && conn.state == State::Open && (quiet || self.draining_over) {
            if let Some(id) = conn.id {
                conn.state = State::Closing;
                let _ = io.submit(Command::Close { conn: id });
            }
        }
    }

    fn ended(&mut self, io: &mut IoContext<'_>, i: usize, orderly: bool) {
        let conn = &mut self.conns[i];
        // A connection that ends on its own while the run goes on was cut short (PeerClosed
        // counted the orderly kind already).
        if !orderly && conn.state == State::Open && self.sending {
            self.resets += 1;
        }
        if matches!(conn.state, State::Open | State::Closing) {
            self.open -= 1;
        }
        conn.state = State::Done;
        if let Some(pending) = conn.pending.take() {
            io.free_chain(pending);
        }
        if let Some(id) = conn.id.take() {
            if let Some(slot) = self.by_handle.get_mut(id.index() as usize) {
                *slot = NO_CONN;
            }
        }
    }

    /// Aborts every connection not yet gone: the last resort once the drain time is over
    /// twice (a server that never closes must not hang the run).
    fn abort_all(&mut self, io: &mut IoContext<'_>) {
        for conn in &self.conns {
            if conn.state != State::Done {
                if let Some(id) = conn.id {
                    let _ = io.submit(Command::Abort { conn: id });
                }
            }
        }
    }
}

impl TcpLoadgenApp {
    /// Opens connections until [`TCP_LOADGEN_CONNECTS_IN_FLIGHT_MAX`] handshakes are in flight
    /// or every connection was asked for.
    fn open_more(&mut self, io: &mut IoContext<'_>) {
        while self.connecting < TCP_LOADGEN_CONNECTS_IN_FLIGHT_MAX
            && self.next_connect < self.conns.len()
            && !self.draining_over
        {
            let i = self.next_connect;
            self.next_connect += 1;
            match io.submit(Command::Connect {
                to: self.config.target,
                token: i as u64,
            }) {
                Ok(Outcome::Conn(id)) => {
                    let index = id.index() as usize;
                    if index >= self.by_handle.len() {
                        self.by_handle.resize(index + 1, NO_CONN);
                    }
                    self.by_handle[index] = i as u32;
                    self.conns[i].id = Some(id);
                    self.connecting += 1;
                }
                _ => {
                    self.connect_failures += 1;
                    self.conns[i].state = State::Done;
                }
            }
        }
    }
}

impl App for TcpLoadgenApp {
    fn start(&mut self, io: &mut IoContext<'_>) {
        let now = io.now_ns();
        let start = now + self.config.warmup_ns;
        let end = start + self.config.duration_ns;
        for (deadline, token) in [
            (start, TOKEN_MEASURE_START),
            (end, TOKEN_MEASURE_END),
            (end + self.config.drain_ns, TOKEN_DRAIN_END),
            (
                end + 2 * self.config.drain_ns.max(500_000_000),
                TOKEN_GIVE_UP,
            ),
        ] {
            if io.arm_timer(deadline, token).is_err() {
                // Without its timers the run could not end: give up at once, visibly.
                self.sending = false;
                self.draining_over = true;
            }
        }
        self.open_more(io);
    }

    fn is_done(&self) -> bool {
        !self.sending && self.conns.iter().all(|c| c.state == State::Done)
    }

    fn run_io(&mut self, io: &mut IoContext<'_>) {
        while let Some(event) = io.next_event() {
            match event {
                Event::Connected { conn, token } => {
                    let i = token as usize;
                    if i < self.conns.len() && self.conns[i].id == Some(conn) {
                        self.connecting = self.connecting.saturating_sub(1);
                        self.open_more(io);
                        self.conns[i].state = State::Open;
                        self.open += 1;
                        if self.sending {
                            self.opened += 1;
                        }
                        self.fill(io, i);
                        self.maybe_close(io, i);
                    }
                }
                Event::ConnectFailed { token, .. } => {
                    let i = token as usize;
                    if i < self.conns.len() {
                        self.connect_failures += 1;
                        self.conns[i].state = State::Done;
                        self.conns[i].id = None;
                        self.connecting = self.connecting.saturating_sub(1);
                        self.open_more(io);
                    }
                }
                Event::Recv { conn, data } => match self.index_of(conn) {
                    Some(i) => self.receive(io, i, data),
                    None => {
                        self.unexpected += 1;
                        io.free_chain(data);
                    }
                },
                Event::Sent { conn, data, .. } => {
                    if let Some(data) = data {
                        io.free_chain(data);
                    }
                    if let Some(i) = self.index_of(conn) {
                        self.fill(io, i);
                        self.maybe_close(io, i);
                    }
                }
                Event::PeerClosed { conn } => {
                    // The server closed first: close ours too; counted as a reset if the run
                    // was still going.
                    if let Some(i) = self.index_of(conn) {
                        if self.sending {
                            self.resets += 1;
                        }
                        if self.conns[i].state == State::Open {
                            self.conns[i].state = State::Closing;
                            let _ = io.submit(Command::Close { conn });
                        }
                    }
                }
                Event::Closed { conn, reason } => {
                    if let Some(i) = self.index_of(conn) {
                        let orderly = reason == melange_core::contract::CloseReason::Closed;
                        self.ended(io, i, orderly);
                    }
                }
                Event::Timer { token, .. } => match token {
                    TOKEN_MEASURE_START => self.measuring = true,
                    TOKEN_MEASURE_END => {
                        self.measuring = false;
                        self.sending = false;
                        for i in 0..self.conns.len() {
                            self.maybe_close(io, i);
                        }
                    }
                    TOKEN_DRAIN_END => {
                        self.draining_over = true;
                        for i in 0..self.conns.len() {
                            if self.conns[i].state == State::Connecting {
                                match self.conns[i].id {
                                    Some(id) => {
                                        let _ = io.submit(Command::Abort { conn: id });
                                    }
                                    None => {
                                        // Never opened: the handshakes before it were too slow.
                                        self.connect_failures += 1;
                                        self.conns[i].state = State::Done;
                                    }
                                }
                            } else {
                                self.maybe_close(io, i);
                            }
                        }
                    }
                    TOKEN_GIVE_UP => self.abort_all(io),
                    _ => {}
                },
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
    use super::pattern;

    #[test]
    fn the_pattern_differs_between_connections_requests_and_offsets() {
        let a: Vec<u8> = (0..64).map(|k| pattern(0, 0, k)).collect();
        let b: Vec<u8> = (0..64).map(|k| pattern(1, 0, k)).collect();
        let c: Vec<u8> = (0..64).map(|k| pattern(0, 1, k)).collect();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(b, c);
        // A shift by one byte (a lost or duplicated byte) is caught.
        assert_ne!(&a[1..], &a[..63]);
    }
}
