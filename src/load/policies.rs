//! Each `[policies.NAME]` handed to the module of its `kind` ([`registry`]), which parses and
//! checks the rest of the table.

use crate::config::{ConfigError, ConsumerConfig, Located};
use crate::policy::{registry, Place, Policies, Policy, Source};
use std::collections::BTreeMap;
use toml::de::DeValue;
use toml::Spanned;

/// Parse every table, in the file's order. A policy that fails is left out, its errors go to
/// `errors` and its name to `unparsed` (so a route naming it gets no second error).
pub fn parse(
    tables: Vec<(String, Spanned<DeValue<'_>>)>,
    consumers: &BTreeMap<String, Located<ConsumerConfig>>,
    errors: &mut Vec<ConfigError>,
    unparsed: &mut Vec<String>,
) -> Policies {
    let mut policies = Policies::new();
    for (name, value) in tables {
        match parse_one(&name, value, consumers) {
            Ok(p) => {
                policies.insert(name, p);
            }
            Err(e) => {
                errors.extend(e);
                unparsed.push(name);
            }
        }
    }
    policies
}

/// One `[policies.NAME]`: its `kind` picks the module that parses and checks the rest.
fn parse_one(
    name: &str,
    value: Spanned<DeValue<'_>>,
    consumers: &BTreeMap<String, Located<ConsumerConfig>>,
) -> Result<Located<Policy>, Vec<ConfigError>> {
    let span = value.span();
    let place = Place {
        name: name.to_string(),
        span: span.clone(),
    };
    let DeValue::Table(mut table) = value.into_inner() else {
        return Err(vec![place.error("expected a table")]);
    };
    let kind = match table.remove("kind").map(|k| (k.span(), k.into_inner())) {
        Some((kspan, DeValue::String(k))) => match registry::find(&k) {
            Some(kind) => kind,
            None => {
                return Err(vec![ConfigError::at(
                    kspan,
                    format!(
                        "policy `{name}`: unknown kind `{k}`; expected one of {}",
                        registry::names()
                    ),
                )])
            }
        },
        Some((kspan, _)) => return Err(vec![ConfigError::at(kspan, "`kind` must be a string")]),
        None => {
            return Err(vec![place.error(format!(
                "missing `kind`; expected one of {}",
                registry::names()
            ))])
        }
    };
    let value = Spanned::new(span.clone(), DeValue::Table(table));
    let spec = (kind.parse)(&mut Source::new(place, value, consumers))?;
    Ok(Located {
        value: Policy {
            kind: kind.name,
            spec,
        },
        span,
    })
}
