//! `melange kv`'s app: Redis clients on TCP, served from one [`melange_kv::Server`] by every
//! engine, over the run_io contract.
//!
//! # Why it is built this way
//!
//! **Input stays in the frames it arrived in.** Melange's TCP lends each received segment
//! (`Event::Recv`); the RESP parser ([`melange_resp::RequestParser`]) keeps its place between
//! pieces and reports arguments as stream spans, so a request is parsed where it lies and an
//! argument is borrowed from its frame (copied only when it straddles two). Frames are given
//! back (`RecvDone`, which reopens the window) as soon as the parser's `retain_from` passes
//! them. Frames are a pool shared by every connection, and a frame is held whole however few
//! bytes it carries: a slowloris client trickling one byte per segment would hold one frame
//! per byte, and a hundred such clients would drain the pool for everyone. So a connection
//! keeps at most [`KV_HELD_FRAMES_MAX`] frames between batches; past that, the held frames
//! are copied into its query buffer (Redis' `querybuf`) and freed, and what it holds is
//! counted in bytes again. A request that spans frames (a 100 MB `SET`, or one sent a byte
//! at a time) thus completes in the query buffer, bounded by the parser's
//! `client-query-buffer-limit`; the common request that arrives within one frame is never
//! copied. Received bytes are reported (`RecvDone`, which opens the window) once they left
//! the frames, except while the connection is paused for its replies (below): then only the
//! bytes its commands consumed are, so the window closes and the query buffer stays within
//! the transport's per-connection receive budget.
//!
//! **Replies are written once into a per-connection output buffer, then copied into frames.**
//! A command writes through [`melange_kv::reply::Reply`]; here that is a RESP encoder into the
//! connection's output vector (Redis' reply buffer), which keeps its capacity, so the steady
//! state allocates nothing. The bytes are then copied into pool frames and sent with
//! `Command::Send`; the stack holds those frames until they are acknowledged (`Event::Sent`
//! returns them). The second copy was chosen over writing replies straight into frames
//! because a reply's size is known only once it is written (a `GET` of 512 MiB, a `KEYS *`),
//! frames are a shared, bounded pool, and a reply must never be half-written when the pool
//! runs dry; the copy is of reply bytes only (for the common small replies a few dozen
//! bytes). What is copied where: request bytes never (except spills and arguments across
//! frame boundaries), reply bytes twice (encoder to output buffer, output buffer to frames).
//!
//! **Back-pressure instead of unbounded memory.** A connection whose replies are not being
//! read stops being served: while more than [`KV_OUTPUT_PAUSE_BYTES`] of its replies wait,
//! its further requests stay unparsed in their frames, its window closes, and the client is
//! slowed, never the server. A single reply may still exceed that (it is written whole); a
//! reply past the output limit ([`KvConfig::output_limit`]) closes the connection, as Redis'
//! `client-output-buffer-limit` does.
//!
//! **One keyspace for every engine, locked once per batch.** The engines share one
//! [`Server`] behind a mutex, taken once per `run_io` batch (not per request or per packet),
//! as memcached shares its table between worker threads. Shard-per-engine (Seastar's way)
//! would avoid the lock but forwards every request for a key another engine owns, and
//! multi-key commands and `MULTI` across shards need a protocol of their own; with the
//! batch amortising the lock, the shared table is the simpler correct choice. ARCHITECTURE.md
//! records the choice.
//!
//! **Time.** Commands need Unix time (`EXPIREAT`, `TIME`); the engine's clock is monotonic.
//! The app reads the wall clock once at start ([`KvConfig::wall_clock_ms`]) and offsets the
//! engine's clock from there, so a batch costs no clock read and the simulator can drive it.
//! A timer every [`KV_CRON_INTERVAL_NS`] runs Redis' active expiry (`hz 10`).

use melange_core::contract::{Command, Outcome};
use melange_core::{App, BufChain, ConnId, Event, IoContext, ListenerId, PacketBuf, SocketId};
use melange_kv::memcached::{self, After, Session};
use melange_kv::reply::Reply;
use melange_kv::{Client, Server};
use melange_memcache::udp;
use melange_resp::{Piece, Protocol, ProtocolError, ReplyWriter, RequestParser, Sink};
use std::collections::VecDeque;
use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex};

/// Connection slots the app tracks (a connection's handle index selects its slot).
pub const KV_CONNECTIONS_MAX: usize = 65_536;
/// Listen backlog asked for (Redis' `tcp-backlog` is 511; the stack bounds it too).
pub const KV_BACKLOG: u32 = 4096;
/// Frames a connection may hold between batches; past it the held bytes are copied into its
/// query buffer and the frames freed (see the module documentation). With one frame per
/// client, `maxclients` (10,000) idle or trickling clients hold fewer frames than the default
/// pool (16,384 frames), and the rest serve replies.
pub const KV_HELD_FRAMES_MAX: usize = 1;
/// Reply bytes waiting on a connection above which its next requests wait.
pub const KV_OUTPUT_PAUSE_BYTES: usize = 64 * 1024;
/// Default output limit: a connection whose pending replies pass this is closed. Larger than
/// the largest value (512 MiB) with its header, so any single reply fits.
pub const KV_OUTPUT_LIMIT_DEFAULT: usize = 1 << 30;
/// Capacity an output or query buffer keeps when it empties; above it, the buffer is freed
/// (a connection that once fetched a 100 MB value does not keep 100 MB).
pub const KV_BUFFER_KEPT_BYTES: usize = 64 * 1024;
/// Bytes of replies copied into one chain of frames per send.
pub const KV_SEND_CHAIN_BYTES: usize = BufChain::LEN_MAX;
/// Most reply bytes one memcached UDP datagram's requests may produce (about 3,000
/// datagrams); requests past it are not answered, the client sees a short reply.
pub const KV_UDP_REPLY_BYTES_MAX: usize = 4 << 20;
/// Period of the maintenance timer (active expiry), as Redis' `hz 10`.
pub const KV_CRON_INTERVAL_NS: u64 = 100_000_000;
/// The maintenance timer's token.
const CRON_TOKEN: u64 = u64::MAX;

/// What every engine serves: the keyspace with Redis' server state, and memcached's
/// counters and settings over the same keyspace.
#[derive(Debug)]
pub struct KvState {
    /// The keyspace and Redis' server state.
    pub server: Server,
    /// memcached's counters, settings and pending `flush_all`.
    pub memcached: memcached::Stats,
}

impl KvState {
    /// The state of a server: `server` and memcached's counters with `memcache`'s
    /// settings, reporting process id `pid`.
    pub fn new(server: Server, memcache: memcached::Config, pid: u32) -> Self {
        let started_ms = server.started_ms;
        Self {
            server,
            memcached: memcached::Stats::new(memcache, pid, started_ms),
        }
    }
}

/// The state every engine serves, behind the lock taken once per batch.
pub type SharedServer = Arc<Mutex<KvState>>;

/// memcached's reply to a connection past the connection limit, as memcached words it.
const MEMCACHED_TOO_MANY: &[u8] = b"ERROR Too many open connections\r\n";

/// Configuration of one engine's KV app.
#[derive(Debug, Clone)]
pub struct KvConfig {
    /// TCP ports speaking RESP.
    pub resp_ports: Vec<u16>,
    /// TCP ports speaking memcached's text and meta protocols.
    pub memcache_ports: Vec<u16>,
    /// UDP ports speaking memcached's protocols behind its UDP frame header.
    pub memcache_udp_ports: Vec<u16>,
    /// memcached's settings (the item size limit); checked by [`memcached::Config::check`].
    pub memcache: memcached::Config,
    /// A connection whose waiting replies pass this many bytes is closed.
    pub output_limit: usize,
    /// Run the maintenance timer (active expiry) on this engine; one engine is enough.
    pub cron: bool,
    /// The wall clock in Unix milliseconds, read once at start.
    pub wall_clock_ms: fn() -> u64,
}

/// Counters of one engine's KV app.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvCounters {
    /// Connections accepted and served.
    pub accepted: u64,
    /// Connections refused because `maxclients` were open.
    pub refused_maxclients: u64,
    /// Connections that ended.
    pub closed: u64,
    /// Commands run.
    pub commands: u64,
    /// Request bytes received.
    pub bytes_in: u64,
    /// Reply bytes the transport took.
    pub bytes_out: u64,
    /// Connections closed for breaking the protocol.
    pub protocol_errors: u64,
    /// Connections closed because their replies passed the output limit.
    pub output_overflows: u64,
    /// Received bytes copied into a query buffer because a request outgrew the frames.
    pub spilled_bytes: u64,
    /// Times a connection's replies waited because the frame pool was empty.
    pub pool_starved: u64,
    /// Sends the transport refused (the connection broke meanwhile).
    pub send_errors: u64,
    /// Listen failures at start.
    pub listen_errors: u64,
    /// memcached UDP datagrams received.
    pub udp_requests: u64,
    /// memcached UDP datagrams dropped unanswered: no command after the header, or a
    /// reply that could not be framed.
    pub udp_dropped: u64,
    /// memcached UDP reply datagrams not sent (no frame in the pool, or the transport
    /// refused them); the client times out and retries, as with any lost datagram.
    pub udp_reply_drops: u64,
}

/// The received bytes of one connection not yet released: the query buffer (copied bytes),
/// then the frames still held, contiguous in stream order.
#[derive(Debug, Default)]
struct Input {
    /// Copied bytes, covering `spill_start..spill_start + spill.len()`.
    spill: Vec<u8>,
    spill_start: u64,
    /// Frames held, the first at stream offset `held_start`.
    held: VecDeque<PacketBuf>,
    held_start: u64,
    held_bytes: usize,
    /// Bytes released and not yet reported with `RecvDone`.
    owed: u64,
    /// Stream offset up to which bytes were released (reported or `owed`).
    released_to: u64,
}

impl Input {
    /// Stream offset just past the last received byte.
    fn end(&self) -> u64 {
        self.held_start + self.held_bytes as u64
    }

    /// The received bytes from stream offset `at` to the end of the piece holding it.
    fn segment_at<'a>(&'a self, io: &'a IoContext<'_>, at: u64) -> Option<&'a [u8]> {
        let spill_end = self.spill_start + self.spill.len() as u64;
        if at >= self.spill_start && at < spill_end {
            return Some(&self.spill[(at - self.spill_start) as usize..]);
        }
        let mut start = self.held_start;
        for buf in &self.held {
            let bytes = io.payload(buf);
            let end = start + bytes.len() as u64;
            if at >= start && at < end {
                return Some(&bytes[(at - start) as usize..]);
            }
            start = end;
        }
        None
    }

    /// Every piece from the query buffer on, in stream order, as (stream offset, bytes).
    fn for_each_piece<'a>(&'a self, io: &'a IoContext<'_>, mut f: impl FnMut(u64, &'a [u8])) {
        if !self.spill.is_empty() {
            f(self.spill_start, &self.spill);
        }
        let mut offset = self.held_start;
        for buf in &self.held {
            let bytes = io.payload(buf);
            f(offset, bytes);
            offset += bytes.len() as u64;
        }
    }

    /// Appends a received chain.
    fn push(&mut self, io: &mut IoContext<'_>, data: BufChain) -> u64 {
        let mut rest = Some(data);
        let mut bytes = 0;
        while let Some(chain) = rest.take() {
            let (buf, next) = io.chain_pop_front(chain);
            let len = io.payload(&buf).len();
            if len == 0 {
                io.free(buf);
            } else {
                if self.held.is_empty() && self.spill.is_empty() {
                    self.held_start = self.end();
                    self.spill_start = self.held_start;
                }
                self.held_bytes += len;
                bytes += len as u64;
                self.held.push_back(buf);
            }
            rest = next;
        }
        bytes
    }

    /// Frees everything before `keep_from`; when more than [`KV_HELD_FRAMES_MAX`] frames are
    /// still held, copies them into the query buffer and frees them. Bytes that left the
    /// frames become `owed` (to be reported with `RecvDone`), except, while `paused`, those
    /// from `keep_from` on, which wait until the commands consume them. Returns bytes copied.
    fn release(&mut self, io: &mut IoContext<'_>, keep_from: u64, paused: bool) -> u64 {
        // The query buffer's bytes before `keep_from`.
        let spill_end = self.spill_start + self.spill.len() as u64;
        if keep_from >= spill_end {
            self.spill.clear();
            if self.spill.capacity() > KV_BUFFER_KEPT_BYTES {
                self.spill = Vec::new();
            }
            self.spill_start = self.held_start;
        } else if keep_from > self.spill_start {
            let cut = (keep_from - self.spill_start) as usize;
            self.spill.drain(..cut);
            self.spill_start = keep_from;
        }
        // Whole frames before `keep_from`.
        while let Some(front) = self.held.front() {
            let len = io.payload(front).len();
            if self.held_start + len as u64 > keep_from {
                break;
            }
            let buf = self.held.pop_front().expect("front exists");
            io.free(buf);
            self.held_start += len as u64;
            self.held_bytes -= len;
            if self.spill.is_empty() {
                self.spill_start = self.held_start;
            }
        }
        let mut copied = 0;
        if self.held.len() > KV_HELD_FRAMES_MAX {
            // Copy the held frames out and give them back to the pool.
            copied = self.held_bytes as u64;
            if self.spill.is_empty() {
                self.spill_start = self.held_start;
            }
            while let Some(buf) = self.held.pop_front() {
                self.spill.extend_from_slice(io.payload(&buf));
                io.free(buf);
            }
            self.held_start += copied;
            self.held_bytes = 0;
        }
        // Everything before `held_start` is out of the frames: freed or in the query buffer.
        let releasable = if paused {
            self.held_start.min(keep_from)
        } else {
            self.held_start
        };
        if releasable > self.released_to {
            self.owed += releasable - self.released_to;
            self.released_to = releasable;
        }
        copied
    }

    fn free_all(&mut self, io: &mut IoContext<'_>) {
        while let Some(buf) = self.held.pop_front() {
            io.free(buf);
        }
        self.held_bytes = 0;
        self.spill = Vec::new();
    }
}

/// Replies waiting to be sent: encoded bytes, and a chain of frames the transport has not
/// taken yet.
#[derive(Debug, Default)]
struct Output {
    buf: Vec<u8>,
    /// Bytes of `buf` already copied into frames.
    copied: usize,
    /// Frames built and not yet taken.
    unsent: Option<BufChain>,
    unsent_bytes: usize,
}

impl Output {
    fn pending(&self) -> usize {
        self.buf.len() - self.copied + self.unsent_bytes
    }

    /// Drops the bytes already copied into frames, so that the buffer holds only what is
    /// still to be sent. Without it a client that reads slowly but steadily (the frames
    /// never all taken when the next request runs) would grow the buffer by every reply it
    /// was ever sent, up to the output limit.
    fn compact(&mut self) {
        if self.copied == self.buf.len() {
            self.buf.clear();
            if self.buf.capacity() > KV_BUFFER_KEPT_BYTES {
                self.buf = Vec::new();
            }
        } else if self.copied > 0 {
            // Moves at most the pause threshold plus one reply, only after as much was sent.
            self.buf.drain(..self.copied);
        }
        self.copied = 0;
    }
}

/// The output buffer as the RESP writer's sink, bounded by the output limit.
struct LimitedSink<'a> {
    buf: &'a mut Vec<u8>,
    limit: usize,
}

impl Sink for LimitedSink<'_> {
    fn room(&self) -> usize {
        self.limit.saturating_sub(self.buf.len())
    }
    fn put(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
}

/// [`Reply`] as RESP into a connection's output buffer. A reply that passes the limit sets
/// `overflow`, and the connection is closed after what fitted.
struct RespReply<'a> {
    sink: LimitedSink<'a>,
    protocol: Protocol,
    overflow: bool,
}

impl RespReply<'_> {
    fn write(
        &mut self,
        f: impl FnOnce(&mut ReplyWriter<'_, LimitedSink<'_>>) -> Result<(), melange_resp::Full>,
    ) {
        if self.overflow {
            return;
        }
        let mut writer = ReplyWriter::new(&mut self.sink, self.protocol);
        if f(&mut writer).is_err() {
            self.overflow = true;
        }
    }
}

impl Reply for RespReply<'_> {
    fn simple(&mut self, status: &str) {
        self.write(|w| w.simple(status.as_bytes()));
    }
    fn error(&mut self, message: &str) {
        self.write(|w| w.error(message.as_bytes()));
    }
    fn integer(&mut self, value: i64) {
        self.write(|w| w.integer(value));
    }
    fn bulk(&mut self, bytes: &[u8]) {
        self.write(|w| w.bulk(bytes));
    }
    fn null(&mut self) {
        self.write(|w| w.null());
    }
    fn null_array(&mut self) {
        self.write(|w| w.null_array());
    }
    fn array(&mut self, len: usize) {
        self.write(|w| w.array(len as u64));
    }
    fn map(&mut self, len: usize) {
        self.write(|w| w.map(len as u64));
    }
    fn set(&mut self, len: usize) {
        self.write(|w| w.set(len as u64));
    }
    fn double(&mut self, value: f64) {
        self.write(|w| w.double(value));
    }
    fn boolean(&mut self, value: bool) {
        self.write(|w| w.boolean(value));
    }
    fn verbatim(&mut self, format: &str, text: &[u8]) {
        let format: &[u8; 3] = format.as_bytes().try_into().unwrap_or(b"txt");
        self.write(|w| w.verbatim(format, text));
    }
    fn set_protocol(&mut self, resp: u8) {
        self.protocol = protocol_of(resp);
    }
}

fn protocol_of(resp: u8) -> Protocol {
    if resp == 3 {
        Protocol::Resp3
    } else {
        Protocol::Resp2
    }
}

/// The protocol a connection speaks and its per-connection state. The connection is boxed
/// whole; RESP, the common case, lives in that one allocation, and memcached's larger
/// session gets a box of its own so a RESP connection does not pay for it.
#[allow(clippy::large_enum_variant)]
enum Wire {
    /// Redis' RESP: the client's state and the request parser.
    Resp {
        client: Client,
        parser: RequestParser,
    },
    /// memcached's text and meta protocols.
    Memcache(Box<Session>),
}

impl Wire {
    /// Stream offset of the next byte to parse.
    fn position(&self) -> u64 {
        match self {
            Wire::Resp { parser, .. } => parser.position(),
            Wire::Memcache(session) => session.offset(),
        }
    }
}

/// One client connection.
struct Conn {
    id: ConnId,
    wire: Wire,
    input: Input,
    output: Output,
    /// Close once the output is out (QUIT, a protocol error, the peer closed).
    closing: bool,
    /// The peer sent FIN: no more input will come.
    peer_closed: bool,
    /// `Close` was submitted.
    close_sent: bool,
    /// Counted in the server's `connected_clients` (a connection refused for `maxclients`
    /// is not).
    counted: bool,
    /// In `KvApp::dirty`: its replies go out at the end of the batch.
    dirty: bool,
}

/// Reuses a vector's allocation for elements of another type (here: the same borrow of
/// another lifetime): it is emptied first, and an empty vector holds no element, so the
/// standard library reuses the allocation in place.
fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter().map(|_| unreachable!("empty")).collect()
}

/// Vectors reused by every request, so that serving allocates nothing in the steady state.
#[derive(Default)]
struct Buffers {
    /// The pieces of a RESP connection's held input.
    pieces: Vec<Piece<'static>>,
    /// A RESP request's arguments.
    args: Vec<&'static [u8]>,
    /// Arguments that straddle frames, copied.
    scratch: Vec<u8>,
    /// The pieces of a memcached connection's held input.
    memcache_pieces: Vec<melange_memcache::Piece<'static>>,
}

/// The KV app of one engine.
pub struct KvApp {
    config: KvConfig,
    server: SharedServer,
    listeners: Vec<ListenerId>,
    /// The listeners of `memcache_ports` (the others speak RESP).
    memcache_listeners: Vec<ListenerId>,
    /// The sockets of `memcache_udp_ports`.
    udp_sockets: Vec<SocketId>,
    /// The session every datagram is parsed with, reset before each (made at start).
    udp_session: Option<Session>,
    /// A datagram's replies, before they are cut into datagrams.
    udp_out: Vec<u8>,
    listen_error: Option<melange_core::CommandError>,
    conns: Vec<Option<Box<Conn>>>,
    /// Connections whose replies wait for frames from the pool.
    starved: Vec<ConnId>,
    /// Connections served in this batch, flushed once at its end: the replies to every
    /// segment a connection sent in one batch leave in one send (Redis writes a client's
    /// replies once per event-loop turn for the same reason), not a segment per segment.
    dirty: Vec<ConnId>,
    /// Unix ms minus engine ms, fixed at start.
    wall_offset_ms: u64,
    counters: KvCounters,
    buffers: Buffers,
}

impl std::fmt::Debug for KvApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvApp")
            .field("config", &self.config)
            .field("counters", &self.counters)
            .finish()
    }
}

impl KvApp {
    /// The app of one engine, serving `server` (shared with the other engines).
    pub fn new(config: KvConfig, server: SharedServer) -> Self {
        Self {
            config,
            server,
            listeners: Vec::new(),
            memcache_listeners: Vec::new(),
            udp_sockets: Vec::new(),
            udp_session: None,
            udp_out: Vec::new(),
            listen_error: None,
            conns: Vec::new(),
            starved: Vec::new(),
            dirty: Vec::new(),
            wall_offset_ms: 0,
            counters: KvCounters::default(),
            buffers: Buffers::default(),
        }
    }

    /// The first port that could not be listened on, and why; the app then ends.
    pub fn listen_error(&self) -> Option<melange_core::CommandError> {
        self.listen_error
    }

    /// Counters so far.
    pub fn counters(&self) -> KvCounters {
        self.counters
    }

    fn now_ms(&self, io: &IoContext<'_>) -> u64 {
        self.wall_offset_ms + io.now_ns() / 1_000_000
    }

    fn conn_mut(conns: &mut [Option<Box<Conn>>], conn: ConnId) -> Option<&mut Conn> {
        match conns.get_mut(conn.index() as usize) {
            Some(Some(c)) if c.id == conn => Some(c),
            _ => None,
        }
    }

    fn accept(
        &mut self,
        io: &mut IoContext<'_>,
        state: &mut KvState,
        listener: ListenerId,
        conn: ConnId,
    ) {
        let index = conn.index() as usize;
        if index >= KV_CONNECTIONS_MAX {
            let _ = io.submit(Command::Abort { conn });
            return;
        }
        if index >= self.conns.len() {
            self.conns.resize_with(index + 1, || None);
        }
        let memcache = self.memcache_listeners.contains(&listener);
        let wire = if memcache {
            match Session::new(&self.config.memcache) {
                Ok(session) => Wire::Memcache(Box::new(session)),
                Err(_) => {
                    // The settings were checked at start (`KvApp::start`); never reached.
                    let _ = io.submit(Command::Abort { conn });
                    return;
                }
            }
        } else {
            let server = &mut state.server;
            let mut parser = RequestParser::new(melange_resp::Limits {
                bulk_len_max: server.config.proto_max_bulk_len,
                ..melange_resp::Limits::default()
            });
            let client = server.new_client();
            parser.set_auth_required(!client.authenticated);
            Wire::Resp { client, parser }
        };
        let mut c = Box::new(Conn {
            id: conn,
            wire,
            input: Input::default(),
            output: Output::default(),
            closing: false,
            peer_closed: false,
            close_sent: false,
            counted: false,
            dirty: false,
        });
        // One limit for both protocols: every client holds the same resources.
        let open = state.server.connected_clients + state.memcached.curr_connections;
        if memcache {
            state.memcached.total_connections += 1;
        } else {
            state.server.connections_received += 1;
        }
        if open >= state.server.config.maxclients {
            // As Redis and memcached: say why, then close.
            self.counters.refused_maxclients += 1;
            let why: &[u8] = if memcache {
                MEMCACHED_TOO_MANY
            } else {
                b"-ERR max number of clients reached\r\n"
            };
            c.output.buf.extend_from_slice(why);
            c.closing = true;
        } else {
            if memcache {
                state.memcached.curr_connections += 1;
            } else {
                state.server.connected_clients += 1;
            }
            c.counted = true;
            self.counters.accepted += 1;
        }
        self.conns[index] = Some(c);
        self.flush(io, state, conn);
    }

    /// Parses and runs what `conn` sent, while its replies are not backed up.
    fn serve(&mut self, io: &mut IoContext<'_>, state: &mut KvState, conn: ConnId, now_ms: u64) {
        let limit = self.config.output_limit;
        let Some(c) = Self::conn_mut(&mut self.conns, conn) else {
            return;
        };
        let keep_from = match c.wire {
            Wire::Resp { .. } => serve_resp(
                c,
                io,
                &mut state.server,
                now_ms,
                limit,
                &mut self.buffers,
                &mut self.counters,
            ),
            Wire::Memcache(_) => serve_memcache(
                c,
                io,
                state,
                now_ms,
                limit,
                &mut self.buffers,
                &mut self.counters,
            ),
        };
        let paused = c.closing || c.output.pending() >= KV_OUTPUT_PAUSE_BYTES;
        self.counters.spilled_bytes += c.input.release(io, keep_from, paused);
        if c.input.owed > 0 {
            let owed = std::mem::take(&mut c.input.owed);
            // `owed` is at most the bytes received since the last report, which the
            // transport lent in chains of at most `BufChain::LEN_MAX`; report in u32 steps.
            let mut left = owed;
            while left > 0 {
                let bytes = left.min(u64::from(u32::MAX)) as u32;
                let _ = io.submit(Command::RecvDone { conn, bytes });
                left -= u64::from(bytes);
            }
        }
        if c.peer_closed && !c.closing && c.input.end() == c.wire.position() {
            // Everything the peer sent is answered: close after the replies.
            c.closing = true;
        }
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(conn);
        }
    }

    /// Flushes every connection served in this batch, once.
    fn flush_dirty(&mut self, io: &mut IoContext<'_>, state: &mut KvState) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for conn in dirty.drain(..) {
            if let Some(c) = Self::conn_mut(&mut self.conns, conn) {
                c.dirty = false;
            }
            self.flush(io, state, conn);
        }
        // The vector keeps its room for the next batch.
        self.dirty = dirty;
    }

    /// Moves `conn`'s replies into frames and offers them to the transport.
    fn flush(&mut self, io: &mut IoContext<'_>, state: &mut KvState, conn: ConnId) {
        let Some(c) = Self::conn_mut(&mut self.conns, conn) else {
            return;
        };
        loop {
            if let Some(data) = c.output.unsent.take() {
                let len = c.output.unsent_bytes;
                c.output.unsent_bytes = 0;
                match io.submit(Command::Send { conn, data }) {
                    Ok(Outcome::Accepted { bytes, rest }) => {
                        self.counters.bytes_out += u64::from(bytes);
                        if let Some(rest) = rest {
                            c.output.unsent_bytes = len - bytes as usize;
                            c.output.unsent = Some(rest);
                            return;
                        }
                    }
                    Ok(_) => return,
                    Err(refused) => {
                        self.counters.send_errors += 1;
                        if let Some(data) = refused.data {
                            io.free_chain(data);
                        }
                        let _ = io.submit(Command::Abort { conn });
                        c.close_sent = true;
                        uncount(c, state);
                        return;
                    }
                }
            }
            let out = &mut c.output;
            if out.copied == out.buf.len() {
                out.buf.clear();
                out.copied = 0;
                if out.buf.capacity() > KV_BUFFER_KEPT_BYTES {
                    out.buf = Vec::new();
                }
                if c.closing && !c.close_sent {
                    c.close_sent = true;
                    let _ = io.submit(Command::Close { conn });
                    uncount(c, state);
                }
                return;
            }
            // Copy the next replies into a chain of frames.
            let mut chain: Option<BufChain> = None;
            let mut len = 0;
            while out.copied < out.buf.len() && len < KV_SEND_CHAIN_BYTES {
                let Some(mut buf) = io.alloc() else {
                    break;
                };
                let n = io
                    .tailroom(&buf)
                    .min(KV_SEND_CHAIN_BYTES - len)
                    .min(out.buf.len() - out.copied);
                if n == 0 || io.set_payload_len(&mut buf, n).is_err() {
                    io.free(buf);
                    break;
                }
                io.payload_mut(&buf)
                    .copy_from_slice(&out.buf[out.copied..out.copied + n]);
                out.copied += n;
                len += n;
                match chain.as_mut() {
                    None => chain = Some(BufChain::from(buf)),
                    Some(ch) => {
                        if let Err((_, buf)) = io.chain_push(ch, buf) {
                            // The length was bounded by `KV_SEND_CHAIN_BYTES`; never reached.
                            out.copied -= n;
                            len -= n;
                            io.free(buf);
                            break;
                        }
                    }
                }
            }
            match chain {
                Some(chain) => {
                    out.unsent = Some(chain);
                    out.unsent_bytes = len;
                }
                None => {
                    // The pool is empty: try again once frames come back.
                    self.counters.pool_starved += 1;
                    if !self.starved.contains(&conn) {
                        self.starved.push(conn);
                    }
                    return;
                }
            }
        }
    }

    fn closed(&mut self, io: &mut IoContext<'_>, state: &mut KvState, conn: ConnId) {
        let index = conn.index() as usize;
        let Some(slot) = self.conns.get_mut(index) else {
            return;
        };
        let Some(mut c) = slot.take_if(|c| c.id == conn) else {
            return;
        };
        c.input.free_all(io);
        if let Some(data) = c.output.unsent.take() {
            io.free_chain(data);
        }
        uncount(&mut c, state);
        self.counters.closed += 1;
    }
}

/// Runs the RESP requests `c` sent while its replies are not backed up; returns the stream
/// offset from which its input must be kept.
fn serve_resp(
    c: &mut Conn,
    io: &mut IoContext<'_>,
    server: &mut Server,
    now_ms: u64,
    limit: usize,
    buffers: &mut Buffers,
    counters: &mut KvCounters,
) -> u64 {
    let Wire::Resp { client, parser } = &mut c.wire else {
        unreachable!("serve_resp on a memcached connection");
    };
    loop {
        if c.closing || c.output.pending() >= KV_OUTPUT_PAUSE_BYTES {
            break;
        }
        let at = parser.position();
        let Some(segment) = c.input.segment_at(io, at) else {
            if parser.request().is_some() {
                // Every byte is parsed and the last request has run: step past it, so
                // that its frames are released (an empty piece moves the parser to the
                // next request without consuming anything).
                let _ = parser.advance(&[]);
            }
            break;
        };
        let step = match parser.advance(segment) {
            Ok(step) => step,
            Err(error) => {
                protocol_error(&mut c.output, client.resp, &error, limit);
                c.closing = true;
                counters.protocol_errors += 1;
                break;
            }
        };
        if !step.complete {
            continue;
        }
        c.output.compact();
        // Run the request that just completed.
        let mut pieces = recycle(std::mem::take(&mut buffers.pieces));
        c.input
            .for_each_piece(io, |offset, bytes| pieces.push(Piece { offset, bytes }));
        let mut argv = recycle(std::mem::take(&mut buffers.args));
        let mut reply = RespReply {
            sink: LimitedSink {
                buf: &mut c.output.buf,
                limit,
            },
            protocol: protocol_of(client.resp),
            overflow: false,
        };
        match parser.args(&pieces, &mut buffers.scratch) {
            Ok(args) => {
                argv.extend(args.iter());
                if !argv.is_empty() {
                    counters.commands += 1;
                    server.execute(client, &argv, now_ms, &mut reply);
                }
            }
            Err(error) => {
                // The pieces are kept from `retain_from` on, so this is a bug here;
                // close the connection rather than answer wrongly.
                debug_assert!(false, "{error}");
                c.closing = true;
            }
        }
        let overflow = reply.overflow;
        buffers.args = recycle(argv);
        buffers.pieces = recycle(pieces);
        if overflow {
            counters.output_overflows += 1;
            c.closing = true;
        }
        if client.close_after_reply {
            c.closing = true;
        }
        parser.set_auth_required(!client.authenticated);
    }
    parser.retain_from()
}

/// The output buffer as memcached's reply sink, bounded by the output limit: a reply that
/// does not fit is refused whole and the connection closed after what fitted.
struct MemcacheSink<'a> {
    buf: &'a mut Vec<u8>,
    limit: usize,
    overflow: bool,
}

impl melange_memcache::Sink for MemcacheSink<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), melange_memcache::Full> {
        self.reserve(bytes.len())?;
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn reserve(&mut self, len: usize) -> Result<(), melange_memcache::Full> {
        if self.buf.len().saturating_add(len) > self.limit {
            self.overflow = true;
            return Err(melange_memcache::Full);
        }
        Ok(())
    }
}

/// Runs the memcached requests `c` sent while its replies are not backed up; returns the
/// stream offset from which its input must be kept.
fn serve_memcache(
    c: &mut Conn,
    io: &mut IoContext<'_>,
    state: &mut KvState,
    now_ms: u64,
    limit: usize,
    buffers: &mut Buffers,
    counters: &mut KvCounters,
) -> u64 {
    let Wire::Memcache(session) = &mut c.wire else {
        unreachable!("serve_memcache on a RESP connection");
    };
    loop {
        if c.closing || c.output.pending() >= KV_OUTPUT_PAUSE_BYTES {
            break;
        }
        let Some(segment) = c.input.segment_at(io, session.offset()) else {
            break;
        };
        if !session.feed(segment).ready {
            continue;
        }
        c.output.compact();
        let mut pieces = recycle(std::mem::take(&mut buffers.memcache_pieces));
        c.input.for_each_piece(io, |offset, bytes| {
            pieces.push(melange_memcache::Piece { offset, bytes })
        });
        let mut sink = MemcacheSink {
            buf: &mut c.output.buf,
            limit,
            overflow: false,
        };
        counters.commands += 1;
        let after = session.execute(
            &mut state.server.keyspace,
            &mut state.memcached,
            &pieces,
            now_ms,
            &mut sink,
        );
        buffers.memcache_pieces = recycle(pieces);
        if sink.overflow {
            counters.output_overflows += 1;
        }
        if after == After::Close {
            c.closing = true;
        }
    }
    session.hold_from()
}

/// A connection the server closed no longer counts as a client (as in Redis, where the
/// socket is gone at once), even while its FIN waits for the peer's.
fn uncount(c: &mut Conn, state: &mut KvState) {
    if std::mem::take(&mut c.counted) {
        match c.wire {
            Wire::Resp { .. } => {
                state.server.connected_clients = state.server.connected_clients.saturating_sub(1)
            }
            Wire::Memcache(_) => {
                state.memcached.curr_connections =
                    state.memcached.curr_connections.saturating_sub(1)
            }
        }
    }
}

fn protocol_error(output: &mut Output, resp: u8, error: &ProtocolError, limit: usize) {
    let mut sink = LimitedSink {
        buf: &mut output.buf,
        limit,
    };
    let _ = ReplyWriter::new(&mut sink, protocol_of(resp)).protocol_error(error);
}

impl KvApp {
    /// Answers one memcached UDP datagram: its requests run as on TCP, and the replies go
    /// back in datagrams of at most [`udp::DATAGRAM_LEN_MAX`] bytes with the request's ID.
    fn datagram(
        &mut self,
        io: &mut IoContext<'_>,
        state: &mut KvState,
        socket: SocketId,
        data: BufChain,
        from: SocketAddrV4,
        now_ms: u64,
    ) {
        self.counters.udp_requests += 1;
        // A datagram in one frame is read where it lies; a larger one is gathered.
        let (first, rest) = io.chain_pop_front(data);
        let single = match rest {
            None => Some(first),
            Some(rest) => {
                let gathered = &mut self.buffers.scratch;
                gathered.clear();
                gathered.extend_from_slice(io.payload(&first));
                io.free(first);
                let mut next = Some(rest);
                while let Some(chain) = next.take() {
                    let (buf, more) = io.chain_pop_front(chain);
                    gathered.extend_from_slice(io.payload(&buf));
                    io.free(buf);
                    next = more;
                }
                None
            }
        };
        self.udp_out.clear();
        let request_id = {
            let bytes: &[u8] = match &single {
                Some(buf) => io.payload(buf),
                None => &self.buffers.scratch,
            };
            match udp::parse_request(bytes) {
                Ok((header, payload)) => {
                    if let Some(session) = self.udp_session.as_mut() {
                        run_datagram(
                            session,
                            state,
                            payload,
                            now_ms,
                            &mut self.udp_out,
                            &mut self.counters,
                        );
                    }
                    Some(header.request_id)
                }
                Err(udp::UdpError::MultiPacket { request_id }) => {
                    self.udp_out.extend_from_slice(udp::MULTI_PACKET_REPLY);
                    Some(request_id)
                }
                Err(_) => None,
            }
        };
        if let Some(buf) = single {
            io.free(buf);
        }
        let Some(request_id) = request_id else {
            // No command after the header: memcached drops it silently.
            self.counters.udp_dropped += 1;
            return;
        };
        let Ok(datagrams) = udp::split(&self.udp_out, request_id, udp::DATAGRAM_LEN_MAX) else {
            self.counters.udp_dropped += 1;
            return;
        };
        for (header, payload) in datagrams {
            let Some(mut buf) = io.alloc() else {
                self.counters.udp_reply_drops += 1;
                continue;
            };
            let len = udp::HEADER_LEN + payload.len();
            if io.tailroom(&buf) < len || io.set_payload_len(&mut buf, len).is_err() {
                io.free(buf);
                self.counters.udp_reply_drops += 1;
                continue;
            }
            let _ = udp::write_datagram(io.payload_mut(&buf), &header, payload);
            if let Err((_, data)) = io.send_to(socket, from, buf) {
                io.free_chain(data);
                self.counters.udp_reply_drops += 1;
            }
        }
        self.counters.bytes_out += self.udp_out.len() as u64;
        if self.udp_out.capacity() > KV_BUFFER_KEPT_BYTES {
            self.udp_out = Vec::new();
        }
    }
}

/// Runs the requests of one UDP datagram's payload into `out`. A datagram stands alone: an
/// unfinished request at its end is dropped, as memcached drops it.
fn run_datagram(
    session: &mut Session,
    state: &mut KvState,
    payload: &[u8],
    now_ms: u64,
    out: &mut Vec<u8>,
    counters: &mut KvCounters,
) {
    session.reset();
    let pieces = [melange_memcache::Piece {
        offset: 0,
        bytes: payload,
    }];
    let mut rest = payload;
    loop {
        let fed = session.feed(rest);
        rest = &rest[fed.consumed..];
        if !fed.ready {
            return;
        }
        let mut sink = MemcacheSink {
            buf: out,
            limit: KV_UDP_REPLY_BYTES_MAX,
            overflow: false,
        };
        counters.commands += 1;
        let after = session.execute(
            &mut state.server.keyspace,
            &mut state.memcached,
            &pieces,
            now_ms,
            &mut sink,
        );
        if sink.overflow {
            counters.output_overflows += 1;
        }
        if after == After::Close {
            return;
        }
    }
}

impl App for KvApp {
    fn start(&mut self, io: &mut IoContext<'_>) {
        let wall = (self.config.wall_clock_ms)();
        self.wall_offset_ms = wall.saturating_sub(io.now_ns() / 1_000_000);
        let memcache =
            !self.config.memcache_ports.is_empty() || !self.config.memcache_udp_ports.is_empty();
        if memcache {
            match Session::new(&self.config.memcache) {
                Ok(session) => self.udp_session = Some(session),
                Err(_) => {
                    // The front end checks the settings first; refuse to serve rather than
                    // accept connections it could not parse for.
                    self.counters.listen_errors += 1;
                    self.listen_error
                        .get_or_insert(melange_core::CommandError::Bind {
                            port: self.config.memcache_ports.first().copied().unwrap_or(0),
                            reason: "memcached's settings are out of range (item size limit)",
                        });
                    return;
                }
            }
        }
        let ports: Vec<(u16, bool)> = self
            .config
            .resp_ports
            .iter()
            .map(|&p| (p, false))
            .chain(self.config.memcache_ports.iter().map(|&p| (p, true)))
            .collect();
        for (port, memcache) in ports {
            match io.submit(Command::Listen {
                port,
                backlog: KV_BACKLOG,
            }) {
                Ok(Outcome::Listener(listener)) => {
                    self.listeners.push(listener);
                    if memcache {
                        self.memcache_listeners.push(listener);
                    }
                }
                Ok(_) => {}
                Err(refused) => {
                    self.counters.listen_errors += 1;
                    self.listen_error.get_or_insert(refused.error);
                }
            }
        }
        for &port in &self.config.memcache_udp_ports {
            match io.bind_udp(port) {
                Ok(socket) => self.udp_sockets.push(socket),
                Err(error) => {
                    self.counters.listen_errors += 1;
                    self.listen_error.get_or_insert(error);
                }
            }
        }
        if self.config.cron {
            let _ = io.arm_timer(io.now_ns() + KV_CRON_INTERVAL_NS, CRON_TOKEN);
        }
    }

    fn is_done(&self) -> bool {
        self.listen_error.is_some()
    }

    fn run_io(&mut self, io: &mut IoContext<'_>) {
        if io.events_len() == 0 && self.starved.is_empty() {
            return;
        }
        let now_ms = self.now_ms(io);
        let shared = Arc::clone(&self.server);
        let mut state = shared
            .lock()
            .expect("another engine panicked while it held the keyspace");
        let state = &mut *state;
        while let Some(event) = io.next_event() {
            match event {
                Event::Accepted { listener, conn, .. } => self.accept(io, state, listener, conn),
                Event::Recv { conn, data } => {
                    let Some(c) = Self::conn_mut(&mut self.conns, conn) else {
                        io.free_chain(data);
                        continue;
                    };
                    self.counters.bytes_in += c.input.push(io, data);
                    self.serve(io, state, conn, now_ms);
                }
                Event::Sent { conn, data, .. } => {
                    if let Some(data) = data {
                        io.free_chain(data);
                    }
                    self.flush(io, state, conn);
                    // Replies drained: serve what waited behind them.
                    self.serve(io, state, conn, now_ms);
                }
                Event::PeerClosed { conn } => {
                    if let Some(c) = Self::conn_mut(&mut self.conns, conn) {
                        c.peer_closed = true;
                    }
                    self.serve(io, state, conn, now_ms);
                }
                Event::Closed { conn, .. } => self.closed(io, state, conn),
                Event::Datagram {
                    socket, data, from, ..
                } if self.udp_sockets.contains(&socket) => {
                    self.datagram(io, state, socket, data, from, now_ms)
                }
                Event::Timer { token, .. } if token == CRON_TOKEN => {
                    state.server.keyspace.active_expire(now_ms);
                    let _ = io.arm_timer(io.now_ns() + KV_CRON_INTERVAL_NS, CRON_TOKEN);
                }
                other => {
                    if let Some(data) = other.into_data() {
                        io.free_chain(data);
                    }
                }
            }
        }
        self.flush_dirty(io, state);
        if !self.starved.is_empty() {
            let starved = std::mem::take(&mut self.starved);
            for conn in starved {
                self.flush(io, state, conn);
                self.serve(io, state, conn, now_ms);
            }
            self.flush_dirty(io, state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_tcp::TcpTestIo;
    use melange_core::contract::CloseReason;
    use std::net::{Ipv4Addr, SocketAddrV4};

    const PEER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 40_000);

    fn wall() -> u64 {
        1_700_000_000_000
    }

    fn app_with(server: Server) -> KvApp {
        KvApp::new(
            KvConfig {
                resp_ports: vec![6379],
                memcache_ports: vec![11211],
                memcache_udp_ports: vec![11211],
                memcache: memcached::Config::default(),
                output_limit: KV_OUTPUT_LIMIT_DEFAULT,
                cron: true,
                wall_clock_ms: wall,
            },
            Arc::new(Mutex::new(KvState::new(
                server,
                memcached::Config::default(),
                1,
            ))),
        )
    }

    fn app() -> KvApp {
        app_with(Server::new(
            melange_kv::command::Config::default(),
            wall(),
            7,
        ))
    }

    fn cmd(args: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// Runs batches, acknowledging what was sent, until nothing changes.
    fn settle(io: &mut TcpTestIo, app: &mut KvApp) {
        for _ in 0..10_000 {
            io.now_ns += 1_000;
            app.run_io(&mut IoContext::new(io));
            if io.conns.iter().all(|c| c.unacked.is_empty()) && io.inner.events.is_empty() {
                return;
            }
            io.ack_all();
        }
        panic!("the app never settled: {:?}", app.counters());
    }

    fn started(frames: usize) -> (TcpTestIo, KvApp, ConnId) {
        let mut io = TcpTestIo::new(frames);
        let mut app = app();
        app.start(&mut IoContext::new(&mut io));
        let conn = io.accept(PEER);
        settle(&mut io, &mut app);
        (io, app, conn)
    }

    #[test]
    fn pipelined_commands_split_at_every_size_get_their_replies_in_order() {
        let mut stream = Vec::new();
        stream.extend(cmd(&[b"PING"]));
        stream.extend(cmd(&[b"SET", b"k", b"hello world"]));
        stream.extend(cmd(&[b"GET", b"k"]));
        stream.extend(cmd(&[b"INCR", b"k"]));
        stream.extend(b"PING inline\r\n");
        stream.extend(cmd(&[b"DEL", b"k", b"nope"]));
        let expected: &[u8] = b"+PONG\r\n+OK\r\n$11\r\nhello world\r\n\
            -ERR value is not an integer or out of range\r\n$6\r\ninline\r\n:1\r\n";
        for piece in [1, 2, 3, 7, 13, 100, 1448] {
            let (mut io, mut app, conn) = started(256);
            io.deliver(conn, &stream, piece);
            settle(&mut io, &mut app);
            assert_eq!(
                String::from_utf8_lossy(&io.conns[0].stream),
                String::from_utf8_lossy(expected),
                "pieces of {piece}"
            );
            assert_eq!(io.conns[0].recv_done, stream.len() as u64, "all given back");
            assert_eq!(app.counters().commands, 6);
            io.finish(&mut app);
        }
    }

    #[test]
    fn a_value_larger_than_the_receive_frames_is_stored_and_read_back_exactly() {
        let value: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (mut io, mut app, conn) = started(4096);
        io.send_room = 256 * 1024;
        let mut stream = cmd(&[b"SET", b"big", &value]);
        stream.extend(cmd(&[b"STRLEN", b"big"]));
        stream.extend(cmd(&[b"GET", b"big"]));
        io.deliver(conn, &stream, 1448);
        settle(&mut io, &mut app);
        let mut expected = b"+OK\r\n:3000000\r\n$3000000\r\n".to_vec();
        expected.extend_from_slice(&value);
        expected.extend_from_slice(b"\r\n");
        assert!(io.conns[0].stream == expected, "the value came back whole");
        assert!(app.counters().spilled_bytes > 0, "{:?}", app.counters());
        assert_eq!(io.conns[0].recv_done, stream.len() as u64);
        io.finish(&mut app);
    }

    #[test]
    fn a_client_that_does_not_read_stops_being_read() {
        let (mut io, mut app, conn) = started(4096);
        let value = vec![b'v'; 10_000];
        let mut setup = cmd(&[b"SET", b"k", &value]);
        io.deliver(conn, &setup, 1448);
        settle(&mut io, &mut app);
        io.conns[0].stream.clear();
        // 2,000 pipelined GETs of 10 kB: 20 MB of replies, while the peer's window takes
        // 100 kB and nothing is acknowledged.
        io.send_room = 100_000;
        setup.clear();
        for _ in 0..2_000 {
            setup.extend(cmd(&[b"GET", b"k"]));
        }
        io.deliver(conn, &setup, 1448);
        for _ in 0..20 {
            io.now_ns += 1_000;
            app.run_io(&mut IoContext::new(&mut io));
        }
        let served = app.counters().commands;
        assert!(served < 30, "served {served} GETs into a full window");
        assert!(
            io.conns[0].recv_done < setup.len() as u64 / 2,
            "the unread requests keep the window shut: {} of {}",
            io.conns[0].recv_done,
            setup.len()
        );
        // Reading resumes service: everything is answered.
        settle(&mut io, &mut app);
        assert_eq!(app.counters().commands, 2_001);
        assert_eq!(io.conns[0].stream.len(), 2_000 * (value.len() + 10));
        io.finish(&mut app);
    }

    #[test]
    fn a_client_that_reads_slowly_but_steadily_keeps_only_its_unsent_replies() {
        let mut io = TcpTestIo::new(4096);
        let mut app = KvApp::new(
            KvConfig {
                resp_ports: vec![6379],
                memcache_ports: vec![11211],
                memcache_udp_ports: Vec::new(),
                memcache: memcached::Config::default(),
                output_limit: 4 << 20,
                cron: false,
                wall_clock_ms: wall,
            },
            Arc::new(Mutex::new(KvState::new(
                Server::new(melange_kv::command::Config::default(), wall(), 7),
                memcached::Config::default(),
                1,
            ))),
        );
        app.start(&mut IoContext::new(&mut io));
        let conn = io.accept(PEER);
        let value = vec![b'v'; 100_000];
        io.deliver(conn, &cmd(&[b"SET", b"k", &value]), 1448);
        settle(&mut io, &mut app);
        io.conns[0].stream.clear();
        // 500 GETs of 100 kB (50 MB of replies, past the 4 MiB output limit) through a
        // window of 30 kB that the peer acknowledges after every batch: the frames are
        // never all taken when the next GET runs.
        io.send_room = 30_000;
        let mut gets = Vec::new();
        for _ in 0..500 {
            gets.extend(cmd(&[b"GET", b"k"]));
        }
        io.deliver(conn, &gets, 1448);
        for _ in 0..100_000 {
            io.now_ns += 1_000;
            app.run_io(&mut IoContext::new(&mut io));
            io.ack_all();
            if io.conns[0].stream.len() == 500 * (value.len() + 11) {
                break;
            }
        }
        assert_eq!(app.counters().output_overflows, 0, "{:?}", app.counters());
        assert_eq!(io.conns[0].stream.len(), 500 * (value.len() + 11));
        io.finish(&mut app);
    }

    #[test]
    fn clients_trickling_a_byte_at_a_time_hold_one_frame_each() {
        // 300 frames for 100 slowloris clients sending 200 bytes each, one per segment.
        let (mut io, mut app, _) = started(300);
        let slow: Vec<ConnId> = (0..100).map(|_| io.accept(PEER)).collect();
        settle(&mut io, &mut app);
        let request = cmd(&[b"SET", b"slow", &[b'x'; 1000]]);
        for byte in &request[..200] {
            for &conn in &slow {
                io.deliver(conn, std::slice::from_ref(byte), 1);
            }
            app.run_io(&mut IoContext::new(&mut io));
            assert!(
                io.inner.pool.available() >= 300 - 100 - 1,
                "{} frames free",
                io.inner.pool.available()
            );
        }
        // Another client is still served, and the partial requests are kept.
        let good = io.accept(PEER);
        settle(&mut io, &mut app);
        io.deliver(good, &cmd(&[b"PING"]), 1448);
        settle(&mut io, &mut app);
        let good_stream = &io.conns.iter().find(|c| c.id == good).unwrap().stream;
        assert_eq!(good_stream, b"+PONG\r\n");
        for &conn in &slow {
            io.deliver(conn, &request[200..], 1448);
        }
        settle(&mut io, &mut app);
        assert_eq!(app.counters().commands, 101, "{:?}", app.counters());
        io.finish(&mut app);
    }

    #[test]
    fn a_protocol_error_is_answered_then_the_connection_closes() {
        let (mut io, mut app, conn) = started(64);
        io.deliver(
            conn,
            b"*1\r\n$4\r\nPING\r\n*1\r\n+x\r\n*1\r\n$4\r\nPING\r\n",
            5,
        );
        settle(&mut io, &mut app);
        assert_eq!(
            String::from_utf8_lossy(&io.conns[0].stream),
            "+PONG\r\n-ERR Protocol error: expected '$', got '+'\r\n"
        );
        assert_eq!(io.closing_conns(), 1);
        assert_eq!(app.counters().protocol_errors, 1);
        io.finish(&mut app);
    }

    #[test]
    fn quit_and_peer_close_close_after_the_replies() {
        let (mut io, mut app, conn) = started(64);
        let mut stream = cmd(&[b"SET", b"a", b"1"]);
        stream.extend(cmd(&[b"QUIT"]));
        stream.extend(cmd(&[b"SET", b"a", b"2"]));
        io.deliver(conn, &stream, 1448);
        settle(&mut io, &mut app);
        assert_eq!(io.conns[0].stream, b"+OK\r\n+OK\r\n");
        assert_eq!(io.closing_conns(), 1);
        io.close_all_closing();
        let second = io.accept(PEER);
        io.deliver(second, &cmd(&[b"GET", b"a"]), 1448);
        io.peer_close(second);
        settle(&mut io, &mut app);
        assert_eq!(
            io.conns[1].stream, b"$1\r\n1\r\n",
            "the command after QUIT never ran"
        );
        assert_eq!(io.closing_conns(), 1);
        io.close_all_closing();
        settle(&mut io, &mut app);
        assert_eq!(app.server.lock().unwrap().server.connected_clients, 0);
        io.finish(&mut app);
    }

    #[test]
    fn hello_3_is_answered_in_resp3_and_so_is_what_follows() {
        let (mut io, mut app, conn) = started(64);
        let mut stream = cmd(&[b"HELLO", b"3"]);
        stream.extend(cmd(&[b"GET", b"missing"]));
        io.deliver(conn, &stream, 1448);
        settle(&mut io, &mut app);
        let text = String::from_utf8_lossy(&io.conns[0].stream).into_owned();
        assert!(
            text.starts_with("%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n"),
            "{text}"
        );
        assert!(
            text.ends_with("*0\r\n_\r\n"),
            "RESP3 null after the map: {text}"
        );
        io.finish(&mut app);
    }

    #[test]
    fn memcached_clients_and_redis_clients_share_one_keyspace() {
        let mut io = TcpTestIo::new(256);
        let mut app = app();
        app.start(&mut IoContext::new(&mut io));
        assert_eq!(io.listened, vec![6379, 11211]);
        let mc = io.accept_on(1, PEER);
        // A request cut at every byte completes as it would whole.
        io.deliver(
            mc,
            b"set k 5 0 3\r\nabc\r\nget k\r\nincr n 1\r\nbogus\r\n",
            1,
        );
        settle(&mut io, &mut app);
        assert_eq!(
            io.conns[0].stream,
            b"STORED\r\nVALUE k 5 3\r\nabc\r\nEND\r\nNOT_FOUND\r\nERROR\r\n"
        );
        let redis = io.accept(PEER);
        io.deliver(redis, &cmd(&[b"GET", b"k"]), 100);
        io.deliver(redis, &cmd(&[b"SET", b"r", b"from redis"]), 100);
        settle(&mut io, &mut app);
        assert_eq!(io.conns[1].stream, b"$3\r\nabc\r\n+OK\r\n");
        io.conns[0].stream.clear();
        io.deliver(mc, b"get r\r\nstats\r\n", 1448);
        settle(&mut io, &mut app);
        let text = String::from_utf8_lossy(&io.conns[0].stream).into_owned();
        assert!(
            text.starts_with("VALUE r 0 10\r\nfrom redis\r\nEND\r\nSTAT pid 1\r\n"),
            "{text}"
        );
        assert!(text.contains("STAT curr_connections 1\r\n"), "{text}");
        assert!(text.contains("STAT get_hits 2\r\n"), "{text}");
        assert_eq!(app.server.lock().unwrap().server.connected_clients, 1);
        // `quit` closes the memcached connection, and it stops counting.
        io.deliver(mc, b"quit\r\n", 100);
        settle(&mut io, &mut app);
        assert_eq!(io.closing_conns(), 1);
        io.close_all_closing();
        settle(&mut io, &mut app);
        assert_eq!(app.server.lock().unwrap().memcached.curr_connections, 0);
        io.finish(&mut app);
    }

    #[test]
    fn a_memcached_value_over_the_item_limit_is_refused_without_being_held() {
        let mut io = TcpTestIo::new(256);
        let mut app = app();
        app.start(&mut IoContext::new(&mut io));
        let mc = io.accept_on(1, PEER);
        let value = vec![b'v'; 2 << 20];
        let mut stream = b"set big 0 0 2097152\r\n".to_vec();
        stream.extend_from_slice(&value);
        stream.extend_from_slice(b"\r\nget big\r\n");
        for part in stream.chunks(60_000) {
            io.deliver(mc, part, 1448);
            settle(&mut io, &mut app);
        }
        assert_eq!(
            io.conns[0].stream,
            b"SERVER_ERROR object too large for cache\r\nEND\r\n"
        );
        assert_eq!(
            app.counters().spilled_bytes,
            0,
            "a refused value is skipped"
        );
        io.finish(&mut app);
    }

    #[test]
    fn memcached_over_udp_answers_in_framed_datagrams_with_the_request_id() {
        let mut io = TcpTestIo::new(1024);
        let mut app = app();
        app.start(&mut IoContext::new(&mut io));
        let value = vec![b'x'; 5_000];
        let mut set = b"set k 0 0 5000\r\n".to_vec();
        set.extend_from_slice(&value);
        set.extend_from_slice(b"\r\n");
        let conn = io.accept_on(1, PEER);
        io.deliver(conn, &set, 1448);
        settle(&mut io, &mut app);
        // Request 7, one datagram; the reply takes four (1392 payload bytes each).
        io.inner
            .deliver(b"\x00\x07\x00\x00\x00\x01\x00\x00get k\r\n", PEER);
        settle(&mut io, &mut app);
        let sent = io.inner.take_sent();
        let expected: Vec<u8> = [b"VALUE k 0 5000\r\n".as_slice(), &value, b"\r\nEND\r\n"].concat();
        let total = expected
            .len()
            .div_ceil(udp::DATAGRAM_LEN_MAX - udp::HEADER_LEN);
        assert_eq!(sent.len(), total);
        let mut reply = Vec::new();
        for (i, (to, datagram)) in sent.iter().enumerate() {
            assert_eq!(*to, PEER);
            assert!(datagram.len() <= udp::DATAGRAM_LEN_MAX);
            let header = udp::FrameHeader::parse(datagram).unwrap();
            assert_eq!(
                (header.request_id, header.sequence, header.total),
                (7, i as u16, total as u16)
            );
            reply.extend_from_slice(&datagram[udp::HEADER_LEN..]);
        }
        assert_eq!(reply, expected);
        // A request over several datagrams is refused as memcached refuses it; a datagram
        // with nothing after its header is dropped; an unfinished request is not continued
        // by the next datagram.
        io.inner
            .deliver(b"\x00\x08\x00\x00\x00\x02\x00\x00get k\r\n", PEER);
        io.inner.deliver(b"\x00\x09\x00\x00\x00\x01\x00\x00", PEER);
        io.inner
            .deliver(b"\x00\x0a\x00\x00\x00\x01\x00\x00get ", PEER);
        io.inner
            .deliver(b"\x00\x0b\x00\x00\x00\x01\x00\x00nokey\r\n", PEER);
        settle(&mut io, &mut app);
        let sent = io.inner.take_sent();
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert_eq!(
            sent[0].1,
            [
                b"\x00\x08\x00\x00\x00\x01\x00\x00".as_slice(),
                udp::MULTI_PACKET_REPLY
            ]
            .concat()
        );
        assert_eq!(sent[1].1, b"\x00\x0b\x00\x00\x00\x01\x00\x00ERROR\r\n");
        let c = app.counters();
        assert_eq!(
            (c.udp_requests, c.udp_dropped, c.udp_reply_drops),
            (5, 1, 0)
        );
        io.finish(&mut app);
    }

    #[test]
    fn past_maxclients_a_client_is_told_and_closed() {
        let config = melange_kv::command::Config {
            maxclients: 1,
            ..Default::default()
        };
        let mut io = TcpTestIo::new(64);
        let mut app = app_with(Server::new(config, wall(), 7));
        app.start(&mut IoContext::new(&mut io));
        let first = io.accept(PEER);
        let _second = io.accept(PEER);
        settle(&mut io, &mut app);
        assert_eq!(
            io.conns[1].stream,
            b"-ERR max number of clients reached\r\n"
        );
        assert_eq!(io.closing_conns(), 1);
        io.close_all_closing();
        settle(&mut io, &mut app);
        io.deliver(first, &cmd(&[b"PING"]), 100);
        settle(&mut io, &mut app);
        assert_eq!(io.conns[0].stream, b"+PONG\r\n");
        let c = app.counters();
        assert_eq!((c.accepted, c.refused_maxclients), (1, 1));
        assert_eq!(app.server.lock().unwrap().server.connected_clients, 1);
        io.end(first, CloseReason::Reset);
        settle(&mut io, &mut app);
        assert_eq!(app.server.lock().unwrap().server.connected_clients, 0);
        io.finish(&mut app);
    }

    #[test]
    fn an_empty_pool_delays_replies_without_losing_them() {
        // Eight frames: the replies of 100 GETs of 2 kB need far more.
        let (mut io, mut app, conn) = started(24);
        let value = vec![b'x'; 2_000];
        io.deliver(conn, &cmd(&[b"SET", b"k", &value]), 1448);
        settle(&mut io, &mut app);
        io.conns[0].stream.clear();
        let mut stream = Vec::new();
        for _ in 0..100 {
            stream.extend(cmd(&[b"GET", b"k"]));
        }
        io.deliver(conn, &stream, 1448);
        settle(&mut io, &mut app);
        assert_eq!(io.conns[0].stream.len(), 100 * (2_000 + 9));
        assert!(app.counters().pool_starved > 0, "{:?}", app.counters());
        io.finish(&mut app);
    }

    #[test]
    fn the_maintenance_timer_expires_keys_nobody_reads() {
        let (mut io, mut app, conn) = started(64);
        let mut stream = Vec::new();
        for i in 0..50 {
            stream.extend(cmd(&[
                b"SET",
                format!("k{i}").as_bytes(),
                b"v",
                b"PX",
                b"50",
            ]));
        }
        io.deliver(conn, &stream, 1448);
        settle(&mut io, &mut app);
        assert_eq!(app.server.lock().unwrap().server.keyspace.db(0).len(), 50);
        io.now_ns += 200_000_000;
        for _ in 0..10 {
            io.fire_token(CRON_TOKEN);
            app.run_io(&mut IoContext::new(&mut io));
        }
        assert_eq!(app.server.lock().unwrap().server.keyspace.db(0).len(), 0);
        assert_eq!(io.timers_with_token(CRON_TOKEN), 1, "re-armed");
        io.finish(&mut app);
    }
}
