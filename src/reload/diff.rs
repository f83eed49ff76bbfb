//! What a reload changes: the routes, upstreams, targets, policies and consumers added, removed
//! or changed between the running configuration and the next, with the settings that changed.
//!
//! Both are compared as `GET /config` renders them, except that secrets compare by a keyed
//! digest ([`crate::config::comparable`]): a rotated secret counts as a change, and the diff
//! names the setting, never a value.

use crate::load::Checked;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt;

/// The members of one family that were added, removed, and changed with the settings that
/// changed (an empty list: the member changed as a whole, say a bare address became a table).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: BTreeMap<String, Vec<String>>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    fn between(running: &BTreeMap<String, Value>, next: &BTreeMap<String, Value>) -> Changes {
        let mut changes = Changes::default();
        for (name, before) in running {
            match next.get(name) {
                None => changes.removed.push(name.clone()),
                Some(after) if after != before => {
                    changes
                        .changed
                        .insert(name.clone(), settings(before, after));
                }
                Some(_) => {}
            }
        }
        changes.added = next
            .keys()
            .filter(|name| !running.contains_key(*name))
            .cloned()
            .collect();
        changes
    }
}

/// Everything a reload changes. `restart_needed` lists what changed but applies only after a
/// restart or a binary upgrade (filled by the reloader, which knows the start-time settings).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Diff {
    pub routes: Changes,
    pub upstreams: Changes,
    /// The targets of the upstreams in both configurations, as `UPSTREAM/ADDRESS`.
    pub targets: Changes,
    pub policies: Changes,
    pub consumers: Changes,
    /// The other sections' changed settings, as `section.key`; `routes.order` when routes
    /// that stay moved relative to each other.
    pub settings: Vec<String>,
    pub restart_needed: Vec<String>,
}

/// The sections that are not families of named members.
const SECTIONS: [&str; 5] = ["server", "admin", "log", "tracing", "cache"];

impl Diff {
    pub fn between(running: &Checked, next: &Checked) -> Diff {
        let (a, b) = crate::config::comparable(|| (render(running), render(next)));
        let family = |name: &str, key: &str| {
            Changes::between(&members(&a[name], key), &members(&b[name], key))
        };
        let upstreams = family("upstreams", "");
        let mut targets = Changes::default();
        for (name, pool) in &running.config.upstreams {
            let Some(next_pool) = next.config.upstreams.get(name) else {
                continue;
            };
            // A target is its address and weight (`"a"` and `{ addr = "a", weight = 1 }` agree).
            let weights = |pool: &crate::config::UpstreamConfig| -> BTreeMap<String, Value> {
                let of = |t: &crate::config::TargetConfig| {
                    (t.addr().to_string(), json!({ "weight": t.weight() }))
                };
                pool.targets.iter().map(|t| of(t.get_ref())).collect()
            };
            let found = Changes::between(&weights(pool), &weights(next_pool));
            let named = |t: &String| format!("{name}/{t}");
            targets.added.extend(found.added.iter().map(named));
            targets.removed.extend(found.removed.iter().map(named));
            targets
                .changed
                .extend(found.changed.into_iter().map(|(t, s)| (named(&t), s)));
        }
        let mut changed_settings = Vec::new();
        for section in SECTIONS {
            let (before, after) = (&a[section], &b[section]);
            if before == after {
                continue;
            }
            match settings(before, after).as_slice() {
                [] => changed_settings.push(section.to_string()),
                keys => changed_settings.extend(keys.iter().map(|k| format!("{section}.{k}"))),
            }
        }
        let routes = family("routes", "name");
        // The file's order breaks the router's last ties: say when the kept routes moved.
        let kept_order = |v: &Value| -> Vec<String> {
            let names = v["routes"].as_array().into_iter().flatten();
            names
                .filter_map(|r| r["name"].as_str())
                .filter(|n| !routes.added.iter().chain(&routes.removed).any(|m| m == n))
                .map(String::from)
                .collect()
        };
        if kept_order(&a) != kept_order(&b) {
            changed_settings.push("routes.order".to_string());
        }
        Diff {
            routes,
            upstreams,
            targets,
            policies: family("policies", ""),
            consumers: family("consumers", ""),
            settings: changed_settings,
            restart_needed: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.families().all(|(_, c)| c.is_empty()) && self.settings.is_empty()
    }

    fn families(&self) -> impl Iterator<Item = (&'static str, &Changes)> {
        [
            ("routes", &self.routes),
            ("upstreams", &self.upstreams),
            ("targets", &self.targets),
            ("policies", &self.policies),
            ("consumers", &self.consumers),
        ]
        .into_iter()
    }
}

fn render(checked: &Checked) -> Value {
    serde_json::to_value(checked).unwrap_or_default()
}

/// A family's members by name: a table's entries, or a list's items named by their `key`.
fn members(family: &Value, key: &str) -> BTreeMap<String, Value> {
    match family {
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(|item| Some((item.get(key)?.as_str()?.to_string(), item.clone())))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// The keys whose values differ between two tables; none when they are not both tables.
fn settings(before: &Value, after: &Value) -> Vec<String> {
    let (Value::Object(a), Value::Object(b)) = (before, after) else {
        return Vec::new();
    };
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys().filter(|k| !a.contains_key(*k)))
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys
}

/// One line for the log: `routes +new -old ~api(paths,upstream); targets +pool/10.0.0.9:80`.
impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no changes");
        }
        let mut parts = Vec::new();
        for (family, changes) in self.families().filter(|(_, c)| !c.is_empty()) {
            let mut words = Vec::new();
            words.extend(changes.added.iter().map(|n| format!("+{n}")));
            words.extend(changes.removed.iter().map(|n| format!("-{n}")));
            for (name, keys) in &changes.changed {
                match keys.as_slice() {
                    [] => words.push(format!("~{name}")),
                    keys => words.push(format!("~{name}({})", keys.join(","))),
                }
            }
            parts.push(format!("{family} {}", words.join(" ")));
        }
        if !self.settings.is_empty() {
            parts.push(format!("settings {}", self.settings.join(" ")));
        }
        f.write_str(&parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diff(before: &str, after: &str) -> Diff {
        let parse = |text: &str| {
            crate::load::parse(std::path::Path::new("t.toml"), text.to_string()).unwrap()
        };
        Diff::between(&parse(before), &parse(after))
    }

    const POOL: &str = "[upstreams.p]\ntargets = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n";
    const ROUTE: &str = "[[routes]]\nname = \"r\"\npaths = [\"/\"]\nupstream = \"p\"\n";

    #[test]
    fn the_same_file_changes_nothing() {
        let text = format!("{POOL}{ROUTE}");
        let d = diff(&text, &text);
        assert!(d.is_empty());
        assert_eq!(d.to_string(), "no changes");
    }

    #[test]
    fn a_target_is_its_address_and_weight() {
        let same = "[upstreams.p]\ntargets = [{ addr = \"127.0.0.1:1\", weight = 1 }, \
                    \"127.0.0.1:2\"]\n";
        assert!(diff(&format!("{POOL}{ROUTE}"), &format!("{same}{ROUTE}"))
            .targets
            .is_empty());
        let heavier = "[upstreams.p]\ntargets = [\"127.0.0.1:1\", \
                       { addr = \"127.0.0.1:2\", weight = 5 }]\n";
        let d = diff(&format!("{POOL}{ROUTE}"), &format!("{heavier}{ROUTE}"));
        assert_eq!(
            d.targets.changed,
            BTreeMap::from([("p/127.0.0.1:2".to_string(), vec!["weight".to_string()])])
        );
        assert_eq!(
            d.to_string(),
            "upstreams ~p(targets); targets ~p/127.0.0.1:2(weight)"
        );
    }

    #[test]
    fn other_sections_are_named_by_their_keys() {
        let text = format!("{POOL}{ROUTE}");
        let with = format!("[server]\ntrusted_proxies = [\"10.0.0.0/8\"]\n{text}");
        let d = diff(&text, &with);
        assert_eq!(d.settings, ["server.trusted_proxies"]);
        assert!(d.routes.is_empty() && d.upstreams.is_empty());
    }

    #[test]
    fn moved_routes_are_said_to_have_moved() {
        let other = "[[routes]]\nname = \"s\"\npaths = [\"/s\"]\nupstream = \"p\"\n";
        let d = diff(
            &format!("{POOL}{ROUTE}{other}"),
            &format!("{POOL}{other}{ROUTE}"),
        );
        assert_eq!(d.settings, ["routes.order"]);
        assert!(d.routes.is_empty());
        // A route added at the top moves none of the others.
        let d = diff(&format!("{POOL}{ROUTE}"), &format!("{POOL}{other}{ROUTE}"));
        assert!(d.settings.is_empty());
        assert_eq!(d.routes.added, ["s"]);
    }

    #[test]
    fn a_secret_change_is_seen_and_not_shown() {
        let policy = |secret: &str| {
            format!(
                "{POOL}{ROUTE}[policies.j]\nkind = \"jwt\"\nalgorithms = [\"HS256\"]\n\
                 secret = \"{secret}\"\n"
            )
        };
        let d = diff(
            &policy("a-first-secret-that-is-32-bytes!"),
            &policy("another-secret-that-is-32-bytes!"),
        );
        assert_eq!(d.policies.changed["j"], ["secret"]);
        let shown = serde_json::to_string(&d).unwrap() + &d.to_string();
        assert!(!shown.contains("secret-that"), "{shown}");
    }
}
