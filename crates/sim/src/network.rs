//! The simulated switch, its ports, and the simulation loop.

use crate::rng::SimRng;
use melange_core::{PacketPool, PoolConfig};
use melange_engine::{Medium, NicError, NicQueue, RxDesc, TxDesc};
use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
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

    /// Applies the sender's impairments and schedules the frame for its destination(s).
    fn transmit(&mut self, from: usize, frame: &[u8]) {
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
            let at = self.now_ns + imp.delay_ns + jitter;
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
        self.schedule.peek().map(|Reverse((at, _))| *at)
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

/// A NIC queue attached to one port of the simulated switch.
pub struct SimNic {
    network: Rc<RefCell<Network>>,
    port: usize,
}

impl SimNic {
    /// The port index.
    pub fn port(&self) -> usize {
        self.port
    }
}

impl NicQueue for SimNic {
    fn medium(&self) -> Medium {
        Medium::Ethernet
    }

    fn recv_batch(
        &mut self,
        pool: &mut PacketPool,
        rx: &mut Vec<RxDesc>,
        max: usize,
    ) -> Result<(), NicError> {
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
            rx.push(RxDesc {
                buf,
                peer: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
                local_port: 0,
            });
        }
        Ok(())
    }

    fn send_batch(
        &mut self,
        pool: &mut PacketPool,
        tx: &mut Vec<TxDesc>,
    ) -> Result<usize, NicError> {
        let mut network = self.network.borrow_mut();
        let sent = tx.len();
        for desc in tx.drain(..) {
            network.transmit(self.port, pool.data(&desc.buf));
            pool.free(desc.buf);
        }
        Ok(sent)
    }

    fn wakeup_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    fn release(&mut self, _pool: &mut PacketPool) {}
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

impl<A: melange_core::App> Node for melange_engine::Engine<SimNic, A> {
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
        let mut network = self.network.borrow_mut();
        network.ports.push(Port {
            mac,
            impairments,
            rx: VecDeque::new(),
            rx_queue_max,
            stats: PortStats::default(),
        });
        SimNic {
            network: self.network.clone(),
            port: network.ports.len() - 1,
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
