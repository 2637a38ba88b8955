//! Drift statistics: how far a window of observed values is from a
//! reference, per feature, by the methods the drift literature uses. Pure
//! computation, no I/O; the collector feeds it.
