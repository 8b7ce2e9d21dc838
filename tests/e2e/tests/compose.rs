//! The Docker Compose stack (`make up`), checked without a Docker engine: the
//! compose file gives each service exactly the variables it reads, its
//! structure holds together, and traces have a path from the services to
//! Jaeger. The variable lists come from the services' own crates, so renaming
//! a setting in the code without renaming it in `docker-compose.yml` fails here.

use std::io::ErrorKind;
use std::process::Command;

use callchain_e2e::compose::{
    STACK_REQUIRED_ENV_VARS, VersionedFiles, check_collector_config, check_env, check_jaeger_config, check_structure,
    check_versions, read_workspace_file, workspace_root,
};
use callchain_runtime::env::{Setting, names};
use serde_yaml_ng::Value;

fn compose_file() -> String {
    read_workspace_file("docker-compose.yml").unwrap()
}

/// What a service reads: its own settings and the telemetry's.
fn reads(service_settings: &[Setting]) -> Vec<&'static str> {
    names(service_settings)
        .into_iter()
        .chain(names(callchain_telemetry::SETTINGS))
        .collect()
}

/// What the stack must give a service: its own required variables and the
/// ones that route its spans to Jaeger.
fn requires(service_required: &[&'static str]) -> Vec<&'static str> {
    service_required
        .iter()
        .chain(STACK_REQUIRED_ENV_VARS)
        .copied()
        .collect()
}

fn api_problems(yaml: &str) -> Vec<String> {
    check_env(
        yaml,
        "api",
        &reads(callchain_api::config::SETTINGS),
        &requires(callchain_api::config::REQUIRED_ENV_VARS),
    )
}

fn user_problems(yaml: &str) -> Vec<String> {
    check_env(
        yaml,
        "user",
        &reads(callchain_user::config::SETTINGS),
        &requires(callchain_user::config::REQUIRED_ENV_VARS),
    )
}

fn consumer_problems(yaml: &str) -> Vec<String> {
    check_env(
        yaml,
        "consumer",
        &reads(callchain_consumer::config::SETTINGS),
        &requires(callchain_consumer::config::REQUIRED_ENV_VARS),
    )
}

fn assert_no_problems(problems: Vec<String>) {
    assert!(problems.is_empty(), "problems:\n- {}", problems.join("\n- "));
}

#[test]
fn compose_gives_api_every_variable_it_needs_and_none_it_does_not_read() {
    assert_no_problems(api_problems(&compose_file()));
}

#[test]
fn compose_gives_user_every_variable_it_needs_and_none_it_does_not_read() {
    assert_no_problems(user_problems(&compose_file()));
}

#[test]
fn compose_gives_consumer_every_variable_it_needs_and_none_it_does_not_read() {
    assert_no_problems(consumer_problems(&compose_file()));
}

#[test]
fn a_misspelled_variable_in_the_compose_file_is_reported() {
    let misspelled = compose_file().replace("JWT_SECRET", "JWT_SECRTE");
    let problems = api_problems(&misspelled);
    assert!(
        problems.contains(&"service `api` is given `JWT_SECRTE`, which it does not read".to_owned()),
        "{problems:#?}"
    );
    assert!(
        problems.contains(&"service `api` needs `JWT_SECRET`, which the compose file does not give it".to_owned()),
        "{problems:#?}"
    );
}

#[test]
fn a_required_variable_missing_from_the_compose_file_is_reported() {
    let without = remove_env(&compose_file(), "user", "DATABASE_URL");
    let problems = user_problems(&without);
    assert!(
        problems.contains(&"service `user` needs `DATABASE_URL`, which the compose file does not give it".to_owned()),
        "{problems:#?}"
    );
}

#[test]
fn compose_has_every_service_waits_only_on_visible_health_and_publishes_the_documented_ports() {
    assert_no_problems(check_structure(&compose_file()));
}

#[test]
fn the_collector_forwards_otlp_traces_to_jaeger() {
    assert_no_problems(check_collector_config(
        &read_workspace_file("observability/otel-collector.yaml").unwrap(),
    ));
}

#[test]
fn jaeger_receives_otlp_and_serves_its_query_api_on_16686() {
    assert_no_problems(check_jaeger_config(
        &read_workspace_file("observability/jaeger.yaml").unwrap(),
    ));
}

/// The topics the services use by default (`callchain_events`) are the ones
/// `make up` (kafka-init) and `make dev` (scripts/parts.sh) create, with the
/// same partition counts.
#[test]
fn make_up_and_make_dev_create_the_topics_the_services_use() {
    let compose = compose_file();
    let parts = read_workspace_file("scripts/parts.sh").unwrap();
    for (topic, partitions) in [(callchain_events::TOPIC, 12), (callchain_events::DLQ_TOPIC, 1)] {
        assert!(
            compose.contains(&format!("--topic {topic} --partitions {partitions} ")),
            "docker-compose.yml's kafka-init creates {topic} with {partitions} partition(s)"
        );
        assert!(
            parts.contains(&format!(" {topic} {partitions}\n")),
            "scripts/parts.sh creates {topic} with {partitions} partition(s)"
        );
    }
}

/// The workspace's files that name a version, with `edit` applied to one.
fn version_problems(edit: impl Fn(&str, String) -> String) -> Vec<String> {
    let read = |path: &str| edit(path, read_workspace_file(path).unwrap());
    let (dot_env, compose, collector_manifest, jaeger_go_mod, kafka_pom) = (
        read(".env"),
        read("docker-compose.yml"),
        read("observability/otelcol-builder.yaml"),
        read("observability/jaeger/go.mod"),
        read("scripts/kafka/pom.xml"),
    );
    check_versions(&VersionedFiles {
        dot_env: &dot_env,
        compose: &compose,
        collector_manifest: &collector_manifest,
        jaeger_go_mod: &jaeger_go_mod,
        kafka_pom: &kafka_pom,
    })
}

#[test]
fn compose_and_the_native_builds_run_the_versions_named_in_dot_env() {
    assert_no_problems(version_problems(|_, text| text));
}

#[test]
fn a_version_that_disagrees_with_dot_env_is_reported() {
    let problems = version_problems(|path, text| match path {
        ".env" => text.replace("KAFKA_VERSION=", "KAFKA_VERSION=9."),
        "docker-compose.yml" => text.replace("jaegertracing/jaeger:${JAEGER_VERSION}", "jaegertracing/jaeger:2.1.0"),
        "observability/otelcol-builder.yaml" => text.replace("healthcheckextension v0.", "healthcheckextension v0.1"),
        _ => text,
    });
    for expected in [
        "Kafka's pom defaults to kafka.version",
        "compose service `jaeger` runs `jaegertracing/jaeger:2.1.0`",
        "healthcheckextension at v0.1",
    ] {
        assert!(
            problems.iter().any(|problem| problem.contains(expected)),
            "{expected:?} in {problems:#?}"
        );
    }
}

/// `docker-compose config -q` validates the file against the Compose schema
/// and resolves it without a Docker engine.
#[test]
fn docker_compose_accepts_the_compose_file() {
    let output = Command::new("docker-compose")
        .args(["--file", "docker-compose.yml", "config", "--quiet"])
        .current_dir(workspace_root())
        .output();
    let output = match output {
        Ok(output) => output,
        Err(err) if err.kind() == ErrorKind::NotFound => panic!(
            "`docker-compose` is not installed, so docker-compose.yml cannot be validated: \
             run `make tools` (it installs Debian's docker-compose package)"
        ),
        Err(err) => panic!("cannot run `docker-compose`: {err}"),
    };
    assert!(
        output.status.success(),
        "`docker-compose config --quiet` rejects docker-compose.yml:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

/// The compose file with one variable taken out of one service's environment.
fn remove_env(yaml: &str, service: &str, name: &str) -> String {
    let mut doc: Value = serde_yaml_ng::from_str(yaml).unwrap();
    let environment = doc
        .get_mut("services")
        .and_then(|services| services.get_mut(service))
        .and_then(|definition| definition.get_mut("environment"))
        .unwrap_or_else(|| panic!("service `{service}` has no environment"));
    match environment {
        Value::Mapping(map) => {
            map.remove(name)
                .unwrap_or_else(|| panic!("`{service}` is not given `{name}`"));
        }
        Value::Sequence(entries) => {
            let before = entries.len();
            entries.retain(|entry| entry.as_str().is_none_or(|entry| entry.split('=').next() != Some(name)));
            assert!(entries.len() < before, "`{service}` is not given `{name}`");
        }
        other => panic!("unexpected environment: {other:?}"),
    }
    serde_yaml_ng::to_string(&doc).unwrap()
}

/// `docker-compose.yml` with `docker-compose.cluster.yml` over it (`make up
/// KAFKA_NODES=3`), as `docker-compose config` resolves the two.
fn cluster_compose_file() -> String {
    let output = Command::new("docker-compose")
        .args([
            "--file",
            "docker-compose.yml",
            "--file",
            "docker-compose.cluster.yml",
            "config",
        ])
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|err| {
            panic!(
                "cannot run `docker-compose` ({err}): run `make tools` (it installs Debian's docker-compose package)"
            )
        });
    assert!(
        output.status.success(),
        "`docker-compose config` rejects docker-compose.yml with docker-compose.cluster.yml:\n{}",
        String::from_utf8_lossy(&output.stderr),
    );
    // v1 writes the resolved file with the `version:` key of its format;
    // the files themselves have none.
    let mut resolved: Value = serde_yaml_ng::from_slice(&output.stdout).unwrap();
    if let Value::Mapping(map) = &mut resolved {
        map.remove("version");
    }
    serde_yaml_ng::to_string(&resolved).unwrap()
}

/// The cluster override: three KRaft nodes, each a voter with an id of its
/// own, replicating three times with two in sync; topics with three replicas;
/// the services given every node; and the rest of the stack's checks hold.
#[test]
fn the_cluster_override_runs_three_replicating_nodes_and_gives_the_services_all_three() {
    let yaml = cluster_compose_file();
    assert_no_problems(check_structure(&yaml));
    assert_no_problems(user_problems(&yaml));
    assert_no_problems(consumer_problems(&yaml));

    let doc: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    let env = |service: &str, name: &str| -> String {
        let value = &doc["services"][service]["environment"][name];
        value
            .as_str()
            .map(str::to_owned)
            .or_else(|| value.as_u64().map(|n| n.to_string()))
            .unwrap_or_else(|| panic!("`{service}` is not given {name}"))
    };
    let mut ids = Vec::new();
    for node in ["kafka", "kafka2", "kafka3"] {
        assert_eq!(
            env(node, "KAFKA_CONTROLLER_QUORUM_VOTERS"),
            "1@kafka:9093,2@kafka2:9093,3@kafka3:9093"
        );
        assert_eq!(env(node, "KAFKA_DEFAULT_REPLICATION_FACTOR"), "3", "{node}");
        assert_eq!(env(node, "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"), "3", "{node}");
        assert_eq!(env(node, "KAFKA_MIN_INSYNC_REPLICAS"), "2", "{node}");
        assert_eq!(env(node, "KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"), "false", "{node}");
        assert!(
            env(node, "KAFKA_ADVERTISED_LISTENERS").starts_with(&format!("PLAINTEXT://{node}:9092,")),
            "{node} advertises itself"
        );
        ids.push(env(node, "KAFKA_NODE_ID"));
    }
    assert_eq!(ids, ["1", "2", "3"]);
    for service in ["user", "consumer"] {
        assert_eq!(
            env(service, "KAFKA_BROKERS"),
            "kafka:9092,kafka2:9092,kafka3:9092",
            "{service}"
        );
    }
    let init = serde_yaml_ng::to_string(&doc["services"]["kafka-init"]["command"]).unwrap();
    for (topic, partitions) in [(callchain_events::TOPIC, 12), (callchain_events::DLQ_TOPIC, 1)] {
        assert!(
            init.contains(&format!(
                "--topic {topic} --partitions {partitions} --replication-factor 3 --config min.insync.replicas=2"
            )),
            "kafka-init creates {topic} with three replicas: {init}"
        );
    }
}
