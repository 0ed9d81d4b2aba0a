//! Replies, independent of the wire protocol.
//!
//! Commands write their answer through [`Reply`], a small push interface shaped like RESP3's
//! types. The RESP encoder implements it for RESP2 and RESP3 (downgrading maps to flat arrays
//! and doubles to bulk strings for RESP2, as Redis does), the memcached front end uses the
//! keyspace directly, and tests record replies as [`ReplyValue`] trees. Nothing is built in
//! between: a command's reply goes straight from the keyspace into the output buffer.

/// Where a command writes its reply. Aggregates announce their length and are followed by
/// exactly that many replies (twice that many for [`Reply::map`]).
pub trait Reply {
    /// `+OK`-style status.
    fn simple(&mut self, status: &str);
    /// An error; `message` starts with its code (`ERR ...`, `WRONGTYPE ...`).
    fn error(&mut self, message: &str);
    /// An integer.
    fn integer(&mut self, value: i64);
    /// A binary-safe string.
    fn bulk(&mut self, bytes: &[u8]);
    /// The null reply (RESP2 `$-1`).
    fn null(&mut self);
    /// The null array (RESP2 `*-1`), for EXEC aborted by WATCH.
    fn null_array(&mut self);
    /// An array of `len` replies.
    fn array(&mut self, len: usize);
    /// A map of `len` key/value pairs (RESP2: an array of `2 * len`).
    fn map(&mut self, len: usize);
    /// A set of `len` replies (RESP2: an array).
    fn set(&mut self, len: usize);
    /// A double (RESP2: a bulk string in Redis' format).
    fn double(&mut self, value: f64);
    /// A boolean (RESP2: the integer 1 or 0).
    fn boolean(&mut self, value: bool);
    /// A verbatim string with its three-letter format (`txt`; RESP2: a bulk string).
    fn verbatim(&mut self, format: &str, text: &[u8]);
    /// The connection switches protocol version (`HELLO 2|3`) before this reply: an encoder
    /// writes this and every later reply in `resp` (Redis answers `HELLO 3` in RESP3).
    fn set_protocol(&mut self, resp: u8) {
        let _ = resp;
    }
}

/// A recorded reply, for tests and for replies a front end must inspect.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyValue {
    /// A status.
    Simple(String),
    /// An error message.
    Error(String),
    /// An integer.
    Integer(i64),
    /// A string.
    Bulk(Vec<u8>),
    /// Null.
    Null,
    /// The null array.
    NullArray,
    /// An array.
    Array(Vec<ReplyValue>),
    /// A map, as pairs.
    Map(Vec<(ReplyValue, ReplyValue)>),
    /// A set.
    Set(Vec<ReplyValue>),
    /// A double.
    Double(f64),
    /// A boolean.
    Boolean(bool),
    /// A verbatim string.
    Verbatim(String, Vec<u8>),
}

impl ReplyValue {
    /// A bulk reply of `text`.
    pub fn bulk(text: impl AsRef<[u8]>) -> Self {
        ReplyValue::Bulk(text.as_ref().to_vec())
    }
    /// `+OK`.
    pub fn ok() -> Self {
        ReplyValue::Simple("OK".into())
    }
    /// An array of bulk strings.
    pub fn bulks<T: AsRef<[u8]>>(items: impl IntoIterator<Item = T>) -> Self {
        ReplyValue::Array(items.into_iter().map(ReplyValue::bulk).collect())
    }
}

/// Records replies as [`ReplyValue`] trees; each complete top-level reply is appended to
/// `replies`.
#[derive(Debug, Default)]
pub struct Recorder {
    /// The complete replies, in order.
    pub replies: Vec<ReplyValue>,
    /// Aggregates being filled: (kind, items wanted, items so far).
    open: Vec<(Open, usize, Vec<ReplyValue>)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Open {
    Array,
    Map,
    Set,
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }
    /// Takes the replies recorded so far.
    pub fn take(&mut self) -> Vec<ReplyValue> {
        assert!(
            self.open.is_empty(),
            "an aggregate reply was left incomplete"
        );
        std::mem::take(&mut self.replies)
    }

    fn push(&mut self, value: ReplyValue) {
        let mut value = value;
        loop {
            let Some((kind, wanted, items)) = self.open.last_mut() else {
                self.replies.push(value);
                return;
            };
            items.push(value);
            if items.len() < *wanted {
                return;
            }
            let (kind, _, items) = (*kind, *wanted, std::mem::take(items));
            self.open.pop();
            value = Self::close(kind, items);
        }
    }

    fn close(kind: Open, items: Vec<ReplyValue>) -> ReplyValue {
        match kind {
            Open::Array => ReplyValue::Array(items),
            Open::Set => ReplyValue::Set(items),
            Open::Map => {
                let mut pairs = Vec::with_capacity(items.len() / 2);
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                ReplyValue::Map(pairs)
            }
        }
    }

    fn open(&mut self, kind: Open, items: usize) {
        if items == 0 {
            self.push(Self::close(kind, Vec::new()));
        } else {
            self.open
                .push((kind, items, Vec::with_capacity(items.min(1024))));
        }
    }
}

impl Reply for Recorder {
    fn simple(&mut self, status: &str) {
        self.push(ReplyValue::Simple(status.into()));
    }
    fn error(&mut self, message: &str) {
        self.push(ReplyValue::Error(message.into()));
    }
    fn integer(&mut self, value: i64) {
        self.push(ReplyValue::Integer(value));
    }
    fn bulk(&mut self, bytes: &[u8]) {
        self.push(ReplyValue::Bulk(bytes.to_vec()));
    }
    fn null(&mut self) {
        self.push(ReplyValue::Null);
    }
    fn null_array(&mut self) {
        self.push(ReplyValue::NullArray);
    }
    fn array(&mut self, len: usize) {
        self.open(Open::Array, len);
    }
    fn map(&mut self, len: usize) {
        self.open(Open::Map, 2 * len);
    }
    fn set(&mut self, len: usize) {
        self.open(Open::Set, len);
    }
    fn double(&mut self, value: f64) {
        self.push(ReplyValue::Double(value));
    }
    fn boolean(&mut self, value: bool) {
        self.push(ReplyValue::Boolean(value));
    }
    fn verbatim(&mut self, format: &str, text: &[u8]) {
        self.push(ReplyValue::Verbatim(format.into(), text.to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_aggregates_close_in_order() {
        let mut r = Recorder::new();
        r.array(2);
        r.integer(1);
        r.map(1);
        r.bulk(b"k");
        r.array(0);
        r.simple("OK");
        assert_eq!(
            r.take(),
            vec![
                ReplyValue::Array(vec![
                    ReplyValue::Integer(1),
                    ReplyValue::Map(vec![(ReplyValue::bulk("k"), ReplyValue::Array(vec![]))]),
                ]),
                ReplyValue::ok(),
            ]
        );
    }
}
