//! `greenlight config check FILE` and `greenlight config sample`, and which file
//! `greenlight master` reads when it is given none (`greenlight-master.toml`, else the old
//! name `greenlight.toml` with a warning).

use std::path::{Path, PathBuf};
use std::time::Duration;

use greenlight_master::config::check::{EnvironmentCheck, check_file};
use greenlight_master::config::{CONFIG_FILE, OLD_CONFIG_FILE, is_repository_file};

/// Arguments of `greenlight config`.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ConfigCommand {
    /// Check a master's configuration: unknown keys, bad values, the repository fetchable,
    /// the runner installed here, the tokens it names in the environment. Lists every
    /// problem and exits 1, or prints one OK line.
    Check {
        /// The configuration file.
        #[arg(default_value = CONFIG_FILE)]
        file: PathBuf,
        /// Seconds `git ls-remote` and each runner probe may take.
        #[arg(long, default_value_t = 20.0)]
        timeout: f64,
    },
    /// Print a configuration with every key, its default and what it is for.
    Sample,
}

/// Runs `greenlight config …`; returns the exit code.
pub fn run(args: &ConfigArgs) -> i32 {
    match &args.command {
        ConfigCommand::Sample => {
            print!("{}", greenlight_master::config::sample::sample());
            0
        }
        ConfigCommand::Check { file, timeout } => {
            if let Some(warning) = old_name_warning(file) {
                eprintln!("warning: {warning}");
            }
            let options = EnvironmentCheck { timeout: Duration::from_secs_f64(timeout.clamp(0.1, 3600.0)) };
            match check_file(file, |name| std::env::var(name).ok(), &options) {
                Ok(found) => {
                    println!("{}: OK ({})", file.display(), found.join("; "));
                    0
                }
                Err(problems) => {
                    let count = problems.len();
                    println!("{}: {count} problem{}", file.display(), if count == 1 { "" } else { "s" });
                    for problem in problems {
                        println!("  {problem}");
                    }
                    1
                }
            }
        }
    }
}

/// What to say when `path` has the configuration's old name.
fn old_name_warning(path: &Path) -> Option<String> {
    path.file_name().is_some_and(|name| name == OLD_CONFIG_FILE).then(|| {
        format!(
            "{OLD_CONFIG_FILE} as the master's configuration is deprecated (the tested repository's test metadata \
             has that name): rename it {CONFIG_FILE}"
        )
    })
}

/// Logs the warning when `path` has the configuration's old name.
fn warn_if_old_name(path: &Path) {
    if let Some(warning) = old_name_warning(path) {
        tracing::warn!("{warning}");
    }
}

/// The configuration file `greenlight master` reads: `given`, else `greenlight-master.toml`
/// in the working directory, else the old `greenlight.toml` there (with a warning) unless
/// that is a tested repository's test metadata.
pub fn master_config_path(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        warn_if_old_name(&path);
        return Ok(path);
    }
    let path = PathBuf::from(CONFIG_FILE);
    if path.exists() {
        return Ok(path);
    }
    let old = PathBuf::from(OLD_CONFIG_FILE);
    match std::fs::read_to_string(&old) {
        Ok(text) if is_repository_file(&text) => anyhow::bail!(
            "no {CONFIG_FILE} here, and {OLD_CONFIG_FILE} is a tested repository's test metadata, not the master's \
             configuration: write {CONFIG_FILE} (`greenlight config sample > {CONFIG_FILE}`) or pass --config FILE"
        ),
        Ok(_) => {
            warn_if_old_name(&old);
            Ok(old)
        }
        Err(_) => anyhow::bail!(
            "no {CONFIG_FILE} here: pass --config FILE, or write one (`greenlight config sample > {CONFIG_FILE}`, \
             then `greenlight config check`)"
        ),
    }
}
