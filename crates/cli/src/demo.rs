//! `melange demo`: the README's first command.
//!
//! With the privileges to build the namespace lab (root), it brings the lab up (threaded NAPI,
//! each host's receive work on its own core), runs echo on AF_XDP against the Linux baseline
//! and a raw AF_XDP echo, prints the comparison, and takes the lab down again if it created
//! it (a lab that was already there is left as it was). Without them it says so and runs
//! Melange's echo on the kernel backend against the same Linux baseline on 127.0.0.1.

use anyhow::Result;
use melange_bench::{self as bench, EchoRunArgs, KernelEchoArgs, LabEchoArgs};
use melange_control::options::parse_duration;
use std::process::Command;
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
    /// Skip the lab even when it could be built: kernel backend on 127.0.0.1 only.
    #[arg(long)]
    pub no_lab: bool,
}

/// Whether any part of the lab exists now (a namespace of it), as `lab status` reports.
fn lab_exists(exe: &std::path::Path) -> bool {
    let Ok(out) = Command::new(exe).args(["lab", "status", "--json"]).output() else {
        return false;
    };
    let Ok(status) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return false;
    };
    status["namespaces"]
        .as_array()
        .is_some_and(|list| list.iter().any(|ns| ns["exists"] == true))
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> Result<()> {
    let exe = std::env::current_exe()?;
    // The same load on either path: 64-byte requests at 1 and 32 in flight, server on cpu 0.
    let run = EchoRunArgs {
        reps: args.reps,
        duration: args.duration,
        warmup: Duration::from_millis(300),
        inflight: vec![1, 32],
        payload: 64,
        server_cpu: 0,
        client_cpu: 1,
        json: None,
    };
    if !args.no_lab {
        // A lab that is already there (with whatever runs in it) is used and left as it was;
        // only a lab this demo creates is taken down again.
        let existed = lab_exists(&exe);
        let up = Command::new(&exe)
            .args(["lab", "up", "--napi", "threaded"])
            .output()?;
        if up.status.success() {
            println!("Melange demo: 64-byte UDP echo in the namespace lab (mlg-a -> mlg-b over a veth pair),");
            println!("server on cpu 0, Melange's AF_XDP load generator on cpu 1, each host's receive work on its own core.\n");
            let result = bench::lab_echo::run(&LabEchoArgs {
                run: run.clone(),
                delay_us: Vec::new(),
                napi: melange_lab::NapiMode::Threaded,
            });
            if existed {
                println!("(the lab existed before the demo and is left up: `melange lab down` removes it)");
            } else {
                let down = Command::new(&exe).args(["lab", "down"]).output();
                if let Ok(down) = down {
                    if !down.status.success() {
                        eprintln!("lab down failed: {}", String::from_utf8_lossy(&down.stderr));
                    }
                }
            }
            return result.map(|_| ());
        }
        let stderr = String::from_utf8_lossy(&up.stderr);
        // The reason is anyhow's first line ("Error: ..."), never a backtrace line after it.
        let reason = stderr
            .lines()
            .find_map(|line| line.strip_prefix("Error: "))
            .unwrap_or("melange lab up failed");
        println!(
            "No namespace lab ({reason}): running on the kernel backend on 127.0.0.1 instead."
        );
    }
    println!(
        "Melange demo: 64-byte UDP echo on 127.0.0.1, server on cpu 0, load generator on cpu 1"
    );
    println!("(kernel backend: the kernel does IP and UDP, Melange's engine does batching and the app contract)\n");
    bench::kernel_echo(&KernelEchoArgs { run, port: 27777 })?;
    Ok(())
}
