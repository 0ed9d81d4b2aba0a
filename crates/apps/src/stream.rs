//! The byte stream `melange source` sends, and the SHA-256 digests both ends of a transfer
//! print.
//!
//! A transfer is checked end to end by comparing two digests, each computed where the bytes
//! are: the source hashes what it generates, the sink what it receives, so neither keeps a
//! copy and any byte lost, duplicated, reordered or corrupted on the way (by Melange's TCP,
//! the kernel's, or the path) shows as a different digest. SHA-256 rather than a CRC: the
//! peer can be any Linux program (`sha256sum` of what `nc` received), and a cryptographic
//! digest is what such tools print.
//!
//! The stream is SplitMix64 seeded with the transfer's seed: byte `k` is byte `k % 8` of the
//! `k / 8`-th output in little-endian order. That is eight bytes per multiply-xorshift, about
//! as fast as copying memory, reproducible anywhere from the seed alone (`SeededStream::fill`
//! over any buffer boundaries gives the same bytes), and not a repeating pattern that a
//! middlebox or a bug could match by accident. The test vector below pins it, so another
//! implementation (a script beside a Linux peer) can be checked against this one, e.g. in
//! Python:
//!
//! ```text
//! M = (1 << 64) - 1
//! def stream(seed, n):
//!     s, out = seed, bytearray()
//!     while len(out) < n:
//!         s = (s + 0x9E3779B97F4A7C15) & M
//!         z = ((s ^ (s >> 30)) * 0xBF58476D1CE4E5B9) & M
//!         z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
//!         out += (z ^ (z >> 31)).to_bytes(8, "little")
//!     return bytes(out[:n])    # hashlib.sha256(stream(seed, n)).hexdigest()
//! ```

use melange_core::rng::SplitMix64;
use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Sha256Digest = [u8; 32];

/// The deterministic stream of a seed. See the module documentation.
#[derive(Debug, Clone)]
pub struct SeededStream {
    rng: SplitMix64,
    /// The current output word, and how many of its bytes were used (8: none left).
    word: [u8; 8],
    used: usize,
}

impl SeededStream {
    /// The stream of `seed`, from its first byte.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: SplitMix64::new(seed),
            word: [0; 8],
            used: 8,
        }
    }

    /// Writes the stream's next `out.len()` bytes into `out`.
    pub fn fill(&mut self, out: &mut [u8]) {
        let mut at = 0;
        // What is left of the current word.
        while self.used < 8 && at < out.len() {
            out[at] = self.word[self.used];
            self.used += 1;
            at += 1;
        }
        let mut words = out[at..].chunks_exact_mut(8);
        for chunk in &mut words {
            chunk.copy_from_slice(&self.rng.next_u64().to_le_bytes());
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            self.word = self.rng.next_u64().to_le_bytes();
            let n = tail.len();
            tail.copy_from_slice(&self.word[..n]);
            self.used = n;
        }
    }
}

/// The SHA-256 of the first `bytes` bytes of `seed`'s stream, computed in 64 KiB pieces: what
/// `melange source --seed seed --bytes bytes` prints, without a network.
pub fn stream_sha256(seed: u64, bytes: u64) -> Sha256Digest {
    let mut stream = SeededStream::new(seed);
    let mut hasher = Sha256::new();
    let mut piece = vec![0u8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(piece.len() as u64) as usize;
        stream.fill(&mut piece[..n]);
        hasher.update(&piece[..n]);
        left -= n as u64;
    }
    hasher.finalize().into()
}

/// The digest in lower-case hexadecimal, as `sha256sum` prints it.
pub fn hex(digest: &Sha256Digest) -> String {
    use std::fmt::Write;
    digest.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_splitmix64_little_endian() {
        // SplitMix64 seeded with 0 starts 0xe220a8397b1dcdaf (its published first output).
        let mut out = [0u8; 10];
        SeededStream::new(0).fill(&mut out);
        assert_eq!(out[..8], 0xe220_a839_7b1d_cdafu64.to_le_bytes());
        assert_eq!(out[8..], 0x6e78_9e6a_a1b9_65f4u64.to_le_bytes()[..2]);
    }

    #[test]
    fn any_buffer_boundaries_give_the_same_bytes() {
        let mut whole = vec![0u8; 10_000];
        SeededStream::new(42).fill(&mut whole);
        let mut rng = SplitMix64::new(7);
        let mut pieces = SeededStream::new(42);
        let mut at = 0;
        while at < whole.len() {
            let n = (rng.below(40) as usize).min(whole.len() - at);
            let mut piece = vec![0u8; n];
            pieces.fill(&mut piece);
            assert_eq!(piece, whole[at..at + n], "at {at}");
            at += n;
        }
    }

    #[test]
    fn digests_match_known_values() {
        // SHA-256 of nothing, as every implementation prints it.
        assert_eq!(
            hex(&stream_sha256(1, 0)),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // Other seeds, other digests; the same seed, the same digest over any length split.
        assert_ne!(stream_sha256(1, 100_000), stream_sha256(2, 100_000));
        assert_ne!(stream_sha256(1, 100_000), stream_sha256(1, 100_001));
        let mut bytes = vec![0u8; 100_000];
        SeededStream::new(1).fill(&mut bytes);
        let direct: Sha256Digest = Sha256::digest(&bytes).into();
        assert_eq!(stream_sha256(1, 100_000), direct);
    }
}
