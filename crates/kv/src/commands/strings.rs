//! String commands: SET and its variants, GET and its variants, counters, ranges.

use super::{expire_at, string_of, ExpireArg};
use crate::command::Ctx;
use crate::keyspace::Slot;
use crate::value::{Kind, Value};

/// Looks `key` up as a string: `Err(())` after replying `WRONGTYPE`.
fn string_slot(ctx: &mut Ctx<'_>, key: &[u8]) -> Result<Option<Slot>, ()> {
    let (db, now) = (ctx.db(), ctx.now_ms);
    match ctx.ks().get_typed(db, key, Kind::String, now) {
        Ok(slot) => Ok(slot),
        Err(_) => {
            ctx.wrong_type();
            Err(())
        }
    }
}

fn reply_string_or_null(ctx: &mut Ctx<'_>, slot: Option<Slot>) {
    match slot {
        Some(slot) => {
            let db = ctx.db();
            let value = string_of(ctx.server.keyspace.entry(db, slot).value());
            ctx.out.bulk(value);
        }
        None => ctx.out.null(),
    }
}

/// What SET's options asked for.
#[derive(Default)]
struct SetOptions {
    nx: bool,
    xx: bool,
    get: bool,
    keep_ttl: bool,
    expire: Option<u64>,
}

/// Parses SET's options (`args[3..]`); `None` after replying the error.
fn set_options(ctx: &mut Ctx<'_>, args: &[&[u8]]) -> Option<SetOptions> {
    let mut o = SetOptions::default();
    // As Redis' `parseExtendedStringArgumentsOrReply`: the whole syntax first (`SET k v EXAT
    // XX 4000000000` is a syntax error, "XX" being EXAT's argument), then the time.
    let mut expire: Option<(ExpireArg, &[u8])> = None;
    let mut i = 3;
    while i < args.len() {
        let opt = args[i].to_ascii_uppercase();
        let has_expire = expire.is_some() || o.keep_ttl;
        match &opt[..] {
            b"NX" if !o.xx => o.nx = true,
            b"XX" if !o.nx => o.xx = true,
            b"GET" => o.get = true,
            b"KEEPTTL" if !has_expire => o.keep_ttl = true,
            b"EX" | b"PX" | b"EXAT" | b"PXAT" if !has_expire && i + 1 < args.len() => {
                let kind = match &opt[..] {
                    b"EX" => ExpireArg::Seconds,
                    b"PX" => ExpireArg::Millis,
                    b"EXAT" => ExpireArg::UnixSeconds,
                    _ => ExpireArg::UnixMillis,
                };
                i += 1;
                expire = Some((kind, args[i]));
            }
            _ => {
                ctx.syntax_error();
                return None;
            }
        }
        i += 1;
    }
    if let Some((kind, arg)) = expire {
        let n = ctx.int_arg(arg)?;
        match expire_at(kind, n, ctx.now_ms) {
            Some(at) => o.expire = Some(at),
            None => {
                ctx.out.error("ERR invalid expire time in 'set' command");
                return None;
            }
        }
    }
    Some(o)
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]`.
pub fn set(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Some(o) = set_options(ctx, args) else {
        return;
    };
    let (key, value) = (args[1], args[2]);
    let db = ctx.db();
    let now = ctx.now_ms;
    let existing = if o.get {
        let Ok(slot) = string_slot(ctx, key) else {
            return;
        };
        slot
    } else {
        ctx.ks().lookup_quiet(db, key, now)
    };
    let old = existing.map(|slot| string_of(ctx.server.keyspace.entry(db, slot).value()).to_vec());
    if (o.nx && existing.is_some()) || (o.xx && existing.is_none()) {
        if o.get {
            reply_old(ctx, old);
        } else {
            ctx.out.null();
        }
        return;
    }
    let slot = ctx
        .ks()
        .store(db, key, Value::Str(value.to_vec()), o.keep_ttl, now);
    if let Some(at) = o.expire {
        ctx.ks().set_expire(db, slot, at);
    }
    if o.get {
        reply_old(ctx, old);
    } else {
        ctx.out.simple("OK");
    }
}

fn reply_old(ctx: &mut Ctx<'_>, old: Option<Vec<u8>>) {
    match old {
        Some(v) => ctx.out.bulk(&v),
        None => ctx.out.null(),
    }
}

/// `SETNX key value`.
pub fn setnx(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let (db, now) = (ctx.db(), ctx.now_ms);
    if ctx.ks().lookup_quiet(db, args[1], now).is_some() {
        ctx.out.integer(0);
        return;
    }
    ctx.ks()
        .store(db, args[1], Value::Str(args[2].to_vec()), false, now);
    ctx.out.integer(1);
}

fn set_with_expire(ctx: &mut Ctx<'_>, args: &[&[u8]], kind: ExpireArg, name: &str) {
    let Some(n) = ctx.int_arg(args[2]) else {
        return;
    };
    let Some(at) = expire_at(kind, n, ctx.now_ms) else {
        ctx.out
            .error(&format!("ERR invalid expire time in '{name}' command"));
        return;
    };
    let (db, now) = (ctx.db(), ctx.now_ms);
    let slot = ctx
        .ks()
        .store(db, args[1], Value::Str(args[3].to_vec()), false, now);
    ctx.ks().set_expire(db, slot, at);
    ctx.out.simple("OK");
}

/// `SETEX key seconds value`.
pub fn setex(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    set_with_expire(ctx, args, ExpireArg::Seconds, "setex");
}

/// `PSETEX key milliseconds value`.
pub fn psetex(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    set_with_expire(ctx, args, ExpireArg::Millis, "psetex");
}

/// `GET key`.
pub fn get(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    if let Ok(slot) = string_slot(ctx, args[1]) {
        reply_string_or_null(ctx, slot);
    }
}

/// `GETDEL key`.
pub fn getdel(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Ok(slot) = string_slot(ctx, args[1]) else {
        return;
    };
    reply_string_or_null(ctx, slot);
    if let Some(slot) = slot {
        let db = ctx.db();
        ctx.ks().remove_slot(db, slot);
    }
}

/// `GETSET key value`.
pub fn getset(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Ok(slot) = string_slot(ctx, args[1]) else {
        return;
    };
    reply_string_or_null(ctx, slot);
    let (db, now) = (ctx.db(), ctx.now_ms);
    ctx.ks()
        .store(db, args[1], Value::Str(args[2].to_vec()), false, now);
}

/// `GETEX key [EX s|PX ms|EXAT s|PXAT ms|PERSIST]`.
pub fn getex(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    // As Redis' `getexCommand`: the options' syntax first, then the key (a missing key
    // answers nil and a wrong type WRONGTYPE, whatever the time says), then the time.
    let mut persist = false;
    let mut expire: Option<(ExpireArg, &[u8])> = None;
    let mut i = 2;
    while i < args.len() {
        let opt = args[i].to_ascii_uppercase();
        let unset = !persist && expire.is_none();
        match &opt[..] {
            b"PERSIST" if unset => persist = true,
            b"EX" | b"PX" | b"EXAT" | b"PXAT" if unset && i + 1 < args.len() => {
                let kind = match &opt[..] {
                    b"EX" => ExpireArg::Seconds,
                    b"PX" => ExpireArg::Millis,
                    b"EXAT" => ExpireArg::UnixSeconds,
                    _ => ExpireArg::UnixMillis,
                };
                i += 1;
                expire = Some((kind, args[i]));
            }
            _ => {
                ctx.syntax_error();
                return;
            }
        }
        i += 1;
    }
    let Ok(slot) = string_slot(ctx, args[1]) else {
        return;
    };
    let Some(slot) = slot else {
        ctx.out.null();
        return;
    };
    let mut new_expire = persist.then_some(0); // Some(0) = persist
    if let Some((kind, arg)) = expire {
        let Some(n) = ctx.int_arg(arg) else {
            return;
        };
        match expire_at(kind, n, ctx.now_ms) {
            Some(at) => new_expire = Some(at),
            None => {
                ctx.out.error("ERR invalid expire time in 'getex' command");
                return;
            }
        }
    }
    reply_string_or_null(ctx, Some(slot));
    if let Some(at) = new_expire {
        let db = ctx.db();
        ctx.ks().set_expire(db, slot, at);
    }
}

/// `MGET key [key ...]`: null for a missing key or one of another type.
pub fn mget(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let (db, now) = (ctx.db(), ctx.now_ms);
    ctx.out.array(args.len() - 1);
    for key in &args[1..] {
        let slot = ctx.ks().lookup(db, key, now);
        match slot.map(|s| ctx.server.keyspace.entry(db, s).value()) {
            Some(Value::Str(s)) => ctx.out.bulk(s),
            _ => ctx.out.null(),
        }
    }
}

/// `MSET key value [key value ...]`.
pub fn mset(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    if args.len().is_multiple_of(2) {
        ctx.out
            .error("ERR wrong number of arguments for 'mset' command");
        return;
    }
    let (db, now) = (ctx.db(), ctx.now_ms);
    for pair in args[1..].chunks_exact(2) {
        ctx.ks()
            .store(db, pair[0], Value::Str(pair[1].to_vec()), false, now);
    }
    ctx.out.simple("OK");
}

/// `MSETNX key value [key value ...]`: all or none.
pub fn msetnx(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    if args.len().is_multiple_of(2) {
        ctx.out
            .error("ERR wrong number of arguments for 'msetnx' command");
        return;
    }
    let (db, now) = (ctx.db(), ctx.now_ms);
    let any = args[1..]
        .chunks_exact(2)
        .any(|pair| ctx.server.keyspace.lookup_quiet(db, pair[0], now).is_some());
    if any {
        ctx.out.integer(0);
        return;
    }
    for pair in args[1..].chunks_exact(2) {
        ctx.ks()
            .store(db, pair[0], Value::Str(pair[1].to_vec()), false, now);
    }
    ctx.out.integer(1);
}

/// Adds `by` to the integer in `key`; replies the new value.
fn incr_by(ctx: &mut Ctx<'_>, key: &[u8], by: i64) {
    let Ok(slot) = string_slot(ctx, key) else {
        return;
    };
    let db = ctx.db();
    let current = match slot {
        Some(slot) => {
            match crate::number::parse_i64(string_of(ctx.server.keyspace.entry(db, slot).value())) {
                Some(n) => n,
                None => {
                    ctx.out.error("ERR value is not an integer or out of range");
                    return;
                }
            }
        }
        None => 0,
    };
    let Some(new) = current.checked_add(by) else {
        ctx.out.error("ERR increment or decrement would overflow");
        return;
    };
    let text = new.to_string().into_bytes();
    let now = ctx.now_ms;
    match slot {
        Some(slot) => ctx.ks().update(db, slot, |v| *v = Value::Str(text)),
        None => {
            ctx.ks().store(db, key, Value::Str(text), false, now);
        }
    }
    ctx.out.integer(new);
}

/// `INCR key`.
pub fn incr(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    incr_by(ctx, args[1], 1);
}

/// `DECR key`.
pub fn decr(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    incr_by(ctx, args[1], -1);
}

/// `INCRBY key increment`.
pub fn incrby(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    if let Some(by) = ctx.int_arg(args[2]) {
        incr_by(ctx, args[1], by);
    }
}

/// `DECRBY key decrement`.
pub fn decrby(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Some(by) = ctx.int_arg(args[2]) else {
        return;
    };
    match by.checked_neg() {
        Some(neg) => incr_by(ctx, args[1], neg),
        None => ctx.out.error("ERR decrement would overflow"),
    }
}

/// Redis prints an `INCRBYFLOAT` result in its "human" form (`%.17Lf`, trailing zeros cut):
/// fixed notation with the exact decimal value, so a large integral result is all its digits
/// (`9223372036854775808`, where shortest-digit printing would give `...776000`).
pub(crate) fn incrbyfloat_text(value: f64) -> Vec<u8> {
    if value.abs() >= 1e15 && value.fract() == 0.0 {
        format!("{value:.0}").into_bytes()
    } else {
        format!("{value}").into_bytes()
    }
}

/// `INCRBYFLOAT key increment`.
pub fn incrbyfloat(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    // As Redis' `incrbyfloatCommand`: the key's type, then its value, then the increment.
    let Ok(slot) = string_slot(ctx, args[1]) else {
        return;
    };
    let db = ctx.db();
    let current = match slot {
        Some(slot) => {
            match crate::number::parse_f64(string_of(ctx.server.keyspace.entry(db, slot).value())) {
                Some(n) => n,
                None => {
                    ctx.out.error("ERR value is not a valid float");
                    return;
                }
            }
        }
        None => 0.0,
    };
    let Some(by) = ctx.float_arg(args[2]) else {
        return;
    };
    let new = current + by;
    if !new.is_finite() {
        ctx.out.error("ERR increment would produce NaN or Infinity");
        return;
    }
    let text = incrbyfloat_text(new);
    ctx.out.bulk(&text);
    let now = ctx.now_ms;
    match slot {
        Some(slot) => ctx.ks().update(db, slot, |v| *v = Value::Str(text)),
        None => {
            ctx.ks().store(db, args[1], Value::Str(text), false, now);
        }
    }
}

fn too_big(ctx: &mut Ctx<'_>, len: u64) -> bool {
    if len > ctx.server.config.proto_max_bulk_len {
        ctx.out
            .error("ERR string exceeds maximum allowed size (proto-max-bulk-len)");
        return true;
    }
    false
}

/// `APPEND key value`.
pub fn append(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Ok(slot) = string_slot(ctx, args[1]) else {
        return;
    };
    let db = ctx.db();
    match slot {
        Some(slot) => {
            let len = string_of(ctx.server.keyspace.entry(db, slot).value()).len();
            if too_big(ctx, (len + args[2].len()) as u64) {
                return;
            }
            let new_len = ctx.ks().update(db, slot, |v| match v {
                Value::Str(s) => {
                    s.extend_from_slice(args[2]);
                    s.len()
                }
                _ => unreachable!("string_slot checked the type"),
            });
            ctx.out.integer(new_len as i64);
        }
        None => {
            let now = ctx.now_ms;
            ctx.ks()
                .store(db, args[1], Value::Str(args[2].to_vec()), false, now);
            ctx.out.integer(args[2].len() as i64);
        }
    }
}

/// `STRLEN key`.
pub fn strlen(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    if let Ok(slot) = string_slot(ctx, args[1]) {
        let db = ctx.db();
        let len = slot.map_or(0, |s| {
            string_of(ctx.server.keyspace.entry(db, s).value()).len()
        });
        ctx.out.integer(len as i64);
    }
}

/// `GETRANGE key start end` (inclusive, negative from the end).
pub fn getrange(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let (Some(start), Some(end)) = (
        crate::number::parse_i64(args[2]),
        crate::number::parse_i64(args[3]),
    ) else {
        ctx.out.error("ERR value is not an integer or out of range");
        return;
    };
    let Ok(slot) = string_slot(ctx, args[1]) else {
        return;
    };
    let db = ctx.db();
    let Some(slot) = slot else {
        ctx.out.bulk(b"");
        return;
    };
    let s = string_of(ctx.server.keyspace.entry(db, slot).value());
    let len = s.len() as i64;
    // Redis: both negative and start > end is empty; then clamp.
    if start < 0 && end < 0 && start > end {
        ctx.out.bulk(b"");
        return;
    }
    let start = if start < 0 {
        (len + start).max(0)
    } else {
        start
    };
    let end = if end < 0 {
        (len + end).max(0)
    } else {
        end.min(len - 1)
    };
    if len == 0 || start > end || start >= len {
        ctx.out.bulk(b"");
        return;
    }
    let range = &s[start as usize..=end as usize];
    let range = range.to_vec();
    ctx.out.bulk(&range);
}

/// `SETRANGE key offset value`.
pub fn setrange(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Some(offset) = ctx.int_arg(args[2]) else {
        return;
    };
    if offset < 0 {
        ctx.out.error("ERR offset is out of range");
        return;
    }
    let value = args[3];
    let Ok(slot) = string_slot(ctx, args[1]) else {
        return;
    };
    let db = ctx.db();
    let current_len = slot.map_or(0, |s| {
        string_of(ctx.server.keyspace.entry(db, s).value()).len()
    });
    if value.is_empty() {
        ctx.out.integer(current_len as i64);
        return;
    }
    let end = offset as u64 + value.len() as u64;
    if too_big(ctx, end) {
        return;
    }
    let write = |s: &mut Vec<u8>| {
        let end = end as usize;
        if s.len() < end {
            s.resize(end, 0);
        }
        s[offset as usize..end].copy_from_slice(value);
        s.len()
    };
    let new_len = match slot {
        Some(slot) => ctx.ks().update(db, slot, |v| match v {
            Value::Str(s) => write(s),
            _ => unreachable!("string_slot checked the type"),
        }),
        None => {
            let mut s = Vec::new();
            let len = write(&mut s);
            let now = ctx.now_ms;
            ctx.ks().store(db, args[1], Value::Str(s), false, now);
            len
        }
    };
    ctx.out.integer(new_len as i64);
}
