//! Which endpoints keyward forwards (`--endpoints`) and who may use a stored response
//! (`--no-ownership`, `--ownership-ttl`): the flags and the settings made of them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::config::error::ConfigError;
use crate::config::values::{self, parse_duration};

/// The name of the ownership record in keyward's home.
pub const OWNERS_FILE: &str = "response-owners";

#[derive(Debug, Clone, Args)]
pub struct ResponsesArgs {
    /// What keyward forwards. `responses` (the default): the Responses family (create, retrieve,
    /// delete, cancel, input items, input token counts, compact) and the model list, each
    /// stored response only to the client that created it. `create`: POST /v1/responses only,
    /// as OpenAI's codex-responses-api-proxy does.
    #[arg(long, value_name = "SET", value_enum, default_value_t = Endpoints::Responses)]
    pub endpoints: Endpoints,

    /// Serve a stored response (retrieve, cancel, delete, input items) to any client, not only
    /// to the one that created it. For single-user setups; who created what is still recorded.
    #[arg(long)]
    pub no_ownership: bool,

    /// How long keyward remembers who created a response (the API keeps stored responses for 30
    /// days). After it, the response is refused to everyone, as an unknown one is.
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = parse_duration)]
    pub ownership_ttl: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Endpoints {
    /// The Responses family and the model list.
    Responses,
    /// POST /v1/responses only.
    Create,
}

/// Where keyward records which client created each response id, and whether it checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    /// `response-owners` in keyward's home (created 0600); `None` without a home (no `--home`,
    /// `KEYWARD_HOME` or `HOME`): the record is then kept in memory only.
    pub file: Option<PathBuf>,
    pub ttl: Duration,
    /// Refuse a stored response to every client but its creator.
    pub enforce: bool,
}

/// The settings: the endpoint set, and the ownership record when stored responses are served.
pub fn settings(
    args: &ResponsesArgs,
    home: Option<&std::path::Path>,
    stored_responses: bool,
) -> Result<(Endpoints, Option<Ownership>), ConfigError> {
    if args.ownership_ttl.is_zero() {
        return Err(ConfigError::Zero {
            flag: "ownership-ttl",
        });
    }
    if args.endpoints == Endpoints::Create || !stored_responses {
        return Ok((args.endpoints, None));
    }
    Ok((
        args.endpoints,
        Some(Ownership {
            file: values::home_dir(home).map(|home| home.join(OWNERS_FILE)),
            ttl: args.ownership_ttl,
            enforce: !args.no_ownership,
        }),
    ))
}
