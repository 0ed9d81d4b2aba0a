//! `melange-baseline tcp-echo`: the Linux TCP echo server Melange's TCP is measured against.
//!
//! It is the ordinary well-written server of its kind: one thread pinned to one core, one
//! level-triggered epoll instance, non-blocking sockets with `TCP_NODELAY`, and for each
//! readable connection a `read` followed by a `write` of the same bytes. The kernel does
//! everything else (TCP, IP, buffering, ACKs), which is exactly the cost Melange's own TCP
//! claims to remove; nothing of Melange is on its path beyond the epoll wrapper in
//! `melange-sys`.
//!
//! Back-pressure as a real server does it: when the kernel's send buffer is full, the bytes
//! not written wait in the connection's pending buffer (at most `--buffer-bytes`), the
//! connection stops being read and waits for writability instead, so a client that does not
//! read its replies slows only itself. Alternative rejected: dropping unsent bytes (an echo
//! server must never lose data) or reading on with an unbounded buffer.
//!
//! Idle modes as for `udp-echo`: `spin` polls epoll without sleeping (the kernel's best
//! latency, one core burnt), `block` sleeps in `epoll_wait`.

use crate::IdleMode;
use anyhow::{bail, Context, Result};
use melange_sys::epoll::{Epoll, EpollEvent, Interest};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;

/// Most connections served at once; further ones are accepted and closed at once (counted),
/// so a flood cannot grow the table without bound.
pub const CONNECTIONS_MAX: usize = 100_000;
/// Readiness reports taken per `epoll_wait`.
const EVENTS_MAX: usize = 256;
/// Bytes read per `read` call (one buffer shared by all connections).
const READ_BYTES: usize = 64 * 1024;
/// The listener's epoll token; connections use their slot index.
const LISTENER_TOKEN: u64 = u64::MAX;
/// The stop eventfd's epoll token.
const STOP_TOKEN: u64 = u64::MAX - 1;
/// Most connections accepted per readiness report of the listener, so a connection storm
/// cannot starve established connections.
const ACCEPTS_PER_EVENT_MAX: usize = 64;

/// Arguments of `melange-baseline tcp-echo`.
#[derive(clap::Args, Debug)]
pub struct TcpEchoArgs {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub addr: Ipv4Addr,
    /// TCP port.
    #[arg(long, default_value_t = 7779)]
    pub port: u16,
    /// Core to pin to (`--cpus`, as on every melange command; `--cpu` also works).
    #[arg(long = "cpus", visible_alias = "cpu")]
    pub cpu: Option<usize>,
    /// Idle behaviour.
    #[arg(long, value_enum, default_value_t = IdleMode::Spin)]
    pub idle: IdleMode,
    /// Simulated work per read that returned data, in microseconds (a spin).
    #[arg(long, default_value_t = 0)]
    pub delay_us: u64,
    /// Most bytes a connection may have waiting to be written before the server stops
    /// reading it.
    #[arg(long, default_value_t = 256 * 1024)]
    pub buffer_bytes: usize,
    /// Listen backlog.
    #[arg(long, default_value_t = 4096)]
    pub backlog: u32,
}

/// One served connection.
struct Connection {
    stream: TcpStream,
    /// Bytes read but not yet written back, oldest first.
    pending: Vec<u8>,
    /// How much of `pending` was written already.
    pending_at: usize,
}

/// What the server counted, printed when it ends (SIGINT or SIGTERM).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TcpEchoCounters {
    /// Connections accepted and served.
    pub accepted: u64,
    /// Connections accepted and closed at once because [`CONNECTIONS_MAX`] were open.
    pub refused_full: u64,
    /// Connections that ended (orderly or by error).
    pub closed: u64,
    /// Bytes echoed.
    pub bytes: u64,
}

/// Runs the server until the process is stopped.
pub fn tcp_echo(args: TcpEchoArgs) -> Result<()> {
    if args.port == 0 {
        bail!("--port 0: give the port clients connect to (1-65535)");
    }
    if !(1..=1 << 30).contains(&args.buffer_bytes) {
        bail!("--buffer-bytes {}: expected 1 to 2^30", args.buffer_bytes);
    }
    if args.delay_us > 1_000_000 {
        bail!("--delay-us {}: expected at most 1000000", args.delay_us);
    }
    if let Some(cpu) = args.cpu {
        melange_sys::cpu::pin_current_thread(cpu)
            .with_context(|| format!("pinning to cpu {cpu}"))?;
    }
    let addr = SocketAddrV4::new(args.addr, args.port);
    let listener = bind(addr, args.backlog)?;
    eprintln!(
        "baseline tcp-echo on {addr}, idle {:?}, buffer {} B per connection",
        args.idle, args.buffer_bytes
    );
    // The handler runs on ctrlc's own thread, so it wakes the server through an eventfd the
    // server's epoll watches: a blocked `epoll_wait` returns at once.
    let stop = std::sync::Arc::new(
        melange_sys::eventfd::EventFd::new().context("creating the stop eventfd")?,
    );
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            let _ = stop.signal();
        })
        .context("installing the SIGINT/SIGTERM handler")?;
    }
    let mut server = Server::new(listener, args)?;
    server
        .epoll
        .add(stop.as_fd(), STOP_TOKEN, Interest::READABLE)
        .context("registering the stop eventfd")?;
    while !server.stopped {
        server.run_once()?;
    }
    let c = server.counters;
    eprintln!(
        "baseline tcp-echo: accepted {} refused (table full) {} closed {} bytes echoed {}",
        c.accepted, c.refused_full, c.closed, c.bytes
    );
    Ok(())
}

fn bind(addr: SocketAddrV4, backlog: u32) -> Result<TcpListener> {
    // std's `TcpListener::bind` uses a backlog of 128 and sets SO_REUSEADDR; the backlog is
    // raised with a second `listen`, which Linux allows on a listening socket.
    let listener = TcpListener::bind(addr).with_context(|| {
        format!("binding {addr} (is another server on that port? `ss -ltnp` shows it)")
    })?;
    melange_sys::socket::listen(listener.as_fd(), backlog)
        .with_context(|| format!("setting the listen backlog of {addr} to {backlog}"))?;
    listener
        .set_nonblocking(true)
        .context("making the listener non-blocking")?;
    Ok(listener)
}

/// The server's state: the listener, the epoll instance and the connection table.
struct Server {
    listener: TcpListener,
    epoll: Epoll,
    connections: Vec<Option<Connection>>,
    free: Vec<usize>,
    buffer: Vec<u8>,
    events: Vec<EpollEvent>,
    args: TcpEchoArgs,
    counters: TcpEchoCounters,
    /// Set when the stop eventfd fired.
    stopped: bool,
}

impl Server {
    fn new(listener: TcpListener, args: TcpEchoArgs) -> Result<Self> {
        let epoll = Epoll::new().context("creating the epoll instance")?;
        epoll
            .add(listener.as_fd(), LISTENER_TOKEN, Interest::READABLE)
            .context("registering the listener")?;
        Ok(Self {
            listener,
            epoll,
            connections: Vec::new(),
            free: Vec::new(),
            buffer: vec![0; READ_BYTES],
            events: vec![EpollEvent::EMPTY; EVENTS_MAX],
            args,
            counters: TcpEchoCounters::default(),
            stopped: false,
        })
    }

    /// One `epoll_wait` and the work it reports.
    fn run_once(&mut self) -> Result<()> {
        let timeout = match self.args.idle {
            IdleMode::Spin => Some(0),
            IdleMode::Block => None,
        };
        let n = self
            .epoll
            .wait(&mut self.events, timeout)
            .context("epoll_wait")?;
        for i in 0..n {
            let event = self.events[i];
            if event.token() == LISTENER_TOKEN {
                self.accept()?;
            } else if event.token() == STOP_TOKEN {
                self.stopped = true;
            } else {
                self.serve(event.token() as usize, event);
            }
        }
        Ok(())
    }

    fn accept(&mut self) -> Result<()> {
        for _ in 0..ACCEPTS_PER_EVENT_MAX {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(()),
                // The connection died in the queue, or descriptors ran out for a moment:
                // nothing to serve, the server goes on.
                Err(_) => return Ok(()),
            };
            let open = self.connections.len() - self.free.len();
            if open >= CONNECTIONS_MAX {
                self.counters.refused_full += 1;
                continue; // dropped: closed at once
            }
            if stream.set_nonblocking(true).is_err() || stream.set_nodelay(true).is_err() {
                continue;
            }
            let slot = match self.free.pop() {
                Some(slot) => slot,
                None => {
                    self.connections.push(None);
                    self.connections.len() - 1
                }
            };
            if self
                .epoll
                .add(stream.as_fd(), slot as u64, Interest::READABLE)
                .is_err()
            {
                self.free.push(slot);
                continue;
            }
            self.connections[slot] = Some(Connection {
                stream,
                pending: Vec::new(),
                pending_at: 0,
            });
            self.counters.accepted += 1;
        }
        Ok(())
    }

    fn serve(&mut self, slot: usize, event: EpollEvent) {
        let Some(Some(conn)) = self.connections.get_mut(slot) else {
            return; // a report for a connection closed earlier in this batch
        };
        let keep = if conn.pending_at < conn.pending.len() {
            // Waiting for room: write what is pending; read again once it is all out.
            event.is_writable() || event.is_error()
        } else {
            event.is_readable() || event.is_error()
        };
        if !keep {
            return;
        }
        let open = match flush(conn, &mut self.counters) {
            Ok(true) => echo(
                conn,
                &mut self.buffer,
                self.args.delay_us,
                self.args.buffer_bytes,
                &mut self.counters,
            ),
            Ok(false) => Ok(Wants::Write),
            Err(()) => Err(()),
        };
        match open {
            Ok(wants) => {
                let interest = match wants {
                    Wants::Read => Interest::READABLE,
                    Wants::Write => Interest {
                        readable: false,
                        writable: true,
                    },
                };
                if self
                    .epoll
                    .modify(conn.stream.as_fd(), slot as u64, interest)
                    .is_err()
                {
                    self.close(slot);
                }
            }
            Err(()) => self.close(slot),
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(conn) = self.connections[slot].take() {
            let _ = self.epoll.remove(conn.stream.as_fd());
            self.free.push(slot);
            self.counters.closed += 1;
        }
    }
}

/// What a connection waits for next.
enum Wants {
    Read,
    Write,
}

/// Writes what is pending. `Ok(true)`: nothing left; `Ok(false)`: the kernel is full;
/// `Err`: the connection is gone.
fn flush(conn: &mut Connection, counters: &mut TcpEchoCounters) -> Result<bool, ()> {
    while conn.pending_at < conn.pending.len() {
        match conn.stream.write(&conn.pending[conn.pending_at..]) {
            Ok(0) => return Err(()),
            Ok(k) => {
                conn.pending_at += k;
                counters.bytes += k as u64;
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
    conn.pending.clear();
    conn.pending_at = 0;
    Ok(true)
}

/// Reads what arrived and writes it back; what the kernel does not take waits in `pending`.
fn echo(
    conn: &mut Connection,
    buffer: &mut [u8],
    delay_us: u64,
    pending_max: usize,
    counters: &mut TcpEchoCounters,
) -> Result<Wants, ()> {
    let n = match conn.stream.read(buffer) {
        Ok(0) => return Err(()), // the peer closed: so do we
        Ok(n) => n,
        Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
            return Ok(Wants::Read)
        }
        Err(_) => return Err(()),
    };
    if delay_us > 0 {
        let end = melange_sys::clock::monotonic_ns() + delay_us * 1000;
        while melange_sys::clock::monotonic_ns() < end {
            std::hint::spin_loop();
        }
    }
    let mut written = 0;
    while written < n {
        match conn.stream.write(&buffer[written..n]) {
            Ok(0) => return Err(()),
            Ok(k) => written += k,
            Err(err) if err.kind() == ErrorKind::WouldBlock => break,
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
    counters.bytes += written as u64;
    if written == n {
        return Ok(Wants::Read);
    }
    // At most `READ_BYTES` is read while nothing is pending, so `pending` stays under
    // `pending_max.max(READ_BYTES)`.
    let rest = &buffer[written..n];
    if rest.len() > pending_max.max(READ_BYTES) {
        return Err(());
    }
    conn.pending.extend_from_slice(rest);
    Ok(Wants::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn start() -> (SocketAddrV4, std::thread::JoinHandle<()>) {
        let listener = bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 128).unwrap();
        let std::net::SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            unreachable!("bound to an IPv4 address")
        };
        let args = TcpEchoArgs {
            addr: *addr.ip(),
            port: addr.port(),
            cpu: None,
            idle: IdleMode::Block,
            delay_us: 0,
            buffer_bytes: 4096,
            backlog: 128,
        };
        let mut server = Server::new(listener, args).unwrap();
        let handle = std::thread::spawn(move || loop {
            server.run_once().unwrap();
        });
        (addr, handle)
    }

    #[test]
    fn echoes_many_connections_byte_exact_including_large_transfers() {
        let (addr, _server) = start();
        let mut clients: Vec<TcpStream> =
            (0..20).map(|_| TcpStream::connect(addr).unwrap()).collect();
        for (i, client) in clients.iter_mut().enumerate() {
            client
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let message = format!("hello {i}");
            client.write_all(message.as_bytes()).unwrap();
            let mut reply = vec![0; message.len()];
            client.read_exact(&mut reply).unwrap();
            assert_eq!(reply, message.as_bytes());
        }
        // 4 MB through one connection, written by one thread and read by another, so the
        // server's pending buffer and write interest are exercised (its buffer is 4 KiB).
        let mut client = TcpStream::connect(addr).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let data: Vec<u8> = (0..4_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut writer = client.try_clone().unwrap();
        let sent = data.clone();
        let send = std::thread::spawn(move || writer.write_all(&sent).unwrap());
        let mut back = vec![0; data.len()];
        client.read_exact(&mut back).unwrap();
        send.join().unwrap();
        assert!(back == data, "the echo is byte-exact");
    }

    #[test]
    fn a_closed_connection_frees_its_slot() {
        let listener = bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 128).unwrap();
        let addr = listener.local_addr().unwrap();
        let args = TcpEchoArgs {
            addr: Ipv4Addr::LOCALHOST,
            port: addr.port(),
            cpu: None,
            idle: IdleMode::Spin,
            delay_us: 0,
            buffer_bytes: 4096,
            backlog: 128,
        };
        let mut server = Server::new(listener, args).unwrap();
        for round in 0..50 {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(b"x").unwrap();
            let mut b = [0u8; 1];
            let mut got = 0;
            c.set_nonblocking(true).unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while got == 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no echo in round {round}"
                );
                server.run_once().unwrap();
                match c.read(&mut b) {
                    Ok(n) => got = n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(&b, b"x");
            drop(c);
            while server.counters.closed < round + 1 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "close not seen in round {round}"
                );
                server.run_once().unwrap();
            }
        }
        assert_eq!(server.counters.accepted, 50);
        assert_eq!(server.counters.bytes, 50);
        assert!(
            server.connections.len() <= 2,
            "slots are reused: {}",
            server.connections.len()
        );
    }

    #[test]
    fn connect_request_close_churn_against_a_server_thread() {
        let (addr, _server) = start();
        for _ in 0..50 {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(b"x").unwrap();
            let mut b = [0u8; 1];
            c.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"x");
        }
    }
}
