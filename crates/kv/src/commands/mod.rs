//! The commands, one module per family, and the table that names them.

mod connection;
mod keys;
mod lists;
mod strings;
mod zsets;

use crate::command::Ctx;
use crate::command::{Spec, ADMIN, CONNECTION, DENYOOM, FAST, NO_AUTH, NO_MULTI, READONLY, WRITE};
use crate::keyspace::Slot;
use crate::value::{Kind, Value};

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

/// Looks `key` up as a `kind` value: `Err(())` after replying `WRONGTYPE`.
pub(crate) fn typed_slot(ctx: &mut Ctx<'_>, key: &[u8], kind: Kind) -> Result<Option<Slot>, ()> {
    let (db, now) = (ctx.db(), ctx.now_ms);
    match ctx.ks().get_typed(db, key, kind, now) {
        Ok(slot) => Ok(slot),
        Err(_) => {
            ctx.wrong_type();
            Err(())
        }
    }
}

/// Redis' inclusive index range over `len` elements (`LRANGE`, `LTRIM`, `ZRANGE`,
/// `ZREMRANGEBYRANK`): negative indexes count from the end, the start is clamped to 0 and the
/// end to the last element; `None` when nothing is in range.
pub(crate) fn index_range(start: i64, end: i64, len: usize) -> Option<(usize, usize)> {
    let len = i64::try_from(len).unwrap_or(i64::MAX);
    // Adding a length to a negative index cannot overflow.
    let start = if start < 0 { len + start } else { start }.max(0);
    let end = if end < 0 { len + end } else { end };
    if start > end || start >= len {
        return None;
    }
    Some((start as usize, end.min(len - 1) as usize))
}

/// Parses an integer in `min..=max` as Redis' `getRangeLongFromObjectOrReply`: with `msg`,
/// that message for anything wrong; without, Redis' two default messages.
pub(crate) fn range_arg(
    ctx: &mut Ctx<'_>,
    arg: &[u8],
    min: i64,
    max: i64,
    msg: Option<&str>,
) -> Option<i64> {
    let n = crate::number::parse_i64(arg);
    match (n, msg) {
        (Some(n), _) if (min..=max).contains(&n) => return Some(n),
        (_, Some(msg)) => ctx.out.error(&format!("ERR {msg}")),
        (None, None) => ctx.out.error("ERR value is not an integer or out of range"),
        (Some(_), None) => ctx.out.error(&format!(
            "ERR value is out of range, value must between {min} and {max}"
        )),
    }
    None
}

/// Parses a count that must not be negative (`getPositiveLongFromObjectOrReply`).
pub(crate) fn positive_arg(ctx: &mut Ctx<'_>, arg: &[u8], msg: Option<&str>) -> Option<i64> {
    let msg = msg.unwrap_or("value is out of range, must be positive");
    range_arg(ctx, arg, 0, i64::MAX, Some(msg))
}

/// Replies the arity error some commands give from their own code (Redis'
/// `addReplyErrorArity`), with the command's name as the table spells it.
pub(crate) fn arity_error(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let name = String::from_utf8_lossy(args[0]).to_ascii_lowercase();
    ctx.out.error(&format!(
        "ERR wrong number of arguments for '{name}' command"
    ));
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
    spec("lindex", 3, READONLY, ONE, lists::lindex),
    spec("linsert", 5, WRITE | DENYOOM, ONE, lists::linsert),
    spec("llen", 2, READONLY | FAST, ONE, lists::llen),
    spec("lmove", 5, WRITE | DENYOOM, PAIR, lists::lmove),
    spec("lmpop", -4, WRITE, NONE, lists::lmpop),
    spec("lpop", -2, WRITE | FAST, ONE, lists::lpop),
    spec("lpos", -3, READONLY, ONE, lists::lpos),
    spec("lpush", -3, WRITE | DENYOOM | FAST, ONE, lists::lpush),
    spec("lpushx", -3, WRITE | DENYOOM | FAST, ONE, lists::lpushx),
    spec("lrange", 4, READONLY, ONE, lists::lrange),
    spec("lrem", 4, WRITE, ONE, lists::lrem),
    spec("lset", 4, WRITE | DENYOOM, ONE, lists::lset),
    spec("ltrim", 4, WRITE, ONE, lists::ltrim),
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
    spec("rpop", -2, WRITE | FAST, ONE, lists::rpop),
    spec("rpoplpush", 3, WRITE | DENYOOM, PAIR, lists::rpoplpush),
    spec("rpush", -3, WRITE | DENYOOM | FAST, ONE, lists::rpush),
    spec("rpushx", -3, WRITE | DENYOOM | FAST, ONE, lists::rpushx),
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
    spec("zadd", -4, WRITE | DENYOOM | FAST, ONE, zsets::zadd),
    spec("zcard", 2, READONLY | FAST, ONE, zsets::zcard),
    spec("zcount", 4, READONLY | FAST, ONE, zsets::zcount),
    spec("zincrby", 4, WRITE | DENYOOM | FAST, ONE, zsets::zincrby),
    spec("zlexcount", 4, READONLY | FAST, ONE, zsets::zlexcount),
    spec("zmpop", -4, WRITE, NONE, zsets::zmpop),
    spec("zmscore", -3, READONLY | FAST, ONE, zsets::zmscore),
    spec("zpopmax", -2, WRITE | FAST, ONE, zsets::zpopmax),
    spec("zpopmin", -2, WRITE | FAST, ONE, zsets::zpopmin),
    spec("zrandmember", -2, READONLY, ONE, zsets::zrandmember),
    spec("zrange", -4, READONLY, ONE, zsets::zrange),
    spec("zrangebylex", -4, READONLY, ONE, zsets::zrangebylex),
    spec("zrangebyscore", -4, READONLY, ONE, zsets::zrangebyscore),
    spec("zrangestore", -5, WRITE | DENYOOM, PAIR, zsets::zrangestore),
    spec("zrank", -3, READONLY | FAST, ONE, zsets::zrank),
    spec("zrem", -3, WRITE | FAST, ONE, zsets::zrem),
    spec("zremrangebylex", 4, WRITE, ONE, zsets::zremrangebylex),
    spec("zremrangebyrank", 4, WRITE, ONE, zsets::zremrangebyrank),
    spec("zremrangebyscore", 4, WRITE, ONE, zsets::zremrangebyscore),
    spec("zrevrange", -4, READONLY, ONE, zsets::zrevrange),
    spec("zrevrangebylex", -4, READONLY, ONE, zsets::zrevrangebylex),
    spec(
        "zrevrangebyscore",
        -4,
        READONLY,
        ONE,
        zsets::zrevrangebyscore,
    ),
    spec("zrevrank", -3, READONLY | FAST, ONE, zsets::zrevrank),
    spec("zscan", -3, READONLY, ONE, zsets::zscan),
    spec("zscore", 3, READONLY | FAST, ONE, zsets::zscore),
];
