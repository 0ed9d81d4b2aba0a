//! `melange demo`: the README's first command.
//!
//! Runs Melange's echo and the Linux baseline side by side on this machine, with Melange's own
//! load generator, and prints the comparison table. It needs no privileges: both run on the
//! kernel backend on 127.0.0.1. (Kernel bypass over AF_XDP in a namespace lab comes with the
//! af_xdp backend.)

use crate::bench::{self, KernelEchoArgs};
use crate::util::parse_duration;
use anyhow::Result;
use std::time::Duration;

/// Arguments of `melange demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Measured time per run.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Repetitions per measurement (medians are shown).
    #[arg(long, default_value_t = 1)]
    pub reps: usize,
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> Result<()> {
    println!(
        "Melange demo: 64-byte UDP echo on 127.0.0.1, server on cpu 0, load generator on cpu 1"
    );
    println!("(kernel backend: the kernel does IP and UDP, Melange's engine does batching and the app contract)\n");
    let results = bench::kernel_echo(&KernelEchoArgs {
        reps: args.reps,
        duration: args.duration,
        warmup: Duration::from_millis(300),
        inflight: vec![1, 32],
        payload: 64,
        server_cpu: 0,
        client_cpu: 1,
        port: 27777,
        json: None,
    })?;
    let _ = results;
    Ok(())
}
