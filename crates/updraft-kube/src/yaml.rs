//! JSON as block-style YAML, as `kubectl get -o yaml` shows objects: for people
//! reading a pod spec. Strings that YAML would read as something else are quoted.

use serde_json::Value;

pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0),
        Value::Array(items) if !items.is_empty() => write_seq(&mut out, items, 0),
        scalar => {
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
    out
}

fn write_map(out: &mut String, map: &serde_json::Map<String, Value>, indent: usize) {
    for (key, value) in map {
        out.push_str(&" ".repeat(indent));
        out.push_str(&quote(key));
        out.push(':');
        write_value(out, value, indent);
    }
}

fn write_seq(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        match item {
            Value::Object(map) if !map.is_empty() => {
                // The first key on the dash's line, the rest under it.
                let mut first = true;
                for (key, value) in map {
                    if first {
                        out.push(' ');
                        first = false;
                    } else {
                        out.push_str(&" ".repeat(indent + 2));
                    }
                    out.push_str(&quote(key));
                    out.push(':');
                    write_value(out, value, indent + 2);
                }
            }
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                write_seq(out, inner, indent + 2);
            }
            scalar => write_value(out, scalar, indent),
        }
    }
}

fn write_value(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            write_map(out, map, indent + 2);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_seq(out, items, indent);
        }
        Value::String(text) if text.contains('\n') => {
            // A literal block keeps a script readable.
            let keep = if text.ends_with('\n') { "" } else { "-" };
            out.push_str(&format!(" |{keep}\n"));
            for line in text.trim_end_matches('\n').split('\n') {
                if line.is_empty() {
                    out.push('\n');
                } else {
                    out.push_str(&" ".repeat(indent + 2));
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        scalar => {
            out.push(' ');
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(number) => number.to_string(),
        Value::String(text) => quote(text),
        Value::Array(_) => "[]".to_string(),
        Value::Object(_) => "{}".to_string(),
    }
}

/// `text` as a YAML scalar that reads back as the same string.
fn quote(text: &str) -> String {
    let plain_ok = !text.is_empty()
        && !text.starts_with(|c: char| "-?:,[]{}#&*!|>'\"%@` ".contains(c))
        && !text.ends_with([' ', ':'])
        && !text.contains(": ")
        && !text.contains(" #")
        && !text.contains(['\n', '\t', '\\'])
        && !matches!(
            text,
            "true"
                | "false"
                | "null"
                | "~"
                | "yes"
                | "no"
                | "on"
                | "off"
                | "True"
                | "False"
                | "Null"
                | "NULL"
                | "Yes"
                | "No"
                | "On"
                | "Off"
                | "y"
                | "n"
        )
        && text.parse::<f64>().is_err()
        && !text.starts_with(|c: char| c.is_ascii_digit() && text.contains(['-', ':']));
    if plain_ok {
        return text.to_string();
    }
    serde_json::to_string(text).expect("a string is JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_lists_and_tricky_strings() {
        let value = json!({
            "apiVersion": "v1",
            "metadata": {"labels": {"updraft.dev/try": "2", "team": "data"}},
            "spec": {
                "containers": [{"name": "task", "command": ["/bin/sh", "-c", "echo hi\nexit 1"], "env": []}],
                "tolerations": [{"key": "pool", "operator": "Equal", "value": "true"}],
                "activeDeadlineSeconds": 690,
            },
        });
        let text = to_yaml(&value);
        assert_eq!(
            text,
            "apiVersion: v1\nmetadata:\n  labels:\n    team: data\n    updraft.dev/try: \"2\"\nspec:\n  activeDeadlineSeconds: 690\n  containers:\n  - command:\n    - /bin/sh\n    - \"-c\"\n    - |-\n      echo hi\n      exit 1\n    env: []\n    name: task\n  tolerations:\n  - key: pool\n    operator: Equal\n    value: \"true\"\n"
        );
    }
}
