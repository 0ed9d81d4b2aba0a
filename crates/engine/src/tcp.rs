//! TCP on Melange's own stack: the connection table, listeners and timers of one engine, and
//! the glue between the contract's TCP commands and events and [`melange_tcp`]'s sans-IO
//! connections.
//!
//! # Shape
//!
//! [`TcpEndpoint`] owns, allocated at start-up and never grown: a [`ConnTable`] of
//! [`TcpConfig::connections_max`] slots keyed by a SipHash of the 4-tuple (key from the control
//! plane), the [`Listeners`] with their SYN queues, backlogs and cookies, one timing wheel with
//! one timer per connection (re-armed in O(1) whenever the connection's earliest deadline
//! moves), and a ready list of connections that have output or events.
//!
//! Each slot holds the [`Connection`] and what the core leaves to its transport:
//!
//! - **The send queue**: the app's own buffers, kept until acknowledged (IX's zero-copy send:
//!   no socket buffer). A `Send` is taken only up to [`Connection::send_room`]; the part of a
//!   chain not taken goes back to the app in the same call (`Outcome::Accepted { bytes, rest }`).
//!   Acknowledged buffers go back in `Event::Sent`. At most [`SEND_CHAINS_MAX`] chains wait per
//!   connection (consecutive sends are merged into one chain while it stays under
//!   `BufChain::LEN_MAX`).
//! - **The receive queue**: in-order payloads the core delivered, as chains waiting for room in
//!   the app's event queue (at most [`RECV_CHAINS_MAX`]), lent zero-copy as `Event::Recv`.
//!
//! # What is copied
//!
//! Received payloads are never copied: the frame the NIC filled is narrowed to the payload and
//! lent to the app. On send, each segment's payload is copied once from the app's queued
//! buffers into a fresh frame with room for the headers (through a stack buffer, as the pool
//! lends one frame at a time), because the app's buffer must stay intact until it is
//! acknowledged while AF_XDP owns a transmitted frame until its completion, and a segment
//! rarely matches the app's buffer boundaries. A send split by the window copies the tail of
//! the boundary frame into a fresh buffer for the app. Nothing else is copied.
//!
//! # Call order (from [`crate::StackTransport`])
//!
//! Per pass: [`TcpEndpoint::handle_segment`] for each received segment; then
//! [`TcpEndpoint::handle_timeout`] when [`TcpEndpoint::poll_at`] has passed;
//! [`TcpEndpoint::poll_events`] into the app's event queue; the app's commands through
//! [`TcpEndpoint::submit`]; then [`TcpEndpoint::poll_transmit`] builds the segments into the
//! interface's transmit queue.

use melange_core::contract::{
    CloseReason, Command, CommandError, ConnOption, Event, EventQueue, Outcome, Refused,
};
use melange_core::handle::HandleError;
use melange_core::timer::{TimerKey, TimerWheel};
use melange_core::{BufChain, ConnId, FrameOwner, ListenerId, PacketBuf, PacketPool};
use melange_net::{Interface, Segment};
use melange_tcp::conn::{
    reset_reply, ts_clock, ConfigError, ConnConfig, ConnEvent, Connection, Keepalive, Ports,
    RecvSink, State, Verdict,
};
use melange_tcp::cookie::SynCookies;
use melange_tcp::isn::{FourTuple, IsnGenerator};
use melange_tcp::listen::{ListenError, ListenerIndex, Listeners, SynAckLocal, SynDecision};
use melange_tcp::siphash::SipKey;
use melange_tcp::table::{ConnIndex, ConnTable, EphemeralPorts, TableError};
use melange_wire::tcp::{Flags, Repr};
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};

/// Most chains waiting in one connection's send queue.
pub const SEND_CHAINS_MAX: usize = 16;
/// Most chains of received data waiting for room in the app's event queue, per connection.
pub const RECV_CHAINS_MAX: usize = 8;
/// Tick of the connection timers' wheel: finer than a delayed ACK, far finer than an RTO.
pub const TIMER_TICK_NS: u64 = 50_000;
/// Slots of the app's event queue TCP leaves free each pass (at most a quarter of it), for the
/// engine's timer events.
pub const EVENTS_RESERVED_MAX: usize = 16;
/// Default size of the connection table.
pub const CONNECTIONS_DEFAULT: usize = 16_384;
/// Bytes of one frame's payload copied at a time on transmit (the largest frame).
const COPY_LEN_MAX: usize = melange_core::PoolConfig::FRAME_SIZE_MAX;

/// The secret keys of one engine's TCP, from the control plane's CSPRNG.
#[derive(Clone)]
pub struct TcpKeys {
    /// The connection table's hash key.
    pub table: SipKey,
    /// Initial sequence numbers (RFC 6528).
    pub isn: SipKey,
    /// SYN cookies' two keys (RFC 4987).
    pub cookies: [SipKey; 2],
    /// The ephemeral port offsets (RFC 6056).
    pub ports: SipKey,
}

impl std::fmt::Debug for TcpKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TcpKeys { .. }")
    }
}

impl TcpKeys {
    /// Keys from 80 bytes of randomness (the control plane reads them from `getrandom(2)`;
    /// the simulator from its seed).
    pub fn from_bytes(bytes: [u8; 80]) -> Self {
        let key = |i: usize| {
            let mut k = [0u8; 16];
            k.copy_from_slice(&bytes[i * 16..i * 16 + 16]);
            SipKey::from_bytes(k)
        };
        TcpKeys {
            table: key(0),
            isn: key(1),
            cookies: [key(2), key(3)],
            ports: key(4),
        }
    }
}

/// The TCP settings of one engine.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// Connection slots (TIME-WAIT included).
    pub connections_max: usize,
    /// The settings of each new connection.
    pub conn: ConnConfig,
    /// Half-open connections per listener before SYN cookies take over.
    pub syn_queue_max: u32,
    /// Answer SYNs with cookies once a SYN queue is full (otherwise drop them).
    pub cookies: bool,
    /// Local ports active opens choose from (the XDP filter must steer them to this engine).
    pub ephemeral_ports: (u16, u16),
    /// The secrets.
    pub keys: TcpKeys,
}

impl TcpConfig {
    /// The defaults, with `keys`.
    pub fn new(keys: TcpKeys) -> Self {
        TcpConfig {
            connections_max: CONNECTIONS_DEFAULT,
            conn: ConnConfig::default(),
            syn_queue_max: melange_tcp::listen::SYN_QUEUE_MAX_DEFAULT,
            cookies: true,
            ephemeral_ports: (
                *melange_tcp::table::EPHEMERAL_PORTS_DEFAULT.start(),
                *melange_tcp::table::EPHEMERAL_PORTS_DEFAULT.end(),
            ),
            keys,
        }
    }
}

/// Why a [`TcpConfig`] was refused.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum TcpConfigError {
    /// The connection settings are invalid.
    #[error("tcp connection settings: {0}")]
    Conn(#[from] ConfigError),
    /// The table size is zero or too large.
    #[error("tcp connection table: {0}")]
    Table(#[from] TableError),
    /// The receive budget does not fit the per-connection receive queue; lower it.
    #[error("receive buffer of {bytes} bytes exceeds the {max} bytes one connection can queue")]
    RecvBuffer {
        /// The budget given.
        bytes: u32,
        /// The largest allowed.
        max: u32,
    },
    /// The ephemeral port range is empty or includes port 0.
    #[error("ephemeral port range {first}..={last} is empty or starts at 0")]
    EphemeralPorts {
        /// First port.
        first: u16,
        /// Last port.
        last: u16,
    },
    /// The MSS does not fit the interface's MTU.
    #[error("MSS {mss} does not fit the interface MTU {mtu} (MSS = MTU - 40 at most)")]
    Mss {
        /// The MSS.
        mss: u16,
        /// The MTU.
        mtu: u16,
    },
}

/// Counters of one engine's TCP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// Segments received for an existing connection.
    pub segments_in: u64,
    /// Segments received and not used by their connection (any [`Verdict::Dropped`]).
    pub segments_dropped: u64,
    /// Segments sent.
    pub segments_out: u64,
    /// Payload bytes copied into transmit frames.
    pub tx_bytes_copied: u64,
    /// Segments for no connection and no listener, answered with RST.
    pub resets_sent: u64,
    /// Connections opened by the app.
    pub active_opens: u64,
    /// Connections accepted (handshake completed on a listener).
    pub passive_opens: u64,
    /// Connections that ended.
    pub closed: u64,
    /// Connections that ended by a reset from the peer.
    pub reset_by_peer: u64,
    /// Connections that timed out.
    pub timed_out: u64,
    /// SYNs refused: no room in the table, a listener's queues full, or cookies off.
    pub syns_dropped: u64,
    /// Cookie SYN-ACKs sent.
    pub cookies_sent: u64,
    /// Connections opened from a valid cookie.
    pub cookies_accepted: u64,
    /// ACKs to a listener, while it had cookies outstanding, that carried no valid cookie
    /// (answered with RST). ACKs when no cookie was sent lately are stray segments, counted
    /// only in `resets_sent`.
    pub cookies_rejected: u64,
    /// Active opens that took the 4-tuple of a connection idling in TIME-WAIT (RFC 6191).
    pub time_wait_reused: u64,
    /// TIME-WAIT connections ended early to make room in a full table for a new one.
    pub time_wait_evicted: u64,
    /// A segment could not be sent because the pool had no frame; retried next pass.
    pub tx_pool_empty: u64,
    /// A segment the interface refused (no route, queue full): lost, TCP retransmits it.
    pub tx_refused: u64,
    /// Sends cut short by the windows (the rest went back to the app).
    pub sends_partial: u64,
    /// Frames handed to the app in `Recv` events.
    pub recv_frames: u64,
    /// Received payload that could not be queued for the app (should stay 0: the receive
    /// budget is sized to the queue).
    pub recv_queue_overflow: u64,
    /// Retransmitted segments, summed over closed connections.
    pub retransmits: u64,
    /// Retransmission timeouts, summed over closed connections.
    pub rto_expirations: u64,
    /// Fast recoveries entered (RFC 6675, or RFC 6582 without SACK), summed over closed
    /// connections.
    pub fast_recoveries: u64,
    /// Segments RACK marked lost (RFC 8985), summed over closed connections.
    pub rack_losses: u64,
    /// Lost retransmissions RACK found (each resent without a timeout), summed over closed
    /// connections.
    pub rack_lost_retransmits: u64,
    /// Tail loss probes sent (RFC 8985 §7), summed over closed connections.
    pub tlp_probes: u64,
    /// Losses a tail loss probe repaired (answered with a window reduction), summed over
    /// closed connections.
    pub tlp_recoveries: u64,
    /// Challenge ACKs sent, summed over closed connections: the ACKs a segment the peer (or a
    /// blind attacker) controls provokes, an in-window RST that misses RCV.NXT (RFC 5961
    /// §3.2), a SYN (§4), an ACK too old (§5.2) or an out-of-window segment without data.
    pub challenge_acks: u64,
    /// Challenge ACKs the per-connection rate limit held back (RFC 5961 §7), summed over
    /// closed connections: with `challenge_acks`, what blind injections provoked.
    pub challenge_acks_suppressed: u64,
}

/// How a connection came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// From a listener; the app learns of it with `Accepted`.
    Passive(ListenerIndex),
    /// From `Connect` with this token.
    Active(u64),
}

/// The app's buffers of one connection, waiting for their acknowledgement.
#[derive(Debug, Default)]
struct SendQueue {
    chains: [Option<BufChain>; SEND_CHAINS_MAX],
    head: usize,
    len: usize,
    /// Stream offset of the first byte of the first frame.
    front_offset: u64,
    /// Bytes of the first frame already acknowledged.
    front_acked: u32,
}

impl SendQueue {
    fn back_mut(&mut self) -> Option<&mut BufChain> {
        if self.len == 0 {
            return None;
        }
        let i = (self.head + self.len - 1) % SEND_CHAINS_MAX;
        self.chains[i].as_mut()
    }

    /// Appends `chain`, merged into the last chain when it fits; gives it back when the queue
    /// is full.
    fn push(&mut self, pool: &mut PacketPool, chain: BufChain) -> Result<(), BufChain> {
        if let Some(back) = self.back_mut() {
            if back.len() + chain.len() <= BufChain::LEN_MAX {
                let mut rest = Some(chain);
                while let Some(c) = rest {
                    let (buf, tail) = pool.chain_pop_front(c);
                    // The sum was checked: this push cannot exceed LEN_MAX.
                    if let Err((_, buf)) = pool.chain_push(back, buf) {
                        pool.free(buf);
                    }
                    rest = tail;
                }
                return Ok(());
            }
        }
        if self.len == SEND_CHAINS_MAX {
            return Err(chain);
        }
        let i = (self.head + self.len) % SEND_CHAINS_MAX;
        self.chains[i] = Some(chain);
        self.len += 1;
        Ok(())
    }

    /// Whether another send can be queued.
    fn has_room(&self) -> bool {
        self.len < SEND_CHAINS_MAX
    }

    /// Copies the bytes at stream `offset` into `out`; returns how many were there.
    fn read(&self, pool: &PacketPool, offset: u64, out: &mut [u8]) -> usize {
        let Some(mut skip) = offset.checked_sub(self.front_offset) else {
            return 0;
        };
        let mut done = 0;
        for k in 0..self.len {
            let Some(chain) = &self.chains[(self.head + k) % SEND_CHAINS_MAX] else {
                break;
            };
            let len = chain.len() as u64;
            if skip >= len {
                skip -= len;
                continue;
            }
            done += pool.chain_read(chain, skip as usize, &mut out[done..]);
            skip = 0;
            if done == out.len() {
                break;
            }
        }
        done
    }

    /// Drops `bytes` acknowledged bytes; the frames wholly acknowledged come back as one chain
    /// (frames past `BufChain::LEN_MAX` in one call are freed instead).
    fn release(&mut self, pool: &mut PacketPool, bytes: u32) -> Option<BufChain> {
        let mut acked = u64::from(self.front_acked) + u64::from(bytes);
        let mut back: Option<BufChain> = None;
        while self.len > 0 {
            let slot = &mut self.chains[self.head];
            let Some(chain) = slot.take() else {
                break;
            };
            let first = chain.head().len() as u64;
            if acked < first {
                *slot = Some(chain);
                break;
            }
            acked -= first;
            self.front_offset += first;
            let (buf, rest) = pool.chain_pop_front(chain);
            pool.hand_over(&buf, FrameOwner::App);
            match back.as_mut() {
                None => back = Some(BufChain::from(buf)),
                Some(b) => {
                    if let Err((_, buf)) = pool.chain_push(b, buf) {
                        pool.free(buf);
                    }
                }
            }
            match rest {
                Some(rest) => *slot = Some(rest),
                None => {
                    self.head = (self.head + 1) % SEND_CHAINS_MAX;
                    self.len -= 1;
                }
            }
        }
        self.front_acked = acked as u32;
        back
    }

    fn free_all(&mut self, pool: &mut PacketPool) {
        for chain in self.chains.iter_mut().filter_map(Option::take) {
            pool.free_chain(chain);
        }
        self.len = 0;
    }
}

/// In-order payloads waiting for room in the app's event queue.
#[derive(Debug, Default)]
struct RecvQueue {
    chains: [Option<BufChain>; RECV_CHAINS_MAX],
    head: usize,
    len: usize,
}

impl RecvQueue {
    fn pop(&mut self) -> Option<BufChain> {
        if self.len == 0 {
            return None;
        }
        let chain = self.chains[self.head].take();
        self.head = (self.head + 1) % RECV_CHAINS_MAX;
        self.len -= 1;
        chain
    }

    fn free_all(&mut self, pool: &mut PacketPool) {
        while let Some(chain) = self.pop() {
            pool.free_chain(chain);
        }
    }
}

/// The sink the core delivers into: the slot's receive queue, in the pool.
struct Sink<'a> {
    pool: &'a mut PacketPool,
    queue: &'a mut RecvQueue,
    overflow: &'a mut u64,
}

impl RecvSink<PacketBuf> for Sink<'_> {
    fn deliver(&mut self, data: PacketBuf) {
        let q = &mut *self.queue;
        if q.len > 0 {
            let i = (q.head + q.len - 1) % RECV_CHAINS_MAX;
            if let Some(back) = q.chains[i].as_mut() {
                if back.len() + data.len() <= BufChain::LEN_MAX {
                    self.pool.hand_over(&data, FrameOwner::App);
                    match self.pool.chain_push(back, data) {
                        Ok(()) => return,
                        Err((_, data)) => {
                            self.pool.free(data);
                            *self.overflow += 1;
                            return;
                        }
                    }
                }
            }
        }
        if q.len == RECV_CHAINS_MAX {
            // Unreachable while the receive budget fits the queue (checked at start-up).
            *self.overflow += 1;
            self.pool.free(data);
            return;
        }
        self.pool.hand_over(&data, FrameOwner::App);
        let i = (q.head + q.len) % RECV_CHAINS_MAX;
        q.chains[i] = Some(BufChain::from(data));
        q.len += 1;
    }

    fn discard(&mut self, data: PacketBuf) {
        self.pool.free(data);
    }
}

/// One connection's slot.
#[derive(Debug)]
struct Slot {
    conn: Connection<PacketBuf>,
    remote: SocketAddrV4,
    origin: Origin,
    /// The app saw `Accepted` or `Connected`: it holds the handle.
    visible: bool,
    /// The handshake completed (passive: counted in the listener's backlog until accepted).
    established: bool,
    /// The core reported `Closed`; the slot goes once its output is out.
    finished: bool,
    /// An event polled from the core that waits for room in the event queue.
    held: Option<ConnEvent>,
    send: SendQueue,
    recv: RecvQueue,
    timer: Option<TimerKey>,
    ready: bool,
}

/// One engine's TCP. See the module documentation.
pub struct TcpEndpoint {
    config: TcpConfig,
    local_ip: Ipv4Addr,
    table: ConnTable<Slot>,
    listeners: Listeners,
    isn: IsnGenerator,
    ports: EphemeralPorts,
    timers: TimerWheel<ConnIndex>,
    ready: Vec<ConnIndex>,
    ready_next: Vec<ConnIndex>,
    /// Connections that entered TIME-WAIT, oldest first (entries go stale when one leaves it;
    /// they are skipped): when the table is full, the oldest gives its slot to a new
    /// connection, as Linux ends TIME-WAIT early beyond `tcp_max_tw_buckets`. Preallocated to
    /// the table's size.
    time_wait: VecDeque<ConnIndex>,
    counters: TcpCounters,
    copy: Box<[u8]>,
}

impl std::fmt::Debug for TcpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpEndpoint")
            .field("local_ip", &self.local_ip)
            .field("connections", &self.table.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

fn conn_id(index: ConnIndex) -> ConnId {
    ConnId::from_raw(index.to_raw())
}

fn conn_index(id: ConnId) -> ConnIndex {
    ConnIndex::from_raw(id.to_raw())
}

impl TcpEndpoint {
    /// The TCP of an interface with address `local_ip` and MTU `mtu`, at time `now_ns`.
    /// Allocates every table now.
    pub fn new(
        config: TcpConfig,
        local_ip: Ipv4Addr,
        mtu: u16,
        now_ns: u64,
    ) -> Result<Self, TcpConfigError> {
        config.conn.validate()?;
        if u32::from(config.conn.mss) + 40 > u32::from(mtu) {
            return Err(TcpConfigError::Mss {
                mss: config.conn.mss,
                mtu,
            });
        }
        let recv_max = ((RECV_CHAINS_MAX - 1) * (BufChain::LEN_MAX - COPY_LEN_MAX / 16)) as u32;
        if config.conn.recv_buffer_bytes > recv_max {
            return Err(TcpConfigError::RecvBuffer {
                bytes: config.conn.recv_buffer_bytes,
                max: recv_max,
            });
        }
        let table = ConnTable::new(config.connections_max, config.keys.table.clone())?;
        let cookies = config.cookies.then(|| {
            SynCookies::new(
                config.keys.cookies[0].clone(),
                config.keys.cookies[1].clone(),
            )
        });
        Ok(TcpEndpoint {
            local_ip,
            table,
            listeners: Listeners::new(cookies),
            isn: IsnGenerator::new(config.keys.isn.clone()),
            ports: {
                let (first, last) = config.ephemeral_ports;
                EphemeralPorts::new(
                    config.keys.ports.clone(),
                    first..=last,
                    melange_tcp::table::PORT_TRIES_MAX_DEFAULT,
                )
                .map_err(|_| TcpConfigError::EphemeralPorts { first, last })?
            },
            timers: TimerWheel::new(config.connections_max, TIMER_TICK_NS, now_ns),
            ready: Vec::with_capacity(config.connections_max),
            ready_next: Vec::with_capacity(config.connections_max),
            time_wait: VecDeque::with_capacity(config.connections_max),
            counters: TcpCounters::default(),
            copy: vec![0u8; COPY_LEN_MAX].into_boxed_slice(),
            config,
        })
    }

    /// Whether some connection has events or output waiting for a pass.
    pub fn has_pending(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The counters.
    pub fn counters(&self) -> &TcpCounters {
        &self.counters
    }
    /// Connections in the table (TIME-WAIT included).
    pub fn connections(&self) -> usize {
        self.table.len()
    }
    /// The state of a connection, for tests and diagnostics.
    pub fn state_of(&self, conn: ConnId) -> Option<State> {
        self.table.get(conn_index(conn)).map(|s| s.conn.state())
    }
    /// The listeners' counters summed: (SYNs received, cookies sent, cookies accepted).
    pub fn listener_counters(&self) -> melange_tcp::listen::ListenerCounters {
        let mut sum = melange_tcp::listen::ListenerCounters::default();
        for (_, l) in self.listeners.iter() {
            let c = l.counters();
            sum.syns_received += c.syns_received;
            sum.syn_queue_full += c.syn_queue_full;
            sum.cookies_sent += c.cookies_sent;
            sum.cookies_accepted += c.cookies_accepted;
            sum.cookies_rejected += c.cookies_rejected;
            sum.backlog_full_drops += c.backlog_full_drops;
        }
        sum
    }

    fn mark_ready(&mut self, index: ConnIndex) {
        if let Some(slot) = self.table.get_mut(index) {
            if !slot.ready {
                slot.ready = true;
                self.ready.push(index);
            }
        }
    }

    /// Re-arms the connection's timer to its earliest deadline.
    fn sync_timer(&mut self, index: ConnIndex) {
        let Some(slot) = self.table.get_mut(index) else {
            return;
        };
        // Lazy, as Linux's timers are: a timer armed at or before the connection's next
        // deadline stays (it fires early, finds nothing due, and is armed again at the true
        // deadline), so the common case (an ACK pushing the RTO later) costs no re-arm. Only
        // an earlier deadline moves it.
        match (slot.conn.poll_at(), slot.timer) {
            (Some(at), Some(key)) => match self.timers.deadline_ns(key) {
                Ok(armed) if armed <= at => {}
                Ok(_) => {
                    if self.timers.reschedule(key, at).is_err() {
                        slot.timer = self.timers.insert(at, index).ok();
                    }
                }
                Err(_) => slot.timer = self.timers.insert(at, index).ok(),
            },
            (Some(at), None) => slot.timer = self.timers.insert(at, index).ok(),
            (None, _) => {}
        }
    }

    // ----- Receive -----

    /// Takes one received segment (its payload window in `seg.data`).
    pub fn handle_segment(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        iface: &mut Interface,
        seg: Segment,
    ) {
        let tuple = FourTuple {
            local: SocketAddrV4::new(self.local_ip, seg.local_port),
            remote: seg.from,
        };
        let Segment { repr, data, .. } = seg;
        if let Some(index) = self.table.find(&tuple) {
            self.counters.segments_in += 1;
            let Some(slot) = self.table.get_mut(index) else {
                pool.free(data);
                return;
            };
            let was_established = slot.conn.state() != State::SynReceived;
            let mut sink = Sink {
                pool,
                queue: &mut slot.recv,
                overflow: &mut self.counters.recv_queue_overflow,
            };
            let verdict = slot.conn.handle_segment(now_ns, &repr, data, &mut sink);
            let now_established =
                slot.conn.state() != State::SynReceived && slot.conn.state() != State::Closed;
            if !was_established && now_established {
                slot.established = true;
                if let Origin::Passive(listener) = slot.origin {
                    if self.listeners.half_open_established(listener).is_err() {
                        // The accept backlog is full (RFC 9293 leaves it to us; Linux drops):
                        // reset, so the peer learns at once instead of timing out.
                        slot.conn.abort();
                        let _ = self.listeners.half_open_failed(listener);
                        slot.established = false;
                    }
                }
            }
            match verdict {
                Verdict::Accepted => {}
                Verdict::Dropped(_) => self.counters.segments_dropped += 1,
                Verdict::TimeWaitReuse => {
                    // The old connection is closed; the SYN opens a new one on the listener.
                    self.remove(pool, index);
                    let empty = pool.alloc_for(FrameOwner::Stack);
                    if let Some(empty) = empty {
                        self.handle_unmatched(now_ns, pool, iface, tuple, &repr, empty);
                    }
                    return;
                }
            }
            self.mark_ready(index);
            return;
        }
        self.handle_unmatched(now_ns, pool, iface, tuple, &repr, data);
    }

    /// A segment for no connection: a listener's SYN or cookie ACK, or a RST answer.
    fn handle_unmatched(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        iface: &mut Interface,
        tuple: FourTuple,
        repr: &Repr,
        data: PacketBuf,
    ) {
        pool.free(data);
        let flags = repr.flags;
        let Some(listener) = self.listeners.find(tuple.local.port()) else {
            self.send_reset(now_ns, pool, iface, tuple, repr);
            return;
        };
        if flags.contains(Flags::RST) {
            return;
        }
        if flags.contains(Flags::SYN) && repr.ack.is_none() {
            self.handle_syn(now_ns, pool, iface, listener, tuple, repr);
            return;
        }
        if repr.ack.is_some() && !flags.contains(Flags::SYN) {
            match self.listeners.cookie_ack(listener, repr, &tuple, now_ns) {
                Ok(params) => {
                    let mut conn = match Connection::from_cookie(
                        self.config.conn,
                        ports_of(&tuple),
                        now_ns,
                        repr,
                        params,
                    ) {
                        Ok(conn) => conn,
                        Err(_) => {
                            // The cookie checked out but its parameters make no connection.
                            self.counters.cookies_rejected += 1;
                            return;
                        }
                    };
                    // The cookie ACK may carry data: take it now (an empty payload here; the
                    // peer retransmits any data it carried).
                    if let Some(empty) = pool.alloc_for(FrameOwner::Stack) {
                        let mut queue = RecvQueue::default();
                        let mut sink = Sink {
                            pool,
                            queue: &mut queue,
                            overflow: &mut self.counters.recv_queue_overflow,
                        };
                        let mut ack_only = *repr;
                        ack_only.payload_len = 0;
                        ack_only.flags.remove(Flags::FIN);
                        let _ = conn.handle_segment(now_ns, &ack_only, empty, &mut sink);
                        debug_assert_eq!(queue.len, 0);
                    }
                    let slot = new_slot(conn, tuple.remote, Origin::Passive(listener));
                    if self.table.len() >= self.table.capacity() {
                        self.evict_time_wait(pool);
                    }
                    match self.table.insert(tuple, slot) {
                        Ok(index) => {
                            let _ = self.listeners.cookie_established(listener);
                            if let Some(s) = self.table.get_mut(index) {
                                s.established = true;
                            }
                            self.counters.cookies_accepted += 1;
                            self.mark_ready(index);
                        }
                        Err((_, mut slot)) => {
                            self.counters.syns_dropped += 1;
                            slot.conn.abort();
                            self.emit_now(now_ns, pool, iface, &mut slot, tuple.remote);
                        }
                    }
                }
                Err(ListenError::NoCookiesOutstanding) => {
                    // No cookie was sent lately, so this is no cookie ACK but a segment for a
                    // connection that is gone (or never was): RFC 9293's RST, counted there.
                    self.send_reset(now_ns, pool, iface, tuple, repr);
                }
                Err(_) => {
                    self.counters.cookies_rejected += 1;
                    self.send_reset(now_ns, pool, iface, tuple, repr);
                }
            }
            return;
        }
        self.send_reset(now_ns, pool, iface, tuple, repr);
    }

    fn handle_syn(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        iface: &mut Interface,
        listener: ListenerIndex,
        tuple: FourTuple,
        syn: &Repr,
    ) {
        let table_full = self.table.len() >= self.table.capacity() && !self.evict_time_wait(pool);
        match self.listeners.handle_syn(listener, now_ns) {
            SynDecision::Stateful if !table_full => {
                let iss = self.isn.isn(now_ns, &tuple);
                let conn = match Connection::accept_syn(
                    self.config.conn,
                    ports_of(&tuple),
                    iss,
                    now_ns,
                    syn,
                ) {
                    Ok(conn) => conn,
                    Err(_) => {
                        self.counters.syns_dropped += 1;
                        return;
                    }
                };
                match self.table.insert(
                    tuple,
                    new_slot(conn, tuple.remote, Origin::Passive(listener)),
                ) {
                    Ok(index) => {
                        let _ = self.listeners.syn_queued(listener);
                        self.mark_ready(index);
                    }
                    Err(_) => self.counters.syns_dropped += 1,
                }
            }
            SynDecision::Stateful | SynDecision::Cookie => {
                let local = SynAckLocal {
                    mss: self.config.conn.mss,
                    window_scale: self.config.conn.window_shift().unwrap_or(0),
                    window_len: self.config.conn.recv_buffer_bytes.min(0xFFFF) as u16,
                    ecn: false,
                };
                match self.listeners.cookie_syn_ack(
                    listener,
                    syn,
                    &tuple,
                    now_ns,
                    ts_clock(now_ns),
                    &local,
                ) {
                    Ok(synack) => {
                        self.counters.cookies_sent += 1;
                        self.send_repr(now_ns, pool, iface, tuple.remote, &synack.repr);
                    }
                    Err(_) => self.counters.syns_dropped += 1,
                }
            }
            SynDecision::Drop(_) => self.counters.syns_dropped += 1,
        }
    }

    fn send_reset(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        iface: &mut Interface,
        tuple: FourTuple,
        repr: &Repr,
    ) {
        if let Some(rst) = reset_reply(repr) {
            self.counters.resets_sent += 1;
            self.send_repr(now_ns, pool, iface, tuple.remote, &rst);
        }
    }

    /// Sends a header with no payload, outside any connection.
    fn send_repr(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        iface: &mut Interface,
        to: SocketAddrV4,
        repr: &Repr,
    ) {
        let Some(frame) = pool.alloc_for(FrameOwner::Stack) else {
            self.counters.tx_pool_empty += 1;
            return;
        };
        match iface.send_tcp(now_ns, pool, frame, to, repr) {
            Ok(()) => self.counters.segments_out += 1,
            Err((_, frame)) => {
                pool.free(frame);
                self.counters.tx_refused += 1;
            }
        }
    }

    /// Emits whatever a slot outside the table has (an abort's RST).
    fn emit_now(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        iface: &mut Interface,
        slot: &mut Slot,
        to: SocketAddrV4,
    ) {
        while let Some(t) = slot.conn.poll_transmit(now_ns) {
            if t.repr.payload_len == 0 {
                self.send_repr(now_ns, pool, iface, to, &t.repr);
            }
        }
        slot.send.free_all(pool);
        slot.recv.free_all(pool);
        slot.conn.drain(&mut DropSink { pool });
    }

    // ----- Timers -----

    /// The earliest connection deadline.
    pub fn poll_at(&self) -> Option<u64> {
        self.timers.next_deadline_ns()
    }

    /// Runs the connection timers due at `now_ns`.
    pub fn handle_timeout(&mut self, now_ns: u64) {
        while let Some((_, index)) = self.timers.poll_expired(now_ns) {
            let Some(slot) = self.table.get_mut(index) else {
                continue;
            };
            slot.timer = None;
            slot.conn.handle_timeout(now_ns);
            self.mark_ready(index);
            self.sync_timer(index);
        }
    }

    // ----- Events -----

    /// Moves the ready connections' events into the app's queue, as room allows.
    pub fn poll_events(&mut self, pool: &mut PacketPool, events: &mut EventQueue) {
        for k in 0..self.ready.len() {
            let index = self.ready[k];
            self.drain_events(pool, events, index);
        }
    }

    fn drain_events(&mut self, pool: &mut PacketPool, events: &mut EventQueue, index: ConnIndex) {
        let Some(slot) = self.table.get_mut(index) else {
            return;
        };
        let id = conn_id(index);
        // Leave room for the engine's timers, which fire into the same queue after receive:
        // with many busy connections TCP's events alone would fill it every pass, and the
        // app's timers would never fire (a load generator's measuring window never opened).
        let reserve = EVENTS_RESERVED_MAX.min(events.capacity() / 4);
        while events.room() > reserve {
            let polled = slot.held.take().or_else(|| slot.conn.poll_event());
            let event = match polled {
                Some(ConnEvent::Established) => {
                    slot.visible = true;
                    match slot.origin {
                        Origin::Passive(listener) => {
                            let _ = self.listeners.accepted(listener);
                            self.counters.passive_opens += 1;
                            Event::Accepted {
                                listener: ListenerId::from_raw(listener.to_raw()),
                                conn: id,
                                peer: slot.remote,
                            }
                        }
                        Origin::Active(token) => Event::Connected { conn: id, token },
                    }
                }
                Some(other) => {
                    if let Some(data) = slot.recv.pop() {
                        // Data before the event that follows it.
                        slot.held = Some(other);
                        self.counters.recv_frames += data.frames() as u64;
                        Event::Recv { conn: id, data }
                    } else {
                        match other {
                            ConnEvent::Established => unreachable!("handled above"),
                            ConnEvent::Sent { bytes } => {
                                let data = slot.send.release(pool, bytes);
                                if !slot.visible {
                                    if let Some(data) = data {
                                        pool.free_chain(data);
                                    }
                                    continue;
                                }
                                Event::Sent {
                                    conn: id,
                                    bytes,
                                    data,
                                }
                            }
                            ConnEvent::PeerClosed => {
                                if !slot.visible {
                                    continue;
                                }
                                Event::PeerClosed { conn: id }
                            }
                            ConnEvent::Closed(reason) => {
                                slot.finished = true;
                                if slot.conn.state() == State::TimeWait {
                                    if self.time_wait.len() == self.time_wait.capacity() {
                                        self.time_wait.pop_front();
                                    }
                                    self.time_wait.push_back(index);
                                }
                                self.counters.closed += 1;
                                match reason {
                                    CloseReason::Reset => self.counters.reset_by_peer += 1,
                                    CloseReason::TimedOut => self.counters.timed_out += 1,
                                    _ => {}
                                }
                                if slot.visible {
                                    Event::Closed { conn: id, reason }
                                } else {
                                    match slot.origin {
                                        Origin::Active(token) => {
                                            Event::ConnectFailed { token, reason }
                                        }
                                        Origin::Passive(listener) => {
                                            if !slot.established {
                                                let _ = self.listeners.half_open_failed(listener);
                                            } else {
                                                let _ = self.listeners.accepted(listener);
                                            }
                                            continue;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                None => match slot.recv.pop() {
                    Some(data) if slot.visible => {
                        self.counters.recv_frames += data.frames() as u64;
                        Event::Recv { conn: id, data }
                    }
                    Some(data) => {
                        pool.free_chain(data);
                        continue;
                    }
                    None => break,
                },
            };
            if let Err(event) = events.push(event) {
                // Room was checked above; keep the buffers rather than lose them.
                if let Some(data) = event.into_data() {
                    pool.free_chain(data);
                }
                break;
            }
        }
    }

    // ----- Commands -----

    /// Runs a TCP command of the contract.
    pub fn submit(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        command: Command,
    ) -> Result<Outcome, Refused> {
        match command {
            Command::Listen { port, backlog } => {
                let index = self
                    .listeners
                    .listen(port, backlog, self.config.syn_queue_max)
                    .map_err(|error| Refused::new(listen_error(port, error)))?;
                Ok(Outcome::Listener(ListenerId::from_raw(index.to_raw())))
            }
            Command::Connect { to, token } => {
                self.connect(now_ns, pool, to, token).map_err(Refused::new)
            }
            Command::Send { conn, data } => self.send(now_ns, pool, conn, data),
            Command::RecvDone { conn, bytes } => {
                let index = conn_index(conn);
                let slot = self.live_slot(index, "recv_done")?;
                slot.conn.handle_recv_done(bytes);
                self.mark_ready(index);
                Ok(Outcome::Done)
            }
            Command::Close { conn } => {
                let index = conn_index(conn);
                let slot = self.live_slot(index, "close")?;
                slot.conn.close(now_ns);
                self.mark_ready(index);
                Ok(Outcome::Done)
            }
            Command::Abort { conn } => {
                let index = conn_index(conn);
                let slot = self.live_slot(index, "abort")?;
                slot.conn.abort();
                self.mark_ready(index);
                Ok(Outcome::Done)
            }
            Command::SetOption { conn, option } => {
                let index = conn_index(conn);
                let slot = self.live_slot(index, "set_option")?;
                match option {
                    ConnOption::NoDelay(on) => slot.conn.set_nodelay(on),
                    ConnOption::KeepaliveNs(idle) => slot
                        .conn
                        .set_keepalive(now_ns, idle.map(Keepalive::with_idle)),
                    _ => {
                        return Err(Refused::new(CommandError::Unsupported {
                            command: "set_option",
                            transport: "melange stack",
                        }))
                    }
                }
                self.sync_timer(index);
                Ok(Outcome::Done)
            }
            other => Err(Refused {
                error: CommandError::Unsupported {
                    command: other.name(),
                    transport: "melange stack",
                },
                data: other.into_data(),
            }),
        }
    }

    /// The slot of a connection the app holds, or the error a stale handle deserves.
    fn live_slot(
        &mut self,
        index: ConnIndex,
        _command: &'static str,
    ) -> Result<&mut Slot, Refused> {
        match self.table.get_mut(index) {
            Some(slot) if slot.visible || matches!(slot.origin, Origin::Active(_)) => Ok(slot),
            _ => Err(Refused::new(CommandError::Handle(HandleError::Stale))),
        }
    }

    fn connect(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        to: SocketAddrV4,
        token: u64,
    ) -> Result<Outcome, CommandError> {
        if to.port() == 0
            || to.ip().is_unspecified()
            || to.ip().is_broadcast()
            || to.ip().is_multicast()
        {
            return Err(CommandError::Send(
                melange_core::contract::SendError::BadDestination,
            ));
        }
        // A free port, or one whose last connection idles in TIME-WAIT and may be reused
        // (timestamps, a second of silence: `Connection::time_wait_reusable_by_connect`).
        // Without reuse a client that closes first holds each port for 2 MSL, and churn stops
        // at ports / TIME-WAIT connections per second.
        let (tuple, reused) = self
            .ports
            .choose_reusing(&self.table, self.local_ip, to, |slot| {
                slot.finished && slot.conn.time_wait_reusable_by_connect(now_ns).is_some()
            })
            .map_err(|_| {
                CommandError::Handle(HandleError::Full {
                    capacity: self.table.capacity(),
                })
            })?;
        let mut iss = self.isn.isn(now_ns, &tuple);
        if let Some(old) = reused {
            // Above everything the old incarnation sent, as Linux does (snd_nxt + 65535 + 2),
            // so the peer cannot take the new SYN's data for the old connection's.
            if let Some(snd_nxt) = self
                .table
                .get(old)
                .and_then(|slot| slot.conn.time_wait_reusable_by_connect(now_ns))
            {
                iss = (snd_nxt + 65_537u32).0;
            }
            self.remove(pool, old);
            self.counters.time_wait_reused += 1;
        }
        let conn =
            Connection::connect(self.config.conn, ports_of(&tuple), iss, now_ns).map_err(|_| {
                CommandError::Unsupported {
                    command: "connect",
                    transport: "melange stack (invalid TCP settings)",
                }
            })?;
        if self.table.len() >= self.table.capacity() {
            self.evict_time_wait(pool);
        }
        let index = self
            .table
            .insert(tuple, new_slot(conn, to, Origin::Active(token)))
            .map_err(|(_, _)| {
                CommandError::Handle(HandleError::Full {
                    capacity: self.table.capacity(),
                })
            })?;
        self.counters.active_opens += 1;
        self.mark_ready(index);
        Ok(Outcome::Conn(conn_id(index)))
    }

    fn send(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        conn: ConnId,
        data: BufChain,
    ) -> Result<Outcome, Refused> {
        let index = conn_index(conn);
        let refuse = |error, data| {
            Err(Refused {
                error,
                data: Some(data),
            })
        };
        let Some(slot) = self.table.get_mut(index).filter(|s| s.visible) else {
            return refuse(CommandError::Handle(HandleError::Stale), data);
        };
        if !pool.is_held_by(data.head(), FrameOwner::App) {
            return refuse(CommandError::NotOwned, data);
        }
        if !slot.conn.can_send() {
            let reason = match slot.conn.state() {
                State::SynSent | State::SynReceived => "the connection is still opening",
                _ => "the sending side is closed",
            };
            return refuse(
                CommandError::ConnNotOpen {
                    command: "send",
                    reason,
                },
                data,
            );
        }
        let offered = data.len() as u32;
        let merges = slot
            .send
            .back_mut()
            .is_some_and(|b| b.len() + data.len() <= BufChain::LEN_MAX);
        if !slot.send.has_room() && !merges {
            // The queue of chains is full: nothing taken; a Sent event follows the next ACK.
            slot.conn.handle_send_cut_short();
            return Ok(Outcome::Accepted {
                bytes: 0,
                rest: Some(data),
            });
        }
        let room = slot.conn.send_room().min(offered);
        let (taken, rest) = split_chain(pool, data, room, &mut self.copy);
        let bytes = taken.as_ref().map_or(0, |t| t.len() as u32);
        if let Some(taken) = taken {
            pool.hand_over_chain(&taken, FrameOwner::Stack);
            if let Err(back) = slot.send.push(pool, taken) {
                // Unreachable (room was checked): free rather than queue bytes the core never
                // counted. Counted as a partial send.
                pool.free_chain(back);
                slot.conn.handle_send_cut_short();
                self.counters.sends_partial += 1;
                return Ok(Outcome::Accepted { bytes: 0, rest });
            }
            let queued = slot.conn.handle_send(now_ns, bytes);
            debug_assert_eq!(queued, bytes, "send room changed during the send");
        }
        if bytes < offered {
            slot.conn.handle_send_cut_short();
            self.counters.sends_partial += 1;
        }
        self.mark_ready(index);
        Ok(Outcome::Accepted { bytes, rest })
    }

    // ----- Transmit -----

    /// Builds the ready connections' segments into the interface's transmit queue, at most
    /// `budget` segments; connections that still have output stay ready for the next pass.
    /// Returns the segments built.
    pub fn poll_transmit(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        iface: &mut Interface,
        budget: usize,
    ) -> usize {
        let mut sent = 0;
        std::mem::swap(&mut self.ready, &mut self.ready_next);
        self.ready.clear();
        let mut k = 0;
        while k < self.ready_next.len() {
            let index = self.ready_next[k];
            k += 1;
            let Some(slot) = self.table.get_mut(index) else {
                continue;
            };
            slot.ready = false;
            let mut stalled = false;
            loop {
                if sent >= budget {
                    stalled = true;
                    break;
                }
                // A segment the connection commits to is built at once, so a frame must be
                // free before asking it (checked, not taken: most connections on the list
                // have nothing more to send, and a frame taken and given back is work).
                if pool.available() == 0 {
                    self.counters.tx_pool_empty += 1;
                    stalled = true;
                    break;
                }
                let Some(t) = slot.conn.poll_transmit(now_ns) else {
                    break;
                };
                let Some(mut frame) = pool.alloc_for(FrameOwner::Stack) else {
                    // Unreachable (one thread, a frame was free): the segment is lost and
                    // retransmission recovers it.
                    self.counters.tx_pool_empty += 1;
                    stalled = true;
                    break;
                };
                let len = t.repr.payload_len;
                if len > 0 {
                    let copied = slot
                        .send
                        .read(pool, t.payload_offset, &mut self.copy[..len]);
                    debug_assert_eq!(copied, len, "segment past the send queue");
                    if pool.set_len(&mut frame, len).is_err() {
                        pool.free(frame);
                        self.counters.tx_refused += 1;
                        continue;
                    }
                    pool.data_mut(&frame).copy_from_slice(&self.copy[..len]);
                    self.counters.tx_bytes_copied += len as u64;
                }
                match iface.send_tcp(now_ns, pool, frame, slot.remote, &t.repr) {
                    Ok(()) => {
                        self.counters.segments_out += 1;
                        sent += 1;
                    }
                    Err((_, frame)) => {
                        pool.free(frame);
                        self.counters.tx_refused += 1;
                    }
                }
            }
            let finished =
                slot.finished && slot.conn.is_closed() && slot.held.is_none() && slot.recv.len == 0;
            if finished {
                self.remove(pool, index);
                continue;
            }
            // Events the app's queue had no room for this pass (a burst of handshakes that
            // complete at once fills it) keep the connection ready, or a connection with
            // nothing to send would never report them: an `Established` stuck here left a
            // client's connection open on the wire and never opened for its app.
            let has_events = slot.held.is_some() || slot.recv.len > 0 || slot.conn.has_event();
            if stalled || has_events || slot.conn.is_closed() {
                slot.ready = true;
                self.ready.push(index);
            }
            self.sync_timer(index);
        }
        // Connections made ready meanwhile (none today) stay in `ready`.
        self.ready_next.clear();
        sent
    }

    /// Ends the oldest connection still in TIME-WAIT to free its slot; `false` if none is.
    fn evict_time_wait(&mut self, pool: &mut PacketPool) -> bool {
        while let Some(index) = self.time_wait.pop_front() {
            let idle = self
                .table
                .get(index)
                .is_some_and(|slot| slot.finished && slot.conn.state() == State::TimeWait);
            if idle {
                self.remove(pool, index);
                self.counters.time_wait_evicted += 1;
                return true;
            }
        }
        false
    }

    /// Removes a connection: its buffers go back to the pool, its timer is cancelled.
    fn remove(&mut self, pool: &mut PacketPool, index: ConnIndex) {
        let Some(mut slot) = self.table.remove(index) else {
            return;
        };
        if let Some(key) = slot.timer.take() {
            let _ = self.timers.cancel(key);
        }
        let c = slot.conn.counters();
        self.counters.retransmits += c.retransmits;
        self.counters.rto_expirations += c.rto_expirations;
        self.counters.fast_recoveries += c.fast_recoveries;
        self.counters.rack_losses += c.rack_losses;
        self.counters.rack_lost_retransmits += c.rack_lost_retransmits;
        self.counters.tlp_probes += c.tlp_probes;
        self.counters.tlp_recoveries += c.tlp_recoveries;
        self.counters.challenge_acks += c.challenge_acks;
        self.counters.challenge_acks_suppressed += c.challenge_acks_suppressed;
        slot.send.free_all(pool);
        slot.recv.free_all(pool);
        slot.conn.drain(&mut DropSink { pool });
        self.ready.retain(|&i| i != index);
    }

    /// Returns every buffer to the pool (engine shutdown).
    pub fn shutdown(&mut self, pool: &mut PacketPool) {
        let all: Vec<ConnIndex> = self.table.iter().map(|(i, _, _)| i).collect();
        for index in all {
            self.remove(pool, index);
        }
    }
}

/// A sink that frees everything (a closing connection's parked data).
struct DropSink<'a> {
    pool: &'a mut PacketPool,
}

impl RecvSink<PacketBuf> for DropSink<'_> {
    fn deliver(&mut self, data: PacketBuf) {
        self.pool.free(data);
    }
    fn discard(&mut self, data: PacketBuf) {
        self.pool.free(data);
    }
}

fn new_slot(conn: Connection<PacketBuf>, remote: SocketAddrV4, origin: Origin) -> Slot {
    Slot {
        conn,
        remote,
        origin,
        visible: false,
        established: false,
        finished: false,
        held: None,
        send: SendQueue::default(),
        recv: RecvQueue::default(),
        timer: None,
        ready: false,
    }
}

fn ports_of(tuple: &FourTuple) -> Ports {
    Ports {
        local: tuple.local.port(),
        remote: tuple.remote.port(),
    }
}

fn listen_error(port: u16, error: ListenError) -> CommandError {
    let reason = match error {
        ListenError::PortZero => "port 0 means no port",
        ListenError::AlreadyListening { .. } => "already listening",
        ListenError::Full { .. } => "too many listeners",
        ListenError::ZeroBacklog => "a backlog of 0 accepts nothing",
        _ => "refused",
    };
    CommandError::Bind { port, reason }
}

/// Splits `chain` after `bytes` bytes: (the first `bytes`, the rest). A frame cut in two keeps
/// its head; its tail is copied into a fresh buffer for the rest. When no buffer is free the
/// cut moves back to the frame boundary.
fn split_chain(
    pool: &mut PacketPool,
    chain: BufChain,
    bytes: u32,
    copy: &mut [u8],
) -> (Option<BufChain>, Option<BufChain>) {
    if bytes as usize >= chain.len() {
        return (Some(chain), None);
    }
    if bytes == 0 {
        return (None, Some(chain));
    }
    let mut left = bytes as usize;
    let mut taken: Option<BufChain> = None;
    let mut rest = Some(chain);
    while left > 0 {
        let Some(r) = rest.take() else {
            break;
        };
        let (mut buf, tail) = pool.chain_pop_front(r);
        if buf.len() <= left {
            left -= buf.len();
            push_back(pool, &mut taken, buf);
            rest = tail;
            continue;
        }
        // Cut inside this frame: its tail goes to a fresh buffer.
        let Some(mut fresh) = pool.alloc_for(FrameOwner::App) else {
            // No buffer: give the whole frame back with the rest.
            let mut front = BufChain::from(buf);
            if let Some(tail) = tail {
                append(pool, &mut front, tail);
            }
            rest = Some(front);
            break;
        };
        let tail_len = buf.len() - left;
        let src = pool.data(&buf);
        copy[..tail_len].copy_from_slice(&src[left..]);
        let _ = pool.set_len(&mut fresh, tail_len);
        pool.data_mut(&fresh).copy_from_slice(&copy[..tail_len]);
        buf.truncate(left);
        push_back(pool, &mut taken, buf);
        let mut front = BufChain::from(fresh);
        if let Some(tail) = tail {
            append(pool, &mut front, tail);
        }
        rest = Some(front);
        left = 0;
    }
    (taken, rest)
}

fn push_back(pool: &mut PacketPool, chain: &mut Option<BufChain>, buf: PacketBuf) {
    match chain {
        None => *chain = Some(BufChain::from(buf)),
        Some(c) => {
            if let Err((_, buf)) = pool.chain_push(c, buf) {
                pool.free(buf);
            }
        }
    }
}

fn append(pool: &mut PacketPool, front: &mut BufChain, tail: BufChain) {
    let mut r = Some(tail);
    while let Some(c) = r {
        let (buf, t) = pool.chain_pop_front(c);
        if let Err((_, buf)) = pool.chain_push(front, buf) {
            pool.free(buf);
        }
        r = t;
    }
}

/// Bytes of one connection's state in the table: the TCB, its send and receive queues, the
/// table's slot overhead. Fixed at compile time; the table holds `connections_max` of them.
pub const fn connection_bytes() -> usize {
    melange_tcp::table::slot_overhead_bytes::<Slot>() + std::mem::size_of::<Slot>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_state_has_a_fixed_documented_size() {
        let tcb = std::mem::size_of::<Connection<PacketBuf>>();
        let total = connection_bytes();
        eprintln!(
            "TCB {tcb} bytes, slot {} bytes, with table overhead {total} bytes",
            std::mem::size_of::<Slot>()
        );
        // ARCHITECTURE.md quotes these; keep them in step.
        assert!(total <= 3840, "a connection costs {total} bytes");
    }
}
