//! What the integration tests and the benchmarks share, by subject: the test pattern
//! and producers ([`pattern`]), descriptors and watchdogs ([`os`]), checkers of what
//! clients receive ([`checkers`], [`body`]), the drop-in under test ([`sb`]), requests on
//! its socket ([`http`]), a proxy in front of it ([`proxy`]), and a real terminal
//! ([`term`]).
//!
//! A library of its own, so each test binary uses what it needs and nothing is dead code.

pub mod body;
pub mod checkers;
pub mod http;
pub mod os;
pub mod pattern;
pub mod proxy;
pub mod sb;
pub mod term;

pub use body::BodyChecker;
pub use checkers::{Checker, Collected, Collector, RawChecker, read_all};
pub use os::{pipe, rss_kib, socket_pair, within};
pub use pattern::{Progress, Rng, fill_pattern, is_pattern, pattern, produce};
