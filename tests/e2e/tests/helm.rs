//! The Helm chart (`deploy/helm/callchain`), checked the way a cluster would
//! take it, with no cluster: `helm lint --strict`, `helm template` of the
//! default values and of each example under `deploy/examples`, every
//! rendered manifest validated against the Kubernetes schemas in strict mode,
//! and what no schema checks (resources, probes, security, the grace period,
//! secrets, the variables each service reads). Helm and the schemas come
//! from the package registries, installed once per machine by `make tools`.
//! `make k8s-verify` goes further, against a real API server.

use callchain_e2e::helm::{
    CHART, base64_decode, check_collector_config, check_containers, check_env, check_grace, check_secrets_stay_secret,
    check_user_service_headless, documents, render, run_helm, validate_strict,
};
use callchain_runtime::env::{Setting, names};

/// The Kubernetes version the chart is validated against.
const KUBERNETES_VERSION: &str = "1.37.0";

/// The values the chart is checked with: its defaults, and each example.
const VALUE_SETS: &[&[&str]] = &[
    &[],
    &["deploy/examples/values-operators.yaml"],
    &[
        "deploy/examples/values-operators.yaml",
        "deploy/examples/values-small.yaml",
    ],
];

const SERVICES: &[&str] = &["api", "user", "consumer"];

fn with_telemetry(settings: &[Setting]) -> Vec<&'static str> {
    names(settings)
        .into_iter()
        .chain(names(callchain_telemetry::SETTINGS))
        .collect()
}

fn reads() -> Vec<(&'static str, Vec<&'static str>, Vec<&'static str>)> {
    vec![
        (
            "api",
            with_telemetry(callchain_api::config::SETTINGS),
            callchain_api::config::REQUIRED_ENV_VARS.to_vec(),
        ),
        (
            "user",
            with_telemetry(callchain_user::config::SETTINGS),
            callchain_user::config::REQUIRED_ENV_VARS.to_vec(),
        ),
        (
            "consumer",
            with_telemetry(callchain_consumer::config::SETTINGS),
            callchain_consumer::config::REQUIRED_ENV_VARS.to_vec(),
        ),
    ]
}

fn rendered(values: &[&str]) -> String {
    render(values).unwrap_or_else(|err| panic!("{err}"))
}

#[test]
fn helm_lint_strict_passes_for_the_defaults_and_every_example() {
    for values in VALUE_SETS {
        let mut args = vec!["lint", "--strict", CHART];
        for file in *values {
            args.extend(["--values", file]);
        }
        run_helm(&args).unwrap_or_else(|err| panic!("{err}"));
    }
}

#[test]
fn every_rendered_manifest_is_valid_kubernetes_in_strict_mode() {
    for values in VALUE_SETS {
        let manifests = rendered(values);
        if let Err(problem) = validate_strict(&manifests, KUBERNETES_VERSION) {
            panic!(
                "with values {values:?}, the rendered chart is not valid Kubernetes {KUBERNETES_VERSION}:\n{problem}"
            );
        }
    }
}

#[test]
fn a_mistyped_field_fails_the_strict_validation() {
    let manifests = rendered(&[]);
    assert!(
        manifests.contains("readinessProbe:"),
        "the chart renders readiness probes"
    );
    let mistyped = manifests.replacen("readinessProbe:", "readinesProbe:", 1);
    let problem = validate_strict(&mistyped, KUBERNETES_VERSION).expect_err("a mistyped field must fail");
    assert!(
        problem.contains("readinesProbe"),
        "the complaint names the field: {problem}"
    );
}

#[test]
fn every_container_has_resources_probes_and_a_locked_down_security_context() {
    for values in VALUE_SETS {
        let docs = documents(&rendered(values)).unwrap();
        let problems = check_containers(&docs, SERVICES);
        assert!(problems.is_empty(), "with values {values:?}:\n{}", problems.join("\n"));
    }
}

#[test]
fn each_pod_may_take_longer_to_stop_than_its_service_drains() {
    for values in VALUE_SETS {
        let docs = documents(&rendered(values)).unwrap();
        let problems = check_grace(&docs, SERVICES);
        assert!(problems.is_empty(), "with values {values:?}:\n{}", problems.join("\n"));
    }
}

#[test]
fn each_service_is_given_exactly_the_variables_it_reads_and_secrets_from_a_secret() {
    for values in VALUE_SETS {
        let docs = documents(&rendered(values)).unwrap();
        let problems = check_env(&docs, &reads());
        assert!(problems.is_empty(), "with values {values:?}:\n{}", problems.join("\n"));
    }
}

#[test]
fn no_secret_value_appears_outside_a_secret() {
    for values in VALUE_SETS {
        let docs = documents(&rendered(values)).unwrap();
        let problems = check_secrets_stay_secret(&docs);
        assert!(problems.is_empty(), "with values {values:?}:\n{}", problems.join("\n"));
    }
}

#[test]
fn the_collector_runs_the_repository_config_and_the_user_service_is_headless() {
    let docs = documents(&rendered(&[])).unwrap();
    let mut problems = check_collector_config(&docs);
    problems.extend(check_user_service_headless(&docs));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_bundled_jaeger_is_off_by_default_and_on_in_the_operators_example() {
    let kinds_named = |values: &[&str]| {
        documents(&rendered(values))
            .unwrap()
            .iter()
            .filter(|doc| {
                doc.get("metadata").and_then(|m| m.get("name")).and_then(|n| n.as_str()) == Some("callchain-jaeger")
            })
            .count()
    };
    assert_eq!(kinds_named(&[]), 0);
    assert_eq!(
        kinds_named(&["deploy/examples/values-operators.yaml"]),
        2,
        "a Deployment and a Service"
    );
}

#[test]
fn the_checks_catch_what_they_look_for() {
    // Each check, fed a manifest broken in its one way, says so: they are
    // not checks that cannot fail.
    let good = rendered(&[]);
    let broken = |from: &str, to: &str| {
        assert!(good.contains(from), "the chart renders `{from}`");
        documents(&good.replacen(from, to, 1)).unwrap()
    };
    assert!(
        !check_containers(
            &broken("readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false"),
            SERVICES
        )
        .is_empty()
    );
    assert!(!check_containers(&broken("livenessProbe:", "x-livenessProbe:"), SERVICES).is_empty());
    assert!(
        !check_grace(
            &broken("terminationGracePeriodSeconds: 20", "terminationGracePeriodSeconds: 12"),
            SERVICES
        )
        .is_empty()
    );
    assert!(!check_env(&broken("name: KAFKA_GROUP_ID", "name: KAFKA_GROUP"), &reads()).is_empty());
    assert!(!check_user_service_headless(&broken("clusterIP: None", "clusterIP: 10.0.0.1")).is_empty());
    let leaked = good.replacen(
        "- name: ADMIN_EMAIL",
        &format!(
            "- name: ADMIN_PASSWORD_COPY\n              value: {}\n            - name: ADMIN_EMAIL",
            secret_of(&good)
        ),
        1,
    );
    assert!(!check_secrets_stay_secret(&documents(&leaked).unwrap()).is_empty());
}

/// The generated admin password, decoded.
fn secret_of(rendered: &str) -> String {
    let line = rendered
        .lines()
        .find(|line| line.trim_start().starts_with("ADMIN_PASSWORD: "))
        .expect("the generated Secret holds ADMIN_PASSWORD");
    let encoded = line.trim_start().trim_start_matches("ADMIN_PASSWORD: ").trim();
    base64_decode(encoded).expect("base64 of text")
}
