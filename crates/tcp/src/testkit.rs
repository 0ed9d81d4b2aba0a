//! A deterministic, impaired network between two of our own TCP connections: the simulation
//! tier of house-style item 11 for [`crate::conn`].
//!
//! # Model
//!
//! A client ([`Connection::connect`]) and a server (built with [`Connection::accept_syn`] from
//! the first SYN that reaches it) exchange real wire segments: every [`Transmit`] is emitted
//! with [`Repr::emit`] (checksum included) and parsed back with [`Repr::parse`] on arrival, so
//! option space, window fields and SACK block truncation are what a NIC would carry. Each
//! direction is a [`Link`] with its own seeded RNG that applies, per packet and in this order:
//!
//! 1. a drop-tail queue of [`LinkConfig::queue_bytes_max`] bytes in front of a serialiser of
//!    [`LinkConfig::bandwidth_bytes_per_s`] (so queues form and congestion drops happen);
//! 2. loss with probability [`LinkConfig::loss`];
//! 3. corruption with probability [`LinkConfig::corruption`]: one bit of the frame is flipped
//!    and the receiver's checksum check drops it. Corruption is therefore loss as far as TCP
//!    can tell (the Internet checksum catches every single-bit error, and checksums are
//!    verified below the connection), but the simulator checks that claim on every corrupted
//!    frame instead of assuming it;
//! 4. propagation delay plus uniform jitter in `[0, jitter_ns]`; jitter keeps the order of
//!    packets (it models queues further along the path, which are FIFO: a packet never
//!    overtakes the one ahead of it);
//! 5. reordering: a fraction [`LinkConfig::reorder`] of packets is held back a further
//!    [`LinkConfig::reorder_delay_ns`], and the packets behind it overtake it;
//! 6. duplication with probability [`LinkConfig::duplication`]: a second copy with its own
//!    jitter.
//!
//! Time is virtual and event driven: a binary heap holds the packet arrivals, and the
//! connections' timers ([`Connection::poll_at`]) and the apps' delayed reads are read afresh at
//! every step (they move on every input, so a heap entry for them would go stale; taking the
//! minimum of the heap's top and the live deadlines is the same clock). The loop jumps to the
//! next event; it never steps through idle time, so a 60 s TIME-WAIT costs nothing.
//!
//! # Apps
//!
//! [`Workload::Bulk`] sends a configurable number of bytes both ways at once; each side closes
//! once its bytes are queued ([`CloseMode::AfterQueued`], the FIN rides behind the data) or
//! acknowledged ([`CloseMode::AfterAcked`], a lone FIN). [`Workload::Echo`] has the client send
//! `messages` messages of `message_bytes` each, waiting for each echo before the next; the
//! server echoes what it receives and closes after the client did. Received bytes go back to
//! the connection at once or after [`SimConfig::read_delay_ns`] (a slow reader, so windows
//! close and the persist timer runs).
//!
//! # What a run checks
//!
//! Every transmit's payload lies within the bytes the app queued; acknowledged bytes never
//! exceed queued ones; one drain of [`Connection::poll_transmit`] emits at most
//! [`SimConfig::segments_per_poll_max`] segments; a timer due now is consumed by
//! [`Connection::handle_timeout`] (the clock always advances within
//! [`SAME_INSTANT_STEPS_MAX`] steps); something is always scheduled until both sides are
//! closed; the run ends before [`SimConfig::time_limit_ns`]; both streams arrive byte-exact
//! (the first differing offset is reported); both sides end CLOSED having reported
//! `Closed(Closed)` exactly once, and `Established` exactly once before anything else. A
//! violation ends the run with a [`SimError`] that carries the partial [`Report`] and the last
//! packets. Liveness bounds that depend on the scenario (time, segments per byte) are computed
//! by [`time_bound_ns`] and [`segments_bound`] and checked by the caller, so that a soak can
//! report how close runs come to them.
//!
//! The only randomness is [`SplitMix64`] (the project's one generator, whose output is fixed
//! forever, so a seed replays across versions); nothing iterates a hash map. The same seed and
//! [`SimConfig`] give the same run, packet for packet.

use crate::cc::CongestionKind;
use crate::conn::{
    reset_reply, ConnConfig, ConnCounters, ConnEvent, Connection, Ports, RecvSink, State,
};
use crate::rtt::RttConfig;
use melange_core::contract::CloseReason;
use melange_core::rng::SplitMix64;
use melange_wire::tcp::{ChecksumPolicy, Flags, Packet, Repr};
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::net::Ipv4Addr;

/// Steps at one instant before the run is declared stuck: a timer that stays due after
/// `handle_timeout`, or app and connection ping-ponging without the clock moving.
pub const SAME_INSTANT_STEPS_MAX: u32 = 1_000;

/// Rounds of (events, app commands, transmit) one step runs before declaring an app/connection
/// livelock; each round is triggered by an event or a command, both bounded.
pub const PUMP_ROUNDS_MAX: u32 = 64;

/// Packets kept for a failure report.
pub const TRACE_TAIL_LEN: usize = 48;

/// Steps of the event loop at most, whatever the clock says.
pub const STEPS_MAX: u64 = 20_000_000;

/// The client's and the server's addresses, for checksums.
const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const CLIENT_PORT: u16 = 40_000;
const SERVER_PORT: u16 = 80;

const MS: u64 = 1_000_000;
const SECOND_NS: u64 = 1_000_000_000;

/// One direction's impairments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// One-way propagation delay.
    pub delay_ns: u64,
    /// Uniform extra delay in `[0, jitter_ns]` per packet, order kept.
    pub jitter_ns: u64,
    /// Probability a packet is lost.
    pub loss: f64,
    /// Probability a packet is corrupted (one bit flipped; the checksum drops it).
    pub corruption: f64,
    /// Probability a packet is delivered twice.
    pub duplication: f64,
    /// Probability a packet is held back by `reorder_delay_ns`.
    pub reorder: f64,
    /// The extra delay of a reordered packet.
    pub reorder_delay_ns: u64,
    /// The serialiser's rate; 0 is unlimited (no queue forms).
    pub bandwidth_bytes_per_s: u64,
    /// The drop-tail queue in front of the serialiser, in bytes (with a rate limit).
    pub queue_bytes_max: u64,
}

impl LinkConfig {
    /// A perfect link with `delay_ns` of propagation delay and no rate limit.
    pub const fn clean(delay_ns: u64) -> Self {
        LinkConfig {
            delay_ns,
            jitter_ns: 0,
            loss: 0.0,
            corruption: 0.0,
            duplication: 0.0,
            reorder: 0.0,
            reorder_delay_ns: 0,
            bandwidth_bytes_per_s: 0,
            queue_bytes_max: u64::MAX,
        }
    }

    /// Nanoseconds to serialise `bytes` (0 without a rate limit).
    pub fn serialisation_ns(&self, bytes: u64) -> u64 {
        if self.bandwidth_bytes_per_s == 0 {
            return 0;
        }
        (u128::from(bytes) * u128::from(SECOND_NS) / u128::from(self.bandwidth_bytes_per_s)) as u64
    }

    /// The longest one-way delay a packet that is not queued can see.
    pub fn delay_max_ns(&self) -> u64 {
        self.delay_ns + self.jitter_ns + self.reorder_delay_ns
    }

    /// The longest time a packet waits in the queue.
    pub fn queue_delay_max_ns(&self) -> u64 {
        if self.bandwidth_bytes_per_s == 0 {
            0
        } else {
            self.serialisation_ns(self.queue_bytes_max.min(1 << 40) + 65_535)
        }
    }
}

/// When a bulk sender closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseMode {
    /// Once all its bytes are queued: the FIN follows the data (usually on the last segment).
    AfterQueued,
    /// Once all its bytes are acknowledged: a FIN of its own.
    AfterAcked,
}

/// What the apps do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Both sides send at once, then close.
    Bulk {
        /// Bytes the client sends.
        client_bytes: usize,
        /// Bytes the server sends.
        server_bytes: usize,
        /// When each side closes.
        close: CloseMode,
    },
    /// The client sends `messages` messages of `message_bytes`, each after the previous one's
    /// echo arrived, then closes; the server echoes everything, then closes.
    Echo {
        /// Messages.
        messages: usize,
        /// Bytes per message (at least 1).
        message_bytes: usize,
    },
}

/// One simulation: the two connections' settings, the two links, the apps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimConfig {
    /// The client's settings.
    pub client: ConnConfig,
    /// The server's settings.
    pub server: ConnConfig,
    /// Client to server.
    pub to_server: LinkConfig,
    /// Server to client.
    pub to_client: LinkConfig,
    /// The apps.
    pub workload: Workload,
    /// How long an app holds received bytes before giving them back (0: at once).
    pub read_delay_ns: u64,
    /// The client's initial sequence number.
    pub client_iss: u32,
    /// The server's initial sequence number.
    pub server_iss: u32,
    /// The run fails if both sides are not closed by then.
    pub time_limit_ns: u64,
    /// Most segments one drain of `poll_transmit` may emit.
    pub segments_per_poll_max: usize,
    /// Print every packet to stderr.
    pub trace: bool,
}

impl SimConfig {
    /// A clean 1 ms link both ways, default connections, `bytes` each way.
    pub fn bulk(bytes: usize) -> Self {
        let conn = ConnConfig {
            time_wait_ns: 10 * SECOND_NS,
            ..ConnConfig::default()
        };
        SimConfig {
            client: conn,
            server: conn,
            to_server: LinkConfig::clean(MS),
            to_client: LinkConfig::clean(MS),
            workload: Workload::Bulk {
                client_bytes: bytes,
                server_bytes: bytes,
                close: CloseMode::AfterQueued,
            },
            read_delay_ns: 0,
            client_iss: 1_000,
            server_iss: 7_000_000,
            time_limit_ns: 3_600 * SECOND_NS,
            segments_per_poll_max: segments_per_poll_bound(&conn, &conn),
            trace: false,
        }
    }

    /// A scenario drawn from `seed`. The ranges:
    ///
    /// - workload: 85% bulk of 64-256 KiB each way (independently), closing after queued or
    ///   after acknowledged; 15% echo of 1-40 messages of 1 B-16 KiB;
    /// - each link (independently): delay 0.05-20 ms, jitter up to half the delay, loss 0-10%
    ///   (a quarter of the seeds lossless), corruption 0-1%, duplication 0-2%, reordering
    ///   0-5% by 1-10 ms, rate 1-1000 MB/s (a fifth unlimited) with a queue of 16-512 KiB;
    /// - each connection (the server's the same as the client's in half of the seeds): SACK,
    ///   timestamps, window scaling, Nagle and delayed ACKs (1-40 ms) each on or off, NewReno
    ///   or CUBIC, MSS 536, 1200 or 1460, receive and send buffers 2 MSS-256 KiB (often just
    ///   a few MSS), TIME-WAIT 10-60 s;
    /// - a slow reader (1-50 ms per read) in a tenth of the seeds; random initial sequence
    ///   numbers (so wrap-around is exercised);
    /// - RACK-TLP on or off per connection (on in three quarters), drawn from a generator of
    ///   its own so that the draws above stay what they were before it existed.
    ///
    /// The generator is append-only: regression tests name seeds, so a change must not move
    /// what an existing seed draws. A new parameter is drawn after all the others (or from
    /// its own generator), and a range is widened only by a new draw that decides to use it.
    pub fn random(seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed ^ 0x5eed_c0f1_9000_0001);
        let mut client = random_conn(&mut rng);
        let mut server = if rng.chance(0.5) {
            client
        } else {
            random_conn(&mut rng)
        };
        let mut later = SplitMix64::new(seed ^ 0x7ac7_1e55_0000_0002);
        client.rack_tlp = later.chance(0.75);
        server.rack_tlp = later.chance(0.75);
        let to_server = random_link(&mut rng);
        let to_client = random_link(&mut rng);
        let workload = if rng.chance(0.85) {
            Workload::Bulk {
                client_bytes: 64 * 1024 + rng.below(192 * 1024 + 1) as usize,
                server_bytes: 64 * 1024 + rng.below(192 * 1024 + 1) as usize,
                close: if rng.chance(0.5) {
                    CloseMode::AfterQueued
                } else {
                    CloseMode::AfterAcked
                },
            }
        } else {
            Workload::Echo {
                messages: 1 + rng.below(40) as usize,
                message_bytes: 1 + rng.below(16 * 1024) as usize,
            }
        };
        let read_delay_ns = if rng.chance(0.1) {
            MS + rng.below(49 * MS)
        } else {
            0
        };
        SimConfig {
            client,
            server,
            to_server,
            to_client,
            workload,
            read_delay_ns,
            client_iss: rng.next_u64() as u32,
            server_iss: rng.next_u64() as u32,
            time_limit_ns: 3_600 * SECOND_NS,
            segments_per_poll_max: segments_per_poll_bound(&client, &server),
            trace: false,
        }
    }

    /// The bytes each side sends: (client, server).
    pub fn stream_lens(&self) -> (usize, usize) {
        match self.workload {
            Workload::Bulk {
                client_bytes,
                server_bytes,
                ..
            } => (client_bytes, server_bytes),
            Workload::Echo {
                messages,
                message_bytes,
            } => (messages * message_bytes, messages * message_bytes),
        }
    }
}

/// A sound bound on the segments one drain of `poll_transmit` emits: every data segment
/// carries at least one new byte of the send buffer or the FIN, each byte is sent at most
/// twice in a drain (a fast retransmit, then go-back-N), plus the duplicate ACKs owed, a probe
/// and a window update or ACK.
pub fn segments_per_poll_bound(client: &ConnConfig, server: &ConnConfig) -> usize {
    let buffer = client.send_buffer_bytes.max(server.send_buffer_bytes) as usize;
    2 * (buffer + 1) + crate::conn::DUP_ACKS_OWED_MAX as usize + 4
}

fn random_conn(rng: &mut SplitMix64) -> ConnConfig {
    let mss = [536u16, 1200, 1460][rng.below(3) as usize];
    let buffer = |rng: &mut SplitMix64| -> u32 {
        let m = u32::from(mss);
        if rng.chance(0.4) {
            // A few MSS: windows far below the bandwidth-delay product.
            m * (2 + rng.below(7) as u32)
        } else {
            (m * 2).max(4096 + rng.below(252 * 1024) as u32)
        }
    };
    ConnConfig {
        mss,
        recv_buffer_bytes: buffer(rng),
        send_buffer_bytes: buffer(rng),
        window_scaling: rng.chance(0.7),
        sack: rng.chance(0.6),
        timestamps: rng.chance(0.7),
        rtt: RttConfig::default(),
        congestion: if rng.chance(0.5) {
            CongestionKind::NewReno
        } else {
            CongestionKind::Cubic
        },
        nodelay: rng.chance(0.7),
        delayed_ack_ns: if rng.chance(0.3) {
            0
        } else {
            MS + rng.below(39 * MS)
        },
        time_wait_ns: 10 * SECOND_NS + rng.below(50 * SECOND_NS),
        ..ConnConfig::default()
    }
}

fn random_link(rng: &mut SplitMix64) -> LinkConfig {
    let delay_ns = 50_000 + rng.below(20 * MS);
    let lossy = rng.chance(0.75);
    let bandwidth_bytes_per_s = if rng.chance(0.2) {
        0
    } else {
        1_000_000 + rng.below(999_000_000)
    };
    LinkConfig {
        delay_ns,
        jitter_ns: rng.below(delay_ns / 2 + 1),
        loss: if lossy {
            rng.below(10_001) as f64 / 100_000.0
        } else {
            0.0
        },
        corruption: if lossy {
            rng.below(1_001) as f64 / 100_000.0
        } else {
            0.0
        },
        duplication: rng.below(2_001) as f64 / 100_000.0,
        reorder: rng.below(5_001) as f64 / 100_000.0,
        reorder_delay_ns: MS + rng.below(9 * MS),
        bandwidth_bytes_per_s,
        queue_bytes_max: 16 * 1024 + rng.below(496 * 1024),
    }
}

/// What one link did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets offered.
    pub packets: u64,
    /// Bytes offered (TCP header and payload).
    pub bytes: u64,
    /// Lost at random.
    pub lost: u64,
    /// Corrupted (and dropped by the receiver's checksum check).
    pub corrupted: u64,
    /// Dropped by the full queue.
    pub queue_drops: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Held back to reorder.
    pub reordered: u64,
}

impl LinkStats {
    /// Packets that never arrived intact.
    pub fn drops(&self) -> u64 {
        self.lost + self.corrupted + self.queue_drops
    }
}

/// One direction of the network.
#[derive(Debug)]
pub struct Link {
    config: LinkConfig,
    rng: SplitMix64,
    /// When the serialiser finishes what it holds.
    busy_until_ns: u64,
    /// The latest arrival of a packet that was not reordered.
    last_arrival_ns: u64,
    stats: LinkStats,
}

/// What a [`Link`] does with one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkFate {
    /// Dropped (queue, loss); nothing arrives.
    Dropped,
    /// Arrives at these times (two for a duplicate), possibly corrupted.
    Arrives {
        /// Arrival times.
        at_ns: [Option<u64>; 2],
        /// The frame was corrupted (one bit flipped at this bit index).
        corrupt_bit: Option<usize>,
        /// The (first) copy was held back and arrives after packets sent later.
        reordered: bool,
    },
}

impl Link {
    /// A link with its own generator.
    pub fn new(config: LinkConfig, seed: u64) -> Self {
        Link {
            config,
            rng: SplitMix64::new(seed),
            busy_until_ns: 0,
            last_arrival_ns: 0,
            stats: LinkStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// When a packet that left the serialiser at `sent` arrives: after the delay and jitter,
    /// but never before the packet ahead of it (jitter is queueing further on, which keeps
    /// order), unless it is one of the reordered ones, which are held back on their own.
    /// Also says whether it was held back.
    fn arrival(&mut self, sent: u64) -> (u64, bool) {
        let c = self.config;
        let t = sent + c.delay_ns + self.rng.below(c.jitter_ns + 1);
        if self.rng.chance(c.reorder) {
            self.stats.reordered += 1;
            return (t + c.reorder_delay_ns, true);
        }
        let t = t.max(self.last_arrival_ns);
        self.last_arrival_ns = t;
        (t, false)
    }

    /// Offers a frame of `len` bytes at `now_ns`.
    pub fn offer(&mut self, now_ns: u64, len: usize) -> LinkFate {
        let c = self.config;
        self.stats.packets += 1;
        self.stats.bytes += len as u64;
        let start = self.busy_until_ns.max(now_ns);
        if c.bandwidth_bytes_per_s > 0 {
            let backlog = start - now_ns;
            let backlog_bytes = (u128::from(backlog) * u128::from(c.bandwidth_bytes_per_s)
                / u128::from(SECOND_NS)) as u64;
            if backlog_bytes + len as u64 > c.queue_bytes_max {
                self.stats.queue_drops += 1;
                return LinkFate::Dropped;
            }
        }
        let sent = start + c.serialisation_ns(len as u64);
        self.busy_until_ns = sent;
        if self.rng.chance(c.loss) {
            self.stats.lost += 1;
            return LinkFate::Dropped;
        }
        let corrupt_bit = if self.rng.chance(c.corruption) && len > 0 {
            self.stats.corrupted += 1;
            Some(self.rng.below(len as u64 * 8) as usize)
        } else {
            None
        };
        let (first, reordered) = self.arrival(sent);
        let second = if self.rng.chance(c.duplication) {
            self.stats.duplicated += 1;
            Some(self.arrival(sent).0)
        } else {
            None
        };
        LinkFate::Arrives {
            at_ns: [Some(first), second],
            corrupt_bit,
            reordered,
        }
    }
}

/// What one side did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SideReport {
    /// Bytes the app queued.
    pub bytes_queued: u64,
    /// Bytes the peer acknowledged (from `Sent` events).
    pub bytes_acked: u64,
    /// Bytes received in order.
    pub bytes_received: u64,
    /// The connection's counters.
    pub counters: ConnCounters,
    /// The state at the end.
    pub final_state: Option<State>,
    /// Every event, with its time.
    pub events: Vec<(u64, ConnEvent)>,
    /// When `Closed` was reported.
    pub closed_event_ns: Option<u64>,
    /// When the connection reached CLOSED.
    pub closed_ns: Option<u64>,
    /// The largest RTO seen in force (backoff included).
    pub rto_max_ns: u64,
    /// The longest time this side's unacknowledged data went without any of it being
    /// acknowledged.
    pub stall_max_ns: u64,
    /// The most segments one drain of `poll_transmit` emitted.
    pub segments_per_poll_max: usize,
    /// Segments that reached the peer's connection after it was gone (answered with RST).
    pub segments_after_close: u64,
}

/// The outcome of a run (also attached, partial, to a failure).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// When both apps were done: all bytes verified and `Closed` reported on both sides.
    pub completion_ns: Option<u64>,
    /// When both connections reached CLOSED (after TIME-WAIT), or the clock at a failure.
    pub end_ns: u64,
    /// The client.
    pub client: SideReport,
    /// The server.
    pub server: SideReport,
    /// Client to server.
    pub to_server: LinkStats,
    /// Server to client.
    pub to_client: LinkStats,
    /// Sum over drops of the charge [`time_bound_ns`] allows for each.
    pub drop_charge_ns: u64,
    /// Steps of the event loop.
    pub steps: u64,
}

impl Report {
    /// Segments both sides sent.
    pub fn segments_sent(&self) -> u64 {
        self.client.counters.segments_sent + self.server.counters.segments_sent
    }
    /// Retransmissions on both sides.
    pub fn retransmits(&self) -> u64 {
        self.client.counters.retransmits + self.server.counters.retransmits
    }
    /// Retransmission timeouts on both sides.
    pub fn rtos(&self) -> u64 {
        self.client.counters.rto_expirations + self.server.counters.rto_expirations
    }
    /// Fast recoveries on both sides.
    pub fn fast_recoveries(&self) -> u64 {
        self.client.counters.fast_recoveries + self.server.counters.fast_recoveries
    }
    /// Packets dropped in both directions.
    pub fn drops(&self) -> u64 {
        self.to_server.drops() + self.to_client.drops()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |t: Option<u64>| t.map_or("-".to_string(), |t| format!("{:.3}", t as f64 / 1e6));
        writeln!(
            f,
            "completion {} ms, end {} ms, {} steps, drops {} (charge {} ms)",
            ms(self.completion_ns),
            ms(Some(self.end_ns)),
            self.steps,
            self.drops(),
            ms(Some(self.drop_charge_ns)),
        )?;
        for (name, s, l) in [
            ("client", &self.client, &self.to_server),
            ("server", &self.server, &self.to_client),
        ] {
            writeln!(
                f,
                "  {name}: queued {} acked {} received {} state {:?} closed-event {} ms rto-max {} ms stall-max {} ms poll-max {}",
                s.bytes_queued,
                s.bytes_acked,
                s.bytes_received,
                s.final_state.map(State::name),
                ms(s.closed_event_ns),
                ms(Some(s.rto_max_ns)),
                ms(Some(s.stall_max_ns)),
                s.segments_per_poll_max,
            )?;
            writeln!(f, "    {:?}", s.counters)?;
            writeln!(f, "    link out: {l:?}")?;
            let events: Vec<String> = s
                .events
                .iter()
                .filter(|(_, e)| !matches!(e, ConnEvent::Sent { .. }))
                .map(|(t, e)| format!("{e:?}@{}", ms(Some(*t))))
                .collect();
            writeln!(f, "    events: {}", events.join(" "))?;
        }
        Ok(())
    }
}

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A stream arrived different from what was sent.
    Mismatch {
        /// "client->server" or "server->client".
        direction: &'static str,
        /// The first differing offset (or the shorter length).
        offset: usize,
        /// Bytes sent.
        sent: usize,
        /// Bytes received.
        received: usize,
    },
    /// A transmit named bytes the app never queued.
    PayloadNotQueued {
        /// The side.
        side: &'static str,
        /// The stream offset named.
        offset: u64,
        /// The payload's length.
        len: usize,
        /// Bytes queued so far.
        queued: u64,
    },
    /// More bytes were reported acknowledged than were queued.
    AckedTooMuch {
        /// The side.
        side: &'static str,
    },
    /// One drain of `poll_transmit` did not end.
    TransmitLoop {
        /// The side.
        side: &'static str,
    },
    /// The clock did not advance (a due timer stays due, or app and connection livelock).
    ClockStuck,
    /// Nothing scheduled, and the connections are not closed.
    Deadlock,
    /// The time limit passed.
    TimeLimit,
    /// Too many steps.
    StepLimit,
    /// A frame we emitted did not parse, or a corrupted one did.
    Wire(String),
    /// The events broke their contract.
    Events {
        /// The side.
        side: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A side did not end CLOSED with `Closed(Closed)`.
    NotClosed {
        /// The side.
        side: &'static str,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// A failed run: what broke, when, the report so far and the last packets.
#[derive(Debug, Clone)]
pub struct SimError {
    /// What broke.
    pub violation: Violation,
    /// The virtual time.
    pub at_ns: u64,
    /// The partial report.
    pub report: Report,
    /// The last packets, oldest first.
    pub trace_tail: Vec<String>,
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} at {} ns", self.violation, self.at_ns)?;
        write!(f, "{}", self.report)?;
        writeln!(f, "  last packets:")?;
        for line in &self.trace_tail {
            writeln!(f, "    {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SimError {}

/// The app's byte stream of a bulk sender: a pattern that depends on the offset and a salt,
/// so a misplaced segment shows as a mismatch.
pub fn stream_bytes(len: usize, salt: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(salt);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let word = rng.next_u64().to_le_bytes();
        let n = (len - out.len()).min(8);
        out.extend_from_slice(&word[..n]);
    }
    out
}

/// A sink that appends delivered bytes to the app's received stream.
struct Collect<'a> {
    got: &'a mut Vec<u8>,
}

impl RecvSink<Vec<u8>> for Collect<'_> {
    fn deliver(&mut self, data: Vec<u8>) {
        self.got.extend_from_slice(&data);
    }
    fn discard(&mut self, _data: Vec<u8>) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    BulkClient,
    BulkServer,
    EchoClient,
    EchoServer,
}

/// One side: the connection and its app.
struct Endpoint {
    name: &'static str,
    role: Role,
    conn: Option<Connection<Vec<u8>>>,
    /// The stream to send (grows as the echo server receives).
    out: Vec<u8>,
    /// Bytes the bulk app sends in total.
    out_total: usize,
    close: CloseMode,
    got: Vec<u8>,
    /// Received bytes handed to the read-delay queue.
    got_accounted: usize,
    reads: VecDeque<(u64, u32)>,
    read_delay_ns: u64,
    closed_called: bool,
    peer_closed: bool,
    report: SideReport,
    /// Since when unacknowledged bytes wait without any being acknowledged, if they do.
    waiting_since: Option<u64>,
    /// `bytes_acked` at the last observation.
    acked_seen: u64,
    /// The stream offset one past the highest byte sent so far.
    sent_max: u64,
    /// While this side's losses go unrepaired: `sent_max` when they began, and its RTO count
    /// then.
    chain: Option<(u64, u64)>,
    /// Copy of the connection's last known RTO and SRTT, kept after it is dropped.
    rto_ns: u64,
}

impl Endpoint {
    fn new(name: &'static str, role: Role, out: Vec<u8>, close: CloseMode, read: u64) -> Self {
        let out_total = out.len();
        Endpoint {
            name,
            role,
            conn: None,
            out,
            out_total,
            close,
            got: Vec::new(),
            got_accounted: 0,
            reads: VecDeque::new(),
            read_delay_ns: read,
            closed_called: false,
            peer_closed: false,
            report: SideReport::default(),
            waiting_since: None,
            acked_seen: 0,
            sent_max: 0,
            chain: None,
            rto_ns: 0,
        }
    }

    fn is_closed(&self) -> bool {
        self.conn.as_ref().is_none_or(|c| c.is_closed())
    }

    /// The next read-delay deadline.
    fn poll_at(&self) -> Option<u64> {
        let timer = self.conn.as_ref().and_then(|c| c.poll_at());
        let read = self.reads.front().map(|r| r.0);
        [timer, read].into_iter().flatten().min()
    }

    /// Events, then app commands. Returns whether anything happened.
    fn pump_app(&mut self, now: u64, msg: usize) -> Result<bool, Violation> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(false);
        };
        let mut busy = false;
        while let Some(e) = conn.poll_event() {
            busy = true;
            let first = self.report.events.is_empty();
            let closed_before = self
                .report
                .events
                .iter()
                .any(|(_, e)| matches!(e, ConnEvent::Closed(_)));
            match e {
                ConnEvent::Established => {
                    if !first {
                        return Err(self.event_error("Established twice or late".into()));
                    }
                }
                ConnEvent::Sent { bytes } => {
                    self.report.bytes_acked += u64::from(bytes);
                    if self.report.bytes_acked > self.report.bytes_queued {
                        return Err(Violation::AckedTooMuch { side: self.name });
                    }
                }
                ConnEvent::PeerClosed => {
                    if self.peer_closed {
                        return Err(self.event_error("PeerClosed twice".into()));
                    }
                    self.peer_closed = true;
                }
                ConnEvent::Closed(_) => {
                    if closed_before {
                        return Err(self.event_error(format!("second {e:?}")));
                    }
                    self.report.closed_event_ns = Some(now);
                }
            }
            if first && e != ConnEvent::Established {
                return Err(self.event_error(format!("{e:?} before Established")));
            }
            self.report.events.push((now, e));
        }
        // Reads: give received bytes back, at once or after the read delay.
        if self.got.len() > self.got_accounted {
            let n = (self.got.len() - self.got_accounted) as u32;
            self.got_accounted = self.got.len();
            self.reads.push_back((now + self.read_delay_ns, n));
        }
        while self.reads.front().is_some_and(|r| r.0 <= now) {
            if let Some((_, n)) = self.reads.pop_front() {
                conn.handle_recv_done(n);
                busy = true;
            }
        }
        // Sends.
        let target = match self.role {
            Role::BulkClient | Role::BulkServer => self.out_total,
            Role::EchoServer => {
                if self.out.len() < self.got.len() {
                    let from = self.out.len();
                    self.out.extend_from_slice(&self.got[from..]);
                }
                self.out.len()
            }
            Role::EchoClient => {
                let echoed = self.got.len() / msg.max(1);
                self.out_total.min((echoed + 1) * msg)
            }
        };
        let queued = self.report.bytes_queued as usize;
        if queued < target && conn.can_send() {
            let offer = (target - queued).min(u32::MAX as usize) as u32;
            let taken = conn.handle_send(now, offer);
            if taken > 0 {
                busy = true;
                self.report.bytes_queued += u64::from(taken);
            }
        }
        // Close.
        let queued = self.report.bytes_queued as usize;
        let all_queued = match self.role {
            Role::BulkClient | Role::BulkServer => queued == self.out_total,
            Role::EchoClient => queued == self.out_total && self.got.len() == self.out_total,
            Role::EchoServer => self.peer_closed && queued == self.got.len(),
        };
        let acked_ok = self.close == CloseMode::AfterQueued
            || self.report.bytes_acked == self.report.bytes_queued;
        if !self.closed_called && all_queued && acked_ok && conn.can_send() {
            conn.close(now);
            self.closed_called = true;
            busy = true;
        }
        Ok(busy)
    }

    fn event_error(&self, detail: String) -> Violation {
        Violation::Events {
            side: self.name,
            detail,
        }
    }

    /// Updates the stall and RTO statistics after a step.
    fn observe(&mut self, now: u64) {
        let Some(conn) = self.conn.as_ref() else {
            return;
        };
        self.rto_ns = conn.rto_ns();
        self.report.rto_max_ns = self.report.rto_max_ns.max(conn.rto_ns());
        let waiting = self.report.bytes_acked < self.report.bytes_queued;
        let progress = self.report.bytes_acked > self.acked_seen;
        self.acked_seen = self.report.bytes_acked;
        self.waiting_since = match (waiting, self.waiting_since) {
            (false, _) => None,
            (true, None) => Some(now),
            (true, Some(_)) if progress => Some(now),
            (true, since) => since,
        };
        if let Some(t) = self.waiting_since {
            self.report.stall_max_ns = self.report.stall_max_ns.max(now - t);
        }
    }
}

/// A packet in flight.
struct Arrival {
    at_ns: u64,
    /// Tie-break: the order of scheduling, so that equal times keep a fixed order.
    order: u64,
    /// 0: to the server; 1: to the client.
    to_client: bool,
    frame: Vec<u8>,
    corrupted: bool,
}

impl PartialEq for Arrival {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Arrival {}
impl PartialOrd for Arrival {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Arrival {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at_ns, self.order).cmp(&(other.at_ns, other.order))
    }
}

/// One packet's summary for traces.
#[derive(Clone, Copy)]
struct PacketRecord {
    at_ns: u64,
    from_client: bool,
    repr: Repr,
    fate: &'static str,
}

impl fmt::Display for PacketRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.repr;
        write!(
            f,
            "{:>14} {} {:?} seq={} ack={:?} win={} len={} sack={:?} {}",
            self.at_ns,
            if self.from_client { "c->s" } else { "s->c" },
            r.flags,
            r.seq,
            r.ack,
            r.window_len,
            r.payload_len,
            r.sack_ranges(),
            self.fate
        )
    }
}

/// The simulation state.
struct Sim {
    config: SimConfig,
    seed: u64,
    now: u64,
    order: u64,
    heap: BinaryHeap<Reverse<Arrival>>,
    links: [Link; 2],
    client: Endpoint,
    server: Endpoint,
    tail: VecDeque<PacketRecord>,
    drop_charge_ns: u64,
    steps: u64,
    completion_ns: Option<u64>,
    msg: usize,
}

/// Runs one simulation. `Ok` means every structural check passed (see the module doc); the
/// caller checks the liveness bounds on the report.
pub fn run(seed: u64, config: &SimConfig) -> Result<Report, Box<SimError>> {
    let mut sim = Sim::new(seed, *config);
    match sim.run_inner() {
        Ok(()) => Ok(sim.report()),
        Err(violation) => Err(Box::new(SimError {
            violation,
            at_ns: sim.now,
            report: sim.report(),
            trace_tail: sim.tail.iter().map(|p| p.to_string()).collect(),
        })),
    }
}

impl Sim {
    fn new(seed: u64, config: SimConfig) -> Self {
        let (client_len, server_len) = config.stream_lens();
        let (client_role, server_role, close, msg) = match config.workload {
            Workload::Bulk { close, .. } => (Role::BulkClient, Role::BulkServer, close, 0),
            Workload::Echo { message_bytes, .. } => (
                Role::EchoClient,
                Role::EchoServer,
                CloseMode::AfterQueued,
                message_bytes,
            ),
        };
        let server_out = match server_role {
            Role::EchoServer => Vec::new(),
            _ => stream_bytes(server_len, seed ^ 0x5e),
        };
        Sim {
            config,
            seed,
            now: 0,
            order: 0,
            heap: BinaryHeap::new(),
            links: [
                Link::new(config.to_server, seed ^ 0x7015_e7e5_0000_0001),
                Link::new(config.to_client, seed ^ 0x70c1_1e47_0000_0002),
            ],
            client: Endpoint::new(
                "client",
                client_role,
                stream_bytes(client_len, seed ^ 0xc1),
                close,
                config.read_delay_ns,
            ),
            server: Endpoint::new(
                "server",
                server_role,
                server_out,
                close,
                config.read_delay_ns,
            ),
            tail: VecDeque::with_capacity(TRACE_TAIL_LEN),
            drop_charge_ns: 0,
            steps: 0,
            completion_ns: None,
            msg,
        }
    }

    fn report(&self) -> Report {
        let side = |e: &Endpoint| {
            let mut r = e.report.clone();
            r.bytes_received = e.got.len() as u64;
            if let Some(c) = e.conn.as_ref() {
                r.counters = *c.counters();
                r.final_state = Some(c.state());
            }
            r
        };
        Report {
            seed: self.seed,
            completion_ns: self.completion_ns,
            end_ns: self.now,
            client: side(&self.client),
            server: side(&self.server),
            to_server: self.links[0].stats,
            to_client: self.links[1].stats,
            drop_charge_ns: self.drop_charge_ns,
            steps: self.steps,
        }
    }

    fn record(&mut self, from_client: bool, repr: Repr, fate: &'static str) {
        let rec = PacketRecord {
            at_ns: self.now,
            from_client,
            repr,
            fate,
        };
        if self.config.trace {
            eprintln!("{rec}");
        }
        if self.tail.len() == TRACE_TAIL_LEN {
            self.tail.pop_front();
        }
        self.tail.push_back(rec);
    }

    fn run_inner(&mut self) -> Result<(), Violation> {
        let client = Connection::connect(
            self.config.client,
            Ports {
                local: CLIENT_PORT,
                remote: SERVER_PORT,
            },
            self.config.client_iss,
            0,
        )
        .map_err(|e| Violation::Wire(format!("client config: {e}")))?;
        self.client.conn = Some(client);
        let mut same_instant = 0u32;
        loop {
            self.steps += 1;
            if self.steps > STEPS_MAX {
                return Err(Violation::StepLimit);
            }
            // 1. Arrivals due now.
            while self.heap.peek().is_some_and(|a| a.0.at_ns <= self.now) {
                let Some(Reverse(a)) = self.heap.pop() else {
                    break;
                };
                self.arrive(a)?;
            }
            // 2. Timers due now.
            for ep in [&mut self.client, &mut self.server] {
                if let Some(c) = ep.conn.as_mut() {
                    if c.poll_at().is_some_and(|t| t <= self.now) {
                        c.handle_timeout(self.now);
                    }
                }
            }
            // 3. Apps and output, until quiet.
            let mut rounds = 0;
            loop {
                rounds += 1;
                if rounds > PUMP_ROUNDS_MAX {
                    return Err(Violation::ClockStuck);
                }
                let a = self.client.pump_app(self.now, self.msg)?;
                let b = self.server.pump_app(self.now, self.msg)?;
                let x = self.transmit(true)?;
                let y = self.transmit(false)?;
                if !(a || b || x || y) {
                    break;
                }
            }
            self.client.observe(self.now);
            self.server.observe(self.now);
            self.check_completion()?;
            if self.client.is_closed() && self.server.is_closed() && self.server.conn.is_some() {
                return self.finish();
            }
            // 4. The next event.
            let next = [
                self.heap.peek().map(|a| a.0.at_ns),
                self.client.poll_at(),
                self.server.poll_at(),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next else {
                return Err(Violation::Deadlock);
            };
            if next <= self.now {
                same_instant += 1;
                if same_instant > SAME_INSTANT_STEPS_MAX {
                    return Err(Violation::ClockStuck);
                }
            } else {
                same_instant = 0;
                self.now = next;
            }
            if self.now > self.config.time_limit_ns {
                return Err(Violation::TimeLimit);
            }
        }
    }

    /// Drains one side's `poll_transmit` onto its link.
    fn transmit(&mut self, from_client: bool) -> Result<bool, Violation> {
        let mut n = 0usize;
        loop {
            let ep = if from_client {
                &mut self.client
            } else {
                &mut self.server
            };
            let Some(conn) = ep.conn.as_mut() else {
                return Ok(false);
            };
            let Some(t) = conn.poll_transmit(self.now) else {
                break;
            };
            n += 1;
            if n > self.config.segments_per_poll_max {
                return Err(Violation::TransmitLoop { side: ep.name });
            }
            let len = t.repr.payload_len;
            let start = t.payload_offset;
            if len > 0 && start + len as u64 > ep.report.bytes_queued {
                return Err(Violation::PayloadNotQueued {
                    side: ep.name,
                    offset: start,
                    len,
                    queued: ep.report.bytes_queued,
                });
            }
            ep.sent_max = ep.sent_max.max(start + len as u64);
            let payload = if len > 0 {
                &ep.out[start as usize..start as usize + len]
            } else {
                &[][..]
            };
            let (src, dst) = if from_client {
                (CLIENT_ADDR, SERVER_ADDR)
            } else {
                (SERVER_ADDR, CLIENT_ADDR)
            };
            // What the wire carries: SACK blocks beyond the option space are not sent.
            let mut repr = t.repr;
            repr.sack_count = repr.sack_count_emitted();
            let header = repr.header_len();
            let mut frame = vec![0u8; repr.buffer_len()];
            frame[header..].copy_from_slice(payload);
            repr.emit(&mut Packet::new_unchecked(&mut frame[..]), src, dst);
            self.send_frame(from_client, repr, frame);
        }
        let ep = if from_client {
            &mut self.client
        } else {
            &mut self.server
        };
        ep.report.segments_per_poll_max = ep.report.segments_per_poll_max.max(n);
        Ok(n > 0)
    }

    fn send_frame(&mut self, from_client: bool, repr: Repr, mut frame: Vec<u8>) {
        let link = &mut self.links[usize::from(!from_client)];
        match link.offer(self.now, frame.len()) {
            LinkFate::Dropped => {
                self.charge_drop(from_client, &repr, true);
                self.record(from_client, repr, "DROPPED");
            }
            LinkFate::Arrives {
                at_ns,
                corrupt_bit,
                reordered,
            } => {
                if let Some(bit) = corrupt_bit {
                    frame[bit / 8] ^= 1 << (bit % 8);
                    self.charge_drop(from_client, &repr, true);
                } else if reordered && repr.payload_len > 0 {
                    // Held back past three later segments, it looks lost to a sender without
                    // RACK: a spurious fast retransmit and a window reduction.
                    self.charge_drop(from_client, &repr, false);
                }
                let fate = match (corrupt_bit, at_ns[1]) {
                    (Some(_), _) => "corrupted",
                    (None, Some(_)) => "duplicated",
                    (None, None) => "",
                };
                self.record(from_client, repr, fate);
                let copies = at_ns.iter().flatten().count();
                for (i, at) in at_ns.into_iter().flatten().enumerate() {
                    self.order += 1;
                    let frame = if i + 1 == copies {
                        std::mem::take(&mut frame)
                    } else {
                        frame.clone()
                    };
                    self.heap.push(Reverse(Arrival {
                        at_ns: at,
                        order: self.order,
                        to_client: !from_client,
                        frame,
                        corrupted: corrupt_bit.is_some(),
                    }));
                }
            }
        }
    }

    /// Adds the time [`time_bound_ns`] allows for one lost packet: one RTO of the side whose
    /// data waits for it (the sender of a data, SYN or FIN segment; the receiver of a pure
    /// ACK), doubled for each timeout that side had since its losses began (RFC 6298 §5.5's
    /// backoff, which RFC 6298 §5 ends once data sent after it is acknowledged), plus the
    /// round trips of the slow start back to the window and of the window's regrowth. A
    /// reordered data segment (`lost` false) is charged the regrowth only.
    fn charge_drop(&mut self, from_client: bool, repr: &Repr, lost: bool) {
        let carries = repr.payload_len > 0 || repr.flags.intersects(Flags::SYN.union(Flags::FIN));
        let waiter_is_client = if carries { from_client } else { !from_client };
        let rtt = round_trip_max_ns(&self.config);
        let (ep, config) = if waiter_is_client {
            (&mut self.client, &self.config.client)
        } else {
            (&mut self.server, &self.config.server)
        };
        let rtos = ep.conn.as_ref().map_or(0, |c| c.counters().rto_expirations);
        // The losses of a stall: from the first until data sent after it is acknowledged.
        if ep
            .chain
            .is_some_and(|(mark, _)| ep.report.bytes_acked > mark)
        {
            ep.chain = None;
        }
        // One window reduction per stall (RFC 6582 §3.2, RFC 6675 §5): the regrowth is
        // charged to its first loss only.
        let first = ep.chain.is_none();
        let (_, rtos_before) = *ep.chain.get_or_insert((ep.sent_max, rtos));
        let backoff = rtos.saturating_sub(rtos_before).min(16) as u32;
        let base = ep
            .conn
            .as_ref()
            .filter(|c| c.srtt_ns().is_some())
            .map(|c| c.rto_base_ns());
        let rto = rto_reference_ns(config, rtt, base).saturating_mul(1 << backoff);
        let window_segments = u64::from(config.send_buffer_bytes / u32::from(config.mss)).max(1);
        let regrowth = if first {
            rtt * (2 + u64::from(64 - window_segments.leading_zeros()) + window_segments / 8)
        } else {
            0
        };
        let rto = if lost {
            rto.min(config.rtt.rto_max_ns)
        } else {
            0
        };
        self.drop_charge_ns = self.drop_charge_ns.saturating_add(rto + regrowth);
    }

    fn arrive(&mut self, a: Arrival) -> Result<(), Violation> {
        let (src, dst) = if a.to_client {
            (SERVER_ADDR, CLIENT_ADDR)
        } else {
            (CLIENT_ADDR, SERVER_ADDR)
        };
        let packet = Packet::new_unchecked(&a.frame[..]);
        let repr = match Repr::parse(&packet, src, dst, ChecksumPolicy::Strict) {
            Ok(repr) if a.corrupted => {
                return Err(Violation::Wire(format!(
                    "a corrupted frame passed the checksum: {repr:?}"
                )))
            }
            Ok(repr) => repr,
            Err(_) if a.corrupted => return Ok(()),
            Err(e) => return Err(Violation::Wire(format!("our own frame: {e}"))),
        };
        let payload = packet.payload().to_vec();
        let now = self.now;
        if !a.to_client && self.server.conn.is_none() {
            if repr.flags.contains(Flags::SYN) && repr.ack.is_none() {
                let conn = Connection::accept_syn(
                    self.config.server,
                    Ports {
                        local: SERVER_PORT,
                        remote: CLIENT_PORT,
                    },
                    self.config.server_iss,
                    now,
                    &repr,
                )
                .map_err(|e| Violation::Wire(format!("server config: {e}")))?;
                self.server.conn = Some(conn);
            }
            // Anything else before the SYN cannot happen: the client sends nothing first.
            return Ok(());
        }
        let ep = if a.to_client {
            &mut self.client
        } else {
            &mut self.server
        };
        let Some(conn) = ep.conn.as_mut() else {
            return Ok(());
        };
        if conn.is_closed() {
            // The connection is gone; the stack answers from no connection (RFC 9293
            // §3.10.7.1), which the peer must survive.
            ep.report.segments_after_close += 1;
            if let Some(rst) = reset_reply(&repr) {
                let mut frame = vec![0u8; rst.buffer_len()];
                rst.emit(&mut Packet::new_unchecked(&mut frame[..]), dst, src);
                self.send_frame(a.to_client, rst, frame);
            }
            return Ok(());
        }
        conn.handle_segment(now, &repr, payload, &mut Collect { got: &mut ep.got });
        Ok(())
    }

    /// Verifies the streams as far as they arrived; notes completion.
    fn check_completion(&mut self) -> Result<(), Violation> {
        for (direction, from, to) in [
            ("client->server", &self.client, &self.server),
            ("server->client", &self.server, &self.client),
        ] {
            if to.got.len() > from.out.len() {
                return Err(mismatch(direction, &from.out, &to.got));
            }
        }
        if self.completion_ns.is_some() {
            return Ok(());
        }
        let done = |e: &Endpoint, peer: &Endpoint| {
            e.report.closed_event_ns.is_some() && e.peer_closed && e.got.len() == peer.out.len()
        };
        let (c_len, s_len) = self.config.stream_lens();
        if done(&self.client, &self.server)
            && done(&self.server, &self.client)
            && self.server.got.len() == c_len
            && self.client.got.len() == s_len
        {
            self.completion_ns = Some(self.now);
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), Violation> {
        for (direction, from, to) in [
            ("client->server", &self.client, &self.server),
            ("server->client", &self.server, &self.client),
        ] {
            if from.out != to.got {
                return Err(mismatch(direction, &from.out, &to.got));
            }
        }
        let (c_len, s_len) = self.config.stream_lens();
        if self.server.got.len() != c_len || self.client.got.len() != s_len {
            return Err(Violation::Mismatch {
                direction: "both",
                offset: self.server.got.len().min(self.client.got.len()),
                sent: c_len,
                received: self.server.got.len(),
            });
        }
        for ep in [&mut self.client, &mut self.server] {
            let closed: Vec<_> = ep
                .report
                .events
                .iter()
                .filter(|(_, e)| matches!(e, ConnEvent::Closed(_)))
                .collect();
            if closed.len() != 1 || closed[0].1 != ConnEvent::Closed(CloseReason::Closed) {
                return Err(Violation::NotClosed { side: ep.name });
            }
            if ep.report.bytes_acked != ep.out.len() as u64 {
                return Err(Violation::Events {
                    side: ep.name,
                    detail: format!(
                        "{} bytes acknowledged of {}",
                        ep.report.bytes_acked,
                        ep.out.len()
                    ),
                });
            }
            ep.report.closed_ns = Some(self.now);
            if let Some(c) = ep.conn.as_mut() {
                c.drain(&mut Collect {
                    got: &mut Vec::new(),
                });
            }
        }
        if self.completion_ns.is_none() {
            return Err(Violation::Events {
                side: "both",
                detail: "closed without completing".into(),
            });
        }
        Ok(())
    }
}

fn mismatch(direction: &'static str, sent: &[u8], got: &[u8]) -> Violation {
    let offset = sent
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(sent.len().min(got.len()));
    Violation::Mismatch {
        direction,
        offset,
        sent: sent.len(),
        received: got.len(),
    }
}

/// The longest round trip a packet that is not lost can see: both ways' delay, jitter,
/// reordering and full queues, and a delayed ACK.
pub fn round_trip_max_ns(config: &SimConfig) -> u64 {
    let delack = config
        .client
        .delayed_ack_ns
        .max(config.server.delayed_ack_ns);
    config.to_server.delay_max_ns()
        + config.to_server.queue_delay_max_ns()
        + config.to_client.delay_max_ns()
        + config.to_client.queue_delay_max_ns()
        + delack
        + config.read_delay_ns
}

/// The RTO a side can have without backoff: the initial RTO before any sample, and RFC 6298's
/// `SRTT + 4 RTTVAR` after, which for samples no larger than `rtt` is at most `5 rtt`; never
/// below the configured floor. A sample Karn's rule accepts can still be longer than any
/// round trip: when the ACK of the timed segment rode on a data segment that was lost, it
/// comes back with the peer's retransmission, a timeout later (RFC 7323 §4.3 asks for such
/// samples with timestamps too). So the estimate the side holds (`base`) counts as well, up
/// to four initial RTOs.
fn rto_reference_ns(config: &ConnConfig, rtt: u64, base: Option<u64>) -> u64 {
    let estimate = match base {
        Some(base) => (5 * rtt).max(base.min(4 * config.rtt.rto_initial_ns)),
        None => config.rtt.rto_initial_ns,
    };
    estimate.max(config.rtt.rto_min_ns)
}

/// The completion-time bound a run must meet.
///
/// Without loss, a transfer of `B` bytes over a path of round trip `R` (the worst case of
/// [`round_trip_max_ns`]) and rate `C` takes the handshake (`R`), the serialisation (`B / C`),
/// the round trips of slow start up to the window (`log2(W / MSS) + 1`), one round trip per
/// window `W` of the smaller of the send and receive buffers (a window-limited sender moves `W`
/// per `R`) and the close (`2 R`). The bound allows twice that, since both directions share
/// each link with the other's ACKs and Nagle or delayed ACKs cost up to a delay per exchange
/// (an echo exchange is `messages` round trips).
///
/// Each lost packet then costs at most one retransmission timeout of the side that waits for
/// it (the sender of data, a SYN or a FIN; the receiver of a pure ACK): the repair is a fast
/// retransmit within a round trip, or the timer. That timeout is the initial RTO before the
/// side has an RTT sample, and RFC 6298's `SRTT + 4 RTTVAR` after, at most `5 R` for samples
/// no larger than `R` (or the side's own estimate, when a lost ACK stretched a sample; see
/// `rto_reference_ns`), never below the floor. It doubles for each timeout the side has had
/// since its current stall began (RFC 6298 §5.5); a stall begins with a loss and ends once
/// data sent after that loss is acknowledged, which is when RFC 6298 §5 lets the backoff
/// collapse. The first loss of a stall also pays the slow start back to the window after a
/// timeout (`log2(W / MSS) + 2` round trips, RFC 5681 §3.1) and the deficit of the window's
/// linear regrowth after a halving (`W / 8 MSS` round trips): one reduction per stall (RFC
/// 6582 §3.2, RFC 6675 §5). A reordered data segment is charged like a loss without the
/// timeout: without RACK or undo, a segment held back past three later ones draws a spurious
/// fast retransmit and a reduction. The run accumulates these charges as packets drop or are
/// reordered ([`Report::drop_charge_ns`]).
///
/// Under that model the bound is sound; 30 000 random scenarios stay below 0.7 of it, with
/// a median near 0.1. Tight enough to catch a backoff that outlives its stall (a minute of timer for
/// one lost segment, as the 530 s transfer of `conn`'s own loss test did) or recovery that
/// keeps falling back to timeouts.
pub fn time_bound_ns(config: &SimConfig, report: &Report) -> u64 {
    let rtt = round_trip_max_ns(config).max(1);
    let (c_len, s_len) = config.stream_lens();
    let exchanges = match config.workload {
        Workload::Bulk { .. } => 1,
        Workload::Echo { messages, .. } => messages as u64,
    };
    let direction = |bytes: usize, from: &ConnConfig, to: &ConnConfig, link: &LinkConfig| {
        let bytes = bytes as u64;
        let mss = u64::from(from.mss.min(to.mss)).max(1);
        let window = u64::from(from.send_buffer_bytes.min(to.recv_buffer_bytes)).max(mss);
        let slow_start = 2 + u64::from(64 - (window / mss).max(1).leading_zeros());
        // Per segment, up to 100 bytes of headers and options.
        let wire_bytes = bytes + bytes.div_ceil(mss) * 100;
        link.serialisation_ns(wire_bytes) + rtt * (slow_start + bytes.div_ceil(window))
    };
    let transfer = direction(c_len, &config.client, &config.server, &config.to_server).max(
        direction(s_len, &config.server, &config.client, &config.to_client),
    );
    let nagle = config
        .client
        .delayed_ack_ns
        .max(config.server.delayed_ack_ns)
        + rtt;
    let ideal = rtt * 3 + transfer + exchanges * (rtt + nagle);
    2 * ideal + report.drop_charge_ns
}

/// The segment-count bound a run must meet: per direction, a data segment per MSS of payload
/// (a segment cut by a window edge or Nagle's rule counts again, hence twice), one ACK per
/// data segment, plus per lost packet a retransmission of up to a window (go-back-N after a
/// timeout) and its ACKs, plus the handshake, the close and window probes.
pub fn segments_bound(config: &SimConfig, report: &Report) -> u64 {
    let (c_len, s_len) = config.stream_lens();
    let mss = u64::from(config.client.mss.min(config.server.mss)).max(1) / 2;
    let exchanges = match config.workload {
        Workload::Bulk { .. } => 1,
        Workload::Echo { messages, .. } => 4 * messages as u64,
    };
    let data_segments = (c_len as u64).div_ceil(mss) + (s_len as u64).div_ceil(mss) + exchanges;
    let window = u64::from(
        config
            .client
            .send_buffer_bytes
            .max(config.server.send_buffer_bytes),
    )
    .div_ceil(mss);
    let probes = report.client.counters.window_probes + report.server.counters.window_probes;
    2 * data_segments + report.drops() * 2 * (window + 2) + 2 * probes + 32
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig::bulk(64 * 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_bulk_completes_without_retransmits() {
        let config = SimConfig::bulk(100_000);
        let report = run(1, &config).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(report.retransmits(), 0, "{report}");
        assert_eq!(report.client.bytes_received, 100_000);
        assert_eq!(report.server.bytes_received, 100_000);
        assert!(report.completion_ns.unwrap() <= time_bound_ns(&config, &report));
    }

    #[test]
    fn runs_replay_exactly() {
        let config = SimConfig::random(42);
        let a = run(42, &config);
        let b = run(42, &config);
        match (a, b) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            _ => panic!("the same seed gave different outcomes"),
        }
    }

    #[test]
    fn links_drop_and_duplicate_at_their_rates() {
        let mut link = Link::new(
            LinkConfig {
                loss: 0.1,
                duplication: 0.05,
                ..LinkConfig::clean(MS)
            },
            3,
        );
        for t in 0..100_000 {
            link.offer(t, 100);
        }
        let s = link.stats();
        assert!((9_000..11_000).contains(&s.lost), "{s:?}");
        assert!((4_000..5_000).contains(&s.duplicated), "{s:?}");
    }
}
