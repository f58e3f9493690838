//! Command lines: the stout flag grammar of the Mesos drop-in ([`stout`], [`mesos`]).

pub mod mesos;
pub mod stout;
