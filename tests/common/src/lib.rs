//! What the integration tests and the benchmarks share, by subject: the test pattern
//! and producers ([`pattern`]), descriptors and watchdogs ([`os`]), checkers of what
//! clients receive ([`checkers`], [`body`]), the drop-in under test ([`sb`]), requests on
//! its socket ([`http`]), a proxy in front of it ([`proxy`]), a real terminal ([`term`]),
//! and the event engine a test binary runs on ([`engine`]).
//!
//! A library of its own, so each test binary uses what it needs and nothing is dead code.

pub mod body;
pub mod checkers;
pub mod engine;
pub mod http;
pub mod os;
pub mod pattern;
pub mod proxy;
pub mod sb;
pub mod term;

pub use body::BodyChecker;
pub use checkers::{Checker, Collected, Collector, RawChecker, read_all};
pub use os::{pipe, rss_kib, socket_pair, test_name, wait_until, within};
pub use pattern::{Progress, Rng, fill_pattern, is_pattern, pattern, produce};
