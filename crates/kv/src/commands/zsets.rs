//! Sorted-set commands, replying as Redis 7.2 does (`t_zset.c`): additions with their
//! conditions, scores and ranks, ranges by rank, score and lex (and their `REV`, `LIMIT` and
//! `WITHSCORES` forms), counts, pops, range removals, `ZSCAN`, `ZRANDMEMBER`, `ZRANGESTORE`
//! and `ZMPOP`.
//!
//! Costs, with n members and m in the reply or the change ([`crate::zset`] has the
//! structure): `ZSCORE`, `ZMSCORE` (each), `ZCARD` O(1); `ZADD`, `ZINCRBY`, `ZREM` (each),
//! `ZRANK`, `ZREVRANK`, `ZCOUNT`, `ZLEXCOUNT` O(log n); `ZRANGE` in every form, `ZPOPMIN`,
//! `ZPOPMAX`, `ZREMRANGEBY*`, `ZRANGESTORE` O(log n + m); `ZSCAN` O(COUNT); `ZRANDMEMBER`
//! O(m log n), or O(n) for a unique sample of more than a third of the set.
//!
//! Replies differ by protocol where Redis' do: with scores, RESP2 gets a flat array of
//! members and scores (scores as bulk strings, the encoder's downgrade of a double), RESP3 an
//! array of `[member, score]` pairs. A command that changes nothing (`ZADD XX` of absent
//! members, `ZREM` of absent ones, an empty range removal) leaves the key's version alone,
//! as Redis signals a modified key only when it modified it.

use super::lists::mpop_count;
use super::{index_range, positive_arg, range_arg, typed_slot};
use crate::command::Ctx;
use crate::keyspace::Slot;
use crate::number::{format_f64, format_f64_17g, parse_double, parse_strtod};
use crate::reply::Reply;
use crate::value::{Kind, Value, ZSetValue};
use melange_core::rng::SplitMix64;

/// Most elements `ZRANDMEMBER` with a negative count replies: Redis has no bound (a client
/// asking for 2^62 repeated members fills memory until its output buffer limit closes it);
/// here a larger count is refused with Redis' "value is out of range".
pub const RANDOM_MEMBERS_MAX: u64 = 1 << 20;

const NAN_ERROR: &str = "ERR resulting score is not a number (NaN)";
const NOT_FLOAT: &str = "ERR value is not a valid float";
const RANGE_NOT_FLOAT: &str = "ERR min or max is not a float";
const RANGE_NOT_LEX: &str = "ERR min or max not valid string range item";

fn zset_of(value: &Value) -> &ZSetValue {
    match value {
        Value::ZSet(z) => z,
        _ => unreachable!("the slot was looked up as a sorted set"),
    }
}

fn zset_mut(value: &mut Value) -> &mut ZSetValue {
    match value {
        Value::ZSet(z) => z,
        _ => unreachable!("the slot was looked up as a sorted set"),
    }
}

/// The sorted set in `slot` of the selected database.
fn zset<'a>(ctx: &'a Ctx<'_>, slot: Slot) -> &'a ZSetValue {
    zset_of(ctx.server.keyspace.entry(ctx.client.db, slot).value())
}

/// A new empty sorted set, its tree seeded from the keyspace's random source.
fn new_zset(ctx: &mut Ctx<'_>) -> ZSetValue {
    let seed = ctx.ks().rng().next_u64();
    ZSetValue::new(seed)
}

/// A score range: `1.5`, `(1.5` (exclusive), `-inf`, `+inf`, read as Redis' `strtod`.
#[derive(Debug, Clone, Copy)]
struct ScoreRange {
    min: f64,
    min_exclusive: bool,
    max: f64,
    max_exclusive: bool,
}

fn score_bound(arg: &[u8]) -> Option<(f64, bool)> {
    match arg.strip_prefix(b"(") {
        Some(rest) => Some((parse_strtod(rest)?, true)),
        None => Some((parse_strtod(arg)?, false)),
    }
}

impl ScoreRange {
    fn parse(min: &[u8], max: &[u8]) -> Option<Self> {
        let (min, min_exclusive) = score_bound(min)?;
        let (max, max_exclusive) = score_bound(max)?;
        Some(Self {
            min,
            min_exclusive,
            max,
            max_exclusive,
        })
    }
    fn above_min(&self, score: f64) -> bool {
        if self.min_exclusive {
            score > self.min
        } else {
            score >= self.min
        }
    }
    fn below_max(&self, score: f64) -> bool {
        if self.max_exclusive {
            score < self.max
        } else {
            score <= self.max
        }
    }
    /// The ascending ranks in range, as `start..end`.
    fn span(&self, z: &ZSetValue) -> (usize, usize) {
        let start = z.count_before(|_, s| !self.above_min(s));
        let end = z.count_before(|_, s| self.below_max(s));
        (start, end.max(start))
    }
}

/// A lex bound: `-` and `+` (below and above every string), `[a` inclusive, `(a` exclusive.
#[derive(Debug, Clone, Copy)]
enum LexBound<'a> {
    Min,
    Max,
    Inclusive(&'a [u8]),
    Exclusive(&'a [u8]),
}

fn lex_bound(arg: &[u8]) -> Option<LexBound<'_>> {
    // Redis reads `-` and `+` as C strings: nothing may follow but a NUL.
    let alone = arg.len() == 1 || arg.get(1) == Some(&0);
    match arg.first()? {
        b'+' if alone => Some(LexBound::Max),
        b'-' if alone => Some(LexBound::Min),
        b'(' => Some(LexBound::Exclusive(&arg[1..])),
        b'[' => Some(LexBound::Inclusive(&arg[1..])),
        _ => None,
    }
}

/// A lex range; meaningful when every member has the same score (Redis' condition), and
/// otherwise answered by the tree's descent, as Redis answers it by its skiplist's.
#[derive(Debug, Clone, Copy)]
struct LexRange<'a> {
    min: LexBound<'a>,
    max: LexBound<'a>,
}

impl<'a> LexRange<'a> {
    fn parse(min: &'a [u8], max: &'a [u8]) -> Option<Self> {
        Some(Self {
            min: lex_bound(min)?,
            max: lex_bound(max)?,
        })
    }
    fn above_min(&self, member: &[u8]) -> bool {
        match self.min {
            LexBound::Min => true,
            LexBound::Max => false,
            LexBound::Inclusive(s) => member >= s,
            LexBound::Exclusive(s) => member > s,
        }
    }
    fn below_max(&self, member: &[u8]) -> bool {
        match self.max {
            LexBound::Min => false,
            LexBound::Max => true,
            LexBound::Inclusive(s) => member <= s,
            LexBound::Exclusive(s) => member < s,
        }
    }
    fn span(&self, z: &ZSetValue) -> (usize, usize) {
        let start = z.count_before(|m, _| !self.above_min(m));
        let end = z.count_before(|m, _| self.below_max(m));
        (start, end.max(start))
    }
}

/// Replies `n` entries of `entries`: members alone, or with scores flat (RESP2) or in pairs
/// (RESP3).
fn reply_entries<'a>(
    out: &mut dyn Reply,
    resp: u8,
    withscores: bool,
    n: usize,
    entries: impl Iterator<Item = (&'a [u8], f64)>,
) {
    let pairs = withscores && resp > 2;
    out.array(if withscores && !pairs { 2 * n } else { n });
    for (member, score) in entries.take(n) {
        if pairs {
            out.array(2);
        }
        out.bulk(member);
        if withscores {
            out.double(score);
        }
    }
}

/// What ZADD's options asked for.
#[derive(Debug, Clone, Copy, Default)]
struct AddFlags {
    nx: bool,
    xx: bool,
    gt: bool,
    lt: bool,
    ch: bool,
    incr: bool,
}

/// What one score-member pair did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Added,
    Updated,
    /// Processed, score unchanged.
    Same,
    /// Not processed (NX, XX, GT, LT).
    Skipped,
}

/// Redis' `zsetAdd` decision for `member` at `current` (its score, if present): the outcome
/// and the resulting score; `Err` when an increment makes NaN.
fn plan(current: Option<f64>, score: f64, f: &AddFlags) -> Result<(Outcome, f64), ()> {
    match current {
        Some(current) => {
            if f.nx {
                return Ok((Outcome::Skipped, current));
            }
            let new = if f.incr { current + score } else { score };
            if new.is_nan() {
                return Err(());
            }
            if (f.lt && new >= current) || (f.gt && new <= current) {
                return Ok((Outcome::Skipped, current));
            }
            let outcome = if new != current {
                Outcome::Updated
            } else {
                Outcome::Same
            };
            Ok((outcome, new))
        }
        None if f.xx => Ok((Outcome::Skipped, score)),
        None => Ok((Outcome::Added, score)),
    }
}

/// The tally of a ZADD.
#[derive(Debug, Default)]
struct Tally {
    added: i64,
    updated: i64,
    processed: i64,
    score: f64,
    nan: bool,
    /// Some pair changed the set (or, in a dry run, would).
    changes: bool,
}

/// Runs the pairs against `z` in order (a NaN stops the run, keeping what came before, as
/// in Redis).
fn run_pairs(z: &mut ZSetValue, pairs: &[(f64, &[u8])], f: &AddFlags) -> Tally {
    let mut tally = Tally::default();
    for &(score, member) in pairs {
        match plan(z.score(member), score, f) {
            Err(()) => {
                tally.nan = true;
                break;
            }
            Ok((outcome, new)) => {
                if matches!(outcome, Outcome::Added | Outcome::Updated) {
                    tally.changes = true;
                    z.insert(member, new);
                    if outcome == Outcome::Added {
                        tally.added += 1;
                    } else {
                        tally.updated += 1;
                    }
                }
                if outcome != Outcome::Skipped {
                    tally.processed += 1;
                    tally.score = new;
                }
            }
        }
    }
    tally
}

/// ZADD and ZINCRBY (which is ZADD INCR, options parsing included, as in Redis).
fn zadd_generic(ctx: &mut Ctx<'_>, args: &[&[u8]], incr: bool) {
    let mut f = AddFlags {
        incr,
        ..AddFlags::default()
    };
    let mut at = 2;
    while at < args.len() {
        let opt = args[at];
        let flag = [
            (&b"nx"[..], &mut f.nx),
            (b"xx", &mut f.xx),
            (b"ch", &mut f.ch),
            (b"incr", &mut f.incr),
            (b"gt", &mut f.gt),
            (b"lt", &mut f.lt),
        ]
        .into_iter()
        .find(|(name, _)| opt.eq_ignore_ascii_case(name));
        match flag {
            Some((_, set)) => *set = true,
            None => break,
        }
        at += 1;
    }
    let rest = &args[at..];
    if rest.is_empty() || !rest.len().is_multiple_of(2) {
        ctx.syntax_error();
        return;
    }
    if f.nx && f.xx {
        ctx.out
            .error("ERR XX and NX options at the same time are not compatible");
        return;
    }
    if ((f.gt || f.lt) && f.nx) || (f.gt && f.lt) {
        ctx.out
            .error("ERR GT, LT, and/or NX options at the same time are not compatible");
        return;
    }
    if f.incr && rest.len() > 2 {
        ctx.out
            .error("ERR INCR option supports a single increment-element pair");
        return;
    }
    let mut pairs = Vec::with_capacity(rest.len() / 2);
    for pair in rest.chunks_exact(2) {
        let Some(score) = parse_double(pair[0]) else {
            ctx.out.error(NOT_FLOAT);
            return;
        };
        pairs.push((score, pair[1]));
    }
    let Ok(slot) = typed_slot(ctx, args[1], Kind::ZSet) else {
        return;
    };
    let (db, now) = (ctx.db(), ctx.now_ms);
    let tally = match slot {
        None if f.xx => Tally::default(),
        None => {
            let mut z = new_zset(ctx);
            z.hint_batch(pairs.len());
            let tally = run_pairs(&mut z, &pairs, &f);
            if !z.is_empty() {
                ctx.ks()
                    .store(db, args[1], Value::ZSet(Box::new(z)), false, now);
            }
            tally
        }
        Some(slot) => {
            // Read first: only a command that changes the set may stamp a new version.
            let dry = dry_run(zset(ctx, slot), &pairs, &f);
            if dry.changes {
                ctx.ks().update(db, slot, |v| {
                    let z = zset_mut(v);
                    z.hint_batch(pairs.len());
                    run_pairs(z, &pairs, &f)
                })
            } else {
                dry
            }
        }
    };
    if tally.nan {
        ctx.out.error(NAN_ERROR);
    } else if f.incr {
        if tally.processed > 0 {
            ctx.out.double(tally.score);
        } else {
            ctx.out.null();
        }
    } else {
        let n = if f.ch {
            tally.added + tally.updated
        } else {
            tally.added
        };
        ctx.out.integer(n);
    }
}

/// [`run_pairs`] without changing anything: it stops at the first pair that would change the
/// set, and until there it is exact, since nothing before changed it.
fn dry_run(z: &ZSetValue, pairs: &[(f64, &[u8])], f: &AddFlags) -> Tally {
    let mut tally = Tally::default();
    for &(score, member) in pairs {
        match plan(z.score(member), score, f) {
            Err(()) => {
                tally.nan = true;
                break;
            }
            Ok((Outcome::Added | Outcome::Updated, _)) => {
                tally.changes = true;
                break;
            }
            Ok((Outcome::Same, new)) => {
                tally.processed += 1;
                tally.score = new;
            }
            Ok((Outcome::Skipped, _)) => {}
        }
    }
    tally
}

/// `ZADD key [NX|XX] [GT|LT] [CH] [INCR] score member [score member ...]`.
pub fn zadd(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    zadd_generic(ctx, args, false);
}

/// `ZINCRBY key increment member`.
pub fn zincrby(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    zadd_generic(ctx, args, true);
}

/// `ZREM key member [member ...]`.
pub fn zrem(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Ok(slot) = typed_slot(ctx, args[1], Kind::ZSet) else {
        return;
    };
    let Some(slot) = slot else {
        ctx.out.integer(0);
        return;
    };
    let members = &args[2..];
    if !members.iter().any(|m| zset(ctx, slot).score(m).is_some()) {
        ctx.out.integer(0);
        return;
    }
    let db = ctx.db();
    let removed = ctx.ks().update(db, slot, |v| {
        let z = zset_mut(v);
        members.iter().filter(|m| z.remove(m)).count()
    });
    ctx.out.integer(removed as i64);
}

/// `ZCARD key`.
pub fn zcard(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    if let Ok(slot) = typed_slot(ctx, args[1], Kind::ZSet) {
        let len = slot.map_or(0, |slot| zset(ctx, slot).len());
        ctx.out.integer(len as i64);
    }
}

/// `ZSCORE key member`.
pub fn zscore(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Ok(slot) = typed_slot(ctx, args[1], Kind::ZSet) else {
        return;
    };
    match slot.and_then(|slot| zset(ctx, slot).score(args[2])) {
        Some(score) => ctx.out.double(score),
        None => ctx.out.null(),
    }
}

/// `ZMSCORE key member [member ...]`: a score or null each (all null without the key).
pub fn zmscore(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Ok(slot) = typed_slot(ctx, args[1], Kind::ZSet) else {
        return;
    };
    ctx.out.array(args.len() - 2);
    for member in &args[2..] {
        match slot.and_then(|slot| zset(ctx, slot).score(member)) {
            Some(score) => ctx.out.double(score),
            None => ctx.out.null(),
        }
    }
}

/// ZRANK and ZREVRANK.
fn rank_generic(ctx: &mut Ctx<'_>, args: &[&[u8]], reverse: bool) {
    if args.len() > 4 {
        super::arity_error(ctx, args);
        return;
    }
    let withscore = match args.get(3) {
        Some(opt) if opt.eq_ignore_ascii_case(b"withscore") => true,
        Some(_) => {
            ctx.syntax_error();
            return;
        }
        None => false,
    };
    let Ok(slot) = typed_slot(ctx, args[1], Kind::ZSet) else {
        return;
    };
    let found = slot.and_then(|slot| {
        let z = zset(ctx, slot);
        let rank = z.rank(args[2])?;
        let score = z.score(args[2])?;
        Some((if reverse { z.len() - 1 - rank } else { rank }, score))
    });
    match (found, withscore) {
        (Some((rank, score)), true) => {
            ctx.out.array(2);
            ctx.out.integer(rank as i64);
            ctx.out.double(score);
        }
        (Some((rank, _)), false) => ctx.out.integer(rank as i64),
        (None, true) => ctx.out.null_array(),
        (None, false) => ctx.out.null(),
    }
}

/// `ZRANK key member [WITHSCORE]`.
pub fn zrank(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    rank_generic(ctx, args, false);
}

/// `ZREVRANK key member [WITHSCORE]`.
pub fn zrevrank(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    rank_generic(ctx, args, true);
}

/// How a range names its elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum By {
    Rank,
    Score,
    Lex,
}

/// A range, parsed.
enum Bounds<'a> {
    Rank(i64, i64),
    Score(ScoreRange),
    Lex(LexRange<'a>),
}

/// ZRANGE and its older forms, and ZRANGESTORE (`store`: `args[1]` is the destination):
/// `<src> <min> <max> [BYSCORE|BYLEX] [REV] [WITHSCORES] [LIMIT offset count]` from
/// `key_at`. A fixed `by` or `reverse` (the older commands) makes that word a syntax error,
/// as in Redis.
fn range_generic(
    ctx: &mut Ctx<'_>,
    args: &[&[u8]],
    key_at: usize,
    store: bool,
    mut by: Option<By>,
    mut reverse: Option<bool>,
) {
    let (mut withscores, mut offset, mut limit) = (false, 0i64, -1i64);
    let mut j = key_at + 3;
    while j < args.len() {
        let (opt, left) = (args[j], args.len() - j - 1);
        if !store && opt.eq_ignore_ascii_case(b"withscores") {
            withscores = true;
        } else if opt.eq_ignore_ascii_case(b"limit") && left >= 2 {
            let Some(o) = ctx.int_arg(args[j + 1]) else {
                return;
            };
            let Some(l) = ctx.int_arg(args[j + 2]) else {
                return;
            };
            (offset, limit) = (o, l);
            j += 2;
        } else if reverse.is_none() && opt.eq_ignore_ascii_case(b"rev") {
            reverse = Some(true);
        } else if by.is_none() && opt.eq_ignore_ascii_case(b"bylex") {
            by = Some(By::Lex);
        } else if by.is_none() && opt.eq_ignore_ascii_case(b"byscore") {
            by = Some(By::Score);
        } else {
            ctx.syntax_error();
            return;
        }
        j += 1;
    }
    let (by, reverse) = (by.unwrap_or(By::Rank), reverse.unwrap_or(false));
    if limit != -1 && by == By::Rank {
        ctx.out.error(
            "ERR syntax error, LIMIT is only supported in combination with either BYSCORE or \
             BYLEX",
        );
        return;
    }
    if withscores && by == By::Lex {
        ctx.out
            .error("ERR syntax error, WITHSCORES not supported in combination with BYLEX");
        return;
    }
    // Score and lex ranges are given as max, min when reversed.
    let (mut lo, mut hi) = (args[key_at + 1], args[key_at + 2]);
    if reverse && by != By::Rank {
        std::mem::swap(&mut lo, &mut hi);
    }
    let bounds = match by {
        By::Rank => {
            let Some(start) = ctx.int_arg(lo) else {
                return;
            };
            let Some(stop) = ctx.int_arg(hi) else {
                return;
            };
            Bounds::Rank(start, stop)
        }
        By::Score => match ScoreRange::parse(lo, hi) {
            Some(range) => Bounds::Score(range),
            None => {
                ctx.out.error(RANGE_NOT_FLOAT);
                return;
            }
        },
        By::Lex => match LexRange::parse(lo, hi) {
            Some(range) => Bounds::Lex(range),
            None => {
                ctx.out.error(RANGE_NOT_LEX);
                return;
            }
        },
    };
    let (db, now) = (ctx.db(), ctx.now_ms);
    let Ok(slot) = typed_slot(ctx, args[key_at], Kind::ZSet) else {
        return;
    };
    let Some(slot) = slot else {
        if store {
            ctx.ks().remove(db, args[1], now);
            ctx.out.integer(0);
        } else {
            ctx.out.array(0);
        }
        return;
    };
    // The selection: `n` elements from ascending rank `first`, walking down when reversed.
    let z = zset(ctx, slot);
    let len = z.len();
    let (first, n) = match bounds {
        Bounds::Rank(start, stop) => match index_range(start, stop, len) {
            None => (0, 0),
            Some((s, e)) => (if reverse { len - 1 - s } else { s }, e - s + 1),
        },
        Bounds::Score(_) | Bounds::Lex(_) => {
            let (lo, hi) = match &bounds {
                Bounds::Score(range) => range.span(z),
                Bounds::Lex(range) => range.span(z),
                Bounds::Rank(..) => unreachable!("matched above"),
            };
            // Redis skips `offset` elements, so a negative one walks off the end.
            match usize::try_from(offset) {
                Ok(skip) if skip < hi - lo => {
                    let mut n = hi - lo - skip;
                    if let Ok(limit) = usize::try_from(limit) {
                        n = n.min(limit);
                    }
                    (if reverse { hi - 1 - skip } else { lo + skip }, n)
                }
                _ => (0, 0),
            }
        }
    };
    if store {
        let mut stored = new_zset(ctx);
        let z = zset(ctx, slot);
        for (member, score) in z.iter_from(first, reverse).take(n) {
            stored.insert(member, score);
        }
        if stored.is_empty() {
            ctx.ks().remove(db, args[1], now);
            ctx.out.integer(0);
        } else {
            let len = stored.len();
            ctx.ks()
                .store(db, args[1], Value::ZSet(Box::new(stored)), false, now);
            ctx.out.integer(len as i64);
        }
        return;
    }
    let z = zset_of(ctx.server.keyspace.entry(db, slot).value());
    let entries = z.iter_from(first, reverse);
    reply_entries(&mut *ctx.out, ctx.client.resp, withscores, n, entries);
}

/// `ZRANGE key start stop [BYSCORE|BYLEX] [REV] [LIMIT offset count] [WITHSCORES]`.
pub fn zrange(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    range_generic(ctx, args, 1, false, None, None);
}
/// `ZRANGESTORE dst src min max [BYSCORE|BYLEX] [REV] [LIMIT offset count]`.
pub fn zrangestore(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    range_generic(ctx, args, 2, true, None, None);
}
/// `ZREVRANGE key start stop [WITHSCORES]`.
pub fn zrevrange(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    range_generic(ctx, args, 1, false, Some(By::Rank), Some(true));
}
/// `ZRANGEBYSCORE key min max [WITHSCORES] [LIMIT offset count]`.
pub fn zrangebyscore(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    range_generic(ctx, args, 1, false, Some(By::Score), Some(false));
}
/// `ZREVRANGEBYSCORE key max min [WITHSCORES] [LIMIT offset count]`.
pub fn zrevrangebyscore(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    range_generic(ctx, args, 1, false, Some(By::Score), Some(true));
}
/// `ZRANGEBYLEX key min max [LIMIT offset count]`.
pub fn zrangebylex(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    range_generic(ctx, args, 1, false, Some(By::Lex), Some(false));
}
/// `ZREVRANGEBYLEX key max min [LIMIT offset count]`.
pub fn zrevrangebylex(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    range_generic(ctx, args, 1, false, Some(By::Lex), Some(true));
}

/// `ZCOUNT key min max`.
pub fn zcount(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Some(range) = ScoreRange::parse(args[2], args[3]) else {
        ctx.out.error(RANGE_NOT_FLOAT);
        return;
    };
    if let Ok(slot) = typed_slot(ctx, args[1], Kind::ZSet) {
        let n = slot.map_or(0, |slot| {
            let (start, end) = range.span(zset(ctx, slot));
            end - start
        });
        ctx.out.integer(n as i64);
    }
}

/// `ZLEXCOUNT key min max`.
pub fn zlexcount(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Some(range) = LexRange::parse(args[2], args[3]) else {
        ctx.out.error(RANGE_NOT_LEX);
        return;
    };
    if let Ok(slot) = typed_slot(ctx, args[1], Kind::ZSet) {
        let n = slot.map_or(0, |slot| {
            let (start, end) = range.span(zset(ctx, slot));
            end - start
        });
        ctx.out.integer(n as i64);
    }
}

/// Pops up to `count` members from the low end (or the high end) of the set in `slot`.
fn pop_members(
    ctx: &mut Ctx<'_>,
    slot: Slot,
    highest: bool,
    count: usize,
) -> Vec<(Box<[u8]>, f64)> {
    let db = ctx.db();
    ctx.ks().update(db, slot, |v| {
        let z = zset_mut(v);
        let n = count.min(z.len());
        (0..n).filter_map(|_| z.pop(highest)).collect()
    })
}

/// ZPOPMIN and ZPOPMAX: a flat array of members and scores, or (RESP3 with a count) pairs.
fn pop_generic(ctx: &mut Ctx<'_>, args: &[&[u8]], highest: bool) {
    if args.len() > 3 {
        ctx.syntax_error();
        return;
    }
    let count = match args.get(2) {
        Some(arg) => match positive_arg(ctx, arg, None) {
            Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            None => return,
        },
        None => None,
    };
    let Ok(slot) = typed_slot(ctx, args[1], Kind::ZSet) else {
        return;
    };
    let (Some(slot), false) = (slot, count == Some(0)) else {
        ctx.out.array(0);
        return;
    };
    let popped = pop_members(ctx, slot, highest, count.unwrap_or(1));
    let entries = popped.iter().map(|(m, s)| (&**m, *s));
    let pairs = ctx.client.resp > 2 && count.is_some();
    if pairs {
        reply_entries(&mut *ctx.out, 3, true, popped.len(), entries);
    } else {
        reply_entries(&mut *ctx.out, 2, true, popped.len(), entries);
    }
}

/// `ZPOPMIN key [count]`.
pub fn zpopmin(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    pop_generic(ctx, args, false);
}
/// `ZPOPMAX key [count]`.
pub fn zpopmax(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    pop_generic(ctx, args, true);
}

/// `ZMPOP numkeys key [key ...] MIN|MAX [COUNT count]`: pops from the first non-empty set;
/// `[key, [[member, score] ...]]` in both protocols, or the null array.
pub fn zmpop(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Some(numkeys) = range_arg(
        ctx,
        args[1],
        1,
        i64::MAX,
        Some("numkeys should be greater than 0"),
    ) else {
        return;
    };
    let where_at = match usize::try_from(numkeys) {
        Ok(n) if n < args.len() - 2 => n + 2,
        _ => {
            ctx.syntax_error();
            return;
        }
    };
    let highest = if args[where_at].eq_ignore_ascii_case(b"min") {
        false
    } else if args[where_at].eq_ignore_ascii_case(b"max") {
        true
    } else {
        ctx.syntax_error();
        return;
    };
    let Some(count) = mpop_count(ctx, &args[where_at + 1..]) else {
        return;
    };
    for &key in &args[2..where_at] {
        let Ok(slot) = typed_slot(ctx, key, Kind::ZSet) else {
            return;
        };
        let Some(slot) = slot else { continue };
        let popped = pop_members(ctx, slot, highest, count);
        ctx.out.array(2);
        ctx.out.bulk(key);
        let entries = popped.iter().map(|(m, s)| (&**m, *s));
        reply_entries(&mut *ctx.out, 3, true, popped.len(), entries);
        return;
    }
    ctx.out.null_array();
}

/// ZREMRANGEBYRANK, ZREMRANGEBYSCORE, ZREMRANGEBYLEX: removes ascending ranks `start..end`
/// of the set in `slot` (nothing to remove changes nothing) and replies the count.
fn remove_span(ctx: &mut Ctx<'_>, slot: Slot, start: usize, end: usize) {
    let n = end.saturating_sub(start);
    if n > 0 {
        let db = ctx.db();
        ctx.ks()
            .update(db, slot, |v| zset_mut(v).remove_ranks(start, n));
    }
    ctx.out.integer(n as i64);
}

/// `ZREMRANGEBYRANK key start stop`.
pub fn zremrangebyrank(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Some(start) = ctx.int_arg(args[2]) else {
        return;
    };
    let Some(stop) = ctx.int_arg(args[3]) else {
        return;
    };
    let Some(slot) = zset_or_zero(ctx, args[1]) else {
        return;
    };
    match index_range(start, stop, zset(ctx, slot).len()) {
        Some((s, e)) => remove_span(ctx, slot, s, e + 1),
        None => ctx.out.integer(0),
    }
}

/// `ZREMRANGEBYSCORE key min max`.
pub fn zremrangebyscore(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Some(range) = ScoreRange::parse(args[2], args[3]) else {
        ctx.out.error(RANGE_NOT_FLOAT);
        return;
    };
    if let Some(slot) = zset_or_zero(ctx, args[1]) {
        let (start, end) = range.span(zset(ctx, slot));
        remove_span(ctx, slot, start, end);
    }
}

/// `ZREMRANGEBYLEX key min max`.
pub fn zremrangebylex(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Some(range) = LexRange::parse(args[2], args[3]) else {
        ctx.out.error(RANGE_NOT_LEX);
        return;
    };
    if let Some(slot) = zset_or_zero(ctx, args[1]) {
        let (start, end) = range.span(zset(ctx, slot));
        remove_span(ctx, slot, start, end);
    }
}

/// The sorted set under `key`; replies 0 without one (or WRONGTYPE) and gives `None`.
fn zset_or_zero(ctx: &mut Ctx<'_>, key: &[u8]) -> Option<Slot> {
    match typed_slot(ctx, key, Kind::ZSet) {
        Ok(Some(slot)) => Some(slot),
        Ok(None) => {
            ctx.out.integer(0);
            None
        }
        Err(()) => None,
    }
}

/// `ZSCAN key cursor [MATCH pattern] [COUNT count]`: members and scores as bulk strings. A
/// set Redis would hold as a listpack comes whole in one reply, in order, with cursor 0.
pub fn zscan(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    let Some(cursor) = std::str::from_utf8(args[2])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        ctx.out.error("ERR invalid cursor");
        return;
    };
    let Ok(slot) = typed_slot(ctx, args[1], Kind::ZSet) else {
        return;
    };
    let Some(slot) = slot else {
        ctx.out.array(2);
        ctx.out.bulk(b"0");
        ctx.out.array(0);
        return;
    };
    // Options come after the lookup in Redis: a missing key never reports them.
    let (mut pattern, mut count) = (None::<&[u8]>, 10usize);
    let mut i = 3;
    while i < args.len() {
        let (opt, has_value) = (args[i], i + 1 < args.len());
        if opt.eq_ignore_ascii_case(b"count") && has_value {
            let Some(n) = ctx.int_arg(args[i + 1]) else {
                return;
            };
            if n < 1 {
                ctx.syntax_error();
                return;
            }
            count = usize::try_from(n).unwrap_or(usize::MAX);
        } else if opt.eq_ignore_ascii_case(b"match") && has_value {
            pattern = Some(args[i + 1]).filter(|p| *p != b"*");
        } else {
            ctx.syntax_error();
            return;
        }
        i += 2;
    }
    let z = zset_of(ctx.server.keyspace.entry(ctx.client.db, slot).value());
    let mut found: Vec<(&[u8], String)> = Vec::new();
    let matches = |m: &[u8]| pattern.is_none_or(|p| crate::glob::matches(p, m, false));
    let next = if z.is_listpack() {
        // Redis' listpack holds integral scores as integers and others as d2string text.
        for (member, score) in z.iter().filter(|(m, _)| matches(m)) {
            let mut text = String::new();
            format_f64(score, &mut text);
            found.push((member, text));
        }
        0
    } else {
        let mut visited = Vec::new();
        let next = z.scan(cursor, count, |m, s| visited.push((m, s)));
        for (member, score) in visited.into_iter().filter(|(m, _)| matches(m)) {
            let mut text = String::new();
            format_f64_17g(score, &mut text);
            found.push((member, text));
        }
        next
    };
    ctx.out.array(2);
    ctx.out.bulk(next.to_string().as_bytes());
    ctx.out.array(2 * found.len());
    for (member, score) in found {
        ctx.out.bulk(member);
        ctx.out.bulk(score.as_bytes());
    }
}

/// `ZRANDMEMBER key [count [WITHSCORES]]`.
pub fn zrandmember(ctx: &mut Ctx<'_>, args: &[&[u8]]) {
    if args.len() < 3 {
        let Ok(slot) = typed_slot(ctx, args[1], Kind::ZSet) else {
            return;
        };
        let Some(slot) = slot else {
            ctx.out.null();
            return;
        };
        let ranks = with_rng(ctx, |rng, ctx| {
            let len = zset(ctx, slot).len() as u64;
            vec![rng.below(len) as usize]
        });
        let z = zset_of(ctx.server.keyspace.entry(ctx.client.db, slot).value());
        match z.at(ranks[0]) {
            Some((member, _)) => ctx.out.bulk(member),
            None => ctx.out.null(),
        }
        return;
    }
    let Some(count) = range_arg(ctx, args[2], -i64::MAX, i64::MAX, None) else {
        return;
    };
    let withscores = match args.get(3) {
        None => false,
        Some(opt) if args.len() == 4 && opt.eq_ignore_ascii_case(b"withscores") => true,
        Some(_) => {
            ctx.syntax_error();
            return;
        }
    };
    if (withscores && !(-i64::MAX / 2..=i64::MAX / 2).contains(&count))
        || (count < 0 && count.unsigned_abs() > RANDOM_MEMBERS_MAX)
    {
        ctx.out.error("ERR value is out of range");
        return;
    }
    let Ok(slot) = typed_slot(ctx, args[1], Kind::ZSet) else {
        return;
    };
    let (Some(slot), false) = (slot, count == 0) else {
        ctx.out.array(0);
        return;
    };
    let size = zset(ctx, slot).len();
    let wanted = usize::try_from(count.unsigned_abs()).unwrap_or(usize::MAX);
    // Ascending ranks to reply, in the order Redis' cases reply them.
    let ranks: Vec<usize> = if count < 0 || wanted == 1 {
        // With repetitions, in random order.
        with_rng(ctx, |rng, _| {
            (0..wanted)
                .map(|_| rng.below(size as u64) as usize)
                .collect()
        })
    } else if wanted >= size {
        // The whole set, walked from the top as Redis' zset iterator walks it.
        (0..size).rev().collect()
    } else if wanted * 3 > size || zset(ctx, slot).is_listpack() {
        // A uniform sample in order (selection sampling), as Redis' listpack sampling
        // replies it; for a large share of a large set Redis removes random members from a
        // copy instead, which samples alike.
        with_rng(ctx, |rng, _| {
            let mut needed = wanted;
            (0..size)
                .filter(|&i| {
                    let pick = (rng.below((size - i) as u64) as usize) < needed;
                    needed -= usize::from(pick);
                    pick
                })
                .collect()
        })
    } else {
        // Few of many: distinct random picks, in the order drawn.
        with_rng(ctx, |rng, _| {
            let mut seen = std::collections::HashSet::with_capacity(wanted);
            let mut ranks = Vec::with_capacity(wanted);
            while ranks.len() < wanted {
                let rank = rng.below(size as u64) as usize;
                if seen.insert(rank) {
                    ranks.push(rank);
                }
            }
            ranks
        })
    };
    let z = zset_of(ctx.server.keyspace.entry(ctx.client.db, slot).value());
    let entries = ranks.iter().filter_map(|&rank| z.at(rank));
    reply_entries(
        &mut *ctx.out,
        ctx.client.resp,
        withscores,
        ranks.len(),
        entries,
    );
}

/// Runs `f` with the keyspace's random source taken out of it (so `f` may read the keyspace
/// through `ctx`), and puts the source back.
fn with_rng<R>(ctx: &mut Ctx<'_>, f: impl FnOnce(&mut SplitMix64, &Ctx<'_>) -> R) -> R {
    let mut rng = std::mem::replace(ctx.ks().rng(), SplitMix64::new(0));
    let result = f(&mut rng, ctx);
    *ctx.ks().rng() = rng;
    result
}
