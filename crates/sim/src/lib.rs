//! A deterministic network simulator for Melange engines (TigerBeetle's VOPR and smoltcp's
//! netsim in spirit).
//!
//! Real engines, real stacks and real apps run unchanged; only the NIC ([`SimNic`]) and the
//! clock are simulated. A [`Network`] is a switch: every port has a MAC; frames go to the port
//! that owns their destination MAC, broadcasts go to every other port. Each port's outgoing
//! frames pass an impairment stage ([`Impairments`]) driven by one seeded RNG: loss, delay with
//! jitter (so frames reorder), duplication, truncation and single-bit corruption.
//!
//! Time is virtual. [`Simulation::run`] polls every node until nothing more happens at the
//! current instant, then jumps to the next event (a delivery or a node's timer). CPU time is
//! free in this model; what is tested is behaviour under adversity, not speed.
//!
//! Determinism: the only randomness is [`SimRng`] (SplitMix64, stable across platforms and
//! versions), seeded per run, and nothing iterates a hash map. A failing seed replays exactly:
//! [`check_seeds`] prints it and honours `MELANGE_SIM_SEED` to rerun one seed.
#![forbid(unsafe_code)]

/// Frame builders for tests, fuzz seeds and benchmarks (they live in `melange-wire` now).
pub use melange_wire::frames;
mod network;
pub mod pipe;
pub mod replay;

/// The simulator's only source of randomness: SplitMix64 from `melange-core`.
pub use melange_core::rng::SplitMix64 as SimRng;

/// What every simulated NIC ([`SimNic`], [`PipeNic`], [`ReplayNic`]) offers: no offloads, one
/// frame per packet, copies (the simulator moves bytes between pools), frames of 2 KiB like
/// the AF_XDP UMEM's.
pub const SIM_NIC_CAPS: melange_engine::NicCaps = melange_engine::NicCaps {
    tx_checksum_offload: false,
    multi_buffer: false,
    zero_copy: false,
    frame_len_max: 2048,
};
pub use network::{Impairments, Link, Network, NetworkStats, Node, PortStats, SimNic, Simulation};
pub use pipe::PipeNic;
pub use replay::ReplayNic;

/// Runs `scenario` for every seed in `seeds` (or only `MELANGE_SIM_SEED` when set). On a
/// failure, panics with the seed and the command that replays it.
pub fn check_seeds(
    seeds: std::ops::Range<u64>,
    scenario: impl Fn(u64) + std::panic::RefUnwindSafe,
) {
    let seeds: Vec<u64> = match std::env::var("MELANGE_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("MELANGE_SIM_SEED must be an integer")],
        Err(_) => seeds.collect(),
    };
    for seed in seeds {
        if let Err(panic) = std::panic::catch_unwind(|| scenario(seed)) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("simulation failed with seed {seed}: {message}\nreplay: MELANGE_SIM_SEED={seed} cargo test ...");
        }
    }
}
