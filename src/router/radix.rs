//! A compressed prefix tree over bytes, for path-prefix routing.
//!
//! Finding every route prefix of a request path walks the path once, so the cost depends on the
//! path's length, not on how many routes there are.

pub struct RadixTree<T> {
    root: Node<T>,
}

struct Node<T> {
    label: Box<[u8]>,
    value: Option<T>,
    /// Sorted by the first byte of their labels, which are distinct.
    children: Vec<Node<T>>,
}

impl<T> Node<T> {
    fn leaf(label: &[u8]) -> Self {
        Node {
            label: label.into(),
            value: None,
            children: Vec::new(),
        }
    }

    fn child_index(&self, first: u8) -> Result<usize, usize> {
        self.children.binary_search_by_key(&first, |c| c.label[0])
    }

    /// `key` starts with this node's label.
    fn slot(&mut self, key: &[u8]) -> &mut Option<T> {
        let rest = &key[self.label.len()..];
        let Some(&first) = rest.first() else {
            return &mut self.value;
        };
        match self.child_index(first) {
            Ok(i) => {
                let child = &mut self.children[i];
                let common = child
                    .label
                    .iter()
                    .zip(rest)
                    .take_while(|(a, b)| a == b)
                    .count();
                if common < child.label.len() {
                    let mut tail = std::mem::replace(child, Node::leaf(&rest[..common]));
                    tail.label = tail.label[common..].into();
                    child.children.push(tail);
                }
                child.slot(rest)
            }
            Err(i) => {
                self.children.insert(i, Node::leaf(rest));
                &mut self.children[i].value
            }
        }
    }
}

impl<T> Default for RadixTree<T> {
    fn default() -> Self {
        RadixTree {
            root: Node::leaf(b""),
        }
    }
}

impl<T> RadixTree<T> {
    /// The value stored under `key`, inserted with `init` when absent.
    pub fn entry(&mut self, key: &[u8], init: impl FnOnce() -> T) -> &mut T {
        self.root.slot(key).get_or_insert_with(init)
    }

    /// Call `f(value, prefix_len)` for every stored key that is a prefix of `key`, shortest first.
    pub fn prefixes_of<'a>(&'a self, key: &[u8], mut f: impl FnMut(&'a T, usize)) {
        let mut node = &self.root;
        let mut consumed = 0;
        loop {
            if let Some(v) = &node.value {
                f(v, consumed);
            }
            let rest = &key[consumed..];
            let Some(&first) = rest.first() else {
                return;
            };
            match node.child_index(first) {
                Ok(i) if rest.starts_with(&node.children[i].label) => {
                    node = &node.children[i];
                    consumed += node.label.len();
                }
                _ => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(t: &RadixTree<&'static str>, key: &str) -> Vec<(&'static str, usize)> {
        let mut out = Vec::new();
        t.prefixes_of(key.as_bytes(), |v, n| out.push((*v, n)));
        out
    }

    #[test]
    fn finds_every_prefix_in_order() {
        let mut t = RadixTree::default();
        for k in ["/", "/api", "/api/orders", "/apix", "/b"] {
            *t.entry(k.as_bytes(), || "") = k;
        }
        assert_eq!(
            found(&t, "/api/orders/7"),
            vec![("/", 1), ("/api", 4), ("/api/orders", 11)]
        );
        assert_eq!(
            found(&t, "/apix"),
            vec![("/", 1), ("/api", 4), ("/apix", 5)]
        );
        assert_eq!(found(&t, "/ap"), vec![("/", 1)]);
        assert_eq!(found(&t, "/b"), vec![("/", 1), ("/b", 2)]);
        assert_eq!(found(&t, "x"), vec![]);
    }

    #[test]
    fn splits_keep_values() {
        let mut t = RadixTree::default();
        *t.entry(b"/abcdef", || 0) = 1;
        *t.entry(b"/abc", || 0) = 2;
        *t.entry(b"/abd", || 0) = 3;
        *t.entry(b"/abc", || 0) += 10;
        let mut out = Vec::new();
        t.prefixes_of(b"/abcdefg", |v, n| out.push((*v, n)));
        assert_eq!(out, vec![(12, 4), (1, 7)]);
        let mut out = Vec::new();
        t.prefixes_of(b"/abd", |v, n| out.push((*v, n)));
        assert_eq!(out, vec![(3, 4)]);
    }
}
