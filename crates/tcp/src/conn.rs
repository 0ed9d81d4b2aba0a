//! One TCP connection's state machine (RFC 9293), sans-IO and zero-copy.
//!
//! # Shape
//!
//! A [`Connection`] is a transmission control block: sequence variables, the negotiated
//! options, the RTT estimator, the congestion controller, the SACK scoreboard, the timers and a
//! bounded out-of-order queue. It holds no app bytes for sending: IX's contract has the stack
//! keep the app's own buffers until they are acknowledged, and those buffers live with the
//! transport, next to the connection. The core only counts: [`Connection::send_room`] says how
//! many bytes the peer's window, the congestion window and the per-connection send limit take
//! now, [`Connection::handle_send`] records that the transport queued them, and each
//! [`Transmit`] names the stream offset of the bytes it carries, which the transport copies
//! from its queue into the frame (or sends in place). Acknowledged bytes come back as
//! [`ConnEvent::Sent`], so the transport returns the app's buffers.
//!
//! Received payloads are generic ([`Payload`]; the engine's is a pool frame, tests use plain
//! byte vectors): a segment's payload is trimmed in place to what the window accepts and then
//! either handed to the transport's [`RecvSink`] in order, with no copy, or parked in the
//! out-of-order queue ([`OOO_SEGMENTS_MAX`] entries) until the hole fills. Everything lent to
//! the app and everything parked counts against the connection's receive budget
//! ([`ConnConfig::recv_buffer_bytes`]) until [`Connection::handle_recv_done`]: an app that holds
//! buffers shrinks its own window, never the pool of others.
//!
//! The alternative, per-connection byte rings that copy every payload in and out (smoltcp's
//! way), was rejected: it costs two copies per byte and a ring per connection sized for the
//! worst case.
//!
//! # Call order
//!
//! 1. Create with [`Connection::connect`] (active open, SYN-SENT), [`Connection::accept_syn`]
//!    (passive open from a listener, SYN-RECEIVED) or [`Connection::from_cookie`] (a SYN
//!    cookie's final ACK, ESTABLISHED; then pass that ACK to `handle_segment` as well).
//! 2. For each segment of this connection's 4-tuple, [`Connection::handle_segment`]; its
//!    [`Verdict`] says whether it was used and, if not, why (for counters).
//! 3. App commands: [`Connection::send_room`] / [`Connection::handle_send`],
//!    [`Connection::handle_recv_done`], [`Connection::close`], [`Connection::abort`], options.
//! 4. [`Connection::poll_transmit`] until `None`: each [`Transmit`] is one segment to emit.
//! 5. [`Connection::poll_event`] until `None`.
//! 6. [`Connection::poll_at`] is the earliest deadline; call [`Connection::handle_timeout`] at
//!    or after it (early calls do nothing harmful).
//! 7. Once [`Connection::is_closed`], drop it (drain the out-of-order queue with
//!    [`Connection::drain`] first).
//!
//! Nothing here allocates, reads a clock or panics on any segment, command or clock value: the
//! fuzz target `tcp_conn` drives arbitrary sequences of all three.
//!
//! # What is implemented (RFC sections on the lines that implement them)
//!
//! Three-way handshake both ways and simultaneous open; MSS, window scaling, timestamps
//! (PAWS, RFC 7323), SACK-permitted and SACK blocks with D-SACK (RFC 2018, 2883); RTO with
//! Karn's rule and backoff (RFC 6298; samples come from one timed segment per round trip, at
//! nanosecond precision, since the timestamp clock ticks in milliseconds); fast retransmit and
//! recovery, SACK-based (RFC 6675) or NewReno (RFC 6582, with Limited Transmit, RFC 3042,
//! and §4.2's ACK heuristic after timeouts); on SACK connections, RACK-TLP loss detection
//! (RFC 8985, [`crate::rack`]; [`ConnConfig::rack_tlp`] turns it off); congestion control
//! behind [`crate::cc`]; delayed ACKs with quick ACKs at start and on out-of-order data; Nagle
//! (off by default); sender and receiver silly-window avoidance; zero-window probes;
//! keepalive; orderly close in every state pair, TIME-WAIT with a configurable 2 MSL and
//! timestamp-based reuse; abortive close; RFC 5961's RST, SYN and ACK checks with
//! rate-limited challenge ACKs.
//!
//! # Loss recovery with RACK-TLP
//!
//! With SACK and RACK on, RACK alone says what is lost (RFC 8985 §9.2 rules out mixing in RFC
//! 6675's DupThresh): its marks start a fast recovery, the recovery resends them lowest first
//! (lost retransmissions included, which RFC 6675 leaves to the timer), and the pipe counts
//! neither SACKed nor lost bytes. The recovery otherwise stays RFC 6675's: its recovery
//! point, new data by NextSeg's rule 2, the rescue retransmission, and one window reduction,
//! plus a second when a retransmission is lost (RFC 8985 §9.3, there being no PRR). After a
//! timeout go-back-N resends from SND.UNA as before, and what RACK finds lost behind it goes
//! first. Two more timers join the others in [`Connection::poll_at`], so the engine still
//! keeps one deadline per connection: RACK's reordering timer and TLP's probe timeout (also
//! armed in a fast recovery, beyond the RFC: see [`crate::rack`]). The RTO stays the backstop
//! behind both. Connections without SACK keep NewReno recovery unchanged.
//!
//! Not implemented: urgent data (the URG flag and pointer are ignored, RFC 6093 recommends
//! against its use), ECN negotiation, TCP Fast Open, Proportional Rate Reduction (RFC 6937),
//! and the optional rule 4 of RFC 6675's NextSeg.

use crate::cc::{AckSample, CcError, Congestion, CongestionControl, CongestionKind};
use crate::cookie::CookieParams;
use crate::rack::Rack;
use crate::rtt::{RttConfig, RttError, RttEstimator};
use crate::sack::{
    NextSeg, SackReceiver, Scoreboard, SeqRange, SeqRangeSet, RANGES_MAX, SACK_BLOCKS_MAX,
};
use crate::seq::{segment_acceptable, SeqNumber};
use melange_core::contract::CloseReason;
use melange_wire::tcp::{Flags, Repr};
use thiserror::Error;

/// Most out-of-order segments one connection parks; more are dropped (and retransmitted by the
/// peer). Bounds the frames a peer can pin by sending holes.
pub const OOO_SEGMENTS_MAX: usize = 32;

/// Ticks of our timestamp clock (RFC 7323 §5.4: between 1 ms and 1 s per tick).
pub const TS_TICK_NS: u64 = 1_000_000;

/// RFC 7323 §5.5: a TS.Recent older than 24 days is invalid (the peer's clock may have
/// wrapped), so PAWS does not apply against it.
pub const PAWS_IDLE_NS: u64 = 24 * 86_400 * 1_000_000_000;

/// Challenge ACKs (RFC 5961 §7) one connection sends per second at most.
pub const CHALLENGE_ACKS_PER_SECOND: u32 = 10;

/// Segments ACKed at once (quick ACK mode) at the start of a connection, as Linux does, so
/// the peer's slow start is not slowed by our delayed ACKs.
pub const QUICK_ACKS_INITIAL: u32 = 16;
/// How long a TIME-WAIT connection must have heard nothing from its peer before a new active
/// open may take its 4-tuple (see [`Connection::time_wait_reusable_by_connect`]): Linux's one second.
pub const TIME_WAIT_REUSE_IDLE_NS: u64 = 1_000_000_000;

/// Duplicate ACKs sent at most for the out-of-order segments of one batch: three make a
/// non-SACK peer retransmit at once (RFC 5681 §3.2).
pub const DUP_ACKS_OWED_MAX: u32 = 3;

/// The MSS assumed when the peer sends none (RFC 9293 §3.7.1).
pub const MSS_DEFAULT: u16 = 536;

/// The smallest MSS we accept from a peer; smaller values are raised to it (Linux's
/// `TCP_MIN_SND_MSS` guards against the same resource attack).
pub const MSS_MIN: u16 = 88;

/// The largest receive or send budget of one connection: RFC 7323 §2.3's largest window.
pub const BUFFER_BYTES_MAX: u32 = 1 << 30;

/// One second in nanoseconds.
const SECOND_NS: u64 = 1_000_000_000;

/// A connection's settings, checked by [`ConnConfig::validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnConfig {
    /// The MSS we advertise and the largest payload we send per segment before options:
    /// the interface MTU minus 40.
    pub mss: u16,
    /// The receive budget: bytes lent to the app plus bytes parked out of order; the window we
    /// advertise never exceeds what is left of it.
    pub recv_buffer_bytes: u32,
    /// The send limit: bytes accepted from the app and not yet acknowledged.
    pub send_buffer_bytes: u32,
    /// Offer window scaling (RFC 7323 §2).
    pub window_scaling: bool,
    /// Offer SACK (RFC 2018).
    pub sack: bool,
    /// Offer timestamps (RFC 7323 §3).
    pub timestamps: bool,
    /// The retransmission timer's tunables.
    pub rtt: RttConfig,
    /// The congestion controller.
    pub congestion: CongestionKind,
    /// Disable Nagle's algorithm (the default: request/response traffic wants it off).
    pub nodelay: bool,
    /// Delay of a delayed ACK; 0 ACKs every segment at once.
    pub delayed_ack_ns: u64,
    /// TIME-WAIT's duration (2 MSL).
    pub time_wait_ns: u64,
    /// How long FIN-WAIT-2 waits for the peer's FIN before giving up; `None` waits forever.
    pub fin_wait2_ns: Option<u64>,
    /// Keepalive probes; `None` disables them.
    pub keepalive: Option<Keepalive>,
    /// SYN (or SYN-ACK) retransmissions before an open fails.
    pub syn_retries: u32,
    /// Data retransmissions (timeouts in a row) before the connection fails.
    pub retries_max: u32,
    /// RACK-TLP loss detection (RFC 8985, [`crate::rack`]) on connections that negotiated
    /// SACK: losses by the clock, lost retransmissions found without a timeout, tail loss
    /// probes. Off, SACK recovery infers loss from RFC 6675's DupThresh alone. Connections
    /// without SACK always use NewReno recovery (RFC 6582).
    pub rack_tlp: bool,
}

/// Keepalive settings (RFC 9293 §3.8.4; Linux's `tcp_keepalive_*` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe.
    pub idle_ns: u64,
    /// Time between unanswered probes.
    pub interval_ns: u64,
    /// Unanswered probes before the connection is declared dead.
    pub probes: u32,
}

impl Keepalive {
    /// Linux's defaults' shape with an idle time of `idle_ns`: probes every 75 s, 9 of them.
    pub const fn with_idle(idle_ns: u64) -> Self {
        Keepalive {
            idle_ns,
            interval_ns: 75 * SECOND_NS,
            probes: 9,
        }
    }
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            mss: 1460,
            recv_buffer_bytes: 256 * 1024,
            send_buffer_bytes: 256 * 1024,
            window_scaling: true,
            sack: true,
            timestamps: true,
            rtt: RttConfig::default(),
            congestion: CongestionKind::default(),
            nodelay: true,
            delayed_ack_ns: 1_000_000,
            time_wait_ns: 60 * SECOND_NS,
            fin_wait2_ns: Some(60 * SECOND_NS),
            keepalive: None,
            syn_retries: 6,
            retries_max: 15,
            rack_tlp: true,
        }
    }
}

/// Why a [`ConnConfig`] was refused.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// The MSS is below [`MSS_MIN`] or leaves no room for options; use the MTU minus 40.
    #[error("MSS {0} is below {MSS_MIN}")]
    Mss(u16),
    /// A buffer is smaller than one MSS or above [`BUFFER_BYTES_MAX`]; size it between.
    #[error("{which} buffer of {bytes} bytes is outside [MSS, {BUFFER_BYTES_MAX}]")]
    Buffer {
        /// "receive" or "send".
        which: &'static str,
        /// The size given.
        bytes: u32,
    },
    /// A keepalive setting is zero; give positive durations and at least one probe.
    #[error("keepalive idle, interval and probes must all be positive")]
    Keepalive,
    /// The retransmission timer's settings are invalid.
    #[error("retransmission timer: {0}")]
    Rtt(#[from] RttError),
    /// The congestion controller refused the MSS.
    #[error("congestion control: {0}")]
    Congestion(#[from] CcError),
}

impl ConnConfig {
    /// Checks every field; a connection is only built from a valid configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.mss < MSS_MIN {
            return Err(ConfigError::Mss(self.mss));
        }
        for (which, bytes) in [
            ("receive", self.recv_buffer_bytes),
            ("send", self.send_buffer_bytes),
        ] {
            if bytes < u32::from(self.mss) || bytes > BUFFER_BYTES_MAX {
                return Err(ConfigError::Buffer { which, bytes });
            }
        }
        if let Some(k) = self.keepalive {
            if k.idle_ns == 0 || k.interval_ns == 0 || k.probes == 0 {
                return Err(ConfigError::Keepalive);
            }
        }
        RttEstimator::new(self.rtt)?;
        Congestion::new(self.congestion, u32::from(self.mss))?;
        Ok(())
    }

    /// The window scale we offer: the smallest shift that lets the receive budget be
    /// advertised (RFC 7323 §2.3), or `None` without window scaling.
    pub fn window_shift(&self) -> Option<u8> {
        if !self.window_scaling {
            return None;
        }
        let mut shift = 0u8;
        while shift < melange_wire::tcp::WINDOW_SCALE_MAX
            && (self.recv_buffer_bytes >> shift) > 0xFFFF
        {
            shift += 1;
        }
        Some(shift)
    }
}

/// A received payload the connection can trim in place and hand on without copying.
pub trait Payload {
    /// Bytes in the payload.
    fn len(&self) -> usize;
    /// Whether the payload is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Drops the first `n` bytes (`n <= len`).
    fn trim_front(&mut self, n: usize);
    /// Keeps the first `len` bytes (`len <= self.len()`).
    fn truncate(&mut self, len: usize);
}

impl Payload for melange_core::PacketBuf {
    fn len(&self) -> usize {
        melange_core::PacketBuf::len(self)
    }
    fn trim_front(&mut self, n: usize) {
        self.advance(n);
    }
    fn truncate(&mut self, len: usize) {
        melange_core::PacketBuf::truncate(self, len);
    }
}

impl Payload for Vec<u8> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn trim_front(&mut self, n: usize) {
        self.drain(..n.min(Vec::len(self)));
    }
    fn truncate(&mut self, len: usize) {
        Vec::truncate(self, len);
    }
}

/// Where [`Connection::handle_segment`] puts payloads: in order to the app, or back to the
/// pool.
pub trait RecvSink<B> {
    /// In-order bytes for the app, lent until it calls `handle_recv_done`.
    fn deliver(&mut self, data: B);
    /// A payload (or what is left of one) that carries nothing new: free it.
    fn discard(&mut self, data: B);
}

/// The states of RFC 9293 §3.3.2, without LISTEN (a listener is not a connection here; see
/// [`crate::listen`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Our SYN is out; waiting for the peer's SYN.
    SynSent,
    /// The peer's SYN arrived and our SYN-ACK is out.
    SynReceived,
    /// Open both ways.
    Established,
    /// We closed; our FIN is not yet acknowledged.
    FinWait1,
    /// We closed and our FIN is acknowledged; the peer may still send.
    FinWait2,
    /// The peer closed; we may still send.
    CloseWait,
    /// Both closed at once; our FIN is not yet acknowledged.
    Closing,
    /// The peer closed, then we did; waiting for the ACK of our FIN.
    LastAck,
    /// Both closed; waiting 2 MSL so that old segments die out.
    TimeWait,
    /// Gone.
    Closed,
}

impl State {
    /// The state's RFC name.
    pub const fn name(self) -> &'static str {
        match self {
            State::SynSent => "SYN-SENT",
            State::SynReceived => "SYN-RECEIVED",
            State::Established => "ESTABLISHED",
            State::FinWait1 => "FIN-WAIT-1",
            State::FinWait2 => "FIN-WAIT-2",
            State::CloseWait => "CLOSE-WAIT",
            State::Closing => "CLOSING",
            State::LastAck => "LAST-ACK",
            State::TimeWait => "TIME-WAIT",
            State::Closed => "CLOSED",
        }
    }
    /// States in which the peer's data is accepted (RFC 9293 §3.10.7.4, seventh step).
    const fn receives_data(self) -> bool {
        matches!(self, State::Established | State::FinWait1 | State::FinWait2)
    }
    /// States in which our sending side is open or draining (data may still go out).
    const fn sends_data(self) -> bool {
        matches!(
            self,
            State::Established
                | State::CloseWait
                | State::FinWait1
                | State::LastAck
                | State::Closing
        )
    }
}

/// Something the app (through the transport) must learn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnEvent {
    /// The handshake completed.
    Established,
    /// `bytes` more app bytes are acknowledged (possibly 0: the send room grew after a send
    /// was cut short).
    Sent {
        /// Newly acknowledged app bytes.
        bytes: u32,
    },
    /// The peer sent FIN: no more data will arrive.
    PeerClosed,
    /// The connection is over for the app (it may linger in TIME-WAIT).
    Closed(CloseReason),
}

/// Why a segment was not used, for the transport's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Outside the receive window (an ACK was sent, RFC 9293 §3.10.7.4).
    OutOfWindow,
    /// PAWS: an old timestamp (RFC 7323 §5.3).
    Paws,
    /// A RST that does not match RCV.NXT (RFC 5961 §3.2; in the window it draws a challenge
    /// ACK).
    RstInvalid,
    /// A SYN on a synchronized connection (RFC 5961 §4: challenge ACK).
    SynInWindow,
    /// No ACK bit where one is required.
    NoAck,
    /// An ACK for data never sent, or too old (RFC 5961 §5.2).
    BadAck,
    /// The out-of-order queue was full.
    OooQueueFull,
    /// The connection is closed.
    Closed,
    /// A segment with no place in SYN-SENT (no SYN, or an unacceptable ACK).
    SynSentUnexpected,
}

/// What [`Connection::handle_segment`] did with a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Processed.
    Accepted,
    /// Not used, for this reason (any payload was discarded through the sink).
    Dropped(DropReason),
    /// A new SYN for the tuple of a connection in TIME-WAIT that may reuse it (RFC 9293
    /// §3.6.1 / RFC 6191): the connection is now closed; hand the SYN to the listener.
    TimeWaitReuse,
}

/// One segment to emit: the header, and where its payload comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// The header (ports, numbers, flags, window, options) and `payload_len`.
    pub repr: Repr,
    /// Stream offset of the first payload byte: 0 is the first byte the app ever queued.
    pub payload_offset: u64,
}

/// Counters of one connection, summed by the transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnCounters {
    /// Segments sent (all kinds).
    pub segments_sent: u64,
    /// Data segments retransmitted (any cause).
    pub retransmits: u64,
    /// Retransmission timeouts.
    pub rto_expirations: u64,
    /// Fast recovery episodes.
    pub fast_recoveries: u64,
    /// Duplicate ACKs received.
    pub dup_acks: u64,
    /// Out-of-order segments parked.
    pub ooo_segments: u64,
    /// Challenge ACKs sent (RFC 5961).
    pub challenge_acks: u64,
    /// Challenge ACKs suppressed by the rate limit.
    pub challenge_acks_suppressed: u64,
    /// Zero-window probes sent.
    pub window_probes: u64,
    /// Keepalive probes sent.
    pub keepalive_probes: u64,
    /// D-SACK blocks received (spurious retransmissions).
    pub dsacks_received: u64,
    /// Times HyStart++ saw the RTT rise and entered Conservative Slow Start (RFC 9406).
    pub hystart_css_entries: u64,
    /// Initial slow starts HyStart++ ended before any loss (CSS ran its rounds).
    pub hystart_exits: u64,
    /// Segments RACK marked lost (RFC 8985 §6.2), retransmissions among them included.
    pub rack_losses: u64,
    /// Retransmitted segments RACK found lost again, each repaired without a timeout.
    pub rack_lost_retransmits: u64,
    /// Tail loss probes sent (RFC 8985 §7.3).
    pub tlp_probes: u64,
    /// Losses a probe repaired, detected afterwards and answered with a window reduction
    /// (RFC 8985 §7.4).
    pub tlp_recoveries: u64,
}

/// What an ACK-needing event asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum AckNeed {
    None,
    Delayed,
    Now,
}

/// A retransmission the next `poll_transmit` sends before anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PendingRetransmit {
    range: SeqRange,
}

/// One TCP connection. See the module documentation.
#[derive(Debug)]
pub struct Connection<B> {
    state: State,
    local_port: u16,
    remote_port: u16,
    config: ConnConfig,

    // Send sequence space (RFC 9293 §3.3.1).
    iss: SeqNumber,
    snd_una: SeqNumber,
    /// Next sequence number to send; below `snd_max` while resending after a timeout.
    snd_nxt: SeqNumber,
    /// One past the highest sequence number ever sent.
    snd_max: SeqNumber,
    /// The peer's window, scaled, as of the last window update.
    snd_wnd: u32,
    snd_wl1: SeqNumber,
    snd_wl2: SeqNumber,
    /// The largest window the peer ever offered (RFC 5961 §5's MAX.SND.WND, and the sender
    /// SWS rule).
    snd_wnd_max: u32,
    /// One past the last app byte queued.
    snd_buf_end: SeqNumber,
    /// App bytes acknowledged since the start (the stream offset of `snd_una` once open).
    snd_una_offset: u64,
    /// The app closed its sending side: a FIN follows the data, at `snd_buf_end`.
    fin_queued: bool,
    /// A send was cut short; report room with a `Sent` event when it grows.
    want_room: bool,
    /// The peer's window-scale shift, applied to its windows.
    snd_shift: u8,
    /// Our shift, applied to the windows we advertise.
    rcv_shift: u8,
    /// The peer's MSS (the largest payload plus options it takes), clamped.
    peer_mss: u16,

    // Receive sequence space.
    irs: SeqNumber,
    rcv_nxt: SeqNumber,
    /// The right edge we advertised; never moves left (RFC 9293 §3.8.6.2.2).
    rcv_adv: SeqNumber,
    /// Bytes lent to the app, not yet given back.
    rcv_lent: u32,
    /// Bytes parked in the out-of-order queue.
    rcv_parked: u32,
    /// The peer's FIN, seen out of order.
    fin_seq: Option<SeqNumber>,
    /// RCV.NXT in the last ACK we sent (RFC 7323 §4.3's Last.ACK.sent).
    last_ack_sent: SeqNumber,
    ooo: [Option<(SeqNumber, B)>; OOO_SEGMENTS_MAX],
    ooo_len: usize,
    sack_rx: SackReceiver,

    // Options in force.
    ts_enabled: bool,
    sack_enabled: bool,
    ts_recent: u32,
    ts_recent_ns: u64,
    /// Added to our timestamp clock, so our TSvals do not reveal uptime (Linux's ts offset).
    ts_offset: u32,

    // Loss recovery and congestion control.
    rtt: RttEstimator,
    /// The one timed segment in flight: its end and the time it was sent (Karn's rule: never a
    /// retransmitted one).
    rtt_probe: Option<(SeqNumber, u64)>,
    /// SND.MAX and our TSval clock at the first of the timeouts in a row, while the RTO is
    /// backed off.
    backoff_mark: Option<(SeqNumber, u32)>,
    cc: Congestion,
    scoreboard: Scoreboard,
    /// RACK-TLP's send log and state (used while [`Connection::rack_active`]).
    rack: Rack,
    /// This recovery already answered a lost retransmission with a second reduction (RFC
    /// 8985 §9.3: once per recovery).
    rexmit_loss_reacted: bool,
    /// A tail loss probe is due (RFC 8985 §7.3): the next `poll_transmit` sends it.
    tlp_due: bool,
    dup_acks: u32,
    in_fast_recovery: bool,
    /// RFC 6582's `recover`: `snd_max` at the start of the last recovery or timeout.
    recover: Option<SeqNumber>,
    /// How far the last ACK that advanced SND.UNA moved it (RFC 6582 §4.2's
    /// highest_ack - prev_highest_ack).
    last_ack_advance: u32,
    pending_rexmit: Option<PendingRetransmit>,
    /// Time the last data segment was sent, for RFC 5681 §4.1's idle restart.
    last_data_sent_ns: u64,
    /// Whether the last window of data was limited by cwnd (RFC 7661).
    cwnd_limited: bool,

    // Timers (absolute deadlines).
    rto_at: Option<u64>,
    /// RACK's reordering timer (RFC 8985 §6.2 step 5).
    rack_at: Option<u64>,
    /// TLP's probe timeout (RFC 8985 §7.2).
    tlp_at: Option<u64>,
    delack_at: Option<u64>,
    persist_at: Option<u64>,
    keepalive_at: Option<u64>,
    close_at: Option<u64>,
    /// Retransmissions of the SYN, or timeouts in a row of data or probes.
    timeouts: u32,
    persist_backoff: u32,
    keepalive_sent: u32,

    // ACK generation.
    ack_need: AckNeed,
    quick_acks: u32,
    /// Full-sized segments received since our last ACK.
    segs_unacked: u32,
    challenge_window_ns: u64,
    challenge_count: u32,
    /// Duplicate ACKs owed for out-of-order segments of this batch, sent as pure ACKs.
    dup_acks_owed: u32,
    /// A keepalive or zero-window probe (SEG.SEQ = SND.UNA - 1) is due.
    probe_due: bool,
    /// SYN or SYN-ACK must be (re)sent.
    syn_due: bool,
    /// A RST must be sent (abort), with this sequence number.
    rst_due: Option<SeqNumber>,
    /// We sent the first SYN (an active open; simultaneous opens are active too).
    active_open: bool,
    /// Both SYNs carried window scale (RFC 7323 §2.2).
    wscale_ok: bool,
    /// A D-SACK block waits for the next ACK.
    dsack_pending: bool,

    // Events.
    ev_established: bool,
    ev_peer_closed: bool,
    ev_closed: Option<CloseReason>,
    acked_unreported: u64,
    /// Room grew after a cut-short send: report it with a `Sent` event.
    report_room: bool,
    /// `Closed` was reported; later closes (TIME-WAIT's end) report nothing.
    closed_reported: bool,
    counters: ConnCounters,
}

/// The ports of a connection: ours and the peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Our port.
    pub local: u16,
    /// The peer's port.
    pub remote: u16,
}

impl<B: Payload> Connection<B> {
    fn blank(
        config: ConnConfig,
        ports: Ports,
        iss: SeqNumber,
        now_ns: u64,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let mss = u32::from(config.mss);
        Ok(Connection {
            state: State::Closed,
            local_port: ports.local,
            remote_port: ports.remote,
            config,
            iss,
            snd_una: iss,
            snd_nxt: iss,
            snd_max: iss,
            snd_wnd: 0,
            snd_wl1: SeqNumber(0),
            snd_wl2: iss,
            snd_wnd_max: 0,
            snd_buf_end: iss + 1u32,
            snd_una_offset: 0,
            fin_queued: false,
            want_room: false,
            snd_shift: 0,
            rcv_shift: 0,
            peer_mss: MSS_DEFAULT,
            irs: SeqNumber(0),
            rcv_nxt: SeqNumber(0),
            rcv_adv: SeqNumber(0),
            rcv_lent: 0,
            rcv_parked: 0,
            fin_seq: None,
            last_ack_sent: SeqNumber(0),
            ooo: std::array::from_fn(|_| None),
            ooo_len: 0,
            sack_rx: SackReceiver::new(),
            ts_enabled: false,
            sack_enabled: false,
            ts_recent: 0,
            ts_recent_ns: now_ns,
            ts_offset: iss.0,
            rtt: RttEstimator::new(config.rtt)?,
            rtt_probe: None,
            backoff_mark: None,
            cc: Congestion::new(config.congestion, mss)?,
            scoreboard: Scoreboard::new(iss, mss),
            rack: Rack::new(iss),
            rexmit_loss_reacted: false,
            tlp_due: false,
            dup_acks: 0,
            in_fast_recovery: false,
            recover: None,
            last_ack_advance: 0,
            pending_rexmit: None,
            last_data_sent_ns: now_ns,
            cwnd_limited: false,
            rto_at: None,
            rack_at: None,
            tlp_at: None,
            delack_at: None,
            persist_at: None,
            keepalive_at: None,
            close_at: None,
            timeouts: 0,
            persist_backoff: 0,
            keepalive_sent: 0,
            ack_need: AckNeed::None,
            quick_acks: QUICK_ACKS_INITIAL,
            segs_unacked: 0,
            challenge_window_ns: now_ns,
            challenge_count: 0,
            dup_acks_owed: 0,
            probe_due: false,
            syn_due: false,
            rst_due: None,
            active_open: false,
            wscale_ok: false,
            dsack_pending: false,
            ev_established: false,
            ev_peer_closed: false,
            ev_closed: None,
            acked_unreported: 0,
            report_room: false,
            closed_reported: false,
            counters: ConnCounters::default(),
        })
    }

    /// An active open: a connection in SYN-SENT whose SYN goes out with the next
    /// `poll_transmit`. `iss` comes from [`crate::isn::IsnGenerator`].
    pub fn connect(
        config: ConnConfig,
        ports: Ports,
        iss: u32,
        now_ns: u64,
    ) -> Result<Self, ConfigError> {
        let mut conn = Self::blank(config, ports, SeqNumber(iss), now_ns)?;
        conn.state = State::SynSent;
        conn.active_open = true;
        conn.syn_due = true;
        conn.rcv_shift = config.window_shift().unwrap_or(0);
        Ok(conn)
    }

    /// A passive open: the listener took `syn` (a SYN without ACK for this connection's
    /// tuple) into its SYN queue; the connection is in SYN-RECEIVED and its SYN-ACK goes out
    /// with the next `poll_transmit`. Data on the SYN is not kept (the peer sends it again).
    pub fn accept_syn(
        config: ConnConfig,
        ports: Ports,
        iss: u32,
        now_ns: u64,
        syn: &Repr,
    ) -> Result<Self, ConfigError> {
        let mut conn = Self::blank(config, ports, SeqNumber(iss), now_ns)?;
        conn.state = State::SynReceived;
        conn.syn_due = true;
        conn.take_syn_options(now_ns, syn);
        conn.irs = SeqNumber(syn.seq);
        conn.rcv_nxt = conn.irs + 1u32;
        conn.last_ack_sent = conn.rcv_nxt;
        // The SYN-ACK's window is not scaled (RFC 7323 §2.2).
        conn.rcv_adv = conn.rcv_nxt + conn.window_to_advertise().min(0xFFFF);
        // RFC 9293 §3.10.7.2: the SYN's window is never scaled.
        conn.update_send_window(SeqNumber(syn.seq), conn.iss, u32::from(syn.window_len));
        conn.snd_wl1 = SeqNumber(syn.seq);
        Ok(conn)
    }

    /// A connection established by a SYN cookie's final ACK `ack` (already validated by the
    /// listener, which decoded `params`). The caller passes `ack` to
    /// [`Connection::handle_segment`] next, so its data and window are taken.
    pub fn from_cookie(
        config: ConnConfig,
        ports: Ports,
        now_ns: u64,
        ack: &Repr,
        params: CookieParams,
    ) -> Result<Self, ConfigError> {
        let seg_ack = ack.ack.unwrap_or(0);
        let iss = SeqNumber(seg_ack.wrapping_sub(1));
        let mut conn = Self::blank(config, ports, iss, now_ns)?;
        conn.state = State::Established;
        conn.ev_established = true;
        conn.snd_una = iss + 1u32;
        conn.snd_nxt = conn.snd_una;
        conn.snd_max = conn.snd_una;
        conn.snd_buf_end = conn.snd_una;
        conn.irs = SeqNumber(ack.seq.wrapping_sub(1));
        conn.rcv_nxt = SeqNumber(ack.seq);
        conn.last_ack_sent = conn.rcv_nxt;
        conn.peer_mss = params.mss.max(MSS_MIN);
        // The cookie's timestamp bits say what the SYN offered (module doc of `cookie`).
        conn.ts_enabled = config.timestamps && ack.timestamps.is_some();
        if let Some((tsval, tsecr)) = ack.timestamps {
            conn.ts_recent = tsval;
            conn.ts_recent_ns = now_ns;
            // Keep our clock continuous with the TSval the cookie SYN-ACK carried.
            conn.ts_offset = tsecr.wrapping_sub(ts_clock(now_ns));
        }
        conn.sack_enabled = config.sack && params.sack_permitted && conn.ts_enabled;
        match (params.window_scale, config.window_shift()) {
            (Some(peer), Some(ours)) if conn.ts_enabled => {
                conn.snd_shift = peer;
                conn.rcv_shift = ours;
                conn.wscale_ok = true;
            }
            _ => {}
        }
        conn.finish_handshake_setup(now_ns);
        conn.snd_wl1 = SeqNumber(ack.seq.wrapping_sub(1));
        conn.snd_wl2 = iss;
        conn.rcv_adv = conn.rcv_nxt + conn.window_to_advertise();
        Ok(conn)
    }

    /// The state.
    pub fn state(&self) -> State {
        self.state
    }
    /// For a connect that would take this connection's 4-tuple: `Some(snd_nxt)` when this
    /// connection is in TIME-WAIT, its app was told it closed, timestamps are in use and
    /// nothing has been heard from the peer for [`TIME_WAIT_REUSE_IDLE_NS`]. Then the tuple
    /// may be reused at once (RFC 6191's conditions, as Linux's `tcp_tw_reuse` applies them):
    /// PAWS rejects the old incarnation's duplicates, and the new connection starts its
    /// sequence numbers above `snd_nxt` (Linux adds 65,537). `None` otherwise.
    pub fn time_wait_reusable_by_connect(&self, now_ns: u64) -> Option<SeqNumber> {
        (self.state == State::TimeWait
            && self.closed_reported
            && self.ts_enabled
            && now_ns.saturating_sub(self.ts_recent_ns) >= TIME_WAIT_REUSE_IDLE_NS)
            .then_some(self.snd_nxt)
    }

    /// Whether the connection is gone and may be dropped.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed && self.rst_due.is_none()
    }
    /// Whether the app may still send (the handshake is done and the app has not closed).
    pub fn can_send(&self) -> bool {
        matches!(self.state, State::Established | State::CloseWait) && !self.fin_queued
    }
    /// Our port.
    pub fn local_port(&self) -> u16 {
        self.local_port
    }
    /// The peer's port.
    pub fn remote_port(&self) -> u16 {
        self.remote_port
    }
    /// The counters.
    pub fn counters(&self) -> &ConnCounters {
        &self.counters
    }
    /// The congestion window in bytes.
    pub fn cwnd(&self) -> u32 {
        self.cc.cwnd_bytes()
    }
    /// The retransmission timeout in force.
    pub fn rto_ns(&self) -> u64 {
        self.rtt.rto_ns()
    }
    /// The retransmission timeout the RTT estimates give, before any backoff.
    pub fn rto_base_ns(&self) -> u64 {
        self.rtt.rto_base_ns()
    }
    /// The smoothed RTT, once measured.
    pub fn srtt_ns(&self) -> Option<u64> {
        self.rtt.srtt_ns()
    }
    /// The peer's window in bytes.
    pub fn send_window(&self) -> u32 {
        self.snd_wnd
    }
    /// The window we advertise now, in bytes.
    pub fn recv_window(&self) -> u32 {
        self.rcv_adv.wrapping_distance(self.rcv_nxt)
    }
    /// Bytes lent to the app and not given back.
    pub fn recv_lent(&self) -> u32 {
        self.rcv_lent
    }
    /// Whether timestamps, SACK and window scaling are in force.
    pub fn options_in_force(&self) -> (bool, bool, Option<(u8, u8)>) {
        let scaling = (self.snd_shift != 0 || self.rcv_shift != 0)
            .then_some((self.snd_shift, self.rcv_shift));
        (self.ts_enabled, self.sack_enabled, scaling)
    }
    /// The payload bytes of a full-sized segment with our usual options.
    pub fn smss(&self) -> u32 {
        self.cc.smss()
    }
    /// App bytes queued and not yet acknowledged.
    pub fn send_queued(&self) -> u32 {
        self.snd_buf_end.wrapping_distance(self.data_una())
    }
    /// The controller's kind.
    pub fn congestion_kind(&self) -> CongestionKind {
        self.cc.kind()
    }
    /// Whether RACK-TLP detects losses on this connection: configured
    /// ([`ConnConfig::rack_tlp`]) and SACK negotiated (RFC 8985 §4 requires SACK).
    pub fn rack_active(&self) -> bool {
        self.config.rack_tlp && self.sack_enabled
    }
    /// The reordering window RACK would apply now (RFC 8985 §6.2 step 4), while
    /// [`Connection::rack_active`].
    pub fn rack_reo_wnd_ns(&self) -> Option<u64> {
        self.rack_active().then(|| self.reo_wnd_now())
    }

    fn reo_wnd_now(&self) -> u64 {
        self.rack.reo_wnd_ns(
            self.in_loss_recovery(),
            self.scoreboard.sacked().bytes(),
            self.smss(),
            self.rtt.srtt_ns(),
        )
    }

    /// A fast recovery, or the recovery after a timeout (until SND.UNA passes the SND.MAX of
    /// the timeout), is under way.
    fn in_loss_recovery(&self) -> bool {
        self.in_fast_recovery || self.recover.is_some_and(|r| self.snd_una.lt(r))
    }

    /// Whether `snd_una` (now or before this ACK) still leaves our SYN unacknowledged.
    fn syn_unacked(&self, snd_una: SeqNumber) -> bool {
        snd_una == self.iss && self.snd_una_offset == 0
    }

    /// The first unacknowledged app byte (`snd_una`, or past the SYN before it is acked).
    fn data_una(&self) -> SeqNumber {
        // SND.UNA is back at ISS after every 2^32 - 1 acknowledged bytes too; only while no
        // byte was ever acknowledged does it mean the SYN is still out.
        if self.syn_unacked(self.snd_una) {
            self.iss + 1u32
        } else {
            self.snd_una
        }
    }

    // ----- App commands -----

    /// Bytes a send may queue now: the least of the peer's window, the congestion window and
    /// the send limit, each less what is already queued. Zero before the handshake ends and
    /// after the app closed.
    pub fn send_room(&self) -> u32 {
        if !self.can_send() {
            return 0;
        }
        let queued = self.send_queued();
        let limit = self.config.send_buffer_bytes.saturating_sub(queued);
        let window = self.snd_wnd.saturating_sub(queued);
        // The congestion window limits what is in flight (RFC 5681 FlightSize, RFC 6675's
        // pipe in SACK recovery), not what is unacknowledged: SACKed bytes, and in NewReno
        // recovery the segments that duplicate ACKs say have left, are no longer in flight.
        // Charging cwnd for all queued bytes froze admission exactly when recovery wants
        // new data to keep the ACK clock going (RFC 6675 NextSeg rule 2, RFC 5681 §3.2
        // step 5), so a loss in a small window waited for the timer.
        // After a timeout, what go-back-N has yet to resend counts as queued.
        let unsent = self.snd_buf_end.checked_distance(self.snd_nxt).unwrap_or(0);
        let cwnd = self
            .cwnd_allowance()
            .saturating_sub(self.flight_bytes().saturating_add(unsent));
        limit.min(window).min(cwnd)
    }

    /// The transport queued `bytes` of app data (at most [`Connection::send_room`]; more is
    /// clamped to it) after `offered` bytes were offered. Returns the bytes taken. When less
    /// than offered was taken, a `Sent` event reports when room grows.
    pub fn handle_send(&mut self, now_ns: u64, offered: u32) -> u32 {
        let taken = offered.min(self.send_room());
        if taken < offered {
            self.want_room = true;
        }
        if taken > 0 {
            if self.snd_buf_end == self.snd_max && self.snd_max == self.snd_una {
                // RFC 5681 §4.1: restart from the initial window after an idle RTO.
                if now_ns.saturating_sub(self.last_data_sent_ns) > self.rtt.rto_ns() {
                    self.cc.handle_idle_restart(now_ns);
                }
            }
            self.snd_buf_end += taken;
        }
        taken
    }

    /// The transport took less of a send than the app offered for a reason of its own (its
    /// queue of buffers is full, or a buffer could not be split): as for a send cut short by
    /// the windows, a `Sent` event reports when room grows.
    pub fn handle_send_cut_short(&mut self) {
        self.want_room = true;
    }

    /// The app gave back `bytes` of received data: the budget grows, and a window update goes
    /// out if the window opened enough to matter (receiver SWS avoidance).
    pub fn handle_recv_done(&mut self, bytes: u32) {
        let bytes = bytes.min(self.rcv_lent);
        if bytes == 0 {
            return;
        }
        let before = self.recv_window();
        self.rcv_lent -= bytes;
        if !self.state.receives_data() {
            return;
        }
        let candidate = self.window_to_advertise();
        // RFC 9293 §3.8.6.2.2: announce only an increase of at least min(buffer / 2, MSS).
        let threshold = (self.config.recv_buffer_bytes / 2).min(u32::from(self.config.mss));
        if candidate.saturating_sub(before) >= threshold && before < 2 * u32::from(self.config.mss)
        {
            self.ack_need = AckNeed::Now;
        }
    }

    /// Closes the sending side in order (FIN after the queued data). In SYN-SENT it simply
    /// gives up the open.
    pub fn close(&mut self, _now_ns: u64) {
        match self.state {
            State::SynSent => self.enter_closed(CloseReason::Aborted),
            // RFC 9293 §3.10.4: queue the FIN until ESTABLISHED (the final ACK moves on to
            // FIN-WAIT-1). Leaving SYN-RECEIVED now would stop the SYN-ACK's retransmission,
            // and a lost SYN-ACK could then never complete the handshake.
            State::SynReceived => self.fin_queued = true,
            State::Established => {
                self.fin_queued = true;
                self.state = State::FinWait1;
            }
            State::CloseWait => {
                self.fin_queued = true;
                self.state = State::LastAck;
            }
            _ => {}
        }
    }

    /// Aborts: a RST goes out (except before our SYN left or once closed) and the connection
    /// is closed with [`CloseReason::Aborted`].
    pub fn abort(&mut self) {
        if matches!(self.state, State::Closed | State::TimeWait) {
            if self.state == State::TimeWait {
                self.enter_closed(CloseReason::Aborted);
            }
            return;
        }
        if self.state != State::SynSent {
            // RFC 9293 §3.10.5: send a reset with SEQ = SND.NXT.
            self.rst_due = Some(self.snd_max);
        }
        self.enter_closed(CloseReason::Aborted);
    }

    /// Turns Nagle's algorithm off (`true`) or on.
    pub fn set_nodelay(&mut self, nodelay: bool) {
        self.config.nodelay = nodelay;
    }

    /// Sets or disables keepalive, restarting its timer from `now_ns`.
    pub fn set_keepalive(&mut self, now_ns: u64, keepalive: Option<Keepalive>) {
        self.config.keepalive =
            keepalive.filter(|k| k.idle_ns > 0 && k.interval_ns > 0 && k.probes > 0);
        self.keepalive_sent = 0;
        self.rearm_keepalive(now_ns);
    }

    /// Changes the congestion controller (allowed before any data was sent; afterwards the
    /// new controller starts from its initial window). Fails only on an invalid MSS.
    pub fn set_congestion(&mut self, kind: CongestionKind) -> Result<(), CcError> {
        if kind != self.cc.kind() {
            self.cc = Congestion::new(kind, self.cc.smss())?;
            self.in_fast_recovery = false;
        }
        Ok(())
    }

    // ----- Segment input -----

    /// Takes one segment of this connection (RFC 9293 §3.10.7). `payload` is its data
    /// (`seg.payload_len` bytes); what the app should get goes to `sink.deliver`, everything
    /// else to `sink.discard`.
    pub fn handle_segment(
        &mut self,
        now_ns: u64,
        seg: &Repr,
        mut payload: B,
        sink: &mut impl RecvSink<B>,
    ) -> Verdict {
        // The payload is the truth; a header that disagrees is trimmed to it.
        if payload.len() > usize::from(u16::MAX) {
            payload.truncate(usize::from(u16::MAX));
        }
        let verdict = match self.state {
            State::Closed => Verdict::Dropped(DropReason::Closed),
            State::SynSent => self.handle_syn_sent(now_ns, seg),
            _ => return self.handle_synchronized(now_ns, seg, payload, sink),
        };
        sink.discard(payload);
        verdict
    }

    /// RFC 9293 §3.10.7.3.
    fn handle_syn_sent(&mut self, now_ns: u64, seg: &Repr) -> Verdict {
        let flags = seg.flags;
        // First: the ACK must acknowledge our SYN.
        let mut ack_ok = false;
        if let Some(ack) = seg.ack {
            let ack = SeqNumber(ack);
            if ack.le(self.iss) || ack.gt(self.snd_max) {
                if !flags.contains(Flags::RST) {
                    self.rst_due = Some(ack);
                }
                return Verdict::Dropped(DropReason::SynSentUnexpected);
            }
            ack_ok = true;
        }
        // Second: a RST with an acceptable ACK refuses the connection (RFC 5961 §3.2 does
        // not apply before the handshake: the ACK check is the blind-attack defence here).
        if flags.contains(Flags::RST) {
            if ack_ok {
                self.enter_closed(CloseReason::Refused);
                return Verdict::Accepted;
            }
            return Verdict::Dropped(DropReason::RstInvalid);
        }
        if !flags.contains(Flags::SYN) {
            return Verdict::Dropped(DropReason::SynSentUnexpected);
        }
        // Fourth: the SYN.
        self.irs = SeqNumber(seg.seq);
        self.rcv_nxt = self.irs + 1u32;
        self.take_syn_options(now_ns, seg);
        if ack_ok {
            let ack = SeqNumber(seg.ack.unwrap_or(0));
            self.snd_una = ack;
            self.sample_rtt_for_ack(now_ns, ack);
            self.finish_handshake_setup(now_ns);
            // RFC 7323 §2.2: the SYN-ACK's window is not scaled.
            self.snd_wnd = u32::from(seg.window_len);
            self.snd_wnd_max = self.snd_wnd;
            self.snd_wl1 = SeqNumber(seg.seq);
            self.snd_wl2 = ack;
            self.state = State::Established;
            self.ev_established = true;
            self.rto_at = None;
            self.timeouts = 0;
            self.syn_due = false;
            self.ack_need = AckNeed::Now;
            self.rcv_adv = self.rcv_nxt + self.window_to_advertise();
        } else {
            // Simultaneous open (RFC 9293 §3.5, figure 8): SYN-RECEIVED, resend SYN as SYN-ACK.
            self.state = State::SynReceived;
            self.snd_wnd = u32::from(seg.window_len);
            self.snd_wl1 = SeqNumber(seg.seq);
            self.syn_due = true;
            self.rcv_adv = self.rcv_nxt + self.window_to_advertise().min(0xFFFF);
        }
        Verdict::Accepted
    }

    /// Negotiates from a SYN's options: a feature is in force only if both sides offered it.
    fn take_syn_options(&mut self, now_ns: u64, syn: &Repr) {
        self.peer_mss = syn.max_seg_size.unwrap_or(MSS_DEFAULT).max(MSS_MIN);
        self.ts_enabled = self.config.timestamps && syn.timestamps.is_some();
        if let Some((tsval, _)) = syn.timestamps {
            self.ts_recent = tsval;
            self.ts_recent_ns = now_ns;
        }
        self.sack_enabled = self.config.sack && syn.sack_permitted;
        match (syn.window_scale, self.config.window_shift()) {
            // RFC 7323 §2.2: both SYNs must carry the option.
            (Some(peer), Some(ours)) => {
                self.snd_shift = peer.min(melange_wire::tcp::WINDOW_SCALE_MAX);
                self.rcv_shift = ours;
                self.wscale_ok = true;
            }
            _ => {
                self.snd_shift = 0;
                self.rcv_shift = 0;
                self.wscale_ok = false;
            }
        }
    }

    /// Sets the MSS-dependent state once the peer's MSS is known.
    fn finish_handshake_setup(&mut self, now_ns: u64) {
        let smss = self.data_payload_max();
        // The MSS was validated at construction; a peer's MSS is clamped to MSS_MIN, above the
        // controller's floor, so this cannot fail; keep the old one if it ever did.
        let _ = self.cc.set_smss(smss);
        if let Ok(cc) = Congestion::new(self.cc.kind(), smss) {
            self.cc = cc;
        }
        self.scoreboard = Scoreboard::new(self.snd_una, smss);
        self.rack.reset(self.snd_una);
        self.last_data_sent_ns = now_ns;
        self.rearm_keepalive(now_ns);
    }

    /// The largest payload of a data segment with our usual options (timestamps), RFC 9293
    /// §3.7.1: the peer's MSS less the options, and never more than our own MSS allows.
    fn data_payload_max(&self) -> u32 {
        let mss = u32::from(self.peer_mss.min(self.config.mss));
        let options = if self.ts_enabled { 12 } else { 0 };
        mss.saturating_sub(options).max(u32::from(MSS_MIN) - 12)
    }

    /// RFC 9293 §3.10.7.4, for every state after SYN-SENT.
    fn handle_synchronized(
        &mut self,
        now_ns: u64,
        seg: &Repr,
        payload: B,
        sink: &mut impl RecvSink<B>,
    ) -> Verdict {
        // A SYN at IRS in SYN-RECEIVED occupies RCV.NXT - 1, so the window check below would
        // refuse it. Without ACK it is the peer's retransmitted SYN: answer with the SYN-ACK
        // again. With ACK it is the peer's SYN-ACK of a simultaneous open (RFC 9293 §3.5
        // figure 8, line 6): take it as the ACK of our SYN, as Linux does.
        let stripped;
        let seg = if self.state == State::SynReceived
            && seg.flags.contains(Flags::SYN)
            && !seg.flags.contains(Flags::RST)
            && SeqNumber(seg.seq) == self.irs
        {
            if seg.ack.is_none() {
                sink.discard(payload);
                self.syn_due = true;
                return Verdict::Accepted;
            }
            stripped = Repr {
                seq: seg.seq.wrapping_add(1),
                flags: seg.flags.difference(Flags::SYN),
                ..*seg
            };
            &stripped
        } else {
            seg
        };
        let flags = seg.flags;
        let seq = SeqNumber(seg.seq);
        let len = payload.len() as u32;
        let seg_len =
            len + u32::from(flags.contains(Flags::SYN)) + u32::from(flags.contains(Flags::FIN));

        if self.state == State::TimeWait
            && flags.contains(Flags::SYN)
            && seg.ack.is_none()
            && !flags.contains(Flags::RST)
            && self.time_wait_reusable(seg)
        {
            sink.discard(payload);
            self.enter_closed(CloseReason::Closed);
            return Verdict::TimeWaitReuse;
        }

        // RFC 7323 §5.3 R1: PAWS, before the window check; a RST is exempt.
        if self.ts_enabled && !flags.contains(Flags::RST) {
            if let Some((tsval, _)) = seg.timestamps {
                let stale = now_ns.saturating_sub(self.ts_recent_ns) > PAWS_IDLE_NS;
                if !stale && (tsval.wrapping_sub(self.ts_recent) as i32) < 0 {
                    // RFC 7323 §5.3 says acknowledge; a pure ACK is rate-limited (RFC 5961 §7),
                    // as out of window below: it is what two confused ends can loop on.
                    self.provoked_ack(now_ns, seg.payload_len > 0 || flags.contains(Flags::FIN));
                    sink.discard(payload);
                    return Verdict::Dropped(DropReason::Paws);
                }
            }
        }

        // RFC 9293 §3.10.7.4, TIME-WAIT: "The only thing that can arrive in this state is a
        // retransmission of the remote FIN. Acknowledge it, and restart the 2 MSL timeout."
        // Its FIN is the octet just below RCV.NXT, which the acceptability test below refuses
        // (and the eighth step never sees), so it is recognised here, as Linux's
        // `tcp_timewait_state_process` does. Without the restart, a peer whose FIN or our
        // ACKs were lost a few times finds us gone when its backed-off FIN arrives, and gets a
        // RST instead of a clean close.
        if self.state == State::TimeWait
            && flags.contains(Flags::FIN)
            && !flags.intersects(Flags::RST.union(Flags::SYN))
            && seq + len + 1u32 == self.rcv_nxt
        {
            self.ack_need = AckNeed::Now;
            self.close_at = Some(now_ns.saturating_add(self.config.time_wait_ns));
            // It passed PAWS above: its TSval is the newest, and the peer was heard now
            // (which `time_wait_reusable_by_connect` waits a second of silence after).
            if let (true, Some((tsval, _))) = (self.ts_enabled, seg.timestamps) {
                self.ts_recent = tsval;
                self.ts_recent_ns = now_ns;
            }
            sink.discard(payload);
            return Verdict::Accepted;
        }

        // First: sequence number acceptability.
        let rcv_wnd = self.recv_window();
        // RFC 9293 §3.10.7.4 asks for "special allowance ... to accept valid ACKs": a peer
        // that filled our window numbers its pure ACKs at SND.NXT, which is our right edge,
        // one past the window. Without this, while a hole keeps the window from moving,
        // every ACK it sends us is dropped unread; when both sides fill each other's windows
        // and lose the segments at RCV.NXT, neither ever learns the other's ACKs. Linux's
        // `tcp_sequence` accepts the right edge too.
        let ack_at_edge =
            seg_len == 0 && !flags.contains(Flags::RST) && seq == self.rcv_nxt + rcv_wnd;
        if !segment_acceptable(seq, seg_len, self.rcv_nxt, rcv_wnd) && !ack_at_edge {
            // RFC 5961 §3.2: a RST outside the window is silently dropped; anything else gets
            // an ACK (RFC 9293), rate-limited because a peer can provoke it at will.
            if !flags.contains(Flags::RST) {
                if seg_len > 0 && !flags.contains(Flags::SYN) {
                    // Data or FIN the peer sent again because our ACK was lost: it must learn
                    // where we are at once, or it backs off until its RTO (Linux exempts such
                    // segments from its out-of-window rate limit too). D-SACK says which bytes
                    // were duplicates. A pure ACK out of window is what can loop, so only it
                    // takes the rate-limited path.
                    if (seq + len).le(self.rcv_nxt) {
                        self.report_duplicate(SeqRange::new(seq, seq + len));
                    }
                    self.ack_need = AckNeed::Now;
                } else {
                    self.challenge_ack(now_ns);
                }
                // RFC 2883 §4: data wholly below RCV.NXT (a spurious retransmission) is
                // reported as a D-SACK in that ACK, as Linux's tcp_send_dupack does.
                if len > 0 && seq.lt(self.rcv_nxt) {
                    let end = if (seq + len).lt(self.rcv_nxt) {
                        seq + len
                    } else {
                        self.rcv_nxt
                    };
                    self.report_duplicate(SeqRange::new(seq, end));
                }
            }
            sink.discard(payload);
            return Verdict::Dropped(DropReason::OutOfWindow);
        }

        // Second: RST (RFC 5961 §3.2).
        if flags.contains(Flags::RST) {
            sink.discard(payload);
            if seq == self.rcv_nxt {
                let reason = if self.state == State::SynReceived && !self.active_open {
                    // RFC 9293: a passive open's connection silently goes away.
                    CloseReason::Reset
                } else if self.state == State::SynReceived {
                    CloseReason::Refused
                } else {
                    CloseReason::Reset
                };
                if self.state == State::TimeWait {
                    // RFC 1337: do not let a RST end TIME-WAIT early.
                    return Verdict::Dropped(DropReason::RstInvalid);
                }
                self.enter_closed(reason);
                return Verdict::Accepted;
            }
            self.challenge_ack(now_ns);
            return Verdict::Dropped(DropReason::RstInvalid);
        }

        // Third: a SYN in a synchronized state (RFC 5961 §4): challenge ACK. (A SYN at IRS in
        // SYN-RECEIVED was answered above.)
        if flags.contains(Flags::SYN) {
            sink.discard(payload);
            self.challenge_ack(now_ns);
            return Verdict::Dropped(DropReason::SynInWindow);
        }

        // Fourth: the ACK field.
        let Some(ack) = seg.ack.map(SeqNumber) else {
            sink.discard(payload);
            return Verdict::Dropped(DropReason::NoAck);
        };
        if self.state == State::SynReceived {
            // RFC 9293: SND.UNA < SEG.ACK =< SND.NXT moves to ESTABLISHED, otherwise RST.
            if ack.le(self.snd_una) || ack.gt(self.snd_max) {
                self.rst_due = Some(ack);
                sink.discard(payload);
                return Verdict::Dropped(DropReason::BadAck);
            }
            self.state = State::Established;
            self.ev_established = true;
            self.syn_due = false;
            self.snd_una = ack;
            self.sample_rtt_for_ack(now_ns, ack);
            self.finish_handshake_setup(now_ns);
            self.snd_wl1 = seq;
            self.snd_wl2 = ack;
            self.snd_wnd = u32::from(seg.window_len) << self.snd_shift;
            self.snd_wnd_max = self.snd_wnd;
            self.rto_at = None;
            self.timeouts = 0;
            self.rcv_adv = self.rcv_nxt + self.window_to_advertise();
            if self.fin_queued {
                // Closed during the handshake (RFC 9293: FIN after ESTABLISHED).
                self.state = State::FinWait1;
            }
        }
        // RFC 5961 §5.2: acceptable ACKs lie in [SND.UNA - MAX.SND.WND, SND.NXT].
        let oldest = self.snd_una - self.snd_wnd_max.max(1);
        if ack.gt(self.snd_max) {
            // RFC 5961 §5.2: drop it and ACK, rate-limited for a pure ACK (§7).
            self.provoked_ack(now_ns, seg.payload_len > 0 || flags.contains(Flags::FIN));
            sink.discard(payload);
            return Verdict::Dropped(DropReason::BadAck);
        }
        if ack.lt(oldest) {
            self.challenge_ack(now_ns);
            sink.discard(payload);
            return Verdict::Dropped(DropReason::BadAck);
        }
        // RFC 7323 §4.3: TS.Recent takes SEG.TSval when SEG.SEQ =< Last.ACK.sent.
        if self.ts_enabled {
            if let Some((tsval, _)) = seg.timestamps {
                // RFC 7323 §5.5: after 24 idle days TS.Recent is invalid, so the segment's
                // TSval replaces it even if it looks older (Linux's tcp_paws_check).
                let stale = now_ns.saturating_sub(self.ts_recent_ns) > PAWS_IDLE_NS;
                let newer = (tsval.wrapping_sub(self.ts_recent) as i32) >= 0;
                if seq.le(self.last_ack_sent) && (newer || stale) {
                    self.ts_recent = tsval;
                    self.ts_recent_ns = now_ns;
                }
            }
        }
        self.keepalive_sent = 0;
        self.rearm_keepalive(now_ns);
        if self.persist_at.is_some() {
            // The peer answered a zero-window probe (see `handle_timeout`).
            self.timeouts = 0;
        }
        self.handle_ack(now_ns, seg, ack, seq, len);
        if self.state == State::Closed {
            sink.discard(payload);
            return Verdict::Accepted;
        }

        // Seventh: the payload.
        let mut verdict = Verdict::Accepted;
        if len > 0 {
            if self.state.receives_data() {
                verdict = self.handle_data(now_ns, seq, payload, sink);
            } else {
                // RFC 9293: after the peer's FIN, data is ignored (an ACK says where we are).
                self.ack_need = AckNeed::Now;
                sink.discard(payload);
            }
        } else {
            sink.discard(payload);
        }

        // A FIN that arrived out of order is taken once the data before it is in (RFC 9293
        // §3.10.7.4, eighth step); otherwise the peer would have to time out and resend it.
        if self.fin_seq == Some(self.rcv_nxt) && self.state.receives_data() {
            self.handle_fin(now_ns);
        }

        // Eighth: FIN.
        if flags.contains(Flags::FIN) {
            let fin = seq + len;
            if fin == self.rcv_nxt {
                self.handle_fin(now_ns);
            } else if fin.gt(self.rcv_nxt) && self.state.receives_data() {
                // Out of order: take it when the data before it arrives.
                self.fin_seq = Some(fin);
                self.ack_need = AckNeed::Now;
            } else if self.state == State::TimeWait {
                // A retransmitted FIN: ACK it and restart 2 MSL (RFC 9293).
                self.ack_need = AckNeed::Now;
                self.close_at = Some(now_ns.saturating_add(self.config.time_wait_ns));
            }
        }
        verdict
    }

    /// Whether a SYN may reopen this TIME-WAIT tuple: its timestamp is newer than the last one
    /// seen (RFC 6191), or without timestamps its sequence number is above RCV.NXT (RFC 9293
    /// §3.6.1's classic rule).
    fn time_wait_reusable(&self, syn: &Repr) -> bool {
        match (self.ts_enabled, syn.timestamps) {
            (true, Some((tsval, _))) => (tsval.wrapping_sub(self.ts_recent) as i32) > 0,
            (true, None) => false,
            (false, _) => SeqNumber(syn.seq).gt(self.rcv_nxt),
        }
    }

    /// Fifth step: ACK processing in a synchronized state (RFC 9293 §3.10.7.4, RFC 5681,
    /// RFC 6675, RFC 6582).
    fn handle_ack(&mut self, now_ns: u64, seg: &Repr, ack: SeqNumber, seq: SeqNumber, len: u32) {
        let window = u32::from(seg.window_len) << self.snd_shift;
        let mut blocks = [SeqRange::new(SeqNumber(0), SeqNumber(0)); SACK_BLOCKS_MAX];
        let mut nblocks = 0;
        if self.sack_enabled {
            for &(l, r) in seg.sack_ranges() {
                if nblocks < SACK_BLOCKS_MAX {
                    blocks[nblocks] = SeqRange::new(SeqNumber(l), SeqNumber(r));
                    nblocks += 1;
                }
            }
        }
        let una_before = self.snd_una;
        let sacked_before = self.scoreboard.sacked().bytes();
        let rack = self.rack_active();
        let mut delivered = SeqRangeSet::<RANGES_MAX>::new();
        let outcome = if rack {
            self.scoreboard.handle_ack_delivered(
                ack,
                self.snd_max,
                &blocks[..nblocks],
                &mut delivered,
            )
        } else {
            self.scoreboard
                .handle_ack(ack, self.snd_max, &blocks[..nblocks])
        };
        if outcome.dsack.is_some() {
            self.counters.dsacks_received += 1;
        }
        let new_sack = self.scoreboard.sacked().bytes() > sacked_before;
        let advanced = ack.gt(una_before);
        self.maybe_end_backoff(ack, &blocks[..nblocks], seg.timestamps.map(|t| t.1));
        let mut probe_repaired = None;
        if rack {
            // RFC 8985 §6.2 steps 1-2 need the send times of what this ACK delivered; a
            // retransmission's delivery counts only if the timestamp echo is not older than it
            // (RFC 8985 §6.2 step 1, with RFC 7323's echo).
            let echo = seg
                .timestamps
                .filter(|_| self.ts_enabled)
                .map(|t| t.1.wrapping_sub(self.ts_offset));
            let echo_predates =
                |xmit_ns: u64| echo.is_some_and(|e| (ts_clock(xmit_ns).wrapping_sub(e) as i32) > 0);
            let una = if advanced { ack } else { una_before };
            self.rack.handle_ack(
                now_ns,
                una,
                &delivered,
                self.scoreboard.sacked(),
                echo_predates,
            );
            self.rack
                .handle_dsack_round(una, self.snd_max, outcome.dsack.is_some());
            let dupack_without_sack = !advanced && nblocks == 0 && len == 0;
            probe_repaired = self
                .rack
                .handle_probe_ack(ack, outcome.dsack, dupack_without_sack);
        }

        // Window update (RFC 9293 §3.10.7.4): from a newer segment, or the same one with a
        // newer ACK.
        let window_changed = window != self.snd_wnd;
        if self.snd_wl1.lt(seq) || (self.snd_wl1 == seq && self.snd_wl2.le(ack)) {
            self.update_send_window(seq, ack, window);
        }

        if advanced {
            self.handle_ack_advance(now_ns, ack, una_before, seg.timestamps.map(|t| t.1));
        } else if self.sack_enabled && new_sack && self.snd_max != self.snd_una {
            // Linux's way, and RFC 6675's loss detection: SACK information counts from any
            // ACK, even one carrying data (a duplicate ACK proper must carry none).
            if len == 0 {
                self.dup_acks += 1;
                self.counters.dup_acks += 1;
            }
            self.maybe_enter_recovery(now_ns);
        } else if ack == self.snd_una
            && self.snd_max != self.snd_una
            && len == 0
            && !seg.flags.intersects(Flags::SYN.union(Flags::FIN))
            && (!window_changed || new_sack)
        {
            // RFC 5681 §2's duplicate ACK (with SACK, one that brings new SACK information
            // counts even if the window moved, RFC 6675 §2).
            self.dup_acks += 1;
            self.counters.dup_acks += 1;
            self.maybe_enter_recovery(now_ns);
        }
        if rack {
            if let Some(flight) = probe_repaired {
                // RFC 8985 §7.4: the probe repaired a loss the sender never saw; congestion
                // control reacts to it as to any loss (unless a recovery already did), with
                // the FlightSize of the probe's window.
                self.counters.tlp_recoveries += 1;
                if !self.in_loss_recovery() {
                    self.cc
                        .handle_recovery_start(now_ns, flight, self.snd_max.0);
                    self.cc.handle_recovery_end(now_ns, flight);
                }
            }
            // RFC 8985 §6.2 step 5 on every ACK.
            self.rack_detect(now_ns);
            // RFC 8985 §7.2: (re)start the PTO on an ACK of new data (in a fast recovery, on any
            // ACK that delivers something); drop it once SACKs arrive outside recovery, since
            // RACK's own timer watches those.
            if advanced || (new_sack && self.in_fast_recovery) {
                self.arm_pto(now_ns);
            } else if !self.pto_armable() {
                self.tlp_at = None;
            }
        }
        if self.want_room && self.send_room() > 0 {
            self.want_room = false;
            self.report_room = true;
        }
    }

    /// RFC 8985 §6.2 step 5, `RACK_detect_loss_and_arm_timer`: marks what the clock says is
    /// lost, arms the reordering timer for what it waits for, and starts recovery on a loss.
    fn rack_detect(&mut self, now_ns: u64) {
        if self.snd_una == self.snd_max {
            self.rack_at = None;
            return;
        }
        let reo_wnd = self.reo_wnd_now();
        let smss = self.smss();
        let d = self
            .rack
            .detect_loss(now_ns, reo_wnd, self.scoreboard.sacked(), smss);
        self.rack_at = d.timeout_ns.map(|t| now_ns.saturating_add(t));
        if d.lost_segments == 0 {
            return;
        }
        self.counters.rack_losses += u64::from(d.lost_segments);
        self.counters.rack_lost_retransmits += u64::from(d.lost_retransmissions);
        if d.lost_retransmissions > 0 && self.in_fast_recovery && !self.rexmit_loss_reacted {
            // RFC 8985 §9.3: without PRR, a lost retransmission is a second congestion event
            // (RFC 5681); once per recovery, as RFC 5681 reacts once per window.
            self.rexmit_loss_reacted = true;
            let flight = self.flight_bytes();
            self.cc
                .handle_recovery_start(now_ns, flight, self.snd_max.0);
        }
        self.maybe_enter_recovery(now_ns);
    }

    /// RFC 8985 §7.2's conditions for a PTO: RACK on, data outstanding, a probe allowed (none
    /// in flight, an RTT sample since the last), and no recovery with nothing SACKed, or
    /// else (beyond the RFC, see [`crate::rack`]'s module doc) a fast recovery.
    fn pto_armable(&self) -> bool {
        self.rack_active()
            && self.state.sends_data()
            && self.snd_una != self.snd_max
            && self.rto_at.is_some()
            && self.rack.probe_allowed()
            && (self.in_fast_recovery
                || (!self.in_loss_recovery() && self.scoreboard.sacked().is_empty()))
    }

    /// (Re)starts the PTO (RFC 8985 §7.2 `TLP_calc_PTO`), or stops it when not armable. It
    /// never fires after the RTO would.
    fn arm_pto(&mut self, now_ns: u64) {
        self.tlp_at = if self.pto_armable() {
            let one_segment = self.flight_bytes() <= self.smss();
            let at = now_ns.saturating_add(Rack::pto_ns(self.rtt.srtt_ns(), one_segment));
            Some(self.rto_at.map_or(at, |rto| at.min(rto)))
        } else {
            None
        };
    }
}

impl<B: Payload> Connection<B> {
    /// `snd_una` moved from `una_before` to `ack`.
    fn handle_ack_advance(
        &mut self,
        now_ns: u64,
        ack: SeqNumber,
        una_before: SeqNumber,
        tsecr: Option<u32>,
    ) {
        let data_start = if self.syn_unacked(una_before) {
            self.iss + 1u32
        } else {
            una_before
        };
        let data_end = if ack.gt(self.snd_buf_end) {
            self.snd_buf_end
        } else {
            ack
        };
        let data_acked = data_end.checked_distance(data_start).unwrap_or(0);
        let fin_acked = self.fin_queued && ack.gt(self.snd_buf_end);
        let rto_recovery_ends =
            !self.in_fast_recovery && self.recover.is_some_and(|r| una_before.lt(r) && ack.ge(r));
        self.last_ack_advance = ack.wrapping_distance(una_before);
        self.snd_una = ack;
        if self.snd_nxt.lt(ack) {
            self.snd_nxt = ack;
        }
        self.snd_una_offset += u64::from(data_acked);
        self.acked_unreported += u64::from(data_acked);
        self.timeouts = 0;
        self.dup_acks = 0;
        if self.timeouts == 0 && self.persist_backoff > 0 && self.snd_wnd > 0 {
            self.persist_backoff = 0;
        }
        // The timed segment feeds the RTO estimator (RFC 6298); the congestion controller
        // also gets, on the other ACKs, the RTT their timestamp echo measures (HyStart++
        // needs several samples a round, RFC 9406 §4.2).
        let rtt_ns = self
            .sample_rtt_for_ack(now_ns, ack)
            .or_else(|| self.timestamp_rtt(now_ns, tsecr));
        let flight = self.flight_bytes();
        if self.in_fast_recovery {
            if self.recover.is_none_or(|r| ack.ge(r)) {
                // RFC 6582 §3.2 step 3 / RFC 6675 §5 (A): the full ACK ends recovery.
                self.in_fast_recovery = false;
                self.pending_rexmit = None;
                self.cc.handle_recovery_end(now_ns, flight);
                if self.rack_active() {
                    self.rack.handle_recovery_end();
                }
            } else if !self.sack_enabled {
                // RFC 6582 §3.2 step 4: a partial ACK retransmits the next unacknowledged
                // segment at once.
                self.pending_rexmit = Some(self.first_unacked_segment());
                let sample = self.ack_sample(now_ns, data_acked, rtt_ns, flight);
                self.cc.handle_ack(&sample);
            } else {
                let sample = self.ack_sample(now_ns, data_acked, rtt_ns, flight);
                self.cc.handle_ack(&sample);
            }
        } else {
            if rto_recovery_ends && self.rack_active() {
                self.rack.handle_recovery_end();
            }
            let sample = self.ack_sample(now_ns, data_acked, rtt_ns, flight);
            let phase = self.cc.hystart_phase();
            self.cc.handle_ack(&sample);
            let after = self.cc.hystart_phase();
            if phase != after {
                use crate::cc::hystart::HyStartPhase;
                match after {
                    Some(HyStartPhase::Conservative) => self.counters.hystart_css_entries += 1,
                    Some(HyStartPhase::Done) => self.counters.hystart_exits += 1,
                    _ => {}
                }
            }
        }
        // RFC 6298 (5.2)/(5.3): stop the timer when all is acknowledged, otherwise restart it.
        self.rto_at = if self.snd_una == self.snd_max {
            None
        } else {
            Some(now_ns.saturating_add(self.rtt.rto_ns()))
        };
        if fin_acked {
            match self.state {
                State::FinWait1 => {
                    self.state = State::FinWait2;
                    self.close_at = self.config.fin_wait2_ns.map(|d| now_ns.saturating_add(d));
                }
                State::Closing => self.enter_time_wait(now_ns),
                State::LastAck => self.enter_closed(CloseReason::Closed),
                _ => {}
            }
        }
    }

    fn ack_sample(&self, now_ns: u64, acked: u32, rtt_ns: Option<u64>, flight: u32) -> AckSample {
        AckSample {
            now_ns,
            acked_bytes: acked,
            snd_una: self.snd_una.0,
            snd_nxt: self.snd_max.0,
            flight_bytes: flight,
            rtt_ns,
            // A send cut short by the windows means the app had more: the connection is
            // limited by cwnd even though nothing waits unsent (IX's admission, RFC 7661).
            cwnd_limited: self.cwnd_limited || self.want_room,
        }
    }

    /// The RTT an ACK's timestamp echo measures (RFC 7323 §4.1: an ACK that advances
    /// `snd_una` echoes the TSval of the segment that made it), in whole ticks of
    /// [`TS_TICK_NS`]; `None` without timestamps, for an echo from the future or older than
    /// a minute, and below one tick (too coarse to mean anything: the timed segment measures
    /// those).
    fn timestamp_rtt(&self, now_ns: u64, tsecr: Option<u32>) -> Option<u64> {
        const TICKS_MAX: u32 = (60_000_000_000 / TS_TICK_NS) as u32;
        let echo = tsecr.filter(|_| self.ts_enabled)?;
        let ticks = ts_clock(now_ns)
            .wrapping_add(self.ts_offset)
            .wrapping_sub(echo);
        (1..=TICKS_MAX)
            .contains(&ticks)
            .then(|| u64::from(ticks) * TS_TICK_NS)
    }

    /// Takes an RTT sample when `ack` covers the timed segment (Karn's rule: the probe is
    /// dropped whenever anything is retransmitted).
    fn sample_rtt_for_ack(&mut self, now_ns: u64, ack: SeqNumber) -> Option<u64> {
        let (end, sent_ns) = self.rtt_probe?;
        if ack.lt(end) {
            return None;
        }
        self.rtt_probe = None;
        let rtt = now_ns.saturating_sub(sent_ns);
        self.rtt.handle_sample(rtt);
        self.rack.handle_rtt_sample(rtt);
        self.backoff_mark = None;
        Some(rtt)
    }

    /// RFC 6298 §5: the backoff collapses once new data is sent and acknowledged. The timed
    /// segment cannot say so after a timeout: Karn's rule drops it, and the next one is timed
    /// only when new data goes out, so while retransmissions or that one segment keep being
    /// lost the RTO stays backed off (seconds, then a minute) although the path delivers.
    /// Instead, proof that the peer got anything we sent after the first timeout of the run
    /// ends the backoff: a cumulative or selective ACK above the SND.MAX of that moment, or
    /// the echo of a TSval from after it (RFC 7323 §4.1). SRTT and RTTVAR are not fed: such a
    /// delay may include a receiver's wait for a hole (RFC 7323 §4.3), which is no round trip.
    fn maybe_end_backoff(&mut self, ack: SeqNumber, blocks: &[SeqRange], tsecr: Option<u32>) {
        let Some((snd_max, ts)) = self.backoff_mark else {
            return;
        };
        let acked = ack.gt(snd_max);
        let sacked = blocks
            .iter()
            .any(|b| b.end.gt(snd_max) && b.end.le(self.snd_max));
        let echoed = self.ts_enabled && tsecr.is_some_and(|e| (e.wrapping_sub(ts) as i32) >= 0);
        if acked || sacked || echoed {
            self.rtt.handle_backoff_end();
            self.backoff_mark = None;
        }
    }

    fn update_send_window(&mut self, seq: SeqNumber, ack: SeqNumber, window: u32) {
        self.snd_wnd = window;
        self.snd_wl1 = seq;
        self.snd_wl2 = ack;
        self.snd_wnd_max = self.snd_wnd_max.max(window);
        if window > 0 {
            self.persist_at = None;
            self.persist_backoff = 0;
        }
    }

    /// Enters fast recovery after enough duplicate ACKs or SACK evidence of a loss.
    fn maybe_enter_recovery(&mut self, now_ns: u64) {
        if self.in_fast_recovery {
            return;
        }
        let rack = self.rack_active();
        if rack {
            // RFC 8985 §6.2: RACK's marks alone start recovery (its reordering window is zero
            // once DupThresh segments are SACKed, so it is never later than DupThresh).
            if !self.rack.has_lost(self.scoreboard.sacked()) {
                return;
            }
        } else {
            let lost = self.sack_enabled && self.scoreboard.is_lost(self.snd_una);
            if self.dup_acks < crate::sack::DUP_THRESH && !lost {
                return;
            }
        }
        // RFC 6582 §3.2 step 2: no second recovery for losses of the window that the last
        // recovery (or timeout) already handled, unless §4.2's ACK heuristic says these
        // duplicates report a new loss, not our own unneeded retransmissions: those would
        // have come after an ACK that jumped by more than four segments. Without it, a
        // segment lost again while go-back-N resends after a timeout waits for a second,
        // doubled, timeout. Not with SACK, where RFC 6675 §5.1 forbids it.
        let smss = self.smss();
        let new_loss =
            !self.sack_enabled && self.cc.cwnd_bytes() > smss && self.last_ack_advance <= 4 * smss;
        if self.recover.is_some_and(|r| self.snd_una.lt(r)) && !new_loss {
            return;
        }
        // RFC 5681's FlightSize, not less what RACK marked lost: the reduction is the same
        // whichever detector found the loss.
        let flight = if rack {
            self.unsacked_outstanding()
        } else {
            self.flight_bytes()
        };
        self.in_fast_recovery = true;
        self.recover = Some(self.snd_max);
        self.counters.fast_recoveries += 1;
        self.cc
            .handle_recovery_start(now_ns, flight, self.snd_max.0);
        if self.sack_enabled {
            self.scoreboard.enter_recovery(self.snd_max);
        }
        self.pending_rexmit = if rack {
            // RFC 6675 §5 (4.2)'s first retransmission, whatever the window: of what RACK
            // found lost, the lowest.
            self.rack
                .first_lost(self.scoreboard.sacked(), self.smss())
                .map(|range| PendingRetransmit { range })
        } else {
            // RFC 5681 §3.2 step 4 / RFC 6675 §5 (4.2): retransmit the first unacknowledged
            // segment.
            Some(self.first_unacked_segment())
        };
        if rack {
            // RFC 8985 §7.1: a recovery ends the probe episode.
            self.rack.end_probe_episode();
            self.tlp_at = None;
            self.tlp_due = false;
            self.rexmit_loss_reacted = false;
        }
        self.rtt_probe = None;
    }

    /// The first unacknowledged segment, up to one SMSS, cut at the first SACKed byte.
    fn first_unacked_segment(&self) -> PendingRetransmit {
        let mut end = (self.snd_una + self.smss()).min(self.snd_max);
        if let Some(r) = self.scoreboard.sacked().as_slice().first() {
            if r.start.gt(self.snd_una) {
                end = end.min(r.start);
            }
        }
        PendingRetransmit {
            range: SeqRange::new(self.snd_una, end),
        }
    }

    /// The congestion window new data may fill: cwnd, plus RFC 3042's Limited Transmit of one
    /// new segment for each of the first two duplicate ACKs without SACK (with SACK, the
    /// SACKed bytes leave `flight_bytes` instead). Without it, a loss in a window of four
    /// segments or fewer draws too few duplicate ACKs for fast retransmit and waits for the
    /// timer.
    fn cwnd_allowance(&self) -> u32 {
        let cwnd = self.cc.cwnd_bytes();
        if self.sack_enabled || self.in_fast_recovery || self.dup_acks == 0 {
            return cwnd;
        }
        cwnd.saturating_add(self.dup_acks.min(2).saturating_mul(self.smss()))
    }

    /// Bytes in flight: RFC 6675's pipe in SACK recovery; otherwise the unSACKed bytes up to
    /// SND.NXT, less RFC 5681's inflation of one SMSS per duplicate ACK in NewReno recovery.
    ///
    /// With RACK, bytes marked lost are not in flight either (RFC 8985 §6: RACK's marks feed
    /// the pipe as IsLost does RFC 6675's), in and out of recovery.
    fn flight_bytes(&self) -> u32 {
        if self.in_fast_recovery && self.sack_enabled {
            return self.recovery_pipe();
        }
        let flight = self.unsacked_outstanding();
        if self.rack_active() {
            let lost = self
                .rack
                .lost_bytes(self.scoreboard.sacked(), self.snd_una, self.snd_nxt);
            return u64::from(flight).saturating_sub(lost) as u32;
        }
        if self.in_fast_recovery {
            flight.saturating_sub(self.dup_acks.saturating_mul(self.smss()))
        } else {
            flight
        }
    }

    /// The bytes sent up to SND.NXT, neither acknowledged nor SACKed.
    fn unsacked_outstanding(&self) -> u32 {
        let out = self.snd_nxt.checked_distance(self.snd_una).unwrap_or(0);
        let sacked = self
            .scoreboard
            .sacked()
            .bytes_in(self.snd_una, self.snd_nxt);
        u64::from(out).saturating_sub(sacked) as u32
    }

    /// The pipe of SACK recovery: RFC 6675 §4's SetPipe, or with RACK the bytes up to SND.MAX
    /// neither SACKed nor marked lost (a lost byte's retransmission is in flight once, in its
    /// own record).
    fn recovery_pipe(&self) -> u32 {
        if !self.rack_active() {
            return self.scoreboard.pipe(self.snd_max).min(u64::from(u32::MAX)) as u32;
        }
        let out = self.snd_max.checked_distance(self.snd_una).unwrap_or(0);
        let sacked = self.scoreboard.sacked();
        let gone = sacked
            .bytes_in(self.snd_una, self.snd_max)
            .saturating_add(self.rack.lost_bytes(sacked, self.snd_una, self.snd_max));
        u64::from(out).saturating_sub(gone) as u32
    }

    /// Seventh step: a payload for a state that receives data. `seq` is its first byte.
    fn handle_data(
        &mut self,
        _now_ns: u64,
        mut seq: SeqNumber,
        mut payload: B,
        sink: &mut impl RecvSink<B>,
    ) -> Verdict {
        let mut len = payload.len() as u32;
        if seq.lt(self.rcv_nxt) {
            let dup = self.rcv_nxt.wrapping_distance(seq);
            if dup >= len {
                self.report_duplicate(SeqRange::new(seq, seq + len));
                self.ack_need = AckNeed::Now;
                sink.discard(payload);
                return Verdict::Accepted;
            }
            // RFC 2883 §4: report the duplicated head as a D-SACK.
            self.report_duplicate(SeqRange::new(seq, self.rcv_nxt));
            payload.trim_front(dup as usize);
            seq = self.rcv_nxt;
            len -= dup;
        }
        // RFC 9293 §3.10.7.4: keep only what the window allows.
        let room = self.rcv_adv.checked_distance(seq).unwrap_or(0);
        if len > room {
            payload.truncate(room as usize);
            len = room;
            self.ack_need = AckNeed::Now;
        }
        if len == 0 {
            self.ack_need = AckNeed::Now;
            sink.discard(payload);
            return Verdict::Dropped(DropReason::OutOfWindow);
        }
        if seq != self.rcv_nxt {
            // RFC 5681 §4.2: each out-of-order segment is ACKed at once (a duplicate ACK, with
            // SACK blocks), even when a batch brought several.
            self.ack_need = AckNeed::Now;
            self.dup_acks_owed = (self.dup_acks_owed + 1).min(DUP_ACKS_OWED_MAX);
            return match self.park(seq, payload, sink) {
                true => Verdict::Accepted,
                false => Verdict::Dropped(DropReason::OooQueueFull),
            };
        }
        let had_holes = self.ooo_len > 0;
        self.advance_rcv_nxt(len);
        self.rcv_lent += len;
        sink.deliver(payload);
        self.drain_in_order(sink);
        self.sack_rx.handle_rcv_nxt(self.rcv_nxt);
        // RFC 9293 §3.8.6.3 / RFC 5681 §4.2: ACK every second full-sized segment, at once when
        // a hole fills, in quick-ACK mode at the start, or when delayed ACKs are off.
        let full = len + 12 >= u32::from(self.config.mss);
        if full {
            self.segs_unacked += 1;
        }
        if had_holes
            || self.config.delayed_ack_ns == 0
            || self.quick_acks > 0
            || self.segs_unacked >= 2
        {
            self.quick_acks = self.quick_acks.saturating_sub(1);
            self.ack_need = AckNeed::Now;
        } else if self.ack_need < AckNeed::Delayed {
            self.ack_need = AckNeed::Delayed;
        }
        Verdict::Accepted
    }

    fn report_duplicate(&mut self, range: SeqRange) {
        if self.sack_enabled && !range.is_empty() {
            self.sack_rx.handle_duplicate(range);
            self.dsack_pending = true;
        }
    }

    fn advance_rcv_nxt(&mut self, n: u32) {
        self.rcv_nxt += n;
        if self.rcv_adv.lt(self.rcv_nxt) {
            self.rcv_adv = self.rcv_nxt;
        }
    }

    /// Parks an out-of-order payload at `seq`, trimmed against its neighbours so that no
    /// byte is held twice. Returns `false` (payload discarded) when the queue is full.
    fn park(&mut self, seq: SeqNumber, mut payload: B, sink: &mut impl RecvSink<B>) -> bool {
        let mut start = seq;
        let mut end = seq + payload.len();
        let n = self.ooo_len;
        // The first entry that starts after `start`.
        let at = self.ooo[..n]
            .iter()
            .position(|e| e.as_ref().is_some_and(|(s, _)| s.gt(start)))
            .unwrap_or(n);
        if at > 0 {
            if let Some((ps, pb)) = &self.ooo[at - 1] {
                let pe = *ps + pb.len();
                if pe.ge(end) {
                    self.report_duplicate(SeqRange::new(start, end));
                    sink.discard(payload);
                    return true;
                }
                if pe.gt(start) {
                    payload.trim_front(pe.wrapping_distance(start) as usize);
                    start = pe;
                }
            }
        }
        if let Some(Some((ns, _))) = self.ooo.get(at).filter(|_| at < n) {
            if ns.lt(end) {
                payload.truncate(ns.wrapping_distance(start) as usize);
                end = *ns;
            }
        }
        if payload.is_empty() {
            sink.discard(payload);
            return true;
        }
        if n == OOO_SEGMENTS_MAX {
            sink.discard(payload);
            return false;
        }
        let len = payload.len() as u32;
        self.ooo[n] = Some((start, payload));
        self.ooo[at..=n].rotate_right(1);
        self.ooo_len += 1;
        self.rcv_parked += len;
        self.sack_rx
            .handle_segment(self.rcv_nxt, SeqRange::new(start, end));
        self.counters.ooo_segments += 1;
        true
    }

    /// Delivers parked payloads that are now in order.
    fn drain_in_order(&mut self, sink: &mut impl RecvSink<B>) {
        while self.ooo_len > 0 {
            let starts_in_order = self.ooo[0]
                .as_ref()
                .is_some_and(|(s, _)| s.le(self.rcv_nxt));
            if !starts_in_order {
                break;
            }
            let n = self.ooo_len;
            self.ooo[..n].rotate_left(1);
            self.ooo_len -= 1;
            let Some((s, mut b)) = self.ooo[n - 1].take() else {
                break;
            };
            let len = b.len() as u32;
            self.rcv_parked = self.rcv_parked.saturating_sub(len);
            let old = self.rcv_nxt.wrapping_distance(s);
            if old >= len {
                sink.discard(b);
                continue;
            }
            b.trim_front(old as usize);
            let fresh = len - old;
            self.advance_rcv_nxt(fresh);
            self.rcv_lent += fresh;
            sink.deliver(b);
        }
    }

    /// Gives every parked payload back (before dropping a closed connection).
    pub fn drain(&mut self, sink: &mut impl RecvSink<B>) {
        for entry in &mut self.ooo {
            if let Some((_, b)) = entry.take() {
                sink.discard(b);
            }
        }
        self.ooo_len = 0;
        self.rcv_parked = 0;
    }

    /// Eighth step: the peer's FIN at RCV.NXT.
    fn handle_fin(&mut self, now_ns: u64) {
        self.fin_seq = None;
        self.advance_rcv_nxt(1);
        self.ack_need = AckNeed::Now;
        self.ev_peer_closed = true;
        match self.state {
            State::SynReceived | State::Established => self.state = State::CloseWait,
            // Our FIN is not acknowledged yet (handle_ack moved us on otherwise).
            State::FinWait1 => self.state = State::Closing,
            State::FinWait2 => self.enter_time_wait(now_ns),
            _ => {}
        }
    }

    fn enter_time_wait(&mut self, now_ns: u64) {
        self.state = State::TimeWait;
        self.close_at = Some(now_ns.saturating_add(self.config.time_wait_ns));
        self.rto_at = None;
        self.rack_at = None;
        self.tlp_at = None;
        self.tlp_due = false;
        self.persist_at = None;
        self.keepalive_at = None;
        self.pending_rexmit = None;
        if !self.closed_reported {
            self.ev_closed = Some(CloseReason::Closed);
        }
    }

    fn enter_closed(&mut self, reason: CloseReason) {
        self.state = State::Closed;
        if !self.closed_reported && self.ev_closed.is_none() {
            self.ev_closed = Some(reason);
        }
        self.rto_at = None;
        self.rack_at = None;
        self.tlp_at = None;
        self.tlp_due = false;
        self.delack_at = None;
        self.persist_at = None;
        self.keepalive_at = None;
        self.close_at = None;
        self.ack_need = AckNeed::None;
        self.syn_due = false;
        self.probe_due = false;
        self.pending_rexmit = None;
    }

    /// The ACK a refused segment asks for: at once if it carried data or a FIN (a peer that
    /// retransmits must learn where we are, and Linux's out-of-window limit exempts those
    /// too), else through [`Connection::challenge_ack`]'s rate limit.
    fn provoked_ack(&mut self, now_ns: u64, carries_data: bool) {
        if carries_data {
            self.ack_need = AckNeed::Now;
        } else {
            self.challenge_ack(now_ns);
        }
    }

    /// An ACK provoked by a segment the peer (or an attacker) controls: RFC 5961 §7's rate
    /// limit applies.
    fn challenge_ack(&mut self, now_ns: u64) {
        if now_ns.saturating_sub(self.challenge_window_ns) >= SECOND_NS {
            self.challenge_window_ns = now_ns;
            self.challenge_count = 0;
        }
        if self.challenge_count < CHALLENGE_ACKS_PER_SECOND {
            self.challenge_count += 1;
            self.counters.challenge_acks += 1;
            self.ack_need = AckNeed::Now;
        } else {
            self.counters.challenge_acks_suppressed += 1;
        }
    }

    /// The window the receive budget allows now, rounded down to what our scale can say.
    fn window_to_advertise(&self) -> u32 {
        let used = self.rcv_lent.saturating_add(self.rcv_parked);
        let free = self.config.recv_buffer_bytes.saturating_sub(used);
        let max = 0xFFFFu32 << self.rcv_shift;
        (free.min(max) >> self.rcv_shift) << self.rcv_shift
    }

    fn rearm_keepalive(&mut self, now_ns: u64) {
        self.keepalive_at = match self.config.keepalive {
            Some(k) if self.keepalive_sent == 0 => Some(now_ns.saturating_add(k.idle_ns)),
            Some(k) => Some(now_ns.saturating_add(k.interval_ns)),
            None => None,
        };
    }

    // ----- Output -----

    /// The next segment to emit, if any. Call until `None` after every input.
    pub fn poll_transmit(&mut self, now_ns: u64) -> Option<Transmit> {
        if let Some(seq) = self.rst_due.take() {
            let mut repr = self.bare_repr(seq, Flags::RST);
            // An abort (or a keepalive timeout) closed the connection first and ACKs what it
            // received, as Linux does. A RST answering an unacceptable ACK in SYN-SENT or
            // SYN-RECEIVED leaves the state alone and takes RFC 9293 §3.10.7.3/§3.10.7.4's
            // form <SEQ=SEG.ACK><CTL=RST>, without ACK (Linux's tcp_v4_send_reset too).
            if self.state == State::Closed {
                repr.ack = Some(self.rcv_nxt.0);
            }
            self.counters.segments_sent += 1;
            return Some(Transmit {
                repr,
                payload_offset: 0,
            });
        }
        match self.state {
            State::Closed => return None,
            State::SynSent | State::SynReceived => {
                if self.syn_due {
                    return Some(self.emit_syn(now_ns));
                }
                if self.state == State::SynReceived && self.ack_need == AckNeed::Now {
                    // A challenge ACK in SYN-RECEIVED repeats the SYN-ACK.
                    return Some(self.emit_syn(now_ns));
                }
                return None;
            }
            _ => {}
        }
        if self.dup_acks_owed > 0 {
            self.dup_acks_owed -= 1;
            let repr = self.ack_repr(now_ns, self.pure_ack_seq(), Flags::empty(), 0);
            // More owed duplicates stay owed; `ack_repr` settled the pending ACK.
            return Some(Transmit {
                repr,
                payload_offset: 0,
            });
        }
        if self.state.sends_data() {
            if let Some(t) = self.next_data_segment(now_ns) {
                return Some(t);
            }
        }
        if self.probe_due {
            self.probe_due = false;
            // Linux's probe: SEG.SEQ = SND.UNA - 1 with no data draws an ACK with the current
            // window (RFC 9293 §3.8.4 keepalive; the same segment probes a zero window).
            let repr = self.ack_repr(now_ns, self.snd_una - 1u32, Flags::empty(), 0);
            return Some(Transmit {
                repr,
                payload_offset: 0,
            });
        }
        let window_update = self.state.receives_data() && {
            let current = self.recv_window();
            let candidate = self.window_to_advertise();
            let threshold = (self.config.recv_buffer_bytes / 2).min(u32::from(self.config.mss));
            current < u32::from(self.config.mss) && candidate >= current.saturating_add(threshold)
        };
        if self.ack_need == AckNeed::Now || window_update {
            let seq = self.pure_ack_seq();
            let repr = self.ack_repr(now_ns, seq, Flags::empty(), 0);
            return Some(Transmit {
                repr,
                payload_offset: 0,
            });
        }
        if self.ack_need == AckNeed::Delayed && self.delack_at.is_none() {
            self.delack_at = Some(now_ns.saturating_add(self.config.delayed_ack_ns));
        }
        None
    }

    fn emit_syn(&mut self, now_ns: u64) -> Transmit {
        self.syn_due = false;
        let window = self.window_to_advertise().min(0xFFFF);
        let flags = Flags::SYN;
        let mut repr = self.bare_repr(self.iss, flags);
        repr.window_len = window as u16;
        repr.max_seg_size = Some(self.config.mss);
        let tsval = ts_clock(now_ns).wrapping_add(self.ts_offset);
        if self.state == State::SynSent {
            repr.window_scale = self.config.window_shift();
            repr.sack_permitted = self.config.sack;
            repr.timestamps = self.config.timestamps.then_some((tsval, 0));
        } else {
            repr.ack = Some(self.rcv_nxt.0);
            repr.window_scale = self.wscale_ok.then_some(self.rcv_shift);
            repr.sack_permitted = self.sack_enabled;
            repr.timestamps = self.ts_enabled.then_some((tsval, self.ts_recent));
            self.last_ack_sent = self.rcv_nxt;
            self.ack_need = AckNeed::None;
        }
        self.snd_nxt = self.iss + 1u32;
        if self.snd_max.le(self.iss) {
            self.snd_max = self.snd_nxt;
        }
        self.rtt_probe = (self.timeouts == 0).then_some((self.iss + 1u32, now_ns));
        if self.rto_at.is_none() {
            self.rto_at = Some(now_ns.saturating_add(self.rtt.rto_ns()));
        }
        self.counters.segments_sent += 1;
        Transmit {
            repr,
            payload_offset: 0,
        }
    }

    /// The sequence number of a segment without data: SND.MAX, not a SND.NXT that go-back-N
    /// rewound (BSD's `tcp_output` does the same). The peer has usually received up to
    /// SND.MAX, and RFC 9293 §3.10.7.4 finds a zero-length segment below RCV.NXT unacceptable,
    /// so an ACK numbered from the rewound SND.NXT is dropped unread: when both sides are
    /// resending after timeouts, neither learns of the other's ACKs and both time out for
    /// good.
    fn pure_ack_seq(&self) -> SeqNumber {
        self.snd_max
    }

    /// A header with our ports, `seq` and `flags`, and nothing else.
    fn bare_repr(&self, seq: SeqNumber, flags: Flags) -> Repr {
        Repr {
            src_port: self.local_port,
            dst_port: self.remote_port,
            seq: seq.0,
            ack: None,
            flags,
            window_len: 0,
            max_seg_size: None,
            window_scale: None,
            sack_permitted: false,
            sack_ranges: [(0, 0); melange_wire::tcp::SACK_BLOCKS_MAX],
            sack_count: 0,
            timestamps: None,
            payload_len: 0,
        }
    }

    /// A segment of a synchronized connection: ACK, window, timestamps, SACK blocks. Marks
    /// everything an ACK settles (pending ACKs, the delayed-ACK timer, Last.ACK.sent).
    fn ack_repr(&mut self, now_ns: u64, seq: SeqNumber, flags: Flags, payload_len: u32) -> Repr {
        let mut repr = self.bare_repr(seq, flags);
        // RFC 9293 §3.8.6.2.2: move the right edge only by a worthwhile amount, never back.
        let candidate = self.window_to_advertise();
        let current = self.recv_window();
        let threshold = (self.config.recv_buffer_bytes / 2).min(u32::from(self.config.mss));
        if candidate >= current.saturating_add(threshold)
            || (candidate > current && current == 0 && candidate >= threshold)
        {
            self.rcv_adv = self.rcv_nxt + candidate;
        }
        let window = (self.recv_window() >> self.rcv_shift).min(0xFFFF);
        repr.window_len = window as u16;
        repr.ack = Some(self.rcv_nxt.0);
        if self.ts_enabled {
            let tsval = ts_clock(now_ns).wrapping_add(self.ts_offset);
            repr.timestamps = Some((tsval, self.ts_recent));
        }
        if self.sack_enabled && (self.ooo_len > 0 || self.dsack_pending) {
            let mut blocks = [SeqRange::new(SeqNumber(0), SeqNumber(0)); SACK_BLOCKS_MAX];
            let room = if self.ts_enabled { 3 } else { 4 };
            let n = self.sack_rx.poll_blocks(&mut blocks[..room]);
            for (i, b) in blocks[..n].iter().enumerate() {
                repr.sack_ranges[i] = (b.start.0, b.end.0);
            }
            repr.sack_count = n;
            self.dsack_pending = false;
        }
        repr.payload_len = payload_len as usize;
        self.last_ack_sent = self.rcv_nxt;
        self.ack_need = AckNeed::None;
        self.delack_at = None;
        self.segs_unacked = 0;
        self.counters.segments_sent += 1;
        repr
    }

    /// Option bytes a data segment may need, so its payload still fits the peer's MSS.
    fn options_reserve(&self) -> u32 {
        let ts = if self.ts_enabled { 12 } else { 0 };
        let sack = if self.sack_enabled && (self.ooo_len > 0 || self.dsack_pending) {
            if self.ts_enabled {
                4 + 3 * 8
            } else {
                4 + 4 * 8
            }
        } else {
            0
        };
        ts + sack
    }

    /// The next data, FIN or retransmission segment the windows allow.
    fn next_data_segment(&mut self, now_ns: u64) -> Option<Transmit> {
        let fin_end = if self.fin_queued {
            self.snd_buf_end + 1u32
        } else {
            self.snd_buf_end
        };
        let mss = u32::from(self.peer_mss.min(self.config.mss));
        let payload_max = mss.saturating_sub(self.options_reserve()).max(1);
        // A fast retransmit goes first, whatever the window (RFC 5681 §3.2 step 4).
        if let Some(p) = self.pending_rexmit.take() {
            let start = p.range.start.max(self.snd_una);
            let end = p.range.end.min(self.snd_max);
            if start.lt(end) {
                let r = SeqRange::new(start, end.min(start + payload_max));
                if self.sack_enabled && self.in_fast_recovery {
                    self.scoreboard.handle_transmit(NextSeg::Retransmit(r));
                }
                let t = self.emit_range(now_ns, r, true);
                if self.in_fast_recovery && self.rack_active() {
                    self.arm_pto(now_ns);
                }
                return Some(t);
            }
        }
        if std::mem::take(&mut self.tlp_due) {
            if let Some(t) = self.emit_probe(now_ns, payload_max, fin_end) {
                return Some(t);
            }
        }
        let rack = self.rack_active();
        if self.in_fast_recovery && self.sack_enabled {
            // RFC 6675 §5 (C): while cwnd - pipe >= 1 SMSS, send what NextSeg says.
            let pipe = u64::from(self.recovery_pipe());
            if u64::from(self.cc.cwnd_bytes()) < pipe + u64::from(self.smss()) {
                self.cwnd_limited = true;
                return None;
            }
            let wnd_edge = self.snd_una + self.snd_wnd;
            let data_end = if fin_end.gt(wnd_edge) && self.snd_buf_end.gt(wnd_edge) {
                wnd_edge
            } else {
                fin_end
            };
            let next = if rack {
                // RACK decides what is lost (RFC 8985 §9.2: not RFC 6675's IsLost): resend
                // that first, lost retransmissions included; then new data or the rescue.
                match self.rack.first_lost(self.scoreboard.sacked(), payload_max) {
                    Some(r) => NextSeg::Retransmit(r),
                    None => self
                        .scoreboard
                        .next_seg_new_or_rescue(self.snd_max, data_end)?,
                }
            } else {
                self.scoreboard.next_seg(self.snd_max, data_end)?
            };
            self.scoreboard.handle_transmit(next);
            let (r, rexmit) = match next {
                NextSeg::Retransmit(r) | NextSeg::Rescue(r) => (r, true),
                NextSeg::NewData(r) => (r, false),
            };
            let r = SeqRange::new(r.start, r.end.min(r.start + payload_max));
            if r.is_empty() {
                return None;
            }
            let t = self.emit_range(now_ns, r, rexmit);
            if rack {
                // A fast recovery's probe timer restarts with each transmission.
                self.arm_pto(now_ns);
            }
            return Some(t);
        }
        if rack {
            // After a timeout go-back-N only moves forward; what RACK finds lost behind it (a
            // lost retransmission) is resent first, as the window allows, rather than waiting
            // for a second, backed-off timeout.
            if let Some(r) = self.rack.first_lost(self.scoreboard.sacked(), payload_max) {
                if r.start.lt(self.snd_nxt) {
                    let room = self.cwnd_allowance().saturating_sub(self.flight_bytes());
                    if room < r.len() {
                        self.cwnd_limited = true;
                        return None;
                    }
                    return Some(self.emit_range(now_ns, r, true));
                }
            }
        }
        // Go-back-N after a timeout skips what the peer SACKed.
        let mut start = self.snd_nxt.max(self.data_una_if_open());
        while start.lt(self.snd_max) {
            match self.scoreboard.sacked().find(start) {
                Some(r) => start = r.end,
                None => break,
            }
        }
        self.snd_nxt = start;
        if start.ge(fin_end) {
            // RFC 9293 §3.8.6.1: a sender with data must probe a zero window. Under IX's
            // admission the data is still the app's (send_room was 0, so nothing is queued),
            // but it exists all the same: without a probe, a lost window update leaves both
            // sides waiting for ever.
            if self.want_room && self.snd_wnd == 0 && self.snd_una == self.snd_max {
                self.arm_persist(now_ns);
            }
            return None;
        }
        let mut end = fin_end;
        let rexmit = start.lt(self.snd_max);
        if rexmit {
            end = end.min(self.snd_max);
            if let Some(next) = self
                .scoreboard
                .sacked()
                .as_slice()
                .iter()
                .find(|r| r.start.gt(start))
            {
                end = end.min(next.start);
            }
        }
        let flight = self.flight_bytes();
        let cw_room = self.cwnd_allowance().saturating_sub(flight);
        let wnd_edge = self.snd_una + self.snd_wnd;
        let data_end = end.min(self.snd_buf_end);
        let wnd_data_end = if data_end.gt(wnd_edge) {
            wnd_edge.max(start)
        } else {
            data_end
        };
        let by_window = wnd_data_end.checked_distance(start).unwrap_or(0);
        let avail = data_end.checked_distance(start).unwrap_or(0);
        let payload = by_window.min(payload_max).min(cw_room);
        let all_data = payload == avail;
        let fin = self.fin_queued
            && all_data
            && end.gt(self.snd_buf_end)
            && (cw_room > 0 || payload == 0);
        if payload < avail.min(payload_max) && payload == cw_room {
            self.cwnd_limited = true;
        } else if payload == avail {
            self.cwnd_limited = false;
        }
        if payload == 0 && !fin {
            if by_window == 0 && avail > 0 && flight == 0 {
                self.arm_persist(now_ns);
            }
            return None;
        }
        if !rexmit && !fin && payload < payload_max {
            // Nagle (RFC 9293 §3.7.4): with data in flight, hold a small segment.
            if !self.config.nodelay && flight > 0 {
                return None;
            }
            // Sender SWS (RFC 9293 §3.8.6.2.1): send a segment cut by the window only if it is
            // at least half the largest window the peer offered, or all that is queued.
            if payload < avail && payload < self.snd_wnd_max / 2 {
                if flight == 0 {
                    self.arm_persist(now_ns);
                }
                return None;
            }
        }
        let seg_end = start + payload + u32::from(fin);
        let t = self.emit_range(now_ns, SeqRange::new(start, seg_end), rexmit);
        // Go-back-N moves on even in a recovery entered while it runs (emit_range leaves
        // SND.NXT alone for a recovery's retransmissions, which go out of order).
        if self.snd_nxt.lt(seg_end) {
            self.snd_nxt = seg_end;
        }
        if !rexmit && rack {
            // RFC 8985 §7.2: new data (not a probe) restarts the PTO.
            self.arm_pto(now_ns);
        }
        Some(t)
    }

    /// RFC 8985 §7.3 `TLP_send_probe`: one segment of new data if there is some and the peer's
    /// window takes it (cwnd may be exceeded by this one segment), else the last segment sent
    /// again. The RTO restarts from the probe.
    fn emit_probe(
        &mut self,
        now_ns: u64,
        payload_max: u32,
        fin_end: SeqNumber,
    ) -> Option<Transmit> {
        if self.snd_una == self.snd_max || !self.rack.probe_allowed() {
            return None;
        }
        let wnd_edge = self.snd_una + self.snd_wnd;
        let data_end = self.snd_buf_end.min(wnd_edge);
        let fin_unsent = self.fin_queued && self.snd_max.le(self.snd_buf_end);
        let new_end = if self.snd_nxt == self.snd_max && data_end.gt(self.snd_max) {
            let end = data_end.min(self.snd_max + payload_max);
            // The FIN rides along when the probe takes the last data.
            if end == self.snd_buf_end && self.fin_queued {
                fin_end
            } else {
                end
            }
        } else if self.snd_nxt == self.snd_max && fin_unsent && self.snd_max == self.snd_buf_end {
            fin_end
        } else {
            self.snd_max
        };
        let (r, retransmission) = if new_end.gt(self.snd_max) {
            (SeqRange::new(self.snd_max, new_end), false)
        } else {
            // The last segment not SACKed (outside recovery nothing is: the last segment
            // sent): up to one payload of data, and the FIN if it is that segment's end;
            // never below SND.UNA.
            let sacked = self.scoreboard.sacked();
            let mut end = self.snd_max;
            while let Some(r) = sacked.find(end - 1u32).filter(|_| end.gt(self.snd_una)) {
                end = r.start;
            }
            let fin_sent = self.fin_queued && end.gt(self.snd_buf_end);
            let data_top = if fin_sent { end - 1u32 } else { end };
            let mut start = (data_top - payload_max).max(self.data_una());
            if let Some(below) = sacked.as_slice().iter().rev().find(|r| r.end.le(end)) {
                start = start.max(below.end);
            }
            (SeqRange::new(start, end), true)
        };
        if r.is_empty() {
            return None;
        }
        let flight = self.unsacked_outstanding();
        let in_recovery = self.in_fast_recovery;
        if in_recovery && retransmission {
            self.scoreboard.handle_transmit(NextSeg::Retransmit(r));
        }
        let t = self.emit_range(now_ns, r, retransmission);
        if self.snd_nxt.lt(r.end) {
            self.snd_nxt = r.end;
        }
        self.rack.handle_probe(
            r.start,
            self.snd_max,
            retransmission && !in_recovery,
            flight,
        );
        self.counters.tlp_probes += 1;
        // RFC 8985 §7.3: after the probe, the RTO (not the PTO) is armed again.
        self.rto_at = Some(now_ns.saturating_add(self.rtt.rto_ns()));
        Some(t)
    }

    /// SND.UNA, or the first data byte while the SYN is unacknowledged.
    fn data_una_if_open(&self) -> SeqNumber {
        self.data_una()
    }

    fn arm_persist(&mut self, now_ns: u64) {
        if self.persist_at.is_none() && self.rto_at.is_none() {
            let backoff = self.persist_backoff.min(16);
            let delay = self
                .rtt
                .rto_base_ns()
                .saturating_mul(1 << backoff)
                .min(self.config.rtt.rto_max_ns);
            self.persist_at = Some(now_ns.saturating_add(delay));
        }
    }

    /// Emits `[r.start, r.end)`; an end past the data is our FIN.
    fn emit_range(&mut self, now_ns: u64, r: SeqRange, rexmit: bool) -> Transmit {
        let data_end = r.end.min(self.snd_buf_end);
        let payload = data_end.checked_distance(r.start).unwrap_or(0);
        let fin = self.fin_queued && r.end.gt(self.snd_buf_end);
        let mut flags = Flags::empty();
        if fin {
            flags.insert(Flags::FIN);
        }
        if payload > 0 && data_end == self.snd_buf_end {
            flags.insert(Flags::PSH);
        }
        let repr = self.ack_repr(now_ns, r.start, flags, payload);
        let offset =
            self.snd_una_offset + u64::from(r.start.checked_distance(self.data_una()).unwrap_or(0));
        let end = r.start + payload + u32::from(fin);
        if self.rack_active() && end.gt(r.start) {
            // RFC 8985 §6.2 `RACK_transmit_*`: the send log learns the time of every data
            // segment, a retransmission's included.
            self.rack.handle_transmit(
                now_ns,
                SeqRange::new(r.start, end),
                rexmit,
                self.scoreboard.sacked(),
            );
        }
        if rexmit {
            self.counters.retransmits += 1;
            // Karn: a timed segment that is resent gives no sample.
            if self.rtt_probe.is_some_and(|(e, _)| r.start.lt(e)) {
                self.rtt_probe = None;
            }
        } else if self.rtt_probe.is_none() {
            self.rtt_probe = Some((end, now_ns));
        }
        if (!self.in_fast_recovery || !rexmit) && self.snd_nxt.lt(end) {
            self.snd_nxt = end;
        }
        if self.snd_max.lt(end) {
            self.snd_max = end;
        }
        if self.snd_nxt.gt(self.snd_max) {
            self.snd_max = self.snd_nxt;
        }
        self.last_data_sent_ns = now_ns;
        self.persist_at = None;
        if self.rto_at.is_none() {
            self.rto_at = Some(now_ns.saturating_add(self.rtt.rto_ns()));
        }
        Transmit {
            repr,
            payload_offset: offset,
        }
    }

    /// Whether [`Connection::poll_event`] would return an event: a caller that could not take
    /// every event yet (its queue was full) keeps the connection on its list while this holds.
    pub fn has_event(&self) -> bool {
        self.ev_established
            || self.acked_unreported > 0
            || self.report_room
            || self.ev_peer_closed
            || self.ev_closed.is_some()
    }

    /// The next event for the app, if any.
    pub fn poll_event(&mut self) -> Option<ConnEvent> {
        if std::mem::take(&mut self.ev_established) {
            return Some(ConnEvent::Established);
        }
        if self.acked_unreported > 0 || self.report_room {
            let bytes = self.acked_unreported.min(u64::from(u32::MAX)) as u32;
            self.acked_unreported -= u64::from(bytes);
            self.report_room = false;
            return Some(ConnEvent::Sent { bytes });
        }
        if std::mem::take(&mut self.ev_peer_closed) {
            return Some(ConnEvent::PeerClosed);
        }
        if let Some(reason) = self.ev_closed.take() {
            self.closed_reported = true;
            return Some(ConnEvent::Closed(reason));
        }
        None
    }

    /// The earliest deadline at which [`Connection::handle_timeout`] has work.
    pub fn poll_at(&self) -> Option<u64> {
        let delack = match self.ack_need {
            AckNeed::Delayed => self.delack_at,
            _ => None,
        };
        [
            self.rto_at,
            self.rack_at,
            self.tlp_at,
            delack,
            self.persist_at,
            self.keepalive_at,
            self.close_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs the timers due at `now_ns`.
    pub fn handle_timeout(&mut self, now_ns: u64) {
        let due = |at: Option<u64>| at.is_some_and(|t| t <= now_ns);
        if due(self.close_at) {
            self.close_at = None;
            match self.state {
                State::TimeWait => self.enter_closed(CloseReason::Closed),
                State::FinWait2 => self.enter_closed(CloseReason::TimedOut),
                _ => {}
            }
            return;
        }
        if due(self.delack_at) {
            self.delack_at = None;
            if self.ack_need == AckNeed::Delayed {
                self.ack_need = AckNeed::Now;
            }
        }
        if due(self.rack_at) {
            // RFC 8985 §6.2 step 5: the reordering window of a segment ran out.
            self.rack_at = None;
            if self.rack_active() && self.state.sends_data() {
                self.rack_detect(now_ns);
            }
        }
        if due(self.tlp_at) {
            // RFC 8985 §7.3: the probe timer fired; the probe goes with the next
            // `poll_transmit`, and the RTO restarts from it (checked first, so a PTO capped at
            // the RTO's deadline replaces that timeout).
            self.tlp_at = None;
            if self.pto_armable() {
                self.tlp_due = true;
                self.rto_at = Some(now_ns.saturating_add(self.rtt.rto_ns()));
            }
        }
        if due(self.rto_at) {
            self.rto_at = None;
            self.handle_rto(now_ns);
        }
        if due(self.persist_at) {
            self.persist_at = None;
            let stuck = self.snd_wnd < self.smss().min(self.send_queued().max(1))
                && (self.send_queued() > 0 || self.want_room);
            if stuck && self.state.sends_data() {
                self.persist_backoff += 1;
                // Only unanswered probes count towards giving up: RFC 1122 §4.2.2.17 keeps a
                // connection open as long as the receiver answers them (an ACK resets the
                // count below; the backoff stays).
                self.timeouts += 1;
                if self.timeouts > self.config.retries_max {
                    self.enter_closed(CloseReason::TimedOut);
                    return;
                }
                self.probe_due = true;
                self.counters.window_probes += 1;
                self.arm_persist(now_ns);
            }
        }
        if due(self.keepalive_at) {
            self.keepalive_at = None;
            self.handle_keepalive(now_ns);
        }
    }

    fn handle_keepalive(&mut self, now_ns: u64) {
        let Some(k) = self.config.keepalive else {
            return;
        };
        if !matches!(
            self.state,
            State::Established | State::CloseWait | State::FinWait2
        ) {
            return;
        }
        if self.keepalive_sent >= k.probes {
            // Linux resets a connection whose keepalives went unanswered.
            self.rst_due = Some(self.snd_max);
            self.enter_closed(CloseReason::TimedOut);
            return;
        }
        if self.snd_una == self.snd_max {
            self.probe_due = true;
            self.keepalive_sent += 1;
            self.counters.keepalive_probes += 1;
        }
        self.rearm_keepalive(now_ns);
    }

    /// The retransmission timer fired (RFC 6298 §5.4-5.7).
    fn handle_rto(&mut self, now_ns: u64) {
        self.counters.rto_expirations += 1;
        self.timeouts += 1;
        match self.state {
            State::SynSent | State::SynReceived => {
                if self.timeouts > self.config.syn_retries {
                    self.enter_closed(CloseReason::TimedOut);
                    return;
                }
                self.rtt.handle_timeout();
                self.syn_due = true;
            }
            State::Closed | State::TimeWait => {}
            _ => {
                if self.snd_una == self.snd_max {
                    return;
                }
                if self.timeouts > self.config.retries_max {
                    self.enter_closed(CloseReason::TimedOut);
                    return;
                }
                let flight = self.flight_bytes();
                self.cc.handle_rto(now_ns, flight);
                self.rtt.handle_timeout();
                if self.backoff_mark.is_none() {
                    let ts = ts_clock(now_ns).wrapping_add(self.ts_offset);
                    self.backoff_mark = Some((self.snd_max, ts));
                }
                if self.timeouts >= 2 {
                    // The peer may have reneged on its SACKs (RFC 2018 §8): forget them.
                    self.scoreboard = Scoreboard::new(self.snd_una, self.smss());
                }
                self.scoreboard.handle_rto(self.snd_max);
                // RFC 8985 §6.3: after a timeout everything outstanding is resent, so the send
                // log counts it all lost until it is; the probe episode ends (§7.1).
                self.rack.handle_rto();
                self.rack_at = None;
                self.tlp_at = None;
                self.tlp_due = false;
                self.in_fast_recovery = false;
                self.dup_acks = 0;
                self.recover = Some(self.snd_max);
                self.pending_rexmit = None;
                self.rtt_probe = None;
                // RFC 5681 §3.1 / RFC 6298 (5.4): resend from SND.UNA (go-back-N, skipping
                // SACKed data).
                self.snd_nxt = self.snd_una;
            }
        }
    }
}

/// Our timestamp clock: milliseconds, modulo 2^32.
pub fn ts_clock(now_ns: u64) -> u32 {
    (now_ns / TS_TICK_NS) as u32
}

/// The RST answering a segment that belongs to no connection (RFC 9293 §3.10.7.1, "If the
/// state is CLOSED"), with the ports swapped; `None` for a RST, which is never answered.
pub fn reset_reply(seg: &Repr) -> Option<Repr> {
    if seg.flags.contains(Flags::RST) {
        return None;
    }
    let mut repr = Repr {
        src_port: seg.dst_port,
        dst_port: seg.src_port,
        seq: 0,
        ack: None,
        flags: Flags::RST,
        window_len: 0,
        max_seg_size: None,
        window_scale: None,
        sack_permitted: false,
        sack_ranges: [(0, 0); melange_wire::tcp::SACK_BLOCKS_MAX],
        sack_count: 0,
        timestamps: None,
        payload_len: 0,
    };
    match seg.ack {
        // <SEQ=SEG.ACK><CTL=RST>
        Some(ack) => repr.seq = ack,
        // <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>
        None => {
            let len = seg.payload_len as u32
                + u32::from(seg.flags.contains(Flags::SYN))
                + u32::from(seg.flags.contains(Flags::FIN));
            repr.ack = Some(seg.seq.wrapping_add(len));
        }
    }
    Some(repr)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that collects delivered bytes and counts discards.
    #[derive(Default)]
    struct Collect {
        got: Vec<u8>,
        discarded: usize,
    }
    impl RecvSink<Vec<u8>> for Collect {
        fn deliver(&mut self, data: Vec<u8>) {
            self.got.extend_from_slice(&data);
        }
        fn discard(&mut self, _data: Vec<u8>) {
            self.discarded += 1;
        }
    }

    /// One side of a pair: the connection, the app's stream to send, what arrived.
    struct Side {
        conn: Connection<Vec<u8>>,
        out: Vec<u8>,
        queued: usize,
        sink: Collect,
        events: Vec<ConnEvent>,
        close_when_sent: bool,
        closed: bool,
    }

    impl Side {
        fn new(conn: Connection<Vec<u8>>, out: Vec<u8>, close_when_sent: bool) -> Self {
            Side {
                conn,
                out,
                queued: 0,
                sink: Collect::default(),
                events: Vec::new(),
                close_when_sent,
                closed: false,
            }
        }
        fn pump_app(&mut self, now: u64) {
            while let Some(e) = self.conn.poll_event() {
                self.events.push(e);
            }
            let want = (self.out.len() - self.queued) as u32;
            if want > 0 {
                let taken = self.conn.handle_send(now, want.min(1 << 20));
                self.queued += taken as usize;
            }
            let lent = self.conn.recv_lent();
            self.conn.handle_recv_done(lent);
            if self.close_when_sent
                && !self.closed
                && self.queued == self.out.len()
                && self.conn.can_send()
            {
                self.conn.close(now);
                self.closed = true;
            }
        }
        fn transmit(&mut self, now: u64) -> Vec<(Repr, Vec<u8>)> {
            let mut segs = Vec::new();
            while let Some(t) = self.conn.poll_transmit(now) {
                let at = t.payload_offset as usize;
                let payload = self.out[at..at + t.repr.payload_len].to_vec();
                segs.push((t.repr, payload));
                assert!(segs.len() < 10_000, "transmit loop");
            }
            segs
        }
    }

    /// Runs a client and a server (built from the client's SYN) over a link with 10 µs of
    /// delay that drops the segments `drop(n)` names, until both are closed or nothing is left
    /// to do. Both close once their data is queued.
    fn run(
        config: ConnConfig,
        a: Vec<u8>,
        b: Vec<u8>,
        drop: impl Fn(u64) -> bool,
    ) -> (Side, Side, u64) {
        let client = Connection::connect(
            config,
            Ports {
                local: 40000,
                remote: 80,
            },
            1000,
            0,
        )
        .unwrap();
        let mut c = Side::new(client, a, true);
        let mut now = 0u64;
        let syn = c.transmit(now);
        assert_eq!(syn.len(), 1);
        let server = Connection::accept_syn(
            config,
            Ports {
                local: 80,
                remote: 40000,
            },
            7_000_000,
            now,
            &syn[0].0,
        )
        .unwrap();
        let mut s = Side::new(server, b, true);
        let mut n = 0u64;
        let step = 10_000u64;
        let mut idle_rounds = 0;
        for _ in 0..5_000_000 {
            c.pump_app(now);
            s.pump_app(now);
            let to_s = c.transmit(now);
            let to_c = s.transmit(now);
            let mut idle = to_s.is_empty() && to_c.is_empty();
            now += step;
            for (repr, p) in to_s {
                n += 1;
                if !drop(n) {
                    s.conn.handle_segment(now, &repr, p, &mut s.sink);
                }
            }
            for (repr, p) in to_c {
                n += 1;
                if !drop(n) {
                    c.conn.handle_segment(now, &repr, p, &mut c.sink);
                }
            }
            for side in [&mut c, &mut s] {
                if side.conn.poll_at().is_some_and(|t| t <= now) {
                    side.conn.handle_timeout(now);
                    idle = false;
                }
            }
            if c.conn.is_closed() && s.conn.is_closed() {
                break;
            }
            if idle {
                idle_rounds += 1;
                let next = [c.conn.poll_at(), s.conn.poll_at()]
                    .into_iter()
                    .flatten()
                    .min();
                match next {
                    Some(t) if t > now && idle_rounds > 1 => now = t,
                    Some(_) => {}
                    None if idle_rounds > 2 => break,
                    None => {}
                }
            } else {
                idle_rounds = 0;
            }
        }
        c.pump_app(now);
        s.pump_app(now);
        (c, s, now)
    }

    fn summary(c: &Connection<Vec<u8>>) -> String {
        format!(
            "{} una={} nxt={} max={} buf_end={} wnd={} cwnd={} flight={} rto_at={:?} persist={:?} fr={} dup={} rcv_nxt={} adv={} ooo={} fin_q={} timeouts={}",
            c.state.name(), c.snd_una.0, c.snd_nxt.0, c.snd_max.0, c.snd_buf_end.0, c.snd_wnd, c.cc.cwnd_bytes(), c.flight_bytes(),
            c.rto_at, c.persist_at, c.in_fast_recovery, c.dup_acks, c.rcv_nxt.0, c.rcv_adv.0, c.ooo_len, c.fin_queued, c.timeouts
        )
    }

    fn pattern(len: usize, salt: u8) -> Vec<u8> {
        (0..len)
            .map(|i| {
                (i as u8)
                    .wrapping_mul(31)
                    .wrapping_add(salt ^ (i >> 8) as u8)
            })
            .collect()
    }

    #[test]
    fn handshake_transfer_and_close_both_ways() {
        let config = ConnConfig {
            time_wait_ns: 1_000_000,
            ..ConnConfig::default()
        };
        let a = pattern(300_000, 1);
        let b = pattern(200_000, 7);
        let (c, s, _) = run(config, a.clone(), b.clone(), |_| false);
        assert!(s.sink.got == a);
        assert!(c.sink.got == b);
        assert!(c.events.contains(&ConnEvent::Established));
        assert!(
            c.events.contains(&ConnEvent::Closed(CloseReason::Closed)),
            "{:?}",
            c.events
        );
        assert!(
            s.events.contains(&ConnEvent::Closed(CloseReason::Closed)),
            "{:?}",
            s.events
        );
        assert_eq!(c.conn.state(), State::Closed);
        assert_eq!(s.conn.state(), State::Closed);
        assert_eq!(c.conn.counters().retransmits, 0);
    }

    #[test]
    fn transfer_survives_loss() {
        for (k, config) in [
            ConnConfig::default(),
            ConnConfig {
                sack: false,
                ..ConnConfig::default()
            },
            ConnConfig {
                timestamps: false,
                ..ConnConfig::default()
            },
            ConnConfig {
                congestion: CongestionKind::NewReno,
                window_scaling: false,
                ..ConnConfig::default()
            },
        ]
        .into_iter()
        .enumerate()
        {
            let config = ConnConfig {
                time_wait_ns: 1_000_000,
                ..config
            };
            let a = pattern(500_000, 3);
            let b = pattern(100_000, 9);
            // Drop every 13th segment, and a burst.
            let (c, s, now) = run(config, a.clone(), b.clone(), |n| {
                n % 13 == 0 || (200..206).contains(&n)
            });
            assert_eq!(
                s.sink.got.len(),
                a.len(),
                "config {k} at {now}:\n{}\n{}",
                summary(&c.conn),
                summary(&s.conn)
            );
            assert!(s.sink.got == a, "config {k}");
            eprintln!(
                "config {k}: {now} ns, client {:?}, server {:?}",
                c.conn.counters(),
                s.conn.counters()
            );
            assert!(c.sink.got == b, "config {k}");
            assert_eq!(c.conn.state(), State::Closed, "config {k} at {now}");
            assert_eq!(s.conn.state(), State::Closed, "config {k}");
        }
    }

    /// Delivers what `a` and `b` emit to each other (no loss, no delay) until both are quiet.
    fn exchange(a: &mut Connection<Vec<u8>>, b: &mut Connection<Vec<u8>>, now: u64) {
        let mut sink = Collect::default();
        for _ in 0..100 {
            let mut quiet = true;
            while let Some(t) = a.poll_transmit(now) {
                quiet = false;
                b.handle_segment(now, &t.repr, vec![0; t.repr.payload_len], &mut sink);
            }
            while let Some(t) = b.poll_transmit(now) {
                quiet = false;
                a.handle_segment(now, &t.repr, vec![0; t.repr.payload_len], &mut sink);
            }
            if quiet {
                return;
            }
        }
        panic!("no quiet");
    }

    /// Found by the simulation (seed 27912): in TIME-WAIT, a retransmission of the peer's FIN
    /// (its ACK was lost) gets an ACK at once and restarts 2 MSL (RFC 9293 §3.10.7.4).
    #[test]
    fn time_wait_acks_a_retransmitted_fin_and_restarts_2msl() {
        let config = ConnConfig {
            time_wait_ns: 10 * SECOND_NS,
            ..ConnConfig::default()
        };
        let ports = Ports {
            local: 40000,
            remote: 80,
        };
        let mut c = Connection::<Vec<u8>>::connect(config, ports, 1000, 0).unwrap();
        let syn = c.poll_transmit(0).unwrap().repr;
        let back = Ports {
            local: 80,
            remote: 40000,
        };
        let mut s = Connection::<Vec<u8>>::accept_syn(config, back, 5000, 0, &syn).unwrap();
        exchange(&mut s, &mut c, 0);
        assert_eq!(
            (c.state(), s.state()),
            (State::Established, State::Established)
        );
        c.close(0);
        exchange(&mut c, &mut s, 0);
        s.close(0);
        // The server's FIN reaches the client; the client's ACK of it is lost.
        let fin = s.poll_transmit(0).unwrap().repr;
        assert!(fin.flags.contains(Flags::FIN));
        let mut sink = Collect::default();
        c.handle_segment(0, &fin, Vec::new(), &mut sink);
        assert_eq!(c.state(), State::TimeWait);
        while c.poll_transmit(0).is_some() {}
        // The server's retransmitted FIN, 5 s later.
        let at = 5 * SECOND_NS;
        assert_eq!(
            c.handle_segment(at, &fin, Vec::new(), &mut sink),
            Verdict::Accepted
        );
        let ack = c
            .poll_transmit(at)
            .expect("an ACK of the retransmitted FIN");
        assert_eq!(ack.repr.ack, Some(fin.seq.wrapping_add(1)));
        assert_eq!(c.poll_at(), Some(at + config.time_wait_ns));
        assert_eq!(c.counters().challenge_acks, 0);
    }
}
