//! A YAML document as a tree in which every node keeps its span, built from the
//! parser's events. Our own tree (rather than a generic YAML value) keeps duplicate
//! keys visible, resolves scalars by the YAML 1.2 core schema (so `yes` stays a
//! string), and lets validation report every problem instead of the first.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span as ParserSpan};

/// A range of the source in characters (not bytes), as the parser counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    fn from_parser(span: ParserSpan) -> Span {
        Span { start: span.start.index(), end: span.end.index() }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub span: Span,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A string scalar. Also keeps plain scalars' text for fields (like `env`) that
    /// take any scalar as text.
    String(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::String(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::String(text) => Some(text),
            _ => None,
        }
    }

    /// The text of any scalar: what the user wrote for numbers and booleans.
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::String(text) => Some(text.clone()),
            Value::Bool(value) => Some(value.to_string()),
            Value::Int(value) => Some(value.to_string()),
            Value::Float(value) => Some(value.to_string()),
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match &self.value {
            Value::Null => serde_json::Value::Null,
            Value::Bool(value) => serde_json::Value::Bool(*value),
            Value::Int(value) => serde_json::Value::from(*value),
            Value::Float(value) => {
                serde_json::Number::from_f64(*value).map(serde_json::Value::Number).unwrap_or(serde_json::Value::Null)
            }
            Value::String(text) => serde_json::Value::String(text.clone()),
            Value::Seq(items) => serde_json::Value::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => serde_json::Value::Object(
                entries.iter().map(|(key, value)| (key.scalar_text().unwrap_or_default(), value.to_json())).collect(),
            ),
        }
    }
}

/// A problem found while building the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub span: Span,
    pub message: String,
}

/// Parses one YAML document. An empty file is `Null`. Errors stop the build: after
/// a syntax error the rest of the file cannot be trusted.
pub fn parse(text: &str) -> Result<Node, YamlError> {
    let mut builder = Builder { parser: Parser::new_from_str(text), anchors: HashMap::new(), text };
    builder.document()
}

struct Builder<'input> {
    parser: Parser<'input, saphyr_parser::StrInput<'input>>,
    anchors: HashMap<usize, Node>,
    text: &'input str,
}

impl<'input> Builder<'input> {
    fn next(&mut self) -> Result<(Event<'input>, Span), YamlError> {
        match self.parser.next_event() {
            Some(Ok((event, span))) => Ok((event, Span::from_parser(span))),
            Some(Err(error)) => {
                let at = error.marker().index();
                let mut message = format!("invalid YAML: {}", error.info());
                if self.text.chars().nth(at) == Some('@') || self.text.chars().nth(at.saturating_sub(1)) == Some('@') {
                    message.push_str(" (values starting with `@` must be quoted, e.g. \"@daily\")");
                }
                Err(YamlError { span: Span { start: at, end: at + 1 }, message })
            }
            None => Err(YamlError { span: Span::default(), message: "unexpected end of YAML".to_string() }),
        }
    }

    fn document(&mut self) -> Result<Node, YamlError> {
        let mut root = None;
        loop {
            let (event, span) = self.next()?;
            match event {
                Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
                Event::DocumentStart(_) => {
                    if root.is_some() {
                        return Err(YamlError {
                            span,
                            message: "a DAG file holds one YAML document; found a second `---`".to_string(),
                        });
                    }
                    let (event, span) = self.next()?;
                    root = Some(self.node(event, span)?);
                }
                Event::StreamEnd => {
                    return Ok(root.unwrap_or(Node { span, value: Value::Null }));
                }
                other => root = Some(self.node(other, span)?),
            }
        }
    }

    fn node(&mut self, event: Event<'input>, span: Span) -> Result<Node, YamlError> {
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                let is_str_tag = tag.as_ref().is_some_and(|tag| tag.suffix == "str");
                let value = if style == ScalarStyle::Plain && !is_str_tag {
                    resolve_plain(&text)
                } else {
                    Value::String(text.into_owned())
                };
                let node = Node { span, value };
                self.remember(anchor, &node);
                Ok(node)
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                let end = loop {
                    let (event, item_span) = self.next()?;
                    if let Event::SequenceEnd = event {
                        break item_span;
                    }
                    items.push(self.node(event, item_span)?);
                };
                let node =
                    Node { span: Span { start: span.start, end: end.end.max(span.end) }, value: Value::Seq(items) };
                self.remember(anchor, &node);
                Ok(node)
            }
            Event::MappingStart(anchor, _) => {
                let mut entries: Vec<(Node, Node)> = Vec::new();
                let mut merged: Vec<(Node, Node)> = Vec::new();
                let end = loop {
                    let (event, key_span) = self.next()?;
                    if let Event::MappingEnd = event {
                        break key_span;
                    }
                    let key = self.node(event, key_span)?;
                    let (event, value_span) = self.next()?;
                    let value = self.node(event, value_span)?;
                    if key.as_str() == Some("<<") && matches!(key.value, Value::String(_)) {
                        merged.extend(merge_sources(&value)?);
                        continue;
                    }
                    if let Some((first, _)) = entries.iter().find(|(existing, _)| same_key(existing, &key)) {
                        let (line, _) = LineIndex::new(self.text).line_col(first.span.start);
                        return Err(YamlError {
                            span: key.span,
                            message: format!(
                                "duplicate key `{}` (first defined on line {line})",
                                key.scalar_text().unwrap_or_default()
                            ),
                        });
                    }
                    entries.push((key, value));
                };
                // Merge keys (`<<: *defaults`) add what the mapping does not set itself.
                for (key, value) in merged {
                    if !entries.iter().any(|(existing, _)| same_key(existing, &key)) {
                        entries.push((key, value));
                    }
                }
                let node =
                    Node { span: Span { start: span.start, end: end.end.max(span.end) }, value: Value::Map(entries) };
                self.remember(anchor, &node);
                Ok(node)
            }
            Event::Alias(anchor) => match self.anchors.get(&anchor) {
                // The alias points where it is used; errors inside refer to this use.
                Some(node) => Ok(Node { span, ..node.clone() }),
                None => Err(YamlError { span, message: "alias to an unknown anchor".to_string() }),
            },
            other => Err(YamlError { span, message: format!("unexpected YAML event {other:?}") }),
        }
    }

    fn remember(&mut self, anchor: usize, node: &Node) {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
    }
}

fn same_key(a: &Node, b: &Node) -> bool {
    a.value == b.value
}

fn merge_sources(value: &Node) -> Result<Vec<(Node, Node)>, YamlError> {
    match &value.value {
        Value::Map(entries) => Ok(entries.clone()),
        Value::Seq(items) => {
            let mut out = Vec::new();
            for item in items {
                match &item.value {
                    Value::Map(entries) => out.extend(entries.iter().cloned()),
                    _ => {
                        return Err(YamlError {
                            span: item.span,
                            message: "a merge key `<<` takes mappings".to_string(),
                        });
                    }
                }
            }
            Ok(out)
        }
        _ => Err(YamlError {
            span: value.span,
            message: "a merge key `<<` takes a mapping or a list of mappings".to_string(),
        }),
    }
}

/// The YAML 1.2 core schema for plain scalars.
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(value) = i64::from_str_radix(hex, 16)
    {
        return Value::Int(value);
    }
    if let Some(octal) = text.strip_prefix("0o")
        && let Ok(value) = i64::from_str_radix(octal, 8)
    {
        return Value::Int(value);
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && let Ok(value) = text.parse::<i64>()
    {
        return Value::Int(value);
    }
    if looks_like_float(digits)
        && let Ok(value) = text.parse::<f64>()
    {
        return Value::Float(value);
    }
    Value::String(text.to_string())
}

/// `[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?` or `\.[0-9]+(...)`: the core schema's float.
fn looks_like_float(text: &str) -> bool {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], Some(&text[at + 1..])),
        None => (text, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (mantissa, None),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match fraction {
        Some(fraction) => digits(whole) && digits(fraction) && !(whole.is_empty() && fraction.is_empty()),
        None => !whole.is_empty() && digits(whole),
    };
    let exponent_ok = match exponent {
        Some(exponent) => {
            let exponent = exponent.strip_prefix(['-', '+']).unwrap_or(exponent);
            !exponent.is_empty() && digits(exponent)
        }
        None => fraction.is_some(),
    };
    mantissa_ok && exponent_ok
}

/// Maps character offsets to 1-based line and column, for rendering diagnostics.
#[derive(Debug)]
pub struct LineIndex {
    /// Character offset at which each line starts.
    line_starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(text: &str) -> LineIndex {
        let mut line_starts = vec![0];
        for (offset, c) in text.chars().enumerate() {
            if c == '\n' {
                line_starts.push(offset + 1);
            }
        }
        LineIndex { line_starts }
    }

    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let line = self.line_starts.partition_point(|&start| start <= offset).max(1);
        (line, offset - self.line_starts[line - 1] + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(node: &Node, index: &LineIndex) -> String {
        let (line, col) = index.line_col(node.span.start);
        let inner = match &node.value {
            Value::Seq(items) => format!("[{}]", items.iter().map(|n| show(n, index)).collect::<Vec<_>>().join(", ")),
            Value::Map(entries) => format!(
                "{{{}}}",
                entries
                    .iter()
                    .map(|(k, v)| format!("{}: {}", show(k, index), show(v, index)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            other => format!("{other:?}"),
        };
        format!("{inner}@{line}:{col}")
    }

    fn check(text: &str, expect: &str) {
        let index = LineIndex::new(text);
        let actual = match parse(text) {
            Ok(node) => show(&node, &index),
            Err(error) => {
                let (line, col) = index.line_col(error.span.start);
                format!("error {line}:{col}: {}", error.message)
            }
        };
        assert_eq!(actual, expect, "input {text:?}");
    }

    #[test]
    fn scalars() {
        check("a: 1", "{String(\"a\")@1:1: Int(1)@1:4}@1:1");
        check(
            "a: yes\nb: true\nc: '1'\nd: 1.5\ne: ~\nf: 2024-01-01",
            "{String(\"a\")@1:1: String(\"yes\")@1:4, String(\"b\")@2:1: Bool(true)@2:4, String(\"c\")@3:1: String(\"1\")@3:4, String(\"d\")@4:1: Float(1.5)@4:4, String(\"e\")@5:1: Null@5:4, String(\"f\")@6:1: String(\"2024-01-01\")@6:4}@1:1",
        );
        check(
            "- 0x1f\n- 0o17\n- -3\n- 1e3\n- 1.e2\n- .5\n- 1_000",
            "[Int(31)@1:3, Int(15)@2:3, Int(-3)@3:3, Float(1000.0)@4:3, Float(100.0)@5:3, Float(0.5)@6:3, String(\"1_000\")@7:3]@1:1",
        );
        check("", "Null@1:1");
    }

    #[test]
    fn structure_errors() {
        check("a: 1\na: 2", "error 2:1: duplicate key `a` (first defined on line 1)");
        check("a: [1, 2", "error 1:9: invalid YAML: while parsing a flow sequence, expected ',' or ']'");
        check(
            "schedule: @daily",
            "error 1:11: invalid YAML: unexpected character: `@' (values starting with `@` must be quoted, e.g. \"@daily\")",
        );
        check("a: 1\n---\nb: 2", "error 2:1: a DAG file holds one YAML document; found a second `---`");
    }

    #[test]
    fn anchors_and_merges() {
        check(
            "base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3",
            "{String(\"base\")@1:1: {String(\"x\")@1:11: Int(1)@1:14, String(\"y\")@1:17: Int(2)@1:20}@1:7, String(\"use\")@2:1: {String(\"y\")@4:3: Int(3)@4:6, String(\"x\")@1:11: Int(1)@1:14}@3:3}@1:1",
        );
    }

    #[test]
    fn line_index() {
        let index = LineIndex::new("ab\ncd\n\né");
        assert_eq!(index.line_col(0), (1, 1));
        assert_eq!(index.line_col(1), (1, 2));
        assert_eq!(index.line_col(3), (2, 1));
        assert_eq!(index.line_col(6), (3, 1));
        assert_eq!(index.line_col(7), (4, 1));
    }
}
