//! An owned reply value: the tests' and tools' way to build a reply, write it with the
//! [`ReplyWriter`] and read the [`ReplyParser`](crate::ReplyParser)'s frames back into one.
//!
//! The data path never builds these (a server writes replies element by element, a load
//! generator looks at frames); they allocate per element and exist for convenience and for
//! the round-trip tests that hold the writer and the parser to each other.

use crate::double::parse_double;
use crate::pieces::{self, Piece, PiecesError};
use crate::reply::{Full, Protocol, ReplyWriter, Sink};
use crate::reply_parser::Frame;
use thiserror::Error;

/// A reply, owned.
#[derive(Clone, Debug)]
pub enum Value {
    /// A simple string.
    Simple(Vec<u8>),
    /// An error (code and message).
    Error(Vec<u8>),
    /// A RESP3 blob error.
    BlobError(Vec<u8>),
    /// An integer.
    Integer(i64),
    /// A bulk string.
    Bulk(Vec<u8>),
    /// A null (RESP2's null bulk string, RESP3's null).
    Null,
    /// RESP2's null array (RESP3 has only [`Value::Null`]).
    NullArray,
    /// A double.
    Double(f64),
    /// A boolean.
    Boolean(bool),
    /// A big number's digits.
    BigNumber(Vec<u8>),
    /// A verbatim string: its format and text.
    Verbatim {
        /// The three-byte format (`txt`, `mkd`).
        format: [u8; 3],
        /// The text.
        text: Vec<u8>,
    },
    /// An array.
    Array(Vec<Value>),
    /// A map, as pairs in order.
    Map(Vec<(Value, Value)>),
    /// A set, as elements in order.
    Set(Vec<Value>),
    /// An out-of-band push.
    Push(Vec<Value>),
}

/// Equality, with every NaN equal to every NaN (a double's text `nan` reads back as some NaN).
impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        use Value::*;
        match (self, other) {
            (Simple(a), Simple(b)) | (Error(a), Error(b)) | (BlobError(a), BlobError(b)) => a == b,
            (Bulk(a), Bulk(b)) | (BigNumber(a), BigNumber(b)) => a == b,
            (Integer(a), Integer(b)) => a == b,
            (Null, Null) | (NullArray, NullArray) => true,
            (Double(a), Double(b)) => a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
            (Boolean(a), Boolean(b)) => a == b,
            (
                Verbatim {
                    format: fa,
                    text: ta,
                },
                Verbatim {
                    format: fb,
                    text: tb,
                },
            ) => fa == fb && ta == tb,
            (Array(a), Array(b)) | (Set(a), Set(b)) | (Push(a), Push(b)) => a == b,
            (Map(a), Map(b)) => a == b,
            _ => false,
        }
    }
}

/// The frames could not be turned into a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum ValueError {
    /// The pieces did not hold a string's bytes.
    #[error(transparent)]
    Pieces(#[from] PiecesError),
    /// The frames end inside an aggregate (not one complete reply).
    #[error("the frames end inside an aggregate")]
    Truncated,
    /// A double's text is not a number.
    #[error("a double reply's text is not a number")]
    InvalidDouble,
}

/// `\r` and `\n` made spaces: what a line type carries after the writer.
fn one_line(text: &[u8]) -> Vec<u8> {
    text.iter()
        .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b })
        .collect()
}

impl Value {
    /// Writes the value, element by element. A [`Full`] sink leaves it partly written.
    pub fn write<S: Sink + ?Sized>(&self, w: &mut ReplyWriter<'_, S>) -> Result<(), Full> {
        match self {
            Value::Simple(text) => w.simple(text),
            Value::Error(text) => w.error(text),
            Value::BlobError(text) => w.blob_error(text),
            Value::Integer(value) => w.integer(*value),
            Value::Bulk(data) => w.bulk(data),
            Value::Null => w.null(),
            Value::NullArray => w.null_array(),
            Value::Double(value) => w.double(*value),
            Value::Boolean(value) => w.boolean(*value),
            Value::BigNumber(digits) => w.big_number(digits),
            Value::Verbatim { format, text } => w.verbatim(format, text),
            Value::Array(items) => {
                w.array(items.len() as u64)?;
                items.iter().try_for_each(|item| item.write(w))
            }
            Value::Set(items) => {
                w.set(items.len() as u64)?;
                items.iter().try_for_each(|item| item.write(w))
            }
            Value::Push(items) => {
                w.push(items.len() as u64)?;
                items.iter().try_for_each(|item| item.write(w))
            }
            Value::Map(pairs) => {
                w.map(pairs.len() as u64)?;
                pairs.iter().try_for_each(|(key, value)| {
                    key.write(w)?;
                    value.write(w)
                })
            }
        }
    }

    /// The value as written in `protocol` reads back: line texts on one line, and in RESP2
    /// every RESP3 type in its fallback form.
    pub fn as_read_back(&self, protocol: Protocol) -> Value {
        let resp2 = protocol == Protocol::Resp2;
        let all = |items: &[Value]| items.iter().map(|v| v.as_read_back(protocol)).collect();
        match self {
            Value::Simple(text) => Value::Simple(one_line(text)),
            Value::Error(text) => Value::Error(one_line(text)),
            Value::BlobError(text) if resp2 => Value::Error(one_line(text)),
            Value::BlobError(text) => Value::BlobError(text.clone()),
            Value::Integer(value) => Value::Integer(*value),
            Value::Bulk(data) => Value::Bulk(data.clone()),
            Value::Null => Value::Null,
            Value::NullArray if resp2 => Value::NullArray,
            Value::NullArray => Value::Null,
            Value::Double(value) if resp2 => {
                let mut buf = [0; crate::double::DOUBLE_TEXT_LEN_MAX];
                Value::Bulk(crate::double::format_double(*value, &mut buf).to_vec())
            }
            Value::Double(value) => Value::Double(*value),
            Value::Boolean(value) if resp2 => Value::Integer(i64::from(*value)),
            Value::Boolean(value) => Value::Boolean(*value),
            Value::BigNumber(digits) if resp2 => Value::Bulk(digits.clone()),
            Value::BigNumber(digits) => Value::BigNumber(one_line(digits)),
            Value::Verbatim { text, .. } if resp2 => Value::Bulk(text.clone()),
            Value::Verbatim { format, text } => Value::Verbatim {
                format: *format,
                text: text.clone(),
            },
            Value::Array(items) => Value::Array(all(items)),
            Value::Set(items) if resp2 => Value::Array(all(items)),
            Value::Set(items) => Value::Set(all(items)),
            Value::Push(items) if resp2 => Value::Array(all(items)),
            Value::Push(items) => Value::Push(all(items)),
            Value::Map(pairs) if resp2 => Value::Array(
                pairs
                    .iter()
                    .flat_map(|(k, v)| [k.as_read_back(protocol), v.as_read_back(protocol)])
                    .collect(),
            ),
            Value::Map(pairs) => Value::Map(
                pairs
                    .iter()
                    .map(|(k, v)| (k.as_read_back(protocol), v.as_read_back(protocol)))
                    .collect(),
            ),
        }
    }

    /// The value of one complete reply's frames (as [`ReplyParser::frames`] gives them),
    /// reading strings from the pieces. Attributes are metadata and are left out.
    ///
    /// [`ReplyParser::frames`]: crate::ReplyParser::frames
    pub fn from_frames(frames: &[Frame], pieces: &[Piece<'_>]) -> Result<Value, ValueError> {
        let mut at = 0;
        let value = Self::read(frames, &mut at, pieces)?;
        Ok(value)
    }

    fn bytes(pieces: &[Piece<'_>], span: crate::Span) -> Result<Vec<u8>, ValueError> {
        let mut out = Vec::new();
        pieces::copy_into(pieces, span, &mut out)?;
        Ok(out)
    }

    fn read_many(
        frames: &[Frame],
        at: &mut usize,
        pieces: &[Piece<'_>],
        count: u64,
    ) -> Result<Vec<Value>, ValueError> {
        let mut items = Vec::new();
        for _ in 0..count {
            items.push(Self::read(frames, at, pieces)?);
        }
        Ok(items)
    }

    /// Reads the value starting at `frames[*at]`; the parser bounds the nesting, so the
    /// recursion is bounded too.
    fn read(frames: &[Frame], at: &mut usize, pieces: &[Piece<'_>]) -> Result<Value, ValueError> {
        let frame = *frames.get(*at).ok_or(ValueError::Truncated)?;
        *at += 1;
        Ok(match frame {
            Frame::Simple(span) => Value::Simple(Self::bytes(pieces, span)?),
            Frame::Error(span) => Value::Error(Self::bytes(pieces, span)?),
            Frame::BlobError(span) => Value::BlobError(Self::bytes(pieces, span)?),
            Frame::Integer(value) => Value::Integer(value),
            Frame::Bulk(span) => Value::Bulk(Self::bytes(pieces, span)?),
            Frame::NullBulk | Frame::Null => Value::Null,
            Frame::NullArray => Value::NullArray,
            Frame::Double(span) => {
                let text = Self::bytes(pieces, span)?;
                Value::Double(parse_double(&text).ok_or(ValueError::InvalidDouble)?)
            }
            Frame::Boolean(value) => Value::Boolean(value),
            Frame::BigNumber(span) => Value::BigNumber(Self::bytes(pieces, span)?),
            Frame::Verbatim(span) => {
                let all = Self::bytes(pieces, span)?;
                // The parser checked that the data holds at least "fmt:".
                let mut format = [0; 3];
                format.copy_from_slice(&all[..3]);
                Value::Verbatim {
                    format,
                    text: all[4..].to_vec(),
                }
            }
            Frame::Array(count) => Value::Array(Self::read_many(frames, at, pieces, count)?),
            Frame::Set(count) => Value::Set(Self::read_many(frames, at, pieces, count)?),
            Frame::Push(count) => Value::Push(Self::read_many(frames, at, pieces, count)?),
            Frame::Map(count) => {
                let mut pairs = Vec::new();
                for _ in 0..count {
                    let key = Self::read(frames, at, pieces)?;
                    let value = Self::read(frames, at, pieces)?;
                    pairs.push((key, value));
                }
                Value::Map(pairs)
            }
            Frame::Attribute(count) => {
                // Skip the metadata pairs, then read the value they describe.
                for _ in 0..count.saturating_mul(2) {
                    Self::read(frames, at, pieces)?;
                }
                Self::read(frames, at, pieces)?
            }
        })
    }
}
