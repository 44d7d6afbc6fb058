//! Execution, the second stage of the flow: running the agent on examples ([`agent`]),
//! the call layer that memoizes every model and command call, replays it on resume and
//! enforces budgets ([`calls`]), the calls that runs of a study or comparison share
//! ([`pool`]), and the run's event log ([`events`]).

pub mod agent;
pub mod calls;
pub mod events;
pub mod pool;

#[cfg(test)]
pub(crate) mod testutil;
