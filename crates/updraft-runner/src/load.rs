//! Runs `load` tasks in the runner itself: a CSV/TSV or JSON/NDJSON file into a
//! PostgreSQL table in one transaction, rows sent with `COPY`. Every value is
//! checked against its column's type first (declared, or inferred from the whole
//! file); a rejected row is reported by line and column, and more than
//! `max_rejected` of them fail the load with nothing written.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use sqlx::Connection;
use tokio::sync::mpsc;
use updraft_core::dag::{LoadMode, LoadTask, SHEET_FORMATS};
use updraft_store::ConnectionValues;

/// Rejected rows listed in the log and the output at most.
const REPORTED: usize = 20;
/// Bytes of COPY data sent at a time.
const CHUNK: usize = 1 << 20;

/// The file's rows: the header (column names) and each row's fields with its line.
struct Table {
    columns: Vec<String>,
    rows: Vec<(u64, Vec<Option<String>>)>,
}

pub async fn run(
    task: &LoadTask,
    source: &str,
    connections: &BTreeMap<String, ConnectionValues>,
    dag_folder: &Path,
    log: mpsc::Sender<String>,
) -> Result<Option<String>, String> {
    let connection = connections
        .get(&task.connection)
        .ok_or_else(|| format!("no connection `{}` (see `updraft connections list`)", task.connection))?;
    if !matches!(connection.conn_type.as_str(), "postgres" | "postgresql") {
        return Err(format!(
            "`load` writes to PostgreSQL; connection `{}` is `{}`",
            task.connection, connection.conn_type
        ));
    }
    // An object-storage source is read into a temporary file first (named like the
    // object, so its extension still tells the format), removed at the end.
    let downloaded = if source.contains("://") && !source.starts_with("file://") {
        let source_connection = task.source_connection.as_ref().and_then(|id| connections.get(id));
        let data = crate::objects::fetch(source, source_connection, dag_folder).await?;
        let name = source.rsplit('/').next().unwrap_or("source");
        let folder = std::env::temp_dir().join(format!("updraft-load-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&folder).map_err(|error| format!("cannot make `{}`: {error}", folder.display()))?;
        let _ = log.send(format!("read {} bytes from {source}", data.len())).await;
        std::fs::write(folder.join(name), data).map_err(|error| format!("cannot write a temporary file: {error}"))?;
        Some((folder.clone(), folder.join(name)))
    } else {
        None
    };
    let result = load_file(task, source, connection, dag_folder, downloaded.as_ref().map(|(_, path)| path), log).await;
    if let Some((folder, _)) = downloaded {
        let _ = std::fs::remove_dir_all(folder);
    }
    result
}

fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

async fn load_file(
    task: &LoadTask,
    source: &str,
    connection: &ConnectionValues,
    dag_folder: &Path,
    downloaded: Option<&std::path::PathBuf>,
    log: mpsc::Sender<String>,
) -> Result<Option<String>, String> {
    let path = downloaded.cloned().unwrap_or_else(|| dag_folder.join(source));
    let format = task.format.clone().unwrap_or_else(|| {
        let name = source.to_ascii_lowercase();
        if name.ends_with(".tsv") {
            "tsv".into()
        } else if name.ends_with(".json") {
            "json".into()
        } else if name.ends_with(".ndjson") || name.ends_with(".jsonl") {
            "ndjson".into()
        } else if let Some(sheet) = SHEET_FORMATS.iter().find(|ext| name.ends_with(&format!(".{ext}"))) {
            (*sheet).into()
        } else {
            "csv".into()
        }
    });
    let (read_task, read_path) = (task.clone(), path.clone());
    let (table, types, rejected, copy) = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let table = read(&read_task, &read_path, &format)?;
        let types = column_types(&read_task, &table)?;
        let (copy, rejected) = encode(&table, &types);
        Ok((table, types, rejected, copy))
    })
    .await
    .map_err(|error| error.to_string())??;
    let shown = path.display();
    for (line, column, why) in rejected.iter().take(REPORTED) {
        let _ = log.send(format!("rejected {shown}:{line}: column `{column}`: {why}")).await;
    }
    let loaded = (table.rows.len() - rejected.len()) as u64;
    if rejected.len() as u64 > task.max_rejected {
        return Err(format!(
            "{} row(s) of `{shown}` rejected, more than `max_rejected` ({}); nothing loaded (first: line {}, column `{}`: {})",
            rejected.len(),
            task.max_rejected,
            rejected[0].0,
            rejected[0].1,
            rejected[0].2
        ));
    }
    write(task, connection, &table.columns, &types, copy).await?;
    let _ = log
        .send(format!("loaded {loaded} row(s) into `{}` ({:?}), {} rejected", task.table, task.mode, rejected.len()))
        .await;
    let report: Vec<Value> = rejected
        .iter()
        .take(REPORTED)
        .map(|(line, column, why)| serde_json::json!({ "line": line, "column": column, "reason": why }))
        .collect();
    Ok(Some(serde_json::json!({ "loaded": loaded, "rejected": rejected.len(), "rejected_rows": report }).to_string()))
}

fn read(task: &LoadTask, path: &Path, format: &str) -> Result<Table, String> {
    if SHEET_FORMATS.contains(&format) {
        return read_sheet(task, path);
    }
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|error| format!("cannot read `{shown}`: {error}"))?;
    let rename = |name: &str| task.rename.get(name).cloned().unwrap_or_else(|| name.to_string());
    match format {
        "csv" | "tsv" => {
            let delimiter = task.delimiter.unwrap_or(if format == "tsv" { '\t' } else { ',' });
            let mut reader = csv::ReaderBuilder::new()
                .delimiter(delimiter as u8)
                .flexible(false)
                .from_reader(std::io::BufReader::with_capacity(1 << 20, file));
            let headers = reader.headers().map_err(|error| format!("`{shown}`: {error}"))?.clone();
            let columns: Vec<String> = headers.iter().map(|name| rename(name.trim())).collect();
            let mut rows = Vec::new();
            let mut record = csv::StringRecord::new();
            loop {
                match reader.read_record(&mut record) {
                    Ok(false) => break,
                    Ok(true) => {
                        let line = record.position().map_or(0, csv::Position::line);
                        let fields =
                            record.iter().map(|field| (!field.is_empty()).then(|| field.to_string())).collect();
                        rows.push((line, fields));
                    }
                    Err(error) => {
                        let line = error.position().map_or(0, csv::Position::line);
                        return Err(format!("`{shown}`:{line}: {}", csv_reason(&error)));
                    }
                }
            }
            Ok(Table { columns, rows })
        }
        "json" | "ndjson" => {
            let text = std::io::read_to_string(file).map_err(|error| format!("cannot read `{shown}`: {error}"))?;
            let objects: Vec<(u64, Value)> = if format == "json" {
                match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Array(items)) => {
                        items.into_iter().enumerate().map(|(at, item)| (at as u64 + 1, item)).collect()
                    }
                    Ok(_) => return Err(format!("`{shown}`: expected a JSON array of objects")),
                    Err(error) => {
                        return Err(format!("`{shown}`:{}:{}: not JSON: {error}", error.line(), error.column()));
                    }
                }
            } else {
                let mut objects = Vec::new();
                for (at, line) in text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()) {
                    let value = serde_json::from_str(line)
                        .map_err(|error| format!("`{shown}`:{}:{}: not JSON: {error}", at + 1, error.column()))?;
                    objects.push((at as u64 + 1, value));
                }
                objects
            };
            let mut columns: Vec<String> = Vec::new();
            for (_, object) in &objects {
                if let Value::Object(fields) = object {
                    for name in fields.keys() {
                        let name = rename(name);
                        if !columns.contains(&name) {
                            columns.push(name);
                        }
                    }
                }
            }
            let mut rows = Vec::with_capacity(objects.len());
            for (line, object) in objects {
                let Value::Object(fields) = object else {
                    return Err(format!("`{shown}`: item {line} is not an object"));
                };
                let renamed: BTreeMap<String, Value> =
                    fields.into_iter().map(|(name, value)| (rename(&name), value)).collect();
                let row = columns
                    .iter()
                    .map(|column| match renamed.get(column) {
                        None | Some(Value::Null) => None,
                        Some(Value::String(text)) => Some(text.clone()),
                        Some(other) => Some(other.to_string()),
                    })
                    .collect();
                rows.push((line, row));
            }
            Ok(Table { columns, rows })
        }
        other => Err(format!("unknown format `{other}`")),
    }
}

/// A sheet's cells as a table: the range's (or the used cells') first row is the
/// header; a row's "line" is its row number in the sheet, as the spreadsheet shows.
fn read_sheet(task: &LoadTask, path: &Path) -> Result<Table, String> {
    use calamine::Reader;
    let shown = path.display();
    let mut workbook = calamine::open_workbook_auto(path).map_err(|error| format!("cannot read `{shown}`: {error}"))?;
    let names = workbook.sheet_names();
    let sheet = match &task.sheet {
        Some(name) if names.contains(name) => name.clone(),
        Some(name) => {
            return Err(format!("`{shown}` has no sheet `{name}` (its sheets: {})", names.join(", ")));
        }
        None => names.first().cloned().ok_or_else(|| format!("`{shown}` has no sheets"))?,
    };
    let cells = workbook.worksheet_range(&sheet).map_err(|error| format!("`{shown}` sheet `{sheet}`: {error}"))?;
    let (Some(used_first), Some(used_last)) = (cells.start(), cells.end()) else {
        return Err(format!("`{shown}` sheet `{sheet}` is empty"));
    };
    let (first, last) = match task.range {
        Some(range) => (range.first, range.last.unwrap_or(used_last)),
        None => (used_first, used_last),
    };
    let rename = |name: &str| task.rename.get(name).cloned().unwrap_or_else(|| name.to_string());
    let value = |row: u32, column: u32| cells.get_value((row, column)).and_then(cell_text);
    let mut columns = Vec::new();
    for column in first.1..=last.1 {
        match value(first.0, column) {
            Some(name) => columns.push(rename(name.trim())),
            None => {
                let at = updraft_core::dag::cell_name((first.0, column));
                return Err(format!("`{shown}` sheet `{sheet}` cell {at}: the header row has an empty cell"));
            }
        }
    }
    let mut rows = Vec::new();
    for row in first.0 + 1..=last.0 {
        let fields: Vec<Option<String>> = (first.1..=last.1).map(|column| value(row, column)).collect();
        if fields.iter().any(Option::is_some) {
            rows.push((u64::from(row) + 1, fields));
        }
    }
    Ok(Table { columns, rows })
}

/// A cell as text, the way it shows: whole numbers without `.0`, dates as ISO
/// dates (with the time when there is one), Excel errors as written (`#N/A`, which
/// a numeric column then rejects).
fn cell_text(cell: &calamine::Data) -> Option<String> {
    use calamine::Data;
    match cell {
        Data::Empty => None,
        Data::String(text) if text.is_empty() => None,
        Data::String(text) | Data::DateTimeIso(text) | Data::DurationIso(text) => Some(text.clone()),
        Data::Int(value) => Some(value.to_string()),
        Data::Float(value) if value.fract() == 0.0 && value.abs() < 1e15 => Some(format!("{}", *value as i64)),
        Data::Float(value) => Some(value.to_string()),
        Data::Bool(value) => Some(value.to_string()),
        Data::DateTime(value) if value.is_datetime() => {
            let (year, month, day, hour, minute, second, milli) = value.to_ymd_hms_milli();
            Some(if (hour, minute, second, milli) == (0, 0, 0, 0) {
                format!("{year:04}-{month:02}-{day:02}")
            } else {
                format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}.{milli:03}")
            })
        }
        // A duration: its length in seconds.
        Data::DateTime(value) => Some(format!("{}", (value.as_f64() * 86_400.0).round() as i64)),
        Data::Error(error) => Some(error.to_string()),
    }
}

fn csv_reason(error: &csv::Error) -> String {
    match error.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("{len} field(s) where the header has {expected_len}")
        }
        _ => error.to_string(),
    }
}

/// Each file column's type: declared (and every declared column must be in the
/// file), or the narrowest that fits every value.
fn column_types(task: &LoadTask, table: &Table) -> Result<Vec<String>, String> {
    if !task.columns.is_empty() {
        let declared: BTreeMap<&str, &str> =
            task.columns.iter().map(|(name, kind)| (name.as_str(), kind.as_str())).collect();
        for (name, _) in &task.columns {
            if !table.columns.contains(name) {
                return Err(format!(
                    "column `{name}` is declared but not in the file (it has: {})",
                    table.columns.join(", ")
                ));
            }
        }
        return table
            .columns
            .iter()
            .map(|column| {
                declared.get(column.as_str()).map(|kind| kind.to_string()).ok_or_else(|| {
                    format!("the file has column `{column}`, which `columns` does not declare (or `rename` it)")
                })
            })
            .collect();
    }
    let candidates = ["bigint", "double precision", "boolean", "date", "timestamptz"];
    Ok((0..table.columns.len())
        .map(|at| {
            let values = table.rows.iter().filter_map(|(_, row)| row.get(at).cloned().flatten());
            let mut fits: Vec<&str> = candidates.to_vec();
            let mut any = false;
            for value in values {
                any = true;
                // `005930` is a code, not the number 5930: leading zeros keep a column text.
                let zero_led = value.len() > 1 && value.starts_with('0') && value.as_bytes()[1].is_ascii_digit();
                fits.retain(|kind| {
                    !(zero_led && matches!(*kind, "bigint" | "double precision")) && check(kind, &value).is_ok()
                });
                if fits.is_empty() {
                    break;
                }
            }
            match (any, fits.first()) {
                (true, Some(kind)) => kind.to_string(),
                _ => "text".to_string(),
            }
        })
        .collect())
}

/// Whether `value` is a valid literal of `kind`, the way PostgreSQL would read it.
fn check(kind: &str, value: &str) -> Result<(), String> {
    let value = value.trim();
    let fails = |what: &str| Err(format!("`{}` is not {what}", shorten(value)));
    match kind {
        "integer" => value.parse::<i32>().map(drop).or_else(|_| fails("an integer")),
        "bigint" => value.parse::<i64>().map(drop).or_else(|_| fails("an integer")),
        "numeric" | "double precision" => {
            let number = value.parse::<f64>().is_ok_and(f64::is_finite) && !value.contains(['x', 'X']);
            if number { Ok(()) } else { fails("a number") }
        }
        "boolean" => match value.to_ascii_lowercase().as_str() {
            "true" | "false" | "t" | "f" | "yes" | "no" | "1" | "0" => Ok(()),
            _ => fails("a boolean"),
        },
        "date" => value.parse::<jiff::civil::Date>().map(drop).or_else(|_| fails("a date (YYYY-MM-DD)")),
        "timestamp" => {
            value.parse::<jiff::civil::DateTime>().map(drop).or_else(|_| fails("a timestamp (YYYY-MM-DD HH:MM:SS)"))
        }
        "timestamptz" => {
            value.parse::<jiff::Timestamp>().map(drop).or_else(|_| fails("a timestamp with a zone (RFC 3339)"))
        }
        "jsonb" => serde_json::from_str::<Value>(value).map(drop).or_else(|_| fails("JSON")),
        _ => Ok(()),
    }
}

fn shorten(value: &str) -> String {
    if value.chars().count() <= 40 {
        value.to_string()
    } else {
        format!("{}…", value.chars().take(40).collect::<String>())
    }
}

/// The valid rows as COPY's CSV, and the rejected ones: (line, column, reason).
fn encode(table: &Table, types: &[String]) -> (Vec<u8>, Vec<(u64, String, String)>) {
    let mut out = Vec::with_capacity(table.rows.len() * 64);
    let mut rejected = Vec::new();
    let mut writer = csv::WriterBuilder::new().has_headers(false).from_writer(&mut out);
    'rows: for (line, row) in &table.rows {
        for (at, value) in row.iter().enumerate() {
            if let Some(value) = value
                && let Err(why) = check(&types[at], value)
            {
                rejected.push((*line, table.columns[at].clone(), why));
                continue 'rows;
            }
        }
        // An empty field is NULL: COPY's CSV reads an unquoted empty field as NULL.
        let record: Vec<&str> = row.iter().map(|value| value.as_deref().unwrap_or("")).collect();
        let _ = writer.write_record(&record);
    }
    drop(writer);
    (out, rejected)
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quoted_table(table: &str) -> String {
    table.split('.').map(quoted).collect::<Vec<_>>().join(".")
}

async fn write(
    task: &LoadTask,
    connection: &ConnectionValues,
    columns: &[String],
    types: &[String],
    copy: Vec<u8>,
) -> Result<(), String> {
    let describe = |error: sqlx::Error| crate::sql::describe(&error);
    let mut conn = crate::sql::postgres_connection(connection).await?;
    let mut tx = conn.begin().await.map_err(describe)?;
    let table = quoted_table(&task.table);
    let definitions: Vec<String> =
        columns.iter().zip(types).map(|(name, kind)| format!("{} {kind}", quoted(name))).collect();
    let primary_key = if task.mode == LoadMode::Upsert {
        format!(", PRIMARY KEY ({})", task.key.iter().map(|column| quoted(column)).collect::<Vec<_>>().join(", "))
    } else {
        String::new()
    };
    let create = format!("CREATE TABLE IF NOT EXISTS {table} ({}{primary_key})", definitions.join(", "));
    sqlx::query(sqlx::AssertSqlSafe(create)).execute(&mut *tx).await.map_err(describe)?;
    if task.mode == LoadMode::Upsert {
        // A table made earlier (by a replace, or by hand) may lack a unique index on
        // the key, which an upsert needs: it gets one (refused, with the duplicate
        // named, if its rows repeat a key).
        let mut key: Vec<&str> = task.key.iter().map(String::as_str).collect();
        key.sort_unstable();
        let has_unique: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = $1::regclass AND i.indisunique
                AND i.indpred IS NULL AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text)
                    FROM pg_attribute a WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)) = $2::text[])",
        )
        .bind(&table)
        .bind(&key)
        .fetch_one(&mut *tx)
        .await
        .map_err(describe)?;
        if !has_unique {
            let keys = task.key.iter().map(|column| quoted(column)).collect::<Vec<_>>().join(", ");
            let index = format!("CREATE UNIQUE INDEX ON {table} ({keys})");
            sqlx::query(sqlx::AssertSqlSafe(index)).execute(&mut *tx).await.map_err(describe)?;
        }
    }
    if task.mode == LoadMode::Replace {
        sqlx::query(sqlx::AssertSqlSafe(format!("TRUNCATE {table}"))).execute(&mut *tx).await.map_err(describe)?;
    }
    let column_list = columns.iter().map(|column| quoted(column)).collect::<Vec<_>>().join(", ");
    let target = if task.mode == LoadMode::Upsert {
        let staging = "updraft_load_staging";
        let make = format!("CREATE TEMP TABLE {staging} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP");
        sqlx::query(sqlx::AssertSqlSafe(make)).execute(&mut *tx).await.map_err(describe)?;
        staging.to_string()
    } else {
        table.clone()
    };
    let mut copy_in = tx
        .copy_in_raw(&format!("COPY {target} ({column_list}) FROM STDIN WITH (FORMAT csv)"))
        .await
        .map_err(describe)?;
    for chunk in copy.chunks(CHUNK) {
        copy_in.send(chunk).await.map_err(describe)?;
    }
    copy_in.finish().await.map_err(describe)?;
    if task.mode == LoadMode::Upsert {
        let keys = task.key.iter().map(|column| quoted(column)).collect::<Vec<_>>().join(", ");
        let updates: Vec<String> = columns
            .iter()
            .filter(|column| !task.key.contains(column))
            .map(|column| format!("{0} = excluded.{0}", quoted(column)))
            .collect();
        let action =
            if updates.is_empty() { "NOTHING".to_string() } else { format!("UPDATE SET {}", updates.join(", ")) };
        let merge = format!(
            "INSERT INTO {table} ({column_list}) SELECT {column_list} FROM updraft_load_staging ON CONFLICT ({keys}) DO {action}"
        );
        sqlx::query(sqlx::AssertSqlSafe(merge)).execute(&mut *tx).await.map_err(describe)?;
    }
    tx.commit().await.map_err(describe)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_as_postgresql_reads_them() {
        assert!(check("bigint", "005930").is_ok());
        assert_eq!(check("integer", "12.5").unwrap_err(), "`12.5` is not an integer");
        assert!(check("numeric", "1e3").is_ok() && check("numeric", "NaN").is_err());
        assert_eq!(check("date", "2024-02-30").unwrap_err(), "`2024-02-30` is not a date (YYYY-MM-DD)");
        assert!(check("timestamptz", "2024-03-01T06:00:00+09:00").is_ok());
        assert!(check("boolean", "yes").is_ok() && check("boolean", "maybe").is_err());
        assert!(check("text", "anything").is_ok());
    }
}
