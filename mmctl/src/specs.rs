//! mmctl's own model specs (one form of document `models apply` reads, see
//! [`crate::manifests`]): one spec with a `name`, a list of them, or `{"models": [...]}`.
//! Each becomes a name and the JSON body of its `PUT /api/v1/models/{name}` (the spec
//! without `name`); the server validates the rest.

use serde_json::Value;

use crate::client::Error;

/// One model to register.
#[derive(Debug, Clone, PartialEq)]
pub struct Named {
    pub name: String,
    pub spec: Value,
}

/// Parses `text`: JSON when it looks like JSON (or `json` is set), YAML otherwise.
pub fn parse(text: &str, json: bool) -> Result<Vec<Named>, Error> {
    let trimmed = text.trim_start();
    let value: Value = if json || trimmed.starts_with('{') || trimmed.starts_with('[') {
        serde_json::from_str(text).map_err(|e| Error::Invalid(format!("not valid JSON: {e}")))?
    } else {
        serde_norway::from_str(text).map_err(|e| Error::Invalid(format!("not valid YAML: {e}")))?
    };
    parse_value(value).map_err(Error::Invalid)
}

/// The specs of one document: a spec with a `name`, a list of them, or
/// `{"models": [...]}`.
pub fn parse_value(value: Value) -> Result<Vec<Named>, String> {
    let items =
        match value {
            Value::Array(items) => items,
            Value::Object(mut object) if !object.contains_key("name") => {
                match object.remove("models") {
                    Some(Value::Array(items)) if object.is_empty() => items,
                    _ => return Err(
                        "expected a spec with a \"name\", a list of them, or {\"models\": [...]}"
                            .into(),
                    ),
                }
            }
            single @ Value::Object(_) => vec![single],
            Value::Null => Vec::new(),
            other => {
                return Err(format!(
                    "expected a spec or a list of specs, not {}",
                    kind(&other)
                ))
            }
        };
    if items.is_empty() {
        return Err("the file holds no model spec".into());
    }
    let mut seen = std::collections::HashSet::new();
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let Value::Object(mut object) = item else {
                return Err(format!(
                    "spec #{}: expected an object, not {}",
                    i + 1,
                    kind(&item)
                ));
            };
            let name = match object.remove("name") {
                Some(Value::String(name)) if !name.is_empty() => name,
                _ => {
                    return Err(format!(
                        "spec #{}: \"name\" (a non-empty string) is required",
                        i + 1
                    ))
                }
            };
            if !seen.insert(name.clone()) {
                return Err(format!("model {name:?} appears twice"));
            }
            if let Some(uri) = object.get("storageUri").and_then(Value::as_str) {
                if uri.contains("REDACTED@") || uri.contains("?REDACTED") {
                    return Err(format!("spec {name:?}: storageUri was redacted by `mmctl models export` (it held credentials): put the real URI back"));
                }
            }
            Ok(Named {
                name,
                spec: Value::Object(object),
            })
        })
        .collect()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_one_spec_a_list_or_a_models_object_in_yaml_or_json() {
        let yaml_list = "- name: a\n  storageUri: file:///m/a\n  memory: 64Mi\n- name: b\n  storageUri: file:///m/b\n  memory: 1048576\n  minCopies: 1\n";
        let got = parse(yaml_list, false).unwrap();
        assert_eq!(
            got,
            vec![
                Named {
                    name: "a".into(),
                    spec: json!({"storageUri": "file:///m/a", "memory": "64Mi"})
                },
                Named {
                    name: "b".into(),
                    spec: json!({"storageUri": "file:///m/b", "memory": 1048576, "minCopies": 1})
                },
            ]
        );
        let yaml_models = "models:\n  - name: a\n    storageUri: file:///m/a\n";
        assert_eq!(parse(yaml_models, false).unwrap().len(), 1);
        let json_single = r#"{"name": "a", "storageUri": "file:///m/a"}"#;
        assert_eq!(parse(json_single, true).unwrap()[0].name, "a");
        let json_list = r#"[{"name": "a", "storageUri": "file:///m/a"}]"#;
        assert_eq!(
            parse(json_list, false).unwrap()[0].spec["storageUri"],
            "file:///m/a"
        );
    }

    #[test]
    fn refuses_what_is_not_a_spec() {
        for (text, json) in [
            ("", false),
            ("[]", false),
            ("just a string", false),
            ("- 1\n- 2\n", false),
            ("storageUri: file:///m/a\n", false),
            ("models: 3\n", false),
            ("- name: a\n- name: a\n", false),
            ("- name: ''\n", false),
            ("{not json", true),
            ("a: [unclosed\n", false),
        ] {
            let e = parse(text, json).unwrap_err();
            assert_eq!(e.exit_code(), 4, "{text:?}: {e}");
        }
    }
}
