//! Base64 (RFC 4648 section 4, standard alphabet, padded) for the meta protocol's binary keys
//! (the `b` flag): the key travels encoded, the server stores the decoded bytes and encodes
//! them again when it returns the key (`k`).
//!
//! memcached's decoder skips bytes outside the alphabet and requires the rest to be a whole
//! number of 4-byte groups; ours refuses such bytes instead (a key with them is a client
//! bug either way) and otherwise accepts the same strings. Nothing here allocates.

use thiserror::Error;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Why a string is not valid padded base64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum Base64Error {
    /// Not a whole number of 4-byte groups, a byte outside the alphabet, or misplaced or
    /// excess padding. The server answers memcached's "CLIENT_ERROR error decoding key"; the
    /// request parser already checks meta keys, so a server only sees this for keys it built.
    #[error("invalid base64")]
    Invalid,
    /// The output buffer is shorter than [`decoded_len`]: pass a larger one.
    #[error("output buffer too short")]
    OutputTooShort,
}

/// The value of one alphabet byte, or `None`.
pub(crate) const fn value(b: u8) -> Option<u8> {
    match b {
        b'A'..=b'Z' => Some(b - b'A'),
        b'a'..=b'z' => Some(b - b'a' + 26),
        b'0'..=b'9' => Some(b - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Length of the encoding of `len` bytes.
pub const fn encoded_len(len: usize) -> usize {
    len.div_ceil(3) * 4
}

/// Length of the bytes `encoded` decodes to, or why it does not decode.
pub fn decoded_len(encoded: &[u8]) -> Result<usize, Base64Error> {
    if encoded.is_empty() || !encoded.len().is_multiple_of(4) {
        return Err(Base64Error::Invalid);
    }
    let pad = encoded.iter().rev().take_while(|&&b| b == b'=').count();
    if pad > 2 {
        return Err(Base64Error::Invalid);
    }
    let body = &encoded[..encoded.len() - pad];
    if body.iter().any(|&b| value(b).is_none()) {
        return Err(Base64Error::Invalid);
    }
    Ok(encoded.len() / 4 * 3 - pad)
}

/// Decodes `encoded` into the front of `out`; returns the decoded length.
pub fn decode(encoded: &[u8], out: &mut [u8]) -> Result<usize, Base64Error> {
    let len = decoded_len(encoded)?;
    if out.len() < len {
        return Err(Base64Error::OutputTooShort);
    }
    let mut at = 0;
    for group in encoded.chunks_exact(4) {
        // `decoded_len` checked the alphabet; '=' (only at the end) counts as zero bits.
        let v = |b: u8| u32::from(value(b).unwrap_or(0));
        let bits = v(group[0]) << 18 | v(group[1]) << 12 | v(group[2]) << 6 | v(group[3]);
        for (i, shift) in [16u32, 8, 0].into_iter().enumerate() {
            if at + i < len {
                out[at + i] = (bits >> shift) as u8;
            }
        }
        at += 3;
    }
    Ok(len)
}

/// Encodes `bytes` into the front of `out`; returns the encoded length.
///
/// # Panics
///
/// If `out` is shorter than [`encoded_len`]`(bytes.len())`: a bug in the caller, which sizes
/// its buffer from the key length limit.
pub fn encode(bytes: &[u8], out: &mut [u8]) -> usize {
    let len = encoded_len(bytes.len());
    assert!(out.len() >= len, "base64 output buffer too short");
    for (group, chunk) in out.chunks_exact_mut(4).zip(bytes.chunks(3)) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let bits = b(0) << 16 | b(1) << 8 | b(2);
        for (i, slot) in group.iter_mut().enumerate() {
            *slot = if i <= chunk.len() {
                ALPHABET[(bits >> (18 - 6 * i) & 63) as usize]
            } else {
                b'='
            };
        }
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors() {
        let vectors: [(&[u8], &[u8]); 7] = [
            (b"", b""),
            (b"f", b"Zg=="),
            (b"fo", b"Zm8="),
            (b"foo", b"Zm9v"),
            (b"foob", b"Zm9vYg=="),
            (b"fooba", b"Zm9vYmE="),
            (b"foobar", b"Zm9vYmFy"),
        ];
        for (raw, enc) in vectors {
            let mut out = [0u8; 16];
            let n = encode(raw, &mut out);
            assert_eq!(&out[..n], enc);
            if !raw.is_empty() {
                let mut back = [0u8; 16];
                let n = decode(enc, &mut back).unwrap();
                assert_eq!(&back[..n], raw);
            }
        }
    }

    #[test]
    fn refuses_what_memcached_cannot_decode() {
        let mut out = [0u8; 16];
        for bad in [
            &b""[..],
            b"Zg=",
            b"Z===",
            b"====",
            b"Zm9v!A==",
            b"Zg==Zg==",
            b"Z=g=",
        ] {
            assert_eq!(decode(bad, &mut out), Err(Base64Error::Invalid), "{bad:?}");
        }
        assert_eq!(
            decode(b"Zm9v", &mut out[..2]),
            Err(Base64Error::OutputTooShort)
        );
    }

    #[test]
    fn japanese_key_from_the_meta_docs() {
        // "ms 44OG44K544OI 2 b" in memcached's meta protocol page: "テスト".
        let mut out = [0u8; 16];
        let n = decode(b"44OG44K544OI", &mut out).unwrap();
        assert_eq!(&out[..n], "テスト".as_bytes());
    }
}
