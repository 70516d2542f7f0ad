//! Aliases (ModelMesh's vmodels, Seldon's experiments): a name that stands for one model,
//! or for several by weight (a canary). Aliases and models share one namespace; a model
//! an alias targets cannot be deleted. The routing table carries them and the gateway
//! resolves them itself; a route call naming an alias is answered for a target picked by
//! weight. Moving an alias takes effect only once each new target has as many loaded
//! copies as the old targets had (loaded first, then switched), so a cut-over under load
//! meets no cold start.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tracing::info;

use super::place::Purpose;
use super::{Pool, PoolError};
use crate::events::{EventKind, NewEvent};
use crate::spec::ModelName;
use mm_wire::{AliasEntry, AliasTarget, MAX_ALIAS_TARGETS, MAX_ALIAS_WEIGHT};

/// Picks of route calls naming an alias (a Weyl sequence over the weights).
static PICKS: AtomicU64 = AtomicU64::new(0);

/// The body of `PUT /api/v1/aliases/{name}`: one target, or several with weights.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AliasRequest {
    /// The one model the alias stands for.
    #[serde(default)]
    pub target: Option<String>,
    /// The models it stands for, by weight (1 to 10,000 each, at most 16).
    #[serde(default)]
    pub targets: Option<Vec<AliasTarget>>,
}

/// An alias as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AliasView {
    pub name: String,
    pub targets: Vec<AliasTarget>,
}

/// Targets of an alias, checked (names, weights, no repeats); not yet against the table.
fn parse_request(body: &[u8]) -> Result<Vec<(ModelName, u32)>, PoolError> {
    let request: AliasRequest =
        serde_json::from_slice(body).map_err(|e| PoolError::BadAlias(e.to_string()))?;
    let targets = match (request.target, request.targets) {
        (Some(model), None) => vec![AliasTarget { model, weight: 1 }],
        (None, Some(targets)) => targets,
        _ => {
            return Err(PoolError::BadAlias(
                "give either \"target\" or \"targets\"".into(),
            ))
        }
    };
    if targets.is_empty() || targets.len() > MAX_ALIAS_TARGETS {
        return Err(PoolError::BadAlias(format!(
            "an alias has 1 to {MAX_ALIAS_TARGETS} targets"
        )));
    }
    let mut out: Vec<(ModelName, u32)> = Vec::with_capacity(targets.len());
    for t in targets {
        let model = ModelName::new(&t.model)
            .map_err(|e| PoolError::BadAlias(format!("target '{}': {e}", t.model)))?;
        if t.weight == 0 || t.weight > MAX_ALIAS_WEIGHT {
            return Err(PoolError::BadAlias(format!(
                "target '{model}': weight must be 1 to {MAX_ALIAS_WEIGHT}"
            )));
        }
        if out.iter().any(|(m, _)| *m == model) {
            return Err(PoolError::BadAlias(format!("target '{model}' is repeated")));
        }
        out.push((model, t.weight));
    }
    Ok(out)
}

/// A stored alias record (name, JSON); `None`, logged, if it does not parse.
fn decode_record(name: &str, value: &[u8]) -> Option<(ModelName, Vec<(ModelName, u32)>)> {
    let decoded = ModelName::new(name)
        .map_err(|e| e.to_string())
        .and_then(|n| {
            parse_request(value)
                .map(|ts| (n, ts))
                .map_err(|e| e.to_string())
        });
    match decoded {
        Ok(alias) => Some(alias),
        Err(e) => {
            tracing::error!(alias = %name, error = %e, "a stored alias could not be read; it is not served");
            None
        }
    }
}

fn view(name: &ModelName, targets: &[(ModelName, u32)]) -> AliasView {
    AliasView {
        name: name.to_string(),
        targets: targets
            .iter()
            .map(|(m, w)| AliasTarget {
                model: m.to_string(),
                weight: *w,
            })
            .collect(),
    }
}

impl Pool {
    /// Every alias, in name order.
    pub fn aliases(&self) -> Vec<AliasView> {
        let t = self.table();
        t.aliases.iter().map(|(n, ts)| view(n, ts)).collect()
    }

    /// One alias.
    pub fn alias(&self, name: &str) -> Result<AliasView, PoolError> {
        let name = ModelName::new(name)?;
        let t = self.table();
        t.aliases
            .get(&name)
            .map(|ts| view(&name, ts))
            .ok_or_else(|| PoolError::UnknownAlias(name.to_string()))
    }

    /// Creates alias `name` or moves it (`true`: created). Each new target is loaded on
    /// as many copies as the old targets had before the alias moves; refused if the name
    /// is a model's (409), a target is not a registered model (400), or the copies could
    /// not be loaded (503, the alias unchanged).
    pub async fn put_alias(&self, name: &str, body: &[u8]) -> Result<(bool, AliasView), PoolError> {
        let name = ModelName::new(name)?;
        if mm_wire::is_version_name(name.as_str()) {
            return Err(PoolError::ReservedName(name.to_string()));
        }
        let targets = parse_request(body)?;
        let _name = self.name_lock(&name).lock().await;
        let (created, needed) = self.check_alias(&name, &targets)?;
        for (model, _) in &targets {
            self.load_for_alias(&name, model, needed).await?;
        }
        self.persist_alias(&name, Some(&targets)).await?;
        {
            let mut t = self.table();
            // A target deleted while its copies loaded: refuse rather than route nowhere.
            if let Some((gone, _)) = targets.iter().find(|(m, _)| t.resolve(m).is_none()) {
                return Err(PoolError::BadAlias(format!(
                    "target '{gone}' is not a registered model"
                )));
            }
            t.aliases.insert(name.clone(), targets.clone());
        }
        self.publish_aliases();
        info!(alias = %name, targets = ?targets, created, "alias set");
        self.events().record(
            NewEvent::new(EventKind::Updated)
                .model(&name)
                .reason(format!("alias to {targets:?}")),
        );
        Ok((created, view(&name, &targets)))
    }

    /// Whether alias `name` is new, and how many loaded copies its new targets need
    /// (the most any old target has); refuses a name taken by a model and targets that
    /// are not registered models.
    fn check_alias(
        &self,
        name: &ModelName,
        targets: &[(ModelName, u32)],
    ) -> Result<(bool, usize), PoolError> {
        let t = self.table();
        if t.resolve(name).is_some() {
            return Err(PoolError::NameTaken {
                name: name.to_string(),
                taken_by: "a model",
            });
        }
        if let Some((m, _)) = targets.iter().find(|(m, _)| t.resolve(m).is_none()) {
            return Err(PoolError::BadAlias(format!(
                "target '{m}' is not a registered model"
            )));
        }
        let old = t.aliases.get(name);
        let needed = old
            .into_iter()
            .flatten()
            .filter_map(|(m, _)| t.resolve(m))
            .filter_map(|k| t.get(&k).map(|e| e.loaded_copies()))
            .max()
            .unwrap_or(0);
        Ok((old.is_none(), needed))
    }

    /// Loads copies of `model` until it has `needed` loaded (demand for the first, then
    /// one more at a time, within its `maxCopies`).
    async fn load_for_alias(
        &self,
        alias: &ModelName,
        model: &ModelName,
        needed: usize,
    ) -> Result<(), PoolError> {
        let not_ready = |loaded: usize, reason: String| PoolError::AliasNotReady {
            alias: alias.to_string(),
            model: model.to_string(),
            loaded,
            needed,
            reason,
        };
        for _ in 0..needed {
            let Some(key) = self.table().resolve(model) else {
                return Err(PoolError::BadAlias(format!(
                    "target '{model}' is not a registered model"
                )));
            };
            let loaded = self.table().get(&key).map_or(0, |e| e.loaded_copies());
            if loaded >= needed {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            let placed = if loaded == 0 {
                self.place_copy(
                    &key,
                    Purpose::Demand,
                    now,
                    now + self.inner.settings.route_wait,
                )
                .await
            } else {
                self.place_background(&key, Purpose::Scale).await
            };
            match placed {
                Ok(Some(_)) => {}
                Ok(None) => return Err(not_ready(loaded, "its maxCopies is lower".into())),
                Err(e) => return Err(not_ready(loaded, e.to_string())),
            }
        }
        let loaded = {
            let t = self.table();
            t.resolve(model)
                .and_then(|k| t.get(&k).map(|e| e.loaded_copies()))
                .unwrap_or(0)
        };
        if loaded < needed {
            return Err(not_ready(loaded, "copies went away while loading".into()));
        }
        Ok(())
    }

    /// Deletes alias `name`.
    pub async fn delete_alias(&self, name: &str) -> Result<(), PoolError> {
        let name = ModelName::new(name)?;
        let _name = self.name_lock(&name).lock().await;
        if !self.table().aliases.contains_key(&name) {
            return Err(PoolError::UnknownAlias(name.to_string()));
        }
        self.persist_alias(&name, None).await?;
        self.table().aliases.remove(&name);
        self.publish_aliases();
        info!(alias = %name, "alias deleted");
        self.events()
            .record(NewEvent::new(EventKind::Deleted).model(&name));
        Ok(())
    }

    /// A target of alias `name`, picked by weight; `None` if it is no alias.
    pub(super) fn pick_alias(&self, name: &ModelName) -> Option<ModelName> {
        let t = self.table();
        let targets = t.aliases.get(name)?;
        let total: u64 = targets.iter().map(|(_, w)| u64::from(*w)).sum();
        let x = PICKS
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let point = ((u128::from(x) * u128::from(total)) >> 64) as u64;
        let mut upto = 0u64;
        targets.iter().find_map(|(m, w)| {
            upto += u64::from(*w);
            (point < upto).then(|| m.clone())
        })
    }

    /// The alias that targets model `client`, if any (it may then not be deleted).
    pub(super) fn alias_targeting(&self, client: &ModelName) -> Option<ModelName> {
        let t = self.table();
        t.aliases
            .iter()
            .find(|(_, ts)| ts.iter().any(|(m, _)| m == client))
            .map(|(n, _)| n.clone())
    }

    /// The aliases as the routing table carries them.
    pub(super) fn alias_entries(&self) -> Vec<AliasEntry> {
        self.aliases()
            .into_iter()
            .map(|a| AliasEntry {
                name: a.name,
                targets: a.targets,
            })
            .collect()
    }

    /// Puts aliases read back from the store into the table (name, JSON); a record that
    /// does not parse is logged and left out.
    pub fn restore_aliases(&self, records: &[(String, Vec<u8>)]) {
        let decoded: Vec<_> = records
            .iter()
            .filter_map(|(name, value)| decode_record(name, value))
            .collect();
        self.table().aliases.extend(decoded);
        self.publish_aliases();
    }

    /// Takes the store's aliases as the only ones (a follower reading a snapshot, an
    /// instance taking the lead): in one step, so no admin read sees them half replaced.
    pub(super) fn replace_aliases(&self, records: &[(String, Vec<u8>)]) {
        let decoded = records
            .iter()
            .filter_map(|(name, value)| decode_record(name, value))
            .collect();
        self.table().aliases = decoded;
        self.publish_aliases();
    }

    /// Applies one alias record the leader wrote (`None`: deleted), on a follower.
    pub(super) fn follow_alias(&self, name: &str, value: Option<&[u8]>) {
        match value {
            Some(value) => {
                if let Some((name, targets)) = decode_record(name, value) {
                    self.table().aliases.insert(name, targets);
                }
            }
            None => {
                if let Ok(name) = ModelName::new(name) {
                    self.table().aliases.remove(&name);
                }
            }
        }
        self.publish_aliases();
    }

    async fn persist_alias(
        &self,
        name: &ModelName,
        targets: Option<&[(ModelName, u32)]>,
    ) -> Result<(), PoolError> {
        let Some(store) = &self.inner.store else {
            return Ok(());
        };
        let value = targets
            .map(|ts| {
                let body = serde_json::json!({ "targets": view(name, ts).targets });
                serde_json::to_vec(&body)
            })
            .transpose()
            .map_err(|e| PoolError::Internal(e.to_string()))?;
        store
            .put_alias(name, value)
            .await
            .map_err(|e| PoolError::Store(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked() {
        let ok = |body: &str| parse_request(body.as_bytes()).unwrap();
        assert_eq!(
            ok(r#"{"target":"m"}"#),
            vec![(ModelName::new("m").unwrap(), 1)]
        );
        assert_eq!(
            ok(r#"{"targets":[{"model":"a","weight":90},{"model":"b","weight":10}]}"#).len(),
            2
        );
        for bad in [
            r#"{}"#,
            r#"{"target":"m","targets":[]}"#,
            r#"{"targets":[]}"#,
            r#"{"target":"../m"}"#,
            r#"{"targets":[{"model":"a","weight":0}]}"#,
            r#"{"targets":[{"model":"a","weight":10001}]}"#,
            r#"{"targets":[{"model":"a","weight":1},{"model":"a","weight":2}]}"#,
            r#"{"targets":[{"model":"a"}]}"#,
            r#"{"target":"m","extra":1}"#,
            "not json",
        ] {
            assert!(
                matches!(parse_request(bad.as_bytes()), Err(PoolError::BadAlias(_))),
                "{bad}"
            );
        }
        let many: Vec<String> = (0..17)
            .map(|i| format!(r#"{{"model":"m{i}","weight":1}}"#))
            .collect();
        let body = format!(r#"{{"targets":[{}]}}"#, many.join(","));
        assert!(parse_request(body.as_bytes()).is_err());
    }
}
