//! The development scripts' own checks, so that CI runs them: `make bench-compare`'s parsing,
//! table and processor description (`scripts/bench_compare_test.py`, which runs neither
//! benchmark).

use std::process::Command;

use e2e::repo;

#[test]
fn bench_compare_parses_and_tabulates() {
    let out = Command::new("python3")
        .arg(repo("scripts/bench_compare_test.py"))
        .output()
        .expect("run python3 scripts/bench_compare_test.py");
    assert!(
        out.status.success(),
        "scripts/bench_compare_test.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
