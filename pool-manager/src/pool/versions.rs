//! Version records (store kind `Version`) in the table: which Triton-side name serves each
//! model, the update under way, and the last one that failed. One function ([`settle`])
//! makes a model's entries what its spec and record say; a restart, a follower following
//! the leader's writes and a new leader re-reading the store all use it, so each of them
//! holds a model under the name Triton has it loaded by (a new leader adopts those copies
//! instead of loading the model again under its own name).
//!
//! An update that a restart or a failover interrupted goes on where it stopped
//! ([`Pool::resume_updates`]): the new version's entry is back in the table before the
//! reconcile, which adopts the copies it already has, and only the missing ones load.

use std::collections::{HashMap, HashSet};

use tracing::{error, info, warn};

use super::table::{Role, Table};
use super::update::{loading, pinned, Transition, TransitionState, VersionRecord};
use super::Pool;
use crate::spec::{ModelName, ModelSpec};

/// What one model's version record asks of the table.
#[derive(Debug, Clone)]
pub(super) struct Wanted {
    /// The entry that serves the model.
    key: ModelName,
    /// The update under way: the new version's name, spec and copies (0: not recorded).
    incoming: Option<(ModelName, ModelSpec, u32)>,
    /// The note of the last failed update.
    failed: Option<Transition>,
}

/// Reads version records (model name, JSON); one that does not parse is logged and left
/// out (its model serves under its own name).
pub(super) fn decode_records(records: &[(String, Vec<u8>)]) -> HashMap<String, VersionRecord> {
    records
        .iter()
        .filter_map(|(name, value)| decode(name, value).map(|record| (name.clone(), record)))
        .collect()
}

fn decode(name: &str, value: &[u8]) -> Option<VersionRecord> {
    match serde_json::from_slice(value) {
        Ok(record) => Some(record),
        Err(e) => {
            error!(model = %name, error = %e, "a version record could not be read; the model serves under its own name");
            None
        }
    }
}

/// What `record` (none: the model serves under its own name) asks for `client`. Names
/// that are not versions of `client` are ignored.
pub(super) fn wanted(client: &ModelName, record: Option<&VersionRecord>) -> Wanted {
    let version_of_client = |name: &str| {
        ModelName::new(name).ok().filter(|k| {
            mm_wire::is_version_name(k.as_str())
                && k.as_str()
                    .strip_prefix(client.as_str())
                    .is_some_and(|rest| rest.starts_with("--"))
        })
    };
    let key = record
        .and_then(|r| version_of_client(&r.serving))
        .unwrap_or_else(|| client.clone());
    let incoming = record.and_then(|r| r.next.as_ref()).and_then(|next| {
        let name = version_of_client(&next.name).filter(|n| *n != key)?;
        match ModelSpec::try_from(next.spec.clone()) {
            Ok(spec) => Some((name, spec, next.copies)),
            Err(e) => {
                error!(model = %client, error = %e, "an interrupted update could not be read; it is dropped");
                None
            }
        }
    });
    let failed = match incoming {
        Some(_) => None,
        None => record
            .and_then(|r| r.failed.clone())
            .filter(|f| f.state == TransitionState::Failed),
    };
    Wanted {
        key,
        incoming,
        failed,
    }
}

/// The incoming version of the model served by entry `key`, if the table has it.
fn incoming_of(t: &Table, key: &ModelName) -> Option<ModelName> {
    let version = &t.get(key)?.transition.as_ref()?.version;
    let name = ModelName::new(version).ok()?;
    t.get(&name)
        .is_some_and(|e| e.role == Role::Incoming)
        .then_some(name)
}

/// Makes `client`'s entries what `spec` and `w` say: the entry that serves under the
/// recorded name, the incoming version while an update is under way, and the transition
/// shown. Entries already right keep their copies; the others are replaced.
pub(super) fn settle(t: &mut Table, client: &ModelName, spec: ModelSpec, w: Wanted) {
    let current = t.resolve(client);
    let incoming_now = current.as_ref().and_then(|k| incoming_of(t, k));
    let wanted_incoming = w.incoming.as_ref().map(|(name, _, _)| name);
    if let Some(old) = incoming_now.filter(|n| Some(n) != wanted_incoming) {
        t.remove(&old);
    }
    if current.as_ref() == Some(&w.key) {
        if !t
            .get(&w.key)
            .is_some_and(|e| e.spec().is_unchanged_by(&spec))
        {
            t.set_spec(&w.key, spec.clone());
        }
    } else {
        if let Some(old) = &current {
            t.remove(old);
        }
        t.forget_version(client);
        if t.contains(&w.key) {
            t.remove(&w.key);
        }
        t.insert_version(w.key.clone(), client.clone(), spec.clone(), Role::Current);
    }
    let transition = match w.incoming {
        Some((name, next, copies)) => {
            if !t.get(&name).is_some_and(|e| e.role == Role::Incoming) {
                if t.contains(&name) {
                    t.remove(&name);
                }
                t.insert_version(name.clone(), client.clone(), next.clone(), Role::Incoming);
            }
            Some(loading(client, &spec, &name, &next, copies))
        }
        None => w.failed,
    };
    if let Some(e) = t.get_mut(&w.key) {
        e.transition = transition.map(Box::new);
    }
}

/// Forgets every entry of `client` (deleted by the leader).
pub(super) fn forget_model(t: &mut Table, client: &ModelName) {
    if let Some(key) = t.resolve(client) {
        if let Some(incoming) = incoming_of(t, &key) {
            t.remove(&incoming);
        }
        t.remove(&key);
    }
    t.forget_version(client);
}

impl Pool {
    /// Makes the registry exactly `models` with their version records `versions` (model
    /// name, JSON), as the store holds them: each model under the name of the version
    /// that serves, with the update under way; entries of models no longer stored go.
    /// Copies are left to reconciliation. Returns how many updates are under way.
    pub(super) fn replace_registry(
        &self,
        models: Vec<(ModelName, ModelSpec)>,
        versions: &[(String, Vec<u8>)],
    ) -> usize {
        let records = decode_records(versions);
        let wanted: Vec<(ModelName, ModelSpec, Wanted)> = models
            .into_iter()
            .map(|(name, spec)| {
                let w = wanted(&name, records.get(name.as_str()));
                (name, spec, w)
            })
            .collect();
        let keep: HashSet<&ModelName> = wanted
            .iter()
            .flat_map(|(_, _, w)| std::iter::once(&w.key).chain(w.incoming.iter().map(|i| &i.0)))
            .collect();
        let mut t = self.table();
        let gone: Vec<ModelName> = t
            .range(std::ops::Bound::Unbounded)
            .map(|(n, _)| n.clone())
            .filter(|n| !keep.contains(n))
            .collect();
        drop(keep);
        for name in gone {
            t.remove(&name);
        }
        let mut updating = 0;
        for (name, spec, w) in wanted {
            updating += usize::from(w.incoming.is_some());
            settle(&mut t, &name, spec, w);
        }
        drop(t);
        self.update_gauges();
        updating
    }

    /// Applies a version record the leader wrote (`None`: deleted), on a follower. A
    /// record of a model this instance does not know yet waits for the next snapshot.
    pub(super) fn follow_version(&self, name: &str, value: Option<&[u8]>) {
        let Ok(client) = ModelName::new(name) else {
            return;
        };
        let record = match value {
            Some(value) => match decode(name, value) {
                Some(record) => Some(record),
                None => return,
            },
            None => None,
        };
        let mut t = self.table();
        let Some(spec) = t
            .resolve(&client)
            .and_then(|k| t.get(&k).map(|e| e.spec().clone()))
        else {
            return;
        };
        let w = wanted(&client, record.as_ref());
        settle(&mut t, &client, spec, w);
    }

    /// Goes on with every update whose new version is in the table without a task loading
    /// it: read back by a restart or by a new leader, after the reconcile adopted the
    /// copies it already has. The new version loads on as many copies as recorded (or as
    /// the old one has), minus those already there, then the model switches to it. A
    /// model now loaded nowhere (neither version) simply takes the new spec.
    pub(super) async fn resume_updates(&self) {
        let pending: Vec<(ModelName, ModelName)> = {
            let t = self.table();
            t.range(std::ops::Bound::Unbounded)
                .filter(|(_, e)| e.role == Role::Incoming)
                .filter_map(|(key, e)| Some((e.client.clone()?, key.clone())))
                .collect()
        };
        for (client, key) in pending {
            let _name = self.name_lock(&client).lock().await;
            match self.resume_update(&client, &key).await {
                Ok(()) => info!(model = %client, version = %key, "an interrupted update goes on"),
                Err(e) => {
                    warn!(model = %client, version = %key, error = %e, "an interrupted update was not resumed")
                }
            }
        }
    }

    /// Resumes the update of `client` to `key` (the caller holds the name lock).
    async fn resume_update(
        &self,
        client: &ModelName,
        key: &ModelName,
    ) -> Result<(), super::PoolError> {
        let (current, spec, copies) = {
            let mut t = self.table();
            let Some(current) = t.resolve(client) else {
                return Ok(());
            };
            let (Some(cur), Some(inc)) = (t.get(&current), t.get(key)) else {
                return Ok(());
            };
            // Busy: a load of it is still running, from an update task this process
            // started before it lost the lead and took it back; that task goes on.
            if inc.role != Role::Incoming || inc.is_busy() {
                return Ok(());
            }
            let loaded =
                u32::try_from(cur.loaded_copies().max(inc.loaded_copies())).unwrap_or(u32::MAX);
            let recorded = cur
                .transition
                .as_ref()
                .filter(|tr| tr.version == key.as_str())
                .map_or(0, |tr| tr.copies);
            let spec = inc.spec().clone();
            let copies = if loaded == 0 {
                0
            } else if recorded > 0 {
                recorded
            } else {
                loaded
            };
            if copies > 0 {
                t.set_spec(key, pinned(&spec, copies));
                if let Some(tr) = t.get_mut(&current).and_then(|e| e.transition.as_mut()) {
                    tr.copies = copies;
                }
            }
            (current, spec, copies)
        };
        if copies == 0 {
            // Loaded nowhere now: the new spec simply applies.
            self.persist_switch(client, &spec, &VersionRecord::serving(&current))
                .await?;
            {
                let mut t = self.table();
                t.set_spec(&current, spec);
                t.set_inputs(&current, None);
                if let Some(e) = t.get_mut(&current) {
                    e.transition = None;
                    e.metadata = None;
                }
            }
            self.drop_version(key, "update applied to a model loaded nowhere")
                .await;
            return Ok(());
        }
        let pool = self.clone();
        let (client, key) = (client.clone(), key.clone());
        tokio::spawn(async move { pool.run_update(client, current, key, spec, copies).await });
        Ok(())
    }
}
