//! The low-level CBOR error shared by every decoder in this crate: what was wrong and at which
//! byte offset of the item being decoded.

use std::fmt;

/// A CBOR item that could not be decoded (or encoded), with the byte offset where it went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CborError {
    /// Offset within the decoded item.
    pub position: usize,
    /// What was expected or found there.
    pub message: String,
}

impl CborError {
    /// An error at `position`.
    pub fn new(position: usize, message: impl Into<String>) -> Self {
        Self {
            position,
            message: message.into(),
        }
    }

    pub(crate) fn from_decode(position: usize, error: &minicbor::decode::Error) -> Self {
        let position = error.position().unwrap_or(position);
        let message = error.to_string();
        // minicbor appends " at position N"; the offset is reported separately.
        let message = match message.rfind(" at position ") {
            Some(cut) => message[..cut].to_owned(),
            None => message,
        };
        Self { position, message }
    }
}

impl fmt::Display for CborError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at byte {})", self.message, self.position)
    }
}
