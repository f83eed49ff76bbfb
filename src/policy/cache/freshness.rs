//! How long a stored answer is fresh, and how old it already is (RFC 9111 §4.2).
//!
//! Pingora's own calculation counts a lifetime from the moment the gateway stores the answer.
//! An answer that has already spent time in caches before us (`Age`), or whose `Expires` is
//! written against the origin's clock (`Date`), would then stay fresh too long. Here:
//! the freshness lifetime is `s-maxage`, else `max-age`, else `Expires` minus `Date` (§4.2.1);
//! the age on arrival is the larger of `Age` and the time since `Date` (§4.2.3); the answer is
//! fresh until its lifetime minus that age has passed. The age on arrival also dates the entry's
//! creation back, so the `Age` sent on hits counts it (§5.1).

use http::header::{AGE, DATE, EXPIRES};
use http::HeaderMap;
use httpdate::HttpDate;
use pingora_cache::cache_control::{CacheControl, InterpretCacheControl};
use std::time::{Duration, SystemTime};

/// The freshness of an answer as it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// How long it is fresh, counted from its creation.
    pub lifetime: Duration,
    /// How old it was when it arrived.
    pub age: Duration,
}

impl Freshness {
    /// `cc`: the answer's (CDN-)Cache-Control. `None` lifetime: the answer says nothing.
    pub fn of(
        cc: Option<&CacheControl>,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Option<Freshness> {
        let date = one_date(headers, DATE);
        let lifetime = match cc.and_then(InterpretCacheControl::fresh_duration) {
            Some(lifetime) => lifetime,
            None => {
                // Several or unparseable `Expires`: in the past (§5.3).
                let expires = match headers.get_all(EXPIRES).iter().count() {
                    0 => return None,
                    1 => one_date(headers, EXPIRES).unwrap_or(SystemTime::UNIX_EPOCH),
                    _ => SystemTime::UNIX_EPOCH,
                };
                expires
                    .duration_since(date.unwrap_or(now))
                    .unwrap_or(Duration::ZERO)
            }
        };
        Some(Freshness {
            lifetime,
            age: age_on_arrival(headers, date, now),
        })
    }

    /// A freshness the configuration gives (`default_ttl`) to an answer that has none.
    pub fn given(lifetime: Duration, headers: &HeaderMap, now: SystemTime) -> Freshness {
        Freshness {
            lifetime,
            age: age_on_arrival(headers, one_date(headers, DATE), now),
        }
    }

    /// Capped at `max` from now.
    pub fn capped(self, max: Duration) -> Freshness {
        let left = self.lifetime.saturating_sub(self.age);
        match left > max {
            true => Freshness {
                lifetime: self.age + max,
                age: self.age,
            },
            false => self,
        }
    }

    /// When the entry was created, by the answer's age, and until when it is fresh.
    pub fn times(self, now: SystemTime) -> (SystemTime, SystemTime) {
        let created = now.checked_sub(self.age).unwrap_or(now);
        let until = created + self.lifetime;
        // Already stale: one second in the past, as Pingora marks a zero lifetime.
        let until = match until > now {
            true => until,
            false => now - Duration::from_secs(1),
        };
        (created, until)
    }
}

/// A header that must appear once and hold an HTTP date.
fn one_date(headers: &HeaderMap, name: http::HeaderName) -> Option<SystemTime> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let date: HttpDate = value.to_str().ok()?.trim().parse().ok()?;
    Some(date.into())
}

/// §4.2.3: the larger of the `Age` it came with and the time since its `Date`.
fn age_on_arrival(headers: &HeaderMap, date: Option<SystemTime>, now: SystemTime) -> Duration {
    let apparent = date
        .and_then(|d| now.duration_since(d).ok())
        .unwrap_or(Duration::ZERO);
    // The first value only, as several are written (`7200, 0`, or one per line); one that is
    // not a number of seconds is ignored (§5.1).
    let age = headers
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split([',', ';']).next())
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .map(|s| s.parse::<u64>().unwrap_or(u64::from(u32::MAX)));
    apparent.max(Duration::from_secs(age.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::ResponseHeader;

    fn headers(list: &[(&str, String)]) -> ResponseHeader {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        for (k, v) in list {
            resp.append_header(k.to_string(), v.as_str()).unwrap();
        }
        resp
    }

    fn fresh(list: &[(&str, String)], now: SystemTime) -> Option<Freshness> {
        let resp = headers(list);
        let cc = CacheControl::from_resp_headers(&resp);
        Freshness::of(cc.as_ref(), &resp.headers, now)
    }

    fn date(t: SystemTime) -> String {
        httpdate::fmt_http_date(t)
    }

    #[test]
    fn an_age_it_came_with_shortens_its_freshness() {
        let now = SystemTime::now();
        let f = fresh(
            &[("cache-control", "max-age=60".into()), ("age", "50".into())],
            now,
        )
        .unwrap();
        assert_eq!(f.age, Duration::from_secs(50));
        let (created, until) = f.times(now);
        assert_eq!(
            now.duration_since(created).unwrap(),
            Duration::from_secs(50)
        );
        assert_eq!(until.duration_since(now).unwrap(), Duration::from_secs(10));
        // Older than its lifetime: stale on arrival.
        let f = fresh(
            &[("cache-control", "max-age=60".into()), ("age", "90".into())],
            now,
        )
        .unwrap();
        assert!(f.times(now).1 < now);
        // A bad Age is ignored.
        let f = fresh(
            &[("cache-control", "max-age=60".into()), ("age", "-5".into())],
            now,
        )
        .unwrap();
        assert_eq!(f.age, Duration::ZERO);
    }

    #[test]
    fn expires_is_counted_from_date() {
        let now = SystemTime::now();
        let then = now - Duration::from_secs(3600);
        // Written an hour ago by a clock that gave it two minutes: long stale.
        let f = fresh(
            &[
                ("date", date(then)),
                ("expires", date(then + Duration::from_secs(120))),
            ],
            now,
        )
        .unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(120));
        assert!(f.times(now).1 < now);
        // Two Expires: stale.
        let two = fresh(&[("expires", date(now)), ("expires", date(now))], now).unwrap();
        assert_eq!(two.lifetime, Duration::ZERO);
        // Nothing said: no freshness.
        assert_eq!(fresh(&[], now), None);
    }

    #[test]
    fn max_ttl_caps_what_is_left() {
        let now = SystemTime::now();
        let f = fresh(
            &[
                ("cache-control", "max-age=3600".into()),
                ("age", "100".into()),
            ],
            now,
        )
        .unwrap()
        .capped(Duration::from_secs(60));
        assert_eq!(
            f.times(now).1.duration_since(now).unwrap(),
            Duration::from_secs(60)
        );
    }
}
