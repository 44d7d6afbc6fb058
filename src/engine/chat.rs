//! Chat templates: turning a list of messages into the prompt text a model was trained on.
//!
//! A [`ChatTemplate`] is a Jinja template (normally `tokenizer.chat_template` from the GGUF
//! file) rendered with minijinja, configured to behave like Python jinja2 as Hugging Face
//! transformers' `apply_chat_template` uses it: `trim_blocks` and `lstrip_blocks` on, lenient
//! undefined values, Python string methods (`strip`, `startswith`, `split`, ...), loop
//! controls, and the globals templates expect (`raise_exception`, `strftime_now`, a
//! `json.dumps`-compatible `tojson`). The render context holds `messages`, `add_generation_prompt`,
//! `bos_token`, `eos_token`, and `tools`/`documents` set to none.
//!
//! Invariants: a `ChatTemplate` always holds a template that parsed; rendering never panics on
//! any input, and every failure is an [`Error::ChatTemplate`] naming the template, and the
//! line at fault or the message the template raised.
//!
//! A template comes from a model file and is treated as untrusted code: a render may run at
//! most [`TEMPLATE_FUEL`] instructions, nest at most [`TEMPLATE_RECURSION`] levels and
//! write at most [`TEMPLATE_OUTPUT_LIMIT`] bytes, so that no template can hang the engine
//! or exhaust its memory.

mod python;
#[cfg(test)]
mod tests;

use minijinja::{context, Environment, ErrorKind, Value};

use crate::engine::gguf::Metadata;
use crate::error::{Error, Result};

/// The name the template is registered under inside its environment.
const TEMPLATE_NAME: &str = "chat_template";

/// Instructions one render may execute (a real template needs a few dozen per message).
pub const TEMPLATE_FUEL: u64 = 2_000_000;

/// Nesting depth (loops, conditions, macro calls) one render may reach.
pub const TEMPLATE_RECURSION: usize = 100;

/// Bytes of text one render may produce.
pub const TEMPLATE_OUTPUT_LIMIT: usize = 32 << 20;

/// A buffer that refuses to grow past [`TEMPLATE_OUTPUT_LIMIT`].
#[derive(Default)]
struct CappedOutput {
    bytes: Vec<u8>,
    exceeded: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > TEMPLATE_OUTPUT_LIMIT {
            self.exceeded = true;
            return Err(std::io::Error::other("template output limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, or whatever other role the template understands.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with an arbitrary role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// The templates fgo falls back on when a GGUF file carries none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinTemplate {
    /// `<|im_start|>{role}\n{content}<|im_end|>\n` turns; generation prompt
    /// `<|im_start|>assistant\n`. No BOS.
    ChatMl,
    /// Gemma turns: `{bos}` then `<start_of_turn>{role}\n{content}<end_of_turn>\n` with
    /// `assistant` written as `model`; a leading system message is folded into the first turn
    /// as `{system}\n\n{content}` (as Gemma 3's official template does); generation prompt
    /// `<start_of_turn>model\n`. Unlike the official template, roles need not alternate and
    /// content is not trimmed.
    Gemma,
}

impl BuiltinTemplate {
    /// The built-in template for a `general.architecture`: Gemma for the `gemma*` family,
    /// ChatML otherwise.
    pub fn for_architecture(architecture: &str) -> Self {
        if architecture.starts_with("gemma") {
            Self::Gemma
        } else {
            Self::ChatMl
        }
    }

    /// The Jinja source of this template.
    pub fn source(self) -> &'static str {
        match self {
            Self::ChatMl => CHATML_SOURCE,
            Self::Gemma => GEMMA_SOURCE,
        }
    }
}

const CHATML_SOURCE: &str = r"{%- for message in messages %}
    {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
";

// A system message with nothing after it still reaches the model, as a user turn.
const GEMMA_SOURCE: &str = r"{{- bos_token }}
{%- if messages and messages[0].role == 'system' %}
    {%- set first_prefix = messages[0].content + '\n\n' %}
    {%- set turns = messages[1:] %}
{%- else %}
    {%- set first_prefix = '' %}
    {%- set turns = messages %}
{%- endif %}
{%- for message in turns %}
    {%- set role = 'model' if message.role == 'assistant' else message.role %}
    {{- '<start_of_turn>' + role + '\n' + (first_prefix if loop.first else '') + message.content + '<end_of_turn>\n' }}
{%- else %}
    {%- if first_prefix %}
        {{- '<start_of_turn>user\n' + messages[0].content + '<end_of_turn>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<start_of_turn>model\n' }}
{%- endif %}
";

/// A parsed chat template together with the BOS/EOS strings it is rendered with.
///
/// `Send + Sync`: one template can serve concurrent requests.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// What the template is called in errors (`tokenizer.chat_template`, `built-in ChatML`).
    name: String,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// The template of a GGUF file: `tokenizer.chat_template` if present, otherwise the
    /// built-in template for `general.architecture` ([`BuiltinTemplate::for_architecture`];
    /// ChatML when the architecture is missing too).
    ///
    /// `bos_token` and `eos_token` are the tokenizer's BOS/EOS strings (e.g. `<bos>`).
    pub fn from_gguf(metadata: &Metadata, bos_token: &str, eos_token: &str) -> Result<Self> {
        if let Some(source) = metadata.opt_str("tokenizer.chat_template")? {
            return Self::parse(source, "tokenizer.chat_template", bos_token, eos_token);
        }
        let builtin = metadata
            .opt_str("general.architecture")?
            .map_or(BuiltinTemplate::ChatMl, BuiltinTemplate::for_architecture);
        Ok(Self::builtin(builtin, bos_token, eos_token))
    }

    /// Parses a Jinja chat template.
    ///
    /// A syntax error is an [`Error::ChatTemplate`] giving the line number and text.
    pub fn from_source(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        Self::parse(source, "chat template", bos_token, eos_token)
    }

    fn parse(source: &str, name: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let name = name.to_string();
        let mut env = Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_recursion_limit(TEMPLATE_RECURSION);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", python::raise_exception);
        env.add_function("strftime_now", python::strftime_now);
        env.add_filter("tojson", python::tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|err| template_error(&err, &name, source))?;
        Ok(Self {
            env,
            name,
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// A built-in template.
    pub fn builtin(name: BuiltinTemplate, bos_token: &str, eos_token: &str) -> Self {
        // Constant sources, parsed in the tests: failing here is a bug in this file.
        let label = match name {
            BuiltinTemplate::ChatMl => "built-in ChatML",
            BuiltinTemplate::Gemma => "built-in Gemma",
        };
        Self::from_source(name.source(), bos_token, eos_token)
            .expect("built-in chat templates parse")
            .named(label)
    }

    /// The same template, called `name` in its errors.
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// What this template is called in errors.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renders `messages` into prompt text, ending with the assistant's turn header when
    /// `add_generation_prompt` is set.
    ///
    /// Fails with [`Error::ChatTemplate`] when the template calls `raise_exception` (the error
    /// is the template's message), hits a runtime error (the error names the line), or
    /// exceeds its fuel, nesting or output limits.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|err| template_error(&err, &self.name, &self.source))?;
        let ctx = context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
            tools => Value::from(()),
            documents => Value::from(()),
        };
        let mut out = CappedOutput::default();
        if let Err(err) = template.render_captured_to(ctx, &mut out) {
            if out.exceeded {
                return Err(Error::ChatTemplate(format!(
                    "`{}`: the output exceeds the limit of {} MiB",
                    self.name,
                    TEMPLATE_OUTPUT_LIMIT >> 20
                )));
            }
            return Err(template_error(&err, &self.name, &self.source));
        }
        String::from_utf8(out.bytes)
            .map_err(|_| Error::ChatTemplate(format!("`{}`: the output is not UTF-8", self.name)))
    }

    /// The Jinja source of this template.
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// Turns a minijinja error into an [`Error::ChatTemplate`] a user can act on.
fn template_error(err: &minijinja::Error, name: &str, source: &str) -> Error {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        if let Some(raised) = e.downcast_ref::<python::RaisedException>() {
            return Error::ChatTemplate(raised.0.clone());
        }
        cause = e.source();
    }
    let mut message = match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    };
    if err.kind() == ErrorKind::OutOfFuel {
        message = format!("ran out of fuel (more than {TEMPLATE_FUEL} instructions)");
    }
    if let Some(line) = err.line() {
        message.push_str(&format!(" at line {line}"));
        if let Some(text) = source.lines().nth(line - 1) {
            message.push_str(&format!(": `{}`", text.trim()));
        }
    }
    if err.kind() == ErrorKind::SyntaxError {
        message.insert_str(0, "cannot parse: ");
    }
    Error::ChatTemplate(format!("`{name}`: {message}"))
}
