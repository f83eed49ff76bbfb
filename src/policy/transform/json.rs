//! JSON body edits by JSON Pointer (RFC 6901, through `jsonptr`): pointers are parsed at load,
//! a request only walks them.

use jsonptr::PointerBuf;
use serde_json::{Map, Value};

/// The edits of one policy, applied in this order: `unwrap`, `remove`, `rename`, `set`, `wrap`.
#[derive(Default)]
pub struct JsonEdits {
    pub unwrap: Option<String>,
    pub remove: Vec<PointerBuf>,
    pub rename: Vec<(PointerBuf, PointerBuf)>,
    pub set: Vec<(PointerBuf, Value)>,
    pub wrap: Option<String>,
}

/// A pointer as written, or why it is not one.
pub fn pointer(src: &str) -> Result<PointerBuf, String> {
    PointerBuf::parse(src).map_err(|e| format!("{src:?} is not a JSON Pointer: {e}"))
}

impl JsonEdits {
    pub fn is_empty(&self) -> bool {
        self.unwrap.is_none()
            && self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.wrap.is_none()
    }

    /// Edit `doc`. `set` creates the objects on its path (replacing a value in the way, as
    /// JSON Pointer assignment does); an edit whose place cannot exist (removing a missing
    /// field, an array index past the end) changes nothing, and the others still apply.
    pub fn apply(&self, mut doc: Value) -> Value {
        if let Some(key) = &self.unwrap {
            if let Some(inner) = doc.as_object_mut().and_then(|o| o.remove(key)) {
                doc = inner;
            }
        }
        for p in &self.remove {
            p.delete(&mut doc);
        }
        for (from, to) in &self.rename {
            if let Some(v) = from.delete(&mut doc) {
                let _ = to.assign(&mut doc, v);
            }
        }
        for (p, v) in &self.set {
            let _ = p.assign(&mut doc, v.clone());
        }
        if let Some(key) = &self.wrap {
            let mut outer = Map::with_capacity(1);
            outer.insert(key.clone(), doc);
            doc = Value::Object(outer);
        }
        doc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn edits() -> JsonEdits {
        JsonEdits {
            remove: vec![
                pointer("/password").unwrap(),
                pointer("/missing/x").unwrap(),
            ],
            rename: vec![(
                pointer("/userName").unwrap(),
                pointer("/user_name").unwrap(),
            )],
            set: vec![
                (pointer("/meta/gateway").unwrap(), json!("pylon")),
                (pointer("/tags/-").unwrap(), json!("new")),
                (pointer("/a~1b").unwrap(), json!(1)),
            ],
            ..JsonEdits::default()
        }
    }

    #[test]
    fn set_remove_rename_by_pointer() {
        let doc = json!({"userName": "al", "password": "x", "tags": ["t"]});
        let out = edits().apply(doc);
        assert_eq!(
            out,
            json!({"user_name": "al", "tags": ["t", "new"], "meta": {"gateway": "pylon"}, "a/b": 1})
        );
    }

    #[test]
    fn wrap_and_unwrap() {
        let e = JsonEdits {
            unwrap: Some("data".into()),
            wrap: Some("result".into()),
            ..JsonEdits::default()
        };
        assert_eq!(e.apply(json!({"data": [1, 2]})), json!({"result": [1, 2]}));
        // Nothing to unwrap: the document is wrapped as it is.
        assert_eq!(e.apply(json!([3])), json!({"result": [3]}));
    }

    #[test]
    fn edits_that_do_not_fit_change_nothing() {
        let e = JsonEdits {
            set: vec![(pointer("/list/5").unwrap(), json!(1))],
            remove: vec![pointer("/nothing").unwrap()],
            ..JsonEdits::default()
        };
        assert_eq!(e.apply(json!({"list": [0]})), json!({"list": [0]}));
        assert!(pointer("no-slash").is_err());
    }
}
