//! SipHash-2-4 (Aumasson and Bernstein, "SipHash: a fast short-input PRF", 2012): the keyed
//! hash behind initial sequence numbers, SYN cookies and the connection table.
//!
//! Why SipHash: every use here hashes a few bytes an attacker chooses (addresses and ports)
//! under a secret key, and the attacker must not be able to predict the output (ISNs,
//! cookies) or aim collisions (the connection table). That is the job of a pseudo-random
//! function on short inputs, which SipHash was designed for, and it is what Linux uses for
//! the same purposes. A cryptographic hash such as SHA-256 or an HMAC over one would also do,
//! but costs several times more per SYN, which matters when SYN cookies are on precisely
//! because a flood is arriving; an unkeyed fast hash (FxHash, FNV) would be cheaper still
//! and is rejected because without a key the outputs are predictable.
//!
//! Why written here rather than taken from the `siphasher` crate: the whole algorithm is
//! about forty lines, the crate stays free of dependencies beyond `thiserror`, and the
//! inputs here are fixed-size words, so [`SipKey::hash_u32x4`] skips the byte-buffering of a
//! streaming [`core::hash::Hasher`]. The general [`SipKey::hash`] over a byte slice exists so
//! the implementation can be checked against the 64 reference vectors of the paper.
//!
//! The key is wrapped in [`SipKey`], whose `Debug` prints no key material, so a key can sit
//! inside structures that are logged without leaking into the log.

use core::fmt;

/// A 128-bit SipHash key. It must come from a cryptographically secure random source (the
/// control plane reads `getrandom(2)`); this crate never makes one.
///
/// `Debug` prints `SipKey(..)`, never the key. There is deliberately no `PartialEq`, so a
/// key is not compared in code that could leak it through timing.
#[derive(Clone)]
pub struct SipKey {
    k0: u64,
    k1: u64,
}

impl SipKey {
    /// A key from its two 64-bit halves, `k0` being the first eight key bytes read
    /// little-endian, as in the paper.
    pub const fn new(k0: u64, k1: u64) -> Self {
        Self { k0, k1 }
    }

    /// A key from 16 bytes, the layout the paper and its reference vectors use.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        let [a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3, b4, b5, b6, b7] = bytes;
        Self {
            k0: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            k1: u64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7]),
        }
    }

    /// SipHash-2-4 of an arbitrary byte string.
    pub fn hash(&self, msg: &[u8]) -> u64 {
        let mut state = State::new(self);
        let mut words = msg.chunks_exact(8);
        for word in &mut words {
            let mut m = [0u8; 8];
            m.copy_from_slice(word);
            state.compress(u64::from_le_bytes(m));
        }
        // The last block holds the 0..7 remaining bytes and, in its top byte, the message
        // length modulo 256 (§2 of the paper, "Finalization" of the input).
        let tail = words.remainder();
        let mut last = [0u8; 8];
        last[..tail.len()].copy_from_slice(tail);
        last[7] = msg.len() as u8;
        state.compress(u64::from_le_bytes(last));
        state.finish()
    }

    /// SipHash-2-4 of the 16 bytes `a, b, c, d`, each written little-endian, without
    /// touching memory: the one-shot form for a 4-tuple plus a counter.
    ///
    /// Equal to `self.hash(&bytes)` for those 16 bytes, which the tests check.
    pub fn hash_u32x4(&self, a: u32, b: u32, c: u32, d: u32) -> u64 {
        let mut state = State::new(self);
        state.compress(u64::from(a) | (u64::from(b) << 32));
        state.compress(u64::from(c) | (u64::from(d) << 32));
        // Sixteen bytes leave no tail: the final block is the length alone.
        state.compress(16u64 << 56);
        state.finish()
    }
}

impl fmt::Debug for SipKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SipKey(..)")
    }
}

/// The four 64-bit words of SipHash's internal state.
struct State {
    v: [u64; 4],
}

impl State {
    /// Initialisation: the key xored into the constants "somepseudorandomlygeneratedbytes".
    fn new(key: &SipKey) -> Self {
        Self {
            v: [
                key.k0 ^ 0x736f_6d65_7073_6575,
                key.k1 ^ 0x646f_7261_6e64_6f6d,
                key.k0 ^ 0x6c79_6765_6e65_7261,
                key.k1 ^ 0x7465_6462_7974_6573,
            ],
        }
    }

    /// One ARX round of the permutation.
    #[inline(always)]
    fn round(&mut self) {
        let [mut v0, mut v1, mut v2, mut v3] = self.v;
        v0 = v0.wrapping_add(v1);
        v1 = v1.rotate_left(13) ^ v0;
        v0 = v0.rotate_left(32);
        v2 = v2.wrapping_add(v3);
        v3 = v3.rotate_left(16) ^ v2;
        v0 = v0.wrapping_add(v3);
        v3 = v3.rotate_left(21) ^ v0;
        v2 = v2.wrapping_add(v1);
        v1 = v1.rotate_left(17) ^ v2;
        v2 = v2.rotate_left(32);
        self.v = [v0, v1, v2, v3];
    }

    /// Absorbs one message word with two rounds (the "2" of SipHash-2-4).
    #[inline(always)]
    fn compress(&mut self, m: u64) {
        self.v[3] ^= m;
        self.round();
        self.round();
        self.v[0] ^= m;
    }

    /// Finalisation with four rounds (the "4" of SipHash-2-4).
    #[inline(always)]
    fn finish(mut self) -> u64 {
        self.v[2] ^= 0xff;
        self.round();
        self.round();
        self.round();
        self.round();
        self.v[0] ^ self.v[1] ^ self.v[2] ^ self.v[3]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference vectors: key 00 01 .. 0f, message i the bytes 00 01 .. (i-1), for i in
    /// 0..64, as the paper's reference implementation lists them (there as the little-endian
    /// bytes of these words). Regenerated for this file with an independent implementation
    /// (the C extension of the `siphashc` Python package); vectors 0 and 15 also match the
    /// values printed in the paper itself.
    const VECTORS: [u64; 64] = [
        0x726fdb47dd0e0e31,
        0x74f839c593dc67fd,
        0x0d6c8009d9a94f5a,
        0x85676696d7fb7e2d,
        0xcf2794e0277187b7,
        0x18765564cd99a68d,
        0xcbc9466e58fee3ce,
        0xab0200f58b01d137,
        0x93f5f5799a932462,
        0x9e0082df0ba9e4b0,
        0x7a5dbbc594ddb9f3,
        0xf4b32f46226bada7,
        0x751e8fbc860ee5fb,
        0x14ea5627c0843d90,
        0xf723ca908e7af2ee,
        0xa129ca6149be45e5,
        0x3f2acc7f57c29bdb,
        0x699ae9f52cbe4794,
        0x4bc1b3f0968dd39c,
        0xbb6dc91da77961bd,
        0xbed65cf21aa2ee98,
        0xd0f2cbb02e3b67c7,
        0x93536795e3a33e88,
        0xa80c038ccd5ccec8,
        0xb8ad50c6f649af94,
        0xbce192de8a85b8ea,
        0x17d835b85bbb15f3,
        0x2f2e6163076bcfad,
        0xde4daaaca71dc9a5,
        0xa6a2506687956571,
        0xad87a3535c49ef28,
        0x32d892fad841c342,
        0x7127512f72f27cce,
        0xa7f32346f95978e3,
        0x12e0b01abb051238,
        0x15e034d40fa197ae,
        0x314dffbe0815a3b4,
        0x027990f029623981,
        0xcadcd4e59ef40c4d,
        0x9abfd8766a33735c,
        0x0e3ea96b5304a7d0,
        0xad0c42d6fc585992,
        0x187306c89bc215a9,
        0xd4a60abcf3792b95,
        0xf935451de4f21df2,
        0xa9538f0419755787,
        0xdb9acddff56ca510,
        0xd06c98cd5c0975eb,
        0xe612a3cb9ecba951,
        0xc766e62cfcadaf96,
        0xee64435a9752fe72,
        0xa192d576b245165a,
        0x0a8787bf8ecb74b2,
        0x81b3e73d20b49b6f,
        0x7fa8220ba3b2ecea,
        0x245731c13ca42499,
        0xb78dbfaf3a8d83bd,
        0xea1ad565322a1a0b,
        0x60e61c23a3795013,
        0x6606d7e446282b93,
        0x6ca4ecb15c5f91e1,
        0x9f626da15c9625f3,
        0xe51b38608ef25f57,
        0x958a324ceb064572,
    ];

    fn reference_key() -> SipKey {
        let mut key = [0u8; 16];
        for (i, b) in key.iter_mut().enumerate() {
            *b = i as u8;
        }
        SipKey::from_bytes(key)
    }

    #[test]
    fn reference_vectors() {
        let key = reference_key();
        let mut msg = [0u8; 64];
        for (i, b) in msg.iter_mut().enumerate() {
            *b = i as u8;
        }
        for (len, want) in VECTORS.iter().enumerate() {
            assert_eq!(key.hash(&msg[..len]), *want, "vector {len}");
        }
    }

    #[test]
    fn new_matches_from_bytes() {
        let a = SipKey::new(0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
        assert_eq!(a.hash(&[]), VECTORS[0]);
        assert_eq!(a.hash(b"melange"), reference_key().hash(b"melange"));
    }

    #[test]
    fn words_match_bytes() {
        let key = SipKey::new(0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210);
        let words = [0xc0a8_0001u32, 0x0a00_0002, 0x1f90_c350, 7];
        let mut bytes = [0u8; 16];
        for (chunk, w) in bytes.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        assert_eq!(
            key.hash_u32x4(words[0], words[1], words[2], words[3]),
            key.hash(&bytes)
        );
        // The reference key and message 00..0f: vector 16.
        let rk = reference_key();
        assert_eq!(
            rk.hash_u32x4(0x0302_0100, 0x0706_0504, 0x0b0a_0908, 0x0f0e_0d0c),
            VECTORS[16]
        );
    }

    #[test]
    fn debug_hides_the_key() {
        let key = SipKey::new(0x1122_3344_5566_7788, 0x99aa_bbcc_ddee_ff00);
        let shown = format!("{key:?}");
        assert_eq!(shown, "SipKey(..)");
        for secret in ["1122", "7788", "99aa", "ff00"] {
            assert!(!shown.to_lowercase().contains(secret));
        }
        assert!(!shown.contains(&0x1122_3344_5566_7788u64.to_string()));
    }
}
