//! Dynamic fan-out: a task with `for_each` becomes one mapped task instance per
//! item when its upstream tasks are done. Its run starts with one unexpanded
//! instance (map index -1); the scheduler asks for the expansion and the store
//! reads the items here, from the literal list or an upstream task's output.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::id::TaskId;

/// The map index of a task instance that is not mapped (or not yet expanded).
pub const UNMAPPED: i32 = -1;

/// How people name a task instance: `load`, or `load[3]` for a mapped one (a
/// negative index: not mapped).
pub fn instance_label(task_id: &str, map_index: i32) -> String {
    if map_index < 0 { task_id.to_string() } else { format!("{task_id}[{map_index}]") }
}

/// Items per mapped task unless the task says otherwise (Airflow's `max_map_length`).
pub const DEFAULT_LIMIT: u32 = 1024;

/// Where a mapped task's items come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForEach {
    /// A list written in the DAG file.
    Items(Vec<Value>),
    /// `{{ tasks.<task>.output<path> }}`: a JSON array in an upstream task's output.
    Output { task: TaskId, path: Vec<PathStep> },
}

/// One step into a JSON value: `.name`, `["name"]` or `[3]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathStep {
    Key(String),
    Index(usize),
}

impl fmt::Display for PathStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathStep::Key(key) if key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => write!(f, ".{key}"),
            PathStep::Key(key) => write!(f, "[{key:?}]"),
            PathStep::Index(index) => write!(f, "[{index}]"),
        }
    }
}

/// Why a mapped task could not be expanded; the task fails with this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("for_each: task `{task}` left no output")]
    NoOutput { task: String },
    #[error("for_each: the output of task `{task}` is not JSON: {reason}")]
    NotJson { task: String, reason: String },
    #[error("for_each: `{expression}` matches nothing in the output of task `{task}`")]
    NoMatch { task: String, expression: String },
    #[error("for_each: `{expression}` is {found}, not a list")]
    NotList { expression: String, found: &'static str },
    #[error("for_each: {count} items, more than the limit of {limit} (raise `for_each_limit` to allow more)")]
    TooMany { count: usize, limit: u32 },
}

impl ForEach {
    /// The expression as written, for messages.
    pub fn expression(&self) -> String {
        match self {
            ForEach::Items(items) => format!("a list of {} items", items.len()),
            ForEach::Output { task, path } => {
                let path: String = path.iter().map(ToString::to_string).collect();
                format!("tasks.{task}.output{path}")
            }
        }
    }

    /// The upstream task whose output holds the items, if any.
    pub fn source_task(&self) -> Option<&TaskId> {
        match self {
            ForEach::Items(_) => None,
            ForEach::Output { task, .. } => Some(task),
        }
    }

    /// The items, given the run's outputs (JSON text by task id, as
    /// [`collect_outputs`] makes them).
    pub fn items(&self, outputs: &BTreeMap<String, String>, limit: u32) -> Result<Vec<Value>, MapError> {
        let items = match self {
            ForEach::Items(items) => items.clone(),
            ForEach::Output { task, path } => {
                let task = task.as_str();
                let text = outputs.get(task).ok_or_else(|| MapError::NoOutput { task: task.to_string() })?;
                let mut value: Value = serde_json::from_str(text)
                    .map_err(|error| MapError::NotJson { task: task.to_string(), reason: error.to_string() })?;
                for step in path {
                    let next = match (step, &mut value) {
                        (PathStep::Key(key), Value::Object(map)) => map.remove(key),
                        (PathStep::Index(index), Value::Array(list)) if *index < list.len() => {
                            Some(list.swap_remove(*index))
                        }
                        _ => None,
                    };
                    value = next
                        .ok_or_else(|| MapError::NoMatch { task: task.to_string(), expression: self.expression() })?;
                }
                match value {
                    Value::Array(items) => items,
                    other => return Err(MapError::NotList { expression: self.expression(), found: json_kind(&other) }),
                }
            }
        };
        if items.len() > limit as usize {
            return Err(MapError::TooMany { count: items.len(), limit });
        }
        Ok(items)
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A run's outputs by task id from its task instances' rows `(task_id, map_index,
/// output)`: an unmapped task's output as it is, a mapped task's as the list of its
/// instances' outputs in map-index order (`null` for an instance without one).
pub fn collect_outputs(rows: impl IntoIterator<Item = (String, i32, Option<String>)>) -> BTreeMap<String, String> {
    let mut single = BTreeMap::new();
    let mut mapped: BTreeMap<String, Vec<(i32, Option<String>)>> = BTreeMap::new();
    for (task_id, map_index, output) in rows {
        if map_index == UNMAPPED {
            if let Some(output) = output {
                single.insert(task_id, output);
            }
        } else {
            mapped.entry(task_id).or_default().push((map_index, output));
        }
    }
    for (task_id, mut outputs) in mapped {
        outputs.sort_by_key(|(map_index, _)| *map_index);
        let parts: Vec<&str> = outputs.iter().map(|(_, output)| output.as_deref().unwrap_or("null")).collect();
        single.insert(task_id, format!("[{}]", parts.join(",")));
    }
    single
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn output(task: &str, path: Vec<PathStep>) -> ForEach {
        ForEach::Output { task: TaskId::new(task).unwrap(), path }
    }

    #[test]
    fn items_come_from_a_list_or_a_path_into_an_output() {
        let outputs = BTreeMap::from([("codes".to_string(), r#"{"data": {"codes": ["A", "B", 3]}}"#.to_string())]);
        let path = vec![PathStep::Key("data".into()), PathStep::Key("codes".into())];
        assert_eq!(output("codes", path).items(&outputs, 10).unwrap(), vec![json!("A"), json!("B"), json!(3)]);
        let literal = ForEach::Items(vec![json!(1), json!({"a": 2})]);
        assert_eq!(literal.items(&BTreeMap::new(), 10).unwrap().len(), 2);
        let indexed = vec![PathStep::Key("data".into()), PathStep::Key("codes".into()), PathStep::Index(9)];
        assert_eq!(
            output("codes", indexed).items(&outputs, 10).unwrap_err().to_string(),
            "for_each: `tasks.codes.output.data.codes[9]` matches nothing in the output of task `codes`"
        );
    }

    #[test]
    fn what_is_not_a_list_or_too_long_is_an_error_naming_it() {
        let outputs =
            BTreeMap::from([("n".to_string(), "42".to_string()), ("many".to_string(), "[1,2,3]".to_string())]);
        assert_eq!(
            output("n", vec![]).items(&outputs, 10).unwrap_err().to_string(),
            "for_each: `tasks.n.output` is a number, not a list"
        );
        assert_eq!(output("many", vec![]).items(&outputs, 2).unwrap_err(), MapError::TooMany { count: 3, limit: 2 });
        assert_eq!(output("gone", vec![]).items(&outputs, 2).unwrap_err(), MapError::NoOutput { task: "gone".into() });
        assert_eq!(PathStep::Key("a b".into()).to_string(), "[\"a b\"]");
    }

    #[test]
    fn a_mapped_task_hands_on_the_list_of_its_instances_outputs() {
        let rows = vec![
            ("fetch".to_string(), 1, Some(r#"{"b":2}"#.to_string())),
            ("list".to_string(), UNMAPPED, Some("[1,2]".to_string())),
            ("fetch".to_string(), 0, Some(r#"{"a":1}"#.to_string())),
            ("fetch".to_string(), 2, None),
            ("quiet".to_string(), UNMAPPED, None),
        ];
        let outputs = collect_outputs(rows);
        assert_eq!(outputs["fetch"], r#"[{"a":1},{"b":2},null]"#);
        assert_eq!(outputs["list"], "[1,2]");
        assert!(!outputs.contains_key("quiet"));
    }
}
