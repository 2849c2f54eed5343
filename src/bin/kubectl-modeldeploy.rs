//! `kubectl modeldeploy`: see a rollout and steer it by hand. Requests travel
//! as an annotation the operator carries out once (see `rollout::requests`);
//! the commands live in `modeldeploy::cli`.

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use modeldeploy::cli::{Args, one_line, run};

#[tokio::main]
async fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            e.exit()
        }
        Err(e) => {
            // Usage errors exit 2, as clap and kubectl do.
            eprintln!("{}", one_line(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
