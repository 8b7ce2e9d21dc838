//! The README, the reference in `docs/`, ARCHITECTURE.md and the build stay
//! true: every `make` command they give is a target of the Makefile, every
//! file and test ARCHITECTURE.md names exists, no code cites a document the
//! repository lacks, and the Dockerfile, `make build` and `make dev` build
//! the binaries with the one same script.

use std::{collections::BTreeSet, path::Path};

use callchain_e2e::compose::{read_workspace_file, workspace_root};
use callchain_runtime::env::Setting;

/// The reference, one subject a file.
const REFERENCE: &[&str] = &[
    "docs/api.md",
    "docs/guarantees.md",
    "docs/tracechain.md",
    "docs/configuration.md",
    "docs/metrics.md",
    "docs/performance.md",
    "docs/chaos.md",
    "docs/kubernetes.md",
    "docs/scaling.md",
];

/// The README is a front door; the reference lives in `docs/`.
const README_MAX_BYTES: usize = 12 * 1024;

/// Targets defined by the Makefile and the files it includes.
fn make_targets() -> BTreeSet<String> {
    let mut makefiles = vec![read_workspace_file("Makefile").unwrap()];
    for line in makefiles[0].clone().lines() {
        if let Some(included) = line.strip_prefix("include ") {
            makefiles.push(read_workspace_file(included.trim()).unwrap());
        }
    }
    makefiles
        .iter()
        .flat_map(|text| text.lines())
        .filter(|line| !line.starts_with(['\t', '#', ' ', '.']) && !line.contains(":="))
        .filter_map(|line| line.split_once(':').map(|(target, _)| target.trim().to_owned()))
        .filter(|target| !target.is_empty() && !target.contains(['$', ' ', '?', '=']))
        .collect()
}

/// Every `make <target>` the text mentions.
fn make_commands(text: &str) -> BTreeSet<String> {
    text.split("make ")
        .skip(1)
        .filter_map(|rest| {
            let target: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            (!target.is_empty()).then_some(target)
        })
        .collect()
}

#[test]
fn every_make_command_in_the_readme_is_a_makefile_target() {
    let readme = read_workspace_file("README.md").unwrap();
    let commands = make_commands(&readme);
    for expected in ["up", "dev", "test", "down", "logs", "e2e-up", "bench", "trace"] {
        assert!(
            commands.contains(expected),
            "the README should mention `make {expected}`"
        );
    }
    assert_all_targets("README.md", &commands);
}

#[test]
fn every_make_command_in_the_reference_and_the_architecture_is_a_makefile_target() {
    for file in REFERENCE.iter().chain(&["ARCHITECTURE.md"]) {
        let text = read_workspace_file(file).unwrap();
        assert_all_targets(file, &make_commands(&text));
    }
}

fn assert_all_targets(file: &str, commands: &BTreeSet<String>) {
    let targets = make_targets();
    let missing: Vec<_> = commands.difference(&targets).collect();
    assert!(
        missing.is_empty(),
        "{file} gives `make {missing:?}`, which the Makefile lacks; it has {targets:?}"
    );
}

#[test]
fn the_readme_is_a_front_door_and_links_every_file_of_the_reference() {
    let readme = read_workspace_file("README.md").unwrap();
    assert!(
        readme.len() <= README_MAX_BYTES,
        "the README is {} bytes; past {README_MAX_BYTES} its reference belongs in docs/",
        readme.len()
    );
    for file in REFERENCE.iter().chain(&["ARCHITECTURE.md"]) {
        assert!(readme.contains(&format!("]({file})")), "the README should link {file}");
    }
}

/// Every file of `docs/` is one the README links, beside `docs/images/`,
/// whose every picture the README or a page of the reference shows.
#[test]
fn docs_holds_the_reference_and_nothing_else() {
    let mut found: Vec<String> = std::fs::read_dir(workspace_root().join("docs"))
        .expect("docs/ holds the reference")
        .map(|entry| format!("docs/{}", entry.unwrap().file_name().to_string_lossy()))
        .filter(|path| path != "docs/images")
        .collect();
    found.sort();
    let mut expected: Vec<String> = REFERENCE.iter().map(|file| file.to_string()).collect();
    expected.sort();
    assert_eq!(found, expected);
    let readme = read_workspace_file("README.md").unwrap();
    let pages: String = REFERENCE
        .iter()
        .map(|file| read_workspace_file(file).unwrap())
        .collect();
    for picture in std::fs::read_dir(workspace_root().join("docs/images"))
        .into_iter()
        .flatten()
    {
        let name = picture.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            readme.contains(&format!("](docs/images/{name})")) || pages.contains(&format!("(images/{name})")),
            "docs/images/{name} is shown by neither the README nor a page of the reference"
        );
    }
}

/// Text files of the repository a reader may meet, relative to its root:
/// not what builds, runs or installs leave behind.
fn repository_files() -> Vec<String> {
    fn walk(root: &Path, dir: &Path, files: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with('.') && name != ".env" || name == "target" {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, files);
            } else if std::fs::read_to_string(&path).is_ok() {
                files.push(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let root = workspace_root().canonicalize().unwrap();
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    files
}

/// The direction document the project began from lives outside the
/// repository; the repository's own record is ARCHITECTURE.md.
#[test]
fn nothing_in_the_repository_cites_a_document_outside_it() {
    let outside = ["DESIGN", ".md"].concat();
    let citing: Vec<String> = repository_files()
        .into_iter()
        .filter(|file| read_workspace_file(file).unwrap().contains(&outside))
        .collect();
    assert!(
        citing.is_empty(),
        "these files cite {outside}, which is not in the repository (cite ARCHITECTURE.md): {citing:?}"
    );
}

/// The `code spans` of a Markdown text.
fn code_spans(text: &str) -> Vec<&str> {
    text.split("```")
        .step_by(2)
        .flat_map(|prose| prose.split('`').skip(1).step_by(2))
        .collect()
}

/// A code span that names a file or folder of the repository: a path under
/// one of its top-level folders, or a Markdown file.
fn is_path(span: &str) -> bool {
    const FOLDERS: &[&str] = &[
        "services/",
        "shared/",
        "tests/",
        "tools/",
        "scripts/",
        "observability/",
        "mk/",
        "proto/",
        "docs/",
    ];
    (FOLDERS.iter().any(|folder| span.starts_with(folder))
        || std::path::Path::new(span).extension().is_some_and(|ext| ext == "md"))
        && !span.contains([' ', '<', '{', '*', '=', ':', '$'])
}

/// A code span that names a test: a sentence in snake case.
fn is_test_name(span: &str) -> bool {
    span.matches('_').count() >= 3
        && span
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[test]
fn every_file_and_test_the_architecture_and_the_reference_name_exists() {
    let files = repository_files();
    let sources: String = files
        .iter()
        .filter(|file| std::path::Path::new(file).extension().is_some_and(|ext| ext == "rs"))
        .map(|file| read_workspace_file(file).unwrap())
        .collect();
    let mut missing = Vec::new();
    for doc in REFERENCE.iter().chain(&["ARCHITECTURE.md", "README.md"]) {
        let text = read_workspace_file(doc).unwrap();
        for span in code_spans(&text) {
            if is_path(span) && !workspace_root().join(span.trim_end_matches('/')).exists() {
                missing.push(format!("{doc} names the file `{span}`, which does not exist"));
            }
            if is_test_name(span) && !sources.contains(&format!("fn {span}(")) {
                missing.push(format!("{doc} names the test `{span}`, which no source file defines"));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn a_misnamed_file_or_test_would_be_caught() {
    let spans = code_spans(
        "see `services/api/src/nowhere.rs` and `a_test_that_is_not_there`, not `make up` nor `user.v1.UserService/GetUser`",
    );
    assert_eq!(
        spans,
        [
            "services/api/src/nowhere.rs",
            "a_test_that_is_not_there",
            "make up",
            "user.v1.UserService/GetUser"
        ]
    );
    assert!(is_path(spans[0]) && !workspace_root().join(spans[0]).exists());
    assert!(is_test_name(spans[1]) && !is_path(spans[1]));
    assert!(!is_path(spans[2]) && !is_test_name(spans[2]));
    assert!(!is_path(spans[3]) && !is_test_name(spans[3]));
}

/// Figures mean something only with when and where they were measured.
#[test]
fn benchmark_and_chaos_tables_say_when_and_on_what_machine() {
    for file in ["docs/performance.md", "docs/chaos.md"] {
        let text = read_workspace_file(file).unwrap();
        let dated = text.split(|c: char| !(c.is_ascii_digit() || c == '-')).any(|word| {
            let parts: Vec<_> = word.split('-').collect();
            parts.len() == 3 && parts[0].len() == 4 && parts[1].len() == 2 && parts[2].len() == 2
        });
        assert!(dated, "{file} should date its figures (YYYY-MM-DD)");
        assert!(
            text.contains("machine:") || text.contains("VM"),
            "{file} should say on what machine its figures were measured"
        );
    }
}

#[test]
fn a_readme_naming_a_missing_target_would_be_caught() {
    let commands = make_commands("run `make deploy` then make up");
    assert!(commands.contains("deploy") && commands.contains("up"));
    assert!(!make_targets().contains("deploy"));
}

#[test]
fn ci_runs_the_readmes_test_command() {
    let ci = read_workspace_file(".ci/run").unwrap();
    assert!(
        ci.lines().any(|line| line.trim() == "make test"),
        ".ci/run must call `make test`:\n{ci}"
    );
}

#[test]
fn the_dockerfile_make_build_and_make_dev_share_one_build_recipe() {
    let recipe = "scripts/build-services.sh";
    let dockerfile = read_workspace_file("Dockerfile").unwrap();
    assert!(dockerfile.contains(recipe), "the Dockerfile must build with {recipe}");
    let makefile = read_workspace_file("Makefile").unwrap();
    assert!(makefile.contains(recipe), "`make build` must run {recipe}");
    let dev = read_workspace_file("scripts/dev.sh").unwrap();
    assert!(dev.contains(recipe), "`make dev` must build with {recipe}");
    // And nothing else runs cargo build for the services.
    for (name, text) in [
        ("Dockerfile", &dockerfile),
        ("Makefile", &makefile),
        ("scripts/dev.sh", &dev),
    ] {
        assert!(
            !text.contains("cargo build"),
            "{name} builds the services itself instead of running {recipe}"
        );
    }
}

/// The sections of `docs/configuration.md` and the settings each lists.
fn configuration_sections() -> [(&'static str, &'static [Setting]); 4] {
    [
        ("Every service", callchain_telemetry::SETTINGS),
        ("api", callchain_api::config::SETTINGS),
        ("user", callchain_user::config::SETTINGS),
        ("consumer", callchain_consumer::config::SETTINGS),
    ]
}

/// One setting as a row of `docs/configuration.md`'s tables.
fn configuration_row(setting: &Setting) -> String {
    let default = setting.default.map_or("none".to_owned(), |value| format!("`{value}`"));
    format!("| `{}` | {default} | {} |", setting.name, setting.doc)
}

/// The table rows under the `## {heading}` of a Markdown text.
fn table_rows<'a>(text: &'a str, heading: &str) -> Vec<&'a str> {
    let mut in_section = false;
    let mut rows = Vec::new();
    for line in text.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            in_section = title.trim() == heading;
        } else if in_section && line.starts_with("| `") {
            rows.push(line.trim_end());
        }
    }
    rows
}

/// What a section of `docs/configuration.md` must hold, or what is wrong.
fn configuration_problems(text: &str) -> Vec<String> {
    configuration_sections()
        .into_iter()
        .filter_map(|(heading, settings)| {
            let expected: Vec<String> = settings.iter().map(configuration_row).collect();
            (table_rows(text, heading) != expected).then(|| {
                format!(
                    "docs/configuration.md's `## {heading}` table should be (from the code's list of settings):\n\n\
                     | variable | default | meaning |\n| --- | --- | --- |\n{}\n",
                    expected.join("\n")
                )
            })
        })
        .collect()
}

#[test]
fn the_configuration_doc_lists_every_setting_each_service_reads_with_its_default_and_meaning() {
    let problems = configuration_problems(&read_workspace_file("docs/configuration.md").unwrap());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_changed_default_or_a_setting_missing_from_the_configuration_doc_would_be_caught() {
    let doc = read_workspace_file("docs/configuration.md").unwrap();
    let timeout = configuration_row(&callchain_api::config::REQUEST_TIMEOUT_MS);
    assert!(doc.contains(&timeout), "{timeout}");
    let changed = doc.replace(&timeout, &timeout.replace("`10000`", "`5000`"));
    assert_eq!(configuration_problems(&changed).len(), 1);
    let missing = doc.replace(&format!("{timeout}\n"), "");
    assert_eq!(configuration_problems(&missing).len(), 1);
}
