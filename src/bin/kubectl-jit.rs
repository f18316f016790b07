//! `kubectl-jit`: the kubectl plugin (`kubectl jit …`). Its code is in `portcullis::cli`.

fn main() -> std::process::ExitCode {
    portcullis::cli::main()
}
