//! The values a key holds, each with the count of bytes it holds kept up to date as it
//! changes.
//!
//! Memory accounting has to be O(1) per command: `maxmemory` is checked before every write,
//! and recomputing the size of a hash of a million fields on each `HSET` would make a write
//! cost the size of the value. So every collection keeps a running byte count that its own
//! insert and remove methods maintain, and [`Value::heap_bytes`] only adds it up. The counts
//! are estimates of what the allocator really holds (element lengths plus a fixed overhead per
//! element for the allocation header and the table slot), checked against a counting
//! allocator by the crate's tests. Lists and sorted sets keep only the running sum of their
//! elements' allocations and add their tables at current capacity when asked, which is just
//! as cheap and follows the tables' growth exactly.
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
use std::collections::VecDeque;

pub use crate::zset::ZSetValue;

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
    Hash(Box<HashValue>),
    /// A list.
    List(Box<ListValue>),
    /// A set.
    Set(Box<SetValue>),
    /// A sorted set.
    ZSet(Box<ZSetValue>),
}

/// Bytes of the heap block a boxed `T` takes.
fn boxed<T>() -> usize {
    std::mem::size_of::<T>() + ALLOCATION_OVERHEAD
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
            // A collection lives in a box of its own (so that a string's entry does not carry
            // the largest collection's size): the box is held too.
            Value::Hash(h) => h.map.bytes() + boxed::<HashValue>(),
            Value::List(l) => l.bytes() + boxed::<ListValue>(),
            Value::Set(s) => s.members.bytes() + boxed::<SetValue>(),
            Value::ZSet(z) => z.bytes() + boxed::<ZSetValue>(),
        }
    }

    /// Whether this is a collection with no element left (Redis deletes such keys).
    pub fn is_empty_collection(&self) -> bool {
        match self {
            Value::Str(_) => false,
            Value::Hash(h) => h.map.is_empty(),
            Value::List(l) => l.is_empty(),
            Value::Set(s) => s.members.is_empty(),
            Value::ZSet(z) => z.is_empty(),
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
                if l.is_quicklist() {
                    "quicklist"
                } else {
                    "listpack"
                }
            }
            Value::Set(s) => s.encoding(),
            Value::ZSet(z) => {
                if z.is_listpack() {
                    "listpack"
                } else {
                    "skiplist"
                }
            }
        }
    }
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

/// Bytes a boxed element of `len` bytes holds: nothing when empty (an empty box does not
/// allocate), else its length and the allocator's [`ALLOCATION_OVERHEAD`], as strings count.
pub(crate) fn boxed_bytes(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        len + ALLOCATION_OVERHEAD
    }
}

/// Redis 7.2's `list-max-listpack-size -2`: a list is a single listpack while that listpack
/// would hold at most 8 KiB; past it Redis converts it to a quicklist.
pub const LIST_LISTPACK_BYTES_MAX: usize = 8192;
/// A listpack's frame: the 4-byte total length, the 2-byte count and the end byte.
const LISTPACK_FRAME_BYTES: usize = 7;

/// Bytes one element takes in a Redis listpack (`lpEncodeGetType` and `lpEncodeBacklen`):
/// integers in 1 to 9 bytes by magnitude, strings with a 1-, 2- or 5-byte header, then the
/// back-length of the whole entry.
pub(crate) fn listpack_entry_bytes(item: &[u8]) -> usize {
    let encoded = match crate::number::parse_i64(item) {
        Some(n) if (0..=127).contains(&n) => 1,
        Some(n) if (-4096..=4095).contains(&n) => 2,
        Some(n) if i16::try_from(n).is_ok() => 3,
        Some(n) if (-(1 << 23)..1 << 23).contains(&n) => 4,
        Some(n) if i32::try_from(n).is_ok() => 5,
        Some(_) => 9,
        None if item.len() < 64 => 1 + item.len(),
        None if item.len() < 4096 => 2 + item.len(),
        None => 5 + item.len(),
    };
    let backlen = if encoded <= 127 {
        1
    } else if encoded < 16_383 {
        2
    } else if encoded < 2_097_151 {
        3
    } else if encoded < 268_435_455 {
        4
    } else {
        5
    };
    encoded + backlen
}

/// A list: elements head first, with its byte count and the encoding Redis would give it.
///
/// The byte count is the elements' own allocations plus the ring buffer's capacity, so it is
/// exact in what it counts and O(1) to read; removals give capacity back once three quarters
/// of it is unused.
///
/// Redis 7.2 keeps a list in one listpack until that would pass 8 KiB, then in a quicklist,
/// and converts back when a removal leaves it under half that. The listpack's size is
/// tracked here (`listpack_bytes`) so `OBJECT ENCODING` follows the same thresholds; the
/// commands call [`ListValue::will_grow`] before adding and [`ListValue::shrunk`] after
/// removing, where Redis checks. (Redis converts back only when the quicklist is down to one
/// node, which depends on its node layout; here the total size alone decides.)
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListValue {
    items: VecDeque<Box<[u8]>>,
    /// The sum of [`boxed_bytes`] over the elements.
    item_bytes: usize,
    /// The sum of [`listpack_entry_bytes`] over the elements.
    listpack_bytes: usize,
    /// Whether Redis would hold this list as a quicklist now.
    quicklist: bool,
}

/// Capacity under which a list's ring buffer is never shrunk.
const LIST_CAPACITY_KEEP: usize = 64;

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
    /// The element at `index` (0 is the head).
    pub fn get(&self, index: usize) -> Option<&[u8]> {
        self.items.get(index).map(|i| &**i)
    }
    /// Bytes held on the heap, O(1).
    pub fn bytes(&self) -> usize {
        let ring = self.items.capacity() * std::mem::size_of::<Box<[u8]>>();
        self.item_bytes + ring + if ring > 0 { ALLOCATION_OVERHEAD } else { 0 }
    }
    /// Whether Redis would report `quicklist` (else `listpack`).
    pub fn is_quicklist(&self) -> bool {
        self.quicklist
    }
    /// Redis' check before adding elements of `add_bytes` in all (`listTypeTryConversion
    /// Append`): past [`LIST_LISTPACK_BYTES_MAX`] the list becomes a quicklist.
    pub fn will_grow(&mut self, add_bytes: usize) {
        let projected = LISTPACK_FRAME_BYTES + self.listpack_bytes + add_bytes;
        if !self.quicklist && projected > LIST_LISTPACK_BYTES_MAX {
            self.quicklist = true;
        }
    }
    /// Redis' check after removing elements: a quicklist that fits in half the listpack limit
    /// becomes a listpack again.
    pub fn shrunk(&mut self) {
        let size = LISTPACK_FRAME_BYTES + self.listpack_bytes;
        if self.quicklist && size <= LIST_LISTPACK_BYTES_MAX / 2 {
            self.quicklist = false;
        }
    }
    /// Pushes onto the head.
    pub fn push_front(&mut self, item: &[u8]) {
        self.account_in(item);
        self.items.push_front(item.into());
    }
    /// Pushes onto the tail.
    pub fn push_back(&mut self, item: &[u8]) {
        self.account_in(item);
        self.items.push_back(item.into());
    }
    /// Pops the head.
    pub fn pop_front(&mut self) -> Option<Box<[u8]>> {
        let item = self.items.pop_front()?;
        self.account_out(&item);
        self.give_back_capacity();
        Some(item)
    }
    /// Pops the tail.
    pub fn pop_back(&mut self) -> Option<Box<[u8]>> {
        let item = self.items.pop_back()?;
        self.account_out(&item);
        self.give_back_capacity();
        Some(item)
    }
    /// Inserts at `index` (0 ..= len; beyond the tail is the tail).
    pub fn insert(&mut self, index: usize, item: &[u8]) {
        self.account_in(item);
        self.items.insert(index.min(self.items.len()), item.into());
    }
    /// Replaces the element at `index`; `false` if out of range.
    pub fn set(&mut self, index: usize, item: &[u8]) -> bool {
        let Some(slot) = self.items.get_mut(index) else {
            return false;
        };
        let old = std::mem::replace(slot, item.into());
        self.account_out(&old);
        self.account_in(item);
        true
    }
    /// Keeps only the elements `start..end` (clamped to the list).
    pub fn retain_range(&mut self, start: usize, end: usize) {
        let end = end.min(self.items.len());
        let start = start.min(end);
        let (mut item_bytes, mut listpack_bytes) = (0, 0);
        for item in self.items.range(end..).chain(self.items.range(..start)) {
            item_bytes += boxed_bytes(item.len());
            listpack_bytes += listpack_entry_bytes(item);
        }
        self.items.truncate(end);
        self.items.drain(..start);
        self.item_bytes -= item_bytes;
        self.listpack_bytes -= listpack_bytes;
        self.give_back_capacity();
    }
    /// Removes up to `limit` elements equal to `element`, the first ones from the head (or
    /// from the tail when `from_tail`); returns how many went.
    pub fn remove_matching(&mut self, element: &[u8], limit: usize, from_tail: bool) -> usize {
        // The matches to remove are those at or past `first` (from the tail) or before the
        // limit-th one (from the head): one pass to find the boundary, one to remove.
        let first = if from_tail {
            let mut seen = 0;
            let mut first = self.items.len();
            for (i, item) in self.items.iter().enumerate().rev() {
                if seen == limit {
                    break;
                }
                if **item == *element {
                    seen += 1;
                    first = i;
                }
            }
            first
        } else {
            0
        };
        let (mut removed, mut item_bytes, mut listpack_bytes) = (0, 0, 0);
        let mut index = 0;
        self.items.retain(|item| {
            let remove = index >= first && removed < limit && **item == *element;
            index += 1;
            if remove {
                removed += 1;
                item_bytes += boxed_bytes(item.len());
                listpack_bytes += listpack_entry_bytes(item);
            }
            !remove
        });
        self.item_bytes -= item_bytes;
        self.listpack_bytes -= listpack_bytes;
        self.give_back_capacity();
        removed
    }
    /// Checks every invariant, recounting from scratch; panics on a broken one (for tests and
    /// fuzzers).
    pub fn check_invariants(&self) {
        let item_bytes: usize = self.items.iter().map(|i| boxed_bytes(i.len())).sum();
        let listpack_bytes: usize = self.items.iter().map(|i| listpack_entry_bytes(i)).sum();
        assert_eq!(item_bytes, self.item_bytes, "list element bytes drifted");
        assert_eq!(listpack_bytes, self.listpack_bytes, "listpack size drifted");
    }
    fn account_in(&mut self, item: &[u8]) {
        self.item_bytes += boxed_bytes(item.len());
        self.listpack_bytes += listpack_entry_bytes(item);
    }
    fn account_out(&mut self, item: &[u8]) {
        self.item_bytes -= boxed_bytes(item.len());
        self.listpack_bytes -= listpack_entry_bytes(item);
    }
    fn give_back_capacity(&mut self) {
        let capacity = self.items.capacity();
        if capacity > LIST_CAPACITY_KEEP && self.items.len() * 4 < capacity {
            self.items
                .shrink_to((self.items.len() * 2).max(LIST_CAPACITY_KEEP));
        }
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
        l.check_invariants();
        assert_eq!((l.item_bytes, l.listpack_bytes), (0, 0));
        assert_eq!(l.remove_matching(b"x", 1, false), 0);

        let mut s = SetValue::default();
        assert!(s.insert(b"x"));
        assert!(!s.insert(b"x"));
        assert!(s.remove(b"x"));
        assert_eq!(s.members.bytes(), 0);
    }

    #[test]
    fn encodings_follow_redis_thresholds() {
        assert_eq!(Value::Str(b"12345".to_vec()).encoding(), "int");
        assert_eq!(Value::Str(b"hello".to_vec()).encoding(), "embstr");
        assert_eq!(Value::Str(vec![b'x'; 45]).encoding(), "raw");
        let mut s = SetValue::default();
        s.insert(b"1");
        s.insert(b"2");
        assert_eq!(Value::Set(Box::new(s.clone())).encoding(), "intset");
        s.insert(b"a");
        assert_eq!(Value::Set(Box::new(s)).encoding(), "listpack");
        let mut h = HashValue::default();
        h.insert(b"f", &[b'v'; 65]);
        assert_eq!(Value::Hash(Box::new(h)).encoding(), "hashtable");
        // A list is a listpack up to 8 KiB, and one again under half that.
        let mut l = ListValue::default();
        for _ in 0..100 {
            l.will_grow(100);
            l.push_back(&[b'x'; 100]);
        }
        assert_eq!(Value::List(Box::new(l.clone())).encoding(), "quicklist");
        l.retain_range(0, 40);
        l.shrunk();
        assert_eq!(Value::List(Box::new(l.clone())).encoding(), "quicklist");
        l.retain_range(0, 30);
        l.shrunk();
        assert_eq!(Value::List(Box::new(l)).encoding(), "listpack");
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    /// Every key carries one `Value`: a string's must not pay for the largest collection's
    /// inline state (the collections are boxed), or a small key costs twice what Redis spends.
    #[test]
    fn a_value_is_no_larger_than_a_string() {
        assert_eq!(
            std::mem::size_of::<Value>(),
            std::mem::size_of::<Vec<u8>>(),
            "Value grew past a Vec<u8>: box the variant that made it grow"
        );
    }
}
