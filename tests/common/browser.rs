//! Headless Chromium for the report tests: load a page from `file://`, dump its DOM after the
//! scripts ran, collect the console, take a screenshot. Debian's `chromium` package provides it
//! (`apt-get install chromium`); without it the tests that need it skip with a message.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Chromium binary on PATH, if any.
pub fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

/// A page as Chromium rendered it: the DOM after its scripts ran, and Chromium's log (console
/// messages appear there as `CONSOLE` lines).
pub struct Rendered {
    pub dom: String,
    pub log: String,
}

impl Rendered {
    /// The console messages and uncaught errors of the page's log.
    pub fn console_lines(&self) -> Vec<&str> {
        self.log
            .lines()
            .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
            .collect()
    }
}

fn headless(chromium: &Path, profile: &Path) -> Command {
    let mut cmd = Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--virtual-time-budget=10000",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

fn url(page: &Path, hash: &str) -> String {
    format!("file://{}{hash}", page.display())
}

/// Loads `page` with the address fragment `hash` (e.g. `#prompt=q1`); `profile` is a scratch
/// folder for Chromium's own files.
pub fn render(chromium: &Path, page: &Path, hash: &str, profile: &Path) -> Rendered {
    let out = headless(chromium, profile)
        .arg("--dump-dom")
        .arg(url(page, hash))
        .output()
        .expect("run chromium");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "chromium failed:\n{log}");
    Rendered {
        dom: String::from_utf8_lossy(&out.stdout).into_owned(),
        log,
    }
}

/// A PNG of `page` at `width` x `height` pixels.
pub fn screenshot(
    chromium: &Path,
    page: &Path,
    hash: &str,
    png: &Path,
    (width, height): (u32, u32),
    profile: &Path,
) {
    let out = headless(chromium, profile)
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("--window-size={width},{height}"))
        .arg("--hide-scrollbars")
        .arg(url(page, hash))
        .output()
        .expect("run chromium");
    assert!(
        out.status.success() && png.is_file(),
        "chromium --screenshot failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
