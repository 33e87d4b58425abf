//! PartyKit projects: `partykit.json` (read as PartyKit reads it: JSON with comments and
//! trailing commas), `.env`, `build.command`, the bundles of every party and of `serve.build`,
//! and the registry of parties built from them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context};
use futures::future::BoxFuture;
use partyline::sync::Lock;
use partyline::{Limits, PartyRegistry};
use serde::Deserialize;

use crate::bundle::{self, BuildOptions, ClientOptions, ServerBundle};
use crate::cache::BuildCache;
use crate::modules::Modules;
use crate::party::{load_party, FromProject, JsSettings};
use crate::statics::StaticAssets;

/// The file `partyline dev` looks for in the working directory.
pub const CONFIG_FILE: &str = "partykit.json";

/// `serve.build.entry`: one file, several, or output name to file.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Entries {
    One(String),
    Many(Vec<String>),
    Named(BTreeMap<String, String>),
}

/// `serve.build` as an object.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawClientBuild {
    entry: Option<Entries>,
    outdir: Option<String>,
    splitting: Option<bool>,
    minify: Option<bool>,
    format: Option<String>,
    sourcemap: Option<bool>,
    #[serde(default)]
    external: Vec<String>,
    #[serde(default)]
    define: BTreeMap<String, String>,
    #[serde(default)]
    loader: BTreeMap<String, String>,
    #[serde(default)]
    alias: BTreeMap<String, String>,
    #[serde(default)]
    live: bool,
}

/// `serve.build`: an entry file, or the options.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ClientBuild {
    Entry(String),
    Options(RawClientBuild),
}

/// `serve` in partykit.json: a directory, or an object with one.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Serve {
    Path(String),
    Options {
        path: Option<String>,
        #[serde(default, rename = "singlePageApp")]
        single_page_app: bool,
        build: Option<ClientBuild>,
    },
}

/// One path or several (`build.watch`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Paths {
    One(String),
    Many(Vec<String>),
}

/// `build` in partykit.json.
#[derive(Debug, Default, Deserialize)]
struct RawBuild {
    command: Option<String>,
    cwd: Option<String>,
    watch: Option<Paths>,
    #[serde(default)]
    alias: BTreeMap<String, String>,
}

/// The parts of partykit.json Partyline uses (others are accepted and ignored; README "Running
/// PartyKit projects" lists them).
#[derive(Debug, Deserialize)]
struct RawConfig {
    name: Option<String>,
    main: Option<String>,
    #[serde(default)]
    parties: BTreeMap<String, String>,
    #[serde(default)]
    vars: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    define: BTreeMap<String, String>,
    #[serde(default)]
    minify: bool,
    build: Option<RawBuild>,
    serve: Option<Serve>,
    #[serde(default)]
    crons: BTreeMap<String, String>,
}

/// `build` of partykit.json, resolved.
#[derive(Clone, Debug, Default)]
pub struct BuildCommand {
    /// The command (run with `sh -c`).
    pub command: Option<String>,
    /// Where it runs.
    pub cwd: PathBuf,
    /// Directories or files whose changes run it again (in `dev`).
    pub watch: Vec<PathBuf>,
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
    /// Variables for `room.env` as strings: partykit.json's `vars`, then `.env` over them.
    pub vars: BTreeMap<String, String>,
    /// The same with `vars` keeping their JSON types (what `room.env` shows).
    pub typed_vars: serde_json::Map<String, serde_json::Value>,
    /// `define`, `build.alias`, `minify`.
    pub build: BuildOptions,
    /// `build.command`.
    pub command: BuildCommand,
    /// Static assets.
    pub assets: Option<StaticAssets>,
    /// `serve.build`, when set.
    pub client: Option<ClientOptions>,
    /// `serve.build.live`.
    pub live: bool,
    /// `crons`: schedules of the `main` party's static `onCron`, by name.
    pub crons: Vec<partyline::CronSchedule>,
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

/// JSON with comments (`//`, `/* */`) and trailing commas, as plain JSON: comments become
/// spaces (so line and column numbers of errors stay right) and trailing commas are dropped.
pub fn strip_jsonc(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'"' {
            let start = i;
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(bytes.len());
            out.extend_from_slice(&bytes[start..i]);
        } else if b == b'/' && bytes.get(i + 1) == Some(&b'/') {
            while i < bytes.len() && bytes[i] != b'\n' {
                out.push(b' ');
                i += 1;
            }
        } else if b == b'/' && bytes.get(i + 1) == Some(&b'*') {
            let end = text[i + 2..].find("*/").map_or(bytes.len(), |e| i + 2 + e + 2);
            out.extend(bytes[i..end].iter().map(|c| if *c == b'\n' { b'\n' } else { b' ' }));
            i = end;
        } else if b == b',' {
            // A comma followed (after blanks and comments) by `}` or `]` is dropped.
            let rest = strip_jsonc(&text[i + 1..]);
            let next = rest.bytes().find(|c| !c.is_ascii_whitespace());
            out.push(if matches!(next, Some(b'}' | b']')) { b' ' } else { b',' });
            out.extend_from_slice(rest.as_bytes());
            return String::from_utf8_lossy(&out).into_owned();
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn client_options(
    root: &Path,
    serve_root: &Path,
    build: ClientBuild,
    base: &BuildOptions,
) -> anyhow::Result<(ClientOptions, bool)> {
    let raw = match build {
        ClientBuild::Entry(entry) => RawClientBuild { entry: Some(Entries::One(entry)), ..Default::default() },
        ClientBuild::Options(o) => o,
    };
    let entries: Vec<(Option<String>, PathBuf)> = match raw.entry {
        None => bail!("serve.build: `entry` is missing"),
        Some(Entries::One(e)) => vec![(None, root.join(e))],
        Some(Entries::Many(es)) => es.into_iter().map(|e| (None, root.join(e))).collect(),
        Some(Entries::Named(m)) => m.into_iter().map(|(name, e)| (Some(name), root.join(e))).collect(),
    };
    for (_, file) in &entries {
        if !file.is_file() {
            bail!("serve.build: entry {} does not exist", file.display());
        }
    }
    let format = match raw.format.as_deref() {
        None | Some("esm") => bundle::OutputFormat::Esm,
        Some("iife") => bundle::OutputFormat::Iife,
        Some("cjs") => bundle::OutputFormat::Cjs,
        Some(other) => bail!("serve.build.format: {other:?} is not one of esm, iife, cjs"),
    };
    let mut loaders = BTreeMap::new();
    for (ext, name) in raw.loader {
        let ty =
            bundle::loader(&name).ok_or_else(|| anyhow!("serve.build.loader: unknown loader {name:?} for {ext}"))?;
        loaders.insert(ext, ty);
    }
    let mut build = base.clone();
    build.define.extend(raw.define);
    build.alias.extend(raw.alias);
    build.minify = raw.minify.unwrap_or(false);
    let outdir = raw.outdir.map(|d| root.join(d)).unwrap_or_else(|| serve_root.join("dist"));
    let options = ClientOptions {
        entries,
        outdir,
        // esbuild splits only ES modules.
        splitting: raw.splitting.unwrap_or(true) && matches!(format, bundle::OutputFormat::Esm),
        format,
        sourcemap: raw.sourcemap.unwrap_or(true),
        external: raw.external,
        loaders,
        build,
        banner: None,
    };
    Ok((options, raw.live))
}

impl ProjectConfig {
    /// Reads a partykit.json.
    pub fn read(file: &Path) -> anyhow::Result<Self> {
        let file = std::path::absolute(file).with_context(|| format!("{}", file.display()))?;
        let text = std::fs::read_to_string(&file).with_context(|| format!("could not read {}", file.display()))?;
        let raw: RawConfig = serde_json::from_str(&strip_jsonc(&text))
            .with_context(|| format!("{} is not a valid partykit.json", file.display()))?;
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
        let mut typed_vars: serde_json::Map<String, serde_json::Value> = raw.vars.into_iter().collect();
        let mut vars: BTreeMap<String, String> = typed_vars
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect();
        if let Ok(text) = std::fs::read_to_string(root.join(".env")) {
            for (k, v) in parse_dotenv(&text) {
                typed_vars.insert(k.clone(), serde_json::Value::String(v.clone()));
                vars.insert(k, v);
            }
        }
        let raw_build = raw.build.unwrap_or_default();
        let build = BuildOptions { define: raw.define, alias: raw_build.alias, minify: raw.minify };
        let command = BuildCommand {
            command: raw_build.command,
            cwd: raw_build.cwd.map(|c| root.join(c)).unwrap_or_else(|| root.clone()),
            watch: match raw_build.watch {
                None => Vec::new(),
                Some(Paths::One(w)) => vec![root.join(w)],
                Some(Paths::Many(ws)) => ws.into_iter().map(|w| root.join(w)).collect(),
            },
        };
        let (mut assets, mut client, mut live) = (None, None, false);
        if let Some(serve) = raw.serve {
            let (path, single_page_app, client_build) = match serve {
                Serve::Path(p) => (Some(p), false, None),
                Serve::Options { path, single_page_app, build } => (path, single_page_app, build),
            };
            let serve_root = root.join(path.unwrap_or_else(|| "public".to_string()));
            if let Some(b) = client_build {
                let (options, l) =
                    client_options(&root, &serve_root, b, &build).with_context(|| format!("{}", file.display()))?;
                client = Some(options);
                live = l;
            }
            assets = Some(StaticAssets::new(serve_root, single_page_app));
        }
        let mut crons = Vec::new();
        for (name, definition) in raw.crons {
            if let Err(e) = partyline::cron::Schedule::parse(&definition) {
                bail!("{}: crons.{name}: {e}", file.display());
            }
            crons.push(partyline::CronSchedule { name, definition });
        }
        Ok(ProjectConfig {
            file,
            root,
            name: raw.name,
            parties,
            vars,
            typed_vars,
            build,
            command,
            assets,
            client,
            live,
            crons,
        })
    }

    /// What runs before any module of the bundle: `process.env` filled from `.env` and `vars`
    /// (as strings), as PartyKit's build injects it.
    fn env_banner(&self) -> String {
        let env = serde_json::to_string(&self.vars).expect("strings serialize");
        format!("Object.assign(globalThis.process.env, {env});\n")
    }

    /// The `define`s of a bundle: partykit.json's, with `PARTYKIT_HOST` (a string, or an
    /// expression for pages served from wherever the cluster is).
    fn defines(&self, host: Option<&str>, page: bool) -> BuildOptions {
        let mut build = self.build.clone();
        let host = match host {
            Some(h) => serde_json::to_string(h).expect("a string"),
            None if page => "location.host".to_string(),
            None => "\"\"".to_string(),
        };
        build.define.entry("PARTYKIT_HOST".to_string()).or_insert(host);
        build
    }
}

/// Files under `path` (or `path` itself), for watching.
fn files_under(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_file() {
        out.push(path.to_path_buf());
        return;
    }
    let Ok(dir) = std::fs::read_dir(path) else { return };
    for entry in dir.flatten() {
        let p = entry.path();
        if p.file_name().is_some_and(|n| n == "node_modules" || n == ".git") {
            continue;
        }
        files_under(&p, out);
    }
}

/// Runs `build.command` when it has not run in this process yet or a file under `build.watch`
/// changed since, with the `node_modules/.bin` of the project and its parent directories on
/// `PATH`, as `npm run` would.
async fn run_build_command(root: &Path, command: &BuildCommand) -> anyhow::Result<()> {
    type Stamps = Vec<(PathBuf, Option<SystemTime>)>;
    static RAN: OnceLock<Mutex<HashMap<(PathBuf, String), Stamps>>> = OnceLock::new();
    let Some(cmd) = &command.command else { return Ok(()) };
    let mut watched = Vec::new();
    for w in &command.watch {
        files_under(w, &mut watched);
    }
    let stamps: Stamps =
        watched.into_iter().map(|f| (f.clone(), std::fs::metadata(&f).and_then(|m| m.modified()).ok())).collect();
    let key = (root.to_path_buf(), cmd.clone());
    if RAN.get_or_init(Default::default).locked().get(&key) == Some(&stamps) {
        return Ok(());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths: Vec<PathBuf> =
        root.ancestors().map(|d| d.join("node_modules/.bin")).filter(|d| d.is_dir()).collect();
    paths.extend(std::env::split_paths(&path));
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(&command.cwd)
        .env("PATH", std::env::join_paths(paths)?)
        .output()
        .await
        .with_context(|| format!("build.command {cmd:?} could not start"))?;
    if !out.status.success() {
        bail!(
            "build.command {cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    RAN.get_or_init(Default::default).locked().insert(key, stamps);
    Ok(())
}

/// A loaded project: its parties bundled, compiled and ready to serve.
pub struct Project {
    /// Its configuration.
    pub config: ProjectConfig,
    registry: PartyRegistry,
    modules: Arc<Modules>,
    files: Vec<PathBuf>,
    /// Each party's bundle, for [`Project::artifact`].
    bundles: Vec<(String, ServerBundle)>,
}

impl Project {
    /// Loads the project of `config_file`: `build.command` runs, every party is bundled and
    /// compiled, `serve.build` is bundled, and each party's static options are read. A syntax or
    /// type error, or a missing module, fails here with the file and line. `limits` are the
    /// ones rooms will run with.
    ///
    /// Boxed so the bundler is compiled in this crate only, not again in every crate that
    /// awaits a load (an `async fn`'s body is compiled where it is awaited).
    #[inline(never)]
    pub fn load<'a>(
        config_file: &'a Path,
        limits: &'a Limits,
        settings: &'a JsSettings,
    ) -> BoxFuture<'a, anyhow::Result<Project>> {
        Box::pin(Self::load_unboxed(config_file, limits, settings))
    }

    async fn load_unboxed(config_file: &Path, limits: &Limits, settings: &JsSettings) -> anyhow::Result<Project> {
        let started = std::time::Instant::now();
        let mut config = ProjectConfig::read(config_file)?;
        run_build_command(&config.root, &config.command).await?;
        // Bundles are kept in the project's .partyline/cache between runs (see crate::cache).
        let cache = std::fs::read(&config.file).ok().map(|text| BuildCache::new(&config.root, &text));
        let modules = Arc::new(Modules::new());
        let mut files = vec![config.file.clone(), config.root.join(".env")];
        for w in &config.command.watch {
            files_under(w, &mut files);
        }
        let host = settings.partykit_host.as_deref();
        let client_build = config.client.as_ref().map(|c| config.defines_for_client(host, &c.build));
        if let (Some(client), Some(assets), Some(build)) =
            (config.client.as_ref(), config.assets.as_mut(), client_build)
        {
            let mut options = client.clone();
            options.build = build;
            if config.live && settings.live_reload {
                options.banner = Some(crate::statics::live_reload_script());
            }
            let built = bundle::client_cached(cache.as_ref(), &config.root, &options)
                .await
                .map_err(|e| anyhow!("serve.build: {e}"))?;
            files.extend(built.inputs.iter().cloned());
            assets.set_built(&options.outdir, built.files);
        }
        let build = config.defines(host, false);
        let banner = config.env_banner();
        let mut registry = PartyRegistry::new();
        let mut bundles = Vec::new();
        for (name, entry) in &config.parties {
            let bundle = bundle::server_cached(cache.as_ref(), &config.root, entry, &build, &banner)
                .await
                .map_err(|e| anyhow!("party {name}: {e}"))?;
            files.extend(bundle.files.iter().cloned());
            let module = modules.add_bundle(name, &bundle)?;
            let main = name == "main";
            let project = FromProject {
                assets: if main { config.assets.clone() } else { None },
                typed_vars: config.typed_vars.clone(),
                crons: if main { config.crons.clone() } else { Vec::new() },
            };
            let factory = load_party(name, module, modules.clone(), limits, settings, project)
                .await
                .map_err(|e| anyhow!("{e:#}"))?;
            registry = registry.with_factory(name, Arc::new(factory));
            bundles.push((name.clone(), bundle));
        }
        files.sort();
        files.dedup();
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "project loaded");
        crate::statics::bump_build();
        Ok(Project { config, registry, modules, files, bundles })
    }

    /// The project's parties, added to `rust` (parties written in Rust served beside them); a
    /// name in both is an error.
    pub fn registry(&self, rust: PartyRegistry) -> anyhow::Result<PartyRegistry> {
        let mut out = rust;
        for name in self.registry.names() {
            if out.get(&name).is_some() {
                bail!("party {name:?} is defined by the project and registered in Rust");
            }
            let factory = self.registry.get(&name).expect("listed");
            out = out.with_factory(&name, factory);
        }
        Ok(out)
    }

    /// The project as one file to deploy ([`crate::artifact`]): load it with
    /// [`JsSettings::default`] (no dev server) for that.
    pub fn artifact(&self) -> anyhow::Result<Vec<u8>> {
        crate::artifact::build(self, &self.bundles)
    }

    /// Every file the project was built from (config, `.env`, modules, client code,
    /// `build.watch`), for reloading on change.
    pub fn files(&self) -> Vec<PathBuf> {
        let _ = &self.modules;
        self.files.clone()
    }
}

impl ProjectConfig {
    /// The `define`s of the client bundle: the project's, `PARTYKIT_HOST`, then
    /// `serve.build.define` over them.
    fn defines_for_client(&self, host: Option<&str>, own: &BuildOptions) -> BuildOptions {
        let mut build = self.defines(host, true);
        build.define.extend(
            own.define.iter().filter(|(k, _)| !self.build.define.contains_key(*k)).map(|(k, v)| (k.clone(), v.clone())),
        );
        build.alias.extend(own.alias.clone());
        build.minify = own.minify;
        build
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

    #[test]
    fn json_with_comments_and_trailing_commas() {
        let text = "{\n  // the entry\n  \"main\": \"src/server.ts\", /* inline */\n  \"url\": \"http://x//y\",\n  \"list\": [1, 2,],\n}\n";
        let v: serde_json::Value = serde_json::from_str(&strip_jsonc(text)).unwrap();
        assert_eq!(v["main"], "src/server.ts");
        assert_eq!(v["url"], "http://x//y");
        assert_eq!(v["list"], serde_json::json!([1, 2]));
        let bad = serde_json::from_str::<serde_json::Value>(&strip_jsonc("{\n// c\n\"a\": x\n}")).unwrap_err();
        assert_eq!(bad.line(), 3);
    }
}
