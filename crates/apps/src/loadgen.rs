//! A UDP load generator: closed loop (N requests in flight) or open loop (a target rate).
//!
//! Each request carries a 24-byte header (magic, stream, sequence number, send time) and a
//! payload pattern derived from the sequence number, so a reply can be matched, timed and
//! checked for corruption. Outstanding requests live in a fixed ring indexed by sequence
//! number (`window` slots, a power of two), so matching a reply and expiring a timeout are
//! O(1) and nothing allocates after start-up. Latency is the time between the batch that sent
//! a request and the batch that received its reply, recorded in an HDR histogram (1 ns to
//! 60 s, 3 significant digits).
//!
//! Only replies received inside the measurement window (after `warmup_ns`, for `duration_ns`)
//! count toward requests/s and latency; requests still outstanding at the end are given
//! `drain_ns` to come back, then the app reports itself done.

use hdrhistogram::Histogram;
use melange_core::{App, BufChain, Event, IoContext, SocketId};
use serde::Serialize;
use std::net::SocketAddrV4;

const MAGIC: u32 = 0x4d4c_4731; // "MLG1"
/// Bytes of the request header; payloads must be at least this long.
pub const HEADER_LEN: usize = 24;
const TOKEN_HOUSEKEEPING: u64 = 1;
const TOKEN_PACE: u64 = 2;
const HOUSEKEEPING_NS_MAX: u64 = 1_000_000;
/// Largest request payload: the largest UDP payload over IPv4 (65,535 less 20 bytes of IPv4
/// and 8 of UDP header).
pub const PAYLOAD_MAX: usize = 65_507;
/// The most requests outstanding at once, per engine.
pub const WINDOW_MAX: usize = 1 << 16;

/// Load generator configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadgenConfig {
    /// The server.
    pub target: SocketAddrV4,
    /// Our source port, bound at start; 0 asks the transport for any free port.
    pub local_port: u16,
    /// Request payload bytes, [`HEADER_LEN`]..=[`PAYLOAD_MAX`]; a payload larger than a
    /// buffer is sent as a chain.
    pub payload_len: usize,
    /// Closed loop: requests kept in flight. Open loop: the most allowed in flight.
    pub inflight: usize,
    /// Open loop: requests per second from this engine. `None` runs closed loop.
    pub rate_per_s: Option<f64>,
    /// Time before measuring starts.
    pub warmup_ns: u64,
    /// Measured time.
    pub duration_ns: u64,
    /// A request unanswered this long counts as a timeout (and, closed loop, is replaced).
    pub timeout_ns: u64,
    /// Time allowed after the end for outstanding replies.
    pub drain_ns: u64,
    /// Distinguishes the streams of several engines in the request header.
    pub stream: u32,
}

impl LoadgenConfig {
    /// A closed-loop configuration with one-second timeouts and no warm-up.
    pub fn closed_loop(
        target: SocketAddrV4,
        payload_len: usize,
        inflight: usize,
        duration_ns: u64,
    ) -> Self {
        Self {
            target,
            local_port: 0,
            payload_len,
            inflight,
            rate_per_s: None,
            warmup_ns: 0,
            duration_ns,
            timeout_ns: 1_000_000_000,
            drain_ns: 100_000_000,
            stream: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    seq: u64,
    sent_ns: u64,
    pending: bool,
}

/// Latency percentiles, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Median.
    pub p50_ns: u64,
    /// 90th percentile.
    pub p90_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// Largest.
    pub max_ns: u64,
    /// Mean.
    pub mean_ns: u64,
}

/// What a load generator measured.
#[derive(Clone, Serialize)]
pub struct LoadgenReport {
    /// Requests sent (whole run).
    pub sent: u64,
    /// Matching replies received (whole run).
    pub received: u64,
    /// Replies received inside the measurement window.
    pub measured: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Replies whose payload did not match the request.
    pub corrupt: u64,
    /// Replies for no outstanding request (duplicates, late replies after a timeout).
    pub unexpected: u64,
    /// Requests not sent for lack of a buffer or command room, or (open loop) because the
    /// in-flight limit was reached when one was due.
    pub send_failures: u64,
    /// Measurement window length.
    pub window_ns: u64,
    /// `measured` per second of window. In TCP churn mode every cycle (connect, one request,
    /// its reply, close) carries one request, so this is also connections per second.
    pub requests_per_s: f64,
    /// Latency of measured replies (TCP churn: from the connect to the whole reply).
    pub latency: LatencySummary,
    /// Payload bytes moved in the whole run: reply bytes received (UDP, TCP request/response
    /// and churn), or bytes sent and reported back by the transport (TCP bulk: acknowledged
    /// on Melange's TCP, taken by the kernel on kernel sockets).
    pub bytes: u64,
    /// The part of `bytes` moved inside the measurement window.
    pub bytes_measured: u64,
    /// `bytes_measured` per second of window: the goodput.
    pub bytes_per_sec: f64,
    /// TCP connections established (whole run); 0 for UDP.
    pub connects: u64,
    /// TCP connections that could not be opened (refused at once, refused by the peer, timed
    /// out); 0 for UDP.
    pub connect_failures: u64,
    /// Key-value runs (`--protocol resp|memcache`): what the replies were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv: Option<crate::kv_load::KvReplyCounts>,
    #[serde(skip)]
    histogram: Histogram<u64>,
}

impl std::fmt::Debug for LoadgenReport {
    /// Every field but the histogram (tens of thousands of buckets, which made a failing
    /// test's message unreadable); the latency summary stands for it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadgenReport")
            .field("sent", &self.sent)
            .field("received", &self.received)
            .field("measured", &self.measured)
            .field("timeouts", &self.timeouts)
            .field("corrupt", &self.corrupt)
            .field("unexpected", &self.unexpected)
            .field("send_failures", &self.send_failures)
            .field("window_ns", &self.window_ns)
            .field("requests_per_s", &self.requests_per_s)
            .field("latency", &self.latency)
            .field("bytes", &self.bytes)
            .field("bytes_measured", &self.bytes_measured)
            .field("bytes_per_sec", &self.bytes_per_sec)
            .field("connects", &self.connects)
            .field("connect_failures", &self.connect_failures)
            .field("kv", &self.kv)
            .finish_non_exhaustive()
    }
}

/// The counts of a [`LoadgenReport`], for load generators of other protocols.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportCounts {
    /// Requests sent.
    pub sent: u64,
    /// Replies received.
    pub received: u64,
    /// Replies received inside the window.
    pub measured: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Corrupt replies.
    pub corrupt: u64,
    /// Replies nobody asked for.
    pub unexpected: u64,
    /// Requests not sent.
    pub send_failures: u64,
    /// The measurement window.
    pub window_ns: u64,
    /// Payload bytes moved (see [`LoadgenReport::bytes`]).
    pub bytes: u64,
    /// Payload bytes moved inside the window.
    pub bytes_measured: u64,
    /// Connections established.
    pub connects: u64,
    /// Connections that could not be opened.
    pub connect_failures: u64,
}

impl LoadgenReport {
    /// A report from counts and a latency histogram (1 ns to 60 s, as every load generator
    /// here records).
    pub fn from_counts(counts: ReportCounts, histogram: Histogram<u64>) -> Self {
        let mut report = LoadgenReport {
            sent: counts.sent,
            received: counts.received,
            measured: counts.measured,
            timeouts: counts.timeouts,
            corrupt: counts.corrupt,
            unexpected: counts.unexpected,
            send_failures: counts.send_failures,
            window_ns: counts.window_ns,
            requests_per_s: 0.0,
            latency: LatencySummary::default(),
            bytes: counts.bytes,
            bytes_measured: counts.bytes_measured,
            bytes_per_sec: 0.0,
            connects: counts.connects,
            connect_failures: counts.connect_failures,
            kv: None,
            histogram,
        };
        report.finish();
        report
    }

    /// The report with a key-value run's reply counts.
    pub fn with_kv(mut self, kv: Option<crate::kv_load::KvReplyCounts>) -> Self {
        self.kv = kv;
        self
    }

    /// Combines the reports of several engines measured over the same window.
    pub fn merge(reports: impl IntoIterator<Item = LoadgenReport>) -> Option<LoadgenReport> {
        let mut iter = reports.into_iter();
        let mut total = iter.next()?;
        for r in iter {
            total.sent += r.sent;
            total.received += r.received;
            total.measured += r.measured;
            total.timeouts += r.timeouts;
            total.corrupt += r.corrupt;
            total.unexpected += r.unexpected;
            total.send_failures += r.send_failures;
            total.window_ns = total.window_ns.max(r.window_ns);
            total.bytes += r.bytes;
            total.bytes_measured += r.bytes_measured;
            total.connects += r.connects;
            total.connect_failures += r.connect_failures;
            match (&mut total.kv, r.kv) {
                (Some(t), Some(k)) => t.add(&k),
                (None, Some(k)) => total.kv = Some(k),
                _ => {}
            }
            total
                .histogram
                .add(&r.histogram)
                .expect("histograms share bounds");
        }
        total.finish();
        Some(total)
    }
    fn finish(&mut self) {
        let h = &self.histogram;
        let per_s = |count: u64| {
            if self.window_ns == 0 {
                0.0
            } else {
                count as f64 * 1e9 / self.window_ns as f64
            }
        };
        self.requests_per_s = per_s(self.measured);
        self.bytes_per_sec = per_s(self.bytes_measured);
        self.latency = if h.is_empty() {
            LatencySummary::default()
        } else {
            LatencySummary {
                p50_ns: h.value_at_quantile(0.50),
                p90_ns: h.value_at_quantile(0.90),
                p99_ns: h.value_at_quantile(0.99),
                p999_ns: h.value_at_quantile(0.999),
                max_ns: h.max(),
                mean_ns: h.mean() as u64,
            }
        };
    }
}

/// The load generator app. See the module documentation.
pub struct LoadgenApp {
    config: LoadgenConfig,
    slots: Vec<Slot>,
    mask: u64,
    next_seq: u64,
    oldest_seq: u64,
    outstanding: usize,
    start_ns: u64,
    measure_start_ns: u64,
    measure_end_ns: u64,
    paced_sent: u64,
    done: bool,
    histogram: Histogram<u64>,
    sent: u64,
    received: u64,
    measured: u64,
    timeouts: u64,
    corrupt: u64,
    unexpected: u64,
    send_failures: u64,
    socket: Option<SocketId>,
    bind_failed: bool,
    /// A reply spanning several buffers is read into this (allocated at start).
    scratch: Vec<u8>,
}

impl std::fmt::Debug for LoadgenApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadgenApp")
            .field("config", &self.config)
            .field("sent", &self.sent)
            .field("received", &self.received)
            .field("outstanding", &self.outstanding)
            .finish()
    }
}

impl LoadgenApp {
    /// A load generator. `payload_len` is clamped to `HEADER_LEN..=PAYLOAD_MAX` (the command
    /// line refuses values outside before it gets here); `inflight` to `1..=WINDOW_MAX`.
    pub fn new(mut config: LoadgenConfig) -> Self {
        config.payload_len = config.payload_len.clamp(HEADER_LEN, PAYLOAD_MAX);
        config.inflight = config.inflight.clamp(1, WINDOW_MAX);
        // The ring must span every sequence number sent within one timeout, or a single lost
        // request would block the loop until it expires: at 300k requests/s and a 200 ms
        // timeout that is 60k numbers, so always the largest window (1.5 MiB per engine).
        let window = WINDOW_MAX;
        Self {
            config,
            slots: vec![Slot::default(); window],
            mask: window as u64 - 1,
            next_seq: 0,
            oldest_seq: 0,
            outstanding: 0,
            start_ns: 0,
            measure_start_ns: 0,
            measure_end_ns: 0,
            paced_sent: 0,
            done: false,
            histogram: Histogram::new_with_bounds(1, 60_000_000_000, 3)
                .expect("static histogram bounds are valid"),
            sent: 0,
            received: 0,
            measured: 0,
            timeouts: 0,
            corrupt: 0,
            unexpected: 0,
            send_failures: 0,
            socket: None,
            bind_failed: false,
            scratch: vec![0; PAYLOAD_MAX],
        }
    }

    /// True when the local port could not be bound (the app then sends nothing and ends).
    pub fn bind_failed(&self) -> bool {
        self.bind_failed
    }

    /// Requests in flight now.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// The report so far (final once [`App::is_done`]).
    pub fn report(&self) -> LoadgenReport {
        let payload = self.config.payload_len as u64;
        LoadgenReport::from_counts(
            ReportCounts {
                sent: self.sent,
                received: self.received,
                measured: self.measured,
                timeouts: self.timeouts,
                corrupt: self.corrupt,
                unexpected: self.unexpected,
                send_failures: self.send_failures,
                window_ns: self.config.duration_ns,
                // Every matching reply is exactly one request's payload long.
                bytes: self.received * payload,
                bytes_measured: self.measured * payload,
                connects: 0,
                connect_failures: 0,
            },
            self.histogram.clone(),
        )
    }

    fn sending(&self, now_ns: u64) -> bool {
        now_ns < self.measure_end_ns
    }

    fn send_one(&mut self, io: &mut IoContext<'_>) -> bool {
        let now = io.now_ns();
        let Some(socket) = self.socket else {
            return false;
        };
        if self.outstanding >= self.slots.len() {
            self.send_failures += 1;
            return false;
        }
        let slot_index = (self.next_seq & self.mask) as usize;
        if self.slots[slot_index].pending {
            // The ring lapped a request that has neither answered nor timed out yet: it is
            // `WINDOW_MAX` requests old, so count it lost now rather than stall every send.
            self.slots[slot_index].pending = false;
            self.outstanding -= 1;
            self.timeouts += 1;
        }
        let seq = self.next_seq;
        let Some(data) = build_request(io, self.config.payload_len, self.config.stream, seq, now)
        else {
            self.send_failures += 1;
            return false;
        };
        match io.send_to(socket, self.config.target, data) {
            Ok(()) => {
                self.slots[slot_index] = Slot {
                    seq,
                    sent_ns: now,
                    pending: true,
                };
                self.next_seq += 1;
                self.outstanding += 1;
                self.sent += 1;
                true
            }
            Err((_, data)) => {
                io.free_chain(data);
                self.send_failures += 1;
                false
            }
        }
    }

    fn handle_reply(&mut self, now: u64, payload: &[u8]) {
        let Some((stream, seq)) = read_header(payload) else {
            self.corrupt += 1;
            return;
        };
        if stream != self.config.stream {
            self.unexpected += 1;
            return;
        }
        let slot = &mut self.slots[(seq & self.mask) as usize];
        if !slot.pending || slot.seq != seq {
            self.unexpected += 1;
            return;
        }
        if payload.len() != self.config.payload_len || !pattern_matches(payload, seq) {
            self.corrupt += 1;
            return;
        }
        slot.pending = false;
        self.outstanding -= 1;
        self.received += 1;
        if now >= self.measure_start_ns && now < self.measure_end_ns {
            self.measured += 1;
            let latency = now.saturating_sub(slot.sent_ns).max(1);
            let _ = self.histogram.record(latency.min(60_000_000_000));
        }
    }

    fn expire(&mut self, now: u64) {
        while self.oldest_seq < self.next_seq {
            let slot = &mut self.slots[(self.oldest_seq & self.mask) as usize];
            if slot.pending && slot.seq == self.oldest_seq {
                if now.saturating_sub(slot.sent_ns) < self.config.timeout_ns {
                    break;
                }
                slot.pending = false;
                self.outstanding -= 1;
                self.timeouts += 1;
            }
            self.oldest_seq += 1;
        }
    }

    fn top_up(&mut self, io: &mut IoContext<'_>) {
        let now = io.now_ns();
        if !self.sending(now) {
            return;
        }
        match self.config.rate_per_s {
            None => {
                while self.outstanding < self.config.inflight {
                    if !self.send_one(io) {
                        break;
                    }
                }
            }
            Some(rate) => {
                let due = ((now - self.start_ns) as f64 * rate / 1e9) as u64;
                while self.paced_sent < due {
                    self.paced_sent += 1;
                    if self.outstanding >= self.config.inflight || !self.send_one(io) {
                        // Counted as a failure: an open loop must not silently slow down.
                        if self.outstanding >= self.config.inflight {
                            self.send_failures += 1;
                        }
                    }
                }
            }
        }
    }

    fn housekeeping_ns(&self) -> u64 {
        (self.config.timeout_ns / 4).clamp(1_000, HOUSEKEEPING_NS_MAX)
    }

    fn pace_ns(&self) -> u64 {
        match self.config.rate_per_s {
            Some(rate) if rate > 0.0 => ((1e9 / rate) as u64).clamp(1_000, 1_000_000),
            _ => HOUSEKEEPING_NS_MAX,
        }
    }
}

impl App for LoadgenApp {
    fn start(&mut self, io: &mut IoContext<'_>) {
        let now = io.now_ns();
        match io.bind_udp(self.config.local_port) {
            Ok(socket) => self.socket = Some(socket),
            Err(_) => {
                self.bind_failed = true;
                self.done = true;
                return;
            }
        }
        self.start_ns = now;
        self.measure_start_ns = now + self.config.warmup_ns;
        self.measure_end_ns = self.measure_start_ns + self.config.duration_ns;
        let _ = io.arm_timer(now + self.housekeeping_ns(), TOKEN_HOUSEKEEPING);
        if self.config.rate_per_s.is_some() {
            let _ = io.arm_timer(now + self.pace_ns(), TOKEN_PACE);
        }
        self.top_up(io);
    }

    fn run_io(&mut self, io: &mut IoContext<'_>) {
        let now = io.now_ns();
        while let Some(event) = io.next_event() {
            match event {
                Event::Datagram { data, .. } => {
                    if data.frames() == 1 {
                        self.handle_reply(now, io.payload(data.head()));
                    } else {
                        let len = io.chain_read(&data, 0, &mut self.scratch);
                        let scratch = std::mem::take(&mut self.scratch);
                        self.handle_reply(now, &scratch[..len]);
                        self.scratch = scratch;
                    }
                    io.free_chain(data);
                }
                Event::Timer {
                    token: TOKEN_HOUSEKEEPING,
                    ..
                } => {
                    self.expire(now);
                    if !self.done {
                        let _ = io.arm_timer(now + self.housekeeping_ns(), TOKEN_HOUSEKEEPING);
                    }
                }
                Event::Timer {
                    token: TOKEN_PACE, ..
                } => {
                    if self.sending(now) {
                        let _ = io.arm_timer(now + self.pace_ns(), TOKEN_PACE);
                    }
                }
                other => {
                    if let Some(data) = other.into_data() {
                        io.free_chain(data);
                    }
                }
            }
        }
        self.top_up(io);
        if !self.sending(now)
            && (self.outstanding == 0 || now >= self.measure_end_ns + self.config.drain_ns)
        {
            self.done = true;
        }
    }

    fn is_done(&self) -> bool {
        self.done
    }
}

/// A request of `len` bytes in one buffer, or a chain when it does not fit one; `None` when
/// the pool has too few buffers.
fn build_request(
    io: &mut IoContext<'_>,
    len: usize,
    stream: u32,
    seq: u64,
    now_ns: u64,
) -> Option<BufChain> {
    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    header[4..8].copy_from_slice(&stream.to_be_bytes());
    header[8..16].copy_from_slice(&seq.to_be_bytes());
    header[16..24].copy_from_slice(&now_ns.to_be_bytes());
    let mut chain: Option<BufChain> = None;
    let mut written = 0;
    while written < len {
        let Some(mut buf) = io.alloc() else {
            if let Some(chain) = chain {
                io.free_chain(chain);
            }
            return None;
        };
        let take = io.tailroom(&buf).min(len - written);
        io.set_payload_len(&mut buf, take)
            .expect("the length is within the buffer's tailroom");
        for (i, byte) in io.payload_mut(&buf).iter_mut().enumerate() {
            let at = written + i;
            *byte = if at < HEADER_LEN {
                header[at]
            } else {
                pattern_byte(seq, at - HEADER_LEN)
            };
        }
        written += take;
        match chain.as_mut() {
            None => chain = Some(BufChain::from(buf)),
            Some(chain) => {
                if let Err((_, buf)) = io.chain_push(chain, buf) {
                    // Unreachable: the length is at most PAYLOAD_MAX, within a chain's bound.
                    io.free(buf);
                }
            }
        }
    }
    chain
}

fn pattern_byte(seq: u64, i: usize) -> u8 {
    (seq as u8).wrapping_mul(31).wrapping_add(i as u8)
}

fn pattern_matches(payload: &[u8], seq: u64) -> bool {
    payload[HEADER_LEN..]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern_byte(seq, i))
}

fn read_header(payload: &[u8]) -> Option<(u32, u64)> {
    let header: &[u8; HEADER_LEN] = payload.get(..HEADER_LEN)?.try_into().ok()?;
    let magic = u32::from_be_bytes(header[0..4].try_into().ok()?);
    if magic != MAGIC {
        return None;
    }
    let stream = u32::from_be_bytes(header[4..8].try_into().ok()?);
    let seq = u64::from_be_bytes(header[8..16].try_into().ok()?);
    Some((stream, seq))
}

/// Largest reply [`fuzz_reply`] delivers: a few frames, so chains are reached.
pub const FUZZ_REPLY_MAX: usize = 4096;
/// Requests in flight when [`fuzz_reply`] delivers its reply (sequence numbers 0..16).
pub const FUZZ_INFLIGHT: usize = 16;

/// Fuzz body of the `apps_loadgen_reply` target: `data` is one reply's payload (truncated to
/// [`FUZZ_REPLY_MAX`]), as a server or anyone else sent it. A closed-loop load generator over
/// [`melange_core::test_io::TestIo`], whose requests are as long as the reply (so a captured
/// reply to sequence number 0..[`FUZZ_INFLIGHT`] matches), receives it twice (as one buffer
/// or a chain, as it arrived), then lets every request time out. Panics only on a bug: a
/// reply counted other than exactly once, one reply matching twice, a request neither
/// answered, timed out nor outstanding, more in flight than asked, or a leaked buffer.
/// Returns the final report.
pub fn fuzz_reply(data: &[u8]) -> LoadgenReport {
    use melange_core::test_io::TestIo;
    let reply = &data[..data.len().min(FUZZ_REPLY_MAX)];
    let target = SocketAddrV4::new(std::net::Ipv4Addr::new(10, 77, 0, 2), 7777);
    let mut config = LoadgenConfig::closed_loop(target, reply.len(), FUZZ_INFLIGHT, 1_000_000_000);
    config.timeout_ns = 1_000_000;
    let mut io = TestIo::new(256);
    let mut app = LoadgenApp::new(config);
    app.start(&mut IoContext::new(&mut io));
    let _ = io.take_sent();
    let (local_port, socket) = io.bound[0];
    let check = |app: &LoadgenApp| {
        let report = app.report();
        assert!(app.outstanding() <= FUZZ_INFLIGHT, "{report:?}");
        assert_eq!(
            report.sent,
            report.received + report.timeouts + app.outstanding() as u64,
            "every request is answered, timed out or outstanding: {report:?}"
        );
        report
    };
    for copies in 1..=2u64 {
        let mut chain: Option<BufChain> = None;
        for piece in reply.chunks(1024) {
            let one = io.payload(piece);
            let (buf, _) = io.pool.chain_pop_front(one);
            match chain.as_mut() {
                None => chain = Some(BufChain::from(buf)),
                Some(chain) => io.pool.chain_push(chain, buf).expect("4 KiB fits a chain"),
            }
        }
        let data = chain.unwrap_or_else(|| io.payload(&[]));
        io.events
            .push(Event::Datagram {
                socket,
                data,
                from: target,
                local_port,
            })
            .expect("the event queue has room");
        io.now_ns += 1_000;
        app.run_io(&mut IoContext::new(&mut io));
        let _ = io.take_sent();
        let report = check(&app);
        assert!(report.received <= 1, "one reply matched twice: {report:?}");
        assert_eq!(
            report.received + report.corrupt + report.unexpected,
            copies,
            "each reply is counted once: {report:?}"
        );
    }
    // Past the timeout, housekeeping expires what is outstanding (and refills the window).
    io.now_ns += 10 * config.timeout_ns;
    let housekeeping = io.timers[0].timer;
    io.fire(housekeeping);
    app.run_io(&mut IoContext::new(&mut io));
    let _ = io.take_sent();
    let report = check(&app);
    assert!(report.timeouts >= (FUZZ_INFLIGHT as u64) - report.received);
    assert_eq!(io.pool.available(), io.pool.capacity(), "a buffer leaked");
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use melange_core::test_io::TestIo;
    use std::net::Ipv4Addr;

    #[test]
    fn fuzz_body_on_real_and_random_replies() {
        // A real reply: request 3 of stream 0, 64 bytes, as the echo returns it.
        let mut io = TestIo::new(4);
        let request = build_request(&mut IoContext::new(&mut io), 64, 0, 3, 5).unwrap();
        let mut reply = vec![0; 64];
        io.pool.chain_read(&request, 0, &mut reply);
        io.pool.free_chain(request);
        let report = fuzz_reply(&reply);
        assert_eq!((report.received, report.unexpected), (1, 1), "{report:?}");
        assert_eq!(
            report.timeouts, FUZZ_INFLIGHT as u64,
            "the refilled window expired"
        );
        let mut long = vec![0; 3000];
        let request = build_request(&mut IoContext::new(&mut io), 3000, 0, 0, 5).unwrap();
        io.pool.chain_read(&request, 0, &mut long);
        io.pool.free_chain(request);
        let report = fuzz_reply(&long);
        assert_eq!((report.received, report.unexpected), (1, 1), "{report:?}");
        let mut corrupt = reply.clone();
        corrupt[40] ^= 1;
        assert_eq!(fuzz_reply(&corrupt).corrupt, 2);
        assert_eq!(fuzz_reply(&[]).corrupt, 2);
        let mut rng = melange_core::rng::SplitMix64::new(12);
        for _ in 0..100 {
            let len = rng.below(80) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            if len >= HEADER_LEN && rng.chance(0.5) {
                bytes[..HEADER_LEN].copy_from_slice(&reply[..HEADER_LEN]);
            }
            fuzz_reply(&bytes);
        }
    }

    fn target() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 7)
    }

    fn started(config: LoadgenConfig) -> (LoadgenApp, TestIo) {
        let mut io = TestIo::new(512);
        let mut app = LoadgenApp::new(config);
        app.start(&mut IoContext::new(&mut io));
        assert!(!app.bind_failed());
        (app, io)
    }

    /// Sends every datagram sent so far back to the app as replies.
    fn echo_all(io: &mut TestIo) {
        let sent = std::mem::take(&mut io.sent);
        let (local_port, socket) = io.bound[0];
        for d in sent {
            io.events
                .push(Event::Datagram {
                    socket,
                    data: d.data,
                    from: d.to,
                    local_port,
                })
                .unwrap();
        }
    }

    #[test]
    fn closed_loop_keeps_inflight_and_measures() {
        let (mut app, mut io) = started(LoadgenConfig::closed_loop(target(), 64, 4, 1_000_000));
        assert_eq!(io.sent.len(), 4);
        assert_eq!(io.timers.len(), 1, "housekeeping armed");
        // Echo them back 500 ns later.
        echo_all(&mut io);
        io.now_ns = 500;
        app.run_io(&mut IoContext::new(&mut io));
        assert_eq!(app.report().received, 4);
        assert_eq!(app.report().latency.p50_ns, 500);
        assert_eq!(io.sent.len(), 4, "closed loop refills the window");
        // Duplicate one reply: counted as unexpected, not as received.
        let dup = io.take_sent();
        for (_, bytes) in &dup {
            io.deliver(bytes, target());
        }
        io.deliver(&dup[0].1, target());
        io.now_ns = 2_000_000;
        app.run_io(&mut IoContext::new(&mut io));
        let report = app.report();
        assert_eq!(report.received, 8);
        assert_eq!(report.unexpected, 1);
        assert!(app.is_done(), "past the window with nothing outstanding");
        assert_eq!(io.sent.len(), 0, "no sends after the window");
        assert_eq!(io.pool.available(), io.pool.capacity());
    }

    #[test]
    fn large_payloads_travel_as_chains_and_match() {
        let (mut app, mut io) = started(LoadgenConfig::closed_loop(target(), 10_000, 2, 1_000_000));
        assert_eq!(io.sent.len(), 2);
        assert!(io.sent[0].data.frames() > 1);
        assert_eq!(io.sent[0].data.len(), 10_000);
        echo_all(&mut io);
        io.now_ns = 100;
        app.run_io(&mut IoContext::new(&mut io));
        let report = app.report();
        assert_eq!((report.received, report.corrupt), (2, 0));
        io.take_sent();
        assert_eq!(io.pool.available(), io.pool.capacity());
    }

    #[test]
    fn timeouts_and_corruption_are_counted() {
        let mut config = LoadgenConfig::closed_loop(target(), 40, 2, 10_000_000);
        config.timeout_ns = 1_000;
        let (mut app, mut io) = started(config);
        let mut sent = io.take_sent();
        // Corrupt one reply's pattern; lose the other.
        sent.pop();
        let (_, mut bad) = sent.pop().unwrap();
        *bad.last_mut().unwrap() ^= 0xff;
        io.deliver(&bad, target());
        let housekeeping = io.timers[0].timer;
        io.fire(housekeeping);
        io.now_ns = 5_000;
        app.run_io(&mut IoContext::new(&mut io));
        let report = app.report();
        assert_eq!(report.corrupt, 1);
        assert_eq!(
            report.timeouts, 2,
            "the corrupt one is never answered properly either"
        );
        io.take_sent();
        assert_eq!(io.pool.available(), io.pool.capacity());
    }

    #[test]
    fn one_lost_request_does_not_stall_the_closed_loop() {
        let mut config = LoadgenConfig::closed_loop(target(), 32, 2, 1_000_000_000);
        config.timeout_ns = 500_000_000;
        let (mut app, mut io) = started(config);
        // Lose the first request for good; answer everything else, far more than a window.
        let lost = io.sent.remove(0);
        io.pool.free_chain(lost.data);
        let mut now = 0;
        for _ in 0..(WINDOW_MAX as u64 + 1000) {
            now += 100;
            let Some(d) = io.sent.pop() else { break };
            let (local_port, socket) = io.bound[0];
            io.events
                .push(Event::Datagram {
                    socket,
                    data: d.data,
                    from: d.to,
                    local_port,
                })
                .unwrap();
            io.now_ns = now;
            app.run_io(&mut IoContext::new(&mut io));
        }
        let report = app.report();
        assert!(
            report.received > WINDOW_MAX as u64,
            "the loop kept going: {report:?}"
        );
        assert_eq!(report.timeouts, 1, "the lapped request counts as lost");
        assert_eq!(report.send_failures, 0);
        io.take_sent();
        assert_eq!(io.pool.available(), io.pool.capacity());
    }

    #[test]
    fn a_port_that_cannot_be_bound_ends_the_run_at_once() {
        let mut io = TestIo::new(8);
        io.bound
            .push((4000, melange_core::Handle::from_parts(9, 1)));
        let mut config = LoadgenConfig::closed_loop(target(), 64, 1, 1_000_000);
        config.local_port = 4000;
        let mut app = LoadgenApp::new(config);
        app.start(&mut IoContext::new(&mut io));
        assert!(app.bind_failed());
        assert!(app.is_done());
        assert!(io.sent.is_empty());
    }

    #[test]
    fn reports_merge() {
        let a =
            LoadgenApp::new(LoadgenConfig::closed_loop(target(), 64, 1, 1_000_000_000)).report();
        let b =
            LoadgenApp::new(LoadgenConfig::closed_loop(target(), 64, 1, 1_000_000_000)).report();
        let merged = LoadgenReport::merge([a, b]).unwrap();
        assert_eq!(merged.sent, 0);
        assert_eq!(merged.requests_per_s, 0.0);
        let counts = |bytes, connects| ReportCounts {
            bytes,
            bytes_measured: bytes / 2,
            connects,
            connect_failures: 1,
            window_ns: 2_000_000_000,
            ..ReportCounts::default()
        };
        let histogram = || Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        let merged = LoadgenReport::merge([
            LoadgenReport::from_counts(counts(4_000, 3), histogram()),
            LoadgenReport::from_counts(counts(2_000, 5), histogram()),
        ])
        .unwrap();
        assert_eq!((merged.bytes, merged.bytes_measured), (6_000, 3_000));
        assert_eq!(
            merged.bytes_per_sec, 1_500.0,
            "bytes in the window per second"
        );
        assert_eq!((merged.connects, merged.connect_failures), (8, 2));
        assert!(
            !format!("{merged:?}").contains("counts"),
            "no histogram dump"
        );
    }

    #[test]
    fn udp_reports_count_reply_bytes() {
        let (mut app, mut io) = started(LoadgenConfig::closed_loop(target(), 100, 3, 1_000_000));
        echo_all(&mut io);
        io.now_ns = 10;
        app.run_io(&mut IoContext::new(&mut io));
        let report = app.report();
        assert_eq!(report.bytes, 300);
        io.take_sent();
    }
}
