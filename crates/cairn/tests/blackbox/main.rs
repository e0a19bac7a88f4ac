//! Black-box tests: the real `cairn` binary on loopback ports, spoken to over HTTP.
//!
//! Every case runs once on SQLite and once on PostgreSQL (see `both_backends!`).

mod harness;

mod accounts;
mod cli;
mod cross_signing;
mod demo;
mod devices;
mod durability;
mod e2ee;
mod errors;
mod federation;
mod rooms;
mod server;
mod user_data;
