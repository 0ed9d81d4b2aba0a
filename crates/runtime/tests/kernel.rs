//! The kernel-socket transport on 127.0.0.1, driven by a real engine thread (or directly,
//! through the `Transport` trait) and a plain `std` UDP socket as the client: the same app as
//! on Melange's stack, the same events. Every case runs on both socket I/O backends.

use melange_apps::{EchoApp, EchoConfig};
use melange_core::contract::{CommandError, Refused, SendError};
use melange_core::handle::HandleError;
use melange_core::{
    App, BufChain, Event, EventQueue, FrameOwner, IoContext, PacketPool, PoolConfig, SocketId,
};
use melange_engine::{Engine, EngineConfig, Transport};
use melange_runtime::{
    spawn_engine, IdlePolicy, KernelOptions, KernelTransport, ShellConfig, SocketIo, StopSignal,
    DATAGRAM_LEN_MAX,
};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

const MODES: [SocketIo; 2] = [SocketIo::Mmsg, SocketIo::Uring];

fn options(io: SocketIo) -> KernelOptions {
    KernelOptions::new(Ipv4Addr::LOCALHOST).with_io(io)
}

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
    for io in MODES {
        echo_answers_and_sleeps(io);
    }
}

fn echo_answers_and_sleeps(io: SocketIo) {
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
            let transport = KernelTransport::new(options(io))?;
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
    for io in MODES {
        notified_sends_return_their_buffers(io);
    }
}

fn notified_sends_return_their_buffers(io: SocketIo) {
    let pool = pool();
    let mut transport = KernelTransport::new(options(io)).unwrap();
    assert_eq!(transport.io(), io);
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

/// A transport driven directly through the `Transport` trait, with one socket on port 0.
struct Rig {
    transport: KernelTransport,
    pool: PacketPool,
    events: EventQueue,
    socket: SocketId,
    addr: SocketAddrV4,
}

fn rig(io: SocketIo) -> Rig {
    let mut transport = KernelTransport::new(options(io)).unwrap();
    let socket = transport.bind_udp(0).unwrap();
    let addr = transport.local_addr(socket).unwrap();
    Rig {
        transport,
        pool: pool(),
        events: EventQueue::new(256),
        socket,
        addr,
    }
}

/// A received datagram, copied out of its chain.
struct Got {
    bytes: Vec<u8>,
    from: SocketAddrV4,
    frames: usize,
    data: BufChain,
}

impl Rig {
    /// Polls until `want` datagrams arrived (5 s at most), in arrival order.
    fn receive(&mut self, want: usize) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while got.len() < want && Instant::now() < deadline {
            let n = self
                .transport
                .poll_receive(0, &mut self.pool, &mut self.events, 64);
            while let Some(event) = self.events.pop() {
                let Event::Datagram {
                    socket,
                    data,
                    from,
                    local_port,
                } = event
                else {
                    panic!("only datagrams arrive here");
                };
                assert_eq!(socket, self.socket);
                assert_eq!(local_port, self.addr.port());
                let mut bytes = vec![0; data.len()];
                assert_eq!(self.pool.chain_read(&data, 0, &mut bytes), data.len());
                assert!(self.pool.is_held_by(data.head(), FrameOwner::App));
                got.push(Got {
                    bytes,
                    from,
                    frames: data.frames(),
                    data,
                });
            }
            if n == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        got
    }

    /// A chain of `bytes` in frames the app allocated (headroom first, as `IoContext::alloc`).
    fn app_chain(&mut self, bytes: &[u8]) -> BufChain {
        let mut chain: Option<BufChain> = None;
        let mut rest = bytes;
        loop {
            let mut buf = self
                .pool
                .alloc_for(FrameOwner::App)
                .expect("the pool has room");
            let take = rest.len().min(self.pool.tailroom(&buf));
            self.pool.set_len(&mut buf, take).unwrap();
            self.pool.data_mut(&buf).copy_from_slice(&rest[..take]);
            rest = &rest[take..];
            match &mut chain {
                None => chain = Some(BufChain::from(buf)),
                Some(chain) => self.pool.chain_push(chain, buf).unwrap(),
            }
            if rest.is_empty() {
                return chain.expect("at least one frame");
            }
        }
    }

    fn send(&mut self, to: SocketAddr, data: BufChain, notify: Option<u64>) -> Result<(), Refused> {
        let SocketAddr::V4(to) = to else {
            panic!("IPv4 only")
        };
        self.transport
            .send_to(0, &mut self.pool, self.socket, to, data, notify)
    }

    fn flush(&mut self) {
        self.transport.flush(0, &mut self.pool);
    }

    /// Shuts down and checks that no frame leaked.
    fn finish(mut self) {
        self.transport.shutdown(&mut self.pool);
        assert_eq!(
            self.pool.available(),
            self.pool.capacity(),
            "no frame leaked"
        );
    }
}

fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + seed) % 251) as u8).collect()
}

/// Payload room of the first frame (2048-byte frames, 256 of headroom), and of each further
/// frame of a received chain (the whole frame).
const HEAD_ROOM: usize = 2048 - 256;
const FRAME: usize = 2048;

fn big_client() -> UdpSocket {
    let socket = client();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket
}

#[test]
fn datagrams_of_every_size_arrive_whole_and_go_back_whole() {
    let sizes = [
        1,
        HEAD_ROOM,
        HEAD_ROOM + 1,
        HEAD_ROOM + FRAME,
        HEAD_ROOM + FRAME + 1,
        DATAGRAM_LEN_MAX,
    ];
    for io in MODES {
        let mut rig = rig(io);
        let client = big_client();
        let client_addr = client.local_addr().unwrap();
        for (i, &len) in sizes.iter().enumerate() {
            let sent = pattern(len, i);
            client.send_to(&sent, rig.addr).unwrap();
            let mut got = rig.receive(1);
            assert_eq!(got.len(), 1, "{io:?}: a {len}-byte datagram arrives");
            let got = got.pop().unwrap();
            assert_eq!(got.bytes.len(), len, "{io:?}");
            assert!(got.bytes == sent, "{io:?}: {len} bytes arrive unchanged");
            assert_eq!(SocketAddr::V4(got.from), client_addr);
            let frames = if len <= HEAD_ROOM {
                1
            } else {
                1 + (len - HEAD_ROOM).div_ceil(FRAME)
            };
            assert_eq!(got.frames, frames, "{io:?}: {len} bytes in {frames} frames");
            // And back, gathered from the same frames.
            rig.send(client_addr, got.data, None).unwrap();
            rig.flush();
            let mut reply = vec![0u8; 65_536];
            let (n, from) = client.recv_from(&mut reply).unwrap();
            assert_eq!(from, SocketAddr::V4(rig.addr));
            assert_eq!(n, len, "{io:?}: the echo of {len} bytes");
            assert!(
                reply[..n] == sent[..],
                "{io:?}: {len} bytes go back unchanged"
            );
        }
        let kernel = rig.transport.kernel_counters();
        assert_eq!(kernel.rx_truncated, 0, "{io:?}");
        assert_eq!(kernel.rx_chained, 4, "{io:?}: four sizes needed a chain");
        let counters = rig.transport.counters();
        assert_eq!(counters.rx_packets, sizes.len() as u64);
        assert_eq!(counters.tx_packets, sizes.len() as u64);
        assert_eq!(counters.tx_bytes, sizes.iter().sum::<usize>() as u64);
        assert_eq!(counters.errors.total(), 0, "{io:?}");
        rig.finish();
    }
}

#[test]
fn the_largest_datagram_is_sent_and_one_byte_more_is_refused_with_its_buffers() {
    for io in MODES {
        let mut rig = rig(io);
        let client = big_client();
        let client_addr = client.local_addr().unwrap();

        let too_big = pattern(DATAGRAM_LEN_MAX + 1, 3);
        let chain = rig.app_chain(&too_big);
        let frames = chain.frames();
        let Err(Refused { error, data }) = rig.send(client_addr, chain, None) else {
            panic!("{io:?}: 65,508 bytes must be refused");
        };
        assert_eq!(error, CommandError::Send(SendError::PayloadTooLarge));
        assert!(error.to_string().contains("payload too large"), "{error}");
        let data = data.expect("the refused chain comes back");
        assert_eq!((data.len(), data.frames()), (DATAGRAM_LEN_MAX + 1, frames));
        assert!(rig.pool.is_held_by(data.head(), FrameOwner::App));
        let mut back = vec![0; data.len()];
        rig.pool.chain_read(&data, 0, &mut back);
        assert!(back == too_big, "the refused chain is untouched");
        rig.pool.free_chain(data);

        // More frames than one datagram may gather: refused the same way.
        let mut many = rig.app_chain(&[1]);
        for _ in 0..melange_sys::SEND_SEGMENTS_MAX {
            let buf = rig.app_chain(&[2]).into_single().unwrap();
            rig.pool.chain_push(&mut many, buf).unwrap();
        }
        let refused = rig.send(client_addr, many, None).unwrap_err();
        assert_eq!(
            refused.error,
            CommandError::Send(SendError::PayloadTooLarge)
        );
        rig.pool.free_chain(refused.data.unwrap());

        // The largest one goes, built by the app in 37 frames of 1,792 bytes.
        let largest = pattern(DATAGRAM_LEN_MAX, 4);
        let chain = rig.app_chain(&largest);
        assert_eq!(chain.frames(), DATAGRAM_LEN_MAX.div_ceil(HEAD_ROOM));
        rig.send(client_addr, chain, None).unwrap();
        rig.flush();
        let mut reply = vec![0u8; 65_536];
        let (n, _) = client.recv_from(&mut reply).unwrap();
        assert_eq!(n, DATAGRAM_LEN_MAX, "{io:?}");
        assert!(reply[..n] == largest[..], "{io:?}");
        // Stale sockets and bad destinations: the same errors on both backends.
        let chain = rig.app_chain(b"x");
        let refused = rig
            .send(SocketAddr::from(([127, 0, 0, 1], 0)), chain, None)
            .unwrap_err();
        assert_eq!(refused.error, CommandError::Send(SendError::BadDestination));
        rig.pool.free_chain(refused.data.unwrap());
        let closed = rig.transport.bind_udp(0).unwrap();
        rig.transport.close_udp(closed).unwrap();
        let chain = rig.app_chain(b"x");
        let SocketAddr::V4(to) = client_addr else {
            unreachable!()
        };
        let refused = rig
            .transport
            .send_to(0, &mut rig.pool, closed, to, chain, None)
            .unwrap_err();
        assert_eq!(refused.error, CommandError::Handle(HandleError::Stale));
        rig.pool.free_chain(refused.data.unwrap());
        rig.finish();
    }
}

#[test]
fn a_burst_larger_than_the_batch_arrives_in_order_and_goes_back() {
    // 200 datagrams wait in the socket before the first poll: several receive batches of 64
    // (and, on io_uring, more than its 128 provided buffers). Two passes of 100 replies each
    // fill the transmit queue past its 64 and flush early.
    const BURST: usize = 200;
    for io in MODES {
        let mut rig = rig(io);
        let client = big_client();
        let client_addr = client.local_addr().unwrap();
        for i in 0..BURST {
            let mut message = [0u8; 64];
            message[..8].copy_from_slice(&(i as u64).to_le_bytes());
            client.send_to(&message, rig.addr).unwrap();
        }
        let got = rig.receive(BURST);
        assert_eq!(got.len(), BURST, "{io:?}");
        let mut replies = vec![0u8; 128];
        let mut next_reply = 0u64;
        let mut chunk = Vec::new();
        for (i, got) in got.into_iter().enumerate() {
            assert_eq!(got.bytes[..8], (i as u64).to_le_bytes(), "{io:?}: in order");
            chunk.push(got.data);
            if chunk.len() == BURST / 2 {
                for data in chunk.drain(..) {
                    rig.send(client_addr, data, None).unwrap();
                }
                rig.flush();
                for _ in 0..BURST / 2 {
                    let (n, _) = client.recv_from(&mut replies).unwrap();
                    assert_eq!(n, 64);
                    assert_eq!(replies[..8], next_reply.to_le_bytes());
                    next_reply += 1;
                }
            }
        }
        let kernel = rig.transport.kernel_counters();
        assert!(kernel.recv_calls >= 1, "{io:?}: {kernel:?}");
        assert!(
            kernel.send_calls >= 4,
            "{io:?}: 200 replies need 4 batches: {kernel:?}"
        );
        let counters = rig.transport.counters();
        assert_eq!(counters.tx_packets, BURST as u64, "{io:?}");
        assert_eq!(counters.tx_dropped, 0, "{io:?}");
        rig.finish();
    }
}

#[test]
fn notified_chains_come_back_frame_by_frame() {
    for io in MODES {
        let mut rig = rig(io);
        let client = big_client();
        let client_addr = client.local_addr().unwrap();
        let bytes = pattern(3 * HEAD_ROOM + 5, 9);
        let chain = rig.app_chain(&bytes);
        assert_eq!(chain.frames(), 4);
        rig.send(client_addr, chain, Some(42)).unwrap();
        let single = rig.app_chain(b"ping");
        rig.send(client_addr, single, Some(43)).unwrap();
        rig.flush();
        let mut lens = Vec::new();
        while let Some(returned) = rig.pool.take_returned() {
            assert_eq!(returned.result, Ok(()), "{io:?}");
            lens.push((returned.token, returned.buf.len()));
            rig.pool.free(returned.buf);
        }
        assert_eq!(
            lens,
            [
                (42, HEAD_ROOM),
                (42, HEAD_ROOM),
                (42, HEAD_ROOM),
                (42, 5),
                (43, 4)
            ],
            "{io:?}: every frame comes back with its window"
        );
        let mut reply = vec![0u8; 65_536];
        let (n, _) = client.recv_from(&mut reply).unwrap();
        assert!(reply[..n] == bytes[..], "{io:?}");
        let (n, _) = client.recv_from(&mut reply).unwrap();
        assert_eq!(&reply[..n], b"ping");
        rig.finish();
    }
}

#[test]
fn uring_reaps_waiting_completions_without_a_system_call() {
    let mut rig = rig(SocketIo::Uring);
    let client = big_client();
    for _ in 0..10 {
        client.send_to(b"hello", rig.addr).unwrap();
    }
    // Let the datagrams land; the kernel posts their completions when this thread next
    // enters or leaves the kernel (the sleep does both).
    std::thread::sleep(Duration::from_millis(20));
    let got = rig.receive(10);
    assert_eq!(got.len(), 10);
    for got in got {
        rig.pool.free_chain(got.data);
    }
    let kernel = rig.transport.kernel_counters();
    assert!(kernel.rx_reaped_without_syscall >= 1, "{kernel:?}");
    rig.finish();
}
