//! fgo: offline LLM-as-optimizer.
//!
//! The library has two halves: [`engine`], an embedded GGUF inference engine on candle-core,
//! and (later) the optimizer that improves an agent's text components through the [`llm`]
//! seam. The binary `fgo` is a thin command line over this library; the library never prints.

pub mod engine;
pub mod error;
pub mod llm;
pub mod optimizer;
pub mod serve;

pub use error::{Error, Result};
