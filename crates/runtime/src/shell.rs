//! Engine threads: pinning, the idle policy, and stopping.
//!
//! Each engine runs on its own thread, pinned to one core, and is *built on that thread*:
//! its pool is first touched there (local memory) and its NIC queue never crosses threads.
//! The loop reads the clock once per pass and calls [`Engine::poll`].
//!
//! Idle policy, per engine ([`IdlePolicy`]):
//! - `Spin`: poll forever. Lowest latency, one core burnt (Snap's "dedicated cores").
//! - `Sleep { spin_polls }`: after `spin_polls` empty passes, block in `ppoll` on the NIC
//!   queue's wakeup fd and the engine's stop eventfd, until the next timer at the latest
//!   (Snap's "spreading" mode). Waking an idle vCPU costs 20-25 µs on this VM, which is why
//!   the spin comes first.
//!
//! Busy time: the loop adds up the wall-clock time of the passes that found work (a pass ends
//! where the next one reads the clock, so this costs no extra clock read), capped at the
//! thread's CPU time, since wall-clock time includes moments the thread was not running. A spinning engine's CPU time is always
//! 100% of its core; its busy time says how much of that the work needed, so busy time per
//! request estimates what one core can serve when the load generator cannot saturate it.
//!
//! Reporting: once a second the loop looks at the counters: new device errors are logged
//! (rate-limited: one line per second with their number and the last one), and at `debug` a
//! live line of counters shows what the engine is doing while it runs.
//!
//! Stopping: [`StopSignal::stop`] sets a flag that each pass reads (one relaxed load) and
//! signals every engine's eventfd, so a sleeping engine wakes at once.
//!
//! Control messages: an engine started with [`spawn_engine_with_control`] also has a bounded
//! inbox ([`control_channel`]) through which the control plane tells it what it learnt, such
//! as a neighbour from the kernel's table. The loop looks at it at most once per
//! [`CONTROL_INTERVAL_NS`] (a cold path; never per packet), and a sleeping engine is woken by
//! the sender through the same eventfd as the stop signal.

use melange_core::App;
use melange_engine::{Engine, EngineCounters, Transport, TransportCounters};
use melange_sys::eventfd::EventFd;
use melange_sys::{clock, cpu, poll};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// The longest an idle engine sleeps without a timer, so a lost wakeup costs at most this.
const IDLE_SLEEP_NS_MAX: u64 = 100_000_000;
/// How often a running engine looks at its counters: to log new device errors (at most once
/// per interval, with how many there were and the last one) and, at `debug`, a live line of
/// counters.
const REPORT_INTERVAL_NS: u64 = 1_000_000_000;

/// What an engine does when a pass finds no work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdlePolicy {
    /// Poll again at once.
    Spin,
    /// Poll `spin_polls` more times, then sleep until the NIC, a timer or a stop wakes it.
    Sleep {
        /// Empty passes before sleeping.
        spin_polls: u32,
    },
}

impl std::str::FromStr for IdlePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "spin" => Ok(IdlePolicy::Spin),
            "sleep" => Ok(IdlePolicy::Sleep { spin_polls: 0 }),
            _ => match s.strip_prefix("sleep:").map(str::parse) {
                Some(Ok(spin_polls)) => Ok(IdlePolicy::Sleep { spin_polls }),
                _ => Err(format!(
                    "idle policy '{s}': expected spin, sleep or sleep:SPIN_POLLS"
                )),
            },
        }
    }
}

/// Where and how one engine thread runs.
#[derive(Debug, Clone)]
pub struct ShellConfig {
    /// Thread name.
    pub name: String,
    /// Core to pin to, if any.
    pub cpu: Option<usize>,
    /// Idle policy.
    pub idle: IdlePolicy,
}

/// Most control messages waiting in one engine's inbox; a sender that finds it full gets
/// [`ControlSendError::Full`] and tries again later (the kernel's neighbour table is re-read
/// all the time, so nothing is lost for good).
pub const CONTROL_QUEUE_MAX: usize = 1024;

/// How often a running engine looks at its control inbox: 1 ms, so a neighbour the kernel
/// learnt reaches the engine well before an ARP retry would.
pub const CONTROL_INTERVAL_NS: u64 = 1_000_000;

/// Checks of [`Transport::rx_ready`] a spinning engine makes after an idle pass before it runs
/// the next pass anyway (each check is one ring-index load and one `spin_loop` pause, tens of
/// nanoseconds at most).
pub const IDLE_RX_CHECKS_MAX: u32 = 32;

/// Most control messages an engine takes in one look, so the control plane cannot stall it.
const CONTROL_BATCH_MAX: usize = 64;

/// What the control plane tells a running engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlMessage {
    /// `ip` is at `mac` (see [`Engine::learn_neighbor`]).
    Neighbor {
        /// The neighbour's address.
        ip: std::net::Ipv4Addr,
        /// Its MAC address.
        mac: melange_net::EthernetAddress,
    },
}

/// Why a control message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ControlSendError {
    /// The inbox holds [`CONTROL_QUEUE_MAX`] messages; try again later.
    #[error("the engine's control inbox is full ({CONTROL_QUEUE_MAX} messages); try again later")]
    Full,
    /// The engine has ended.
    #[error("the engine has ended")]
    Gone,
}

/// The control plane's end of an engine's inbox.
#[derive(Debug, Clone)]
pub struct ControlSender {
    tx: SyncSender<ControlMessage>,
    waker: Arc<EventFd>,
}

impl ControlSender {
    /// Queues `message` and wakes the engine if it sleeps.
    pub fn send(&self, message: ControlMessage) -> Result<(), ControlSendError> {
        self.tx.try_send(message).map_err(|e| match e {
            TrySendError::Full(_) => ControlSendError::Full,
            TrySendError::Disconnected(_) => ControlSendError::Gone,
        })?;
        let _ = self.waker.signal();
        Ok(())
    }
}

/// An engine's end of its control inbox; give it to [`spawn_engine_with_control`].
#[derive(Debug)]
pub struct ControlInbox {
    rx: Receiver<ControlMessage>,
    waker: Arc<EventFd>,
}

/// A bounded control channel for one engine ([`CONTROL_QUEUE_MAX`] messages).
pub fn control_channel() -> std::io::Result<(ControlSender, ControlInbox)> {
    let (tx, rx) = sync_channel(CONTROL_QUEUE_MAX);
    let waker = Arc::new(EventFd::new()?);
    Ok((
        ControlSender {
            tx,
            waker: waker.clone(),
        },
        ControlInbox { rx, waker },
    ))
}

/// Stops a set of engines, sleeping or not.
#[derive(Clone, Default)]
pub struct StopSignal {
    flag: Arc<AtomicBool>,
    wakers: Arc<Mutex<Vec<Arc<EventFd>>>>,
}

impl StopSignal {
    /// A signal not yet raised.
    pub fn new() -> Self {
        Self::default()
    }
    /// Raises the signal and wakes every engine.
    pub fn stop(&self) {
        // Release pairs with the Acquire load in `is_stopped`: whatever the stopper wrote
        // before stopping is visible to the engine that sees the flag.
        self.flag.store(true, Ordering::Release);
        let wakers = self
            .wakers
            .lock()
            .expect("no engine panics while holding the waker list");
        for waker in wakers.iter() {
            let _ = waker.signal();
        }
    }
    /// True once raised.
    pub fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
    fn register(&self, waker: Arc<EventFd>) {
        self.wakers
            .lock()
            .expect("no engine panics while holding the waker list")
            .push(waker);
    }
}

/// What an engine thread hands back when it ends.
#[derive(Debug)]
pub struct EngineOutcome<A, T> {
    /// The app, with whatever it measured.
    pub app: A,
    /// The transport, with its own counters.
    pub transport: T,
    /// The engine's counters.
    pub counters: EngineCounters,
    /// The transport's counters (device errors by kind among them).
    pub transport_counters: TransportCounters,
    /// Stack counters, when the engine ran one.
    pub net: Option<melange_net::NetCounters>,
    /// Pool frames free after shutdown.
    pub pool_available: usize,
    /// Pool frames in all.
    pub pool_capacity: usize,
    /// CPU time the thread used, in ns.
    pub cpu_time_ns: u64,
    /// Time of the passes that found work, in ns, at most the CPU time (see the module
    /// documentation).
    pub busy_ns: u64,
}

/// Why an engine thread could not run.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// Pinning the thread to its core failed; pick a core this process may use
    /// (`taskset -p $$` shows them).
    #[error("pinning {thread} to cpu {cpu}: {source}")]
    Pin {
        /// The thread's name.
        thread: String,
        /// The core.
        cpu: usize,
        /// The error.
        source: std::io::Error,
    },
    /// Building the engine failed; the message says what to fix.
    #[error("starting {thread}: {message}")]
    Build {
        /// The thread's name.
        thread: String,
        /// What went wrong.
        message: String,
    },
}

/// Busy-waits `ns` nanoseconds on the monotonic clock: simulated application work.
pub fn spin_ns(ns: u64) {
    let end = clock::monotonic_ns() + ns;
    while clock::monotonic_ns() < end {
        std::hint::spin_loop();
    }
}

/// Starts an engine thread. `build` runs on the new thread (after pinning) and makes the
/// engine (its error, if any, becomes [`ShellError::Build`]); the thread then runs passes
/// until the app is done or `stop` is raised, shuts the engine down and returns its parts.
pub fn spawn_engine<T, A, F, E>(
    config: ShellConfig,
    stop: StopSignal,
    build: F,
) -> std::io::Result<JoinHandle<Result<EngineOutcome<A, T>, ShellError>>>
where
    T: Transport + Send + 'static,
    A: App + Send + 'static,
    F: FnOnce(u64) -> Result<Engine<T, A>, E> + Send + 'static,
    E: std::fmt::Display,
{
    spawn_engine_with_control(config, stop, None, build)
}

/// [`spawn_engine`] for the shape every kernel-backend tool shares: `app` on kernel sockets
/// bound as `options` says, over a heap pool shaped by `pool`. The sockets and the pool are
/// made on the engine's own thread, after pinning.
pub fn spawn_kernel_engine<A>(
    shell: ShellConfig,
    stop: StopSignal,
    options: crate::KernelOptions,
    engine: melange_engine::EngineConfig,
    pool: melange_core::PoolConfig,
    app: A,
) -> std::io::Result<JoinHandle<Result<EngineOutcome<A, crate::KernelTransport>, ShellError>>>
where
    A: App + Send + 'static,
{
    spawn_engine(shell, stop, move |now| {
        let addr = options.addr;
        let transport = crate::KernelTransport::new(options)
            .map_err(|e| format!("kernel sockets on {addr}: {e}"))?;
        let pool = melange_core::PacketPool::new(pool).map_err(|e| e.to_string())?;
        Engine::new(engine, transport, pool, app, now).map_err(|e| e.to_string())
    })
}

/// [`spawn_engine`], with a control inbox the engine reads while it runs.
pub fn spawn_engine_with_control<T, A, F, E>(
    config: ShellConfig,
    stop: StopSignal,
    control: Option<ControlInbox>,
    build: F,
) -> std::io::Result<JoinHandle<Result<EngineOutcome<A, T>, ShellError>>>
where
    T: Transport + Send + 'static,
    A: App + Send + 'static,
    F: FnOnce(u64) -> Result<Engine<T, A>, E> + Send + 'static,
    E: std::fmt::Display,
{
    let waker = match &control {
        Some(inbox) => inbox.waker.clone(),
        None => Arc::new(EventFd::new()?),
    };
    stop.register(waker.clone());
    std::thread::Builder::new()
        .name(config.name.clone())
        .spawn(move || {
            if let Some(core) = config.cpu {
                cpu::pin_current_thread(core).map_err(|source| ShellError::Pin {
                    thread: config.name.clone(),
                    cpu: core,
                    source,
                })?;
            }
            let mut engine = build(clock::monotonic_ns()).map_err(|e| ShellError::Build {
                thread: config.name.clone(),
                message: e.to_string(),
            })?;
            let cpu_start = cpu::thread_cpu_time_ns();
            let busy_ns =
                run_with_control(&mut engine, config.idle, &stop, &waker, control.as_ref());
            let cpu_time_ns = cpu::thread_cpu_time_ns() - cpu_start;
            engine.shutdown();
            let net = engine.transport().stack_counters();
            let transport_counters = engine.transport_counters();
            let pool_available = engine.pool().available();
            let pool_capacity = engine.pool().capacity();
            let (app, transport, _pool, counters) = engine.into_parts();
            Ok(EngineOutcome {
                app,
                transport,
                counters,
                transport_counters,
                net,
                pool_available,
                pool_capacity,
                cpu_time_ns,
                // Wall-clock time of busy passes includes time the thread was preempted, so
                // it can exceed the CPU time the thread got; what the work needed is at most
                // that.
                busy_ns: busy_ns.min(cpu_time_ns),
            })
        })
}

/// Logs device errors seen since the last report (at most once per interval) and, at
/// `debug`, a live line of counters.
struct Reporter {
    next_ns: u64,
    errors_seen: u64,
}

impl Reporter {
    fn new(now_ns: u64) -> Self {
        Self {
            next_ns: now_ns + REPORT_INTERVAL_NS,
            errors_seen: 0,
        }
    }

    #[cold]
    fn report<T: Transport, A: App>(&mut self, now_ns: u64, engine: &Engine<T, A>) {
        self.next_ns = now_ns + REPORT_INTERVAL_NS;
        let transport = engine.transport_counters();
        let errors = transport.errors.total();
        let id = engine.config().id;
        if errors > self.errors_seen {
            if let Some(last) = transport.errors.last() {
                tracing::warn!(
                    "engine {id}: {} device error(s) in the last second ({} in all); last: {last}",
                    errors - self.errors_seen,
                    errors,
                );
            }
            self.errors_seen = errors;
        }
        let counters = engine.counters();
        tracing::debug!(
            "engine {id}: rx {} tx {} tx_dropped {} tx_no_room {} app_calls {} timers {} \
             errors {errors} pool free {}/{}",
            transport.rx_packets,
            transport.tx_packets,
            transport.tx_dropped,
            transport.tx_no_room,
            counters.app_calls,
            counters.timers_fired,
            engine.pool().available(),
            engine.pool().capacity(),
        );
    }
}

/// The engine loop of one thread, until `stop` or the app is done. Returns the busy time in
/// ns. See the module documentation.
pub fn run<T: Transport, A: App>(
    engine: &mut Engine<T, A>,
    idle: IdlePolicy,
    stop: &StopSignal,
    waker: &EventFd,
) -> u64 {
    run_with_control(engine, idle, stop, waker, None)
}

/// Takes at most [`CONTROL_BATCH_MAX`] messages from `inbox` into `engine`.
#[cold]
fn take_control<T: Transport, A: App>(
    now_ns: u64,
    engine: &mut Engine<T, A>,
    inbox: &ControlInbox,
    idle: IdlePolicy,
) {
    // Only an engine that sleeps waits on the eventfd, so only it needs the signal cleared
    // (before it reads the inbox, so a message sent meanwhile signals it again); a spinning
    // engine reads the inbox without a system call.
    if matches!(idle, IdlePolicy::Sleep { .. }) {
        inbox.waker.drain();
    }
    for message in inbox.rx.try_iter().take(CONTROL_BATCH_MAX) {
        match message {
            ControlMessage::Neighbor { ip, mac } => engine.learn_neighbor(now_ns, ip, mac),
        }
    }
}

/// [`run`], also taking control messages from `control`.
pub fn run_with_control<T: Transport, A: App>(
    engine: &mut Engine<T, A>,
    idle: IdlePolicy,
    stop: &StopSignal,
    waker: &EventFd,
    control: Option<&ControlInbox>,
) -> u64 {
    let mut next_control_ns = 0;
    let mut idle_passes: u32 = 0;
    let mut busy_ns = 0;
    // Start of the last pass if it found work: it ended when the next pass reads the clock.
    let mut busy_since = None;
    let mut reporter = Reporter::new(clock::monotonic_ns());
    while !stop.is_stopped() && !engine.is_done() {
        let now = clock::monotonic_ns();
        if let Some(start) = busy_since.take() {
            busy_ns += now.saturating_sub(start);
        }
        if now >= reporter.next_ns {
            reporter.report(now, engine);
        }
        if let Some(inbox) = control {
            if now >= next_control_ns {
                next_control_ns = now + CONTROL_INTERVAL_NS;
                take_control(now, engine, inbox, idle);
            }
        }
        if engine.poll(now) > 0 {
            busy_since = Some(now);
            idle_passes = 0;
            continue;
        }
        match idle {
            IdlePolicy::Spin => {
                // Wait for input on the device's ring index, not with whole passes: an idle
                // pass reads the clock, the timers and every ring (~170 ns on the lab's
                // AF_XDP queue), which at one request in flight is the time a new request
                // waits to be seen. The bound keeps timers, completions, control messages
                // and the stop signal at most a few microseconds late.
                for _ in 0..IDLE_RX_CHECKS_MAX {
                    if engine.transport().rx_ready() {
                        break;
                    }
                    std::hint::spin_loop();
                }
            }
            IdlePolicy::Sleep { spin_polls } => {
                idle_passes = idle_passes.saturating_add(1);
                if idle_passes <= spin_polls {
                    continue;
                }
                let timeout = engine.next_deadline_ns().map_or(IDLE_SLEEP_NS_MAX, |d| {
                    d.saturating_sub(now).min(IDLE_SLEEP_NS_MAX)
                });
                if timeout == 0 {
                    continue;
                }
                let waker_fd = std::os::fd::AsFd::as_fd(waker);
                let result = match engine.transport().wakeup_fd() {
                    Some(fd) => poll::wait_readable(&[fd, waker_fd], Some(timeout)),
                    None => poll::wait_readable(&[waker_fd], Some(timeout)),
                };
                if let Err(err) = result {
                    tracing::warn!("engine {}: ppoll failed: {err}", engine.config().id);
                }
                idle_passes = 0;
            }
        }
    }
    if let Some(start) = busy_since {
        busy_ns += clock::monotonic_ns().saturating_sub(start);
    }
    reporter.report(clock::monotonic_ns(), engine);
    busy_ns
}
