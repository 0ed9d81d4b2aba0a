//! The commands, one module per family, and the table that names them.

mod connection;
mod hashes;
mod keys;
mod lists;
mod sets;
mod strings;
mod zsets;

use crate::command::{
    Ctx, Spec, ADMIN, CONNECTION, DENYOOM, FAST, NO_AUTH, NO_MULTI, READONLY, WRITE,
};
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

/// Looks `key` up as a `kind` for a command that reads it (a hit or a miss is counted):
/// `Err(())` after replying `WRONGTYPE`.
pub(crate) fn read_slot(ctx: &mut Ctx<'_>, key: &[u8], kind: Kind) -> Result<Option<Slot>, ()> {
    let (db, now) = (ctx.db(), ctx.now_ms);
    ctx.ks()
        .get_typed(db, key, kind, now)
        .map_err(|_| ctx.wrong_type())
}

/// Looks `key` up as a `kind` for a command that writes it (not counted, as Redis'
/// `lookupKeyWrite`): `Err(())` after replying `WRONGTYPE`.
pub(crate) fn write_slot(ctx: &mut Ctx<'_>, key: &[u8], kind: Kind) -> Result<Option<Slot>, ()> {
    let (db, now) = (ctx.db(), ctx.now_ms);
    ctx.ks()
        .get_typed_for_write(db, key, kind, now)
        .map_err(|_| ctx.wrong_type())
}

/// Most elements a random pick with repeats (`SRANDMEMBER key -n`, `HRANDFIELD key -n`) may
/// reply with. Redis has no bound but the client's output buffer limit, which it checks as
/// the reply grows; here a reply is announced with its length and then written whole, so a
/// count such as `-9223372036854775807` must be refused up front (with Redis' range error).
pub(crate) const RANDOM_REPEATS_MAX: u64 = 1 << 20;

/// The scan cursor in `arg` as Redis' `string2ull` reads it (a non-negative integer, or what
/// `strtoull` takes: leading blanks, a sign, and a `-` that wraps): `None` where Redis says
/// "invalid cursor".
pub(crate) fn parse_cursor(arg: &[u8]) -> Option<u64> {
    if let Some(n) = crate::number::parse_i64(arg) {
        return u64::try_from(n).ok();
    }
    let text = arg.trim_ascii_start();
    let (negative, digits) = match text.first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let magnitude = digits.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })?;
    Some(if negative {
        magnitude.wrapping_neg()
    } else {
        magnitude
    })
}

/// The options of `HSCAN`/`SSCAN` after the cursor.
pub(crate) struct ScanOptions<'a> {
    /// `MATCH pattern`, unless the pattern is `*`.
    pub pattern: Option<&'a [u8]>,
    /// `COUNT n` (10 by default).
    pub count: usize,
    /// `NOVALUES` (HSCAN only).
    pub no_values: bool,
}

/// Parses `args[3..]` as Redis' `scanGenericCommand` does for a key's collection of `kind`:
/// `None` after replying the error.
pub(crate) fn scan_options<'a>(
    ctx: &mut Ctx<'_>,
    args: &[&'a [u8]],
    kind: Kind,
) -> Option<ScanOptions<'a>> {
    let mut o = ScanOptions {
        pattern: None,
        count: 10,
        no_values: false,
    };
    let mut i = 3;
    while i < args.len() {
        let has_value = i + 1 < args.len();
        let opt = args[i];
        if opt.eq_ignore_ascii_case(b"COUNT") && has_value {
            let n = ctx.int_arg(args[i + 1])?;
            if n < 1 {
                ctx.syntax_error();
                return None;
            }
            o.count = usize::try_from(n).unwrap_or(usize::MAX);
            i += 2;
        } else if opt.eq_ignore_ascii_case(b"MATCH") && has_value {
            o.pattern = Some(args[i + 1]).filter(|p| *p != b"*");
            i += 2;
        } else if opt.eq_ignore_ascii_case(b"NOVALUES") {
            if kind != Kind::Hash {
                ctx.out
                    .error("ERR NOVALUES option can only be used in HSCAN");
                return None;
            }
            o.no_values = true;
            i += 1;
        } else {
            ctx.syntax_error();
            return None;
        }
    }
    Some(o)
}

/// Replies the empty scan, `["0", []]` (a missing key).
pub(crate) fn reply_empty_scan(ctx: &mut Ctx<'_>) {
    ctx.out.array(2);
    ctx.out.bulk(b"0");
    ctx.out.array(0);
}

/// Parses a random-pick count that may be negative (`SRANDMEMBER`, `HRANDFIELD`): Redis'
/// range is `-LONG_MAX..=LONG_MAX`. `None` after replying the error.
pub(crate) fn signed_count_arg(ctx: &mut Ctx<'_>, arg: &[u8]) -> Option<i64> {
    let n = ctx.int_arg(arg)?;
    if n == i64::MIN {
        ctx.out.error(
            "ERR value is out of range, value must between -9223372036854775807 and \
             9223372036854775807",
        );
        return None;
    }
    Some(n)
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
    spec("hdel", -3, WRITE | FAST, ONE, hashes::hdel),
    spec(
        "hello",
        -1,
        NO_AUTH | CONNECTION | FAST,
        NONE,
        connection::hello,
    ),
    spec("hexists", 3, READONLY | FAST, ONE, hashes::hexists),
    spec("hget", 3, READONLY | FAST, ONE, hashes::hget),
    spec("hgetall", 2, READONLY, ONE, hashes::hgetall),
    spec("hincrby", 4, WRITE | DENYOOM | FAST, ONE, hashes::hincrby),
    spec(
        "hincrbyfloat",
        4,
        WRITE | DENYOOM | FAST,
        ONE,
        hashes::hincrbyfloat,
    ),
    spec("hkeys", 2, READONLY, ONE, hashes::hkeys),
    spec("hlen", 2, READONLY | FAST, ONE, hashes::hlen),
    spec("hmget", -3, READONLY | FAST, ONE, hashes::hmget),
    spec("hmset", -4, WRITE | DENYOOM | FAST, ONE, hashes::hmset),
    spec("hrandfield", -2, READONLY, ONE, hashes::hrandfield),
    spec("hscan", -3, READONLY, ONE, hashes::hscan),
    spec("hset", -4, WRITE | DENYOOM | FAST, ONE, hashes::hset),
    spec("hsetnx", 4, WRITE | DENYOOM | FAST, ONE, hashes::hsetnx),
    spec("hstrlen", 3, READONLY | FAST, ONE, hashes::hstrlen),
    spec("hvals", 2, READONLY, ONE, hashes::hvals),
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
    spec("sadd", -3, WRITE | DENYOOM | FAST, ONE, sets::sadd),
    spec("scan", -2, READONLY, NONE, keys::scan),
    spec("scard", 2, READONLY | FAST, ONE, sets::scard),
    spec("sdiff", -2, READONLY, ALL, sets::sdiff),
    spec("sdiffstore", -3, WRITE | DENYOOM, ALL, sets::sdiffstore),
    spec("select", 2, FAST | CONNECTION, NONE, connection::select),
    spec("set", -3, WRITE | DENYOOM, ONE, strings::set),
    spec("setex", 4, WRITE | DENYOOM, ONE, strings::setex),
    spec("setnx", 3, WRITE | DENYOOM | FAST, ONE, strings::setnx),
    spec("setrange", 4, WRITE | DENYOOM, ONE, strings::setrange),
    spec("sinter", -2, READONLY, ALL, sets::sinter),
    // Keys after a count: Redis' legacy key range is empty (movable keys).
    spec("sintercard", -3, READONLY, NONE, sets::sintercard),
    spec("sinterstore", -3, WRITE | DENYOOM, ALL, sets::sinterstore),
    spec("sismember", 3, READONLY | FAST, ONE, sets::sismember),
    spec("smembers", 2, READONLY, ONE, sets::smembers),
    spec("smismember", -3, READONLY | FAST, ONE, sets::smismember),
    spec("smove", 4, WRITE | FAST, PAIR, sets::smove),
    spec("spop", -2, WRITE | FAST, ONE, sets::spop),
    spec("srandmember", -2, READONLY, ONE, sets::srandmember),
    spec("srem", -3, WRITE | FAST, ONE, sets::srem),
    spec("sscan", -3, READONLY, ONE, sets::sscan),
    spec("strlen", 2, READONLY | FAST, ONE, strings::strlen),
    spec("sunion", -2, READONLY, ALL, sets::sunion),
    spec("sunionstore", -3, WRITE | DENYOOM, ALL, sets::sunionstore),
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
