//! The OpenAI-compatible HTTP backend against fake servers written here (a few dozen lines
//! of HTTP/1.1 on `std::net`, each on 127.0.0.1 with an ephemeral port) for every fault a
//! real server can show, and against llama.cpp's real server on smollm2-135m.
//!
//! Every test is bounded in requests (a handful each) and time (read timeouts of a second
//! or two, bounded retries); none asserts on how long something took.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fgo::engine::chat::ChatMessage;
use fgo::engine::sampling::SamplingParams;
use fgo::llm::openai::OpenAiLlm;
use fgo::llm::spec::{ModelSpec, ServerOptions};
use fgo::llm::{ChatRequest, Llm};
use fgo::optimizer::exec::calls::{Calls, Role};
use serde_json::{json, Value};

mod common;

const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

// ---------------------------------------------------------------------------------------
// A fake OpenAI-compatible server.

/// One request as the fake server read it.
#[derive(Debug, Clone)]
struct Request {
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The content of the last message of a chat request.
    fn prompt(&self) -> String {
        let body: Value = serde_json::from_str(&self.body).unwrap_or(Value::Null);
        body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_string()
    }
}

/// What the fake server does with a request.
enum Reply {
    Json(u16, Value),
    /// Reads the request and never answers (until the server stops).
    Hang,
    /// Closes the connection without answering and stops the server: later connections
    /// are refused.
    Die,
}

type Handler = dyn Fn(&Request, usize) -> Reply + Send + Sync;

struct Fake {
    url: String,
    stop: Arc<AtomicBool>,
    /// Every request received, in order.
    received: Arc<Mutex<Vec<Request>>>,
    /// The prompts of chat requests answered with a 200 (recorded as the reply is sent).
    answered: Arc<Mutex<Vec<String>>>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Fake {
    /// A server whose handler gets each request and how many chat requests came before it.
    fn start(handler: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(Mutex::new(Vec::new()));
        let chats = Arc::new(AtomicUsize::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        let (s, r, a) = (stop.clone(), received.clone(), answered.clone());
        std::thread::spawn(move || {
            // Polling accept lets the server stop (and refuse connections) on its flag.
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (s, r, a, chats, handler) = (
                            s.clone(),
                            r.clone(),
                            a.clone(),
                            chats.clone(),
                            handler.clone(),
                        );
                        std::thread::spawn(move || serve(stream, &s, &r, &a, &chats, &*handler));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Fake {
            url,
            stop,
            received,
            answered,
        }
    }

    fn chat_requests(&self) -> usize {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == "/v1/chat/completions")
            .count()
    }
}

fn serve(
    mut stream: TcpStream,
    stop: &AtomicBool,
    received: &Mutex<Vec<Request>>,
    answered: &Mutex<Vec<String>>,
    chats: &AtomicUsize,
    handler: &Handler,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Some(request) = read_request(&stream) else {
        return;
    };
    received.lock().unwrap().push(request.clone());
    let is_chat = request.path == "/v1/chat/completions";
    let before = if is_chat {
        chats.fetch_add(1, Ordering::SeqCst)
    } else {
        chats.load(Ordering::SeqCst)
    };
    if stop.load(Ordering::SeqCst) {
        return;
    }
    match handler(&request, before) {
        Reply::Json(status, body) => {
            let body = body.to_string();
            let head = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            // Recorded before the reply is written, so that the client never sees a reply
            // the record does not hold yet.
            if status == 200 && is_chat {
                answered.lock().unwrap().push(request.prompt());
            }
            let _ = stream
                .write_all(head.as_bytes())
                .and_then(|_| stream.write_all(body.as_bytes()))
                .and_then(|_| stream.flush());
        }
        Reply::Hang => {
            let until = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Reply::Die => stop.store(true, Ordering::SeqCst),
    }
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_string());
        if name == "content-length" {
            length = value.parse().ok()?;
        }
        headers.push((name, value));
    }
    let mut body = vec![0u8; length.min(1 << 20)];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// `/v1/models` for the served name `m`; 404 for everything else but chat requests.
fn routes(request: &Request, chat: impl FnOnce() -> Reply) -> Reply {
    match request.path.as_str() {
        "/v1/models" => Reply::Json(200, json!({"data": [{"id": "m", "owned_by": "test"}]})),
        "/v1/chat/completions" => chat(),
        _ => Reply::Json(404, json!({"error": {"message": "not found"}})),
    }
}

/// A successful chat reply whose text is `text`.
fn chat_reply(text: &str) -> Reply {
    Reply::Json(
        200,
        json!({
            "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2}
        }),
    )
}

fn options() -> ServerOptions {
    ServerOptions {
        read_timeout_s: 5.0,
        retries: 3,
        retry_time_s: 10.0,
        ..ServerOptions::default()
    }
}

fn connect(spec: &str, options: &ServerOptions) -> fgo::Result<OpenAiLlm> {
    match ModelSpec::parse(spec)? {
        ModelSpec::Remote(remote) => OpenAiLlm::connect(&remote, options),
        ModelSpec::Local(local) => panic!("{local} is not a remote spec"),
    }
}

fn request(text: &str) -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage::user(text)],
        params: SamplingParams {
            max_new_tokens: 8,
            ..SamplingParams::greedy()
        },
    }
}

fn fgo() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fgo"));
    cmd.env_remove("RUST_LOG");
    cmd
}

/// Runs a command with a time limit (killed past it, failing the test).
fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    use wait_timeout::ChildExt;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let status = child.wait_timeout(limit).expect("wait");
    if status.is_none() {
        let _ = child.kill();
        let out = child.wait_with_output().expect("output");
        panic!(
            "{cmd:?} ran past {limit:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child.wait_with_output().expect("output")
}

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Faults, against fake servers.

#[test]
fn a_500_is_retried_and_the_request_succeeds_once() {
    let server = Fake::start(|r, chats| {
        routes(r, || {
            if chats == 0 {
                Reply::Json(500, json!({"error": {"message": "busy"}}))
            } else {
                chat_reply("42")
            }
        })
    });
    let llm = connect(&format!("m@{}", server.url), &options()).expect("connects");
    let results = llm.complete(&[request("q")]);
    let completion = results[0].as_ref().expect("retried to success");
    assert_eq!(completion.text, "42");
    assert_eq!(completion.usage.prompt_tokens, 5);
    assert_eq!(server.chat_requests(), 2, "one failure, one success");
    assert_eq!(server.answered.lock().unwrap().len(), 1);
}

#[test]
fn a_server_that_hangs_times_out_is_retried_then_fails_clearly() {
    let server = Fake::start(|r, _| routes(r, || Reply::Hang));
    let options = ServerOptions {
        read_timeout_s: 1.0,
        retries: 1,
        retry_time_s: 5.0,
        ..ServerOptions::default()
    };
    let llm = connect(&format!("m@{}", server.url), &options).expect("connects");
    let err = llm.complete(&[request("q")])[0]
        .as_ref()
        .expect_err("no answer")
        .to_string();
    assert_eq!(server.chat_requests(), 2, "one retry: {err}");
    assert!(err.contains("gave up after 2 attempts"), "{err}");
    assert!(err.contains(&server.url), "{err}");
    assert!(err.to_lowercase().contains("timed out"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_wrong_api_key_is_one_clear_error_after_one_request_and_the_key_stays_secret() {
    const KEY: &str = "sk-test-wrong-4f9a1c";
    let server = Fake::start(|r, _| {
        if r.header("authorization") == Some("Bearer right-key") {
            routes(r, || chat_reply("ok"))
        } else {
            // A server that echoes the key it got must not make fgo print it.
            let got = r.header("authorization").unwrap_or_default().to_string();
            Reply::Json(
                401,
                json!({"error": {"message": format!("invalid key {got}")}}),
            )
        }
    });
    let mut cmd = fgo();
    cmd.args(["generate", "-m", &format!("m@{}", server.url), "-p", "hi"])
        .args(["--api-key-env", "FGO_TEST_API_KEY"])
        .env("FGO_TEST_API_KEY", KEY);
    let out = run_bounded(cmd, Duration::from_secs(60));
    assert!(!out.status.success());
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("401") && lines[0].contains("API key"),
        "{lines:?}"
    );
    assert!(!lines[0].contains(KEY), "the key leaked: {lines:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(KEY));
    assert_eq!(server.received.lock().unwrap().len(), 1, "not retried");

    // The right key is sent as a bearer token and works.
    let mut cmd = fgo();
    cmd.args(["generate", "-m", &format!("m@{}", server.url), "-p", "hi"])
        .args(["--api-key-env", "FGO_TEST_API_KEY"])
        .env("FGO_TEST_API_KEY", "right-key");
    let out = run_bounded(cmd, Duration::from_secs(60));
    assert!(out.status.success(), "{:?}", stderr_lines(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

#[test]
fn when_one_replica_dies_mid_run_every_request_finishes_on_the_other_once() {
    let echo = |r: &Request| chat_reply(&format!("echo {}", r.prompt()));
    let doomed =
        Fake::start(move |r, chats| routes(r, || if chats < 3 { echo(r) } else { Reply::Die }));
    let healthy = Fake::start(move |r, _| routes(r, || echo(r)));
    let options = ServerOptions {
        max_in_flight: 2,
        retries: 6,
        ..options()
    };
    let spec = format!("m@{},{}", doomed.url, healthy.url);
    let llm = connect(&spec, &options).expect("connects");
    let prompts: Vec<String> = (0..16).map(|i| format!("q{i}")).collect();
    let requests: Vec<ChatRequest> = prompts.iter().map(|p| request(p)).collect();
    let results = llm.complete(&requests);
    for (prompt, result) in prompts.iter().zip(&results) {
        let completion = result.as_ref().unwrap_or_else(|e| panic!("{prompt}: {e}"));
        assert_eq!(completion.text, format!("echo {prompt}"));
    }
    let mut answered: Vec<String> = doomed.answered.lock().unwrap().clone();
    let on_doomed = answered.len();
    answered.extend(healthy.answered.lock().unwrap().iter().cloned());
    answered.sort();
    let mut expected = prompts.clone();
    expected.sort();
    assert_eq!(answered, expected, "each request answered exactly once");
    assert!(on_doomed <= 3, "{on_doomed}");
    assert!(
        doomed.chat_requests() > on_doomed,
        "the replica died mid-run"
    );
}

#[test]
fn a_400_fails_that_request_alone_with_the_servers_message() {
    let server = Fake::start(|r, _| {
        routes(r, || {
            if r.prompt() == "too long" {
                Reply::Json(
                    400,
                    json!({"error": {"message": "This model's maximum context length is 2048 tokens"}}),
                )
            } else {
                chat_reply("fine")
            }
        })
    });
    let llm = connect(&format!("m@{}", server.url), &options()).expect("connects");
    let results = llm.complete(&[request("a"), request("too long"), request("b")]);
    assert_eq!(results[0].as_ref().expect("a").text, "fine");
    assert_eq!(results[2].as_ref().expect("b").text, "fine");
    let err = results[1].as_ref().expect_err("refused").to_string();
    assert!(
        err.contains("HTTP 400") && err.contains("maximum context length is 2048"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
    assert_eq!(server.chat_requests(), 3, "the 400 is not retried");
}

#[test]
fn a_server_down_at_start_is_one_line_at_once() {
    let port = free_port();
    let spec = format!("m@http://127.0.0.1:{port}");
    let err = connect(&spec, &options()).expect_err("down").to_string();
    assert!(
        err.contains(&format!("127.0.0.1:{port}/v1/models")) && err.contains("not reachable"),
        "{err}"
    );
    let mut cmd = fgo();
    cmd.args(["generate", "-m", &spec, "-p", "hi"]);
    let out = run_bounded(cmd, Duration::from_secs(60));
    assert!(!out.status.success());
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(&format!("127.0.0.1:{port}")), "{lines:?}");
}

#[test]
fn a_replica_down_at_start_is_tried_last_and_the_others_answer() {
    let port = free_port();
    let down = format!("http://127.0.0.1:{port}");
    let healthy = Fake::start(|r, _| routes(r, || chat_reply(&format!("echo {}", r.prompt()))));
    let spec = format!("m@{down},{}", healthy.url);
    let llm = connect(&spec, &options()).expect("one replica answers");
    let requests: Vec<ChatRequest> = (0..6).map(|i| request(&format!("q{i}"))).collect();
    for (i, result) in llm.complete(&requests).iter().enumerate() {
        let completion = result.as_ref().unwrap_or_else(|e| panic!("q{i}: {e}"));
        assert_eq!(completion.text, format!("echo q{i}"));
    }
    assert_eq!(healthy.chat_requests(), 6);
    let notes = fgo::llm::notes::snapshot();
    let said = notes.get(&llm.name()).expect("notes for the model");
    assert!(
        said.iter()
            .any(|s| s.contains("down at start") && s.contains(&down)),
        "{said:?}"
    );
    // No replica up: one line naming the first.
    let port2 = free_port();
    let err = connect(&format!("m@{down},http://127.0.0.1:{port2}"), &options())
        .expect_err("none up")
        .to_string();
    assert!(
        err.contains("no endpoint reachable") && err.contains(&down),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn a_reply_without_choices_fails_that_request_and_odd_fields_do_not_panic() {
    let server = Fake::start(|r, _| {
        routes(r, || match r.prompt().as_str() {
            "none" => Reply::Json(200, json!({"id": "x", "object": "chat.completion"})),
            _ => Reply::Json(
                200,
                json!({"choices": [{"message": {"content": null}, "finish_reason": 3}],
                       "usage": {"prompt_tokens": "7", "completion_tokens": -1}}),
            ),
        })
    });
    let llm = connect(&format!("m@{}", server.url), &options()).expect("connects");
    let results = llm.complete(&[request("none"), request("odd")]);
    let err = results[0].as_ref().expect_err("no choices").to_string();
    assert!(err.contains("no `choices`"), "{err}");
    let odd = results[1].as_ref().expect("lenient");
    assert_eq!(odd.text, "");
    assert_eq!(odd.usage.prompt_tokens, 0);
}

#[test]
fn an_unknown_served_name_is_refused_at_start_naming_what_is_served() {
    let server = Fake::start(|r, _| routes(r, || chat_reply("x")));
    let err = connect(&format!("other@{}", server.url), &options())
        .expect_err("not served")
        .to_string();
    assert!(
        err.contains("does not serve `other`") && err.contains("serves: m"),
        "{err}"
    );
}

#[test]
fn tokens_are_counted_by_the_server_else_estimated_and_the_notes_say_which() {
    let llama_like = Fake::start(|r, _| match r.path.as_str() {
        "/v1/models" => Reply::Json(
            200,
            json!({"data": [{"id": "anything", "owned_by": "llamacpp", "meta": {"n_ctx_train": 8192}}]}),
        ),
        "/props" => Reply::Json(200, json!({"default_generation_settings": {"n_ctx": 1024}})),
        "/tokenize" => {
            let body: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
            let words = body["content"]
                .as_str()
                .unwrap_or_default()
                .split(' ')
                .count();
            Reply::Json(200, json!({"tokens": vec![1; words]}))
        }
        _ => Reply::Json(
            200,
            json!({"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 9, "completion_tokens": 1},
                   "timings": {"cache_n": 6, "prompt_ms": 1.0, "predicted_ms": 2.0}}),
        ),
    });
    // llama.cpp ignores the model name, so any served name is accepted.
    let name = format!("smol@{}", llama_like.url);
    let llm = connect(&name, &options()).expect("connects");
    assert_eq!(llm.context_length(), 1024, "from /props");
    assert_eq!(llm.count_tokens("one two three").unwrap(), 3);
    let c = llm.complete(&[request("q")]).remove(0).expect("ok");
    assert_eq!(c.usage.cached_prompt_tokens, 6);
    let notes = fgo::llm::notes::snapshot()[&name].clone();
    assert!(notes[0].contains("reported by the server"), "{notes:?}");
    assert!(notes.iter().any(|n| n.contains("/tokenize")), "{notes:?}");
    assert!(notes.iter().any(|n| n.contains("/props")), "{notes:?}");

    let plain = Fake::start(|r, _| routes(r, || chat_reply("x")));
    let name = format!("m@{}", plain.url);
    let llm = connect(&name, &options()).expect("connects");
    assert_eq!(llm.count_tokens("abcdefghi").unwrap(), 3, "estimate");
    assert_eq!(llm.context_length(), fgo::llm::openai::ASSUMED_CONTEXT);
    llm.complete(&[request("q")]).remove(0).expect("ok");
    let notes = fgo::llm::notes::snapshot()[&name].clone();
    assert!(notes[0].contains("not reported"), "{notes:?}");
    assert!(notes.iter().any(|n| n.contains("estimates")), "{notes:?}");
    assert!(notes.iter().any(|n| n.contains("assumed")), "{notes:?}");
}

// ---------------------------------------------------------------------------------------
// Identity of local models in call keys.

#[test]
fn local_model_keys_follow_the_file_not_its_name() {
    let model = common::model_path(MODEL_FILE);
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).expect("mkdir");
    std::fs::create_dir_all(&b).expect("mkdir");
    let same_1 = a.join("model.gguf");
    let same_2 = b.join("renamed.gguf");
    std::fs::copy(&model, &same_1).expect("copy");
    std::fs::copy(&model, &same_2).expect("copy");
    // Another file under the first one's name: the same model with bytes appended.
    let other = b.join("model.gguf");
    std::fs::copy(&model, &other).expect("copy");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&other)
        .and_then(|mut f| f.write_all(&[0u8; 64]))
        .expect("append");
    let load = |p: &Path| fgo::engine::Engine::load(p, &Default::default()).expect("loads");
    let (e1, e2, e3) = (load(&same_1), load(&same_2), load(&other));
    let req = request("q");
    let key = |e: &fgo::engine::Engine| Calls::key(Role::Agent, &e.identity(), &req);
    assert!(
        e1.identity().starts_with("gguf-sha256:"),
        "{}",
        e1.identity()
    );
    assert_eq!(key(&e1), key(&e2), "the same file under two names");
    assert_eq!(e1.name(), e3.name(), "the same name");
    assert_ne!(key(&e1), key(&e3), "two files with the same name");
}

// ---------------------------------------------------------------------------------------
// llama.cpp's real server.

/// The llama-server binary: `$FGO_LLAMA_SERVER` (which must exist when set), else where
/// `scripts/llama-build.sh llama-server` puts it. Missing, the test fails and says how to
/// build it.
fn llama_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FGO_LLAMA_SERVER") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "FGO_LLAMA_SERVER={} does not exist: run `scripts/llama-build.sh llama-server`",
            path.display()
        );
        return path;
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let path = home.join(
        ".cache/fgo/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin/llama-server",
    );
    assert!(
        path.is_file(),
        "llama-server is not built at {}: run `scripts/llama-build.sh llama-server` (or \
         scripts/test.sh, which does) or set FGO_LLAMA_SERVER",
        path.display()
    );
    path
}

/// A llama-server process, killed when dropped.
struct LlamaServer {
    child: Child,
    url: String,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn start_llama_server(model: &Path) -> LlamaServer {
    let port = free_port();
    let log = std::fs::File::create(std::env::temp_dir().join(format!("llama-server-{port}.log")))
        .expect("log file");
    let child = Command::new(llama_server_binary())
        .arg("-m")
        .arg(model)
        .args(["--alias", "smollm2", "--host", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .args(["-c", "4096", "-np", "4", "--threads", "2"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("llama-server starts");
    let server = LlamaServer {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = ureq_get_status(&format!("{}/health", server.url)) == Some(200);
        if ready {
            return server;
        }
        assert!(
            Instant::now() < deadline,
            "llama-server on port {port} did not become ready"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The status of a GET, with a plain socket (no client library needed).
fn ureq_get_status(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map_or((rest, "/"), |(h, p)| (h, p));
    let mut stream = TcpStream::connect(host).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET /{} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        path.trim_start_matches('/')
    )
    .ok()?;
    let mut head = String::new();
    BufReader::new(stream).read_line(&mut head).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

/// A TCP proxy in front of a server that counts the chat completion requests going
/// through it.
struct CountingProxy {
    url: String,
    chats: Arc<AtomicUsize>,
}

fn counting_proxy(upstream: &str) -> CountingProxy {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let upstream = upstream.trim_start_matches("http://").to_string();
    let chats = Arc::new(AtomicUsize::new(0));
    let counter = chats.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let (client_read, server_write) = (client.try_clone(), server.try_clone());
            let (Ok(mut client_read), Ok(mut server_write)) = (client_read, server_write) else {
                continue;
            };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let marker = b"POST /v1/chat/completions ";
                let mut window: Vec<u8> = Vec::new();
                let mut buffer = [0u8; 16 << 10];
                while let Ok(n) = client_read.read(&mut buffer) {
                    if n == 0 || server_write.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                    window.extend_from_slice(&buffer[..n]);
                    let found = window.windows(marker.len()).filter(|w| w == marker).count();
                    counter.fetch_add(found, Ordering::SeqCst);
                    // Keep a tail shorter than the marker, so no request counts twice.
                    let keep = window.len().min(marker.len() - 1);
                    window.drain(..window.len() - keep);
                }
                let _ = server_write.shutdown(std::net::Shutdown::Write);
            });
            let (mut server_read, mut client_write) = (server, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut server_read, &mut client_write);
                let _ = client_write.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    CountingProxy { url, chats }
}

/// A tiny task (as in tests/optimize_e2e.rs) with agent and optimizer on `model`.
fn write_task(dir: &Path, model: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("task dir");
    let data = [
        ("train.jsonl", "{\"id\": \"t0\", \"question\": \"Mia has 4 goats, 6 ducks and a horse. How many animals did Mia have in total?\", \"answer\": 11}\n{\"id\": \"t1\", \"question\": \"Theo has 2 oranges, a kiwi and 6 mangoes. How many pieces of fruit did Theo have in total?\", \"answer\": 9}\n"),
        ("val.jsonl", "{\"id\": \"v0\", \"question\": \"Liam packed four peppers, 4 potatoes and a carrot. How many vegetables did Liam pack in total?\", \"answer\": 9}\n"),
        ("test.jsonl", "{\"id\": \"x0\", \"question\": \"Lena saw three pears, two kiwis and 4 bananas. How many pieces of fruit did Lena see in total?\", \"answer\": 9}\n"),
    ];
    for (name, text) in data {
        std::fs::write(dir.join(name), text).expect("write data");
    }
    let task = format!(
        r#"name = "tiny-remote"

[components.system_prompt]
text = "Answer with one number."

[agent]
type = "chat"
model = "{model}"
system = "{{{{system_prompt}}}}"
user = "{{{{question}}}}"
params = {{ temperature = 0.0, max_new_tokens = 8 }}
extract = {{ type = "regex", pattern = "-?\\d+" }}

[agent.server]
max_in_flight = 4
read_timeout_s = 120

[data]
train = "train.jsonl"
val = "val.jsonl"
test = "test.jsonl"

[metric]
type = "numeric"

[optimizer]
params = {{ temperature = 0.7, max_new_tokens = 24 }}
diagnosis_params = {{ temperature = 0.0, max_new_tokens = 8 }}
subset_count = 2
iterations = 1
candidates = 1
operators = ["rewrite"]
max_reasks = 0
show_failures = 1
show_successes = 0
trajectory_chars = 120
merge_fan_in = 2
"#
    );
    let path = dir.join("task.toml");
    std::fs::write(&path, task).expect("write task");
    path
}

fn json_of(what: &str, out: &Output) -> Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed: {stderr}");
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"))
}

#[test]
fn llama_cpp_server_completes_counts_caches_and_runs_an_optimization() {
    let model = common::model_path(MODEL_FILE);
    let server = start_llama_server(&model);
    let proxy = counting_proxy(&server.url);
    let spec = format!("smollm2@{}", proxy.url);
    // A real server on a busy machine may take longer than the fake servers' 5 s to answer
    // its first request: this test checks what it answers, not how fast.
    let patient = ServerOptions {
        read_timeout_s: 120.0,
        retry_time_s: 300.0,
        ..options()
    };
    let llm = connect(&spec, &patient).expect("connects to llama-server");

    // Greedy chat completions: the same request twice gives the same text.
    let greedy = ChatRequest {
        messages: vec![
            ChatMessage::system("You are a helpful assistant. Answer briefly."),
            ChatMessage::user("What is the capital of France? Please answer in one word."),
        ],
        params: SamplingParams {
            max_new_tokens: 16,
            ..SamplingParams::greedy()
        },
    };
    let first = llm
        .complete(std::slice::from_ref(&greedy))
        .remove(0)
        .expect("first");
    let second = llm
        .complete(std::slice::from_ref(&greedy))
        .remove(0)
        .expect("second");
    assert!(!first.text.trim().is_empty(), "{first:?}");
    assert_eq!(first.text, second.text, "greedy decoding repeats");
    assert!(first.usage.prompt_tokens > 0 && first.usage.completion_tokens > 0);
    // The second identical request reuses the first one's prompt cache.
    assert!(
        second.usage.cached_prompt_tokens > 0,
        "no cached tokens reported: {second:?}"
    );
    assert_eq!(proxy.chats.load(Ordering::SeqCst), 2);

    // /tokenize agrees with fgo's tokenizer (neither adds a BOS to plain text).
    let file = fgo::engine::gguf::GgufFile::open(&model).expect("gguf");
    let tokenizer = fgo::engine::tokenizer::Tokenizer::from_gguf(file.metadata()).expect("tok");
    for text in [
        "The quick brown fox jumps over the lazy dog.",
        "Mia has 4 goats, 6 ducks and a horse. How many animals? 12345 héllo\n\tend",
    ] {
        assert_eq!(
            llm.count_tokens(text).expect("server count"),
            tokenizer.encode(text).expect("local").len(),
            "{text:?}"
        );
    }
    assert!(llm.context_length() >= 1024, "{}", llm.context_length());
    let notes = fgo::llm::notes::snapshot()[&spec].clone();
    assert!(notes[0].contains("reported by the server"), "{notes:?}");
    assert!(notes.iter().any(|n| n.contains("/tokenize")), "{notes:?}");

    // A tiny optimization with agent and optimizer on the server, then a resume of the
    // finished run that answers every call from the event log.
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("http_backend");
    let _ = std::fs::remove_dir_all(&root);
    let task = write_task(&root.join("task"), &spec);
    let dir = root.join("run");
    let mut cmd = fgo();
    cmd.arg("optimize")
        .arg(&task)
        .arg("--out")
        .arg(&dir)
        .args(["--seed", "2", "--json"]);
    let report = json_of("fgo optimize", &run_bounded(cmd, Duration::from_secs(540)));
    assert_eq!(report["status"], "completed");
    assert_eq!(report["agent_model"], spec.as_str());
    let live = report["accounting"]["total"]["live"]
        .as_u64()
        .expect("live");
    let sent = proxy.chats.load(Ordering::SeqCst) - 2;
    assert!(
        live > 0 && sent as u64 >= live,
        "{sent} requests for {live} live calls"
    );
    // The notes are kept in report.json, so a re-rendered report still has them.
    let kept = report["model_notes"][spec.as_str()].to_string();
    assert!(kept.contains("reported by the server"), "{kept}");
    let markdown = std::fs::read_to_string(dir.join("report.md")).expect("report.md");
    assert!(
        markdown.contains(&format!("Model `{spec}`")) && markdown.contains("cached prompt tokens"),
        "{markdown}"
    );

    let before = proxy.chats.load(Ordering::SeqCst);
    let mut cmd = fgo();
    cmd.arg("resume").arg(&dir).arg("--json");
    let resumed = json_of("fgo resume", &run_bounded(cmd, Duration::from_secs(300)));
    assert_eq!(
        proxy.chats.load(Ordering::SeqCst),
        before,
        "the resume sent chat requests"
    );
    assert_eq!(resumed["accounting"]["total"]["live"], 0);
    assert_eq!(resumed["initial"], report["initial"]);
    for (a, b) in resumed["methods"]
        .as_array()
        .expect("methods")
        .iter()
        .zip(report["methods"].as_array().expect("methods"))
    {
        assert_eq!(a["final_components"], b["final_components"]);
        assert_eq!(a["test_score"], b["test_score"]);
    }
    drop(server);
}
