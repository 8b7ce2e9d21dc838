//! Checks of the Helm chart (`deploy/helm/callchain`) that no schema can
//! make: they read the manifests `helm template` rendered and answer with the
//! problems they find, each a sentence a person can act on. An empty list
//! means the check passed. `tests/helm.rs` renders the chart with the real
//! Helm, validates it against the Kubernetes schemas, and runs these.

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use serde::Deserialize as _;
use serde_yaml_ng::Value;

use crate::{
    compose::{read_workspace_file, workspace_root},
    tools::tool,
};

/// The chart, relative to the workspace root.
pub const CHART: &str = "deploy/helm/callchain";

/// The variables the chart gives a container only so that Kubernetes can
/// expand them into another (`$(K8S_POD_NAME)` in `OTEL_RESOURCE_ATTRIBUTES`
/// and the consumer's static member id); no service reads them.
pub const DOWNWARD_API_VARS: &[&str] = &["K8S_POD_NAME", "K8S_NAMESPACE", "K8S_NODE_NAME"];

/// Settings that hold a secret: given only from a Secret, never as a value.
pub const SECRET_VARS: &[&str] = &["JWT_SECRET", "ADMIN_PASSWORD", "DATABASE_URL"];

/// Helm at the version of `.env`'s `HELM_VERSION`.
pub fn helm() -> Result<PathBuf, String> {
    tool("HELM_VERSION", |v| format!("helm-{v}/helm"), "scripts/install-helm.sh")
}

/// `kubernetes-validate` at `.env`'s `KUBERNETES_VALIDATE_VERSION`.
pub fn kubernetes_validate() -> Result<PathBuf, String> {
    tool(
        "KUBERNETES_VALIDATE_VERSION",
        |v| format!("kubernetes-validate-{v}/bin/kubernetes-validate"),
        "scripts/install-kubernetes-validate.sh",
    )
}

/// Runs `helm ARGS` in the workspace root; its stdout, or its stderr as the error.
pub fn run_helm(args: &[&str]) -> Result<String, String> {
    let helm = helm()?;
    let out = Command::new(&helm)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .map_err(|err| format!("cannot run {}: {err}", helm.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "helm {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `helm template` of the chart with these values files (relative to the
/// workspace root), as release `callchain` in namespace `callchain`.
pub fn render(values: &[&str]) -> Result<String, String> {
    let mut args = vec!["template", "callchain", CHART, "--namespace", "callchain"];
    for file in values {
        args.extend(["--values", file]);
    }
    run_helm(&args)
}

/// The documents of a rendered chart, empty ones left out.
pub fn documents(rendered: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(rendered) {
        let value = Value::deserialize(doc).map_err(|err| format!("the rendered chart is not YAML: {err}"))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |value, key| value.get(*key))
}

fn name_of(doc: &Value) -> String {
    format!(
        "{} {}",
        str_at(doc, &["kind"]).unwrap_or("?"),
        str_at(doc, &["metadata", "name"]).unwrap_or("?")
    )
}

/// The containers of every workload (Deployment, StatefulSet, DaemonSet,
/// Job): `(workload, pod spec, container)`.
fn containers(docs: &[Value]) -> Vec<(String, &Value, &Value)> {
    let mut found = Vec::new();
    for doc in docs {
        let Some(pod) = at(doc, &["spec", "template", "spec"]) else {
            continue;
        };
        for container in pod.get("containers").and_then(Value::as_sequence).into_iter().flatten() {
            found.push((name_of(doc), pod, container));
        }
    }
    found
}

/// Every container has requests and limits for CPU and memory, a liveness
/// and a readiness probe, and the locked-down security context; the
/// services' containers (those whose command is one of `services`) a
/// startup probe too.
pub fn check_containers(docs: &[Value], services: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    for (workload, pod, container) in containers(docs) {
        let name = str_at(container, &["name"]).unwrap_or("?");
        let at_fault = |what: &str| format!("{workload}: container `{name}` {what}");
        for kind in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                if at(container, &["resources", kind, resource]).is_none() {
                    problems.push(at_fault(&format!("has no {resource} {kind}")));
                }
            }
        }
        let mut probes = vec!["livenessProbe", "readinessProbe"];
        if services.contains(&name) {
            probes.push("startupProbe");
        }
        for probe in probes {
            if container.get(probe).is_none() {
                problems.push(at_fault(&format!("has no {probe}")));
            }
        }
        let security = |path: &[&str]| at(container, &[&["securityContext"], path].concat()).cloned();
        let expected: [(&[&str], Value); 5] = [
            (&["runAsNonRoot"], Value::Bool(true)),
            (&["readOnlyRootFilesystem"], Value::Bool(true)),
            (&["allowPrivilegeEscalation"], Value::Bool(false)),
            (&["seccompProfile", "type"], Value::String("RuntimeDefault".into())),
            (
                &["capabilities", "drop"],
                Value::Sequence(vec![Value::String("ALL".into())]),
            ),
        ];
        for (path, want) in expected {
            if security(path).as_ref() != Some(&want) {
                problems.push(at_fault(&format!(
                    "does not set securityContext.{} to {}",
                    path.join("."),
                    serde_yaml_ng::to_string(&want).unwrap_or_default().trim()
                )));
            }
        }
        if at(pod, &["securityContext", "runAsNonRoot"]) != Some(&Value::Bool(true)) {
            problems.push(format!("{workload}: the pod does not set securityContext.runAsNonRoot"));
        }
    }
    problems
}

/// Each service's pods get longer to stop than the service's own shutdown
/// bound plus the `preStop` pause, so the kubelet's SIGKILL never cuts a
/// drain short.
pub fn check_grace(docs: &[Value], services: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    for (workload, pod, container) in containers(docs) {
        let name = str_at(container, &["name"]).unwrap_or("?");
        if !services.contains(&name) {
            continue;
        }
        let bound = env_value(container, "SHUTDOWN_TIMEOUT_SECONDS").and_then(|v| v.parse::<u64>().ok());
        let pause = at(container, &["lifecycle", "preStop", "sleep", "seconds"]).and_then(Value::as_u64);
        let grace = at(pod, &["terminationGracePeriodSeconds"]).and_then(Value::as_u64);
        match (bound, pause, grace) {
            (Some(bound), Some(pause), Some(grace)) if grace > bound + pause => {}
            (Some(bound), Some(pause), Some(grace)) => problems.push(format!(
                "{workload}: terminationGracePeriodSeconds {grace} is not above SHUTDOWN_TIMEOUT_SECONDS {bound} plus the preStop pause {pause}"
            )),
            _ => problems.push(format!(
                "{workload}: needs SHUTDOWN_TIMEOUT_SECONDS, a preStop sleep and terminationGracePeriodSeconds"
            )),
        }
    }
    problems
}

fn env(container: &Value) -> impl Iterator<Item = &Value> {
    container.get("env").and_then(Value::as_sequence).into_iter().flatten()
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    env(container)
        .find(|var| str_at(var, &["name"]) == Some(name))
        .and_then(|var| str_at(var, &["value"]))
}

/// Each service's container is given only variables it reads (`reads`, by
/// container name) or [`DOWNWARD_API_VARS`], every one it requires, and each
/// of [`SECRET_VARS`] from a Secret.
pub fn check_env(docs: &[Value], reads: &[(&str, Vec<&str>, Vec<&str>)]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for (workload, _, container) in containers(docs) {
        let name = str_at(container, &["name"]).unwrap_or("?");
        let Some((_, reads, requires)) = reads.iter().find(|(service, _, _)| *service == name) else {
            continue;
        };
        seen.insert(name.to_owned());
        let given: Vec<&str> = env(container).filter_map(|var| str_at(var, &["name"])).collect();
        for var in &given {
            if !reads.contains(var) && !DOWNWARD_API_VARS.contains(var) {
                problems.push(format!("{workload}: `{name}` is given `{var}`, which it does not read"));
            }
        }
        for var in requires {
            if !given.contains(var) {
                problems.push(format!(
                    "{workload}: `{name}` needs `{var}`, which the chart does not give it"
                ));
            }
        }
        for var in env(container) {
            let var_name = str_at(var, &["name"]).unwrap_or("?");
            if SECRET_VARS.contains(&var_name) && at(var, &["valueFrom", "secretKeyRef"]).is_none() {
                problems.push(format!("{workload}: `{var_name}` is not taken from a Secret"));
            }
        }
    }
    for (service, _, _) in reads {
        if !seen.contains(*service) {
            problems.push(format!("the chart runs no container named `{service}`"));
        }
    }
    problems
}

/// No value of a Secret the chart makes appears in any other object.
pub fn check_secrets_stay_secret(docs: &[Value]) -> Vec<String> {
    let mut secrets = Vec::new();
    for doc in docs.iter().filter(|doc| str_at(doc, &["kind"]) == Some("Secret")) {
        for key in ["data", "stringData"] {
            for (_, value) in doc.get(key).and_then(Value::as_mapping).into_iter().flatten() {
                if let Some(value) = value.as_str() {
                    secrets.push(value.to_owned());
                    if key == "data"
                        && let Some(plain) = base64_decode(value)
                    {
                        secrets.push(plain);
                    }
                }
            }
        }
    }
    let mut problems = Vec::new();
    for doc in docs.iter().filter(|doc| str_at(doc, &["kind"]) != Some("Secret")) {
        let text = serde_yaml_ng::to_string(doc).unwrap_or_default();
        if secrets
            .iter()
            .any(|secret| secret.len() >= 8 && text.contains(secret.as_str()))
        {
            problems.push(format!("{} holds the value of a Secret", name_of(doc)));
        }
    }
    problems
}

/// Standard base64 (as Kubernetes writes `data`), into text; `None` if it is
/// not base64 of UTF-8.
pub fn base64_decode(text: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for byte in text.trim_end_matches('=').bytes() {
        let value = ALPHABET.iter().position(|&c| c == byte)? as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The collector's ConfigMap holds the repository's
/// `observability/otel-collector.yaml`, byte for byte.
pub fn check_collector_config(docs: &[Value]) -> Vec<String> {
    let Ok(expected) = read_workspace_file("observability/otel-collector.yaml") else {
        return vec!["cannot read observability/otel-collector.yaml".to_owned()];
    };
    let config = docs
        .iter()
        .filter(|doc| str_at(doc, &["kind"]) == Some("ConfigMap"))
        .find_map(|doc| str_at(doc, &["data", "config.yaml"]));
    match config {
        Some(config) if config.trim_end() == expected.trim_end() => Vec::new(),
        Some(_) => vec!["the collector's ConfigMap differs from observability/otel-collector.yaml".to_owned()],
        None => vec!["the chart has no ConfigMap with the collector's config.yaml".to_owned()],
    }
}

/// The user service's Service is headless, so its name resolves to every
/// pod and the API balances over them.
pub fn check_user_service_headless(docs: &[Value]) -> Vec<String> {
    let user = docs.iter().find(|doc| {
        str_at(doc, &["kind"]) == Some("Service")
            && str_at(doc, &["spec", "selector", "app.kubernetes.io/component"]) == Some("user")
    });
    match user {
        Some(service) if str_at(service, &["spec", "clusterIP"]) == Some("None") => Vec::new(),
        Some(service) => vec![format!("{} is not headless (clusterIP: None)", name_of(service))],
        None => vec!["the chart has no Service for the user service".to_owned()],
    }
}

/// Validates rendered manifests against the Kubernetes schemas in strict
/// mode (an unknown or mistyped field fails); the tool's complaint as the error.
pub fn validate_strict(rendered: &str, kubernetes_version: &str) -> Result<(), String> {
    let validate = kubernetes_validate()?;
    let dir = tempfile::tempdir().map_err(|err| err.to_string())?;
    let file = dir.path().join("chart.yaml");
    std::fs::write(&file, rendered).map_err(|err| err.to_string())?;
    let out = Command::new(&validate)
        .args(["--strict", "--quiet", "--kubernetes-version", kubernetes_version])
        .arg(&file)
        .output()
        .map_err(|err| format!("cannot run {}: {err}", validate.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::base64_decode;

    #[test]
    fn base64_decodes_what_kubernetes_writes() {
        assert_eq!(base64_decode("c2VjcmV0LXZhbHVl").as_deref(), Some("secret-value"));
        assert_eq!(base64_decode("YQ==").as_deref(), Some("a"));
        assert_eq!(base64_decode("not base64!"), None);
    }
}
