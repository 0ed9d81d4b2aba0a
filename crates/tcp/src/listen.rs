//! Listeners: a bounded table of listening ports, each with a bounded SYN queue and a bounded
//! accept backlog, the decision how to answer a SYN, and the glue between SYN cookies
//! ([`crate::cookie`]) and the segments of a stateless handshake.
//!
//! Shape: the SYN queue and the backlog are *counts*, not queues. A connection in
//! SYN-RECEIVED is a full entry of the engine's connection table ([`crate::table`]) like any
//! other, and one that is established but not yet accepted is announced to the app as an
//! event, so the order of acceptance lives in the engine's event queue; what a listener must
//! know is only how many of each it has, to bound them. This module keeps those counts and
//! counters, makes no system call, reads no clock and allocates nothing after
//! [`Listeners::new`]. The alternative rejected is Linux's: a separate table of small request
//! sockets for half-open connections and a linked accept queue. There it saves memory,
//! because a full socket is large; here every connection has the same fixed-size slot, so a
//! second table would be a second hash lookup per segment and a second pool to size, for no
//! saving.
//!
//! The decision on a SYN ([`Listeners::handle_syn`]), as Linux makes it with
//! `net.ipv4.tcp_syncookies = 1`:
//! - accept backlog full: drop the SYN, cookies or not (Linux's `sk_acceptq_is_full` check in
//!   `tcp_conn_request`): the app is not keeping up, and completing more handshakes would
//!   only produce connections with nowhere to go; the peer retransmits its SYN;
//! - room in the SYN queue: answer statefully (a SYN-RECEIVED connection with an ISN from
//!   [`crate::isn::IsnGenerator`], RFC 6528);
//! - SYN queue full: answer with a SYN cookie (RFC 4987 §3.6) and keep nothing, or drop the
//!   SYN if cookies are off.
//!
//! The SYN queue bound is what keeps a flood of spoofed SYNs from filling the connection
//! table: at most `syn_queue_max` half-open entries per listener, then cookies, which cost
//! no state at all. A listener with `syn_queue_max = 0` always answers with cookies (Linux's
//! `tcp_syncookies = 2`). The engine's table should be sized for the sum, over listeners, of
//! `syn_queue_max` and `backlog`, plus the established connections it serves.
//!
//! The cookie helpers ([`Listeners::cookie_syn_ack`], [`Listeners::cookie_ack`]) build the
//! SYN-ACK from the SYN and check the final ACK, reusing [`SynCookies`] for every bit of the
//! encoding. Without timestamps in the SYN a cookie cannot carry window scale or
//! SACK-permitted, so the SYN-ACK then offers neither (Linux clears them the same way);
//! offering window scaling without remembering it would leave the two ends disagreeing about
//! every window. And, as Linux's `tcp_synq_no_recent_overflow`, an ACK is checked as a cookie
//! only within [`COOKIE_AGE_MAX_MINUTES`] of the listener's last cookie: outside that window
//! no valid cookie can exist, and refusing without hashing leaves a forger nothing to try.

use core::fmt;

use melange_wire::tcp::{Flags, Repr, SACK_BLOCKS_MAX};
use thiserror::Error;

use crate::cookie::{
    CookieError, CookieOptions, CookieParams, SynCookies, COOKIE_AGE_MAX_MINUTES, COOKIE_MINUTE_NS,
    WINDOW_SCALE_MAX,
};
use crate::isn::FourTuple;
use crate::table::CONNECTIONS_MAX;

/// The most ports one engine listens on at once. Listeners are set up by the app at start,
/// not per connection, so a small fixed table suffices.
pub const LISTENERS_MAX: usize = 64;

/// The default bound on a listener's half-open connections: the classic Linux default of
/// `net.ipv4.tcp_max_syn_backlog` (1024 on hosts with more than 128 MB).
pub const SYN_QUEUE_MAX_DEFAULT: u32 = 1024;

/// The largest `backlog` or `syn_queue_max` a listener takes; larger requests are cut to it,
/// as Linux cuts a backlog to `net.core.somaxconn`. No listener can have more connections
/// than a table holds.
pub const LISTEN_QUEUE_MAX: u32 = CONNECTIONS_MAX as u32;

/// The MSS a host assumes when the SYN carries no MSS option (RFC 9293 §3.7.1).
pub const MSS_DEFAULT: u16 = 536;

/// How long after the last cookie an ACK may still carry a valid one: a cookie lives in the
/// minute it was made and the next, under two minutes in all.
const COOKIES_OUTSTANDING_NS: u64 = COOKIE_AGE_MAX_MINUTES as u64 * COOKIE_MINUTE_NS;

/// The port map's "no listener".
const NO_LISTENER: u8 = u8::MAX;

/// Every possible port.
const PORTS: usize = 1 << 16;

// Listener slots are named by a u8 in the port map, with NO_LISTENER reserved.
const _: () = assert!(LISTENERS_MAX < NO_LISTENER as usize);
const _: () = assert!(CONNECTIONS_MAX <= u32::MAX as usize);

/// A listener's place in [`Listeners`]: its slot and the slot's generation, so an index kept
/// after [`Listeners::close`] is refused rather than reaching a later listener. Eight bytes,
/// `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerIndex {
    index: u32,
    generation: u32,
}

impl ListenerIndex {
    /// The index as one integer, generation high and slot low: the layout of
    /// `melange_core::Handle::to_raw`, so the engine's `ListenerId` carries it as is.
    pub const fn to_raw(self) -> u64 {
        (self.generation as u64) << 32 | self.index as u64
    }

    /// An index from [`ListenerIndex::to_raw`]'s integer. Any value is accepted; one that
    /// names no open listener is refused at use. Raw 0 never names a listener.
    pub const fn from_raw(raw: u64) -> Self {
        Self {
            index: raw as u32,
            generation: (raw >> 32) as u32,
        }
    }
}

impl fmt::Debug for ListenerIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "listener#{}.{}", self.index, self.generation)
    }
}

/// A listener's counters since [`Listeners::listen`], for the control plane's statistics.
/// Each saturates rather than wraps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerCounters {
    /// SYNs given to [`Listeners::handle_syn`].
    pub syns_received: u64,
    /// SYNs that found the SYN queue full (answered with a cookie or dropped).
    pub syn_queue_full: u64,
    /// Cookie SYN-ACKs built by [`Listeners::cookie_syn_ack`].
    pub cookies_sent: u64,
    /// Final ACKs whose cookie verified.
    pub cookies_accepted: u64,
    /// Final ACKs checked as cookies that did not verify (forged, stale, corrupted). ACKs
    /// refused because no cookie was outstanding are not counted: they are stray ACKs, not
    /// cookie failures.
    pub cookies_rejected: u64,
    /// Connections refused because the accept backlog was full: SYNs dropped, handshakes
    /// completed into a full backlog.
    pub backlog_full_drops: u64,
}

/// One listening port and its bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    port: u16,
    backlog: u32,
    syn_queue_max: u32,
    half_open: u32,
    unaccepted: u32,
    /// The last time a cookie was sent or decided on; cookie ACKs are checked only within
    /// [`COOKIES_OUTSTANDING_NS`] of it.
    cookie_last_ns: Option<u64>,
    counters: ListenerCounters,
}

impl Listener {
    /// The local port listened on.
    pub fn port(&self) -> u16 {
        self.port
    }
    /// The most established connections the app has not accepted yet.
    pub fn backlog(&self) -> u32 {
        self.backlog
    }
    /// The most half-open (SYN-RECEIVED) connections.
    pub fn syn_queue_max(&self) -> u32 {
        self.syn_queue_max
    }
    /// Connections in SYN-RECEIVED now.
    pub fn half_open_count(&self) -> u32 {
        self.half_open
    }
    /// Established connections the app has not accepted yet.
    pub fn unaccepted_count(&self) -> u32 {
        self.unaccepted
    }
    /// The counters.
    pub fn counters(&self) -> &ListenerCounters {
        &self.counters
    }
}

/// How to answer a SYN, from [`Listeners::handle_syn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynDecision {
    /// There is room in the SYN queue: create a SYN-RECEIVED connection (ISN from
    /// [`crate::isn::IsnGenerator`]), then call [`Listeners::syn_queued`].
    Stateful,
    /// The SYN queue is full and cookies are on: answer with
    /// [`Listeners::cookie_syn_ack`] and keep no state.
    Cookie,
    /// Drop the SYN silently; the peer retransmits it if it is real.
    Drop(SynDrop),
}

/// Why a SYN is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynDrop {
    /// The listener index is stale: the listener was closed.
    NoListener,
    /// The accept backlog is full: the app is behind.
    BacklogFull,
    /// The SYN queue is full and cookies are off.
    SynQueueFull,
}

/// What this host puts in its SYN-ACK, the same for every SYN on a listener; the caller
/// derives it from the interface MTU and the receive buffer size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynAckLocal {
    /// The MSS we can receive (our MSS option), and the most we send.
    pub mss: u16,
    /// Our window scale shift, offered when the peer offered one; cut to 14 (RFC 7323 §2.3).
    pub window_scale: u8,
    /// The window field of the SYN-ACK, never scaled (RFC 7323 §2.2).
    pub window_len: u16,
    /// We agree to ECN when the peer asks (RFC 3168 §6.1.1).
    pub ecn: bool,
}

/// A cookie SYN-ACK from [`Listeners::cookie_syn_ack`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CookieSynAck {
    /// The segment to emit, from the SYN's destination to its source: `seq` is the cookie,
    /// `ack` the SYN's sequence number plus one, the options as the module documentation
    /// says.
    pub repr: Repr,
    /// The MSS the cookie encodes, which the connection will send with once the final ACK
    /// brings the cookie back: the smaller of the peer's and ours, rounded down to
    /// [`crate::cookie::MSS_TABLE`].
    pub mss: u16,
}

/// What went wrong with a listener operation. Each variant says what the caller does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum ListenError {
    /// Port 0 names no port on the wire: choose a port in 1..=65535.
    #[error("cannot listen on port 0")]
    PortZero,
    /// The port already has a listener: close it first, or choose another port.
    #[error("port {port} already has a listener")]
    AlreadyListening {
        /// The port.
        port: u16,
    },
    /// All [`LISTENERS_MAX`] listeners are open: close one first.
    #[error("all {max} listeners are in use")]
    Full {
        /// [`LISTENERS_MAX`].
        max: usize,
    },
    /// A backlog of 0 could never hand the app a connection: ask for at least 1.
    #[error("a listener needs a backlog of at least 1")]
    ZeroBacklog,
    /// The listener index names no open listener (it was closed): drop the index; a
    /// connection that belonged to it is reset by the caller.
    #[error("stale listener index: the listener is closed")]
    Stale,
    /// [`Listeners::syn_queued`] with the SYN queue already full: [`Listeners::handle_syn`]
    /// was not asked first. Undo the connection (or answer with a cookie instead).
    #[error("the SYN queue is full")]
    SynQueueFull,
    /// The accept backlog is full. For a completing handshake, either drop the ACK and keep
    /// the connection half-open (Linux's default; the peer's retransmission may find room)
    /// or reset it and call [`Listeners::half_open_failed`]; for a cookie, drop the ACK.
    #[error("the accept backlog is full")]
    BacklogFull,
    /// Cookies are off ([`Listeners::new`] without a codec): answer statefully or drop.
    #[error("SYN cookies are disabled")]
    CookiesDisabled,
    /// The segment given as a SYN is not one (it has ACK, RST or FIN, or lacks SYN): handle
    /// it by the rules for its flags instead (RFC 9293 §3.10.7.2).
    #[error("not a SYN")]
    NotASyn,
    /// The segment given as a final ACK is not one (no ACK, or SYN or RST set): handle it by
    /// the rules for its flags instead.
    #[error("not a final ACK")]
    NotAnAck,
    /// No cookie was sent within the last two minutes, so the ACK cannot carry a valid one:
    /// treat it as an ACK for no connection (answer with a RST, RFC 9293 §3.10.7.2).
    #[error("no SYN cookie is outstanding on this listener")]
    NoCookiesOutstanding,
    /// The ACK's cookie did not verify: drop the segment (or answer with a RST); it is a
    /// forgery, a late ACK, or one for another tuple.
    #[error("SYN cookie rejected: {0}")]
    Cookie(#[from] CookieError),
}

/// One listener slot.
#[derive(Clone, Debug)]
struct Slot {
    /// Bumped on every close, never 0.
    generation: u32,
    listener: Option<Listener>,
}

/// An engine's listeners. See the module documentation.
///
/// Call order for a SYN on a port with a listener ([`Listeners::find`]):
/// [`Listeners::handle_syn`], then per its decision either create the connection and call
/// [`Listeners::syn_queued`], or [`Listeners::cookie_syn_ack`], or nothing. Later, for a
/// SYN-RECEIVED connection: [`Listeners::half_open_established`] on its final ACK or
/// [`Listeners::half_open_failed`] when it dies. For an ACK that matches no connection on a
/// listening port: [`Listeners::cookie_ack`], and on `Ok` [`Listeners::cookie_established`]
/// before creating the connection. When the app accepts a connection, or one that was never
/// accepted goes away, [`Listeners::accepted`].
pub struct Listeners {
    slots: [Slot; LISTENERS_MAX],
    /// Port to slot, [`NO_LISTENER`] for none; [`PORTS`] entries.
    by_port: Box<[u8]>,
    /// Open listeners.
    len: usize,
    /// The cookie codec; `None` turns cookies off.
    cookies: Option<SynCookies>,
}

/// The live listener `index` names, from the slots alone, so that callers can borrow other
/// fields of [`Listeners`] alongside.
fn live_mut(slots: &mut [Slot], index: ListenerIndex) -> Result<&mut Listener, ListenError> {
    match slots.get_mut(index.index as usize) {
        Some(slot) if slot.generation == index.generation => {
            slot.listener.as_mut().ok_or(ListenError::Stale)
        }
        _ => Err(ListenError::Stale),
    }
}

/// `count - 1`, which must be positive: a zero count here is the caller's bookkeeping bug,
/// asserted in debug builds; release builds keep the count at 0 rather than wrap.
fn decrement(count: &mut u32, what: &str) {
    let before = *count;
    *count = before.saturating_sub(1);
    debug_assert!(before > 0, "{what} count would go below zero");
}

/// The segment is a SYN a listener answers: SYN without ACK, RST or FIN (RFC 9293
/// §3.10.7.2; Linux drops SYN+FIN too).
fn is_syn(repr: &Repr) -> bool {
    repr.ack.is_none()
        && repr.flags.contains(Flags::SYN)
        && !repr.flags.intersects(Flags::RST.union(Flags::FIN))
}

impl Listeners {
    /// An empty table. `cookies` is the codec SYN cookies use, with keys from a CSPRNG;
    /// `None` turns cookies off, so a full SYN queue drops SYNs.
    pub fn new(cookies: Option<SynCookies>) -> Self {
        Self {
            slots: core::array::from_fn(|_| Slot {
                generation: 1,
                listener: None,
            }),
            by_port: vec![NO_LISTENER; PORTS].into_boxed_slice(),
            len: 0,
            cookies,
        }
    }

    /// Replaces the cookie codec (new keys, or cookies on or off). Cookies sent under the old
    /// keys no longer verify.
    pub fn set_cookies(&mut self, cookies: Option<SynCookies>) {
        self.cookies = cookies;
    }

    /// True when SYN cookies are on.
    pub fn cookies_enabled(&self) -> bool {
        self.cookies.is_some()
    }

    /// Open listeners.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing listens.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Listens on `port` with at most `backlog` established connections waiting for the app
    /// and `syn_queue_max` half-open ones ([`SYN_QUEUE_MAX_DEFAULT`] is a good default; 0
    /// means cookies for every SYN). Both are cut to [`LISTEN_QUEUE_MAX`]. O(LISTENERS_MAX).
    pub fn listen(
        &mut self,
        port: u16,
        backlog: u32,
        syn_queue_max: u32,
    ) -> Result<ListenerIndex, ListenError> {
        if port == 0 {
            return Err(ListenError::PortZero);
        }
        if backlog == 0 {
            return Err(ListenError::ZeroBacklog);
        }
        if self.find(port).is_some() {
            return Err(ListenError::AlreadyListening { port });
        }
        let Some(at) = self.slots.iter().position(|slot| slot.listener.is_none()) else {
            return Err(ListenError::Full { max: LISTENERS_MAX });
        };
        let slot = &mut self.slots[at];
        slot.listener = Some(Listener {
            port,
            backlog: backlog.min(LISTEN_QUEUE_MAX),
            syn_queue_max: syn_queue_max.min(LISTEN_QUEUE_MAX),
            half_open: 0,
            unaccepted: 0,
            cookie_last_ns: None,
            counters: ListenerCounters::default(),
        });
        // at < LISTENERS_MAX < NO_LISTENER, checked at compile time.
        self.by_port[usize::from(port)] = at as u8;
        self.len += 1;
        Ok(ListenerIndex {
            index: at as u32,
            generation: slot.generation,
        })
    }

    /// Stops listening and returns the listener's final state (its counters, for the logs).
    /// Its half-open and unaccepted connections are the caller's to reset; later bookkeeping
    /// calls for them answer [`ListenError::Stale`], which the caller ignores.
    pub fn close(&mut self, index: ListenerIndex) -> Result<Listener, ListenError> {
        live_mut(&mut self.slots, index)?;
        let slot = &mut self.slots[index.index as usize];
        let listener = slot.listener.take().ok_or(ListenError::Stale)?;
        // Skip generation 0, so a zeroed raw index never names a listener.
        slot.generation = slot.generation.wrapping_add(1).max(1);
        self.by_port[usize::from(listener.port)] = NO_LISTENER;
        self.len -= 1;
        Ok(listener)
    }

    /// The listener on `port`, in O(1).
    pub fn find(&self, port: u16) -> Option<ListenerIndex> {
        let at = *self.by_port.get(usize::from(port))?;
        let slot = self.slots.get(usize::from(at))?;
        slot.listener.as_ref()?;
        Some(ListenerIndex {
            index: u32::from(at),
            generation: slot.generation,
        })
    }

    /// The listener `index` names, `None` if it is closed.
    pub fn get(&self, index: ListenerIndex) -> Option<&Listener> {
        let slot = self.slots.get(index.index as usize)?;
        if slot.generation != index.generation {
            return None;
        }
        slot.listener.as_ref()
    }

    /// Every open listener with its index.
    pub fn iter(&self) -> impl Iterator<Item = (ListenerIndex, &Listener)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, slot)| {
            let index = ListenerIndex {
                index: i as u32,
                generation: slot.generation,
            };
            slot.listener.as_ref().map(|l| (index, l))
        })
    }

    /// Decides how to answer a SYN on listener `index` at `now_ns` (see the module
    /// documentation) and counts it. A [`SynDecision::Cookie`] opens the window in which
    /// [`Listeners::cookie_ack`] checks ACKs.
    pub fn handle_syn(&mut self, index: ListenerIndex, now_ns: u64) -> SynDecision {
        let cookies = self.cookies.is_some();
        let Ok(listener) = live_mut(&mut self.slots, index) else {
            return SynDecision::Drop(SynDrop::NoListener);
        };
        let counters = &mut listener.counters;
        counters.syns_received = counters.syns_received.saturating_add(1);
        // Linux's tcp_conn_request: a full accept queue drops the SYN before cookies are
        // considered.
        if listener.unaccepted >= listener.backlog {
            counters.backlog_full_drops = counters.backlog_full_drops.saturating_add(1);
            return SynDecision::Drop(SynDrop::BacklogFull);
        }
        if listener.half_open < listener.syn_queue_max {
            return SynDecision::Stateful;
        }
        counters.syn_queue_full = counters.syn_queue_full.saturating_add(1);
        if !cookies {
            return SynDecision::Drop(SynDrop::SynQueueFull);
        }
        // RFC 4987 §3.6: with the queue full, answer statelessly.
        listener.cookie_last_ns = Some(listener.cookie_last_ns.unwrap_or(0).max(now_ns));
        SynDecision::Cookie
    }

    /// A SYN-RECEIVED connection was created after [`SynDecision::Stateful`]: one more
    /// half-open. [`ListenError::SynQueueFull`] (and no change) if the queue is already full.
    pub fn syn_queued(&mut self, index: ListenerIndex) -> Result<(), ListenError> {
        let listener = live_mut(&mut self.slots, index)?;
        if listener.half_open >= listener.syn_queue_max {
            return Err(ListenError::SynQueueFull);
        }
        listener.half_open += 1;
        debug_assert!(listener.half_open <= listener.syn_queue_max);
        Ok(())
    }

    /// A SYN-RECEIVED connection died (reset, timed out, or refused by the backlog and reset
    /// by the caller): one fewer half-open.
    pub fn half_open_failed(&mut self, index: ListenerIndex) -> Result<(), ListenError> {
        let listener = live_mut(&mut self.slots, index)?;
        decrement(&mut listener.half_open, "half-open");
        Ok(())
    }

    /// A SYN-RECEIVED connection got its final ACK: it moves from the SYN queue to the accept
    /// backlog. [`ListenError::BacklogFull`], with nothing changed, if the backlog is full;
    /// see that variant for the caller's choice.
    pub fn half_open_established(&mut self, index: ListenerIndex) -> Result<(), ListenError> {
        let listener = live_mut(&mut self.slots, index)?;
        if listener.unaccepted >= listener.backlog {
            let counters = &mut listener.counters;
            counters.backlog_full_drops = counters.backlog_full_drops.saturating_add(1);
            return Err(ListenError::BacklogFull);
        }
        decrement(&mut listener.half_open, "half-open");
        listener.unaccepted += 1;
        debug_assert!(listener.unaccepted <= listener.backlog);
        Ok(())
    }

    /// A cookie ACK verified ([`Listeners::cookie_ack`]) and the caller is about to create the
    /// connection in ESTABLISHED: one more unaccepted. [`ListenError::BacklogFull`], with
    /// nothing changed, if the backlog is full: drop the ACK.
    pub fn cookie_established(&mut self, index: ListenerIndex) -> Result<(), ListenError> {
        let listener = live_mut(&mut self.slots, index)?;
        if listener.unaccepted >= listener.backlog {
            let counters = &mut listener.counters;
            counters.backlog_full_drops = counters.backlog_full_drops.saturating_add(1);
            return Err(ListenError::BacklogFull);
        }
        listener.unaccepted += 1;
        debug_assert!(listener.unaccepted <= listener.backlog);
        Ok(())
    }

    /// A connection left the accept backlog: the app accepted it, it went away before the app
    /// did, or the caller could not create it after [`Listeners::cookie_established`].
    pub fn accepted(&mut self, index: ListenerIndex) -> Result<(), ListenError> {
        let listener = live_mut(&mut self.slots, index)?;
        decrement(&mut listener.unaccepted, "unaccepted");
        Ok(())
    }

    /// The cookie SYN-ACK answering `syn`, which arrived on `tuple` (local = its destination)
    /// at `now_ns`; `tsval_clock` is our timestamp clock's reading and `local` our side of the
    /// options. The caller emits the returned segment and keeps nothing.
    ///
    /// May be called for any SYN while cookies are on, not only after
    /// [`SynDecision::Cookie`] (for instance when the connection table is full).
    pub fn cookie_syn_ack(
        &mut self,
        index: ListenerIndex,
        syn: &Repr,
        tuple: &FourTuple,
        now_ns: u64,
        tsval_clock: u32,
        local: &SynAckLocal,
    ) -> Result<CookieSynAck, ListenError> {
        let listener = live_mut(&mut self.slots, index)?;
        let codec = self.cookies.as_ref().ok_or(ListenError::CookiesDisabled)?;
        if !is_syn(syn) {
            return Err(ListenError::NotASyn);
        }
        debug_assert_eq!(tuple.local.port(), listener.port, "tuple of another port");
        // RFC 9293 §3.7.1: 536 without the option; and we never send more than we take.
        let peer_mss = syn.max_seg_size.unwrap_or(MSS_DEFAULT).min(local.mss);
        let (isn, mss) = codec.encode(now_ns, tuple, syn.seq, peer_mss);
        // RFC 3168 §6.1.1: an ECN-setup SYN has both ECE and CWR.
        let ecn_asked = syn.flags.contains(Flags::ECE.union(Flags::CWR));
        let (timestamps, window_scale, sack_permitted, ecn) = match syn.timestamps {
            Some((peer_tsval, _)) => {
                let ecn = ecn_asked && local.ecn;
                let options = CookieOptions {
                    window_scale: syn.window_scale,
                    sack_permitted: syn.sack_permitted,
                    ecn,
                };
                // RFC 7323 §3.2: TSecr of the SYN-ACK echoes the SYN's TSval.
                let tsval = codec.encode_timestamp(tsval_clock, options);
                // RFC 7323 §2.2: window scale only in reply to a SYN that offered it.
                let shift = syn
                    .window_scale
                    .map(|_| local.window_scale.min(WINDOW_SCALE_MAX));
                (Some((tsval, peer_tsval)), shift, syn.sack_permitted, ecn)
            }
            // Nowhere to remember the options: offer none of them (module documentation).
            None => (None, None, false, false),
        };
        let flags = if ecn {
            // RFC 3168 §6.1.1: the ECN-setup SYN-ACK has ECE and not CWR.
            Flags::SYN.union(Flags::ECE)
        } else {
            Flags::SYN
        };
        let repr = Repr {
            src_port: syn.dst_port,
            dst_port: syn.src_port,
            seq: isn,
            ack: Some(syn.seq.wrapping_add(1)),
            flags,
            window_len: local.window_len,
            max_seg_size: Some(local.mss),
            window_scale,
            sack_permitted,
            sack_ranges: [(0, 0); SACK_BLOCKS_MAX],
            sack_count: 0,
            timestamps,
            payload_len: 0,
        };
        listener.cookie_last_ns = Some(listener.cookie_last_ns.unwrap_or(0).max(now_ns));
        let counters = &mut listener.counters;
        counters.cookies_sent = counters.cookies_sent.saturating_add(1);
        Ok(CookieSynAck { repr, mss })
    }

    /// Checks `ack`, an ACK on `tuple` (local = its destination) that matches no connection,
    /// as the final ACK of a cookie handshake at `now_ns`, and returns what the cookie
    /// restores. On `Ok`, call [`Listeners::cookie_established`] and create the connection
    /// in ESTABLISHED with the parameters and with the same [`SynAckLocal`] the SYN-ACK used
    /// (our side is configuration, so it is not in the cookie). The window scale, SACK and
    /// ECN bits come from the timestamp, which the cookie's hash does not cover
    /// ([`crate::cookie`]): the caller ANDs them with its own configuration. A payload in the
    /// ACK is the connection's first data, for the caller to deliver.
    pub fn cookie_ack(
        &mut self,
        index: ListenerIndex,
        ack: &Repr,
        tuple: &FourTuple,
        now_ns: u64,
    ) -> Result<CookieParams, ListenError> {
        let listener = live_mut(&mut self.slots, index)?;
        let codec = self.cookies.as_ref().ok_or(ListenError::CookiesDisabled)?;
        let Some(seg_ack) = ack.ack else {
            return Err(ListenError::NotAnAck);
        };
        if ack.flags.intersects(Flags::SYN.union(Flags::RST)) {
            return Err(ListenError::NotAnAck);
        }
        debug_assert_eq!(tuple.local.port(), listener.port, "tuple of another port");
        // Linux's tcp_synq_no_recent_overflow: no cookie sent lately, none can be valid. A
        // clock reading before the last cookie counts as recent.
        match listener.cookie_last_ns {
            Some(last) if now_ns.saturating_sub(last) < COOKIES_OUTSTANDING_NS => {}
            _ => return Err(ListenError::NoCookiesOutstanding),
        }
        let tsecr = ack.timestamps.map(|(_, tsecr)| tsecr);
        let counters = &mut listener.counters;
        match codec.validate(now_ns, tuple, ack.seq, seg_ack, tsecr) {
            Ok(params) => {
                counters.cookies_accepted = counters.cookies_accepted.saturating_add(1);
                Ok(params)
            }
            Err(error) => {
                counters.cookies_rejected = counters.cookies_rejected.saturating_add(1);
                Err(error.into())
            }
        }
    }
}

impl fmt::Debug for Listeners {
    /// The open listeners only, not 65 536 port entries; the codec prints no keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// The open listeners as a list, formatted without collecting them.
        struct Open<'a>(&'a Listeners);
        impl fmt::Debug for Open<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list()
                    .entries(self.0.iter().map(|(_, l)| l))
                    .finish()
            }
        }
        f.debug_struct("Listeners")
            .field("listeners", &Open(self))
            .field("cookies", &self.cookies)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use core::net::{Ipv4Addr, SocketAddrV4};
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use melange_wire::tcp::{ChecksumPolicy, Packet};
    use proptest::prelude::*;

    use super::*;
    use crate::siphash::SipKey;

    const MINUTE: u64 = COOKIE_MINUTE_NS;

    fn codec() -> SynCookies {
        SynCookies::new(SipKey::new(0x115e_0001, 2), SipKey::new(3, 0x115e_0004))
    }

    fn listeners() -> Listeners {
        Listeners::new(Some(codec()))
    }

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn tuple(port: u16) -> FourTuple {
        FourTuple {
            local: SocketAddrV4::new(SERVER, port),
            remote: SocketAddrV4::new(CLIENT, 51_000),
        }
    }

    const LOCAL: SynAckLocal = SynAckLocal {
        mss: 1460,
        window_scale: 9,
        window_len: 65_535,
        ecn: true,
    };

    /// A Linux-like SYN to `port`: MSS 1460, SACK-permitted, timestamps, window scale 7,
    /// ECN setup.
    fn syn(port: u16) -> Repr {
        Repr {
            src_port: 51_000,
            dst_port: port,
            seq: 0x1234_5678,
            ack: None,
            flags: Flags::SYN.union(Flags::ECE).union(Flags::CWR),
            window_len: 64_240,
            max_seg_size: Some(1460),
            window_scale: Some(7),
            sack_permitted: true,
            sack_ranges: [(0, 0); SACK_BLOCKS_MAX],
            sack_count: 0,
            timestamps: Some((1_000, 0)),
            payload_len: 0,
        }
    }

    /// The peer's final ACK to `syn_ack`.
    fn final_ack(syn: &Repr, syn_ack: &Repr) -> Repr {
        Repr {
            src_port: syn.src_port,
            dst_port: syn.dst_port,
            seq: syn.seq.wrapping_add(1),
            ack: Some(syn_ack.seq.wrapping_add(1)),
            flags: Flags::empty(),
            window_len: 502,
            max_seg_size: None,
            window_scale: None,
            sack_permitted: false,
            sack_ranges: [(0, 0); SACK_BLOCKS_MAX],
            sack_count: 0,
            timestamps: syn_ack.timestamps.map(|(tsval, _)| (1_001, tsval)),
            payload_len: 0,
        }
    }

    fn counters(l: &Listeners, i: ListenerIndex) -> ListenerCounters {
        *l.get(i).unwrap().counters()
    }

    /// `f` trips the debug assertion in debug builds and is a no-op in release builds.
    fn underflow_is_caught(f: impl FnOnce()) {
        let result = catch_unwind(AssertUnwindSafe(f));
        assert_eq!(result.is_err(), cfg!(debug_assertions));
    }

    #[test]
    fn listen_errors_say_what_is_wrong() {
        let mut l = listeners();
        assert_eq!(l.listen(0, 1, 1), Err(ListenError::PortZero));
        assert_eq!(l.listen(80, 0, 1), Err(ListenError::ZeroBacklog));
        let http = l.listen(80, 128, SYN_QUEUE_MAX_DEFAULT).unwrap();
        assert_eq!(
            l.listen(80, 1, 1),
            Err(ListenError::AlreadyListening { port: 80 })
        );
        for port in 1..LISTENERS_MAX as u16 {
            l.listen(1000 + port, 1, 1).unwrap();
        }
        assert_eq!(l.len(), LISTENERS_MAX);
        assert_eq!(
            l.listen(9, 1, 1),
            Err(ListenError::Full { max: LISTENERS_MAX })
        );
        let closed = l.close(http).unwrap();
        assert_eq!(closed.port(), 80);
        assert_eq!(l.close(http), Err(ListenError::Stale));
        let again = l.listen(80, u32::MAX, u32::MAX).unwrap();
        assert_ne!(again, http, "a new generation");
        assert_eq!(l.get(again).unwrap().backlog(), LISTEN_QUEUE_MAX);
        assert_eq!(l.get(again).unwrap().syn_queue_max(), LISTEN_QUEUE_MAX);
        assert_eq!(l.get(http), None);
        assert_eq!(
            l.handle_syn(http, 0),
            SynDecision::Drop(SynDrop::NoListener)
        );
        assert_eq!(l.syn_queued(http), Err(ListenError::Stale));
        assert_eq!(l.half_open_failed(http), Err(ListenError::Stale));
        assert_eq!(l.accepted(http), Err(ListenError::Stale));
        assert_eq!(format!("{again:?}"), "listener#0.2");
        assert_eq!(l.iter().count(), LISTENERS_MAX);
    }

    #[test]
    fn find_by_port_and_raw_indexes() {
        let mut l = Listeners::new(None);
        assert!(l.is_empty() && !l.cookies_enabled());
        let a = l.listen(443, 16, 16).unwrap();
        let b = l.listen(65_535, 16, 16).unwrap();
        assert_eq!(l.find(443), Some(a));
        assert_eq!(l.find(65_535), Some(b));
        assert_eq!(l.find(80), None);
        assert_eq!(l.find(0), None);
        assert_eq!(ListenerIndex::from_raw(a.to_raw()), a);
        for raw in [0, u64::MAX, 1 << 32 | 63, 1 << 32 | 64, 7 << 32] {
            let foreign = ListenerIndex::from_raw(raw);
            assert_eq!(l.get(foreign), None, "raw {raw:#x}");
            assert_eq!(
                l.handle_syn(foreign, 0),
                SynDecision::Drop(SynDrop::NoListener)
            );
        }
        l.close(a).unwrap();
        assert_eq!(l.find(443), None);
        assert_eq!(l.len(), 1);
        let shown = format!("{l:?}");
        assert!(shown.contains("65535") && !shown.contains("443"), "{shown}");
    }

    #[test]
    fn decisions_in_each_situation() {
        let mut l = listeners();
        let i = l.listen(80, 2, 2).unwrap();
        // Room in the SYN queue.
        for _ in 0..2 {
            assert_eq!(l.handle_syn(i, 0), SynDecision::Stateful);
            l.syn_queued(i).unwrap();
        }
        assert_eq!(l.syn_queued(i), Err(ListenError::SynQueueFull));
        // Queue full, cookies on.
        assert_eq!(l.handle_syn(i, 0), SynDecision::Cookie);
        // Queue full, cookies off.
        l.set_cookies(None);
        assert_eq!(l.handle_syn(i, 0), SynDecision::Drop(SynDrop::SynQueueFull));
        l.set_cookies(Some(codec()));
        // Both complete: the backlog is full, and SYNs are dropped even with room in the
        // SYN queue and cookies on.
        l.half_open_established(i).unwrap();
        l.half_open_established(i).unwrap();
        assert_eq!(l.handle_syn(i, 0), SynDecision::Drop(SynDrop::BacklogFull));
        // The app accepts one: stateful again.
        l.accepted(i).unwrap();
        assert_eq!(l.handle_syn(i, 0), SynDecision::Stateful);
        let c = counters(&l, i);
        assert_eq!(
            c,
            ListenerCounters {
                syns_received: 6,
                syn_queue_full: 2,
                cookies_sent: 0,
                cookies_accepted: 0,
                cookies_rejected: 0,
                backlog_full_drops: 1,
            }
        );
        // syn_queue_max 0: every SYN gets a cookie.
        let always = l.listen(81, 1, 0).unwrap();
        assert_eq!(l.handle_syn(always, 0), SynDecision::Cookie);
    }

    #[test]
    fn backlog_and_queue_bounds() {
        let mut l = listeners();
        let i = l.listen(80, 1, 3).unwrap();
        for _ in 0..3 {
            l.syn_queued(i).unwrap();
        }
        l.half_open_established(i).unwrap();
        // Backlog full: nothing moves, and the refusal is counted.
        assert_eq!(l.half_open_established(i), Err(ListenError::BacklogFull));
        assert_eq!(l.cookie_established(i), Err(ListenError::BacklogFull));
        let got = l.get(i).unwrap();
        assert_eq!((got.half_open_count(), got.unaccepted_count()), (2, 1));
        assert_eq!(got.counters().backlog_full_drops, 2);
        // The caller resets one of the refused half-open connections.
        l.half_open_failed(i).unwrap();
        l.accepted(i).unwrap();
        l.cookie_established(i).unwrap();
        l.accepted(i).unwrap();
        l.half_open_established(i).unwrap();
        let got = l.get(i).unwrap();
        assert_eq!((got.half_open_count(), got.unaccepted_count()), (0, 1));
    }

    #[test]
    fn counts_never_underflow() {
        let mut l = listeners();
        let i = l.listen(80, 4, 4).unwrap();
        underflow_is_caught(|| {
            let _ = l.half_open_failed(i);
        });
        underflow_is_caught(|| {
            let _ = l.accepted(i);
        });
        let got = l.get(i).unwrap();
        assert_eq!((got.half_open_count(), got.unaccepted_count()), (0, 0));
        // Completing a handshake that was never queued also trips the assertion and leaves
        // the half-open count at zero.
        underflow_is_caught(|| {
            let _ = l.half_open_established(i);
        });
        assert_eq!(l.get(i).unwrap().half_open_count(), 0);
    }

    /// SYN → cookie SYN-ACK → the final ACK restores MSS, window scale, SACK and ECN.
    #[test]
    fn cookie_round_trip_with_options() {
        let mut l = listeners();
        let i = l.listen(80, 8, 0).unwrap();
        let now = 1_000 * MINUTE + 5;
        let s = syn(80);
        assert_eq!(l.handle_syn(i, now), SynDecision::Cookie);
        let made = l
            .cookie_syn_ack(i, &s, &tuple(80), now, 777_777, &LOCAL)
            .unwrap();
        let r = made.repr;
        assert_eq!(made.mss, 1460);
        assert_eq!((r.src_port, r.dst_port), (80, 51_000));
        assert_eq!(r.ack, Some(0x1234_5679));
        assert_eq!(r.flags, Flags::SYN.union(Flags::ECE));
        assert_eq!(r.max_seg_size, Some(1460));
        assert_eq!(r.window_scale, Some(9));
        assert!(r.sack_permitted);
        let (tsval, tsecr) = r.timestamps.unwrap();
        assert_eq!(tsecr, 1_000, "the SYN's TSval is echoed");
        assert!(
            777_777u32.wrapping_sub(tsval) < 64,
            "TSval tracks the clock"
        );
        assert_eq!(r.payload_len, 0);

        // The SYN-ACK is a well-formed segment.
        let mut bytes = vec![0u8; r.buffer_len()];
        r.emit(&mut Packet::new_unchecked(&mut bytes[..]), SERVER, CLIENT);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            Repr::parse(&packet, SERVER, CLIENT, ChecksumPolicy::Strict),
            Ok(r)
        );

        let ack = final_ack(&s, &r);
        let params = l.cookie_ack(i, &ack, &tuple(80), now + 30 * 1_000_000_000);
        assert_eq!(
            params,
            Ok(CookieParams {
                mss: 1460,
                window_scale: Some(7),
                sack_permitted: true,
                ecn: true,
            })
        );
        l.cookie_established(i).unwrap();
        let got = l.get(i).unwrap();
        assert_eq!((got.half_open_count(), got.unaccepted_count()), (0, 1));
        assert_eq!(got.counters().cookies_sent, 1);
        assert_eq!(got.counters().cookies_accepted, 1);
        assert_eq!(got.counters().cookies_rejected, 0);
    }

    /// Without timestamps the SYN-ACK offers no window scale, SACK or ECN, and the cookie
    /// restores none; without an MSS option the peer gets 536.
    #[test]
    fn cookie_without_timestamps_offers_no_options() {
        let mut l = listeners();
        let i = l.listen(80, 8, 0).unwrap();
        let mut s = syn(80);
        s.timestamps = None;
        s.max_seg_size = None;
        let now = 3 * MINUTE;
        let made = l.cookie_syn_ack(i, &s, &tuple(80), now, 0, &LOCAL).unwrap();
        let r = made.repr;
        assert_eq!(made.mss, MSS_DEFAULT);
        assert_eq!(
            r.flags,
            Flags::SYN,
            "no ECE without a place to remember ECN"
        );
        assert_eq!(
            (r.window_scale, r.sack_permitted, r.timestamps),
            (None, false, None)
        );
        assert_eq!(
            r.max_seg_size,
            Some(LOCAL.mss),
            "our own MSS is still offered"
        );
        let params = l.cookie_ack(i, &final_ack(&s, &r), &tuple(80), now);
        assert_eq!(
            params,
            Ok(CookieParams {
                mss: 536,
                window_scale: None,
                sack_permitted: false,
                ecn: false,
            })
        );
        // A peer MSS above ours is cut to ours, and ECN needs our consent.
        let mut s = syn(80);
        s.max_seg_size = Some(9000);
        let small = SynAckLocal {
            mss: 1300,
            ecn: false,
            ..LOCAL
        };
        let made = l.cookie_syn_ack(i, &s, &tuple(80), now, 0, &small).unwrap();
        assert_eq!(made.mss, 1300);
        assert_eq!(made.repr.flags, Flags::SYN);
        let params = l
            .cookie_ack(i, &final_ack(&s, &made.repr), &tuple(80), now)
            .unwrap();
        assert_eq!((params.mss, params.ecn), (1300, false));
    }

    #[test]
    fn forged_and_stale_acks_are_rejected() {
        let mut l = listeners();
        let i = l.listen(80, 8, 0).unwrap();
        // Made at the end of a minute, so the next-but-one minute comes within the two
        // minutes during which cookies are outstanding.
        let made_at = 10 * MINUTE + MINUTE - 1;
        let s = syn(80);
        let r = l
            .cookie_syn_ack(i, &s, &tuple(80), made_at, 5_000, &LOCAL)
            .unwrap()
            .repr;
        let ack = final_ack(&s, &r);

        // A forged cookie.
        let mut forged = ack;
        forged.ack = ack.ack.map(|a| a ^ 0x0000_4000);
        assert!(matches!(
            l.cookie_ack(i, &forged, &tuple(80), made_at),
            Err(ListenError::Cookie(_))
        ));
        // The right cookie from another peer.
        let mut other = tuple(80);
        other.remote = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 3), 51_000);
        assert!(matches!(
            l.cookie_ack(i, &ack, &other, made_at),
            Err(ListenError::Cookie(_))
        ));
        // The right cookie two minute ticks later.
        assert_eq!(
            l.cookie_ack(i, &ack, &tuple(80), 12 * MINUTE),
            Err(ListenError::Cookie(CookieError::Stale { age_minutes: 2 }))
        );
        // Still valid in the next minute.
        assert!(l.cookie_ack(i, &ack, &tuple(80), 11 * MINUTE + 1).is_ok());
        let c = counters(&l, i);
        assert_eq!((c.cookies_rejected, c.cookies_accepted), (3, 1));

        // Two minutes after the last cookie, ACKs are not even checked, nor counted.
        assert_eq!(
            l.cookie_ack(i, &ack, &tuple(80), made_at + 2 * MINUTE),
            Err(ListenError::NoCookiesOutstanding)
        );
        assert_eq!(counters(&l, i).cookies_rejected, 3);
        // A listener that never sent a cookie checks nothing.
        let quiet = l.listen(81, 8, 8).unwrap();
        assert_eq!(
            l.cookie_ack(quiet, &ack, &tuple(81), made_at),
            Err(ListenError::NoCookiesOutstanding)
        );
    }

    #[test]
    fn cookie_helpers_refuse_wrong_segments() {
        let mut l = listeners();
        let i = l.listen(80, 8, 0).unwrap();
        let s = syn(80);
        let now = MINUTE;
        for bad in [
            Repr { ack: Some(1), ..s },
            Repr {
                flags: Flags::SYN.union(Flags::RST),
                ..s
            },
            Repr {
                flags: Flags::SYN.union(Flags::FIN),
                ..s
            },
            Repr {
                flags: Flags::empty(),
                ..s
            },
        ] {
            assert_eq!(
                l.cookie_syn_ack(i, &bad, &tuple(80), now, 0, &LOCAL),
                Err(ListenError::NotASyn)
            );
        }
        let r = l
            .cookie_syn_ack(i, &s, &tuple(80), now, 0, &LOCAL)
            .unwrap()
            .repr;
        let ack = final_ack(&s, &r);
        for bad in [
            Repr { ack: None, ..ack },
            Repr {
                flags: Flags::SYN,
                ..ack
            },
            Repr {
                flags: Flags::RST,
                ..ack
            },
        ] {
            assert_eq!(
                l.cookie_ack(i, &bad, &tuple(80), now),
                Err(ListenError::NotAnAck)
            );
        }
        l.set_cookies(None);
        assert_eq!(
            l.cookie_syn_ack(i, &s, &tuple(80), now, 0, &LOCAL),
            Err(ListenError::CookiesDisabled)
        );
        assert_eq!(
            l.cookie_ack(i, &ack, &tuple(80), now),
            Err(ListenError::CookiesDisabled)
        );
        l.close(i).unwrap();
        assert_eq!(
            l.cookie_ack(i, &ack, &tuple(80), now),
            Err(ListenError::Stale)
        );
        assert_eq!(counters_sent(&l), 0);
    }

    /// Cookies sent by every open listener (to check a refused call counted nothing).
    fn counters_sent(l: &Listeners) -> u64 {
        l.iter().map(|(_, x)| x.counters().cookies_sent).sum()
    }

    #[derive(Clone, Copy, Debug)]
    enum Op {
        Syn,
        Established,
        Failed,
        Cookie,
        Accepted,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::Syn),
            Just(Op::Established),
            Just(Op::Failed),
            Just(Op::Cookie),
            Just(Op::Accepted),
        ]
    }

    proptest! {
        /// A caller that follows the call order keeps both counts within their bounds and
        /// equal to a model's, whatever the order of events.
        #[test]
        fn counts_follow_a_model(backlog in 1u32..6, syn_queue_max in 0u32..6, cookies: bool,
                                 ops in proptest::collection::vec(op(), 1..200)) {
            let mut l = Listeners::new(cookies.then(codec));
            let i = l.listen(80, backlog, syn_queue_max).unwrap();
            let (mut half_open, mut unaccepted) = (0u32, 0u32);
            for op in ops {
                match op {
                    Op::Syn => {
                        let want = if unaccepted >= backlog {
                            SynDecision::Drop(SynDrop::BacklogFull)
                        } else if half_open < syn_queue_max {
                            SynDecision::Stateful
                        } else if cookies {
                            SynDecision::Cookie
                        } else {
                            SynDecision::Drop(SynDrop::SynQueueFull)
                        };
                        let got = l.handle_syn(i, 0);
                        prop_assert_eq!(got, want);
                        if got == SynDecision::Stateful {
                            l.syn_queued(i).unwrap();
                            half_open += 1;
                        }
                    }
                    Op::Established if half_open > 0 => {
                        let got = l.half_open_established(i);
                        if unaccepted < backlog {
                            prop_assert_eq!(got, Ok(()));
                            half_open -= 1;
                            unaccepted += 1;
                        } else {
                            prop_assert_eq!(got, Err(ListenError::BacklogFull));
                        }
                    }
                    Op::Failed if half_open > 0 => {
                        l.half_open_failed(i).unwrap();
                        half_open -= 1;
                    }
                    Op::Cookie => {
                        let got = l.cookie_established(i);
                        prop_assert_eq!(got.is_ok(), unaccepted < backlog);
                        if got.is_ok() {
                            unaccepted += 1;
                        }
                    }
                    Op::Accepted if unaccepted > 0 => {
                        l.accepted(i).unwrap();
                        unaccepted -= 1;
                    }
                    _ => {}
                }
                let got = l.get(i).unwrap();
                prop_assert_eq!(got.half_open_count(), half_open);
                prop_assert_eq!(got.unaccepted_count(), unaccepted);
                prop_assert!(half_open <= syn_queue_max && unaccepted <= backlog);
            }
        }

        /// The cookie helpers take any segment fields and clock readings without panicking.
        #[test]
        fn cookie_helpers_never_panic(seq: u32, ack: Option<u32>, flags: u8, mss: Option<u16>,
                                      shift: Option<u8>, sack: bool, ts: Option<(u32, u32)>,
                                      now: u64, later: u64, clock: u32, local_shift: u8) {
            let mut l = listeners();
            let i = l.listen(80, 4, 0).unwrap();
            let segment = Repr {
                seq,
                ack,
                flags: Flags::from_bits(flags),
                max_seg_size: mss,
                window_scale: shift,
                sack_permitted: sack,
                timestamps: ts,
                ..syn(80)
            };
            let local = SynAckLocal { window_scale: local_shift, ..LOCAL };
            let _ = l.cookie_syn_ack(i, &segment, &tuple(80), now, clock, &local);
            let _ = l.cookie_ack(i, &segment, &tuple(80), later);
            let _ = l.cookie_ack(i, &segment, &tuple(80), now);
        }
    }
}
