//! The `envd` binary: parse the command line and run the daemon.

use std::process::ExitCode;

fn main() -> ExitCode {
    let config = match hangar_envd::Config::from_args(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("envd: {e}\n{}", hangar_envd::USAGE);
            return ExitCode::from(2);
        }
    };
    match hangar_envd::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("envd: {e}");
            ExitCode::FAILURE
        }
    }
}
