//! One definition per setting: every key of a stage's pipeline section is a flag of its binary,
//! pipeline files are read strictly by the stages and by make alike, and make gets its values
//! from our own reader.

use std::path::Path;
use std::process::{Command, Output};

use e2e::{bin, fails, repo, s, Scratch};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn help(name: &str, subcommand: Option<&str>) -> String {
    let mut cmd = Command::new(bin(name));
    cmd.args(subcommand).arg("--help");
    let out = cmd.output().expect("run --help");
    assert!(out.status.success(), "{name} --help: {}", text(&out));
    text(&out)
}

/// The flag of a setting: its key with `-` for `_`, except the two whose flag reads better
/// another way.
fn flag_of(key: &str) -> String {
    match key {
        "terms" => "--term".into(),
        "cache" => "--no-cache".into(),
        _ => format!("--{}", key.replace('_', "-")),
    }
}

#[test]
fn every_key_of_a_stage_section_is_a_flag_of_its_binary() {
    for (section, keys) in rspo::stage::known_sections() {
        let helps: Vec<String> = match section {
            // What make reads (generate pipeline-vars), not stage flags.
            "pipeline" | "slurm" => continue,
            "generate" => vec![help("generate", Some("sample"))],
            "score" => vec![help("score", None)],
            "winrate" => vec![help("estimate-winrate", None)],
            "train-step" => vec![help("train-step", None)],
            "evaluate" => vec![help("evaluate", None)],
            other => panic!("a section without a binary: [{other}]"),
        };
        for key in keys {
            let flag = flag_of(&key);
            for h in &helps {
                assert!(
                    h.contains(&format!("{flag} ")) || h.contains(&format!("{flag}\n")),
                    "[{section}] {key}: no {flag} in --help:\n{h}"
                );
            }
        }
    }
    // evaluate takes the judge's options too, and shows defaults as the other stages do.
    let evaluate = help("evaluate", None);
    for flag in [
        "--target",
        "--pattern",
        "--pairrm-mode",
        "--dtype",
        "--top-p",
        "--seed",
        "--batch-size",
    ] {
        assert!(
            evaluate.contains(flag),
            "evaluate --help has no {flag}:\n{evaluate}"
        );
    }
    assert!(evaluate.contains("pairrm"), "{evaluate}");
    for (name, sub) in [
        ("generate", Some("sample")),
        ("evaluate", None),
        ("score", None),
        ("train-step", None),
    ] {
        assert!(
            help(name, sub).contains("[default: cpu]"),
            "{name}: --device shows no default"
        );
    }
}

#[test]
fn a_misspelled_section_fails_every_stage_before_any_work() {
    let scratch = Scratch::new("settings-misspelled");
    let tiny = std::fs::read_to_string(repo("pipelines/tiny.toml")).unwrap();
    let bad = scratch.path("bad.toml");
    std::fs::write(&bad, tiny.replace("[train-step]", "[train_step]")).unwrap();
    let line = tiny.lines().position(|l| l == "[train-step]").unwrap() + 1;
    let out = scratch.path("samples.parquet");
    let err = fails(
        &scratch,
        "generate",
        &[
            "sample",
            "--config",
            s(&bad),
            "--model",
            s(&repo("data/models/tiny-policy")),
            "--prompts",
            s(&repo("data/prompts/train-1.parquet")),
            "--out",
            s(&out),
        ],
    );
    assert!(
        err.contains(&format!("bad.toml:{line}: unknown section [train_step]")),
        "{err}"
    );
    assert!(
        err.contains("[train-step]"),
        "names the valid sections: {err}"
    );
    assert!(!out.exists());

    let top = scratch.path("top.toml");
    std::fs::write(&top, format!("k = 2\n{tiny}")).unwrap();
    let err = fails(&scratch, "generate", &["pipeline-vars", s(&top)]);
    assert!(
        err.contains("top.toml:1:") && err.contains("outside any section"),
        "{err}"
    );
}

struct Make<'a> {
    scratch: &'a Scratch,
}

impl Make<'_> {
    fn run(&self, pipeline: &std::path::Path, args: &[&str]) -> Output {
        let bin_dir = bin("generate").parent().unwrap().to_path_buf();
        Command::new("make")
            .current_dir(repo(""))
            .arg(format!("PIPELINE={}", pipeline.display()))
            .arg(format!("RUNDIR={}", self.scratch.path("run").display()))
            .arg(format!("BIN={}", bin_dir.display()))
            .arg("BUILD=")
            .args(args)
            .env("RSPO_CACHE_DIR", self.scratch.path(".cache"))
            .output()
            .expect("make runs")
    }
}

#[test]
fn make_reads_the_pipeline_file_through_our_reader() {
    let scratch = Scratch::new("settings-make");
    let make = Make { scratch: &scratch };
    let tiny = std::fs::read_to_string(repo("pipelines/tiny.toml")).unwrap();
    let commented = scratch.path("commented.toml");
    std::fs::write(
        &commented,
        tiny.replace(
            "base_model = \"data/models/tiny-policy\"",
            "base_model = \"data/models/tiny-policy\"  # start here",
        ),
    )
    .unwrap();
    let plan = make.run(&commented, &["-n", "iter", "N=1"]);
    let plan_text = text(&plan);
    assert!(plan.status.success(), "{plan_text}");
    assert!(
        plan_text.contains("--model data/models/tiny-policy "),
        "{plan_text}"
    );

    let misspelled = scratch.path("misspelled.toml");
    std::fs::write(&misspelled, tiny.replace("[generate]", "[generat]")).unwrap();
    let out = make.run(&misspelled, &["iter", "N=1"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("unknown section [generat]"),
        "{}",
        text(&out)
    );
    assert!(!scratch.path("run/iter-1").exists(), "a stage ran");

    let out = make.run(&scratch.path("missing.toml"), &["iter", "N=1"]);
    assert!(!out.status.success());
    let err = text(&out);
    assert!(err.contains("missing.toml: no such file"), "{err}");
    assert_eq!(
        err.matches("missing.toml").count(),
        1,
        "one clear error:\n{err}"
    );
}

/// `generate pipeline-vars` on a pipeline file: it succeeds with nothing on stderr; its stdout.
fn pipeline_vars(pipeline: &Path) -> String {
    let out = Command::new(bin("generate"))
        .args(["pipeline-vars", s(pipeline)])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let name = pipeline.display();
    assert!(out.status.success(), "{name}: {stderr}");
    assert!(stderr.is_empty(), "{name}: stderr: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn pipeline_vars_prints_make_variables() {
    let vars = pipeline_vars(&repo("pipelines/tiny.toml"));
    assert!(
        vars.contains("BASE_MODEL := data/models/tiny-policy\n"),
        "{vars}"
    );
    assert!(
        vars.contains("PROMPTS := data/prompts/train-{t}.parquet\n"),
        "{vars}"
    );
    assert!(vars.contains("MODEL_DIR := model\n"), "{vars}");
    // LoRA without merge: an iteration's model is its adapter folder.
    let lora = pipeline_vars(&repo("pipelines/tiny-lora.toml"));
    assert!(lora.contains("MODEL_DIR := adapter\n"), "{lora}");
}

/// Every shipped pipeline parses, and the prompt files it names (each part of `{t}`, and the
/// evaluation prompts) are in the repository.
#[test]
fn every_shipped_pipeline_parses_and_its_prompt_files_exist() {
    for entry in std::fs::read_dir(repo("pipelines")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.display();
        let vars = pipeline_vars(&path);
        let var = |key: &str| {
            let prefix = format!("{key} := ");
            let line = vars.lines().find_map(|l| l.strip_prefix(prefix.as_str()));
            line.unwrap_or_else(|| panic!("{name}: no {key} in\n{vars}"))
                .to_string()
        };
        let parts: usize = var("PROMPT_PARTS").parse().unwrap();
        let mut files: Vec<String> = (1..=parts)
            .map(|t| var("PROMPTS").replace("{t}", &t.to_string()))
            .collect();
        files.push(var("EVAL_PROMPTS"));
        for file in files {
            assert!(
                repo(&file).is_file(),
                "{name} names {file}, which is missing"
            );
        }
    }
}
