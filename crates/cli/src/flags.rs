//! `--key-with-dashes VALUE` for every setting of SPEC §2, generated from the one list in
//! `tessera_core::config::SETTINGS` so flags, environment and file cannot disagree.

use clap::{Arg, ArgMatches, Args, Command, FromArgMatches};
use tessera_core::config::{env_name, SETTINGS};

#[derive(Debug, Default)]
pub struct ConfigFlags(Vec<(&'static str, String)>);

impl ConfigFlags {
    pub fn pairs(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        self.0.iter().map(|(k, v)| (*k, v.clone()))
    }
}

impl FromArgMatches for ConfigFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Self::default();
        flags.update_from_arg_matches(matches)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for setting in SETTINGS {
            if let Some(value) = matches.get_one::<String>(setting.key) {
                self.0.push((setting.key, value.clone()));
            }
        }
        Ok(())
    }
}

impl Args for ConfigFlags {
    fn augment_args(cmd: Command) -> Command {
        cmd.args(SETTINGS.iter().map(|setting| {
            Arg::new(setting.key)
                .long(setting.key.replace('_', "-"))
                .value_name("VALUE")
                .help(format!("{} (env {})", setting.help, env_name(setting.key)))
                .global(true)
                .help_heading("Configuration")
        }))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}
