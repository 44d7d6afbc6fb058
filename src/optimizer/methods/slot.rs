//! A subset being optimized ([`Slot`]) and the record of its iterations, shared by the
//! optimization loop (`optimize`), which advances it, the candidate moves (`propose`), and
//! the report.

use serde::{Deserialize, Serialize};

use crate::optimizer::exec::agent::{Components, Outcome};
use crate::optimizer::methods::env::{mean_score, solved};
use crate::optimizer::methods::halving;
use crate::optimizer::methods::prompts::FailedAttempt;

/// What an optimizer prompt had to leave out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Truncation {
    pub iteration: usize,
    /// Trajectories shown.
    pub shown: usize,
    /// Trajectories available.
    pub total: usize,
    /// Tokens available for trajectories.
    pub token_budget: usize,
}

/// One candidate of one iteration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateRecord {
    /// The move that made it (`seed`, `rewrite`, `induction`, `demos`, `strategy`).
    #[serde(default)]
    pub operator: String,
    /// `accepted`, `rolled_back`, `dropped` (stopped early by successive halving), `leak`, `copy`, `content`, `degenerate`, `unchanged`,
    /// `unparsed`.
    pub status: String,
    /// Mean score on the subset.
    pub score: Option<f64>,
    /// Mean score on the check examples from outside the subset.
    #[serde(default)]
    pub check_score: Option<f64>,
    pub detail: String,
    /// How many of the agent's scored replies under it stopped at the token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_off: Option<usize>,
    /// How many of its examples were scored (fewer than the subset and check examples when
    /// successive halving stopped it early); `None` when it was not evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scored: Option<usize>,
    /// A repair: an earlier candidate of this iteration with the agent's reply budget
    /// stated, made because the agent's replies under that one were often cut off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reply_budget: bool,
}

impl CandidateRecord {
    /// Whether a quarter or more of its scored replies, and at least two, stopped at the
    /// agent's token limit: the mark of a procedure that needs more room than the task's
    /// `max_new_tokens` gives.
    pub fn cut_off_often(&self) -> bool {
        match (self.cut_off, self.scored) {
            (Some(c), Some(n)) => crate::optimizer::methods::operators::cut_off_often(c, n),
            _ => false,
        }
    }

    /// The name its counts go under: the operator, with `+budget` for a repair.
    pub fn counter_key(&self) -> String {
        if self.reply_budget {
            format!("{}+budget", self.operator)
        } else {
            self.operator.clone()
        }
    }
}

/// One iteration of one subset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IterationRecord {
    pub iteration: usize,
    pub score_before: f64,
    pub score_after: f64,
    pub diagnosis: String,
    pub candidates: Vec<CandidateRecord>,
}

/// A candidate that gained on its subset without being accepted (a gain under the margin,
/// or a smaller gain than the accepted one's), not worse on the check examples it was
/// scored on, and made by adding sections to its parent: a merge tries its sections again
/// on top of the best child, where the union's examples give twice the evidence (see
/// [`crate::optimizer::methods::merge`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NearMiss {
    /// The component it was made from.
    pub parent: Components,
    pub candidate: Components,
    /// Its gain on the subset, in solved examples (on the examples it was scored on when
    /// successive halving stopped it early).
    pub gain: f64,
}

/// A subset being optimized.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Slot {
    pub id: usize,
    /// Indices into the training set.
    pub examples: Vec<usize>,
    pub current: Components,
    #[serde(skip)]
    pub outcomes: Vec<Outcome>,
    /// Training examples from outside the subset a candidate must not be worse on.
    #[serde(default)]
    pub check: Vec<usize>,
    #[serde(skip)]
    pub check_outcomes: Vec<Outcome>,
    pub initial_score: f64,
    pub score: f64,
    /// Diagnoses that led to accepted candidates.
    pub lessons: Vec<String>,
    pub failed: Vec<FailedAttempt>,
    /// Near misses of its iterations, for the merges (rebuilt when a run resumes, as the
    /// whole run is).
    #[serde(skip)]
    pub near_misses: Vec<NearMiss>,
    pub iterations: Vec<IterationRecord>,
    /// Why it stopped: `solved`, `iterations`, `budget`.
    pub stopped: String,
    pub truncations: Vec<Truncation>,
}

impl Slot {
    /// A subset starting from `initial` with its initial outcomes.
    pub fn new(
        id: usize,
        examples: Vec<usize>,
        initial: Components,
        outcomes: Vec<Outcome>,
    ) -> Self {
        let score = mean_score(&outcomes);
        Self {
            id,
            examples,
            current: initial,
            outcomes,
            check: Vec::new(),
            check_outcomes: Vec::new(),
            initial_score: score,
            score,
            lessons: Vec::new(),
            failed: Vec::new(),
            near_misses: Vec::new(),
            iterations: Vec::new(),
            stopped: String::new(),
            truncations: Vec::new(),
        }
    }

    pub(super) fn solved(&self) -> bool {
        solved(&self.outcomes) == self.outcomes.len()
    }

    /// The training examples a candidate of this slot is scored on: the subset, then the
    /// check examples (the positions of [`halving::Group`]).
    pub(super) fn eval_set(&self) -> Vec<usize> {
        self.examples.iter().chain(&self.check).copied().collect()
    }

    /// The successive-halving group of `candidates` (indices into the caller's list and
    /// text lengths) against this slot's current component, scored on [`Self::eval_set`].
    pub(super) fn halving_group(&self, candidates: Vec<(usize, usize)>) -> halving::Group {
        halving::Group {
            n_sub: self.examples.len(),
            current: self
                .outcomes
                .iter()
                .chain(&self.check_outcomes)
                .map(|o| o.score)
                .collect(),
            candidates,
        }
    }
}
