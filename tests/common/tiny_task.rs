//! The tiny counting task the optimizer's end-to-end tests run: two training examples the
//! small models get wrong, one val and one test example, a chat agent answering in a few
//! tokens and an optimizer making one `rewrite` candidate per subset.

use std::path::{Path, PathBuf};

/// The initial system prompt.
pub const INITIAL_PROMPT: &str = "Answer with one number.";

/// Counting questions smollm2 gets wrong with the initial prompt, so that every subset is
/// optimized (a solved subset stops at once).
pub const TRAIN: &str = r#"{"id": "t0", "question": "Mia has 4 goats, 6 ducks and a horse. How many animals did Mia have in total?", "answer": 11}
{"id": "t1", "question": "Theo has 2 oranges, two pencils, a kiwi and 6 mangoes. How many pieces of fruit did Theo have in total?", "answer": 9}
"#;
pub const VAL: &str = r#"{"id": "v0", "question": "Liam packed four peppers, six zucchinis, 4 potatoes and a carrot. How many vegetables did Liam pack in total?", "answer": 15}
"#;
pub const TEST: &str = r#"{"id": "x0", "question": "Lena saw three pears, three plums, three mangoes, two kiwis and 4 bananas. How many pieces of fruit did Lena see in total?", "answer": 15}
"#;

/// What varies between the tests that run the tiny task.
pub struct TinyTask<'a> {
    pub name: &'a str,
    /// The agent's model spec.
    pub agent_model: &'a str,
    /// The optimizer's model spec (`None`: the agent's, or what the command line gives).
    pub optimizer_model: Option<&'a str>,
    /// The optimizer's sampling temperature.
    pub optimizer_temperature: f64,
    /// Tokens of an optimizer reply.
    pub optimizer_tokens: usize,
    pub subset_count: usize,
}

/// Writes the task file and its data into `dir`; returns the task file.
pub fn write(dir: &Path, t: &TinyTask) -> PathBuf {
    std::fs::create_dir_all(dir).expect("task dir");
    for (name, text) in [
        ("train.jsonl", TRAIN),
        ("val.jsonl", VAL),
        ("test.jsonl", TEST),
    ] {
        std::fs::write(dir.join(name), text).expect("write data");
    }
    let optimizer_model = t
        .optimizer_model
        .map(|m| format!("model = \"{m}\"\n"))
        .unwrap_or_default();
    let task = format!(
        r#"name = "{name}"

[components.system_prompt]
text = "{INITIAL_PROMPT}"

[agent]
type = "chat"
model = "{agent}"
system = "{{{{system_prompt}}}}"
user = "{{{{question}}}}"
params = {{ temperature = 0.0, max_new_tokens = 8 }}
extract = {{ type = "regex", pattern = "-?\\d+" }}

[data]
train = "train.jsonl"
val = "val.jsonl"
test = "test.jsonl"

[metric]
type = "numeric"

[optimizer]
{optimizer_model}params = {{ temperature = {temperature:?}, max_new_tokens = {tokens} }}
diagnosis_params = {{ temperature = 0.0, max_new_tokens = 8 }}
subset_count = {subsets}
iterations = 1
candidates = 1
operators = ["rewrite"]
max_reasks = 0
show_failures = 1
show_successes = 0
trajectory_chars = 120
merge_fan_in = 2
"#,
        name = t.name,
        agent = t.agent_model,
        temperature = t.optimizer_temperature,
        tokens = t.optimizer_tokens,
        subsets = t.subset_count,
    );
    let path = dir.join("task.toml");
    std::fs::write(&path, task).expect("write task");
    path
}
