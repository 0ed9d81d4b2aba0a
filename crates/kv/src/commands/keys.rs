//! Generic key commands: existence, deletion, renaming, copying, expiry, iteration.

use super::ExpireArg;
use crate::command::{parse_db, Ctx};
use crate::glob;
use crate::keyspace::DATABASES;
use crate::value::Kind;

/// `DEL key [key ...]` (and `UNLINK`, which is the same here: values are freed at once, in
/// the engine's pass, since there is no background thread to hand them to).
pub fn del(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let (db, now) = (ctx.db(), ctx.now_ms);
    let removed = args[1..]
        .iter()
        .filter(|key| ctx.server.keyspace.remove(db, key, now).is_some())
        .count();
    ctx.out.integer(removed as i64);
}

/// `EXISTS key [key ...]`: a key named twice counts twice.
pub fn exists(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let (db, now) = (ctx.db(), ctx.now_ms);
    let n = args[1..]
        .iter()
        .filter(|key| ctx.server.keyspace.lookup(db, key, now).is_some())
        .count();
    ctx.out.integer(n as i64);
}

/// `TOUCH key [key ...]`.
pub fn touch(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    exists(ctx, args);
}

/// `TYPE key`.
pub fn type_(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let (db, now) = (ctx.db(), ctx.now_ms);
    let name = match ctx.ks().lookup_quiet(db, args[1], now) {
        Some(slot) => ctx.server.keyspace.entry(db, slot).value().kind().name(),
        None => "none",
    };
    ctx.out.simple(name);
}

/// `KEYS pattern`.
pub fn keys(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let (db, now) = (ctx.db(), ctx.now_ms);
    let all_match = args[1] == b"*";
    let found: Vec<&[u8]> = ctx
        .server
        .keyspace
        .db(db)
        .entries()
        .filter(|e| e.expire_at_ms().is_none_or(|at| at > now))
        .filter(|e| all_match || glob::matches(args[1], e.key(), false))
        .map(|e| e.key())
        .collect();
    ctx.out.array(found.len());
    for key in found {
        ctx.out.bulk(key);
    }
}

/// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]`.
pub fn scan(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Some(cursor) = std::str::from_utf8(args[1])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        ctx.out.error("ERR invalid cursor");
        return;
    };
    let mut pattern: Option<&[u8]> = None;
    let mut count = 10usize;
    let mut kind: Option<Kind> = None;
    let mut unknown_type = false;
    let mut i = 2;
    while i < args.len() {
        let opt = args[i].to_ascii_uppercase();
        if i + 1 >= args.len() {
            ctx.syntax_error();
            return;
        }
        match &opt[..] {
            b"MATCH" => pattern = Some(args[i + 1]),
            b"COUNT" => {
                let Some(n) = ctx.int_arg(args[i + 1]) else {
                    return;
                };
                if n < 1 {
                    ctx.syntax_error();
                    return;
                }
                count = n.min(1 << 20) as usize;
            }
            b"TYPE" => {
                kind = Kind::from_name(args[i + 1]);
                // Redis 7.2 answers an unknown type with an empty scan, not an error.
                unknown_type = kind.is_none();
            }
            _ => {
                ctx.syntax_error();
                return;
            }
        }
        i += 2;
    }
    let (db, now) = (ctx.db(), ctx.now_ms);
    let mut found: Vec<Vec<u8>> = Vec::new();
    let next = ctx.server.keyspace.db(db).scan(cursor, count, |e| {
        let live = e.expire_at_ms().is_none_or(|at| at > now);
        let typed = kind.is_none_or(|k| e.value().kind() == k);
        let matched = pattern.is_none_or(|p| glob::matches(p, e.key(), false));
        if live && typed && matched && !unknown_type {
            found.push(e.key().to_vec());
        }
    });
    ctx.out.array(2);
    ctx.out.bulk(next.to_string().as_bytes());
    ctx.out.array(found.len());
    for key in &found {
        ctx.out.bulk(key);
    }
}

/// `RANDOMKEY`.
pub fn randomkey(ctx: &mut Ctx<'_>, _args: &[&[u8]]) {
    let (db, now) = (ctx.db(), ctx.now_ms);
    match ctx.ks().random_key(db, now) {
        Some(key) => ctx.out.bulk(&key),
        None => ctx.out.null(),
    }
}

/// `DBSIZE`.
pub fn dbsize(ctx: &mut Ctx<'_>, _args: &[&[u8]]) {
    let db = ctx.db();
    let n = ctx.server.keyspace.db(db).len();
    ctx.out.integer(n as i64);
}

fn flush_mode_ok(ctx: &mut Ctx<'_>, args: &[&[u8]]) -> bool {
    match args.get(1).map(|a| a.to_ascii_uppercase()) {
        None => true,
        Some(m) if m == b"ASYNC" || m == b"SYNC" => {
            args.len() == 2 || {
                ctx.syntax_error();
                false
            }
        }
        Some(_) => {
            ctx.syntax_error();
            false
        }
    }
}

/// `FLUSHDB [ASYNC|SYNC]`.
pub fn flushdb(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    if flush_mode_ok(ctx, args) {
        let db = ctx.db();
        ctx.ks().flush_db(db);
        ctx.out.simple("OK");
    }
}

/// `FLUSHALL [ASYNC|SYNC]`.
pub fn flushall(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    if flush_mode_ok(ctx, args) {
        ctx.ks().flush_all();
        ctx.out.simple("OK");
    }
}

fn rename_impl(ctx: &mut Ctx<'_>, args: &[&[u8]], nx: bool) {
    let (db, now) = (ctx.db(), ctx.now_ms);
    let Some(src) = ctx.ks().lookup_quiet(db, args[1], now) else {
        ctx.out.error("ERR no such key");
        return;
    };
    if args[1] == args[2] {
        if nx {
            ctx.out.integer(0);
        } else {
            ctx.out.simple("OK");
        }
        return;
    }
    if nx && ctx.ks().lookup_quiet(db, args[2], now).is_some() {
        ctx.out.integer(0);
        return;
    }
    let (_, value, expire) = ctx.ks().remove_slot(db, src);
    let slot = ctx.ks().store(db, args[2], value, false, now);
    if expire != 0 {
        ctx.ks().set_expire(db, slot, expire);
    }
    if nx {
        ctx.out.integer(1);
    } else {
        ctx.out.simple("OK");
    }
}

/// `RENAME key newkey`.
pub fn rename(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    rename_impl(ctx, args, false);
}

/// `RENAMENX key newkey`.
pub fn renamenx(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    rename_impl(ctx, args, true);
}

/// `COPY source destination [DB destination-db] [REPLACE]`.
pub fn copy(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let mut to_db = ctx.db();
    let mut replace = false;
    let mut i = 3;
    while i < args.len() {
        let opt = args[i].to_ascii_uppercase();
        match &opt[..] {
            b"REPLACE" => replace = true,
            b"DB" if i + 1 < args.len() => {
                i += 1;
                match parse_db(args[i]) {
                    Ok(n) => to_db = n,
                    Err(e) => {
                        ctx.out.error(e);
                        return;
                    }
                }
            }
            _ => {
                ctx.syntax_error();
                return;
            }
        }
        i += 1;
    }
    let (db, now) = (ctx.db(), ctx.now_ms);
    if db == to_db && args[1] == args[2] {
        ctx.out
            .error("ERR source and destination objects are the same");
        return;
    }
    let Some(src) = ctx.ks().lookup_quiet(db, args[1], now) else {
        ctx.out.integer(0);
        return;
    };
    if !replace && ctx.ks().lookup_quiet(to_db, args[2], now).is_some() {
        ctx.out.integer(0);
        return;
    }
    let entry = ctx.server.keyspace.entry(db, src);
    let (value, expire) = (entry.value().clone(), entry.expire_at_ms().unwrap_or(0));
    let slot = ctx.ks().store(to_db, args[2], value, false, now);
    if expire != 0 {
        ctx.ks().set_expire(to_db, slot, expire);
    }
    ctx.out.integer(1);
}

/// `MOVE key db`.
pub fn move_(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let to_db = match parse_db(args[2]) {
        Ok(n) => n,
        Err(e) => {
            ctx.out.error(e);
            return;
        }
    };
    let (db, now) = (ctx.db(), ctx.now_ms);
    if db == to_db {
        ctx.out
            .error("ERR source and destination objects are the same");
        return;
    }
    let Some(src) = ctx.ks().lookup_quiet(db, args[1], now) else {
        ctx.out.integer(0);
        return;
    };
    if ctx.ks().lookup_quiet(to_db, args[1], now).is_some() {
        ctx.out.integer(0);
        return;
    }
    let (key, value, expire) = ctx.ks().remove_slot(db, src);
    let slot = ctx.ks().store(to_db, &key, value, false, now);
    if expire != 0 {
        ctx.ks().set_expire(to_db, slot, expire);
    }
    ctx.out.integer(1);
}

/// `SWAPDB index1 index2`.
pub fn swapdb(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let parse = |arg: &[u8], which: &'static str| match crate::number::parse_i64(arg) {
        None => Err(which),
        Some(n) if n < 0 || n >= DATABASES as i64 => Err("ERR DB index is out of range"),
        Some(n) => Ok(n as usize),
    };
    match (
        parse(args[1], "ERR invalid first DB index"),
        parse(args[2], "ERR invalid second DB index"),
    ) {
        (Ok(a), Ok(b)) => {
            ctx.ks().swap_db(a, b);
            ctx.out.simple("OK");
        }
        (Err(e), _) | (_, Err(e)) => ctx.out.error(e),
    }
}

/// The EXPIRE family: `unit` says how `args[2]` is read.
fn expire_generic(ctx: &mut Ctx<'_>, args: &[&[u8]], unit: ExpireArg, name: &str) {
    // Redis' `expireGenericCommand` checks the flags before the time: `EXPIRE k x NX XX`
    // answers the incompatibility, not "not an integer".
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in &args[3..] {
        match &opt.to_ascii_uppercase()[..] {
            b"NX" => nx = true,
            b"XX" => xx = true,
            b"GT" => gt = true,
            b"LT" => lt = true,
            _ => {
                ctx.out.error(&format!(
                    "ERR Unsupported option {}",
                    String::from_utf8_lossy(opt)
                ));
                return;
            }
        }
    }
    if nx && (xx || gt || lt) {
        ctx.out
            .error("ERR NX and XX, GT or LT options at the same time are not compatible");
        return;
    }
    if gt && lt {
        ctx.out
            .error("ERR GT and LT options at the same time are not compatible");
        return;
    }
    let Some(n) = ctx.int_arg(args[2]) else {
        return;
    };
    // Past times are allowed here (they delete the key); only overflow is refused.
    let Some(at) = expire_at_any(unit, n, ctx.now_ms) else {
        ctx.out
            .error(&format!("ERR invalid expire time in '{name}' command"));
        return;
    };
    let (db, now) = (ctx.db(), ctx.now_ms);
    let Some(slot) = ctx.ks().lookup_quiet(db, args[1], now) else {
        ctx.out.integer(0);
        return;
    };
    let current = ctx.server.keyspace.entry(db, slot).expire_at_ms();
    let allowed = match current {
        None => !xx && !gt,
        Some(cur) => !nx && (!gt || at > cur as i64) && (!lt || at < cur as i64),
    };
    if !allowed {
        ctx.out.integer(0);
        return;
    }
    if at <= now as i64 {
        // Redis deletes the key (and propagates a DEL): not counted as expired.
        ctx.ks().remove_slot(db, slot);
    } else {
        ctx.ks().set_expire(db, slot, at as u64);
    }
    ctx.out.integer(1);
}

/// As [`expire_at`], but past and negative times are kept (as signed ms), only overflow fails.
fn expire_at_any(unit: ExpireArg, n: i64, now_ms: u64) -> Option<i64> {
    let ms = match unit {
        ExpireArg::Seconds | ExpireArg::UnixSeconds => n.checked_mul(1000)?,
        ExpireArg::Millis | ExpireArg::UnixMillis => n,
    };
    match unit {
        ExpireArg::Seconds | ExpireArg::Millis => ms.checked_add(i64::try_from(now_ms).ok()?),
        ExpireArg::UnixSeconds | ExpireArg::UnixMillis => Some(ms),
    }
}

/// `EXPIRE key seconds [NX|XX|GT|LT]`.
pub fn expire(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    expire_generic(ctx, args, ExpireArg::Seconds, "expire");
}
/// `PEXPIRE key ms [NX|XX|GT|LT]`.
pub fn pexpire(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    expire_generic(ctx, args, ExpireArg::Millis, "pexpire");
}
/// `EXPIREAT key unix-seconds [NX|XX|GT|LT]`.
pub fn expireat(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    expire_generic(ctx, args, ExpireArg::UnixSeconds, "expireat");
}
/// `PEXPIREAT key unix-ms [NX|XX|GT|LT]`.
pub fn pexpireat(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    expire_generic(ctx, args, ExpireArg::UnixMillis, "pexpireat");
}

/// The TTL family: -2 absent, -1 no TTL, else `f(expire_at_ms, now_ms)`.
fn ttl_generic(ctx: &mut Ctx<'_>, args: &[&[u8]], f: fn(u64, u64) -> i64) {
    let (db, now) = (ctx.db(), ctx.now_ms);
    let reply = match ctx.ks().lookup(db, args[1], now) {
        None => -2,
        Some(slot) => match ctx.server.keyspace.entry(db, slot).expire_at_ms() {
            None => -1,
            Some(at) => f(at, now),
        },
    };
    ctx.out.integer(reply);
}

/// `TTL key`: seconds left, rounded as Redis rounds.
pub fn ttl(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    ttl_generic(ctx, args, |at, now| ((at - now + 500) / 1000) as i64);
}
/// `PTTL key`.
pub fn pttl(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    ttl_generic(ctx, args, |at, now| (at - now) as i64);
}
/// `EXPIRETIME key`: the Unix second it expires at.
pub fn expiretime(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    ttl_generic(ctx, args, |at, _| (at / 1000) as i64);
}
/// `PEXPIRETIME key`.
pub fn pexpiretime(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    ttl_generic(ctx, args, |at, _| at as i64);
}

/// `PERSIST key`.
pub fn persist(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let (db, now) = (ctx.db(), ctx.now_ms);
    let Some(slot) = ctx.ks().lookup_quiet(db, args[1], now) else {
        ctx.out.integer(0);
        return;
    };
    if ctx.server.keyspace.entry(db, slot).expire_at_ms().is_none() {
        ctx.out.integer(0);
        return;
    }
    ctx.ks().set_expire(db, slot, 0);
    ctx.out.integer(1);
}

/// `OBJECT ENCODING|IDLETIME|REFCOUNT|FREQ|HELP key`.
pub fn object(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let sub = args[1].to_ascii_uppercase();
    if sub == b"HELP" {
        let lines = [
            "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "ENCODING <key>",
            "    Return the kind of internal representation used in order to store the value",
            "    associated with a <key>.",
            "FREQ <key>",
            "    Return the access frequency index of the <key>. The returned integer is",
            "    proportional to the logarithm of the recent access frequency of the key.",
            "IDLETIME <key>",
            "    Return the idle time of the <key>, that is the approximated number of",
            "    seconds elapsed since the last access to the key.",
            "REFCOUNT <key>",
            "    Return the number of references of the value associated with the specified",
            "    <key>.",
            "HELP",
            "    Print this help.",
        ];
        ctx.out.array(lines.len());
        for line in lines {
            ctx.out.simple(line);
        }
        return;
    }
    if args.len() != 3 || !matches!(&sub[..], b"ENCODING" | b"IDLETIME" | b"REFCOUNT" | b"FREQ") {
        ctx.out.error(&format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try OBJECT HELP.",
            String::from_utf8_lossy(args[1])
        ));
        return;
    }
    let (db, now) = (ctx.db(), ctx.now_ms);
    let Some(slot) = ctx.ks().lookup_quiet(db, args[2], now) else {
        ctx.out.null();
        return;
    };
    let entry = ctx.server.keyspace.entry(db, slot);
    match &sub[..] {
        b"ENCODING" => {
            let encoding = entry.value().encoding();
            ctx.out.bulk(encoding.as_bytes());
        }
        b"IDLETIME" => {
            let idle = entry.idle_s(now) as i64;
            ctx.out.integer(idle);
        }
        b"REFCOUNT" => ctx.out.integer(1),
        _ => ctx.out.error(
            "ERR An LFU maxmemory policy is not selected, access frequency not tracked. Please \
             note that when switching between policies at runtime LRU and LFU data will take \
             some time to adjust.",
        ),
    }
}
