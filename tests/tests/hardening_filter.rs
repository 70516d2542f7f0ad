//! What the filter refuses and protects against, and the clients it must serve, through
//! real Envoy (and, where a replica or the pool-manager takes part, the real stack): the
//! gateway token on every call to the pool-manager, the real Python clients
//! (tritonclient.http, requests), bodies that would crash a replica or are over the limit.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{assert_close, python_client_at};
use mm_tests::paths::{self, example_model};
use mm_tests::process::{free_port, Process};
use mm_tests::stack::{eventually, render_envoy_config};
use mm_tests::{Stack, StackOptions};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request the fake control plane received: its request line and headers.
#[derive(Debug, Clone)]
struct Seen {
    line: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A stand-in for the pool-manager that records what the filter sends it and refuses
/// every route ("unknown model"): what matters here is what the filter sends, not what
/// the pool-manager does with it (its own suite checks the token).
async fn recording_control_plane() -> (u16, Arc<Mutex<Vec<Seen>>>) {
    let port = free_port().unwrap();
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let mut lines = head.lines();
                    let line = lines.next().unwrap_or_default().to_owned();
                    let headers = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                        .collect();
                    record.lock().unwrap().push(Seen { line, headers });
                    let body = r#"{"error":"unknown model 'linear'"}"#;
                    let answer = format!(
                        "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if socket.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

/// Real Envoy with the gateway config pointed at `control_plane`, the filter's
/// configuration extended with `extra_config` (JSON members), and `env` in its
/// environment.
async fn envoy(
    dir: &Path,
    control_plane: u16,
    extra_config: &str,
    env: &[(&str, &str)],
) -> (Process, u16) {
    envoy_with(dir, control_plane, extra_config, env, true).await
}

/// [`envoy`], with `allow_on_headers_stop_iteration` as given (Istio's WasmPlugin cannot
/// set it: false).
async fn envoy_with(
    dir: &Path,
    control_plane: u16,
    extra_config: &str,
    env: &[(&str, &str)],
    allow_stop_iteration: bool,
) -> (Process, u16) {
    let (port, admin) = (free_port().unwrap(), free_port().unwrap());
    let mut config = render_envoy_config(port, admin, control_plane).unwrap();
    if !allow_stop_iteration {
        config = config.replace(
            "allow_on_headers_stop_iteration: true",
            "allow_on_headers_stop_iteration: false",
        );
    }
    if !extra_config.is_empty() {
        config = config.replace(
            r#"{"pool_manager_cluster""#,
            &format!(r#"{{{extra_config}, "pool_manager_cluster""#),
        );
    }
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(paths::envoy());
    cmd.arg("-c")
        .arg(&path)
        .args(["--disable-hot-restart", "--concurrency", "1"])
        .args(["--log-level", "warn", "--component-log-level", "wasm:info"]);
    cmd.env_remove("MM_GATEWAY_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut process = Process::spawn("envoy", cmd, &dir.join("envoy.log")).unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let ready = format!("http://127.0.0.1:{admin}/ready");
    for _ in 0..600 {
        process.check_alive().unwrap();
        if let Ok(r) = http.get(&ready).send().await {
            if r.text().await.unwrap_or_default().trim() == "LIVE" {
                return (process, port);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("envoy not ready\n{}", process.log_tail(40));
}

/// The route call the filter makes for an infer request to `linear`, as the control plane
/// saw it.
async fn route_call_seen(port: u16, seen: &Arc<Mutex<Vec<Seen>>>) -> Seen {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = http
        .post(format!("http://127.0.0.1:{port}/v2/models/linear/infer"))
        .header("content-type", "application/json")
        .body(r#"{"inputs":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    eventually("the route call", Duration::from_secs(10), || async {
        Ok(seen
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.line.starts_with("GET /internal/v1/route/linear "))
            .cloned())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_to_the_pool_manager_carries_the_gateway_token() {
    let dir = tempfile::tempdir().unwrap();

    // From Envoy's environment (vm_config.environment_variables.host_env_keys).
    let (control_plane, seen) = recording_control_plane().await;
    let (mut proxy, port) = envoy(
        dir.path(),
        control_plane,
        "",
        &[("MM_GATEWAY_TOKEN", "from-the-environment")],
    )
    .await;
    let route = route_call_seen(port, &seen).await;
    assert_eq!(
        route.header("x-mm-gateway-token"),
        Some("from-the-environment")
    );
    // The table long poll carries it too.
    let poll = eventually("a table poll", Duration::from_secs(10), || async {
        Ok(seen
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.line.starts_with("GET /internal/v1/table"))
            .cloned())
    })
    .await
    .unwrap();
    assert_eq!(
        poll.header("x-mm-gateway-token"),
        Some("from-the-environment")
    );
    proxy.kill();

    // The plugin configuration's token wins over the environment.
    let (control_plane, seen) = recording_control_plane().await;
    let (mut proxy, port) = envoy(
        dir.path(),
        control_plane,
        r#""gateway_token": "from-the-config""#,
        &[("MM_GATEWAY_TOKEN", "from-the-environment")],
    )
    .await;
    let route = route_call_seen(port, &seen).await;
    assert_eq!(route.header("x-mm-gateway-token"), Some("from-the-config"));
    proxy.kill();

    // No token anywhere: no header (and the pool-manager decides).
    let (control_plane, seen) = recording_control_plane().await;
    let (mut proxy, port) = envoy(dir.path(), control_plane, "", &[]).await;
    let route = route_call_seen(port, &seen).await;
    assert_eq!(route.header("x-mm-gateway-token"), None);
    proxy.kill();
}

/// Runs a Python client script from tests/clients with the gateway's `host:port` and
/// `args`; returns the JSON line it printed.
fn python_client(script: &str, stack: &Stack, args: &[&str]) -> Value {
    python_client_at(script, stack.envoy.port, args)
}

async fn stack_with(models: &[(&str, &str)]) -> Stack {
    let stack = Stack::start(StackOptions {
        replicas: 1,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    for (model, memory) in models {
        let (status, body) = stack
            .register(model, &example_model(model), memory)
            .await
            .unwrap();
        assert_eq!(status, 201, "{body}");
    }
    stack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_http_reads_the_model_configuration() {
    let stack = stack_with(&[("linear", "32Mi")]).await;
    let out = tokio::task::block_in_place(|| python_client("http_client.py", &stack, &["linear"]));
    assert_eq!(out["ready"], true, "{out}");
    assert_eq!(out["metadata"]["name"], "linear", "{out}");
    // Triton's own configuration of the model, through the gateway.
    assert_eq!(out["config"]["name"], "linear", "{out}");
    assert_eq!(out["config"]["backend"], "python", "{out}");
    assert_eq!(
        out["config"]["input"][0]["dims"],
        serde_json::json!([-1, 4]),
        "{out}"
    );
    let y: Vec<f64> = serde_json::from_value(out["y"].clone()).unwrap();
    assert_close(&y, &[7.0, 1.5], "tritonclient.http infer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kserve_v1_works_for_python_requests_whatever_it_accepts() {
    let stack = stack_with(&[("linear", "32Mi")]).await;
    let out = tokio::task::block_in_place(|| python_client("v1_requests.py", &stack, &["linear"]));
    for case in ["default", "gzip"] {
        let r = &out[case];
        assert_eq!(r["status"], 200, "{case}: {r}");
        assert_eq!(r["encoding"], Value::Null, "{case}: {r}");
        let predictions: Vec<f64> = r["json"]["predictions"]
            .as_array()
            .unwrap_or_else(|| panic!("{case}: {r}"))
            .iter()
            .map(|row| row[0].as_f64().unwrap())
            .collect();
        assert_close(&predictions, &[7.0, 1.5], case);
    }
    // The gateway's own refusal is plain JSON too.
    assert_eq!(out["bad"]["status"], 400, "{out}");
    assert_eq!(out["bad"]["encoding"], Value::Null, "{out}");
    assert!(out["bad"]["json"]["error"].is_string(), "{out}");
}

/// A valid V2 request for `input` (one row of `width` values) padded with a `pad_bytes`
/// string parameter: the body that crashed a Triton 2.51 replica when form-encoded.
fn padded_request(input: &str, width: usize, pad_bytes: usize) -> Vec<u8> {
    serde_json::json!({
        "inputs": [{"name": input, "shape": [1, width], "datatype": "FP32", "data": vec![1.0; width]}],
        "parameters": {"pad": "a".repeat(pad_bytes)},
    })
    .to_string()
    .into_bytes()
}

/// POSTs `body` through the gateway to `model`'s infer path with `headers`; returns the
/// status and the JSON body (Null if not JSON, with the text for messages).
async fn post_infer(
    stack: &Stack,
    model: &str,
    body: reqwest::Body,
    headers: &[(&str, &str)],
) -> (u16, Value, String) {
    let mut request = stack
        .http
        .post(stack.envoy.url(&format!("/v2/models/{model}/infer")))
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, json, text.chars().take(200).collect())
}

/// A body of `chunks` MiB sent without a content-length (chunked).
fn chunked_body(chunks: usize) -> reqwest::Body {
    let chunk = vec![b' '; 1 << 20];
    let stream =
        futures::stream::iter((0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    reqwest::Body::wrap_stream(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_bodies_cannot_take_a_replica_down() {
    let mut stack = Stack::start(StackOptions::default()).await.unwrap();
    for (model, memory) in [("linear", "32Mi"), ("anomaly", "48Mi"), ("xor_mlp", "64Mi")] {
        let (status, body) = stack
            .register(model, &example_model(model), memory)
            .await
            .unwrap();
        assert_eq!(status, 201, "{body}");
    }
    let (linear, _, _) = common::example("linear");
    stack
        .wait_warm("linear", &linear, Duration::from_secs(30))
        .await
        .unwrap();
    let form = [("content-type", "application/x-www-form-urlencoded")];

    // 6 MB, form-encoded as curl -d and urllib send it: answered, warm and cold (the cold
    // one is held while anomaly loads, over Envoy's default 1 MiB buffer).
    let (status, json, text) = post_infer(
        &stack,
        "linear",
        padded_request("x", 4, 6_000_000).into(),
        &form,
    )
    .await;
    assert_eq!(status, 200, "warm 6 MB: {text}");
    assert_eq!(json["outputs"][0]["name"], "y", "{text}");
    let (status, _, text) = post_infer(
        &stack,
        "anomaly",
        padded_request("readings", 3, 6_000_000).into(),
        &form,
    )
    .await;
    assert_eq!(status, 200, "cold 6 MB: {text}");

    // Over the limit: the gateway's JSON 413, warm, cold, and without a content-length.
    let limit = "limit of 33554432 bytes";
    let over = padded_request("x", 4, 33 << 20);
    let (status, json, text) = post_infer(&stack, "linear", over.clone().into(), &form).await;
    assert_eq!(status, 413, "warm over the limit: {text}");
    assert!(
        json["error"].as_str().unwrap_or_default().contains(limit),
        "{text}"
    );
    let (status, json, text) = post_infer(&stack, "xor_mlp", over.into(), &form).await;
    assert_eq!(status, 413, "cold over the limit: {text}");
    assert!(
        json["error"].as_str().unwrap_or_default().contains(limit),
        "{text}"
    );
    let (status, json, text) = post_infer(&stack, "xor_mlp", chunked_body(34), &[]).await;
    assert_eq!(status, 413, "cold, chunked, over the limit: {text}");
    assert!(
        json["error"].as_str().unwrap_or_default().contains(limit),
        "{text}"
    );

    // The binary tensor extension still works; a JSON length past the body is refused.
    let header = br#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}]}"#;
    let mut binary = header.to_vec();
    for v in [1.0f32, 2.0, 3.0, 4.0] {
        binary.extend_from_slice(&v.to_le_bytes());
    }
    let json_len = header.len().to_string();
    let (status, json, text) = post_infer(
        &stack,
        "linear",
        binary.clone().into(),
        &[
            ("inference-header-content-length", &json_len),
            ("content-type", "text/plain"),
        ],
    )
    .await;
    assert_eq!(status, 200, "binary tensors: {text}");
    assert_eq!(json["outputs"][0]["data"][0], 7.0, "{text}");
    let too_long = (binary.len() + 1).to_string();
    for bad in [too_long.as_str(), "x"] {
        let (status, json, text) = post_infer(
            &stack,
            "linear",
            binary.clone().into(),
            &[("inference-header-content-length", bad)],
        )
        .await;
        assert_eq!(status, 400, "{bad}: {text}");
        assert!(json["error"]
            .as_str()
            .unwrap_or_default()
            .contains("Inference-Header-Content-Length"));
    }

    // Both replicas are the processes they were, and ready.
    let http = stack.http.clone();
    for replica in &mut stack.replicas {
        replica.process.check_alive().unwrap();
        let ready = http
            .get(format!("{}/v2/health/ready", replica.url()))
            .send()
            .await
            .map(|r| r.status().as_u16());
        assert_eq!(ready.ok(), Some(200), "{} not ready", replica.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_messages_must_name_the_routed_model() {
    let stack = stack_with(&[("linear", "32Mi"), ("anomaly", "48Mi")]).await;
    // Both models loaded on the one replica: a confused message would run there.
    for model in ["linear", "anomaly"] {
        let (body, _, _) = common::example(model);
        stack
            .infer_until_ok(model, model, &body, Duration::from_secs(60))
            .await
            .unwrap();
    }
    let replica = &stack.replicas[0];
    // Triton counts an inference just after it answers: wait for the warm-up's.
    let anomaly_before = eventually(
        "anomaly's warm-up counted",
        Duration::from_secs(10),
        || async {
            let count = replica.inference_count("anomaly").await?;
            Ok((count >= 1).then_some(count))
        },
    )
    .await
    .unwrap();

    let out = tokio::task::block_in_place(|| python_client("grpc_confusion.py", &stack, &[]));
    assert_eq!(out["ok"]["code"], "OK", "{out}");
    for case in ["header_mismatch", "field_twice"] {
        assert_eq!(out[case]["code"], "INVALID_ARGUMENT", "{case}: {out}");
        let details = out[case]["details"].as_str().unwrap_or_default();
        assert!(
            details.contains("names model anomaly, but the call was routed to model linear"),
            "{case}: {details}"
        );
    }
    // grpcio writes a stream's messages as separate DATA frames: whether the second one
    // reaches the filter before Triton's first answer started the response is a race, so
    // the call fails either with the filter's status or with the stream reset. Once the
    // first answer has gone back, Envoy can only end the stream.
    for case in ["stream_together", "stream_later"] {
        assert_ne!(out[case]["code"], "OK", "{case}: {out}");
    }
    // Both messages in one DATA frame, as a raw HTTP/2 client can send them: the filter
    // sees them before anything went upstream, so the answer is always its status.
    let mut frames = grpc_frame(&model_name_message("linear"));
    frames.extend(grpc_frame(&model_name_message("anomaly")));
    let (grpc_status, message) =
        h2_grpc_stream(stack.envoy.port, "ModelStreamInfer", &frames).await;
    assert_eq!(grpc_status.as_deref(), Some("3"), "one frame: {message}");
    assert!(
        message.contains("names model anomaly, but the call was routed to model linear"),
        "one frame: {message}"
    );
    // No request for anomaly ran, whatever the case (linear's did: its count is how long
    // to wait for Triton's statistics to catch up).
    eventually(
        "linear's inferences counted",
        Duration::from_secs(10),
        || async { Ok((replica.inference_count("linear").await? >= 3).then_some(())) },
    )
    .await
    .unwrap();
    assert_eq!(
        replica.inference_count("anomaly").await.unwrap(),
        anomaly_before,
        "{out}"
    );
}

/// A ModelInferRequest that only names its model (field 1).
fn model_name_message(model: &str) -> Vec<u8> {
    let mut message = vec![0x0a, u8::try_from(model.len()).unwrap()];
    message.extend_from_slice(model.as_bytes());
    message
}

/// One gRPC length-prefixed message (uncompressed).
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// A gRPC call to the V2 service through the gateway whose messages are written as one
/// DATA frame, the stream left open; returns `grpc-status` (from the headers of a
/// trailers-only answer, or the trailers) and `grpc-message`.
async fn h2_grpc_stream(port: u16, method: &str, frames: &[u8]) -> (Option<String>, String) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://127.0.0.1:{port}/inference.GRPCInferenceService/{method}"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut stream) = client.send_request(request, false).unwrap();
    stream
        .send_data(bytes::Bytes::copy_from_slice(frames), false)
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(60), response)
        .await
        .unwrap()
        .unwrap();
    let header = |map: &http::HeaderMap, name: &str| {
        map.get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let (status, message) = (
        header(response.headers(), "grpc-status"),
        header(response.headers(), "grpc-message"),
    );
    if status.is_some() {
        return (status, message.unwrap_or_default());
    }
    let mut body = response.into_body();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), body.data())
        .await
        .unwrap()
    {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = tokio::time::timeout(Duration::from_secs(60), body.trailers())
        .await
        .unwrap()
        .unwrap()
        .unwrap_or_default();
    (
        header(&trailers, "grpc-status"),
        header(&trailers, "grpc-message").unwrap_or_default(),
    )
}

/// An HTTP/2 (cleartext) request through the gateway whose body is followed by trailers;
/// returns the status and the body.
async fn h2_request_with_trailers(port: u16, path: &str, body: &[u8]) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let (response, mut stream) = client.send_request(request, false).unwrap();
    stream
        .send_data(bytes::Bytes::copy_from_slice(body), false)
        .unwrap();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", http::HeaderValue::from_static("1"));
    stream.send_trailers(trailers).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(120), response)
        .await
        .unwrap()
        .unwrap();
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    (status, String::from_utf8_lossy(&text).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_trailers_do_not_let_a_held_request_go_unrouted() {
    let stack = stack_with(&[("linear", "32Mi"), ("anomaly", "48Mi")]).await;
    // Cold: the request is held while the model loads, and its trailers come meanwhile.
    let (body, _, want) = common::example("linear");
    let (status, text) = h2_request_with_trailers(
        stack.envoy.port,
        "/v2/models/linear/infer",
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "cold: {text}");
    let json: Value = serde_json::from_str(&text).unwrap();
    let y: Vec<f64> = serde_json::from_value(json["outputs"][0]["data"].clone()).unwrap();
    assert_close(&y, &want, "cold request with trailers");
    // A KServe V1 body ended by trailers is translated too.
    let (status, text) = h2_request_with_trailers(
        stack.envoy.port,
        "/v1/models/anomaly:predict",
        br#"{"instances": [[21, 55, 1013]]}"#,
    )
    .await;
    assert_eq!(status, 200, "V1 with trailers: {text}");
    assert!(text.contains("predictions"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_bodies_while_paused_nothing_waits_for_the_route_timeout() {
    let stack = stack_with(&[("linear", "32Mi"), ("anomaly", "48Mi")]).await;
    // Envoy as Istio's WasmPlugin configures it: no allow_on_headers_stop_iteration, and
    // the filter told so.
    let dir = stack.dir.path().join("istio");
    std::fs::create_dir_all(&dir).unwrap();
    let token = stack.gateway_token.clone().unwrap_or_default();
    let env: Vec<(&str, &str)> = match stack.gateway_token {
        Some(_) => vec![("MM_GATEWAY_TOKEN", token.as_str())],
        None => Vec::new(),
    };
    let (_proxy, port) = envoy_with(
        &dir,
        stack.pool_manager.port,
        r#""bodies_while_paused": false"#,
        &env,
        false,
    )
    .await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    // KServe V1 for a cold model: the request goes once routed, its body after it.
    let r = http
        .post(format!("http://127.0.0.1:{port}/v1/models/linear:predict"))
        .json(&serde_json::json!({"instances": [[1, 2, 3, 4], [0, 0, 0, 0]]}))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let json: Value = r.json().await.unwrap();
    let predictions: Vec<f64> = json["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row[0].as_f64().unwrap())
        .collect();
    assert_close(
        &predictions,
        &[7.0, 1.5],
        "cold V1 without bodies while paused",
    );

    // V2 for a cold model, with a body.
    let (anomaly, _, want) = common::example("anomaly");
    let r = http
        .post(format!("http://127.0.0.1:{port}/v2/models/anomaly/infer"))
        .json(&anomaly)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let json: Value = r.json().await.unwrap();
    let scores: Vec<f64> = serde_json::from_value(json["outputs"][0]["data"].clone()).unwrap();
    assert_eq!(scores.len(), want.len(), "{json}");

    // gRPC that names its model only in the message: a clear answer at once.
    let out = tokio::task::block_in_place(|| python_client_at("grpc_infer.py", port, &["linear"]));
    assert_eq!(out["status"], "StatusCode.UNIMPLEMENTED", "{out}");
    assert!(
        out["error"]
            .as_str()
            .unwrap_or_default()
            .contains("mm-model-id"),
        "{out}"
    );
    // With ModelMesh's header it is routed as ever.
    let out = tokio::task::block_in_place(|| {
        python_client_at(
            "grpc_infer.py",
            port,
            &["linear", "--header", "mm-model-id"],
        )
    });
    assert_eq!(out["ready"], true, "{out}");
    let y: Vec<f64> = serde_json::from_value(out["y"].clone()).unwrap();
    assert_close(&y, &[7.0, 1.5], "gRPC by header");
}
