//! Benchmarks of Sluice, in `benches/` (see `README.md`). Cargo wants a
//! target besides the benches, so this crate has an empty library.
