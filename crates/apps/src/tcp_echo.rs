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

/// Chains of bytes one connection may have waiting to be sent back: with chains of up to
/// `BufChain::LEN_MAX` bytes, 512 KiB, more than any transport's receive budget lends.
pub const TCP_ECHO_PENDING_CHAINS_MAX: usize = 8;

/// The bytes of one connection not yet taken by the transport, oldest first.
#[derive(Default)]
struct Pending {
    chains: [Option<BufChain>; TCP_ECHO_PENDING_CHAINS_MAX],
    head: usize,
    len: usize,
}

impl Pending {
    fn is_none(&self) -> bool {
        self.len == 0
    }
    fn pop_front(&mut self) -> Option<BufChain> {
        if self.len == 0 {
            return None;
        }
        let chain = self.chains[self.head].take();
        self.head = (self.head + 1) % TCP_ECHO_PENDING_CHAINS_MAX;
        self.len -= 1;
        chain
    }
    fn push_front(&mut self, chain: BufChain) {
        debug_assert!(
            self.len < TCP_ECHO_PENDING_CHAINS_MAX,
            "a popped chain goes back"
        );
        self.head = (self.head + TCP_ECHO_PENDING_CHAINS_MAX - 1) % TCP_ECHO_PENDING_CHAINS_MAX;
        self.chains[self.head] = Some(chain);
        self.len += 1;
    }
    /// Appends `data` behind the pending bytes; gives it back if no chain has room.
    fn push_back(&mut self, io: &mut IoContext<'_>, data: BufChain) -> Result<(), BufChain> {
        if self.len > 0 {
            let back = (self.head + self.len - 1) % TCP_ECHO_PENDING_CHAINS_MAX;
            if let Some(chain) = self.chains[back].as_mut() {
                if chain.len() + data.len() <= BufChain::LEN_MAX {
                    let mut rest = Some(data);
                    while let Some(c) = rest.take() {
                        let (buf, next) = io.chain_pop_front(c);
                        if let Err((_, buf)) = io.chain_push(chain, buf) {
                            // The sum was checked; never reached.
                            io.free(buf);
                        }
                        rest = next;
                    }
                    return Ok(());
                }
            }
        }
        if self.len == TCP_ECHO_PENDING_CHAINS_MAX {
            return Err(data);
        }
        let at = (self.head + self.len) % TCP_ECHO_PENDING_CHAINS_MAX;
        self.chains[at] = Some(data);
        self.len += 1;
        Ok(())
    }
    fn free_all(&mut self, io: &mut IoContext<'_>) {
        while let Some(chain) = self.pop_front() {
            io.free_chain(chain);
        }
    }
}

/// Per-connection state: the bytes not yet taken by the transport.
#[derive(Default)]
struct Slot {
    conn: Option<ConnId>,
    pending: Pending,
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
        if let Err(data) = slot.pending.push_back(io, data) {
            // Every pending chain is full: this connection's client sent far more than it
            // reads, past the receive budget. Close it rather than lose bytes silently.
            io.free_chain(data);
            let _ = io.submit(Command::Abort { conn });
            return;
        }
        self.flush(io, conn);
    }

    /// Offers the pending bytes of `conn` to the transport.
    fn flush(&mut self, io: &mut IoContext<'_>, conn: ConnId) {
        while let Some(data) = slot_pending(self, conn) {
            match io.submit(Command::Send { conn, data }) {
                Ok(Outcome::Accepted { bytes, rest }) => {
                    self.counters.bytes_echoed += u64::from(bytes);
                    if bytes > 0 {
                        let _ = io.submit(Command::RecvDone { conn, bytes });
                    }
                    if let Some(rest) = rest {
                        self.counters.partial_sends += 1;
                        if let Some(slot) = self.slot(conn) {
                            slot.pending.push_front(rest);
                        } else {
                            io.free_chain(rest);
                        }
                        return;
                    }
                }
                Ok(_) => return, // no other outcome answers a send
                Err(refused) => {
                    self.counters.send_errors += 1;
                    if let Some(data) = refused.data {
                        io.free_chain(data);
                    }
                    return;
                }
            }
        }
        if let Some(slot) = self.slot(conn) {
            if slot.pending.is_none() && slot.peer_closed {
                let _ = io.submit(Command::Close { conn });
            }
        }
    }
}

/// The oldest pending chain of `conn`, taken out of its slot.
fn slot_pending(app: &mut TcpEchoApp, conn: ConnId) -> Option<BufChain> {
    app.slot(conn)?.pending.pop_front()
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
                            pending: Pending::default(),
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
                        slot.pending.free_all(io);
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
