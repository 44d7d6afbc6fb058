//! Model spec strings and the options of a remote server.
//!
//! Everywhere a model is named (a task file's `model`, `--model`, `--optimizer-model`), a
//! spec is either a local model (a GGUF path, an alias, `hf:OWNER/REPO/FILE.gguf`) or a
//! model served over HTTP by an OpenAI-compatible server:
//!
//! ```text
//! SERVED_NAME@URL[,URL...]
//! qwen2.5-coder-0.5b@http://127.0.0.1:8080
//! Qwen/Qwen2.5-7B-Instruct@http://a:8000/v1,http://b:8000/v1
//! ```
//!
//! `SERVED_NAME` is the name the server knows the model by (sent as `model`). Each URL is
//! the base of one replica, with or without a trailing `/v1`; several URLs are replicas of
//! the same model, and requests are spread over them. What does not fit in the string is a
//! [`ServerOptions`] table (`[agent.server]`, `[optimizer.server]` in a task file).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A parsed model spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// A model run in-process: the spec as given, resolved by
    /// [`crate::engine::source::resolve`].
    Local(String),
    /// A model on one or more OpenAI-compatible servers.
    Remote(RemoteSpec),
}

/// A served model and the base URLs of its replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSpec {
    /// The model name the servers know (the request's `model` field).
    pub served_name: String,
    /// Base URLs without a trailing `/` or `/v1`, in the order given; never empty, no
    /// duplicates.
    pub endpoints: Vec<String>,
}

impl RemoteSpec {
    /// The spec in its normal form: `NAME@URL,URL` with normalized URLs.
    pub fn display(&self) -> String {
        format!("{}@{}", self.served_name, self.endpoints.join(","))
    }

    /// The model's identity for call keys: the served name and the sorted set of
    /// endpoints, so that listing the same replicas in another order keeps the keys.
    pub fn identity(&self) -> String {
        let mut endpoints = self.endpoints.clone();
        endpoints.sort();
        format!("openai:{}@{}", self.served_name, endpoints.join(","))
    }
}

impl ModelSpec {
    /// Parses a spec: remote when it holds `@http://` or `@https://`, local otherwise.
    pub fn parse(spec: &str) -> Result<Self> {
        let at = ["@http://", "@https://"]
            .iter()
            .filter_map(|marker| spec.find(marker))
            .min();
        let Some(at) = at else {
            return Ok(ModelSpec::Local(spec.to_string()));
        };
        let fail = |reason: String| Error::ModelSource {
            source_spec: crate::error::printable(spec),
            reason,
        };
        let served_name = spec[..at].trim();
        if served_name.is_empty() {
            return Err(fail(
                "the served model name before `@` is empty (expected NAME@URL[,URL...])".into(),
            ));
        }
        if served_name.chars().any(char::is_control) {
            return Err(fail(
                "the served model name holds a control character".into(),
            ));
        }
        let mut endpoints: Vec<String> = Vec::new();
        for url in spec[at + 1..].split(',') {
            let url = normalize_url(url.trim()).map_err(fail)?;
            if endpoints.contains(&url) {
                return Err(fail(format!("the URL {url} is listed twice")));
            }
            endpoints.push(url);
        }
        Ok(ModelSpec::Remote(RemoteSpec {
            served_name: served_name.to_string(),
            endpoints,
        }))
    }
}

/// Checks one base URL and strips a trailing `/` and `/v1`.
fn normalize_url(url: &str) -> std::result::Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("`{url}` is not an http:// or https:// URL"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    if host.contains('@') {
        return Err(format!(
            "`{url}`: credentials in a URL are refused; name an environment variable with \
             `api_key_env` instead"
        ));
    }
    if let Some((_, port)) = host.rsplit_once(':').filter(|_| !host.ends_with(']')) {
        if port.parse::<u16>().is_err() {
            return Err(format!("`{url}`: `{port}` is not a port number"));
        }
    }
    if url.contains(['?', '#', ' ']) || url.chars().any(char::is_control) {
        return Err(format!(
            "`{url}`: a base URL has no query, fragment or spaces"
        ));
    }
    let mut base = url.trim_end_matches('/');
    if let Some(stripped) = base.strip_suffix("/v1") {
        base = stripped.trim_end_matches('/');
    }
    Ok(base.to_string())
}

/// Options of a remote model that do not fit in its spec string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerOptions {
    /// The environment variable holding the API key (sent as `Authorization: Bearer`). The
    /// key itself is never written anywhere.
    pub api_key_env: Option<String>,
    /// Requests in flight per endpoint (default 32).
    pub max_in_flight: usize,
    /// Seconds to open a connection (default 5).
    pub connect_timeout_s: f64,
    /// Seconds to wait for a response once a request is sent (default 600: a long
    /// generation on a busy server).
    pub read_timeout_s: f64,
    /// Retries of one request after a connection error, a timeout, a 429 or a 5xx
    /// (default 4).
    pub retries: u32,
    /// Seconds one request may spend on retries in all (default 120).
    pub retry_time_s: f64,
    /// A GGUF file or `tokenizer.json` to count tokens locally when the server has no
    /// `/tokenize`.
    pub tokenizer: Option<PathBuf>,
    /// The context window in tokens, instead of what the server says.
    pub context_length: Option<usize>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            api_key_env: None,
            max_in_flight: 32,
            connect_timeout_s: 5.0,
            read_timeout_s: 600.0,
            retries: 4,
            retry_time_s: 120.0,
            tokenizer: None,
            context_length: None,
        }
    }
}

/// The most requests in flight per endpoint.
pub const MAX_IN_FLIGHT: usize = 4096;

/// The most retries of one request.
pub const MAX_RETRIES: u32 = 100;

/// The longest timeout or retry time, in seconds: a day.
pub const MAX_SECONDS: f64 = 86_400.0;

impl ServerOptions {
    /// Checks every field; the error is `(field, reason)` with the field's name inside the
    /// table, for the caller to prefix (`agent.server.`, `--`).
    pub fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        if let Some(name) = &self.api_key_env {
            let ok = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err((
                    "api_key_env",
                    format!(
                        "`{}` is not an environment variable name (letters, digits, _)",
                        crate::error::printable(name)
                    ),
                ));
            }
        }
        if !(1..=MAX_IN_FLIGHT).contains(&self.max_in_flight) {
            return Err((
                "max_in_flight",
                format!("must be between 1 and {MAX_IN_FLIGHT}"),
            ));
        }
        for (field, value) in [
            ("connect_timeout_s", self.connect_timeout_s),
            ("read_timeout_s", self.read_timeout_s),
        ] {
            if !(value.is_finite() && value > 0.0 && value <= MAX_SECONDS) {
                return Err((
                    field,
                    format!("must be a positive number of seconds, at most {MAX_SECONDS}"),
                ));
            }
        }
        if !(self.retry_time_s.is_finite()
            && self.retry_time_s >= 0.0
            && self.retry_time_s <= MAX_SECONDS)
        {
            return Err((
                "retry_time_s",
                format!("must be a number of seconds from 0 to {MAX_SECONDS}"),
            ));
        }
        if self.retries > MAX_RETRIES {
            return Err(("retries", format!("must be at most {MAX_RETRIES}")));
        }
        if self.context_length == Some(0) {
            return Err(("context_length", "must be positive".into()));
        }
        Ok(())
    }

    /// The API key from the environment, if one is configured.
    pub fn api_key(&self) -> Result<Option<String>> {
        let Some(name) = &self.api_key_env else {
            return Ok(None);
        };
        match std::env::var(name) {
            Ok(key) if !key.trim().is_empty() => Ok(Some(key.trim().to_string())),
            _ => Err(Error::InvalidArgument {
                name: "api_key_env".into(),
                reason: format!("the environment variable `{name}` is not set or empty"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(spec: &str) -> RemoteSpec {
        match ModelSpec::parse(spec).expect("parses") {
            ModelSpec::Remote(r) => r,
            ModelSpec::Local(l) => panic!("{l} parsed as local"),
        }
    }

    #[test]
    fn local_specs_stay_as_given() {
        for spec in [
            "smollm2-135m",
            "./models/a.gguf",
            "hf:owner/repo/f.gguf",
            "me@example",
        ] {
            assert_eq!(
                ModelSpec::parse(spec).unwrap(),
                ModelSpec::Local(spec.into())
            );
        }
    }

    #[test]
    fn remote_specs_name_a_model_and_its_replicas() {
        let r = remote("qwen2.5-coder-0.5b@http://127.0.0.1:8080");
        assert_eq!(r.served_name, "qwen2.5-coder-0.5b");
        assert_eq!(r.endpoints, vec!["http://127.0.0.1:8080"]);
        let r = remote("Qwen/Qwen2.5-7B-Instruct@http://b:8000/v1/, https://a:8000/v1");
        assert_eq!(r.served_name, "Qwen/Qwen2.5-7B-Instruct");
        assert_eq!(r.endpoints, vec!["http://b:8000", "https://a:8000"]);
        assert_eq!(
            r.display(),
            "Qwen/Qwen2.5-7B-Instruct@http://b:8000,https://a:8000"
        );
        let swapped = remote("Qwen/Qwen2.5-7B-Instruct@https://a:8000,http://b:8000");
        assert_eq!(
            r.identity(),
            swapped.identity(),
            "the order does not matter"
        );
        assert_ne!(
            r.identity(),
            remote("Qwen/Qwen2.5-7B-Instruct@http://b:8000").identity()
        );
        let routed = remote("m@http://router/api/v1");
        assert_eq!(routed.endpoints, vec!["http://router/api"]);
    }

    #[test]
    fn bad_remote_specs_say_what_is_wrong() {
        for (spec, expected) in [
            ("@http://a:1", "name before `@` is empty"),
            ("m@http://a:1,ftp://b", "not an http:// or https:// URL"),
            ("m@http://a:1,", "not an http:// or https:// URL"),
            ("m@http://", "has no host"),
            ("m@http://a:x", "not a port number"),
            ("m@http://user:pw@a:1", "credentials in a URL are refused"),
            ("m@http://a:1,http://a:1/v1", "listed twice"),
            ("m@http://a:1/?q=1", "no query"),
        ] {
            let err = ModelSpec::parse(spec).unwrap_err().to_string();
            assert!(err.contains(expected), "{spec}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }

    #[test]
    fn options_are_validated_field_by_field() {
        assert!(ServerOptions::default().validate().is_ok());
        let cases = [
            (
                ServerOptions {
                    max_in_flight: 0,
                    ..Default::default()
                },
                "max_in_flight",
            ),
            (
                ServerOptions {
                    read_timeout_s: f64::NAN,
                    ..Default::default()
                },
                "read_timeout_s",
            ),
            (
                ServerOptions {
                    connect_timeout_s: 0.0,
                    ..Default::default()
                },
                "connect_timeout_s",
            ),
            (
                ServerOptions {
                    retry_time_s: -1.0,
                    ..Default::default()
                },
                "retry_time_s",
            ),
            (
                ServerOptions {
                    retries: 1000,
                    ..Default::default()
                },
                "retries",
            ),
            (
                ServerOptions {
                    api_key_env: Some("MY KEY".into()),
                    ..Default::default()
                },
                "api_key_env",
            ),
            (
                ServerOptions {
                    context_length: Some(0),
                    ..Default::default()
                },
                "context_length",
            ),
        ];
        for (options, field) in cases {
            assert_eq!(options.validate().unwrap_err().0, field);
        }
    }

    #[test]
    fn a_missing_key_variable_is_named_without_a_value() {
        let options = ServerOptions {
            api_key_env: Some("FGO_TEST_KEY_THAT_IS_NOT_SET".into()),
            ..Default::default()
        };
        let err = options.api_key().unwrap_err().to_string();
        assert!(err.contains("FGO_TEST_KEY_THAT_IS_NOT_SET"), "{err}");
        assert_eq!(ServerOptions::default().api_key().unwrap(), None);
    }

    #[test]
    fn options_parse_from_toml_and_refuse_unknown_fields() {
        let o: ServerOptions = toml::from_str("max_in_flight = 4\nretries = 1").unwrap();
        assert_eq!((o.max_in_flight, o.retries), (4, 1));
        assert_eq!(o.read_timeout_s, 600.0);
        let err = toml::from_str::<ServerOptions>("api_key = \"x\"").unwrap_err();
        assert!(err.to_string().contains("api_key"), "{err}");
    }
}
