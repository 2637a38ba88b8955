//! Canary and shadow rollouts, as pure logic: traffic policies and where
//! they are stored, the routing decision, the audit log, the comparison of
//! a shadow's outputs with the primary's, the bounded sample of the most
//! different pairs, and the gates of a progressive rollout. No I/O beyond
//! the policy and audit files; the server wires these into requests.

pub mod audit;
pub mod compare;
pub mod diffs;
pub mod gates;
pub mod policy;
pub mod routing;
