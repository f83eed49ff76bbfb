//! `kind = "file"`: a list of targets in a file that something else writes (consul-template,
//! a sidecar, a deploy script), read again every `interval`. TOML `targets = [...]`, or JSON
//! `{"targets": [...]}` for a `.json` file; each target as in a pool's `targets`. Names are
//! resolved by the system resolver at each read.

use super::{Answer, Found, Source};
use crate::config::{DiscoveryConfig, TargetConfig};
use async_trait::async_trait;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Listed {
    targets: Vec<TargetConfig>,
}

pub struct File {
    path: PathBuf,
}

impl File {
    pub fn new(config: &DiscoveryConfig) -> Result<File, String> {
        Ok(File {
            path: config
                .path
                .as_ref()
                .map(|p| p.get_ref().clone())
                .ok_or("no `path`")?,
        })
    }
}

#[async_trait]
impl Source for File {
    async fn find(&self) -> Result<Answer, String> {
        let shown = self.path.display();
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|e| format!("reading {shown}: {e}"))?;
        let json = self.path.extension().is_some_and(|e| e == "json");
        let listed: Listed = if json {
            serde_json::from_str(&text).map_err(|e| format!("{shown}: {e}"))?
        } else {
            toml::from_str(&text).map_err(|e| format!("{shown}: {e}"))?
        };
        let mut found = Vec::with_capacity(listed.targets.len());
        for t in &listed.targets {
            if !(1..=crate::config::MAX_WEIGHT).contains(&t.weight()) {
                return Err(format!(
                    "{shown}: {}: invalid weight {}",
                    t.addr(),
                    t.weight()
                ));
            }
            let addr = tokio::net::lookup_host(t.addr())
                .await
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| format!("{shown}: cannot resolve {:?}", t.addr()))?;
            found.push(Found {
                addr,
                weight: t.weight(),
                host: t.addr().to_string(),
            });
        }
        Ok(Answer { found, ttl: None })
    }
}
