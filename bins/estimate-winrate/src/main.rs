use clap::Parser;

/// The `estimate-winrate` stage of the RSPO pipeline (not built yet).
#[derive(Parser)]
#[command(version, about)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!("`estimate-winrate` is not implemented yet in this version of the pipeline")
}
