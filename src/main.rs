//! The `portcullis` command: parse the command line and start what it asks for.

use clap::{Parser, Subcommand};

/// Just-in-time access to the management ports of cloud VMs.
#[derive(Parser, Debug)]
#[command(name = "portcullis", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator: controllers, sweeper, admission webhook, metrics and health.
    Run,
    /// Print the CustomResourceDefinitions as YAML.
    Crds {
        /// Write one file per CRD into this directory instead of printing them.
        #[arg(long)]
        out_dir: Option<std::path::PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds { out_dir: None } => {
            print!("{}", portcullis::api::crds::all_yaml()?);
            Ok(())
        }
        Command::Crds { out_dir: Some(dir) } => {
            std::fs::create_dir_all(&dir)?;
            for crd in portcullis::api::crds::all() {
                let path = dir.join(portcullis::api::crds::file_name(&crd));
                std::fs::write(&path, portcullis::api::crds::to_yaml(&crd)?)?;
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Run => {
            anyhow::bail!("`portcullis run` has no controllers yet; see the open issues")
        }
    }
}
