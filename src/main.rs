//! The walvault binary: parse, set up logging, run, map errors to exit codes.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match walvault::cli::parse::parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(err) => return err.report(),
    };
    // restore_command: a status of 1 to 125 would read as "not in the archive".
    let failed = if matches!(cli.command, walvault::cli::Command::WalFetch(_)) {
        ExitCode::from(walvault::restore::serve::EXIT_FAILED)
    } else {
        ExitCode::from(1)
    };
    if cli.command.holds_large_buffers() {
        walvault::malloc::use_fixed_thresholds();
    }
    walvault::telemetry::init(&cli.log_level, cli.log_format.into());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walvault: cannot start the runtime: {e}");
            return failed;
        }
    };
    match runtime.block_on(walvault::cli::run(cli)) {
        Ok(code) => code,
        Err(err) => {
            // Each cause once: store errors repeat their cause in their text.
            eprintln!("walvault: error: {}", walvault::error::chain(err.as_ref()));
            walvault::cli::exit_code_for(&err)
        }
    }
}
