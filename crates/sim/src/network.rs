//! The simulated switch, its ports, and the simulation loop.

use crate::SimRng;
use melange_core::pool::TxDropped;
use melange_core::{PacketBuf, PacketPool, PoolConfig};
use melange_engine::{NicCaps, NicError, NicQueue, TxOutcome};
use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::os::fd::BorrowedFd;
use std::rc::Rc;

/// What happens to frames leaving a port. Probabilities are per frame.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Impairments {
    /// Dropped.
    pub loss: f64,
    /// Fixed one-way delay.
    pub delay_ns: u64,
    /// Extra delay, uniform in `0..jitter_ns`; frames overtake each other when it exceeds
    /// their spacing.
    pub jitter_ns: u64,
    /// Delivered twice (each copy with its own delay).
    pub duplicate: f64,
    /// Cut to a random shorter length.
    pub truncate: f64,
    /// One random bit flipped, anywhere in the frame (as a faulty switch would; the Ethernet
    /// FCS is not modelled). IPv4, ICMP and UDP checksums catch it; ARP has no checksum, so a
    /// corrupted ARP packet can poison a cache until the entry expires, as on a real network.
    pub corrupt: f64,
}

impl Impairments {
    /// A clean link with a fixed delay.
    pub fn delay(delay_ns: u64) -> Self {
        Self {
            delay_ns,
            ..Self::default()
        }
    }
}

/// The transmit side of a port: a ring of frames waiting to be serialized onto the link at
/// a fixed rate. A frame leaves the ring (and completes, going back to its owner) when its
/// last bit is on the wire; a full ring refuses frames, which is the back-pressure the
/// engine's stack must cope with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Frames the transmit ring holds.
    pub tx_ring: usize,
    /// Link rate in bits per microsecond (Mbit/s); 0 means infinitely fast.
    pub mbit_per_s: u64,
}

impl Default for Link {
    /// A 256-frame ring on an infinitely fast link: frames complete at the next pass.
    fn default() -> Self {
        Self {
            tx_ring: 256,
            mbit_per_s: 0,
        }
    }
}

/// Counters of one port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames the port's engine transmitted.
    pub tx_frames: u64,
    /// Frames delivered to the port's receive queue.
    pub rx_frames: u64,
    /// Frames lost because the receive queue was full.
    pub rx_queue_full: u64,
    /// Frames lost because the engine's pool had no buffer.
    pub rx_pool_exhausted: u64,
    /// Frames refused because the transmit ring was full.
    pub tx_ring_full: u64,
}

/// Counters of the whole network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkStats {
    /// Frames dropped by impairment.
    pub lost: u64,
    /// Frames duplicated.
    pub duplicated: u64,
    /// Frames truncated.
    pub truncated: u64,
    /// Frames with a flipped bit.
    pub corrupted: u64,
    /// Unicast frames for a MAC no port owns.
    pub unknown_destination: u64,
}

struct Port {
    mac: [u8; 6],
    impairments: Impairments,
    link: Link,
    /// When the link finishes serializing what it was given.
    link_busy_until_ns: u64,
    /// The earliest completion a port's NIC waits for, so the simulation wakes for it.
    tx_wake_ns: Option<u64>,
    rx: VecDeque<Vec<u8>>,
    rx_queue_max: usize,
    stats: PortStats,
}

struct InFlight {
    port: usize,
    frame: Vec<u8>,
}

/// The switch and everything in flight. Shared by the [`SimNic`]s and the [`Simulation`].
pub struct Network {
    now_ns: u64,
    rng: SimRng,
    ports: Vec<Port>,
    /// (delivery time, sequence) → frame, so equal times keep their send order.
    schedule: BinaryHeap<Reverse<(u64, u64)>>,
    in_flight: std::collections::BTreeMap<u64, InFlight>,
    next_sequence: u64,
    stats: NetworkStats,
}

impl Network {
    fn new(seed: u64) -> Self {
        Self {
            now_ns: 0,
            rng: SimRng::new(seed),
            ports: Vec::new(),
            schedule: BinaryHeap::new(),
            in_flight: std::collections::BTreeMap::new(),
            next_sequence: 0,
            stats: NetworkStats::default(),
        }
    }

    fn schedule(&mut self, port: usize, frame: Vec<u8>, at_ns: u64) {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.schedule.push(Reverse((at_ns, sequence)));
        self.in_flight.insert(sequence, InFlight { port, frame });
    }

    /// Puts a frame on `from`'s link: returns when its last bit leaves, after what the link is
    /// already serializing.
    fn serialize(&mut self, from: usize, len: usize) -> u64 {
        let now = self.now_ns;
        let port = &mut self.ports[from];
        let start = port.link_busy_until_ns.max(now);
        let wire_ns = match port.link.mbit_per_s {
            0 => 0,
            // bits / (bits per µs) = µs; × 1000 = ns.
            rate => (len as u64 * 8 * 1000).div_ceil(rate),
        };
        port.link_busy_until_ns = start + wire_ns;
        start + wire_ns
    }

    /// Applies the sender's impairments and schedules the frame for its destination(s), as
    /// leaving the sender at `at_ns`.
    fn transmit(&mut self, from: usize, frame: &[u8], at_ns: u64) {
        self.ports[from].stats.tx_frames += 1;
        let imp = self.ports[from].impairments;
        if self.rng.chance(imp.loss) {
            self.stats.lost += 1;
            return;
        }
        let copies = if self.rng.chance(imp.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        let destinations: Vec<usize> = match frame.get(..6) {
            Some(dst) if dst == [0xff; 6] => (0..self.ports.len()).filter(|&p| p != from).collect(),
            Some(dst) => self
                .ports
                .iter()
                .position(|p| p.mac == dst)
                .into_iter()
                .collect(),
            None => Vec::new(),
        };
        if destinations.is_empty() {
            self.stats.unknown_destination += 1;
            return;
        }
        for _ in 0..copies {
            let mut bytes = frame.to_vec();
            if !bytes.is_empty() && self.rng.chance(imp.truncate) {
                self.stats.truncated += 1;
                let len = self.rng.below(bytes.len() as u64) as usize;
                bytes.truncate(len);
            }
            if !bytes.is_empty() && self.rng.chance(imp.corrupt) {
                self.stats.corrupted += 1;
                let bit = self.rng.below(bytes.len() as u64 * 8);
                bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
            }
            let jitter = if imp.jitter_ns > 0 {
                self.rng.below(imp.jitter_ns)
            } else {
                0
            };
            let at = at_ns + imp.delay_ns + jitter;
            for &port in &destinations {
                self.schedule(port, bytes.clone(), at);
            }
        }
    }

    /// Moves every frame due by now into its port's receive queue. Returns how many.
    fn deliver(&mut self) -> usize {
        let mut delivered = 0;
        while let Some(&Reverse((at, sequence))) = self.schedule.peek() {
            if at > self.now_ns {
                break;
            }
            self.schedule.pop();
            let InFlight { port, frame } = self
                .in_flight
                .remove(&sequence)
                .expect("scheduled frames are in flight");
            let port = &mut self.ports[port];
            if port.rx.len() >= port.rx_queue_max {
                port.stats.rx_queue_full += 1;
            } else {
                port.rx.push_back(frame);
                port.stats.rx_frames += 1;
                delivered += 1;
            }
        }
        delivered
    }

    fn next_delivery_ns(&self) -> Option<u64> {
        let wake = self.ports.iter().filter_map(|p| p.tx_wake_ns).min();
        match (self.schedule.peek().map(|Reverse((at, _))| *at), wake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Injects a raw frame into a port's receive queue now, as if it came off the wire
    /// (for bad-input tests).
    pub fn inject(&mut self, port: usize, frame: Vec<u8>) {
        let now = self.now_ns;
        self.schedule(port, frame, now);
    }

    /// Takes every frame waiting in a port's receive queue (for a test that plays a raw host).
    pub fn take_rx(&mut self, port: usize) -> Vec<Vec<u8>> {
        self.ports[port].rx.drain(..).collect()
    }

    /// The network's counters.
    pub fn stats(&self) -> NetworkStats {
        self.stats
    }
    /// A port's counters.
    pub fn port_stats(&self, port: usize) -> PortStats {
        self.ports[port].stats
    }
    /// Frames in flight or queued at ports.
    pub fn frames_pending(&self) -> usize {
        self.in_flight.len() + self.ports.iter().map(|p| p.rx.len()).sum::<usize>()
    }
}

/// A NIC queue attached to one port of the simulated switch, with a transmit ring that
/// fills when the link is slower than the engine (see [`Link`]).
pub struct SimNic {
    network: Rc<RefCell<Network>>,
    port: usize,
    /// Frames being serialized, with the time each completes; capacity `link.tx_ring`.
    tx_ring: VecDeque<(PacketBuf, u64)>,
    tx_ring_size: usize,
}

impl SimNic {
    /// The port index.
    pub fn port(&self) -> usize {
        self.port
    }

    /// Completes every frame whose last bit has left, and tells the network when the next
    /// one will.
    fn complete(&mut self, pool: &mut PacketPool) {
        let mut network = self.network.borrow_mut();
        let now = network.now_ns;
        while let Some(&(_, done_at)) = self.tx_ring.front() {
            if done_at > now {
                break;
            }
            let (buf, _) = self.tx_ring.pop_front().expect("peeked above");
            pool.release_tx(buf, Ok(()));
        }
        network.ports[self.port].tx_wake_ns = self.tx_ring.front().map(|&(_, at)| at);
    }
}

impl NicQueue for SimNic {
    fn caps(&self) -> NicCaps {
        crate::SIM_NIC_CAPS
    }

    fn recv_batch(
        &mut self,
        pool: &mut PacketPool,
        rx: &mut Vec<PacketBuf>,
        max: usize,
    ) -> Result<(), NicError> {
        self.complete(pool);
        let mut network = self.network.borrow_mut();
        let port = &mut network.ports[self.port];
        for _ in 0..max {
            let Some(frame) = port.rx.pop_front() else {
                break;
            };
            let Some(mut buf) = pool.alloc_frame() else {
                port.stats.rx_pool_exhausted += 1;
                continue;
            };
            let len = frame.len().min(buf.len());
            pool.data_mut(&buf)[..len].copy_from_slice(&frame[..len]);
            buf.truncate(len);
            rx.push(buf);
        }
        Ok(())
    }

    fn tx_room(&self) -> usize {
        self.tx_ring_size - self.tx_ring.len()
    }

    fn send_batch(&mut self, pool: &mut PacketPool, tx: &mut Vec<PacketBuf>) -> TxOutcome {
        let mut sent = 0;
        for buf in tx.drain(..) {
            if self.tx_ring.len() >= self.tx_ring_size {
                self.network.borrow_mut().ports[self.port]
                    .stats
                    .tx_ring_full += 1;
                pool.release_tx(buf, Err(TxDropped::RingFull));
                continue;
            }
            let mut network = self.network.borrow_mut();
            let done_at = network.serialize(self.port, buf.len());
            network.transmit(self.port, pool.data(&buf), done_at);
            drop(network);
            self.tx_ring.push_back((buf, done_at));
            sent += 1;
        }
        self.complete(pool);
        TxOutcome::sent(sent)
    }

    fn wakeup_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    fn release(&mut self, pool: &mut PacketPool) {
        for (buf, _) in self.tx_ring.drain(..) {
            pool.release_tx(buf, Ok(()));
        }
        self.network.borrow_mut().ports[self.port].tx_wake_ns = None;
    }
}

/// Something the simulation polls: an engine, usually.
pub trait Node {
    /// One pass at `now_ns`; returns work done.
    fn poll(&mut self, now_ns: u64) -> usize;
    /// When the node next has timer work.
    fn next_deadline_ns(&self) -> Option<u64>;
    /// True when the node's app has finished.
    fn is_done(&self) -> bool;
}

impl<A: melange_core::App> Node
    for melange_engine::Engine<melange_engine::StackTransport<SimNic>, A>
{
    fn poll(&mut self, now_ns: u64) -> usize {
        melange_engine::Engine::poll(self, now_ns)
    }
    fn next_deadline_ns(&self) -> Option<u64> {
        melange_engine::Engine::next_deadline_ns(self)
    }
    fn is_done(&self) -> bool {
        melange_engine::Engine::is_done(self)
    }
}

/// A simulation: a network, a virtual clock, and the loop that drives nodes.
pub struct Simulation {
    network: Rc<RefCell<Network>>,
    seed: u64,
}

impl Simulation {
    /// The most passes at one instant before the simulation calls it a livelock.
    pub const PASSES_PER_INSTANT_MAX: usize = 100_000;

    /// A new, empty network seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            network: Rc::new(RefCell::new(Network::new(seed))),
            seed,
        }
    }
    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// The virtual clock.
    pub fn now_ns(&self) -> u64 {
        self.network.borrow().now_ns
    }
    /// Adds a port owning `mac`, whose outgoing frames suffer `impairments`, and returns its NIC.
    pub fn add_port(
        &mut self,
        mac: [u8; 6],
        impairments: Impairments,
        rx_queue_max: usize,
    ) -> SimNic {
        self.add_port_with_link(mac, impairments, rx_queue_max, Link::default())
    }
    /// Like [`Simulation::add_port`], with a link of a given rate and transmit ring.
    pub fn add_port_with_link(
        &mut self,
        mac: [u8; 6],
        impairments: Impairments,
        rx_queue_max: usize,
        link: Link,
    ) -> SimNic {
        let mut network = self.network.borrow_mut();
        network.ports.push(Port {
            mac,
            impairments,
            link,
            link_busy_until_ns: 0,
            tx_wake_ns: None,
            rx: VecDeque::new(),
            rx_queue_max,
            stats: PortStats::default(),
        });
        SimNic {
            network: self.network.clone(),
            port: network.ports.len() - 1,
            tx_ring: VecDeque::with_capacity(link.tx_ring),
            tx_ring_size: link.tx_ring,
        }
    }
    /// Changes a port's impairments mid-run (to heal a link, say).
    pub fn set_impairments(&mut self, port: usize, impairments: Impairments) {
        self.network.borrow_mut().ports[port].impairments = impairments;
    }
    /// The network, to read counters or inject frames.
    pub fn network(&self) -> std::cell::RefMut<'_, Network> {
        self.network.borrow_mut()
    }
    /// A pool suitable for a simulated engine.
    pub fn pool(frame_count: usize) -> PacketPool {
        PacketPool::new(PoolConfig {
            frame_size: 2048,
            frame_count,
            headroom: 128,
        })
        .expect("the simulator's pool configuration is valid")
    }

    /// Runs until every node is done, or the clock passes `until_ns`, or nothing can ever
    /// happen again. Returns the final time.
    ///
    /// # Panics
    /// If the nodes keep doing work at one instant for [`Simulation::PASSES_PER_INSTANT_MAX`]
    /// passes: a livelock, which is a bug worth a seed.
    pub fn run(&mut self, nodes: &mut [&mut dyn Node], until_ns: u64) -> u64 {
        loop {
            let mut passes = 0;
            loop {
                let delivered = self.network.borrow_mut().deliver();
                let now = self.now_ns();
                let mut work = delivered;
                for node in nodes.iter_mut() {
                    work += node.poll(now);
                }
                // Frames left in the queue of a port nobody polls (a raw host in a test) are
                // not work: only deliveries and what the nodes did count.
                if work == 0 {
                    break;
                }
                passes += 1;
                assert!(
                    passes < Self::PASSES_PER_INSTANT_MAX,
                    "livelock at {now} ns (seed {})",
                    self.seed
                );
            }
            let now = self.now_ns();
            if nodes.iter().all(|n| n.is_done()) || now >= until_ns {
                return now;
            }
            let next = nodes
                .iter()
                .filter_map(|n| n.next_deadline_ns())
                .chain(self.network.borrow().next_delivery_ns())
                .min();
            let Some(next) = next else { return now };
            self.network.borrow_mut().now_ns = next.max(now + 1).min(until_ns);
        }
    }
}
