//! Spans of a connection's byte stream, and reading them back from the pieces the caller holds.
//!
//! The parsers never see the stream whole: it arrives as pieces (TCP segments lent by the
//! stack), and the parsers report what they found as [`Span`]s, offsets from the start of the
//! connection's stream. The caller keeps the pieces a span needs (the parsers say from which
//! offset on, e.g. [`RequestParser::retain_from`](crate::RequestParser::retain_from)) and reads
//! a span back with [`read_span`] (borrowed when one piece holds it all, copied to a scratch
//! buffer otherwise) or [`chunks`] (the parts of each piece, to copy a large value straight
//! into its final home without a scratch copy).

use thiserror::Error;

/// A run of bytes of a connection's stream: `len` bytes from stream offset `offset`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Span {
    /// Offset of the first byte from the start of the stream.
    pub offset: u64,
    /// Number of bytes.
    pub len: u64,
}

impl Span {
    /// The offset just past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// One piece of the stream the caller holds: `bytes` are the stream's bytes from `offset` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece<'a> {
    /// Stream offset of `bytes[0]`.
    pub offset: u64,
    /// The bytes.
    pub bytes: &'a [u8],
}

impl Piece<'_> {
    /// The stream offset just past this piece.
    pub fn end(&self) -> u64 {
        self.offset + self.bytes.len() as u64
    }
}

/// A span could not be read from the pieces given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum PiecesError {
    /// No piece holds the stream byte at `offset`: the caller dropped a piece it had to keep,
    /// or passed pieces out of order. A bug of the caller; nothing a peer can cause.
    #[error("no piece holds stream offset {offset}: pieces must be kept from the parser's retain_from and passed in stream order")]
    NotHeld {
        /// The first stream offset not found.
        offset: u64,
    },
}

/// The index of the piece holding stream offset `offset`, if any. `pieces` are in stream order.
fn find(pieces: &[Piece<'_>], offset: u64) -> Option<usize> {
    let index = pieces.partition_point(|piece| piece.end() <= offset);
    let piece = pieces.get(index)?;
    (piece.offset <= offset && offset < piece.end()).then_some(index)
}

/// Where a span lives: inside one piece (`Some((index, start))`), or across several.
pub(crate) fn locate(
    pieces: &[Piece<'_>],
    span: Span,
) -> Result<Option<(usize, usize)>, PiecesError> {
    if span.len == 0 {
        return Ok(None);
    }
    let index = find(pieces, span.offset).ok_or(PiecesError::NotHeld {
        offset: span.offset,
    })?;
    let piece = &pieces[index];
    if span.end() <= piece.end() {
        // The span starts inside this piece, so the difference is below the piece's length.
        Ok(Some((index, (span.offset - piece.offset) as usize)))
    } else {
        Ok(None)
    }
}

/// Appends the bytes of `span` to `out`, gathered from the pieces.
pub(crate) fn copy_into(
    pieces: &[Piece<'_>],
    span: Span,
    out: &mut Vec<u8>,
) -> Result<(), PiecesError> {
    for chunk in chunks(pieces, span)? {
        out.extend_from_slice(chunk);
    }
    Ok(())
}

/// The bytes of `span`: borrowed from the piece that holds them all, or else gathered into
/// `scratch` (cleared first) and borrowed from there.
pub fn read_span<'x>(
    pieces: &[Piece<'x>],
    span: Span,
    scratch: &'x mut Vec<u8>,
) -> Result<&'x [u8], PiecesError> {
    if let Some((index, start)) = locate(pieces, span)? {
        let bytes: &'x [u8] = pieces[index].bytes;
        // `locate` found the whole span inside this piece.
        return Ok(&bytes[start..start + span.len as usize]);
    }
    scratch.clear();
    copy_into(pieces, span, scratch)?;
    Ok(&scratch[..])
}

/// The parts of `span` in each piece, in order: for copying a large value piece by piece.
/// Checks first that the pieces hold the whole span.
pub fn chunks<'p, 'x>(pieces: &'p [Piece<'x>], span: Span) -> Result<Chunks<'p, 'x>, PiecesError> {
    let first = if span.len == 0 {
        pieces.len()
    } else {
        find(pieces, span.offset).ok_or(PiecesError::NotHeld {
            offset: span.offset,
        })?
    };
    // Check that the pieces from `first` on cover the span without a gap.
    let mut covered = span.offset;
    let mut index = first;
    while covered < span.end() {
        match pieces.get(index) {
            // An empty piece holds nothing; pass over it.
            Some(piece) if piece.bytes.is_empty() && piece.offset <= covered => index += 1,
            Some(piece) if piece.offset <= covered && covered < piece.end() => {
                covered = piece.end();
                index += 1;
            }
            _ => return Err(PiecesError::NotHeld { offset: covered }),
        }
    }
    Ok(Chunks {
        pieces,
        index: first,
        at: span.offset,
        end: span.end(),
    })
}

/// Iterator over the parts of a span, one per piece (see [`chunks`]).
#[derive(Clone, Debug)]
pub struct Chunks<'p, 'x> {
    pieces: &'p [Piece<'x>],
    index: usize,
    at: u64,
    end: u64,
}

impl<'x> Iterator for Chunks<'_, 'x> {
    type Item = &'x [u8];

    fn next(&mut self) -> Option<&'x [u8]> {
        if self.at >= self.end {
            return None;
        }
        // `chunks` checked that the pieces from `index` on cover [at, end) without a gap.
        let mut piece = self.pieces.get(self.index)?;
        while piece.bytes.is_empty() {
            self.index += 1;
            piece = self.pieces.get(self.index)?;
        }
        let start = (self.at - piece.offset) as usize;
        let stop = (self.end.min(piece.end()) - piece.offset) as usize;
        self.at = piece.offset + stop as u64;
        self.index += 1;
        let bytes: &'x [u8] = piece.bytes;
        Some(&bytes[start..stop])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces<'a>(parts: &[&'a [u8]]) -> Vec<Piece<'a>> {
        let mut offset = 100;
        parts
            .iter()
            .map(|bytes| {
                let piece = Piece { offset, bytes };
                offset += bytes.len() as u64;
                piece
            })
            .collect()
    }

    #[test]
    fn a_span_inside_one_piece_is_borrowed() {
        let held = pieces(&[b"hello", b"world"]);
        let mut scratch = Vec::new();
        let bytes = read_span(
            &held,
            Span {
                offset: 106,
                len: 3,
            },
            &mut scratch,
        )
        .unwrap();
        assert_eq!(bytes, b"orl");
        assert!(std::ptr::eq(bytes.as_ptr(), held[1].bytes[1..].as_ptr()));
        assert!(scratch.is_empty());
    }

    #[test]
    fn a_span_across_pieces_is_copied() {
        let held = pieces(&[b"hel", b"lo", b"wor", b"ld"]);
        let mut scratch = Vec::new();
        let span = Span {
            offset: 101,
            len: 8,
        };
        assert_eq!(read_span(&held, span, &mut scratch).unwrap(), b"elloworl");
        let parts: Vec<&[u8]> = chunks(&held, span).unwrap().collect();
        assert_eq!(parts, vec![&b"el"[..], b"lo", b"wor", b"l"]);
    }

    #[test]
    fn empty_pieces_are_passed_over() {
        let held = [
            Piece {
                offset: 0,
                bytes: &b"ab"[..],
            },
            Piece {
                offset: 2,
                bytes: &b""[..],
            },
            Piece {
                offset: 2,
                bytes: &b""[..],
            },
            Piece {
                offset: 2,
                bytes: &b"cd"[..],
            },
        ];
        let mut scratch = Vec::new();
        assert_eq!(
            read_span(&held, Span { offset: 1, len: 2 }, &mut scratch),
            Ok(&b"bc"[..])
        );
        assert_eq!(
            chunks(&held, Span { offset: 0, len: 4 }).unwrap().count(),
            2
        );
    }

    #[test]
    fn missing_bytes_are_reported() {
        let held = pieces(&[b"abc"]);
        let mut scratch = Vec::new();
        assert_eq!(
            read_span(&held, Span { offset: 99, len: 2 }, &mut scratch),
            Err(PiecesError::NotHeld { offset: 99 })
        );
        assert_eq!(
            read_span(
                &held,
                Span {
                    offset: 101,
                    len: 5
                },
                &mut scratch
            ),
            Err(PiecesError::NotHeld { offset: 103 })
        );
        assert_eq!(
            read_span(
                &held,
                Span {
                    offset: 500,
                    len: 0
                },
                &mut scratch
            ),
            Ok(&b""[..])
        );
    }
}
