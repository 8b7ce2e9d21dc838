//! Checks of the Docker Compose stack that need no Docker engine.
//!
//! They read `docker-compose.yml` and the collector and Jaeger configs it
//! mounts, and answer with the problems they find, each a sentence a person can
//! act on. An empty list means the check passed. `tests/compose.rs` runs them
//! on the real files, so a renamed variable or a dropped healthcheck fails
//! `make test` instead of a `make up` ten minutes later.

use std::path::PathBuf;

use serde_yaml_ng::{Mapping, Value};

/// The services the stack must have.
pub const REQUIRED_SERVICES: &[&str] = &[
    "kafka",
    "postgres",
    "otel-collector",
    "jaeger",
    "victoriametrics",
    "api",
    "user",
    "consumer",
];

/// Host ports the README and `make up` promise: `(service, port)`.
pub const PUBLISHED_PORTS: &[(&str, u16)] = &[
    ("api", 8080),
    ("jaeger", 16686),
    ("victoriametrics", 8428),
    // `make doctor` reads the collector's health and own metrics.
    ("otel-collector", 13133),
    ("otel-collector", 8888),
];

/// The image `docker-compose.yml` builds from the workspace; it holds all
/// three service binaries.
pub const LOCAL_IMAGE: &str = "callchain:local";

/// Variables every callchain service must be given in the stack, beside its
/// own required ones: without them its spans never reach Jaeger, or reach it
/// under the wrong name. (Outside the stack they are optional.)
pub const STACK_REQUIRED_ENV_VARS: &[&str] = &["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"];

/// The port Jaeger's query service (UI and HTTP API) must listen on.
pub const JAEGER_QUERY_PORT: u16 = 16686;

/// The workspace root (where `docker-compose.yml` lives).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Reads a file given relative to the workspace root.
pub fn read_workspace_file(relative: &str) -> anyhow::Result<String> {
    let path = workspace_root().join(relative);
    std::fs::read_to_string(&path).map_err(|err| anyhow::anyhow!("cannot read {}: {err}", path.display()))
}

/// Checks the `environment` of one compose service against the variables the
/// service reads (`reads`) and those it cannot start without (`requires`).
///
/// Reports every variable the file gives that the service does not read (a
/// misspelling, or a setting that was renamed), and every required variable
/// the file does not give, or gives an empty value. `environment` may be a map
/// or a list of `KEY=value`; a bare `KEY` (taken from the host's environment)
/// counts as given.
pub fn check_env(compose_yaml: &str, service: &str, reads: &[&str], requires: &[&str]) -> Vec<String> {
    let doc = match parse(compose_yaml, "the compose file") {
        Ok(doc) => doc,
        Err(problem) => return vec![problem],
    };
    let services = match services(&doc) {
        Ok(services) => services,
        Err(problem) => return vec![problem],
    };
    let Some(definition) = services.get(service) else {
        return vec![format!("the compose file has no service `{service}`")];
    };
    let env = match environment(definition) {
        Ok(env) => env,
        Err(problem) => return vec![format!("service `{service}`: {problem}")],
    };

    let mut problems = Vec::new();
    for (name, _) in &env {
        if !reads.contains(&name.as_str()) {
            problems.push(format!("service `{service}` is given `{name}`, which it does not read"));
        }
    }
    for &name in requires {
        match env.iter().find(|(given, _)| given == name) {
            None => problems.push(format!(
                "service `{service}` needs `{name}`, which the compose file does not give it"
            )),
            Some((_, Some(value))) if value.trim().is_empty() => problems.push(format!(
                "service `{service}` needs `{name}`, but the compose file gives it an empty value"
            )),
            Some(_) => {}
        }
    }
    problems
}

/// Checks the shape of `docker-compose.yml`: the [`REQUIRED_SERVICES`] exist;
/// every `depends_on` target exists; every `service_healthy` target has a
/// healthcheck; the [`PUBLISHED_PORTS`] are published; the services that run
/// [`LOCAL_IMAGE`] have something that builds it and check their health
/// without a shell.
pub fn check_structure(compose_yaml: &str) -> Vec<String> {
    let doc = match parse(compose_yaml, "the compose file") {
        Ok(doc) => doc,
        Err(problem) => return vec![problem],
    };
    let services = match services(&doc) {
        Ok(services) => services,
        Err(problem) => return vec![problem],
    };
    let mut problems = Vec::new();

    if doc.get("version").is_some() {
        problems
            .push("the compose file has a `version:` key, which the Compose Specification made obsolete".to_owned());
    }

    for &required in REQUIRED_SERVICES {
        if services.get(required).is_none() {
            problems.push(format!("the compose file has no service `{required}`"));
        }
    }

    for (name, definition) in named(services) {
        match depends_on(definition) {
            Ok(dependencies) => {
                for (target, condition) in dependencies {
                    let Some(target_definition) = services.get(target.as_str()) else {
                        problems.push(format!(
                            "service `{name}` depends on `{target}`, which is not a service in the compose file"
                        ));
                        continue;
                    };
                    match condition.as_str() {
                        "service_healthy" if !has_healthcheck(target_definition) => {
                            problems.push(format!(
                                "service `{name}` waits for `{target}` to be healthy, but `{target}` has no healthcheck"
                            ));
                        }
                        "service_healthy" | "service_started" | "service_completed_successfully" => {}
                        other => problems.push(format!(
                            "service `{name}` depends on `{target}` with condition `{other}`, which Compose does not know"
                        )),
                    }
                }
            }
            Err(problem) => problems.push(format!("service `{name}`: {problem}")),
        }
    }

    for &(service, port) in PUBLISHED_PORTS {
        if let Some(definition) = services.get(service)
            && !published_ports(definition).contains(&port)
        {
            problems.push(format!("service `{service}` does not publish host port {port}"));
        }
    }

    let builds_local_image = named(services)
        .any(|(_, definition)| definition.get("build").is_some() && str_at(definition, "image") == Some(LOCAL_IMAGE));
    for (name, definition) in named(services) {
        if str_at(definition, "image") != Some(LOCAL_IMAGE) {
            continue;
        }
        if !builds_local_image {
            problems.push(format!(
                "service `{name}` runs image `{LOCAL_IMAGE}`, but no service builds it (`build:` with `image: {LOCAL_IMAGE}`)"
            ));
        }
        match definition.get("healthcheck").and_then(|check| check.get("test")) {
            None => problems.push(format!("service `{name}` has no healthcheck")),
            Some(test) => {
                let exec_form = test
                    .as_sequence()
                    .and_then(|words| words.first())
                    .and_then(Value::as_str)
                    == Some("CMD");
                if !exec_form {
                    problems.push(format!(
                        "service `{name}` runs its healthcheck through a shell; use the exec form, \
                         [\"CMD\", \"/usr/local/bin/<binary>\", \"--healthcheck\"]"
                    ));
                }
            }
        }
    }

    problems
}

/// Checks the OpenTelemetry Collector config: it parses, and a traces
/// pipeline receives from `otlp` (listening where other containers can reach
/// it), uses only components it defines, and exports to an exporter whose
/// endpoint is the `jaeger` service.
pub fn check_collector_config(collector_yaml: &str) -> Vec<String> {
    let doc = match parse(collector_yaml, "the collector config") {
        Ok(doc) => doc,
        Err(problem) => return vec![problem],
    };
    let pipelines = match traces_pipelines(&doc, "the collector config") {
        Ok(pipelines) => pipelines,
        Err(problem) => return vec![problem],
    };

    // One good traces pipeline is enough; if none is, say what is wrong with each.
    let mut problems = Vec::new();
    for (name, pipeline) in pipelines {
        let mut found = pipeline_problems(&doc, name, pipeline);
        if let Err(problem) = receives_otlp(&doc, name, pipeline) {
            found.push(problem);
        }
        let exports_to_jaeger = ids(pipeline, "exporters").iter().any(|id| {
            doc.get("exporters")
                .and_then(|exporters| exporters.get(id.as_str()))
                .and_then(|exporter| str_at(exporter, "endpoint"))
                .is_some_and(|endpoint| endpoint_host_port(endpoint).0 == "jaeger")
        });
        if !exports_to_jaeger {
            found.push(format!(
                "pipeline `{name}` has no exporter whose endpoint is the `jaeger` service"
            ));
        }
        if found.is_empty() {
            return Vec::new();
        }
        problems.extend(found);
    }
    problems
}

/// Checks the Jaeger v2 config: a traces pipeline receives from `otlp`
/// (reachable from other containers) and stores into a `jaeger_storage`
/// backend, and the `jaeger_query` extension is enabled, reads that storage,
/// and serves HTTP on port [`JAEGER_QUERY_PORT`].
pub fn check_jaeger_config(jaeger_yaml: &str) -> Vec<String> {
    let doc = match parse(jaeger_yaml, "the Jaeger config") {
        Ok(doc) => doc,
        Err(problem) => return vec![problem],
    };
    let mut problems = Vec::new();

    let backends: Vec<String> = doc
        .get("extensions")
        .and_then(|extensions| extensions.get("jaeger_storage"))
        .and_then(|storage| storage.get("backends"))
        .and_then(Value::as_mapping)
        .map(|backends| named(backends).map(|(name, _)| name.to_owned()).collect())
        .unwrap_or_default();
    if backends.is_empty() {
        problems.push("the Jaeger config defines no `jaeger_storage` backend".to_owned());
    }
    let is_backend = |name: Option<&str>| name.is_some_and(|name| backends.iter().any(|b| b == name));

    let enabled = ids(doc.get("service").unwrap_or(&Value::Null), "extensions");
    for extension in ["jaeger_storage", "jaeger_query"] {
        if !enabled.iter().any(|id| id == extension) {
            problems.push(format!(
                "the Jaeger config does not enable the `{extension}` extension under `service.extensions`"
            ));
        }
    }

    match doc
        .get("extensions")
        .and_then(|extensions| extensions.get("jaeger_query"))
    {
        None => problems.push("the Jaeger config has no `jaeger_query` extension".to_owned()),
        Some(query) => {
            let traces = query.get("storage").and_then(|storage| str_at(storage, "traces"));
            if !is_backend(traces) {
                problems.push(format!(
                    "`jaeger_query` reads traces from `{}`, which is not a `jaeger_storage` backend",
                    traces.unwrap_or("(nothing)")
                ));
            }
            match query.get("http").and_then(|http| str_at(http, "endpoint")) {
                None => problems.push(format!(
                    "`jaeger_query` sets no `http.endpoint`; it must serve on 0.0.0.0:{JAEGER_QUERY_PORT}"
                )),
                Some(endpoint) => {
                    let (host, port) = endpoint_host_port(endpoint);
                    if port != Some(JAEGER_QUERY_PORT) {
                        problems.push(format!(
                            "`jaeger_query` serves HTTP on `{endpoint}`, not on port {JAEGER_QUERY_PORT}"
                        ));
                    }
                    if is_loopback(host) {
                        problems.push(format!(
                            "`jaeger_query` serves HTTP on `{endpoint}`, which only the container itself can reach"
                        ));
                    }
                }
            }
        }
    }

    match traces_pipelines(&doc, "the Jaeger config") {
        Err(problem) => problems.push(problem),
        Ok(pipelines) => {
            let mut pipeline_found = Vec::new();
            let mut good = false;
            for (name, pipeline) in pipelines {
                let mut found = pipeline_problems(&doc, name, pipeline);
                if let Err(problem) = receives_otlp(&doc, name, pipeline) {
                    found.push(problem);
                }
                let stores = ids(pipeline, "exporters").iter().any(|id| {
                    let storage = doc
                        .get("exporters")
                        .and_then(|exporters| exporters.get(id.as_str()))
                        .and_then(|exporter| str_at(exporter, "trace_storage"));
                    component_type(id) == "jaeger_storage_exporter" && is_backend(storage)
                });
                if !stores {
                    found.push(format!(
                        "pipeline `{name}` does not export to a `jaeger_storage_exporter` writing to a `jaeger_storage` backend"
                    ));
                }
                if found.is_empty() {
                    good = true;
                    break;
                }
                pipeline_found.extend(found);
            }
            if !good {
                problems.extend(pipeline_found);
            }
        }
    }

    problems
}

/// Checks the collector's metrics: a metrics pipeline receives the services'
/// metrics from `otlp` and the span metrics from a `span_metrics` connector
/// that the traces pipeline feeds, and exports to an exporter whose endpoint
/// is the `victoriametrics` service; the collector's own metrics are pushed
/// there too.
pub fn check_collector_metrics(collector_yaml: &str) -> Vec<String> {
    let doc = match parse(collector_yaml, "the collector config") {
        Ok(doc) => doc,
        Err(problem) => return vec![problem],
    };
    let Some(pipelines) = doc
        .get("service")
        .and_then(|service| service.get("pipelines"))
        .and_then(Value::as_mapping)
    else {
        return vec!["the collector config has no `service.pipelines`".to_owned()];
    };
    let connectors: Vec<String> = doc
        .get("connectors")
        .and_then(Value::as_mapping)
        .map(|defined| {
            named(defined)
                .filter(|(id, _)| matches!(component_type(id), "span_metrics" | "spanmetrics"))
                .map(|(id, _)| id.to_owned())
                .collect()
        })
        .unwrap_or_default();
    let fed_by_traces = |connector: &str| {
        named(pipelines).any(|(name, pipeline)| {
            component_type(name) == "traces" && ids(pipeline, "exporters").iter().any(|id| id == connector)
        })
    };
    let mut problems = Vec::new();
    let mut good = false;
    for (name, pipeline) in named(pipelines).filter(|(name, _)| component_type(name) == "metrics") {
        let mut found = Vec::new();
        let receivers = ids(pipeline, "receivers");
        if !receivers.iter().any(|id| component_type(id) == "otlp") {
            found.push(format!(
                "pipeline `{name}` does not receive the services' metrics from `otlp`"
            ));
        }
        if !receivers.iter().any(|id| connectors.contains(id) && fed_by_traces(id)) {
            found.push(format!(
                "pipeline `{name}` does not receive from a `span_metrics` connector that a traces pipeline exports to"
            ));
        }
        let to_store = ids(pipeline, "exporters").iter().any(|id| {
            doc.get("exporters")
                .and_then(|exporters| exporters.get(id.as_str()))
                .and_then(|exporter| str_at(exporter, "endpoint"))
                .is_some_and(|endpoint| endpoint_host_port(endpoint).0 == "victoriametrics")
        });
        if !to_store {
            found.push(format!(
                "pipeline `{name}` has no exporter whose endpoint is the `victoriametrics` service"
            ));
        }
        if found.is_empty() {
            good = true;
            break;
        }
        problems.extend(found);
    }
    if !good && problems.is_empty() {
        problems.push("the collector config has no metrics pipeline".to_owned());
    }
    if good {
        problems.clear();
    }
    let own_pushed = doc
        .get("service")
        .and_then(|service| service.get("telemetry"))
        .and_then(|telemetry| telemetry.get("metrics"))
        .and_then(|metrics| metrics.get("readers"))
        .and_then(Value::as_sequence)
        .is_some_and(|readers| {
            readers.iter().any(|reader| {
                reader
                    .get("periodic")
                    .and_then(|periodic| periodic.get("exporter"))
                    .and_then(|exporter| exporter.get("otlp"))
                    .and_then(|otlp| str_at(otlp, "endpoint"))
                    .is_some_and(|endpoint| endpoint_host_port(endpoint).0 == "victoriametrics")
            })
        });
    if !own_pushed {
        problems.push(
            "the collector does not push its own metrics to the `victoriametrics` service (a `periodic` reader under `service.telemetry.metrics.readers`)"
                .to_owned(),
        );
    }
    problems
}

/// The component types a collector-style config uses: every id under
/// `receivers`, `processors`, `exporters`, `connectors` and `extensions`,
/// as `(section, type)`.
fn used_components(doc: &Value) -> std::collections::BTreeSet<(String, String)> {
    ["receivers", "processors", "exporters", "connectors", "extensions"]
        .into_iter()
        .flat_map(|section| {
            doc.get(section)
                .and_then(Value::as_mapping)
                .into_iter()
                .flat_map(named)
                .map(move |(id, _)| (section.to_owned(), component_type(id).to_owned()))
        })
        .collect()
}

/// The component type a builder-manifest module provides: its folder's
/// name less the kind (`.../otlpreceiver` is `otlp`), with the types whose
/// names differ from their folders (`otlpexporter` is `otlp_grpc` since
/// 0.144, `otlphttpexporter` is `otlp_http`, the span metrics connector is
/// `span_metrics`).
fn manifest_type(section: &str, module: &str) -> String {
    let folder = module.rsplit('/').next().unwrap_or(module);
    match folder {
        "otlpexporter" => "otlp_grpc".to_owned(),
        "otlphttpexporter" => "otlp_http".to_owned(),
        "spanmetricsconnector" => "span_metrics".to_owned(),
        "healthcheckextension" => "health_check".to_owned(),
        "memorylimiterprocessor" => "memory_limiter".to_owned(),
        _ => {
            let kind = section.trim_end_matches('s');
            folder.strip_suffix(kind).unwrap_or(folder).to_owned()
        }
    }
}

/// Checks that the collector's builder manifest builds exactly the
/// components its config uses: one missing fails the native collector at
/// start, one extra is built, shipped and never run. `debug` may stay in the
/// manifest unused: the config tells how to add it to a pipeline.
pub fn check_collector_manifest(collector_yaml: &str, manifest_yaml: &str) -> Vec<String> {
    let doc = match parse(collector_yaml, "the collector config") {
        Ok(doc) => doc,
        Err(problem) => return vec![problem],
    };
    let manifest: Value = match serde_yaml_ng::from_str(manifest_yaml) {
        Ok(manifest) => manifest,
        Err(err) => return vec![format!("the collector's builder manifest is not valid YAML: {err}")],
    };
    let used = used_components(&doc);
    let built: std::collections::BTreeSet<(String, String)> =
        ["receivers", "processors", "exporters", "connectors", "extensions"]
            .into_iter()
            .flat_map(|section| {
                manifest
                    .get(section)
                    .and_then(Value::as_sequence)
                    .into_iter()
                    .flatten()
                    .filter_map(|entry| str_at(entry, "gomod"))
                    .filter_map(|gomod| gomod.split_whitespace().next())
                    .map(move |module| (section.to_owned(), manifest_type(section, module)))
            })
            .collect();
    let mut problems = Vec::new();
    for (section, kind) in used.difference(&built) {
        problems.push(format!(
            "the collector config uses {section} `{kind}`, which observability/otelcol-builder.yaml does not build"
        ));
    }
    for (section, kind) in built.difference(&used) {
        if kind != "debug" {
            problems.push(format!(
                "observability/otelcol-builder.yaml builds {section} `{kind}`, which the collector config does not use"
            ));
        }
    }
    problems
}

// ---- YAML helpers ---------------------------------------------------------------

fn parse(yaml: &str, what: &str) -> Result<Value, String> {
    let yaml = with_env_defaults(yaml);
    let mut doc: Value = serde_yaml_ng::from_str(&yaml).map_err(|err| format!("{what} is not valid YAML: {err}"))?;
    // Compose files often share blocks with anchors and `<<` merge keys.
    doc.apply_merge()
        .map_err(|err| format!("{what} has a `<<` merge key that cannot be applied: {err}"))?;
    Ok(doc)
}

fn services(doc: &Value) -> Result<&Mapping, String> {
    doc.get("services")
        .and_then(Value::as_mapping)
        .ok_or_else(|| "the compose file has no `services` map".to_owned())
}

/// The entries of a map whose keys are strings.
fn named(map: &Mapping) -> impl Iterator<Item = (&str, &Value)> {
    map.iter().filter_map(|(key, value)| Some((key.as_str()?, value)))
}

fn str_at<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// A YAML scalar as Compose reads it: `5000`, `true` and `"5000"` are all text.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Tagged(tagged) => scalar(&tagged.value),
        _ => None,
    }
}

/// `(name, value)` for each variable a service's `environment` gives; the
/// value is `None` when it is taken from the host's environment.
fn environment(service: &Value) -> Result<Vec<(String, Option<String>)>, String> {
    match service.get("environment") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Mapping(map)) => map
            .iter()
            .map(|(key, value)| {
                let name = key
                    .as_str()
                    .ok_or_else(|| format!("`environment` has a key that is not text: {key:?}"))?;
                let value = match value {
                    Value::Null => None,
                    other => Some(
                        scalar(other)
                            .ok_or_else(|| format!("`environment` gives `{name}` a value that is not a scalar"))?,
                    ),
                };
                Ok((name.to_owned(), value))
            })
            .collect(),
        Some(Value::Sequence(entries)) => entries
            .iter()
            .map(|entry| {
                let entry = entry
                    .as_str()
                    .ok_or_else(|| format!("`environment` has an entry that is not text: {entry:?}"))?;
                Ok(match entry.split_once('=') {
                    Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
                    None => (entry.to_owned(), None),
                })
            })
            .collect(),
        Some(_) => Err("`environment` must be a map or a list of `KEY=value`".to_owned()),
    }
}

/// `(target, condition)` for each `depends_on` entry; the list form means
/// `service_started`.
fn depends_on(service: &Value) -> Result<Vec<(String, String)>, String> {
    match service.get("depends_on") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Sequence(targets)) => targets
            .iter()
            .map(|target| {
                target
                    .as_str()
                    .map(|target| (target.to_owned(), "service_started".to_owned()))
                    .ok_or_else(|| format!("`depends_on` has an entry that is not a name: {target:?}"))
            })
            .collect(),
        Some(Value::Mapping(targets)) => Ok(named(targets)
            .map(|(target, options)| {
                let condition = str_at(options, "condition").unwrap_or("service_started");
                (target.to_owned(), condition.to_owned())
            })
            .collect()),
        Some(_) => Err("`depends_on` must be a list of names or a map".to_owned()),
    }
}

fn has_healthcheck(service: &Value) -> bool {
    let Some(check) = service.get("healthcheck") else {
        return false;
    };
    if check.get("disable").and_then(Value::as_bool) == Some(true) {
        return false;
    }
    match check.get("test") {
        None | Some(Value::Null) => false,
        Some(Value::Sequence(words)) => words.first().and_then(Value::as_str) != Some("NONE"),
        Some(Value::String(command)) => !command.trim().is_empty(),
        Some(_) => false,
    }
}

/// The host ports a service publishes, from the short (`"8080:8080"`,
/// `"127.0.0.1:8080:8080/tcp"`) and the long (`published: 8080`) syntax.
fn published_ports(service: &Value) -> Vec<u16> {
    let Some(ports) = service.get("ports").and_then(Value::as_sequence) else {
        return Vec::new();
    };
    ports
        .iter()
        .filter_map(|port| match port {
            Value::Mapping(_) => port.get("published").and_then(scalar)?.parse().ok(),
            Value::String(short) => {
                let without_protocol = short.split('/').next().unwrap_or(short);
                let parts: Vec<&str> = without_protocol.split(':').collect();
                // `CONTAINER` alone publishes on a random host port.
                match parts.as_slice() {
                    [host, _container] | [_, host, _container] => host.parse().ok(),
                    _ => None,
                }
            }
            // A bare number is a container port, published on a random host port.
            _ => None,
        })
        .collect()
}

// ---- collector-style (OpenTelemetry Collector, Jaeger v2) helpers ---------------

/// The pipelines named `traces` or `traces/<name>`.
fn traces_pipelines<'a>(doc: &'a Value, what: &str) -> Result<Vec<(&'a str, &'a Value)>, String> {
    let pipelines = doc
        .get("service")
        .and_then(|service| service.get("pipelines"))
        .and_then(Value::as_mapping)
        .ok_or_else(|| format!("{what} has no `service.pipelines`"))?;
    let traces: Vec<_> = named(pipelines)
        .filter(|(name, _)| component_type(name) == "traces")
        .collect();
    if traces.is_empty() {
        return Err(format!("{what} has no traces pipeline"));
    }
    Ok(traces)
}

/// The component ids listed under `key` (`receivers`, `exporters`, ...).
fn ids(value: &Value, key: &str) -> Vec<String> {
    value
        .get(key)
        .and_then(Value::as_sequence)
        .map(|ids| ids.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// `otlp/jaeger` is a component of type `otlp`.
fn component_type(id: &str) -> &str {
    id.split('/').next().unwrap_or(id)
}

/// Every component the pipeline lists must be defined in its section (or,
/// for receivers and exporters, under `connectors`).
fn pipeline_problems(doc: &Value, name: &str, pipeline: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    for (section, kind) in [
        ("receivers", "receiver"),
        ("processors", "processor"),
        ("exporters", "exporter"),
    ] {
        for id in ids(pipeline, section) {
            let defined_in = |section: &str| doc.get(section).and_then(|defined| defined.get(id.as_str())).is_some();
            // A connector is the exporter of one pipeline and the receiver of another.
            let connector = section != "processors" && defined_in("connectors");
            if !defined_in(section) && !connector {
                problems.push(format!(
                    "pipeline `{name}` uses {kind} `{id}`, which is not defined under `{section}`"
                ));
            }
        }
    }
    if ids(pipeline, "receivers").is_empty() {
        problems.push(format!("pipeline `{name}` has no receivers"));
    }
    if ids(pipeline, "exporters").is_empty() {
        problems.push(format!("pipeline `{name}` has no exporters"));
    }
    problems
}

/// The pipeline starts at an `otlp` receiver whose gRPC endpoint other
/// containers can reach (the collector's default, `localhost:4317`, they
/// cannot).
fn receives_otlp(doc: &Value, name: &str, pipeline: &Value) -> Result<(), String> {
    let receivers = ids(pipeline, "receivers");
    let Some(id) = receivers.iter().find(|id| component_type(id) == "otlp") else {
        return Err(format!("pipeline `{name}` does not receive from `otlp`"));
    };
    let grpc = doc
        .get("receivers")
        .and_then(|receivers| receivers.get(id.as_str()))
        .and_then(|receiver| receiver.get("protocols"))
        .and_then(|protocols| protocols.get("grpc"));
    let Some(grpc) = grpc else {
        return Err(format!("receiver `{id}` has no `protocols.grpc`"));
    };
    match str_at(grpc, "endpoint") {
        None => Err(format!(
            "receiver `{id}` sets no gRPC endpoint, so it listens on localhost only; set `endpoint: 0.0.0.0:4317`"
        )),
        Some(endpoint) if is_loopback(endpoint_host_port(endpoint).0) => Err(format!(
            "receiver `{id}` listens on `{endpoint}`, which other containers cannot reach"
        )),
        Some(_) => Ok(()),
    }
}

/// Host and port of `jaeger:4317`, `http://jaeger:4318/v1/traces`,
/// `dns:///jaeger:4317` or `0.0.0.0:16686`.
fn endpoint_host_port(endpoint: &str) -> (&str, Option<u16>) {
    let without_scheme = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest)
        .trim_start_matches('/');
    let authority = without_scheme.split('/').next().unwrap_or(without_scheme);
    match authority.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().ok()),
        None => (authority, None),
    }
}

fn is_loopback(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "[::1]" | "::1")
}

/// The collector's and Jaeger's configs as a container sees them: every
/// `${env:NAME:-default}` replaced by its default. (`make dev` sets some of
/// those variables to move ports aside; docker-compose.yml sets none.)
pub fn with_env_defaults(yaml: &str) -> String {
    let mut out = String::with_capacity(yaml.len());
    let mut rest = yaml;
    while let Some(start) = rest.find("${env:") {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        match after.find('}') {
            Some(end) => {
                let inner = &after["${env:".len()..end];
                match inner.split_once(":-") {
                    Some((_, default)) => out.push_str(default),
                    None => out.push_str(&after[..=end]),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(after);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The `KEY=VALUE` lines of a `.env` file (comments and blank lines skipped).
pub fn dot_env(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().trim_matches('"').to_owned()))
        .collect()
}

/// The files that name a version of the stack's own parts, as text.
pub struct VersionedFiles<'a> {
    pub dot_env: &'a str,
    pub compose: &'a str,
    /// `observability/otelcol-builder.yaml`
    pub collector_manifest: &'a str,
    /// `observability/jaeger/go.mod`
    pub jaeger_go_mod: &'a str,
    /// `scripts/kafka/pom.xml`
    pub kafka_pom: &'a str,
    /// `scripts/victoriametrics/go.mod`
    pub victoriametrics_go_mod: &'a str,
}

/// Checks that every place agrees with `.env`: the compose images take their
/// tags from its variables, and the native builds (the collector's builder
/// manifest, Jaeger's wrapper module, Kafka's pom) pin the same versions.
pub fn check_versions(files: &VersionedFiles<'_>) -> Vec<String> {
    let env = dot_env(files.dot_env);
    let mut problems = Vec::new();
    let version = |key: &str, problems: &mut Vec<String>| -> String {
        env.get(key).cloned().unwrap_or_else(|| {
            problems.push(format!(".env does not name {key}"));
            String::new()
        })
    };
    let kafka = version("KAFKA_VERSION", &mut problems);
    let otelcol = version("OTELCOL_VERSION", &mut problems);
    let jaeger = version("JAEGER_VERSION", &mut problems);
    let jaeger_module = version("JAEGER_MODULE_VERSION", &mut problems);
    let victoriametrics = version("VICTORIAMETRICS_VERSION", &mut problems);

    match parse(files.compose, "the compose file").and_then(|doc| services(&doc).cloned()) {
        Err(problem) => problems.push(problem),
        Ok(services) => {
            for (service, image) in [
                ("kafka", "apache/kafka:${KAFKA_VERSION}"),
                ("kafka-init", "apache/kafka:${KAFKA_VERSION}"),
                (
                    "otel-collector",
                    "otel/opentelemetry-collector-contrib:${OTELCOL_VERSION}",
                ),
                ("jaeger", "jaegertracing/jaeger:${JAEGER_VERSION}"),
                (
                    "victoriametrics",
                    "victoriametrics/victoria-metrics:v${VICTORIAMETRICS_VERSION}",
                ),
            ] {
                let actual = services.get(service).and_then(|definition| str_at(definition, "image"));
                if actual != Some(image) {
                    problems.push(format!(
                        "compose service `{service}` runs `{}`, not `{image}` (its tag must come from .env)",
                        actual.unwrap_or("(no image)")
                    ));
                }
            }
        }
    }

    match serde_yaml_ng::from_str::<Value>(files.collector_manifest) {
        Err(err) => problems.push(format!("the collector's builder manifest is not valid YAML: {err}")),
        Ok(manifest) => {
            let dist = manifest.get("dist").and_then(|dist| str_at(dist, "version"));
            if dist != Some(otelcol.as_str()) {
                problems.push(format!(
                    "the collector's builder manifest builds version {}, but .env names OTELCOL_VERSION={otelcol}",
                    dist.unwrap_or("(none)")
                ));
            }
            let want = format!("v{otelcol}");
            for line in files.collector_manifest.lines().map(str::trim) {
                let Some(module) = line.trim_start_matches("- ").strip_prefix("gomod:") else {
                    continue;
                };
                let mut words = module.split_whitespace();
                let (Some(path), Some(module_version)) = (words.next(), words.next()) else {
                    continue;
                };
                // Modules the collector declared stable are on their own v1.x line.
                if module_version != want && !module_version.starts_with("v1.") {
                    problems.push(format!(
                        "the collector's builder manifest takes {path} at {module_version}, not {want} (.env's OTELCOL_VERSION)"
                    ));
                }
            }
        }
    }

    let jaeger_require = files
        .jaeger_go_mod
        .lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix("github.com/jaegertracing/jaeger "))
        .map(|rest| rest.split_whitespace().next().unwrap_or_default());
    if jaeger_require != Some(jaeger_module.as_str()) {
        problems.push(format!(
            "Jaeger's wrapper go.mod requires github.com/jaegertracing/jaeger {}, but .env names JAEGER_MODULE_VERSION={jaeger_module} (Jaeger {jaeger})",
            jaeger_require.unwrap_or("(nothing)")
        ));
    }

    let victoriametrics_require = files
        .victoriametrics_go_mod
        .lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix("github.com/VictoriaMetrics/VictoriaMetrics "))
        .map(|rest| rest.split_whitespace().next().unwrap_or_default());
    if victoriametrics_require != Some(format!("v{victoriametrics}").as_str()) {
        problems.push(format!(
            "VictoriaMetrics' wrapper go.mod requires github.com/VictoriaMetrics/VictoriaMetrics {}, but .env names VICTORIAMETRICS_VERSION={victoriametrics}",
            victoriametrics_require.unwrap_or("(nothing)")
        ));
    }

    let pom = files
        .kafka_pom
        .split_once("<kafka.version>")
        .and_then(|(_, rest)| rest.split_once("</kafka.version>"))
        .map(|(version, _)| version.trim());
    if pom != Some(kafka.as_str()) {
        problems.push(format!(
            "Kafka's pom defaults to kafka.version {}, but .env names KAFKA_VERSION={kafka}",
            pom.unwrap_or("(none)")
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
services:
  db:
    image: postgres:16
    healthcheck:
      test: ["CMD", "pg_isready"]
  app:
    image: app
    environment:
      - DATABASE_URL=postgres://db/app
      - FROM_HOST
      - EMPTY=
    depends_on:
      db:
        condition: service_healthy
  worker:
    image: app
    environment:
      DATABASE_URL: postgres://db/app
      TIMEOUT_MS: 5000
      VERBOSE: true
    depends_on: [db]
"#;

    #[test]
    fn a_list_environment_is_read_as_names_and_values() {
        let problems = check_env(SMALL, "app", &["DATABASE_URL", "FROM_HOST", "EMPTY"], &["DATABASE_URL"]);
        assert_eq!(problems, Vec::<String>::new());
    }

    #[test]
    fn a_map_environment_with_numbers_and_booleans_is_read() {
        let problems = check_env(SMALL, "worker", &["DATABASE_URL", "TIMEOUT_MS"], &["DATABASE_URL"]);
        assert_eq!(
            problems,
            vec!["service `worker` is given `VERBOSE`, which it does not read".to_owned()]
        );
    }

    #[test]
    fn a_required_variable_given_empty_counts_as_missing() {
        let problems = check_env(
            SMALL,
            "app",
            &["DATABASE_URL", "FROM_HOST", "EMPTY"],
            &["EMPTY", "SECRET"],
        );
        assert_eq!(
            problems,
            vec![
                "service `app` needs `EMPTY`, but the compose file gives it an empty value".to_owned(),
                "service `app` needs `SECRET`, which the compose file does not give it".to_owned(),
            ]
        );
    }

    #[test]
    fn an_unknown_service_is_reported() {
        assert_eq!(
            check_env(SMALL, "nope", &[], &[]),
            vec!["the compose file has no service `nope`".to_owned()]
        );
    }

    #[test]
    fn waiting_on_health_that_no_healthcheck_reports_is_reported() {
        let yaml = SMALL.replace("test: [\"CMD\", \"pg_isready\"]", "disable: true");
        let problems = check_structure(&yaml);
        assert!(
            problems.contains(&"service `app` waits for `db` to be healthy, but `db` has no healthcheck".to_owned()),
            "{problems:#?}"
        );
    }

    #[test]
    fn a_dependency_on_a_missing_service_is_reported() {
        let yaml = SMALL.replace("depends_on: [db]", "depends_on: [dbb]");
        let problems = check_structure(&yaml);
        assert!(
            problems
                .contains(&"service `worker` depends on `dbb`, which is not a service in the compose file".to_owned()),
            "{problems:#?}"
        );
    }

    #[test]
    fn published_ports_are_read_from_short_and_long_syntax() {
        let service: Value = serde_yaml_ng::from_str(
            r#"
ports:
  - "8080:80"
  - "127.0.0.1:9090:9090/tcp"
  - "3000"
  - 4000
  - target: 16686
    published: "16686"
"#,
        )
        .unwrap();
        assert_eq!(published_ports(&service), vec![8080, 9090, 16686]);
    }

    #[test]
    fn endpoints_are_split_into_host_and_port() {
        assert_eq!(endpoint_host_port("jaeger:4317"), ("jaeger", Some(4317)));
        assert_eq!(
            endpoint_host_port("http://jaeger:4318/v1/traces"),
            ("jaeger", Some(4318))
        );
        assert_eq!(endpoint_host_port("dns:///jaeger:4317"), ("jaeger", Some(4317)));
        assert_eq!(endpoint_host_port("jaeger"), ("jaeger", None));
    }

    #[test]
    fn a_collector_that_exports_elsewhere_or_listens_on_localhost_is_reported() {
        let yaml = r#"
receivers:
  otlp:
    protocols:
      grpc:
exporters:
  otlp/tempo:
    endpoint: tempo:4317
service:
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [otlp/tempo]
"#;
        assert_eq!(
            check_collector_config(yaml),
            vec![
                "receiver `otlp` sets no gRPC endpoint, so it listens on localhost only; set `endpoint: 0.0.0.0:4317`"
                    .to_owned(),
                "pipeline `traces` has no exporter whose endpoint is the `jaeger` service".to_owned(),
            ]
        );
    }

    #[test]
    fn a_collector_pipeline_using_an_undefined_component_is_reported() {
        let yaml = r#"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 0.0.0.0:4317
exporters:
  otlp/jaeger:
    endpoint: jaeger:4317
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [otlp/jaeger]
"#;
        assert_eq!(
            check_collector_config(yaml),
            vec!["pipeline `traces` uses processor `batch`, which is not defined under `processors`".to_owned()]
        );
    }

    #[test]
    fn a_jaeger_query_on_another_port_is_reported() {
        let yaml = r#"
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
extensions:
  jaeger_storage:
    backends:
      mem:
        memory:
          max_traces: 10
  jaeger_query:
    storage:
      traces: mem
    http:
      endpoint: 0.0.0.0:16000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 0.0.0.0:4317
exporters:
  jaeger_storage_exporter:
    trace_storage: mem
"#;
        assert_eq!(
            check_jaeger_config(yaml),
            vec!["`jaeger_query` serves HTTP on `0.0.0.0:16000`, not on port 16686".to_owned()]
        );
    }
}
