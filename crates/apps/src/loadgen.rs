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
use melange_core::{App, Event, IoContext};
use serde::Serialize;
use std::net::SocketAddrV4;

const MAGIC: u32 = 0x4d4c_4731; // "MLG1"
/// Bytes of the request header; payloads must be at least this long.
pub const HEADER_LEN: usize = 24;
const TOKEN_HOUSEKEEPING: u64 = 1;
const TOKEN_PACE: u64 = 2;
const HOUSEKEEPING_NS_MAX: u64 = 1_000_000;
/// The most requests outstanding at once, per engine.
pub const WINDOW_MAX: usize = 1 << 16;

/// Load generator configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadgenConfig {
    /// The server.
    pub target: SocketAddrV4,
    /// Our source port (ignored on the kernel backend, whose socket has its own).
    pub local_port: u16,
    /// Request payload bytes, at least [`HEADER_LEN`].
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
#[derive(Debug, Clone, Serialize)]
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
    /// `measured` per second of window.
    pub requests_per_s: f64,
    /// Latency of measured replies.
    pub latency: LatencySummary,
    #[serde(skip)]
    histogram: Histogram<u64>,
}

impl LoadgenReport {
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
        self.requests_per_s = if self.window_ns == 0 {
            0.0
        } else {
            self.measured as f64 * 1e9 / self.window_ns as f64
        };
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
    /// A load generator. `payload_len` is raised to [`HEADER_LEN`] if smaller; `inflight` is
    /// clamped to `1..=WINDOW_MAX`.
    pub fn new(mut config: LoadgenConfig) -> Self {
        config.payload_len = config.payload_len.max(HEADER_LEN);
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
        }
    }

    /// Requests in flight now.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// The report so far (final once [`App::is_done`]).
    pub fn report(&self) -> LoadgenReport {
        let mut report = LoadgenReport {
            sent: self.sent,
            received: self.received,
            measured: self.measured,
            timeouts: self.timeouts,
            corrupt: self.corrupt,
            unexpected: self.unexpected,
            send_failures: self.send_failures,
            window_ns: self.config.duration_ns,
            requests_per_s: 0.0,
            latency: LatencySummary::default(),
            histogram: self.histogram.clone(),
        };
        report.finish();
        report
    }

    fn sending(&self, now_ns: u64) -> bool {
        now_ns < self.measure_end_ns
    }

    fn send_one(&mut self, io: &mut IoContext<'_>) -> bool {
        let now = io.now_ns();
        if self.outstanding >= self.slots.len() || io.commands_room() == 0 {
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
        let Some(mut buf) = io.alloc() else {
            self.send_failures += 1;
            return false;
        };
        if io
            .set_payload_len(&mut buf, self.config.payload_len)
            .is_err()
        {
            io.free(buf);
            self.send_failures += 1;
            return false;
        }
        let seq = self.next_seq;
        write_request(io.payload_mut(&buf), self.config.stream, seq, now);
        match io.send_to(buf, self.config.local_port, self.config.target) {
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
            Err((_, buf)) => {
                io.free(buf);
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
        self.start_ns = now;
        self.measure_start_ns = now + self.config.warmup_ns;
        self.measure_end_ns = self.measure_start_ns + self.config.duration_ns;
        let _ = io.arm_timer(TOKEN_HOUSEKEEPING, now + self.housekeeping_ns());
        if self.config.rate_per_s.is_some() {
            let _ = io.arm_timer(TOKEN_PACE, now + self.pace_ns());
        }
        self.top_up(io);
    }

    fn run_io(&mut self, io: &mut IoContext<'_>) {
        let now = io.now_ns();
        while let Some(event) = io.next_event() {
            match event {
                Event::Datagram { buf, .. } => {
                    self.handle_reply(now, io.payload(&buf));
                    io.free(buf);
                }
                Event::Timer {
                    token: TOKEN_HOUSEKEEPING,
                } => {
                    self.expire(now);
                    if !self.done {
                        let _ = io.arm_timer(TOKEN_HOUSEKEEPING, now + self.housekeeping_ns());
                    }
                }
                Event::Timer { token: TOKEN_PACE } => {
                    if self.sending(now) {
                        let _ = io.arm_timer(TOKEN_PACE, now + self.pace_ns());
                    }
                }
                Event::Timer { .. } | Event::SendDone { .. } => {}
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

fn write_request(payload: &mut [u8], stream: u32, seq: u64, now_ns: u64) {
    payload[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    payload[4..8].copy_from_slice(&stream.to_be_bytes());
    payload[8..16].copy_from_slice(&seq.to_be_bytes());
    payload[16..24].copy_from_slice(&now_ns.to_be_bytes());
    for (i, byte) in payload[HEADER_LEN..].iter_mut().enumerate() {
        *byte = pattern_byte(seq, i);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use melange_core::contract::{ContractLimits, IoQueues};
    use melange_core::{Command, PacketPool, PoolConfig};
    use std::net::Ipv4Addr;

    /// Drives the app by hand: whatever it sends comes back (or not) as the test decides.
    struct Harness {
        pool: PacketPool,
        queues: IoQueues,
    }

    impl Harness {
        fn new() -> Self {
            Self {
                pool: PacketPool::new(PoolConfig {
                    frame_size: 512,
                    frame_count: 256,
                    headroom: 64,
                })
                .unwrap(),
                queues: IoQueues::new(ContractLimits {
                    events_max: 128,
                    commands_max: 256,
                }),
            }
        }
        fn sends(&mut self) -> Vec<melange_core::PacketBuf> {
            self.queues
                .take_commands()
                .drain(..)
                .filter_map(|c| match c {
                    Command::SendTo { buf, .. } => Some(buf),
                    Command::ArmTimer { .. } => None,
                })
                .collect()
        }
    }

    fn target() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 7)
    }

    #[test]
    fn closed_loop_keeps_inflight_and_measures() {
        let mut h = Harness::new();
        let mut app = LoadgenApp::new(LoadgenConfig::closed_loop(target(), 64, 4, 1_000_000));
        app.start(&mut h.queues.context(0, &mut h.pool));
        let sent = h.sends();
        assert_eq!(sent.len(), 4);
        // Echo them back 500 ns later.
        for buf in sent {
            h.queues
                .push_event(Event::Datagram {
                    buf,
                    from: target(),
                    local_port: 0,
                })
                .unwrap();
        }
        app.run_io(&mut h.queues.context(500, &mut h.pool));
        assert_eq!(app.report().received, 4);
        assert_eq!(app.report().latency.p50_ns, 500);
        let refill = h.sends();
        assert_eq!(refill.len(), 4, "closed loop refills the window");
        // Duplicate one reply: counted as unexpected, not as received.
        let dup_bytes = h.pool.data(&refill[0]).to_vec();
        for buf in refill {
            h.queues
                .push_event(Event::Datagram {
                    buf,
                    from: target(),
                    local_port: 0,
                })
                .unwrap();
        }
        let mut dup = h.pool.alloc().unwrap();
        h.pool.set_len(&mut dup, dup_bytes.len()).unwrap();
        h.pool.data_mut(&dup).copy_from_slice(&dup_bytes);
        h.queues
            .push_event(Event::Datagram {
                buf: dup,
                from: target(),
                local_port: 0,
            })
            .unwrap();
        app.run_io(&mut h.queues.context(2_000_000, &mut h.pool));
        let report = app.report();
        assert_eq!(report.received, 8);
        assert_eq!(report.unexpected, 1);
        assert!(app.is_done(), "past the window with nothing outstanding");
        assert_eq!(h.sends().len(), 0, "no sends after the window");
        assert_eq!(h.pool.available(), h.pool.capacity());
    }

    #[test]
    fn timeouts_and_corruption_are_counted() {
        let mut h = Harness::new();
        let mut config = LoadgenConfig::closed_loop(target(), 40, 2, 10_000_000);
        config.timeout_ns = 1_000;
        let mut app = LoadgenApp::new(config);
        app.start(&mut h.queues.context(0, &mut h.pool));
        let mut sent = h.sends();
        // Corrupt one reply's pattern; lose the other.
        let lost = sent.pop().unwrap();
        h.pool.free(lost);
        let bad = sent.pop().unwrap();
        let last = bad.len() - 1;
        h.pool.data_mut(&bad)[last] ^= 0xff;
        h.queues
            .push_event(Event::Datagram {
                buf: bad,
                from: target(),
                local_port: 0,
            })
            .unwrap();
        h.queues
            .push_event(Event::Timer {
                token: TOKEN_HOUSEKEEPING,
            })
            .unwrap();
        app.run_io(&mut h.queues.context(5_000, &mut h.pool));
        let report = app.report();
        assert_eq!(report.corrupt, 1);
        assert_eq!(
            report.timeouts, 2,
            "the corrupt one is never answered properly either"
        );
        for buf in h.sends() {
            h.pool.free(buf);
        }
        assert_eq!(h.pool.available(), h.pool.capacity());
    }

    #[test]
    fn one_lost_request_does_not_stall_the_closed_loop() {
        let mut h = Harness::new();
        let mut config = LoadgenConfig::closed_loop(target(), 32, 2, 1_000_000_000);
        config.timeout_ns = 500_000_000;
        let mut app = LoadgenApp::new(config);
        app.start(&mut h.queues.context(0, &mut h.pool));
        let mut sent = h.sends();
        // Lose the first request for good; answer everything else, far more than a window.
        let lost = sent.remove(0);
        h.pool.free(lost);
        let mut now = 0;
        for _ in 0..(WINDOW_MAX as u64 + 1000) {
            now += 100;
            let Some(buf) = sent.pop() else { break };
            h.queues
                .push_event(Event::Datagram {
                    buf,
                    from: target(),
                    local_port: 0,
                })
                .unwrap();
            app.run_io(&mut h.queues.context(now, &mut h.pool));
            sent.extend(h.sends());
        }
        let report = app.report();
        assert!(
            report.received > WINDOW_MAX as u64,
            "the loop kept going: {report:?}"
        );
        assert_eq!(report.timeouts, 1, "the lapped request counts as lost");
        assert_eq!(report.send_failures, 0);
        for buf in sent {
            h.pool.free(buf);
        }
        assert_eq!(h.pool.available(), h.pool.capacity());
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
    }
}
