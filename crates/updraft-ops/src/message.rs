//! What an alert says, and how each kind of notifier shows it: Slack's blocks, a
//! webhook's JSON, an email's subject and text. Pure: no I/O here.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Items a list in a message shows before "and N more".
pub const LIST_LIMIT: usize = 10;

/// One message, as queued (its JSON is the outbox row's payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub kind: NoticeKind,
    /// One line: what happened.
    pub title: String,
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dag_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map_index: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub try_number: Option<u32>,
    /// Tries allowed in all (retries + 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tries: Option<u32>,
    /// Why, in a line (the attempt's reason, the deadline missed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The last lines of the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
    /// Where to look in the UI: the attempt's log, or the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Lists (the digest's kinds of trouble, a summary's alerts held back).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sections: Vec<Section>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    TaskFailed,
    TaskRetry,
    TaskSucceeded,
    RunFailed,
    RunSucceeded,
    DeadlineMissed,
    Digest,
    /// Alerts over a notifier's rate limit, in one message.
    Summary,
}

impl NoticeKind {
    fn emoji(self) -> &'static str {
        match self {
            NoticeKind::TaskFailed | NoticeKind::RunFailed => ":red_circle:",
            NoticeKind::TaskRetry => ":large_orange_circle:",
            NoticeKind::TaskSucceeded | NoticeKind::RunSucceeded => ":large_green_circle:",
            NoticeKind::DeadlineMissed => ":alarm_clock:",
            NoticeKind::Digest | NoticeKind::Summary => ":clipboard:",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    pub title: String,
    pub items: Vec<String>,
    /// Items beyond those listed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more: usize,
}

fn is_zero(value: &usize) -> bool {
    *value == 0
}

impl Section {
    /// A section listing at most [`LIST_LIMIT`] of `items`.
    pub fn new(title: impl Into<String>, mut items: Vec<String>) -> Section {
        let more = items.len().saturating_sub(LIST_LIMIT);
        items.truncate(LIST_LIMIT);
        Section { title: title.into(), items, more }
    }
}

impl Notice {
    pub fn new(kind: NoticeKind, title: impl Into<String>, at: Timestamp) -> Notice {
        Notice {
            kind,
            title: title.into(),
            at,
            dag_id: None,
            run_id: None,
            task_id: None,
            map_index: None,
            try_number: None,
            max_tries: None,
            reason: None,
            log_tail: None,
            url: None,
            sections: Vec::new(),
        }
    }

    /// The task as people name it: `load`, or `load[3]` for a mapped instance.
    pub fn task_label(&self) -> Option<String> {
        let task = self.task_id.as_deref()?;
        Some(updraft_core::mapping::instance_label(task, self.map_index.unwrap_or(updraft_core::mapping::UNMAPPED)))
    }

    /// Name/value pairs every rendering shows.
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = Vec::new();
        if let Some(dag_id) = &self.dag_id {
            fields.push(("DAG", dag_id.clone()));
        }
        if let Some(task) = self.task_label() {
            fields.push(("Task", task));
        }
        if let Some(run_id) = &self.run_id {
            fields.push(("Run", run_id.clone()));
        }
        if let Some(try_number) = self.try_number {
            let of = self.max_tries.map_or(String::new(), |max| format!(" of {max}"));
            fields.push(("Try", format!("{try_number}{of}")));
        }
        fields
    }

    /// Slack's incoming-webhook JSON: a plain `text` (notifications, old
    /// clients) and blocks (the message people read).
    pub fn slack(&self, channel: Option<&str>, username: Option<&str>) -> serde_json::Value {
        let mut blocks = vec![json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": format!("{} *{}*", self.kind.emoji(), slack_escape(&self.title))},
        })];
        let fields = self.fields();
        if !fields.is_empty() {
            let fields: Vec<serde_json::Value> = fields
                .iter()
                .map(|(name, value)| json!({"type": "mrkdwn", "text": format!("*{name}*\n{}", slack_escape(value))}))
                .collect();
            blocks.push(json!({"type": "section", "fields": fields}));
        }
        if let Some(reason) = &self.reason {
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": slack_escape(reason)}}));
        }
        if let Some(tail) = &self.log_tail {
            // Slack refuses a text over 3,000 characters; keep the end of the log.
            let tail = last_chars(tail, 2_800);
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("```{}```", slack_escape(&tail.replace("```", "'''")))}}));
        }
        for section in &self.sections {
            let mut text = format!("*{}*", slack_escape(&section.title));
            for item in &section.items {
                text.push_str(&format!("\n• {}", slack_escape(item)));
            }
            if section.more > 0 {
                text.push_str(&format!("\n… and {} more", section.more));
            }
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": last_chars(&text, 2_900)}}));
        }
        if let Some(url) = &self.url {
            let label = if self.try_number.is_some() { "View the log" } else { "Open in Updraft" };
            blocks
                .push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("<{url}|{label}>")}]}));
        }
        let mut message = json!({"text": self.plain_title(), "blocks": blocks});
        if let Some(channel) = channel {
            message["channel"] = json!(channel);
        }
        if let Some(username) = username {
            message["username"] = json!(username);
        }
        message
    }

    /// A generic webhook's JSON: the notice's fields as they are, plus `source`.
    pub fn webhook(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("a notice is JSON");
        value["source"] = json!("updraft");
        value
    }

    /// An email's subject and plain-text body.
    pub fn email(&self) -> (String, String) {
        let mut body = format!("{}\n\n", self.title);
        for (name, value) in self.fields() {
            body.push_str(&format!("{name}: {value}\n"));
        }
        if let Some(reason) = &self.reason {
            body.push_str(&format!("\n{reason}\n"));
        }
        if let Some(tail) = &self.log_tail {
            body.push_str("\nLast lines of the log:\n");
            for line in tail.lines() {
                body.push_str(&format!("    {line}\n"));
            }
        }
        for section in &self.sections {
            body.push_str(&format!("\n{}\n", section.title));
            for item in &section.items {
                body.push_str(&format!("  - {item}\n"));
            }
            if section.more > 0 {
                body.push_str(&format!("  ... and {} more\n", section.more));
            }
        }
        if let Some(url) = &self.url {
            body.push_str(&format!("\n{url}\n"));
        }
        (format!("[Updraft] {}", self.plain_title()), body)
    }

    fn plain_title(&self) -> String {
        self.title.replace('\n', " ")
    }
}

/// `2026-01-02 03:04 UTC`: times in messages.
pub fn short_time(at: Timestamp) -> String {
    at.strftime("%Y-%m-%d %H:%M UTC").to_string()
}

/// Slack's mrkdwn treats `&`, `<` and `>` as markup.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The last `limit` characters of `text`, cut at a line start when one is near.
pub fn last_chars(text: &str, limit: usize) -> String {
    let count = text.chars().count();
    if count <= limit {
        return text.to_string();
    }
    let tail: String = text.chars().skip(count - limit).collect();
    match tail.find('\n') {
        Some(at) if at < limit / 4 => tail[at + 1..].to_string(),
        _ => tail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> Notice {
        let mut notice =
            Notice::new(NoticeKind::TaskFailed, "etl.load failed", "2026-01-02T03:04:05Z".parse().unwrap());
        notice.dag_id = Some("etl".into());
        notice.run_id = Some("scheduled__2026-01-02T00:00:00+00:00".into());
        notice.task_id = Some("load".into());
        notice.map_index = Some(3);
        notice.try_number = Some(2);
        notice.max_tries = Some(2);
        notice.reason = Some("exit code 1".into());
        notice.log_tail = Some("connecting\nerror: <refused> & gone".into());
        notice.url = Some("http://localhost:8080/dags/etl/runs/r/tasks/load?map_index=3&try=2".into());
        notice
    }

    #[test]
    fn slack_shows_the_fields_the_tail_and_a_link() {
        let message = failed().slack(Some("#data"), None);
        assert_eq!(message["text"], "etl.load failed");
        assert_eq!(message["channel"], "#data");
        let blocks = message["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["text"]["text"], ":red_circle: *etl.load failed*");
        let fields: Vec<&str> =
            blocks[1]["fields"].as_array().unwrap().iter().map(|f| f["text"].as_str().unwrap()).collect();
        assert_eq!(
            fields,
            ["*DAG*\netl", "*Task*\nload[3]", "*Run*\nscheduled__2026-01-02T00:00:00+00:00", "*Try*\n2 of 2"]
        );
        assert_eq!(blocks[3]["text"]["text"], "```connecting\nerror: &lt;refused&gt; &amp; gone```");
        assert_eq!(
            blocks[4]["elements"][0]["text"],
            "<http://localhost:8080/dags/etl/runs/r/tasks/load?map_index=3&try=2|View the log>"
        );
    }

    #[test]
    fn the_webhook_gets_the_notice_as_json_and_email_as_text() {
        let value = failed().webhook();
        assert_eq!(value["kind"], "task_failed");
        assert_eq!(value["source"], "updraft");
        assert_eq!(value["map_index"], 3);
        let back: Notice = serde_json::from_value(value).unwrap();
        assert_eq!(back, failed());
        let (subject, body) = failed().email();
        assert_eq!(subject, "[Updraft] etl.load failed");
        assert!(body.contains("Task: load[3]\n") && body.contains("    error: <refused> & gone\n"), "{body}");
    }

    #[test]
    fn long_lists_and_logs_are_cut() {
        let section = Section::new("Failed runs", (0..15).map(|n| n.to_string()).collect());
        assert_eq!((section.items.len(), section.more), (10, 5));
        let log: String = (0..2000).map(|n| format!("line {n}\n")).collect();
        let cut = last_chars(&log, 100);
        assert!(cut.starts_with("line ") && cut.ends_with("line 1999\n") && cut.chars().count() <= 100, "{cut}");
    }
}
