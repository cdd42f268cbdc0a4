use clap::Parser;

/// The `score` stage of the RSPO pipeline (not built yet).
#[derive(Parser)]
#[command(version, about)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!("`score` is not implemented yet in this version of the pipeline")
}
