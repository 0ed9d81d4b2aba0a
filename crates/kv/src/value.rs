//! The values a key holds, each with the count of bytes it holds kept up to date as it
//! changes.
//!
//! Memory accounting has to be O(1) per command: `maxmemory` is checked before every write,
//! and recomputing the size of a hash of a million fields on each `HSET` would make a write
//! cost the size of the value. So every collection keeps a running byte count that its own
//! insert and remove methods maintain, and [`Value::heap_bytes`] only adds it up. The counts
//! are estimates of what the allocator really holds (element lengths plus a fixed overhead per
//! element for the allocation header and the table slot), checked against a counting
//! allocator by the crate's tests.
//!
//! Hashes and sets sit on [`SlabMap`], which also gives the random element (`SPOP`,
//! `SRANDMEMBER`, `HRANDFIELD`) and the stable scan cursor (`HSCAN`, `SSCAN`) in O(1) per
//! element, and keeps their byte count itself.
//!
//! Redis picks compact encodings for small values (listpack, intset, embstr) and reports
//! them in `OBJECT ENCODING`; clients read that only for diagnostics. Here every type has one
//! representation, and [`Value::encoding`] names the encoding Redis would report for a value
//! of that size, so tools that look see the same words.

use crate::slabmap::SlabMap;
use std::collections::{BTreeSet, HashMap, VecDeque};

/// Bytes the allocator adds to every heap allocation, on average (glibc malloc: an 8-byte
/// header and 16-byte alignment).
pub const ALLOCATION_OVERHEAD: usize = 16;
/// Bytes a collection element costs besides its own bytes: its allocation's overhead, the
/// pointer and length that name it, and its share of the table it sits in.
pub const ELEMENT_OVERHEAD: usize = ALLOCATION_OVERHEAD + 16 + 16;

/// Redis' `hash-max-listpack-entries` (128) and `-value` (64): below both a hash reports
/// `listpack`.
pub const LISTPACK_ENTRIES_MAX: usize = 128;
/// Redis' `*-max-listpack-value`: the largest element of a `listpack` value.
pub const LISTPACK_VALUE_MAX: usize = 64;
/// Redis' `OBJ_ENCODING_EMBSTR_SIZE_LIMIT`: strings up to 44 bytes report `embstr`.
pub const EMBSTR_LEN_MAX: usize = 44;
/// Redis' `set-max-intset-entries`: a set of only integers up to this size reports `intset`.
pub const INTSET_ENTRIES_MAX: usize = 512;

/// The type of a value, as `TYPE` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string (also integers and floats, which are strings Redis can do arithmetic on).
    String,
    /// A hash of fields to values.
    Hash,
    /// A list.
    List,
    /// A set.
    Set,
    /// A sorted set.
    ZSet,
}

impl Kind {
    /// The name `TYPE` replies with.
    pub fn name(self) -> &'static str {
        match self {
            Kind::String => "string",
            Kind::Hash => "hash",
            Kind::List => "list",
            Kind::Set => "set",
            Kind::ZSet => "zset",
        }
    }

    /// The kind a `SCAN ... TYPE name` filter names, case-insensitively.
    pub fn from_name(name: &[u8]) -> Option<Kind> {
        [Kind::String, Kind::Hash, Kind::List, Kind::Set, Kind::ZSet]
            .into_iter()
            .find(|kind| kind.name().as_bytes().eq_ignore_ascii_case(name))
    }
}

/// A value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string.
    Str(Vec<u8>),
    /// A hash.
    Hash(HashValue),
    /// A list.
    List(ListValue),
    /// A set.
    Set(SetValue),
    /// A sorted set.
    ZSet(ZSetValue),
}

impl Value {
    /// The value's type.
    pub fn kind(&self) -> Kind {
        match self {
            Value::Str(_) => Kind::String,
            Value::Hash(_) => Kind::Hash,
            Value::List(_) => Kind::List,
            Value::Set(_) => Kind::Set,
            Value::ZSet(_) => Kind::ZSet,
        }
    }

    /// Bytes held on the heap for this value, O(1).
    pub fn heap_bytes(&self) -> usize {
        match self {
            Value::Str(s) if s.capacity() == 0 => 0,
            Value::Str(s) => s.capacity() + ALLOCATION_OVERHEAD,
            Value::Hash(h) => h.map.bytes(),
            Value::List(l) => l.bytes,
            Value::Set(s) => s.members.bytes(),
            Value::ZSet(z) => z.bytes,
        }
    }

    /// Whether this is a collection with no element left (Redis deletes such keys).
    pub fn is_empty_collection(&self) -> bool {
        match self {
            Value::Str(_) => false,
            Value::Hash(h) => h.map.is_empty(),
            Value::List(l) => l.items.is_empty(),
            Value::Set(s) => s.members.is_empty(),
            Value::ZSet(z) => z.scores.is_empty(),
        }
    }

    /// The encoding `OBJECT ENCODING` reports, as Redis 7 would for a value of this shape.
    pub fn encoding(&self) -> &'static str {
        match self {
            Value::Str(s) => {
                if s.len() <= 20 && crate::number::parse_i64(s).is_some() {
                    "int"
                } else if s.len() <= EMBSTR_LEN_MAX {
                    "embstr"
                } else {
                    "raw"
                }
            }
            Value::Hash(h) => {
                if h.is_compact() {
                    "listpack"
                } else {
                    "hashtable"
                }
            }
            Value::List(l) => {
                if l.items.len() <= LISTPACK_ENTRIES_MAX && l.longest <= LISTPACK_VALUE_MAX {
                    "listpack"
                } else {
                    "quicklist"
                }
            }
            Value::Set(s) => s.encoding(),
            Value::ZSet(z) => {
                if z.scores.len() <= LISTPACK_ENTRIES_MAX && z.longest <= LISTPACK_VALUE_MAX {
                    "listpack"
                } else {
                    "skiplist"
                }
            }
        }
    }
}

fn element_bytes(len: usize) -> usize {
    len + ELEMENT_OVERHEAD
}

/// A hash: fields to values, over a [`SlabMap`] (which keeps the byte count).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HashValue {
    map: SlabMap<Box<[u8]>>,
    /// The longest field or value ever stored (for [`Value::encoding`]; Redis never converts
    /// back either).
    longest: usize,
}

impl HashValue {
    /// The fields and values.
    pub fn map(&self) -> &SlabMap<Box<[u8]>> {
        &self.map
    }
    /// Number of fields.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// Whether there is no field.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    /// The value of `field`.
    pub fn get(&self, field: &[u8]) -> Option<&[u8]> {
        self.map.get(field).map(|v| &**v)
    }
    /// Sets `field` to `value`; `true` if the field is new.
    pub fn insert(&mut self, field: &[u8], value: &[u8]) -> bool {
        self.longest = self.longest.max(field.len()).max(value.len());
        self.map.insert(field, value.into()).is_none()
    }
    /// Removes `field`; `true` if it was there.
    pub fn remove(&mut self, field: &[u8]) -> bool {
        self.map.remove(field).is_some()
    }
    /// Whether no field or value was ever longer than Redis' listpack limit and there are
    /// few enough fields: Redis would hold this hash as a listpack (and scan it in one call).
    pub fn is_compact(&self) -> bool {
        self.map.len() <= LISTPACK_ENTRIES_MAX && self.longest <= LISTPACK_VALUE_MAX
    }
}

/// A list, with its byte count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListValue {
    items: VecDeque<Box<[u8]>>,
    bytes: usize,
    longest: usize,
}

impl ListValue {
    /// The elements, head first.
    pub fn items(&self) -> &VecDeque<Box<[u8]>> {
        &self.items
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.items.len()
    }
    /// Whether there is no element.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    /// Pushes onto the head.
    pub fn push_front(&mut self, item: &[u8]) {
        self.account_in(item.len());
        self.items.push_front(item.into());
    }
    /// Pushes onto the tail.
    pub fn push_back(&mut self, item: &[u8]) {
        self.account_in(item.len());
        self.items.push_back(item.into());
    }
    /// Pops the head.
    pub fn pop_front(&mut self) -> Option<Box<[u8]>> {
        let item = self.items.pop_front()?;
        self.bytes -= element_bytes(item.len());
        Some(item)
    }
    /// Pops the tail.
    pub fn pop_back(&mut self) -> Option<Box<[u8]>> {
        let item = self.items.pop_back()?;
        self.bytes -= element_bytes(item.len());
        Some(item)
    }
    /// Inserts at `index` (0 ..= len).
    pub fn insert(&mut self, index: usize, item: &[u8]) {
        self.account_in(item.len());
        self.items.insert(index, item.into());
    }
    /// Removes the element at `index`.
    pub fn remove(&mut self, index: usize) -> Option<Box<[u8]>> {
        let item = self.items.remove(index)?;
        self.bytes -= element_bytes(item.len());
        Some(item)
    }
    /// Replaces the element at `index`; `false` if out of range.
    pub fn set(&mut self, index: usize, item: &[u8]) -> bool {
        let Some(slot) = self.items.get_mut(index) else {
            return false;
        };
        self.bytes = self.bytes - slot.len() + item.len();
        self.longest = self.longest.max(item.len());
        *slot = item.into();
        true
    }
    /// Keeps only the elements `start..end`.
    pub fn retain_range(&mut self, start: usize, end: usize) {
        let end = end.min(self.items.len());
        let start = start.min(end);
        self.items.truncate(end);
        self.items.drain(..start);
        self.bytes = self.items.iter().map(|i| element_bytes(i.len())).sum();
    }
    fn account_in(&mut self, len: usize) {
        self.bytes += element_bytes(len);
        self.longest = self.longest.max(len);
    }
}

/// A set, over a [`SlabMap`] (which keeps the byte count).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SetValue {
    members: SlabMap<()>,
    longest: usize,
    /// Members that are integers as Redis reads them, so that [`Value::encoding`] can tell an
    /// `intset` in O(1).
    integers: usize,
}

impl SetValue {
    /// The members.
    pub fn members(&self) -> &SlabMap<()> {
        &self.members
    }
    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }
    /// Whether there is no member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
    /// Whether `member` is in the set.
    pub fn contains(&self, member: &[u8]) -> bool {
        self.members.contains_key(member)
    }
    /// Adds `member`; `true` if it is new.
    pub fn insert(&mut self, member: &[u8]) -> bool {
        if self.members.contains_key(member) {
            return false;
        }
        self.longest = self.longest.max(member.len());
        self.integers += usize::from(crate::number::parse_i64(member).is_some());
        self.members.insert(member, ());
        true
    }
    /// Removes `member`; `true` if it was there.
    pub fn remove(&mut self, member: &[u8]) -> bool {
        if self.members.remove(member).is_none() {
            return false;
        }
        self.forget(member);
        true
    }
    /// Removes and returns a uniformly random member, O(1).
    pub fn pop_random(&mut self, rng: &mut melange_core::rng::SplitMix64) -> Option<Box<[u8]>> {
        let (member, ()) = self.members.pop_random(rng)?;
        self.forget(&member);
        Some(member)
    }
    fn forget(&mut self, member: &[u8]) {
        self.integers -= usize::from(crate::number::parse_i64(member).is_some());
    }
    /// Whether Redis would hold this set as an intset or a listpack (and scan it in one
    /// call).
    pub fn is_compact(&self) -> bool {
        self.encoding() != "hashtable"
    }
    /// The encoding Redis would report, O(1).
    fn encoding(&self) -> &'static str {
        let len = self.members.len();
        if len <= INTSET_ENTRIES_MAX && self.integers == len {
            "intset"
        } else if len <= LISTPACK_ENTRIES_MAX && self.longest <= LISTPACK_VALUE_MAX {
            "listpack"
        } else {
            "hashtable"
        }
    }
}

/// A sorted-set score with a total order (scores are never NaN: every command refuses one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score(pub f64);

impl Eq for Score {}
impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Score {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A sorted set: members by score (ties by member bytes, as Redis), with its byte count.
///
/// Ranks (`ZRANK`, `ZRANGE` by index) walk the ordered set, O(rank); Redis' skiplist keeps
/// spans for O(log n). Good enough until a benchmark says otherwise.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ZSetValue {
    scores: HashMap<Box<[u8]>, f64>,
    order: BTreeSet<(Score, Box<[u8]>)>,
    bytes: usize,
    longest: usize,
}

impl ZSetValue {
    /// Number of members.
    pub fn len(&self) -> usize {
        self.scores.len()
    }
    /// Whether there is no member.
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }
    /// The score of `member`.
    pub fn score(&self, member: &[u8]) -> Option<f64> {
        self.scores.get(member).copied()
    }
    /// Members in order of (score, member).
    pub fn ordered(&self) -> &BTreeSet<(Score, Box<[u8]>)> {
        &self.order
    }
    /// Sets `member`'s score; `true` if the member is new. A NaN score is a bug in the caller.
    pub fn insert(&mut self, member: &[u8], score: f64) -> bool {
        debug_assert!(!score.is_nan(), "sorted-set scores are never NaN");
        match self.scores.get_mut(member) {
            Some(old) => {
                if *old != score {
                    self.order.remove(&(Score(*old), Box::from(member)));
                    self.order.insert((Score(score), member.into()));
                    *old = score;
                }
                false
            }
            None => {
                // The member is held twice (table and order) plus a score.
                self.bytes += 2 * element_bytes(member.len()) + 8;
                self.longest = self.longest.max(member.len());
                self.scores.insert(member.into(), score);
                self.order.insert((Score(score), member.into()));
                true
            }
        }
    }
    /// Removes `member`; `true` if it was there.
    pub fn remove(&mut self, member: &[u8]) -> bool {
        match self.scores.remove(member) {
            Some(score) => {
                self.order.remove(&(Score(score), Box::from(member)));
                self.bytes -= 2 * element_bytes(member.len()) + 8;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_follow_inserts_and_removes() {
        let mut h = HashValue::default();
        assert!(h.insert(b"f", b"v1"));
        let one = h.map.bytes();
        assert!(!h.insert(b"f", b"value2"));
        assert_eq!(h.map.bytes(), one + 4);
        assert!(h.remove(b"f"));
        assert_eq!(h.map.bytes(), 0);

        let mut l = ListValue::default();
        l.push_back(b"a");
        l.push_front(b"bb");
        l.insert(1, b"ccc");
        assert_eq!(l.len(), 3);
        assert!(l.set(0, b"dddd"));
        l.retain_range(1, 3);
        assert_eq!(
            l.items().iter().map(|i| &i[..]).collect::<Vec<_>>(),
            [b"ccc" as &[u8], b"a"]
        );
        l.pop_back();
        l.pop_front();
        assert_eq!(l.bytes, 0);

        let mut s = SetValue::default();
        assert!(s.insert(b"x"));
        assert!(!s.insert(b"x"));
        assert!(s.remove(b"x"));
        assert_eq!(s.members.bytes(), 0);

        let mut z = ZSetValue::default();
        assert!(z.insert(b"m", 1.0));
        assert!(!z.insert(b"m", 2.0));
        assert!(z.insert(b"a", 2.0));
        let order: Vec<_> = z.ordered().iter().map(|(_, m)| &m[..]).collect();
        assert_eq!(order, [b"a" as &[u8], b"m"], "ties order by member");
        assert!(z.remove(b"m"));
        assert!(z.remove(b"a"));
        assert_eq!(z.bytes, 0);
        assert!(z.ordered().is_empty());
    }

    #[test]
    fn encodings_follow_redis_thresholds() {
        assert_eq!(Value::Str(b"12345".to_vec()).encoding(), "int");
        assert_eq!(Value::Str(b"hello".to_vec()).encoding(), "embstr");
        assert_eq!(Value::Str(vec![b'x'; 45]).encoding(), "raw");
        let mut s = SetValue::default();
        s.insert(b"1");
        s.insert(b"2");
        assert_eq!(Value::Set(s.clone()).encoding(), "intset");
        s.insert(b"a");
        assert_eq!(Value::Set(s).encoding(), "listpack");
        let mut h = HashValue::default();
        h.insert(b"f", &[b'v'; 65]);
        assert_eq!(Value::Hash(h).encoding(), "hashtable");
    }
}
