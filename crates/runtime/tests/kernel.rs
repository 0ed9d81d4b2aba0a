//! The kernel-socket transport on 127.0.0.1, driven by a real engine thread and a plain
//! `std` UDP socket as the client: the same app as on Melange's stack, the same events.

use melange_apps::{EchoApp, EchoConfig};
use melange_core::{App, Event, IoContext, PacketPool, PoolConfig, SocketId};
use melange_engine::{Engine, EngineConfig};
use melange_runtime::{
    spawn_engine, IdlePolicy, KernelOptions, KernelTransport, ShellConfig, StopSignal,
};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn pool() -> PacketPool {
    PacketPool::new(PoolConfig::default_engine()).unwrap()
}

fn client() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket
}

#[test]
fn echo_on_kernel_sockets_answers_and_sleeps_between_requests() {
    let port = free_port();
    let stop = StopSignal::new();
    let handle = spawn_engine(
        ShellConfig {
            name: "kernel-echo".into(),
            cpu: None,
            idle: IdlePolicy::Sleep { spin_polls: 10 },
        },
        stop.clone(),
        move |now| {
            let transport = KernelTransport::new(KernelOptions::new(Ipv4Addr::LOCALHOST))?;
            let app = EchoApp::new(
                EchoConfig {
                    ports: vec![port],
                    ..EchoConfig::default()
                },
                |_| {},
            );
            Engine::new(EngineConfig::new(0), transport, pool(), app, now)
                .map_err(std::io::Error::other)
        },
    )
    .unwrap();
    let client = client();
    let server = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let mut reply = [0u8; 2048];
    for i in 0..50u8 {
        // The first request may arrive before the engine has bound: retry it.
        let mut answered = None;
        for _ in 0..50 {
            client.send_to(&[i; 100], server).unwrap();
            client
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            if let Ok((n, from)) = client.recv_from(&mut reply) {
                answered = Some((n, from));
                break;
            }
        }
        let (n, from) = answered.expect("the echo answers");
        assert_eq!(from, std::net::SocketAddr::V4(server));
        assert_eq!(&reply[..n], &[i; 100]);
    }
    stop.stop();
    let outcome = handle.join().unwrap().unwrap();
    assert!(outcome.app.counters().echoed >= 50);
    assert_eq!(outcome.transport_counters.errors.total(), 0);
    assert!(outcome.transport_counters.rx_packets >= 50);
    assert_eq!(
        outcome.pool_available, outcome.pool_capacity,
        "no frame leaked"
    );
    assert!(outcome.busy_ns <= outcome.cpu_time_ns);
}

/// Binds port 0 (any free port), tells the test which one it got, and sends every datagram
/// back with `notify`, recording what the engine returns.
struct NotifyingEcho {
    socket: Option<SocketId>,
    returned: usize,
    bound: std::sync::mpsc::Sender<u16>,
}

impl App for NotifyingEcho {
    fn start(&mut self, io: &mut IoContext<'_>) {
        let socket = io.bind_udp(0).unwrap();
        self.socket = Some(socket);
        // Port 0 asks for any free port, so a second socket on it gets another one.
        assert!(io.bind_udp(0).is_ok(), "port 0 always finds another port");
        let _ = self.bound.send(0);
    }
    fn run_io(&mut self, io: &mut IoContext<'_>) {
        while let Some(event) = io.next_event() {
            match event {
                Event::Datagram { data, from, .. } => {
                    let token = u64::from(from.port());
                    if let Err((_, data)) =
                        io.send_to_notify(self.socket.unwrap(), from, data, token)
                    {
                        io.free_chain(data);
                    }
                }
                Event::SendDone { data, result, .. } => {
                    assert_eq!(result, Ok(()));
                    self.returned += 1;
                    io.free_chain(data.expect("a notified send returns its buffers"));
                }
                _ => {}
            }
        }
    }
}

#[test]
fn notified_sends_return_their_buffers_and_port_zero_binds_any_port() {
    let pool = pool();
    let mut transport = KernelTransport::new(KernelOptions::new(Ipv4Addr::LOCALHOST)).unwrap();
    let probe = melange_engine::Transport::bind_udp(&mut transport, 0).unwrap();
    let addr = transport.local_addr(probe).unwrap();
    assert_ne!(addr.port(), 0, "port 0 became a real port");
    melange_engine::Transport::close_udp(&mut transport, probe).unwrap();
    assert!(
        transport.local_addr(probe).is_err(),
        "a closed socket's handle is stale"
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let app = NotifyingEcho {
        socket: None,
        returned: 0,
        bound: tx,
    };
    let mut engine = Engine::new(EngineConfig::new(0), transport, pool, app, 0).unwrap();
    engine.poll(0);
    rx.recv().unwrap();
    let socket = engine.app().socket.unwrap();
    let server = engine.transport().local_addr(socket).unwrap();
    let client = client();
    for _ in 0..5 {
        client.send_to(b"ping", server).unwrap();
    }
    let mut got = 0;
    let mut reply = [0u8; 64];
    for pass in 1..10_000u64 {
        engine.poll(pass * 1_000);
        client.set_nonblocking(true).unwrap();
        while let Ok((n, _)) = client.recv_from(&mut reply) {
            assert_eq!(&reply[..n], b"ping");
            got += 1;
        }
        if got == 5 && engine.app().returned == 5 {
            break;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    assert_eq!(got, 5);
    assert_eq!(engine.app().returned, 5);
    engine.shutdown();
    assert_eq!(engine.pool().available(), engine.pool().capacity());
}
