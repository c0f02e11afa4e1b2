//! `keyward codex-config`: the settings that point the calling user's Codex CLI at keyward — a
//! provider in `~/.codex/config.toml` — printed, or with `--write` added to the file (an earlier
//! keyward provider replaced, everything else kept as it was written).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::config::command_args::CodexConfigArgs;

/// The provider's key in `model_providers`.
const PROVIDER: &str = "keyward";

pub fn codex_config(args: &CodexConfigArgs) -> anyhow::Result<()> {
    let base_url = base_url(args)?;
    let stanza = stanza(&base_url, args.token_env.as_deref());
    if !args.write {
        print!("model_provider = \"{PROVIDER}\"\n\n{stanza}");
        return Ok(());
    }
    let home = match &args.codex_home {
        Some(home) => home.clone(),
        None => codex_home()?,
    };
    let path = home.join("config.toml");
    let before = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(err) => return Err(err).with_context(|| format!("could not read {}", path.display())),
    };
    let after = merged(&before, &stanza)
        .with_context(|| format!("{} was left as it was", path.display()))?;
    write(&home, &path, &after)?;
    println!(
        "Codex now reaches the Responses API through keyward at {base_url} ({}).",
        path.display()
    );
    if let Some(env) = &args.token_env {
        println!("Put your client token in ${env} (e.g. in your shell's profile).");
    }
    Ok(())
}

/// Where Codex is told to send its requests.
fn base_url(args: &CodexConfigArgs) -> anyhow::Result<String> {
    if let Some(url) = &args.url {
        let parsed = url::Url::parse(url).with_context(|| format!("--url {url}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            bail!("--url {url}: keyward is reached over http or https");
        }
        return Ok(url.trim_end_matches('/').to_owned());
    }
    let Some(file) = &args.server_info else {
        return Ok("http://127.0.0.1:8080/v1".to_owned());
    };
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("could not read --server-info {}", file.display()))?;
    let info: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("--server-info {} is not keyward's", file.display()))?;
    match info["port"].as_u64() {
        Some(port) => Ok(format!("http://127.0.0.1:{port}/v1")),
        None => bail!(
            "--server-info {}: keyward listens on no TCP port; give --url",
            file.display()
        ),
    }
}

/// The provider's table.
fn stanza(base_url: &str, token_env: Option<&str>) -> String {
    let quoted = |text: &str| toml_string(text);
    let mut stanza = format!(
        "[model_providers.{PROVIDER}]\n\
         # \"OpenAI\": Codex then compacts long sessions as it does with OpenAI's own provider.\n\
         name = \"OpenAI\"\n\
         base_url = {}\n\
         wire_api = \"responses\"\n\
         supports_websockets = true\n",
        quoted(base_url)
    );
    if let Some(env) = token_env {
        stanza.push_str(&format!("env_key = {}\n", quoted(env)));
    }
    stanza
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// `before` with `model_provider` set to keyward and keyward's provider table replaced: other
/// lines stay as written. The result must parse and say what was meant, or nothing is written.
fn merged(before: &str, stanza: &str) -> anyhow::Result<String> {
    toml::from_str::<toml::Table>(before).context("it is not valid TOML")?;
    let header = format!("[model_providers.{PROVIDER}]");
    let mut top = Vec::new();
    let mut rest = Vec::new();
    let mut in_tables = false;
    let mut in_ours = false;
    for line in before.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_tables = true;
            in_ours = trimmed.replace(' ', "") == header;
        }
        if in_ours {
            continue;
        }
        if !in_tables {
            let key = trimmed.split('=').next().unwrap_or("").trim();
            if key != "model_provider" {
                top.push(line);
            }
        } else {
            rest.push(line);
        }
    }
    while top.last().is_some_and(|l| l.trim().is_empty()) {
        top.pop();
    }
    let mut after = String::new();
    for line in top {
        after.push_str(line);
        after.push('\n');
    }
    after.push_str(&format!("model_provider = \"{PROVIDER}\"\n"));
    let rest = rest.join("\n");
    let rest = rest.trim();
    if !rest.is_empty() {
        after.push('\n');
        after.push_str(rest);
        after.push('\n');
    }
    after.push('\n');
    after.push_str(stanza);
    let table: toml::Table = toml::from_str(&after).context(
        "keyward's provider could not be added (is it defined another way, e.g. inline?); \
         add the lines `keyward codex-config` prints by hand",
    )?;
    let provider = table
        .get("model_providers")
        .and_then(|p| p.get(PROVIDER))
        .and_then(|p| p.get("base_url"));
    if table.get("model_provider").and_then(|v| v.as_str()) != Some(PROVIDER) || provider.is_none()
    {
        bail!(
            "keyward's provider could not be added; add the lines `keyward codex-config` prints by hand"
        );
    }
    Ok(after)
}

/// Replaces `path` at once (a file beside it, renamed over it), private to its owner.
fn write(home: &Path, path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(home)
        .with_context(|| format!("could not create {}", home.display()))?;
    let mut file = tempfile::Builder::new()
        .prefix(".config.toml.")
        .tempfile_in(home)
        .with_context(|| format!("could not write in {}", home.display()))?;
    file.write_all(text.as_bytes())?;
    file.as_file().sync_all()?;
    file.persist(path)
        .map_err(|err| err.error)
        .with_context(|| format!("could not replace {}", path.display()))?;
    Ok(())
}

/// `$CODEX_HOME`, else `~/.codex`.
fn codex_home() -> anyhow::Result<PathBuf> {
    if let Some(home) = std::env::var_os("CODEX_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".codex")),
        None => bail!("neither CODEX_HOME nor HOME is set; give --codex-home"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_provider_is_added_and_everything_else_kept() {
        let before = "# my settings\nmodel = \"gpt-5\"\nmodel_provider = \"other\"\n\n\
                      [model_providers.other]\nname = \"x\"\nbase_url = \"http://x\"\n\n\
                      [model_providers.keyward]\nname = \"old\"\nbase_url = \"http://old\"\n\n\
                      [profiles.fast]\nmodel = \"gpt-5-mini\"\n";
        let stanza = stanza("http://127.0.0.1:9/v1", Some("KEYWARD_TOKEN"));
        let after = merged(before, &stanza).unwrap();
        let table: toml::Table = toml::from_str(&after).unwrap();
        assert_eq!(table["model_provider"].as_str(), Some("keyward"));
        assert_eq!(table["model"].as_str(), Some("gpt-5"));
        let keyward = &table["model_providers"]["keyward"];
        assert_eq!(keyward["base_url"].as_str(), Some("http://127.0.0.1:9/v1"));
        assert_eq!(keyward["env_key"].as_str(), Some("KEYWARD_TOKEN"));
        assert_eq!(keyward["supports_websockets"].as_bool(), Some(true));
        assert_eq!(keyward["name"].as_str(), Some("OpenAI"));
        assert_eq!(
            table["model_providers"]["other"]["name"].as_str(),
            Some("x")
        );
        assert_eq!(
            table["profiles"]["fast"]["model"].as_str(),
            Some("gpt-5-mini")
        );
        assert!(after.starts_with("# my settings\n"), "{after}");
        assert!(!after.contains("http://old"), "{after}");
        // Again: the same file.
        assert_eq!(merged(&after, &stanza).unwrap(), after);
        // Nothing there yet.
        let fresh = merged("", &stanza).unwrap();
        assert!(
            fresh.starts_with("model_provider = \"keyward\"\n"),
            "{fresh}"
        );
    }

    #[test]
    fn a_file_that_is_not_toml_or_defines_the_provider_inline_is_left_alone() {
        let stanza = stanza("http://127.0.0.1:9/v1", None);
        assert!(merged("model = [", &stanza).is_err());
        let inline = "model_providers = { keyward = { name = \"x\", base_url = \"http://x\" } }\n";
        assert!(merged(inline, &stanza).is_err());
    }
}
