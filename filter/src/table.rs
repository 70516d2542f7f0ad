//! The worker's routing table: for each routable model, the endpoints of its loaded copies
//! (and its inputs, for KServe V1), stamped with the pool-manager's epoch and generation.
//! Warm requests are routed by [`Table::route`] alone, with no call to the control plane.
//! Plain Rust, one per worker VM; every endpoint in it is a checked [`Target`], so a pick
//! is always safe to forward to.

use rustc_hash::FxHashMap;
use std::rc::Rc;

use mm_wire::{
    validate_model_name, AliasEntry, RoutingTable, TensorSpec, MAX_ALIAS_TARGETS, MAX_ALIAS_WEIGHT,
};

pub use crate::target::Target;

/// One model's copies and its round-robin cursor.
#[derive(Debug, Clone, Default)]
struct ModelRoutes {
    /// Never empty while the model is in the table; at most one per replica name.
    targets: Vec<Rc<Target>>,
    inputs: Option<Rc<[TensorSpec]>>,
    /// The pool-manager waits for this model's requests to end ([`mm_wire::TableEntry`]).
    watch: bool,
    /// The name the replicas know the model by, when not its own ([`mm_wire::TableEntry`]).
    upstream: Option<Rc<str>>,
    /// Index of the next target a pick hands out (modulo the length).
    next: usize,
}

impl ModelRoutes {
    /// The next target, round-robin; with `grpc`, the next one that has a gRPC address.
    fn pick(&mut self, grpc: bool) -> Option<Rc<Target>> {
        let len = self.targets.len();
        for step in 0..len {
            let index = self.next.wrapping_add(step) % len;
            if let Some(target) = self.targets.get(index) {
                if !grpc || target.grpc_address().is_some() {
                    self.next = index.wrapping_add(1);
                    return Some(Rc::clone(target));
                }
            }
        }
        None
    }
}

/// One alias: its targets with their cumulative weights, and the pick counter.
#[derive(Debug, Clone)]
struct AliasRoutes {
    /// (model, sum of the weights up to and including this one); never empty.
    targets: Vec<(Rc<str>, u64)>,
    next: u64,
}

impl AliasRoutes {
    /// Checks an alias from the table: a valid name that is not a model, 1 to
    /// [`MAX_ALIAS_TARGETS`] valid targets of weight 1 to [`MAX_ALIAS_WEIGHT`].
    fn from_wire(alias: &AliasEntry) -> Option<AliasRoutes> {
        validate_model_name(&alias.name).ok()?;
        if alias.targets.is_empty() || alias.targets.len() > MAX_ALIAS_TARGETS {
            return None;
        }
        let mut sum = 0u64;
        let mut targets = Vec::with_capacity(alias.targets.len());
        for t in &alias.targets {
            validate_model_name(&t.model).ok()?;
            if t.weight == 0 || t.weight > MAX_ALIAS_WEIGHT {
                return None;
            }
            sum += u64::from(t.weight);
            targets.push((Rc::from(t.model.as_str()), sum));
        }
        Some(AliasRoutes { targets, next: 0 })
    }

    /// The next target: a Weyl sequence over the weights (the golden ratio's fraction,
    /// times the pick count), so the targets interleave and any run of picks follows
    /// the weights closely.
    fn pick(&mut self) -> Option<Rc<str>> {
        let total = self.targets.last()?.1;
        let x = self.next.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.next = self.next.wrapping_add(1);
        let point = ((u128::from(x) * u128::from(total)) >> 64) as u64;
        self.targets
            .iter()
            .find(|(_, upto)| point < *upto)
            .map(|(m, _)| Rc::clone(m))
    }
}

/// What [`Table::route`] found for a model the table has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The copy to use; `None` only for gRPC when no copy has a gRPC endpoint.
    pub target: Option<Rc<Target>>,
    /// The model's inputs, when known (for KServe V1).
    pub inputs: Option<Rc<[TensorSpec]>>,
    /// The model's Triton-side name when it is not the name the client used: the request
    /// is renamed to it (`None` for nearly every model, which costs nothing).
    pub upstream: Option<Rc<str>>,
}

/// What [`Table::from_wire`] left out of a table, for the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Entries whose model name is invalid, repeated, or with no usable endpoint.
    pub models: usize,
    /// Endpoints whose replica name or address is unusable, or repeated within a model.
    pub endpoints: usize,
}

/// Why [`Table::insert`] refused a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// The model name does not pass `validate_model_name`.
    #[error("invalid model name")]
    InvalidModel,
}

/// A routing table. See the module doc.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// `None` until a table from the pool-manager was applied.
    epoch: Option<String>,
    generation: u64,
    // Looked up on every request by a short name: Fx hashes one in a tenth of SipHash's
    // instructions. Its keys are the names the pool-manager registered; a client's name
    // is only looked up, never inserted, so it cannot grow a collision chain.
    models: FxHashMap<String, ModelRoutes>,
    aliases: FxHashMap<String, AliasRoutes>,
}

impl Table {
    /// An empty table with no epoch: any table from the pool-manager replaces it.
    pub fn new() -> Table {
        Table::default()
    }

    /// Builds a table from the pool-manager's answer, leaving out what could not be routed
    /// safely: invalid or repeated model names, endpoints with an unusable replica name or
    /// address (or a repeated replica), models left with no endpoint, and models whose
    /// upstream name is not a valid model name. A `grpcAddress`
    /// that is not `IP:PORT` is dropped, the endpoint kept for HTTP.
    pub fn from_wire(table: RoutingTable) -> (Table, Skipped) {
        let mut skipped = Skipped::default();
        let mut models =
            FxHashMap::with_capacity_and_hasher(table.models.len(), Default::default());
        for entry in table.models {
            let bad_upstream = entry
                .upstream
                .as_deref()
                .is_some_and(|u| validate_model_name(u).is_err());
            if validate_model_name(&entry.model).is_err()
                || bad_upstream
                || models.contains_key(&entry.model)
            {
                skipped.models += 1;
                skipped.endpoints += entry.replicas.len();
                continue;
            }
            let mut targets: Vec<Rc<Target>> = Vec::with_capacity(entry.replicas.len());
            for endpoint in entry.replicas {
                let target = Target::new(
                    &endpoint.replica,
                    &endpoint.address,
                    endpoint.grpc_address.as_deref(),
                );
                match target {
                    Some(t) if !targets.iter().any(|known| known.replica() == t.replica()) => {
                        targets.push(Rc::new(t));
                    }
                    _ => skipped.endpoints += 1,
                }
            }
            if targets.is_empty() {
                skipped.models += 1;
                continue;
            }
            models.insert(
                entry.model,
                ModelRoutes {
                    targets,
                    inputs: entry.inputs.map(Rc::from),
                    watch: entry.watch,
                    upstream: entry.upstream.map(Rc::from),
                    next: 0,
                },
            );
        }
        let mut aliases =
            FxHashMap::with_capacity_and_hasher(table.aliases.len(), Default::default());
        for alias in &table.aliases {
            match AliasRoutes::from_wire(alias) {
                Some(routes) if !models.contains_key(&alias.name) => {
                    aliases.insert(alias.name.clone(), routes);
                }
                _ => skipped.models += 1,
            }
        }
        let table = Table {
            epoch: Some(table.epoch),
            generation: table.generation,
            models,
            aliases,
        };
        (table, skipped)
    }

    /// The epoch of the pool-manager table this one came from; `None` before the first.
    pub fn epoch(&self) -> Option<&str> {
        self.epoch.as_deref()
    }

    /// The generation of the pool-manager table this one came from (0 before the first).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether a pool-manager table stamped (`epoch`, `generation`) replaces this one: a
    /// different epoch (the pool-manager restarted) always does, the same epoch only with
    /// a newer generation.
    pub fn is_replaced_by(&self, epoch: &str, generation: u64) -> bool {
        match self.epoch.as_deref() {
            Some(current) if current == epoch => generation > self.generation,
            _ => true,
        }
    }

    /// Replaces this table with `newer` if [`Table::is_replaced_by`] allows it, and returns
    /// whether it did. Local changes (inserted routes, removed endpoints) are dropped with
    /// the old table; the round-robin position of models in both carries over, so workers
    /// do not all restart on the first copy after every refresh.
    pub fn replace(&mut self, mut newer: Table) -> bool {
        let Some(epoch) = newer.epoch.as_deref() else {
            return false;
        };
        if !self.is_replaced_by(epoch, newer.generation) {
            return false;
        }
        for (model, routes) in &mut newer.models {
            if let Some(old) = self.models.get(model) {
                routes.next = old.next % routes.targets.len().max(1);
            }
        }
        for (alias, routes) in &mut newer.aliases {
            if let Some(old) = self.aliases.get(alias) {
                routes.next = old.next;
            }
        }
        *self = newer;
        true
    }

    /// How many models the table routes.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// Whether the table routes no model.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// Whether `model` has at least one endpoint.
    pub fn contains(&self, model: &str) -> bool {
        self.models.contains_key(model)
    }

    /// Whether the pool-manager waits for `model`'s requests to end: the end of the last
    /// one is reported at once (see [`mm_wire::TableEntry`]).
    pub fn is_watched(&self, model: &str) -> bool {
        self.models.get(model).is_some_and(|r| r.watch)
    }

    /// The models the pool-manager waits on.
    pub fn watched(&self) -> impl Iterator<Item = &str> + '_ {
        self.models
            .iter()
            .filter(|(_, r)| r.watch)
            .map(|(m, _)| m.as_str())
    }

    /// Routes a request for `model` with one lookup: `None` if the table does not route
    /// it; else the next copy, round-robin (with `grpc`, the next that has a gRPC
    /// endpoint), and the model's inputs.
    pub fn route(&mut self, model: &str, grpc: bool) -> Option<Route> {
        let routes = self.models.get_mut(model)?;
        Some(Route {
            target: routes.pick(grpc),
            inputs: routes.inputs.clone(),
            upstream: routes.upstream.clone(),
        })
    }

    /// The next endpoint of `model`, round-robin over its copies; `None` if the table does
    /// not route it.
    pub fn pick(&mut self, model: &str) -> Option<Rc<Target>> {
        self.models.get_mut(model)?.pick(false)
    }

    /// The next endpoint of `model` that has a gRPC address, round-robin; `None` if the
    /// model is not routed or none of its copies has one.
    pub fn pick_grpc(&mut self, model: &str) -> Option<Rc<Target>> {
        self.models.get_mut(model)?.pick(true)
    }

    /// Some endpoint of some model (the first suitable copy of the alphabetically first
    /// model that has one), for server-level requests when the pool-manager cannot be
    /// asked; with `grpc`, only an endpoint with a gRPC address. `None` when there is none.
    pub fn any(&self, grpc: bool) -> Option<Rc<Target>> {
        let mut models: Vec<(&String, &ModelRoutes)> = self.models.iter().collect();
        models.sort_by(|a, b| a.0.cmp(b.0));
        models.into_iter().find_map(|(_, routes)| {
            routes
                .targets
                .iter()
                .find(|t| !grpc || t.grpc_address().is_some())
                .cloned()
        })
    }

    /// The model alias `name` stands for this time (weighted), if it is an alias.
    pub fn pick_alias(&mut self, name: &str) -> Option<Rc<str>> {
        self.aliases.get_mut(name)?.pick()
    }

    /// The name the replicas know `model` by, when the table routes it and it is not its
    /// own.
    pub fn upstream(&self, model: &str) -> Option<Rc<str>> {
        self.models.get(model)?.upstream.clone()
    }

    /// Whether the table routes `model` to the Triton-side name `served` (`model` itself
    /// when not renamed): false once an update switched the model to another version, so
    /// the end of the old version's last request is worth reporting at once.
    pub fn serves_as(&self, model: &str, served: &str) -> bool {
        self.models
            .get(model)
            .is_some_and(|r| r.upstream.as_deref().unwrap_or(model) == served)
    }

    /// `model`'s inputs from its V2 metadata, if the table knows them.
    pub fn inputs(&self, model: &str) -> Option<Rc<[TensorSpec]>> {
        self.models.get(model)?.inputs.clone()
    }

    /// Drops `replica`'s copy of `model` (it failed); a model left with no copy leaves the
    /// table, so its next request makes a route call. Returns whether anything was removed.
    pub fn remove(&mut self, model: &str, replica: &str) -> bool {
        let Some(routes) = self.models.get_mut(model) else {
            return false;
        };
        let before = routes.targets.len();
        routes.targets.retain(|t| t.replica() != replica);
        let removed = routes.targets.len() != before;
        if routes.targets.is_empty() {
            self.models.remove(model);
        }
        removed
    }

    /// Drops every copy on `replica` (it cannot be reached); returns how many were removed.
    pub fn remove_replica(&mut self, replica: &str) -> usize {
        let mut removed = 0;
        self.models.retain(|_, routes| {
            let before = routes.targets.len();
            routes.targets.retain(|t| t.replica() != replica);
            removed += before - routes.targets.len();
            !routes.targets.is_empty()
        });
        removed
    }

    /// Adds the endpoint a route call answered for `model` (the model the request named),
    /// so the next request for it is routed locally, until the next table from the
    /// pool-manager replaces this one. An endpoint already known for that replica is
    /// updated; known inputs are kept when the answer has none. An answer naming another
    /// upstream name than the table's replaces the model's copies (another version).
    pub fn insert(
        &mut self,
        model: &str,
        target: Rc<Target>,
        inputs: Option<Rc<[TensorSpec]>>,
        upstream: Option<Rc<str>>,
    ) -> Result<(), InsertError> {
        validate_model_name(model).map_err(|_| InsertError::InvalidModel)?;
        if upstream
            .as_deref()
            .is_some_and(|u| validate_model_name(u).is_err())
        {
            return Err(InsertError::InvalidModel);
        }
        let routes = self.models.entry(model.to_owned()).or_default();
        if routes.upstream != upstream {
            routes.targets.clear();
            routes.inputs = None;
            routes.upstream = upstream;
        }
        match routes
            .targets
            .iter_mut()
            .find(|t| t.replica() == target.replica())
        {
            Some(known) => *known = target,
            None => routes.targets.push(target),
        }
        if inputs.is_some() {
            routes.inputs = inputs;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use mm_wire::{Endpoint, TableEntry};
    use proptest::prelude::*;

    fn endpoint(replica: &str, address: &str, grpc: Option<&str>) -> Endpoint {
        Endpoint {
            replica: replica.into(),
            address: address.into(),
            grpc_address: grpc.map(str::to_owned),
        }
    }

    fn entry(model: &str, replicas: Vec<Endpoint>) -> TableEntry {
        TableEntry {
            model: model.into(),
            replicas,
            inputs: None,
            watch: false,
            upstream: None,
        }
    }

    fn wire(epoch: &str, generation: u64, models: Vec<TableEntry>) -> RoutingTable {
        RoutingTable {
            aliases: vec![],
            epoch: epoch.into(),
            generation,
            models,
        }
    }

    fn spec() -> Vec<TensorSpec> {
        vec![TensorSpec {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![-1, 4],
        }]
    }

    fn two_copies() -> Table {
        let (table, skipped) = Table::from_wire(wire(
            "e1",
            3,
            vec![
                entry(
                    "linear",
                    vec![
                        endpoint("r0", "127.0.0.1:8000", Some("127.0.0.1:8001")),
                        endpoint("r1", "127.0.0.1:9000", None),
                    ],
                ),
                entry("xor", vec![endpoint("r1", "127.0.0.1:9000", None)]),
            ],
        ));
        assert_eq!(skipped, Skipped::default());
        table
    }

    fn replicas_picked(table: &mut Table, model: &str, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                table
                    .pick(model)
                    .map(|t| t.replica().to_owned())
                    .unwrap_or_default()
            })
            .collect()
    }

    fn target(replica: &str, address: &str, grpc: Option<&str>) -> Option<Rc<Target>> {
        Target::new(replica, address, grpc).map(Rc::new)
    }

    fn address(t: Option<Rc<Target>>) -> Option<String> {
        t.map(|t| t.address().to_owned())
    }

    #[test]
    fn remembers_which_models_the_pool_manager_watches() {
        let mut watched = entry("busy", vec![endpoint("r0", "10.0.0.1:8000", None)]);
        watched.watch = true;
        let plain = entry("plain", vec![endpoint("r0", "10.0.0.1:8000", None)]);
        let (table, _) = Table::from_wire(wire("e", 1, vec![watched, plain]));
        assert!(table.is_watched("busy"));
        assert!(!table.is_watched("plain") && !table.is_watched("absent"));
        assert_eq!(table.watched().collect::<Vec<_>>(), ["busy"]);
    }

    #[test]
    fn empty_table_routes_nothing_and_takes_any_table() {
        let mut table = Table::new();
        assert!(table.is_empty());
        assert_eq!(table.epoch(), None);
        assert_eq!(table.generation(), 0);
        assert_eq!(table.pick("linear"), None);
        assert!(table.any(false).is_none());
        assert!(table.is_replaced_by("e", 0));
        let (empty_newer, _) = Table::from_wire(wire("e", 0, vec![]));
        assert!(table.replace(empty_newer));
        assert_eq!(table.epoch(), Some("e"));
        // A table with no epoch never replaces anything.
        assert!(!table.replace(Table::new()));
    }

    #[test]
    fn picks_copies_round_robin() {
        let mut table = two_copies();
        assert_eq!(table.len(), 2);
        assert_eq!(
            replicas_picked(&mut table, "linear", 5),
            ["r0", "r1", "r0", "r1", "r0"]
        );
        assert_eq!(replicas_picked(&mut table, "xor", 2), ["r1", "r1"]);
        assert_eq!(table.pick("linear"), target("r1", "127.0.0.1:9000", None));
        assert_eq!(table.pick("absent"), None);
        assert!(table.contains("xor") && !table.contains("absent"));
    }

    #[test]
    fn grpc_picks_skip_copies_without_a_grpc_address() {
        let mut table = two_copies();
        for _ in 0..3 {
            let t = table.pick_grpc("linear").unwrap();
            assert_eq!(t.replica(), "r0");
            assert_eq!(t.grpc_address(), Some("127.0.0.1:8001"));
        }
        assert_eq!(table.pick_grpc("xor"), None);
        assert_eq!(table.pick_grpc("absent"), None);
    }

    #[test]
    fn replacement_rule_epoch_then_generation() {
        let mut table = two_copies();
        assert!(!table.is_replaced_by("e1", 3));
        assert!(!table.is_replaced_by("e1", 2));
        assert!(table.is_replaced_by("e1", 4));
        // A restarted pool-manager starts its generations again: its table still wins.
        assert!(table.is_replaced_by("e2", 0));

        let (older, _) = Table::from_wire(wire("e1", 2, vec![]));
        assert!(!table.replace(older));
        assert_eq!(table.len(), 2);
        let (same, _) = Table::from_wire(wire("e1", 3, vec![]));
        assert!(!table.replace(same));
        let (restarted, _) = Table::from_wire(wire(
            "e2",
            1,
            vec![entry("m", vec![endpoint("r9", "10.0.0.9:8000", None)])],
        ));
        assert!(table.replace(restarted));
        assert_eq!((table.epoch(), table.generation()), (Some("e2"), 1));
        assert!(!table.contains("linear"));
        assert_eq!(address(table.pick("m")), Some("10.0.0.9:8000".into()));
    }

    #[test]
    fn refresh_keeps_the_round_robin_position() {
        let mut table = two_copies();
        assert_eq!(replicas_picked(&mut table, "linear", 1), ["r0"]);
        let (newer, _) = Table::from_wire(wire(
            "e1",
            4,
            vec![entry(
                "linear",
                vec![
                    endpoint("r0", "127.0.0.1:8000", None),
                    endpoint("r1", "127.0.0.1:9000", None),
                ],
            )],
        ));
        assert!(table.replace(newer));
        assert_eq!(replicas_picked(&mut table, "linear", 2), ["r1", "r0"]);
    }

    #[test]
    fn leaves_out_what_cannot_be_routed() {
        let (mut table, skipped) = Table::from_wire(wire(
            "e",
            1,
            vec![
                entry("ok", vec![endpoint("r0", "[0:0::1]:8000", Some("bad"))]),
                entry("../x", vec![endpoint("r0", "127.0.0.1:8000", None)]),
                entry("ok", vec![endpoint("r5", "127.0.0.1:8005", None)]),
                entry(
                    "partly",
                    vec![
                        endpoint("r0", "localhost:8000", None),
                        endpoint("r 1", "127.0.0.1:8000", None),
                        endpoint("r2", "0.0.0.0:8000", None),
                        endpoint("r3", "127.0.0.1:0", None),
                        endpoint("r4", "127.0.0.1:8004", None),
                        endpoint("r4", "127.0.0.1:9004", None),
                    ],
                ),
                entry("none", vec![endpoint("r0", "nowhere", None)]),
                entry("empty", vec![]),
            ],
        ));
        assert_eq!(
            skipped,
            Skipped {
                models: 4,
                endpoints: 8
            }
        );
        assert_eq!(table.len(), 2);
        assert_eq!(table.pick("ok"), target("r0", "[::1]:8000", None));
        assert_eq!(replicas_picked(&mut table, "partly", 2), ["r4", "r4"]);
        assert_eq!(address(table.pick("partly")), Some("127.0.0.1:8004".into()));
    }

    #[test]
    fn removing_endpoints_moves_traffic_and_then_drops_the_model() {
        let mut table = two_copies();
        assert!(table.remove("linear", "r0"));
        assert!(!table.remove("linear", "r0"));
        assert!(!table.remove("absent", "r0"));
        assert_eq!(replicas_picked(&mut table, "linear", 3), ["r1", "r1", "r1"]);
        assert!(table.remove("linear", "r1"));
        assert!(!table.contains("linear"));
        assert_eq!(table.pick("linear"), None);
        assert!(table.contains("xor"));
    }

    #[test]
    fn removing_a_replica_drops_it_from_every_model() {
        let mut table = two_copies();
        assert_eq!(table.remove_replica("r1"), 2);
        assert_eq!(table.remove_replica("r1"), 0);
        assert!(!table.contains("xor"));
        assert_eq!(replicas_picked(&mut table, "linear", 2), ["r0", "r0"]);
    }

    #[test]
    fn a_route_call_answer_makes_the_model_warm() {
        let mut table = two_copies();
        let r2 = target("r2", "127.0.0.1:7000", Some("127.0.0.1:7001")).unwrap();
        assert_eq!(
            table.insert("cold", Rc::clone(&r2), Some(Rc::from(spec())), None),
            Ok(())
        );
        assert_eq!(table.pick("cold"), Some(r2));
        assert_eq!(table.inputs("cold").as_deref(), Some(&spec()[..]));
        // Another copy of a known model joins the rotation; inputs are kept.
        let r3 = target("r3", "127.0.0.1:7100", None).unwrap();
        assert_eq!(table.insert("cold", r3, None, None), Ok(()));
        assert_eq!(replicas_picked(&mut table, "cold", 2), ["r3", "r2"]);
        assert_eq!(table.inputs("cold").as_deref(), Some(&spec()[..]));
        // The same replica again updates its address instead of adding a copy.
        let moved = target("r3", "127.0.0.1:7200", None).unwrap();
        assert_eq!(table.insert("cold", moved, None, None), Ok(()));
        let addresses: Vec<String> = (0..2).filter_map(|_| address(table.pick("cold"))).collect();
        assert!(
            addresses.contains(&"127.0.0.1:7200".to_owned()),
            "{addresses:?}"
        );
        assert!(!addresses.contains(&"127.0.0.1:7100".to_owned()));
        // One lookup gives the pick and the inputs.
        let route = table.route("cold", true).unwrap();
        assert_eq!(
            route.target.map(|t| t.replica().to_owned()),
            Some("r2".into())
        );
        assert_eq!(route.inputs.as_deref(), Some(&spec()[..]));
        assert_eq!(table.route("xor", true).map(|r| r.target), Some(None));
        assert_eq!(table.route("absent", false), None);
        // The insert lives until the next refresh replaces the table.
        let (newer, _) = Table::from_wire(wire("e1", 4, vec![]));
        assert!(table.replace(newer));
        assert!(!table.contains("cold"));
    }

    #[test]
    fn a_renamed_model_carries_its_upstream_name() {
        let r0 = endpoint("r0", "127.0.0.1:8000", None);
        let mut renamed = entry("m", vec![r0.clone()]);
        renamed.upstream = Some("m--0123abcd".into());
        let mut bad = entry("b", vec![r0]);
        bad.upstream = Some("../x".into());
        let (mut table, skipped) = Table::from_wire(wire("e1", 1, vec![renamed, bad]));
        assert_eq!(skipped.models, 1);
        let route = table.route("m", false).unwrap();
        assert_eq!(route.upstream.as_deref(), Some("m--0123abcd"));
        assert!(table.serves_as("m", "m--0123abcd"));
        assert!(!table.serves_as("m", "m"));
        assert!(!table.serves_as("absent", "absent"));
        // A route answer for another version replaces the copies of the old one.
        let r1 = target("r1", "127.0.0.1:9000", None).unwrap();
        let newer: Option<Rc<str>> = Some(Rc::from("m--ffff0000"));
        assert_eq!(table.insert("m", Rc::clone(&r1), None, newer), Ok(()));
        assert_eq!(replicas_picked(&mut table, "m", 2), ["r1", "r1"]);
        assert_eq!(table.upstream("m").as_deref(), Some("m--ffff0000"));
        let bad: Option<Rc<str>> = Some(Rc::from(".."));
        assert_eq!(
            table.insert("m", r1, None, bad),
            Err(InsertError::InvalidModel)
        );
    }

    #[test]
    fn aliases_pick_by_weight_and_bad_ones_are_left_out() {
        use mm_wire::AliasTarget;
        let alias = |name: &str, targets: &[(&str, u32)]| AliasEntry {
            name: name.into(),
            targets: targets
                .iter()
                .map(|(m, w)| AliasTarget {
                    model: (*m).into(),
                    weight: *w,
                })
                .collect(),
        };
        let mut table = wire(
            "e1",
            1,
            vec![entry("m1", vec![endpoint("r0", "127.0.0.1:1", None)])],
        );
        table.aliases = vec![
            alias("canary", &[("m1", 90), ("m2", 10)]),
            alias("m1", &[("m2", 1)]),
            alias("zero", &[("m1", 0)]),
            alias("none", &[]),
            alias("../x", &[("m1", 1)]),
            alias("bad", &[("..", 1)]),
            alias("heavy", &[("m1", MAX_ALIAS_WEIGHT + 1)]),
        ];
        let (mut table, skipped) = Table::from_wire(table);
        assert_eq!(skipped.models, 6);
        for name in ["m1", "zero", "none", "../x", "bad", "heavy", "absent"] {
            assert_eq!(table.pick_alias(name), None, "{name}");
        }
        let mut counts = HashMap::new();
        for _ in 0..1000 {
            *counts
                .entry(table.pick_alias("canary").unwrap())
                .or_insert(0) += 1;
        }
        let m2 = counts.get("m2").copied().unwrap_or(0);
        assert!((95..=105).contains(&m2), "{counts:?}");
        // Any short run follows the weights too (the targets interleave).
        let run: Vec<Rc<str>> = (0..20).filter_map(|_| table.pick_alias("canary")).collect();
        let m2 = run.iter().filter(|m| &***m == "m2").count();
        assert!((1..=3).contains(&m2), "{run:?}");
    }

    #[test]
    fn refuses_an_invalid_model_name() {
        let mut table = Table::new();
        let good = target("r0", "127.0.0.1:8000", None).unwrap();
        assert_eq!(
            table.insert("..", good, None, None),
            Err(InsertError::InvalidModel)
        );
        assert!(table.is_empty());
    }

    #[test]
    fn any_is_stable_and_inputs_follow_the_entry() {
        let mut table = two_copies();
        assert_eq!(
            table.any(false).map(|t| t.replica().to_owned()),
            Some("r0".into())
        );
        assert_eq!(
            table.any(true).map(|t| t.replica().to_owned()),
            Some("r0".into())
        );
        table.remove("linear", "r0");
        assert_eq!(
            table.any(false).map(|t| t.replica().to_owned()),
            Some("r1".into())
        );
        assert_eq!(table.any(true), None);
        assert_eq!(table.inputs("linear"), None);
        let mut with_inputs = entry("v1", vec![endpoint("r0", "127.0.0.1:1", None)]);
        with_inputs.inputs = Some(spec());
        let (newer, _) = Table::from_wire(wire("e1", 9, vec![with_inputs]));
        assert!(table.replace(newer));
        assert_eq!(table.inputs("v1").as_deref(), Some(&spec()[..]));
    }

    proptest! {
        /// Round-robin spreads requests evenly whatever the table holds, and a pick is
        /// always one of the model's endpoints.
        #[test]
        fn picks_are_even_and_from_the_entry(copies in 1usize..6, rounds in 1usize..8) {
            let replicas: Vec<Endpoint> = (0..copies)
                .map(|i| endpoint(&format!("r{i}"), &format!("127.0.0.1:{}", 8000 + i), None))
                .collect();
            let (mut table, skipped) = Table::from_wire(wire("e", 1, vec![entry("m", replicas)]));
            prop_assert_eq!(skipped, Skipped::default());
            let mut counts = vec![0usize; copies];
            for _ in 0..copies * rounds {
                let t = table.pick("m").unwrap();
                let i: usize = t.replica().trim_start_matches('r').parse().unwrap();
                prop_assert_eq!(t.address(), format!("127.0.0.1:{}", 8000 + i));
                counts[i] += 1;
            }
            prop_assert!(counts.iter().all(|&c| c == rounds));
        }
    }
}
