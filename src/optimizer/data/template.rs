//! Message templates: `{{name}}` placeholders over components and example fields.
//!
//! Deliberately tiny (no logic, no filters) so that every placeholder can be checked against
//! the components and the data before any model is loaded. A placeholder names a component
//! or a top-level field of the example; strings are inserted as-is, other JSON values as
//! JSON. `{{{{` is not special: only `{{ identifier }}` is a placeholder.

use std::collections::BTreeMap;

use serde_json::Value;

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Var(String),
}

impl Template {
    /// Parses `text`; an unclosed `{{` or a placeholder that is not an identifier is an error.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            let Some(len) = rest[start + 2..].find("}}") else {
                return Err(format!(
                    "unclosed `{{{{` at byte {}",
                    text.len() - rest.len() + start
                ));
            };
            let name = rest[start + 2..start + 2 + len].trim();
            if !is_identifier(name) {
                return Err(format!(
                    "`{{{{{name}}}}}` is not a placeholder (use letters, digits, _)"
                ));
            }
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            parts.push(Part::Var(name.to_string()));
            rest = &rest[start + 2 + len + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Self { parts })
    }

    /// The placeholder names, in order of appearance (with repeats).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(n) => Some(n.as_str()),
            Part::Text(_) => None,
        })
    }

    /// Renders with components first, then example fields; a missing name renders empty
    /// (validation guarantees it does not happen in a run).
    pub fn render(
        &self,
        components: &BTreeMap<String, String>,
        fields: &serde_json::Map<String, Value>,
    ) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(n) => {
                    if let Some(c) = components.get(n) {
                        out.push_str(c);
                    } else if let Some(v) = fields.get(n) {
                        out.push_str(&value_text(v));
                    }
                }
            }
        }
        out
    }
}

/// A JSON value as text: strings bare, everything else as compact JSON.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whether `s` is a template-friendly name.
pub(crate) fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_components_and_fields() {
        let t = Template::parse("{{sys}} Q: {{ question }} n={{n}}").unwrap();
        let comps = BTreeMap::from([("sys".to_string(), "Be brief.".to_string())]);
        let fields = serde_json::json!({"question": "why?", "n": 3});
        let fields = fields.as_object().unwrap();
        assert_eq!(t.render(&comps, fields), "Be brief. Q: why? n=3");
        assert_eq!(t.names().collect::<Vec<_>>(), ["sys", "question", "n"]);
    }

    #[test]
    fn rejects_bad_placeholders() {
        assert!(Template::parse("{{ a b }}").is_err());
        assert!(Template::parse("{{open").is_err());
        assert_eq!(
            Template::parse("plain { text }").unwrap().names().count(),
            0
        );
    }
}
