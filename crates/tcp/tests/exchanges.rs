//! Exchange tests of [`Connection`]: each test plays the peer, feeding segments with `send!`
//! and checking every header the connection emits with `recv!`, field by field, as smoltcp's
//! TCP tests do. Only the public API is used, so these tests pin down the behaviour a
//! transport sees: the RFC 9293 state machine (§3.3.2, §3.10), each option, the timers, loss
//! recovery, RFC 5961's defences, SYN cookies and sequence-number wraparound.
//!
//! # The test language
//!
//! - [`TestConn`] holds the connection, a virtual clock (`now`, nanoseconds), the app's
//!   outgoing stream (every byte the app queued, so that a [`Transmit`]'s `payload_offset` can
//!   be turned back into bytes), the bytes delivered to the app, and the segments emitted by
//!   timers that a test has not checked yet.
//! - [`seg()`] builds a segment with defaults (no flags, no ACK, window [`WIN`], no options,
//!   no payload): `seg().seq(x).ack(y).fin().win(w).payload(b"..").ts(v, e).sack(&[..])`.
//!   The same builder describes what the peer sends and what we expect to receive.
//! - `send!(t, seg)` feeds a segment from the peer and asserts `Verdict::Accepted`;
//!   `send!(t, seg => verdict)` asserts another verdict.
//! - `recv!(t, [seg, ...])` drains `poll_transmit` and asserts the exact list of segments
//!   (every header field and the payload bytes); `recv_nothing!(t)` asserts silence.
//! - `events!(t, [..])` drains `poll_event` and asserts the exact list.
//! - `t.advance(ns)` moves the clock, running each timer at its own deadline on the way (what
//!   the timers send waits for the next `recv!`); `t.fire()` jumps to the next deadline.
//!
//! Sequence numbers are written from the two ISSs, [`LOCAL`] (ours) and [`REMOTE`] (the
//! peer's), so `seg().seq(REMOTE + 1).ack(LOCAL + 1)` is the peer's first data segment.
// `recv!(t, [ack.clone()])` reads as the exchange it checks; `slice::from_ref` would not.
#![allow(clippy::cloned_ref_to_slice_refs)]

use std::collections::VecDeque;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use melange_core::contract::CloseReason;
use melange_tcp::cc::CongestionKind;
use melange_tcp::conn::{
    reset_reply, ConnConfig, ConnEvent, Connection, DropReason, Keepalive, Ports, RecvSink, State,
    Transmit, Verdict, CHALLENGE_ACKS_PER_SECOND, MSS_DEFAULT, MSS_MIN, OOO_SEGMENTS_MAX,
    QUICK_ACKS_INITIAL,
};
use melange_tcp::cookie::SynCookies;
use melange_tcp::isn::FourTuple;
use melange_tcp::listen::{ListenError, ListenerIndex, Listeners, SynAckLocal, SynDecision};
use melange_tcp::siphash::SipKey;
use melange_wire::tcp::{Flags, Repr, SACK_BLOCKS_MAX};

// ----- Constants -----

/// Our port.
const LOCAL_PORT: u16 = 80;
/// The peer's port.
const REMOTE_PORT: u16 = 49_152;
/// Our ISS.
const LOCAL: u32 = 10_000;
/// The peer's ISS.
const REMOTE: u32 = 500_000;
/// Our first data byte's sequence number.
const L: u32 = LOCAL + 1;
/// The peer's first data byte's sequence number.
const R: u32 = REMOTE + 1;
/// The receive and send budgets of [`config`], and so our window on a fresh connection.
const BUF: u32 = 64_000;
/// The default window field of [`seg()`]: what the peer advertises, and what we advertise on
/// a fresh connection with [`config`] (the budget fits 16 bits, so it is not scaled).
const WIN: u16 = 64_000;
/// The payload of a full segment without options (our MSS and the peer's).
const MSS: u32 = 1460;
/// The payload of a full segment with timestamps.
const MSS_TS: u32 = 1448;
/// The peer's first timestamp.
const PEER_TS: u32 = 70_000;
const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;

/// The configuration most tests use: the defaults, with 64 000-byte budgets so that windows
/// read as plain numbers, and a 40 ms delayed ACK so that the timer is visible.
fn config() -> ConnConfig {
    ConnConfig {
        recv_buffer_bytes: BUF,
        send_buffer_bytes: BUF,
        delayed_ack_ns: 40 * MS,
        ..ConnConfig::default()
    }
}

/// [`config`] with NewReno, whose numbers are easy to follow by hand.
fn newreno() -> ConnConfig {
    ConnConfig {
        congestion: CongestionKind::NewReno,
        ..config()
    }
}

/// [`newreno`] without RACK-TLP: SACK recovery by RFC 6675's DupThresh alone.
fn rfc6675() -> ConnConfig {
    ConnConfig {
        rack_tlp: false,
        ..newreno()
    }
}

fn ports() -> Ports {
    Ports {
        local: LOCAL_PORT,
        remote: REMOTE_PORT,
    }
}

/// Byte `i` of either direction's test stream: a pattern with period 251, so misplaced bytes
/// show up.
fn stream(from: u64, len: usize) -> Vec<u8> {
    (from..from + len as u64)
        .map(|i| (i % 251) as u8 ^ 0x5a)
        .collect()
}

// ----- Segments -----

/// A segment, either direction, without ports (`send!` fills in the peer's, `recv!` checks
/// ours).
#[derive(Clone, PartialEq, Eq)]
struct Seg {
    seq: u32,
    ack: Option<u32>,
    flags: Flags,
    win: u16,
    mss: Option<u16>,
    ws: Option<u8>,
    sack_perm: bool,
    sack: Vec<(u32, u32)>,
    ts: Option<(u32, u32)>,
    payload: Vec<u8>,
}

/// A segment with the defaults: sequence number 0, no ACK, no flags, window [`WIN`], no
/// options, no payload.
fn seg() -> Seg {
    Seg {
        seq: 0,
        ack: None,
        flags: Flags::empty(),
        win: WIN,
        mss: None,
        ws: None,
        sack_perm: false,
        sack: Vec::new(),
        ts: None,
        payload: Vec::new(),
    }
}

impl Seg {
    fn seq(mut self, seq: u32) -> Self {
        self.seq = seq;
        self
    }
    fn ack(mut self, ack: u32) -> Self {
        self.ack = Some(ack);
        self
    }
    fn flag(mut self, flag: Flags) -> Self {
        self.flags.insert(flag);
        self
    }
    fn syn(self) -> Self {
        self.flag(Flags::SYN)
    }
    fn fin(self) -> Self {
        self.flag(Flags::FIN)
    }
    fn rst(self) -> Self {
        self.flag(Flags::RST)
    }
    fn psh(self) -> Self {
        self.flag(Flags::PSH)
    }
    fn win(mut self, win: u16) -> Self {
        self.win = win;
        self
    }
    fn mss(mut self, mss: u16) -> Self {
        self.mss = Some(mss);
        self
    }
    fn ws(mut self, shift: u8) -> Self {
        self.ws = Some(shift);
        self
    }
    fn sack_perm(mut self) -> Self {
        self.sack_perm = true;
        self
    }
    fn sack(mut self, blocks: &[(u32, u32)]) -> Self {
        self.sack = blocks.to_vec();
        self
    }
    fn ts(mut self, tsval: u32, tsecr: u32) -> Self {
        self.ts = Some((tsval, tsecr));
        self
    }
    fn payload(mut self, data: &[u8]) -> Self {
        self.payload = data.to_vec();
        self
    }
    /// `len` bytes of [`stream`] from offset `from`.
    fn data(self, from: u64, len: usize) -> Self {
        self.payload(&stream(from, len))
    }

    /// The segment as the peer sends it.
    fn to_repr(&self) -> Repr {
        assert!(self.sack.len() <= SACK_BLOCKS_MAX);
        let mut sack_ranges = [(0, 0); SACK_BLOCKS_MAX];
        sack_ranges[..self.sack.len()].copy_from_slice(&self.sack);
        Repr {
            src_port: REMOTE_PORT,
            dst_port: LOCAL_PORT,
            seq: self.seq,
            ack: self.ack,
            flags: self.flags,
            window_len: self.win,
            max_seg_size: self.mss,
            window_scale: self.ws,
            sack_permitted: self.sack_perm,
            sack_ranges,
            sack_count: self.sack.len(),
            timestamps: self.ts,
            payload_len: self.payload.len(),
        }
    }

    fn from_repr(repr: &Repr, payload: Vec<u8>) -> Seg {
        Seg {
            seq: repr.seq,
            ack: repr.ack,
            flags: repr.flags,
            win: repr.window_len,
            mss: repr.max_seg_size,
            ws: repr.window_scale,
            sack_perm: repr.sack_permitted,
            sack: repr.sack_ranges().to_vec(),
            ts: repr.timestamps,
            payload,
        }
    }

    /// The fields in which `self` and `other` differ, for the failure message.
    fn diff(&self, other: &Seg) -> Vec<&'static str> {
        let mut d = Vec::new();
        let checks: [(&'static str, bool); 10] = [
            ("seq", self.seq == other.seq),
            ("ack", self.ack == other.ack),
            ("flags", self.flags == other.flags),
            ("win", self.win == other.win),
            ("mss", self.mss == other.mss),
            ("ws", self.ws == other.ws),
            ("sackOK", self.sack_perm == other.sack_perm),
            ("sack", self.sack == other.sack),
            ("ts", self.ts == other.ts),
            ("payload", self.payload == other.payload),
        ];
        for (name, same) in checks {
            if !same {
                d.push(name);
            }
        }
        d
    }
}

impl fmt::Display for Seg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = Vec::new();
        for (flag, name) in [
            (Flags::SYN, "SYN"),
            (Flags::FIN, "FIN"),
            (Flags::RST, "RST"),
            (Flags::PSH, "PSH"),
            (Flags::URG, "URG"),
            (Flags::ECE, "ECE"),
            (Flags::CWR, "CWR"),
        ] {
            if self.flags.contains(flag) {
                names.push(name);
            }
        }
        if self.ack.is_some() {
            names.push("ACK");
        }
        if names.is_empty() {
            names.push("-");
        }
        write!(f, "[{}] seq={}", names.join("|"), self.seq)?;
        if let Some(ack) = self.ack {
            write!(f, " ack={ack}")?;
        }
        write!(f, " win={}", self.win)?;
        if let Some(mss) = self.mss {
            write!(f, " mss={mss}")?;
        }
        if let Some(ws) = self.ws {
            write!(f, " ws={ws}")?;
        }
        if self.sack_perm {
            write!(f, " sackOK")?;
        }
        if let Some((v, e)) = self.ts {
            write!(f, " ts={v}/{e}")?;
        }
        if !self.sack.is_empty() {
            write!(f, " sack={:?}", self.sack)?;
        }
        write!(f, " len={}", self.payload.len())?;
        if !self.payload.is_empty() {
            let head = &self.payload[..self.payload.len().min(12)];
            write!(f, " {:?}", String::from_utf8_lossy(head))?;
            if self.payload.len() > 12 {
                write!(f, "..")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Seg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

// ----- The connection under test -----

/// The transport's receive side: delivered bytes in order, discarded payload bytes counted.
#[derive(Default)]
struct Sink {
    received: Vec<u8>,
    discarded: usize,
}

impl RecvSink<Vec<u8>> for Sink {
    fn deliver(&mut self, data: Vec<u8>) {
        self.received.extend_from_slice(&data);
    }
    fn discard(&mut self, data: Vec<u8>) {
        self.discarded += data.len();
    }
}

/// A connection with its app, its clock and the segments it emitted but no test checked yet.
struct TestConn {
    conn: Connection<Vec<u8>>,
    /// The virtual clock in nanoseconds.
    now: u64,
    /// Every byte the app queued, from stream offset 0 (empty with `out_virtual`).
    out: Vec<u8>,
    /// Bytes the app queued in all.
    out_len: u64,
    /// The app's bytes are [`stream`] and not stored (for transfers of gigabytes).
    out_virtual: bool,
    sink: Sink,
    /// Emitted while timers ran, not yet checked by `recv!`.
    emitted: VecDeque<Seg>,
    /// Added to our millisecond clock to give our TSval.
    ts_offset: u32,
}

impl TestConn {
    fn new(conn: Connection<Vec<u8>>, now: u64, ts_offset: u32) -> Self {
        TestConn {
            conn,
            now,
            out: Vec::new(),
            out_len: 0,
            out_virtual: false,
            sink: Sink::default(),
            emitted: VecDeque::new(),
            ts_offset,
        }
    }

    /// An active open at time 0 with ISS `iss`, in SYN-SENT; its SYN not yet drained.
    fn connect_with(config: ConnConfig, iss: u32) -> Self {
        let conn = Connection::connect(config, ports(), iss, 0).expect("valid config");
        TestConn::new(conn, 0, iss)
    }

    /// A passive open at time 0 with ISS `iss` from the peer's `syn`, in SYN-RECEIVED; its
    /// SYN-ACK not yet drained.
    fn accept_with(config: ConnConfig, iss: u32, syn: &Seg) -> Self {
        let conn =
            Connection::accept_syn(config, ports(), iss, 0, &syn.to_repr()).expect("valid config");
        TestConn::new(conn, 0, iss)
    }

    /// Our TSval now.
    fn tsval(&self) -> u32 {
        ((self.now / MS) as u32).wrapping_add(self.ts_offset)
    }

    fn state(&self) -> State {
        self.conn.state()
    }

    /// Feeds one segment from the peer.
    fn send_seg(&mut self, seg: &Seg) -> Verdict {
        // The engine polls after every input; a test's earlier timers have been collected.
        let repr = seg.to_repr();
        self.conn
            .handle_segment(self.now, &repr, seg.payload.clone(), &mut self.sink)
    }

    /// Polls `poll_transmit` until `None`, keeping what it returns.
    fn collect(&mut self) {
        for _ in 0..100_000 {
            let Some(t) = self.conn.poll_transmit(self.now) else {
                return;
            };
            let seg = self.transmit_to_seg(&t);
            self.emitted.push_back(seg);
        }
        panic!("poll_transmit never returned None");
    }

    fn transmit_to_seg(&self, t: &Transmit) -> Seg {
        assert_eq!(
            (t.repr.src_port, t.repr.dst_port),
            (LOCAL_PORT, REMOTE_PORT),
            "ports of an emitted segment"
        );
        let len = t.repr.payload_len as u64;
        assert!(
            t.payload_offset + len <= self.out_len,
            "a segment carries stream bytes {}..{} but the app queued {}",
            t.payload_offset,
            t.payload_offset + len,
            self.out_len
        );
        let payload = if self.out_virtual {
            stream(t.payload_offset, len as usize)
        } else {
            let at = t.payload_offset as usize;
            self.out[at..at + len as usize].to_vec()
        };
        Seg::from_repr(&t.repr, payload)
    }

    /// Everything emitted so far, drained.
    fn emitted(&mut self) -> Vec<Seg> {
        self.collect();
        self.emitted.drain(..).collect()
    }

    #[track_caller]
    fn expect_emitted(&mut self, expected: &[Seg]) {
        let got = self.emitted();
        if got == expected {
            return;
        }
        let mut msg = format!(
            "emitted segments differ at t={} ms (state {}):\n",
            self.now / MS,
            self.state().name(),
        );
        for i in 0..got.len().max(expected.len()) {
            match (expected.get(i), got.get(i)) {
                (Some(e), Some(g)) if e == g => msg += &format!("  #{i} ok:       {g}\n"),
                (Some(e), Some(g)) => {
                    msg += &format!("  #{i} expected: {e}\n");
                    msg += &format!("  #{i} got:      {g}\n");
                    msg += &format!("  #{i} differs in: {}\n", e.diff(g).join(", "));
                }
                (Some(e), None) => {
                    msg += &format!("  #{i} expected: {e}\n  #{i} got:      nothing\n")
                }
                (None, Some(g)) => msg += &format!("  #{i} unexpected: {g}\n"),
                (None, None) => {}
            }
        }
        panic!("{msg}");
    }

    /// The app offers `data`; returns what the connection took (only that is queued).
    fn app_send(&mut self, data: &[u8]) -> u32 {
        let taken = self.conn.handle_send(self.now, data.len() as u32);
        assert!(!self.out_virtual);
        self.out.extend_from_slice(&data[..taken as usize]);
        self.out_len += u64::from(taken);
        taken
    }

    /// The app offers `n` bytes of [`stream`]; returns what was taken.
    fn app_send_n(&mut self, n: u32) -> u32 {
        let taken = self.conn.handle_send(self.now, n);
        if !self.out_virtual {
            let more = stream(self.out_len, taken as usize);
            self.out.extend_from_slice(&more);
        }
        self.out_len += u64::from(taken);
        taken
    }

    /// The app gives back `n` received bytes.
    fn recv_done(&mut self, n: u32) {
        self.conn.handle_recv_done(n);
    }

    fn events(&mut self) -> Vec<ConnEvent> {
        let mut events = Vec::new();
        while let Some(e) = self.conn.poll_event() {
            events.push(e);
            assert!(events.len() < 1000, "poll_event never returned None");
        }
        events
    }

    /// Moves the clock to `at`, running every timer due on the way at its own deadline.
    fn advance_to(&mut self, at: u64) {
        assert!(at >= self.now, "the clock goes forward");
        for _ in 0..100_000 {
            self.collect();
            match self.conn.poll_at() {
                Some(deadline) if deadline <= at => {
                    self.now = self.now.max(deadline);
                    self.conn.handle_timeout(self.now);
                }
                _ => {
                    self.now = at;
                    return;
                }
            }
        }
        panic!("a timer keeps firing without moving on");
    }

    /// Moves the clock forward by `ns`.
    fn advance(&mut self, ns: u64) {
        self.advance_to(self.now + ns);
    }

    /// Jumps to the next deadline, runs it, and returns it.
    fn fire(&mut self) -> u64 {
        self.collect();
        let deadline = self.conn.poll_at().expect("a timer is armed");
        self.now = self.now.max(deadline);
        self.conn.handle_timeout(self.now);
        deadline
    }

    /// The next deadline, after collecting (polling arms the delayed-ACK timer).
    fn poll_at(&mut self) -> Option<u64> {
        self.collect();
        self.conn.poll_at()
    }
}

macro_rules! send {
    ($t:expr, $seg:expr) => {
        send!($t, $seg => Verdict::Accepted)
    };
    ($t:expr, $seg:expr => $verdict:expr) => {{
        let seg: Seg = $seg;
        let got = $t.send_seg(&seg);
        assert_eq!(got, $verdict, "verdict for {seg}");
    }};
}

macro_rules! recv {
    ($t:expr, [$($seg:expr),* $(,)?]) => {
        $t.expect_emitted(&[$($seg),*])
    };
}

macro_rules! recv_nothing {
    ($t:expr) => {
        $t.expect_emitted(&[])
    };
}

macro_rules! events {
    ($t:expr, [$($e:expr),* $(,)?]) => {
        assert_eq!($t.events(), vec![$($e),*], "events")
    };
}

// ----- Scenarios -----

/// The peer's SYN: MSS 1460 and nothing else.
fn peer_syn() -> Seg {
    seg().syn().seq(REMOTE).mss(1460)
}

/// A passive open from `syn`, its SYN-ACK drained unchecked.
fn syn_received_with(config: ConnConfig, syn: Seg) -> (TestConn, Seg) {
    let mut t = TestConn::accept_with(config, LOCAL, &syn);
    let out = t.emitted();
    assert_eq!(out.len(), 1, "one SYN-ACK: {out:?}");
    (t, out[0].clone())
}

/// A passive open from `syn` completed by the peer's ACK (echoing our TSval if `syn` had
/// timestamps); the Established event drained.
fn established_with(config: ConnConfig, syn: Seg) -> TestConn {
    let (mut t, syn_ack) = syn_received_with(config, syn.clone());
    let mut ack = seg().seq(syn.seq.wrapping_add(1)).ack(LOCAL + 1);
    if let (Some((tsval, _)), Some((our, _))) = (syn.ts, syn_ack.ts) {
        ack = ack.ts(tsval, our);
    }
    send!(t, ack);
    assert_eq!(t.state(), State::Established);
    events!(t, [ConnEvent::Established]);
    recv_nothing!(t);
    t
}

/// ESTABLISHED from a passive open with a bare SYN: no window scaling, SACK or timestamps.
fn established() -> TestConn {
    established_with(config(), peer_syn())
}

/// ESTABLISHED with SACK (and nothing else) negotiated.
fn established_sack() -> TestConn {
    established_with(config(), peer_syn().sack_perm())
}

/// ESTABLISHED with timestamps (and nothing else) negotiated; the peer's TSval is
/// [`PEER_TS`].
fn established_ts() -> TestConn {
    established_with(config(), peer_syn().ts(PEER_TS, 0))
}

// ===== Active open (RFC 9293 §3.10.7.3, SYN-SENT) =====

#[test]
fn connect_sends_syn_with_every_option() {
    let mut t = TestConn::connect_with(config(), LOCAL);
    assert_eq!(t.state(), State::SynSent);
    recv!(
        t,
        [seg()
            .syn()
            .seq(LOCAL)
            .win(WIN)
            .mss(1460)
            .ws(0)
            .sack_perm()
            .ts(LOCAL, 0)]
    );
    recv_nothing!(t);
    assert_eq!(
        t.conn.send_room(),
        0,
        "nothing may be sent before ESTABLISHED"
    );
}

#[test]
fn connect_offers_only_the_configured_options() {
    let config = ConnConfig {
        window_scaling: false,
        sack: false,
        timestamps: false,
        ..config()
    };
    let mut t = TestConn::connect_with(config, LOCAL);
    recv!(t, [seg().syn().seq(LOCAL).win(WIN).mss(1460)]);
}

#[test]
fn connect_syn_window_is_never_scaled() {
    // 256 KiB needs a shift of 3; the SYN's own window field is unscaled (RFC 7323 §2.2).
    let config = ConnConfig {
        recv_buffer_bytes: 256 * 1024,
        ..config()
    };
    let mut t = TestConn::connect_with(config, LOCAL);
    recv!(
        t,
        [seg()
            .syn()
            .seq(LOCAL)
            .win(65_535)
            .mss(1460)
            .ws(3)
            .sack_perm()
            .ts(LOCAL, 0)]
    );
}

#[test]
fn syn_ack_establishes_and_negotiates() {
    let mut t = TestConn::connect_with(config(), LOCAL);
    t.emitted();
    t.advance(10 * MS);
    send!(
        t,
        seg()
            .syn()
            .seq(REMOTE)
            .ack(L)
            .win(30_000)
            .mss(1400)
            .ws(2)
            .sack_perm()
            .ts(PEER_TS, LOCAL)
    );
    assert_eq!(t.state(), State::Established);
    recv!(t, [seg().seq(L).ack(R).ts(LOCAL + 10, PEER_TS)]);
    events!(t, [ConnEvent::Established]);
    // RFC 7323 §2.2: the SYN-ACK's window is not scaled.
    assert_eq!(t.conn.send_window(), 30_000);
    assert_eq!(t.conn.options_in_force(), (true, true, Some((2, 0))));
    // The peer's MSS less the timestamps option.
    assert_eq!(t.conn.smss(), 1400 - 12);
    assert_eq!(t.conn.srtt_ns(), Some(10 * MS));
    // The window of the next segment is scaled.
    send!(t, seg().seq(R).ack(L).win(1000).ts(PEER_TS + 1, LOCAL + 10));
    assert_eq!(t.conn.send_window(), 4000);
    recv_nothing!(t);
}

#[test]
fn syn_ack_acking_too_little_draws_a_reset() {
    let mut t = TestConn::connect_with(config(), LOCAL);
    t.emitted();
    // RFC 9293 §3.10.7.3: SEG.ACK =< ISS is unacceptable: <SEQ=SEG.ACK><CTL=RST>.
    send!(t, seg().syn().seq(REMOTE).ack(LOCAL) => Verdict::Dropped(DropReason::SynSentUnexpected));
    recv!(t, [seg().rst().seq(LOCAL).win(0)]);
    assert_eq!(t.state(), State::SynSent);
    events!(t, []);
}

#[test]
fn syn_ack_acking_too_much_draws_a_reset() {
    let mut t = TestConn::connect_with(config(), LOCAL);
    t.emitted();
    send!(t, seg().syn().seq(REMOTE).ack(LOCAL + 2) => Verdict::Dropped(DropReason::SynSentUnexpected));
    recv!(t, [seg().rst().seq(LOCAL + 2).win(0)]);
    assert_eq!(t.state(), State::SynSent);
    // A bare ACK with a bad number gets the same answer.
    send!(t, seg().seq(REMOTE).ack(LOCAL + 100) => Verdict::Dropped(DropReason::SynSentUnexpected));
    recv!(t, [seg().rst().seq(LOCAL + 100).win(0)]);
    // The real SYN-ACK still completes the open.
    send!(t, seg().syn().seq(REMOTE).ack(L).mss(1460));
    assert_eq!(t.state(), State::Established);
}

#[test]
fn rst_with_acceptable_ack_refuses_the_connection() {
    let mut t = TestConn::connect_with(config(), LOCAL);
    t.emitted();
    send!(t, seg().rst().seq(0).ack(L).win(0));
    assert_eq!(t.state(), State::Closed);
    assert!(t.conn.is_closed());
    events!(t, [ConnEvent::Closed(CloseReason::Refused)]);
    recv_nothing!(t);
    assert_eq!(t.conn.poll_at(), None, "no timer outlives the connection");
}

#[test]
fn rst_without_ack_in_syn_sent_is_ignored() {
    let mut t = TestConn::connect_with(config(), LOCAL);
    t.emitted();
    send!(t, seg().rst().seq(REMOTE) => Verdict::Dropped(DropReason::RstInvalid));
    assert_eq!(t.state(), State::SynSent);
    recv_nothing!(t);
    events!(t, []);
}

#[test]
fn rst_with_bad_ack_in_syn_sent_is_ignored_without_reply() {
    let mut t = TestConn::connect_with(config(), LOCAL);
    t.emitted();
    send!(t, seg().rst().seq(REMOTE).ack(LOCAL + 7) => Verdict::Dropped(DropReason::SynSentUnexpected));
    assert_eq!(t.state(), State::SynSent);
    recv_nothing!(t);
}

#[test]
fn ack_without_syn_in_syn_sent_is_dropped() {
    let mut t = TestConn::connect_with(config(), LOCAL);
    t.emitted();
    send!(t, seg().seq(REMOTE).ack(L) => Verdict::Dropped(DropReason::SynSentUnexpected));
    send!(t, seg().seq(REMOTE) => Verdict::Dropped(DropReason::SynSentUnexpected));
    assert_eq!(t.state(), State::SynSent);
    recv_nothing!(t);
}

#[test]
fn syn_ack_payload_is_not_kept() {
    let mut t = TestConn::connect_with(config(), LOCAL);
    t.emitted();
    send!(
        t,
        seg().syn().seq(REMOTE).ack(L).mss(1460).payload(b"early")
    );
    // The ACK covers only the SYN; the peer sends the data again.
    recv!(t, [seg().seq(L).ack(R)]);
    assert!(t.sink.received.is_empty());
    assert_eq!(t.sink.discarded, 5);
}

#[test]
fn syn_ack_without_window_scale_turns_scaling_off() {
    let config = ConnConfig {
        recv_buffer_bytes: 256 * 1024,
        ..config()
    };
    let mut t = TestConn::connect_with(config, LOCAL);
    t.emitted();
    send!(t, seg().syn().seq(REMOTE).ack(L).win(1000).mss(1460));
    // RFC 7323 §2.2: both SYNs must carry the option, so our window is unscaled.
    recv!(t, [seg().seq(L).ack(R).win(65_535)]);
    assert_eq!(t.conn.options_in_force(), (false, false, None));
    send!(t, seg().seq(R).ack(L).win(1000));
    assert_eq!(t.conn.send_window(), 1000);
}

#[test]
fn syn_ack_without_mss_means_536() {
    let mut t = TestConn::connect_with(config(), LOCAL);
    t.emitted();
    send!(t, seg().syn().seq(REMOTE).ack(L));
    recv!(t, [seg().seq(L).ack(R)]);
    assert_eq!(t.conn.smss(), u32::from(MSS_DEFAULT));
    assert_eq!(t.app_send_n(1000), 1000);
    recv!(
        t,
        [
            seg().seq(L).ack(R).data(0, 536),
            seg().seq(L + 536).ack(R).data(536, 464).psh(),
        ]
    );
}

#[test]
fn simultaneous_open_answers_a_syn_with_syn_ack() {
    let mut t = TestConn::connect_with(config(), LOCAL);
    recv!(
        t,
        [seg()
            .syn()
            .seq(LOCAL)
            .mss(1460)
            .ws(0)
            .sack_perm()
            .ts(LOCAL, 0)]
    );
    t.advance(5 * MS);
    // RFC 9293 §3.5 figure 8: a SYN without ACK moves SYN-SENT to SYN-RECEIVED.
    send!(
        t,
        seg()
            .syn()
            .seq(REMOTE)
            .mss(1400)
            .ws(1)
            .sack_perm()
            .ts(PEER_TS, 0)
    );
    assert_eq!(t.state(), State::SynReceived);
    recv!(
        t,
        [seg()
            .syn()
            .seq(LOCAL)
            .ack(R)
            .mss(1460)
            .ws(0)
            .sack_perm()
            .ts(LOCAL + 5, PEER_TS)]
    );
    events!(t, []);
    // The peer's ACK of our SYN completes it.
    send!(t, seg().seq(R).ack(L).win(100).ts(PEER_TS + 1, LOCAL + 5));
    assert_eq!(t.state(), State::Established);
    events!(t, [ConnEvent::Established]);
    assert_eq!(t.conn.send_window(), 200, "scaled by the peer's shift of 1");
    recv_nothing!(t);
}

#[test]
fn simultaneous_open_completes_on_the_peers_syn_ack() {
    let mut t = TestConn::connect_with(config(), LOCAL);
    t.emitted();
    send!(t, seg().syn().seq(REMOTE).mss(1460));
    recv!(t, [seg().syn().seq(LOCAL).ack(R).mss(1460)]);
    // Figure 8 line 6: the peer's SYN-ACK (its SYN again, now with the ACK of ours) arrives.
    send!(t, seg().syn().seq(REMOTE).ack(L).mss(1460));
    assert_eq!(t.state(), State::Established);
    events!(t, [ConnEvent::Established]);
    recv_nothing!(t);
    // Data flows.
    send!(t, seg().seq(R).ack(L).payload(b"hi"));
    recv!(t, [seg().seq(L).ack(R + 2).win(WIN - 2)]);
    assert_eq!(t.sink.received, b"hi");
}

#[test]
fn rst_in_simultaneous_open_refuses() {
    let mut t = TestConn::connect_with(config(), LOCAL);
    t.emitted();
    send!(t, seg().syn().seq(REMOTE).mss(1460));
    t.emitted();
    send!(t, seg().rst().seq(R));
    events!(t, [ConnEvent::Closed(CloseReason::Refused)]);
    assert!(t.conn.is_closed());
}

#[test]
fn syn_is_retransmitted_with_backoff_then_times_out() {
    let mut t = TestConn::connect_with(config(), LOCAL);
    recv!(
        t,
        [seg()
            .syn()
            .seq(LOCAL)
            .mss(1460)
            .ws(0)
            .sack_perm()
            .ts(LOCAL, 0)]
    );
    // RFC 6298 (2.1) and (5.5): 1 s, then doubling; Linux's six retries; the last wait is
    // capped by the 60 s maximum RTO.
    for at_s in [1u64, 3, 7, 15, 31, 63] {
        assert_eq!(t.fire(), at_s * SEC);
        let tsval = LOCAL + (at_s * 1000) as u32;
        recv!(
            t,
            [seg()
                .syn()
                .seq(LOCAL)
                .mss(1460)
                .ws(0)
                .sack_perm()
                .ts(tsval, 0)]
        );
        assert_eq!(t.state(), State::SynSent);
    }
    assert_eq!(t.fire(), 123 * SEC);
    recv_nothing!(t);
    assert_eq!(t.state(), State::Closed);
    events!(t, [ConnEvent::Closed(CloseReason::TimedOut)]);
    assert_eq!(t.conn.counters().rto_expirations, 7);
}

#[test]
fn syn_ack_after_a_retransmitted_syn_gives_no_rtt_sample() {
    let mut t = TestConn::connect_with(config(), LOCAL);
    t.emitted();
    t.fire();
    t.emitted();
    t.advance(100 * MS);
    send!(t, seg().syn().seq(REMOTE).ack(L).mss(1460));
    // Karn's rule: the SYN was sent twice, so the ACK's timing is ambiguous.
    assert_eq!(t.conn.srtt_ns(), None);
    assert_eq!(t.conn.rto_ns(), 2 * SEC, "the backed-off RTO stays");
}

#[test]
fn close_in_syn_sent_gives_up_silently() {
    let mut t = TestConn::connect_with(config(), LOCAL);
    t.emitted();
    t.conn.close(t.now);
    assert!(t.conn.is_closed());
    recv_nothing!(t);
    events!(t, [ConnEvent::Closed(CloseReason::Aborted)]);
    // A late SYN-ACK finds nothing.
    send!(t, seg().syn().seq(REMOTE).ack(L) => Verdict::Dropped(DropReason::Closed));
    recv_nothing!(t);
}

#[test]
fn abort_in_syn_sent_sends_nothing() {
    let mut t = TestConn::connect_with(config(), LOCAL);
    t.emitted();
    t.conn.abort();
    recv_nothing!(t);
    events!(t, [ConnEvent::Closed(CloseReason::Aborted)]);
    assert!(t.conn.is_closed());
}

// ===== Passive open (RFC 9293 §3.10.7.2, SYN-RECEIVED) =====

#[test]
fn syn_ack_to_a_bare_syn_offers_nothing_more() {
    let mut t = TestConn::accept_with(config(), LOCAL, &peer_syn());
    assert_eq!(t.state(), State::SynReceived);
    // RFC 7323 §2.2/§3.2, RFC 2018 §2: no WS, TS or SACK-permitted unless the SYN had them.
    recv!(t, [seg().syn().seq(LOCAL).ack(R).win(WIN).mss(1460)]);
    recv_nothing!(t);
    events!(t, []);
}

#[test]
fn syn_ack_mirrors_every_option_offered() {
    let syn = peer_syn().ws(7).sack_perm().ts(PEER_TS, 0);
    let mut t = TestConn::accept_with(config(), LOCAL, &syn);
    recv!(
        t,
        [seg()
            .syn()
            .seq(LOCAL)
            .ack(R)
            .mss(1460)
            .ws(0)
            .sack_perm()
            .ts(LOCAL, PEER_TS)]
    );
}

#[test]
fn syn_ack_offers_window_scale_only_to_a_syn_that_did() {
    let config = ConnConfig {
        recv_buffer_bytes: 256 * 1024,
        ..config()
    };
    let syn = peer_syn().sack_perm().ts(PEER_TS, 0);
    let mut t = TestConn::accept_with(config, LOCAL, &syn);
    recv!(
        t,
        [seg()
            .syn()
            .seq(LOCAL)
            .ack(R)
            .win(65_535)
            .mss(1460)
            .sack_perm()
            .ts(LOCAL, PEER_TS)]
    );
    send!(t, seg().seq(R).ack(L).win(1000).ts(PEER_TS, LOCAL));
    // Neither side scales.
    assert_eq!(t.conn.send_window(), 1000);
    send!(t, seg().seq(R).ack(L).ts(PEER_TS, LOCAL).payload(b"x"));
    recv!(t, [seg().seq(L).ack(R + 1).win(65_534).ts(LOCAL, PEER_TS)]);
}

#[test]
fn syn_ack_window_is_never_scaled() {
    let config = ConnConfig {
        recv_buffer_bytes: 256 * 1024,
        ..config()
    };
    let mut t = TestConn::accept_with(config, LOCAL, &peer_syn().ws(2));
    recv!(
        t,
        [seg().syn().seq(LOCAL).ack(R).win(65_535).mss(1460).ws(3)]
    );
    send!(t, seg().seq(R).ack(L).win(1000));
    assert_eq!(t.conn.send_window(), 4000);
    // After the handshake our window is scaled by 3: 256 KiB less one byte lent.
    send!(t, seg().seq(R).ack(L).win(1000).payload(b"x"));
    recv!(
        t,
        [seg().seq(L).ack(R + 1).win(((256 * 1024 - 1) >> 3) as u16)]
    );
}

#[test]
fn syn_window_is_taken_unscaled() {
    let (t, _) = syn_received_with(config(), peer_syn().ws(5).win(1000));
    assert_eq!(t.conn.send_window(), 1000);
}

#[test]
fn final_ack_establishes() {
    let (mut t, _) = syn_received_with(config(), peer_syn());
    t.advance(30 * MS);
    send!(t, seg().seq(R).ack(L).win(5000));
    assert_eq!(t.state(), State::Established);
    events!(t, [ConnEvent::Established]);
    recv_nothing!(t);
    assert_eq!(t.conn.send_window(), 5000);
    assert_eq!(t.conn.srtt_ns(), Some(30 * MS));
    assert_eq!(t.conn.send_room(), 5000);
}

#[test]
fn final_ack_carrying_data_delivers_it() {
    let (mut t, _) = syn_received_with(config(), peer_syn());
    send!(t, seg().seq(R).ack(L).payload(b"hello"));
    assert_eq!(t.state(), State::Established);
    assert_eq!(t.sink.received, b"hello");
    recv!(t, [seg().seq(L).ack(R + 5).win(WIN - 5)]);
    events!(t, [ConnEvent::Established]);
}

#[test]
fn final_ack_acking_nothing_draws_a_reset() {
    let (mut t, _) = syn_received_with(config(), peer_syn());
    // RFC 9293 §3.10.7.4 SYN-RECEIVED: SND.UNA < SEG.ACK =< SND.NXT, else
    // <SEQ=SEG.ACK><CTL=RST>.
    send!(t, seg().seq(R).ack(LOCAL) => Verdict::Dropped(DropReason::BadAck));
    recv!(t, [seg().rst().seq(LOCAL).win(0)]);
    assert_eq!(t.state(), State::SynReceived);
    send!(t, seg().seq(R).ack(LOCAL + 2) => Verdict::Dropped(DropReason::BadAck));
    recv!(t, [seg().rst().seq(LOCAL + 2).win(0)]);
    assert_eq!(t.state(), State::SynReceived);
    send!(t, seg().seq(R).ack(L));
    assert_eq!(t.state(), State::Established);
}

#[test]
fn retransmitted_syn_is_answered_again() {
    let (mut t, syn_ack) = syn_received_with(config(), peer_syn().sack_perm());
    t.advance(200 * MS);
    send!(t, peer_syn().sack_perm());
    recv!(t, [syn_ack]);
    assert_eq!(t.state(), State::SynReceived);
}

#[test]
fn rst_in_syn_received_closes_a_passive_open() {
    let (mut t, _) = syn_received_with(config(), peer_syn());
    send!(t, seg().rst().seq(R));
    assert!(t.conn.is_closed());
    events!(t, [ConnEvent::Closed(CloseReason::Reset)]);
    recv_nothing!(t);
}

#[test]
fn inexact_rst_in_syn_received_draws_a_challenge() {
    let (mut t, syn_ack) = syn_received_with(config(), peer_syn());
    // RFC 5961 §3.2: in the window but not RCV.NXT; before ESTABLISHED the challenge is the
    // SYN-ACK again.
    send!(t, seg().rst().seq(R + 10) => Verdict::Dropped(DropReason::RstInvalid));
    recv!(t, [syn_ack]);
    assert_eq!(t.state(), State::SynReceived);
}

#[test]
fn segment_without_ack_in_syn_received_is_dropped() {
    let (mut t, _) = syn_received_with(config(), peer_syn());
    send!(t, seg().seq(R).payload(b"data") => Verdict::Dropped(DropReason::NoAck));
    assert!(t.sink.received.is_empty());
    recv_nothing!(t);
    assert_eq!(t.state(), State::SynReceived);
}

#[test]
fn syn_ack_is_retransmitted_then_the_open_times_out() {
    let (mut t, syn_ack) = syn_received_with(config(), peer_syn());
    for at_s in [1u64, 3, 7, 15, 31, 63] {
        assert_eq!(t.fire(), at_s * SEC);
        recv!(t, [syn_ack.clone()]);
    }
    t.fire();
    assert!(t.conn.is_closed());
    events!(t, [ConnEvent::Closed(CloseReason::TimedOut)]);
    recv_nothing!(t);
}

#[test]
fn close_in_syn_received_sends_fin_after_the_handshake() {
    let (mut t, syn_ack) = syn_received_with(config(), peer_syn());
    t.conn.close(t.now);
    // RFC 9293 §3.10.4: the FIN is queued until ESTABLISHED; the SYN-ACK is still resent.
    recv_nothing!(t);
    assert_eq!(t.fire(), SEC);
    recv!(t, [syn_ack]);
    send!(t, seg().seq(R).ack(L));
    assert_eq!(t.state(), State::FinWait1);
    recv!(t, [seg().fin().seq(L).ack(R)]);
    events!(t, [ConnEvent::Established]);
    send!(t, seg().seq(R).ack(L + 1));
    assert_eq!(t.state(), State::FinWait2);
}

// ===== Option negotiation (RFC 9293 §3.7.1, RFC 7323, RFC 2018) =====

#[test]
fn syn_without_mss_means_536() {
    let mut t = established_with(config(), seg().syn().seq(REMOTE));
    assert_eq!(t.conn.smss(), 536);
    assert_eq!(t.app_send_n(1000), 1000);
    recv!(
        t,
        [
            seg().seq(L).ack(R).data(0, 536),
            seg().seq(L + 536).ack(R).data(536, 464).psh(),
        ]
    );
}

#[test]
fn peer_mss_above_ours_is_clamped_to_ours() {
    let mut t = established_with(config(), seg().syn().seq(REMOTE).mss(9000));
    assert_eq!(t.conn.smss(), MSS);
    t.app_send_n(2000);
    recv!(
        t,
        [
            seg().seq(L).ack(R).data(0, 1460),
            seg().seq(L + 1460).ack(R).data(1460, 540).psh(),
        ]
    );
}

#[test]
fn tiny_peer_mss_is_raised_to_the_floor() {
    let mut t = established_with(config(), seg().syn().seq(REMOTE).mss(10));
    assert_eq!(t.conn.smss(), u32::from(MSS_MIN));
    t.app_send_n(200);
    recv!(
        t,
        [
            seg().seq(L).ack(R).data(0, 88),
            seg().seq(L + 88).ack(R).data(88, 88),
            seg().seq(L + 176).ack(R).data(176, 24).psh(),
        ]
    );
}

#[test]
fn payload_is_mss_less_the_timestamps_option() {
    let mut t = established_ts();
    assert_eq!(t.conn.smss(), MSS_TS);
    t.app_send_n(3000);
    let ts = (LOCAL, PEER_TS);
    recv!(
        t,
        [
            seg().seq(L).ack(R).ts(ts.0, ts.1).data(0, 1448),
            seg().seq(L + 1448).ack(R).ts(ts.0, ts.1).data(1448, 1448),
            seg()
                .seq(L + 2896)
                .ack(R)
                .ts(ts.0, ts.1)
                .data(2896, 104)
                .psh(),
        ]
    );
}

#[test]
fn window_scale_applies_when_both_syns_carry_it() {
    let mut t = established_with(config(), peer_syn().ws(2));
    assert_eq!(t.conn.options_in_force(), (false, false, Some((2, 0))));
    send!(t, seg().seq(R).ack(L).win(1000));
    assert_eq!(t.conn.send_window(), 4000);
    assert_eq!(t.conn.send_room(), 4000);
}

#[test]
fn window_scale_is_ignored_when_we_do_not_offer_it() {
    let config = ConnConfig {
        window_scaling: false,
        ..config()
    };
    let (mut t, syn_ack) = syn_received_with(config, peer_syn().ws(2));
    assert_eq!(syn_ack, seg().syn().seq(LOCAL).ack(R).mss(1460));
    send!(t, seg().seq(R).ack(L).win(1000));
    assert_eq!(t.conn.send_window(), 1000);
    assert_eq!(t.conn.options_in_force(), (false, false, None));
}

#[test]
fn timestamps_are_echoed() {
    let mut t = established_ts();
    t.advance(5 * MS);
    send!(
        t,
        seg().seq(R).ack(L).ts(PEER_TS + 10, LOCAL).payload(b"abc")
    );
    recv!(
        t,
        [seg()
            .seq(L)
            .ack(R + 3)
            .win(WIN - 3)
            .ts(LOCAL + 5, PEER_TS + 10)]
    );
}

#[test]
fn paws_drops_an_old_timestamp_with_an_ack() {
    let mut t = established_ts();
    // RFC 7323 §5.3 R1: SEG.TSval < TS.Recent: drop, and ACK.
    send!(t, seg().seq(R).ack(L).ts(PEER_TS - 1, LOCAL).payload(b"abc") => Verdict::Dropped(DropReason::Paws));
    recv!(t, [seg().seq(L).ack(R).ts(LOCAL, PEER_TS)]);
    assert!(t.sink.received.is_empty());
    // An equal TSval passes.
    send!(t, seg().seq(R).ack(L).ts(PEER_TS, LOCAL).payload(b"abc"));
    assert_eq!(t.sink.received, b"abc");
}

#[test]
fn paws_failures_of_pure_acks_are_rate_limited_but_data_is_always_acked() {
    let mut t = established_ts();
    // RFC 5961 §7: a blind peer could make us answer every old-timestamp ACK; pure ACKs
    // take the challenge ACK limit.
    for _ in 0..CHALLENGE_ACKS_PER_SECOND + 3 {
        send!(t, seg().seq(R).ack(L).ts(PEER_TS - 1, LOCAL) => Verdict::Dropped(DropReason::Paws));
        t.collect();
    }
    assert_eq!(t.emitted().len(), CHALLENGE_ACKS_PER_SECOND as usize);
    assert_eq!(t.conn.counters().challenge_acks_suppressed, 3);
    // A data segment that fails PAWS is still answered: its sender retransmits until told.
    send!(t, seg().seq(R).ack(L).ts(PEER_TS - 1, LOCAL).payload(b"abc") => Verdict::Dropped(DropReason::Paws));
    recv!(t, [seg().seq(L).ack(R).ts(LOCAL, PEER_TS)]);
}

#[test]
fn paws_spares_a_reset() {
    let mut t = established_ts();
    send!(t, seg().rst().seq(R).ts(PEER_TS - 100, 0));
    events!(t, [ConnEvent::Closed(CloseReason::Reset)]);
}

#[test]
fn ts_recent_is_taken_only_from_segments_at_the_left_edge() {
    let mut t = established_ts();
    // RFC 7323 §4.3: SEG.SEQ > Last.ACK.sent, so TS.Recent stays.
    send!(
        t,
        seg()
            .seq(R + 100)
            .ack(L)
            .ts(PEER_TS + 5, LOCAL)
            .data(100, 100)
    );
    recv!(t, [seg().seq(L).ack(R).ts(LOCAL, PEER_TS)]);
    send!(t, seg().seq(R).ack(L).ts(PEER_TS + 3, LOCAL).data(0, 100));
    recv!(
        t,
        [seg()
            .seq(L)
            .ack(R + 200)
            .win(WIN - 200)
            .ts(LOCAL, PEER_TS + 3)]
    );
    assert_eq!(t.sink.received, stream(0, 200));
}

#[test]
fn paws_lapses_after_24_idle_days_and_ts_recent_restarts() {
    let mut t = established_ts();
    t.advance(25 * 86_400 * SEC);
    let ours = t.tsval();
    // RFC 7323 §5.5: TS.Recent is invalid after 24 idle days: accept, and take SEG.TSval.
    send!(t, seg().seq(R).ack(L).ts(5, ours).payload(b"abc"));
    recv!(t, [seg().seq(L).ack(R + 3).win(WIN - 3).ts(ours, 5)]);
    // PAWS applies again against the new TS.Recent.
    send!(t, seg().seq(R + 3).ack(L).ts(4, ours).payload(b"def") => Verdict::Dropped(DropReason::Paws));
    recv!(t, [seg().seq(L).ack(R + 3).win(WIN - 3).ts(ours, 5)]);
}

#[test]
fn sack_blocks_report_out_of_order_data_newest_first() {
    let mut t = established_sack();
    send!(t, seg().seq(R + 100).ack(L).data(100, 100));
    recv!(t, [seg().seq(L).ack(R).sack(&[(R + 100, R + 200)])]);
    send!(t, seg().seq(R + 300).ack(L).data(300, 100));
    recv!(
        t,
        [seg()
            .seq(L)
            .ack(R)
            .sack(&[(R + 300, R + 400), (R + 100, R + 200)])]
    );
    send!(t, seg().seq(R + 500).ack(L).data(500, 100));
    send!(t, seg().seq(R + 700).ack(L).data(700, 100));
    send!(t, seg().seq(R + 900).ack(L).data(900, 100));
    // Without timestamps four blocks fit (RFC 2018 §3); three duplicate ACKs at most.
    let blocks = [
        (R + 900, R + 1000),
        (R + 700, R + 800),
        (R + 500, R + 600),
        (R + 300, R + 400),
    ];
    recv!(
        t,
        [
            seg().seq(L).ack(R).sack(&blocks),
            seg().seq(L).ack(R).sack(&blocks),
            seg().seq(L).ack(R).sack(&blocks),
        ]
    );
    // The first hole fills: the cumulative ACK moves, the rest stay SACKed.
    send!(t, seg().seq(R).ack(L).data(0, 100));
    recv!(t, [seg().seq(L).ack(R + 200).win(WIN - 200).sack(&blocks)]);
    // A block that merges two reports the merged range first.
    send!(t, seg().seq(R + 400).ack(L).data(400, 100));
    recv!(
        t,
        [seg().seq(L).ack(R + 200).win(WIN - 200).sack(&[
            (R + 300, R + 600),
            (R + 900, R + 1000),
            (R + 700, R + 800)
        ])]
    );
    assert_eq!(t.sink.received, stream(0, 200));
}

#[test]
fn sack_blocks_are_three_with_timestamps() {
    let mut t = established_with(config(), peer_syn().sack_perm().ts(PEER_TS, 0));
    for k in 0..4u32 {
        send!(
            t,
            seg()
                .seq(R + 200 * k + 100)
                .ack(L)
                .ts(PEER_TS, LOCAL)
                .data(u64::from(200 * k + 100), 100)
        );
        t.emitted();
    }
    send!(
        t,
        seg().seq(R + 900).ack(L).ts(PEER_TS, LOCAL).data(900, 100)
    );
    recv!(
        t,
        [seg().seq(L).ack(R).ts(LOCAL, PEER_TS).sack(&[
            (R + 900, R + 1000),
            (R + 700, R + 800),
            (R + 500, R + 600)
        ])]
    );
}

#[test]
fn duplicate_segment_draws_a_dsack() {
    let mut t = established_sack();
    send!(t, seg().seq(R).ack(L).data(0, 100));
    recv!(t, [seg().seq(L).ack(R + 100).win(WIN - 100)]);
    // RFC 2883 §4: a spurious retransmission is reported in the first block.
    send!(t, seg().seq(R).ack(L).data(0, 100) => Verdict::Dropped(DropReason::OutOfWindow));
    recv!(
        t,
        [seg()
            .seq(L)
            .ack(R + 100)
            .win(WIN - 100)
            .sack(&[(R, R + 100)])]
    );
    // Reported once.
    send!(t, seg().seq(R + 100).ack(L).data(100, 10));
    recv!(t, [seg().seq(L).ack(R + 110).win(WIN - 110)]);
}

#[test]
fn partly_duplicate_segment_draws_a_dsack_for_the_old_part() {
    let mut t = established_sack();
    send!(t, seg().seq(R).ack(L).data(0, 100));
    t.emitted();
    send!(t, seg().seq(R + 50).ack(L).data(50, 100));
    recv!(
        t,
        [seg()
            .seq(L)
            .ack(R + 150)
            .win(WIN - 150)
            .sack(&[(R + 50, R + 100)])]
    );
    assert_eq!(t.sink.received, stream(0, 150));
}

#[test]
fn duplicate_of_parked_data_draws_a_dsack_and_its_block() {
    let mut t = established_sack();
    send!(t, seg().seq(R + 200).ack(L).data(200, 100));
    send!(t, seg().seq(R + 300).ack(L).data(300, 100));
    t.emitted();
    send!(t, seg().seq(R + 200).ack(L).data(200, 100));
    // RFC 2883 §4: the D-SACK first, then the block holding it.
    recv!(
        t,
        [seg()
            .seq(L)
            .ack(R)
            .sack(&[(R + 200, R + 300), (R + 200, R + 400)])]
    );
}

#[test]
fn no_sack_blocks_unless_negotiated() {
    let mut t = established();
    send!(t, seg().seq(R + 100).ack(L).data(100, 100));
    recv!(t, [seg().seq(L).ack(R)]);
    send!(t, seg().seq(R).ack(L).data(0, 100));
    recv!(t, [seg().seq(L).ack(R + 200).win(WIN - 200)]);
}

#[test]
fn sack_blocks_of_the_peer_are_ignored_unless_negotiated() {
    let mut t = established();
    t.app_send_n(5 * MSS);
    t.emitted();
    for _ in 0..3 {
        send!(t, seg().seq(R).ack(L).sack(&[(L + MSS, L + 2 * MSS)]));
    }
    // Three duplicate ACKs still count (RFC 5681), the blocks do not.
    recv!(t, [seg().seq(L).ack(R).data(0, 1460)]);
}

// ===== Receiving data (RFC 9293 §3.10.7.4, §3.8.6) =====

/// [`config`] with a receive budget of `bytes`.
fn recv_buf(bytes: u32) -> ConnConfig {
    ConnConfig {
        recv_buffer_bytes: bytes,
        ..config()
    }
}

/// ESTABLISHED with a receive budget of `bytes` (so our window starts there).
fn established_recv_buf(bytes: u32) -> TestConn {
    established_with(recv_buf(bytes), peer_syn())
}

#[test]
fn in_order_data_is_delivered_and_acked() {
    let mut t = established();
    send!(t, seg().seq(R).ack(L).payload(b"abc"));
    recv!(t, [seg().seq(L).ack(R + 3).win(WIN - 3)]);
    send!(t, seg().seq(R + 3).ack(L).payload(b"def"));
    recv!(t, [seg().seq(L).ack(R + 6).win(WIN - 6)]);
    assert_eq!(t.sink.received, b"abcdef");
    assert_eq!(t.conn.recv_lent(), 6);
}

#[test]
fn out_of_order_data_waits_for_the_hole() {
    let mut t = established();
    send!(t, seg().seq(R + 3).ack(L).payload(b"def"));
    // RFC 5681 §4.2: an immediate duplicate ACK; the right edge does not move left.
    recv!(t, [seg().seq(L).ack(R)]);
    assert!(t.sink.received.is_empty());
    send!(t, seg().seq(R).ack(L).payload(b"abc"));
    recv!(t, [seg().seq(L).ack(R + 6).win(WIN - 6)]);
    assert_eq!(t.sink.received, b"abcdef");
    assert_eq!(t.conn.counters().ooo_segments, 1);
}

#[test]
fn overlapping_out_of_order_segments_are_trimmed() {
    let mut t = established();
    send!(t, seg().seq(R + 10).ack(L).data(10, 10));
    send!(t, seg().seq(R + 15).ack(L).data(15, 10));
    send!(t, seg().seq(R + 5).ack(L).data(5, 20));
    recv!(
        t,
        [
            seg().seq(L).ack(R),
            seg().seq(L).ack(R),
            seg().seq(L).ack(R)
        ]
    );
    send!(t, seg().seq(R).ack(L).data(0, 5));
    recv!(t, [seg().seq(L).ack(R + 25).win(WIN - 25)]);
    assert_eq!(t.sink.received, stream(0, 25));
    assert_eq!(t.conn.recv_lent(), 25, "no byte is counted twice");
}

#[test]
fn segment_overlapping_delivered_and_parked_data_is_trimmed_both_ways() {
    let mut t = established_sack();
    send!(t, seg().seq(R).ack(L).data(0, 10));
    send!(t, seg().seq(R + 20).ack(L).data(20, 10));
    t.emitted();
    send!(t, seg().seq(R + 5).ack(L).data(5, 30));
    recv!(
        t,
        [seg()
            .seq(L)
            .ack(R + 35)
            .win(WIN - 35)
            .sack(&[(R + 5, R + 10)])]
    );
    assert_eq!(t.sink.received, stream(0, 35));
    assert_eq!(t.conn.recv_lent(), 35);
}

#[test]
fn duplicate_segment_is_acked_without_sack() {
    let mut t = established();
    send!(t, seg().seq(R).ack(L).payload(b"abc"));
    t.emitted();
    send!(t, seg().seq(R).ack(L).payload(b"abc") => Verdict::Dropped(DropReason::OutOfWindow));
    recv!(t, [seg().seq(L).ack(R + 3).win(WIN - 3)]);
    assert_eq!(t.sink.received, b"abc");
}

#[test]
fn data_beyond_the_window_is_trimmed() {
    let mut t = established_recv_buf(3000);
    send!(t, seg().seq(R).ack(L).data(0, 3500));
    recv!(t, [seg().seq(L).ack(R + 3000).win(0)]);
    assert_eq!(t.sink.received, stream(0, 3000));
}

#[test]
fn segment_wholly_beyond_the_window_is_dropped_with_an_ack() {
    let mut t = established_recv_buf(3000);
    send!(t, seg().seq(R + 3000).ack(L).data(3000, 10) => Verdict::Dropped(DropReason::OutOfWindow));
    recv!(t, [seg().seq(L).ack(R).win(3000)]);
    assert_eq!(t.sink.discarded, 10);
}

#[test]
fn window_edges_are_inclusive_of_the_last_byte_only() {
    let mut t = established_recv_buf(3000);
    // The last byte of the window is acceptable; a segment straddling the edge is trimmed.
    send!(t, seg().seq(R + 2999).ack(L).data(2999, 1));
    recv!(t, [seg().seq(L).ack(R).win(3000)]);
    send!(t, seg().seq(R + 2990).ack(L).data(2990, 20));
    recv!(t, [seg().seq(L).ack(R).win(3000)]);
    send!(t, seg().seq(R).ack(L).data(0, 2990));
    recv!(t, [seg().seq(L).ack(R + 3000).win(0)]);
    assert_eq!(t.sink.received, stream(0, 3000));
}

/// ESTABLISHED with a 3000-byte budget, all of it lent to the app: the window is 0.
fn zero_window() -> TestConn {
    let mut t = established_recv_buf(3000);
    send!(t, seg().seq(R).ack(L).data(0, 1460));
    recv!(t, [seg().seq(L).ack(R + 1460).win(1540)]);
    send!(t, seg().seq(R + 1460).ack(L).data(1460, 1460));
    recv!(t, [seg().seq(L).ack(R + 2920).win(80)]);
    send!(t, seg().seq(R + 2920).ack(L).data(2920, 80));
    recv!(t, [seg().seq(L).ack(R + 3000).win(0)]);
    t
}

#[test]
fn zero_window_takes_only_an_empty_segment_at_rcv_nxt() {
    let mut t = zero_window();
    // RFC 9293 §3.10.7.4's table: with RCV.WND = 0, only SEG.LEN = 0 and SEG.SEQ = RCV.NXT.
    send!(t, seg().seq(R + 3000).ack(L).win(5000));
    assert_eq!(t.conn.send_window(), 5000);
    recv_nothing!(t);
    send!(t, seg().seq(R + 2999).ack(L) => Verdict::Dropped(DropReason::OutOfWindow));
    recv!(t, [seg().seq(L).ack(R + 3000).win(0)]);
    send!(t, seg().seq(R + 3001).ack(L) => Verdict::Dropped(DropReason::OutOfWindow));
    recv!(t, [seg().seq(L).ack(R + 3000).win(0)]);
}

#[test]
fn zero_window_refuses_data_even_at_rcv_nxt() {
    let mut t = zero_window();
    send!(t, seg().seq(R + 3000).ack(L).data(3000, 1) => Verdict::Dropped(DropReason::OutOfWindow));
    recv!(t, [seg().seq(L).ack(R + 3000).win(0)]);
    assert_eq!(t.sink.received.len(), 3000);
}

#[test]
fn recv_done_reopens_a_closed_window_with_an_update() {
    let mut t = zero_window();
    t.recv_done(3000);
    recv!(t, [seg().seq(L).ack(R + 3000).win(3000)]);
    assert_eq!(t.conn.recv_window(), 3000);
    send!(t, seg().seq(R + 3000).ack(L).data(3000, 100));
    recv!(t, [seg().seq(L).ack(R + 3100).win(2900)]);
}

#[test]
fn recv_done_of_a_little_sends_no_update() {
    let mut t = zero_window();
    // Receiver SWS avoidance (RFC 9293 §3.8.6.2.2): less than min(buffer / 2, MSS) waits.
    t.recv_done(1000);
    recv_nothing!(t);
    assert_eq!(t.conn.recv_window(), 0);
    t.recv_done(460);
    recv!(t, [seg().seq(L).ack(R + 3000).win(1460)]);
}

#[test]
fn lent_bytes_hold_the_window_until_given_back() {
    let mut t = established();
    send!(t, seg().seq(R).ack(L).data(0, 1000));
    recv!(t, [seg().seq(L).ack(R + 1000).win(WIN - 1000)]);
    assert_eq!(t.conn.recv_lent(), 1000);
    send!(t, seg().seq(R + 1000).ack(L).data(1000, 1000));
    recv!(t, [seg().seq(L).ack(R + 2000).win(WIN - 2000)]);
    t.recv_done(2000);
    assert_eq!(t.conn.recv_lent(), 0);
    // Not worth an update on its own (the window is far from closed); the next ACK shows it.
    recv_nothing!(t);
    send!(t, seg().seq(R + 2000).ack(L).data(2000, 10));
    recv!(t, [seg().seq(L).ack(R + 2010).win(WIN - 10)]);
}

#[test]
fn right_edge_moves_only_by_a_full_segment() {
    let mut t = established();
    send!(t, seg().seq(R).ack(L).data(0, 1000));
    recv!(t, [seg().seq(L).ack(R + 1000).win(63_000)]);
    t.recv_done(1000);
    send!(t, seg().seq(R + 1000).ack(L).data(1000, 100));
    // Giving back 1000 bytes could move the edge by 900: less than an MSS, so it stays.
    recv!(t, [seg().seq(L).ack(R + 1100).win(62_900)]);
    t.recv_done(100);
    send!(t, seg().seq(R + 1100).ack(L).data(1100, 500));
    recv!(t, [seg().seq(L).ack(R + 1600).win(62_400)]);
    t.recv_done(500);
    send!(t, seg().seq(R + 1600).ack(L).data(1600, 10));
    // Now the edge can move by 1590 >= MSS.
    recv!(t, [seg().seq(L).ack(R + 1610).win(63_990)]);
}

#[test]
fn out_of_order_queue_is_bounded() {
    let mut t = established();
    for k in 0..OOO_SEGMENTS_MAX as u32 {
        let at = 20 * k + 10;
        send!(t, seg().seq(R + at).ack(L).data(u64::from(at), 10));
        recv!(t, [seg().seq(L).ack(R)]);
    }
    let at = 20 * OOO_SEGMENTS_MAX as u32 + 10;
    send!(t, seg().seq(R + at).ack(L).data(u64::from(at), 10) => Verdict::Dropped(DropReason::OooQueueFull));
    recv!(t, [seg().seq(L).ack(R)]);
    assert_eq!(t.conn.counters().ooo_segments, OOO_SEGMENTS_MAX as u64);
    // Filling the first hole releases the first parked segment.
    send!(t, seg().seq(R).ack(L).data(0, 10));
    recv!(t, [seg().seq(L).ack(R + 20).win(WIN - 20)]);
    assert_eq!(t.sink.received, stream(0, 20));
}

#[test]
fn parked_data_counts_against_the_window() {
    let mut t = established_recv_buf(3000);
    send!(t, seg().seq(R + 1000).ack(L).data(1000, 1000));
    recv!(t, [seg().seq(L).ack(R).win(3000)]);
    // The advertised edge never moves left (RFC 9293 §3.8.6.2.2), so 3000 stands; but once
    // the hole fills, the window left is what the budget allows.
    send!(t, seg().seq(R).ack(L).data(0, 1000));
    recv!(t, [seg().seq(L).ack(R + 2000).win(1000)]);
    assert_eq!(t.conn.recv_lent(), 2000);
}

#[test]
fn data_after_the_peers_fin_is_ignored() {
    let mut t = established();
    send!(t, seg().fin().seq(R).ack(L));
    // The FIN takes a sequence number, and the edge stays.
    recv!(t, [seg().seq(L).ack(R + 1).win(WIN - 1)]);
    assert_eq!(t.state(), State::CloseWait);
    send!(t, seg().seq(R + 1).ack(L).payload(b"late"));
    recv!(t, [seg().seq(L).ack(R + 1).win(WIN - 1)]);
    assert!(t.sink.received.is_empty());
}

#[test]
fn our_window_is_scaled_in_acks() {
    let mut t = established_with(recv_buf(1 << 20), peer_syn().ws(0));
    // 1 MiB needs a shift of 5.
    send!(t, seg().seq(R).ack(L).data(0, 100));
    recv!(
        t,
        [seg()
            .seq(L)
            .ack(R + 100)
            .win((((1 << 20) - 100) >> 5) as u16)]
    );
    assert_eq!(t.conn.options_in_force(), (false, false, Some((0, 5))));
}

// ===== Sending (RFC 9293 §3.8.6, §3.7.4; RFC 6928) =====

#[test]
fn send_room_is_limited_by_the_congestion_window() {
    let t = established();
    // RFC 6928: ten segments.
    assert_eq!(t.conn.cwnd(), 10 * MSS);
    assert_eq!(t.conn.send_room(), 10 * MSS);
}

#[test]
fn send_room_is_limited_by_the_peers_window() {
    let mut t = established();
    send!(t, seg().seq(R).ack(L).win(5000));
    assert_eq!(t.conn.send_room(), 5000);
    assert_eq!(t.app_send_n(3000), 3000);
    assert_eq!(t.conn.send_room(), 2000);
}

#[test]
fn send_room_is_limited_by_the_send_buffer() {
    let config = ConnConfig {
        send_buffer_bytes: 5000,
        ..config()
    };
    let mut t = established_with(config, peer_syn());
    assert_eq!(t.conn.send_room(), 5000);
    assert_eq!(t.app_send_n(6000), 5000);
    assert_eq!(t.conn.send_room(), 0);
    assert_eq!(t.conn.send_queued(), 5000);
}

#[test]
fn send_room_is_zero_before_the_handshake_and_after_close() {
    let (mut t, _) = syn_received_with(config(), peer_syn());
    assert_eq!(t.conn.send_room(), 0);
    assert_eq!(t.app_send_n(10), 0);
    send!(t, seg().seq(R).ack(L));
    assert!(t.conn.send_room() > 0);
    t.conn.close(t.now);
    assert_eq!(t.conn.send_room(), 0);
    assert_eq!(t.app_send_n(10), 0);
    assert!(!t.conn.can_send());
}

#[test]
fn initial_window_is_ten_segments_with_push_on_the_last() {
    let mut t = established();
    assert_eq!(t.app_send_n(20_000), 14_600);
    let mut expected = Vec::new();
    for k in 0..10 {
        let s = seg().seq(L + k * MSS).ack(R).data(u64::from(k * MSS), 1460);
        expected.push(if k == 9 { s.psh() } else { s });
    }
    t.expect_emitted(&expected);
    assert_eq!(t.conn.counters().segments_sent, 10 + 1);
}

#[test]
fn acked_data_is_reported_as_sent_and_the_window_grows() {
    let mut t = established_with(newreno(), peer_syn());
    t.app_send_n(20_000);
    t.emitted();
    send!(t, seg().seq(R).ack(L + 2 * MSS));
    events!(t, [ConnEvent::Sent { bytes: 2 * MSS }]);
    // Slow start by appropriate byte counting (RFC 3465, L = 2).
    assert_eq!(t.conn.cwnd(), 12 * MSS);
    assert_eq!(t.conn.send_room(), 4 * MSS);
    send!(t, seg().seq(R).ack(L + 3 * MSS));
    send!(t, seg().seq(R).ack(L + 4 * MSS));
    events!(t, [ConnEvent::Sent { bytes: 2 * MSS }]);
    assert_eq!(t.conn.send_queued(), 6 * MSS);
}

#[test]
fn room_after_a_cut_short_send_is_reported_as_sent_zero() {
    let (mut t, _) = syn_received_with(config(), peer_syn());
    send!(t, seg().seq(R).ack(L).win(0));
    events!(t, [ConnEvent::Established]);
    assert_eq!(t.app_send_n(100), 0);
    events!(t, []);
    send!(t, seg().seq(R).ack(L).win(5000));
    events!(t, [ConnEvent::Sent { bytes: 0 }]);
    assert_eq!(t.app_send_n(100), 100);
    recv!(t, [seg().seq(L).ack(R).data(0, 100).psh()]);
    // Reported once.
    send!(t, seg().seq(R).ack(L).win(6000));
    events!(t, []);
}

#[test]
fn nagle_holds_small_segments_while_data_is_in_flight() {
    let mut t = established();
    t.conn.set_nodelay(false);
    t.app_send(b"a");
    recv!(t, [seg().seq(L).ack(R).payload(b"a").psh()]);
    t.app_send(b"b");
    t.app_send(b"c");
    recv_nothing!(t);
    send!(t, seg().seq(R).ack(L + 1));
    recv!(t, [seg().seq(L + 1).ack(R).payload(b"bc").psh()]);
    // A full segment goes at once.
    t.app_send_n(1460);
    recv!(t, [seg().seq(L + 3).ack(R).data(3, 1460).psh()]);
}

#[test]
fn nodelay_sends_small_segments_at_once() {
    let mut t = established();
    t.app_send(b"a");
    t.collect();
    t.app_send(b"b");
    recv!(
        t,
        [
            seg().seq(L).ack(R).payload(b"a").psh(),
            seg().seq(L + 1).ack(R).payload(b"b").psh(),
        ]
    );
}

#[test]
fn data_segments_leave_room_for_sack_blocks() {
    let mut t = established_sack();
    send!(t, seg().seq(R + 100).ack(L).data(100, 100));
    recv!(t, [seg().seq(L).ack(R).sack(&[(R + 100, R + 200)])]);
    // While SACK blocks ride along, the payload shrinks by their 36 option bytes.
    t.app_send_n(3000);
    let sack = [(R + 100, R + 200)];
    recv!(
        t,
        [
            seg().seq(L).ack(R).sack(&sack).data(0, 1424),
            seg().seq(L + 1424).ack(R).sack(&sack).data(1424, 1424),
            seg().seq(L + 2848).ack(R).sack(&sack).data(2848, 152).psh(),
        ]
    );
}

#[test]
fn window_update_from_an_older_ack_is_ignored() {
    let mut t = established();
    t.app_send_n(200);
    t.emitted();
    send!(t, seg().seq(R).ack(L + 100).win(5000));
    assert_eq!(t.conn.send_window(), 5000);
    // RFC 9293 §3.10.7.4: same SEG.SEQ and an older SEG.ACK (SND.WL2 > SEG.ACK): no update.
    send!(t, seg().seq(R).ack(L + 50).win(9000));
    assert_eq!(t.conn.send_window(), 5000);
    // The same ACK again may update it.
    send!(t, seg().seq(R).ack(L + 100).win(7000));
    assert_eq!(t.conn.send_window(), 7000);
}

#[test]
fn data_sent_and_received_together_piggybacks_the_ack() {
    let mut t = established();
    send!(t, seg().seq(R).ack(L).payload(b"ping"));
    t.app_send(b"pong");
    recv!(
        t,
        [seg().seq(L).ack(R + 4).win(WIN - 4).payload(b"pong").psh()]
    );
}

// ===== ACK generation (RFC 9293 §3.8.6.3, RFC 5681 §4.2) =====

/// ESTABLISHED, and quick-ACK mode over: 16 small segments were received and acked.
fn past_quick_acks() -> TestConn {
    let mut t = established();
    for k in 0..QUICK_ACKS_INITIAL {
        send!(t, seg().seq(R + 10 * k).ack(L).data(u64::from(10 * k), 10));
        recv!(
            t,
            [seg()
                .seq(L)
                .ack(R + 10 * (k + 1))
                .win(WIN - 10 * (k as u16 + 1))]
        );
    }
    t.recv_done(10 * QUICK_ACKS_INITIAL);
    t
}

/// The sequence offset past [`past_quick_acks`]' data.
const QA: u32 = 10 * QUICK_ACKS_INITIAL;

#[test]
fn delayed_ack_after_the_quick_acks() {
    let mut t = past_quick_acks();
    send!(t, seg().seq(R + QA).ack(L).data(u64::from(QA), 10));
    recv_nothing!(t);
    assert_eq!(t.poll_at(), Some(40 * MS));
    t.advance(39 * MS);
    recv_nothing!(t);
    t.advance(MS);
    recv!(t, [seg().seq(L).ack(R + QA + 10).win(WIN - QA as u16 - 10)]);
    assert_eq!(t.poll_at(), None);
}

#[test]
fn every_second_full_segment_is_acked_at_once() {
    let mut t = past_quick_acks();
    send!(t, seg().seq(R + QA).ack(L).data(u64::from(QA), 1460));
    recv_nothing!(t);
    send!(
        t,
        seg()
            .seq(R + QA + 1460)
            .ack(L)
            .data(u64::from(QA + 1460), 1460)
    );
    recv!(
        t,
        [seg().seq(L).ack(R + QA + 2920).win(WIN - QA as u16 - 2920)]
    );
    assert_eq!(t.poll_at(), None, "the delayed-ACK timer is settled");
}

#[test]
fn zero_delayed_ack_acks_every_segment() {
    let config = ConnConfig {
        delayed_ack_ns: 0,
        ..config()
    };
    let mut t = established_with(config, peer_syn());
    for k in 0..QUICK_ACKS_INITIAL + 4 {
        send!(t, seg().seq(R + k).ack(L).data(u64::from(k), 1));
        recv!(t, [seg().seq(L).ack(R + k + 1).win(WIN - k as u16 - 1)]);
    }
}

#[test]
fn out_of_order_data_is_acked_at_once_even_after_quick_acks() {
    let mut t = past_quick_acks();
    send!(
        t,
        seg().seq(R + QA + 10).ack(L).data(u64::from(QA + 10), 10)
    );
    // The right edge stayed where the quick ACKs left it.
    recv!(t, [seg().seq(L).ack(R + QA).win(WIN - QA as u16)]);
    // Filling the hole is acked at once too.
    send!(t, seg().seq(R + QA).ack(L).data(u64::from(QA), 10));
    recv!(t, [seg().seq(L).ack(R + QA + 20).win(WIN - QA as u16 - 20)]);
}

#[test]
fn at_most_three_duplicate_acks_per_batch() {
    let mut t = established_sack();
    for k in 0..5u32 {
        let at = 200 * k + 100;
        send!(t, seg().seq(R + at).ack(L).data(u64::from(at), 100));
    }
    let blocks = [
        (R + 900, R + 1000),
        (R + 700, R + 800),
        (R + 500, R + 600),
        (R + 300, R + 400),
    ];
    recv!(
        t,
        [
            seg().seq(L).ack(R).sack(&blocks),
            seg().seq(L).ack(R).sack(&blocks),
            seg().seq(L).ack(R).sack(&blocks),
        ]
    );
}

#[test]
fn a_data_segment_carries_the_delayed_ack() {
    let mut t = past_quick_acks();
    send!(t, seg().seq(R + QA).ack(L).data(u64::from(QA), 10));
    recv_nothing!(t);
    t.advance(10 * MS);
    t.app_send(b"reply");
    recv!(
        t,
        [seg()
            .seq(L)
            .ack(R + QA + 10)
            .win(WIN - QA as u16 - 10)
            .payload(b"reply")
            .psh()]
    );
    // What is left is the retransmission timer, not the delayed ACK.
    assert_eq!(t.poll_at(), Some(10 * MS + 200 * MS));
}

// ===== Retransmission timeout (RFC 6298) =====

/// ESTABLISHED by a passive open whose handshake took `rtt_ns`: SRTT = `rtt_ns`, RTTVAR =
/// `rtt_ns / 2`, so RTO = 3 * `rtt_ns` (at least 200 ms).
fn established_rtt(config: ConnConfig, syn: Seg, rtt_ns: u64) -> TestConn {
    let (mut t, _) = syn_received_with(config, syn);
    t.advance(rtt_ns);
    send!(t, seg().seq(R).ack(L));
    events!(t, [ConnEvent::Established]);
    t
}

#[test]
fn rto_is_at_least_the_minimum() {
    let mut t = established();
    assert_eq!(t.conn.srtt_ns(), Some(0));
    assert_eq!(t.conn.rto_ns(), 200 * MS);
    t.app_send(b"hello");
    let hello = seg().seq(L).ack(R).payload(b"hello").psh();
    recv!(t, [hello.clone()]);
    // RFC 6298 (5.5): back off by doubling.
    for at_ms in [200, 600, 1400] {
        assert_eq!(t.fire(), at_ms * MS);
        recv!(t, [hello.clone()]);
    }
    assert_eq!(t.conn.counters().retransmits, 3);
    assert_eq!(t.conn.counters().rto_expirations, 3);
    assert_eq!(t.conn.rto_ns(), 1600 * MS);
}

#[test]
fn rto_follows_the_handshake_sample() {
    let mut t = established_rtt(config(), peer_syn(), 100 * MS);
    assert_eq!(t.conn.rto_ns(), 300 * MS);
    t.app_send(b"x");
    t.emitted();
    assert_eq!(t.fire(), 400 * MS);
    recv!(t, [seg().seq(L).ack(R).payload(b"x").psh()]);
}

#[test]
fn rto_resends_one_segment_then_goes_back_n() {
    let mut t = established_with(newreno(), peer_syn());
    t.app_send_n(3 * MSS);
    assert_eq!(t.emitted().len(), 3);
    assert_eq!(t.fire(), 200 * MS);
    // RFC 5681 §3.1: the loss window is one segment.
    recv!(t, [seg().seq(L).ack(R).data(0, 1460)]);
    assert_eq!(t.conn.cwnd(), MSS);
    t.advance(50 * MS);
    send!(t, seg().seq(R).ack(L + MSS));
    recv!(
        t,
        [
            seg().seq(L + MSS).ack(R).data(1460, 1460),
            seg().seq(L + 2 * MSS).ack(R).data(2920, 1460).psh(),
        ]
    );
    assert_eq!(t.conn.counters().retransmits, 3);
    // The backed-off RTO restarts from the ACK.
    assert_eq!(t.poll_at(), Some(250 * MS + 400 * MS));
}

#[test]
fn karn_no_sample_from_a_retransmitted_segment() {
    let mut t = established_rtt(config(), peer_syn(), 100 * MS);
    t.app_send(b"hello");
    t.emitted();
    assert_eq!(t.fire(), 400 * MS);
    t.emitted();
    assert_eq!(t.conn.rto_ns(), 600 * MS);
    t.advance(50 * MS);
    send!(t, seg().seq(R).ack(L + 5));
    // RFC 6298 §3 (Karn): the ambiguous ACK gives no sample and keeps the backoff.
    assert_eq!(t.conn.srtt_ns(), Some(100 * MS));
    assert_eq!(t.conn.rto_ns(), 600 * MS);
    t.app_send(b"world");
    t.emitted();
    t.advance(50 * MS);
    send!(t, seg().seq(R).ack(L + 10));
    // RFC 6298 (2.3): RTTVAR = 3/4 * 50 + 1/4 * |100 - 50|, SRTT = 7/8 * 100 + 1/8 * 50.
    assert_eq!(t.conn.srtt_ns(), Some(93_750_000));
    assert_eq!(t.conn.rto_ns(), 93_750_000 + 4 * 50 * MS);
}

#[test]
fn data_retransmissions_run_out_and_time_out() {
    let mut t = established();
    t.app_send(b"x");
    let x = seg().seq(L).ack(R).payload(b"x").psh();
    recv!(t, [x.clone()]);
    let mut at = 0;
    let mut rto = 200 * MS;
    for _ in 0..15 {
        at += rto;
        assert_eq!(t.fire(), at);
        recv!(t, [x.clone()]);
        // RFC 6298 (2.5): the maximum RTO caps the backoff.
        rto = (2 * rto).min(60 * SEC);
    }
    assert_eq!(t.fire(), at + rto);
    recv_nothing!(t);
    assert!(t.conn.is_closed());
    events!(t, [ConnEvent::Closed(CloseReason::TimedOut)]);
}

#[test]
fn rto_restarts_on_each_ack_and_stops_when_all_is_acked() {
    let mut t = established();
    t.app_send_n(2 * MSS);
    t.emitted();
    assert_eq!(t.poll_at(), Some(200 * MS));
    t.advance(100 * MS);
    send!(t, seg().seq(R).ack(L + MSS));
    // RFC 6298 (5.3).
    assert_eq!(t.poll_at(), Some(300 * MS));
    send!(t, seg().seq(R).ack(L + 2 * MSS));
    // RFC 6298 (5.2).
    assert_eq!(t.poll_at(), None);
    events!(t, [ConnEvent::Sent { bytes: 2 * MSS }]);
}

// ===== Fast retransmit and NewReno recovery (RFC 5681 §3.2, RFC 6582) =====

/// ESTABLISHED with NewReno from `syn` (SACK if it offers it), ten full segments in flight.
fn ten_in_flight(syn: Seg) -> TestConn {
    ten_in_flight_with(newreno(), syn)
}

/// [`ten_in_flight`] with `config`.
fn ten_in_flight_with(config: ConnConfig, syn: Seg) -> TestConn {
    let mut t = established_with(config, syn);
    assert_eq!(t.app_send_n(10 * MSS), 10 * MSS);
    assert_eq!(t.emitted().len(), 10);
    t
}

#[test]
fn three_duplicate_acks_trigger_a_fast_retransmit() {
    let mut t = ten_in_flight(peer_syn());
    send!(t, seg().seq(R).ack(L));
    send!(t, seg().seq(R).ack(L));
    recv_nothing!(t);
    send!(t, seg().seq(R).ack(L));
    recv!(t, [seg().seq(L).ack(R).data(0, 1460)]);
    assert_eq!(t.conn.counters().fast_recoveries, 1);
    assert_eq!(t.conn.counters().dup_acks, 3);
    // RFC 5681 eq. 4: ssthresh = FlightSize / 2.
    assert_eq!(t.conn.cwnd(), 5 * MSS);
    // More duplicates only inflate the window; there is no new data to send.
    send!(t, seg().seq(R).ack(L));
    recv_nothing!(t);
}

#[test]
fn acks_that_move_the_window_are_not_duplicates() {
    let mut t = ten_in_flight(peer_syn());
    for win in [60_000, 59_000, 58_000] {
        send!(t, seg().seq(R).ack(L).win(win));
    }
    recv_nothing!(t);
    assert_eq!(t.conn.counters().dup_acks, 0);
}

#[test]
fn acks_carrying_data_are_not_duplicates() {
    let mut t = ten_in_flight(peer_syn());
    for k in 0..3u32 {
        send!(t, seg().seq(R + k).ack(L).data(u64::from(k), 1));
        recv!(
            t,
            [seg()
                .seq(L + 10 * MSS)
                .ack(R + k + 1)
                .win(WIN - k as u16 - 1)]
        );
    }
    assert_eq!(t.conn.counters().fast_recoveries, 0);
}

#[test]
fn partial_ack_retransmits_the_next_hole_and_a_full_ack_ends_recovery() {
    let mut t = ten_in_flight(peer_syn());
    for _ in 0..3 {
        send!(t, seg().seq(R).ack(L));
    }
    recv!(t, [seg().seq(L).ack(R).data(0, 1460)]);
    // RFC 6582 §3.2 step 4: segments 1-3 are in, 4 is lost too.
    send!(t, seg().seq(R).ack(L + 3 * MSS));
    recv!(
        t,
        [seg().seq(L + 3 * MSS).ack(R).data(u64::from(3 * MSS), 1460)]
    );
    events!(t, [ConnEvent::Sent { bytes: 3 * MSS }]);
    // Step 3: the full ACK; cwnd = min(ssthresh, max(FlightSize, SMSS) + SMSS).
    send!(t, seg().seq(R).ack(L + 10 * MSS));
    recv_nothing!(t);
    events!(t, [ConnEvent::Sent { bytes: 7 * MSS }]);
    assert_eq!(t.conn.cwnd(), 2 * MSS);
    assert_eq!(t.conn.counters().retransmits, 2);
    assert_eq!(t.poll_at(), None);
}

#[test]
fn partial_acks_retransmit_the_last_segment_then_the_fin() {
    let mut t = established_with(newreno(), peer_syn());
    t.app_send_n(4 * MSS);
    t.conn.close(t.now);
    let out = t.emitted();
    assert_eq!(out.len(), 4);
    assert!(out[3].flags.contains(Flags::FIN));
    // Segments 1 and 4 (with the FIN) are lost: three duplicates, then a partial ACK.
    for _ in 0..3 {
        send!(t, seg().seq(R).ack(L));
    }
    recv!(t, [seg().seq(L).ack(R).data(0, 1460)]);
    send!(t, seg().seq(R).ack(L + 3 * MSS));
    // The retransmission is one SMSS of data; the FIN follows on the next partial ACK.
    recv!(
        t,
        [seg()
            .psh()
            .seq(L + 3 * MSS)
            .ack(R)
            .data(u64::from(3 * MSS), 1460)]
    );
    send!(t, seg().seq(R).ack(L + 4 * MSS));
    recv!(t, [seg().fin().seq(L + 4 * MSS).ack(R)]);
    send!(t, seg().seq(R).ack(L + 4 * MSS + 1));
    assert_eq!(t.state(), State::FinWait2);
}

// ===== SACK loss recovery (RFC 6675) =====

#[test]
fn sack_recovery_retransmits_the_holes_in_order_as_the_pipe_allows() {
    // RFC 6675's own inference (DupThresh, IsLost); RACK's is tested below.
    let mut t = ten_in_flight_with(rfc6675(), peer_syn().sack_perm());
    let seg_at = |k: u32| L + (k - 1) * MSS;
    // Segments 1 and 3 are lost; each ACK SACKs one more arrival.
    let two = (seg_at(2), seg_at(3));
    send!(t, seg().seq(R).ack(L).sack(&[two]));
    send!(t, seg().seq(R).ack(L).sack(&[(seg_at(4), seg_at(5)), two]));
    recv_nothing!(t);
    // Three duplicates and more than 2 * SMSS SACKed above segment 1: it is lost.
    send!(t, seg().seq(R).ack(L).sack(&[(seg_at(4), seg_at(6)), two]));
    recv!(t, [seg().seq(L).ack(R).data(0, 1460)]);
    // cwnd = ssthresh = (14600 - 4380 SACKed) / 2 = 5110; the pipe is above it for a while.
    assert_eq!(t.conn.cwnd(), 5110);
    for k in [7, 8, 9] {
        send!(t, seg().seq(R).ack(L).sack(&[(seg_at(4), seg_at(k)), two]));
        recv_nothing!(t);
    }
    // After segment 9's SACK, pipe = 2920 and segment 3 (now lost too) goes.
    send!(t, seg().seq(R).ack(L).sack(&[(seg_at(4), seg_at(10)), two]));
    recv!(
        t,
        [seg().seq(seg_at(3)).ack(R).data(u64::from(2 * MSS), 1460)]
    );
    send!(t, seg().seq(R).ack(L).sack(&[(seg_at(4), seg_at(11)), two]));
    recv_nothing!(t);
    send!(t, seg().seq(R).ack(L + 10 * MSS));
    recv_nothing!(t);
    events!(t, [ConnEvent::Sent { bytes: 10 * MSS }]);
    assert_eq!(t.conn.cwnd(), 2 * MSS);
    assert_eq!(t.conn.counters().retransmits, 2);
    assert_eq!(t.conn.counters().fast_recoveries, 1);
}

#[test]
fn sack_of_three_segments_above_a_hole_starts_recovery_without_three_dup_acks() {
    let mut t = ten_in_flight(peer_syn().sack_perm());
    // One ACK SACKing three segments: RFC 6675 §5 IsLost(SND.UNA) holds.
    send!(t, seg().seq(R).ack(L).sack(&[(L + MSS, L + 4 * MSS)]));
    recv!(t, [seg().seq(L).ack(R).data(0, 1460)]);
    assert_eq!(t.conn.counters().fast_recoveries, 1);
    assert_eq!(t.conn.counters().dup_acks, 1);
}

#[test]
fn dsack_from_the_peer_is_counted() {
    let mut t = established_sack();
    t.app_send_n(2 * MSS);
    t.emitted();
    send!(t, seg().seq(R).ack(L + 2 * MSS));
    send!(t, seg().seq(R).ack(L + 2 * MSS).sack(&[(L, L + MSS)]));
    assert_eq!(t.conn.counters().dsacks_received, 1);
    assert_eq!(t.conn.counters().dup_acks, 0);
    recv_nothing!(t);
}

// ===== RACK-TLP (RFC 8985) =====

/// ESTABLISHED with SACK and `config` after a 10 ms handshake (SRTT and RACK's min_RTT 10 ms,
/// so RACK's reordering window is 2.5 ms; the RTO is its 200 ms floor), at t = 10 ms.
fn rack_established(config: ConnConfig) -> TestConn {
    let t = established_rtt(config, peer_syn().sack_perm(), 10 * MS);
    assert_eq!(t.now, 10 * MS);
    assert_eq!(t.conn.rack_active(), config.rack_tlp);
    t
}

/// Segment `k` (from 1) of the flight that starts at `L + from * MSS`.
fn nth(from: u32, k: u32) -> u32 {
    L + (from + k - 1) * MSS
}

/// The data segment carrying stream segment `k` (from 1) of full segments.
fn data_seg(k: u32) -> Seg {
    seg()
        .seq(L + (k - 1) * MSS)
        .ack(R)
        .data(u64::from((k - 1) * MSS), MSS as usize)
}

#[test]
fn rack_finds_a_lost_retransmission_without_a_timeout() {
    let mut t = rack_established(newreno());
    t.app_send_n(10 * MSS);
    assert_eq!(t.emitted().len(), 10);
    t.advance(10 * MS);
    // Segment 1 is lost; 2-4 arrive. With DupThresh segments SACKed and no reordering seen,
    // RACK's window is zero: segment 1, sent before them, is lost at once.
    send!(t, seg().seq(R).ack(L).sack(&[(nth(0, 2), nth(0, 5))]));
    recv!(t, [data_seg(1)]);
    assert_eq!(t.conn.counters().rack_losses, 1);
    assert_eq!(t.conn.counters().fast_recoveries, 1);
    // (10 - 3 SACKed) segments / 2.
    assert_eq!(t.conn.cwnd(), 5110);
    // 20 ms: 5-9 arrive (sent before the retransmission: they say nothing about it); the
    // pipe (the retransmission and segment 10) lets one new segment go.
    t.advance(10 * MS);
    send!(t, seg().seq(R).ack(L).sack(&[(nth(0, 2), nth(0, 10))]));
    assert_eq!(t.app_send_n(2 * MSS), 2190);
    recv!(t, [data_seg(11)]);
    // 30 ms: segment 11, sent after the retransmission, arrives; the retransmission does not.
    // It is lost: resent now, not after the RTO (200 ms after the first send).
    t.advance(10 * MS);
    send!(t, seg().seq(R).ack(L).sack(&[(nth(0, 2), nth(0, 12))]));
    recv!(
        t,
        [
            data_seg(1),
            seg()
                .seq(nth(0, 12))
                .ack(R)
                .data(u64::from(11 * MSS), 730)
                .psh()
        ]
    );
    let c = *t.conn.counters();
    assert_eq!((c.rack_lost_retransmits, c.rack_losses), (1, 2));
    assert_eq!((c.retransmits, c.rto_expirations), (2, 0));
    // RFC 8985 §9.3: the lost retransmission is a second congestion event; the window halves
    // from the pipe (nothing left in flight but what just went: 2 SMSS at least).
    assert_eq!(t.conn.cwnd(), 2 * MSS);
    t.advance(10 * MS);
    send!(t, seg().seq(R).ack(L + 11 * MSS + 730));
    events!(
        t,
        [ConnEvent::Sent {
            bytes: 11 * MSS + 730
        }]
    );
    assert_eq!(t.poll_at(), None);
}

#[test]
fn a_tail_loss_is_repaired_by_a_probe_two_round_trips_after_the_last_ack() {
    let mut t = rack_established(newreno());
    t.app_send_n(4 * MSS);
    assert_eq!(t.emitted().len(), 4);
    // 20 ms: 1 and 2 are ACKed; 3 and 4 are lost. RFC 8985 §7.2: PTO = 2 * SRTT = 20 ms from
    // the ACK, well before the RTO at 220 ms.
    t.advance(10 * MS);
    send!(t, seg().seq(R).ack(L + 2 * MSS));
    assert_eq!(t.poll_at(), Some(40 * MS));
    t.advance(20 * MS);
    // No new data: the probe resends the last segment, and the RTO restarts from it.
    recv!(t, [data_seg(4).psh()]);
    assert_eq!(t.conn.counters().tlp_probes, 1);
    assert_eq!(t.poll_at(), Some(240 * MS));
    // 50 ms: the probe's SACK shows segment 3, sent before it, overdue: recovery resends it.
    t.advance(10 * MS);
    send!(
        t,
        seg()
            .seq(R)
            .ack(L + 2 * MSS)
            .sack(&[(nth(0, 4), nth(0, 5))])
    );
    recv!(t, [data_seg(3)]);
    t.advance(10 * MS);
    send!(t, seg().seq(R).ack(L + 4 * MSS));
    let c = *t.conn.counters();
    assert_eq!(
        (c.rto_expirations, c.retransmits, c.fast_recoveries),
        (0, 2, 1)
    );
    assert_eq!(t.poll_at(), None);
}

#[test]
fn the_probe_of_a_single_segment_waits_for_a_delayed_ack_and_never_beyond_the_rto() {
    let mut t = rack_established(newreno());
    t.app_send_n(3 * MSS);
    t.emitted();
    t.advance(10 * MS);
    // One segment left in flight: 2 * SRTT + 200 ms (the peer may delay its ACK), capped at
    // the RTO's deadline (20 + 200 ms).
    send!(t, seg().seq(R).ack(L + 2 * MSS));
    assert_eq!(t.poll_at(), Some(220 * MS));
    t.advance(200 * MS);
    // The probe replaces that timeout.
    recv!(t, [data_seg(3).psh()]);
    let c = *t.conn.counters();
    assert_eq!((c.tlp_probes, c.rto_expirations), (1, 0));
}

#[test]
fn a_probe_sends_new_data_when_there_is_some() {
    // Nagle holds a small last segment while data is in flight (IX's admission keeps the app
    // from queueing beyond cwnd, so held data is what a probe finds unsent).
    let mut t = rack_established(ConnConfig {
        nodelay: false,
        ..newreno()
    });
    t.app_send_n(3 * MSS + 100);
    assert_eq!(t.emitted().len(), 3);
    t.advance(10 * MS);
    send!(t, seg().seq(R).ack(L + MSS));
    recv_nothing!(t);
    assert_eq!(t.poll_at(), Some(40 * MS));
    t.advance(20 * MS);
    // RFC 8985 §7.3: the probe is the unsent segment, not a retransmission.
    recv!(
        t,
        [seg()
            .seq(L + 3 * MSS)
            .ack(R)
            .data(u64::from(3 * MSS), 100)
            .psh()]
    );
    let c = *t.conn.counters();
    assert_eq!((c.tlp_probes, c.retransmits), (1, 0));
}

#[test]
fn reordering_within_the_window_draws_no_retransmission() {
    let mut t = rack_established(newreno());
    t.app_send_n(4 * MSS);
    t.emitted();
    // 20 ms: 2 arrives before 1. Segment 1 becomes lost only when RACK's window (min_RTT / 4
    // = 2.5 ms) has passed after the round trip that brought 2.
    t.advance(10 * MS);
    send!(t, seg().seq(R).ack(L).sack(&[(nth(0, 2), nth(0, 3))]));
    recv_nothing!(t);
    assert_eq!(t.poll_at(), Some(22_500_000));
    // 21 ms: 1 arrives after all: reordering seen.
    t.advance(MS);
    send!(t, seg().seq(R).ack(L + 4 * MSS));
    recv_nothing!(t);
    // Again, now with three segments SACKed above the hole: RFC 6675 would call it lost
    // (DupThresh), RACK waits its window since it has seen reordering.
    t.app_send_n(4 * MSS);
    t.emitted();
    t.advance(10 * MS);
    send!(
        t,
        seg()
            .seq(R)
            .ack(L + 4 * MSS)
            .sack(&[(nth(4, 2), nth(4, 5))])
    );
    recv_nothing!(t);
    assert_eq!(t.conn.rack_reo_wnd_ns(), Some(2_500_000));
    t.advance(MS);
    send!(t, seg().seq(R).ack(L + 8 * MSS));
    t.advance(SEC);
    recv_nothing!(t);
    let c = *t.conn.counters();
    assert_eq!((c.retransmits, c.fast_recoveries, c.rack_losses), (0, 0, 0));
}

#[test]
fn reordering_past_dupthresh_is_a_loss_without_rack() {
    // The same second reordering as above, RACK off: DupThresh resends at once.
    let mut t = rack_established(rfc6675());
    t.app_send_n(4 * MSS);
    t.emitted();
    t.advance(10 * MS);
    send!(t, seg().seq(R).ack(L).sack(&[(nth(0, 2), nth(0, 5))]));
    recv!(t, [data_seg(1)]);
}

#[test]
fn a_dsack_grows_the_reordering_window() {
    let mut t = rack_established(newreno());
    t.app_send_n(4 * MSS);
    t.emitted();
    t.advance(10 * MS);
    send!(t, seg().seq(R).ack(L).sack(&[(nth(0, 2), nth(0, 3))]));
    t.advance(MS);
    send!(t, seg().seq(R).ack(L + 4 * MSS));
    assert_eq!(t.conn.rack_reo_wnd_ns(), Some(2_500_000));
    t.app_send_n(4 * MSS);
    t.emitted();
    // The peer reports segment 1 twice (RFC 2883): RFC 8985 §6.2 step 4 adds min_RTT / 4.
    send!(t, seg().seq(R).ack(L + 4 * MSS).sack(&[(L, L + MSS)]));
    assert_eq!(t.conn.counters().dsacks_received, 1);
    assert_eq!(t.conn.rack_reo_wnd_ns(), Some(5_000_000));
    // A second D-SACK in the same round (before what was sent by the first is ACKed) adds
    // nothing.
    send!(t, seg().seq(R).ack(L + 4 * MSS).sack(&[(L, L + MSS)]));
    assert_eq!(t.conn.rack_reo_wnd_ns(), Some(5_000_000));
    // The reordering timer of this flight now waits 5 ms.
    t.advance(10 * MS);
    send!(
        t,
        seg()
            .seq(R)
            .ack(L + 4 * MSS)
            .sack(&[(nth(4, 2), nth(4, 3))])
    );
    assert_eq!(t.poll_at(), Some(t.now + 5 * MS));
    t.advance(5 * MS);
    recv!(t, [data_seg(5)]);
}

#[test]
fn a_loss_a_probe_repaired_reduces_cwnd() {
    let mut t = rack_established(newreno());
    t.app_send_n(10 * MSS);
    t.emitted();
    // 20 ms: 1 and 2 are ACKed, then the ACKs stop (lost); segment 10 is lost too.
    t.advance(10 * MS);
    send!(t, seg().seq(R).ack(L + 2 * MSS));
    let cwnd = t.conn.cwnd();
    t.advance(20 * MS);
    recv!(t, [data_seg(10).psh()]);
    // 50 ms: everything is ACKed, with no D-SACK: the probe may have been the only copy of
    // segment 10 to arrive. An ACK beyond it settles that (RFC 8985 §7.4).
    t.advance(10 * MS);
    send!(t, seg().seq(R).ack(L + 10 * MSS));
    assert_eq!(t.conn.counters().tlp_recoveries, 0);
    assert!(t.conn.cwnd() >= cwnd);
    t.app_send_n(2 * MSS);
    t.emitted();
    t.advance(10 * MS);
    send!(t, seg().seq(R).ack(L + 12 * MSS));
    assert_eq!(t.conn.counters().tlp_recoveries, 1);
    // ssthresh = cwnd = FlightSize / 2, the flight when the probe went: eight segments.
    assert_eq!(t.conn.cwnd(), 4 * MSS);
    assert_eq!(t.conn.counters().fast_recoveries, 0);
}

#[test]
fn a_probe_the_peer_reports_as_a_duplicate_reduces_nothing() {
    let mut t = rack_established(newreno());
    t.app_send_n(10 * MSS);
    t.emitted();
    t.advance(10 * MS);
    send!(t, seg().seq(R).ack(L + 2 * MSS));
    t.advance(20 * MS);
    recv!(t, [data_seg(10).psh()]);
    // The original arrived; the probe comes back as a D-SACK: no loss happened.
    t.advance(10 * MS);
    send!(t, seg().seq(R).ack(L + 10 * MSS));
    send!(
        t,
        seg()
            .seq(R)
            .ack(L + 10 * MSS)
            .sack(&[(nth(0, 10), nth(0, 11))])
    );
    let cwnd = t.conn.cwnd();
    t.app_send_n(2 * MSS);
    t.emitted();
    t.advance(10 * MS);
    send!(t, seg().seq(R).ack(L + 12 * MSS));
    assert_eq!(t.conn.counters().tlp_recoveries, 0);
    assert!(t.conn.cwnd() >= cwnd);
}

#[test]
fn rack_off_leaves_a_tail_loss_to_the_rto() {
    let mut t = rack_established(rfc6675());
    t.app_send_n(4 * MSS);
    t.emitted();
    t.advance(10 * MS);
    send!(t, seg().seq(R).ack(L + 2 * MSS));
    // No probe: the RTO, restarted by the ACK, is the only timer.
    assert_eq!(t.poll_at(), Some(220 * MS));
    assert_eq!(t.fire(), 220 * MS);
    recv!(t, [data_seg(3)]);
    let c = *t.conn.counters();
    assert_eq!((c.tlp_probes, c.rto_expirations, c.rack_losses), (0, 1, 0));
}

// ===== Zero-window probes (RFC 9293 §3.8.6.1) =====

/// ESTABLISHED, everything acked, the peer's window closed, the app wanting to send 100 bytes.
fn window_closed() -> TestConn {
    let mut t = established();
    send!(t, seg().seq(R).ack(L).win(0));
    assert_eq!(t.conn.send_window(), 0);
    assert_eq!(t.app_send_n(100), 0);
    recv_nothing!(t);
    t
}

#[test]
fn closed_window_is_probed_at_snd_una_minus_one() {
    let mut t = window_closed();
    // The first probe after one RTO, then backing off.
    assert_eq!(t.fire(), 200 * MS);
    let probe = seg().seq(L - 1).ack(R);
    recv!(t, [probe.clone()]);
    assert_eq!(t.fire(), 600 * MS);
    recv!(t, [probe.clone()]);
    // The peer answers with the same closed window.
    send!(t, seg().seq(R).ack(L).win(0));
    recv_nothing!(t);
    assert_eq!(t.fire(), 1400 * MS);
    recv!(t, [probe]);
    assert_eq!(t.conn.counters().window_probes, 3);
}

#[test]
fn opened_window_ends_the_probes_and_data_flows() {
    let mut t = window_closed();
    t.fire();
    t.emitted();
    send!(t, seg().seq(R).ack(L).win(5000));
    events!(t, [ConnEvent::Sent { bytes: 0 }]);
    assert_eq!(t.app_send_n(100), 100);
    recv!(t, [seg().seq(L).ack(R).data(0, 100).psh()]);
    send!(t, seg().seq(R).ack(L + 100).win(5000));
    assert_eq!(t.poll_at(), None);
}

#[test]
fn answered_probes_keep_the_connection_open() {
    let mut t = window_closed();
    // RFC 1122 §4.2.2.17: as long as probes are answered, the connection stays.
    for _ in 0..40 {
        t.fire();
        recv!(t, [seg().seq(L - 1).ack(R)]);
        send!(t, seg().seq(R).ack(L).win(0));
    }
    assert_eq!(t.state(), State::Established);
    events!(t, []);
}

#[test]
fn unanswered_probes_time_out() {
    let mut t = window_closed();
    for _ in 0..15 {
        t.fire();
        recv!(t, [seg().seq(L - 1).ack(R)]);
    }
    t.fire();
    recv_nothing!(t);
    events!(t, [ConnEvent::Closed(CloseReason::TimedOut)]);
}

#[test]
fn window_closing_under_data_in_flight_is_probed_then_resent() {
    let mut t = established();
    t.app_send_n(2 * MSS);
    t.emitted();
    // The peer takes the first segment and closes its window on the second.
    send!(t, seg().seq(R).ack(L + MSS).win(0));
    // The timeout finds no window: nothing is resent, a probe follows.
    assert_eq!(t.fire(), 200 * MS);
    recv_nothing!(t);
    t.fire();
    recv!(t, [seg().seq(L + MSS - 1).ack(R)]);
    send!(t, seg().seq(R).ack(L + MSS).win(5000));
    recv!(t, [seg().seq(L + MSS).ack(R).data(1460, 1460).psh()]);
}

// ===== Keepalive (RFC 9293 §3.8.4) =====

/// Probes after 10 s idle, then every second, three of them.
fn keepalive() -> Keepalive {
    Keepalive {
        idle_ns: 10 * SEC,
        interval_ns: SEC,
        probes: 3,
    }
}

#[test]
fn keepalive_probes_an_idle_connection() {
    let mut t = established();
    t.conn.set_keepalive(t.now, Some(keepalive()));
    assert_eq!(t.fire(), 10 * SEC);
    // SEG.SEQ = SND.NXT - 1 with no data, as Linux sends.
    recv!(t, [seg().seq(L - 1).ack(R)]);
    assert_eq!(t.conn.counters().keepalive_probes, 1);
    send!(t, seg().seq(R).ack(L));
    // Answered: the idle time starts again.
    assert_eq!(t.poll_at(), Some(20 * SEC));
}

#[test]
fn unanswered_keepalives_reset_the_connection() {
    let mut t = established();
    t.conn.set_keepalive(t.now, Some(keepalive()));
    for at_s in [10, 11, 12] {
        assert_eq!(t.fire(), at_s * SEC);
        recv!(t, [seg().seq(L - 1).ack(R)]);
    }
    assert_eq!(t.fire(), 13 * SEC);
    recv!(t, [seg().rst().seq(L).ack(R).win(0)]);
    events!(t, [ConnEvent::Closed(CloseReason::TimedOut)]);
    assert!(t.conn.is_closed());
}

#[test]
fn keepalive_from_the_config_starts_at_the_handshake() {
    let config = ConnConfig {
        keepalive: Some(keepalive()),
        ..config()
    };
    let mut t = established_rtt(config, peer_syn(), 5 * SEC);
    assert_eq!(t.poll_at(), Some(15 * SEC));
    // Traffic pushes it back.
    t.advance(3 * SEC);
    send!(t, seg().seq(R).ack(L).payload(b"x"));
    t.emitted();
    assert_eq!(t.poll_at(), Some(18 * SEC));
}

#[test]
fn keepalive_can_be_turned_off() {
    let mut t = established();
    t.conn.set_keepalive(t.now, Some(keepalive()));
    assert_eq!(t.poll_at(), Some(10 * SEC));
    t.conn.set_keepalive(t.now, None);
    assert_eq!(t.poll_at(), None);
}

// ===== Closing (RFC 9293 §3.6, §3.10.4, §3.10.7.4) =====

/// From ESTABLISHED through an active close to TIME-WAIT, at the current time; with `ts`,
/// the peer's segments carry that TSval and echo ours.
fn to_time_wait(t: &mut TestConn, ts: Option<u32>) {
    let with_ts = |s: Seg, t: &TestConn| match ts {
        Some(v) => s.ts(v, t.tsval()),
        None => s,
    };
    t.conn.close(t.now);
    let mut fin = seg().fin().seq(L).ack(R);
    if let Some(v) = ts {
        fin = fin.ts(t.tsval(), v);
    }
    recv!(t, [fin]);
    let ack = with_ts(seg().seq(R).ack(L + 1), t);
    send!(t, ack);
    assert_eq!(t.state(), State::FinWait2);
    let peer_fin = with_ts(seg().fin().seq(R).ack(L + 1), t);
    send!(t, peer_fin);
    assert_eq!(t.state(), State::TimeWait);
    let mut ack = seg().seq(L + 1).ack(R + 1).win(WIN - 1);
    if let Some(v) = ts {
        ack = ack.ts(t.tsval(), v);
    }
    recv!(t, [ack]);
    events!(
        t,
        [
            ConnEvent::PeerClosed,
            ConnEvent::Closed(CloseReason::Closed)
        ]
    );
}

#[test]
fn active_close_walks_fin_wait_1_fin_wait_2_time_wait_closed() {
    let mut t = established();
    t.conn.close(t.now);
    assert_eq!(t.state(), State::FinWait1);
    recv!(t, [seg().fin().seq(L).ack(R)]);
    send!(t, seg().seq(R).ack(L + 1));
    assert_eq!(t.state(), State::FinWait2);
    // FIN-WAIT-2 gives up after 60 s without the peer's FIN.
    assert_eq!(t.poll_at(), Some(60 * SEC));
    t.advance(SEC);
    send!(t, seg().fin().seq(R).ack(L + 1));
    assert_eq!(t.state(), State::TimeWait);
    recv!(t, [seg().seq(L + 1).ack(R + 1).win(WIN - 1)]);
    events!(
        t,
        [
            ConnEvent::PeerClosed,
            ConnEvent::Closed(CloseReason::Closed)
        ]
    );
    // 2 MSL.
    assert_eq!(t.poll_at(), Some(61 * SEC));
    t.advance(60 * SEC);
    assert!(t.conn.is_closed());
    events!(t, []);
    recv_nothing!(t);
}

#[test]
fn fin_rides_on_the_last_data_segment() {
    let mut t = established();
    t.app_send(b"bye");
    t.conn.close(t.now);
    recv!(t, [seg().fin().psh().seq(L).ack(R).payload(b"bye")]);
    send!(t, seg().seq(R).ack(L + 4));
    assert_eq!(t.state(), State::FinWait2);
    events!(t, [ConnEvent::Sent { bytes: 3 }]);
}

#[test]
fn queued_data_goes_before_the_fin() {
    let mut t = established();
    t.app_send_n(3000);
    t.conn.close(t.now);
    recv!(
        t,
        [
            seg().seq(L).ack(R).data(0, 1460),
            seg().seq(L + 1460).ack(R).data(1460, 1460),
            seg().fin().psh().seq(L + 2920).ack(R).data(2920, 80),
        ]
    );
}

#[test]
fn fin_is_retransmitted_on_timeout() {
    let mut t = established();
    t.conn.close(t.now);
    recv!(t, [seg().fin().seq(L).ack(R)]);
    assert_eq!(t.fire(), 200 * MS);
    recv!(t, [seg().fin().seq(L).ack(R)]);
    assert_eq!(t.conn.counters().retransmits, 1);
}

#[test]
fn close_twice_sends_one_fin() {
    let mut t = established();
    t.conn.close(t.now);
    t.conn.close(t.now);
    recv!(t, [seg().fin().seq(L).ack(R)]);
    t.conn.close(t.now);
    recv_nothing!(t);
}

#[test]
fn fin_wait_2_times_out() {
    let mut t = established();
    t.conn.close(t.now);
    t.emitted();
    send!(t, seg().seq(R).ack(L + 1));
    assert_eq!(t.fire(), 60 * SEC);
    assert!(t.conn.is_closed());
    recv_nothing!(t);
    events!(t, [ConnEvent::Closed(CloseReason::TimedOut)]);
}

#[test]
fn fin_wait_2_without_a_limit_waits() {
    let config = ConnConfig {
        fin_wait2_ns: None,
        ..config()
    };
    let mut t = established_with(config, peer_syn());
    t.conn.close(t.now);
    t.emitted();
    send!(t, seg().seq(R).ack(L + 1));
    assert_eq!(t.poll_at(), None);
}

#[test]
fn fin_wait_2_still_receives_data() {
    let mut t = established();
    t.conn.close(t.now);
    t.emitted();
    send!(t, seg().seq(R).ack(L + 1));
    send!(t, seg().seq(R).ack(L + 1).payload(b"more"));
    recv!(t, [seg().seq(L + 1).ack(R + 4).win(WIN - 4)]);
    assert_eq!(t.sink.received, b"more");
    send!(t, seg().fin().seq(R + 4).ack(L + 1));
    recv!(t, [seg().seq(L + 1).ack(R + 5).win(WIN - 5)]);
    assert_eq!(t.state(), State::TimeWait);
}

#[test]
fn fin_wait_1_takes_the_peers_fin_and_ack_together() {
    let mut t = established();
    t.conn.close(t.now);
    t.emitted();
    send!(t, seg().fin().seq(R).ack(L + 1));
    assert_eq!(t.state(), State::TimeWait);
    recv!(t, [seg().seq(L + 1).ack(R + 1).win(WIN - 1)]);
}

#[test]
fn simultaneous_close_goes_through_closing() {
    let mut t = established();
    t.conn.close(t.now);
    recv!(t, [seg().fin().seq(L).ack(R)]);
    // The peer's FIN crossed ours.
    send!(t, seg().fin().seq(R).ack(L));
    assert_eq!(t.state(), State::Closing);
    recv!(t, [seg().seq(L + 1).ack(R + 1).win(WIN - 1)]);
    send!(t, seg().seq(R + 1).ack(L + 1));
    assert_eq!(t.state(), State::TimeWait);
    events!(
        t,
        [
            ConnEvent::PeerClosed,
            ConnEvent::Closed(CloseReason::Closed)
        ]
    );
}

#[test]
fn closing_retransmits_its_fin() {
    let mut t = established();
    t.conn.close(t.now);
    t.emitted();
    send!(t, seg().fin().seq(R).ack(L));
    t.emitted();
    assert_eq!(t.fire(), 200 * MS);
    recv!(t, [seg().fin().seq(L).ack(R + 1).win(WIN - 1)]);
}

#[test]
fn time_wait_reacks_a_retransmitted_fin_and_restarts_2msl() {
    let mut t = established();
    to_time_wait(&mut t, None);
    assert_eq!(t.poll_at(), Some(60 * SEC));
    t.advance(30 * SEC);
    // RFC 9293 §3.10.7.4 TIME-WAIT: acknowledge it, and restart the 2 MSL timeout.
    send!(t, seg().fin().seq(R).ack(L + 1));
    recv!(t, [seg().seq(L + 1).ack(R + 1).win(WIN - 1)]);
    assert_eq!(t.poll_at(), Some(90 * SEC));
    t.advance(59 * SEC);
    assert_eq!(t.state(), State::TimeWait);
    t.advance(SEC);
    assert!(t.conn.is_closed());
}

#[test]
fn time_wait_ignores_a_reset() {
    let mut t = established();
    to_time_wait(&mut t, None);
    // RFC 1337: a RST must not end TIME-WAIT early.
    send!(t, seg().rst().seq(R + 1) => Verdict::Dropped(DropReason::RstInvalid));
    assert_eq!(t.state(), State::TimeWait);
    recv_nothing!(t);
}

#[test]
fn time_wait_yields_to_a_syn_with_a_newer_timestamp() {
    let mut t = established_ts();
    to_time_wait(&mut t, Some(PEER_TS));
    t.advance(SEC);
    // RFC 6191: the timestamp shows the SYN is of a new connection, whatever its sequence
    // number.
    send!(t, seg().syn().seq(REMOTE - 7).mss(1460).ts(PEER_TS + 1, 0) => Verdict::TimeWaitReuse);
    assert!(t.conn.is_closed());
    recv_nothing!(t);
    events!(t, []);
}

#[test]
fn time_wait_tuple_is_reusable_by_a_connect_after_a_second_of_silence() {
    let mut t = established_ts();
    to_time_wait(&mut t, Some(PEER_TS));
    t.collect();
    // RFC 6191 as Linux's tcp_tw_reuse: timestamps, and a second without a word from the peer.
    assert_eq!(t.conn.time_wait_reusable_by_connect(t.now), None);
    t.advance(SEC / 2);
    // A retransmitted FIN (with a newer timestamp) restarts the silence.
    send!(t, seg().fin().seq(R).ack(L + 1).ts(PEER_TS + 1, LOCAL));
    t.collect();
    t.advance(SEC / 2 + 1);
    assert_eq!(t.conn.time_wait_reusable_by_connect(t.now), None);
    t.advance(SEC / 2);
    let snd_nxt = t.conn.time_wait_reusable_by_connect(t.now);
    assert_eq!(
        snd_nxt.map(|s| s.0),
        Some(L + 1),
        "the new ISN goes above it"
    );
}

#[test]
fn time_wait_without_timestamps_is_never_reusable_by_a_connect() {
    let mut t = established();
    to_time_wait(&mut t, None);
    t.advance(30 * SEC);
    assert_eq!(t.conn.time_wait_reusable_by_connect(t.now), None);
}

#[test]
fn time_wait_refuses_a_syn_with_an_older_timestamp() {
    let mut t = established_ts();
    to_time_wait(&mut t, Some(PEER_TS));
    send!(t, seg().syn().seq(REMOTE + 100_000).mss(1460).ts(PEER_TS - 1, 0) => Verdict::Dropped(DropReason::Paws));
    recv!(
        t,
        [seg().seq(L + 1).ack(R + 1).win(WIN - 1).ts(LOCAL, PEER_TS)]
    );
    assert_eq!(t.state(), State::TimeWait);
}

#[test]
fn time_wait_without_timestamps_yields_to_a_higher_sequence_number() {
    let mut t = established();
    to_time_wait(&mut t, None);
    send!(t, seg().syn().seq(R + 1000).mss(1460) => Verdict::TimeWaitReuse);
    assert!(t.conn.is_closed());
}

#[test]
fn time_wait_without_timestamps_refuses_an_old_sequence_number() {
    let mut t = established();
    to_time_wait(&mut t, None);
    send!(t, seg().syn().seq(REMOTE).mss(1460) => Verdict::Dropped(DropReason::OutOfWindow));
    recv!(t, [seg().seq(L + 1).ack(R + 1).win(WIN - 1)]);
    assert_eq!(t.state(), State::TimeWait);
}

#[test]
fn passive_close_walks_close_wait_last_ack_closed() {
    let mut t = established();
    send!(t, seg().fin().seq(R).ack(L));
    assert_eq!(t.state(), State::CloseWait);
    recv!(t, [seg().seq(L).ack(R + 1).win(WIN - 1)]);
    events!(t, [ConnEvent::PeerClosed]);
    // CLOSE-WAIT may still send.
    assert!(t.conn.can_send());
    t.app_send(b"tail");
    recv!(
        t,
        [seg().psh().seq(L).ack(R + 1).win(WIN - 1).payload(b"tail")]
    );
    t.conn.close(t.now);
    assert_eq!(t.state(), State::LastAck);
    recv!(t, [seg().fin().seq(L + 4).ack(R + 1).win(WIN - 1)]);
    send!(t, seg().seq(R + 1).ack(L + 5));
    assert!(t.conn.is_closed());
    events!(
        t,
        [
            ConnEvent::Sent { bytes: 4 },
            ConnEvent::Closed(CloseReason::Closed)
        ]
    );
    recv_nothing!(t);
}

#[test]
fn last_ack_retransmits_its_fin() {
    let mut t = established();
    send!(t, seg().fin().seq(R).ack(L));
    t.emitted();
    t.conn.close(t.now);
    recv!(t, [seg().fin().seq(L).ack(R + 1).win(WIN - 1)]);
    assert_eq!(t.fire(), 200 * MS);
    recv!(t, [seg().fin().seq(L).ack(R + 1).win(WIN - 1)]);
    // An ACK short of the FIN leaves LAST-ACK as it is.
    send!(t, seg().seq(R + 1).ack(L));
    assert_eq!(t.state(), State::LastAck);
}

#[test]
fn fin_with_data_delivers_then_closes() {
    let mut t = established();
    send!(t, seg().fin().seq(R).ack(L).payload(b"end"));
    assert_eq!(t.sink.received, b"end");
    assert_eq!(t.state(), State::CloseWait);
    recv!(t, [seg().seq(L).ack(R + 4).win(WIN - 4)]);
    events!(t, [ConnEvent::PeerClosed]);
}

#[test]
fn out_of_order_fin_is_taken_when_the_hole_fills() {
    let mut t = established();
    send!(t, seg().fin().seq(R + 3).ack(L).payload(b"def"));
    recv!(t, [seg().seq(L).ack(R)]);
    assert_eq!(t.state(), State::Established);
    send!(t, seg().seq(R).ack(L).payload(b"abc"));
    recv!(t, [seg().seq(L).ack(R + 7).win(WIN - 7)]);
    assert_eq!(t.sink.received, b"abcdef");
    assert_eq!(t.state(), State::CloseWait);
    events!(t, [ConnEvent::PeerClosed]);
}

#[test]
fn retransmitted_fin_in_close_wait_is_acked() {
    let mut t = established();
    send!(t, seg().fin().seq(R).ack(L));
    t.emitted();
    send!(t, seg().fin().seq(R).ack(L) => Verdict::Dropped(DropReason::OutOfWindow));
    recv!(t, [seg().seq(L).ack(R + 1).win(WIN - 1)]);
    assert_eq!(t.state(), State::CloseWait);
    events!(t, [ConnEvent::PeerClosed]);
}

// ===== Abort (RFC 9293 §3.10.5) =====

#[test]
fn abort_resets_with_snd_nxt() {
    let mut t = established();
    t.conn.abort();
    assert!(!t.conn.is_closed(), "the RST is still to go");
    recv!(t, [seg().rst().seq(L).ack(R).win(0)]);
    assert!(t.conn.is_closed());
    events!(t, [ConnEvent::Closed(CloseReason::Aborted)]);
    send!(t, seg().seq(R).ack(L).payload(b"late") => Verdict::Dropped(DropReason::Closed));
    recv_nothing!(t);
}

#[test]
fn abort_with_data_in_flight_resets_past_it() {
    let mut t = established();
    t.app_send(b"hello");
    t.emitted();
    send!(t, seg().seq(R).ack(L).payload(b"hi"));
    t.emitted();
    t.conn.abort();
    recv!(t, [seg().rst().seq(L + 5).ack(R + 2).win(0)]);
    assert_eq!(t.conn.poll_at(), None);
}

#[test]
fn abort_in_syn_received_resets() {
    let (mut t, _) = syn_received_with(config(), peer_syn());
    t.conn.abort();
    recv!(t, [seg().rst().seq(L).ack(R).win(0)]);
    events!(t, [ConnEvent::Closed(CloseReason::Aborted)]);
}

#[test]
fn abort_in_time_wait_is_silent() {
    let mut t = established();
    to_time_wait(&mut t, None);
    t.conn.abort();
    recv_nothing!(t);
    assert!(t.conn.is_closed());
    events!(t, []);
}

// ===== RFC 5961: blind reset, SYN and data injection =====

#[test]
fn rst_at_rcv_nxt_resets() {
    let mut t = established();
    send!(t, seg().rst().seq(R));
    assert!(t.conn.is_closed());
    events!(t, [ConnEvent::Closed(CloseReason::Reset)]);
    recv_nothing!(t);
}

#[test]
fn rst_in_the_window_but_not_at_rcv_nxt_draws_a_challenge_ack() {
    let mut t = established();
    send!(t, seg().rst().seq(R + 1) => Verdict::Dropped(DropReason::RstInvalid));
    recv!(t, [seg().seq(L).ack(R)]);
    assert_eq!(t.state(), State::Established);
    assert_eq!(t.conn.counters().challenge_acks, 1);
    send!(t, seg().rst().seq(R + u32::from(WIN) - 1) => Verdict::Dropped(DropReason::RstInvalid));
    recv!(t, [seg().seq(L).ack(R)]);
}

#[test]
fn rst_outside_the_window_is_ignored() {
    let mut t = established();
    send!(t, seg().rst().seq(R + u32::from(WIN)) => Verdict::Dropped(DropReason::OutOfWindow));
    send!(t, seg().rst().seq(REMOTE) => Verdict::Dropped(DropReason::OutOfWindow));
    recv_nothing!(t);
    assert_eq!(t.state(), State::Established);
}

#[test]
fn rst_in_other_synchronized_states_resets() {
    let mut t = established();
    send!(t, seg().fin().seq(R).ack(L));
    send!(t, seg().rst().seq(R + 1));
    events!(
        t,
        [ConnEvent::PeerClosed, ConnEvent::Closed(CloseReason::Reset)]
    );

    let mut t = established();
    t.conn.close(t.now);
    recv!(t, [seg().fin().seq(L).ack(R)]);
    send!(t, seg().seq(R).ack(L + 1));
    assert_eq!(t.state(), State::FinWait2);
    send!(t, seg().rst().seq(R));
    events!(t, [ConnEvent::Closed(CloseReason::Reset)]);
    assert!(t.conn.is_closed());
}

#[test]
fn syn_in_established_draws_a_challenge_ack() {
    let mut t = established();
    // RFC 5961 §4.2: whatever its sequence number.
    send!(t, seg().syn().seq(R + 5).mss(1460) => Verdict::Dropped(DropReason::SynInWindow));
    recv!(t, [seg().seq(L).ack(R)]);
    send!(t, seg().syn().seq(REMOTE).mss(1460) => Verdict::Dropped(DropReason::OutOfWindow));
    recv!(t, [seg().seq(L).ack(R)]);
    assert_eq!(t.state(), State::Established);
    assert_eq!(t.conn.counters().challenge_acks, 2);
}

#[test]
fn ack_older_than_the_largest_window_draws_a_challenge_ack() {
    let mut t = established();
    // RFC 5961 §5.2: SEG.ACK < SND.UNA - MAX.SND.WND.
    send!(t, seg().seq(R).ack(L.wrapping_sub(u32::from(WIN) + 1)).payload(b"x") => Verdict::Dropped(DropReason::BadAck));
    recv!(t, [seg().seq(L).ack(R)]);
    assert!(t.sink.received.is_empty());
    // Just inside: an old duplicate, whose data is taken.
    send!(
        t,
        seg()
            .seq(R)
            .ack(L.wrapping_sub(u32::from(WIN)))
            .payload(b"x")
    );
    recv!(t, [seg().seq(L).ack(R + 1).win(WIN - 1)]);
    assert_eq!(t.sink.received, b"x");
}

#[test]
fn ack_of_unsent_data_is_acked_and_dropped() {
    let mut t = established();
    send!(t, seg().seq(R).ack(L + 10).payload(b"x") => Verdict::Dropped(DropReason::BadAck));
    recv!(t, [seg().seq(L).ack(R)]);
    assert!(t.sink.received.is_empty());
    assert_eq!(t.conn.counters().challenge_acks, 0);
}

#[test]
fn pure_acks_of_unsent_data_are_rate_limited() {
    let mut t = established();
    // RFC 5961 §5.2 asks for an ACK, §7 for a limit on ACKs a peer can provoke at will.
    for _ in 0..CHALLENGE_ACKS_PER_SECOND + 2 {
        send!(t, seg().seq(R).ack(L + 10) => Verdict::Dropped(DropReason::BadAck));
        t.collect();
    }
    assert_eq!(t.emitted().len(), CHALLENGE_ACKS_PER_SECOND as usize);
    assert_eq!(t.conn.counters().challenge_acks_suppressed, 2);
    t.advance(SEC);
    send!(t, seg().seq(R).ack(L + 10) => Verdict::Dropped(DropReason::BadAck));
    recv!(t, [seg().seq(L).ack(R)]);
}

#[test]
fn blind_data_outside_the_window_is_dropped() {
    let mut t = established();
    send!(t, seg().seq(R + 100_000).ack(L).payload(b"evil") => Verdict::Dropped(DropReason::OutOfWindow));
    recv!(t, [seg().seq(L).ack(R)]);
    assert!(t.sink.received.is_empty());
}

#[test]
fn challenge_acks_are_rate_limited() {
    let mut t = established();
    for _ in 0..CHALLENGE_ACKS_PER_SECOND + 2 {
        send!(t, seg().rst().seq(R + 1) => Verdict::Dropped(DropReason::RstInvalid));
        t.collect();
    }
    assert_eq!(t.emitted().len(), CHALLENGE_ACKS_PER_SECOND as usize);
    assert_eq!(
        t.conn.counters().challenge_acks,
        u64::from(CHALLENGE_ACKS_PER_SECOND)
    );
    assert_eq!(t.conn.counters().challenge_acks_suppressed, 2);
    t.advance(SEC);
    send!(t, seg().rst().seq(R + 1) => Verdict::Dropped(DropReason::RstInvalid));
    recv!(t, [seg().seq(L).ack(R)]);
}

// ===== Segments for no connection (RFC 9293 §3.10.7.1) =====

#[test]
fn reset_reply_to_an_ack_takes_its_ack_number() {
    let seg_in = seg().seq(5).ack(77).payload(b"xyz").to_repr();
    let rst = reset_reply(&seg_in).expect("a RST");
    assert_eq!((rst.src_port, rst.dst_port), (LOCAL_PORT, REMOTE_PORT));
    // <SEQ=SEG.ACK><CTL=RST>
    assert_eq!(Seg::from_repr(&rst, Vec::new()), seg().rst().seq(77).win(0));
}

#[test]
fn reset_reply_to_a_syn_acks_it() {
    let rst = reset_reply(&peer_syn().to_repr()).expect("a RST");
    // <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>, the SYN counting one.
    assert_eq!(
        Seg::from_repr(&rst, Vec::new()),
        seg().rst().seq(0).ack(R).win(0)
    );
}

#[test]
fn reset_reply_to_data_and_fin_without_ack_acks_all_of_it() {
    let rst = reset_reply(&seg().fin().seq(u32::MAX - 1).payload(b"abc").to_repr()).expect("a RST");
    assert_eq!(
        Seg::from_repr(&rst, Vec::new()),
        seg().rst().seq(0).ack(2).win(0)
    );
}

#[test]
fn reset_reply_never_answers_a_reset() {
    assert_eq!(reset_reply(&seg().rst().seq(5).to_repr()), None);
    assert_eq!(reset_reply(&seg().rst().seq(5).ack(9).to_repr()), None);
}

// ===== SYN cookies end to end (RFC 4987; crate::listen, crate::cookie) =====

/// A listener on [`LOCAL_PORT`] that answers every SYN with a cookie.
fn cookie_listener() -> (Listeners, ListenerIndex, FourTuple) {
    let codec = SynCookies::new(SipKey::new(0x1234, 0x5678), SipKey::new(0x9abc, 0xdef0));
    let mut listeners = Listeners::new(Some(codec));
    let index = listeners.listen(LOCAL_PORT, 16, 0).expect("listen");
    let tuple = FourTuple {
        local: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), LOCAL_PORT),
        remote: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), REMOTE_PORT),
    };
    (listeners, index, tuple)
}

/// What our side of a cookie SYN-ACK says, from [`config`].
fn cookie_local() -> SynAckLocal {
    SynAckLocal {
        mss: config().mss,
        window_scale: config().window_shift().expect("window scaling on"),
        window_len: WIN,
        ecn: false,
    }
}

#[test]
fn cookie_handshake_with_timestamps_restores_every_option() {
    let (mut listeners, index, tuple) = cookie_listener();
    let t0 = 5 * SEC;
    assert_eq!(listeners.handle_syn(index, t0), SynDecision::Cookie);
    let syn = peer_syn().ws(2).sack_perm().ts(PEER_TS, 0);
    let syn_ack = listeners
        .cookie_syn_ack(
            index,
            &syn.to_repr(),
            &tuple,
            t0,
            (t0 / MS) as u32,
            &cookie_local(),
        )
        .expect("a cookie SYN-ACK");
    let repr = syn_ack.repr;
    assert_eq!((repr.src_port, repr.dst_port), (LOCAL_PORT, REMOTE_PORT));
    let iss = repr.seq;
    let (cookie_ts, _) = repr.timestamps.expect("timestamps echoed");
    assert_eq!(
        Seg::from_repr(&repr, Vec::new()),
        seg()
            .syn()
            .seq(iss)
            .ack(R)
            .mss(1460)
            .ws(0)
            .sack_perm()
            .ts(cookie_ts, PEER_TS)
    );
    // The peer's final ACK, carrying the first request.
    let t1 = t0 + 10 * MS;
    let ack = seg()
        .seq(R)
        .ack(iss + 1)
        .ts(PEER_TS + 10, cookie_ts)
        .payload(b"GET /");
    let params = listeners
        .cookie_ack(index, &ack.to_repr(), &tuple, t1)
        .expect("cookie valid");
    assert_eq!(
        (params.mss, params.window_scale, params.sack_permitted),
        (1460, Some(2), true)
    );
    listeners.cookie_established(index).expect("backlog room");
    let conn =
        Connection::from_cookie(config(), ports(), t1, &ack.to_repr(), params).expect("valid");
    // Our clock continues from the SYN-ACK's TSval.
    let mut t = TestConn::new(conn, t1, cookie_ts.wrapping_sub((t1 / MS) as u32));
    assert_eq!(t.state(), State::Established);
    send!(t, ack);
    assert_eq!(t.sink.received, b"GET /");
    recv!(
        t,
        [seg()
            .seq(iss + 1)
            .ack(R + 5)
            .win(WIN - 5)
            .ts(cookie_ts, PEER_TS + 10)]
    );
    events!(t, [ConnEvent::Established]);
    assert_eq!(t.conn.options_in_force(), (true, true, Some((2, 0))));
    assert_eq!(t.conn.smss(), MSS_TS);
    // The peer's window is scaled by the shift the cookie kept.
    send!(
        t,
        seg()
            .seq(R + 5)
            .ack(iss + 1)
            .win(1000)
            .ts(PEER_TS + 11, cookie_ts)
    );
    assert_eq!(t.conn.send_window(), 4000);
    t.app_send_n(2000);
    let ts = (t.tsval(), PEER_TS + 11);
    recv!(
        t,
        [
            seg()
                .seq(iss + 1)
                .ack(R + 5)
                .win(WIN - 5)
                .ts(ts.0, ts.1)
                .data(0, 1448),
            seg()
                .seq(iss + 1 + 1448)
                .ack(R + 5)
                .win(WIN - 5)
                .ts(ts.0, ts.1)
                .data(1448, 552)
                .psh(),
        ]
    );
    // SACK works: the peer reports the second segment, the first is lost.
    for _ in 0..3 {
        send!(
            t,
            seg()
                .seq(R + 5)
                .ack(iss + 1)
                .win(1000)
                .ts(PEER_TS + 12, ts.0)
                .sack(&[(iss + 1 + 1448, iss + 2001)])
        );
    }
    recv!(
        t,
        [seg()
            .seq(iss + 1)
            .ack(R + 5)
            .win(WIN - 5)
            .ts(t.tsval(), PEER_TS + 12)
            .data(0, 1448)]
    );
}

#[test]
fn cookie_handshake_without_timestamps_has_no_scaling_or_sack() {
    let (mut listeners, index, tuple) = cookie_listener();
    let syn = seg().syn().seq(REMOTE).mss(1400).ws(2).sack_perm();
    let syn_ack = listeners
        .cookie_syn_ack(index, &syn.to_repr(), &tuple, 0, 0, &cookie_local())
        .expect("a cookie SYN-ACK");
    let iss = syn_ack.repr.seq;
    // Nowhere to keep WS or SACK-permitted without timestamps: offer neither.
    assert_eq!(
        Seg::from_repr(&syn_ack.repr, Vec::new()),
        seg().syn().seq(iss).ack(R).mss(1460)
    );
    // The MSS is rounded down to the cookie table.
    assert_eq!(syn_ack.mss, 1300);
    let ack = seg().seq(R).ack(iss + 1).win(1000);
    let params = listeners
        .cookie_ack(index, &ack.to_repr(), &tuple, MS)
        .expect("cookie valid");
    assert_eq!(
        (params.mss, params.window_scale, params.sack_permitted),
        (1300, None, false)
    );
    let conn =
        Connection::from_cookie(config(), ports(), MS, &ack.to_repr(), params).expect("valid");
    let mut t = TestConn::new(conn, MS, 0);
    send!(t, ack);
    recv_nothing!(t);
    assert_eq!(t.conn.options_in_force(), (false, false, None));
    assert_eq!(t.conn.send_window(), 1000);
    t.app_send_n(1000);
    recv!(t, [seg().seq(iss + 1).ack(R).data(0, 1000).psh(),]);
    send!(t, seg().seq(R).ack(iss + 1001).win(5000));
    t.app_send_n(2000);
    recv!(
        t,
        [
            seg().seq(iss + 1001).ack(R).data(1000, 1300),
            seg().seq(iss + 2301).ack(R).data(2300, 700).psh(),
        ]
    );
}

#[test]
fn cookie_ack_with_a_wrong_number_is_refused() {
    let (mut listeners, index, tuple) = cookie_listener();
    let syn_ack = listeners
        .cookie_syn_ack(index, &peer_syn().to_repr(), &tuple, 0, 0, &cookie_local())
        .expect("a cookie SYN-ACK");
    let forged = seg().seq(R).ack(syn_ack.repr.seq.wrapping_add(1 << 20));
    assert!(matches!(
        listeners.cookie_ack(index, &forged.to_repr(), &tuple, MS),
        Err(ListenError::Cookie(_))
    ));
    // Another tuple's ACK with the right number fails too.
    let other = FourTuple {
        remote: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 3), REMOTE_PORT),
        ..tuple
    };
    let ack = seg().seq(R).ack(syn_ack.repr.seq + 1);
    assert!(listeners
        .cookie_ack(index, &ack.to_repr(), &other, MS)
        .is_err());
    assert!(listeners
        .cookie_ack(index, &ack.to_repr(), &tuple, MS)
        .is_ok());
}

// ===== Sequence-number wraparound (RFC 9293 §3.4) =====

/// Our ISS just below 2^32.
const LOCAL_W: u32 = u32::MAX - 1000;
/// The peer's ISS just below 2^32.
const REMOTE_W: u32 = u32::MAX - 50;

#[test]
fn sending_across_2_pow_32() {
    let mut t = TestConn::accept_with(config(), LOCAL_W, &peer_syn());
    recv!(t, [seg().syn().seq(LOCAL_W).ack(R).mss(1460)]);
    send!(t, seg().seq(R).ack(LOCAL_W + 1));
    events!(t, [ConnEvent::Established]);
    let l = LOCAL_W.wrapping_add(1);
    t.app_send_n(3000);
    recv!(
        t,
        [
            seg().seq(l).ack(R).data(0, 1460),
            seg().seq(l.wrapping_add(1460)).ack(R).data(1460, 1460),
            seg().seq(l.wrapping_add(2920)).ack(R).data(2920, 80).psh(),
        ]
    );
    assert!(
        l.wrapping_add(1460) < 1000,
        "the second segment starts past zero"
    );
    // Three duplicates with a SACK block across zero: the first segment is resent.
    send!(t, seg().seq(R).ack(l.wrapping_add(1460)));
    events!(t, [ConnEvent::Sent { bytes: 1460 }]);
    for _ in 0..3 {
        send!(t, seg().seq(R).ack(l.wrapping_add(1460)).win(WIN));
    }
    recv!(t, [seg().seq(l.wrapping_add(1460)).ack(R).data(1460, 1460)]);
    send!(t, seg().seq(R).ack(l.wrapping_add(3000)));
    events!(t, [ConnEvent::Sent { bytes: 1540 }]);
    t.conn.close(t.now);
    recv!(t, [seg().fin().seq(l.wrapping_add(3000)).ack(R)]);
    send!(t, seg().seq(R).ack(l.wrapping_add(3001)));
    assert_eq!(t.state(), State::FinWait2);
}

#[test]
fn receiving_across_2_pow_32_with_sack_and_fin() {
    let mut t = established_with(config(), seg().syn().seq(REMOTE_W).mss(1460).sack_perm());
    let r = REMOTE_W.wrapping_add(1);
    send!(t, seg().seq(r).ack(L).data(0, 100));
    recv!(t, [seg().seq(L).ack(r.wrapping_add(100)).win(WIN - 100)]);
    // The first segment straddled zero; now a hole at [100, 200) and a SACK block past it.
    send!(t, seg().seq(r.wrapping_add(200)).ack(L).data(200, 100));
    recv!(
        t,
        [seg()
            .seq(L)
            .ack(r.wrapping_add(100))
            .win(WIN - 100)
            .sack(&[(r.wrapping_add(200), r.wrapping_add(300))])]
    );
    // The FIN arrives out of order too, with the last data.
    send!(t, seg().fin().seq(r.wrapping_add(300)).ack(L).data(300, 10));
    recv!(
        t,
        [seg()
            .seq(L)
            .ack(r.wrapping_add(100))
            .win(WIN - 100)
            .sack(&[(r.wrapping_add(200), r.wrapping_add(310))])]
    );
    assert!(r.wrapping_add(200) < 1000, "the SACK block lies past zero");
    send!(t, seg().seq(r.wrapping_add(100)).ack(L).data(100, 100));
    recv!(t, [seg().seq(L).ack(r.wrapping_add(311)).win(WIN - 311)]);
    assert_eq!(t.sink.received, stream(0, 310));
    assert_eq!(t.state(), State::CloseWait);
    events!(t, [ConnEvent::PeerClosed]);
}

#[test]
fn fin_at_sequence_number_zero() {
    let mut t = established_with(config(), seg().syn().seq(u32::MAX - 1).mss(1460));
    send!(t, seg().seq(u32::MAX).ack(L).payload(b"z"));
    recv!(t, [seg().seq(L).ack(0).win(WIN - 1)]);
    send!(t, seg().fin().seq(0).ack(L));
    recv!(t, [seg().seq(L).ack(1).win(WIN - 2)]);
    assert_eq!(t.state(), State::CloseWait);
}

#[test]
fn four_gib_stream_leaves_snd_una_back_at_iss() {
    // Our stream wraps the sequence space: after 2^32 - 1 bytes, SND.UNA = ISS again, which
    // must not be mistaken for "the SYN is unacknowledged".
    let config = ConnConfig {
        mss: 65_000,
        send_buffer_bytes: 1 << 30,
        recv_buffer_bytes: 1 << 20,
        congestion: CongestionKind::NewReno,
        ..ConnConfig::default()
    };
    let syn = seg().syn().seq(REMOTE).mss(65_000).ws(14);
    let mut t = TestConn::accept_with(config, LOCAL, &syn);
    t.out_virtual = true;
    t.emitted();
    send!(t, seg().seq(R).ack(L).win(u16::MAX));
    t.events();
    let total: u64 = (1 << 32) - 1;
    let mut acked: u64 = 0;
    while acked < total {
        let offer = (total - t.out_len).min(u64::from(u32::MAX)) as u32;
        if offer > 0 {
            t.app_send_n(offer);
        }
        let mut ends = Vec::new();
        while let Some(tx) = t.conn.poll_transmit(t.now) {
            assert_eq!(
                tx.payload_offset,
                acked + ends.iter().map(|&(_, n)| n).sum::<u64>()
            );
            ends.push((
                tx.repr.seq.wrapping_add(tx.repr.payload_len as u32),
                tx.repr.payload_len as u64,
            ));
        }
        assert!(!ends.is_empty(), "stalled at {acked}");
        for (end, len) in ends {
            let seg = seg().seq(R).ack(end).win(u16::MAX);
            assert_eq!(
                t.conn
                    .handle_segment(t.now, &seg.to_repr(), Vec::new(), &mut t.sink),
                Verdict::Accepted
            );
            acked += len;
        }
        t.events();
    }
    assert_eq!(t.conn.send_queued(), 0);
    assert_eq!(t.out_len, total);
    // The next byte has sequence number ISS and stream offset 2^32 - 1.
    t.app_send_n(10);
    assert_eq!(t.conn.send_queued(), 10);
    recv!(
        t,
        [seg().seq(LOCAL).ack(R).win(32_768).data(total, 10).psh()]
    );
    send!(t, seg().seq(R).ack(LOCAL + 10).win(u16::MAX));
    events!(t, [ConnEvent::Sent { bytes: 10 }]);
    assert_eq!(t.conn.send_queued(), 0);
}

// ===== More edges =====

#[test]
fn invalid_configs_are_refused() {
    let bad_mss = ConnConfig {
        mss: MSS_MIN - 1,
        ..config()
    };
    assert!(Connection::<Vec<u8>>::connect(bad_mss, ports(), LOCAL, 0).is_err());
    let bad_buffer = ConnConfig {
        recv_buffer_bytes: 100,
        ..config()
    };
    assert!(Connection::<Vec<u8>>::accept_syn(
        bad_buffer,
        ports(),
        LOCAL,
        0,
        &peer_syn().to_repr()
    )
    .is_err());
    let bad_keepalive = ConnConfig {
        keepalive: Some(Keepalive {
            probes: 0,
            ..keepalive()
        }),
        ..config()
    };
    assert!(Connection::<Vec<u8>>::connect(bad_keepalive, ports(), LOCAL, 0).is_err());
}

#[test]
fn syn_ack_options_we_did_not_offer_are_not_used() {
    let config = ConnConfig {
        sack: false,
        timestamps: false,
        ..config()
    };
    let mut t = TestConn::connect_with(config, LOCAL);
    recv!(t, [seg().syn().seq(LOCAL).mss(1460).ws(0)]);
    send!(
        t,
        seg()
            .syn()
            .seq(REMOTE)
            .ack(L)
            .mss(1460)
            .ws(1)
            .sack_perm()
            .ts(PEER_TS, 0)
    );
    recv!(t, [seg().seq(L).ack(R)]);
    assert_eq!(t.conn.options_in_force(), (false, false, Some((1, 0))));
    assert_eq!(t.conn.smss(), MSS);
}

#[test]
fn syn_with_timestamps_gets_none_when_they_are_off() {
    let config = ConnConfig {
        timestamps: false,
        ..config()
    };
    let mut t = TestConn::accept_with(config, LOCAL, &peer_syn().sack_perm().ts(PEER_TS, 0));
    recv!(t, [seg().syn().seq(LOCAL).ack(R).mss(1460).sack_perm()]);
}

#[test]
fn window_scale_above_14_is_taken_as_14() {
    let mut t = established_with(config(), peer_syn().ws(15));
    assert_eq!(t.conn.options_in_force(), (false, false, Some((14, 0))));
    send!(t, seg().seq(R).ack(L).win(1));
    assert_eq!(t.conn.send_window(), 1 << 14);
}

#[test]
fn final_ack_with_fin_goes_straight_to_close_wait() {
    let (mut t, _) = syn_received_with(config(), peer_syn());
    send!(t, seg().fin().seq(R).ack(L).payload(b"bye"));
    assert_eq!(t.state(), State::CloseWait);
    recv!(t, [seg().seq(L).ack(R + 4).win(WIN - 4)]);
    events!(t, [ConnEvent::Established, ConnEvent::PeerClosed]);
}

#[test]
fn retransmitted_syn_ack_after_the_handshake_is_acked_again() {
    let mut t = TestConn::connect_with(config(), LOCAL);
    t.emitted();
    let syn_ack = seg().syn().seq(REMOTE).ack(L).mss(1460);
    send!(t, syn_ack.clone());
    recv!(t, [seg().seq(L).ack(R)]);
    // Our ACK was lost; the peer's SYN-ACK comes again and draws the ACK it needs.
    send!(t, syn_ack => Verdict::Dropped(DropReason::OutOfWindow));
    recv!(t, [seg().seq(L).ack(R)]);
    assert_eq!(t.state(), State::Established);
    events!(t, [ConnEvent::Established]);
}

#[test]
fn peers_keepalive_probe_is_answered() {
    let mut t = established();
    send!(t, seg().seq(R).ack(L).payload(b"abc"));
    t.emitted();
    // Linux's keepalive: SEG.SEQ = RCV.NXT - 1, no data.
    send!(t, seg().seq(R + 2).ack(L) => Verdict::Dropped(DropReason::OutOfWindow));
    recv!(t, [seg().seq(L).ack(R + 3).win(WIN - 3)]);
    assert_eq!(t.state(), State::Established);
}

#[test]
fn urgent_flag_is_ignored_and_its_data_delivered() {
    let mut t = established();
    send!(t, seg().flag(Flags::URG).seq(R).ack(L).payload(b"!"));
    recv!(t, [seg().seq(L).ack(R + 1).win(WIN - 1)]);
    assert_eq!(t.sink.received, b"!");
}

#[test]
fn rst_at_rcv_nxt_with_data_resets_and_discards_it() {
    let mut t = established();
    send!(t, seg().rst().seq(R).ack(L).payload(b"why"));
    assert!(t.conn.is_closed());
    assert!(t.sink.received.is_empty());
    assert_eq!(t.sink.discarded, 3);
    events!(t, [ConnEvent::Closed(CloseReason::Reset)]);
}

#[test]
fn recv_done_is_clamped_to_what_was_lent() {
    let mut t = established();
    send!(t, seg().seq(R).ack(L).payload(b"abc"));
    t.emitted();
    t.recv_done(1000);
    assert_eq!(t.conn.recv_lent(), 0);
    recv_nothing!(t);
}

#[test]
fn drain_gives_parked_payloads_back() {
    let mut t = established();
    send!(t, seg().seq(R + 10).ack(L).data(10, 10));
    send!(t, seg().seq(R + 30).ack(L).data(30, 5));
    t.emitted();
    t.conn.abort();
    recv!(t, [seg().rst().seq(L).ack(R).win(0)]);
    assert!(t.conn.is_closed());
    let before = t.sink.discarded;
    t.conn.drain(&mut t.sink);
    assert_eq!(t.sink.discarded - before, 15);
}

#[test]
fn idle_restart_resets_cwnd_to_the_initial_window() {
    let mut t = established_with(newreno(), peer_syn());
    assert_eq!(t.app_send_n(20_000), 10 * MSS);
    t.emitted();
    send!(t, seg().seq(R).ack(L + 10 * MSS));
    assert_eq!(t.conn.cwnd(), 12 * MSS);
    // RFC 5681 §4.1: after an idle period longer than the RTO, back to the initial window.
    t.advance(SEC);
    t.app_send_n(100);
    assert_eq!(t.conn.cwnd(), 10 * MSS);
}

#[test]
fn congestion_control_can_be_switched_before_data() {
    let mut t = established();
    assert_eq!(t.conn.congestion_kind(), CongestionKind::Cubic);
    t.conn
        .set_congestion(CongestionKind::NewReno)
        .expect("valid");
    assert_eq!(t.conn.congestion_kind(), CongestionKind::NewReno);
    assert_eq!(t.conn.cwnd(), 10 * MSS);
}

#[test]
fn retransmission_respects_a_shrunken_window() {
    let mut t = established();
    t.app_send_n(3000);
    assert_eq!(t.emitted().len(), 3);
    // The peer takes nothing and shrinks its window to 100 bytes (RFC 9293 §3.8.6 allows
    // it to be done, though discouraged).
    send!(t, seg().seq(R).ack(L).win(100));
    assert_eq!(t.fire(), 200 * MS);
    recv!(t, [seg().seq(L).ack(R).data(0, 100)]);
    send!(t, seg().seq(R).ack(L + 100).win(100));
    recv!(t, [seg().seq(L + 100).ack(R).data(100, 100)]);
}

#[test]
fn trimmed_segment_loses_its_fin() {
    let mut t = established_recv_buf(3000);
    send!(t, seg().fin().seq(R).ack(L).data(0, 3500));
    recv!(t, [seg().seq(L).ack(R + 3000).win(0)]);
    assert_eq!(t.state(), State::Established);
    events!(t, []);
    // The rest, and the FIN, once the app made room.
    t.recv_done(3000);
    recv!(t, [seg().seq(L).ack(R + 3000).win(3000)]);
    send!(t, seg().fin().seq(R + 3000).ack(L).data(3000, 500));
    recv!(t, [seg().seq(L).ack(R + 3501).win(2499)]);
    assert_eq!(t.state(), State::CloseWait);
    assert_eq!(t.sink.received, stream(0, 3500));
}

#[test]
fn a_closed_connection_is_inert() {
    let mut t = established();
    send!(t, seg().rst().seq(R));
    t.events();
    t.conn.handle_timeout(10 * SEC);
    t.conn.close(t.now);
    t.conn.abort();
    assert_eq!(t.app_send_n(10), 0);
    recv_nothing!(t);
    events!(t, []);
    assert_eq!(t.conn.poll_at(), None);
}

#[test]
fn established_is_reported_once() {
    let mut t = established();
    send!(t, seg().seq(R).ack(L));
    send!(t, seg().seq(R).ack(L).payload(b"x"));
    events!(t, []);
}

#[test]
fn sent_events_coalesce_until_polled() {
    let mut t = established();
    t.app_send_n(3000);
    t.emitted();
    send!(t, seg().seq(R).ack(L + 1000));
    send!(t, seg().seq(R).ack(L + 2000));
    send!(t, seg().seq(R).ack(L + 3000));
    events!(t, [ConnEvent::Sent { bytes: 3000 }]);
}

#[test]
fn old_ack_within_the_window_is_ignored_but_its_data_taken() {
    let mut t = established();
    t.app_send_n(100);
    t.emitted();
    send!(t, seg().seq(R).ack(L + 100));
    t.events();
    // An ACK below SND.UNA but within MAX.SND.WND: a duplicate; nothing moves.
    send!(t, seg().seq(R).ack(L + 50).win(10).payload(b"q"));
    recv!(t, [seg().seq(L + 100).ack(R + 1).win(WIN - 1)]);
    assert_eq!(t.conn.send_window(), u32::from(WIN));
    assert_eq!(t.sink.received, b"q");
    events!(t, []);
}

#[test]
fn challenge_ack_in_syn_received_is_the_syn_ack() {
    let (mut t, syn_ack) = syn_received_with(config(), peer_syn());
    // An out-of-window segment in SYN-RECEIVED is answered with the SYN-ACK again.
    send!(t, seg().seq(R + 100_000).ack(L).payload(b"x") => Verdict::Dropped(DropReason::OutOfWindow));
    recv!(t, [syn_ack]);
}
