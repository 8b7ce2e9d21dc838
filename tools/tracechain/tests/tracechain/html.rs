//! The waterfall page of a real registration, opened in headless Chromium
//! (Debian's `chromium`): it draws one row per span.

use std::path::Path;

use callchain_testkit::chromium::headless;

use crate::run::{folder_with, registration, stderr, tracechain};

/// Runs headless Chromium on `page` with `args`.
fn chromium(page: &Path, args: &[&str]) -> std::process::Output {
    headless(&format!("file://{}", page.display()), args, "the waterfall test")
}

#[test]
fn the_waterfall_page_shows_one_row_per_span_in_chromium() {
    let run = registration();
    let (folder, path) = folder_with(run);
    let page = folder.path().join("trace.html");
    let output = tracechain(&[&run.trace_id, path.to_str().unwrap(), "--html", page.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let html = std::fs::read_to_string(&page).expect("the page");
    assert!(
        !html.contains("src=") && !html.contains("href=") && !html.contains("http://"),
        "the page loads nothing"
    );

    // The DOM as Chromium built it: one row per span of the chain.
    let dom = chromium(&page, &["--dump-dom"]);
    assert!(dom.status.success(), "chromium --dump-dom failed: {}", stderr(&dom));
    let dom = String::from_utf8_lossy(&dom.stdout);
    let rows = dom.matches("class=\"span-row").count();
    assert_eq!(rows, 8, "one row per span:\n{dom}");
    for name in ["POST /v1/users", "INSERT users", "INSERT user_events"] {
        assert!(dom.contains(name), "{name} is drawn");
    }

    // And a picture of it.
    let screenshot = folder.path().join("trace.png");
    let shot = chromium(
        &page,
        &[
            &format!("--screenshot={}", screenshot.display()),
            "--window-size=1280,480",
        ],
    );
    assert!(shot.status.success(), "chromium --screenshot failed: {}", stderr(&shot));
    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        png.len() > 10_000,
        "the screenshot has something drawn: {} bytes",
        png.len()
    );
}
