//! The README and the build stay true: every `make` command the README gives
//! is a target of the Makefile, and the Dockerfile, `make build` and
//! `make dev` build the binaries with the one same script.

use std::collections::BTreeSet;

use callchain_e2e::compose::read_workspace_file;

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
    for expected in ["up", "dev", "test", "down", "logs", "e2e-up", "bench"] {
        assert!(
            commands.contains(expected),
            "the README should mention `make {expected}`"
        );
    }
    let targets = make_targets();
    let missing: Vec<_> = commands.difference(&targets).collect();
    assert!(
        missing.is_empty(),
        "the README gives `make {missing:?}`, which the Makefile lacks; it has {targets:?}"
    );
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
