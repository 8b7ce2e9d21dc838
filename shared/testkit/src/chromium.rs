//! Headless Chromium (Debian's `chromium`), for the tests that open a page
//! and read what it drew: its DOM, or a screenshot.

use std::process::{Command, Output};

const CHROMIUM: &str = "chromium";

/// Runs headless Chromium on `url` with `args`, in a fresh profile; `test`
/// names the test in the message when Chromium is not installed.
///
/// # Panics
/// When Chromium is not installed (saying how to get it), or cannot run.
pub fn headless(url: &str, args: &[&str], test: &str) -> Output {
    let profile = tempfile::tempdir().expect("a profile folder");
    let output = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output();
    match output {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{CHROMIUM}` is not installed: {test} opens the page in Debian's package `chromium` \
             (as root: apt-get install -y chromium; `make tools` installs it)"
        ),
        Err(error) => panic!("cannot run {CHROMIUM}: {error}"),
    }
}
