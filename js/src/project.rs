//! PartyKit projects: `partykit.json` (`main`, `parties`, `vars`, `serve`), `.env`, and the
//! registry of parties built from them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use partyline::{Limits, PartyRegistry};
use serde::Deserialize;

use crate::modules::Modules;
use crate::party::{load_party, JsSettings};
use crate::statics::StaticAssets;

/// The file `partyline dev` looks for in the working directory.
pub const CONFIG_FILE: &str = "partykit.json";

/// `serve` in partykit.json: a directory, or an object with one.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Serve {
    Path(String),
    Options {
        path: String,
        #[serde(default, rename = "singlePageApp")]
        single_page_app: bool,
    },
}

/// The parts of partykit.json Partyline uses (others are accepted and ignored).
#[derive(Debug, Deserialize)]
struct RawConfig {
    name: Option<String>,
    main: Option<String>,
    #[serde(default)]
    parties: BTreeMap<String, String>,
    #[serde(default)]
    vars: BTreeMap<String, serde_json::Value>,
    serve: Option<Serve>,
}

/// A project's configuration, with paths made absolute.
#[derive(Clone, Debug)]
pub struct ProjectConfig {
    /// The config file.
    pub file: PathBuf,
    /// The project directory (the config file's).
    pub root: PathBuf,
    /// The project name, if set.
    pub name: Option<String>,
    /// Party name to entry module (`main` for partykit.json's `main`).
    pub parties: BTreeMap<String, PathBuf>,
    /// Variables for `room.env`: partykit.json's `vars`, then `.env` over them.
    pub vars: BTreeMap<String, String>,
    /// Static assets.
    pub assets: Option<StaticAssets>,
}

/// Reads `KEY=VALUE` lines (comments, blank lines, `export ` and quotes allowed).
fn parse_dotenv(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            out.insert(k.trim().to_string(), v.to_string());
        }
    }
    out
}

impl ProjectConfig {
    /// Reads a partykit.json.
    pub fn read(file: &Path) -> anyhow::Result<Self> {
        let file = std::path::absolute(file).with_context(|| format!("{}", file.display()))?;
        let text = std::fs::read_to_string(&file).with_context(|| format!("could not read {}", file.display()))?;
        let raw: RawConfig =
            serde_json::from_str(&text).with_context(|| format!("{} is not a valid partykit.json", file.display()))?;
        let root = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut parties = BTreeMap::new();
        if let Some(main) = raw.main {
            parties.insert("main".to_string(), root.join(main));
        }
        for (name, path) in raw.parties {
            if !partyline::party::valid_party_name(&name) {
                bail!("{}: party name {name:?} must match [a-z0-9_-]+", file.display());
            }
            if name == "main" {
                bail!("{}: party name \"main\" is taken by `main`", file.display());
            }
            parties.insert(name, root.join(path));
        }
        if parties.is_empty() {
            bail!("{}: no parties: set `main` (and optionally `parties`)", file.display());
        }
        for (name, path) in &parties {
            if !path.is_file() {
                bail!("{}: party {name}: {} does not exist", file.display(), path.display());
            }
        }
        let mut vars: BTreeMap<String, String> = raw
            .vars
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect();
        if let Ok(text) = std::fs::read_to_string(root.join(".env")) {
            vars.extend(parse_dotenv(&text));
        }
        let assets = raw.serve.map(|s| {
            let (path, single_page_app) = match s {
                Serve::Path(p) => (p, false),
                Serve::Options { path, single_page_app } => (path, single_page_app),
            };
            StaticAssets { root: root.join(path), single_page_app }
        });
        Ok(ProjectConfig { file, root, name: raw.name, parties, vars, assets })
    }
}

/// A loaded project: its parties compiled and ready to serve.
pub struct Project {
    /// Its configuration.
    pub config: ProjectConfig,
    registry: PartyRegistry,
    modules: Arc<Modules>,
}

impl Project {
    /// Loads the project of `config_file`: every party's modules are resolved, transpiled and
    /// compiled, and its static options read. A syntax or type error, or a missing module, fails
    /// here with the file and line. `limits` are the ones rooms will run with.
    pub async fn load(config_file: &Path, limits: &Limits, settings: &JsSettings) -> anyhow::Result<Project> {
        let config = ProjectConfig::read(config_file)?;
        let modules = Arc::new(Modules::new());
        let mut registry = PartyRegistry::new();
        for (name, entry) in &config.parties {
            let assets = if name == "main" { config.assets.clone() } else { None };
            let factory = load_party(name, entry.clone(), modules.clone(), limits, settings, assets)
                .await
                .map_err(|e| anyhow!("{e:#}"))?;
            registry = registry.with_factory(name, Arc::new(factory));
        }
        Ok(Project { config, registry, modules })
    }

    /// The project's parties, added to `rust` (parties written in Rust served beside them); a
    /// name in both is an error.
    pub fn registry(&self, rust: PartyRegistry) -> anyhow::Result<PartyRegistry> {
        let mut out = rust;
        for name in self.registry.names() {
            if out.get(name).is_some() {
                bail!("party {name:?} is defined by the project and registered in Rust");
            }
            let factory = self.registry.get(name).expect("listed").clone();
            out = out.with_factory(name, factory);
        }
        Ok(out)
    }

    /// Every file the project was built from (config, `.env`, modules), for reloading on change.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.config.file.clone(), self.config.root.join(".env")];
        files.extend(self.modules.files());
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_lines() {
        let vars = parse_dotenv("# c\nA=1\nexport B = \"two words\"\n\nC='x'\nbad line\n");
        assert_eq!(vars.get("A").map(String::as_str), Some("1"));
        assert_eq!(vars.get("B").map(String::as_str), Some("two words"));
        assert_eq!(vars.get("C").map(String::as_str), Some("x"));
        assert_eq!(vars.len(), 3);
    }
}
