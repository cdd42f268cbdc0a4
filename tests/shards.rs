//! Sharded stages end to end: `generate logprobs --shard I/N` and `score --shard I/N`, joined
//! by `generate merge`, write the bytes of an unsharded run (`generate sample` is covered in
//! generate.rs).

use e2e::{fails, fixture, ok, s, write_prompts, Scratch};
use std::path::{Path, PathBuf};

const TEXTS: [&str; 5] = [
    "How do I boil an egg?",
    "Name three colors.",
    "Write a haiku about rain.",
    "What is two plus two?",
    "Explain recursion briefly.",
];
const SHARDS: u32 = 3;

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `generate merge --out <out> <shards...>`, the shards given last first.
fn merge(sc: &Scratch, out: &Path, shards: &[PathBuf]) {
    let mut args = vec!["merge", "--out", s(out)];
    args.extend(shards.iter().rev().map(|p| s(p)));
    ok(sc, "generate", &args);
}

/// `<dir>/shard-<i>/<name>` for every shard.
fn shard_files(sc: &Scratch, dir: &str, name: &str) -> Vec<PathBuf> {
    (0..SHARDS)
        .map(|i| sc.path(&format!("{dir}/shard-{i}/{name}")))
        .collect()
}

#[test]
fn sharded_logprobs_and_score_merge_to_the_unsharded_files() {
    let sc = Scratch::new("shards");
    let prompts = sc.path("prompts.parquet");
    write_prompts(&prompts, &TEXTS);
    let samples = sc.path("samples.parquet");
    let policy = fixture("tiny-llama");
    let sample = [
        "sample",
        "--model",
        s(&policy),
        "--prompts",
        s(&prompts),
        "--out",
        s(&samples),
        "--k",
        "3",
        "--max-new-tokens",
        "10",
        "--temperature",
        "1.0",
        "--seed",
        "5",
    ];
    ok(&sc, "generate", &sample);

    // Log-probs: the whole, N shards, and the merge. Batches of 8 rows hold two prompts (K 3),
    // so a shard must take whole batches of the unsharded run to give the same bits.
    let logprobs = |role: &str, out: &Path, extra: &[&str]| {
        let mut a = vec![
            "logprobs",
            "--model",
            s(&policy),
            "--samples",
            s(&samples),
            "--role",
            role,
            "--out",
            s(out),
            "--batch-size",
            "8",
        ];
        a.extend_from_slice(extra);
        ok(&sc, "generate", &a)
    };
    let whole = sc.path("logprobs-policy.parquet");
    logprobs("policy", &whole, &[]);
    let parts = shard_files(&sc, "lp", "logprobs-policy.parquet");
    for (i, p) in parts.iter().enumerate() {
        logprobs("policy", p, &["--shard", &format!("{i}/{SHARDS}")]);
    }
    let merged = sc.path("merged/logprobs-policy.parquet");
    merge(&sc, &merged, &parts);
    assert!(
        bytes(&merged) == bytes(&whole),
        "merged log-probs differ from the whole"
    );

    // A shard of the reference log-probs reuses its slice of the (whole) policy file.
    let reused = shard_files(&sc, "ref", "logprobs-reference.parquet");
    let reuse = ["--reuse", s(&whole)];
    for (i, p) in reused.iter().enumerate() {
        let spec = format!("{i}/{SHARDS}");
        let stderr = logprobs("reference", p, &[reuse[0], reuse[1], "--shard", &spec]);
        assert!(stderr.contains("rows reused"), "{stderr}");
    }
    let ref_whole = sc.path("logprobs-reference.parquet");
    logprobs("reference", &ref_whole, &reuse);
    let ref_merged = sc.path("merged/logprobs-reference.parquet");
    merge(&sc, &ref_merged, &reused);
    assert!(
        bytes(&ref_merged) == bytes(&ref_whole),
        "merged reused log-probs differ"
    );

    // Score with a scalar judge: preferences.parquet and scores.parquet, each merged apart.
    // No cache: every shard judges its responses itself.
    let judge = fixture("tiny-llama-rm");
    let score = |dir: &str, extra: &[&str]| {
        let out = sc.path(&format!("{dir}/preferences.parquet"));
        let mut a = vec![
            "--samples",
            s(&samples),
            "--out",
            s(&out),
            "--judge",
            "reward-model",
            "--judge-model",
            s(&judge),
            "--no-cache",
            "--batch-size",
            "4",
        ];
        a.extend_from_slice(extra);
        ok(&sc, "score", &a);
    };
    score("whole", &[]);
    for i in 0..SHARDS {
        score(
            &format!("sc/shard-{i}"),
            &["--shard", &format!("{i}/{SHARDS}")],
        );
    }
    for name in ["preferences.parquet", "scores.parquet"] {
        let merged = sc.path(&format!("merged/{name}"));
        merge(&sc, &merged, &shard_files(&sc, "sc", name));
        assert!(
            bytes(&merged) == bytes(&sc.path(&format!("whole/{name}"))),
            "merged {name} differs from the whole"
        );
    }
    // A shard given to a later stage as the whole file is refused, named.
    let shard = sc.path("sc/shard-1/preferences.parquet");
    let out = sc.path("w/winrates.parquet");
    let err = fails(
        &sc,
        "estimate-winrate",
        &["--preferences", s(&shard), "--out", s(&out)],
    );
    let what = format!("shard 1/{SHARDS} of a sharded run");
    assert!(err.contains(s(&shard)) && err.contains(&what), "{err}");
    assert!(!out.exists());
    // Shards of different files, and more shards than prompts, are refused by name.
    let mixed = [parts[0].clone(), reused[1].clone(), parts[2].clone()];
    let err = fails(
        &sc,
        "generate",
        &[
            "merge",
            "--out",
            s(&sc.path("x.parquet")),
            s(&mixed[0]),
            s(&mixed[1]),
            s(&mixed[2]),
        ],
    );
    assert!(err.contains("comes from another run"), "{err}");
    let err = fails(
        &sc,
        "score",
        &[
            "--samples",
            s(&samples),
            "--out",
            s(&sc.path("y/preferences.parquet")),
            "--judge",
            "reward-model",
            "--judge-model",
            s(&judge),
            "--shard",
            "0/6",
        ],
    );
    assert!(
        err.contains("--shard 0/6: 5 prompts, fewer than the 6 shards"),
        "{err}"
    );
}
