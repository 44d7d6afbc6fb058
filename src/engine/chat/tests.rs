//! Golden tests: real model templates rendered exactly as transformers renders them.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value as GgufValue;

use super::python::strftime_utc;
use super::*;

/// `tokenizer.chat_template` of Qwen2.5-Instruct, byte for byte as in
/// `qwen2.5-coder-0.5b-instruct.gguf`.
const QWEN25_TEMPLATE: &str = r##"{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"##;

/// `tokenizer.chat_template` of SmolLM2-Instruct, byte for byte as in
/// `SmolLM2-135M-Instruct.Q4_1.gguf` (its string literals hold real newlines).
const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system
You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
' }}{% endif %}{{'<|im_start|>' + message['role'] + '
' + message['content'] + '<|im_end|>' + '
'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant
' }}{% endif %}";

fn qwen() -> ChatTemplate {
    ChatTemplate::from_source(QWEN25_TEMPLATE, "", "<|im_end|>").unwrap()
}

fn smollm2() -> ChatTemplate {
    ChatTemplate::from_source(SMOLLM2_TEMPLATE, "<|im_start|>", "<|im_end|>").unwrap()
}

fn gemma() -> ChatTemplate {
    ChatTemplate::builtin(BuiltinTemplate::Gemma, "<bos>", "<eos>")
}

fn system_user() -> Vec<ChatMessage> {
    vec![
        ChatMessage::system("You are terse."),
        ChatMessage::user("What is 2+2?"),
    ]
}

fn multi_turn() -> Vec<ChatMessage> {
    vec![
        ChatMessage::system("You are terse."),
        ChatMessage::user("What is 2+2?"),
        ChatMessage::assistant("4."),
        ChatMessage::user("And 3+3?"),
    ]
}

#[test]
fn chat_template_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ChatTemplate>();
}

#[test]
fn qwen_system_user_with_generation_prompt() {
    assert_eq!(
        qwen().render(&system_user(), true).unwrap(),
        "<|im_start|>system\nYou are terse.<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn qwen_system_user_without_generation_prompt() {
    assert_eq!(
        qwen().render(&system_user(), false).unwrap(),
        "<|im_start|>system\nYou are terse.<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    );
}

#[test]
fn qwen_multi_turn() {
    assert_eq!(
        qwen().render(&multi_turn(), true).unwrap(),
        "<|im_start|>system\nYou are terse.<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
         <|im_start|>assistant\n4.<|im_end|>\n\
         <|im_start|>user\nAnd 3+3?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn qwen_default_system_prompt_without_system_message() {
    let messages = [
        ChatMessage::user("What's your favourite LLM framework?"),
        ChatMessage::assistant("llama.cpp!"),
    ];
    assert_eq!(
        qwen().render(&messages, true).unwrap(),
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nWhat's your favourite LLM framework?<|im_end|>\n\
         <|im_start|>assistant\nllama.cpp!<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn smollm2_system_user_with_and_without_generation_prompt() {
    let without = "<|im_start|>system\nYou are terse.<|im_end|>\n\
                   <|im_start|>user\nWhat is 2+2?<|im_end|>\n";
    assert_eq!(smollm2().render(&system_user(), false).unwrap(), without);
    assert_eq!(
        smollm2().render(&system_user(), true).unwrap(),
        format!("{without}<|im_start|>assistant\n")
    );
}

#[test]
fn smollm2_multi_turn_with_default_system_prompt() {
    let messages = &multi_turn()[1..];
    assert_eq!(
        smollm2().render(messages, true).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
         <|im_start|>assistant\n4.<|im_end|>\n\
         <|im_start|>user\nAnd 3+3?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
}

#[test]
fn gemma_builtin_folds_system_into_first_user_turn() {
    assert_eq!(
        gemma().render(&multi_turn(), true).unwrap(),
        "<bos><start_of_turn>user\nYou are terse.\n\nWhat is 2+2?<end_of_turn>\n\
         <start_of_turn>model\n4.<end_of_turn>\n\
         <start_of_turn>user\nAnd 3+3?<end_of_turn>\n\
         <start_of_turn>model\n"
    );
}

#[test]
fn gemma_builtin_without_system_message() {
    let messages = [ChatMessage::user("Hi"), ChatMessage::assistant("Hello.")];
    assert_eq!(
        gemma().render(&messages, false).unwrap(),
        "<bos><start_of_turn>user\nHi<end_of_turn>\n\
         <start_of_turn>model\nHello.<end_of_turn>\n"
    );
}

#[test]
fn gemma_builtin_keeps_a_lone_system_message() {
    let messages = [ChatMessage::system("Be kind.")];
    assert_eq!(
        gemma().render(&messages, true).unwrap(),
        "<bos><start_of_turn>user\nBe kind.<end_of_turn>\n<start_of_turn>model\n"
    );
}

#[test]
fn chatml_builtin() {
    let template = ChatTemplate::builtin(BuiltinTemplate::ChatMl, "", "<|im_end|>");
    assert_eq!(
        template.render(&system_user(), true).unwrap(),
        "<|im_start|>system\nYou are terse.<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    assert_eq!(template.render(&[], false).unwrap(), "");
}

#[test]
fn from_gguf_prefers_the_embedded_template() {
    let mut values = HashMap::new();
    values.insert(
        "general.architecture".to_string(),
        GgufValue::String("gemma3".to_string()),
    );
    let metadata = Metadata::new(values.clone());
    let template = ChatTemplate::from_gguf(&metadata, "<bos>", "<eos>").unwrap();
    assert_eq!(template.source(), BuiltinTemplate::Gemma.source());

    values.insert(
        "tokenizer.chat_template".to_string(),
        GgufValue::String(SMOLLM2_TEMPLATE.to_string()),
    );
    let template = ChatTemplate::from_gguf(&Metadata::new(values), "", "").unwrap();
    assert_eq!(template.source(), SMOLLM2_TEMPLATE);

    let template = ChatTemplate::from_gguf(&Metadata::default(), "", "").unwrap();
    assert_eq!(template.source(), BuiltinTemplate::ChatMl.source());
}

#[test]
fn from_gguf_rejects_a_mistyped_template() {
    let mut values = HashMap::new();
    values.insert("tokenizer.chat_template".to_string(), GgufValue::U32(7));
    let err = ChatTemplate::from_gguf(&Metadata::new(values), "", "").unwrap_err();
    assert!(matches!(err, Error::Metadata { ref key, .. } if key == "tokenizer.chat_template"));
}

#[test]
fn raise_exception_reports_the_template_message() {
    let source = "{%- for message in messages %}
    {%- if message.role not in ['user', 'assistant'] %}
        {{- raise_exception('Unsupported role: ' + message.role) }}
    {%- endif %}
    {{- message.content }}
{%- endfor %}";
    let template = ChatTemplate::from_source(source, "", "").unwrap();
    assert_eq!(
        template.render(&[ChatMessage::user("hi")], false).unwrap(),
        "hi"
    );
    let err = template
        .render(&[ChatMessage::new("robot", "beep")], false)
        .unwrap_err();
    assert!(matches!(err, Error::ChatTemplate(ref m) if m == "Unsupported role: robot"));
    assert_eq!(err.to_string(), "chat template: Unsupported role: robot");
}

#[test]
fn syntax_error_names_the_line() {
    let source = "{% for message in messages %}\n{{ message.content }\n{% endfor %}";
    let err = ChatTemplate::from_source(source, "", "").unwrap_err();
    let Error::ChatTemplate(message) = err else {
        panic!("expected a chat template error, got {err:?}");
    };
    assert!(
        message.starts_with("`chat template`: cannot parse: syntax error"),
        "{message}"
    );
    assert!(
        message.contains("at line 2: `{{ message.content }`"),
        "{message}"
    );
}

#[test]
fn unclosed_block_is_a_syntax_error() {
    let err = ChatTemplate::from_source("{% if add_generation_prompt %}x", "", "").unwrap_err();
    assert!(err.to_string().contains("cannot parse"), "{err}");
}

#[test]
fn runtime_error_names_the_line() {
    let source = "{{ bos_token }}\n{{ messages[0].content.nope() }}";
    let template = ChatTemplate::from_source(source, "", "").unwrap();
    let err = template
        .render(&[ChatMessage::user("x")], false)
        .unwrap_err();
    assert!(err.to_string().contains("at line 2"), "{err}");
}

fn render_expr(source: &str, messages: &[ChatMessage]) -> String {
    ChatTemplate::from_source(source, "<s>", "</s>")
        .unwrap()
        .render(messages, false)
        .unwrap()
}

#[test]
fn python_string_methods_and_loop_controls() {
    let messages = [
        ChatMessage::user("  a,b  "),
        ChatMessage::assistant("<think>x</think>answer"),
        ChatMessage::user("stop"),
        ChatMessage::user("never"),
    ];
    let source = "{%- for m in messages %}
{%- if m.content == 'stop' %}{% break %}{% endif %}
{%- if m.role == 'assistant' %}{{ m.content.split('</think>')[-1].lstrip('\\n') }}|{% continue %}{% endif %}
{{- m.content.strip().split(',') | join('+') }}|{{ m.content.strip().startswith('a') }}|
{%- endfor %}";
    assert_eq!(render_expr(source, &messages), "a+b|True|answer|");
    assert_eq!(render_expr("{{ true }} {{ none }}", &[]), "True None");
}

#[test]
fn trim_and_lstrip_blocks_match_transformers() {
    let source = "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n";
    let messages = [ChatMessage::user("a"), ChatMessage::user("b")];
    assert_eq!(render_expr(source, &messages), "[a]\n[b]\n");
}

#[test]
fn undefined_values_are_lenient_and_tools_is_none() {
    let source = "[{{ missing }}]{% if tools is none %}none{% endif %}{% if missing is not defined %}!{% endif %}{% for x in missing %}x{% endfor %}{{ bos_token }}{{ eos_token }}";
    assert_eq!(render_expr(source, &[]), "[]none!<s></s>");
}

#[test]
fn tojson_matches_python_json_dumps() {
    let source = r#"{{ {"b": [1, 2.5, true, none], "a": "é\"\n<"} | tojson }}|{{ {"k": [1, {}]} | tojson(indent=2) }}|{{ {"b": 1, "a": 1e20} | tojson(sort_keys=true, separators=[",", ":"]) }}|{{ "é" | tojson(ensure_ascii=true) }}|{{ messages[0] | tojson }}"#;
    assert_eq!(
        render_expr(source, &[ChatMessage::user("hi")]),
        "{\"b\": [1, 2.5, true, null], \"a\": \"é\\\"\\n<\"}|{\n  \"k\": [\n    1,\n    {}\n  ]\n}|{\"a\":1e+20,\"b\":1}|\"\\u00e9\"|{\"role\": \"user\", \"content\": \"hi\"}"
    );
}

#[test]
fn strftime_now_formats_the_current_date() {
    let rendered = render_expr("{{ strftime_now('%Y-%m-%d') }}", &[]);
    assert_eq!(rendered.len(), 10, "{rendered}");
    assert!(rendered.starts_with("20"), "{rendered}");
}

#[test]
fn strftime_utc_directives() {
    // 2024-02-29 13:05:09 UTC, a Thursday.
    let t = 1_709_211_909;
    assert_eq!(strftime_utc("%d %b %Y", t), "29 Feb 2024");
    assert_eq!(
        strftime_utc("%A %B %-d %y %j %I:%M:%S %p %H %% %Q", t),
        "Thursday February 29 24 060 01:05:09 PM 13 % %Q"
    );
    assert_eq!(
        strftime_utc("%F %T %a %e %-m", 0),
        "1970-01-01 00:00:00 Thu  1 1"
    );
}

/// Renders a hostile template with one message; the error it must give.
fn hostile_render(source: &str) -> String {
    let template = ChatTemplate::from_source(source, "", "").expect("parses");
    match template.render(&[ChatMessage::user("hi")], true) {
        Err(Error::ChatTemplate(message)) => message,
        other => panic!("expected a chat template error, got {other:?}"),
    }
}

#[test]
fn nested_loops_run_out_of_fuel_quickly() {
    let started = std::time::Instant::now();
    let message = hostile_render(
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    );
    assert!(message.contains("ran out of fuel"), "{message}");
    assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());
}

#[test]
fn output_and_recursion_are_bounded() {
    let message = hostile_render("{% for a in range(100000) %}{{ 'x' * 100000 }}{% endfor %}");
    assert!(
        message.contains("output exceeds the limit of 32 MiB"),
        "{message}"
    );
    let message = hostile_render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
    assert!(message.contains("recursion"), "{message}");
}

#[test]
fn a_template_from_a_model_file_is_named_in_its_errors() {
    let mut values = std::collections::HashMap::new();
    values.insert(
        "tokenizer.chat_template".to_string(),
        candle_core::quantized::gguf_file::Value::String("{{ x.y.z() }}".into()),
    );
    let metadata = crate::engine::gguf::Metadata::new(values);
    let template = ChatTemplate::from_gguf(&metadata, "", "").expect("parses");
    let err = template
        .render(&[ChatMessage::user("hi")], true)
        .unwrap_err();
    assert!(
        err.to_string().contains("`tokenizer.chat_template`"),
        "{err}"
    );
}
