//! `fgo serve` end to end: the real binary on SmolLM2, spoken to over loopback with a
//! small HTTP/1.1 client written here (so that a test controls every byte, including
//! hanging up mid-answer).
//!
//! Waits for server state are polls with a generous bound on the number of tries, never a
//! timed assertion.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

mod common;

fn model() -> std::path::PathBuf {
    common::model_path_for("smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Threads per server: tests run side by side on few cores.
const THREADS: &str = "1";

/// A running `fgo serve`, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(extra: &[&str], envs: &[(&str, &str)]) -> Server {
        let model = model();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fgo"));
        cmd.args(["serve", "--model"])
            .arg(&model)
            .args(["--port", "0", "--kv-budget", "128M"])
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if !extra.contains(&"--threads") {
            cmd.args(["--threads", THREADS]);
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("fgo serve starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the address");
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("unexpected first line: {line:?}")
            })
            .to_string();
        Server { child, addr }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn get(&self, path: &str) -> Reply {
        request(&self.addr, "GET", path, &[], b"")
    }

    fn post(&self, path: &str, body: &Value) -> Reply {
        request(&self.addr, "POST", path, &[], body.to_string().as_bytes())
    }

    fn health(&self) -> Value {
        let r = self.get("/health");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// Polls `/health` until `done` holds (at most 1200 tries, 50 ms apart).
    fn wait_for(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..1200 {
            let h = self.health();
            if done(&h) {
                return h;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the server never reached: {what}; last /health: {}",
            self.health()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP response.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `data:` payloads of a server-sent event stream.
    fn events(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
            .map(str::to_string)
            .collect()
    }

    /// Asserts an OpenAI error object with `status`; returns it.
    fn error(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        let body = self.json();
        let e = &body["error"];
        assert!(e["message"].is_string(), "{body}");
        assert!(e["type"].is_string(), "{body}");
        assert!(
            e.get("param").is_some() && e.get("code").is_some(),
            "{body}"
        );
        e.clone()
    }
}

fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(600)))
        .expect("timeout");
    stream
}

/// Writes one request (the connection closes after the answer).
fn send(stream: &mut TcpStream, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\n"
    );
    let declares_length = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    if !declares_length {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("write head");
    stream.write_all(body).expect("write body");
}

/// Reads a status line and headers.
fn read_head(reader: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    (status, headers)
}

/// Reads a body: by length, chunked, or to the end.
fn read_body(reader: &mut impl BufRead, headers: &[(String, String)]) -> Vec<u8> {
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).expect("chunk size");
            let n = usize::from_str_radix(size.trim(), 16).expect("chunk size hex");
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).expect("chunk");
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(len) = find("content-length") {
        body.resize(len.parse().expect("length"), 0);
        reader.read_exact(&mut body).expect("body");
    } else {
        reader.read_to_end(&mut body).expect("body");
    }
    body
}

fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut stream = connect(addr);
    send(&mut stream, method, path, headers, body);
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader);
    let body = read_body(&mut reader, &headers);
    Reply {
        status,
        headers,
        body,
    }
}

const SYSTEM: &str = "You are a helpful assistant.";
const QUESTION: &str = "What is the capital of France?";

fn chat_body(extra: Value) -> Value {
    let mut body = json!({
        "model": "smollm2",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": QUESTION},
        ],
        "max_tokens": 24,
        "temperature": 0,
    });
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    body
}

/// The text `fgo generate` gives for the same chat and parameters.
fn generate_text(max_tokens: usize, stop: Option<&str>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fgo"));
    cmd.args(["generate", "--model"])
        .arg(model())
        .args([
            "--threads",
            THREADS,
            "--json",
            "--system",
            SYSTEM,
            "--prompt",
            QUESTION,
        ])
        .args(["--max-tokens", &max_tokens.to_string()])
        .env_remove("RUST_LOG");
    if let Some(stop) = stop {
        cmd.args(["--stop", stop]);
    }
    let out = cmd.output().expect("fgo generate runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    v["text"].as_str().expect("text").to_string()
}

/// The text of a streamed chat answer: the joined deltas of choice 0, after checking the
/// chunk format and the final `[DONE]`.
fn streamed_chat_text(reply: &Reply) -> (String, Vec<Value>) {
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        reply
            .header("content-type")
            .is_some_and(|v| v.starts_with("text/event-stream")),
        "{:?}",
        reply.headers
    );
    let events = reply.events();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    assert_eq!(events.iter().filter(|e| *e == "[DONE]").count(), 1);
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk JSON"))
        .collect();
    let mut text = String::new();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        for choice in c["choices"].as_array().expect("choices") {
            if choice["index"] == 0 {
                text.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
            }
        }
    }
    (text, chunks)
}

#[test]
fn the_openai_api_on_one_server() {
    let server = Server::start(&[], &[]);

    // Greedy chat equals `fgo generate` for the same prompt and parameters.
    let want = generate_text(24, None);
    let r = server.post("/v1/chat/completions", &chat_body(json!({})));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("chatcmpl-")));
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("text");
    assert_eq!(text, want);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(v["choices"][0]["finish_reason"].is_string());
    let usage = &v["usage"];
    let (p, c) = (
        usage["prompt_tokens"].as_u64().expect("prompt"),
        usage["completion_tokens"].as_u64().expect("completion"),
    );
    assert!(p > 10 && c > 0, "{usage}");
    assert_eq!(usage["total_tokens"].as_u64(), Some(p + c));
    assert!(usage["prompt_tokens_details"]["cached_tokens"].is_u64());

    // Streamed: the deltas joined are the same text; one [DONE] at the end.
    let r = server.post("/v1/chat/completions", &chat_body(json!({"stream": true})));
    let (streamed, chunks) = streamed_chat_text(&r);
    assert_eq!(streamed, want);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let last = &chunks.last().expect("a chunk")["choices"][0];
    assert!(last["finish_reason"].is_string(), "{last}");

    // With a stop string inside the answer: no text at or past it is ever streamed.
    let words: Vec<&str> = want.split_whitespace().collect();
    let stop = words.get(words.len() / 2).copied().unwrap_or("Paris");
    let stopped = generate_text(24, Some(stop));
    let r = server.post(
        "/v1/chat/completions",
        &chat_body(json!({"stream": true, "stop": [stop],
            "stream_options": {"include_usage": true}})),
    );
    let (streamed, chunks) = streamed_chat_text(&r);
    assert_eq!(streamed, stopped, "stop {stop:?}");
    assert!(!streamed.contains(stop));
    let usage = &chunks.last().expect("usage chunk")["usage"];
    assert!(
        usage["completion_tokens"].as_u64().is_some_and(|n| n > 0),
        "{usage}"
    );

    // /v1/completions, whole and streamed, with echo.
    let prompt = "The capital of France is";
    let r = server.post(
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 8, "temperature": 0, "echo": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    let whole = v["choices"][0]["text"].as_str().expect("text").to_string();
    assert!(
        whole.starts_with(prompt) && whole.len() > prompt.len(),
        "{whole:?}"
    );
    let r = server.post(
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 8, "temperature": 0, "echo": true,
            "stream": true}),
    );
    let events = r.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let joined: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).expect("chunk"))
        .map(|c| c["choices"][0]["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(joined, whole);

    // n = 2 with sampling: two choices, seeds derived per choice so they differ.
    let r = server.post(
        "/v1/chat/completions",
        &chat_body(json!({"n": 2, "temperature": 1.0, "seed": 3, "max_tokens": 16})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let choices = v["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[1]["index"], 1);
    let texts: Vec<&str> = choices
        .iter()
        .map(|c| c["message"]["content"].as_str().expect("text"))
        .collect();
    assert_ne!(texts[0], texts[1]);

    // A second request sharing a long prefix finds it cached.
    let long_system = format!("{SYSTEM} {}", "Answer briefly and exactly. ".repeat(20));
    let ask = |q: &str| {
        let body = json!({"messages": [{"role": "system", "content": long_system},
            {"role": "user", "content": q}], "max_tokens": 2});
        let r = server.post("/v1/chat/completions", &body);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["usage"].clone()
    };
    ask("Name a colour.");
    let usage = ask("Name a fruit.");
    let cached = usage["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .expect("cached");
    assert!(cached >= 64, "{usage}");
    assert!(cached < usage["prompt_tokens"].as_u64().expect("prompt"));

    // Malformed JSON, a wrong type, an oversized body, a prompt over the context.
    let r = request(
        &server.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        b"{\"messages\": [",
    );
    r.error(400);
    let r = server.post(
        "/v1/chat/completions",
        &chat_body(json!({"temperature": "warm"})),
    );
    assert_eq!(r.error(400)["param"], "temperature");
    let r = server.post(
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": "many"}),
    );
    assert_eq!(r.error(400)["param"], "max_tokens");
    let r = request(
        &server.addr,
        "POST",
        "/v1/chat/completions",
        &[("Content-Length", "9437184")],
        b"",
    );
    r.error(413);
    let r = server.post("/tokenize", &json!({"content": "hello"}));
    let context = r.json()["max_model_len"].as_u64().expect("context") as usize;
    let huge = "hello ".repeat(context + 100);
    let r = server.post("/v1/completions", &json!({"prompt": huge, "max_tokens": 4}));
    assert_eq!(r.error(400)["code"], "context_length_exceeded");
    server.get("/nowhere").error(404);

    // /tokenize in llama.cpp's and vLLM's forms; /v1/models; /health.
    let a = server
        .post("/tokenize", &json!({"content": "Hello world"}))
        .json();
    let b = server
        .post("/tokenize", &json!({"prompt": "Hello world"}))
        .json();
    assert_eq!(a["tokens"], b["tokens"]);
    assert_eq!(
        a["count"].as_u64(),
        Some(a["tokens"].as_array().expect("ids").len() as u64)
    );
    let plain = server
        .post(
            "/tokenize",
            &json!({"content": "Hello world", "add_special": false}),
        )
        .json();
    assert!(plain["count"].as_u64() <= a["count"].as_u64());
    let m = server.get("/v1/models").json();
    assert_eq!(m["data"][0]["max_model_len"].as_u64(), Some(context as u64));
    let h = server.health();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["running"], 0);
    assert_eq!(h["kv_blocks_used"], 0);
}

#[test]
fn an_api_key_is_required_when_set_and_never_logged() {
    let key = "k3y-for-the-test";
    let model = model();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fgo"))
        .args(["serve", "-v", "--model"])
        .arg(&model)
        .args(["--port", "0", "--threads", THREADS, "--kv-budget", "64M"])
        .args(["--api-key-env", "FGO_TEST_KEY"])
        .env("FGO_TEST_KEY", key)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fgo serve starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("address");
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .expect("address line")
        .to_string();
    let body = json!({"prompt": "Hi", "max_tokens": 2}).to_string();
    let bearer = format!("Bearer {key}");
    let cases: [(&[(&str, &str)], u16); 4] = [
        (&[], 401),
        (&[("Authorization", "Bearer wrong")], 401),
        (&[("Authorization", key)], 401),
        (&[("Authorization", bearer.as_str())], 200),
    ];
    for (headers, status) in cases {
        let r = request(&addr, "POST", "/v1/completions", headers, body.as_bytes());
        if status == 200 {
            assert_eq!(r.status, 200, "{}", r.text());
        } else {
            r.error(status);
        }
    }
    let r = request(&addr, "GET", "/health", &[], b"");
    r.error(401);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().expect("exit");
    assert!(out.status.success(), "{:?}", out.status);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("answered"), "requests are logged at -v: {log}");
    assert!(!log.contains(key), "the key is in the log: {log}");
}

/// Starts a long streamed answer and returns its connection once text is flowing.
fn start_long_stream(server: &Server) -> BufReader<TcpStream> {
    let body = json!({"prompt": "Count: 1, 2, 3,", "max_tokens": 2000, "ignore_eos": true,
        "stream": true});
    let mut stream = connect(&server.addr);
    send(
        &mut stream,
        "POST",
        "/v1/completions",
        &[],
        body.to_string().as_bytes(),
    );
    let mut reader = BufReader::new(stream);
    let (status, _) = read_head(&mut reader);
    assert_eq!(status, 200);
    // Read until the first generated text arrives.
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("stream line");
        if line.contains("\"text\":\"") && !line.contains("\"text\":\"\"") {
            return reader;
        }
    }
}

#[test]
fn hanging_up_cancels_and_a_full_queue_says_429() {
    let server = Server::start(&["--max-queue", "2"], &[]);
    let stream = start_long_stream(&server);
    let h = server.wait_for("one running sequence", |h| h["running"] == 1);
    assert!(h["kv_blocks_used"].as_u64().is_some_and(|n| n > 0), "{h}");
    // One sequence in flight, room for one more: n = 2 is refused, n = 1 is not.
    let r = server.post(
        "/v1/completions",
        &json!({"prompt": "Hi", "max_tokens": 2, "n": 2}),
    );
    assert_eq!(r.error(429)["code"], "queue_full");
    let r = server.post("/v1/completions", &json!({"prompt": "Hi", "max_tokens": 2}));
    assert_eq!(r.status, 200, "{}", r.text());
    // The client of the long stream hangs up: its sequence leaves, its blocks are freed.
    drop(stream);
    let h = server.wait_for("the hung-up stream freed", |h| {
        h["running"] == 0 && h["in_flight"] == 0 && h["kv_blocks_used"] == 0
    });
    assert_eq!(h["cancelled"], 1, "{h}");

    // The same for a whole (not streamed) answer whose client hangs up.
    let body = json!({"prompt": "Count: 1, 2, 3,", "max_tokens": 2000, "ignore_eos": true});
    let mut stream = connect(&server.addr);
    send(
        &mut stream,
        "POST",
        "/v1/completions",
        &[],
        body.to_string().as_bytes(),
    );
    server.wait_for("the whole answer running", |h| h["running"] == 1);
    drop(stream);
    let h = server.wait_for("the hung-up request freed", |h| {
        h["running"] == 0 && h["in_flight"] == 0 && h["kv_blocks_used"] == 0
    });
    assert_eq!(h["cancelled"], 2, "{h}");
}

#[test]
fn sigterm_finishes_the_request_in_flight_and_exits_0() {
    let mut server = Server::start(&[], &[]);
    let addr = server.addr.clone();
    let client = std::thread::spawn(move || {
        let body = json!({"prompt": "Once upon a time", "max_tokens": 48, "ignore_eos": true});
        request(
            &addr,
            "POST",
            "/v1/completions",
            &[],
            body.to_string().as_bytes(),
        )
    });
    server.wait_for("the request running", |h| h["running"] == 1);
    unsafe { libc::kill(server.pid(), libc::SIGTERM) };
    let r = client.join().expect("client");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["usage"]["completion_tokens"], 48, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let status = server.child.wait().expect("exit");
    assert!(status.success(), "{status:?}");
    // Nothing listens any more.
    assert!(TcpStream::connect(&server.addr).is_err());
}

/// Reads a `/proc/PID/status` field in KiB.
fn proc_status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[test]
fn sixty_four_clients_each_answered_exactly_once() {
    const CLIENTS: usize = 64;
    const EACH: usize = 3;
    let server = Server::start(&["--threads", "2"], &[]);
    let addr = server.addr.clone();
    let handles: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                (0..EACH)
                    .map(|k| {
                        let prompt = format!("Request {c}-{k}: the next number is");
                        let body = json!({"prompt": prompt, "max_tokens": 3, "echo": true,
                            "temperature": 0});
                        let r = request(
                            &addr,
                            "POST",
                            "/v1/completions",
                            &[],
                            body.to_string().as_bytes(),
                        );
                        assert_eq!(r.status, 200, "{}", r.text());
                        let v = r.json();
                        let choices = v["choices"].as_array().expect("choices");
                        assert_eq!(choices.len(), 1, "{v}");
                        let text = choices[0]["text"].as_str().expect("text");
                        // The echo says which request this answer belongs to.
                        assert!(text.starts_with(&prompt), "{prompt:?} got {text:?}");
                        v["id"].as_str().expect("id").to_string()
                    })
                    .collect::<Vec<String>>()
            })
        })
        .collect();
    let mut ids: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect();
    assert_eq!(ids.len(), CLIENTS * EACH);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), CLIENTS * EACH, "duplicate ids");
    let h = server.wait_for("all answered", |h| h["in_flight"] == 0);
    assert_eq!(h["finished"].as_u64(), Some((CLIENTS * EACH) as u64), "{h}");
    assert_eq!(h["kv_blocks_used"], 0);
    assert_eq!(h["cancelled"], 0);
    // Peak memory: the weights, the key/value budget and a loose margin for the rest
    // (runtime, tokenizer, buffers of 64 connections).
    let peak_kib = proc_status_kib(server.pid(), "VmHWM:");
    let weights_kib = std::fs::metadata(model()).expect("model").len() / 1024;
    let bound_kib = weights_kib + 128 * 1024 + 512 * 1024;
    eprintln!("peak RSS {peak_kib} KiB (bound {bound_kib} KiB)");
    assert!(
        peak_kib < bound_kib,
        "peak RSS {peak_kib} KiB over {bound_kib} KiB"
    );
}

#[test]
fn the_official_openai_client_works() {
    let root = common::crate_root();
    let out = Command::new(root.join("scripts/openai-venv.sh"))
        .output()
        .expect("scripts/openai-venv.sh runs");
    assert!(
        out.status.success(),
        "the openai venv could not be made: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let python = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !python.is_empty(),
        "scripts/openai-venv.sh printed no python"
    );
    let server = Server::start(&[], &[]);
    let status = Command::new(&python)
        .arg(root.join("tests/serve_openai.py"))
        .args(["--base-url", &format!("http://{}/v1", server.addr)])
        .status()
        .expect("python runs");
    assert!(status.success(), "tests/serve_openai.py failed: {status:?}");
}
