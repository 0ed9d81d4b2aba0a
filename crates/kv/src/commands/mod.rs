//! The commands, one module per family, and the table that names them.

mod connection;
mod keys;
mod strings;

use crate::command::{Spec, ADMIN, CONNECTION, DENYOOM, FAST, NO_AUTH, NO_MULTI, READONLY, WRITE};
use crate::value::Value;

pub use connection::{parse_memory, REDIS_VERSION};

/// How an expiry argument is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExpireArg {
    /// Seconds from now (EX, EXPIRE, SETEX).
    Seconds,
    /// Milliseconds from now (PX, PEXPIRE, PSETEX).
    Millis,
    /// A Unix time in seconds (EXAT, EXPIREAT).
    UnixSeconds,
    /// A Unix time in milliseconds (PXAT, PEXPIREAT).
    UnixMillis,
}

/// The absolute expiry (Unix ms) for SET-style options: `None` where Redis says "invalid
/// expire time" (not positive, or overflowing).
pub(crate) fn expire_at(kind: ExpireArg, n: i64, now_ms: u64) -> Option<u64> {
    if n <= 0 {
        return None;
    }
    let n = n as u64;
    let ms = match kind {
        ExpireArg::Seconds | ExpireArg::UnixSeconds => n.checked_mul(1000)?,
        ExpireArg::Millis | ExpireArg::UnixMillis => n,
    };
    let at = match kind {
        ExpireArg::Seconds | ExpireArg::Millis => ms.checked_add(now_ms)?,
        ExpireArg::UnixSeconds | ExpireArg::UnixMillis => ms,
    };
    // Redis keeps expiries in signed 64-bit milliseconds.
    (at <= i64::MAX as u64).then_some(at)
}

/// The bytes of a string value (callers checked the type).
pub(crate) fn string_of(value: &Value) -> &[u8] {
    match value {
        Value::Str(s) => s,
        _ => &[],
    }
}

const fn spec(
    name: &'static str,
    arity: i32,
    flags: u32,
    keys: (i32, i32, i32),
    handler: crate::command::Handler,
) -> Spec {
    Spec {
        name,
        arity,
        flags,
        first_key: keys.0,
        last_key: keys.1,
        step: keys.2,
        handler,
    }
}

const NONE: (i32, i32, i32) = (0, 0, 0);
const ONE: (i32, i32, i32) = (1, 1, 1);
const ALL: (i32, i32, i32) = (1, -1, 1);
const PAIR: (i32, i32, i32) = (1, 2, 1);

/// Every command, sorted by name (a test checks the order, which the binary search needs).
pub(crate) static TABLE: &[Spec] = &[
    spec("append", 3, WRITE | DENYOOM | FAST, ONE, strings::append),
    spec(
        "auth",
        -2,
        NO_AUTH | CONNECTION | FAST,
        NONE,
        connection::auth,
    ),
    spec("client", -2, CONNECTION, NONE, connection::client),
    spec("command", -1, CONNECTION, NONE, connection::command),
    spec("config", -2, ADMIN, NONE, connection::config),
    spec("copy", -3, WRITE | DENYOOM, PAIR, keys::copy),
    spec("dbsize", 1, READONLY | FAST, NONE, keys::dbsize),
    spec("decr", 2, WRITE | DENYOOM | FAST, ONE, strings::decr),
    spec("decrby", 3, WRITE | DENYOOM | FAST, ONE, strings::decrby),
    spec("del", -2, WRITE, ALL, keys::del),
    spec("discard", 1, NO_MULTI | FAST, NONE, connection::discard),
    spec("echo", 2, FAST | CONNECTION, NONE, connection::echo),
    spec("exec", 1, NO_MULTI, NONE, connection::exec),
    spec("exists", -2, READONLY | FAST, ALL, keys::exists),
    spec("expire", -3, WRITE | FAST, ONE, keys::expire),
    spec("expireat", -3, WRITE | FAST, ONE, keys::expireat),
    spec("expiretime", 2, READONLY | FAST, ONE, keys::expiretime),
    spec("flushall", -1, WRITE, NONE, keys::flushall),
    spec("flushdb", -1, WRITE, NONE, keys::flushdb),
    spec("get", 2, READONLY | FAST, ONE, strings::get),
    spec("getdel", 2, WRITE | FAST, ONE, strings::getdel),
    spec("getex", -2, WRITE | FAST, ONE, strings::getex),
    spec("getrange", 4, READONLY, ONE, strings::getrange),
    spec("getset", 3, WRITE | DENYOOM | FAST, ONE, strings::getset),
    spec(
        "hello",
        -1,
        NO_AUTH | CONNECTION | FAST,
        NONE,
        connection::hello,
    ),
    spec("incr", 2, WRITE | DENYOOM | FAST, ONE, strings::incr),
    spec("incrby", 3, WRITE | DENYOOM | FAST, ONE, strings::incrby),
    spec(
        "incrbyfloat",
        3,
        WRITE | DENYOOM | FAST,
        ONE,
        strings::incrbyfloat,
    ),
    spec("info", -1, 0, NONE, connection::info),
    spec("keys", 2, READONLY, NONE, keys::keys),
    spec("lastsave", 1, FAST, NONE, connection::lastsave),
    spec("mget", -2, READONLY | FAST, ALL, strings::mget),
    spec("move", 3, WRITE | FAST, ONE, keys::move_),
    spec("mset", -3, WRITE | DENYOOM, (1, -1, 2), strings::mset),
    spec("msetnx", -3, WRITE | DENYOOM, (1, -1, 2), strings::msetnx),
    spec("multi", 1, NO_MULTI | FAST, NONE, connection::multi),
    spec("object", -2, READONLY, (2, 2, 1), keys::object),
    spec("persist", 2, WRITE | FAST, ONE, keys::persist),
    spec("pexpire", -3, WRITE | FAST, ONE, keys::pexpire),
    spec("pexpireat", -3, WRITE | FAST, ONE, keys::pexpireat),
    spec("pexpiretime", 2, READONLY | FAST, ONE, keys::pexpiretime),
    spec("ping", -1, FAST | CONNECTION, NONE, connection::ping),
    spec("psetex", 4, WRITE | DENYOOM, ONE, strings::psetex),
    spec("pttl", 2, READONLY | FAST, ONE, keys::pttl),
    spec(
        "quit",
        -1,
        NO_AUTH | FAST | CONNECTION,
        NONE,
        connection::quit,
    ),
    spec("randomkey", 1, READONLY, NONE, keys::randomkey),
    spec("rename", 3, WRITE, PAIR, keys::rename),
    spec("renamenx", 3, WRITE | FAST, PAIR, keys::renamenx),
    spec(
        "reset",
        1,
        NO_AUTH | FAST | CONNECTION,
        NONE,
        connection::reset,
    ),
    spec("scan", -2, READONLY, NONE, keys::scan),
    spec("select", 2, FAST | CONNECTION, NONE, connection::select),
    spec("set", -3, WRITE | DENYOOM, ONE, strings::set),
    spec("setex", 4, WRITE | DENYOOM, ONE, strings::setex),
    spec("setnx", 3, WRITE | DENYOOM | FAST, ONE, strings::setnx),
    spec("setrange", 4, WRITE | DENYOOM, ONE, strings::setrange),
    spec("strlen", 2, READONLY | FAST, ONE, strings::strlen),
    spec("swapdb", 3, WRITE | FAST, NONE, keys::swapdb),
    spec("time", 1, FAST, NONE, connection::time),
    spec("touch", -2, READONLY | FAST, ALL, keys::touch),
    spec("ttl", 2, READONLY | FAST, ONE, keys::ttl),
    spec("type", 2, READONLY | FAST, ONE, keys::type_),
    spec("unlink", -2, WRITE | FAST, ALL, keys::del),
    spec("unwatch", 1, FAST, NONE, connection::unwatch),
    spec("watch", -2, NO_MULTI | FAST, ALL, connection::watch),
];
