//! The commands: each calls the admin API and prints a table or the API's JSON.

use std::io::{Read, Write};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::cli::{Cli, Command, EventsArgs, ModelsCommand, Output, ReplicasCommand};
use crate::client::{Client, Error};
use crate::format::{bytes, seconds, usage};
use crate::manifests::{self, Document, Refusal};
use crate::table::Table;

/// Largest spec file read (the server takes 64 KiB per model).
const MAX_FILE: u64 = 16 << 20;

/// Runs the command `cli` describes, printing to `out`.
pub fn run(cli: &Cli, out: &mut dyn Write) -> Result<(), Error> {
    let client = Client::new(cli.url.clone(), cli.token.clone(), cli.timeout)?;
    let o = cli.output;
    match &cli.command {
        Command::Models(ModelsCommand::List) => models_list(&client, o, out),
        Command::Models(ModelsCommand::Get { name }) => models_get(&client, name, o, out),
        Command::Models(ModelsCommand::Apply { file }) => models_apply(&client, file, o, out),
        Command::Models(ModelsCommand::Export {
            format,
            inference_service,
            names,
        }) => models_export(&client, *format, inference_service, names, out),
        Command::Models(ModelsCommand::Delete { name }) => {
            let (_, body) = client.call(Method::DELETE, &model_path(name), None)?;
            match o {
                Output::Json => print_json(out, &body),
                Output::Table => line(out, &format!("model {name} deleted")),
            }
        }
        Command::Aliases(command) => crate::aliases::run(&client, command, o, out),
        Command::Replicas(ReplicasCommand::List) => replicas_list(&client, o, out),
        Command::Replicas(ReplicasCommand::Drain { name }) => {
            replica_action(&client, name, "drain", o, out)
        }
        Command::Replicas(ReplicasCommand::Undrain { name }) => {
            replica_action(&client, name, "undrain", o, out)
        }
        Command::Events(args) => events(&client, args, o, out),
        Command::Status => status(&client, o, out),
    }
}

pub(crate) fn write(out: &mut dyn Write, text: &str) -> Result<(), Error> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Error::Other(format!("writing output: {e}")))
}

pub(crate) fn line(out: &mut dyn Write, text: &str) -> Result<(), Error> {
    write(out, &format!("{text}\n"))
}

pub(crate) fn print_json(out: &mut dyn Write, value: &Value) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Other(format!("encoding JSON: {e}")))?;
    line(out, &text)
}

/// A path segment, percent-encoded (model and replica names are plain, but a typo with a
/// `/` or `?` must not reach another endpoint).
pub(crate) fn segment(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn model_path(name: &str) -> String {
    format!("/api/v1/models/{}", segment(name))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// Every model, following the `next` cursor page by page.
fn all_models(client: &Client) -> Result<Vec<Value>, Error> {
    let mut models = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/api/v1/models?limit=1000&after={}", segment(a)),
            None => "/api/v1/models?limit=1000".to_owned(),
        };
        let page = client.get(&path)?;
        if let Some(list) = page["models"].as_array() {
            models.extend(list.iter().cloned());
        }
        match page["next"].as_str() {
            Some(next) if after.as_deref() != Some(next) => after = Some(next.to_owned()),
            _ => return Ok(models),
        }
    }
}

/// Where a model's copies are: `r0`, or `r0, r1 (Loading)`.
fn copies_text(model: &Value) -> String {
    let copies: Vec<String> = model["copies"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| match str_of(c, "state") {
                    "Loaded" => str_of(c, "replica").to_owned(),
                    state => format!("{} ({state})", str_of(c, "replica")),
                })
                .collect()
        })
        .unwrap_or_default();
    if copies.is_empty() {
        "-".into()
    } else {
        copies.join(",")
    }
}

fn memory_text(model: &Value) -> String {
    let memory = u64_of(model, "memory").max(u64_of(model, "measuredMemory"));
    let gpu = u64_of(model, "gpuMemory").max(u64_of(model, "measuredGpuMemory"));
    if gpu > 0 {
        format!("{}+{}gpu", bytes(memory), bytes(gpu))
    } else {
        bytes(memory)
    }
}

fn idle_text(model: &Value) -> String {
    model["idleSeconds"]
        .as_f64()
        .map_or_else(|| "-".into(), seconds)
}

fn models_list(client: &Client, o: Output, out: &mut dyn Write) -> Result<(), Error> {
    let models = all_models(client)?;
    if o == Output::Json {
        return print_json(out, &Value::Array(models));
    }
    let mut t = Table::new(&[
        "NAME",
        "STATE",
        "REPLICAS",
        "MEMORY>",
        "REQ/S>",
        "IN-FLIGHT>",
        "IDLE>",
        "LAST-ERROR",
    ]);
    for m in &models {
        t.row(vec![
            str_of(m, "name").to_owned(),
            state_text(m),
            copies_text(m),
            memory_text(m),
            format!("{:.1}", m["requestRate"].as_f64().unwrap_or(0.0)),
            u64_of(m, "inFlight").to_string(),
            idle_text(m),
            str_of(m, "lastError").replace('\n', " "),
        ]);
    }
    if t.is_empty() {
        return line(out, "no models registered");
    }
    write(out, &t.render())
}

fn model_details(m: &Value) -> String {
    let copies = format!(
        "min {} / max {}",
        u64_of(m, "minCopies"),
        u64_of(m, "maxCopies")
    );
    let memory = format!(
        "{}{}{}",
        bytes(u64_of(m, "memory")),
        if m["memoryDeclared"] == true {
            ""
        } else {
            " (estimated from the files)"
        },
        match u64_of(m, "measuredMemory") {
            0 => String::new(),
            n => format!(", measured {}", bytes(n)),
        }
    );
    let rows = [
        ("Name", str_of(m, "name").to_owned()),
        ("State", str_of(m, "state").to_owned()),
        ("Storage", str_of(m, "storageUri").to_owned()),
        ("Memory", memory),
        ("GPU memory", bytes(u64_of(m, "gpuMemory"))),
        ("Copies", copies),
        ("Replicas", copies_text(m)),
        ("Idle", idle_text(m)),
        ("In flight", u64_of(m, "inFlight").to_string()),
        (
            "Request rate",
            format!("{:.2}/s", m["requestRate"].as_f64().unwrap_or(0.0)),
        ),
        ("Last error", str_of(m, "lastError").to_owned()),
        ("Version", str_of(m, "version").to_owned()),
        ("Transition", transition_text(&m["transition"])),
    ];
    let mut text = String::new();
    for (k, v) in rows {
        text.push_str(&format!(
            "{:<14}{}\n",
            format!("{k}:"),
            if v.is_empty() { "-" } else { &v }
        ));
    }
    text
}

/// The model's state, and its update if one runs or failed.
fn state_text(m: &Value) -> String {
    let state = str_of(m, "state");
    match m["transition"]["state"].as_str() {
        Some("Loading") => format!("{state}, updating"),
        Some("Failed") => format!("{state}, update failed"),
        _ => state.to_owned(),
    }
}

/// An update as one line: `Loading m--ab12cd34 (ab12cd34 -> ef56ab78, 2 copies)`, with the
/// reason of a failed one; empty when there is none.
fn transition_text(t: &Value) -> String {
    if !t.is_object() {
        return String::new();
    }
    let mut text = format!(
        "{} {} ({} -> {}, {} copies)",
        str_of(t, "state"),
        str_of(t, "version"),
        str_of(t, "from"),
        str_of(t, "to"),
        u64_of(t, "copies")
    );
    if let Some(reason) = t["reason"].as_str() {
        text.push_str(": ");
        text.push_str(&reason.replace('\n', " "));
    }
    text
}

fn models_get(client: &Client, name: &str, o: Output, out: &mut dyn Write) -> Result<(), Error> {
    let model = client.get(&model_path(name))?;
    match o {
        Output::Json => print_json(out, &model),
        Output::Table => write(out, &model_details(&model)),
    }
}

fn read_spec_file(file: &std::path::Path) -> Result<String, Error> {
    let mut text = String::new();
    let what = file.display();
    let read = if file.as_os_str() == "-" {
        std::io::stdin().take(MAX_FILE).read_to_string(&mut text)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(MAX_FILE).read_to_string(&mut text))
    };
    read.map_err(|e| Error::Other(format!("reading {what}: {e}")))?;
    Ok(text)
}

fn models_apply(
    client: &Client,
    file: &std::path::Path,
    o: Output,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let text = read_spec_file(file)?;
    let json = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    // 1. Every document parsed and checked here; 2. every one checked by the server (a dry
    // run); 3. only then applied. A refusal at 1 or 2 applies nothing.
    let documents = match manifests::parse(&text, json) {
        Ok(d) => d,
        Err(r) => return refused(file, &r.refusals, &r.documents, o, out),
    };
    let mut planned = Vec::with_capacity(documents.len());
    let mut refusals = Vec::new();
    for d in &documents {
        let path = format!("{}?dryRun=true", model_path(&d.name));
        match client.call(Method::PUT, &path, Some(&d.spec)) {
            Ok((_, answer)) => planned.push(answer["result"].as_str().unwrap_or("").to_owned()),
            Err(e @ (Error::Connect { .. } | Error::Unauthorized(_) | Error::Server(_))) => {
                return Err(e)
            }
            Err(e) => {
                planned.push(String::new());
                refusals.push(Refusal {
                    index: d.index,
                    kind: d.kind.into(),
                    name: Some(d.name.clone()),
                    reason: inner(&e),
                });
            }
        }
    }
    if !refusals.is_empty() {
        return refused(file, &refusals, &documents, o, out);
    }
    let mut first_error: Option<Error> = None;
    let mut results = Vec::new();
    let mut t = Table::new(&["DOC>", "KIND", "NAME", "RESULT", "STATE", "MEMORY>"]);
    for (d, plan) in documents.iter().zip(planned) {
        match client.call(Method::PUT, &model_path(&d.name), Some(&d.spec)) {
            Ok((status, model)) => {
                let result = match (status, plan.as_str()) {
                    (StatusCode::CREATED, _) => "created",
                    (_, "unchanged") => "unchanged",
                    _ => "updated",
                };
                t.row(vec![
                    d.index.to_string(),
                    d.kind.into(),
                    d.name.clone(),
                    result.into(),
                    str_of(&model, "state").to_owned(),
                    memory_text(&model),
                ]);
                results.push(json!({"document": d.index, "kind": d.kind, "name": d.name, "result": result, "model": model}));
            }
            Err(e) => {
                t.row(vec![
                    d.index.to_string(),
                    d.kind.into(),
                    d.name.clone(),
                    format!("error: {}", inner(&e)),
                ]);
                results.push(
                    json!({"document": d.index, "kind": d.kind, "name": d.name, "result": "error",
                                    "error": e.to_string(), "exitCode": e.exit_code()}),
                );
                first_error.get_or_insert(e);
            }
        }
    }
    match o {
        Output::Json => print_json(out, &Value::Array(results))?,
        Output::Table => write(out, &t.render())?,
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Reports a file that is not applied: each refused document with its reason, the others
/// as not applied; exit code 4.
fn refused(
    file: &std::path::Path,
    refusals: &[Refusal],
    documents: &[Document],
    o: Output,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let mut rows: Vec<(usize, String, String, String)> = refusals
        .iter()
        .map(|r| {
            (
                r.index,
                r.kind.clone(),
                r.name.clone().unwrap_or_else(|| "-".into()),
                format!("refused: {}", r.reason),
            )
        })
        .collect();
    for d in documents {
        if !refusals
            .iter()
            .any(|r| r.index == d.index && r.name.as_deref() == Some(&d.name))
        {
            rows.push((d.index, d.kind.into(), d.name.clone(), "not applied".into()));
        }
    }
    rows.sort_by_key(|r| r.0);
    match o {
        Output::Json => {
            let items: Vec<Value> = rows
                .iter()
                .map(|(i, kind, name, result)| {
                    let (result, error) = match result.strip_prefix("refused: ") {
                        Some(reason) => ("refused", Some(reason)),
                        None => ("not applied", None),
                    };
                    json!({"document": i, "kind": kind, "name": name, "result": result, "error": error})
                })
                .collect();
            print_json(out, &Value::Array(items))?;
        }
        Output::Table => {
            let mut t = Table::new(&["DOC>", "KIND", "NAME", "RESULT"]);
            for (i, kind, name, result) in rows {
                t.row(vec![i.to_string(), kind, name, result]);
            }
            write(out, &t.render())?;
        }
    }
    Err(Error::Invalid(format!(
        "{}: {} document(s) refused; nothing was applied",
        file.display(),
        refusals.len()
    )))
}

fn models_export(
    client: &Client,
    format: manifests::ExportFormat,
    inference_service: &str,
    names: &[String],
    out: &mut dyn Write,
) -> Result<(), Error> {
    let views = if names.is_empty() {
        all_models(client)?
    } else {
        names
            .iter()
            .map(|n| client.get(&model_path(n)))
            .collect::<Result<Vec<_>, _>>()?
    };
    let (documents, redacted) = manifests::to_documents(&views, format, inference_service);
    let mut text = String::new();
    for d in &documents {
        let yaml =
            serde_norway::to_string(d).map_err(|e| Error::Other(format!("encoding YAML: {e}")))?;
        text.push_str("---\n");
        text.push_str(&yaml);
    }
    for name in redacted {
        eprintln!(
            "mmctl: model {name}: its storageUri holds credentials and was written redacted; put the real URI back before applying"
        );
    }
    write(out, &text)
}

/// An error's message without its category prefix (for a table cell).
fn inner(e: &Error) -> String {
    match e {
        Error::Other(m)
        | Error::NotFound(m)
        | Error::Invalid(m)
        | Error::Unauthorized(m)
        | Error::Server(m) => m.clone(),
        Error::Connect { .. } => e.to_string(),
    }
}

fn replicas_list(client: &Client, o: Output, out: &mut dyn Write) -> Result<(), Error> {
    let body = client.get("/api/v1/replicas")?;
    let replicas = body["replicas"].as_array().cloned().unwrap_or_default();
    if o == Output::Json {
        return print_json(out, &Value::Array(replicas));
    }
    let mut t = Table::new(&[
        "NAME",
        "HEALTHY",
        "DRAINING",
        "MEMORY",
        "GPU-MEMORY",
        "IN-FLIGHT>",
        "MODELS",
    ]);
    for r in &replicas {
        let models: Vec<&str> = r["models"]
            .as_array()
            .map(|ms| ms.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        t.row(vec![
            str_of(r, "name").to_owned(),
            yes_no(r["healthy"] == true),
            yes_no(r["draining"] == true),
            usage(u64_of(r, "usedBytes"), u64_of(r, "capacityBytes")),
            usage(u64_of(r, "gpuUsedBytes"), u64_of(r, "gpuCapacityBytes")),
            u64_of(r, "inFlight").to_string(),
            if models.is_empty() {
                "-".into()
            } else {
                models.join(",")
            },
        ]);
    }
    write(out, &t.render())
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

fn replica_action(
    client: &Client,
    name: &str,
    action: &str,
    o: Output,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let path = format!("/api/v1/replicas/{}/{action}", segment(name));
    let (_, view) = client.call(Method::POST, &path, None)?;
    match o {
        Output::Json => print_json(out, &view),
        Output::Table if view["draining"] == true => line(
            out,
            &format!(
                "replica {name} draining: no new copies; {} model(s) still there move or unload when idle",
                view["models"].as_array().map_or(0, Vec::len)
            ),
        ),
        Output::Table => line(out, &format!("replica {name} takes new copies again")),
    }
}

/// One event's detail column: sizes, seconds, reason.
fn event_detail(e: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(b) = e["bytes"].as_u64() {
        parts.push(match e["gpuBytes"].as_u64() {
            Some(g) => format!("{}+{}gpu", bytes(b), bytes(g)),
            None => bytes(b),
        });
    }
    if let Some(s) = e["seconds"].as_f64() {
        parts.push(if e["kind"] == "evicted" {
            format!("loaded {}", seconds(s))
        } else {
            seconds(s)
        });
    }
    if let Some(r) = e["reason"].as_str() {
        parts.push(r.replace('\n', " "));
    }
    parts.join("  ")
}

/// `2026-01-02T03:04:05.678Z` -> `03:04:05` (UTC).
fn time_of_day(e: &Value) -> String {
    let t = str_of(e, "time");
    t.get(11..19).unwrap_or(t).to_owned()
}

fn event_cells(e: &Value) -> Vec<String> {
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    vec![
        u64_of(e, "seq").to_string(),
        time_of_day(e),
        str_of(e, "kind").to_owned(),
        or_dash(str_of(e, "model")),
        or_dash(str_of(e, "replica")),
        event_detail(e),
    ]
}

const EVENT_HEADERS: [&str; 6] = ["SEQ>", "TIME", "KIND", "MODEL", "REPLICA", "DETAIL"];

fn events(client: &Client, args: &EventsArgs, o: Output, out: &mut dyn Write) -> Result<(), Error> {
    let path = match args.after {
        Some(after) => format!("/api/v1/events?after={after}&limit={}", args.limit),
        None => format!("/api/v1/events?limit={}", args.limit),
    };
    let page = client.get(&path)?;
    let list = page["events"].as_array().cloned().unwrap_or_default();
    let mut last = page["next"].as_u64().unwrap_or(0);
    if !args.follow {
        if o == Output::Json {
            return print_json(out, &Value::Array(list));
        }
        let mut t = Table::new(&EVENT_HEADERS);
        for e in &list {
            t.row(event_cells(e));
        }
        return write(out, &t.render());
    }
    // Following: fixed-width rows (the widths of later events are not known yet), or one
    // JSON object per line.
    let print = |out: &mut dyn Write, e: &Value| -> Result<(), Error> {
        match o {
            Output::Json => line(out, &e.to_string()),
            Output::Table => {
                let c = event_cells(e);
                line(
                    out,
                    format!(
                        "{:>6}  {:<8}  {:<17}  {:<24}  {:<10}  {}",
                        c[0], c[1], c[2], c[3], c[4], c[5]
                    )
                    .trim_end(),
                )
            }
        }
    };
    if o == Output::Table {
        line(
            out,
            &format!(
                "{:>6}  {:<8}  {:<17}  {:<24}  {:<10}  DETAIL",
                "SEQ", "TIME", "KIND", "MODEL", "REPLICA"
            ),
        )?;
    }
    for e in &list {
        print(out, e)?;
    }
    // The server ends the stream when it shuts down; pick up where we were, until it
    // cannot be reached (exit 7).
    loop {
        let stream = client.stream(&format!("/api/v1/events/stream?after={last}"), |e| {
            last = last.max(u64_of(&e, "seq"));
            print(out, &e)
        });
        stream?;
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn status(client: &Client, o: Output, out: &mut dyn Write) -> Result<(), Error> {
    let summary = client.get("/api/v1/summary")?;
    let replicas = client.get("/api/v1/replicas")?;
    if o == Output::Json {
        return print_json(out, &summary);
    }
    let m = &summary["metrics"];
    let list = replicas["replicas"].as_array().cloned().unwrap_or_default();
    let healthy = list.iter().filter(|r| r["healthy"] == true).count();
    let dist = |d: &Value| {
        let s = |k: &str| d[k].as_f64().map_or_else(|| "-".into(), seconds);
        format!(
            "mean {}  p50 {}  p99 {}  ({} observed)",
            s("mean"),
            s("p50"),
            s("p99"),
            u64_of(d, "count")
        )
    };
    let hit_rate = m["hitRate"]
        .as_f64()
        .map_or_else(|| "-".into(), |r| format!("{:.1}%", r * 100.0));
    let rows = [
        ("Replicas", format!("{healthy}/{} healthy", list.len())),
        (
            "Models",
            format!(
                "{} registered, {} copies loaded",
                u64_of(m, "modelsRegistered"),
                u64_of(m, "copiesLoaded")
            ),
        ),
        (
            "Hit rate",
            format!(
                "{hit_rate} of {} requests ({} cold)",
                u64_of(m, "requests"),
                u64_of(&m["routeCalls"], "miss")
            ),
        ),
        ("Load time", dist(&m["loadSeconds"])),
        ("Cold wait", dist(&m["coldWaitSeconds"])),
        (
            "Loads",
            format!(
                "{} ok, {} failed, {} unloads",
                u64_of(m, "loads"),
                u64_of(m, "loadFailures"),
                u64_of(m, "unloads")
            ),
        ),
        (
            "Evictions",
            format!(
                "{} ({} mass), {} placement failures",
                u64_of(m, "evictions"),
                u64_of(m, "massEvictions"),
                u64_of(m, "placementFailures")
            ),
        ),
    ];
    let mut text = String::new();
    for (k, v) in rows {
        text.push_str(&format!("{:<11}{v}\n", format!("{k}:")));
    }
    write(out, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_path_segments() {
        assert_eq!(segment("fraud-eu_v1.2"), "fraud-eu_v1.2");
        assert_eq!(segment("a/b?c"), "a%2Fb%3Fc");
    }

    #[test]
    fn renders_events_and_copies() {
        let e = json!({"seq": 7, "time": "2026-01-02T03:04:05.678Z", "kind": "evicted",
                       "model": "m", "replica": "r0", "bytes": 33554432, "seconds": 75.0,
                       "reason": "room for x"});
        assert_eq!(
            event_cells(&e),
            [
                "7",
                "03:04:05",
                "evicted",
                "m",
                "r0",
                "32Mi  loaded 1m15s  room for x"
            ]
        );
        let m = json!({"copies": [{"replica": "r0", "state": "Loaded"},
                                  {"replica": "r1", "state": "Loading"}]});
        assert_eq!(copies_text(&m), "r0,r1 (Loading)");
        assert_eq!(copies_text(&json!({"copies": []})), "-");
    }

    #[test]
    fn transitions_show_in_one_line() {
        let m = serde_json::json!({"state": "Loaded", "transition": {
            "from": "ab12cd34", "to": "ef56ab78", "version": "m--ef56ab78",
            "state": "Failed", "copies": 2, "reason": "replica r0: bad\nfile"}});
        assert_eq!(state_text(&m), "Loaded, update failed");
        assert_eq!(
            transition_text(&m["transition"]),
            "Failed m--ef56ab78 (ab12cd34 -> ef56ab78, 2 copies): replica r0: bad file"
        );
        let plain = serde_json::json!({"state": "Pending"});
        assert_eq!(state_text(&plain), "Pending");
        assert_eq!(transition_text(&plain["transition"]), "");
        assert!(model_details(&m).contains("Transition:   Failed m--ef56ab78"));
    }
}
