//! Sorted sets: members ordered by (score, member), with O(log n) rank, select and range
//! operations, and a cursor that survives changes.
//!
//! # Design
//!
//! Redis keeps a hash table (member to score) and a skiplist whose links carry spans, so
//! that `ZRANK`, `ZRANGE` by index and the range counts are O(log n). This module keeps the
//! same two views with one copy of each member:
//!
//! - a slab of nodes (`Vec<Option<Node>>` with a free list), each holding a member, its score,
//!   and the links of an **order-statistic treap**: a binary search tree by (score, member)
//!   that is a heap by a random priority, every node knowing its subtree's size. Rank,
//!   select, insertion and removal are expected O(log n); a run of m elements from a rank is
//!   O(log n + m); removing a run of ranks is O(log n + m) (one split, one merge).
//! - a hash table of slab indexes by member (hashbrown's `HashTable<u32>`, as the keyspace
//!   itself), for `ZSCORE` and for finding a member's node.
//!
//! Every tree operation is written as a loop (split and merge top-down, iterators over an
//! explicit stack), so no input can overflow the call stack, whatever the tree's shape. The
//! priorities come from a SplitMix64 seeded by the keyspace's random source when the set is
//! created: the shape is deterministic for a given seed (the simulator replays), and a client
//! cannot aim for a degenerate tree without knowing the seed.
//!
//! A treap rather than Redis' skiplist: a skiplist node needs a variable array of levels (a
//! second allocation or a fixed maximum), and its search paths are pointer chases through
//! nodes of random height; the treap's nodes are fixed-size slab entries, 40 bytes with the
//! member's pointer. A `BTreeSet<(score, member)>` (the first version of this crate) cannot
//! rank in less than O(rank).
//!
//! # The `ZSCAN` cursor
//!
//! Nodes never move in the slab: a member keeps its slot while its score changes (it is
//! unlinked and relinked), and a freed slot is only reused by a new member. So a cursor is a
//! slab index, and a scan from 0 to the end returns every member present for the whole scan
//! (a member added behind the cursor may be missed, as Redis allows). The price: the slab
//! keeps its high-water mark until the key is deleted; the byte count includes it.
//!
//! # Scores
//!
//! Scores are never NaN (every command refuses one), and -0 is stored as 0: Redis compares
//! scores with `<` and `==`, under which they are equal, and its listpack encoding (every
//! small sorted set) stores -0 as the integer 0. With both excluded, `f64::total_cmp` is the
//! order Redis uses.

use crate::value::{boxed_bytes, ALLOCATION_OVERHEAD, LISTPACK_ENTRIES_MAX, LISTPACK_VALUE_MAX};
use hashbrown::HashTable;
use melange_core::rng::SplitMix64;
use std::cmp::Ordering;
use std::hash::{BuildHasher, RandomState};

/// No node.
const NIL: u32 = u32::MAX;
/// Members a sorted set can hold: node indexes and subtree sizes are `u32`. The slab of that
/// many nodes alone would take 160 GiB, so the allocator refuses long before.
pub const MEMBERS_MAX: usize = (u32::MAX - 1) as usize;

#[derive(Debug, Clone)]
struct Node {
    member: Box<[u8]>,
    score: f64,
    left: u32,
    right: u32,
    /// Nodes in this subtree, this one included.
    size: u32,
    /// Heap order: a parent's priority is at least its children's.
    priority: u32,
}

/// Where the next node of a top-down split or merge gets linked.
#[derive(Clone, Copy)]
enum Hole {
    Root,
    Left(u32),
    Right(u32),
}

/// The order of sorted-set entries: by score, ties by member bytes (as Redis' `sdscmp`).
fn order(score_a: f64, member_a: &[u8], score_b: f64, member_b: &[u8]) -> Ordering {
    score_a
        .total_cmp(&score_b)
        .then_with(|| member_a.cmp(member_b))
}

/// A sorted set: see the module documentation.
///
/// The whole structure lives behind one box, so a [`crate::value::Value`] stays as small as
/// its other variants.
#[derive(Debug, Clone)]
pub struct ZSetValue(Box<Tree>);

#[derive(Debug, Clone)]
struct Tree {
    nodes: Vec<Option<Node>>,
    free: Vec<u32>,
    root: u32,
    index: HashTable<u32>,
    hasher: RandomState,
    priorities: SplitMix64,
    /// The sum of [`boxed_bytes`] over the members.
    member_bytes: usize,
    /// Whether Redis would still hold this set as a listpack (it never converts back).
    listpack: bool,
}

impl Default for ZSetValue {
    /// An empty set with priorities from seed 0 (for tests; commands seed from the keyspace).
    fn default() -> Self {
        Self::new(0)
    }
}

impl PartialEq for ZSetValue {
    /// Same members with the same scores (the layout is not compared).
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl ZSetValue {
    /// An empty sorted set whose tree priorities come from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(Box::new(Tree {
            nodes: Vec::new(),
            free: Vec::new(),
            root: NIL,
            index: HashTable::new(),
            hasher: RandomState::new(),
            priorities: SplitMix64::new(seed),
            member_bytes: 0,
            listpack: true,
        }))
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.0.index.len()
    }
    /// Whether there is no member.
    pub fn is_empty(&self) -> bool {
        self.0.index.is_empty()
    }
    /// Bytes held on the heap, O(1): the members, the slab and the index at their capacity.
    pub fn bytes(&self) -> usize {
        let t = &*self.0;
        let slab = t.nodes.capacity() * std::mem::size_of::<Option<Node>>();
        let free = t.free.capacity() * std::mem::size_of::<u32>();
        // A hash table of capacity c has about c * 8 / 7 buckets of an index and a control
        // byte, plus a group of control bytes.
        let index = if t.index.capacity() == 0 {
            0
        } else {
            (t.index.capacity() * 8 / 7 + 1).next_power_of_two() * (std::mem::size_of::<u32>() + 1)
                + 16
        };
        let allocations = [slab, free, index].iter().filter(|&&b| b > 0).count();
        std::mem::size_of::<Tree>()
            + ALLOCATION_OVERHEAD
            + t.member_bytes
            + slab
            + free
            + index
            + allocations * ALLOCATION_OVERHEAD
    }
    /// Whether Redis would report `listpack` (else `skiplist`): at most
    /// [`LISTPACK_ENTRIES_MAX`] members of at most [`LISTPACK_VALUE_MAX`] bytes so far. Redis
    /// never converts a skiplist back on removals, so neither does this flag.
    pub fn is_listpack(&self) -> bool {
        self.0.listpack
    }
    /// Redis' conversion before a batch of `pairs` additions (`zsetTypeMaybeConvert`, and the
    /// size hint of `zsetTypeCreate`): more than [`LISTPACK_ENTRIES_MAX`] converts at once.
    pub fn hint_batch(&mut self, pairs: usize) {
        if pairs > LISTPACK_ENTRIES_MAX {
            self.0.listpack = false;
        }
    }

    /// The score of `member`.
    pub fn score(&self, member: &[u8]) -> Option<f64> {
        self.0.find(member).map(|slot| self.0.node(slot).score)
    }
    /// The rank of `member` (0 for the lowest score), O(log n).
    pub fn rank(&self, member: &[u8]) -> Option<usize> {
        let slot = self.0.find(member)?;
        Some(self.0.rank_of(slot))
    }
    /// The member and score at `rank`, O(log n).
    pub fn at(&self, rank: usize) -> Option<(&[u8], f64)> {
        let slot = self.0.select(rank)?;
        let n = self.0.node(slot);
        Some((&n.member, n.score))
    }
    /// Members and scores from the lowest.
    pub fn iter(&self) -> Iter<'_> {
        self.iter_from(0, false)
    }
    /// Members and scores from `rank` on: towards higher ranks, or towards lower ones
    /// (`ZREVRANGE` and friends) when `reverse`. O(log n) to start, O(1) amortized a step.
    pub fn iter_from(&self, rank: usize, reverse: bool) -> Iter<'_> {
        let mut it = Iter {
            tree: &self.0,
            stack: Vec::new(),
            reverse,
        };
        if rank >= self.len() {
            return it;
        }
        let (mut t, mut rank) = (self.0.root, rank);
        while t != NIL {
            let n = self.0.node(t);
            let left = self.0.size(n.left) as usize;
            match rank.cmp(&left) {
                Ordering::Less => {
                    // This node comes after the start: visited later going forward.
                    if !reverse {
                        it.stack.push(t);
                    }
                    t = n.left;
                }
                Ordering::Equal => {
                    it.stack.push(t);
                    break;
                }
                Ordering::Greater => {
                    if reverse {
                        it.stack.push(t);
                    }
                    rank -= left + 1;
                    t = n.right;
                }
            }
        }
        it
    }
    /// How many members come before the first one for which `before` is false, O(log n).
    /// `before` must hold for a prefix of the order (a score or lex bound); on anything else
    /// the answer is a position the descent happened to find, as Redis' skiplist walks give
    /// for lex ranges over mixed scores.
    pub fn count_before(&self, mut before: impl FnMut(&[u8], f64) -> bool) -> usize {
        let (mut t, mut count) = (self.0.root, 0);
        while t != NIL {
            let n = self.0.node(t);
            if before(&n.member, n.score) {
                count += self.0.size(n.left) as usize + 1;
                t = n.right;
            } else {
                t = n.left;
            }
        }
        count
    }

    /// Sets `member`'s score (-0 is stored as 0); `true` if the member is new. Expected
    /// O(log n). A NaN score is a bug in the caller.
    pub fn insert(&mut self, member: &[u8], score: f64) -> bool {
        debug_assert!(!score.is_nan(), "sorted-set scores are never NaN");
        let score = score + 0.0;
        let t = &mut *self.0;
        if let Some(slot) = t.find(member) {
            if t.node(slot).score != score {
                // Unlink and relink in the same slot: the ZSCAN cursor relies on it.
                t.detach(slot);
                t.node_mut(slot).score = score;
                t.attach(slot);
            }
            return false;
        }
        assert!(t.index.len() < MEMBERS_MAX, "a sorted set of 2^32 members");
        let priority = t.priorities.next_u64() as u32;
        let node = Node {
            member: member.into(),
            score,
            left: NIL,
            right: NIL,
            size: 1,
            priority,
        };
        let slot = match t.free.pop() {
            Some(slot) => {
                t.nodes[slot as usize] = Some(node);
                slot
            }
            None => {
                t.nodes.push(Some(node));
                (t.nodes.len() - 1) as u32
            }
        };
        let hash = t.hasher.hash_one(member);
        let (nodes, hasher) = (&t.nodes, &t.hasher);
        t.index
            .insert_unique(hash, slot, |&s| hasher.hash_one(&*live(nodes, s).member));
        t.attach(slot);
        t.member_bytes += boxed_bytes(member.len());
        if t.index.len() > LISTPACK_ENTRIES_MAX || member.len() > LISTPACK_VALUE_MAX {
            t.listpack = false;
        }
        true
    }
    /// Removes `member`; `true` if it was there. Expected O(log n).
    pub fn remove(&mut self, member: &[u8]) -> bool {
        let t = &mut *self.0;
        let Some(slot) = t.find(member) else {
            return false;
        };
        t.detach(slot);
        t.release(slot);
        true
    }
    /// Removes and returns the lowest member (or the highest when `highest`), O(log n).
    pub fn pop(&mut self, highest: bool) -> Option<(Box<[u8]>, f64)> {
        let t = &mut *self.0;
        let rank = if highest {
            t.index.len().checked_sub(1)?
        } else {
            0
        };
        let slot = t.select(rank)?;
        t.detach(slot);
        Some(t.release(slot))
    }
    /// Removes the members of ranks `start..start + count` (clamped); returns how many went.
    /// O(log n + removed).
    pub fn remove_ranks(&mut self, start: usize, count: usize) -> usize {
        let t = &mut *self.0;
        let len = t.index.len();
        let start = start.min(len);
        let count = count.min(len - start);
        if count == 0 {
            return 0;
        }
        let (before, rest) = t.split(t.root, start as u32);
        let (gone, after) = t.split(rest, count as u32);
        t.root = t.merge(before, after);
        let mut stack = vec![gone];
        while let Some(slot) = stack.pop() {
            if slot == NIL {
                continue;
            }
            let n = t.node(slot);
            stack.push(n.left);
            stack.push(n.right);
            t.release(slot);
        }
        count
    }
    /// Visits the members in slab slots `cursor..` until `count` were visited or ten times as
    /// many slots looked at; returns the next cursor, 0 when the walk is complete. Every member
    /// present for a whole walk from cursor 0 is visited (see the module documentation).
    pub fn scan<'a>(
        &'a self,
        cursor: u64,
        count: usize,
        mut visit: impl FnMut(&'a [u8], f64),
    ) -> u64 {
        let nodes = &self.0.nodes;
        let mut slot = usize::try_from(cursor).unwrap_or(usize::MAX);
        let count = count.max(1);
        let (mut visited, mut looked) = (0, 0);
        while slot < nodes.len() && visited < count && looked < count.saturating_mul(10) {
            if let Some(n) = &nodes[slot] {
                visit(&n.member, n.score);
                visited += 1;
            }
            slot += 1;
            looked += 1;
        }
        if slot >= nodes.len() {
            0
        } else {
            slot as u64
        }
    }

    /// Checks every invariant, recounting from scratch; panics on a broken one (for tests and
    /// fuzzers): the index and the tree hold the same members, the tree is ordered, sized and
    /// heap-ordered, the free list names exactly the empty slots, the byte count is exact.
    pub fn check_invariants(&self) {
        let t = &*self.0;
        let live = t.nodes.iter().filter(|n| n.is_some()).count();
        assert_eq!(live, t.index.len(), "slab and index disagree");
        assert_eq!(
            live + t.free.len(),
            t.nodes.len(),
            "free list and slab disagree"
        );
        for &slot in &t.free {
            assert!(t.nodes[slot as usize].is_none(), "a free slot holds a node");
        }
        let mut member_bytes = 0;
        for (slot, n) in t.nodes.iter().enumerate() {
            let Some(n) = n else { continue };
            assert_eq!(
                t.find(&n.member),
                Some(slot as u32),
                "a member is not indexed"
            );
            let negative_zero = n.score == 0.0 && n.score.is_sign_negative();
            assert!(!n.score.is_nan() && !negative_zero, "a NaN or -0 score");
            member_bytes += boxed_bytes(n.member.len());
            let size = 1 + t.size(n.left) + t.size(n.right);
            assert_eq!(n.size, size, "a subtree size is wrong");
            for child in [n.left, n.right] {
                if child != NIL {
                    assert!(t.node(child).priority <= n.priority, "heap order broken");
                }
            }
        }
        assert_eq!(member_bytes, t.member_bytes, "member bytes drifted");
        assert_eq!(
            t.size(t.root) as usize,
            live,
            "the tree does not hold every node"
        );
        let mut previous: Option<(&[u8], f64)> = None;
        for (member, score) in self.iter() {
            if let Some((m, s)) = previous {
                assert_eq!(
                    order(s, m, score, member),
                    Ordering::Less,
                    "tree out of order"
                );
            }
            previous = Some((member, score));
        }
        if t.listpack {
            assert!(live <= LISTPACK_ENTRIES_MAX);
        }
    }
}

/// The node in `slot` of `nodes`, which a link or the index names.
fn live(nodes: &[Option<Node>], slot: u32) -> &Node {
    nodes[slot as usize]
        .as_ref()
        .expect("linked and indexed slots hold nodes")
}

impl Tree {
    fn node(&self, slot: u32) -> &Node {
        live(&self.nodes, slot)
    }
    fn node_mut(&mut self, slot: u32) -> &mut Node {
        self.nodes[slot as usize]
            .as_mut()
            .expect("linked and indexed slots hold nodes")
    }
    fn size(&self, slot: u32) -> u32 {
        if slot == NIL {
            0
        } else {
            self.node(slot).size
        }
    }
    fn fix_size(&mut self, slot: u32) {
        let n = self.node(slot);
        let size = 1 + self.size(n.left) + self.size(n.right);
        self.node_mut(slot).size = size;
    }
    /// Links `slot` into `hole`; a root hole is `root`, the merged tree's root.
    fn link(&mut self, root: &mut u32, hole: Hole, slot: u32) {
        match hole {
            Hole::Root => *root = slot,
            Hole::Left(parent) => self.node_mut(parent).left = slot,
            Hole::Right(parent) => self.node_mut(parent).right = slot,
        }
    }

    fn find(&self, member: &[u8]) -> Option<u32> {
        let hash = self.hasher.hash_one(member);
        self.index
            .find(hash, |&s| &*self.node(s).member == member)
            .copied()
    }
    /// Nodes ordered before the node in `slot`.
    fn rank_of(&self, slot: u32) -> usize {
        let target = self.node(slot);
        let (mut t, mut count) = (self.root, 0);
        while t != NIL {
            let n = self.node(t);
            match order(n.score, &n.member, target.score, &target.member) {
                Ordering::Less => {
                    count += self.size(n.left) as usize + 1;
                    t = n.right;
                }
                Ordering::Equal => return count + self.size(n.left) as usize,
                Ordering::Greater => t = n.left,
            }
        }
        unreachable!("an indexed node is in the tree")
    }
    fn select(&self, rank: usize) -> Option<u32> {
        if rank >= self.index.len() {
            return None;
        }
        let (mut t, mut rank) = (self.root, rank);
        while t != NIL {
            let n = self.node(t);
            let left = self.size(n.left) as usize;
            match rank.cmp(&left) {
                Ordering::Less => t = n.left,
                Ordering::Equal => return Some(t),
                Ordering::Greater => {
                    rank -= left + 1;
                    t = n.right;
                }
            }
        }
        unreachable!("the tree holds len nodes")
    }

    /// Splits the tree at `t` into its first `k` nodes and the rest, top-down.
    fn split(&mut self, mut t: u32, mut k: u32) -> (u32, u32) {
        let (mut left_root, mut right_root) = (NIL, NIL);
        let (mut left_hole, mut right_hole) = (None::<u32>, None::<u32>);
        let mut path = Vec::new();
        while t != NIL {
            path.push(t);
            let n = self.node(t);
            let (left, right) = (n.left, n.right);
            let left_size = self.size(left);
            if k <= left_size {
                // `t` and its right subtree go right; keep splitting its left subtree.
                match right_hole {
                    None => right_root = t,
                    Some(parent) => self.node_mut(parent).left = t,
                }
                right_hole = Some(t);
                t = left;
            } else {
                match left_hole {
                    None => left_root = t,
                    Some(parent) => self.node_mut(parent).right = t,
                }
                left_hole = Some(t);
                k -= left_size + 1;
                t = right;
            }
        }
        if let Some(parent) = left_hole {
            self.node_mut(parent).right = NIL;
        }
        if let Some(parent) = right_hole {
            self.node_mut(parent).left = NIL;
        }
        // Every node's children are untouched subtrees or nodes later on the path.
        for &slot in path.iter().rev() {
            self.fix_size(slot);
        }
        (left_root, right_root)
    }
    /// Joins two trees, every node of `a` before every node of `b`, top-down.
    fn merge(&mut self, mut a: u32, mut b: u32) -> u32 {
        let (mut root, mut hole) = (NIL, Hole::Root);
        let mut path = Vec::new();
        loop {
            if a == NIL || b == NIL {
                self.link(&mut root, hole, if a == NIL { b } else { a });
                break;
            }
            if self.node(a).priority >= self.node(b).priority {
                self.link(&mut root, hole, a);
                path.push(a);
                hole = Hole::Right(a);
                a = self.node(a).right;
            } else {
                self.link(&mut root, hole, b);
                path.push(b);
                hole = Hole::Left(b);
                b = self.node(b).left;
            }
        }
        for &slot in path.iter().rev() {
            self.fix_size(slot);
        }
        root
    }
    /// Links the unlinked node in `slot` into the tree at its place.
    fn attach(&mut self, slot: u32) {
        let node = self.node(slot);
        let (mut t, mut rank) = (self.root, 0);
        while t != NIL {
            let n = self.node(t);
            if order(n.score, &n.member, node.score, &node.member) == Ordering::Less {
                rank += self.size(n.left) + 1;
                t = n.right;
            } else {
                t = n.left;
            }
        }
        let (before, after) = self.split(self.root, rank);
        let joined = self.merge(before, slot);
        self.root = self.merge(joined, after);
    }
    /// Unlinks the node in `slot` from the tree, leaving it a single node.
    fn detach(&mut self, slot: u32) {
        let rank = self.rank_of(slot) as u32;
        let (before, rest) = self.split(self.root, rank);
        let (alone, after) = self.split(rest, 1);
        debug_assert_eq!(alone, slot, "the node at its own rank");
        self.root = self.merge(before, after);
        let n = self.node_mut(slot);
        (n.left, n.right, n.size) = (NIL, NIL, 1);
    }
    /// Frees the unlinked node in `slot`: out of the index, the slab slot to the free list.
    fn release(&mut self, slot: u32) -> (Box<[u8]>, f64) {
        let hash = self.hasher.hash_one(&*self.node(slot).member);
        if let Ok(entry) = self.index.find_entry(hash, |&s| s == slot) {
            entry.remove();
        }
        let node = self.nodes[slot as usize]
            .take()
            .expect("a released slot held a node");
        self.free.push(slot);
        self.member_bytes -= boxed_bytes(node.member.len());
        (node.member, node.score)
    }
}

/// Members and scores in order from a rank; see [`ZSetValue::iter_from`].
#[derive(Debug)]
pub struct Iter<'a> {
    tree: &'a Tree,
    /// The nodes still to visit whose subtrees on the walking side are not yet expanded.
    stack: Vec<u32>,
    reverse: bool,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a [u8], f64);

    fn next(&mut self) -> Option<Self::Item> {
        let tree = self.tree;
        let slot = self.stack.pop()?;
        let n = tree.node(slot);
        let mut next = if self.reverse { n.left } else { n.right };
        while next != NIL {
            self.stack.push(next);
            let child = tree.node(next);
            next = if self.reverse {
                child.right
            } else {
                child.left
            };
        }
        Some((&n.member, n.score))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(z: &ZSetValue) -> Vec<(Vec<u8>, f64)> {
        z.iter().map(|(m, s)| (m.to_vec(), s)).collect()
    }

    #[test]
    fn orders_by_score_then_member_and_ranks() {
        let mut z = ZSetValue::new(1);
        assert!(z.insert(b"m", 1.0));
        assert!(!z.insert(b"m", 2.0));
        assert!(z.insert(b"a", 2.0));
        assert!(z.insert(b"z", -0.0));
        assert_eq!(
            members(&z),
            [
                (b"z".to_vec(), 0.0),
                (b"a".to_vec(), 2.0),
                (b"m".to_vec(), 2.0)
            ]
        );
        assert!(
            z.score(b"z").unwrap().is_sign_positive(),
            "-0 is stored as 0"
        );
        assert_eq!(z.rank(b"m"), Some(2));
        assert_eq!(z.at(1), Some((&b"a"[..], 2.0)));
        assert_eq!(z.at(3), None);
        let back: Vec<_> = z.iter_from(1, true).map(|(m, _)| m.to_vec()).collect();
        assert_eq!(back, [b"a".to_vec(), b"z".to_vec()]);
        assert_eq!(z.count_before(|_, s| s < 2.0), 1);
        z.check_invariants();
        assert!(z.remove(b"m"));
        assert!(!z.remove(b"m"));
        assert_eq!(z.pop(true), Some((Box::from(&b"a"[..]), 2.0)));
        assert_eq!(z.pop(false), Some((Box::from(&b"z"[..]), 0.0)));
        assert_eq!(z.pop(false), None);
        z.check_invariants();
    }

    #[test]
    fn matches_a_sorted_vector_under_random_operations() {
        let mut rng = SplitMix64::new(42);
        let mut z = ZSetValue::new(7);
        let mut model: Vec<(f64, Vec<u8>)> = Vec::new();
        for step in 0..20_000 {
            let member = format!("m{}", rng.below(500)).into_bytes();
            let score = (rng.below(50) as f64) - 25.0;
            match rng.below(10) {
                0..=5 => {
                    let new = z.insert(&member, score);
                    let at = model.iter().position(|(_, m)| *m == member);
                    assert_eq!(new, at.is_none());
                    if let Some(at) = at {
                        model.remove(at);
                    }
                    model.push((score, member));
                }
                6..=7 => {
                    let at = model.iter().position(|(_, m)| *m == member);
                    assert_eq!(z.remove(&member), at.is_some());
                    if let Some(at) = at {
                        model.remove(at);
                    }
                }
                8 => {
                    let start = rng.below(model.len() as u64 + 2) as usize;
                    let count = rng.below(5) as usize;
                    model.sort_by(|a, b| order(a.0, &a.1, b.0, &b.1));
                    let end = (start + count).min(model.len());
                    let want = end.saturating_sub(start.min(end));
                    assert_eq!(z.remove_ranks(start, count), want);
                    model.drain(start.min(end)..end);
                }
                _ => {
                    model.sort_by(|a, b| order(a.0, &a.1, b.0, &b.1));
                    if let Some((s, m)) = model.first() {
                        assert_eq!(z.rank(m), Some(0));
                        assert_eq!(z.at(0), Some((&m[..], *s)));
                    }
                }
            }
            model.sort_by(|a, b| order(a.0, &a.1, b.0, &b.1));
            if step % 997 == 0 {
                z.check_invariants();
                let got: Vec<_> = z.iter().map(|(m, s)| (s, m.to_vec())).collect();
                assert_eq!(got, model);
                for (rank, (_, m)) in model.iter().enumerate() {
                    assert_eq!(z.rank(m), Some(rank));
                }
                let from = model.len() / 2;
                let back: Vec<_> = z.iter_from(from, true).map(|(m, _)| m.to_vec()).collect();
                let want: Vec<_> = model[..=from.min(model.len().saturating_sub(1))]
                    .iter()
                    .rev()
                    .map(|(_, m)| m.clone())
                    .collect();
                if !model.is_empty() {
                    assert_eq!(back, want);
                }
            }
        }
    }

    #[test]
    fn a_scan_returns_every_member_present_throughout() {
        let mut z = ZSetValue::new(3);
        for i in 0..1000 {
            z.insert(format!("keep{i}").as_bytes(), f64::from(i));
        }
        let mut seen = std::collections::HashSet::new();
        let (mut cursor, mut churn) = (0, 0u32);
        loop {
            cursor = z.scan(cursor, 10, |m, _| {
                seen.insert(m.to_vec());
            });
            // Churn: new members, removals of them, and score changes of kept ones.
            z.insert(format!("new{churn}").as_bytes(), 0.5);
            if churn % 2 == 0 {
                z.remove(format!("new{}", churn / 2).as_bytes());
            }
            z.insert(
                format!("keep{}", churn % 1000).as_bytes(),
                -f64::from(churn),
            );
            churn += 1;
            if cursor == 0 {
                break;
            }
        }
        for i in 0..1000 {
            assert!(seen.contains(format!("keep{i}").as_bytes()), "keep{i}");
        }
        z.check_invariants();
    }

    #[test]
    fn sorted_insertions_stay_shallow() {
        // Ascending inserts are a linked list for a plain search tree; the treap's random
        // priorities keep ranks cheap. A loop over 100k ranks finishes quickly only if so.
        let mut z = ZSetValue::new(9);
        for i in 0..100_000 {
            z.insert(format!("{i:08}").as_bytes(), f64::from(i));
        }
        for i in (0..100_000).step_by(7) {
            assert_eq!(z.rank(format!("{i:08}").as_bytes()), Some(i as usize));
        }
        let mut depth_max = 0;
        let mut stack = vec![(z.0.root, 1)];
        while let Some((t, depth)) = stack.pop() {
            if t == NIL {
                continue;
            }
            depth_max = depth_max.max(depth);
            let n = z.0.node(t);
            stack.push((n.left, depth + 1));
            stack.push((n.right, depth + 1));
        }
        assert!(depth_max < 100, "depth {depth_max}");
    }
}
