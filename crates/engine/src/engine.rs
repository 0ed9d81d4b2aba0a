//! The engine: one run-to-completion pass per [`Engine::poll`]. See the crate documentation.

use crate::nic::{Medium, NicQueue, RxDesc, TxDesc};
use melange_core::contract::{ContractLimits, IoQueues};
use melange_core::stats::LinearHistogram;
use melange_core::timer::TimerWheel;
use melange_core::{App, Command, Event, PacketBuf, PacketPool, SendError};
use melange_net::{Interface, InterfaceConfig};
use std::net::{Ipv4Addr, SocketAddrV4};
use thiserror::Error;

/// Configuration of one engine, fixed at start-up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Engine index, used in logs and counters.
    pub id: usize,
    /// Most frames taken from the NIC per pass, and most transmitted per NIC call.
    pub batch_max: usize,
    /// Timing wheel resolution.
    pub tick_ns: u64,
    /// Most timers armed at once.
    pub timers_max: usize,
    /// The stack's configuration; required for [`Medium::Ethernet`] queues, ignored for
    /// [`Medium::Udp`] ones.
    pub interface: Option<InterfaceConfig>,
    /// UDP ports the app listens on (bound in the stack on Ethernet queues; on UDP queues
    /// the backend's socket decides).
    pub udp_ports: Vec<u16>,
    /// Neighbours the control plane resolved already (through the kernel's neighbour table,
    /// say), installed in the stack's ARP cache as entries that do not expire.
    pub static_arp: Vec<(Ipv4Addr, melange_net::EthernetAddress)>,
}

impl EngineConfig {
    /// Largest batch an engine accepts; bounds every per-batch array.
    pub const BATCH_MAX_LIMIT: usize = 1024;

    /// Defaults: batches of 64 (IX's bound), 1 µs ticks, 4096 timers.
    pub fn new(id: usize) -> Self {
        Self {
            id,
            batch_max: 64,
            tick_ns: 1_000,
            timers_max: 4096,
            interface: None,
            udp_ports: Vec::new(),
            static_arp: Vec::new(),
        }
    }

    /// Events handed to the app per batch: a full receive batch plus as many timers and
    /// send notifications again.
    fn contract_limits(&self) -> ContractLimits {
        ContractLimits {
            events_max: 2 * self.batch_max,
            commands_max: 4 * self.batch_max,
        }
    }
}

/// Errors building an engine. Each names the configuration to fix.
#[derive(Debug, Error)]
pub enum EngineError {
    /// `batch_max` is zero or above [`EngineConfig::BATCH_MAX_LIMIT`].
    #[error("batch_max {0} must be in 1..=1024")]
    BatchMax(usize),
    /// An Ethernet queue needs an interface configuration (MAC, address, prefix).
    #[error("an Ethernet NIC queue needs an interface configuration")]
    MissingInterface,
    /// The stack rejected its configuration.
    #[error("interface configuration: {0}")]
    Interface(String),
    /// A UDP port could not be bound in the stack.
    #[error("binding UDP port {port}: {reason}")]
    Bind {
        /// The port.
        port: u16,
        /// Why.
        reason: String,
    },
}

/// Why the engine itself dropped something (the stack and the backend count their own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineDrop {
    /// A datagram arrived while the event queue was full.
    EventQueueFull,
    /// The app armed more timers than `timers_max`.
    TimerWheelFull,
    /// A send failed in the stack (no route, ARP queue full, ...).
    SendFailed,
    /// The backend dropped frames at transmit.
    NicTx,
    /// A send-completion notification found the event queue full.
    NotificationLost,
}

impl EngineDrop {
    /// Every reason, for reports.
    pub const ALL: [EngineDrop; 5] = [
        EngineDrop::EventQueueFull,
        EngineDrop::TimerWheelFull,
        EngineDrop::SendFailed,
        EngineDrop::NicTx,
        EngineDrop::NotificationLost,
    ];
    /// A stable snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            EngineDrop::EventQueueFull => "event_queue_full",
            EngineDrop::TimerWheelFull => "timer_wheel_full",
            EngineDrop::SendFailed => "send_failed",
            EngineDrop::NicTx => "nic_tx",
            EngineDrop::NotificationLost => "notification_lost",
        }
    }
}

/// Per-engine counters.
#[derive(Debug, Clone)]
pub struct EngineCounters {
    /// Frames (or payloads) received from the NIC.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames handed to the NIC that it accepted.
    pub tx_packets: u64,
    /// Bytes handed to the NIC.
    pub tx_bytes: u64,
    /// Passes that received at least one frame.
    pub rx_batches: u64,
    /// Passes in all.
    pub polls: u64,
    /// Passes that found nothing to do.
    pub idle_polls: u64,
    /// Calls into the app.
    pub app_calls: u64,
    /// Timer events delivered.
    pub timers_fired: u64,
    /// Backend errors reported (each logged by the shell).
    pub nic_errors: u64,
    /// Receive batch sizes, 0..=batch_max.
    pub rx_batch_sizes: LinearHistogram,
    drops: [u64; EngineDrop::ALL.len()],
}

impl EngineCounters {
    fn new(batch_max: usize) -> Self {
        Self {
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets: 0,
            tx_bytes: 0,
            rx_batches: 0,
            polls: 0,
            idle_polls: 0,
            app_calls: 0,
            timers_fired: 0,
            nic_errors: 0,
            rx_batch_sizes: LinearHistogram::new(batch_max),
            drops: [0; EngineDrop::ALL.len()],
        }
    }
    fn drop(&mut self, reason: EngineDrop, n: u64) {
        self.drops[reason as usize] += n;
    }
    /// Drops counted for `reason`.
    pub fn drops(&self, reason: EngineDrop) -> u64 {
        self.drops[reason as usize]
    }
}

/// One engine. See the crate documentation for the pass it runs.
pub struct Engine<N, A> {
    config: EngineConfig,
    nic: N,
    medium: Medium,
    pool: PacketPool,
    iface: Option<Interface>,
    app: A,
    timers: TimerWheel<u64>,
    queues: IoQueues,
    rx: Vec<RxDesc>,
    tx: Vec<TxDesc>,
    counters: EngineCounters,
    started: bool,
}

impl<N: NicQueue, A: App> Engine<N, A> {
    /// Builds an engine; every queue and table is allocated here and never grows.
    pub fn new(
        config: EngineConfig,
        nic: N,
        mut pool: PacketPool,
        app: A,
        now_ns: u64,
    ) -> Result<Self, EngineError> {
        if config.batch_max == 0 || config.batch_max > EngineConfig::BATCH_MAX_LIMIT {
            return Err(EngineError::BatchMax(config.batch_max));
        }
        let medium = nic.medium();
        let iface = match medium {
            Medium::Udp => None,
            Medium::Ethernet => {
                let iface_config = config.interface.ok_or(EngineError::MissingInterface)?;
                let mut iface = Interface::new(iface_config)
                    .map_err(|e| EngineError::Interface(e.to_string()))?;
                for &port in &config.udp_ports {
                    iface.bind_udp(port).map_err(|e| EngineError::Bind {
                        port,
                        reason: e.to_string(),
                    })?;
                }
                for &(ip, mac) in &config.static_arp {
                    iface.add_static_arp(&mut pool, ip, mac);
                }
                Some(iface)
            }
        };
        Ok(Self {
            timers: TimerWheel::new(config.timers_max, config.tick_ns, now_ns),
            queues: IoQueues::new(config.contract_limits()),
            rx: Vec::with_capacity(config.batch_max),
            tx: Vec::with_capacity(config.batch_max),
            counters: EngineCounters::new(config.batch_max),
            config,
            nic,
            medium,
            pool,
            iface,
            app,
            started: false,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }
    /// The counters.
    pub fn counters(&self) -> &EngineCounters {
        &self.counters
    }
    /// The app.
    pub fn app(&self) -> &A {
        &self.app
    }
    /// The app, writable (for a shell that reconfigures it between passes).
    pub fn app_mut(&mut self) -> &mut A {
        &mut self.app
    }
    /// The NIC queue.
    pub fn nic(&self) -> &N {
        &self.nic
    }
    /// The packet pool.
    pub fn pool(&self) -> &PacketPool {
        &self.pool
    }
    /// The stack, on Ethernet queues.
    pub fn interface(&self) -> Option<&Interface> {
        self.iface.as_ref()
    }

    /// The earliest time a pass has timer work to do (app timers, ARP retries).
    pub fn next_deadline_ns(&self) -> Option<u64> {
        let stack = self.iface.as_ref().and_then(Interface::poll_at);
        match (self.timers.next_deadline_ns(), stack) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// True once the app reports it has finished.
    pub fn is_done(&self) -> bool {
        self.app.is_done()
    }

    /// One run-to-completion pass. Returns the units of work done (frames received plus
    /// timers fired); zero means the pass was idle.
    pub fn poll(&mut self, now_ns: u64) -> usize {
        self.counters.polls += 1;
        if !self.started {
            self.started = true;
            let mut io = self.queues.context(now_ns, &mut self.pool);
            self.app.start(&mut io);
            self.counters.app_calls += 1;
            self.run_commands(now_ns);
            self.flush(now_ns);
        }

        // 1-2. Receive, bounded by the batch and by the room for events (unread events from
        // the last batch stay queued, so nothing is lost when the app falls behind).
        let room = self.queues.events_room().min(self.config.batch_max);
        if let Err(err) = self.nic.recv_batch(&mut self.pool, &mut self.rx, room) {
            self.counters.nic_errors += 1;
            let _ = err;
        }
        let received = self.rx.len();
        if received > 0 {
            self.counters.rx_batches += 1;
        }
        self.counters.rx_batch_sizes.record(received);
        for desc in self.rx.drain(..) {
            self.counters.rx_packets += 1;
            self.counters.rx_bytes += desc.buf.len() as u64;
            let event = match self.medium {
                Medium::Udp => Some(Event::Datagram {
                    buf: desc.buf,
                    from: desc.peer,
                    local_port: desc.local_port,
                }),
                Medium::Ethernet => {
                    let iface = self.iface.as_mut().expect("Ethernet engines have a stack");
                    iface
                        .handle_frame(now_ns, &mut self.pool, desc.buf)
                        .map(|d| Event::Datagram {
                            buf: d.buf,
                            from: d.from,
                            local_port: d.local_port,
                        })
                }
            };
            if let Some(event) = event {
                if let Err(Event::Datagram { buf, .. }) = self.queues.push_event(event) {
                    self.pool.free(buf);
                    self.counters.drop(EngineDrop::EventQueueFull, 1);
                }
            }
        }

        // 3. Timers: the stack's, then the app's, as many as fit in this batch.
        if let Some(iface) = self.iface.as_mut() {
            if iface.poll_at().is_some_and(|at| at <= now_ns) {
                iface.handle_timeout(now_ns, &mut self.pool);
            }
        }
        let mut fired = 0;
        while self.queues.events_room() > 0 {
            let Some(token) = self.timers.poll_expired(now_ns) else {
                break;
            };
            let _ = self.queues.push_event(Event::Timer { token });
            fired += 1;
        }
        self.counters.timers_fired += fired as u64;

        // 4-5. The app, then its commands.
        if self.queues.events_len() > 0 {
            let mut io = self.queues.context(now_ns, &mut self.pool);
            self.app.run_io(&mut io);
            self.counters.app_calls += 1;
            self.run_commands(now_ns);
        }

        // 6. Transmit.
        self.flush(now_ns);

        let work = received + fired;
        if work == 0 {
            self.counters.idle_polls += 1;
        }
        work
    }

    fn run_commands(&mut self, now_ns: u64) {
        let mut commands = self.queues.take_commands();
        for command in commands.drain(..) {
            match command {
                Command::SendTo {
                    buf,
                    local_port,
                    to,
                    notify,
                } => {
                    let result = self.send(now_ns, buf, local_port, to);
                    if result.is_err() {
                        self.counters.drop(EngineDrop::SendFailed, 1);
                    }
                    if let Some(token) = notify {
                        if self
                            .queues
                            .push_event(Event::SendDone { token, result })
                            .is_err()
                        {
                            self.counters.drop(EngineDrop::NotificationLost, 1);
                        }
                    }
                }
                Command::ArmTimer { token, deadline_ns } => {
                    if self.timers.insert(deadline_ns, token).is_err() {
                        self.counters.drop(EngineDrop::TimerWheelFull, 1);
                    }
                }
            }
        }
        self.queues.restore_commands(commands);
    }

    fn send(
        &mut self,
        now_ns: u64,
        buf: PacketBuf,
        local_port: u16,
        to: SocketAddrV4,
    ) -> Result<(), SendError> {
        match self.medium {
            Medium::Udp => {
                if self.tx.len() == self.tx.capacity() {
                    Self::transmit(
                        &mut self.nic,
                        &mut self.pool,
                        &mut self.tx,
                        &mut self.counters,
                    );
                }
                self.tx.push(TxDesc { buf, peer: to });
                Ok(())
            }
            Medium::Ethernet => {
                let iface = self.iface.as_mut().expect("Ethernet engines have a stack");
                let result = iface
                    .send_udp(now_ns, &mut self.pool, buf, local_port, to)
                    .map_err(map_send_error);
                // Keep the stack's transmit queue short: move its frames to the NIC batch.
                self.move_stack_frames_to_nic();
                result
            }
        }
    }

    /// Moves the frames the stack has queued into the NIC batch, transmitting each time the
    /// batch fills (so the batch never exceeds `batch_max`).
    fn move_stack_frames_to_nic(&mut self) {
        let Some(iface) = self.iface.as_mut() else {
            return;
        };
        while let Some(frame) = iface.poll_transmit() {
            self.tx.push(TxDesc {
                buf: frame,
                peer: UNSPECIFIED,
            });
            if self.tx.len() == self.tx.capacity() {
                Self::transmit(
                    &mut self.nic,
                    &mut self.pool,
                    &mut self.tx,
                    &mut self.counters,
                );
            }
        }
    }

    /// Moves everything the stack has queued to the NIC, in batches of at most `batch_max`.
    fn flush(&mut self, _now_ns: u64) {
        self.move_stack_frames_to_nic();
        if !self.tx.is_empty() {
            Self::transmit(
                &mut self.nic,
                &mut self.pool,
                &mut self.tx,
                &mut self.counters,
            );
        }
    }

    fn transmit(
        nic: &mut N,
        pool: &mut PacketPool,
        tx: &mut Vec<TxDesc>,
        counters: &mut EngineCounters,
    ) {
        let queued = tx.len();
        let bytes: u64 = tx.iter().map(|d| d.buf.len() as u64).sum();
        match nic.send_batch(pool, tx) {
            Ok(sent) => {
                counters.tx_packets += sent as u64;
                counters.tx_bytes += if sent == queued { bytes } else { 0 };
                counters.drop(EngineDrop::NicTx, (queued - sent) as u64);
            }
            Err(_) => {
                counters.nic_errors += 1;
                counters.drop(EngineDrop::NicTx, queued as u64);
            }
        }
        debug_assert!(tx.is_empty(), "send_batch must drain its descriptors");
    }

    /// Stops the engine: returns every buffer held by the app's unread events, the stack and
    /// the NIC to the pool. Afterwards `pool().available()` equals the pool's capacity unless
    /// the app keeps buffers of its own.
    pub fn shutdown(&mut self) {
        while let Some(event) = self.queues.pop_event() {
            if let Event::Datagram { buf, .. } = event {
                self.pool.free(buf);
            }
        }
        for command in self.queues.drain_commands() {
            if let Command::SendTo { buf, .. } = command {
                self.pool.free(buf);
            }
        }
        if let Some(iface) = self.iface.as_mut() {
            iface.drain(&mut self.pool);
        }
        self.nic.release(&mut self.pool);
    }

    /// Takes the engine apart after [`Engine::shutdown`], giving back the app and the NIC.
    pub fn into_parts(self) -> (A, N, PacketPool, EngineCounters) {
        (self.app, self.nic, self.pool, self.counters)
    }
}

const UNSPECIFIED: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);

fn map_send_error(error: melange_net::SendError) -> SendError {
    use melange_net::SendError as E;
    match error {
        E::NoRoute(_) => SendError::NoRoute,
        E::ArpPendingFull => SendError::ResolutionQueueFull,
        E::TxQueueFull => SendError::TxQueueFull,
        E::PayloadTooLarge { .. } | E::NoHeadroom { .. } => SendError::PayloadTooLarge,
    }
}
