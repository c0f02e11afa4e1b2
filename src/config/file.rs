//! `--config FILE`: a TOML file holding `serve` flags by name. Its settings go before the command
//! line's, so a flag given on the command line wins (for a repeatable flag, the command line's
//! values replace the file's).
//!
//! ```toml
//! listen = ["127.0.0.1:8080", "unix:/run/keyward/keyward.sock"]
//! allow-group = ["codex"]
//! socket-group = "codex"
//! idle-timeout = "300s"
//! metrics-listen = "127.0.0.1:9464"
//!
//! [quota]
//! default = "requests-per-minute=60"
//! ci = "tokens-per-day=2000000,concurrent=2"
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

use crate::config::args::Cli;

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("--config {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("--config {path} is not valid TOML: {why}")]
    Toml { path: PathBuf, why: String },
    #[error("--config {path}: {why}")]
    Setting { path: PathBuf, why: String },
}

/// The file, and the command line it was given on: everything needed to read the settings
/// again (SIGHUP).
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// The program's arguments, as given.
    pub argv: Vec<OsString>,
}

impl ConfigSource {
    /// The arguments `serve` runs with: the file's settings, then the command line's.
    pub fn merged(&self) -> Result<Vec<OsString>, ConfigFileError> {
        let text = std::fs::read_to_string(&self.path).map_err(|error| ConfigFileError::Read {
            path: self.path.clone(),
            error,
        })?;
        let from_file = file_args(&self.path, &text, &self.argv)?;
        let mut merged: Vec<OsString> = Vec::with_capacity(self.argv.len() + from_file.len());
        let mut rest = self.argv.iter();
        merged.extend(rest.next().cloned());
        let mut rest = rest.peekable();
        if rest.peek().is_some_and(|a| a.as_os_str() == "serve") {
            merged.extend(rest.next().cloned());
        }
        merged.extend(from_file);
        merged.extend(rest.cloned());
        Ok(merged)
    }

    /// The `serve` arguments the file and the command line make together; a bad value is named
    /// with the file it may come from, in one line (no usage text, no "try --help").
    pub fn serve_args(&self) -> Result<crate::config::args::ServeArgs, ConfigFileError> {
        let setting = |why: String| ConfigFileError::Setting {
            path: self.path.clone(),
            why,
        };
        let cli = <crate::config::args::Cli as clap::Parser>::try_parse_from(self.merged()?)
            .map_err(|err| setting(clap_message(&err)))?;
        cli.into_serve()
            .ok_or_else(|| setting("the settings do not describe `keyward serve`".into()))
    }
}

/// What a clap error says, in one line: its first, without `error: `.
fn clap_message(err: &clap::Error) -> String {
    let text = err.to_string();
    let first = text.lines().next().unwrap_or_default();
    first
        .strip_prefix("error: ")
        .unwrap_or(first)
        .trim()
        .to_owned()
}

/// The flags a config file may set: every long flag of `serve` but `--config` itself.
fn known_flags() -> Vec<String> {
    let command = Cli::command();
    let serve = command
        .find_subcommand("serve")
        .cloned()
        .unwrap_or_else(Cli::command);
    serve
        .get_arguments()
        .filter_map(|arg| arg.get_long())
        .filter(|long| !matches!(*long, "config" | "help" | "version"))
        .map(str::to_owned)
        .collect()
}

fn file_args(path: &Path, text: &str, argv: &[OsString]) -> Result<Vec<OsString>, ConfigFileError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| ConfigFileError::Toml {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    let bad = |why: String| ConfigFileError::Setting {
        path: path.to_owned(),
        why,
    };
    let known = known_flags();
    let on_command_line = |flag: &str| {
        argv.iter()
            .filter_map(|a| a.to_str())
            .any(|a| a == format!("--{flag}") || a.starts_with(&format!("--{flag}=")))
    };
    let mut args = Vec::new();
    for (key, value) in &table {
        if !known.iter().any(|k| k == key) {
            return Err(bad(format!(
                "unknown setting `{key}`: settings are the names of `keyward serve` flags \
                 without the dashes (see keyward serve --help)"
            )));
        }
        if on_command_line(key) {
            continue;
        }
        let flag = OsString::from(format!("--{key}"));
        let scalar = |value: &toml::Value| -> Result<Option<String>, ConfigFileError> {
            match value {
                toml::Value::String(s) => Ok(Some(s.clone())),
                toml::Value::Integer(n) => Ok(Some(n.to_string())),
                toml::Value::Float(f) => Ok(Some(f.to_string())),
                toml::Value::Boolean(_) => Ok(None),
                other => Err(bad(format!(
                    "`{key}` must be a string, a number or a list of them, not {}",
                    other.type_str()
                ))),
            }
        };
        match value {
            toml::Value::Boolean(true) => args.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) if key == "route" => {
                for item in items {
                    args.push(flag.clone());
                    args.push(route_arg(item).map_err(bad)?.into());
                }
            }
            toml::Value::Array(items) => {
                for item in items {
                    let Some(text) = scalar(item)? else {
                        return Err(bad(format!("`{key}` cannot hold true or false")));
                    };
                    args.push(flag.clone());
                    args.push(text.into());
                }
            }
            toml::Value::Table(entries) if key == "credential" => {
                for (name, settings) in entries {
                    args.push(flag.clone());
                    args.push(credential_arg(name, settings).map_err(bad)?.into());
                }
            }
            toml::Value::Table(entries) if key == "quota" => {
                for (client, spec) in entries {
                    let toml::Value::String(spec) = spec else {
                        return Err(bad(format!(
                            "quota.{client} must be a string such as \"requests-per-minute=60\""
                        )));
                    };
                    args.push(flag.clone());
                    args.push(format!("{client}:{spec}").into());
                }
            }
            other => {
                if let Some(text) = scalar(other)? {
                    args.push(flag);
                    args.push(text.into());
                }
            }
        }
    }
    Ok(args)
}

/// `[credential.NAME]` as `--credential NAME:KEY=VALUE,...`.
fn credential_arg(name: &str, settings: &toml::Value) -> Result<String, String> {
    let toml::Value::Table(settings) = settings else {
        return Err(format!(
            "credential.{name} must be a table, such as [credential.{name}] with chatgpt = \"LOGIN\""
        ));
    };
    let mut pairs = Vec::new();
    for (key, value) in settings {
        match value {
            toml::Value::String(text) if !text.contains(',') => pairs.push(format!("{key}={text}")),
            // A quota; `api-key-stdin`.
            toml::Value::Integer(n) => pairs.push(format!("{key}={n}")),
            toml::Value::Boolean(b) => pairs.push(format!("{key}={b}")),
            _ => {
                return Err(format!(
                    "credential.{name}.{key} must be a string without commas (a number for a \
                     quota, true or false for api-key-stdin)"
                ));
            }
        }
    }
    Ok(format!("{name}:{}", pairs.join(",")))
}

/// A `[[route]]` entry as `--route CLIENTS=CREDENTIALS`.
fn route_arg(entry: &toml::Value) -> Result<String, String> {
    let list = |key: &str| -> Result<String, String> {
        let items = entry
            .get(key)
            .and_then(toml::Value::as_array)
            .ok_or_else(|| format!("each [[route]] needs `{key}`, a list of names"))?;
        items
            .iter()
            .map(|item| match item.as_str() {
                Some(text) if !text.contains([',', '=']) => Ok(text.to_owned()),
                _ => Err(format!("route.{key} holds names, not {}", item.type_str())),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|names| names.join(","))
    };
    Ok(format!("{}={}", list("clients")?, list("credentials")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str, argv: &[&str]) -> (tempfile::TempDir, ConfigSource) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyward.toml");
        std::fs::write(&path, text).unwrap();
        let argv = argv.iter().map(OsString::from).collect();
        (dir, ConfigSource { path, argv })
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn settings_become_flags_before_the_command_line_which_wins() {
        let (_dir, src) = source(
            r#"
port = 8080
listen = ["[::1]:8080", "unix:/run/k.sock"]
http-shutdown = true
dump-dir = "/var/dump"
allow-group = ["codex"]
[quota]
default = "requests-per-minute=60"
"#,
            &[
                "keyward",
                "serve",
                "--config",
                "k.toml",
                "--allow-group",
                "staff",
            ],
        );
        let merged = strings(src.merged().unwrap());
        assert_eq!(&merged[..2], ["keyward", "serve"]);
        assert!(merged.windows(2).any(|w| w == ["--port", "8080"]));
        assert!(
            merged
                .windows(2)
                .any(|w| w == ["--listen", "unix:/run/k.sock"])
        );
        assert!(merged.contains(&"--http-shutdown".to_owned()));
        assert!(
            merged
                .windows(2)
                .any(|w| w == ["--quota", "default:requests-per-minute=60"])
        );
        // The command line's --allow-group replaces the file's.
        assert!(!merged.contains(&"codex".to_owned()));
        assert_eq!(&merged[merged.len() - 2..], ["--allow-group", "staff"]);

        let cli = <Cli as clap::Parser>::try_parse_from(&merged).unwrap();
        let args = cli.into_serve().unwrap();
        assert_eq!(args.port, Some(8080));
        assert_eq!(args.access.allow_group, ["staff"]);
    }

    #[test]
    fn unknown_settings_and_bad_toml_are_errors_that_say_where() {
        let (_dir, src) = source("prot = 8080\n", &["keyward"]);
        let err = src.merged().unwrap_err().to_string();
        assert!(err.contains("unknown setting `prot`"), "{err}");
        let (_dir, src) = source("port = \n", &["keyward"]);
        let err = src.merged().unwrap_err().to_string();
        assert!(err.contains("not valid TOML"), "{err}");
        let (_dir, src) = source("port = { a = 1 }\n", &["keyward"]);
        assert!(src.merged().is_err());
    }
}
