//! A TCP load generator on the app contract, in three modes ([`TcpLoadMode`]):
//!
//! - **Request/response** (`rr`, the default): `connections` connections, each keeping
//!   `inflight` fixed-size requests outstanding (closed loop), timed and checked byte for byte.
//! - **Churn**: `connections` slots, each looping connect → one request → its reply, checked
//!   byte for byte → close → connect again. It measures what a connection costs: completed
//!   cycles per second, and the time from the connect to the whole reply.
//! - **Bulk**: every connection streams `message_len`-sized chunks one way, as fast as flow
//!   control allows, to a server that discards them (`melange sink`); it measures goodput.
//!
//! It is written against the contract, not against sockets, so the same app drives a server
//! from kernel sockets and from Melange's own TCP over AF_XDP (where a kernel client would
//! saturate its own core first, as DESIGN.md notes). One app with a mode rather than three
//! apps: the modes share everything but what a connection does once open (opening with a
//! bounded number of handshakes in flight, the handle index, the drain and the give-up at the
//! end, partial sends), and three copies of that would drift apart.
//!
//! Requests on one connection are answered in order (an echo returns the byte stream as
//! sent), so a connection keeps a small ring of send times, and a reply is complete once
//! `message_len` more bytes arrived. Every request's bytes follow a pattern of the slot, the
//! request's sequence number (which keeps counting across a churn slot's connections) and the
//! byte's offset, so any lost, duplicated, reordered or corrupted byte is found while the
//! reply is read, without keeping a copy. Sends the transport takes only in part keep their
//! rest and resend it at the connection's next `Sent` (IX's explicit flow control). Bulk
//! chunks are copied from one block filled at start: the server checks nothing, and a
//! generator per byte would make the client the bottleneck.
//!
//! A churn connect can fail at once (no free ephemeral port: every one is in TIME-WAIT, which
//! the client holds because it closes first; or the connection table is full). The slot then
//! goes back to the queue and the queue waits for [`TCP_LOADGEN_RETRY_NS`] (one app timer),
//! never retrying in the same pass, so a full port range costs a retry per millisecond, not a
//! spinning core. A connect the peer refuses is counted too and retried at once: it took a
//! round trip.
//!
//! The run: connect at start (at most [`TCP_LOADGEN_CONNECTS_IN_FLIGHT_MAX`] handshakes in
//! flight), measure in [`TcpLoadgenConfig::warmup_ns`, + `duration_ns`), stop sending at the
//! end of the window, wait up to `drain_ns` for outstanding replies, close every connection,
//! and end once all are closed (or, past the drain time, abort what is left).

use crate::kv_load::{KvChooser, KvOp, KvReplyCounts, KvWorkload, Reply, ReplyScanner, SplitMix};
use crate::loadgen::LoadgenReport;
use hdrhistogram::Histogram;
use melange_core::contract::{CloseReason, Command, Outcome};
use melange_core::{App, BufChain, ConnId, Event, IoContext};
use std::collections::VecDeque;
use std::net::SocketAddrV4;

/// Most connections (churn: slots) of one load generator engine.
pub const TCP_LOADGEN_CONNECTIONS_MAX: usize = 10_000;
/// Most requests in flight on one connection.
pub const TCP_LOADGEN_INFLIGHT_MAX: usize = 64;
/// Largest request of the request/response mode: one buffer chain, as a request is built
/// and sent in one (a larger one could never be built, and every send would fail).
pub const TCP_LOADGEN_MESSAGE_MAX: usize = BufChain::LEN_MAX;
/// Largest request (churn) or chunk (bulk) of the other modes: one buffer chain.
pub const TCP_LOADGEN_CHUNK_MAX: usize = BufChain::LEN_MAX;
/// Handshakes the load generator keeps in flight at once: opening 10,000 connections in one
/// burst overflows receive rings with the answers, and the retries then come back as one
/// burst too; a bounded number of opens in flight keeps the handshakes flowing.
pub const TCP_LOADGEN_CONNECTS_IN_FLIGHT_MAX: usize = 256;
/// How long churn waits before opening again after a connect was refused at once.
pub const TCP_LOADGEN_RETRY_NS: u64 = 1_000_000;
/// Most bulk chunks one connection offers per call: the transport's answer (a partial
/// `Accepted`) normally ends the loop first; this bounds the pass when it takes everything.
pub const TCP_LOADGEN_BULK_CHUNKS_PER_FILL_MAX: usize = 64;
/// Bytes of the block bulk chunks are copied from (a buffer holds at most one frame).
const BULK_BLOCK_LEN: usize = melange_core::PoolConfig::FRAME_SIZE_MAX;

/// Timer tokens.
const TOKEN_MEASURE_START: u64 = 1;
const TOKEN_MEASURE_END: u64 = 2;
const TOKEN_DRAIN_END: u64 = 3;
const TOKEN_GIVE_UP: u64 = 4;
const TOKEN_RETRY: u64 = 5;
const TOKEN_PACE: u64 = 6;
/// Longest wait between two looks at an open loop's schedule.
const PACE_NS_MAX: u64 = 1_000_000;

/// What each connection of a [`TcpLoadgenApp`] does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TcpLoadMode {
    /// Closed-loop requests and replies on long-lived connections.
    #[default]
    RequestResponse,
    /// Connect, one request and its reply, close; again.
    Churn,
    /// One-way stream of chunks, client to server.
    Bulk,
    /// Closed-loop Redis or memcached gets and sets on long-lived connections
    /// ([`crate::kv_load`]): `inflight` is the pipeline depth, `message_len` unused.
    Kv(KvWorkload),
}

/// TCP load generator configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLoadgenConfig {
    /// The server.
    pub target: SocketAddrV4,
    /// Connections to open (churn: slots), 1..=[`TCP_LOADGEN_CONNECTIONS_MAX`].
    pub connections: usize,
    /// Requests outstanding per connection, 1..=[`TCP_LOADGEN_INFLIGHT_MAX`] (churn: always
    /// one; bulk: unused).
    pub inflight: usize,
    /// Bytes per request (and reply), 1..=[`TCP_LOADGEN_MESSAGE_MAX`]; churn's request and
    /// bulk's chunk at most [`TCP_LOADGEN_CHUNK_MAX`].
    pub message_len: usize,
    /// Time before measuring starts.
    pub warmup_ns: u64,
    /// Measured time.
    pub duration_ns: u64,
    /// Time allowed after the window for outstanding replies.
    pub drain_ns: u64,
    /// What the connections do.
    pub mode: TcpLoadMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting in the connect queue (or for the retry timer).
    Queued,
    Connecting,
    Open,
    /// Close was asked; waiting for `Closed`.
    Closing,
    /// Gone (closed, failed, reset) for the rest of the run.
    Done,
}

struct Conn {
    id: Option<ConnId>,
    state: State,
    /// Connection attempts of this slot so far: the high half of its connect token, so an
    /// answer to an earlier attempt is recognised as stale.
    attempt: u32,
    /// Churn: when this attempt's connect was issued.
    connect_ns: u64,
    /// Churn: this connection sent its one request.
    requested: bool,
    /// Bulk: the pool was empty; the retry timer fills it again.
    starved: bool,
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
    /// Key-value mode: the connection's choices and reply reader.
    kv: Option<Box<KvConn>>,
}

/// What a key-value connection keeps beside the rest.
struct KvConn {
    rng: SplitMix,
    scanner: ReplyScanner,
    /// The outstanding requests, in the same ring as `Conn::sent_ns`.
    ops: [KvOp; TCP_LOADGEN_INFLIGHT_MAX],
}

impl Conn {
    fn new() -> Self {
        Self {
            id: None,
            state: State::Queued,
            attempt: 0,
            connect_ns: 0,
            requested: false,
            starved: false,
            sent_ns: [0; TCP_LOADGEN_INFLIGHT_MAX],
            head: 0,
            outstanding: 0,
            next_seq: 0,
            reply_seq: 0,
            reply_at: 0,
            pending: None,
            kv: None,
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

/// The connect token of attempt `attempt` of slot `slot`.
fn token_of(slot: usize, attempt: u32) -> u64 {
    (u64::from(attempt) << 32) | slot as u64
}

/// The slot and attempt of a connect token.
fn token_parts(token: u64) -> (usize, u32) {
    ((token & 0xffff_ffff) as usize, (token >> 32) as u32)
}

/// The TCP load generator app. See the module documentation.
pub struct TcpLoadgenApp {
    config: TcpLoadgenConfig,
    conns: Vec<Conn>,
    /// Connection index by handle index (grown to the transport's largest handle index).
    by_handle: Vec<u32>,
    /// The connection a new one displaced from `by_handle`: a transport may hand out a
    /// closed connection's handle index again (a new generation) before the app has seen
    /// that connection's `Closed` (kernel sockets free the index when the socket closes and
    /// report it in the next pass), and churn connects in between. At most one such
    /// connection waits per index: its `Closed` comes in the pass after the index was freed,
    /// before the new connection can end.
    displaced: Vec<u32>,
    /// Slots waiting to connect, oldest first; never holds more than every slot once.
    queue: VecDeque<u32>,
    /// The retry timer is armed.
    retry_armed: bool,
    /// Bulk: what chunks are copied from.
    block: Vec<u8>,
    /// Key-value mode: the workload's choices, the request being built, and the replies.
    kv: Option<KvChooser>,
    scratch: Vec<u8>,
    kv_counts: KvReplyCounts,
    /// The first error a server answered with (its text, cut at `REPLY_LINE_MAX`).
    first_error: Option<String>,
    /// Open loop: when the schedule started, requests it has issued (sent or counted
    /// missed), and the connection to offer the next one to.
    pace_start_ns: u64,
    paced: u64,
    pace_cursor: usize,
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
    connects: u64,
    resets: u64,
    /// Connections whose handshake completed (`Connected`) while the run was sending.
    opened: u64,
    bytes: u64,
    bytes_measured: u64,
    open: usize,
    /// Handshakes in flight.
    connecting: usize,
}

impl std::fmt::Debug for TcpLoadgenApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpLoadgenApp")
            .field("config", &self.config)
            .field("sent", &self.sent)
            .field("received", &self.received)
            .field("bytes", &self.bytes)
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
        config.inflight = match config.mode {
            TcpLoadMode::RequestResponse | TcpLoadMode::Kv(_) => {
                config.inflight.clamp(1, TCP_LOADGEN_INFLIGHT_MAX)
            }
            TcpLoadMode::Churn | TcpLoadMode::Bulk => 1,
        };
        config.message_len = match config.mode {
            TcpLoadMode::RequestResponse => config.message_len.clamp(1, TCP_LOADGEN_MESSAGE_MAX),
            TcpLoadMode::Churn | TcpLoadMode::Bulk => {
                config.message_len.clamp(1, TCP_LOADGEN_CHUNK_MAX)
            }
            TcpLoadMode::Kv(_) => 0,
        };
        let kv = match config.mode {
            TcpLoadMode::Kv(workload) => Some(KvChooser::new(workload)),
            _ => None,
        };
        if let (Some(chooser), TcpLoadMode::Kv(workload)) = (&kv, &mut config.mode) {
            *workload = *chooser.workload();
        }
        let mut conns: Vec<Conn> = (0..config.connections).map(|_| Conn::new()).collect();
        if let Some(chooser) = &kv {
            let workload = chooser.workload();
            for (i, conn) in conns.iter_mut().enumerate() {
                conn.kv = Some(Box::new(KvConn {
                    rng: SplitMix::new(workload.seed, i as u64),
                    scanner: ReplyScanner::new(workload.protocol),
                    ops: [KvOp::default(); TCP_LOADGEN_INFLIGHT_MAX],
                }));
            }
        }
        let scratch = Vec::with_capacity(kv.map_or(0, |c| {
            (c.request_len_max() * config.inflight).min(BufChain::LEN_MAX)
        }));
        let block = if config.mode == TcpLoadMode::Bulk {
            (0..BULK_BLOCK_LEN).map(|k| pattern(0, 0, k)).collect()
        } else {
            Vec::new()
        };
        Self {
            conns,
            kv,
            scratch,
            kv_counts: KvReplyCounts::default(),
            first_error: None,
            pace_start_ns: 0,
            paced: 0,
            pace_cursor: 0,
            by_handle: Vec::new(),
            displaced: Vec::new(),
            queue: (0..config.connections as u32).collect(),
            retry_armed: false,
            block,
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
            connects: 0,
            resets: 0,
            opened: 0,
            bytes: 0,
            bytes_measured: 0,
            open: 0,
            connecting: 0,
        }
    }

    /// Connection attempts that failed (refused at once, refused by the peer, timed out, or
    /// never started before the drain ended).
    pub fn connect_failures(&self) -> u64 {
        self.connect_failures
    }

    /// Connections whose handshake completed while the run was still sending (a connection
    /// reported open only once the run stopped sending never carried a request).
    pub fn connections_opened(&self) -> u64 {
        self.opened
    }

    /// Connections established.
    pub fn connects(&self) -> u64 {
        self.connects
    }

    /// Connections the server reset or that ended before the run did.
    pub fn resets(&self) -> u64 {
        self.resets
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open
    }

    /// The configuration, as clamped.
    pub fn config(&self) -> &TcpLoadgenConfig {
        &self.config
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
                bytes: self.bytes,
                bytes_measured: self.bytes_measured,
                connects: self.connects,
                connect_failures: self.connect_failures,
            },
            self.histogram.clone(),
        )
        .with_kv(self.kv.is_some().then_some(self.kv_counts))
    }

    /// Key-value mode: the first error reply's text, if a server refused a request.
    pub fn first_error(&self) -> Option<&str> {
        self.first_error.as_deref()
    }

    /// Key-value mode: what the replies were (whole run).
    pub fn kv_counts(&self) -> Option<KvReplyCounts> {
        self.kv.is_some().then_some(self.kv_counts)
    }

    fn index_of(&self, conn: ConnId) -> Option<usize> {
        let handle = conn.index() as usize;
        [self.by_handle.get(handle), self.displaced.get(handle)]
            .into_iter()
            .flatten()
            .map(|&at| at as usize)
            .find(|&at| at != NO_CONN as usize && self.conns[at].id == Some(conn))
    }

    /// Maps `conn`'s handle index to connection `i`, moving a connection still waiting for
    /// its `Closed` under the same index aside.
    fn map_handle(&mut self, conn: ConnId, i: usize) {
        let index = conn.index() as usize;
        if index >= self.by_handle.len() {
            // Grows to the transport's largest handle index, bounded by its table.
            self.by_handle.resize(index + 1, NO_CONN);
            self.displaced.resize(index + 1, NO_CONN);
        }
        let before = self.by_handle[index];
        if before != NO_CONN && self.conns[before as usize].id.is_some() {
            // Were another still waiting here, its `Closed` would go unseen; the give-up at
            // the end of the run ends such a connection all the same (`abort_all`).
            self.displaced[index] = before;
        }
        self.by_handle[index] = i as u32;
    }

    /// Counts `bytes` of payload moved now.
    fn moved(&mut self, bytes: u64) {
        self.bytes += bytes;
        if self.measuring {
            self.bytes_measured += bytes;
        }
    }

    /// Builds and offers what connection `i` may send now.
    fn fill(&mut self, io: &mut IoContext<'_>, i: usize) {
        if self.conns[i].pending.is_some() {
            self.flush(io, i);
        }
        if self.config.mode == TcpLoadMode::Bulk {
            self.fill_bulk(io, i);
            return;
        }
        if self.kv.is_some() {
            self.fill_kv(io, i);
            return;
        }
        while self.sending
            && self.conns[i].state == State::Open
            && self.conns[i].pending.is_none()
            && self.conns[i].outstanding < self.config.inflight
            && !(self.config.mode == TcpLoadMode::Churn && self.conns[i].requested)
        {
            let Some(request) = self.build(io, i) else {
                self.send_failures += 1;
                return;
            };
            let now = io.now_ns();
            let conn = &mut self.conns[i];
            let slot = (conn.head + conn.outstanding) % TCP_LOADGEN_INFLIGHT_MAX;
            // Churn times the whole cycle up to the reply: the handshake is what it measures.
            conn.sent_ns[slot] = match self.config.mode {
                TcpLoadMode::Churn => conn.connect_ns,
                _ => now,
            };
            conn.outstanding += 1;
            conn.next_seq += 1;
            conn.requested = true;
            conn.pending = Some(request);
            self.sent += 1;
            self.flush(io, i);
        }
    }

    /// Bulk: offers chunks until the transport takes a chunk only in part.
    fn fill_bulk(&mut self, io: &mut IoContext<'_>, i: usize) {
        for _ in 0..TCP_LOADGEN_BULK_CHUNKS_PER_FILL_MAX {
            if !self.sending
                || self.conns[i].state != State::Open
                || self.conns[i].pending.is_some()
            {
                return;
            }
            let Some(chunk) = self.build_bulk(io) else {
                // The pool is empty: its buffers are in flight and come back with `Sent`;
                // the retry timer fills this connection again should none be its own.
                self.conns[i].starved = true;
                self.arm_retry(io);
                return;
            };
            self.conns[i].pending = Some(chunk);
            self.sent += 1;
            self.flush(io, i);
        }
    }

    /// Key-value mode: tops connection `i`'s pipeline up to `inflight` requests, all of them
    /// in one send (as a Redis or memcached client library writes a pipeline), so that a
    /// deep pipeline costs one segment, not one per request.
    fn fill_kv(&mut self, io: &mut IoContext<'_>, i: usize) {
        if self.rate_per_s().is_some() {
            // Open loop: requests go out on schedule (pace), not as replies come back.
            return;
        }
        let room = self
            .config
            .inflight
            .saturating_sub(self.conns[i].outstanding);
        self.send_kv(io, i, room);
    }

    /// Open loop: the rate, if the workload has one.
    fn rate_per_s(&self) -> Option<u64> {
        match self.config.mode {
            TcpLoadMode::Kv(workload) => workload.rate_per_s.filter(|&r| r > 0),
            _ => None,
        }
    }

    /// Whether connection `i` can take another request now.
    fn can_take(&self, i: usize) -> bool {
        let conn = &self.conns[i];
        conn.state == State::Open
            && conn.pending.is_none()
            && conn.outstanding < self.config.inflight
    }

    /// How long until the open loop looks at its schedule again: a request's interval,
    /// between 1 µs and [`PACE_NS_MAX`].
    fn pace_ns(rate: u64) -> u64 {
        (1_000_000_000 / rate.max(1)).clamp(1_000, PACE_NS_MAX)
    }

    /// Open loop: issues every request due by now, each to the next connection (round robin)
    /// that can take one. A request no connection can take (every pipeline full, or none open
    /// yet) is counted as a send failure, never sent late: an open loop must not slow down
    /// to the server's pace without saying so.
    fn pace(&mut self, io: &mut IoContext<'_>) {
        let Some(rate) = self.rate_per_s() else {
            return;
        };
        let now = io.now_ns();
        let due_total = (u128::from(now.saturating_sub(self.pace_start_ns)) * u128::from(rate)
            / 1_000_000_000) as u64;
        let mut due = due_total.saturating_sub(self.paced);
        if !self.sending {
            self.paced = due_total;
            return;
        }
        let n = self.conns.len();
        let mut refused = 0;
        while due > 0 && refused < n {
            let i = self.pace_cursor;
            self.pace_cursor = (self.pace_cursor + 1) % n;
            if !self.can_take(i) {
                refused += 1;
                continue;
            }
            refused = 0;
            if !self.send_kv(io, i, 1) {
                break;
            }
            due -= 1;
            self.paced += 1;
        }
        if due > 0 {
            self.send_failures += due;
            self.paced += due;
        }
    }

    /// Key-value mode: sends `count` requests on connection `i` in one chain (as many of
    /// them as fit one). Whether it sent any.
    fn send_kv(&mut self, io: &mut IoContext<'_>, i: usize, count: usize) -> bool {
        let Some(chooser) = &self.kv else {
            return false;
        };
        let conn = &mut self.conns[i];
        if !self.sending || conn.state != State::Open || conn.pending.is_some() {
            return false;
        }
        // As many as fit one buffer chain (a set is at most KV_LOAD_VALUE_MAX + framing).
        let per_chain = (BufChain::LEN_MAX / chooser.request_len_max()).max(1);
        let room = count
            .min(self.config.inflight.saturating_sub(conn.outstanding))
            .min(per_chain);
        if room == 0 {
            return false;
        }
        let kv = conn
            .kv
            .as_mut()
            .expect("every connection of kv mode has its state");
        let now = io.now_ns();
        self.scratch.clear();
        for k in 0..room {
            let op = chooser.next_op(&mut kv.rng);
            chooser.append_request(op, &mut self.scratch);
            let slot = (conn.head + conn.outstanding + k) % TCP_LOADGEN_INFLIGHT_MAX;
            kv.ops[slot] = op;
            conn.sent_ns[slot] = now;
        }
        let scratch = &self.scratch;
        let Some(chain) = build_chain(io, scratch.len(), |offset, out| {
            out.copy_from_slice(&scratch[offset..offset + out.len()]);
        }) else {
            // The pool is empty: its buffers come back with `Sent` or a reply, and the
            // connection fills again then.
            self.send_failures += 1;
            return false;
        };
        conn.outstanding += room;
        conn.next_seq += room as u64;
        conn.pending = Some(chain);
        self.sent += room as u64;
        self.flush(io, i);
        true
    }

    /// One request of connection `i` in pool buffers, or `None` if the pool is empty.
    fn build(&mut self, io: &mut IoContext<'_>, i: usize) -> Option<BufChain> {
        let seq = self.conns[i].next_seq;
        build_chain(io, self.config.message_len, |offset, out| {
            for (k, byte) in out.iter_mut().enumerate() {
                *byte = pattern(i, seq, offset + k);
            }
        })
    }

    /// One bulk chunk, copied from the block; `None` if the pool is empty.
    fn build_bulk(&mut self, io: &mut IoContext<'_>) -> Option<BufChain> {
        let block = &self.block;
        build_chain(io, self.config.message_len, |_, out| {
            let len = out.len().min(block.len());
            out[..len].copy_from_slice(&block[..len]);
        })
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
        if self.config.mode == TcpLoadMode::Bulk {
            // Bulk is one way: bytes from the server (an echo, say) are read and dropped, so
            // that it is not stopped by our window.
            io.free_chain(data);
            if let Some(conn) = self.conns[i].id {
                let _ = io.submit(Command::RecvDone { conn, bytes });
            }
            return;
        }
        let now = io.now_ns();
        self.moved(u64::from(bytes));
        if self.kv.is_some() {
            return self.receive_kv(io, i, data, bytes, now);
        }
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

    /// Key-value mode: reads replies of connection `i`, each answering its oldest request.
    fn receive_kv(
        &mut self,
        io: &mut IoContext<'_>,
        i: usize,
        data: BufChain,
        bytes: u32,
        now: u64,
    ) {
        let value_len = self.kv.as_ref().map_or(0, |c| c.workload().value_len);
        let mut lost = false;
        let mut rest = Some(data);
        while let Some(chain) = rest.take() {
            let (buf, next) = io.chain_pop_front(chain);
            rest = next;
            let mut completed = 0u32;
            {
                let payload = io.payload(&buf);
                let conn = &mut self.conns[i];
                let kv = conn
                    .kv
                    .as_mut()
                    .expect("every connection of kv mode has its state");
                let mut at = 0;
                while at < payload.len() && !lost {
                    let head_op = kv.ops[conn.head];
                    let expect = if conn.outstanding > 0 {
                        head_op.key
                    } else {
                        u64::MAX
                    };
                    let (used, reply) = kv.scanner.feed(&payload[at..], expect);
                    at += used;
                    let Some(reply) = reply else { continue };
                    if reply == Reply::Malformed {
                        lost = true;
                        break;
                    }
                    if conn.outstanding == 0 {
                        // A reply nobody asked for: the stream is not ours to read on.
                        self.unexpected += 1;
                        lost = true;
                        break;
                    }
                    if !self.kv_counts.count(head_op, reply, value_len) {
                        self.corrupt += 1;
                    }
                    if reply == Reply::Error && self.first_error.is_none() {
                        // Once per run: what the server said, for the person reading the report.
                        self.first_error =
                            Some(String::from_utf8_lossy(kv.scanner.error_text()).into_owned());
                    }
                    let sent = conn.sent_ns[conn.head];
                    conn.head = (conn.head + 1) % TCP_LOADGEN_INFLIGHT_MAX;
                    conn.outstanding -= 1;
                    completed += 1;
                    if self.measuring {
                        let _ = self.histogram.record(now.saturating_sub(sent).max(1));
                    }
                }
            }
            io.free(buf);
            self.received += u64::from(completed);
            if self.measuring {
                self.measured += u64::from(completed);
            }
        }
        let Some(conn) = self.conns[i].id else {
            return;
        };
        if lost {
            // Bytes that are no reply (or no reply of ours): the connection is dropped, the
            // run goes on with the others.
            self.corrupt += 1;
            self.kv_counts.wrong += 1;
            self.conns[i].state = State::Closing;
            let _ = io.submit(Command::Abort { conn });
            return;
        }
        let _ = io.submit(Command::RecvDone { conn, bytes });
        self.fill(io, i);
        self.maybe_close(io, i);
    }

    /// Closes connection `i` when it is done: after the window once nothing is outstanding
    /// (or the drain is over), and in churn once its one reply is in.
    fn maybe_close(&mut self, io: &mut IoContext<'_>, i: usize) {
        let churn = self.config.mode == TcpLoadMode::Churn;
        let conn = &mut self.conns[i];
        let quiet = conn.outstanding == 0 && conn.pending.is_none();
        let cycle_over = churn && conn.requested && quiet;
        if conn.state == State::Open
            && (cycle_over || (!self.sending && (quiet || self.draining_over)))
        {
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
        if conn.state == State::Connecting {
            self.connecting = self.connecting.saturating_sub(1);
        }
        conn.state = State::Done;
        conn.outstanding = 0;
        conn.reply_at = 0;
        if let Some(kv) = conn.kv.as_mut() {
            kv.scanner.reset();
        }
        conn.reply_seq = conn.next_seq;
        if let Some(pending) = conn.pending.take() {
            io.free_chain(pending);
        }
        if let Some(id) = conn.id.take() {
            let index = id.index() as usize;
            for table in [&mut self.by_handle, &mut self.displaced] {
                if let Some(slot) = table.get_mut(index).filter(|s| **s == i as u32) {
                    *slot = NO_CONN;
                }
            }
        }
        if self.config.mode == TcpLoadMode::Churn && self.sending {
            // The cycle is over: the slot opens its next connection.
            self.requeue(i);
        }
        self.open_more(io);
    }

    /// Puts slot `i` back in the connect queue.
    fn requeue(&mut self, i: usize) {
        debug_assert!(self.queue.len() < self.conns.len(), "a slot is queued once");
        self.conns[i].state = State::Queued;
        self.queue.push_back(i as u32);
    }

    fn arm_retry(&mut self, io: &mut IoContext<'_>) {
        if !self.retry_armed
            && io
                .arm_timer(io.now_ns() + TCP_LOADGEN_RETRY_NS, TOKEN_RETRY)
                .is_ok()
        {
            self.retry_armed = true;
        }
    }

    /// Aborts every connection not yet gone: the last resort once the drain time is over
    /// twice (a server that never closes must not hang the run).
    fn abort_all(&mut self, io: &mut IoContext<'_>) {
        self.sending = false;
        self.queue.clear();
        for i in 0..self.conns.len() {
            match (self.conns[i].state, self.conns[i].id) {
                (State::Done, _) => {}
                (_, Some(id)) => {
                    if io.submit(Command::Abort { conn: id }).is_err() {
                        // The transport knows the handle no more (its `Closed` went unseen):
                        // end it here, or the run would never end.
                        self.ended(io, i, false);
                    }
                }
                (_, None) => self.conns[i].state = State::Done,
            }
        }
    }

    /// Opens connections until [`TCP_LOADGEN_CONNECTS_IN_FLIGHT_MAX`] handshakes are in flight
    /// or no slot waits. Churn opens only while the window lasts; the other modes open every
    /// connection they were asked for, however late.
    fn open_more(&mut self, io: &mut IoContext<'_>) {
        let churn = self.config.mode == TcpLoadMode::Churn;
        while self.connecting < TCP_LOADGEN_CONNECTS_IN_FLIGHT_MAX
            && !self.draining_over
            && (self.sending || !churn)
        {
            let Some(i) = self.queue.pop_front() else {
                return;
            };
            let i = i as usize;
            let conn = &mut self.conns[i];
            debug_assert_eq!(conn.state, State::Queued);
            conn.attempt = conn.attempt.wrapping_add(1);
            conn.connect_ns = io.now_ns();
            conn.requested = false;
            match io.submit(Command::Connect {
                to: self.config.target,
                token: token_of(i, conn.attempt),
            }) {
                Ok(Outcome::Conn(id)) => {
                    self.map_handle(id, i);
                    self.conns[i].id = Some(id);
                    self.conns[i].state = State::Connecting;
                    self.connecting += 1;
                }
                _ => {
                    self.connect_failures += 1;
                    if churn {
                        // Refused at once (no free port, a full table): wait for the retry
                        // timer instead of asking again in the same pass.
                        self.queue.push_front(i as u32);
                        self.arm_retry(io);
                        return;
                    }
                    self.conns[i].state = State::Done;
                }
            }
        }
    }

    fn handle_timer(&mut self, io: &mut IoContext<'_>, token: u64) {
        match token {
            TOKEN_MEASURE_START => self.measuring = true,
            TOKEN_MEASURE_END => {
                self.measuring = false;
                self.sending = false;
                if self.config.mode == TcpLoadMode::Churn {
                    // Slots between connections stop here.
                    while let Some(i) = self.queue.pop_front() {
                        self.conns[i as usize].state = State::Done;
                    }
                }
                for i in 0..self.conns.len() {
                    self.maybe_close(io, i);
                }
            }
            TOKEN_DRAIN_END => {
                self.draining_over = true;
                while let Some(i) = self.queue.pop_front() {
                    // Never opened: the handshakes before it were too slow.
                    self.connect_failures += 1;
                    self.conns[i as usize].state = State::Done;
                }
                for i in 0..self.conns.len() {
                    if self.conns[i].state == State::Connecting {
                        if let Some(id) = self.conns[i].id {
                            let _ = io.submit(Command::Abort { conn: id });
                        }
                    } else {
                        self.maybe_close(io, i);
                    }
                }
            }
            TOKEN_GIVE_UP => self.abort_all(io),
            TOKEN_PACE => {
                self.pace(io);
                if let Some(rate) = self.rate_per_s() {
                    if self.sending {
                        let _ = io.arm_timer(io.now_ns() + Self::pace_ns(rate), TOKEN_PACE);
                    }
                }
            }
            TOKEN_RETRY => {
                self.retry_armed = false;
                self.open_more(io);
                for i in 0..self.conns.len() {
                    if std::mem::take(&mut self.conns[i].starved) {
                        self.fill(io, i);
                        self.maybe_close(io, i);
                    }
                }
            }
            _ => {}
        }
    }
}

/// A chain of `len` bytes in pool buffers, each buffer's bytes written by `fill(offset,
/// bytes)`; `None` (nothing held) when the pool runs out. `len` is at most
/// [`BufChain::LEN_MAX`].
pub(crate) fn build_chain(
    io: &mut IoContext<'_>,
    len: usize,
    mut fill: impl FnMut(usize, &mut [u8]),
) -> Option<BufChain> {
    let mut chain: Option<BufChain> = None;
    let mut offset = 0;
    while offset < len {
        let Some(mut buf) = io.alloc() else {
            if let Some(chain) = chain {
                io.free_chain(chain);
            }
            return None;
        };
        let take = io.tailroom(&buf).min(len - offset);
        if take == 0 || io.set_payload_len(&mut buf, take).is_err() {
            io.free(buf);
            if let Some(chain) = chain {
                io.free_chain(chain);
            }
            return None;
        }
        fill(offset, io.payload_mut(&buf));
        offset += take;
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
                for conn in &mut self.conns {
                    conn.state = State::Done;
                }
                self.queue.clear();
            }
        }
        if let Some(rate) = self.rate_per_s() {
            self.pace_start_ns = now;
            let _ = io.arm_timer(now + Self::pace_ns(rate), TOKEN_PACE);
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
                    let (i, _) = token_parts(token);
                    if i < self.conns.len()
                        && self.conns[i].id == Some(conn)
                        && self.conns[i].state == State::Connecting
                    {
                        self.connecting -= 1;
                        self.connects += 1;
                        self.conns[i].state = State::Open;
                        self.open += 1;
                        if self.sending {
                            self.opened += 1;
                        }
                        self.open_more(io);
                        self.fill(io, i);
                        self.maybe_close(io, i);
                    }
                }
                Event::ConnectFailed { token, .. } => {
                    let (i, attempt) = token_parts(token);
                    if i < self.conns.len()
                        && self.conns[i].attempt == attempt
                        && self.conns[i].state == State::Connecting
                    {
                        self.connect_failures += 1;
                        // Counted as a failure, not a reset: it never opened. Churn
                        // connects the slot again at once (the failure took a round trip).
                        self.ended(io, i, true);
                    }
                }
                Event::Recv { conn, data } => match self.index_of(conn) {
                    Some(i) => self.receive(io, i, data),
                    None => {
                        self.unexpected += 1;
                        io.free_chain(data);
                    }
                },
                Event::Sent { conn, bytes, data } => {
                    if let Some(data) = data {
                        io.free_chain(data);
                    }
                    if let Some(i) = self.index_of(conn) {
                        if self.config.mode == TcpLoadMode::Bulk {
                            self.moved(u64::from(bytes));
                        }
                        self.fill(io, i);
                        self.maybe_close(io, i);
                    }
                }
                Event::PeerClosed { conn } => {
                    // The server closed first: close ours too; counted as a reset if the run
                    // was still going. (After our own close, the server's FIN is the answer:
                    // churn sees one per cycle.)
                    if let Some(i) = self.index_of(conn) {
                        if self.conns[i].state == State::Open {
                            if self.sending {
                                self.resets += 1;
                            }
                            self.conns[i].state = State::Closing;
                            let _ = io.submit(Command::Close { conn });
                        }
                    }
                }
                Event::Closed { conn, reason } => {
                    if let Some(i) = self.index_of(conn) {
                        self.ended(io, i, reason == CloseReason::Closed);
                    }
                }
                Event::Timer { token, .. } => self.handle_timer(io, token),
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
    use crate::test_tcp::TcpTestIo;
    use melange_core::contract::CloseReason;
    use std::net::Ipv4Addr;

    const MS: u64 = 1_000_000;

    fn config(mode: TcpLoadMode, connections: usize, message_len: usize) -> TcpLoadgenConfig {
        TcpLoadgenConfig {
            target: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 7),
            connections,
            inflight: 1,
            message_len,
            warmup_ns: 0,
            duration_ns: 100 * MS,
            drain_ns: 10 * MS,
            mode,
        }
    }

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

    #[test]
    fn tokens_carry_the_slot_and_the_attempt() {
        assert_eq!(token_parts(token_of(9_999, 7)), (9_999, 7));
        assert_eq!(token_parts(token_of(0, u32::MAX)), (0, u32::MAX));
    }

    /// Runs the app for one pass, echoing what it sent, and returns the pass's report.
    fn echo_pass(app: &mut TcpLoadgenApp, io: &mut TcpTestIo) {
        io.echo_sent();
        app.run_io(&mut IoContext::new(io));
    }

    #[test]
    fn churn_cycles_connect_request_reply_close_and_again() {
        let mut io = TcpTestIo::new(256);
        let mut app = TcpLoadgenApp::new(config(TcpLoadMode::Churn, 2, 3000));
        app.start(&mut IoContext::new(&mut io));
        io.fire_token(TOKEN_MEASURE_START);
        assert_eq!(io.connects.len(), 2, "both slots connect at start");
        for cycle in 0..5u64 {
            io.now_ns += 10_000;
            io.establish_all();
            app.run_io(&mut IoContext::new(&mut io));
            assert_eq!(io.open_conns(), 2, "cycle {cycle}: both requests sent");
            io.now_ns += 10_000;
            echo_pass(&mut app, &mut io);
            assert_eq!(
                io.closing_conns(),
                2,
                "cycle {cycle}: closed after the reply"
            );
            io.now_ns += 10_000;
            io.close_all_closing();
            app.run_io(&mut IoContext::new(&mut io));
            let report = app.report();
            assert_eq!(report.received, 2 * (cycle + 1), "{report:?}");
            assert_eq!(report.corrupt, 0, "{report:?}");
            assert_eq!(report.connects, 2 * (cycle + 1), "{report:?}");
        }
        let report = app.report();
        // HDR's 3 significant digits: within a tenth of a percent.
        let p50 = report.latency.p50_ns;
        assert!((20_000..=20_020).contains(&p50), "connect to reply: {p50}");
        assert_eq!(report.bytes, 10 * 3000);
        assert_eq!(app.open(), 0);
        // The window ends between cycles: the slots stop, and the app is done.
        io.fire_token(TOKEN_MEASURE_END);
        io.establish_all();
        app.run_io(&mut IoContext::new(&mut io));
        io.close_all_closing();
        app.run_io(&mut IoContext::new(&mut io));
        assert!(app.is_done(), "{:?}", app.report());
        io.finish(&mut app);
    }

    #[test]
    fn churn_counts_a_corrupt_reply_and_goes_on() {
        let mut io = TcpTestIo::new(64);
        let mut app = TcpLoadgenApp::new(config(TcpLoadMode::Churn, 1, 100));
        app.start(&mut IoContext::new(&mut io));
        io.establish_all();
        app.run_io(&mut IoContext::new(&mut io));
        io.corrupt_next_echo = true;
        echo_pass(&mut app, &mut io);
        assert_eq!(app.report().corrupt, 1);
        assert_eq!(io.closing_conns(), 1, "the reply was complete all the same");
        // The server's FIN answers ours: not a reset.
        let first = io.connects[0];
        io.peer_close(first);
        app.run_io(&mut IoContext::new(&mut io));
        assert_eq!(app.resets(), 0);
        io.close_all_closing();
        app.run_io(&mut IoContext::new(&mut io));
        assert_eq!(io.connects.len(), 2, "the slot connects again");
        io.finish(&mut app);
    }

    /// Kernel sockets free a closed connection's handle index before the app sees its
    /// `Closed`; a connect in between may get the same index back. Both connections must
    /// still be told apart (this once left a slot closing forever and the run never ended).
    #[test]
    fn churn_tells_apart_two_connections_under_one_handle_index() {
        let mut io = TcpTestIo::new(64);
        let mut app = TcpLoadgenApp::new(config(TcpLoadMode::Churn, 2, 10));
        app.start(&mut IoContext::new(&mut io));
        io.establish_all();
        app.run_io(&mut IoContext::new(&mut io));
        echo_pass(&mut app, &mut io);
        assert_eq!(io.closing_conns(), 2);
        let (a, b) = (io.connects[0], io.connects[1]);
        // B's end comes first; its slot connects again and gets A's index; then A's end.
        io.end(b, CloseReason::Closed);
        io.end(a, CloseReason::Closed);
        io.reuse_index = Some(a.index());
        app.run_io(&mut IoContext::new(&mut io));
        assert_eq!(io.connects.len(), 4, "both slots connected again");
        assert_eq!(io.connects[2].index(), a.index());
        assert_ne!(io.connects[2], a);
        // The new connection under A's index works as any other.
        io.establish_all();
        app.run_io(&mut IoContext::new(&mut io));
        echo_pass(&mut app, &mut io);
        assert_eq!(app.report().received, 4);
        assert_eq!(io.closing_conns(), 2);
        io.fire_token(TOKEN_MEASURE_END);
        io.close_all_closing();
        app.run_io(&mut IoContext::new(&mut io));
        assert!(app.is_done());
        io.finish(&mut app);
    }

    /// A connection whose `Closed` never comes must not hold the run forever: the give-up
    /// ends it even when the transport no longer knows its handle.
    #[test]
    fn the_give_up_ends_connections_the_transport_forgot() {
        let mut io = TcpTestIo::new(64);
        let mut app = TcpLoadgenApp::new(config(TcpLoadMode::Churn, 1, 10));
        app.start(&mut IoContext::new(&mut io));
        io.establish_all();
        app.run_io(&mut IoContext::new(&mut io));
        echo_pass(&mut app, &mut io);
        // Forgotten: gone at the transport, no event.
        io.conns[0].state = crate::test_tcp::FakeState::Gone;
        for token in [TOKEN_MEASURE_END, TOKEN_DRAIN_END, TOKEN_GIVE_UP] {
            io.fire_token(token);
            app.run_io(&mut IoContext::new(&mut io));
        }
        assert!(app.is_done());
        io.finish(&mut app);
    }

    #[test]
    fn churn_waits_for_a_timer_when_connects_are_refused_at_once() {
        let mut io = TcpTestIo::new(64);
        io.refuse_connects = true;
        let mut app = TcpLoadgenApp::new(config(TcpLoadMode::Churn, 4, 10));
        app.start(&mut IoContext::new(&mut io));
        assert_eq!(
            app.connect_failures(),
            1,
            "one refusal stops the pass: no hot loop"
        );
        assert_eq!(io.timers_with_token(TOKEN_RETRY), 1);
        // Events other than the retry timer do not bring the connects back in a loop.
        app.run_io(&mut IoContext::new(&mut io));
        assert_eq!(app.connect_failures(), 1);
        io.refuse_connects = false;
        io.now_ns += TCP_LOADGEN_RETRY_NS;
        io.fire_token(TOKEN_RETRY);
        app.run_io(&mut IoContext::new(&mut io));
        assert_eq!(io.connects.len(), 4, "every slot connects after the retry");
        // A connect the peer refuses is counted and retried at once.
        let refused = io.connects[0];
        io.fail_connect(refused);
        app.run_io(&mut IoContext::new(&mut io));
        assert_eq!(app.connect_failures(), 2);
        assert_eq!(io.connects.len(), 5);
        // A stale failure (an earlier attempt's token) changes nothing.
        io.fail_connect(refused);
        app.run_io(&mut IoContext::new(&mut io));
        assert_eq!(app.connect_failures(), 2);
        io.finish(&mut app);
    }

    #[test]
    fn bulk_streams_until_the_window_ends_and_counts_acknowledged_bytes() {
        let mut io = TcpTestIo::new(512);
        io.send_room = 10_000;
        let mut app = TcpLoadgenApp::new(config(TcpLoadMode::Bulk, 2, 4000));
        app.start(&mut IoContext::new(&mut io));
        io.fire_token(TOKEN_MEASURE_START);
        io.establish_all();
        app.run_io(&mut IoContext::new(&mut io));
        // 10,000 bytes of room each: two whole chunks and a part of the third.
        assert_eq!(io.bytes_taken(), 2 * 10_000);
        assert_eq!(app.report().bytes, 0, "nothing acknowledged yet");
        for _ in 0..10 {
            io.ack_all();
            app.run_io(&mut IoContext::new(&mut io));
        }
        let report = app.report();
        assert_eq!(report.bytes, 10 * 2 * 10_000, "{report:?}");
        assert_eq!(report.bytes_measured, report.bytes);
        assert!(report.bytes_per_sec > 0.0);
        assert_eq!(report.send_failures, 0);
        io.fire_token(TOKEN_MEASURE_END);
        io.ack_all();
        app.run_io(&mut IoContext::new(&mut io));
        assert_eq!(io.closing_conns(), 2, "closed once the rest was taken");
        io.close_all_closing();
        app.run_io(&mut IoContext::new(&mut io));
        assert!(app.is_done());
        io.finish(&mut app);
    }

    #[test]
    fn bulk_waits_for_buffers_when_the_pool_is_empty() {
        // 8 frames: far less than the 2 x 64 chunks one fill would offer.
        let mut io = TcpTestIo::new(8);
        io.send_room = usize::MAX;
        let mut app = TcpLoadgenApp::new(config(TcpLoadMode::Bulk, 2, 1000));
        app.start(&mut IoContext::new(&mut io));
        io.establish_all();
        app.run_io(&mut IoContext::new(&mut io));
        assert_eq!(io.timers_with_token(TOKEN_RETRY), 1, "starved: a retry");
        io.ack_all();
        app.run_io(&mut IoContext::new(&mut io));
        io.fire_token(TOKEN_RETRY);
        app.run_io(&mut IoContext::new(&mut io));
        assert!(app.report().bytes > 0);
        assert_eq!(app.report().send_failures, 0);
        io.finish(&mut app);
    }

    /// A key-value server for the tests: reads the requests each connection sent since
    /// `done[i]` (the load generator's own fixed formats) and answers them from `store`,
    /// in pieces of `piece` bytes; `mangle` may rewrite each reply.
    fn serve_kv(
        io: &mut TcpTestIo,
        protocol: crate::kv_load::KvProtocol,
        store: &mut std::collections::HashMap<Vec<u8>, Vec<u8>>,
        done: &mut Vec<usize>,
        mangle: &mut dyn FnMut(Vec<u8>) -> Vec<u8>,
    ) {
        use crate::kv_load::KvProtocol;
        fn line(s: &[u8], at: &mut usize) -> Vec<u8> {
            let end = *at + s[*at..].windows(2).position(|w| w == b"\r\n").unwrap();
            let out = s[*at..end].to_vec();
            *at = end + 2;
            out
        }
        done.resize(io.conns.len(), 0);
        for (i, done) in done.iter_mut().enumerate() {
            let stream = io.conns[i].stream.clone();
            let mut at = *done;
            let mut replies = Vec::new();
            while at < stream.len() {
                let reply = match protocol {
                    KvProtocol::Resp => {
                        let header = line(&stream, &mut at);
                        let set = header == b"*3";
                        line(&stream, &mut at);
                        line(&stream, &mut at);
                        line(&stream, &mut at);
                        let key = line(&stream, &mut at);
                        if set {
                            line(&stream, &mut at);
                            store.insert(key, line(&stream, &mut at));
                            b"+OK\r\n".to_vec()
                        } else {
                            match store.get(&key) {
                                Some(v) => {
                                    let mut r = format!("${}\r\n", v.len()).into_bytes();
                                    r.extend_from_slice(v);
                                    r.extend_from_slice(b"\r\n");
                                    r
                                }
                                None => b"$-1\r\n".to_vec(),
                            }
                        }
                    }
                    KvProtocol::Memcache => {
                        let header = line(&stream, &mut at);
                        let words: Vec<&[u8]> = header.split(|&b| b == b' ').collect();
                        let key = words[1].to_vec();
                        if words[0] == b"set" {
                            store.insert(key, line(&stream, &mut at));
                            b"STORED\r\n".to_vec()
                        } else {
                            match store.get(&key) {
                                Some(v) => {
                                    let mut r = b"VALUE ".to_vec();
                                    r.extend_from_slice(&key);
                                    r.extend_from_slice(format!(" 0 {}\r\n", v.len()).as_bytes());
                                    r.extend_from_slice(v);
                                    r.extend_from_slice(b"\r\nEND\r\n");
                                    r
                                }
                                None => b"END\r\n".to_vec(),
                            }
                        }
                    }
                };
                replies.extend(mangle(reply));
            }
            *done = at;
            if !replies.is_empty() && io.conns[i].state == crate::test_tcp::FakeState::Open {
                let id = io.conns[i].id;
                io.deliver(id, &replies, 3);
            }
        }
        io.ack_all();
    }

    fn kv_config(protocol: crate::kv_load::KvProtocol, connections: usize) -> TcpLoadgenConfig {
        use crate::kv_load::{KeyDistribution, KvWorkload};
        TcpLoadgenConfig {
            inflight: 8,
            ..config(
                TcpLoadMode::Kv(KvWorkload {
                    protocol,
                    keys: 50,
                    get_per_million: 500_000,
                    value_len: 40,
                    distribution: KeyDistribution::Uniform,
                    seed: 3,
                    rate_per_s: None,
                }),
                connections,
                0,
            )
        }
    }

    #[test]
    fn kv_mode_pipelines_gets_and_sets_and_checks_every_value() {
        use crate::kv_load::KvProtocol;
        for protocol in [KvProtocol::Resp, KvProtocol::Memcache] {
            let mut io = TcpTestIo::new(512);
            let mut app = TcpLoadgenApp::new(kv_config(protocol, 2));
            app.start(&mut IoContext::new(&mut io));
            io.establish_all();
            app.run_io(&mut IoContext::new(&mut io));
            assert!(
                io.conns.iter().all(|c| c.unacked.len() == 1),
                "a pipeline of 8 goes out in one send"
            );
            let (mut store, mut done) = (Default::default(), Vec::new());
            for _ in 0..20 {
                serve_kv(&mut io, protocol, &mut store, &mut done, &mut |r| r);
                app.run_io(&mut IoContext::new(&mut io));
            }
            let report = app.report();
            let kv = report.kv.expect("a kv run reports its replies");
            assert_eq!(
                (report.corrupt, report.unexpected, kv.wrong),
                (0, 0, 0),
                "{report:?}"
            );
            assert_eq!(kv.hits + kv.misses + kv.stored, report.received, "{kv:?}");
            assert!(
                report.received >= 2 * 8 * 19,
                "pipelines stay full: {report:?}"
            );
            assert!(kv.hits > 0 && kv.misses > 0 && kv.stored > 0, "{kv:?}");
            io.finish(&mut app);
        }
    }

    #[test]
    fn kv_open_loop_sends_on_schedule_and_counts_what_no_pipeline_could_take() {
        use crate::kv_load::KvProtocol;
        let mut config = kv_config(KvProtocol::Resp, 2);
        config.inflight = 4;
        if let TcpLoadMode::Kv(workload) = &mut config.mode {
            workload.rate_per_s = Some(1000);
        }
        let mut io = TcpTestIo::new(512);
        let mut app = TcpLoadgenApp::new(config);
        app.start(&mut IoContext::new(&mut io));
        io.establish_all();
        app.run_io(&mut IoContext::new(&mut io));
        assert_eq!(
            app.report().sent,
            0,
            "nothing is due at the start, whatever the room"
        );
        // 5 ms at 1000/s: five requests due, taken round robin.
        io.now_ns = 5 * MS;
        io.fire_token(TOKEN_PACE);
        app.run_io(&mut IoContext::new(&mut io));
        let report = app.report();
        assert_eq!((report.sent, report.send_failures), (5, 0), "{report:?}");
        assert_eq!(
            io.conns.iter().map(|c| c.unacked.len()).collect::<Vec<_>>(),
            [3, 2]
        );
        // 15 more due by 20 ms with no reply: room for 3 more (8 in flight at most), the
        // other 12 are counted, not sent late.
        io.now_ns = 20 * MS;
        io.fire_token(TOKEN_PACE);
        app.run_io(&mut IoContext::new(&mut io));
        let report = app.report();
        assert_eq!((report.sent, report.send_failures), (8, 12), "{report:?}");
        // Replies free the pipelines, but only the schedule sends.
        let (mut store, mut done) = (Default::default(), Vec::new());
        serve_kv(&mut io, KvProtocol::Resp, &mut store, &mut done, &mut |r| r);
        app.run_io(&mut IoContext::new(&mut io));
        assert_eq!(app.report().received, 8);
        assert_eq!(
            app.report().sent,
            8,
            "a reply does not trigger a send in the open loop"
        );
        io.finish(&mut app);
    }

    #[test]
    fn kv_mode_counts_a_wrong_value_and_drops_a_connection_that_sends_garbage() {
        use crate::kv_load::KvProtocol;
        let mut io = TcpTestIo::new(512);
        let mut app = TcpLoadgenApp::new(kv_config(KvProtocol::Resp, 1));
        app.start(&mut IoContext::new(&mut io));
        io.establish_all();
        app.run_io(&mut IoContext::new(&mut io));
        let (mut store, mut done) = (Default::default(), Vec::new());
        // A server that hands back another key's value: every hit is wrong.
        let mut swap = |r: Vec<u8>| {
            if r.starts_with(b"$40") {
                let mut r = r;
                r[10] = if r[10] == b'a' { b'b' } else { b'a' };
                r
            } else {
                r
            }
        };
        for _ in 0..10 {
            serve_kv(&mut io, KvProtocol::Resp, &mut store, &mut done, &mut swap);
            app.run_io(&mut IoContext::new(&mut io));
        }
        let kv = app.kv_counts().unwrap();
        assert!(kv.wrong > 0 && kv.hits == 0, "{kv:?}");
        assert_eq!(app.report().corrupt, kv.wrong);
        // Then garbage: the connection is aborted, and the run still ends.
        let mut garbage = |_: Vec<u8>| b"*7\r\n".to_vec();
        serve_kv(
            &mut io,
            KvProtocol::Resp,
            &mut store,
            &mut done,
            &mut garbage,
        );
        app.run_io(&mut IoContext::new(&mut io));
        let before = app.report().corrupt;
        assert!(before > kv.wrong, "the garbage was counted");
        assert_eq!(io.open_conns(), 0, "the connection was aborted");
        io.finish(&mut app);
    }

    #[test]
    fn request_response_still_keeps_its_requests_in_flight() {
        let mut io = TcpTestIo::new(256);
        let mut app = TcpLoadgenApp::new(TcpLoadgenConfig {
            inflight: 4,
            ..config(TcpLoadMode::RequestResponse, 1, 100)
        });
        app.start(&mut IoContext::new(&mut io));
        io.establish_all();
        app.run_io(&mut IoContext::new(&mut io));
        assert_eq!(io.bytes_taken(), 400);
        for _ in 0..3 {
            echo_pass(&mut app, &mut io);
        }
        let report = app.report();
        assert_eq!((report.received, report.corrupt), (12, 0), "{report:?}");
        assert_eq!(report.bytes, 1200);
        assert_eq!(io.closing_conns(), 0, "rr keeps its connection");
        io.finish(&mut app);
    }
}
