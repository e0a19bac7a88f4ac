//! The `/sync` token: how far a device has read.
//!
//! `s<pos>_<to_device>`: `pos` is the stream position up to which everything was delivered;
//! `to_device` is the position of the last to-device message delivered, which may lag behind
//! `pos` when the inbox held more than one response's worth.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// A position in the event stream, as carried by `since`/`next_batch`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncToken {
    /// Everything up to here was delivered.
    pub pos: u64,
    /// The last to-device message delivered.
    pub to_device: u64,
}

impl fmt::Display for SyncToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}_{}", self.pos, self.to_device)
    }
}

impl FromStr for SyncToken {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let invalid = || Error::invalid_param(format!("Invalid stream token {s:?}"));
        let (pos, to_device) = s
            .strip_prefix('s')
            .and_then(|rest| rest.split_once('_'))
            .ok_or_else(invalid)?;
        Ok(Self {
            pos: pos.parse().map_err(|_| invalid())?,
            to_device: to_device.parse().map_err(|_| invalid())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let token = SyncToken {
            pos: 42,
            to_device: 17,
        };
        assert_eq!(token.to_string(), "s42_17");
        assert_eq!("s42_17".parse::<SyncToken>().unwrap(), token);
        for bad in ["", "42_17", "s42", "s_1", "sx_1", "s1_-1", "s1_2_3"] {
            assert!(bad.parse::<SyncToken>().is_err(), "{bad}");
        }
    }
}
