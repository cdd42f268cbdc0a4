//! README.md runs as written: every ```sh block and every query (```sql in DuckDB, ```python) in
//! order, in one shell, on a fresh copy of the repository's tracked files. A block right after
//! `<!-- readme-test: skip (REASON) -->` (a build, the network, a GPU) is skipped with its reason
//! printed. `target/release` in the copy points at this build's binaries, and `BUILD=` keeps
//! make from building. Queries whose Python module (duckdb, polars) is missing are skipped with
//! a message; CI installs both (.ci/run).

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::{bin, repo, Scratch};

#[derive(Debug)]
struct Block {
    lang: String,
    code: String,
    /// 1-based line of the opening fence.
    line: usize,
    skip: Option<String>,
}

const SKIP_MARKER: &str = "<!-- readme-test: skip (";
const LANGS: [&str; 4] = ["sh", "sql", "python", "text"];

/// The fenced blocks of `text`, each with the skip reason of a marker on the line before it.
fn blocks(text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(lang) = lines[i].strip_prefix("```") else {
            i += 1;
            continue;
        };
        let end = (i + 1..lines.len())
            .find(|&j| lines[j] == "```")
            .unwrap_or_else(|| panic!("README.md:{}: unclosed code block", i + 1));
        let skip = i
            .checked_sub(1)
            .and_then(|p| lines[p].strip_prefix(SKIP_MARKER))
            .map(|r| r.trim_end_matches(" -->").trim_end_matches(')').to_string());
        out.push(Block {
            lang: lang.trim().to_string(),
            code: lines[i + 1..end].join("\n"),
            line: i + 1,
            skip,
        });
        i = end + 1;
    }
    out
}

/// Indented code blocks (a 4-space line after a blank one, outside fences): the test would not
/// see them, so the README has none.
fn indented_blocks(text: &str) -> Vec<usize> {
    let mut fenced = false;
    let mut previous_blank = false;
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && previous_blank && line.starts_with("    ") {
            found.push(n + 1);
        }
        previous_blank = line.trim().is_empty();
    }
    found
}

#[test]
fn every_code_block_is_fenced_with_a_known_language() {
    let text = std::fs::read_to_string(repo("README.md")).unwrap();
    assert_eq!(
        indented_blocks(&text),
        Vec::<usize>::new(),
        "README.md: indented code blocks at these lines; fence them (```sh, ```text)"
    );
    for b in blocks(&text) {
        assert!(
            LANGS.contains(&b.lang.as_str()),
            "README.md:{}: code block language `{}`, expected one of {LANGS:?}",
            b.line,
            b.lang
        );
    }
}

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One shell script: the blocks in order, each announced, skipped ones as a message.
fn script(blocks: &[Block]) -> String {
    let has_duckdb = python_has("duckdb");
    let has_polars = python_has("polars");
    let mut s = String::from("set -euo pipefail\n");
    for b in blocks {
        let at = format!("README.md:{} ({})", b.line, b.lang);
        let missing = match b.lang.as_str() {
            "sql" if !has_duckdb => Some("the Python module duckdb is not installed"),
            "python" if b.code.contains("import polars") && !has_polars => {
                Some("the Python module polars is not installed")
            }
            _ => None,
        };
        let skip = b.skip.as_deref().or(missing);
        if let Some(reason) = skip.filter(|_| b.lang != "text") {
            eprintln!("readme test: SKIPPED {at}: {reason}");
            s += &format!("echo '== SKIPPED {at}: {reason}'\n");
            continue;
        }
        s += &format!("echo '== {at}'\n");
        match b.lang.as_str() {
            "sh" => s += &format!("{}\n", b.code),
            "python" => s += &format!("python3 - <<'README_EOF'\n{}\nREADME_EOF\n", b.code),
            "sql" => {
                // Each statement in turn, its result shown.
                s += "python3 - <<'README_EOF'\nimport duckdb\nsql = r'''\n";
                s += &b.code;
                s += "\n'''\nfor statement in sql.split(';'):\n    if statement.strip(' \\n') and not all(l.strip().startswith('--') or not l.strip() for l in statement.splitlines()):\n        print(statement.strip())\n        duckdb.sql(statement).show()\nREADME_EOF\n";
            }
            _ => {}
        }
    }
    s
}

/// The repository's tracked files copied into `dest`, as a fresh clone has them.
fn fresh_copy(dest: &Path) {
    let out = Command::new("git")
        .current_dir(repo(""))
        .args(["ls-files", "-z"])
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git ls-files failed");
    for name in out.stdout.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name).unwrap();
        let from = repo(name);
        if !from.is_file() {
            continue; // deleted in the working tree
        }
        let to = dest.join(name);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&from, &to).unwrap();
    }
}

#[test]
fn readme_runs_as_written() {
    let text = std::fs::read_to_string(repo("README.md")).unwrap();
    let scratch = Scratch::new("readme");
    let copy = scratch.path("repo");
    fresh_copy(&copy);
    // The README's binaries are target/release's: this build's stand in for them.
    let bins: PathBuf = bin("generate").parent().unwrap().to_path_buf();
    std::fs::create_dir_all(copy.join("target")).unwrap();
    std::os::unix::fs::symlink(&bins, copy.join("target/release")).unwrap();
    let script_path = scratch.path("readme.sh");
    std::fs::write(&script_path, script(&blocks(&text))).unwrap();
    let out = Command::new("bash")
        .arg(&script_path)
        .current_dir(&copy)
        .env("BUILD", "")
        .env("RSPO_CACHE_DIR", scratch.path(".cache"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("bash runs");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "README.md failed (the last `==` line names the block):\n{log}"
    );
    // What the README says the commands write is there.
    for file in [
        "data/runs/tiny/eval-3/report.md",
        "data/runs/example/iter-1/model/model.safetensors",
        "data/runs/example/eval/report.md",
        "data/runs/sppo-try/iter-1/train_log.parquet",
    ] {
        assert!(copy.join(file).is_file(), "{file} missing:\n{log}");
    }
    let status = Command::new("git")
        .current_dir(repo(""))
        .args(["check-ignore", "-q", "data/runs/example/samples.parquet"])
        .status()
        .unwrap();
    assert!(status.success(), "git does not ignore data/runs/example");
}
