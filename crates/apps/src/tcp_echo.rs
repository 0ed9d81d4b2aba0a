//! TCP echo: every byte a client sends comes back on its connection, zero-copy.
//!
//! The app listens on its ports, and each `Recv` buffer is sent straight back with
//! `Command::Send`, so the echo costs no copy in the app. The transport answers how many bytes
//! it took (IX's explicit flow control): what it did not take waits in the connection's
//! pending chain, and the app sends it again at the next `Sent` of that connection (an
//! acknowledgement on Melange's stack, room in the kernel's buffer on kernel sockets). While a
//! connection has bytes pending, what arrives is appended behind them, so the order of the
//! byte stream is kept; the transport's receive budget bounds how much that can be.
//!
//! Received bytes are given back with `RecvDone` once the send that carries them was taken,
//! so a client that does not read its replies stops being read itself (back-pressure end to
//! end) instead of growing the server's memory. When the peer closes its side, the app closes
//! its own after the pending bytes are out.

use melange_core::contract::{Command, CommandError, Outcome};
use melange_core::{App, BufChain, ConnId, Event, IoContext, ListenerId};

/// Most ports one TCP echo app listens on.
pub const TCP_ECHO_PORTS_MAX: usize = 64;
/// Connection slots the app tracks (the handle index of a connection selects its slot); a
/// transport never hands out more connections than its table holds, which is at most this.
pub const TCP_ECHO_CONNECTIONS_MAX: usize = 65_536;
/// Listen backlog asked for.
pub const TCP_ECHO_BACKLOG: u32 = 4096;

/// TCP echo configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpEchoConfig {
    /// Ports to listen on, at most [`TCP_ECHO_PORTS_MAX`].
    pub ports: Vec<u16>,
    /// Simulated application work per received buffer, in nanoseconds.
    pub work_ns: u64,
}

/// Counters of a TCP echo server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpEchoCounters {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections that ended, by any reason.
    pub closed: u64,
    /// Bytes the transport took to send back.
    pub bytes_echoed: u64,
    /// Sends taken only in part (the rest waited for the next `Sent`).
    pub partial_sends: u64,
    /// Sends refused outright (the connection broke meanwhile); those bytes were dropped with
    /// the connection.
    pub send_errors: u64,
    /// Listen failures at start.
    pub listen_errors: u64,
}

/// Per-connection state: the bytes not yet taken by the transport.
#[derive(Default)]
struct Slot {
    conn: Option<ConnId>,
    pending: Option<BufChain>,
    /// The peer closed; close ours once `pending` is out.
    peer_closed: bool,
}

/// The TCP echo server app.
pub struct TcpEchoApp {
    config: TcpEchoConfig,
    spin_ns: fn(u64),
    listeners: Vec<ListenerId>,
    listen_error: Option<CommandError>,
    slots: Vec<Slot>,
    counters: TcpEchoCounters,
}

impl std::fmt::Debug for TcpEchoApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpEchoApp")
            .field("config", &self.config)
            .field("counters", &self.counters)
            .finish()
    }
}

impl TcpEchoApp {
    /// A TCP echo server; `spin_ns` performs `work_ns` of work (the shell's choice).
    pub fn new(config: TcpEchoConfig, spin_ns: fn(u64)) -> Self {
        Self {
            config,
            spin_ns,
            listeners: Vec::new(),
            listen_error: None,
            slots: Vec::new(),
            counters: TcpEchoCounters::default(),
        }
    }
    /// The first port that could not be listened on, and why; the app then ends.
    pub fn listen_error(&self) -> Option<CommandError> {
        self.listen_error
    }
    /// Counters so far.
    pub fn counters(&self) -> TcpEchoCounters {
        self.counters
    }
    /// The listeners opened at start.
    pub fn listeners(&self) -> &[ListenerId] {
        &self.listeners
    }

    fn slot(&mut self, conn: ConnId) -> Option<&mut Slot> {
        let index = conn.index() as usize;
        if index >= TCP_ECHO_CONNECTIONS_MAX {
            return None;
        }
        if index >= self.slots.len() {
            // Grows to the largest handle index the transport uses, once; never per packet
            // after warm-up.
            self.slots.resize_with(index + 1, Slot::default);
        }
        let slot = &mut self.slots[index];
        (slot.conn == Some(conn)).then_some(slot)
    }

    /// Sends `data` on `conn` behind whatever is pending there.
    fn echo(&mut self, io: &mut IoContext<'_>, conn: ConnId, data: BufChain) {
        let Some(slot) = self.slot(conn) else {
            io.free_chain(data);
            return;
        };
        match slot.pending.as_mut() {
            Some(pending) => {
                // Keep the stream's order: new bytes go behind the pending ones.
                let mut rest = Some(data);
                while let Some(chain) = rest.take() {
                    let (buf, next) = io.chain_pop_front(chain);
                    if let Err((_, buf)) = io.chain_push(pending, buf) {
                        // The pending chain is at its longest: this connection's client sent
                        // far more than it reads. Close it rather than lose bytes silently.
                        io.free(buf);
                        if let Some(next) = next {
                            io.free_chain(next);
                        }
                        let _ = io.submit(Command::Abort { conn });
                        return;
                    }
                    rest = next;
                }
            }
            None => slot.pending = Some(data),
        }
        self.flush(io, conn);
    }

    /// Offers the pending bytes of `conn` to the transport.
    fn flush(&mut self, io: &mut IoContext<'_>, conn: ConnId) {
        let Some(slot) = self.slot(conn) else {
            return;
        };
        let Some(data) = slot.pending.take() else {
            return;
        };
        match io.submit(Command::Send { conn, data }) {
            Ok(Outcome::Accepted { bytes, rest }) => {
                self.counters.bytes_echoed += u64::from(bytes);
                if bytes > 0 {
                    let _ = io.submit(Command::RecvDone { conn, bytes });
                }
                if rest.is_some() {
                    self.counters.partial_sends += 1;
                }
                let slot = self.slot(conn).expect("checked above");
                slot.pending = rest;
                if slot.pending.is_none() && slot.peer_closed {
                    let _ = io.submit(Command::Close { conn });
                }
            }
            Ok(_) => {} // no other outcome answers a send
            Err(refused) => {
                self.counters.send_errors += 1;
                if let Some(data) = refused.data {
                    io.free_chain(data);
                }
            }
        }
    }
}

impl App for TcpEchoApp {
    fn start(&mut self, io: &mut IoContext<'_>) {
        for &port in self.config.ports.iter().take(TCP_ECHO_PORTS_MAX) {
            match io.submit(Command::Listen {
                port,
                backlog: TCP_ECHO_BACKLOG,
            }) {
                Ok(Outcome::Listener(listener)) => self.listeners.push(listener),
                Ok(_) => {}
                Err(refused) => {
                    self.counters.listen_errors += 1;
                    self.listen_error.get_or_insert(refused.error);
                }
            }
        }
    }

    fn is_done(&self) -> bool {
        self.listen_error.is_some()
    }

    fn run_io(&mut self, io: &mut IoContext<'_>) {
        while let Some(event) = io.next_event() {
            match event {
                Event::Accepted { conn, .. } => {
                    let index = conn.index() as usize;
                    if index < TCP_ECHO_CONNECTIONS_MAX {
                        if index >= self.slots.len() {
                            self.slots.resize_with(index + 1, Slot::default);
                        }
                        self.slots[index] = Slot {
                            conn: Some(conn),
                            pending: None,
                            peer_closed: false,
                        };
                        self.counters.accepted += 1;
                    } else {
                        let _ = io.submit(Command::Abort { conn });
                    }
                }
                Event::Recv { conn, data } => {
                    if self.config.work_ns > 0 {
                        (self.spin_ns)(self.config.work_ns);
                    }
                    self.echo(io, conn, data);
                }
                Event::Sent { conn, data, .. } => {
                    if let Some(data) = data {
                        io.free_chain(data);
                    }
                    self.flush(io, conn);
                }
                Event::PeerClosed { conn } => {
                    if let Some(slot) = self.slot(conn) {
                        slot.peer_closed = true;
                        if slot.pending.is_none() {
                            let _ = io.submit(Command::Close { conn });
                        }
                    }
                }
                Event::Closed { conn, .. } => {
                    if let Some(slot) = self.slot(conn) {
                        slot.conn = None;
                        slot.peer_closed = false;
                        if let Some(pending) = slot.pending.take() {
                            io.free_chain(pending);
                        }
                    }
                    self.counters.closed += 1;
                }
                other => {
                    if let Some(data) = other.into_data() {
                        io.free_chain(data);
                    }
                }
            }
        }
    }
}
