//! What the runner needs from the OS about processes: start times (to tell a live
//! process from a reused pid), liveness, and killing a whole process group and
//! waiting until it is gone. Linux only: it reads `/proc`.

use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process_group, test_kill_process_group};

/// The start time of `pid` in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain anything.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is the process recorded with `recorded_start` (or, without a
/// recorded start, any process with that pid) and has not exited.
pub fn is_alive(pid: u32, recorded_start: Option<u64>) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let mut fields = stat[close + 1..].split_whitespace();
    // A zombie has exited; it only waits to be reaped.
    if fields.next() == Some("Z") {
        return false;
    }
    match recorded_start {
        Some(recorded) => fields.nth(18).and_then(|start| start.parse::<u64>().ok()) == Some(recorded),
        None => true,
    }
}

fn pid(raw: u32) -> Option<Pid> {
    Pid::from_raw(i32::try_from(raw).ok()?)
}

pub fn signal_group(pgid: u32, signal: Signal) {
    if let Some(pgid) = pid(pgid) {
        // ESRCH (the group is gone) is the outcome we want anyway.
        let _ = kill_process_group(pgid, signal);
    }
}

/// Whether any process of the group is still running. Zombies do not count: they
/// have exited and only wait for a parent (not always a diligent one) to reap them.
pub fn group_alive(pgid: u32) -> bool {
    if pid(pgid).is_none_or(|pgid| test_kill_process_group(pgid).is_err()) {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok()).any(|member| {
        std::fs::read_to_string(format!("/proc/{member}/stat")).ok().is_some_and(|stat| {
            let Some(close) = stat.rfind(')') else {
                return false;
            };
            let mut fields = stat[close + 1..].split_whitespace();
            let state = fields.next();
            let group = fields.nth(1).and_then(|group| group.parse::<u32>().ok());
            state != Some("Z") && group == Some(pgid)
        })
    })
}

/// Kills the process group led by `pgid`, if it is still the group of the process
/// started at `leader_start`, and waits up to `wait` for every member to exit.
/// Returns whether the group is gone.
///
/// A pid is not reused while it names a live process group, so if another process
/// now has the leader's pid, the old group is already gone.
pub async fn kill_group_and_wait(pgid: u32, leader_start: Option<u64>, wait: Duration) -> bool {
    if let (Some(recorded), Some(current)) = (leader_start, start_time(pgid))
        && recorded != current
    {
        return true;
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if !group_alive(pgid) {
            return true;
        }
        signal_group(pgid, Signal::KILL);
        if tokio::time::Instant::now() >= deadline {
            return !group_alive(pgid);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Pids of processes whose environment holds `NAME=value`, for an attempt whose pid
/// was never recorded (its runner died between starting it and writing the pid).
pub fn find_by_env(name: &str, value: &str) -> Vec<u32> {
    let needle = format!("{name}={value}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|environ| environ.split(|b| *b == 0).any(|var| var == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// The process group of `pid`, if it still exists.
pub fn group_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(2)?.parse().ok()
}

pub fn hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process() {
        let me = std::process::id();
        let start = start_time(me);
        assert!(start.is_some());
        assert!(is_alive(me, start));
        assert!(!is_alive(me, start.map(|s| s + 1)));
        assert!(!is_alive(u32::MAX - 1, None));
        assert!(!hostname().is_empty());
    }

    #[tokio::test]
    async fn kills_a_whole_group() {
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id();
        let start = start_time(pgid);
        // Reap the leader in the background so it does not linger as a zombie.
        let reaper = std::thread::spawn(move || {
            let mut child = child;
            child.wait().ok()
        });
        assert!(group_alive(pgid));
        assert!(kill_group_and_wait(pgid, start, Duration::from_secs(10)).await);
        assert!(!group_alive(pgid));
        reaper.join().unwrap();
    }
}
