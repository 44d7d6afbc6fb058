//! The optimizer: Fine-Grained Optimization (divide, optimize, merge) of an agent's text
//! components, plus the all-at-once and no-optimization baselines.
//!
//! The modules follow the flow, each stage using only the stages before it:
//! [`data`] (the task, its examples, templates and metric) <- [`exec`] (running the agent,
//! the call layer and the event log) <- [`methods`] (divide, optimize, merge, select and
//! their tools) <- [`report`] (running the methods side by side, the run directory, the
//! report, charts and studies).
//!
//! Inputs are validated up front ([`data::task`], [`data::dataset`], [`data::validate`])
//! so that bad input fails before any model is loaded. Every model call goes through
//! [`exec::calls::Calls`], which records it in the run's event log, memoizes it run-wide and
//! replays it on resume.

pub mod data;
pub mod exec;
pub mod methods;
pub mod report;

#[cfg(test)]
mod tests;
