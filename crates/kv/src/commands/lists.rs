//! List commands: pushes and pops at both ends, indexes and ranges, search, insertion,
//! removal, trimming, and moves between lists, replying as Redis 7.2 does (`t_list.c`).
//!
//! Lists are a `VecDeque`, so unlike Redis' quicklist an index is O(1): `LINDEX` and `LSET`
//! cost O(1), `LRANGE` O(start-independent m), pushes and pops O(1) amortized; `LINSERT`,
//! `LREM`, `LPOS` and `LTRIM` are O(n) as in Redis.
//!
//! A command that changes nothing (`LREM` without a match, `LSET` out of range, `LINSERT`
//! without its pivot) leaves the key's version alone, so a `WATCH` on it still holds, as on
//! Redis, which signals a modified key only when it modified one.

use super::{arity_error, index_range, positive_arg, range_arg, typed_slot};
use crate::command::Ctx;
use crate::keyspace::Slot;
use crate::value::{Kind, ListValue, Value};

/// An end of a list (Redis' `LEFT`/`RIGHT`, `LIST_HEAD`/`LIST_TAIL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Head,
    Tail,
}

fn list_of(value: &Value) -> &ListValue {
    match value {
        Value::List(l) => l,
        _ => unreachable!("the slot was looked up as a list"),
    }
}

fn list_mut(value: &mut Value) -> &mut ListValue {
    match value {
        Value::List(l) => l,
        _ => unreachable!("the slot was looked up as a list"),
    }
}

/// The list in `slot` of the selected database.
fn list<'a>(ctx: &'a Ctx<'_>, slot: Slot) -> &'a ListValue {
    list_of(ctx.server.keyspace.entry(ctx.client.db, slot).value())
}

fn push(list: &mut ListValue, end: End, item: &[u8]) {
    match end {
        End::Head => list.push_front(item),
        End::Tail => list.push_back(item),
    }
}

fn pop(list: &mut ListValue, end: End) -> Option<Box<[u8]>> {
    match end {
        End::Head => list.pop_front(),
        End::Tail => list.pop_back(),
    }
}

/// `LEFT` or `RIGHT`, else a syntax error.
fn end_arg(ctx: &mut Ctx<'_>, arg: &[u8]) -> Option<End> {
    if arg.eq_ignore_ascii_case(b"left") {
        Some(End::Head)
    } else if arg.eq_ignore_ascii_case(b"right") {
        Some(End::Tail)
    } else {
        ctx.syntax_error();
        None
    }
}

/// Pops up to `count` elements from `end` of the list in `slot` (deleting the key when it
/// empties).
fn pop_many(ctx: &mut Ctx<'_>, slot: Slot, end: End, count: usize) -> Vec<Box<[u8]>> {
    let db = ctx.db();
    ctx.ks().update(db, slot, |v| {
        let l = list_mut(v);
        let n = count.min(l.len());
        let popped = (0..n).filter_map(|_| pop(l, end)).collect();
        l.shrunk();
        popped
    })
}

fn reply_bulks(ctx: &mut Ctx<'_>, items: &[Box<[u8]>]) {
    ctx.out.array(items.len());
    for item in items {
        ctx.out.bulk(item);
    }
}

/// LPUSH, RPUSH, LPUSHX, RPUSHX: push every element in order; `existing_only` for the X forms.
fn push_generic(ctx: &mut Ctx<'_>, args: &[&[u8]], end: End, existing_only: bool) {
    let Ok(slot) = typed_slot(ctx, args[1], Kind::List) else {
        return;
    };
    let elements = &args[2..];
    let add_bytes = elements.iter().map(|e| e.len()).sum();
    let fill = |l: &mut ListValue| {
        l.will_grow(add_bytes);
        for element in elements {
            push(l, end, element);
        }
        l.len()
    };
    let (db, now) = (ctx.db(), ctx.now_ms);
    let len = match slot {
        Some(slot) => ctx.ks().update(db, slot, |v| fill(list_mut(v))),
        None if existing_only => 0,
        None => {
            let mut l = ListValue::default();
            let len = fill(&mut l);
            ctx.ks()
                .store(db, args[1], Value::List(Box::new(l)), false, now);
            len
        }
    };
    ctx.out.integer(len as i64);
}

/// `LPUSH key element [element ...]`.
pub fn lpush(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    push_generic(ctx, args, End::Head, false);
}
/// `RPUSH key element [element ...]`.
pub fn rpush(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    push_generic(ctx, args, End::Tail, false);
}
/// `LPUSHX key element [element ...]`: only onto an existing list.
pub fn lpushx(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    push_generic(ctx, args, End::Head, true);
}
/// `RPUSHX key element [element ...]`: only onto an existing list.
pub fn rpushx(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    push_generic(ctx, args, End::Tail, true);
}

/// LPOP, RPOP: one element as a bulk, or with a count an array (count 0: empty array; a
/// missing key with a count: the null array).
fn pop_generic(ctx: &mut Ctx<'_>, args: &[&[u8]], end: End) {
    if args.len() > 3 {
        arity_error(ctx, args);
        return;
    }
    let count = match args.get(2) {
        Some(arg) => match positive_arg(ctx, arg, None) {
            Some(n) => Some(n),
            None => return,
        },
        None => None,
    };
    let Ok(slot) = typed_slot(ctx, args[1], Kind::List) else {
        return;
    };
    let Some(slot) = slot else {
        if count.is_some() {
            ctx.out.null_array();
        } else {
            ctx.out.null();
        }
        return;
    };
    match count {
        Some(0) => ctx.out.array(0),
        Some(n) => {
            let popped = pop_many(ctx, slot, end, usize::try_from(n).unwrap_or(usize::MAX));
            reply_bulks(ctx, &popped);
        }
        None => {
            let popped = pop_many(ctx, slot, end, 1);
            match popped.first() {
                Some(item) => ctx.out.bulk(item),
                None => ctx.out.null(),
            }
        }
    }
}

/// `LPOP key [count]`.
pub fn lpop(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    pop_generic(ctx, args, End::Head);
}
/// `RPOP key [count]`.
pub fn rpop(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    pop_generic(ctx, args, End::Tail);
}

/// `LLEN key`.
pub fn llen(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    if let Ok(slot) = typed_slot(ctx, args[1], Kind::List) {
        let len = slot.map_or(0, |slot| list(ctx, slot).len());
        ctx.out.integer(len as i64);
    }
}

/// `LRANGE key start stop` (inclusive, negative from the end).
pub fn lrange(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Some(start) = ctx.int_arg(args[2]) else {
        return;
    };
    let Some(stop) = ctx.int_arg(args[3]) else {
        return;
    };
    let Ok(slot) = typed_slot(ctx, args[1], Kind::List) else {
        return;
    };
    let Some(slot) = slot else {
        ctx.out.array(0);
        return;
    };
    let l = list_of(ctx.server.keyspace.entry(ctx.client.db, slot).value());
    match index_range(start, stop, l.len()) {
        None => ctx.out.array(0),
        Some((first, last)) => {
            ctx.out.array(last - first + 1);
            for item in l.items().range(first..=last) {
                ctx.out.bulk(item);
            }
        }
    }
}

/// An index into `len` elements, negative from the end; `None` outside.
fn list_index(index: i64, len: usize) -> Option<usize> {
    let len = i64::try_from(len).unwrap_or(i64::MAX);
    let index = if index < 0 { len + index } else { index };
    (0..len).contains(&index).then_some(index as usize)
}

/// `LINDEX key index`.
pub fn lindex(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Ok(slot) = typed_slot(ctx, args[1], Kind::List) else {
        return;
    };
    let Some(slot) = slot else {
        ctx.out.null();
        return;
    };
    let Some(index) = ctx.int_arg(args[2]) else {
        return;
    };
    let l = list_of(ctx.server.keyspace.entry(ctx.client.db, slot).value());
    match list_index(index, l.len()).and_then(|i| l.get(i)) {
        Some(item) => ctx.out.bulk(item),
        None => ctx.out.null(),
    }
}

/// `LSET key index element`.
pub fn lset(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Ok(slot) = typed_slot(ctx, args[1], Kind::List) else {
        return;
    };
    let Some(slot) = slot else {
        ctx.out.error("ERR no such key");
        return;
    };
    let Some(index) = ctx.int_arg(args[2]) else {
        return;
    };
    let Some(index) = list_index(index, list(ctx, slot).len()) else {
        ctx.out.error("ERR index out of range");
        return;
    };
    let db = ctx.db();
    ctx.ks().update(db, slot, |v| {
        let l = list_mut(v);
        l.will_grow(args[3].len());
        l.set(index, args[3]);
        l.shrunk();
    });
    ctx.out.simple("OK");
}

/// `LINSERT key BEFORE|AFTER pivot element`: the new length, -1 without the pivot, 0 without
/// the key.
pub fn linsert(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let after = if args[2].eq_ignore_ascii_case(b"after") {
        true
    } else if args[2].eq_ignore_ascii_case(b"before") {
        false
    } else {
        ctx.syntax_error();
        return;
    };
    let Ok(slot) = typed_slot(ctx, args[1], Kind::List) else {
        return;
    };
    let Some(slot) = slot else {
        ctx.out.integer(0);
        return;
    };
    let pivot = list(ctx, slot).items().iter().position(|i| **i == *args[3]);
    let Some(pivot) = pivot else {
        ctx.out.integer(-1);
        return;
    };
    let db = ctx.db();
    let len = ctx.ks().update(db, slot, |v| {
        let l = list_mut(v);
        l.will_grow(args[4].len());
        l.insert(pivot + usize::from(after), args[4]);
        l.len()
    });
    ctx.out.integer(len as i64);
}

/// `LREM key count element`: count > 0 from the head, < 0 from the tail, 0 all.
pub fn lrem(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Some(count) = ctx.int_arg(args[2]) else {
        return;
    };
    let Ok(slot) = typed_slot(ctx, args[1], Kind::List) else {
        return;
    };
    let Some(slot) = slot else {
        ctx.out.integer(0);
        return;
    };
    let element = args[3];
    if !list(ctx, slot).items().iter().any(|i| **i == *element) {
        ctx.out.integer(0);
        return;
    }
    let limit = match count.unsigned_abs() {
        0 => usize::MAX,
        n => usize::try_from(n).unwrap_or(usize::MAX),
    };
    let db = ctx.db();
    let removed = ctx.ks().update(db, slot, |v| {
        let l = list_mut(v);
        let removed = l.remove_matching(element, limit, count < 0);
        l.shrunk();
        removed
    });
    ctx.out.integer(removed as i64);
}

/// `LTRIM key start stop`: keeps the inclusive range; an empty range deletes the key.
pub fn ltrim(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Some(start) = ctx.int_arg(args[2]) else {
        return;
    };
    let Some(stop) = ctx.int_arg(args[3]) else {
        return;
    };
    let Ok(slot) = typed_slot(ctx, args[1], Kind::List) else {
        return;
    };
    if let Some(slot) = slot {
        let (first, end) = match index_range(start, stop, list(ctx, slot).len()) {
            Some((first, last)) => (first, last + 1),
            None => (0, 0),
        };
        let db = ctx.db();
        ctx.ks().update(db, slot, |v| {
            let l = list_mut(v);
            l.retain_range(first, end);
            l.shrunk();
        });
    }
    ctx.out.simple("OK");
}

/// `LPOS key element [RANK rank] [COUNT num-matches] [MAXLEN len]`.
pub fn lpos(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let (mut rank, mut count, mut maxlen) = (1i64, None::<i64>, 0i64);
    let mut i = 3;
    while i < args.len() {
        let has_value = i + 1 < args.len();
        let opt = args[i];
        if opt.eq_ignore_ascii_case(b"rank") && has_value {
            i += 1;
            let Some(n) = range_arg(ctx, args[i], -i64::MAX, i64::MAX, None) else {
                return;
            };
            if n == 0 {
                ctx.out.error(
                    "ERR RANK can't be zero: use 1 to start from the first match, 2 from the \
                     second ... or use negative to start from the end of the list",
                );
                return;
            }
            rank = n;
        } else if opt.eq_ignore_ascii_case(b"count") && has_value {
            i += 1;
            let Some(n) = positive_arg(ctx, args[i], Some("COUNT can't be negative")) else {
                return;
            };
            count = Some(n);
        } else if opt.eq_ignore_ascii_case(b"maxlen") && has_value {
            i += 1;
            let Some(n) = positive_arg(ctx, args[i], Some("MAXLEN can't be negative")) else {
                return;
            };
            maxlen = n;
        } else {
            ctx.syntax_error();
            return;
        }
        i += 1;
    }
    let Ok(slot) = typed_slot(ctx, args[1], Kind::List) else {
        return;
    };
    let Some(slot) = slot else {
        if count.is_some() {
            ctx.out.array(0);
        } else {
            ctx.out.null();
        }
        return;
    };
    let l = list_of(ctx.server.keyspace.entry(ctx.client.db, slot).value());
    let element = args[2];
    let from_tail = rank < 0;
    let skip = rank.unsigned_abs() - 1;
    let scan = match usize::try_from(maxlen) {
        Ok(0) | Err(_) => l.len(),
        Ok(n) => n.min(l.len()),
    };
    let len = l.len();
    let indexes = (0..scan).map(|i| if from_tail { len - 1 - i } else { i });
    let mut matches = indexes
        .filter(|&i| l.get(i) == Some(element))
        .skip(usize::try_from(skip).unwrap_or(usize::MAX));
    match count {
        None => match matches.next() {
            Some(index) => ctx.out.integer(index as i64),
            None => ctx.out.null(),
        },
        Some(n) => {
            let limit = match usize::try_from(n) {
                Ok(0) | Err(_) => usize::MAX,
                Ok(n) => n,
            };
            let found: Vec<usize> = matches.take(limit).collect();
            ctx.out.array(found.len());
            for index in found {
                ctx.out.integer(index as i64);
            }
        }
    }
}

/// LMOVE and RPOPLPUSH: pops from `from` of the source, pushes onto `to` of the destination
/// (the same list rotates), replies the element; null without a source.
fn move_generic(ctx: &mut Ctx<'_>, source: &[u8], destination: &[u8], from: End, to: End) {
    let Ok(src) = typed_slot(ctx, source, Kind::List) else {
        return;
    };
    let Some(src) = src else {
        ctx.out.null();
        return;
    };
    let Ok(dst) = typed_slot(ctx, destination, Kind::List) else {
        return;
    };
    let (db, now) = (ctx.db(), ctx.now_ms);
    let item = if source == destination {
        ctx.ks().update(db, src, |v| {
            let l = list_mut(v);
            let item = pop(l, from)?;
            l.will_grow(item.len());
            push(l, to, &item);
            l.shrunk();
            Some(item)
        })
    } else {
        let item = pop_many(ctx, src, from, 1).pop();
        if let Some(item) = &item {
            let fill = |l: &mut ListValue| {
                l.will_grow(item.len());
                push(l, to, item);
            };
            match dst {
                Some(dst) => ctx.ks().update(db, dst, |v| fill(list_mut(v))),
                None => {
                    let mut l = ListValue::default();
                    fill(&mut l);
                    ctx.ks()
                        .store(db, destination, Value::List(Box::new(l)), false, now);
                }
            }
        }
        item
    };
    match item {
        Some(item) => ctx.out.bulk(&item),
        None => ctx.out.null(),
    }
}

/// `LMOVE source destination LEFT|RIGHT LEFT|RIGHT`.
pub fn lmove(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Some(from) = end_arg(ctx, args[3]) else {
        return;
    };
    let Some(to) = end_arg(ctx, args[4]) else {
        return;
    };
    move_generic(ctx, args[1], args[2], from, to);
}

/// `RPOPLPUSH source destination`.
pub fn rpoplpush(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    move_generic(ctx, args[1], args[2], End::Tail, End::Head);
}

/// `LMPOP numkeys key [key ...] LEFT|RIGHT [COUNT count]`: pops from the first non-empty
/// list; `[key, [elements]]`, or the null array when every list is empty.
pub fn lmpop(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Some(numkeys) = range_arg(
        ctx,
        args[1],
        1,
        i64::MAX,
        Some("numkeys should be greater than 0"),
    ) else {
        return;
    };
    // The direction follows the keys; a count past the arguments is a syntax error.
    let where_at = match usize::try_from(numkeys) {
        Ok(n) if n < args.len() - 2 => n + 2,
        _ => {
            ctx.syntax_error();
            return;
        }
    };
    let Some(end) = end_arg(ctx, args[where_at]) else {
        return;
    };
    let Some(count) = mpop_count(ctx, &args[where_at + 1..]) else {
        return;
    };
    for &key in &args[2..where_at] {
        let Ok(slot) = typed_slot(ctx, key, Kind::List) else {
            return;
        };
        let Some(slot) = slot else { continue };
        let popped = pop_many(ctx, slot, end, count);
        ctx.out.array(2);
        ctx.out.bulk(key);
        reply_bulks(ctx, &popped);
        return;
    }
    ctx.out.null_array();
}

/// The `[COUNT count]` tail of LMPOP and ZMPOP: 1 without it; `None` after replying an error.
pub(crate) fn mpop_count(ctx: &mut Ctx<'_>, rest: &[&[u8]]) -> Option<usize> {
    let mut count = None;
    let mut i = 0;
    while i < rest.len() {
        if count.is_none() && rest[i].eq_ignore_ascii_case(b"count") && i + 1 < rest.len() {
            i += 1;
            let n = range_arg(
                ctx,
                rest[i],
                1,
                i64::MAX,
                Some("count should be greater than 0"),
            )?;
            count = Some(usize::try_from(n).unwrap_or(usize::MAX));
        } else {
            ctx.syntax_error();
            return None;
        }
        i += 1;
    }
    Some(count.unwrap_or(1))
}
