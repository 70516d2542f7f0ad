#!/usr/bin/env python3
"""Offline checks of rendered kustomize output (run by scripts/validate-k8s.sh).

    check_manifests.py --schemas k8s/schemas --k8s-version 1.29 --k8s-version 1.37 \
        --extract DIR RENDERED.yaml...

1. Schema validation of every object:
   - built-in kinds: the Kubernetes OpenAPI schemas bundled in the PyPI package
     kubernetes-validate, strict variant (unknown fields are errors), for each version given;
   - CRD kinds (Istio, Prometheus Operator): our own hand-written JSON Schemas in --schemas;
   - a kind with no schema in either is an error, never a silent skip.
2. Consistency checks that a schema cannot express (references between objects, pool.toml
   against the StatefulSet, the Istio names that must agree, ...).
3. Writes, per rendered file, the pieces scripts/validate-k8s.sh feeds to the real
   binaries (Envoy bootstrap and args, pool-manager and Triton args, ...) into --extract.

Prints one line per passed check; exits 1 with every problem found otherwise.
"""

import argparse
import functools
import json
import os
import re
import sys
import tomllib

import jsonschema
import yaml
import kubernetes_validate.utils as kv

# kubernetes-validate re-reads and re-parses its (large) schema files for every object.
kv.schema_contents = functools.lru_cache(maxsize=None)(kv.schema_contents)

# Custom resources: (apiVersion, kind) -> our schema file in --schemas.
CRD_SCHEMAS = {
    ("extensions.istio.io/v1alpha1", "WasmPlugin"): "wasmplugin-extensions.istio.io-v1alpha1.json",
    ("networking.istio.io/v1alpha3", "EnvoyFilter"): "envoyfilter-networking.istio.io-v1alpha3.json",
    ("networking.istio.io/v1", "Gateway"): "gateway-networking.istio.io-v1.json",
    ("networking.istio.io/v1", "VirtualService"): "virtualservice-networking.istio.io-v1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
}

# Secrets the manifests use but never contain (created by hand, see k8s/README.md).
# pool-manager-etcd: the etcd endpoints and credentials of the ha overlay (k8s/README.md).
EXTERNAL_SECRETS = {"pool-manager-admin", "pool-manager-storage", "gateway-token", "pool-manager-etcd"}

# The variable the filter reads the gateway token from (Envoy's host_env_keys / the
# WasmPlugin's vmConfig.env) and the pool-manager checks it against.
GATEWAY_TOKEN_ENV = "MM_GATEWAY_TOKEN"

# pool.toml keys the pool-manager accepts (pool-manager/src/config.rs, deny_unknown_fields).
POOL_TOML_KEYS = {"name", "url", "memory", "gpu_memory", "grpc_port"}

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")

QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
FACTORS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
           "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
           "Pi": 2**50, "Ei": 2**60}


def quantity_bytes(text):
    m = QUANTITY.match(str(text))
    if not m:
        raise ValueError(f"not a byte quantity: {text!r}")
    return int(float(m.group(1)) * FACTORS[m.group(2)])


class Checker:
    def __init__(self, label):
        self.label = label
        self.errors = []
        self.passed = []

    def error(self, message):
        self.errors.append(f"{self.label}: {message}")

    def ok(self, message):
        self.passed.append(f"{self.label}: {message}")


def key(obj):
    return (obj.get("kind"), obj.get("metadata", {}).get("namespace"), obj["metadata"]["name"])


def describe(obj):
    ns = obj.get("metadata", {}).get("namespace")
    return f"{obj.get('kind')}/{(ns + '/') if ns else ''}{obj.get('metadata', {}).get('name')}"


# ----------------------------------------------------------------------------- schemas


def validate_schemas(c, objects, schema_dir, versions):
    crd_validators = {}
    for (api, kind), fname in CRD_SCHEMAS.items():
        with open(os.path.join(schema_dir, fname)) as f:
            schema = json.load(f)
        jsonschema.Draft202012Validator.check_schema(schema)
        crd_validators[(api, kind)] = jsonschema.Draft202012Validator(schema)
    builtin, custom = 0, {}
    for obj in objects:
        ident = (obj.get("apiVersion"), obj.get("kind"))
        if ident in crd_validators:
            errs = sorted(crd_validators[ident].iter_errors(obj), key=lambda e: list(e.path))
            for e in errs:
                path = ".".join(str(p) for p in e.absolute_path) or "(root)"
                c.error(f"{describe(obj)} does not match k8s/schemas/{CRD_SCHEMAS[ident]}: "
                        f"{path}: {e.message}")
            custom[ident[1]] = custom.get(ident[1], 0) + 1
            continue
        for version in versions:
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path) or "(root)"
                c.error(f"{describe(obj)} is not valid Kubernetes {version} (strict): "
                        f"{path}: {e.message}")
            except kv.SchemaNotFoundError:
                c.error(f"{describe(obj)}: no schema for {ident[0]} {ident[1]} in "
                        f"kubernetes-validate for {version}, and none in k8s/schemas")
        builtin += 1
    if not c.errors:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(custom.items()))
        c.ok(f"{builtin} objects valid against the Kubernetes {' and '.join(versions)} schemas "
             f"(kubernetes-validate, strict)"
             + (f"; {kinds} valid against k8s/schemas" if custom else ""))


# ------------------------------------------------------------------ consistency checks


def pod_templates(objects):
    for obj in objects:
        if obj["kind"] in WORKLOAD_KINDS:
            yield obj, obj["spec"]["template"]


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def check_references(c, objects):
    by_kind = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], {})[(obj["metadata"].get("namespace"), obj["metadata"]["name"])] = obj
    problems = len(c.errors)

    def exists(kind, ns, name):
        return (ns, name) in by_kind.get(kind, {})

    for wl, tpl in pod_templates(objects):
        ns = wl["metadata"].get("namespace")
        spec = tpl["spec"]
        sel = wl["spec"]["selector"].get("matchLabels", {})
        if not matches(sel, tpl["metadata"].get("labels", {})):
            c.error(f"{describe(wl)}: selector {sel} does not match its pod template labels")
        sa = spec.get("serviceAccountName")
        if sa and not exists("ServiceAccount", ns, sa):
            c.error(f"{describe(wl)}: ServiceAccount {sa} is not in the rendering")
        claims = {t["metadata"]["name"] for t in wl["spec"].get("volumeClaimTemplates", [])}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for v in volumes.values():
            if "configMap" in v and not exists("ConfigMap", ns, v["configMap"]["name"]):
                c.error(f"{describe(wl)}: volume {v['name']}: ConfigMap {v['configMap']['name']} is not in the rendering")
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                if not exists("PersistentVolumeClaim", ns, claim) and claim not in claims:
                    c.error(f"{describe(wl)}: volume {v['name']}: PVC {claim} is not in the rendering")
            if "secret" in v:
                name = v["secret"]["secretName"]
                if not exists("Secret", ns, name) and name not in EXTERNAL_SECRETS:
                    c.error(f"{describe(wl)}: volume {v['name']}: Secret {name} is neither rendered nor a documented hand-made Secret")
        for ctr in spec.get("initContainers", []) + spec["containers"]:
            image = ctr["image"]
            tag = image.rsplit("/", 1)[-1]
            if "@" not in image and (":" not in tag or tag.endswith(":latest")):
                c.error(f"{describe(wl)}: container {ctr['name']}: image {image} has no fixed tag")
            for m in ctr.get("volumeMounts", []):
                if m["name"] not in volumes and m["name"] not in claims:
                    c.error(f"{describe(wl)}: container {ctr['name']} mounts unknown volume {m['name']}")
            for e in ctr.get("env", []):
                ref = (e.get("valueFrom") or {})
                if "secretKeyRef" in ref:
                    name = ref["secretKeyRef"]["name"]
                    if not exists("Secret", ns, name) and name not in EXTERNAL_SECRETS:
                        c.error(f"{describe(wl)}: {ctr['name']} env {e['name']}: Secret {name} is neither rendered nor a documented hand-made Secret")
                if "configMapKeyRef" in ref and not exists("ConfigMap", ns, ref["configMapKeyRef"]["name"]):
                    c.error(f"{describe(wl)}: {ctr['name']} env {e['name']}: ConfigMap {ref['configMapKeyRef']['name']} is not in the rendering")
                if "value" in e and re.search(r"TOKEN|SECRET|PASSWORD|KEY", e["name"]):
                    c.error(f"{describe(wl)}: {ctr['name']} env {e['name']} has a literal value: secrets come from a Secret")
            port_names = {p.get("name") for p in ctr.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                p = ctr.get(probe) or {}
                for handler in ("httpGet", "tcpSocket"):
                    port = (p.get(handler) or {}).get("port")
                    if isinstance(port, str) and port not in port_names:
                        c.error(f"{describe(wl)}: {ctr['name']}.{probe} uses unknown port name {port}")

    pods = list(pod_templates(objects))
    for svc in by_kind.get("Service", {}).values():
        ns = svc["metadata"].get("namespace")
        sel = svc["spec"].get("selector")
        targets = [tpl for wl, tpl in pods
                   if wl["metadata"].get("namespace") == ns and sel and matches(sel, tpl["metadata"].get("labels", {}))]
        if not targets:
            c.error(f"{describe(svc)}: selector {sel} matches no pod template")
            continue
        names = {p.get("name") for tpl in targets for ctr in tpl["spec"]["containers"] for p in ctr.get("ports", [])}
        for port in svc["spec"]["ports"]:
            tp = port.get("targetPort")
            if isinstance(tp, str) and tp not in names:
                c.error(f"{describe(svc)}: port {port.get('name')} targets unknown container port {tp}")
    for sts in by_kind.get("StatefulSet", {}).values():
        ns = sts["metadata"].get("namespace")
        svc = by_kind.get("Service", {}).get((ns, sts["spec"]["serviceName"]))
        if not svc or svc["spec"].get("clusterIP") != "None":
            c.error(f"{describe(sts)}: serviceName {sts['spec']['serviceName']} is not a headless Service in the rendering")
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for obj in by_kind.get(kind, {}).values():
            ns = obj["metadata"].get("namespace")
            sel = (obj["spec"].get("selector") or obj["spec"].get("podSelector") or {}).get("matchLabels", {})
            if not any(wl["metadata"].get("namespace") == ns and matches(sel, tpl["metadata"].get("labels", {}))
                       for wl, tpl in pods):
                c.error(f"{describe(obj)}: selector {sel} matches no pod template")
    for sm in by_kind.get("ServiceMonitor", {}).values():
        ns = sm["metadata"].get("namespace")
        sel = sm["spec"]["selector"].get("matchLabels", {})
        svcs = [s for s in by_kind.get("Service", {}).values()
                if s["metadata"].get("namespace") == ns and matches(sel, s["metadata"].get("labels", {}))]
        if not svcs:
            c.error(f"{describe(sm)}: selector {sel} matches no Service")
        for ep in sm["spec"]["endpoints"]:
            if not any(ep.get("port") in {p.get("name") for p in s["spec"]["ports"]} for s in svcs):
                c.error(f"{describe(sm)}: endpoint port {ep.get('port')} is no port name of the selected Service")
    for ns_obj in by_kind.get("RoleBinding", {}).values():
        ns = ns_obj["metadata"].get("namespace")
        for s in ns_obj.get("subjects", []):
            if s["kind"] == "ServiceAccount" and (s.get("namespace") != ns or not exists("ServiceAccount", ns, s["name"])):
                c.error(f"{describe(ns_obj)}: subject ServiceAccount {s.get('namespace')}/{s['name']} is not the rendered one")
        if not exists("Role", ns, ns_obj["roleRef"]["name"]):
            c.error(f"{describe(ns_obj)}: Role {ns_obj['roleRef']['name']} is not in the rendering")
    namespaces = {o["metadata"]["name"] for o in by_kind.get("Namespace", {}).values()}
    if namespaces:
        for obj in objects:
            ns = obj["metadata"].get("namespace")
            if obj["kind"] != "Namespace" and ns and ns not in namespaces and ns != "istio-system":
                c.error(f"{describe(obj)}: namespace {ns} is not created by the rendering")
    if len(c.errors) == problems:
        c.ok("references resolve (ConfigMaps, PVCs, ServiceAccounts, Service selectors and "
             "target ports, probe ports, PDB/NetworkPolicy/ServiceMonitor selectors, pinned images)")


def find(objects, kind, name_prefix=None, name=None):
    for obj in objects:
        n = obj["metadata"]["name"]
        if obj["kind"] == kind and (name is None or n == name) and (name_prefix is None or n.startswith(name_prefix)):
            return obj
    return None


def container(workload, name):
    spec = workload["spec"]["template"]["spec"]
    for ctr in spec.get("initContainers", []) + spec["containers"]:
        if ctr["name"] == name:
            return ctr
    raise KeyError(name)


def check_pool(c, objects, extract):
    """pool.toml (in the pool-manager ConfigMap) against the Triton StatefulSet."""
    pm = find(objects, "Deployment", name="pool-manager")
    sts = find(objects, "StatefulSet", name="triton")
    if not pm or not sts:
        c.error("pool-manager Deployment or triton StatefulSet missing")
        return
    problems = len(c.errors)
    config_volume = next(v for v in pm["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    cm = find(objects, "ConfigMap", name=config_volume["configMap"]["name"])
    text = cm["data"]["pool.toml"]
    try:
        pool = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        c.error(f"pool.toml does not parse: {e}")
        return
    replicas = pool.get("replica", [])
    if set(pool) != {"replica"}:
        c.error(f"pool.toml: unexpected top-level keys {sorted(set(pool) - {'replica'})}")
    svc = sts["spec"]["serviceName"]
    triton = container(sts, "triton")
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    limit = quantity_bytes(triton["resources"]["limits"]["memory"])
    count = sts["spec"].get("replicas", 1)
    if len(replicas) != count:
        c.error(f"pool.toml lists {len(replicas)} replicas, the StatefulSet runs {count}")
    for i, r in enumerate(replicas):
        unknown = set(r) - POOL_TOML_KEYS
        if unknown:
            c.error(f"pool.toml replica {i}: unknown keys {sorted(unknown)}")
        want_name = f"{sts['metadata']['name']}-{i}"
        want_url = f"http://{want_name}.{svc}:{ports['http']}"
        if r.get("name") != want_name or r.get("url") != want_url:
            c.error(f"pool.toml replica {i}: expected name={want_name} url={want_url}, got "
                    f"name={r.get('name')} url={r.get('url')}")
        if r.get("grpc_port") != ports["grpc"]:
            c.error(f"pool.toml replica {i}: grpc_port {r.get('grpc_port')} is not Triton's grpc port {ports['grpc']}")
        try:
            mem = quantity_bytes(r.get("memory"))
            if mem >= limit:
                c.error(f"pool.toml replica {i}: memory {r.get('memory')} is not below the Triton "
                        f"container's limit {triton['resources']['limits']['memory']}")
        except ValueError as e:
            c.error(f"pool.toml replica {i}: {e}")
    if len(c.errors) == problems:
        c.ok(f"pool.toml lists the StatefulSet's {count} pod(s) as "
             f"{sts['metadata']['name']}-<i>.{svc}:{ports['http']} (grpc {ports['grpc']}), "
             f"memory below the {triton['resources']['limits']['memory']} container limit")
    pmc = container(pm, "pool-manager")
    init = container(pm, "wait-for-replicas")
    with open(os.path.join(extract, "pool-manager-args.json"), "w") as f:
        json.dump(pmc["args"], f)
    with open(os.path.join(extract, "triton-args.json"), "w") as f:
        json.dump(triton.get("command", []) + triton["args"], f)
    with open(os.path.join(extract, "init-script.sh"), "w") as f:
        f.write(init["command"][2])
    with open(os.path.join(extract, "pool.toml"), "w") as f:
        f.write(text)
    with open(os.path.join(extract, "replica-hosts.txt"), "w") as f:
        f.write("".join(r["url"].split("//")[1].split(":")[0] + "\n" for r in replicas))


def env_secret(ctr, name):
    """(Secret name, key) an env variable of a container comes from, or None."""
    for e in ctr.get("env", []):
        if e["name"] == name:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            return (ref["name"], ref["key"]) if ref else None
    return None


def wasm_host_env_keys(envoy_yaml):
    """host_env_keys of every Wasm HTTP filter in an Envoy bootstrap (YAML text)."""
    keys = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("name") == "envoy.filters.http.wasm":
                vm = node.get("typed_config", {}).get("config", {}).get("vm_config", {})
                keys.append(vm.get("environment_variables", {}).get("host_env_keys", []))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(yaml.safe_load(envoy_yaml))
    return keys


def check_gateway_token(c, objects):
    """Both sides of the gateway token read the same Secret key: the pool-manager (env
    MM_GATEWAY_TOKEN) and each gateway, i.e. the Envoy container's env plus the bootstrap's
    host_env_keys, or the WasmPlugin's vmConfig.env taking it from the host."""
    problems = len(c.errors)
    pm = find(objects, "Deployment", name="pool-manager")
    ref = env_secret(container(pm, "pool-manager"), GATEWAY_TOKEN_ENV) if pm else None
    if ref is None:
        c.error(f"the pool-manager gets no {GATEWAY_TOKEN_ENV} from a Secret: its internal routes would be open")
        return
    sides = ["pool-manager"]
    gw = find(objects, "Deployment", name="gateway")
    if gw is not None:
        got = env_secret(container(gw, "envoy"), GATEWAY_TOKEN_ENV)
        if got != ref:
            c.error(f"gateway: envoy's {GATEWAY_TOKEN_ENV} comes from {got}, the pool-manager's from {ref}")
        volume = next(v for v in gw["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
        cm = find(objects, "ConfigMap", name=volume["configMap"]["name"])
        for text in cm["data"].values():
            keys = wasm_host_env_keys(text)
            if not keys or any(GATEWAY_TOKEN_ENV not in k for k in keys):
                c.error(f"gateway: the bootstrap's Wasm vm_config does not pass {GATEWAY_TOKEN_ENV} to the filter (host_env_keys)")
        sides.append("gateway (env + host_env_keys)")
    wasm = find(objects, "WasmPlugin")
    if wasm is not None:
        env = wasm["spec"].get("vmConfig", {}).get("env", [])
        if not any(e["name"] == GATEWAY_TOKEN_ENV and e.get("valueFrom") == "HOST" for e in env):
            c.error(f"WasmPlugin: vmConfig.env does not take {GATEWAY_TOKEN_ENV} from the host (valueFrom: HOST)")
        sides.append("WasmPlugin (vmConfig.env HOST)")
    for ef in (o for o in objects if o["kind"] == "EnvoyFilter"):
        for p in ef["spec"]["configPatches"]:
            typed = p["patch"].get("value", {}).get("typed_config", {})
            if p["applyTo"] == "EXTENSION_CONFIG" and typed.get("@type") == WASM_TYPE:
                keys = typed.get("config", {}).get("vm_config", {}).get("environment_variables", {}).get("host_env_keys", [])
                if GATEWAY_TOKEN_ENV not in keys:
                    c.error(f"EnvoyFilter {ef['metadata']['name']}: the Wasm vm_config does not pass {GATEWAY_TOKEN_ENV} (host_env_keys)")
                sides.append(f"EnvoyFilter {ef['metadata']['name']} (host_env_keys)")
    if len(c.errors) == problems:
        c.ok(f"gateway token: {', '.join(sides)} read {GATEWAY_TOKEN_ENV} from Secret {ref[0]} key {ref[1]}")


def check_gateway(c, objects, extract):
    gw = find(objects, "Deployment", name="gateway")
    if gw is None:
        return False
    volume = next(v for v in gw["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    cm = find(objects, "ConfigMap", name=volume["configMap"]["name"])
    envoy = container(gw, "envoy")
    mount = next(m for m in envoy["volumeMounts"] if m["name"] == "config")["mountPath"]
    args = envoy["args"]
    try:
        config_path = args[args.index("--config-path") + 1]
    except (ValueError, IndexError):
        c.error("gateway: envoy args have no --config-path")
        return True
    file_name = os.path.relpath(config_path, mount)
    if file_name not in cm["data"]:
        c.error(f"gateway: --config-path {config_path} is not a key of ConfigMap {cm['metadata']['name']}")
        return True
    with open(os.path.join(extract, "envoy.yaml"), "w") as f:
        f.write(cm["data"][file_name])
    with open(os.path.join(extract, "envoy-args.json"), "w") as f:
        json.dump({"command": envoy["command"], "args": args, "config_path": config_path}, f)
    if "--disable-hot-restart" not in args:
        c.error("gateway: envoy runs without --disable-hot-restart")
    try:
        workers = int(args[args.index("--concurrency") + 1])
        cpu = str(envoy["resources"]["limits"]["cpu"])
        cpu = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
        if workers > max(1, cpu):
            c.error(f"gateway: --concurrency {workers} exceeds the CPU limit {cpu}")
    except (ValueError, IndexError, KeyError):
        c.error("gateway: envoy args need --concurrency N and a CPU limit")
    return True


WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"


def wasm_plugin_insertion(c, wasm):
    """The filter as a WasmPlugin: what Istio will generate from it."""
    spec = wasm["spec"]
    if not str(spec.get("url", "")).startswith("oci://"):
        c.error("WasmPlugin url must be an oci:// image (docker/filter-oci.Dockerfile)")
    if spec.get("failStrategy") != "FAIL_CLOSE":
        c.error("WasmPlugin failStrategy must be FAIL_CLOSE")
    cfg = spec.get("pluginConfig", {})
    env = spec.get("vmConfig", {}).get("env", [])
    return {
        "what": f"WasmPlugin ({spec.get('phase')}, FAIL_CLOSE, oci://)",
        "namespace": wasm["metadata"]["namespace"],
        "labels": spec["selector"]["matchLabels"],
        "root_id": spec.get("pluginName"),
        "plugin_config": cfg,
        "host_env_keys": [e["name"] for e in env if e.get("valueFrom") == "HOST"],
        "inline_env": {e["name"]: e.get("value", "") for e in env if e.get("valueFrom", "INLINE") == "INLINE"},
        "wasm_config": None,
    }


def envoy_filter_insertion(c, efs):
    """The filter inserted by an EnvoyFilter (EXTENSION_CONFIG + HTTP_FILTER through ECDS),
    or None if no EnvoyFilter adds a Wasm extension config."""
    ext, ins, owner = None, None, None
    for ef in efs:
        for p in ef["spec"]["configPatches"]:
            value = p["patch"].get("value", {})
            if p["applyTo"] == "EXTENSION_CONFIG" and value.get("typed_config", {}).get("@type") == WASM_TYPE:
                ext, owner = value, ef
            elif p["applyTo"] == "HTTP_FILTER":
                ins = p
    if ext is None:
        return None
    config = ext["typed_config"].get("config", {})
    if ins is None:
        c.error("EnvoyFilter adds the Wasm extension config but inserts no HTTP filter using it")
    else:
        value = ins["patch"].get("value", {})
        discovery = value.get("config_discovery", {})
        sub = ins.get("match", {}).get("listener", {}).get("filterChain", {}).get("filter", {}).get("subFilter", {})
        if (ins["patch"].get("operation") != "INSERT_BEFORE" or sub.get("name") != "envoy.filters.http.router"
                or ins.get("match", {}).get("context") != "GATEWAY"):
            c.error("the Wasm HTTP_FILTER must be INSERT_BEFORE envoy.filters.http.router, context GATEWAY")
        if value.get("name") != ext.get("name") or discovery.get("type_urls") != [WASM_TYPE]:
            c.error(f"the HTTP_FILTER must take the extension config {ext.get('name')!r} from ECDS "
                    f"(config_discovery, type_urls [{WASM_TYPE}])")
        if discovery.get("config_source", {}).get("initial_fetch_timeout") != "0s":
            c.error("config_discovery.initial_fetch_timeout must be 0s (no traffic before the filter is loaded)")
        if "default_config" in discovery or discovery.get("apply_default_config_without_warming"):
            c.error("config_discovery must have no default config (it would serve without the filter)")
    if config.get("failure_policy") != "FAIL_CLOSED":
        c.error("the EnvoyFilter's Wasm config must have failure_policy: FAIL_CLOSED")
    if config.get("allow_on_headers_stop_iteration") is not True:
        c.error("the EnvoyFilter's Wasm config must set allow_on_headers_stop_iteration: true "
                "(the reason to insert the filter this way)")
    remote = config.get("vm_config", {}).get("code", {}).get("remote", {})
    if not str(remote.get("http_uri", {}).get("uri", "")).startswith("https://"):
        c.error("the EnvoyFilter's module must be vm_config.code.remote with an https:// uri "
                "(the Istio agent downloads it)")
    if not re.fullmatch(r"[0-9a-f]{64}", str(remote.get("sha256", ""))):
        c.error("the EnvoyFilter's remote module needs its sha256 (64 hex digits)")
    try:
        cfg = json.loads(config.get("configuration", {}).get("value", ""))
    except ValueError as e:
        c.error(f"the EnvoyFilter's Wasm configuration is not JSON: {e}")
        cfg = {}
    if cfg.get("bodies_while_paused") is False:
        c.error("the EnvoyFilter variant has allow_on_headers_stop_iteration: leave bodies_while_paused at its default (true)")
    env = config.get("vm_config", {}).get("environment_variables", {})
    return {
        "what": f"EnvoyFilter {owner['metadata']['name']} (ECDS, FAIL_CLOSED, allow_on_headers_stop_iteration, https + sha256)",
        "namespace": owner["metadata"]["namespace"],
        "labels": owner["spec"]["workloadSelector"]["labels"],
        "root_id": config.get("root_id"),
        "plugin_config": cfg,
        "host_env_keys": env.get("host_env_keys", []),
        "inline_env": env.get("key_values", {}),
        "wasm_config": config,
    }


def check_istio(c, objects, extract):
    wasm = find(objects, "WasmPlugin")
    efs = [o for o in objects if o["kind"] == "EnvoyFilter"]
    via_ef = envoy_filter_insertion(c, efs)
    if wasm is None and via_ef is None:
        return False
    problems = len(c.errors)
    if wasm is not None and via_ef is not None:
        c.error("the filter is inserted twice: by a WasmPlugin and by an EnvoyFilter")
    filt = wasm_plugin_insertion(c, wasm) if wasm is not None else via_ef
    for kind, name in (("Deployment", "gateway"), ("Service", "gateway"), ("ConfigMap", "gateway-envoy")):
        if find(objects, kind, name_prefix=name):
            c.error(f"the Istio rendering still has the standalone {kind} {name}")
    gateway = find(objects, "Gateway")
    vs = find(objects, "VirtualService")
    pm_svc = find(objects, "Service", name="pool-manager")
    if not (efs and gateway and vs and pm_svc):
        c.error("the Istio rendering needs an EnvoyFilter, a Gateway, a VirtualService and the pool-manager Service")
        return True
    cfg = filt["plugin_config"]
    pm_ns = pm_svc["metadata"]["namespace"]
    pm_port = pm_svc["spec"]["ports"][0]["port"]
    want = f"outbound|{pm_port}||pool-manager.{pm_ns}.svc.cluster.local"
    if cfg.get("pool_manager_cluster") != want:
        c.error(f"the filter's pool_manager_cluster {cfg.get('pool_manager_cluster')!r} is not Istio's "
                f"cluster for the rendered pool-manager Service, {want!r}")
    if filt["root_id"] != "model_router":
        c.error("the filter's root id (WasmPlugin pluginName / root_id) must be model_router")
    labels = filt["labels"]
    for ef in efs:
        if ef["metadata"]["namespace"] != filt["namespace"]:
            c.error("the filter and every EnvoyFilter must live in the same (ingress gateway's) namespace")
        if ef["spec"]["workloadSelector"]["labels"] != labels:
            c.error(f"EnvoyFilter {ef['metadata']['name']} selects other pods than the filter")
    if gateway["spec"]["selector"] != labels:
        c.error("the filter, the EnvoyFilters and the Gateway must select the same ingress gateway pods")
    gw_ref = {gateway["metadata"]["name"], f"{gateway['metadata']['namespace']}/{gateway['metadata']['name']}"}
    if not gw_ref & set(vs["spec"].get("gateways", [])):
        c.error("the VirtualService is not bound to the rendered Gateway")
    added = {}
    route_cluster = {}
    route_config_patch = {}
    for p in (p for ef in efs for p in ef["spec"]["configPatches"]):
        value = p["patch"].get("value", {})
        if p["applyTo"] == "CLUSTER" and p["patch"]["operation"] == "ADD":
            added[value["name"]] = value
        elif p["applyTo"] == "HTTP_ROUTE":
            rname = p["match"]["routeConfiguration"]["vhost"]["route"]["name"]
            route_cluster[rname] = value["route"]["cluster"]
        elif p["applyTo"] == "ROUTE_CONFIGURATION":
            route_config_patch = value
    for needed in ("triton_replicas", "triton_replicas_grpc"):
        if needed not in added:
            c.error(f"EnvoyFilter adds no cluster {needed}")
    for name, value in added.items():
        if value.get("type") != "ORIGINAL_DST" or value.get("original_dst_lb_config", {}).get("use_http_header") is not False:
            c.error(f"EnvoyFilter cluster {name} must be ORIGINAL_DST with use_http_header: false")
    services = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in objects if s["kind"] == "Service"}
    routes = []
    for r in vs["spec"].get("http", []):
        name = r.get("name")
        if name not in route_cluster:
            c.error(f"VirtualService route {name!r} is not re-pointed by the EnvoyFilter (its "
                    f"placeholder destination would bypass the filter's choice)")
            continue
        if route_cluster[name] not in added:
            c.error(f"EnvoyFilter route {name} points at {route_cluster[name]}, which it does not add")
        for d in r.get("route", []):
            host = d["destination"]["host"]
            m = re.match(r"^([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local$", host)
            svc = services.get((m.group(2), m.group(1))) if m else None
            if not svc or d["destination"]["port"]["number"] not in {p["port"] for p in svc["spec"]["ports"]}:
                c.error(f"VirtualService route {name}: destination {host}:{d['destination']['port']['number']} is no rendered Service port")
        for m in r.get("match", []):
            routes.append({"prefix": m["uri"]["prefix"], "cluster": route_cluster[name],
                           "timeout": r.get("timeout", "15s"), "grpc": route_cluster[name].endswith("_grpc")})
    for name in route_cluster:
        if name not in {r.get("name") for r in vs["spec"].get("http", [])}:
            c.error(f"EnvoyFilter patches route {name!r}, which the VirtualService does not define")
    with open(os.path.join(extract, "istio.json"), "w") as f:
        json.dump({"plugin_name": filt["root_id"], "plugin_config": cfg,
                   "host_env_keys": filt["host_env_keys"], "inline_env": filt["inline_env"],
                   "wasm_config": filt["wasm_config"],
                   "clusters": list(added.values()), "routes": routes,
                   "route_config_patch": route_config_patch}, f)
    if len(c.errors) == problems:
        c.ok(f"Istio: no standalone gateway; the filter as {filt['what']} calls "
             f"{want}; EnvoyFilters add {', '.join(sorted(added))} and re-point VirtualService "
             f"routes {', '.join(sorted(route_cluster))}; all select {labels}")
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--schemas", required=True)
    ap.add_argument("--k8s-version", action="append", required=True)
    ap.add_argument("--extract", required=True, help="directory for extracted pieces, one subdirectory per file")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    failed = False
    for path in args.files:
        label = os.path.splitext(os.path.basename(path))[0]
        c = Checker(label)
        with open(path) as f:
            objects = [o for o in yaml.safe_load_all(f) if o]
        extract = os.path.join(args.extract, label)
        os.makedirs(extract, exist_ok=True)
        validate_schemas(c, objects, args.schemas, args.k8s_version)
        check_references(c, objects)
        check_pool(c, objects, extract)
        check_gateway_token(c, objects)
        has_gateway = check_gateway(c, objects, extract)
        has_istio = check_istio(c, objects, extract)
        if not has_gateway and not has_istio:
            c.error("neither a gateway Deployment nor an Istio WasmPlugin: nothing serves requests")
        for line in c.passed:
            print(f"ok   {line}")
        for line in c.errors:
            print(f"FAIL {line}", file=sys.stderr)
        failed |= bool(c.errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
