//! cairn-federation
