//! `mmctl aliases`: list, show, set (create or move) and delete aliases through
//! `/api/v1/aliases`.

use std::io::Write;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::cli::{AliasesCommand, Output};
use crate::client::{Client, Error};
use crate::commands::{line, print_json, segment, write};
use crate::table::Table;

/// Weighted targets as given on the command line (`m1=90,m2=10`), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets(pub Vec<(String, u32)>);

/// Parses `m1=90,m2=10`; the server checks names, ranges and repeats again.
pub fn parse_targets(text: &str) -> Result<Targets, String> {
    let mut targets = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (model, weight) = part
            .split_once('=')
            .ok_or_else(|| format!("'{part}': expected MODEL=WEIGHT"))?;
        let weight: u32 = weight
            .trim()
            .parse()
            .map_err(|_| format!("'{part}': the weight is not a whole number"))?;
        let model = model.trim();
        if model.is_empty() {
            return Err(format!("'{part}': no model name"));
        }
        targets.push((model.to_owned(), weight));
    }
    Ok(Targets(targets))
}

/// The body of the `PUT`.
fn request_body(target: Option<&str>, targets: Option<&Targets>) -> Value {
    match (target, targets) {
        (Some(model), _) => json!({"target": model}),
        (None, Some(Targets(ts))) => json!({"targets": ts
            .iter()
            .map(|(model, weight)| json!({"model": model, "weight": weight}))
            .collect::<Vec<_>>()}),
        (None, None) => json!({}),
    }
}

/// An alias's targets as one cell: `m` for a single one, `a=90,b=10` for several.
fn targets_text(alias: &Value) -> String {
    let targets = alias["targets"].as_array().cloned().unwrap_or_default();
    let model = |t: &Value| t["model"].as_str().unwrap_or("").to_owned();
    match targets.as_slice() {
        [one] => model(one),
        many => many
            .iter()
            .map(|t| format!("{}={}", model(t), t["weight"].as_u64().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(","),
    }
}

fn alias_path(name: &str) -> String {
    format!("/api/v1/aliases/{}", segment(name))
}

fn table(aliases: &[Value]) -> String {
    let mut t = Table::new(&["NAME", "TARGETS"]);
    for a in aliases {
        t.row(vec![
            a["name"].as_str().unwrap_or("").to_owned(),
            targets_text(a),
        ]);
    }
    t.render()
}

/// Runs one `aliases` subcommand.
pub fn run(
    client: &Client,
    command: &AliasesCommand,
    o: Output,
    out: &mut dyn Write,
) -> Result<(), Error> {
    match command {
        AliasesCommand::List => {
            let body = client.get("/api/v1/aliases")?;
            let aliases = body["aliases"].as_array().cloned().unwrap_or_default();
            match o {
                Output::Json => print_json(out, &Value::Array(aliases)),
                Output::Table if aliases.is_empty() => line(out, "no aliases"),
                Output::Table => write(out, &table(&aliases)),
            }
        }
        AliasesCommand::Get { name } => {
            let alias = client.get(&alias_path(name))?;
            match o {
                Output::Json => print_json(out, &alias),
                Output::Table => write(out, &table(&[alias])),
            }
        }
        AliasesCommand::Set {
            name,
            target,
            targets,
        } => {
            let body = request_body(target.as_deref(), targets.as_ref());
            let (status, alias) = client.call(Method::PUT, &alias_path(name), Some(&body))?;
            let done = if status == StatusCode::CREATED {
                "created"
            } else {
                "set"
            };
            match o {
                Output::Json => print_json(out, &alias),
                Output::Table => line(
                    out,
                    &format!("alias {name} {done}: {}", targets_text(&alias)),
                ),
            }
        }
        AliasesCommand::Delete { name } => {
            let (_, body) = client.call(Method::DELETE, &alias_path(name), None)?;
            match o {
                Output::Json => print_json(out, &body),
                Output::Table => line(out, &format!("alias {name} deleted")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_weighted_targets() {
        assert_eq!(
            parse_targets("m-v1=90, m-v2=10").unwrap(),
            Targets(vec![("m-v1".into(), 90), ("m-v2".into(), 10)])
        );
        for bad in ["m", "m=", "=5", "m=-1", "m=1.5", "m=1,,n=2"] {
            assert!(parse_targets(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn builds_the_request_and_shows_targets() {
        assert_eq!(request_body(Some("m"), None), json!({"target": "m"}));
        let ts = parse_targets("a=90,b=10").unwrap();
        let body = request_body(None, Some(&ts));
        assert_eq!(
            body,
            json!({"targets": [{"model": "a", "weight": 90}, {"model": "b", "weight": 10}]})
        );
        let view = json!({"name": "x", "targets": body["targets"]});
        assert_eq!(targets_text(&view), "a=90,b=10");
        let single = json!({"name": "y", "targets": [{"model": "m", "weight": 1}]});
        assert_eq!(
            table(&[view, single]),
            "NAME   TARGETS\nx      a=90,b=10\ny      m\n"
        );
    }
}
