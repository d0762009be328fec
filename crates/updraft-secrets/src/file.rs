//! Airflow's local-filesystem backend: a variables file and a connections file,
//! each YAML, JSON or `.env` (by extension). Variables map a key to a value
//! (anything not text is kept as JSON text); connections map an id to a URI or to
//! Airflow's JSON form. The file is read again when the cache has expired, so an
//! edit reaches tasks within `secrets.cache_ttl`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use updraft_dagfile::yaml::{self, LineIndex, Node, Value};

use crate::{Backend, Kind};

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub variables_file: Option<String>,
    pub connections_file: Option<String>,
}

pub(crate) struct FileBackend {
    variables: Option<PathBuf>,
    connections: Option<PathBuf>,
}

impl FileBackend {
    pub(crate) fn new(config: &FileConfig, base: &Path) -> FileBackend {
        FileBackend {
            variables: config.variables_file.as_deref().map(|path| crate::resolve_path(base, path)),
            connections: config.connections_file.as_deref().map(|path| crate::resolve_path(base, path)),
        }
    }
}

#[async_trait::async_trait]
impl Backend for FileBackend {
    fn describe(&self) -> String {
        let files: Vec<String> =
            self.variables.iter().chain(&self.connections).map(|path| format!("`{}`", path.display())).collect();
        format!("file {}", files.join(" "))
    }

    async fn get(&self, kind: Kind, name: &str) -> Result<Option<String>, String> {
        let path = match kind {
            Kind::Variable => &self.variables,
            Kind::Connection => &self.connections,
        };
        let Some(path) = path else { return Ok(None) };
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|error| format!("cannot read `{}`: {error}", path.display()))?;
        let mut entries = read_entries(path, &text)?;
        Ok(entries.remove(name))
    }
}

/// Every entry of a secrets file; errors name the file and line:column, never a value.
pub(crate) fn read_entries(path: &Path, text: &str) -> Result<HashMap<String, String>, String> {
    let extension = path.extension().and_then(|extension| extension.to_str()).unwrap_or_default();
    match extension {
        "env" => read_env(path, text),
        "json" => {
            let value: serde_json::Value = serde_json::from_str(text).map_err(|error| {
                format!(
                    "{}:{}:{}: not JSON: {}",
                    path.display(),
                    error.line(),
                    error.column(),
                    without_position(&error)
                )
            })?;
            let serde_json::Value::Object(entries) = value else {
                return Err(format!("{}:1:1: expected a JSON object of names to values", path.display()));
            };
            Ok(entries.into_iter().map(|(key, value)| (key, as_text(value))).collect())
        }
        "yaml" | "yml" => read_yaml(path, text),
        _ => Err(format!("`{}`: a secrets file ends in .yaml, .yml, .json or .env", path.display())),
    }
}

fn without_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.find(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

fn as_text(value: serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text,
        other => other.to_string(),
    }
}

fn read_yaml(path: &Path, text: &str) -> Result<HashMap<String, String>, String> {
    let index = LineIndex::new(text);
    let at = |node_start: usize| {
        let (line, column) = index.line_col(node_start);
        format!("{}:{line}:{column}", path.display())
    };
    let root = yaml::parse(text).map_err(|error| format!("{}: {}", at(error.span.start), error.message))?;
    let entries = match root.value {
        Value::Map(entries) => entries,
        Value::Null => Vec::new(),
        _ => return Err(format!("{}: expected a mapping of names to values", at(root.span.start))),
    };
    let mut out = HashMap::new();
    for (key, value) in entries {
        let Some(name) = key.scalar_text() else {
            return Err(format!("{}: a name must be text", at(key.span.start)));
        };
        if out.contains_key(&name) {
            return Err(format!("{}: `{name}` is given twice", at(key.span.start)));
        }
        out.insert(name, node_text(&value));
    }
    Ok(out)
}

fn node_text(node: &Node) -> String {
    match &node.value {
        Value::Map(_) | Value::Seq(_) => node.to_json().to_string(),
        _ => node.scalar_text().unwrap_or_default(),
    }
}

/// `NAME=value` lines; `#` starts a comment line; quotes around a value are removed.
fn read_env(path: &Path, text: &str) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            return Err(format!("{}:{}:1: expected `NAME=value`", path.display(), number + 1));
        };
        let name = name.trim().trim_start_matches("export ").trim();
        let value = value.trim();
        let value = ['"', '\'']
            .iter()
            .find_map(|quote| value.strip_prefix(*quote).and_then(|inner| inner.strip_suffix(*quote)))
            .unwrap_or(value);
        if out.insert(name.to_string(), value.to_string()).is_some() {
            return Err(format!("{}:{}:1: `{name}` is given twice", path.display(), number + 1));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_json_and_env_files() {
        let yaml = "region: eu-west-1\nsettings:\n  retries: 3\nport: 5432\n";
        let entries = read_entries(Path::new("v.yaml"), yaml).unwrap();
        assert_eq!(entries["region"], "eu-west-1");
        assert_eq!(entries["settings"], r#"{"retries":3}"#);
        assert_eq!(entries["port"], "5432");
        let json = r#"{"warehouse": "postgres://u:p@db/dw", "api": {"conn_type": "http", "host": "x"}}"#;
        let entries = read_entries(Path::new("c.json"), json).unwrap();
        assert_eq!(entries["warehouse"], "postgres://u:p@db/dw");
        assert_eq!(entries["api"], r#"{"conn_type":"http","host":"x"}"#);
        let env = "# comment\nexport TOKEN=\"abc=def\"\n\nregion = eu\n";
        let entries = read_entries(Path::new("v.env"), env).unwrap();
        assert_eq!((entries["TOKEN"].as_str(), entries["region"].as_str()), ("abc=def", "eu"));
    }

    #[test]
    fn errors_name_the_file_and_position_but_not_values() {
        let error = read_entries(Path::new("s/v.yaml"), "a: 1\na: hunter22\n").unwrap_err();
        assert_eq!(error, "s/v.yaml:2:1: duplicate key `a` (first defined on line 1)");
        let error = read_entries(Path::new("v.yaml"), "a: [1,\n").unwrap_err();
        assert!(error.starts_with("v.yaml:"), "{error}");
        let error = read_entries(Path::new("c.json"), "{\"a\": \"hunter22\",\n}").unwrap_err();
        assert!(error.starts_with("c.json:2:1: not JSON"), "{error}");
        assert!(!error.contains("hunter22"));
        let error = read_entries(Path::new("v.env"), "A=1\nhunter22\n").unwrap_err();
        assert_eq!(error, "v.env:2:1: expected `NAME=value`");
        assert!(read_entries(Path::new("v.txt"), "").unwrap_err().contains(".yaml, .yml, .json or .env"));
    }
}
