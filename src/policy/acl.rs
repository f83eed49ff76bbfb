//! `acl`: allow or deny consumer groups on a route.

use super::Consumer;
use crate::config::AclConfig;

pub struct Acl {
    allow: Box<[String]>,
    deny: Box<[String]>,
}

impl Acl {
    pub fn new(config: &AclConfig) -> Acl {
        Acl {
            allow: config.allow.iter().cloned().collect(),
            deny: config.deny.iter().cloned().collect(),
        }
    }

    /// Whether this consumer may pass.
    pub fn permits(&self, consumer: &Consumer) -> bool {
        let member = |list: &[String]| consumer.groups.iter().any(|g| list.contains(g));
        if !self.allow.is_empty() {
            member(&self.allow)
        } else {
            !member(&self.deny)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(groups: &[&str]) -> Consumer {
        Consumer::new("c", groups.iter().map(|g| g.to_string()).collect())
    }

    #[test]
    fn allow_and_deny() {
        let allow = Acl::new(&AclConfig {
            allow: vec!["gold".into()],
            deny: vec![],
        });
        assert!(allow.permits(&consumer(&["silver", "gold"])));
        assert!(!allow.permits(&consumer(&["silver"])));
        let deny = Acl::new(&AclConfig {
            allow: vec![],
            deny: vec!["banned".into()],
        });
        assert!(deny.permits(&consumer(&["gold"])));
        assert!(!deny.permits(&consumer(&["banned"])));
    }
}
