//! The kernel TCP fallback against the kernel's own TCP on loopback: accepted and opened
//! connections, zero-copy echo of received buffers, partial sends and the room report,
//! the receive budget, orderly and abortive close, refused connects and stale handles. Every
//! test ends with every pool frame back.

use melange_core::contract::{CloseReason, Command, CommandError, Outcome};
use melange_core::{
    BufChain, ConnId, Event, EventQueue, FrameOwner, HandleError, PacketPool, PoolConfig,
};
use melange_runtime::kernel_tcp::{KernelTcp, RECV_LENT_BYTES_MAX};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const TRANSPORT: &str = "kernel sockets";

struct Rig {
    tcp: KernelTcp,
    pool: PacketPool,
    events: EventQueue,
}

impl Rig {
    fn new() -> Self {
        Self {
            tcp: KernelTcp::new(Ipv4Addr::LOCALHOST, true).unwrap(),
            pool: PacketPool::new(PoolConfig::default_engine()).unwrap(),
            events: EventQueue::new(128),
        }
    }

    fn submit(&mut self, command: Command) -> Result<Outcome, melange_core::contract::Refused> {
        self.tcp.submit(&mut self.pool, command, TRANSPORT)
    }

    /// Polls until `pick` takes an event (others are handled by `other`), within 10 s.
    fn wait_for<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&mut Self, Event) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.tcp.poll_receive(&mut self.pool, &mut self.events, 64);
            while let Some(event) = self.events.pop() {
                if let Some(found) = pick(self, event) {
                    return found;
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// A chain of `bytes` in pool frames owned by the app.
    fn chain_of(&mut self, bytes: &[u8]) -> BufChain {
        let mut chain: Option<BufChain> = None;
        for piece in bytes.chunks(1024) {
            let mut buf = self
                .pool
                .alloc_for(FrameOwner::App)
                .expect("pool has frames");
            self.pool.set_len(&mut buf, piece.len()).unwrap();
            self.pool.data_mut(&buf).copy_from_slice(piece);
            match chain.as_mut() {
                None => chain = Some(BufChain::from(buf)),
                Some(c) => self.pool.chain_push(c, buf).map_err(|(e, _)| e).unwrap(),
            }
        }
        chain.expect("at least one byte")
    }

    fn bytes_of(&self, chain: &BufChain) -> Vec<u8> {
        let mut out = vec![0; chain.len()];
        assert_eq!(self.pool.chain_read(chain, 0, &mut out), chain.len());
        out
    }

    fn finish(mut self) {
        while let Some(event) = self.events.pop() {
            if let Some(data) = event.into_data() {
                self.pool.free_chain(data);
            }
        }
        self.tcp.shutdown(&mut self.pool);
        assert_eq!(
            self.pool.available(),
            self.pool.capacity(),
            "every frame came back"
        );
    }
}

/// An engine thread over kernel sockets on 127.0.0.1 running the app `make_app` builds,
/// sleeping after `spin_polls` empty passes.
fn kernel_engine<A, F>(
    name: &str,
    id: usize,
    io: melange_runtime::SocketIo,
    spin_polls: u32,
    stop: &melange_runtime::StopSignal,
    make_app: F,
) -> std::thread::JoinHandle<
    Result<
        melange_runtime::EngineOutcome<A, melange_runtime::KernelTransport>,
        melange_runtime::ShellError,
    >,
>
where
    A: melange_core::App + Send + 'static,
    F: FnOnce() -> A + Send + 'static,
{
    use melange_engine::{Engine, EngineConfig};
    use melange_runtime::{IdlePolicy, KernelOptions, KernelTransport, ShellConfig};
    let shell = ShellConfig {
        name: name.into(),
        cpu: None,
        idle: IdlePolicy::Sleep { spin_polls },
    };
    melange_runtime::spawn_engine(shell, stop.clone(), move |now| {
        let transport = KernelTransport::new(KernelOptions::new(Ipv4Addr::LOCALHOST).with_io(io))?;
        let pool = PacketPool::new(PoolConfig::default_engine()).unwrap();
        Engine::new(EngineConfig::new(id), transport, pool, make_app(), now)
            .map_err(std::io::Error::other)
    })
    .unwrap()
}

/// Listens on a free port (one the kernel just handed out, retried if taken meanwhile).
fn listen(rig: &mut Rig) -> (melange_core::ListenerId, SocketAddrV4) {
    for _ in 0..20 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if let Ok(Outcome::Listener(id)) = rig.submit(Command::Listen { port, backlog: 128 }) {
            let addr = rig.tcp.listener_addr(id).unwrap();
            assert_eq!(addr.port(), port);
            return (id, addr);
        }
    }
    panic!("no free port to listen on");
}

fn accept(rig: &mut Rig) -> ConnId {
    rig.wait_for("Accepted", |_, e| match e {
        Event::Accepted { conn, .. } => Some(conn),
        other => panic!("unexpected {other:?}"),
    })
}

fn recv_exactly(rig: &mut Rig, conn: ConnId, len: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < len {
        let bytes = rig.wait_for("Recv", |rig, e| match e {
            Event::Recv { conn: c, data } if c == conn => {
                let bytes = rig.bytes_of(&data);
                rig.pool.free_chain(data);
                Some(bytes)
            }
            Event::Sent { data, .. } => {
                if let Some(data) = data {
                    rig.pool.free_chain(data);
                }
                None
            }
            other => panic!("unexpected {other:?}"),
        });
        let n = bytes.len() as u32;
        got.extend(bytes);
        rig.submit(Command::RecvDone { conn, bytes: n }).unwrap();
    }
    got
}

#[test]
fn accepted_connection_echoes_zero_copy_and_closes_in_order() {
    let mut rig = Rig::new();
    let (_listener, addr) = listen(&mut rig);
    let mut client = TcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.write_all(b"ping").unwrap();
    let conn = accept(&mut rig);
    // The received buffer goes straight back out: the app's echo without a copy.
    let data = rig.wait_for("Recv", |_, e| match e {
        Event::Recv { conn: c, data } if c == conn => Some(data),
        other => panic!("unexpected {other:?}"),
    });
    assert_eq!(rig.bytes_of(&data), b"ping");
    match rig.submit(Command::Send { conn, data }).unwrap() {
        Outcome::Accepted {
            bytes: 4,
            rest: None,
        } => {}
        other => panic!("unexpected {other:?}"),
    }
    rig.submit(Command::RecvDone { conn, bytes: 4 }).unwrap();
    let returned = rig.wait_for("Sent", |_, e| match e {
        Event::Sent {
            conn: c,
            bytes: 4,
            data: Some(data),
        } if c == conn => Some(data),
        other => panic!("unexpected {other:?}"),
    });
    assert_eq!(
        rig.bytes_of(&returned),
        b"ping",
        "the sent buffers come back whole"
    );
    rig.pool.free_chain(returned);
    let mut reply = [0u8; 4];
    client.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"ping");

    drop(client);
    rig.wait_for("PeerClosed", |_, e| match e {
        Event::PeerClosed { conn: c } if c == conn => Some(()),
        other => panic!("unexpected {other:?}"),
    });
    rig.submit(Command::Close { conn }).unwrap();
    rig.wait_for("Closed", |_, e| match e {
        Event::Closed {
            conn: c,
            reason: CloseReason::Closed,
        } if c == conn => Some(()),
        other => panic!("unexpected {other:?}"),
    });
    // The handle is stale now, and a send on it gives the buffers back.
    let data = rig.chain_of(b"late");
    let refused = rig.submit(Command::Send { conn, data }).unwrap_err();
    assert_eq!(refused.error, CommandError::Handle(HandleError::Stale));
    rig.pool.free_chain(refused.data.expect("buffers back"));
    assert_eq!(rig.tcp.connections(), 0);
    rig.finish();
}

#[test]
fn opened_connection_talks_to_a_kernel_server_and_aborts_with_rst() {
    let mut rig = Rig::new();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let std::net::SocketAddr::V4(addr) = server.local_addr().unwrap() else {
        unreachable!()
    };
    let echo = std::thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).unwrap();
        s.write_all(&b).unwrap();
        // After the abort, the next read sees the reset.
        let mut rest = [0u8; 1];
        match s.read(&mut rest) {
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
            Ok(n) => panic!("read {n} bytes instead of a reset"),
        }
    });
    let Outcome::Conn(conn) = rig
        .submit(Command::Connect {
            to: addr,
            token: 42,
        })
        .unwrap()
    else {
        panic!("no connection handle")
    };
    // Sending before the handshake ends is refused with the buffers back.
    let early = rig.chain_of(b"early");
    let refused = rig.submit(Command::Send { conn, data: early }).unwrap_err();
    assert!(
        matches!(refused.error, CommandError::ConnNotOpen { .. }),
        "{:?}",
        refused.error
    );
    rig.pool.free_chain(refused.data.unwrap());
    rig.wait_for("Connected", |_, e| match e {
        Event::Connected { conn: c, token: 42 } if c == conn => Some(()),
        other => panic!("unexpected {other:?}"),
    });
    let data = rig.chain_of(b"hello");
    assert!(matches!(
        rig.submit(Command::Send { conn, data }).unwrap(),
        Outcome::Accepted {
            bytes: 5,
            rest: None
        }
    ));
    assert_eq!(recv_exactly(&mut rig, conn, 5), b"hello");
    rig.submit(Command::Abort { conn }).unwrap();
    rig.wait_for("Closed", |rig, e| match e {
        Event::Closed {
            conn: c,
            reason: CloseReason::Aborted,
        } if c == conn => Some(()),
        Event::Sent { data, .. } => {
            if let Some(data) = data {
                rig.pool.free_chain(data);
            }
            None
        }
        other => panic!("unexpected {other:?}"),
    });
    echo.join().unwrap();
    rig.finish();
}

#[test]
fn connect_to_a_closed_port_fails_with_refused() {
    let mut rig = Rig::new();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let Outcome::Conn(_) = rig.submit(Command::Connect { to, token: 7 }).unwrap() else {
        panic!("no connection handle")
    };
    rig.wait_for("ConnectFailed", |_, e| match e {
        Event::ConnectFailed { token: 7, reason } => {
            assert_eq!(reason, CloseReason::Refused);
            Some(())
        }
        other => panic!("unexpected {other:?}"),
    });
    assert_eq!(rig.tcp.connections(), 0);
    rig.finish();
}

#[test]
fn a_full_send_buffer_gives_the_rest_back_and_reports_room_later() {
    let mut rig = Rig::new();
    let (_listener, addr) = listen(&mut rig);
    let client = TcpStream::connect(addr).unwrap();
    let conn = accept(&mut rig);
    let pattern: Vec<u8> = (0..16 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut sent_total = 0usize;
    // The client reads nothing, so the kernel's buffers fill and a send is taken in part.
    let rest = loop {
        let data = rig.chain_of(&pattern);
        match rig.submit(Command::Send { conn, data }).unwrap() {
            Outcome::Accepted { bytes, rest: None } => {
                assert_eq!(bytes as usize, pattern.len());
                sent_total += pattern.len();
            }
            Outcome::Accepted {
                bytes,
                rest: Some(rest),
            } => {
                assert_eq!(
                    bytes as usize + rest.len(),
                    pattern.len(),
                    "nothing lost, nothing doubled"
                );
                sent_total += bytes as usize;
                break rest;
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(sent_total < 64 << 20, "the kernel never pushed back");
        // Give back what the kernel took, as an app would.
        rig.tcp.poll_receive(&mut rig.pool, &mut rig.events, 64);
        while let Some(e) = rig.events.pop() {
            if let Some(d) = e.into_data() {
                rig.pool.free_chain(d);
            }
        }
    };
    assert!(rig.tcp.counters().tx_partial >= 1);
    // The client drains; the connection reports room with an empty Sent.
    let expect_len = sent_total;
    let reader = std::thread::spawn(move || {
        let mut client = client;
        client
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut got = vec![0u8; expect_len];
        client.read_exact(&mut got).unwrap();
        // The client stays open until the room was seen: dropped here, its FIN could reach
        // the transport first and `PeerClosed` would come before the `Sent` awaited.
        (got, client)
    });
    rig.wait_for("room", |rig, e| match e {
        Event::Sent {
            conn: c,
            bytes: 0,
            data: None,
        } if c == conn => Some(()),
        Event::Sent { data, .. } => {
            if let Some(d) = data {
                rig.pool.free_chain(d);
            }
            None
        }
        other => panic!("unexpected {other:?}"),
    });
    let (got, _client) = reader.join().unwrap();
    for (i, chunk) in got.chunks(pattern.len()).enumerate() {
        assert!(chunk == &pattern[..chunk.len()], "byte-exact in chunk {i}");
    }
    rig.pool.free_chain(rest);
    rig.finish();
}

#[test]
fn an_app_that_keeps_what_it_received_stops_being_read_until_it_gives_back() {
    let mut rig = Rig::new();
    let (_listener, addr) = listen(&mut rig);
    let total = 2 * RECV_LENT_BYTES_MAX as usize;
    let data: Vec<u8> = (0..total as u32).map(|i| (i * 13 % 256) as u8).collect();
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        let mut client = TcpStream::connect(addr).unwrap();
        client.write_all(&sent).unwrap();
        client
    });
    let conn = accept(&mut rig);
    // Hold everything received: reading stops at the budget.
    let mut held: Vec<BufChain> = Vec::new();
    let mut held_bytes = 0usize;
    let deadline = Instant::now() + Duration::from_secs(10);
    while rig.tcp.counters().rx_paused == 0 {
        assert!(Instant::now() < deadline, "never paused; held {held_bytes}");
        rig.tcp.poll_receive(&mut rig.pool, &mut rig.events, 64);
        while let Some(e) = rig.events.pop() {
            match e {
                Event::Recv { data, .. } => {
                    held_bytes += data.len();
                    held.push(data);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert!(held_bytes >= RECV_LENT_BYTES_MAX as usize);
    for _ in 0..50 {
        rig.tcp.poll_receive(&mut rig.pool, &mut rig.events, 64);
        assert!(
            rig.events.pop().is_none(),
            "a paused connection is not read"
        );
    }
    // Give it all back, then read the rest.
    let mut got = Vec::new();
    for chain in held {
        got.extend(rig.bytes_of(&chain));
        rig.pool.free_chain(chain);
    }
    rig.submit(Command::RecvDone {
        conn,
        bytes: held_bytes as u32,
    })
    .unwrap();
    got.extend(recv_exactly(&mut rig, conn, total - held_bytes));
    assert!(got == data, "byte-exact after the pause");
    drop(writer.join().unwrap());
    rig.finish();
}

/// The TCP echo app on an engine over kernel sockets, sleeping when idle: 32 clients at once,
/// each checking its replies byte for byte (one of them sends 2 MB without reading until it
/// is done, which exercises partial sends and the receive budget), then all close; the
/// engine ends with every frame back. Both socket-I/O modes.
#[test]
fn tcp_echo_app_on_an_engine_serves_many_clients_byte_exact() {
    use melange_apps::{TcpEchoApp, TcpEchoConfig};
    use melange_runtime::{SocketIo, StopSignal};
    for io in [SocketIo::Mmsg, SocketIo::Uring] {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let stop = StopSignal::new();
        let handle = kernel_engine("tcp-echo", 0, io, 10, &stop, move || {
            TcpEchoApp::new(
                TcpEchoConfig {
                    ports: vec![port],
                    work_ns: 0,
                },
                |_| {},
            )
        });
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let connect = || {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match TcpStream::connect(addr) {
                    Ok(s) => return s,
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => panic!("the echo never listened: {e}"),
                }
            }
        };
        let clients: Vec<_> = (0..32u32)
            .map(|i| {
                let mut s = connect();
                std::thread::spawn(move || {
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    if i == 0 {
                        let data: Vec<u8> = (0..2_000_000u32).map(|j| (j * 31 / 7) as u8).collect();
                        let mut w = s.try_clone().unwrap();
                        let sent = data.clone();
                        let writer = std::thread::spawn(move || w.write_all(&sent).unwrap());
                        let mut back = vec![0u8; data.len()];
                        s.read_exact(&mut back).unwrap();
                        writer.join().unwrap();
                        assert!(back == data, "bulk echo byte-exact");
                    } else {
                        for round in 0..100u32 {
                            let msg = format!("client {i} round {round}");
                            s.write_all(msg.as_bytes()).unwrap();
                            let mut back = vec![0u8; msg.len()];
                            s.read_exact(&mut back).unwrap();
                            assert_eq!(back, msg.as_bytes());
                        }
                    }
                    s.shutdown(std::net::Shutdown::Write).unwrap();
                    let mut rest = Vec::new();
                    s.read_to_end(&mut rest).unwrap();
                    assert!(
                        rest.is_empty(),
                        "nothing after the echo, then the server's FIN"
                    );
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        // Each client saw the server's FIN, so each `Closed` is due within a pass or two of
        // the engine (it runs passes back to back after work); give it a moment, then stop.
        std::thread::sleep(Duration::from_millis(200));
        stop.stop();
        let outcome = handle.join().unwrap().unwrap();
        let counters = outcome.app.counters();
        assert_eq!(counters.accepted, 32, "{io:?}");
        assert_eq!(
            counters.closed, 32,
            "{io:?}: every connection ended in order"
        );
        assert_eq!(
            counters.bytes_echoed,
            2_000_000
                + (1..32u64)
                    .map(|i| {
                        (0..100u32)
                            .map(|r| format!("client {i} round {r}").len() as u64)
                            .sum::<u64>()
                    })
                    .sum::<u64>()
        );
        assert_eq!(
            outcome.pool_available, outcome.pool_capacity,
            "no frame leaked"
        );
    }
}

/// The TCP load generator against the TCP echo, both on engines over kernel sockets: many
/// connections with several requests in flight each, larger-than-a-frame messages on a
/// second run; every reply byte-checked, nothing corrupt, no connection cut short, every
/// connection closed in order at the end, and both engines end with every frame back.
#[test]
fn tcp_loadgen_against_tcp_echo_measures_without_corruption() {
    use melange_apps::{TcpEchoApp, TcpEchoConfig, TcpLoadgenApp, TcpLoadgenConfig};
    use melange_runtime::{SocketIo, StopSignal};
    for (connections, inflight, message_len) in [(50, 4, 64), (4, 2, 5000)] {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let stop = StopSignal::new();
        let server = kernel_engine("tcp-echo", 0, SocketIo::Mmsg, 100, &stop, move || {
            TcpEchoApp::new(
                TcpEchoConfig {
                    ports: vec![port],
                    work_ns: 0,
                },
                |_| {},
            )
        });
        // Let the server listen before the clients connect.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(Instant::now() < deadline, "the echo never listened");
            std::thread::sleep(Duration::from_millis(5));
        }
        let client_stop = StopSignal::new();
        let client = kernel_engine(
            "tcp-loadgen",
            1,
            SocketIo::Mmsg,
            100,
            &client_stop,
            move || {
                TcpLoadgenApp::new(TcpLoadgenConfig {
                    target: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
                    connections,
                    inflight,
                    message_len,
                    warmup_ns: 100_000_000,
                    duration_ns: 500_000_000,
                    drain_ns: 500_000_000,
                    mode: melange_apps::TcpLoadMode::RequestResponse,
                })
            },
        );
        let client = client.join().unwrap().unwrap();
        let report = client.app.report();
        assert_eq!(client.app.connect_failures(), 0, "{report:?}");
        assert_eq!(client.app.resets(), 0, "{report:?}");
        assert_eq!(report.corrupt, 0, "{report:?}");
        assert_eq!(report.unexpected, 0, "{report:?}");
        assert!(report.measured > 100, "{report:?}");
        assert_eq!(
            report.sent, report.received,
            "every request answered: {report:?}"
        );
        assert!(report.latency.p50_ns > 0);
        assert_eq!(
            client.pool_available, client.pool_capacity,
            "client frames back"
        );
        std::thread::sleep(Duration::from_millis(100));
        stop.stop();
        let server = server.join().unwrap().unwrap();
        let counters = server.app.counters();
        // The load generator's connections and the readiness probe's.
        assert_eq!(counters.accepted, connections as u64 + 1);
        assert_eq!(
            counters.closed,
            connections as u64 + 1,
            "every connection closed in order"
        );
        assert_eq!(
            server.pool_available, server.pool_capacity,
            "server frames back"
        );
    }
}
