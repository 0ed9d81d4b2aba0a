//! TCP on kernel sockets: the contract's TCP commands and events served by the kernel's TCP,
//! for the kernel-socket transport ([`crate::KernelTransport`]).
//!
//! This is the portable fallback of Melange's own TCP: no privileges, any interface, the same
//! app. `Listen` is a listening socket (with `SO_REUSEPORT`, so every engine listens on the
//! same port and the kernel spreads connections over them), `Connect` a non-blocking connect,
//! and each connection a non-blocking stream with `TCP_NODELAY` (the contract's default: Nagle
//! off). All of an engine's sockets sit in one level-triggered epoll instance, read with one
//! `epoll_wait(0)` per pass; that descriptor is also what a sleeping engine waits on.
//!
//! # Where the kernel's semantics differ from Melange's TCP
//!
//! - **Send.** Melange's stack holds the app's buffers until the peer acknowledges them; the
//!   kernel copies into its socket buffer. So here a `Send` writes at once (one `writev` over
//!   the chain) and answers `Accepted { bytes, rest }` with what the kernel's buffer took, and
//!   [`Event::Sent`] (in the next pass) means "taken by the kernel", not "acknowledged", and
//!   gives the written buffers back. When a send came back partly refused, the connection
//!   waits for room and then reports `Sent { bytes: 0, data: None }`: the signal to send the
//!   rest, as an acknowledgement is on Melange's stack.
//! - **Receive.** Each readable connection is read into one pool frame per pass, lent to the
//!   app as [`Event::Recv`]. The window is the kernel's; `RecvDone` only returns the bytes to
//!   this connection's receive budget ([`RECV_LENT_BYTES_MAX`]): a connection whose app holds
//!   that much unreturned data is not read until it gives some back, so one slow reader cannot
//!   drain the pool that every connection receives into.
//! - **Close.** `Close` shuts the sending side down (FIN after the data); the connection ends,
//!   with [`Event::Closed`], once the peer has closed too. `Abort` closes with `SO_LINGER` 0,
//!   which sends RST, and reports `Closed { reason: Aborted }` in the next pass. When a
//!   connection ends, buffers taken by the kernel and not yet reported go back to the pool:
//!   the data is in the kernel already, and the handle is stale.
//!
//! Alternative rejected: io_uring with multishot accept and receive. It saves the readiness
//! round trip, but a provided-buffer ring would not be the engine's pool (see
//! `uring_transport` for the same trade-off on UDP), and epoll is what the baseline server
//! uses, which keeps the fallback's comparison plain.

use melange_core::contract::{
    CloseReason, Command, CommandError, ConnOption, Event, EventQueue, Outcome, Refused, SendError,
};
use melange_core::handle::{ConnKind, Handle, HandleError, HandleTable, ListenerKind};
use melange_core::{BufChain, ConnId, FrameOwner, ListenerId, PacketPool};
use melange_sys::epoll::{Epoll, EpollEvent, Interest};
use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};

/// Most listeners of one engine.
pub const TCP_LISTENERS_MAX: usize = 64;
/// Most connections of one engine (accepted and opened). A connection accepted beyond it is
/// closed at once and counted.
pub const TCP_CONNECTIONS_MAX: usize = 16_384;
/// Most bytes one connection may have lent to the app (received, not yet given back with
/// `RecvDone`) before it stops being read.
pub const RECV_LENT_BYTES_MAX: u32 = 256 * 1024;
/// Readiness reports taken per pass.
const READY_MAX: usize = 64;
/// Most connections accepted per readiness report of a listener.
const ACCEPTS_PER_REPORT_MAX: usize = 32;
/// Most buffers given to one `writev`.
const SEND_IOVECS_MAX: usize = 16;
/// The main epoll token of the listeners' own epoll instance. A connection's token is its
/// handle's raw value, whose index (below [`TCP_CONNECTIONS_MAX`]) never makes it this.
const LISTENERS_TOKEN: u64 = u64::MAX;
/// Readiness reports of listeners taken per pass.
const LISTENERS_READY_MAX: usize = 8;

/// What the kernel TCP part counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelTcpCounters {
    /// Connections accepted and handed to the app.
    pub accepted: u64,
    /// Connections accepted and closed at once: the connection table or the event queue
    /// was full.
    pub accept_refused: u64,
    /// `accept` failures other than "nothing waiting": out of descriptors (`EMFILE`,
    /// `ENFILE`; raise `ulimit -n`), out of memory, or a connection that died queued. The
    /// connection stays queued in the kernel and is retried on a later pass.
    pub accept_errors: u64,
    /// Reads that found the pool empty (retried next pass).
    pub rx_pool_empty: u64,
    /// Connections paused because their app holds [`RECV_LENT_BYTES_MAX`] bytes.
    pub rx_paused: u64,
    /// Sends the kernel took only partly.
    pub tx_partial: u64,
    /// Reads that returned data.
    pub reads: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Writes that the kernel took bytes of.
    pub writes: u64,
    /// Bytes the kernel took.
    pub written_bytes: u64,
}

enum State {
    /// A `Connect` in progress; the token goes into `Connected`/`ConnectFailed`.
    Connecting { token: u64 },
    /// Established.
    Open,
}

struct Conn {
    stream: TcpStream,
    state: State,
    /// Bytes lent to the app and not given back.
    lent: u32,
    /// The peer's FIN was read.
    peer_closed: bool,
    /// `Close` shut our sending side.
    write_closed: bool,
    /// A send was partly refused: report `Sent { bytes: 0 }` when there is room.
    want_room: bool,
    /// Buffers the kernel took, to give back with the next `Sent`.
    taken: Option<BufChain>,
    /// Bytes the kernel took since the last `Sent`.
    taken_bytes: u32,
    /// In `notices` already.
    noticed: bool,
    /// The interest registered with epoll.
    interest: Interest,
}

impl Conn {
    fn wanted_interest(&self) -> Interest {
        match self.state {
            State::Connecting { .. } => Interest {
                readable: false,
                writable: true,
            },
            State::Open => Interest {
                readable: !self.peer_closed && self.lent < RECV_LENT_BYTES_MAX,
                writable: self.want_room,
            },
        }
    }
}

/// The kernel TCP part of one engine's kernel transport. See the module documentation.
pub struct KernelTcp {
    addr: Ipv4Addr,
    reuse_port: bool,
    epoll: Epoll,
    /// The listeners' own instance, registered in `epoll` as [`LISTENERS_TOKEN`], so a
    /// report's token says at once which table it names.
    listen_epoll: Epoll,
    listeners: HandleTable<ListenerKind, TcpListener>,
    conns: HandleTable<ConnKind, Conn>,
    ready: Vec<EpollEvent>,
    /// Connections with a `Sent` to report, each at most once.
    notices: VecDeque<ConnId>,
    /// Connections that ended outside a readiness report (`Abort`, `Close` after the peer's
    /// FIN), to report as `Closed`.
    ended: VecDeque<(ConnId, CloseReason)>,
    counters: KernelTcpCounters,
}

fn token_of<K>(handle: Handle<K>) -> u64 {
    handle.to_raw()
}

fn handle_of<K>(token: u64) -> Handle<K> {
    Handle::from_raw(token)
}

fn kernel_error(command: &'static str, error: &std::io::Error) -> CommandError {
    match error.raw_os_error() {
        Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => SendError::NoRoute.into(),
        Some(errno) => CommandError::Kernel { command, errno },
        None => CommandError::Kernel {
            command,
            errno: libc::EIO,
        },
    }
}

fn close_reason(error: &std::io::Error) -> CloseReason {
    match error.kind() {
        ErrorKind::ConnectionRefused => CloseReason::Refused,
        ErrorKind::TimedOut => CloseReason::TimedOut,
        ErrorKind::ConnectionAborted if error.raw_os_error() == Some(libc::ETIMEDOUT) => {
            CloseReason::TimedOut
        }
        _ => CloseReason::Reset,
    }
}

impl KernelTcp {
    /// An engine's TCP part with no listener or connection yet, binding on `addr`.
    ///
    /// # Errors
    /// The `epoll_create` error (out of descriptors).
    pub fn new(addr: Ipv4Addr, reuse_port: bool) -> std::io::Result<Self> {
        let epoll = Epoll::new()?;
        let listen_epoll = Epoll::new()?;
        epoll.add(listen_epoll.as_fd(), LISTENERS_TOKEN, Interest::READABLE)?;
        Ok(Self {
            addr,
            reuse_port,
            epoll,
            listen_epoll,
            listeners: HandleTable::new(TCP_LISTENERS_MAX),
            conns: HandleTable::new(TCP_CONNECTIONS_MAX),
            ready: vec![EpollEvent::EMPTY; READY_MAX + LISTENERS_READY_MAX],
            notices: VecDeque::with_capacity(TCP_CONNECTIONS_MAX),
            ended: VecDeque::with_capacity(TCP_CONNECTIONS_MAX),
            counters: KernelTcpCounters::default(),
        })
    }

    /// The descriptor that is readable while any socket has something to report.
    pub fn wakeup_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }

    /// The counters.
    pub fn counters(&self) -> KernelTcpCounters {
        self.counters
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The local address of a listener (its port, when it listened on port 0).
    pub fn listener_addr(&self, listener: ListenerId) -> Result<SocketAddrV4, CommandError> {
        let socket = self.listeners.get(listener)?;
        match socket.local_addr() {
            Ok(std::net::SocketAddr::V4(addr)) => Ok(addr),
            Ok(_) => Err(CommandError::Kernel {
                command: "listen",
                errno: libc::EAFNOSUPPORT,
            }),
            Err(error) => Err(kernel_error("listen", &error)),
        }
    }

    /// Turns what the sockets report into events: first the `Sent` and `Closed` reports
    /// owed from earlier commands, then one `epoll_wait(0)`. Never more events than `events`
    /// has room for; at most `budget` readiness reports. Returns the reports handled.
    pub fn poll_receive(
        &mut self,
        pool: &mut PacketPool,
        events: &mut EventQueue,
        budget: usize,
    ) -> usize {
        let mut work = 0;
        while events.room() > 0 {
            let Some(conn) = self.notices.pop_front() else {
                break;
            };
            let Ok(entry) = self.conns.get_mut(conn) else {
                continue; // ended since; its buffers went back to the pool then
            };
            entry.noticed = false;
            let data = entry.taken.take();
            if let Some(data) = &data {
                pool.hand_over_chain(data, FrameOwner::App);
            }
            let bytes = std::mem::take(&mut entry.taken_bytes);
            let _ = events.push(Event::Sent { conn, bytes, data });
            work += 1;
        }
        while events.room() > 0 {
            let Some((conn, reason)) = self.ended.pop_front() else {
                break;
            };
            let _ = events.push(Event::Closed { conn, reason });
            work += 1;
        }
        let max = budget.min(READY_MAX);
        if max == 0 || events.room() == 0 {
            return work;
        }
        let n = match self.epoll.wait(&mut self.ready[..max], Some(0)) {
            Ok(n) => n,
            Err(_) => return work, // only EINTR-like failures of an owned instance; next pass retries
        };
        for i in 0..n {
            if events.room() == 0 {
                break; // level-triggered: whatever is left is reported again
            }
            let report = self.ready[i];
            if report.token() == LISTENERS_TOKEN {
                work += self.accept_ready(events);
            } else {
                self.serve(pool, events, handle_of(report.token()), report);
                work += 1;
            }
        }
        work
    }

    /// Accepts on the listeners that have connections waiting; returns the connections
    /// accepted. A listener that stays readable while `accept` fails (out of descriptors)
    /// counts as no work, so the engine's idle policy still lets it sleep between retries
    /// instead of spinning on a report it cannot act on.
    fn accept_ready(&mut self, events: &mut EventQueue) -> usize {
        let (_, listeners) = self.ready.split_at_mut(READY_MAX);
        let n = self.listen_epoll.wait(listeners, Some(0)).unwrap_or(0);
        let mut accepted = 0;
        for i in 0..n {
            let token = self.ready[READY_MAX + i].token();
            accepted += self.accept(handle_of(token), events);
        }
        accepted
    }

    fn accept(&mut self, listener: ListenerId, events: &mut EventQueue) -> usize {
        let mut accepted = 0;
        for _ in 0..ACCEPTS_PER_REPORT_MAX {
            if events.room() == 0 {
                return accepted;
            }
            let Ok(socket) = self.listeners.get(listener) else {
                return accepted;
            };
            let (stream, peer) = match socket.accept() {
                Ok((stream, std::net::SocketAddr::V4(peer))) => (stream, peer),
                Ok(_) => continue, // an IPv6 peer cannot reach an IPv4 listener
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return accepted,
                Err(_) => {
                    self.counters.accept_errors += 1;
                    return accepted;
                }
            };
            if stream.set_nonblocking(true).is_err() || stream.set_nodelay(true).is_err() {
                self.counters.accept_refused += 1;
                continue;
            }
            let conn = Conn {
                stream,
                state: State::Open,
                lent: 0,
                peer_closed: false,
                write_closed: false,
                want_room: false,
                taken: None,
                taken_bytes: 0,
                noticed: false,
                interest: Interest::READABLE,
            };
            let id = match self.conns.insert(conn) {
                Ok(id) => id,
                Err(_) => {
                    // Dropping the stream closes it: the client sees the connection end.
                    self.counters.accept_refused += 1;
                    continue;
                }
            };
            let entry = self.conns.get(id).expect("just inserted");
            if self
                .epoll
                .add(entry.stream.as_fd(), token_of(id), Interest::READABLE)
                .is_err()
            {
                let _ = self.conns.remove(id);
                self.counters.accept_refused += 1;
                continue;
            }
            self.counters.accepted += 1;
            accepted += 1;
            let _ = events.push(Event::Accepted {
                listener,
                conn: id,
                peer,
            });
        }
        accepted
    }

    fn serve(
        &mut self,
        pool: &mut PacketPool,
        events: &mut EventQueue,
        id: ConnId,
        report: EpollEvent,
    ) {
        let Ok(conn) = self.conns.get_mut(id) else {
            return; // ended earlier in this pass
        };
        if let State::Connecting { token } = conn.state {
            match conn.stream.take_error() {
                Ok(None) if conn.stream.peer_addr().is_ok() => {
                    conn.state = State::Open;
                    let _ = conn.stream.set_nodelay(true);
                    let _ = events.push(Event::Connected { conn: id, token });
                    self.update_interest(id);
                }
                Ok(None) => {} // not yet (a spurious report)
                Ok(Some(error)) | Err(error) => {
                    let reason = close_reason(&error);
                    self.remove(pool, id);
                    let _ = events.push(Event::ConnectFailed { token, reason });
                }
            }
            return;
        }
        if report.is_writable() && conn.want_room {
            conn.want_room = false;
            if !conn.noticed {
                conn.noticed = true;
                self.notices.push_back(id);
            }
            self.update_interest(id);
        }
        let Ok(conn) = self.conns.get_mut(id) else {
            return;
        };
        if !(report.is_readable() || report.is_error()) {
            return;
        }
        if conn.peer_closed || conn.lent >= RECV_LENT_BYTES_MAX {
            // Paused or at EOF: only an error is news.
            if let Ok(Some(error)) = conn.stream.take_error() {
                let reason = close_reason(&error);
                self.end(pool, events, id, reason);
            }
            return;
        }
        let Some(mut buf) = pool.alloc_for(FrameOwner::App) else {
            self.counters.rx_pool_empty += 1;
            return;
        };
        let room = pool.tailroom(&buf);
        let _ = pool.set_len(&mut buf, room);
        let read = conn.stream.read(pool.data_mut(&buf));
        match read {
            Ok(0) => {
                pool.free(buf);
                conn.peer_closed = true;
                if conn.write_closed {
                    self.end(pool, events, id, CloseReason::Closed);
                } else {
                    let _ = events.push(Event::PeerClosed { conn: id });
                    self.update_interest(id);
                }
            }
            Ok(n) => {
                self.counters.reads += 1;
                self.counters.read_bytes += n as u64;
                let _ = pool.set_len(&mut buf, n);
                conn.lent = conn.lent.saturating_add(n as u32);
                let paused = conn.lent >= RECV_LENT_BYTES_MAX;
                let _ = events.push(Event::Recv {
                    conn: id,
                    data: BufChain::from(buf),
                });
                if paused {
                    self.counters.rx_paused += 1;
                    self.update_interest(id);
                }
            }
            Err(error)
                if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) =>
            {
                pool.free(buf);
            }
            Err(error) => {
                pool.free(buf);
                self.end(pool, events, id, close_reason(&error));
            }
        }
    }

    /// Ends a connection now and reports it in `events` (room was checked by the caller).
    fn end(
        &mut self,
        pool: &mut PacketPool,
        events: &mut EventQueue,
        id: ConnId,
        reason: CloseReason,
    ) {
        self.remove(pool, id);
        let _ = events.push(Event::Closed { conn: id, reason });
    }

    /// Forgets a connection: unregisters and closes its socket, frees what it holds.
    fn remove(&mut self, pool: &mut PacketPool, id: ConnId) {
        if let Ok(conn) = self.conns.remove(id) {
            let _ = self.epoll.remove(conn.stream.as_fd());
            if let Some(taken) = conn.taken {
                pool.free_chain(taken);
            }
        }
    }

    fn update_interest(&mut self, id: ConnId) {
        let Ok(conn) = self.conns.get_mut(id) else {
            return;
        };
        let wanted = conn.wanted_interest();
        if wanted != conn.interest
            && self
                .epoll
                .modify(conn.stream.as_fd(), token_of(id), wanted)
                .is_ok()
        {
            conn.interest = wanted;
        }
    }

    /// Serves a TCP command; any other is refused as unsupported by `transport`.
    pub fn submit(
        &mut self,
        pool: &mut PacketPool,
        command: Command,
        transport: &'static str,
    ) -> Result<Outcome, Refused> {
        match command {
            Command::Listen { port, backlog } => self.listen(port, backlog),
            Command::Connect { to, token } => self.connect(to, token),
            Command::Send { conn, data } => self.send(pool, conn, data),
            Command::RecvDone { conn, bytes } => {
                let entry = self.conns.get_mut(conn).map_err(Refused::new)?;
                entry.lent = entry.lent.saturating_sub(bytes);
                self.update_interest(conn);
                Ok(Outcome::Done)
            }
            Command::Close { conn } => {
                let entry = self.conns.get_mut(conn).map_err(Refused::new)?;
                if let State::Connecting { .. } = entry.state {
                    // Nothing was said yet: closing an unopened connection is an abort.
                    return self.abort(pool, conn);
                }
                if !entry.write_closed {
                    entry.write_closed = true;
                    let _ = entry.stream.shutdown(Shutdown::Write);
                    if entry.peer_closed {
                        self.remove(pool, conn);
                        self.ended.push_back((conn, CloseReason::Closed));
                    }
                }
                Ok(Outcome::Done)
            }
            Command::Abort { conn } => self.abort(pool, conn),
            Command::SetOption { conn, option } => {
                let entry = self.conns.get(conn).map_err(Refused::new)?;
                let result = match option {
                    ConnOption::NoDelay(on) => entry.stream.set_nodelay(on),
                    ConnOption::KeepaliveNs(idle) => melange_sys::socket::set_keepalive(
                        entry.stream.as_fd(),
                        idle.map(|ns| ns.div_ceil(1_000_000_000).min(u64::from(u32::MAX)) as u32),
                    ),
                    _ => {
                        return Err(Refused::new(CommandError::Unsupported {
                            command: "set_option",
                            transport,
                        }))
                    }
                };
                result
                    .map(|()| Outcome::Done)
                    .map_err(|e| Refused::new(kernel_error("set_option", &e)))
            }
            other => {
                let error = CommandError::Unsupported {
                    command: other.name(),
                    transport,
                };
                Err(Refused {
                    error,
                    data: other.into_data(),
                })
            }
        }
    }

    fn listen(&mut self, port: u16, backlog: u32) -> Result<Outcome, Refused> {
        if port == 0 {
            return Err(Refused::new(CommandError::Bind {
                port,
                reason: "listening needs a port, 1..=65535",
            }));
        }
        let addr = SocketAddrV4::new(self.addr, port);
        let socket = melange_sys::socket::tcp_listener(addr, backlog.max(1), self.reuse_port)
            .map_err(|e| Refused::new(crate::kernel::bind_error(port, &e)))?;
        let id = self
            .listeners
            .insert(socket)
            .map_err(|(e, _)| Refused::new(e))?;
        let socket = self.listeners.get(id).expect("just inserted");
        if let Err(error) = self
            .listen_epoll
            .add(socket.as_fd(), token_of(id), Interest::READABLE)
        {
            let _ = self.listeners.remove(id);
            return Err(Refused::new(kernel_error("listen", &error)));
        }
        Ok(Outcome::Listener(id))
    }

    fn connect(&mut self, to: SocketAddrV4, token: u64) -> Result<Outcome, Refused> {
        if self.conns.len() >= TCP_CONNECTIONS_MAX {
            return Err(Refused::new(HandleError::Full {
                capacity: TCP_CONNECTIONS_MAX,
            }));
        }
        let stream = melange_sys::socket::connect_nonblocking(to)
            .map_err(|e| Refused::new(kernel_error("connect", &e)))?;
        let conn = Conn {
            stream,
            state: State::Connecting { token },
            lent: 0,
            peer_closed: false,
            write_closed: false,
            want_room: false,
            taken: None,
            taken_bytes: 0,
            noticed: false,
            interest: Interest {
                readable: false,
                writable: true,
            },
        };
        let id = self.conns.insert(conn).map_err(|(e, _)| Refused::new(e))?;
        let entry = self.conns.get(id).expect("just inserted");
        if let Err(error) = self
            .epoll
            .add(entry.stream.as_fd(), token_of(id), entry.interest)
        {
            let _ = self.conns.remove(id);
            return Err(Refused::new(kernel_error("connect", &error)));
        }
        Ok(Outcome::Conn(id))
    }

    fn abort(&mut self, pool: &mut PacketPool, conn: ConnId) -> Result<Outcome, Refused> {
        let entry = self.conns.get(conn).map_err(Refused::new)?;
        let _ = melange_sys::socket::set_linger_zero(entry.stream.as_fd());
        self.remove(pool, conn);
        self.ended.push_back((conn, CloseReason::Aborted));
        Ok(Outcome::Done)
    }

    fn send(
        &mut self,
        pool: &mut PacketPool,
        id: ConnId,
        data: BufChain,
    ) -> Result<Outcome, Refused> {
        let refuse = |error: CommandError, data: BufChain| Refused {
            error,
            data: Some(data),
        };
        if !pool.is_held_by(data.head(), FrameOwner::App) {
            return Err(refuse(CommandError::NotOwned, data));
        }
        let conn = match self.conns.get_mut(id) {
            Ok(conn) => conn,
            Err(error) => return Err(refuse(error.into(), data)),
        };
        let reason = match conn.state {
            State::Connecting { .. } => Some("the connection is still opening; wait for Connected"),
            State::Open if conn.write_closed => Some("the sending side was closed with Close"),
            State::Open => None,
        };
        if let Some(reason) = reason {
            return Err(refuse(
                CommandError::ConnNotOpen {
                    command: "send",
                    reason,
                },
                data,
            ));
        }
        let written = {
            let mut slices = [IoSlice::new(&[]); SEND_IOVECS_MAX];
            let mut count = 0;
            for segment in pool.chain_segments(&data).take(SEND_IOVECS_MAX) {
                slices[count] = IoSlice::new(segment);
                count += 1;
            }
            match conn.stream.write_vectored(&slices[..count]) {
                Ok(n) => n,
                Err(error)
                    if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) =>
                {
                    0
                }
                Err(error) => return Err(refuse(kernel_error("send", &error), data)),
            }
        };
        // Split the chain: frames written whole are the kernel's now (reported with the next
        // `Sent`); a frame written in part keeps its unwritten tail, which comes back in
        // `rest` with every frame after it.
        let mut left = written;
        let mut rest = Some(data);
        while left > 0 {
            let chain = rest
                .take()
                .expect("the kernel took no more than the chain held");
            let (mut head, tail) = pool.chain_pop_front(chain);
            if head.len() <= left {
                left -= head.len();
                pool.hand_over(&head, FrameOwner::Stack);
                match conn.taken.as_mut() {
                    None => conn.taken = Some(BufChain::from(head)),
                    Some(taken) => {
                        if let Err((_, head)) = pool.chain_push(taken, head) {
                            // A chain of the longest length: give this frame back to the
                            // pool; the data is in the kernel already.
                            pool.free(head);
                        }
                    }
                }
                rest = tail;
            } else {
                head.advance(left);
                left = 0;
                let mut chain = BufChain::from(head);
                if let Some(tail) = tail {
                    let mut tail = Some(tail);
                    while let Some(t) = tail.take() {
                        let (frame, next) = pool.chain_pop_front(t);
                        pool.chain_push(&mut chain, frame)
                            .map_err(|(e, _)| e)
                            .expect("the frames formed one chain before, so they fit one again");
                        tail = next;
                    }
                }
                rest = Some(chain);
            }
        }
        let bytes = written as u32;
        if bytes > 0 {
            self.counters.writes += 1;
            self.counters.written_bytes += u64::from(bytes);
        }
        conn.taken_bytes = conn.taken_bytes.saturating_add(bytes);
        if bytes > 0 && !conn.noticed {
            conn.noticed = true;
            self.notices.push_back(id);
        }
        if rest.is_some() {
            self.counters.tx_partial += 1;
            conn.want_room = true;
            self.update_interest(id);
        }
        Ok(Outcome::Accepted { bytes, rest })
    }

    /// Closes everything and gives every buffer back to the pool.
    pub fn shutdown(&mut self, pool: &mut PacketPool) {
        let ids: Vec<ConnId> = self.conns.iter().map(|(id, _)| id).collect();
        for id in ids {
            self.remove(pool, id);
        }
        let listeners: Vec<ListenerId> = self.listeners.iter().map(|(id, _)| id).collect();
        for id in listeners {
            let _ = self.listeners.remove(id);
        }
        self.notices.clear();
        self.ended.clear();
    }
}
