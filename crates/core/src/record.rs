//! Fixed-layout records for commands and events: what service mode carries between an app
//! process and the daemon over shared-memory rings.
//!
//! A [`Record`] is 64 bytes of plain integers (`#[repr(C)]`, no pointers, no enums with
//! payloads, every bit pattern a valid value), so it can sit in a ring slot that another
//! process writes. [`Command`] and [`Event`] convert to records losslessly
//! ([`encode_command`], [`encode_event`]) and back ([`decode_command`], [`decode_event`]).
//! Decoding treats the record as hostile: an unknown opcode, a reserved bit, an address or
//! port that makes no sense, or buffers that do not name a chain of this pool are refused
//! with a [`RecordError`], never a panic; the fuzz target `contract_records` holds it to that.
//!
//! Buffers travel as their raw parts (head frame and window, tail, frame count, bytes) and
//! are checked against the pool on decode: the head and every linked frame must be allocated,
//! the walk along the links must end at the tail after exactly `frames` frames, and the
//! windows must add up to the length. The links themselves live in the pool, written only by
//! the engine; a service-mode app hands over buffers it was lent, and the daemon's owner
//! table (the pool's [`crate::pool::FrameOwner`] record, which service mode keeps in every
//! build) is what proves the app may give them. That check belongs to service mode and is
//! not made here.
//!
//! Alternative rejected: serde with a compact format. It would allocate, its decoding cost
//! depends on the input, and the layout would not be fixed for a ring slot.

use crate::contract::{CloseReason, Command, ConnOption, Event, SendError, StorageError};
use crate::handle::Handle;
use crate::pool::{BufChain, PacketPool, RawBuf, RawChain};
use std::net::{Ipv4Addr, SocketAddrV4};
use thiserror::Error;

/// One command or event as plain integers. See the module documentation for the rules.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Record {
    /// Which command or event (`OP_*`).
    pub opcode: u16,
    /// `FLAG_*` bits.
    pub flags: u16,
    /// A port.
    pub port: u16,
    /// An error or reason code (`0` = none).
    pub status: u16,
    /// A handle ([`Handle::to_raw`]).
    pub handle: u64,
    /// A token, or a second handle.
    pub token: u64,
    /// A deadline, offset or option value.
    pub value: u64,
    /// An IPv4 address, as `u32::from(Ipv4Addr)`.
    pub addr: u32,
    /// A length, byte count or backlog.
    pub len: u32,
    /// Head frame index of the buffers.
    pub head_index: u32,
    /// Head window start.
    pub head_start: u16,
    /// Head window length.
    pub head_len: u16,
    /// Last frame index.
    pub tail: u32,
    /// Frames in the chain (0: no buffers).
    pub frames: u32,
    /// Bytes in the chain.
    pub bytes: u32,
    /// Unused, zero.
    pub reserved: u32,
}

/// Bytes per record: one cache line.
pub const RECORD_LEN: usize = 64;
const _: () = assert!(std::mem::size_of::<Record>() == RECORD_LEN);
const _: () = assert!(std::mem::align_of::<Record>() == 8);

/// `flags`: the record carries buffers.
pub const FLAG_DATA: u16 = 1;
/// `flags`: `token` holds a notify token (sends) / the result is an error (completions).
pub const FLAG_TOKEN: u16 = 2;
/// `flags`: an error (`status` says which).
pub const FLAG_ERROR: u16 = 4;
const FLAGS_KNOWN: u16 = FLAG_DATA | FLAG_TOKEN | FLAG_ERROR;

macro_rules! opcodes {
    ($($(#[$doc:meta])* $name:ident = $value:literal;)*) => {
        $($(#[$doc])* pub const $name: u16 = $value;)*
    };
}

opcodes! {
    /// [`Command::BindUdp`].
    OP_BIND_UDP = 1;
    /// [`Command::CloseUdp`].
    OP_CLOSE_UDP = 2;
    /// [`Command::SendTo`].
    OP_SEND_TO = 3;
    /// [`Command::ArmTimer`].
    OP_ARM_TIMER = 4;
    /// [`Command::RearmTimer`].
    OP_REARM_TIMER = 5;
    /// [`Command::CancelTimer`].
    OP_CANCEL_TIMER = 6;
    /// [`Command::Listen`].
    OP_LISTEN = 7;
    /// [`Command::Connect`].
    OP_CONNECT = 8;
    /// [`Command::Send`].
    OP_SEND = 9;
    /// [`Command::RecvDone`].
    OP_RECV_DONE = 10;
    /// [`Command::Close`].
    OP_CLOSE = 11;
    /// [`Command::Abort`].
    OP_ABORT = 12;
    /// [`Command::SetOption`] with [`ConnOption::NoDelay`].
    OP_SET_NODELAY = 13;
    /// [`Command::SetOption`] with [`ConnOption::KeepaliveNs`].
    OP_SET_KEEPALIVE = 14;
    /// [`Command::StorageRead`].
    OP_STORAGE_READ = 15;
    /// [`Command::StorageWrite`].
    OP_STORAGE_WRITE = 16;
    /// [`Command::StorageFlush`].
    OP_STORAGE_FLUSH = 17;
    /// [`Event::Datagram`].
    OP_EV_DATAGRAM = 0x101;
    /// [`Event::Timer`].
    OP_EV_TIMER = 0x102;
    /// [`Event::SendDone`].
    OP_EV_SEND_DONE = 0x103;
    /// [`Event::Accepted`].
    OP_EV_ACCEPTED = 0x104;
    /// [`Event::Connected`].
    OP_EV_CONNECTED = 0x105;
    /// [`Event::ConnectFailed`].
    OP_EV_CONNECT_FAILED = 0x106;
    /// [`Event::Recv`].
    OP_EV_RECV = 0x107;
    /// [`Event::Sent`].
    OP_EV_SENT = 0x108;
    /// [`Event::PeerClosed`].
    OP_EV_PEER_CLOSED = 0x109;
    /// [`Event::Closed`].
    OP_EV_CLOSED = 0x10a;
    /// [`Event::StorageDone`].
    OP_EV_STORAGE_DONE = 0x10b;
}

/// Why a record does not decode. The record is dropped and counted; the sender is broken or
/// hostile.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// The opcode names nothing, or a command where an event was expected (or the reverse).
    #[error("unknown opcode {0:#x}")]
    Opcode(u16),
    /// A flag bit is set that this opcode does not use, or `reserved` is not zero.
    #[error("unexpected flags {0:#x}")]
    Flags(u16),
    /// The record must carry buffers and does not, or the reverse.
    #[error("buffers missing or unexpected")]
    Data,
    /// The buffers do not name a chain of this pool (see the module documentation).
    #[error("buffers do not name a chain of this pool")]
    Chain,
    /// A status code names nothing.
    #[error("unknown status code {0}")]
    Status(u16),
    /// A field that this opcode (with these flags) does not use is not zero. The encoder
    /// writes zeros there, so a record that holds anything else did not come from it.
    #[error("a field that opcode {0:#x} does not use is not zero")]
    Unused(u16),
}

fn chain_parts(record: &mut Record, chain: BufChain) {
    let raw = chain.into_raw();
    record.flags |= FLAG_DATA;
    record.head_index = raw.head.index;
    record.head_start = raw.head.start;
    record.head_len = raw.head.len;
    record.tail = raw.tail;
    record.frames = raw.frames;
    record.bytes = raw.len;
}

fn addr_parts(record: &mut Record, addr: SocketAddrV4) {
    record.addr = u32::from(*addr.ip());
    record.port = addr.port();
}

fn addr_of(record: &Record) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(record.addr), record.port)
}

fn send_error_code(error: SendError) -> u16 {
    match error {
        SendError::NoRoute => 1,
        SendError::BadDestination => 2,
        SendError::ResolutionQueueFull => 3,
        SendError::Unresolved => 4,
        SendError::TxQueueFull => 5,
        SendError::PayloadTooLarge => 6,
        SendError::NoHeadroom => 7,
        SendError::Backend => 8,
    }
}

fn send_error_of(code: u16) -> Result<SendError, RecordError> {
    Ok(match code {
        1 => SendError::NoRoute,
        2 => SendError::BadDestination,
        3 => SendError::ResolutionQueueFull,
        4 => SendError::Unresolved,
        5 => SendError::TxQueueFull,
        6 => SendError::PayloadTooLarge,
        7 => SendError::NoHeadroom,
        8 => SendError::Backend,
        _ => return Err(RecordError::Status(code)),
    })
}

fn close_reason_code(reason: CloseReason) -> u16 {
    match reason {
        CloseReason::Closed => 1,
        CloseReason::Reset => 2,
        CloseReason::TimedOut => 3,
        CloseReason::Refused => 4,
        CloseReason::Aborted => 5,
    }
}

fn close_reason_of(code: u16) -> Result<CloseReason, RecordError> {
    Ok(match code {
        1 => CloseReason::Closed,
        2 => CloseReason::Reset,
        3 => CloseReason::TimedOut,
        4 => CloseReason::Refused,
        5 => CloseReason::Aborted,
        _ => return Err(RecordError::Status(code)),
    })
}

/// Storage errors travel as a status code plus, for device errors, the errno in `value`.
const STORAGE_OUT_OF_RANGE: u16 = 1;
const STORAGE_DEVICE: u16 = 2;

/// A command as a record; its buffers leave as raw parts (see [`decode_command`]).
pub fn encode_command(command: Command) -> Record {
    let mut r = Record::default();
    match command {
        Command::BindUdp { port } => {
            r.opcode = OP_BIND_UDP;
            r.port = port;
        }
        Command::CloseUdp { socket } => {
            r.opcode = OP_CLOSE_UDP;
            r.handle = socket.to_raw();
        }
        Command::SendTo {
            socket,
            to,
            data,
            notify,
        } => {
            r.opcode = OP_SEND_TO;
            r.handle = socket.to_raw();
            addr_parts(&mut r, to);
            chain_parts(&mut r, data);
            if let Some(token) = notify {
                r.flags |= FLAG_TOKEN;
                r.token = token;
            }
        }
        Command::ArmTimer { deadline_ns, token } => {
            r.opcode = OP_ARM_TIMER;
            r.value = deadline_ns;
            r.token = token;
        }
        Command::RearmTimer { timer, deadline_ns } => {
            r.opcode = OP_REARM_TIMER;
            r.handle = timer.to_raw();
            r.value = deadline_ns;
        }
        Command::CancelTimer { timer } => {
            r.opcode = OP_CANCEL_TIMER;
            r.handle = timer.to_raw();
        }
        Command::Listen { port, backlog } => {
            r.opcode = OP_LISTEN;
            r.port = port;
            r.len = backlog;
        }
        Command::Connect { to, token } => {
            r.opcode = OP_CONNECT;
            addr_parts(&mut r, to);
            r.token = token;
        }
        Command::Send { conn, data } => {
            r.opcode = OP_SEND;
            r.handle = conn.to_raw();
            chain_parts(&mut r, data);
        }
        Command::RecvDone { conn, bytes } => {
            r.opcode = OP_RECV_DONE;
            r.handle = conn.to_raw();
            r.len = bytes;
        }
        Command::Close { conn } => {
            r.opcode = OP_CLOSE;
            r.handle = conn.to_raw();
        }
        Command::Abort { conn } => {
            r.opcode = OP_ABORT;
            r.handle = conn.to_raw();
        }
        Command::SetOption { conn, option } => {
            r.handle = conn.to_raw();
            match option {
                ConnOption::NoDelay(on) => {
                    r.opcode = OP_SET_NODELAY;
                    r.value = u64::from(on);
                }
                ConnOption::KeepaliveNs(idle) => {
                    r.opcode = OP_SET_KEEPALIVE;
                    if let Some(ns) = idle {
                        r.flags |= FLAG_TOKEN;
                        r.value = ns;
                    }
                }
            }
        }
        Command::StorageRead {
            area,
            offset,
            len,
            token,
        } => {
            r.opcode = OP_STORAGE_READ;
            r.handle = area.to_raw();
            r.value = offset;
            r.len = len;
            r.token = token;
        }
        Command::StorageWrite {
            area,
            offset,
            data,
            token,
        } => {
            r.opcode = OP_STORAGE_WRITE;
            r.handle = area.to_raw();
            r.value = offset;
            r.token = token;
            chain_parts(&mut r, data);
        }
        Command::StorageFlush { area, token } => {
            r.opcode = OP_STORAGE_FLUSH;
            r.handle = area.to_raw();
            r.token = token;
        }
    }
    r
}

/// The buffers of a record, checked against the pool; `Ok(None)` when it carries none.
fn chain_of(record: &Record, pool: &PacketPool) -> Result<Option<BufChain>, RecordError> {
    if record.flags & FLAG_DATA == 0 {
        let empty = record.frames == 0
            && record.head_index == 0
            && record.head_start == 0
            && record.head_len == 0
            && record.tail == 0
            && record.bytes == 0;
        return if empty {
            Ok(None)
        } else {
            Err(RecordError::Data)
        };
    }
    let raw = RawChain {
        head: RawBuf {
            index: record.head_index,
            start: record.head_start,
            len: record.head_len,
        },
        tail: record.tail,
        frames: record.frames,
        len: record.bytes,
    };
    pool.chain_from_raw(raw).map(Some).ok_or(RecordError::Chain)
}

/// The scalar fields a record may use, as bits (the buffer fields are checked by
/// [`chain_of`], `flags` and `reserved` by [`check_flags`]).
const USES_PORT: u8 = 1;
const USES_STATUS: u8 = 2;
const USES_HANDLE: u8 = 4;
const USES_TOKEN: u8 = 8;
const USES_VALUE: u8 = 16;
const USES_ADDR: u8 = 32;
const USES_LEN: u8 = 64;

/// Which scalar fields the encoder writes for this opcode and these flags; every other one
/// is zero in an encoded record.
fn fields_used(record: &Record) -> u8 {
    let flag = |bit: u16, uses: u8| if record.flags & bit != 0 { uses } else { 0 };
    match record.opcode {
        OP_BIND_UDP => USES_PORT,
        OP_CLOSE_UDP | OP_CANCEL_TIMER | OP_CLOSE | OP_ABORT | OP_SEND => USES_HANDLE,
        OP_SEND_TO => USES_HANDLE | USES_ADDR | USES_PORT | flag(FLAG_TOKEN, USES_TOKEN),
        OP_ARM_TIMER => USES_VALUE | USES_TOKEN,
        OP_REARM_TIMER | OP_SET_NODELAY => USES_HANDLE | USES_VALUE,
        OP_LISTEN => USES_PORT | USES_LEN,
        OP_CONNECT => USES_ADDR | USES_PORT | USES_TOKEN,
        OP_RECV_DONE => USES_HANDLE | USES_LEN,
        OP_SET_KEEPALIVE => USES_HANDLE | flag(FLAG_TOKEN, USES_VALUE),
        OP_STORAGE_READ => USES_HANDLE | USES_VALUE | USES_LEN | USES_TOKEN,
        OP_STORAGE_WRITE => USES_HANDLE | USES_VALUE | USES_TOKEN,
        OP_STORAGE_FLUSH => USES_HANDLE | USES_TOKEN,
        OP_EV_DATAGRAM => USES_HANDLE | USES_ADDR | USES_PORT | USES_LEN,
        OP_EV_TIMER | OP_EV_CONNECTED => USES_HANDLE | USES_TOKEN,
        OP_EV_SEND_DONE => USES_TOKEN | flag(FLAG_ERROR, USES_STATUS),
        OP_EV_ACCEPTED => USES_HANDLE | USES_TOKEN | USES_ADDR | USES_PORT,
        OP_EV_CONNECT_FAILED => USES_TOKEN | USES_STATUS,
        OP_EV_RECV | OP_EV_PEER_CLOSED => USES_HANDLE,
        OP_EV_SENT => USES_HANDLE | USES_LEN,
        OP_EV_CLOSED => USES_HANDLE | USES_STATUS,
        OP_EV_STORAGE_DONE if record.flags & FLAG_ERROR == 0 => USES_HANDLE | USES_TOKEN | USES_LEN,
        OP_EV_STORAGE_DONE if record.status == STORAGE_DEVICE => {
            USES_HANDLE | USES_TOKEN | USES_STATUS | USES_VALUE
        }
        OP_EV_STORAGE_DONE => USES_HANDLE | USES_TOKEN | USES_STATUS,
        _ => 0,
    }
}

/// Refuses unknown or unexpected flags, a non-zero `reserved`, and a non-zero field that the
/// opcode does not use: decoding is the inverse of encoding, so that a record means one thing
/// only and re-encodes to itself.
fn check_flags(record: &Record, allowed: u16) -> Result<(), RecordError> {
    let r = record;
    if r.flags & !allowed != 0 || r.flags & !FLAGS_KNOWN != 0 || r.reserved != 0 {
        return Err(RecordError::Flags(r.flags));
    }
    let used = fields_used(r);
    let unused = |uses: u8, zero: bool| used & uses == 0 && !zero;
    let stray = unused(USES_PORT, r.port == 0)
        || unused(USES_STATUS, r.status == 0)
        || unused(USES_HANDLE, r.handle == 0)
        || unused(USES_TOKEN, r.token == 0)
        || unused(USES_VALUE, r.value == 0)
        || unused(USES_ADDR, r.addr == 0)
        || unused(USES_LEN, r.len == 0)
        // A device error's errno is an i32: the upper half of `value` is unused.
        || (r.opcode == OP_EV_STORAGE_DONE && used & USES_VALUE != 0 && r.value > u64::from(u32::MAX));
    if stray {
        return Err(RecordError::Unused(r.opcode));
    }
    Ok(())
}

fn require_data(record: &Record, pool: &PacketPool) -> Result<BufChain, RecordError> {
    chain_of(record, pool)?.ok_or(RecordError::Data)
}

fn no_data(record: &Record, pool: &PacketPool) -> Result<(), RecordError> {
    match chain_of(record, pool)? {
        None => Ok(()),
        // `chain_of` made a handle for the frames; this decode refuses them, and the frames
        // stay with whoever held them before (the handle was never anyone's).
        Some(chain) => {
            let _ = chain.into_raw();
            Err(RecordError::Data)
        }
    }
}

/// A record as a command, validated (see the module documentation).
pub fn decode_command(record: &Record, pool: &PacketPool) -> Result<Command, RecordError> {
    let r = record;
    Ok(match r.opcode {
        OP_BIND_UDP | OP_CLOSE_UDP | OP_ARM_TIMER | OP_REARM_TIMER | OP_CANCEL_TIMER
        | OP_LISTEN | OP_CONNECT | OP_RECV_DONE | OP_CLOSE | OP_ABORT | OP_SET_NODELAY
        | OP_STORAGE_READ | OP_STORAGE_FLUSH => {
            check_flags(r, 0)?;
            no_data(r, pool)?;
            match r.opcode {
                OP_BIND_UDP => Command::BindUdp { port: r.port },
                OP_CLOSE_UDP => Command::CloseUdp {
                    socket: Handle::from_raw(r.handle),
                },
                OP_ARM_TIMER => Command::ArmTimer {
                    deadline_ns: r.value,
                    token: r.token,
                },
                OP_REARM_TIMER => Command::RearmTimer {
                    timer: Handle::from_raw(r.handle),
                    deadline_ns: r.value,
                },
                OP_CANCEL_TIMER => Command::CancelTimer {
                    timer: Handle::from_raw(r.handle),
                },
                OP_LISTEN => Command::Listen {
                    port: r.port,
                    backlog: r.len,
                },
                OP_CONNECT => Command::Connect {
                    to: addr_of(r),
                    token: r.token,
                },
                OP_RECV_DONE => Command::RecvDone {
                    conn: Handle::from_raw(r.handle),
                    bytes: r.len,
                },
                OP_CLOSE => Command::Close {
                    conn: Handle::from_raw(r.handle),
                },
                OP_ABORT => Command::Abort {
                    conn: Handle::from_raw(r.handle),
                },
                OP_SET_NODELAY => Command::SetOption {
                    conn: Handle::from_raw(r.handle),
                    option: ConnOption::NoDelay(match r.value {
                        0 => false,
                        1 => true,
                        _ => return Err(RecordError::Status(0)),
                    }),
                },
                OP_STORAGE_READ => Command::StorageRead {
                    area: Handle::from_raw(r.handle),
                    offset: r.value,
                    len: r.len,
                    token: r.token,
                },
                _ => Command::StorageFlush {
                    area: Handle::from_raw(r.handle),
                    token: r.token,
                },
            }
        }
        OP_SET_KEEPALIVE => {
            check_flags(r, FLAG_TOKEN)?;
            no_data(r, pool)?;
            Command::SetOption {
                conn: Handle::from_raw(r.handle),
                option: ConnOption::KeepaliveNs((r.flags & FLAG_TOKEN != 0).then_some(r.value)),
            }
        }
        OP_SEND_TO => {
            check_flags(r, FLAG_DATA | FLAG_TOKEN)?;
            let data = require_data(r, pool)?;
            Command::SendTo {
                socket: Handle::from_raw(r.handle),
                to: addr_of(r),
                data,
                notify: (r.flags & FLAG_TOKEN != 0).then_some(r.token),
            }
        }
        OP_SEND => {
            check_flags(r, FLAG_DATA)?;
            Command::Send {
                conn: Handle::from_raw(r.handle),
                data: require_data(r, pool)?,
            }
        }
        OP_STORAGE_WRITE => {
            check_flags(r, FLAG_DATA)?;
            Command::StorageWrite {
                area: Handle::from_raw(r.handle),
                offset: r.value,
                data: require_data(r, pool)?,
                token: r.token,
            }
        }
        other => return Err(RecordError::Opcode(other)),
    })
}

/// An event as a record; its buffers leave as raw parts.
pub fn encode_event(event: Event) -> Record {
    let mut r = Record::default();
    let data = |r: &mut Record, data: Option<BufChain>| {
        if let Some(chain) = data {
            chain_parts(r, chain);
        }
    };
    match event {
        Event::Datagram {
            socket,
            data: chain,
            from,
            local_port,
        } => {
            r.opcode = OP_EV_DATAGRAM;
            r.handle = socket.to_raw();
            addr_parts(&mut r, from);
            r.len = u32::from(local_port);
            chain_parts(&mut r, chain);
        }
        Event::Timer { timer, token } => {
            r.opcode = OP_EV_TIMER;
            r.handle = timer.to_raw();
            r.token = token;
        }
        Event::SendDone {
            token,
            result,
            data: chain,
        } => {
            r.opcode = OP_EV_SEND_DONE;
            r.token = token;
            if let Err(error) = result {
                r.flags |= FLAG_ERROR;
                r.status = send_error_code(error);
            }
            data(&mut r, chain);
        }
        Event::Accepted {
            listener,
            conn,
            peer,
        } => {
            r.opcode = OP_EV_ACCEPTED;
            r.handle = conn.to_raw();
            r.token = listener.to_raw();
            addr_parts(&mut r, peer);
        }
        Event::Connected { conn, token } => {
            r.opcode = OP_EV_CONNECTED;
            r.handle = conn.to_raw();
            r.token = token;
        }
        Event::ConnectFailed { token, reason } => {
            r.opcode = OP_EV_CONNECT_FAILED;
            r.token = token;
            r.status = close_reason_code(reason);
        }
        Event::Recv { conn, data: chain } => {
            r.opcode = OP_EV_RECV;
            r.handle = conn.to_raw();
            chain_parts(&mut r, chain);
        }
        Event::Sent {
            conn,
            bytes,
            data: chain,
        } => {
            r.opcode = OP_EV_SENT;
            r.handle = conn.to_raw();
            r.len = bytes;
            data(&mut r, chain);
        }
        Event::PeerClosed { conn } => {
            r.opcode = OP_EV_PEER_CLOSED;
            r.handle = conn.to_raw();
        }
        Event::Closed { conn, reason } => {
            r.opcode = OP_EV_CLOSED;
            r.handle = conn.to_raw();
            r.status = close_reason_code(reason);
        }
        Event::StorageDone {
            area,
            token,
            result,
            data: chain,
        } => {
            r.opcode = OP_EV_STORAGE_DONE;
            r.handle = area.to_raw();
            r.token = token;
            match result {
                Ok(bytes) => r.len = bytes,
                Err(StorageError::OutOfRange) => {
                    r.flags |= FLAG_ERROR;
                    r.status = STORAGE_OUT_OF_RANGE;
                }
                Err(StorageError::Device(errno)) => {
                    r.flags |= FLAG_ERROR;
                    r.status = STORAGE_DEVICE;
                    // Bit-for-bit: the errno comes back as the same i32.
                    r.value = u64::from(errno as u32);
                }
            }
            data(&mut r, chain);
        }
    }
    r
}

/// A record as an event, validated.
pub fn decode_event(record: &Record, pool: &PacketPool) -> Result<Event, RecordError> {
    let r = record;
    let error = r.flags & FLAG_ERROR != 0;
    Ok(match r.opcode {
        OP_EV_DATAGRAM => {
            check_flags(r, FLAG_DATA)?;
            let local_port = u16::try_from(r.len).map_err(|_| RecordError::Status(0))?;
            Event::Datagram {
                socket: Handle::from_raw(r.handle),
                data: require_data(r, pool)?,
                from: addr_of(r),
                local_port,
            }
        }
        OP_EV_TIMER => {
            check_flags(r, 0)?;
            no_data(r, pool)?;
            Event::Timer {
                timer: Handle::from_raw(r.handle),
                token: r.token,
            }
        }
        OP_EV_SEND_DONE => {
            check_flags(r, FLAG_DATA | FLAG_ERROR)?;
            let result = if error {
                Err(send_error_of(r.status)?)
            } else {
                Ok(())
            };
            Event::SendDone {
                token: r.token,
                result,
                data: chain_of(r, pool)?,
            }
        }
        OP_EV_ACCEPTED => {
            check_flags(r, 0)?;
            no_data(r, pool)?;
            Event::Accepted {
                listener: Handle::from_raw(r.token),
                conn: Handle::from_raw(r.handle),
                peer: addr_of(r),
            }
        }
        OP_EV_CONNECTED => {
            check_flags(r, 0)?;
            no_data(r, pool)?;
            Event::Connected {
                conn: Handle::from_raw(r.handle),
                token: r.token,
            }
        }
        OP_EV_CONNECT_FAILED => {
            check_flags(r, 0)?;
            no_data(r, pool)?;
            Event::ConnectFailed {
                token: r.token,
                reason: close_reason_of(r.status)?,
            }
        }
        OP_EV_RECV => {
            check_flags(r, FLAG_DATA)?;
            Event::Recv {
                conn: Handle::from_raw(r.handle),
                data: require_data(r, pool)?,
            }
        }
        OP_EV_SENT => {
            check_flags(r, FLAG_DATA)?;
            Event::Sent {
                conn: Handle::from_raw(r.handle),
                bytes: r.len,
                data: chain_of(r, pool)?,
            }
        }
        OP_EV_PEER_CLOSED => {
            check_flags(r, 0)?;
            no_data(r, pool)?;
            Event::PeerClosed {
                conn: Handle::from_raw(r.handle),
            }
        }
        OP_EV_CLOSED => {
            check_flags(r, 0)?;
            no_data(r, pool)?;
            Event::Closed {
                conn: Handle::from_raw(r.handle),
                reason: close_reason_of(r.status)?,
            }
        }
        OP_EV_STORAGE_DONE => {
            check_flags(r, FLAG_DATA | FLAG_ERROR)?;
            let result = if !error {
                Ok(r.len)
            } else {
                match r.status {
                    STORAGE_OUT_OF_RANGE => Err(StorageError::OutOfRange),
                    STORAGE_DEVICE => Err(StorageError::Device(r.value as u32 as i32)),
                    other => return Err(RecordError::Status(other)),
                }
            };
            Event::StorageDone {
                area: Handle::from_raw(r.handle),
                token: r.token,
                result,
                data: chain_of(r, pool)?,
            }
        }
        other => return Err(RecordError::Opcode(other)),
    })
}

/// Fuzz body: decoding any bytes as records never panics and never makes a handle for a
/// frame the pool does not hold; what decodes re-encodes to the same record. Used by the
/// `contract_records` fuzz target and by a property test.
pub fn fuzz_decode(data: &[u8]) {
    let mut pool = PacketPool::new(crate::pool::PoolConfig {
        frame_size: 256,
        frame_count: 8,
        headroom: 64,
    })
    .expect("a valid fixed configuration");
    // Hold a few frames, one of them a two-frame chain, so that valid buffers exist.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(pool.alloc().expect("a fresh pool of 8 has 3 frames"));
    }
    let second = pool.alloc().expect("a fresh pool of 8 has a fourth frame");
    let mut chain = BufChain::from(pool.alloc().expect("and a fifth"));
    pool.chain_push(&mut chain, second)
        .expect("two empty windows fit a chain");
    for chunk in data.chunks_exact(RECORD_LEN) {
        let record = record_from_bytes(chunk);
        for decoded in [
            decode_command(&record, &pool).map(encode_command),
            decode_event(&record, &pool).map(encode_event),
        ]
        .into_iter()
        .flatten()
        {
            assert_eq!(decoded, record, "a decoded record re-encodes to itself");
        }
    }
    let _ = chain.into_raw();
    for buf in held {
        pool.free(buf);
    }
}

/// Reads a record from 64 bytes in native byte order (as a ring slot holds it).
///
/// # Panics
/// If `bytes` is shorter than [`RECORD_LEN`].
pub fn record_from_bytes(bytes: &[u8]) -> Record {
    let u16_at = |i: usize| u16::from_ne_bytes([bytes[i], bytes[i + 1]]);
    let u32_at = |i: usize| u32::from_ne_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_ne_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    assert!(bytes.len() >= RECORD_LEN, "a record is {RECORD_LEN} bytes");
    Record {
        opcode: u16_at(0),
        flags: u16_at(2),
        port: u16_at(4),
        status: u16_at(6),
        handle: u64_at(8),
        token: u64_at(16),
        value: u64_at(24),
        addr: u32_at(32),
        len: u32_at(36),
        head_index: u32_at(40),
        head_start: u16_at(44),
        head_len: u16_at(46),
        tail: u32_at(48),
        frames: u32_at(52),
        bytes: u32_at(56),
        reserved: u32_at(60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::PoolConfig;
    use proptest::prelude::*;

    fn pool() -> PacketPool {
        PacketPool::new(PoolConfig {
            frame_size: 256,
            frame_count: 8,
            headroom: 64,
        })
        .unwrap()
    }

    fn chain(pool: &mut PacketPool, frames: usize) -> BufChain {
        let mut first = pool.alloc().unwrap();
        pool.set_len(&mut first, 5).unwrap();
        let mut chain = BufChain::from(first);
        for _ in 1..frames {
            let mut buf = pool.alloc().unwrap();
            pool.set_len(&mut buf, 7).unwrap();
            pool.chain_push(&mut chain, buf).unwrap();
        }
        chain
    }

    #[test]
    fn commands_and_events_round_trip() {
        let mut pool = pool();
        let to = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 2), 7777);
        let socket = Handle::from_parts(3, 9);
        let data = chain(&mut pool, 3);
        let raw_head = data.head().index();
        let record = encode_command(Command::SendTo {
            socket,
            to,
            data,
            notify: Some(77),
        });
        assert_eq!((record.frames, record.bytes), (3, 19));
        let Command::SendTo {
            socket: s,
            to: t,
            data,
            notify,
        } = decode_command(&record, &pool).unwrap()
        else {
            panic!("decoded another command");
        };
        assert_eq!((s, t, notify), (socket, to, Some(77)));
        assert_eq!(data.head().index(), raw_head);
        assert_eq!((data.frames(), data.len()), (3, 19));
        let event = Event::StorageDone {
            area: Handle::from_parts(1, 1),
            token: 5,
            result: Err(StorageError::Device(-5)),
            data: Some(data),
        };
        let record = encode_event(event);
        let Event::StorageDone { result, data, .. } = decode_event(&record, &pool).unwrap() else {
            panic!("decoded another event");
        };
        assert_eq!(result, Err(StorageError::Device(-5)));
        pool.free_chain(data.unwrap());
        assert_eq!(pool.available(), 8);
    }

    #[test]
    fn hostile_records_are_refused() {
        let mut pool = pool();
        let data = chain(&mut pool, 2);
        let good = encode_command(Command::Send {
            conn: Handle::from_parts(0, 1),
            data,
        });
        let bad = |edit: fn(&mut Record)| {
            let mut r = good;
            edit(&mut r);
            r
        };
        let cases = [
            (bad(|r| r.opcode = 999), RecordError::Opcode(999)),
            (bad(|r| r.flags |= 0x80), RecordError::Flags(0x81)),
            (bad(|r| r.reserved = 1), RecordError::Flags(1)),
            (bad(|r| r.frames = 3), RecordError::Chain),
            (bad(|r| r.bytes = 100), RecordError::Chain),
            (bad(|r| r.tail = 7), RecordError::Chain),
            (bad(|r| r.head_index = 6), RecordError::Chain),
            (bad(|r| r.head_len = 300), RecordError::Chain),
            (bad(|r| r.flags = 0), RecordError::Data),
        ];
        for (record, error) in cases {
            assert_eq!(
                decode_command(&record, &pool).unwrap_err(),
                error,
                "{record:?}"
            );
        }
        let Command::Send { data, .. } = decode_command(&good, &pool).unwrap() else {
            panic!("decoded another command");
        };
        pool.free_chain(data);
    }

    /// Regression: the first `contract_records` crash. A keepalive command without
    /// `FLAG_TOKEN` and with junk in `port` and `status` decoded (the decoder ignored fields
    /// its opcode does not use) and re-encoded to another record, so one value had many
    /// records and junk from a broken peer passed unseen.
    #[test]
    fn the_first_fuzz_crash_is_refused() {
        let mut bytes = [0u8; 78];
        bytes[0] = 14;
        bytes[4..12].copy_from_slice(&[51, 51, 51, 51, 51, 51, 51, 47]);
        bytes[12] = 51;
        bytes[77] = 212;
        let record = record_from_bytes(&bytes);
        assert_eq!((record.port, record.status), (13107, 13107));
        let pool = pool();
        assert_eq!(
            decode_command(&record, &pool).unwrap_err(),
            RecordError::Unused(OP_SET_KEEPALIVE)
        );
        fuzz_decode(&bytes);
    }

    #[test]
    fn stray_fields_are_refused_and_used_ones_kept() {
        let pool = pool();
        let conn = Handle::from_parts(2, 4);
        // Each good record, with one field it does not use made non-zero.
        type Edit = fn(&mut Record);
        let cases: [(Record, Edit); 8] = [
            (encode_command(Command::BindUdp { port: 9 }), |r| {
                r.handle = 1
            }),
            (encode_command(Command::Close { conn }), |r| r.port = 1),
            (
                encode_command(Command::SetOption {
                    conn,
                    option: ConnOption::KeepaliveNs(None),
                }),
                |r| r.value = 5,
            ),
            (
                encode_command(Command::Connect {
                    to: SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 2), 7),
                    token: 3,
                }),
                |r| r.len = 1,
            ),
            (
                encode_command(Command::CancelTimer {
                    timer: Handle::from_parts(1, 1),
                }),
                |r| r.status = 1,
            ),
            (
                encode_event(Event::SendDone {
                    token: 1,
                    result: Ok(()),
                    data: None,
                }),
                |r| r.status = 3,
            ),
            (
                encode_event(Event::StorageDone {
                    area: Handle::from_parts(3, 1),
                    token: 1,
                    result: Err(StorageError::OutOfRange),
                    data: None,
                }),
                |r| r.len = 8,
            ),
            (
                encode_event(Event::StorageDone {
                    area: Handle::from_parts(3, 1),
                    token: 1,
                    result: Err(StorageError::Device(-5)),
                    data: None,
                }),
                |r| r.value |= 1 << 32,
            ),
        ];
        for (good, edit) in cases {
            let decode = |r: &Record| {
                if r.opcode < OP_EV_DATAGRAM {
                    decode_command(r, &pool).map(encode_command)
                } else {
                    decode_event(r, &pool).map(encode_event)
                }
            };
            assert_eq!(decode(&good), Ok(good), "the good record round-trips");
            let mut bad = good;
            edit(&mut bad);
            assert_eq!(
                decode(&bad),
                Err(RecordError::Unused(good.opcode)),
                "{bad:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..640)) {
            fuzz_decode(&data);
        }

        #[test]
        fn near_valid_records_never_panic(
            opcode in prop_oneof![1u16..18, 0x101u16..0x10c],
            flags in prop_oneof![Just(0u16), 0u16..8],
            // Zero often, so that records without buffers (most opcodes) get past the
            // buffer check to the rest of the decoder.
            head_index in prop_oneof![Just(0u32), 0u32..10],
            tail in prop_oneof![Just(0u32), 0u32..10],
            frames in prop_oneof![Just(0u32), 0u32..4],
            bytes in prop_oneof![Just(0u32), 0u32..20],
            // Each scalar field zero or not, so that stray fields are reached too.
            scalars in proptest::collection::vec(prop_oneof![Just(0u64), 1u64..3, Just(u64::MAX)], 7),
        ) {
            let record = Record {
                opcode,
                flags,
                port: scalars[0] as u16,
                status: scalars[1] as u16,
                handle: scalars[2],
                token: scalars[3],
                value: scalars[4],
                addr: scalars[5] as u32,
                len: scalars[6] as u32,
                head_index,
                tail,
                frames,
                bytes,
                ..Record::default()
            };
            let mut raw = [0u8; RECORD_LEN];
            let fields: [&[u8]; 16] = [
                &record.opcode.to_ne_bytes(), &record.flags.to_ne_bytes(),
                &record.port.to_ne_bytes(), &record.status.to_ne_bytes(),
                &record.handle.to_ne_bytes(), &record.token.to_ne_bytes(),
                &record.value.to_ne_bytes(), &record.addr.to_ne_bytes(),
                &record.len.to_ne_bytes(), &record.head_index.to_ne_bytes(),
                &record.head_start.to_ne_bytes(), &record.head_len.to_ne_bytes(),
                &record.tail.to_ne_bytes(), &record.frames.to_ne_bytes(),
                &record.bytes.to_ne_bytes(), &record.reserved.to_ne_bytes(),
            ];
            let mut at = 0;
            for f in fields {
                raw[at..at + f.len()].copy_from_slice(f);
                at += f.len();
            }
            prop_assert_eq!(record_from_bytes(&raw), record);
            fuzz_decode(&raw);
        }
    }
}
