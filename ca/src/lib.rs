//! EPICS Channel Access, written for beamflow from the protocol specification: the wire format
//! ([`wire`]: message headers and framing), the DBR value encodings ([`dbr`]) and a monitoring
//! client ([`client`]).
//!
//! Everything on the wire is big-endian; every payload is padded to 8 bytes (an EPICS 7 IOC
//! drops a client that sends otherwise).

pub mod client;
pub mod dbr;
pub mod wire;

pub use dbr::{EpicsTime, Native, TimeValue, Values};
pub use wire::{Header, Message};

/// What can go wrong reading Channel Access bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaError {
    /// A message announces more payload than beamflow accepts.
    #[error("CA message of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Announced payload bytes.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A DBR type code beamflow does not read.
    #[error("unsupported DBR type {0}")]
    UnsupportedType(u16),
    /// A payload shorter than its type and count need.
    #[error("DBR type {dbr_type} × {count} needs {needed} bytes, payload has {got}")]
    ShortPayload {
        /// The DBR type.
        dbr_type: u16,
        /// Elements announced.
        count: usize,
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
}
