//! Set commands: members of one set (`SADD`, `SREM`, `SISMEMBER`, ...), random picks and
//! pops, the algebra over several sets (`SINTER`, `SUNION`, `SDIFF`, their `STORE` forms and
//! `SINTERCARD`), `SMOVE` and `SSCAN`, with Redis 7.2's replies and error words.
//!
//! Replies that are sets in Redis (`SMEMBERS`, the algebra, `SPOP` with a count) go out as
//! RESP3 sets (RESP2 arrays); `SRANDMEMBER` with a count is an array, as in Redis, since it
//! may repeat members. A missing key is an empty set everywhere. The `STORE` forms overwrite
//! a destination of any type (dropping its TTL) and delete it when the result is empty.
//!
//! The algebra costs what Redis' does: an intersection walks the smallest set and probes the
//! others, a union or difference walks its inputs once; each probe is O(1).

use super::{
    parse_cursor, read_slot, reply_empty_scan, scan_options, signed_count_arg, write_slot,
    RANDOM_REPEATS_MAX,
};
use crate::command::Ctx;
use crate::glob;
use crate::keyspace::{Keyspace, Slot};
use crate::value::{Kind, SetValue, Value};
use melange_core::rng::SplitMix64;
use std::collections::HashSet;

/// The set in `slot` of `db` (the caller looked it up as a set in this command).
fn set_in(ks: &Keyspace, db: usize, slot: Slot) -> &SetValue {
    match ks.entry(db, slot).value() {
        Value::Set(s) => s,
        _ => unreachable!("read_slot/write_slot checked the type"),
    }
}

/// [`set_in`] the client's database.
fn set_at<'a>(ctx: &'a Ctx<'_>, slot: Slot) -> &'a SetValue {
    set_in(&ctx.server.keyspace, ctx.db(), slot)
}

/// Runs `change` on the set in `slot` (looked up as a set), or on a new set stored under
/// `key` when `slot` is `None`; an emptied set is deleted.
fn change_set<R>(
    ctx: &mut Ctx<'_>,
    key: &[u8],
    slot: Option<Slot>,
    change: impl FnOnce(&mut SetValue) -> R,
) -> R {
    let (db, now) = (ctx.db(), ctx.now_ms);
    match slot {
        Some(slot) => ctx.ks().update(db, slot, |v| match v {
            Value::Set(s) => change(s),
            _ => unreachable!("write_slot checked the type"),
        }),
        None => {
            let mut s = SetValue::default();
            let result = change(&mut s);
            if !s.is_empty() {
                ctx.ks().store(db, key, Value::Set(Box::new(s)), false, now);
            }
            result
        }
    }
}

/// A per-command random source, seeded from the keyspace's (so runs replay from its seed).
fn command_rng(ctx: &mut Ctx<'_>) -> SplitMix64 {
    let seed = ctx.ks().rng().next_u64();
    SplitMix64::new(seed)
}

/// `SADD key member [member ...]`: the number of members added.
pub fn sadd(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Ok(slot) = write_slot(ctx, args[1], Kind::Set) else {
        return;
    };
    let added = change_set(ctx, args[1], slot, |s| {
        args[2..].iter().filter(|m| s.insert(m)).count()
    });
    ctx.out.integer(added as i64);
}

/// `SREM key member [member ...]`: the number removed; the key goes with the last member.
pub fn srem(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Ok(slot) = write_slot(ctx, args[1], Kind::Set) else {
        return;
    };
    let Some(slot) = slot else {
        ctx.out.integer(0);
        return;
    };
    let removed = change_set(ctx, args[1], Some(slot), |s| {
        args[2..].iter().filter(|m| s.remove(m)).count()
    });
    ctx.out.integer(removed as i64);
}

/// `SMOVE source destination member`: 1 if the member moved (or was already in both, when
/// they are the same key), 0 if it was not in the source.
pub fn smove(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let (db, now) = (ctx.db(), ctx.now_ms);
    let (src_key, dst_key, member) = (args[1], args[2], args[3]);
    // Redis looks both keys up, then answers a missing source before any type check.
    let src = ctx.ks().get_typed_for_write(db, src_key, Kind::Set, now);
    let dst = ctx.ks().get_typed_for_write(db, dst_key, Kind::Set, now);
    let src = match src {
        Ok(None) => {
            ctx.out.integer(0);
            return;
        }
        Ok(Some(slot)) => slot,
        Err(_) => {
            ctx.wrong_type();
            return;
        }
    };
    let Ok(dst) = dst else {
        ctx.wrong_type();
        return;
    };
    if src_key == dst_key {
        let member_there = set_at(ctx, src).contains(member);
        ctx.out.integer(i64::from(member_there));
        return;
    }
    if !change_set(ctx, src_key, Some(src), |s| s.remove(member)) {
        ctx.out.integer(0);
        return;
    }
    // `dst` is another key's slot, untouched by the source's removal.
    change_set(ctx, dst_key, dst, |s| s.insert(member));
    ctx.out.integer(1);
}

/// `SISMEMBER key member`: 1 or 0.
pub fn sismember(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    if let Ok(slot) = read_slot(ctx, args[1], Kind::Set) {
        let found = slot.is_some_and(|s| set_at(ctx, s).contains(args[2]));
        ctx.out.integer(i64::from(found));
    }
}

/// `SMISMEMBER key member [member ...]`: 1 or 0 per member (all 0 for a missing key).
pub fn smismember(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Ok(slot) = read_slot(ctx, args[1], Kind::Set) else {
        return;
    };
    let set = slot.map(|s| set_in(&ctx.server.keyspace, ctx.client.db, s));
    ctx.out.array(args.len() - 2);
    for member in &args[2..] {
        let found = set.is_some_and(|s| s.contains(member));
        ctx.out.integer(i64::from(found));
    }
}

/// `SCARD key`: the number of members.
pub fn scard(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    if let Ok(slot) = read_slot(ctx, args[1], Kind::Set) {
        let len = slot.map_or(0, |s| set_at(ctx, s).len());
        ctx.out.integer(len as i64);
    }
}

/// `SMEMBERS key`: every member, as a set.
pub fn smembers(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Ok(slot) = read_slot(ctx, args[1], Kind::Set) else {
        return;
    };
    let set = slot.map(|s| set_in(&ctx.server.keyspace, ctx.client.db, s));
    ctx.out.set(set.map_or(0, SetValue::len));
    for (member, ()) in set.into_iter().flat_map(|s| s.members().iter()) {
        ctx.out.bulk(member);
    }
}

/// `SPOP key [count]`: removes and replies one random member (null for a missing key), or
/// `count` distinct ones as a set; the key goes with the last member.
pub fn spop(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    if args.len() > 3 {
        ctx.syntax_error();
        return;
    }
    let count = match args.get(2) {
        None => None,
        // Redis words a bad count, negative or not a number, the same way.
        Some(arg) => match crate::number::parse_i64(arg) {
            Some(n) if n >= 0 => Some(n as u64),
            _ => {
                ctx.out.error("ERR value is out of range, must be positive");
                return;
            }
        },
    };
    let Ok(slot) = write_slot(ctx, args[1], Kind::Set) else {
        return;
    };
    let Some(slot) = slot else {
        match count {
            None => ctx.out.null(),
            Some(_) => ctx.out.set(0),
        }
        return;
    };
    let mut rng = command_rng(ctx);
    let db = ctx.db();
    let Some(count) = count else {
        let popped = change_set(ctx, args[1], Some(slot), |s| s.pop_random(&mut rng));
        match popped {
            Some(member) => ctx.out.bulk(&member),
            None => ctx.out.null(),
        }
        return;
    };
    let len = set_at(ctx, slot).len() as u64;
    if count == 0 {
        ctx.out.set(0);
    } else if count >= len {
        // Everything: reply the whole set and drop the key.
        let set = set_in(&ctx.server.keyspace, db, slot);
        ctx.out.set(set.len());
        for (member, ()) in set.members().iter() {
            ctx.out.bulk(member);
        }
        ctx.ks().remove_slot(db, slot);
    } else {
        let popped: Vec<Box<[u8]>> = change_set(ctx, args[1], Some(slot), |s| {
            (0..count).filter_map(|_| s.pop_random(&mut rng)).collect()
        });
        ctx.out.set(popped.len());
        for member in &popped {
            ctx.out.bulk(member);
        }
    }
}

/// `SRANDMEMBER key [count]`: one random member (null for a missing key); with a positive
/// count that many distinct members (all if the set is smaller), with a negative count
/// exactly that many drawn independently (repeats allowed). Always an array with a count.
pub fn srandmember(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    if args.len() > 3 {
        ctx.syntax_error();
        return;
    }
    let count = match args.get(2) {
        None => None,
        Some(arg) => match signed_count_arg(ctx, arg) {
            Some(n) => Some(n),
            None => return,
        },
    };
    if count.is_some_and(|n| n < 0 && n.unsigned_abs() > RANDOM_REPEATS_MAX) {
        ctx.out.error("ERR value is out of range");
        return;
    }
    let Ok(slot) = read_slot(ctx, args[1], Kind::Set) else {
        return;
    };
    let Some(slot) = slot else {
        match count {
            None => ctx.out.null(),
            Some(_) => ctx.out.array(0),
        }
        return;
    };
    let mut rng = command_rng(ctx);
    let set = set_in(&ctx.server.keyspace, ctx.client.db, slot).members();
    let out = &mut *ctx.out;
    match count {
        None => match set.random(&mut rng) {
            Some((member, ())) => out.bulk(member),
            None => out.null(),
        },
        Some(n) if n < 0 => {
            let n = n.unsigned_abs() as usize;
            out.array(n);
            for _ in 0..n {
                let (member, ()) = set.random(&mut rng).expect("a stored set is never empty");
                out.bulk(member);
            }
        }
        Some(n) => {
            let n = (n as u64).min(set.len() as u64) as usize;
            out.array(n);
            for (member, ()) in set.sample_distinct(n, &mut rng) {
                out.bulk(member);
            }
        }
    }
}

/// An operation over several sets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SetOp {
    Inter,
    Union,
    Diff,
}

/// Looks every key up as a set (counting hits and misses, as Redis' `lookupKeyRead`): a slot
/// or `None` per key, or `Err(())` after replying `WRONGTYPE` for the first key of another
/// type (every key is checked, even after a missing one, as Redis 7 does).
fn lookup_sets(ctx: &mut Ctx<'_>, keys: &[&[u8]]) -> Result<Vec<Option<Slot>>, ()> {
    keys.iter()
        .map(|key| read_slot(ctx, key, Kind::Set))
        .collect()
}

/// The members of `op` over `sets` (`None` for a missing key), at most `limit` of them for an
/// intersection (0: no limit). `keys` names the sets, for `SDIFF`'s "a key minus itself".
fn combine<'a>(
    sets: &[Option<&'a SetValue>],
    keys: &[&[u8]],
    op: SetOp,
    limit: usize,
) -> Vec<&'a [u8]> {
    match op {
        SetOp::Inter => {
            let Some(mut present) = sets.iter().copied().collect::<Option<Vec<_>>>() else {
                return Vec::new(); // An intersection with an empty set.
            };
            present.sort_by_key(|s| s.len());
            let Some((smallest, others)) = present.split_first() else {
                return Vec::new();
            };
            let mut found = Vec::new();
            for (member, ()) in smallest.members().iter() {
                if others.iter().all(|s| s.contains(member)) {
                    found.push(member);
                    if limit != 0 && found.len() >= limit {
                        break;
                    }
                }
            }
            found
        }
        SetOp::Union => {
            let mut seen: HashSet<&[u8]> = HashSet::new();
            let mut found = Vec::new();
            for set in sets.iter().flatten() {
                for (member, ()) in set.members().iter() {
                    if seen.insert(member) {
                        found.push(member);
                    }
                }
            }
            found
        }
        SetOp::Diff => {
            let Some(first) = sets.first().copied().flatten() else {
                return Vec::new();
            };
            // The first key named again subtracts all of it.
            if keys[1..].contains(&keys[0]) {
                return Vec::new();
            }
            let others: Vec<&SetValue> = sets[1..].iter().flatten().copied().collect();
            first
                .members()
                .iter()
                .map(|(member, ())| member)
                .filter(|member| !others.iter().any(|s| s.contains(member)))
                .collect()
        }
    }
}

/// `SINTER`/`SUNION`/`SDIFF key [key ...]`: the result as a set.
fn algebra(ctx: &mut Ctx<'_>, keys: &[&[u8]], op: SetOp) {
    let Ok(slots) = lookup_sets(ctx, keys) else {
        return;
    };
    let (ks, db) = (&ctx.server.keyspace, ctx.client.db);
    let sets: Vec<Option<&SetValue>> = slots.iter().map(|s| s.map(|s| set_in(ks, db, s))).collect();
    let found = combine(&sets, keys, op, 0);
    ctx.out.set(found.len());
    for member in found {
        ctx.out.bulk(member);
    }
}

/// `SINTERSTORE`/`SUNIONSTORE`/`SDIFFSTORE destination key [key ...]`: stores the result
/// (deleting the destination if it is empty) and replies its size.
fn algebra_store(ctx: &mut Ctx<'_>, args: &[&[u8]], op: SetOp) {
    let (dst, keys) = (args[1], &args[2..]);
    let Ok(slots) = lookup_sets(ctx, keys) else {
        return;
    };
    let (ks, db) = (&ctx.server.keyspace, ctx.client.db);
    let sets: Vec<Option<&SetValue>> = slots.iter().map(|s| s.map(|s| set_in(ks, db, s))).collect();
    let mut result = SetValue::default();
    for member in combine(&sets, keys, op, 0) {
        result.insert(member);
    }
    let len = result.len();
    let now = ctx.now_ms;
    if result.is_empty() {
        ctx.ks().remove(db, dst, now);
    } else {
        ctx.ks()
            .store(db, dst, Value::Set(Box::new(result)), false, now);
    }
    ctx.out.integer(len as i64);
}

/// `SINTER key [key ...]`.
pub fn sinter(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    algebra(ctx, &args[1..], SetOp::Inter);
}

/// `SUNION key [key ...]`.
pub fn sunion(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    algebra(ctx, &args[1..], SetOp::Union);
}

/// `SDIFF key [key ...]`: the members of the first set in none of the others.
pub fn sdiff(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    algebra(ctx, &args[1..], SetOp::Diff);
}

/// `SINTERSTORE destination key [key ...]`.
pub fn sinterstore(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    algebra_store(ctx, args, SetOp::Inter);
}

/// `SUNIONSTORE destination key [key ...]`.
pub fn sunionstore(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    algebra_store(ctx, args, SetOp::Union);
}

/// `SDIFFSTORE destination key [key ...]`.
pub fn sdiffstore(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    algebra_store(ctx, args, SetOp::Diff);
}

/// `SINTERCARD numkeys key [key ...] [LIMIT limit]`: the size of the intersection, counting
/// stopped at `limit` (0: no limit).
pub fn sintercard(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let numkeys = match crate::number::parse_i64(args[1]) {
        Some(n) if n >= 1 => n,
        _ => {
            ctx.out.error("ERR numkeys should be greater than 0");
            return;
        }
    };
    if numkeys > args.len() as i64 - 2 {
        ctx.out
            .error("ERR Number of keys can't be greater than number of args");
        return;
    }
    let keys_end = 2 + numkeys as usize;
    let mut limit = 0usize;
    let mut i = keys_end;
    while i < args.len() {
        if args[i].eq_ignore_ascii_case(b"LIMIT") && i + 1 < args.len() {
            match crate::number::parse_i64(args[i + 1]) {
                Some(n) if n >= 0 => limit = usize::try_from(n).unwrap_or(usize::MAX),
                // A limit that is not a number gets the same words as a negative one.
                _ => {
                    ctx.out.error("ERR LIMIT can't be negative");
                    return;
                }
            }
            i += 2;
        } else {
            ctx.syntax_error();
            return;
        }
    }
    let keys = &args[2..keys_end];
    let Ok(slots) = lookup_sets(ctx, keys) else {
        return;
    };
    let (ks, db) = (&ctx.server.keyspace, ctx.client.db);
    let sets: Vec<Option<&SetValue>> = slots.iter().map(|s| s.map(|s| set_in(ks, db, s))).collect();
    let n = combine(&sets, keys, SetOp::Inter, limit).len();
    ctx.out.integer(n as i64);
}

/// `SSCAN key cursor [MATCH pattern] [COUNT count]`.
///
/// The cursor is a slab index of the set ([`crate::slabmap`]): every member present for the
/// whole scan is returned. A set Redis would hold as an intset or listpack is returned whole
/// in one call with cursor 0, as Redis does, whatever the cursor.
pub fn sscan(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Some(cursor) = parse_cursor(args[2]) else {
        ctx.out.error("ERR invalid cursor");
        return;
    };
    let Ok(slot) = read_slot(ctx, args[1], Kind::Set) else {
        return;
    };
    let Some(slot) = slot else {
        // Redis answers a missing key before it reads the options.
        reply_empty_scan(ctx);
        return;
    };
    let Some(o) = scan_options(ctx, args, Kind::Set) else {
        return;
    };
    let set = set_in(&ctx.server.keyspace, ctx.client.db, slot);
    let mut found: Vec<&[u8]> = Vec::new();
    let next = if set.is_compact() {
        found.extend(set.members().iter().map(|(m, ())| m));
        0
    } else {
        set.members().scan(cursor, o.count, |m, ()| found.push(m))
    };
    if let Some(pattern) = o.pattern {
        found.retain(|member| glob::matches(pattern, member, false));
    }
    let out = &mut *ctx.out;
    out.array(2);
    out.bulk(next.to_string().as_bytes());
    out.array(found.len());
    for member in found {
        out.bulk(member);
    }
}
