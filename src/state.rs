//! State that outlives one configuration: the one place where a reload finds what to keep.
//!
//! Rate windows, verified-credential caches, JWKS sets, Redis connections, per-target health,
//! drains and in-flight counts must survive a reload of everything that did not change. Each
//! piece is kept here under what identifies it: a kind (`"jwks"`, `"target"`), a name (the
//! policy's, or `upstream/address`) and a key of the kind's choosing, the part of the
//! configuration that decides whether the old state still holds (a JWKS URL and its intervals,
//! a rate limit's settings). Compiling a configuration asks [`Keeper::keep`] for each piece: the
//! previous configuration's value when its key is equal, a fresh one otherwise. What the new
//! configuration does not ask for is not carried, so it is dropped with the old snapshot.
//!
//! The reloader owns this: it hands the running snapshot's [`Carried`] to the compile of the
//! next one. Nothing here is touched on the request path.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

type Slot = (&'static str, String);

struct Entry {
    /// The kind's key, compared with `==` against the next configuration's.
    key: Box<dyn Any + Send + Sync>,
    value: Arc<dyn Any + Send + Sync>,
}

/// Everything a configuration kept, for the reload after it. A slot may hold several values
/// under different keys: two policies sharing a JWKS URL with different intervals each keep
/// their own set.
#[derive(Default)]
pub struct Carried {
    entries: HashMap<Slot, Vec<Entry>>,
}

impl Carried {
    /// Every value of type `T` this configuration holds (the JWKS sets, for their refresher).
    pub fn all<T: Any + Send + Sync>(&self) -> impl Iterator<Item = Arc<T>> + '_ {
        self.entries
            .values()
            .flatten()
            .filter_map(|e| Arc::clone(&e.value).downcast::<T>().ok())
    }

    /// How many pieces are kept, for tests and logs.
    pub fn len(&self) -> usize {
        self.entries.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Collects what a configuration being compiled keeps, reusing the previous one's state.
pub struct Keeper<'a> {
    previous: Option<&'a Carried>,
    next: Carried,
}

impl<'a> Keeper<'a> {
    /// `previous`: the running configuration's state; `None` at start.
    pub fn new(previous: Option<&'a Carried>) -> Keeper<'a> {
        Keeper {
            previous,
            next: Carried::default(),
        }
    }

    /// Whether this is a reload (there is a running configuration), not the first load.
    pub fn reloading(&self) -> bool {
        self.previous.is_some()
    }

    /// The value kept under `(kind, name)` when its key equals `key`, else `make()`'s. Asking
    /// twice for the same slot in one configuration gives the same value.
    pub fn keep<K, T, E>(
        &mut self,
        kind: &'static str,
        name: &str,
        key: K,
        make: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E>
    where
        K: PartialEq + Send + Sync + 'static,
        T: Send + Sync + 'static,
    {
        let slot = (kind, name.to_string());
        let matching = |entries: &Vec<Entry>| {
            entries.iter().find_map(|e| {
                let same = e.key.downcast_ref::<K>().is_some_and(|k| *k == key);
                same.then(|| Arc::clone(&e.value).downcast::<T>().ok())
                    .flatten()
            })
        };
        if let Some(v) = self.next.entries.get(&slot).and_then(matching) {
            return Ok(v);
        }
        let value = match self
            .previous
            .and_then(|p| p.entries.get(&slot))
            .and_then(matching)
        {
            Some(v) => v,
            None => Arc::new(make()?),
        };
        self.next.entries.entry(slot).or_default().push(Entry {
            key: Box::new(key),
            value: Arc::clone(&value) as Arc<dyn Any + Send + Sync>,
        });
        Ok(value)
    }

    /// Like [`Keeper::keep`] for state that cannot fail to build.
    pub fn keep_default<K, T>(&mut self, kind: &'static str, name: &str, key: K) -> Arc<T>
    where
        K: PartialEq + Send + Sync + 'static,
        T: Default + Send + Sync + 'static,
    {
        match self.keep(kind, name, key, || {
            Ok::<T, std::convert::Infallible>(T::default())
        }) {
            Ok(v) => v,
            Err(never) => match never {},
        }
    }

    pub fn finish(self) -> Carried {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn kept_while_the_key_is_equal() {
        let mut first = Keeper::new(None);
        let a: Arc<AtomicU64> = first.keep_default("count", "a", 10u64);
        let b: Arc<AtomicU64> = first.keep_default("count", "b", 10u64);
        a.store(5, Ordering::Relaxed);
        // The same slot twice in one configuration: one value.
        assert!(Arc::ptr_eq(&a, &first.keep_default("count", "a", 10u64)));
        let one = first.finish();
        assert_eq!(one.len(), 2);

        let mut second = Keeper::new(Some(&one));
        let a2: Arc<AtomicU64> = second.keep_default("count", "a", 10u64);
        assert!(Arc::ptr_eq(&a, &a2), "an unchanged key keeps its state");
        let b2: Arc<AtomicU64> = second.keep_default("count", "b", 11u64);
        assert!(!Arc::ptr_eq(&b, &b2), "a changed key starts afresh");
        // A different type under the same slot is not mistaken for the old one.
        let other: Arc<String> = second.keep_default("count", "a", 10u64);
        assert_eq!(*other, "");
        // Two keys in one slot are two values, both kept.
        let c1: Arc<AtomicU64> = second.keep_default("shared", "url", 1u8);
        let c2: Arc<AtomicU64> = second.keep_default("shared", "url", 2u8);
        assert!(!Arc::ptr_eq(&c1, &c2));
        let two = second.finish();
        assert_eq!(two.all::<AtomicU64>().count(), 4);
        let mut third = Keeper::new(Some(&two));
        assert!(Arc::ptr_eq(&c1, &third.keep_default("shared", "url", 1u8)));
        assert!(Arc::ptr_eq(&c2, &third.keep_default("shared", "url", 2u8)));
        let three = third.finish();
        drop((one, two, three, a2));
        // Nothing but the test holds `a` now: what is no longer named is dropped.
        assert_eq!(Arc::strong_count(&a), 1);
    }

    #[test]
    fn errors_are_passed_on() {
        let mut k = Keeper::new(None);
        let r: Result<Arc<u8>, String> = k.keep("x", "y", (), || Err("no".to_string()));
        assert_eq!(r.unwrap_err(), "no");
        assert!(k.finish().is_empty());
    }
}
