//! The Cairn homeserver as a library: configuration ([`config`]) and starting a server in this
//! process ([`serve::start`]). The `cairn` binary is a thin CLI over it; tests and `cairn demo`
//! start servers through it too.

pub mod config;
pub mod demo;
pub mod serve;
