//! Echo of 64-byte datagrams on loopback through the kernel transport, `recvmmsg`/`sendmmsg`
//! against io_uring, side by side in one run.
//!
//! Each repetition runs both backends for the same time, one after the other (the order
//! alternates between repetitions, so a machine that slows down over the run cannot favour
//! one), and prints requests per second of each and their ratio. The server is a real engine
//! thread (`EchoApp`, busy-polling) on one core; the client is one thread on the other that
//! keeps a window of requests in flight with `sendmmsg`/`recvmmsg`.
//!
//! Run: `cargo run --release -p melange-runtime --example kernel_io_bench [reps] [secs] [window]`
//! (defaults 5, 2, 64).

use melange_apps::{EchoApp, EchoConfig};
use melange_core::{PacketPool, PoolConfig};
use melange_engine::{Engine, EngineConfig};
use melange_runtime::{
    spawn_engine, IdlePolicy, KernelOptions, KernelTransport, ShellConfig, SocketIo, StopSignal,
};
use melange_sys::udp::{RecvSlot, SendSlot, UdpBatchSocket, UdpSocketOptions};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

const PAYLOAD: usize = 64;
/// Requests counted lost after this long without any reply; the window is then refilled.
const STALL: Duration = Duration::from_millis(50);

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One run of `secs` against a fresh engine using `io`: replies per second.
fn run(io: SocketIo, secs: f64, window: usize) -> f64 {
    let port = free_port();
    let stop = StopSignal::new();
    let handle = spawn_engine(
        ShellConfig {
            name: format!("echo-{io:?}"),
            cpu: Some(0),
            idle: IdlePolicy::Spin,
        },
        stop.clone(),
        move |now| {
            let transport =
                KernelTransport::new(KernelOptions::new(Ipv4Addr::LOCALHOST).with_io(io))?;
            let app = EchoApp::new(
                EchoConfig {
                    ports: vec![port],
                    ..EchoConfig::default()
                },
                |_| {},
            );
            let pool =
                PacketPool::new(PoolConfig::default_engine()).map_err(std::io::Error::other)?;
            Engine::new(EngineConfig::new(0), transport, pool, app, now)
                .map_err(std::io::Error::other)
        },
    )
    .expect("the engine starts");
    let _ = melange_sys::pin_current_thread(1);
    let server = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let mut client = UdpBatchSocket::bind(
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
        UdpSocketOptions {
            batch_max: window,
            recv_buffer_bytes: Some(4 << 20),
            send_buffer_bytes: Some(4 << 20),
            ..UdpSocketOptions::default()
        },
    )
    .expect("the client binds");
    let region = [7u8; PAYLOAD];
    let sends = vec![
        SendSlot {
            offset: 0,
            len: PAYLOAD,
            peer: server,
        };
        window
    ];
    let mut rx_region = vec![0u8; window * 2048];
    let mut slots: Vec<RecvSlot> = (0..window).map(|i| RecvSlot::new(i * 2048, 2048)).collect();
    // Wait until the engine answers.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        client.send_to(&region, server).unwrap();
        let _ = melange_sys::poll::wait_readable(&[client.as_fd()], Some(10_000_000));
        if client.recv_batch(&mut rx_region, &mut slots).unwrap() > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the engine never answered");
    }
    let mut in_flight = 0usize;
    let mut replies = 0u64;
    let mut last_reply = Instant::now();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        if in_flight < window {
            let sent = client
                .send_batch(&region, &sends[..window - in_flight])
                .unwrap_or(0);
            in_flight += sent;
        }
        let got = client.recv_batch(&mut rx_region, &mut slots).unwrap_or(0);
        if got > 0 {
            in_flight = in_flight.saturating_sub(got);
            replies += got as u64;
            last_reply = Instant::now();
        } else if last_reply.elapsed() > STALL {
            in_flight = 0;
            last_reply = Instant::now();
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop.stop();
    let outcome = handle.join().unwrap().expect("the engine ran");
    assert_eq!(outcome.transport_counters.errors.total(), 0);
    replies as f64 / elapsed
}

fn main() {
    let mut args = std::env::args().skip(1);
    let reps: usize = args.next().map_or(5, |a| a.parse().expect("reps"));
    let secs: f64 = args.next().map_or(2.0, |a| a.parse().expect("secs"));
    let window: usize = args.next().map_or(64, |a| a.parse().expect("window"));
    println!("echo of {PAYLOAD}-byte datagrams on 127.0.0.1, window {window}, {secs} s per run");
    println!("rep  mmsg req/s   uring req/s  uring/mmsg");
    let mut ratios = Vec::new();
    for rep in 1..=reps {
        let (mmsg, uring) = if rep % 2 == 1 {
            let m = run(SocketIo::Mmsg, secs, window);
            (m, run(SocketIo::Uring, secs, window))
        } else {
            let u = run(SocketIo::Uring, secs, window);
            (run(SocketIo::Mmsg, secs, window), u)
        };
        let ratio = uring / mmsg;
        ratios.push(ratio);
        println!("{rep:>3}  {mmsg:>11.0}  {uring:>11.0}  {ratio:>10.3}");
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "ratio uring/mmsg: min {:.3}, median {:.3}, max {:.3}",
        ratios[0],
        ratios[ratios.len() / 2],
        ratios[ratios.len() - 1]
    );
}
