//! Execution, the second stage of the flow: running the agent on examples ([`agent`]),
//! the call layer that memoizes every model and command call, replays it on resume and
//! enforces budgets ([`calls`]), and the run's event log ([`events`]).

pub mod agent;
pub mod calls;
pub mod events;

#[cfg(test)]
pub(crate) mod testutil;
