//! Reusable task templates: `templates/<name>.yaml` in the DAGs folder defines a
//! task once, with parameters; a task uses it with `use: <name>` and `with:`
//! arguments, and may override any of its fields.
//!
//! Arguments are put in at parse time wherever the template says `${{ with.<name> }}`
//! (run-time templates keep `{{ ... }}`): a value that is only the placeholder takes
//! the argument as it is (a number, a list, a mapping); inside longer text, its text.
//! Nodes of a template carry spans offset by [`SPAN_BASE`] times (its number + 1),
//! so a problem found in a task built from it is reported at the use site and in
//! the template.

use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::diagnostic::Diagnostic;
use crate::yaml::{self, LineIndex, Node, Span, Value};

/// Spans at or above this belong to a template (far beyond any file's length).
pub const SPAN_BASE: usize = 1 << 40;

/// The templates folder, under the DAGs folder; its files are not DAG files.
pub const FOLDER: &str = "templates";

const FIELDS: &[&str] = &["description", "parameters", "task"];
const PARAMETER_FIELDS: &[&str] = &["default", "description"];

#[derive(Debug)]
pub struct TaskTemplate {
    pub name: String,
    /// How messages name its file.
    pub display_path: String,
    lines: LineIndex,
    /// Declared parameters and their defaults (`None`: required).
    parameters: BTreeMap<String, Option<Node>>,
    /// The task's fields, spans offset.
    task: Vec<(Node, Node)>,
    /// Its number: spans are offset by `SPAN_BASE * (number + 1)`.
    number: usize,
}

/// The templates of a DAGs folder, by name.
#[derive(Debug, Clone, Default)]
pub struct TaskTemplates {
    by_name: BTreeMap<String, Arc<TaskTemplate>>,
    /// Templates whose file has problems: a use names the file instead.
    broken: BTreeMap<String, String>,
    /// Changes when any template file does, so cached DAG parses are redone.
    pub fingerprint: [u8; 32],
}

/// A template file as read: its name (the file stem), how to show its path, its text.
pub struct TemplateFile {
    pub name: String,
    pub display_path: String,
    pub text: String,
}

impl TaskTemplates {
    /// Parses template files; problems come back as diagnostics of those files.
    pub fn parse(files: &[TemplateFile]) -> (TaskTemplates, Vec<Diagnostic>) {
        let mut templates = TaskTemplates::default();
        let mut diagnostics = Vec::new();
        let mut hash = Sha256::new();
        for (number, file) in files.iter().enumerate() {
            hash.update(file.name.as_bytes());
            hash.update([0]);
            hash.update(file.text.as_bytes());
            hash.update([0]);
            let lines = LineIndex::new(&file.text);
            let mut problems: Vec<(Span, String)> = Vec::new();
            let parsed = match yaml::parse(&file.text) {
                Ok(root) => read_template(&root, &mut problems),
                Err(error) => {
                    problems.push((error.span, error.message));
                    None
                }
            };
            for (span, message) in &problems {
                let (line, column) = lines.line_col(span.start);
                diagnostics.push(Diagnostic {
                    path: file.display_path.clone(),
                    line,
                    column,
                    message: message.clone(),
                });
            }
            match parsed {
                Some((parameters, task)) if problems.is_empty() => {
                    let base = SPAN_BASE * (number + 1);
                    let shift = |node: &Node| shifted(node, base);
                    let template = TaskTemplate {
                        name: file.name.clone(),
                        display_path: file.display_path.clone(),
                        lines,
                        parameters: parameters
                            .into_iter()
                            .map(|(name, default)| (name, default.as_ref().map(shift)))
                            .collect(),
                        task: task.iter().map(|(key, value)| (shift(key), shift(value))).collect(),
                        number,
                    };
                    templates.by_name.insert(file.name.clone(), Arc::new(template));
                }
                _ => {
                    templates.broken.insert(file.name.clone(), file.display_path.clone());
                }
            }
        }
        templates.fingerprint = hash.finalize().into();
        (templates, diagnostics)
    }

    pub fn get(&self, name: &str) -> Result<&TaskTemplate, Missing<'_>> {
        if let Some(template) = self.by_name.get(name) {
            return Ok(template);
        }
        match self.broken.get(name) {
            Some(path) => Err(Missing::Broken(path)),
            None => Err(Missing::Unknown(self.by_name.keys().map(String::as_str).collect())),
        }
    }

    /// The template a span belongs to, and the line and column there.
    pub fn locate(&self, span: Span) -> Option<(&TaskTemplate, usize, usize)> {
        let number = (span.start / SPAN_BASE).checked_sub(1)?;
        let template = self.by_name.values().find(|template| template.number == number)?;
        let (line, column) = template.lines.line_col(span.start % SPAN_BASE);
        Some((template, line, column))
    }
}

/// Why `use:` names no usable template.
pub enum Missing<'a> {
    /// Its file has problems, reported there.
    Broken(&'a str),
    /// No such template; these exist.
    Unknown(Vec<&'a str>),
}

impl TaskTemplate {
    /// The task's fields with `arguments` put in, and the use site's own fields
    /// (`own`, without `use` and `with`) replacing the template's of the same name.
    /// Problems with the arguments come back as (span, message) at the use site.
    pub fn expand(
        &self,
        with: Option<&Node>,
        own: &[(Node, Node)],
        use_span: Span,
    ) -> Result<Vec<(Node, Node)>, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut arguments: BTreeMap<&str, Node> = BTreeMap::new();
        match with.map(|node| &node.value) {
            None | Some(Value::Null) => {}
            Some(Value::Map(entries)) => {
                for (key, value) in entries {
                    let Some(name) = key.as_str() else {
                        problems.push((key.span, format!("`with`: names must be strings, found {}", key.kind())));
                        continue;
                    };
                    if self.parameters.contains_key(name) {
                        arguments.insert(name, value.clone());
                    } else {
                        let names = self.parameters.keys().map(String::as_str);
                        let hint = match updraft_core::suggest::did_you_mean(name, names) {
                            Some(suggestion) => format!(", did you mean `{suggestion}`?"),
                            None => String::new(),
                        };
                        problems.push((
                            key.span,
                            format!("`with`: template `{}` has no parameter `{name}`{hint}", self.name),
                        ));
                    }
                }
            }
            Some(_) => {
                let node = with.expect("matched Some");
                problems.push((node.span, format!("`with`: expected a mapping of arguments, found {}", node.kind())));
            }
        }
        for (name, default) in &self.parameters {
            if arguments.contains_key(name.as_str()) {
                continue;
            }
            match default {
                Some(default) => {
                    arguments.insert(name, default.clone());
                }
                None => problems.push((
                    use_span,
                    format!("template `{}` needs `{name}` in `with` ({})", self.name, self.display_path),
                )),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut fields: Vec<(Node, Node)> = Vec::with_capacity(self.task.len() + own.len());
        for (key, value) in &self.task {
            fields.push((key.clone(), substitute(value, &arguments, &mut problems, use_span)));
        }
        for (key, value) in own {
            match fields
                .iter_mut()
                .find(|(existing, _)| existing.as_str().is_some() && existing.as_str() == key.as_str())
            {
                Some(field) => *field = (key.clone(), value.clone()),
                None => fields.push((key.clone(), value.clone())),
            }
        }
        if problems.is_empty() { Ok(fields) } else { Err(problems) }
    }
}

fn read_template(root: &Node, problems: &mut Vec<(Span, String)>) -> Option<TemplateParts> {
    let Value::Map(entries) = &root.value else {
        problems
            .push((root.span, format!("a task template must be a mapping with a `task` key, found {}", root.kind())));
        return None;
    };
    let mut parameters = BTreeMap::new();
    let mut task = None;
    for (key, value) in entries {
        match key.as_str() {
            Some("description") => {}
            Some("parameters") => match &value.value {
                Value::Null => {}
                Value::Map(declared) => {
                    for (name, spec) in declared {
                        let Some(name_text) = name.as_str() else {
                            problems.push((name.span, "parameter names must be strings".to_string()));
                            continue;
                        };
                        if !name_text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || name_text.is_empty() {
                            problems.push((
                                name.span,
                                format!("parameter `{name_text}`: use letters, digits and `_` only"),
                            ));
                        }
                        let default = match &spec.value {
                            Value::Null => None,
                            Value::Map(fields) => {
                                let mut default = None;
                                for (field, field_value) in fields {
                                    match field.as_str() {
                                        Some("default") => default = Some(field_value.clone()),
                                        Some("description") => {}
                                        other => problems.push((
                                            field.span,
                                            format!(
                                                "parameter `{name_text}`: unknown field `{}` (known: {})",
                                                other.unwrap_or("?"),
                                                PARAMETER_FIELDS.join(", ")
                                            ),
                                        )),
                                    }
                                }
                                default
                            }
                            _ => {
                                problems.push((
                                    spec.span,
                                    format!(
                                        "parameter `{name_text}`: expected a mapping (`default`, `description`) or nothing, found {}",
                                        spec.kind()
                                    ),
                                ));
                                None
                            }
                        };
                        parameters.insert(name_text.to_string(), default);
                    }
                }
                _ => problems.push((
                    value.span,
                    format!("`parameters`: expected a mapping of parameter names, found {}", value.kind()),
                )),
            },
            Some("task") => match &value.value {
                Value::Map(fields) => task = Some(fields.clone()),
                _ => problems
                    .push((value.span, format!("`task`: expected a mapping of task fields, found {}", value.kind()))),
            },
            other => {
                let name = other.unwrap_or("?");
                let hint = match updraft_core::suggest::did_you_mean(name, FIELDS.iter().copied()) {
                    Some(suggestion) => format!(", did you mean `{suggestion}`?"),
                    None => String::new(),
                };
                problems.push((key.span, format!("unknown field `{name}`{hint}")));
            }
        }
    }
    let Some(task) = task else {
        problems.push((root.span, "a task template needs `task`: the fields of the task it makes".to_string()));
        return None;
    };
    for (key, value) in &task {
        if matches!(key.as_str(), Some("use" | "with")) {
            problems.push((key.span, "a template cannot use another template".to_string()));
        }
        check_placeholders(value, &parameters, problems);
    }
    Some((parameters, task))
}

type TemplateParts = (BTreeMap<String, Option<Node>>, Vec<(Node, Node)>);

/// A problem and where it is.
pub type Problem = (Span, String);

/// Every `${{ ... }}` in the template must name a declared parameter.
fn check_placeholders(node: &Node, parameters: &BTreeMap<String, Option<Node>>, problems: &mut Vec<(Span, String)>) {
    match &node.value {
        Value::String(text) => {
            for placeholder in placeholders(text) {
                match placeholder {
                    Ok((_, name)) if parameters.contains_key(name) => {}
                    Ok((_, name)) => problems
                        .push((node.span, format!("`${{{{ with.{name} }}}}`: no parameter `{name}` is declared"))),
                    Err(problem) => problems.push((node.span, problem)),
                }
            }
        }
        Value::Seq(items) => items.iter().for_each(|item| check_placeholders(item, parameters, problems)),
        Value::Map(entries) => {
            entries.iter().for_each(|(_, value)| check_placeholders(value, parameters, problems));
        }
        _ => {}
    }
}

/// `${{ with.<name> }}` in `text`: each one's byte range and name, or what is wrong.
fn placeholders(text: &str) -> Vec<Result<(std::ops::Range<usize>, &str), String>> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(start) = text[from..].find("${{").map(|at| at + from) {
        let Some(end) = text[start..].find("}}").map(|at| at + start + 2) else {
            found.push(Err(format!("`{}`: `${{{{` without `}}}}`", &text[start..])));
            break;
        };
        let inner = text[start + 3..end - 2].trim();
        match inner.strip_prefix("with.") {
            Some(name) if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                found.push(Ok((start..end, name)));
            }
            _ => found.push(Err(format!("`{}`: expected `${{{{ with.<parameter> }}}}`", &text[start..end]))),
        }
        from = end;
    }
    found
}

/// A copy of `node` with the arguments put in.
fn substitute(
    node: &Node,
    arguments: &BTreeMap<&str, Node>,
    problems: &mut Vec<(Span, String)>,
    use_span: Span,
) -> Node {
    let value = match &node.value {
        Value::String(text) if text.contains("${{") => {
            let found: Vec<(std::ops::Range<usize>, &str)> = placeholders(text).into_iter().flatten().collect();
            if let [(range, name)] = found.as_slice()
                && text[..range.start].trim().is_empty()
                && text[range.end..].trim().is_empty()
            {
                // The whole value: the argument as it is, where the user wrote it.
                return arguments.get(name).cloned().unwrap_or_else(|| node.clone());
            }
            let mut out = String::with_capacity(text.len());
            let mut at = 0;
            for (range, name) in found {
                out.push_str(&text[at..range.start]);
                match arguments.get(name).and_then(Node::scalar_text) {
                    Some(argument) => out.push_str(&argument),
                    None => problems.push((
                        use_span,
                        format!("`with.{name}` is used inside text in the template, so it must be a single value"),
                    )),
                }
                at = range.end;
            }
            out.push_str(&text[at..]);
            Value::String(out)
        }
        Value::Seq(items) => {
            Value::Seq(items.iter().map(|item| substitute(item, arguments, problems, use_span)).collect())
        }
        Value::Map(entries) => Value::Map(
            entries
                .iter()
                .map(|(key, value)| (key.clone(), substitute(value, arguments, problems, use_span)))
                .collect(),
        ),
        other => other.clone(),
    };
    Node { span: node.span, value }
}

fn shifted(node: &Node, base: usize) -> Node {
    let span = Span { start: node.span.start + base, end: node.span.end + base };
    let value = match &node.value {
        Value::Seq(items) => Value::Seq(items.iter().map(|item| shifted(item, base)).collect()),
        Value::Map(entries) => {
            Value::Map(entries.iter().map(|(key, value)| (shifted(key, base), shifted(value, base))).collect())
        }
        other => other.clone(),
    };
    Node { span, value }
}
