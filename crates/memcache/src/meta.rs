//! The meta protocol's flags (`mg`, `ms`, `md`, `ma`), parsed into a fixed-size set.
//!
//! A meta command is `<cm> <key> [<datalen>] <flag>*`, each flag one character, some with a
//! token glued to it (`T30`, `Oabc`). [`MetaFlags`] records which flags came, in what order
//! (the server returns flags in request order), and the value of each flag that carries one;
//! the opaque token is kept inline (at most 32 bytes), so the server can answer after it has
//! released the request's pieces. Nothing allocates: the set is a 128-bit mask, an order
//! array and the values.
//!
//! The checks mirror memcached's `_meta_flag_preparse` exactly, including its quirks: every
//! command accepts every known flag (and ignores those it has no use for); a repeated flag, or
//! a flag byte of 127 or more, is "duplicate flag"; an unknown flag stops the parse with
//! "invalid flag"; a bad value is remembered and the parse goes on, so the last bad value's
//! message wins (a bad `F` value keeps the message it had). Flags:
//!
//! | flag | token | meaning (memcached protocol.txt) |
//! | --- | --- | --- |
//! | `b` | | the key is base64 (binary key) |
//! | `c` `f` `h` `k` `l` `s` `t` `v` | | return CAS, client flags, hit-before, key, last access, size, TTL, value |
//! | `q` | | quiet: suppress the nominal reply (`EN` for mg, `HD` for ms/md/ma) |
//! | `u` `x` `I` | | don't bump the LRU; md: remove the value only; invalidate (stale) |
//! | `O` | opaque | reflected back as is |
//! | `N` `T` `R` | i32 seconds | vivify on miss with TTL; set TTL; win a recache under TTL |
//! | `F` | u32 | client flags to store |
//! | `C` `E` | u64 | compare CAS; use as the new CAS |
//! | `M` | one byte | mode switch (ms: `E A P R S`; ma: `I + D -`) |
//! | `J` `D` | u64 | ma: initial value on vivify; delta |
//! | `P` `L` | any | proxy hints, accepted and ignored |

use crate::num::{parse_i32, parse_u32, parse_u64};
use crate::request::ErrorKind;
use crate::token::Token;

/// Most flags one meta command can carry: memcached refuses a line of more than 19 tokens
/// (its `MFLAG_MAX_OPT_LENGTH` of 20 counts a terminal token), the command and key included.
pub const META_FLAGS_MAX: usize = 17;

/// Longest opaque token, its `O` included (memcached's `MFLAG_MAX_OPAQUE_LENGTH`).
pub const OPAQUE_LEN_MAX: usize = 32;

/// The flags of one meta command. See the module documentation for the flag table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaFlags {
    seen: u128,
    order: [u8; META_FLAGS_MAX],
    count: u8,
    vivify_ttl: i32,
    ttl: i32,
    recache_ttl: i32,
    client_flags: u32,
    compare_cas: u64,
    new_cas: u64,
    initial: u64,
    delta: u64,
    mode: u8,
    opaque: [u8; OPAQUE_LEN_MAX],
    opaque_len: u8,
    opaque_too_long: bool,
}

impl Default for MetaFlags {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl MetaFlags {
    /// No flag.
    pub const EMPTY: MetaFlags = MetaFlags {
        seen: 0,
        order: [0; META_FLAGS_MAX],
        count: 0,
        vivify_ttl: 0,
        ttl: 0,
        recache_ttl: 0,
        client_flags: 0,
        compare_cas: 0,
        new_cas: 0,
        initial: 0,
        delta: 0,
        mode: 0,
        opaque: [0; OPAQUE_LEN_MAX],
        opaque_len: 0,
        opaque_too_long: false,
    };

    /// Whether flag `flag` (its character, e.g. `b'v'`) was given.
    pub fn has(&self, flag: u8) -> bool {
        flag < 128 && self.seen & (1u128 << flag) != 0
    }

    /// The flag characters in request order: the order return flags are written in.
    pub fn order(&self) -> &[u8] {
        &self.order[..self.count as usize]
    }

    /// Number of flags.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether no flag was given.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// `b`: the key is base64; decode it with [`crate::base64::decode`].
    pub fn base64_key(&self) -> bool {
        self.has(b'b')
    }

    /// `q`: suppress the nominal reply (`EN` for `mg`; `HD` for `ms`, `md`, `ma`). Errors are
    /// never suppressed.
    pub fn quiet(&self) -> bool {
        self.has(b'q')
    }

    /// `v`: return the value.
    pub fn return_value(&self) -> bool {
        self.has(b'v')
    }

    /// `T`: the new TTL in seconds (memcached's exptime rules: 0 never, up to 30 days
    /// relative, else a Unix time; negative expires at once).
    pub fn ttl(&self) -> Option<i64> {
        self.has(b'T').then_some(i64::from(self.ttl))
    }

    /// `N`: create the item on a miss, with this TTL.
    pub fn vivify_ttl(&self) -> Option<i64> {
        self.has(b'N').then_some(i64::from(self.vivify_ttl))
    }

    /// `R`: win the right to recache when the remaining TTL is below this.
    pub fn recache_ttl(&self) -> Option<i64> {
        self.has(b'R').then_some(i64::from(self.recache_ttl))
    }

    /// `F`: client flags to store.
    pub fn client_flags(&self) -> Option<u32> {
        self.has(b'F').then_some(self.client_flags)
    }

    /// `C`: compare this CAS value.
    pub fn compare_cas(&self) -> Option<u64> {
        self.has(b'C').then_some(self.compare_cas)
    }

    /// `E`: use this as the item's new CAS value.
    pub fn new_cas(&self) -> Option<u64> {
        self.has(b'E').then_some(self.new_cas)
    }

    /// `J`: `ma`'s initial value when it creates the item.
    pub fn initial(&self) -> Option<u64> {
        self.has(b'J').then_some(self.initial)
    }

    /// `D`: `ma`'s delta (memcached's default is 1).
    pub fn delta(&self) -> Option<u64> {
        self.has(b'D').then_some(self.delta)
    }

    /// `M`: the raw mode byte (the parser has checked it against the command).
    pub fn mode(&self) -> Option<u8> {
        self.has(b'M').then_some(self.mode)
    }

    /// `O`: the whole opaque token, its `O` included, to reflect in the reply.
    pub fn opaque(&self) -> Option<&[u8]> {
        self.has(b'O')
            .then(|| &self.opaque[..self.opaque_len as usize])
    }

    /// Records `flag`; false when it was seen already.
    fn mark(&mut self, flag: u8) -> bool {
        if self.has(flag) {
            return false;
        }
        self.seen |= 1u128 << flag;
        // The caller bounds the number of flag tokens by META_FLAGS_MAX; a bit already set
        // returned above, so `count` grows at most once per distinct flag.
        if let Some(slot) = self.order.get_mut(self.count as usize) {
            *slot = flag;
            self.count += 1;
        }
        true
    }

    /// memcached's `_meta_flag_preparse` over the flag tokens `flags`, for the key token
    /// `key`. Opaque tokens longer than [`OPAQUE_LEN_MAX`] are accepted here and refused by
    /// [`MetaFlags::check_opaque`], where memcached refuses them.
    pub(crate) fn parse(flags: &[Token], key: &Token) -> Result<MetaFlags, ErrorKind> {
        debug_assert!(flags.len() <= META_FLAGS_MAX);
        let mut f = MetaFlags::EMPTY;
        // memcached's `has_error` and `errstr`: a bad value is remembered, the parse goes on.
        let mut failed = false;
        let mut message = ErrorKind::BadFormat;
        for token in flags {
            let flag = token.first();
            if flag >= 127 || !f.mark(flag) {
                return Err(ErrorKind::DuplicateFlag);
            }
            // `Some(None)`: a bad value without a message of its own; `Some(Some(kind))`: with.
            let bad: Option<Option<ErrorKind>> = match flag {
                b'b' => (!key.is_base64()).then_some(Some(ErrorKind::KeyDecode)),
                b'N' | b'T' | b'R' => match token.rest().and_then(parse_i32) {
                    Some(v) => {
                        match flag {
                            b'N' => f.vivify_ttl = v,
                            b'T' => f.ttl = v,
                            _ => f.recache_ttl = v,
                        }
                        None
                    }
                    None => Some(Some(ErrorKind::BadToken)),
                },
                b'F' => match token.rest().and_then(parse_u32) {
                    Some(v) => {
                        f.client_flags = v;
                        None
                    }
                    // memcached sets its error flag without a message here.
                    None => Some(None),
                },
                b'C' | b'E' => match token.rest().and_then(parse_u64) {
                    Some(v) => {
                        if flag == b'C' {
                            f.compare_cas = v;
                        } else {
                            f.new_cas = v;
                        }
                        None
                    }
                    None => Some(Some(ErrorKind::BadToken)),
                },
                b'J' | b'D' => match token.rest().and_then(parse_u64) {
                    Some(v) => {
                        if flag == b'J' {
                            f.initial = v;
                        } else {
                            f.delta = v;
                        }
                        None
                    }
                    None if flag == b'J' => Some(Some(ErrorKind::InvalidInitial)),
                    None => Some(Some(ErrorKind::InvalidMetaDelta)),
                },
                b'M' => match token.bytes() {
                    Some(&[_, mode]) => {
                        f.mode = mode;
                        None
                    }
                    _ => Some(Some(ErrorKind::MTokenLength)),
                },
                b'O' => {
                    match token.bytes() {
                        Some(bytes) if bytes.len() <= OPAQUE_LEN_MAX => {
                            f.opaque[..bytes.len()].copy_from_slice(bytes);
                            f.opaque_len = bytes.len() as u8;
                        }
                        // Refused by `check_opaque`, where memcached refuses it.
                        _ => f.opaque_too_long = true,
                    }
                    None
                }
                b'P' | b'L' | b'k' | b's' | b't' | b'c' | b'f' | b'v' | b'h' | b'l' | b'u'
                | b'q' | b'x' | b'I' => None,
                _ => return Err(ErrorKind::InvalidFlag),
            };
            if let Some(kind) = bad {
                failed = true;
                if let Some(kind) = kind {
                    message = kind;
                }
            }
        }
        if failed {
            return Err(message);
        }
        Ok(f)
    }

    /// memcached's check of the opaque token's length, which it makes after the flags parse.
    pub(crate) fn check_opaque(&self) -> Result<(), ErrorKind> {
        if self.opaque_too_long {
            return Err(ErrorKind::OpaqueTooLong);
        }
        Ok(())
    }
}

/// `ms`'s mode switch (`M` flag).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SetMode {
    /// `S`, or no `M`: store.
    Set,
    /// `E`: store only if absent (`add`).
    Add,
    /// `A`: append to the value (with `N`, create on a miss).
    Append,
    /// `P`: prepend to the value (with `N`, create on a miss).
    Prepend,
    /// `R`: store only if present (`replace`).
    Replace,
}

impl SetMode {
    /// The mode of `mode` (the `M` flag's byte), or `None` when it names none.
    pub fn from_flag(mode: Option<u8>) -> Option<SetMode> {
        Some(match mode {
            None | Some(b'S') => SetMode::Set,
            Some(b'E') => SetMode::Add,
            Some(b'A') => SetMode::Append,
            Some(b'P') => SetMode::Prepend,
            Some(b'R') => SetMode::Replace,
            Some(_) => return None,
        })
    }
}

/// `ma`'s mode switch (`M` flag).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArithMode {
    /// `I` or `+`, or no `M`: increment.
    Incr,
    /// `D` or `-`: decrement (never below 0).
    Decr,
}

impl ArithMode {
    /// The mode of `mode` (the `M` flag's byte), or `None` when it names none.
    pub fn from_flag(mode: Option<u8>) -> Option<ArithMode> {
        Some(match mode {
            None | Some(b'I') | Some(b'+') => ArithMode::Incr,
            Some(b'D') | Some(b'-') => ArithMode::Decr,
            Some(_) => return None,
        })
    }
}

/// The two-letter code that starts a meta reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetaCode {
    /// `HD`: success, no value.
    Hd,
    /// `VA <size>`: success, a value follows.
    Va,
    /// `EN`: miss (`mg`, `me`).
    En,
    /// `NF`: not found (`md`, `ma`, `ms` in append/prepend/replace modes).
    Nf,
    /// `NS`: not stored.
    Ns,
    /// `EX`: the CAS value did not match.
    Ex,
    /// `MN`: the answer to `mn`.
    Mn,
}

impl MetaCode {
    /// The code's two letters.
    pub const fn as_bytes(self) -> &'static [u8; 2] {
        match self {
            MetaCode::Hd => b"HD",
            MetaCode::Va => b"VA",
            MetaCode::En => b"EN",
            MetaCode::Nf => b"NF",
            MetaCode::Ns => b"NS",
            MetaCode::Ex => b"EX",
            MetaCode::Mn => b"MN",
        }
    }

    /// The code of two letters, or `None`.
    pub fn from_bytes(b: &[u8]) -> Option<MetaCode> {
        Some(match b {
            b"HD" => MetaCode::Hd,
            b"VA" => MetaCode::Va,
            b"EN" => MetaCode::En,
            b"NF" => MetaCode::Nf,
            b"NS" => MetaCode::Ns,
            b"EX" => MetaCode::Ex,
            b"MN" => MetaCode::Mn,
            _ => return None,
        })
    }
}
