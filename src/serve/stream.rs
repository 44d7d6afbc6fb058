//! Streaming responses: server-sent events in OpenAI's chunk format.
//!
//! Each choice opens with one chunk (the assistant role for chat, the echoed prompt for
//! completions that ask for it), then one chunk per piece of text the engine settles (it
//! never sends text at or past a stop string), then a chunk with its finish reason. After
//! the last choice ends come an optional usage chunk and `data: [DONE]`. A client that goes
//! away drops this stream and with it the event receiver, which cancels its sequences.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::response::sse::{Event, Sse};
use futures_util::stream::{self, Stream};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::engine::scheduler::CANCELLED;
use crate::serve::driver::SeqEvent;
use crate::serve::error::ApiError;
use crate::serve::respond::{Kind, Meta, UsageSum};

/// What one streamed request needs to know.
pub struct StreamPlan {
    pub meta: Meta,
    pub events: UnboundedReceiver<SeqEvent>,
    /// Per choice: text sent before its first token (the echoed prompt), if any.
    pub prefixes: Vec<Option<String>>,
    /// Choices per prompt (`n`): choice `i` is the first of its prompt when `i % n == 0`.
    pub n: usize,
    pub include_usage: bool,
}

struct State {
    plan: StreamPlan,
    queue: VecDeque<String>,
    remaining: usize,
    usage: UsageSum,
    ended: bool,
}

impl State {
    fn push(&mut self, value: serde_json::Value) {
        self.queue.push_back(value.to_string());
    }

    fn handle(&mut self, event: SeqEvent) {
        let meta = &self.plan.meta;
        match event {
            SeqEvent::Text { choice, text } => {
                let chunk = meta.chunk(vec![meta.delta(choice, &text, None)], None);
                self.push(chunk);
            }
            SeqEvent::Done { choice, result } => {
                self.remaining = self.remaining.saturating_sub(1);
                match result {
                    Ok(completion) => {
                        self.usage
                            .add(&completion.usage, choice % self.plan.n.max(1) == 0);
                        let end = meta.delta(choice, "", Some(completion.finish_reason));
                        let chunk = meta.chunk(vec![end], None);
                        self.push(chunk);
                    }
                    Err(e) if e.to_string() == CANCELLED => {}
                    Err(e) => self.push(ApiError::from_engine(&e).body()),
                }
            }
        }
    }

    /// The next data line, or `None` after `[DONE]`.
    async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(line) = self.queue.pop_front() {
                return Some(line);
            }
            if self.ended {
                return None;
            }
            if self.remaining == 0 {
                if self.plan.include_usage {
                    let chunk = self.plan.meta.chunk(Vec::new(), Some(&self.usage));
                    self.push(chunk);
                }
                self.queue.push_back("[DONE]".to_string());
                self.ended = true;
                continue;
            }
            match self.plan.events.recv().await {
                Some(event) => self.handle(event),
                None => {
                    // The engine thread is gone: say so once and end.
                    let e = ApiError::internal("the engine stopped");
                    self.push(e.body());
                    self.remaining = 0;
                }
            }
        }
    }
}

/// The event stream of one request.
pub fn sse(plan: StreamPlan) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let meta = plan.meta.clone();
    let mut state = State {
        remaining: plan.prefixes.len(),
        queue: VecDeque::new(),
        usage: UsageSum::default(),
        ended: false,
        plan,
    };
    for (index, prefix) in state.plan.prefixes.clone().iter().enumerate() {
        let first = match (meta.kind, prefix) {
            (Kind::Chat, _) => meta.role(index),
            (Kind::Completion, Some(text)) => meta.delta(index, text, None),
            (Kind::Completion, None) => continue,
        };
        state.push(meta.chunk(vec![first], None));
    }
    let events = stream::unfold(state, |mut state| async move {
        let line = state.next().await?;
        Some((Ok(Event::default().data(line)), state))
    });
    Sse::new(events)
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;
    use crate::engine::generate::{Completion, FinishReason, Timings, Usage};
    use crate::error::Error;

    fn done(choice: usize, text: &str) -> SeqEvent {
        SeqEvent::Done {
            choice,
            result: Ok(Completion {
                text: text.into(),
                token_ids: vec![1; 2],
                finish_reason: FinishReason::Length,
                usage: Usage {
                    prompt_tokens: 5,
                    cached_prompt_tokens: 0,
                    completion_tokens: 2,
                },
                timings: Timings::default(),
            }),
        }
    }

    async fn lines(plan: StreamPlan) -> Vec<String> {
        let mut state = State {
            remaining: plan.prefixes.len(),
            queue: VecDeque::new(),
            usage: UsageSum::default(),
            ended: false,
            plan,
        };
        let mut out = Vec::new();
        while let Some(line) = state.next().await {
            out.push(line);
        }
        out
    }

    #[tokio::test]
    async fn two_choices_stream_then_usage_then_done() {
        let (tx, rx) = mpsc::unbounded_channel();
        let text = |choice: usize, t: &str| SeqEvent::Text {
            choice,
            text: t.into(),
        };
        for e in [text(0, "a"), text(1, "x"), text(0, "b"), done(0, "ab")] {
            tx.send(e).expect("send");
        }
        tx.send(done(1, "x")).expect("send");
        let out = lines(StreamPlan {
            meta: Meta::new(Kind::Completion, "m"),
            events: rx,
            prefixes: vec![None, None],
            n: 2,
            include_usage: true,
        })
        .await;
        assert_eq!(out.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<serde_json::Value> = out[..out.len() - 1]
            .iter()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        let texts: String = chunks
            .iter()
            .filter(|c| c["choices"].get(0).is_some_and(|ch| ch["index"] == 0))
            .map(|c| c["choices"][0]["text"].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(texts, "ab");
        let usage = &chunks.last().expect("usage")["usage"];
        assert_eq!(usage["prompt_tokens"], 5);
        assert_eq!(usage["completion_tokens"], 4);
    }

    #[tokio::test]
    async fn an_engine_error_is_an_error_line_and_a_lost_engine_ends_the_stream() {
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(SeqEvent::Done {
            choice: 0,
            result: Err(Error::Request("too long".into())),
        })
        .expect("send");
        drop(tx);
        let out = lines(StreamPlan {
            meta: Meta::new(Kind::Chat, "m"),
            events: rx,
            prefixes: vec![None, None],
            n: 2,
            include_usage: false,
        })
        .await;
        assert!(out[0].contains("too long"), "{out:?}");
        assert!(out[1].contains("the engine stopped"), "{out:?}");
        assert_eq!(out.len(), 3);
        // A stream can be built before any event came.
        let _ = sse(StreamPlan {
            meta: Meta::new(Kind::Chat, "m"),
            events: mpsc::unbounded_channel().1,
            prefixes: vec![None],
            n: 1,
            include_usage: false,
        });
    }
}
