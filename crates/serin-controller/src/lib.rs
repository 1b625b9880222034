//! The rollout engine.
//!
//! [`machine`] is the functional core: a snapshot of the Canary and what it owns
//! goes in, a plan of actions and the new status comes out, with no client, clock
//! or randomness of its own. The reconciler observes, asks it, and applies the plan.

pub mod analysis;
pub mod command;
pub mod conditions;
pub mod health;
pub mod http;
pub mod machine;
pub mod metrics;
pub mod reconciler;
pub mod replicas;
pub mod revision;
pub mod run;
