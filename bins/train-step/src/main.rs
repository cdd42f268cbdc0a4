use clap::Parser;

/// The `train-step` stage of the RSPO pipeline (not built yet).
#[derive(Parser)]
#[command(version, about)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!("`train-step` is not implemented yet in this version of the pipeline")
}
