//! The API's contract under fuzzing: Schemathesis, the version `.env` names
//! (installed by `make test` from PyPI, see scripts/install-schemathesis.sh),
//! reads the API's own `/openapi.json` and runs every phase (examples,
//! coverage, fuzzing, stateful sequences along the document's links) with
//! every check, as a guest, a user and an administrator, against the real
//! stack. Any failure fails the test; the seed and Schemathesis's summary
//! are printed either way, so a failure can be replayed with the same seed.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use callchain_e2e::{stack::Stack, tools};
use serde_json::{Value, json};

/// Fixed, so a run can be repeated; `SCHEMATHESIS_SEED` picks another.
const SEED: u64 = 20_261_112;
/// Cases per operation and phase; with six operations, every phase and the
/// stateful sequences, this is comfortably over `MIN_CASES`.
const MAX_EXAMPLES: u32 = 500;
/// What the contract promises to have tried, at the least.
const MIN_CASES: u64 = 2_000;
const PASSWORD: &str = "correct horse battery";

/// What a schema-valid request may be answered, beside success: the
/// defaults of the `positive_data_acceptance` check (401, 403, 404, 409,
/// 429, 5xx, which `not_a_server_error` refuses anyway) and 422. A 422 is
/// the answer the document gives, and the IETF Idempotency-Key draft asks
/// for, to a well-formed write whose `Idempotency-Key` was used before for
/// another request: a fuzzer draws short keys, so it reuses them. Like a
/// 409, it is refused for what was stored, not for how it is written.
///
/// And what a schema-breaking request may be refused with: the defaults of
/// the `negative_data_rejection` check and 413. A fuzzer's invalid JSON-RPC
/// batch of a hundred large elements is over the body limit before anything
/// reads it, and 413 refuses it as surely as a 400 would.
const ACCEPTED: &str = r#"[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
"#;

/// The Schemathesis executable of the version `.env` pins.
fn schemathesis() -> PathBuf {
    tools::tool(
        "SCHEMATHESIS_VERSION",
        |version| format!("schemathesis-{version}/bin/schemathesis"),
        "scripts/install-schemathesis.sh",
    )
    .unwrap_or_else(|missing| panic!("{missing}"))
}

/// Writes `contents` to `dir/name` and returns its path.
fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap_or_else(|error| panic!("writing {}: {error}", path.display()));
    path
}

/// Prints to the process's stderr directly, past the test harness's
/// capture, so the summary is in `make test`'s output even when it passes.
fn report(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(text.as_bytes());
    let _ = stderr.flush();
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_failure_in_2000_cases_of_every_phase_and_check() {
    let bin = schemathesis();
    let seed: u64 = std::env::var("SCHEMATHESIS_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(SEED);
    let stack = match Stack::start().await {
        Ok(stack) => stack,
        Err(error) => panic!("cannot start the test stack: {error:#}"),
    };

    // Two users, who must not see each other's records, and the administrator.
    let mut identities = Vec::new();
    for name in ["user", "other-user"] {
        let email = format!("{name}-{}@example.com", uuid::Uuid::new_v4().simple());
        stack.register(&email, PASSWORD).await;
        identities.push((name, stack.login(&email, PASSWORD).await));
    }
    identities.push(("admin", stack.admin_token().await));

    let dir = std::env::temp_dir().join(format!("callchain-contract-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    // Web Fuzzing Commons auth: Schemathesis tries the identities in this
    // order per operation (the first, none, then the others) and keeps the
    // first the operation admits.
    let auth = json!({
        "auth": identities
            .iter()
            .map(|(name, token)| json!({
                "name": name,
                "fixedHeaders": [{ "name": "Authorization", "value": format!("Bearer {token}") }],
            }))
            .collect::<Vec<Value>>(),
    });
    let auth = write(&dir, "auth.json", &auth.to_string());
    let config = write(
        &dir,
        "schemathesis.toml",
        &format!(
            "[auth.wfc]\npath = {path:?}\npeers = [\"user\", \"other-user\"]\n\n{ACCEPTED}",
            path = auth.display().to_string()
        ),
    );
    let report_path = dir.join("report.json");

    let url = stack.url("/openapi.json");
    let args = [
        "--config-file".to_owned(),
        config.display().to_string(),
        "run".to_owned(),
        url,
        "--phases=examples,coverage,fuzzing,stateful".to_owned(),
        "--checks=all".to_owned(),
        format!("--max-examples={MAX_EXAMPLES}"),
        format!("--seed={seed}"),
        // One worker: Python 3.11's parser is not safe to call from two
        // threads at once, and Hypothesis calls it while describing a
        // strategy ("AST constructor recursion depth mismatch").
        "--workers=1".to_owned(),
        "--generation-database=none".to_owned(),
        "--no-color".to_owned(),
        "--report=json".to_owned(),
        format!("--report-json-path={}", report_path.display()),
    ];
    report(&format!(
        "\n== schemathesis, seed {seed}: {} {}\n",
        bin.display(),
        args.join(" ")
    ));
    let started = Instant::now();
    let workdir = dir.clone();
    let output = tokio::task::spawn_blocking(move || Command::new(bin).args(args).current_dir(workdir).output())
        .await
        .unwrap()
        .expect("Schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    report(&format!(
        "{stdout}{stderr}== schemathesis, seed {seed}: exit {:?} after {:.0?}\n",
        output.status.code(),
        started.elapsed()
    ));
    let run: Value = std::fs::read_to_string(&report_path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null);
    report(&format!(
        "== schemathesis, seed {seed}: test cases {}, failures {}, errors {}\n",
        run["test_cases"], run["failures"], run["errors"]
    ));

    assert!(
        output.status.success(),
        "Schemathesis found failures (seed {seed}); its output is above"
    );
    let cases = run["test_cases"]["generated"].as_u64().unwrap_or(0);
    assert!(
        cases >= MIN_CASES,
        "only {cases} test cases ran (seed {seed}); at least {MIN_CASES} are promised"
    );
    // Kept when the run fails, for its report; it holds nothing else of use.
    let _ = std::fs::remove_dir_all(&dir);
}
