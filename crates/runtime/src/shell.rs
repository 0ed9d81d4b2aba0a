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
//! where the next one reads the clock, so this costs no extra clock read). A spinning engine's CPU time is always
//! 100% of its core; its busy time says how much of that the work needed, so busy time per
//! request estimates what one core can serve when the load generator cannot saturate it.
//!
//! Stopping: [`StopSignal::stop`] sets a flag that each pass reads (one relaxed load) and
//! signals every engine's eventfd, so a sleeping engine wakes at once.

use melange_core::App;
use melange_engine::{Engine, EngineCounters, NicQueue};
use melange_sys::eventfd::EventFd;
use melange_sys::{clock, cpu, poll};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// The longest an idle engine sleeps without a timer, so a lost wakeup costs at most this.
const IDLE_SLEEP_NS_MAX: u64 = 100_000_000;

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
pub struct EngineOutcome<A, N> {
    /// The app, with whatever it measured.
    pub app: A,
    /// The NIC queue, with its counters.
    pub nic: N,
    /// The engine's counters.
    pub counters: EngineCounters,
    /// Stack counters, when the engine ran one.
    pub net: Option<melange_net::NetCounters>,
    /// Pool frames free after shutdown.
    pub pool_available: usize,
    /// Pool frames in all.
    pub pool_capacity: usize,
    /// CPU time the thread used, in ns.
    pub cpu_time_ns: u64,
    /// Wall-clock time of the passes that found work, in ns (see the module documentation).
    pub busy_ns: u64,
}

/// Busy-waits `ns` nanoseconds on the monotonic clock: simulated application work.
pub fn spin_ns(ns: u64) {
    let end = clock::monotonic_ns() + ns;
    while clock::monotonic_ns() < end {
        std::hint::spin_loop();
    }
}

/// Starts an engine thread. `build` runs on the new thread (after pinning) and makes the
/// engine; the thread then runs passes until the app is done or `stop` is raised, shuts the
/// engine down and returns its parts.
pub fn spawn_engine<N, A, F>(
    config: ShellConfig,
    stop: StopSignal,
    build: F,
) -> std::io::Result<JoinHandle<Result<EngineOutcome<A, N>, String>>>
where
    N: NicQueue + 'static,
    A: App + Send + 'static,
    N: Send,
    F: FnOnce(u64) -> Result<Engine<N, A>, String> + Send + 'static,
{
    let waker = Arc::new(EventFd::new()?);
    stop.register(waker.clone());
    std::thread::Builder::new()
        .name(config.name.clone())
        .spawn(move || {
            if let Some(core) = config.cpu {
                cpu::pin_current_thread(core)
                    .map_err(|e| format!("pinning {} to cpu {core}: {e}", config.name))?;
            }
            let mut engine = build(clock::monotonic_ns())?;
            let cpu_start = cpu::thread_cpu_time_ns();
            let busy_ns = run(&mut engine, config.idle, &stop, &waker);
            let cpu_time_ns = cpu::thread_cpu_time_ns() - cpu_start;
            engine.shutdown();
            let net = engine.interface().map(|i| i.counters().clone());
            let pool_available = engine.pool().available();
            let pool_capacity = engine.pool().capacity();
            let (app, nic, _pool, counters) = engine.into_parts();
            Ok(EngineOutcome {
                app,
                nic,
                counters,
                net,
                pool_available,
                pool_capacity,
                cpu_time_ns,
                busy_ns,
            })
        })
}

/// The engine loop of one thread, until `stop` or the app is done. Returns the busy time in
/// ns. See the module documentation.
pub fn run<N: NicQueue, A: App>(
    engine: &mut Engine<N, A>,
    idle: IdlePolicy,
    stop: &StopSignal,
    waker: &EventFd,
) -> u64 {
    let mut idle_passes: u32 = 0;
    let mut busy_ns = 0;
    // Start of the last pass if it found work: it ended when the next pass reads the clock.
    let mut busy_since = None;
    while !stop.is_stopped() && !engine.is_done() {
        let now = clock::monotonic_ns();
        if let Some(start) = busy_since.take() {
            busy_ns += now.saturating_sub(start);
        }
        if engine.poll(now) > 0 {
            busy_since = Some(now);
            idle_passes = 0;
            continue;
        }
        match idle {
            IdlePolicy::Spin => std::hint::spin_loop(),
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
                let result = match engine.nic().wakeup_fd() {
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
    busy_ns
}
