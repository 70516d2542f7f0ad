//! The command line: global flags (admin URL, token, output format) and the commands.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit codes, as `--help` shows them.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  other error (e.g. an unreadable file)
  2  usage error (bad flags or arguments)
  3  not found (model or replica)
  4  rejected as invalid (bad spec, bad file, bad request)
  5  unauthorized (missing or wrong admin token)
  6  server error or unavailable (5xx, timeout)
  7  cannot connect to the pool-manager";

/// Client of the mm-gateway pool-manager's admin API.
#[derive(Debug, Parser)]
#[command(name = "mmctl", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// Admin API base URL.
    #[arg(
        long,
        global = true,
        env = "MMCTL_URL",
        default_value = "http://127.0.0.1:9090"
    )]
    pub url: url::Url,
    /// Bearer token for calls that change something (apply, delete, drain).
    #[arg(long, global = true, env = "MMCTL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Bound on each call (not on `events --follow`).
    #[arg(long, global = true, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: Command,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// The admin API's JSON (events --follow: one object per line).
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Registered models.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Aliases: names standing for one model, or several by weight (canaries).
    #[command(subcommand)]
    Aliases(AliasesCommand),
    /// Configured replicas.
    #[command(subcommand)]
    Replicas(ReplicasCommand),
    /// Recent events (loads, evictions, failures, placements).
    Events(EventsArgs),
    /// Pool summary: hit rate, load time, counts.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List every model (all pages).
    #[command(alias = "ls")]
    List,
    /// Show one model.
    Get { name: String },
    /// Register or update the models in a JSON or YAML file (several YAML documents may
    /// follow each other): mmctl specs (one with a `name`, a list, or `{"models": [...]}`),
    /// KServe TrainedModels and ModelMesh InferenceServices. Every document is checked
    /// (on the server too) before any is applied; each one's outcome is reported.
    Apply {
        /// The file (`-` for standard input).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Write registered models out as YAML documents `models apply` reads back. A
    /// storageUri holding credentials is written redacted (with a warning): put the real
    /// one back before applying.
    Export {
        /// The documents' form.
        #[arg(long, value_enum, default_value = "modelmesh")]
        format: crate::manifests::ExportFormat,
        /// spec.inferenceService of TrainedModels whose spec records no pool.
        #[arg(long, default_value = "mm-gateway")]
        inference_service: String,
        /// Only these models (default: all).
        names: Vec<String>,
    },
    /// Unload a model everywhere and forget it.
    #[command(alias = "rm")]
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum AliasesCommand {
    /// List every alias and its targets.
    #[command(alias = "ls")]
    List,
    /// Show one alias.
    Get { name: String },
    /// Create an alias or move it. A move takes effect once each new target is loaded on
    /// as many copies as the old targets had (the call waits for that).
    Set {
        name: String,
        /// The one model the alias stands for.
        #[arg(long, conflicts_with = "targets", required_unless_present = "targets")]
        target: Option<String>,
        /// Several models by weight: `m1=90,m2=10`.
        #[arg(long, value_parser = crate::aliases::parse_targets)]
        targets: Option<crate::aliases::Targets>,
    },
    /// Delete an alias (its models stay).
    #[command(alias = "rm")]
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ReplicasCommand {
    /// List replicas: health, memory, models.
    #[command(alias = "ls")]
    List,
    /// Stop placing copies on a replica and move its copies away as they go idle.
    Drain { name: String },
    /// Let a drained replica take copies again.
    Undrain { name: String },
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events after this sequence number.
    #[arg(long)]
    pub after: Option<u64>,
    /// At most this many events (the newest ones without --after).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub limit: u64,
    /// Keep printing new events as they happen (Ctrl-C stops).
    #[arg(short, long)]
    pub follow: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_commands() {
        let cli = Cli::try_parse_from([
            "mmctl",
            "--url",
            "http://pm:9090",
            "-o",
            "json",
            "models",
            "apply",
            "-f",
            "m.yaml",
        ])
        .unwrap();
        assert_eq!(cli.output, Output::Json);
        assert_eq!(cli.url.as_str(), "http://pm:9090/");
        assert!(matches!(
            cli.command,
            Command::Models(ModelsCommand::Apply { .. })
        ));
        let cli = Cli::try_parse_from(["mmctl", "events", "--follow", "--after", "7"]).unwrap();
        let Command::Events(args) = cli.command else {
            panic!("events");
        };
        assert!(args.follow);
        assert_eq!(args.after, Some(7));
        let cli = Cli::try_parse_from(["mmctl", "aliases", "set", "m", "--targets", "a=90,b=10"])
            .unwrap();
        let Command::Aliases(AliasesCommand::Set {
            name,
            target,
            targets,
        }) = cli.command
        else {
            panic!("aliases set");
        };
        assert_eq!((name.as_str(), target), ("m", None));
        let targets = targets.unwrap().0;
        assert_eq!(targets, [("a".to_owned(), 90), ("b".to_owned(), 10)]);
        // Global flags go anywhere.
        let cli =
            Cli::try_parse_from(["mmctl", "replicas", "drain", "r0", "--token", "t"]).unwrap();
        assert_eq!(cli.token.as_deref(), Some("t"));
    }

    #[test]
    fn refuses_bad_usage() {
        for args in [
            vec!["mmctl"],
            vec!["mmctl", "models", "get"],
            vec!["mmctl", "-o", "yaml", "models", "list"],
            vec!["mmctl", "events", "--limit", "0"],
            vec!["mmctl", "--url", "not a url", "status"],
            vec!["mmctl", "aliases", "set", "a"],
            vec![
                "mmctl",
                "aliases",
                "set",
                "a",
                "--target",
                "m",
                "--targets",
                "m=1",
            ],
            vec!["mmctl", "aliases", "set", "a", "--targets", "m1=90,m2"],
        ] {
            assert!(Cli::try_parse_from(&args).is_err(), "{args:?}");
        }
    }
}
