//! A TCP-serving [`Io`] for the unit tests of the TCP apps: [`melange_core::test_io::TestIo`]
//! (pool, timers, events) plus connections the test opens, feeds and closes by hand.
//!
//! The fake transport keeps what each connection sent (a copy of the bytes, and the app's
//! buffers until the test acknowledges them, as Melange's stack holds them), takes sends up
//! to [`TcpTestIo::send_room`] unacknowledged bytes per connection (cutting a buffer in two
//! as the stack does, so partial sends are exercised), and reports nothing by itself: the test
//! decides when a handshake completes, when bytes are acknowledged or echoed, and when a
//! connection closes. It allocates freely: it is for tests only.

use melange_core::contract::{
    CloseReason, Command, CommandError, Event, EventQueue, Io, Outcome, Refused,
};
use melange_core::handle::HandleError;
use melange_core::pool::{BufChain, FrameOwner, PacketBuf, PoolError};
use melange_core::test_io::TestIo;
use melange_core::{App, ConnId, Handle, IoContext, ListenerId};
use std::net::SocketAddrV4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeState {
    Connecting,
    Open,
    /// The app asked to close.
    Closing,
    Gone,
}

#[derive(Debug)]
pub struct FakeConn {
    pub id: ConnId,
    pub state: FakeState,
    pub token: u64,
    /// Every byte the transport took, in order.
    pub stream: Vec<u8>,
    /// The app's buffers taken and not yet acknowledged.
    pub unacked: Vec<BufChain>,
    /// Bytes in `unacked`.
    pub unacked_bytes: usize,
    /// Bytes the app gave back with `RecvDone`.
    pub recv_done: u64,
}

#[derive(Debug)]
pub struct TcpTestIo {
    pub inner: TestIo,
    pub now_ns: u64,
    pub conns: Vec<FakeConn>,
    /// Every connect the app issued, in order.
    pub connects: Vec<ConnId>,
    pub listened: Vec<u16>,
    /// Refuse every connect at once (no free port).
    pub refuse_connects: bool,
    /// Most unacknowledged bytes per connection.
    pub send_room: usize,
    /// Flip a byte of the next echo.
    pub corrupt_next_echo: bool,
    /// Give the next connection this handle index (a new generation), as a transport that
    /// reuses a closed connection's index does.
    pub reuse_index: Option<u32>,
}

impl TcpTestIo {
    pub fn new(frames: usize) -> Self {
        Self {
            inner: TestIo::new(frames),
            now_ns: 0,
            conns: Vec::new(),
            connects: Vec::new(),
            listened: Vec::new(),
            refuse_connects: false,
            send_room: usize::MAX,
            corrupt_next_echo: false,
            reuse_index: None,
        }
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut FakeConn> {
        self.conns
            .iter_mut()
            .find(|c| c.id == id && c.state != FakeState::Gone)
    }

    fn new_conn(&mut self, state: FakeState, token: u64) -> ConnId {
        let id = match self.reuse_index.take() {
            Some(index) => Handle::from_parts(index, 2 + self.conns.len() as u32),
            None => Handle::from_parts(self.conns.len() as u32, 1),
        };
        self.conns.push(FakeConn {
            id,
            state,
            token,
            stream: Vec::new(),
            unacked: Vec::new(),
            unacked_bytes: 0,
            recv_done: 0,
        });
        id
    }

    fn push(&mut self, event: Event) {
        self.inner
            .events
            .push(event)
            .expect("the test event queue has room");
    }

    /// Completes every handshake in progress.
    pub fn establish_all(&mut self) {
        for i in 0..self.conns.len() {
            if self.conns[i].state == FakeState::Connecting {
                self.conns[i].state = FakeState::Open;
                let (conn, token) = (self.conns[i].id, self.conns[i].token);
                self.push(Event::Connected { conn, token });
            }
        }
    }

    /// The peer refuses connection `id` (or, if it is gone already, repeats a stale answer).
    pub fn fail_connect(&mut self, id: ConnId) {
        let conn = self
            .conns
            .iter_mut()
            .find(|c| c.id == id)
            .expect("a connection the app opened");
        conn.state = FakeState::Gone;
        let token = conn.token;
        self.push(Event::ConnectFailed {
            token,
            reason: CloseReason::Refused,
        });
    }

    /// A peer connects to the first listener.
    pub fn accept(&mut self, peer: SocketAddrV4) -> ConnId {
        self.accept_on(0, peer)
    }

    /// A peer connects to the app's `listener`-th listener (in the order it listened).
    pub fn accept_on(&mut self, listener: u32, peer: SocketAddrV4) -> ConnId {
        let conn = self.new_conn(FakeState::Open, 0);
        self.push(Event::Accepted {
            listener: Handle::from_parts(listener, 1),
            conn,
            peer,
        });
        conn
    }

    /// Bytes arrive on `conn`, in buffers of at most `piece` bytes, as one chain per 60,000.
    pub fn deliver(&mut self, conn: ConnId, bytes: &[u8], piece: usize) {
        for part in bytes.chunks(60_000) {
            let mut chain: Option<BufChain> = None;
            for small in part.chunks(piece) {
                let one = TestIo::payload(&mut self.inner, small);
                let (buf, _) = self.inner.pool.chain_pop_front(one);
                match chain.as_mut() {
                    None => chain = Some(BufChain::from(buf)),
                    Some(c) => self
                        .inner
                        .pool
                        .chain_push(c, buf)
                        .expect("60,000 bytes fit a chain"),
                }
            }
            if let Some(data) = chain {
                self.push(Event::Recv { conn, data });
            }
        }
    }

    /// The peer closes its side of `conn`.
    pub fn peer_close(&mut self, conn: ConnId) {
        self.push(Event::PeerClosed { conn });
    }

    /// Connection `conn` ends for `reason` (its unacknowledged buffers go back to the pool).
    pub fn end(&mut self, conn: ConnId, reason: CloseReason) {
        let Some(c) = self.conn_mut(conn) else { return };
        c.state = FakeState::Gone;
        let unacked = std::mem::take(&mut c.unacked);
        for chain in unacked {
            self.inner.pool.free_chain(chain);
        }
        self.push(Event::Closed { conn, reason });
    }

    /// Acknowledges everything sent: one `Sent` per chain, giving the buffers back.
    pub fn ack_all(&mut self) {
        for i in 0..self.conns.len() {
            let id = self.conns[i].id;
            let unacked = std::mem::take(&mut self.conns[i].unacked);
            self.conns[i].unacked_bytes = 0;
            for data in unacked {
                let bytes = data.len() as u32;
                self.push(Event::Sent {
                    conn: id,
                    bytes,
                    data: Some(data),
                });
            }
        }
    }

    /// Echoes and acknowledges what every open connection sent since the last echo.
    pub fn echo_sent(&mut self) {
        for i in 0..self.conns.len() {
            if self.conns[i].unacked.is_empty() {
                continue;
            }
            let mut bytes = Vec::new();
            for chain in &self.conns[i].unacked {
                let mut out = vec![0; chain.len()];
                self.inner.pool.chain_read(chain, 0, &mut out);
                bytes.extend_from_slice(&out);
            }
            if std::mem::take(&mut self.corrupt_next_echo) {
                bytes[0] ^= 0x40;
            }
            let id = self.conns[i].id;
            self.deliver(id, &bytes, 1000);
        }
        self.ack_all();
    }

    /// Ends every connection the app asked to close, in order.
    pub fn close_all_closing(&mut self) {
        for i in 0..self.conns.len() {
            if self.conns[i].state == FakeState::Closing {
                let id = self.conns[i].id;
                self.end(id, CloseReason::Closed);
            }
        }
    }

    pub fn open_conns(&self) -> usize {
        self.conns
            .iter()
            .filter(|c| c.state == FakeState::Open)
            .count()
    }

    pub fn closing_conns(&self) -> usize {
        self.conns
            .iter()
            .filter(|c| c.state == FakeState::Closing)
            .count()
    }

    /// Bytes the transport took, over every connection.
    pub fn bytes_taken(&self) -> usize {
        self.conns.iter().map(|c| c.stream.len()).sum()
    }

    pub fn timers_with_token(&self, token: u64) -> usize {
        self.inner
            .timers
            .iter()
            .filter(|t| t.token == token)
            .count()
    }

    /// Fires the oldest armed timer with `token`.
    pub fn fire_token(&mut self, token: u64) {
        let timer = self
            .inner
            .timers
            .iter()
            .find(|t| t.token == token)
            .expect("a timer with that token is armed")
            .timer;
        self.inner.fire(timer);
    }

    /// Ends every connection still alive, lets the app see it, and checks that every buffer
    /// came back.
    pub fn finish(&mut self, app: &mut impl App) {
        for i in 0..self.conns.len() {
            let id = self.conns[i].id;
            self.end(id, CloseReason::Aborted);
        }
        app.run_io(&mut IoContext::new(self));
        while let Some(event) = self.inner.events.pop() {
            if let Some(data) = event.into_data() {
                self.inner.pool.free_chain(data);
            }
        }
        assert_eq!(
            self.inner.pool.available(),
            self.inner.pool.capacity(),
            "a buffer leaked"
        );
    }

    /// Takes `data` up to the room left on connection `i`: (bytes taken, the rest).
    fn take(&mut self, i: usize, data: BufChain) -> (u32, Option<BufChain>) {
        let room = self
            .send_room
            .saturating_sub(self.conns[i].unacked_bytes)
            .min(data.len());
        let mut taken_chain: Option<BufChain> = None;
        let mut taken = 0usize;
        let mut rest = Some(data);
        let mut rest_chain: Option<BufChain> = None;
        while let Some(chain) = rest.take() {
            let (mut buf, next) = self.inner.pool.chain_pop_front(chain);
            rest = next;
            if taken == room {
                push_back(self, &mut rest_chain, buf);
                continue;
            }
            if taken + buf.len() > room {
                // Cut in two: the tail goes back in a fresh buffer, as the stack does.
                let keep = room - taken;
                let tail: Vec<u8> = self.inner.pool.data(&buf)[keep..].to_vec();
                self.inner
                    .pool
                    .set_len(&mut buf, keep)
                    .expect("shrinking a buffer");
                let mut fresh = self
                    .inner
                    .pool
                    .alloc_for(FrameOwner::App)
                    .expect("a frame for the cut tail");
                self.inner
                    .pool
                    .set_len(&mut fresh, tail.len())
                    .expect("the tail fits a frame");
                self.inner.pool.data_mut(&fresh).copy_from_slice(&tail);
                push_back(self, &mut rest_chain, fresh);
            }
            taken += buf.len();
            let bytes = self.inner.pool.data(&buf).to_vec();
            self.conns[i].stream.extend_from_slice(&bytes);
            push_back(self, &mut taken_chain, buf);
        }
        if let Some(chain) = taken_chain {
            self.conns[i].unacked_bytes += chain.len();
            self.conns[i].unacked.push(chain);
        }
        (taken as u32, rest_chain)
    }
}

fn push_back(io: &mut TcpTestIo, chain: &mut Option<BufChain>, buf: PacketBuf) {
    match chain.as_mut() {
        None => *chain = Some(BufChain::from(buf)),
        Some(c) => io
            .inner
            .pool
            .chain_push(c, buf)
            .expect("no longer than the chain it came from"),
    }
}

impl Io for TcpTestIo {
    fn now_ns(&self) -> u64 {
        self.now_ns
    }
    fn events(&mut self) -> &mut EventQueue {
        &mut self.inner.events
    }
    fn events_ref(&self) -> &EventQueue {
        &self.inner.events
    }
    fn submit(&mut self, command: Command) -> Result<Outcome, Refused> {
        let stale = || Refused::new(HandleError::Stale);
        match command {
            Command::Listen { port, .. } => {
                self.listened.push(port);
                let listener: ListenerId = Handle::from_parts(self.listened.len() as u32 - 1, 1);
                Ok(Outcome::Listener(listener))
            }
            Command::Connect { token, .. } => {
                if self.refuse_connects {
                    return Err(Refused::new(HandleError::Full { capacity: 0 }));
                }
                let conn = self.new_conn(FakeState::Connecting, token);
                self.connects.push(conn);
                Ok(Outcome::Conn(conn))
            }
            Command::Send { conn, data } => {
                let i = self.conns.iter().position(|c| c.id == conn);
                match self.conn_mut(conn).map(|c| c.state) {
                    Some(FakeState::Open) => {}
                    _ => {
                        return Err(Refused {
                            error: CommandError::ConnNotOpen {
                                command: "send",
                                reason: "test",
                            },
                            data: Some(data),
                        })
                    }
                }
                let i = i.expect("found above");
                let (bytes, rest) = self.take(i, data);
                Ok(Outcome::Accepted { bytes, rest })
            }
            Command::RecvDone { conn, bytes } => {
                let c = self.conn_mut(conn).ok_or_else(stale)?;
                c.recv_done += u64::from(bytes);
                Ok(Outcome::Done)
            }
            Command::Close { conn } | Command::Abort { conn } => {
                let c = self.conn_mut(conn).ok_or_else(stale)?;
                c.state = FakeState::Closing;
                Ok(Outcome::Done)
            }
            other => self.inner.submit(other),
        }
    }
    fn alloc(&mut self) -> Option<PacketBuf> {
        self.inner.alloc()
    }
    fn free(&mut self, buf: PacketBuf) {
        self.inner.free(buf)
    }
    fn free_chain(&mut self, chain: BufChain) {
        self.inner.free_chain(chain)
    }
    fn payload(&self, buf: &PacketBuf) -> &[u8] {
        Io::payload(&self.inner, buf)
    }
    fn payload_mut(&mut self, buf: &PacketBuf) -> &mut [u8] {
        self.inner.payload_mut(buf)
    }
    fn set_payload_len(&mut self, buf: &mut PacketBuf, len: usize) -> Result<(), PoolError> {
        self.inner.set_payload_len(buf, len)
    }
    fn tailroom(&self, buf: &PacketBuf) -> usize {
        self.inner.tailroom(buf)
    }
    fn chain_pop_front(&mut self, chain: BufChain) -> (PacketBuf, Option<BufChain>) {
        self.inner.chain_pop_front(chain)
    }
    fn chain_push(
        &mut self,
        chain: &mut BufChain,
        buf: PacketBuf,
    ) -> Result<(), (PoolError, PacketBuf)> {
        self.inner.chain_push(chain, buf)
    }
    fn chain_read(&self, chain: &BufChain, offset: usize, out: &mut [u8]) -> usize {
        self.inner.chain_read(chain, offset, out)
    }
}
