//! `drome bench openb`: the FGD paper's workload-inflation experiment on the Alibaba openb trace.

/// Arguments of `drome bench openb`.
#[derive(clap::Args, Debug)]
pub struct OpenbArgs {}

pub fn run(_args: OpenbArgs) -> anyhow::Result<()> {
    anyhow::bail!("drome bench openb is being built")
}
