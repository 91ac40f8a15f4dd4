//! The tests' `nats-server`: the crate's own (`ragctl::harness::NatsServer`),
//! one per test on a free port, killed on drop, restartable in place.

pub use ragctl::harness::NatsServer;
