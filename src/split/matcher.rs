//! A backend's `match`: requests sent to it whatever the weights (testers, internal users).

use crate::config::SplitMatchConfig;
use crate::consumer::Identity;
use http::HeaderName;
use pingora::http::RequestHeader;

pub struct Match {
    headers: Box<[(HeaderName, String)]>,
    cookies: Box<[(String, String)]>,
    query: Box<[(String, String)]>,
    consumers: Box<[String]>,
    groups: Box<[String]>,
}

impl Match {
    pub fn compile(config: &SplitMatchConfig) -> Result<Match, String> {
        let headers = config
            .headers
            .iter()
            .map(|(name, value)| {
                let name = HeaderName::try_from(name.as_str())
                    .map_err(|_| format!("`match.headers`: `{name}` is not a header name"))?;
                Ok((name, value.clone()))
            })
            .collect::<Result<_, String>>()?;
        let pairs = |m: &std::collections::BTreeMap<String, String>| {
            m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        Ok(Match {
            headers,
            cookies: pairs(&config.cookies),
            query: pairs(&config.query),
            consumers: config.consumers.clone().into(),
            groups: config.groups.clone().into(),
        })
    }

    /// Whether the request has everything the rule asks.
    pub fn matches(&self, req: &RequestHeader, identity: &Identity) -> bool {
        let headers = &req.headers;
        self.headers.iter().all(|(name, value)| {
            headers
                .get(name)
                .is_some_and(|v| v.as_bytes() == value.as_bytes())
        }) && self
            .cookies
            .iter()
            .all(|(name, value)| crate::headers::cookie(headers, name) == Some(value.as_bytes()))
            && self.query.iter().all(|(name, value)| {
                let query = req.uri.query().unwrap_or("");
                form_urlencoded::parse(query.as_bytes()).any(|(k, v)| k == *name && v == *value)
            })
            && (self.consumers.is_empty()
                || identity
                    .consumer
                    .as_ref()
                    .is_some_and(|c| self.consumers.iter().any(|n| **n == *c.name)))
            && (self.groups.is_empty()
                || identity
                    .consumer
                    .as_ref()
                    .is_some_and(|c| c.groups.iter().any(|g| self.groups.contains(g))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::Consumer;
    use std::sync::Arc;

    fn req(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn every_part_of_a_rule_must_hold() {
        let config = SplitMatchConfig {
            headers: [("x-canary".to_string(), "1".to_string())].into(),
            cookies: [("beta".to_string(), "yes".to_string())].into(),
            query: [("v".to_string(), "2".to_string())].into(),
            groups: vec!["staff".into()],
            ..SplitMatchConfig::default()
        };
        let m = Match::compile(&config).unwrap();
        let staff = Identity::of(Arc::new(Consumer::new("ann", vec!["staff".into()])));
        let other = Identity::of(Arc::new(Consumer::new("bob", vec!["users".into()])));
        let all = req(
            "/p?a=1&v=2",
            &[("x-canary", "1"), ("cookie", "a=b; beta=yes")],
        );
        assert!(m.matches(&all, &staff));
        assert!(!m.matches(&all, &other));
        assert!(!m.matches(&all, &Identity::default()));
        let no_cookie = req("/p?v=2", &[("x-canary", "1")]);
        assert!(!m.matches(&no_cookie, &staff));
        let wrong_query = req("/p?v=3", &[("x-canary", "1"), ("cookie", "beta=yes")]);
        assert!(!m.matches(&wrong_query, &staff));
        let by_name = Match::compile(&SplitMatchConfig {
            consumers: vec!["bob".into()],
            ..SplitMatchConfig::default()
        })
        .unwrap();
        assert!(by_name.matches(&req("/", &[]), &other));
        assert!(!by_name.matches(&req("/", &[]), &staff));
    }
}
