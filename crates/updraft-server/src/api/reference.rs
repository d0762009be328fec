//! The API reference page: the OpenAPI document rendered once, server-side, as
//! plain HTML (no JavaScript, nothing fetched from elsewhere).

use std::fmt::Write;

use serde_json::Value;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

pub fn render(document: &Value) -> String {
    let mut html = String::with_capacity(64 * 1024);
    let title = document["info"]["title"].as_str().unwrap_or("API");
    let version = document["info"]["version"].as_str().unwrap_or("");
    let _ = write!(
        html,
        concat!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
            "<title>{title} reference</title><style>",
            "body{{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:60rem;padding:1rem 1.5rem;color:#1d2430}}",
            "code,pre{{font:13px ui-monospace,monospace}}h2{{margin-top:2.2rem;border-bottom:1px solid #e3e7ee}}",
            ".op{{border:1px solid #e3e7ee;border-radius:6px;margin:1rem 0;padding:.6rem 1rem}}",
            ".method{{display:inline-block;min-width:4.2rem;font-weight:700;text-transform:uppercase}}",
            ".get{{color:#1d6fd1}}.post{{color:#1e8a4c}}.patch,.put{{color:#a86500}}.delete{{color:#c0392b}}",
            "table{{border-collapse:collapse;width:100%;margin:.4rem 0}}th,td{{text-align:left;padding:.25rem .5rem;",
            "border-bottom:1px solid #eef1f5;vertical-align:top}}th{{font-weight:600}}.muted{{color:#667085}}",
            "</style></head><body><h1>{title} <small class=\"muted\">{version}</small></h1>"
        ),
        title = escape(title),
        version = escape(version)
    );
    if let Some(description) = document["info"]["description"].as_str() {
        let _ = write!(html, "<p>{}</p>", escape(description));
    }
    html.push_str(
        "<p>The machine-readable document: <a href=\"/api/v1/openapi.json\"><code>/api/v1/openapi.json</code></a> \
         (OpenAPI 3.1).</p>",
    );
    let empty = serde_json::Map::new();
    let paths = document["paths"].as_object().unwrap_or(&empty);
    let tags: Vec<&str> = document["tags"]
        .as_array()
        .map(|tags| tags.iter().filter_map(|tag| tag["name"].as_str()).collect())
        .unwrap_or_default();
    for tag in &tags {
        let _ = write!(html, "<h2 id=\"{0}\">{0}</h2>", escape(tag));
        for (path, item) in paths {
            for method in METHODS {
                let operation = &item[method];
                let in_tag = operation["tags"].as_array().is_some_and(|tags| tags.iter().any(|t| t == tag));
                if in_tag {
                    operation_html(&mut html, method, path, operation);
                }
            }
        }
    }
    html.push_str("<h2 id=\"schemas\">Schemas</h2>");
    for (name, schema) in document["components"]["schemas"].as_object().unwrap_or(&empty) {
        schema_html(&mut html, name, schema);
    }
    html.push_str("</body></html>");
    html
}

fn operation_html(html: &mut String, method: &str, path: &str, operation: &Value) {
    let _ = write!(
        html,
        "<div class=\"op\"><div><span class=\"method {method}\">{method}</span> <code>{}</code></div>",
        escape(path)
    );
    for key in ["summary", "description"] {
        if let Some(text) = operation[key].as_str() {
            let _ = write!(html, "<p>{}</p>", escape(text));
        }
    }
    if let Some(parameters) = operation["parameters"].as_array().filter(|list| !list.is_empty()) {
        html.push_str("<table><tr><th>parameter</th><th>in</th><th>type</th><th>description</th></tr>");
        for parameter in parameters {
            let required = if parameter["required"] == true { "" } else { " <span class=\"muted\">(optional)</span>" };
            let _ = write!(
                html,
                "<tr><td><code>{}</code>{required}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(parameter["name"].as_str().unwrap_or("")),
                escape(parameter["in"].as_str().unwrap_or("")),
                type_html(&parameter["schema"]),
                escape(parameter["description"].as_str().unwrap_or(""))
            );
        }
        html.push_str("</table>");
    }
    if let Some(content) = operation["requestBody"]["content"].as_object() {
        for (media, body) in content {
            let _ = write!(html, "<p>Body (<code>{}</code>): {}</p>", escape(media), type_html(&body["schema"]));
        }
    }
    if let Some(responses) = operation["responses"].as_object() {
        html.push_str("<table><tr><th>status</th><th>body</th><th>description</th></tr>");
        for (status, response) in responses {
            let body: Vec<String> = response["content"]
                .as_object()
                .map(|content| content.values().map(|body| type_html(&body["schema"])).collect())
                .unwrap_or_default();
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(status),
                body.join(", "),
                escape(response["description"].as_str().unwrap_or(""))
            );
        }
        html.push_str("</table>");
    }
    html.push_str("</div>");
}

fn schema_html(html: &mut String, name: &str, schema: &Value) {
    let _ = write!(html, "<div class=\"op\" id=\"schema-{0}\"><strong>{0}</strong>", escape(name));
    if let Some(description) = schema["description"].as_str() {
        let _ = write!(html, "<p>{}</p>", escape(description));
    }
    let required: Vec<&str> =
        schema["required"].as_array().map(|names| names.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    // A flattened struct is an `allOf` of its parts.
    let mut parts = vec![schema];
    if let Some(all_of) = schema["allOf"].as_array() {
        parts.extend(all_of);
    }
    let mut rows = String::new();
    for part in parts {
        for (field, property) in part["properties"].as_object().into_iter().flatten() {
            let optional = if required.contains(&field.as_str())
                || part["required"].as_array().is_some_and(|r| r.iter().any(|n| n == field.as_str()))
            {
                ""
            } else {
                " <span class=\"muted\">(optional)</span>"
            };
            let _ = write!(
                rows,
                "<tr><td><code>{}</code>{optional}</td><td>{}</td><td>{}</td></tr>",
                escape(field),
                type_html(property),
                escape(property["description"].as_str().unwrap_or(""))
            );
        }
    }
    if !rows.is_empty() {
        let _ = write!(html, "<table><tr><th>field</th><th>type</th><th>description</th></tr>{rows}</table>");
    }
    html.push_str("</div>");
}

/// A schema's type in a few words, with named schemas linked.
fn type_html(schema: &Value) -> String {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap_or(reference);
        return format!("<a href=\"#schema-{0}\">{0}</a>", escape(name));
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(options) = schema[key].as_array() {
            return options.iter().map(type_html).collect::<Vec<_>>().join(" or ");
        }
    }
    let kinds: Vec<String> = match &schema["type"] {
        Value::String(kind) => vec![kind.clone()],
        Value::Array(kinds) => kinds.iter().filter_map(|kind| kind.as_str().map(str::to_string)).collect(),
        _ => vec!["any".to_string()],
    };
    kinds
        .iter()
        .map(|kind| match kind.as_str() {
            "array" => format!("list of {}", type_html(&schema["items"])),
            _ => match schema["format"].as_str() {
                Some(format) => format!("{kind} ({})", escape(format)),
                None => escape(kind),
            },
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
