//! Baselines that Melange is measured against, in the same run.
//!
//! `melange-baseline udp-echo` is the plain Linux UDP echo server of the benchmarks: the kernel
//! does Ethernet, IP and UDP; the program receives up to `--batch` datagrams with one
//! `recvmmsg`, and sends them back with one `sendmmsg`. It is deliberately ordinary, a
//! well-written server of the kind Melange claims to beat, with no Melange code on its path
//! beyond the thin system-call wrappers in `melange-sys`.
//!
//! Two idle modes: `spin` retries `recvmmsg` without sleeping (the kernel's best latency,
//! one core burnt), `block` sleeps in `ppoll` until a datagram arrives (the usual server).
//!
//! `melange-baseline tcp-echo` is the Linux TCP echo server of the TCP benchmarks: epoll,
//! non-blocking sockets, `TCP_NODELAY`, a read and a write per readable connection (see
//! [`tcp_echo`]).
//!
//! `melange-baseline xdp-echo` is the driver limit: a minimal raw AF_XDP UDP echo with no stack,
//! which turns each datagram around in its UMEM frame (see [`xdp_echo`]).
//!
//! The crate is a library with a thin `melange-baseline` binary, and the `melange` binary runs
//! the same code as `melange baseline ...` (a hidden subcommand). So the benchmarks need only
//! the `melange` executable (`cargo run -- demo` builds nothing else), while each baseline still
//! runs alone in its own process with none of Melange's engine, stack or runtime code.
#![forbid(unsafe_code)]

pub mod tcp_echo;
pub mod xdp_echo;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use melange_sys::udp::{RecvSlot, SendSlot, UdpBatchSocket, UdpSocketOptions};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;

/// Baselines Melange is measured against.
#[derive(Parser, Debug)]
#[command(name = "melange-baseline", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// The subcommands are named by what they echo (`udp-echo`, `tcp-echo`, `xdp-echo`), which
// is what an operator types.
#[allow(clippy::enum_variant_names)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Plain Linux UDP echo server with recvmmsg/sendmmsg batches.
    UdpEcho(UdpEchoArgs),
    /// Minimal raw AF_XDP UDP echo with no stack: the driver limit.
    XdpEcho(xdp_echo::XdpEchoArgs),
    /// Plain Linux TCP echo server: one thread, epoll, non-blocking sockets.
    TcpEcho(tcp_echo::TcpEchoArgs),
}

#[derive(clap::Args, Debug)]
struct UdpEchoArgs {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    addr: Ipv4Addr,
    /// UDP port.
    #[arg(long, default_value_t = 7778)]
    port: u16,
    /// Datagrams per recvmmsg/sendmmsg.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Core to pin to (`--cpus`, as on every melange command; `--cpu` also works).
    #[arg(long = "cpus", visible_alias = "cpu")]
    cpu: Option<usize>,
    /// Idle behaviour.
    #[arg(long, value_enum, default_value_t = IdleMode::Spin)]
    idle: IdleMode,
    /// Simulated work per request, in microseconds (a spin, as in Arrakis' echo benchmark).
    #[arg(long, default_value_t = 0)]
    delay_us: u64,
}

/// How a baseline server waits for work.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum IdleMode {
    /// Retry recvmmsg without sleeping.
    Spin,
    /// Sleep in ppoll until a datagram (or, for xdp-echo, a frame) arrives.
    Block,
}

const FRAME: usize = 2048;

/// Parses a baseline command line (`args[0]` is the program name) and runs it; `--help` and
/// argument errors print and exit the process, as clap does.
pub fn main_from<I, T>(args: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    match cli.command {
        Command::UdpEcho(args) => udp_echo(args),
        Command::XdpEcho(args) => xdp_echo::xdp_echo(args),
        Command::TcpEcho(args) => tcp_echo::tcp_echo(args),
    }
}

fn udp_echo(args: UdpEchoArgs) -> Result<()> {
    if let Some(cpu) = args.cpu {
        melange_sys::cpu::pin_current_thread(cpu)
            .with_context(|| format!("pinning to cpu {cpu}"))?;
    }
    let addr = SocketAddrV4::new(args.addr, args.port);
    let mut socket = UdpBatchSocket::bind(
        addr,
        UdpSocketOptions {
            batch_max: args.batch,
            recv_buffer_bytes: Some(4 << 20),
            send_buffer_bytes: Some(4 << 20),
            ..UdpSocketOptions::default()
        },
    )
    .with_context(|| format!("binding {addr}"))?;
    eprintln!(
        "baseline udp-echo on {addr}, batch {}, idle {:?}",
        args.batch, args.idle
    );
    let mut region = vec![0u8; FRAME * args.batch];
    let mut recv: Vec<RecvSlot> = (0..args.batch)
        .map(|i| RecvSlot::new(i * FRAME, FRAME))
        .collect();
    let mut send: Vec<SendSlot> = Vec::with_capacity(args.batch);
    let delay_ns = args.delay_us * 1_000;
    loop {
        let n = socket
            .recv_batch(&mut region, &mut recv)
            .context("recvmmsg")?;
        if n == 0 {
            if args.idle == IdleMode::Block {
                melange_sys::poll::wait_readable(&[socket.as_fd()], None).context("ppoll")?;
            }
            continue;
        }
        send.clear();
        for slot in &recv[..n] {
            if delay_ns > 0 {
                let end = melange_sys::clock::monotonic_ns() + delay_ns;
                while melange_sys::clock::monotonic_ns() < end {
                    std::hint::spin_loop();
                }
            }
            if !slot.truncated {
                send.push(SendSlot {
                    offset: slot.offset,
                    len: slot.len,
                    peer: slot.peer,
                });
            }
        }
        let mut done = 0;
        while done < send.len() {
            match socket.send_batch(&region, &send[done..]) {
                Ok(0) => std::hint::spin_loop(),
                Ok(k) => done += k,
                Err(_) => done += 1,
            }
        }
    }
}
