//! Making the candidates of one iteration: every active subset's moves, the optimizer's in
//! one batch (re-asks batched too), the mechanical ones (strategies appended verbatim,
//! worked examples, the answer format) directly. (A candidate under which the agent's
//! replies are often cut off is tried again with its reply budget stated, after
//! evaluation: see [`crate::optimizer::methods::optimize`].)

use crate::optimizer::data::rng::Rng;
use crate::optimizer::data::task::Operator;
use crate::optimizer::exec::agent::{Components, Outcome};
use crate::optimizer::methods::env::{Ask, Env, Expect};
use crate::optimizer::methods::format;
use crate::optimizer::methods::operators;
use crate::optimizer::methods::prompts;
use crate::optimizer::methods::slot::Slot;

/// A candidate of one iteration, before evaluation.
pub struct Proposal {
    pub operator: Operator,
    pub components: Option<Components>,
    /// Why no candidate came out (a move with nothing to work with).
    pub missing: Option<String>,
}

/// The candidates of `plans[a]` (operator and variant per candidate) for each active slot
/// `slots[active[a]]`; `diagnoses[a]` feeds its rewrites.
pub fn propose(
    env: &Env,
    slots: &[Slot],
    active: &[usize],
    plans: &[Vec<(Operator, usize)>],
    diagnoses: &[String],
    stage: &str,
    iteration: usize,
) -> Vec<Vec<Proposal>> {
    let spec = env.spec;
    let first = env.names.first().cloned().unwrap_or_default();
    let mut proposals: Vec<Vec<Proposal>> = Vec::new();
    let mut asks = Vec::new();
    let mut asked: Vec<(usize, usize)> = Vec::new();
    for (a, &i) in active.iter().enumerate() {
        let s = &slots[i];
        let failed = prompts::show_failed(&s.failed, &env.names, spec.show_failed_attempts);
        let mut row = Vec::new();
        for (j, &(op, variant)) in plans[a].iter().enumerate() {
            let label = format!("{stage}/{}/{}/{iteration}/{j}", op.name(), s.id);
            let mut p = Proposal {
                operator: op,
                components: None,
                missing: None,
            };
            let messages = match op {
                Operator::Rewrite => Some((
                    prompts::rewrite(&s.current, &env.names, &diagnoses[a], &failed, variant),
                    Expect::Components(&s.current),
                )),
                Operator::Strategy => match operators::strategy_for(&joined(&s.current), variant) {
                    Some(strategy) => Some((
                        prompts::strategy(
                            &s.current,
                            &env.names,
                            &sample_trajectories(env, s, iteration),
                            strategy,
                        ),
                        Expect::Components(&s.current),
                    )),
                    None => {
                        p.missing = Some("the component states every library strategy".into());
                        None
                    }
                },
                Operator::Induction => {
                    let mut order: Vec<usize> = (0..s.outcomes.len()).collect();
                    Rng::derived(env.seed, &label).shuffle(&mut order);
                    let pairs = prompts::show_pairs(
                        &s.outcomes,
                        spec.show_failures.max(1),
                        spec.trajectory_chars,
                        &order,
                    );
                    Some((
                        prompts::induction(&s.current, &env.names, &pairs),
                        Expect::Procedure(&s.current, first.clone()),
                    ))
                }
                Operator::Seed | Operator::Demos | Operator::Format => {
                    match mechanical(env, s, op, variant) {
                        Some(Ok((c, exempt))) => {
                            p.components = Some(c);
                            if let Some(section) = exempt {
                                env.exempt.borrow_mut().push(section);
                            }
                        }
                        Some(Err(why)) => p.missing = Some(why),
                        None => {}
                    }
                    None
                }
                Operator::Crossover | Operator::Merge | Operator::Retrial => {
                    p.missing = Some("a merge move".into());
                    None
                }
            };
            if let Some((messages, expect)) = messages {
                asked.push((a, j));
                asks.push(Ask {
                    messages,
                    params: env.params(&spec.params, &label),
                    expect,
                });
            }
            row.push(p);
        }
        proposals.push(row);
    }
    let answers = env.ask(stage, asks);
    for ((a, j), c) in asked.into_iter().zip(answers) {
        proposals[a][j].components = c;
    }
    proposals
}

/// The candidate of a mechanical move (`seed`, `demos`, `format`: made without a model
/// call) on slot `s`, with the section the guard must exempt (the worked examples or the
/// answer format, taken from the run's own training data); `Err` says why the move has
/// nothing to add; `None` for a move that needs the optimizer.
pub fn mechanical(
    env: &Env,
    s: &Slot,
    op: Operator,
    variant: usize,
) -> Option<Result<(Components, Option<String>), String>> {
    let spec = env.spec;
    let first = env.names.first().cloned().unwrap_or_default();
    Some(match op {
        Operator::Seed => match operators::strategy_for(&joined(&s.current), variant) {
            Some(strategy) => Ok((
                operators::append_section(&s.current, &first, strategy),
                None,
            )),
            None => Err("the component states every library strategy".into()),
        },
        Operator::Demos => match operators::demos_block(
            &s.outcomes,
            spec.demo_count,
            spec.trajectory_chars,
            env.seed ^ s.id as u64,
            variant,
        ) {
            Some(block) => Ok((
                operators::append_section(&s.current, &first, &block),
                Some(block),
            )),
            None => Err("no solved example to show".into()),
        },
        Operator::Format => match format::format_of(&s.outcomes) {
            Some(section) if s.current.get(&first).is_some_and(|t| t.contains(&section)) => {
                Err("the answer format is already stated".into())
            }
            Some(section) => Ok((
                operators::append_section(&s.current, &first, &section),
                Some(section),
            )),
            None => Err("the answers have no common format".into()),
        },
        _ => return None,
    })
}

/// Every component text, one after another: where a library strategy is looked for.
fn joined(c: &Components) -> String {
    c.values().cloned().collect::<Vec<_>>().join("\n\n")
}

/// A seeded sample of the slot's failures and successes, formatted.
fn sample_trajectories(env: &Env, s: &Slot, iteration: usize) -> String {
    let mut rng = Rng::derived(env.seed, &format!("sample/{}/{iteration}", s.id));
    let (mut fail, mut ok): (Vec<&Outcome>, Vec<&Outcome>) =
        s.outcomes.iter().partition(|o| !o.solved());
    rng.shuffle(&mut fail);
    rng.shuffle(&mut ok);
    fail.truncate(env.spec.show_failures);
    ok.truncate(env.spec.show_successes);
    fail.iter()
        .chain(ok.iter())
        .enumerate()
        .map(|(n, o)| prompts::show_outcome(n + 1, o, env.spec.trajectory_chars))
        .collect::<Vec<_>>()
        .join("\n")
}
