//! The engine: one run-to-completion pass per [`Engine::poll`]. See the crate documentation.

use crate::transport::{Transport, TransportCounters};
use melange_core::contract::{
    Command, CommandError, Event, EventQueue, Io, IoContext, Outcome, Refused, SendError,
};
use melange_core::handle::{Handle, HandleError};
use melange_core::pool::{PoolError, TxDropped};
use melange_core::stats::LinearHistogram;
use melange_core::timer::{TimerError, TimerKey, TimerWheel};
use melange_core::{App, BufChain, FrameOwner, PacketBuf, PacketPool, TimerId};
use thiserror::Error;

/// Configuration of one engine, fixed at start-up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Engine index, used in logs and counters.
    pub id: usize,
    /// Most frames taken from the transport per pass.
    pub batch_max: usize,
    /// Timing wheel resolution.
    pub tick_ns: u64,
    /// Most timers armed at once, the app's and the engine's.
    pub timers_max: usize,
    /// Most timers the app may have armed at once (its quota on the wheel).
    pub app_timers_max: usize,
}

impl EngineConfig {
    /// Largest batch an engine accepts; bounds every per-batch array.
    pub const BATCH_MAX_LIMIT: usize = 1024;
    /// Largest timing wheel an engine accepts.
    pub const TIMERS_MAX_LIMIT: usize = 1 << 20;

    /// Defaults: batches of 64 (IX's bound), 1 µs ticks, 4096 timers, all of them the app's.
    pub fn new(id: usize) -> Self {
        Self {
            id,
            batch_max: 64,
            tick_ns: 1_000,
            timers_max: 4096,
            app_timers_max: 4096,
        }
    }

    /// Events handed to the app per batch: a full receive batch plus as many timers and
    /// returned buffers again.
    pub fn events_max(&self) -> usize {
        2 * self.batch_max
    }

    fn validate(&self) -> Result<(), EngineError> {
        if self.batch_max == 0 || self.batch_max > Self::BATCH_MAX_LIMIT {
            return Err(EngineError::BatchMax(self.batch_max));
        }
        if self.tick_ns == 0 {
            return Err(EngineError::Tick);
        }
        if self.timers_max > Self::TIMERS_MAX_LIMIT || self.app_timers_max > self.timers_max {
            return Err(EngineError::Timers {
                timers_max: self.timers_max,
                app_timers_max: self.app_timers_max,
            });
        }
        Ok(())
    }
}

/// Errors building an engine. Each names the configuration to fix.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// `batch_max` is zero or above [`EngineConfig::BATCH_MAX_LIMIT`].
    #[error("batch_max {0} must be in 1..=1024")]
    BatchMax(usize),
    /// The timing wheel's tick is zero.
    #[error("the timing wheel's tick must be at least 1 ns")]
    Tick,
    /// The timer limits are inconsistent or too large.
    #[error(
        "timers_max {timers_max} must be at most 1048576 and app_timers_max {app_timers_max} \
         at most timers_max"
    )]
    Timers {
        /// The wheel's size.
        timers_max: usize,
        /// The app's quota.
        app_timers_max: usize,
    },
}

/// Why the engine itself dropped or refused something (the transport counts its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineDrop {
    /// A returned buffer's notification found the event queue full for longer than the
    /// returned queue could wait; never expected, since the queue holds every frame once.
    NotificationLost,
    /// The app asked for a timer beyond its quota or the wheel's size.
    TimerRefused,
    /// A command was refused (its outcome told the app why).
    CommandRefused,
}

impl EngineDrop {
    /// Every reason, for reports.
    pub const ALL: [EngineDrop; 3] = [
        EngineDrop::NotificationLost,
        EngineDrop::TimerRefused,
        EngineDrop::CommandRefused,
    ];
    /// A stable snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            EngineDrop::NotificationLost => "notification_lost",
            EngineDrop::TimerRefused => "timer_refused",
            EngineDrop::CommandRefused => "command_refused",
        }
    }
}

/// Per-engine counters.
#[derive(Debug, Clone)]
pub struct EngineCounters {
    /// Passes that received at least one frame.
    pub rx_batches: u64,
    /// Passes in all.
    pub polls: u64,
    /// Passes that found nothing to do.
    pub idle_polls: u64,
    /// Calls into the app.
    pub app_calls: u64,
    /// Commands the app issued.
    pub commands: u64,
    /// Timer events delivered.
    pub timers_fired: u64,
    /// Buffers returned to the app after transmit ([`Event::SendDone`]).
    pub buffers_returned: u64,
    /// Receive batch sizes, 0..=batch_max.
    pub rx_batch_sizes: LinearHistogram,
    drops: [u64; EngineDrop::ALL.len()],
}

impl EngineCounters {
    fn new(batch_max: usize) -> Self {
        Self {
            rx_batches: 0,
            polls: 0,
            idle_polls: 0,
            app_calls: 0,
            commands: 0,
            timers_fired: 0,
            buffers_returned: 0,
            rx_batch_sizes: LinearHistogram::new(batch_max),
            drops: [0; EngineDrop::ALL.len()],
        }
    }
    fn drop(&mut self, reason: EngineDrop) {
        self.drops[reason as usize] += 1;
    }
    /// Drops counted for `reason`.
    pub fn drops(&self, reason: EngineDrop) -> u64 {
        self.drops[reason as usize]
    }
}

/// One engine. See the crate documentation for the pass it runs.
pub struct Engine<T, A> {
    config: EngineConfig,
    transport: T,
    pool: PacketPool,
    app: A,
    timers: TimerWheel<u64>,
    app_timers: usize,
    events: EventQueue,
    counters: EngineCounters,
    started: bool,
}

impl<T: Transport, A: App> Engine<T, A> {
    /// Passes a neighbour the control plane learnt to the transport (see
    /// [`Transport::learn_neighbor`]); frames waiting for it leave in the next pass.
    pub fn learn_neighbor(
        &mut self,
        now_ns: u64,
        ip: std::net::Ipv4Addr,
        mac: melange_net::EthernetAddress,
    ) {
        self.transport
            .learn_neighbor(now_ns, &mut self.pool, ip, mac);
    }

    /// Builds an engine; every queue and table is allocated here and never grows.
    pub fn new(
        config: EngineConfig,
        transport: T,
        pool: PacketPool,
        app: A,
        now_ns: u64,
    ) -> Result<Self, EngineError> {
        config.validate()?;
        Ok(Self {
            timers: TimerWheel::new(config.timers_max, config.tick_ns, now_ns),
            app_timers: 0,
            events: EventQueue::new(config.events_max()),
            counters: EngineCounters::new(config.batch_max),
            config,
            transport,
            pool,
            app,
            started: false,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }
    /// The engine's counters.
    pub fn counters(&self) -> &EngineCounters {
        &self.counters
    }
    /// The transport's counters.
    pub fn transport_counters(&self) -> TransportCounters {
        self.transport.counters()
    }
    /// The app.
    pub fn app(&self) -> &A {
        &self.app
    }
    /// The app, writable (for a shell that reconfigures it between passes).
    pub fn app_mut(&mut self) -> &mut A {
        &mut self.app
    }
    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }
    /// The transport, writable (a test that scripts device faults).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }
    /// The packet pool.
    pub fn pool(&self) -> &PacketPool {
        &self.pool
    }

    /// The earliest time a pass has timer work to do (app timers, ARP retries).
    pub fn next_deadline_ns(&self) -> Option<u64> {
        match (self.timers.next_deadline_ns(), self.transport.poll_at()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// True once the app reports it has finished.
    pub fn is_done(&self) -> bool {
        self.app.is_done()
    }

    fn run_app(&mut self, now_ns: u64, start: bool) {
        let mut io = EngineIo {
            now_ns,
            transport: &mut self.transport,
            pool: &mut self.pool,
            timers: &mut self.timers,
            app_timers: &mut self.app_timers,
            app_timers_max: self.config.app_timers_max,
            events: &mut self.events,
            counters: &mut self.counters,
        };
        let mut context = IoContext::new(&mut io);
        if start {
            self.app.start(&mut context);
        } else {
            self.app.run_io(&mut context);
        }
        self.counters.app_calls += 1;
    }

    /// One run-to-completion pass. Returns the units of work done (frames received, timers
    /// fired and buffers returned); zero means the pass was idle.
    pub fn poll(&mut self, now_ns: u64) -> usize {
        self.counters.polls += 1;
        if !self.started {
            self.started = true;
            self.run_app(now_ns, true);
            self.transport.flush(now_ns, &mut self.pool);
        }

        // 1-2. Receive, bounded by the batch and by the room for events (unread events of
        // the last batch stay queued, so nothing is lost when the app falls behind).
        let received = self.transport.poll_receive(
            now_ns,
            &mut self.pool,
            &mut self.events,
            self.config.batch_max,
        );
        if received > 0 {
            self.counters.rx_batches += 1;
        }
        self.counters.rx_batch_sizes.record(received);

        // 3. Timers: the transport's, then buffers coming back, then the app's, as many as
        // fit in this batch.
        if self.transport.poll_at().is_some_and(|at| at <= now_ns) {
            self.transport.handle_timeout(now_ns, &mut self.pool);
        }
        let mut work = received;
        while self.events.room() > 0 {
            let Some(returned) = self.pool.take_returned() else {
                break;
            };
            let data = BufChain::from(returned.buf);
            self.pool.hand_over_chain(&data, FrameOwner::App);
            let result = returned.result.map_err(|dropped| match dropped {
                TxDropped::RingFull => SendError::TxQueueFull,
                TxDropped::Device => SendError::Backend,
                TxDropped::Unresolved => SendError::Unresolved,
            });
            let event = Event::SendDone {
                token: returned.token,
                result,
                data: Some(data),
            };
            if let Err(event) = self.events.push(event) {
                // Unreachable: the loop checked the room.
                self.counters.drop(EngineDrop::NotificationLost);
                if let Some(data) = event.into_data() {
                    self.pool.free_chain(data);
                }
            }
            self.counters.buffers_returned += 1;
            work += 1;
        }
        let mut fired = 0;
        while self.events.room() > 0 {
            let Some((key, token)) = self.timers.poll_expired(now_ns) else {
                break;
            };
            self.app_timers -= 1;
            let timer = Handle::from_parts(key.index, key.generation);
            // Room was checked above.
            let _ = self.events.push(Event::Timer { timer, token });
            fired += 1;
        }
        self.counters.timers_fired += fired as u64;
        work += fired;

        // 4-5. The app, whose commands run as it issues them.
        if !self.events.is_empty() {
            self.run_app(now_ns, false);
        }

        // 6. Transmit.
        self.transport.flush(now_ns, &mut self.pool);

        if work == 0 {
            self.counters.idle_polls += 1;
        }
        work
    }

    /// Stops the engine: returns every buffer held by the app's unread events, the
    /// transport and the device to the pool. Afterwards `pool().available()` equals the
    /// pool's capacity unless the app keeps buffers of its own.
    pub fn shutdown(&mut self) {
        while let Some(event) = self.events.pop() {
            if let Some(data) = event.into_data() {
                self.pool.free_chain(data);
            }
        }
        self.transport.shutdown(&mut self.pool);
        while let Some(returned) = self.pool.take_returned() {
            self.pool.free(returned.buf);
        }
    }

    /// Takes the engine apart after [`Engine::shutdown`], giving back the app and the
    /// transport.
    pub fn into_parts(self) -> (A, T, PacketPool, EngineCounters) {
        (self.app, self.transport, self.pool, self.counters)
    }
}

/// The engine's side of [`Io`] for one `run_io` call: borrows the parts a command needs.
struct EngineIo<'a, T> {
    now_ns: u64,
    transport: &'a mut T,
    pool: &'a mut PacketPool,
    timers: &'a mut TimerWheel<u64>,
    app_timers: &'a mut usize,
    app_timers_max: usize,
    events: &'a mut EventQueue,
    counters: &'a mut EngineCounters,
}

fn timer_key(timer: TimerId) -> TimerKey {
    TimerKey {
        index: timer.index(),
        generation: timer.generation(),
    }
}

fn timer_error(error: TimerError) -> CommandError {
    match error {
        TimerError::Full => CommandError::TimerWheelFull,
        TimerError::Stale => CommandError::Handle(HandleError::Stale),
    }
}

impl<T: Transport> EngineIo<'_, T> {
    fn run(&mut self, command: Command) -> Result<Outcome, Refused> {
        match command {
            Command::BindUdp { port } => self
                .transport
                .bind_udp(port)
                .map(Outcome::Socket)
                .map_err(Refused::new),
            Command::CloseUdp { socket } => self
                .transport
                .close_udp(socket)
                .map(|()| Outcome::Done)
                .map_err(Refused::new),
            Command::SendTo {
                socket,
                to,
                data,
                notify,
            } => self
                .transport
                .send_to(self.now_ns, self.pool, socket, to, data, notify)
                .map(|()| Outcome::Done),
            Command::ArmTimer { deadline_ns, token } => {
                if *self.app_timers >= self.app_timers_max {
                    self.counters.drop(EngineDrop::TimerRefused);
                    return Err(Refused::new(CommandError::TimerQuota {
                        quota: self.app_timers_max,
                    }));
                }
                let key = self.timers.insert(deadline_ns, token).map_err(|error| {
                    self.counters.drop(EngineDrop::TimerRefused);
                    Refused::new(timer_error(error))
                })?;
                *self.app_timers += 1;
                Ok(Outcome::Timer(Handle::from_parts(
                    key.index,
                    key.generation,
                )))
            }
            Command::RearmTimer { timer, deadline_ns } => self
                .timers
                .reschedule(timer_key(timer), deadline_ns)
                .map(|()| Outcome::Done)
                .map_err(|e| Refused::new(timer_error(e))),
            Command::CancelTimer { timer } => {
                let token = self
                    .timers
                    .cancel(timer_key(timer))
                    .map_err(|e| Refused::new(timer_error(e)))?;
                *self.app_timers -= 1;
                Ok(Outcome::Token(token))
            }
            other => self.transport.submit(self.now_ns, self.pool, other),
        }
    }
}

impl<T: Transport> Io for EngineIo<'_, T> {
    fn now_ns(&self) -> u64 {
        self.now_ns
    }
    fn events(&mut self) -> &mut EventQueue {
        self.events
    }
    fn events_ref(&self) -> &EventQueue {
        self.events
    }
    fn submit(&mut self, command: Command) -> Result<Outcome, Refused> {
        self.counters.commands += 1;
        let outcome = self.run(command);
        if outcome.is_err() {
            self.counters.drop(EngineDrop::CommandRefused);
        }
        outcome
    }
    fn send_datagram(
        &mut self,
        socket: melange_core::SocketId,
        to: std::net::SocketAddrV4,
        data: BufChain,
        notify: Option<u64>,
    ) -> Result<(), Refused> {
        self.counters.commands += 1;
        let outcome = self
            .transport
            .send_to(self.now_ns, self.pool, socket, to, data, notify);
        if outcome.is_err() {
            self.counters.drop(EngineDrop::CommandRefused);
        }
        outcome
    }
    fn alloc(&mut self) -> Option<PacketBuf> {
        self.pool.alloc_for(FrameOwner::App)
    }
    fn free(&mut self, buf: PacketBuf) {
        debug_assert!(
            self.pool.is_held_by(&buf, FrameOwner::App),
            "the app freed frame {} it does not hold",
            buf.index()
        );
        self.pool.free(buf);
    }
    fn free_chain(&mut self, chain: BufChain) {
        self.pool.free_chain(chain);
    }
    fn payload(&self, buf: &PacketBuf) -> &[u8] {
        self.pool.data(buf)
    }
    fn payload_mut(&mut self, buf: &PacketBuf) -> &mut [u8] {
        self.pool.data_mut(buf)
    }
    fn set_payload_len(&mut self, buf: &mut PacketBuf, len: usize) -> Result<(), PoolError> {
        self.pool.set_len(buf, len)
    }
    fn tailroom(&self, buf: &PacketBuf) -> usize {
        self.pool.tailroom(buf)
    }
    fn chain_pop_front(&mut self, chain: BufChain) -> (PacketBuf, Option<BufChain>) {
        self.pool.chain_pop_front(chain)
    }
    fn chain_push(
        &mut self,
        chain: &mut BufChain,
        buf: PacketBuf,
    ) -> Result<(), (PoolError, PacketBuf)> {
        self.pool.chain_push(chain, buf)
    }
    fn chain_read(&self, chain: &BufChain, offset: usize, out: &mut [u8]) -> usize {
        self.pool.chain_read(chain, offset, out)
    }
}
