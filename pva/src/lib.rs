//! EPICS PV Access (pvAccess), written for beamflow from the protocol specification: pvData
//! types and values ([`pvdata`]), the message framing ([`wire`]), pvRequest ([`request`]) and
//! the normative types beamflow reads and serves ([`nt`]).
//!
//! # Why our own
//!
//! As for Channel Access (`beamflow-ca`): `epics-pva-rs` does not build on rustc 1.95 at its
//! current version and brings an IOC core at the last one that does; `spvirit` works with p4p
//! and pvAccessCPP but adds minutes of build, does not segment on send, and misses searches
//! that pvxs forwards between servers sharing a host's UDP port. beamflow needs NTScalar,
//! NTScalarArray, NTEnum, NTTable and NTNDArray over get, put and monitor, which this crate
//! covers with no dependency beamflow does not already build.

pub mod client;
pub mod nt;
pub mod pvdata;
pub mod request;
pub mod server;
pub mod wire;

/// What can go wrong reading or writing PV Access.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PvaError {
    /// The bytes end before what they announce.
    #[error("PVA message truncated")]
    Truncated,
    /// The bytes are not what the protocol allows here.
    #[error("malformed PVA data: {0}")]
    Malformed(&'static str),
    /// A message (its segments together) is larger than accepted.
    #[error("PVA message of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Announced payload bytes.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A reference to a type id the peer never defined on this connection.
    #[error("PVA type id {0} was never defined on this connection")]
    UnknownTypeId(u16),
    /// A value does not have the shape of its type.
    #[error("value does not match its type {0}")]
    Mismatch(String),
    /// A structure has no member of this name.
    #[error("no field {0:?}")]
    NoSuchField(String),
    /// A pvRequest that cannot be served.
    #[error("bad pvRequest: {0}")]
    BadRequest(String),
}
