//! Runs `sql` tasks in the runner itself, against a PostgreSQL, MySQL/MariaDB or
//! SQLite connection, all statements in one transaction (MySQL commits DDL on its
//! own: there, only the data statements roll back together). Values reach the database only
//! as bound parameters (`:name` in the SQL): PostgreSQL gets each as text cast to
//! the type it infers for that place, so `:day` works for a `date` column and
//! `:n` for an `int` one without casts in the SQL. Rows come back as JSON
//! objects (PostgreSQL's own `row_to_json`, so numbers stay numbers).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use sqlx::{Connection, Executor, Statement, TypeInfo};
use tokio::sync::mpsc;
use updraft_core::dag::{SqlOutput, SqlTask};
use updraft_store::ConnectionValues;

use crate::http::Rendered;

/// What the statements did.
#[derive(Debug, Default)]
struct Done {
    rows: Option<Vec<Value>>,
    truncated: bool,
    affected: u64,
}

impl Done {
    /// Rows that came back as JSON text (one more than `max_rows` was asked for,
    /// to tell a cut): the first `max_rows` are kept.
    async fn keep_rows(
        &mut self,
        texts: &[String],
        max_rows: u32,
        number: usize,
        log: &mpsc::Sender<String>,
    ) -> Result<(), String> {
        let kept = texts
            .iter()
            .take(max_rows as usize)
            .map(|text| serde_json::from_str(text).map_err(|error| error.to_string()))
            .collect::<Result<Vec<Value>, String>>()?;
        self.truncated = texts.len() > max_rows as usize;
        let _ = log.send(format!("statement {number}: {} row(s)", kept.len())).await;
        self.rows = Some(kept);
        Ok(())
    }
}

pub async fn run(
    task: &SqlTask,
    rendered: &Rendered,
    connection: &ConnectionValues,
    dag_folder: &Path,
    log: mpsc::Sender<String>,
) -> Result<Option<String>, String> {
    let text = match (&task.file, rendered_field(rendered, "sql.statements")) {
        (Some(file), _) => {
            let path = dag_folder.join(file);
            std::fs::read_to_string(&path).map_err(|error| format!("cannot read `{}`: {error}", path.display()))?
        }
        (None, Some(statements)) => statements.to_string(),
        (None, None) => return Err("no statements".to_string()),
    };
    let parameters: BTreeMap<String, String> = rendered
        .fields
        .iter()
        .filter_map(|(field, value)| Some((field.strip_prefix("sql.parameters.")?.to_string(), value.clone())))
        .collect();
    let statements = split_statements(&text);
    if statements.is_empty() {
        return Err("the SQL holds no statement".to_string());
    }
    let done = match connection.conn_type.as_str() {
        "postgres" | "postgresql" => postgres(task, connection, &statements, &parameters, &log).await?,
        "mysql" | "mariadb" => mysql(task, connection, &statements, &parameters, &log).await?,
        "sqlite" => {
            // Airflow keeps the file in `host`; a URI `sqlite:////abs/path.db` puts it in the path.
            let file = match (&connection.host, &connection.schema) {
                (Some(host), _) if !host.is_empty() => host.clone(),
                (_, Some(path)) => format!("/{path}"),
                _ => return Err("a `sqlite` connection needs the database file in `host`".to_string()),
            };
            let path = dag_folder.join(file);
            let (max_rows, statements, parameters) = (task.max_rows, statements.clone(), parameters.clone());
            let log = log.clone();
            tokio::task::spawn_blocking(move || sqlite(&path, max_rows, &statements, &parameters, &log))
                .await
                .map_err(|error| error.to_string())??
        }
        other => {
            return Err(format!(
                "connection type `{other}` is not supported by `sql`: use `postgres`, `mysql`/`mariadb` or `sqlite`"
            ));
        }
    };
    if done.truncated {
        let _ = log.send(format!("more than `max_rows` ({}) rows: kept the first {0}", task.max_rows)).await;
    }
    Ok(match task.output {
        SqlOutput::Rows => done.rows.map(|rows| Value::Array(rows).to_string()),
        SqlOutput::Count => Some(serde_json::json!({ "rows_affected": done.affected }).to_string()),
        SqlOutput::None => None,
    })
}

fn rendered_field<'a>(rendered: &'a Rendered, name: &str) -> Option<&'a str> {
    rendered.fields.iter().find(|(field, _)| field == name).map(|(_, value)| value.as_str())
}

async fn postgres(
    task: &SqlTask,
    connection: &ConnectionValues,
    statements: &[String],
    parameters: &BTreeMap<String, String>,
    log: &mpsc::Sender<String>,
) -> Result<Done, String> {
    let mut conn = postgres_connection(connection).await?;
    let mut tx = conn.begin().await.map_err(|error| describe(&error))?;
    let mut done = Done::default();
    for (index, statement) in statements.iter().enumerate() {
        let number = index + 1;
        let (sql, names) = placeholders(statement, Dialect::Postgres);
        let values = values_for(&names, parameters, number)?;
        let prepared = (&mut *tx)
            .prepare(sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(sql.clone())))
            .await
            .map_err(|error| format!("statement {number}: {}", describe(&error)))?;
        let types: Vec<String> = match prepared.parameters() {
            Some(either::Either::Left(types)) => types.iter().map(|info| info.name().to_string()).collect(),
            _ => vec!["TEXT".to_string(); names.len()],
        };
        let returns_rows = !prepared.columns().is_empty();
        // Each value is sent as text and cast where it lands, to the type the server inferred.
        let mut typed = sql.clone();
        for (position, type_name) in types.iter().enumerate().rev() {
            let placeholder = format!("${}", position + 1);
            typed = replace_placeholder(&typed, &placeholder, &format!("CAST({placeholder}::text AS {type_name})"));
        }
        if returns_rows {
            let wrapped = format!(
                "WITH updraft_rows AS ({typed}) SELECT row_to_json(updraft_rows)::text FROM updraft_rows LIMIT {}",
                u64::from(task.max_rows) + 1
            );
            let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(wrapped));
            for value in &values {
                query = query.bind(value.clone());
            }
            let texts =
                query.fetch_all(&mut *tx).await.map_err(|error| format!("statement {number}: {}", describe(&error)))?;
            done.keep_rows(&texts, task.max_rows, number, log).await?;
        } else {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(typed));
            for value in &values {
                query = query.bind(value.clone());
            }
            let result =
                query.execute(&mut *tx).await.map_err(|error| format!("statement {number}: {}", describe(&error)))?;
            done.affected += result.rows_affected();
            let _ = log.send(format!("statement {number}: {} row(s) affected", result.rows_affected())).await;
        }
    }
    tx.commit().await.map_err(|error| describe(&error))?;
    Ok(done)
}

/// MySQL and MariaDB take text for any column type, so values are bound as text;
/// rows come back through `JSON_OBJECT` over the statement's own columns.
async fn mysql(
    task: &SqlTask,
    connection: &ConnectionValues,
    statements: &[String],
    parameters: &BTreeMap<String, String>,
    log: &mpsc::Sender<String>,
) -> Result<Done, String> {
    use sqlx::Column;
    let mut options = sqlx::mysql::MySqlConnectOptions::new()
        .host(connection.host.as_deref().unwrap_or("localhost"))
        .port(connection.port.unwrap_or(3306));
    if let Some(login) = &connection.login {
        options = options.username(login);
    }
    if let Some(password) = &connection.password {
        options = options.password(password);
    }
    if let Some(database) = &connection.schema {
        options = options.database(database);
    }
    let mut conn = sqlx::MySqlConnection::connect_with(&options).await.map_err(|error| describe(&error))?;
    let mut tx = conn.begin().await.map_err(|error| describe(&error))?;
    let mut done = Done::default();
    for (index, statement) in statements.iter().enumerate() {
        let number = index + 1;
        let (sql, names) = placeholders(statement, Dialect::MySql);
        let values = values_for(&names, parameters, number)?;
        let prepared = (&mut *tx)
            .prepare(sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(sql.clone())))
            .await
            .map_err(|error| format!("statement {number}: {}", describe(&error)))?;
        let columns: Vec<String> = prepared.columns().iter().map(|column| column.name().to_string()).collect();
        if columns.is_empty() {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for value in &values {
                query = query.bind(value.clone());
            }
            let result =
                query.execute(&mut *tx).await.map_err(|error| format!("statement {number}: {}", describe(&error)))?;
            done.affected += result.rows_affected();
            let _ = log.send(format!("statement {number}: {} row(s) affected", result.rows_affected())).await;
            continue;
        }
        let pairs: Vec<String> = columns
            .iter()
            .map(|name| format!("'{}', updraft_rows.`{}`", name.replace('\'', "''"), name.replace('`', "``")))
            .collect();
        let wrapped = format!(
            "SELECT CAST(JSON_OBJECT({}) AS CHAR) FROM ({sql}) AS updraft_rows LIMIT {}",
            pairs.join(", "),
            u64::from(task.max_rows) + 1
        );
        let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(wrapped));
        for value in &values {
            query = query.bind(value.clone());
        }
        let texts =
            query.fetch_all(&mut *tx).await.map_err(|error| format!("statement {number}: {}", describe(&error)))?;
        done.keep_rows(&texts, task.max_rows, number, log).await?;
    }
    tx.commit().await.map_err(|error| describe(&error))?;
    Ok(done)
}

fn sqlite(
    path: &Path,
    max_rows: u32,
    statements: &[String],
    parameters: &BTreeMap<String, String>,
    log: &mpsc::Sender<String>,
) -> Result<Done, String> {
    let sqlite_error = |error: rusqlite::Error| error.to_string();
    let mut conn =
        rusqlite::Connection::open(path).map_err(|error| format!("cannot open `{}`: {error}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(30)).map_err(sqlite_error)?;
    let tx = conn.transaction().map_err(sqlite_error)?;
    let mut done = Done::default();
    for (index, statement) in statements.iter().enumerate() {
        let number = index + 1;
        let (sql, names) = placeholders(statement, Dialect::Sqlite);
        let values = values_for(&names, parameters, number)?;
        let mut prepared = tx.prepare(&sql).map_err(|error| format!("statement {number}: {error}"))?;
        for (name, value) in names.iter().zip(&values) {
            if let Some(at) = prepared.parameter_index(&format!(":{name}")).map_err(sqlite_error)? {
                prepared.raw_bind_parameter(at, value).map_err(sqlite_error)?;
            }
        }
        if prepared.column_count() > 0 {
            let columns: Vec<String> = prepared.column_names().iter().map(ToString::to_string).collect();
            let mut rows = prepared.raw_query();
            let mut objects = Vec::new();
            while let Some(row) = rows.next().map_err(|error| format!("statement {number}: {error}"))? {
                if objects.len() == max_rows as usize {
                    done.truncated = true;
                    break;
                }
                let mut object = serde_json::Map::new();
                for (at, column) in columns.iter().enumerate() {
                    let value = match row.get_ref(at).map_err(sqlite_error)? {
                        rusqlite::types::ValueRef::Null => Value::Null,
                        rusqlite::types::ValueRef::Integer(n) => Value::from(n),
                        rusqlite::types::ValueRef::Real(f) => Value::from(f),
                        rusqlite::types::ValueRef::Text(text) => {
                            Value::String(String::from_utf8_lossy(text).into_owned())
                        }
                        rusqlite::types::ValueRef::Blob(bytes) => {
                            Value::String(String::from_utf8_lossy(bytes).into_owned())
                        }
                    };
                    object.insert(column.clone(), value);
                }
                objects.push(Value::Object(object));
            }
            let _ = log.blocking_send(format!("statement {number}: {} row(s)", objects.len()));
            done.rows = Some(objects);
        } else {
            let changed = prepared.raw_execute().map_err(|error| format!("statement {number}: {error}"))?;
            done.affected += changed as u64;
            let _ = log.blocking_send(format!("statement {number}: {changed} row(s) affected"));
        }
    }
    tx.commit().map_err(sqlite_error)?;
    Ok(done)
}

fn values_for(names: &[String], parameters: &BTreeMap<String, String>, number: usize) -> Result<Vec<String>, String> {
    names
        .iter()
        .map(|name| {
            parameters
                .get(name)
                .cloned()
                .ok_or_else(|| format!("statement {number} uses `:{name}`, but `parameters` has no `{name}`"))
        })
        .collect()
}

/// A connection to the PostgreSQL a connection names (`schema` is the
/// database; `extra.sslmode` as libpq's).
pub(crate) async fn postgres_connection(connection: &ConnectionValues) -> Result<sqlx::PgConnection, String> {
    let mut options = sqlx::postgres::PgConnectOptions::new()
        .host(connection.host.as_deref().unwrap_or("localhost"))
        .port(connection.port.unwrap_or(5432));
    if let Some(login) = &connection.login {
        options = options.username(login);
    }
    if let Some(password) = &connection.password {
        options = options.password(password);
    }
    if let Some(database) = &connection.schema {
        options = options.database(database);
    }
    if let Some(mode) = extra_field(connection, "sslmode") {
        options = options.ssl_mode(mode.parse().map_err(|_| format!("unknown `sslmode` `{mode}`"))?);
    }
    sqlx::PgConnection::connect_with(&options).await.map_err(|error| describe(&error))
}

fn extra_field(connection: &ConnectionValues, name: &str) -> Option<String> {
    let extra: Value = serde_json::from_str(connection.extra.as_deref()?).ok()?;
    extra.get(name)?.as_str().map(str::to_string)
}

/// A database's own message (it names the problem), else sqlx's.
pub(crate) fn describe(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(database) => database.message().to_string(),
        other => other.to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Postgres,
    /// `?` for each use, in order.
    MySql,
    Sqlite,
}

/// What the lexer is inside of.
#[derive(PartialEq)]
enum In {
    Code,
    Single,
    Double,
    LineComment,
    BlockComment,
    Dollar(String),
}

/// The statements of a script: split at `;` outside strings, quoted names,
/// comments and dollar-quoted bodies; empty ones dropped.
pub fn split_statements(sql: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut state = In::Code;
    let chars: Vec<char> = sql.chars().collect();
    let mut at = 0;
    while at < chars.len() {
        let c = chars[at];
        let next = chars.get(at + 1).copied();
        match &state {
            In::Code => match c {
                '\'' => state = In::Single,
                '"' => state = In::Double,
                '-' if next == Some('-') => state = In::LineComment,
                '/' if next == Some('*') => state = In::BlockComment,
                '$' => {
                    if let Some(tag) = dollar_tag(&chars[at..]) {
                        current.push_str(&tag);
                        at += tag.chars().count();
                        state = In::Dollar(tag);
                        continue;
                    }
                }
                ';' => {
                    if !current.trim().is_empty() {
                        statements.push(current.trim().to_string());
                    }
                    current.clear();
                    at += 1;
                    continue;
                }
                _ => {}
            },
            In::Single if c == '\'' => state = In::Code,
            In::Double if c == '"' => state = In::Code,
            In::LineComment if c == '\n' => state = In::Code,
            In::BlockComment if c == '*' && next == Some('/') => {
                current.push_str("*/");
                at += 2;
                state = In::Code;
                continue;
            }
            In::Dollar(tag) if chars[at..].iter().collect::<String>().starts_with(tag.as_str()) => {
                let tag = tag.clone();
                current.push_str(&tag);
                at += tag.chars().count();
                state = In::Code;
                continue;
            }
            _ => {}
        }
        current.push(c);
        at += 1;
    }
    if !current.trim().is_empty() {
        statements.push(current.trim().to_string());
    }
    // A statement of comments only is no statement.
    statements.retain(|statement| {
        !placeholders(statement, Dialect::Sqlite).0.lines().all(|line| {
            let line = line.trim();
            line.is_empty() || line.starts_with("--")
        })
    });
    statements
}

/// `$tag$` at the start of `chars`, if it is one.
fn dollar_tag(chars: &[char]) -> Option<String> {
    let end = chars.iter().skip(1).position(|c| *c == '$')? + 1;
    let tag: String = chars[1..end].iter().collect();
    (tag.chars().all(|c| c.is_alphanumeric() || c == '_') && !tag.starts_with(|c: char| c.is_ascii_digit()))
        .then(|| format!("${tag}$"))
}

/// The statement with its `:name` placeholders as the dialect wants them
/// (`$1`, `$2`, ... for PostgreSQL, kept for SQLite), and the names in order.
/// `::casts`, strings, quoted names and comments are left alone.
fn placeholders(sql: &str, dialect: Dialect) -> (String, Vec<String>) {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = String::new();
    let mut names: Vec<String> = Vec::new();
    let mut state = In::Code;
    let mut at = 0;
    while at < chars.len() {
        let c = chars[at];
        let next = chars.get(at + 1).copied();
        if state == In::Code {
            match c {
                '\'' => state = In::Single,
                '"' => state = In::Double,
                '-' if next == Some('-') => state = In::LineComment,
                '/' if next == Some('*') => state = In::BlockComment,
                ':' if next == Some(':') => {
                    out.push_str("::");
                    at += 2;
                    continue;
                }
                ':' if next.is_some_and(|n| n.is_ascii_alphabetic() || n == '_')
                    && (at == 0 || chars[at - 1] != ':') =>
                {
                    let name: String =
                        chars[at + 1..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == '_').collect();
                    at += 1 + name.len();
                    match dialect {
                        Dialect::Postgres => {
                            let position = match names.iter().position(|known| *known == name) {
                                Some(position) => position,
                                None => {
                                    names.push(name);
                                    names.len() - 1
                                }
                            };
                            out.push_str(&format!("${}", position + 1));
                        }
                        Dialect::MySql => {
                            out.push('?');
                            names.push(name);
                        }
                        Dialect::Sqlite => {
                            out.push(':');
                            out.push_str(&name);
                            if !names.contains(&name) {
                                names.push(name);
                            }
                        }
                    }
                    continue;
                }
                _ => {}
            }
        } else if dialect == Dialect::MySql && state == In::Single && c == '\\' {
            // MySQL's backslash escapes: the next character is part of the string.
            out.push(c);
            out.extend(next);
            at += 2;
            continue;
        } else if (state == In::Single && c == '\'')
            || (state == In::Double && c == '"')
            || (state == In::LineComment && c == '\n')
        {
            state = In::Code;
        } else if state == In::BlockComment && c == '*' && next == Some('/') {
            out.push_str("*/");
            at += 2;
            state = In::Code;
            continue;
        }
        out.push(c);
        at += 1;
    }
    (out, names)
}

/// `sql` with `placeholder` (`$3`) replaced where it stands alone (not `$30`).
fn replace_placeholder(sql: &str, placeholder: &str, with: &str) -> String {
    let mut out = String::new();
    let mut rest = sql;
    while let Some(found) = rest.find(placeholder) {
        let after = &rest[found + placeholder.len()..];
        out.push_str(&rest[..found]);
        if after.starts_with(|c: char| c.is_ascii_digit()) {
            out.push_str(placeholder);
        } else {
            out.push_str(with);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_outside_strings_comments_and_dollar_quotes() {
        let script = "CREATE TABLE t (a text); -- a; comment\nINSERT INTO t VALUES ('x;y');\n/* ; */ SELECT $$a;b$$, $fn$ ; $fn$; ;\n-- only a comment";
        assert_eq!(
            split_statements(script),
            [
                "CREATE TABLE t (a text)",
                "-- a; comment\nINSERT INTO t VALUES ('x;y')",
                "/* ; */ SELECT $$a;b$$, $fn$ ; $fn$"
            ]
        );
    }

    #[test]
    fn named_placeholders_become_the_dialects() {
        let sql = "SELECT :day::date, ':not', \"a:b\", x::int FROM t WHERE d = :day AND n > :n -- :gone";
        let (pg, names) = placeholders(sql, Dialect::Postgres);
        assert_eq!(pg, "SELECT $1::date, ':not', \"a:b\", x::int FROM t WHERE d = $1 AND n > $2 -- :gone");
        assert_eq!(names, ["day", "n"]);
        let (my, names) = placeholders(r"SELECT :a, 'it\'s :not', :b, :a", Dialect::MySql);
        assert_eq!((my.as_str(), names), (r"SELECT ?, 'it\'s :not', ?, ?", vec!["a".into(), "b".into(), "a".into()]));
        let (lite, names) = placeholders("SELECT :a, :b, :a", Dialect::Sqlite);
        assert_eq!((lite.as_str(), names), ("SELECT :a, :b, :a", vec!["a".to_string(), "b".to_string()]));
        assert_eq!(replace_placeholder("$1 + $10 + $1", "$1", "X"), "X + $10 + X");
    }
}
