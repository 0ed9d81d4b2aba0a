//! Hash commands: fields and values under one key (`HSET` and its family, counters on
//! fields, whole-hash reads, `HSCAN` and `HRANDFIELD`), with Redis 7.2's replies and error
//! words.
//!
//! Every command looks its key up once, checks the type (`WRONGTYPE` before anything else
//! about the key), and changes the value through [`Keyspace::update`], which re-accounts the
//! bytes and deletes the key when the last field goes, as Redis does. Reads count a keyspace
//! hit or miss; writes do not (Redis' `lookupKeyWrite`). Arguments that Redis parses before
//! the lookup (an `HINCRBY` increment, an `HRANDFIELD` count) are parsed first here too, so
//! the same error wins when a call has two faults.
//!
//! [`Keyspace::update`]: crate::keyspace::Keyspace::update

use super::{
    parse_cursor, read_slot, reply_empty_scan, scan_options, signed_count_arg, write_slot,
    RANDOM_REPEATS_MAX,
};
use crate::command::Ctx;
use crate::glob;
use crate::keyspace::{Keyspace, Slot};
use crate::reply::Reply;
use crate::value::{HashValue, Kind, Value};
use melange_core::rng::SplitMix64;

/// The hash in `slot` of `db` (the caller looked it up as a hash in this command).
fn hash_in(ks: &Keyspace, db: usize, slot: Slot) -> &HashValue {
    match ks.entry(db, slot).value() {
        Value::Hash(h) => h,
        _ => unreachable!("read_slot/write_slot checked the type"),
    }
}

/// [`hash_in`] the client's database.
fn hash_at<'a>(ctx: &'a Ctx<'_>, slot: Slot) -> &'a HashValue {
    hash_in(&ctx.server.keyspace, ctx.db(), slot)
}

/// Runs `change` on the hash in `slot` (the caller looked it up as a hash), or on a new hash
/// stored under `key` when `slot` is `None`; an emptied hash is deleted.
fn change_hash<R>(
    ctx: &mut Ctx<'_>,
    key: &[u8],
    slot: Option<Slot>,
    change: impl FnOnce(&mut HashValue) -> R,
) -> R {
    let (db, now) = (ctx.db(), ctx.now_ms);
    match slot {
        Some(slot) => ctx.ks().update(db, slot, |v| match v {
            Value::Hash(h) => change(h),
            _ => unreachable!("write_slot checked the type"),
        }),
        None => {
            let mut h = HashValue::default();
            let result = change(&mut h);
            if !h.is_empty() {
                ctx.ks()
                    .store(db, key, Value::Hash(Box::new(h)), false, now);
            }
            result
        }
    }
}

/// Sets the field/value pairs of `args[2..]`; the number of new fields, or `None` after
/// replying the error. `name` is the command's, for the arity error.
fn set_pairs(ctx: &mut Ctx<'_>, args: &[&[u8]], name: &str) -> Option<i64> {
    if args.len() % 2 == 1 {
        ctx.out.error(&format!(
            "ERR wrong number of arguments for '{name}' command"
        ));
        return None;
    }
    let slot = write_slot(ctx, args[1], Kind::Hash).ok()?;
    let created = change_hash(ctx, args[1], slot, |h| {
        let mut created = 0;
        for pair in args[2..].chunks_exact(2) {
            created += i64::from(h.insert(pair[0], pair[1]));
        }
        created
    });
    Some(created)
}

/// `HSET key field value [field value ...]`: the number of fields added.
pub fn hset(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    if let Some(created) = set_pairs(ctx, args, "hset") {
        ctx.out.integer(created);
    }
}

/// `HMSET key field value [field value ...]` (deprecated form of `HSET`): `OK`.
pub fn hmset(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    if set_pairs(ctx, args, "hmset").is_some() {
        ctx.out.simple("OK");
    }
}

/// `HSETNX key field value`: 1 if the field was set, 0 if it existed.
pub fn hsetnx(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Ok(slot) = write_slot(ctx, args[1], Kind::Hash) else {
        return;
    };
    if slot.is_some_and(|s| hash_at(ctx, s).get(args[2]).is_some()) {
        ctx.out.integer(0);
        return;
    }
    change_hash(ctx, args[1], slot, |h| h.insert(args[2], args[3]));
    ctx.out.integer(1);
}

/// `HGET key field`: the value, or null.
pub fn hget(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Ok(slot) = read_slot(ctx, args[1], Kind::Hash) else {
        return;
    };
    match slot.and_then(|s| hash_at(ctx, s).get(args[2])) {
        Some(value) => {
            let value = value.to_vec();
            ctx.out.bulk(&value);
        }
        None => ctx.out.null(),
    }
}

/// `HMGET key field [field ...]`: a value or null per field (all null for a missing key).
pub fn hmget(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Ok(slot) = read_slot(ctx, args[1], Kind::Hash) else {
        return;
    };
    let db = ctx.db();
    let hash = slot.map(|s| hash_in(&ctx.server.keyspace, db, s));
    ctx.out.array(args.len() - 2);
    for field in &args[2..] {
        match hash.and_then(|h| h.get(field)) {
            Some(value) => ctx.out.bulk(value),
            None => ctx.out.null(),
        }
    }
}

/// `HDEL key field [field ...]`: the number of fields removed; the key goes with the last.
pub fn hdel(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Ok(slot) = write_slot(ctx, args[1], Kind::Hash) else {
        return;
    };
    let Some(slot) = slot else {
        ctx.out.integer(0);
        return;
    };
    let removed = change_hash(ctx, args[1], Some(slot), |h| {
        args[2..].iter().filter(|f| h.remove(f)).count()
    });
    ctx.out.integer(removed as i64);
}

/// `HEXISTS key field`: 1 or 0.
pub fn hexists(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    if let Ok(slot) = read_slot(ctx, args[1], Kind::Hash) {
        let found = slot.is_some_and(|s| hash_at(ctx, s).get(args[2]).is_some());
        ctx.out.integer(i64::from(found));
    }
}

/// `HLEN key`: the number of fields.
pub fn hlen(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    if let Ok(slot) = read_slot(ctx, args[1], Kind::Hash) {
        let len = slot.map_or(0, |s| hash_at(ctx, s).len());
        ctx.out.integer(len as i64);
    }
}

/// `HSTRLEN key field`: the length of the value (0 if absent).
pub fn hstrlen(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    if let Ok(slot) = read_slot(ctx, args[1], Kind::Hash) {
        let len = slot
            .and_then(|s| hash_at(ctx, s).get(args[2]))
            .map_or(0, <[u8]>::len);
        ctx.out.integer(len as i64);
    }
}

/// What of each field `HGETALL`, `HKEYS` and `HVALS` reply with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Parts {
    Fields,
    Values,
    Both,
}

fn whole_hash(ctx: &mut Ctx<'_>, key: &[u8], parts: Parts) {
    let Ok(slot) = read_slot(ctx, key, Kind::Hash) else {
        return;
    };
    let db = ctx.db();
    let hash = slot.map(|s| hash_in(&ctx.server.keyspace, db, s));
    let len = hash.map_or(0, HashValue::len);
    // A map for fields with values (RESP2: a flat array), a plain array otherwise.
    if parts == Parts::Both {
        ctx.out.map(len);
    } else {
        ctx.out.array(len);
    }
    for (field, value) in hash.into_iter().flat_map(|h| h.map().iter()) {
        if parts != Parts::Values {
            ctx.out.bulk(field);
        }
        if parts != Parts::Fields {
            ctx.out.bulk(value);
        }
    }
}

/// `HGETALL key`: every field and value, as a map.
pub fn hgetall(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    whole_hash(ctx, args[1], Parts::Both);
}

/// `HKEYS key`: every field.
pub fn hkeys(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    whole_hash(ctx, args[1], Parts::Fields);
}

/// `HVALS key`: every value.
pub fn hvals(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    whole_hash(ctx, args[1], Parts::Values);
}

/// `HINCRBY key field increment`: the new value.
pub fn hincrby(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Some(by) = ctx.int_arg(args[3]) else {
        return;
    };
    let Ok(slot) = write_slot(ctx, args[1], Kind::Hash) else {
        return;
    };
    let current = match slot.and_then(|s| hash_at(ctx, s).get(args[2])) {
        None => 0,
        Some(text) => match crate::number::parse_i64(text) {
            Some(n) => n,
            None => {
                ctx.out.error("ERR hash value is not an integer");
                return;
            }
        },
    };
    let Some(new) = current.checked_add(by) else {
        ctx.out.error("ERR increment or decrement would overflow");
        return;
    };
    let text = new.to_string();
    change_hash(ctx, args[1], slot, |h| h.insert(args[2], text.as_bytes()));
    ctx.out.integer(new);
}

/// `HINCRBYFLOAT key field increment`: the new value, printed as Redis prints it.
pub fn hincrbyfloat(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Some(by) = ctx.float_arg(args[3]) else {
        return;
    };
    if !by.is_finite() {
        ctx.out.error("ERR value is NaN or Infinity");
        return;
    }
    let Ok(slot) = write_slot(ctx, args[1], Kind::Hash) else {
        return;
    };
    let current = match slot.and_then(|s| hash_at(ctx, s).get(args[2])) {
        None => 0.0,
        Some(text) => match crate::number::parse_f64(text) {
            Some(n) => n,
            None => {
                ctx.out.error("ERR hash value is not a float");
                return;
            }
        },
    };
    let new = current + by;
    if !new.is_finite() {
        ctx.out.error("ERR increment would produce NaN or Infinity");
        return;
    }
    // Redis' "human" long-double form: fixed notation without trailing zeros, as INCRBYFLOAT.
    let text = super::strings::incrbyfloat_text(new);
    change_hash(ctx, args[1], slot, |h| h.insert(args[2], &text));
    ctx.out.bulk(&text);
}

/// `HSCAN key cursor [MATCH pattern] [COUNT count] [NOVALUES]`.
///
/// The cursor is a slab index of the hash ([`crate::slabmap`]): every field present for the
/// whole scan is returned. A hash Redis would hold as a listpack (small, short fields) is
/// returned whole in one call with cursor 0, as Redis does, whatever the cursor.
pub fn hscan(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Some(cursor) = parse_cursor(args[2]) else {
        ctx.out.error("ERR invalid cursor");
        return;
    };
    let Ok(slot) = read_slot(ctx, args[1], Kind::Hash) else {
        return;
    };
    let Some(slot) = slot else {
        // Redis answers a missing key before it reads the options.
        reply_empty_scan(ctx);
        return;
    };
    let Some(o) = scan_options(ctx, args, Kind::Hash) else {
        return;
    };
    let hash = hash_in(&ctx.server.keyspace, ctx.client.db, slot);
    let mut found: Vec<(&[u8], &Box<[u8]>)> = Vec::new();
    let next = if hash.is_compact() {
        found.extend(hash.map().iter());
        0
    } else {
        hash.map().scan(cursor, o.count, |f, v| found.push((f, v)))
    };
    if let Some(pattern) = o.pattern {
        found.retain(|(field, _)| glob::matches(pattern, field, false));
    }
    let out = &mut *ctx.out;
    out.array(2);
    out.bulk(next.to_string().as_bytes());
    out.array(if o.no_values {
        found.len()
    } else {
        2 * found.len()
    });
    for (field, value) in found {
        out.bulk(field);
        if !o.no_values {
            out.bulk(value);
        }
    }
}

/// `HRANDFIELD key [count [WITHVALUES]]`.
///
/// Without a count, one random field (null for a missing key). With a positive count, that
/// many distinct fields (all of them if the hash is smaller); with a negative count, exactly
/// that many, drawn independently so a field may repeat. `WITHVALUES` pairs each field with
/// its value: a flat array in RESP2, an array of two-element arrays in RESP3.
pub fn hrandfield(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    if args.len() < 3 {
        let Ok(slot) = read_slot(ctx, args[1], Kind::Hash) else {
            return;
        };
        let Some(slot) = slot else {
            ctx.out.null();
            return;
        };
        let seed = ctx.ks().rng().next_u64();
        let mut rng = SplitMix64::new(seed);
        match hash_at(ctx, slot).map().random(&mut rng) {
            Some((field, _)) => {
                let field = field.to_vec();
                ctx.out.bulk(&field);
            }
            None => ctx.out.null(),
        }
        return;
    }
    let Some(count) = signed_count_arg(ctx, args[2]) else {
        return;
    };
    if args.len() > 4 || (args.len() == 4 && !args[3].eq_ignore_ascii_case(b"WITHVALUES")) {
        ctx.syntax_error();
        return;
    }
    let with_values = args.len() == 4;
    // Redis refuses counts whose doubled reply length would overflow a long.
    if with_values && !(-(i64::MAX / 2)..=i64::MAX / 2).contains(&count) {
        ctx.out.error("ERR value is out of range");
        return;
    }
    if count < 0 && count.unsigned_abs() > RANDOM_REPEATS_MAX {
        ctx.out.error("ERR value is out of range");
        return;
    }
    let Ok(slot) = read_slot(ctx, args[1], Kind::Hash) else {
        return;
    };
    let Some(slot) = slot else {
        ctx.out.array(0);
        return;
    };
    let seed = ctx.ks().rng().next_u64();
    let mut rng = SplitMix64::new(seed);
    let resp3 = ctx.client.resp >= 3;
    let db = ctx.db();
    let map = hash_in(&ctx.server.keyspace, db, slot).map();
    let out = &mut *ctx.out;
    let reply_pair = |out: &mut dyn Reply, field: &[u8], value: &[u8]| {
        if with_values && resp3 {
            out.array(2);
        }
        out.bulk(field);
        if with_values {
            out.bulk(value);
        }
    };
    let announce = |n: usize| if with_values && !resp3 { 2 * n } else { n };
    if count < 0 {
        let n = count.unsigned_abs() as usize;
        out.array(announce(n));
        for _ in 0..n {
            let (field, value) = map.random(&mut rng).expect("a stored hash is never empty");
            reply_pair(&mut *out, field, value);
        }
    } else {
        let n = (count as u64).min(map.len() as u64) as usize;
        out.array(announce(n));
        for (field, value) in map.sample_distinct(n, &mut rng) {
            reply_pair(&mut *out, field, value);
        }
    }
}
