//! The drift collector: what it makes of captured inference records.
//!
//! `features` turns one captured record (a CloudEvent whose `data` holds the
//! request's inputs and the response's outputs as OIP JSON tensors) into rows
//! of named feature values, the unit every drift statistic works on;
//! `store` keeps what the collector accepted in one file, synced before it
//! is acknowledged and replayed at start.

pub mod collector;
pub mod csv;
pub mod evaluate;
pub mod features;
pub mod page;
pub mod server;
pub mod store;
