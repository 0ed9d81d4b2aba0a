//! Spans: where a key, an argument or a data block lies in a connection's byte stream, and
//! how a caller reads one back from the pieces it still holds.
//!
//! The parsers never copy a key or a value: they report a [`Span`] (a stream offset, counted
//! from the first byte the connection received, and a length). The caller holds the pieces it
//! fed (TCP segments lent by the stack) until it has handled the request, and reads a span
//! with [`read`], which borrows when the span lies inside one piece (the common case: a key of
//! a few bytes in one segment) and copies into the caller's scratch buffer only when the span
//! straddles pieces. [`for_each_chunk`] walks a span piece by piece without any copy, which is
//! how a store copies a 1 MiB value into its item as it arrived.
//!
//! Alternative rejected: a parser that gathers every request into a contiguous buffer. It
//! copies every byte once more and needs a buffer as large as the largest value per
//! connection; memcached itself reads values straight into the item for that reason.

/// A range of a connection's byte stream: `len` bytes from stream offset `offset`.
///
/// Offsets count from the first byte the connection received (offset 0), so they stay valid
/// however the stream was cut into pieces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Span {
    /// Stream offset of the first byte.
    pub offset: u64,
    /// Number of bytes.
    pub len: u32,
}

impl Span {
    /// The span of `len` bytes from `offset`.
    pub const fn new(offset: u64, len: u32) -> Self {
        Self { offset, len }
    }

    /// Stream offset one past the last byte.
    pub const fn end(&self) -> u64 {
        self.offset + self.len as u64
    }

    /// Whether the span holds no byte.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One piece of the stream the caller still holds: its bytes and the stream offset of the
/// first one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece<'a> {
    /// Stream offset of `bytes[0]`.
    pub offset: u64,
    /// The bytes.
    pub bytes: &'a [u8],
}

impl<'a> Piece<'a> {
    /// The piece of `bytes` starting at stream offset `offset`.
    pub const fn new(offset: u64, bytes: &'a [u8]) -> Self {
        Self { offset, bytes }
    }

    /// Stream offset one past the last byte.
    pub const fn end(&self) -> u64 {
        self.offset + self.bytes.len() as u64
    }
}

/// Why a span could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpanError {
    /// A byte of the span lies in none of the pieces. The caller released a piece before it
    /// was done with the request, or passed the wrong list: a bug in the caller.
    #[error("stream bytes {offset}..{end} are not in the pieces held")]
    NotHeld {
        /// First missing stream offset.
        offset: u64,
        /// End of the span.
        end: u64,
    },
    /// The span straddles pieces and the scratch (or output) buffer is shorter than the span:
    /// pass one of at least `span.len` bytes.
    #[error("buffer of {have} bytes is shorter than the span's {need}")]
    BufferTooShort {
        /// Bytes needed.
        need: u32,
        /// Bytes given.
        have: usize,
    },
}

/// The piece that holds stream offset `at`, and the index of `at` in it.
fn locate<'a>(pieces: &[Piece<'a>], at: u64) -> Option<(&'a [u8], usize)> {
    pieces.iter().find_map(|p| {
        (p.offset <= at && at < p.end()).then(|| {
            // `at - p.offset < p.bytes.len()`, which is a `usize`.
            (p.bytes, (at - p.offset) as usize)
        })
    })
}

/// Calls `f` with each contiguous run of the span's bytes, in stream order, without copying.
///
/// Checks first that every byte is held, so `f` is called for all of the span or not at all.
/// Pieces may be given in any order; they must not disagree where they overlap.
pub fn for_each_chunk<'a>(
    pieces: &[Piece<'a>],
    span: Span,
    mut f: impl FnMut(&'a [u8]),
) -> Result<(), SpanError> {
    for pass in 0..2 {
        let mut at = span.offset;
        while at < span.end() {
            let Some((bytes, index)) = locate(pieces, at) else {
                return Err(SpanError::NotHeld {
                    offset: at,
                    end: span.end(),
                });
            };
            let take = (bytes.len() - index).min((span.end() - at) as usize);
            if pass == 1 {
                f(&bytes[index..index + take]);
            }
            at += take as u64;
        }
    }
    Ok(())
}

/// Copies the span's bytes into `out[..span.len]`.
pub fn copy_to(pieces: &[Piece<'_>], span: Span, out: &mut [u8]) -> Result<(), SpanError> {
    let need = span.len as usize;
    if out.len() < need {
        return Err(SpanError::BufferTooShort {
            need: span.len,
            have: out.len(),
        });
    }
    let mut filled = 0;
    for_each_chunk(pieces, span, |chunk| {
        out[filled..filled + chunk.len()].copy_from_slice(chunk);
        filled += chunk.len();
    })?;
    debug_assert_eq!(filled, need);
    Ok(())
}

/// The span's bytes: borrowed from a piece when one piece holds them all, else copied into
/// `scratch` (which must then be at least `span.len` bytes).
pub fn read<'a>(
    pieces: &[Piece<'a>],
    span: Span,
    scratch: &'a mut [u8],
) -> Result<&'a [u8], SpanError> {
    if span.is_empty() {
        return Ok(&[]);
    }
    if let Some((bytes, index)) = locate(pieces, span.offset) {
        if bytes.len() - index >= span.len as usize {
            return Ok(&bytes[index..index + span.len as usize]);
        }
    }
    copy_to(pieces, span, scratch)?;
    Ok(&scratch[..span.len as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces() -> [Piece<'static>; 3] {
        [
            Piece::new(0, b"get fo"),
            Piece::new(6, b"o"),
            Piece::new(7, b" bar\r\n"),
        ]
    }

    #[test]
    fn read_borrows_inside_one_piece() {
        let mut scratch = [0u8; 0];
        let got = read(&pieces(), Span::new(8, 3), &mut scratch).unwrap();
        assert_eq!(got, b"bar");
    }

    #[test]
    fn read_copies_across_pieces() {
        let mut scratch = [0u8; 8];
        let got = read(&pieces(), Span::new(4, 3), &mut scratch).unwrap();
        assert_eq!(got, b"foo");
    }

    #[test]
    fn read_reports_short_scratch_and_missing_bytes() {
        let mut scratch = [0u8; 2];
        assert_eq!(
            read(&pieces(), Span::new(4, 3), &mut scratch),
            Err(SpanError::BufferTooShort { need: 3, have: 2 })
        );
        let mut scratch = [0u8; 8];
        assert_eq!(
            read(&pieces(), Span::new(10, 5), &mut scratch),
            Err(SpanError::NotHeld {
                offset: 13,
                end: 15
            })
        );
    }

    #[test]
    fn for_each_chunk_is_all_or_nothing() {
        let mut calls = 0;
        let held = [Piece::new(0, b"abc"), Piece::new(5, b"fgh")];
        assert!(for_each_chunk(&held, Span::new(1, 6), |_| calls += 1).is_err());
        assert_eq!(calls, 0);
        let mut got = Vec::new();
        for_each_chunk(&pieces(), Span::new(2, 8), |c| got.extend_from_slice(c)).unwrap();
        assert_eq!(got, b"t foo ba");
    }
}
