//! Paths of the UI's pages, for the UI's own links and for messages that point
//! people at a page (alerts).

/// Percent-encodes a path segment (run ids hold `:` and `+`).
pub fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

pub fn dag_url(dag_id: &str) -> String {
    format!("/dags/{}", encode(dag_id))
}

pub fn run_url(dag_id: &str, run_id: &str) -> String {
    format!("/dags/{}/runs/{}", encode(dag_id), encode(run_id))
}

pub fn task_url(dag_id: &str, run_id: &str, task_id: &str) -> String {
    format!("/dags/{}/runs/{}/tasks/{}", encode(dag_id), encode(run_id), encode(task_id))
}

/// The page of one task instance: a mapped one by its map index.
pub fn instance_url(dag_id: &str, run_id: &str, task_id: &str, map_index: i32) -> String {
    let url = task_url(dag_id, run_id, task_id);
    if map_index < 0 { url } else { format!("{url}?map_index={map_index}") }
}

/// The page of one instance showing the log of one try.
pub fn attempt_url(dag_id: &str, run_id: &str, task_id: &str, map_index: i32, try_number: u32) -> String {
    let url = instance_url(dag_id, run_id, task_id, map_index);
    let join = if url.contains('?') { '&' } else { '?' };
    format!("{url}{join}try={try_number}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_encode_each_segment() {
        let run = "scheduled__2026-01-02T00:00:00+00:00";
        assert_eq!(run_url("etl", run), "/dags/etl/runs/scheduled__2026-01-02T00%3A00%3A00%2B00%3A00");
        assert_eq!(attempt_url("etl", "r", "load", -1, 2), "/dags/etl/runs/r/tasks/load?try=2");
        assert_eq!(attempt_url("etl", "r", "load", 3, 2), "/dags/etl/runs/r/tasks/load?map_index=3&try=2");
    }
}
