//! The methods, the third stage of the flow: dividing train into subsets ([`divide`]),
//! optimizing each subset's components ([`optimize`], [`propose`], [`operators`],
//! [`prompts`], [`parse`], [`format`], with [`halving`] to stop hopeless candidates early), merging
//! them back ([`merge`]) and choosing the final components ([`select`]). What every method
//! shares is in [`env`]; [`guard`] rejects candidates that leak or copy training data.

pub mod diff;
pub mod divide;
pub mod env;
pub mod format;
pub mod guard;
pub mod halving;
pub mod merge;
pub mod operators;
pub mod optimize;
pub mod parse;
pub mod prompts;
pub mod propose;
pub mod select;
pub mod slot;
