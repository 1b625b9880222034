//! The functional core of Serin's rollouts.
//!
//! [`machine::plan`] takes a [`machine::Snapshot`] (the Canary's spec and status,
//! its ReplicaSets as observed, the analysis verdict, the time) and returns a
//! [`machine::Plan`] (actions, the new status, Events, when to look again). It has
//! no client, clock or randomness of its own, and this crate depends on nothing
//! that could give it one: the controller observes, asks, and applies.

pub mod command;
pub mod conditions;
pub mod gate;
pub mod machine;
pub mod notification;
pub mod replicas;
pub mod revision;
