//! The last reloads, for `GET /reloads` and the dashboard: when, what asked, the result, and
//! what changed or why it was refused.

use super::diff::Diff;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

/// How many reloads are kept.
pub const KEPT: usize = 10;

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// `SIGHUP`.
    Signal,
    /// `[server] watch`: the file changed.
    Watch,
    /// `POST /reload`.
    Admin,
}

/// One reload.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// RFC 3339, UTC, to the second.
    pub time: String,
    pub trigger: Trigger,
    /// `success` or `error`, as `pylon_config_reloads_total{result}` counts it.
    pub result: &'static str,
    /// The routes now running (successes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<Diff>,
    /// The refused file's diagnostics, `FILE:LINE:COL: message` each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl Record {
    pub fn new(trigger: Trigger, outcome: Result<(usize, &Diff), Vec<String>>) -> Record {
        let time = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        match outcome {
            Ok((routes, diff)) => Record {
                time,
                trigger,
                result: "success",
                routes: Some(routes),
                changes: Some(diff.clone()),
                errors: Vec::new(),
            },
            Err(errors) => Record {
                time,
                trigger,
                result: "error",
                routes: None,
                changes: None,
                errors,
            },
        }
    }
}

/// The last [`KEPT`] reloads of this process, oldest first. Touched once per reload.
static HISTORY: Mutex<VecDeque<Record>> = Mutex::new(VecDeque::new());

pub fn record(entry: Record) {
    let mut history = HISTORY.lock().unwrap_or_else(|p| p.into_inner());
    if history.len() == KEPT {
        history.pop_front();
    }
    history.push_back(entry);
}

/// The kept reloads, newest first.
pub fn recent() -> Vec<Record> {
    let history = HISTORY.lock().unwrap_or_else(|p| p.into_inner());
    history.iter().rev().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_ten_newest_first() {
        for routes in 0..13 {
            record(Record::new(Trigger::Signal, Ok((routes, &Diff::default()))));
        }
        let kept = recent();
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept[0].routes, Some(12));
        assert_eq!(kept[9].routes, Some(3));
    }
}
