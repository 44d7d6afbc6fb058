//! The embedded inference engine: GGUF models run in-process on candle-core.
//!
//! The engine knows nothing of the optimizer. It loads a model (weights, tokenizer and chat
//! template all from one GGUF file), and turns chat requests into completions with usage.

pub mod alloc;
pub mod bench;
pub mod chat;
pub mod device;
pub mod generate;
pub mod gguf;
pub mod kernels;
pub mod kv;
pub mod model;
pub mod sampling;
pub mod scheduler;
pub mod source;
pub mod team;
pub mod tokenizer;

pub use generate::{Completion, Engine, GenerationRequest, LoadOptions, Prompt};
