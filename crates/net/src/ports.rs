//! UDP port demultiplexing (RFC 768 "Destination Port"): which local ports are bound.
//!
//! Design: one bit per port, 65 536 bits in a boxed array of 1 024 words (8 KiB) allocated
//! at start-up. Demultiplexing a datagram is one shift, one load and one mask, with no
//! hashing and no probing, and a bitmap can never be full. The interface delivers every
//! datagram for a bound port to the same application (the engine's `run_io` contract), so
//! a bit is all the state a port needs.
//!
//! Alternative rejected: a hash map from port to socket. It would carry per-socket state
//! we do not have, hash on every packet, and need its own size limit.

use thiserror::Error;

/// Words of the bitmap: one bit per 16-bit port.
const WORDS: usize = (u16::MAX as usize + 1) / 64;

/// Why a port could not be bound.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum BindError {
    /// Port 0 means "no port" in UDP (RFC 768: source port 0 is "no port"); pick a real one.
    #[error("port 0 cannot be bound")]
    PortZero,
    /// The port is already bound; unbind it first or pick another.
    #[error("port {0} is already bound")]
    AlreadyBound(u16),
}

/// The set of bound UDP ports. See the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct PortTable {
    bits: Box<[u64; WORDS]>,
}

impl PortTable {
    /// An empty table; allocates its 8 KiB once.
    pub(crate) fn new() -> Self {
        PortTable {
            bits: Box::new([0u64; WORDS]),
        }
    }

    /// True when `port` is bound.
    #[inline(always)]
    pub(crate) fn contains(&self, port: u16) -> bool {
        self.bits[usize::from(port) / 64] & (1u64 << (port % 64)) != 0
    }

    /// Binds `port`.
    pub(crate) fn bind(&mut self, port: u16) -> Result<(), BindError> {
        if port == 0 {
            return Err(BindError::PortZero);
        }
        if self.contains(port) {
            return Err(BindError::AlreadyBound(port));
        }
        self.bits[usize::from(port) / 64] |= 1u64 << (port % 64);
        Ok(())
    }

    /// Unbinds `port`; true if it was bound.
    pub(crate) fn unbind(&mut self, port: u16) -> bool {
        let was = self.contains(port);
        self.bits[usize::from(port) / 64] &= !(1u64 << (port % 64));
        was
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_unbind() {
        let mut t = PortTable::new();
        assert_eq!(t.bind(0), Err(BindError::PortZero));
        assert_eq!(t.bind(7), Ok(()));
        assert_eq!(t.bind(7), Err(BindError::AlreadyBound(7)));
        assert_eq!(t.bind(65535), Ok(()));
        assert!(t.contains(7) && t.contains(65535) && !t.contains(8) && !t.contains(6));
        assert!(t.unbind(7));
        assert!(!t.unbind(7));
        assert!(!t.contains(7));
    }
}
