//! `fleetwire-sim`: see `--help`, and `fleetwire_sim::cli::USAGE`.

use std::process::ExitCode;

use fleetwire_sim::cli::{self, Parsed, USAGE};
use fleetwire_sim::{fleet, ml};

fn main() -> ExitCode {
    let opts = match cli::parse(std::env::args().skip(1), |k| std::env::var(k).ok()) {
        Ok(Parsed::Run(opts)) => *opts,
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("fleetwire-sim: {e}\n(run with --help for usage)");
            return ExitCode::from(fleet::EXIT_USAGE as u8);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleetwire-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let status = match opts.ml.clone() {
        Some(request) => runtime.block_on(ml::run(opts, request)),
        None => runtime.block_on(fleet::run(opts)),
    };
    ExitCode::from(status as u8)
}
