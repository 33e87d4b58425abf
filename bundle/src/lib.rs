//! Bundling a project with rolldown, as PartyKit bundles it with esbuild: each party's server
//! code into one ES module for QuickJS, and `serve.build` (the page's client code) into the
//! files the page loads from `/dist/...`.
//!
//! Why rolldown: it is a real bundler (resolution with export conditions, CommonJS interop both
//! ways, JSON/text/binary loaders, tsconfig `paths`, `define`, aliases, code splitting, source
//! maps, minification) written in Rust on oxc; it is pinned to the release built on oxc 0.146
//! (`=1.2.5`), so one copy of oxc is compiled.
//!
//! What the server bundle gets, as PartyKit's build gives it:
//! - export conditions `partykit`, `workerd`, `worker`, `browser`, `import`/`require`, `module`,
//!   `default`; the `browser` field of packages;
//! - `define` from partykit.json, `PARTYKIT_HOST`, and `process.env` filled from `.env` and
//!   `vars` before any module runs (the `process`, `Buffer` and `global` shims are in the
//!   prelude, `prelude/node.js`);
//! - `build.alias`; tsconfig.json (`paths`, `jsx`) found next to the files;
//! - loaders: `.txt` and `.html` as text, `.bin` as an `ArrayBuffer`, `.wasm` (and
//!   `.wasm?module`) as a `WebAssembly.Module`, JSON;
//! - one module (dynamic imports inlined) and its source map, so an error names the TypeScript
//!   file and line ([`map_locations`]).
//!
//! This is a crate of its own so the bundler builds unoptimized in a release build (it runs once
//! per build of a project): rolldown's generic code is compiled where it is used, at the
//! optimization level of the crate that uses it. For the same reason the bundling functions
//! return boxed futures: an `async fn`'s body is compiled again in every crate that awaits it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use partyline::sync::Lock;
use rolldown::plugin::{
    HookLoadArgs, HookLoadOutput, HookLoadReturn, HookResolveIdArgs, HookResolveIdOutput, HookResolveIdReturn,
    HookUsage, Plugin, PluginContext, SharedLoadPluginContext,
};
use rolldown::CodeSplittingMode;
use rolldown::{
    Bundler, BundlerOptions, InputItem, IsExternal, Platform, RawMinifyOptions, ResolveOptions, SourceMapType,
};
/// The rolldown types in this crate's options.
pub use rolldown::{ModuleType, OutputFormat};
use rolldown_common::Output;

pub mod cache;

use crate::cache::{BuildCache, Lookup, Reader, Writer};
use futures::future::BoxFuture;

/// The export conditions of server code (what PartyKit's build passes to esbuild, plus the
/// ones a worker runtime answers to).
const SERVER_CONDITIONS: [&str; 5] = ["partykit", "workerd", "worker", "browser", "module"];

/// Why a bundle could not be built: rolldown's diagnostics (file, line, column, what is wrong).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BundleError(pub String);

/// The options of a bundle that come from partykit.json.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// Global names replaced by expressions (values are JavaScript source, as in esbuild's
    /// `define`).
    pub define: BTreeMap<String, String>,
    /// Import specifiers replaced by others (`build.alias`); relative targets are resolved from
    /// the project root.
    pub alias: BTreeMap<String, String>,
    /// Minify the output.
    pub minify: bool,
}

/// A party's server code as one ES module.
#[derive(Clone)]
pub struct ServerBundle {
    /// The module's source.
    pub code: String,
    /// Where each part of it came from.
    pub map: Arc<SourceLookup>,
    /// Every file it was built from.
    pub files: Vec<PathBuf>,
}

/// A source map reduced to what error messages need: the original file, line and column of a
/// generated position.
#[derive(Debug, Default)]
pub struct SourceLookup {
    sources: Vec<String>,
    /// (generated line, generated column, source index, original line, original column), all
    /// 0-based, sorted.
    tokens: Vec<(u32, u32, u32, u32, u32)>,
}

impl SourceLookup {
    /// The original `(file, line, column)` (1-based) of a generated 1-based position.
    pub fn original(&self, line: u32, column: u32) -> Option<(&str, u32, u32)> {
        let (line, column) = (line.checked_sub(1)?, column.saturating_sub(1));
        let i = self.tokens.partition_point(|t| (t.0, t.1) <= (line, column));
        let t = self.tokens.get(i.checked_sub(1)?)?;
        if t.0 != line {
            return None;
        }
        Some((self.sources.get(t.2 as usize)?.as_str(), t.3 + 1, t.4 + 1))
    }
}

impl ServerBundle {
    /// Writes the code and its source map (not the list of input files: they mean nothing
    /// elsewhere), as an artifact keeps them.
    pub fn encode_into(&self, w: &mut Writer) {
        write_code(w, &self.code, &self.map.sources, &self.map.tokens);
    }

    /// Reads what [`ServerBundle::encode_into`] wrote.
    pub fn decode_from(r: &mut Reader<'_>) -> Option<ServerBundle> {
        let (code, sources, tokens) = read_code(r)?;
        Some(ServerBundle { code, map: Arc::new(SourceLookup { sources, tokens }), files: Vec::new() })
    }
}

/// A source map's tokens (see [`SourceLookup`]).
type Tokens = Vec<(u32, u32, u32, u32, u32)>;

/// Writes a bundle's code and source map: the part the build cache and artifacts share.
fn write_code(w: &mut Writer, code: &str, sources: &[String], tokens: &[(u32, u32, u32, u32, u32)]) {
    w.str(code);
    w.u32(sources.len() as u32);
    for s in sources {
        w.str(s);
    }
    w.u32(tokens.len() as u32);
    for t in tokens {
        for v in [t.0, t.1, t.2, t.3, t.4] {
            w.u32(v);
        }
    }
}

/// Reads what [`write_code`] wrote.
fn read_code(r: &mut Reader<'_>) -> Option<(String, Vec<String>, Tokens)> {
    let code = r.str()?.to_string();
    let sources = (0..r.u32()?).map(|_| r.str().map(String::from)).collect::<Option<Vec<_>>>()?;
    let tokens =
        (0..r.u32()?).map(|_| Some((r.u32()?, r.u32()?, r.u32()?, r.u32()?, r.u32()?))).collect::<Option<_>>()?;
    Some((code, sources, tokens))
}

/// Source maps of the bundles compiled in this process, by module name.
fn lookups() -> &'static Mutex<HashMap<String, Arc<SourceLookup>>> {
    static MAPS: OnceLock<Mutex<HashMap<String, Arc<SourceLookup>>>> = OnceLock::new();
    MAPS.get_or_init(Default::default)
}

/// Registers the source map of the bundle loaded as module `name`.
pub fn register_map(name: &str, map: Arc<SourceLookup>) {
    lookups().locked().insert(name.to_string(), map);
}

/// Rewrites every `name:line:column` of a registered bundle in `text` (an error message or a
/// stack) to the original file, line and column.
pub fn map_locations(text: &str) -> String {
    let maps = lookups().locked();
    if maps.is_empty() {
        return text.to_string();
    }
    let mut out = text.to_string();
    for (name, map) in maps.iter() {
        let pattern = format!("{name}:");
        let mut result = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(at) = rest.find(&pattern) {
            result.push_str(&rest[..at]);
            let after = &rest[at + pattern.len()..];
            let (line, tail) = split_number(after);
            let (column, tail2) = match tail.strip_prefix(':') {
                Some(t) => split_number(t),
                None => (None, tail),
            };
            match line.and_then(|l| map.original(l, column.unwrap_or(1))) {
                Some((file, l, c)) => {
                    result.push_str(&format!("{file}:{l}:{c}"));
                    rest = if column.is_some() { tail2 } else { tail };
                }
                None => {
                    result.push_str(&pattern);
                    rest = after;
                }
            }
        }
        result.push_str(rest);
        out = result;
    }
    out
}

/// `path` with `.` and `..` resolved lexically (no file system access).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn split_number(s: &str) -> (Option<u32>, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    (s[..end].parse().ok(), &s[end..])
}

/// The Node.js built-in modules a server bundle may import (`node:buffer`, `node:process`), as
/// modules over the prelude's globals, as PartyKit's Node compatibility provides them; other
/// built-ins fail the build with a clear message.
#[derive(Debug)]
struct NodeBuiltins;

/// The prefix of the ids of [`NodeBuiltins`]' modules (`\0` keeps other plugins off them).
const BUILTIN_PREFIX: &str = "\0partyline:";

/// The source of built-in module `name` (without `node:`), if Partyline provides it.
fn builtin_source(name: &str) -> Option<&'static str> {
    Some(match name {
        "buffer" => "export const Buffer = globalThis.Buffer;\nexport default { Buffer };\n",
        "process" => {
            "const p = globalThis.process;\nexport default p;\nexport const env = p.env, nextTick = p.nextTick;\n"
        }
        _ => return None,
    })
}

impl Plugin for NodeBuiltins {
    fn name(&self) -> std::borrow::Cow<'static, str> {
        "partyline:node-builtins".into()
    }

    async fn resolve_id(&self, _ctx: &PluginContext, args: &HookResolveIdArgs<'_>) -> HookResolveIdReturn {
        let Some(name) = args.specifier.strip_prefix("node:") else { return Ok(None) };
        if builtin_source(name).is_none() {
            return Ok(None);
        }
        Ok(Some(HookResolveIdOutput::from_id(format!("{BUILTIN_PREFIX}{name}"))))
    }

    async fn load(&self, _ctx: SharedLoadPluginContext, args: &HookLoadArgs<'_>) -> HookLoadReturn {
        let Some(source) = args.id.strip_prefix(BUILTIN_PREFIX).and_then(builtin_source) else { return Ok(None) };
        Ok(Some(HookLoadOutput { code: source.into(), module_type: Some(ModuleType::Js), ..Default::default() }))
    }

    fn register_hook_usage(&self) -> HookUsage {
        HookUsage::ResolveId | HookUsage::Load
    }
}

/// Loads `.wasm` files as `WebAssembly.Module`s and `.bin` files as `ArrayBuffer`s, as
/// PartyKit's build (after Cloudflare's module rules) does. It notes the files it read (rolldown
/// lists only those it read itself), for the build cache.
#[derive(Debug, Default)]
struct BinaryModules {
    read: Mutex<Vec<PathBuf>>,
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Plugin for BinaryModules {
    fn name(&self) -> std::borrow::Cow<'static, str> {
        "partyline:binary-modules".into()
    }

    async fn load(&self, _ctx: SharedLoadPluginContext, args: &HookLoadArgs<'_>) -> HookLoadReturn {
        let path = args.id.strip_suffix("?module").unwrap_or(args.id);
        let wasm = path.ends_with(".wasm");
        if !wasm && !path.ends_with(".bin") {
            return Ok(None);
        }
        self.read.locked().push(PathBuf::from(path));
        let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        let data = format!("Uint8Array.from(atob(\"{}\"), (c) => c.charCodeAt(0))", base64(&bytes));
        let code = if wasm {
            format!("export default new WebAssembly.Module({data});\n")
        } else {
            format!("export default {data}.buffer;\n")
        };
        Ok(Some(HookLoadOutput { code: code.into(), module_type: Some(ModuleType::Js), ..Default::default() }))
    }

    fn register_hook_usage(&self) -> HookUsage {
        HookUsage::Load
    }
}

fn alias_options(root: &Path, alias: &BTreeMap<String, String>) -> Option<Vec<(String, Vec<Option<String>>)>> {
    if alias.is_empty() {
        return None;
    }
    Some(
        alias
            .iter()
            .map(|(from, to)| {
                let to = if to.starts_with("./") || to.starts_with("../") {
                    root.join(to).to_string_lossy().into_owned()
                } else {
                    to.clone()
                };
                (from.clone(), vec![Some(to)])
            })
            .collect(),
    )
}

/// Module types by extension: text for `.txt` and `.html`, then `extra`.
fn module_types(extra: &BTreeMap<String, ModuleType>) -> Vec<(String, ModuleType)> {
    let mut types: Vec<(String, ModuleType)> = [(".txt", ModuleType::Text), (".html", ModuleType::Text)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    types.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    types
}

/// Rolldown's diagnostics as one message: each with its kind, file, line and column and the
/// code around it.
fn render(diagnostics: &[rolldown_error::BuildDiagnostic], root: &Path) -> String {
    let opts = rolldown_error::DiagnosticOptions { cwd: root.to_path_buf() };
    let mut out: Vec<String> = Vec::new();
    for d in diagnostics {
        let mut text = d.to_diagnostic_with(&opts).convert_to_string(false).trim_end().to_string();
        if matches!(d.kind(), rolldown_error::EventKind::UnresolvedImport) {
            text.push_str(if text.contains("\"node:") {
                "\n  (a Node.js built-in module: parties run on a worker runtime without Node's modules)"
            } else {
                "\n  (no such file or package: is it installed? run npm install)"
            });
        }
        out.push(text);
    }
    out.join("\n")
}

/// The files of `read` worth watching for changes: the project's own (not `node_modules`).
fn watchable(read: &[PathBuf]) -> Vec<PathBuf> {
    read.iter()
        .filter(|p| p.is_absolute() && !p.components().any(|c| c.as_os_str() == "node_modules"))
        .cloned()
        .collect()
}

/// Runs rolldown: the outputs, and every file it read (`node_modules` too).
async fn run(options: BundlerOptions, server: bool) -> Result<(Vec<Output>, Vec<PathBuf>), BundleError> {
    let root = options.cwd.clone().unwrap_or_default();
    let binary = Arc::new(BinaryModules::default());
    let mut plugins: Vec<rolldown::plugin::__inner::SharedPluginable> = vec![binary.clone()];
    if server {
        plugins.push(Arc::new(NodeBuiltins));
    }
    let mut bundler = Bundler::with_plugins(options, plugins).map_err(|e| BundleError(render(&e.into_vec(), &root)))?;
    let result = bundler.generate().await;
    let mut files: Vec<PathBuf> = bundler.watch_files().iter().map(|f| PathBuf::from(f.as_str())).collect();
    files.extend(binary.read.locked().iter().cloned());
    files.sort();
    files.dedup();
    let _ = bundler.close().await;
    match result {
        Ok(out) => {
            // An import that resolves to nothing would fail in every room: fail the build.
            let unresolved: Vec<_> = out
                .warnings
                .into_iter()
                .filter(|w| matches!(w.kind(), rolldown_error::EventKind::UnresolvedImport))
                .collect();
            if !unresolved.is_empty() {
                return Err(BundleError(render(&unresolved, &root)));
            }
            Ok((out.assets, files))
        }
        Err(e) => Err(BundleError(render(&e.into_vec(), &root))),
    }
}

/// Bundles the server code of one party (`entry`) into one ES module. `banner` runs before any
/// of it (it fills `process.env`).
#[inline(never)]
pub fn server<'a>(
    root: &'a Path,
    entry: &'a Path,
    options: &'a BuildOptions,
    banner: &'a str,
) -> BoxFuture<'a, Result<ServerBundle, BundleError>> {
    Box::pin(server_unboxed(root, entry, options, banner))
}

async fn server_unboxed(
    root: &Path,
    entry: &Path,
    options: &BuildOptions,
    banner: &str,
) -> Result<ServerBundle, BundleError> {
    server_cached(None, root, entry, options, banner).await
}

/// [`server`], through the build cache: a bundle none of whose inputs changed since it was
/// stored is read back instead of built (the banner is not part of the entry: it is put before
/// the code afterwards, so `.env` and `vars` do not invalidate it).
#[inline(never)]
pub fn server_cached<'a>(
    cache: Option<&'a BuildCache>,
    root: &'a Path,
    entry: &'a Path,
    options: &'a BuildOptions,
    banner: &'a str,
) -> BoxFuture<'a, Result<ServerBundle, BundleError>> {
    Box::pin(server_cached_unboxed(cache, root, entry, options, banner))
}

async fn server_cached_unboxed(
    cache: Option<&BuildCache>,
    root: &Path,
    entry: &Path,
    options: &BuildOptions,
    banner: &str,
) -> Result<ServerBundle, BundleError> {
    let started = std::time::Instant::now();
    let mut key = Writer::default();
    key.path(root);
    key.path(entry);
    key.str(&format!("{options:?} {SERVER_CONDITIONS:?}"));
    let mut lookup = Lookup::Missing;
    if let Some(cache) = cache {
        let (l, payload) = cache.load("server", &key.0);
        lookup = l;
        if let Some(raw) = payload.as_deref().and_then(RawServer::decode) {
            tracing::debug!(entry = %entry.display(), ms = started.elapsed().as_millis() as u64, "server bundle from the build cache");
            return Ok(raw.with_banner(banner));
        }
    }
    let (raw, read) = build_server(root, entry, options).await?;
    if let Some(cache) = cache {
        cache.store("server", &key.0, &read, &raw.encode());
    }
    tracing::debug!(entry = %entry.display(), ms = started.elapsed().as_millis() as u64, cache = ?lookup, "server bundle built");
    Ok(raw.with_banner(banner))
}

/// A server bundle before its banner: what the build cache keeps.
struct RawServer {
    code: String,
    sources: Vec<String>,
    /// As [`SourceLookup::tokens`], for the code without the banner.
    tokens: Vec<(u32, u32, u32, u32, u32)>,
    files: Vec<PathBuf>,
}

impl RawServer {
    fn with_banner(self, banner: &str) -> ServerBundle {
        let banner_lines = banner.matches('\n').count() as u32;
        let mut tokens = self.tokens;
        for t in &mut tokens {
            t.0 += banner_lines;
        }
        ServerBundle {
            code: format!("{banner}{}", self.code),
            map: Arc::new(SourceLookup { sources: self.sources, tokens }),
            files: self.files,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        write_code(&mut w, &self.code, &self.sources, &self.tokens);
        w.u32(self.files.len() as u32);
        for f in &self.files {
            w.path(f);
        }
        w.0
    }

    fn decode(data: &[u8]) -> Option<RawServer> {
        let mut r = Reader(data);
        let (code, sources, tokens) = read_code(&mut r)?;
        let files = (0..r.u32()?).map(|_| r.path()).collect::<Option<Vec<_>>>()?;
        r.done().then_some(RawServer { code, sources, tokens, files })
    }
}

/// Runs rolldown on a party's server code: the bundle without banner, and every file read.
async fn build_server(
    root: &Path,
    entry: &Path,
    options: &BuildOptions,
) -> Result<(RawServer, Vec<PathBuf>), BundleError> {
    let bundler_options = BundlerOptions {
        input: Some(vec![InputItem { name: Some("party".into()), import: entry.to_string_lossy().into_owned() }]),
        cwd: Some(root.to_path_buf()),
        platform: Some(Platform::Browser),
        format: Some(OutputFormat::Esm),
        sourcemap: Some(SourceMapType::Hidden),
        code_splitting: Some(CodeSplittingMode::Bool(false)),
        // Nothing is written (the bundle stays in memory); the directory only anchors the
        // source map's paths.
        dir: Some(root.to_string_lossy().into_owned()),
        define: (!options.define.is_empty()).then(|| options.define.clone().into_iter().collect()),
        resolve: Some(ResolveOptions {
            condition_names: Some(SERVER_CONDITIONS.map(String::from).to_vec()),
            alias: alias_options(root, &options.alias),
            ..Default::default()
        }),
        module_types: Some(module_types(&BTreeMap::new()).into_iter().collect()),
        minify: Some(if options.minify { RawMinifyOptions::Bool(true) } else { RawMinifyOptions::Bool(false) }),
        ..Default::default()
    };
    let (outputs, read) = run(bundler_options, true).await?;
    let chunk = outputs
        .into_iter()
        .find_map(|o| match o {
            Output::Chunk(c) if c.is_entry => Some(c),
            _ => None,
        })
        .ok_or_else(|| BundleError(format!("{}: the bundle has no entry chunk", entry.display())))?;
    let mut lookup = SourceLookup::default();
    if let Some(map) = &chunk.map {
        // Sources are relative to the output directory (the root): name them from the root.
        lookup.sources = map
            .get_sources()
            .map(|s| {
                let p = normalize(&root.join(s));
                p.strip_prefix(root).map(|r| r.to_string_lossy().into_owned()).unwrap_or_else(|_| s.to_string())
            })
            .collect();
        lookup.tokens = map
            .get_tokens()
            .filter_map(|t| {
                Some((t.get_dst_line(), t.get_dst_col(), t.get_source_id()?, t.get_src_line(), t.get_src_col()))
            })
            .collect();
        lookup.tokens.sort_unstable();
    }
    let raw =
        RawServer { code: chunk.code.clone(), sources: lookup.sources, tokens: lookup.tokens, files: watchable(&read) };
    Ok((raw, read))
}

/// The client entry points and options of `serve.build`.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Entry points: (output name, file).
    pub entries: Vec<(Option<String>, PathBuf)>,
    /// The output directory (absolute).
    pub outdir: PathBuf,
    /// Split shared code into chunks (esbuild's `splitting`; default on).
    pub splitting: bool,
    /// `esm` (default), `iife` or `cjs`.
    pub format: OutputFormat,
    /// Emit source maps (default on).
    pub sourcemap: bool,
    /// Specifiers left to the page.
    pub external: Vec<String>,
    /// Loaders by extension (`.woff2` → `file`, ...).
    pub loaders: BTreeMap<String, ModuleType>,
    /// `define`, `alias`, `minify`.
    pub build: BuildOptions,
    /// Code put before each entry chunk (live reload).
    pub banner: Option<String>,
}

/// The output of `serve.build`: files by path relative to the output directory.
#[derive(Clone, Debug, Default)]
pub struct ClientBundle {
    /// File name (relative to the output directory, `/`-separated) to contents.
    pub files: BTreeMap<String, bytes::Bytes>,
    /// Every file it was built from.
    pub inputs: Vec<PathBuf>,
}

/// An esbuild loader name as a rolldown module type.
pub fn loader(name: &str) -> Option<ModuleType> {
    Some(match name {
        "file" => ModuleType::Asset,
        "copy" => ModuleType::Copy,
        "text" => ModuleType::Text,
        "binary" => ModuleType::Binary,
        "base64" => ModuleType::Base64,
        "dataurl" => ModuleType::Dataurl,
        "json" => ModuleType::Json,
        "js" => ModuleType::Js,
        "jsx" => ModuleType::Jsx,
        "ts" => ModuleType::Ts,
        "tsx" => ModuleType::Tsx,
        "css" => ModuleType::Css,
        "empty" => ModuleType::Empty,
        _ => return None,
    })
}

/// Bundles the client code of `serve.build`.
#[inline(never)]
pub fn client<'a>(root: &'a Path, options: &'a ClientOptions) -> BoxFuture<'a, Result<ClientBundle, BundleError>> {
    Box::pin(client_unboxed(root, options))
}

async fn client_unboxed(root: &Path, options: &ClientOptions) -> Result<ClientBundle, BundleError> {
    client_cached(None, root, options).await
}

/// [`client`], through the build cache (see [`server_cached`]; the banner is put before the
/// entry chunks afterwards).
#[inline(never)]
pub fn client_cached<'a>(
    cache: Option<&'a BuildCache>,
    root: &'a Path,
    options: &'a ClientOptions,
) -> BoxFuture<'a, Result<ClientBundle, BundleError>> {
    Box::pin(client_cached_unboxed(cache, root, options))
}

async fn client_cached_unboxed(
    cache: Option<&BuildCache>,
    root: &Path,
    options: &ClientOptions,
) -> Result<ClientBundle, BundleError> {
    let started = std::time::Instant::now();
    let mut key = Writer::default();
    key.path(root);
    key.str(&format!("{:?}", ClientOptions { banner: None, ..options.clone() }));
    let mut lookup = Lookup::Missing;
    if let Some(cache) = cache {
        let (l, payload) = cache.load("client", &key.0);
        lookup = l;
        if let Some(raw) = payload.as_deref().and_then(RawClient::decode) {
            tracing::debug!(ms = started.elapsed().as_millis() as u64, "client bundle from the build cache");
            return Ok(raw.with_banner(options.banner.as_deref()));
        }
    }
    let (raw, read) = build_client(root, options).await?;
    if let Some(cache) = cache {
        cache.store("client", &key.0, &read, &raw.encode());
    }
    tracing::debug!(ms = started.elapsed().as_millis() as u64, cache = ?lookup, "client bundle built");
    Ok(raw.with_banner(options.banner.as_deref()))
}

/// A client bundle before its banner: (file name, contents, whether an entry chunk) and the
/// files worth watching.
struct RawClient {
    files: Vec<(String, Vec<u8>, bool)>,
    inputs: Vec<PathBuf>,
}

impl RawClient {
    fn with_banner(self, banner: Option<&str>) -> ClientBundle {
        let mut files = BTreeMap::new();
        for (name, contents, entry) in self.files {
            let contents = match (entry, banner) {
                // On the first line, so the source map stays right for every other line.
                (true, Some(banner)) => [banner.as_bytes(), &contents].concat(),
                _ => contents,
            };
            files.insert(name, bytes::Bytes::from(contents));
        }
        ClientBundle { files, inputs: self.inputs }
    }

    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u32(self.files.len() as u32);
        for (name, contents, entry) in &self.files {
            w.str(name);
            w.bytes(contents);
            w.u8(u8::from(*entry));
        }
        w.u32(self.inputs.len() as u32);
        for f in &self.inputs {
            w.path(f);
        }
        w.0
    }

    fn decode(data: &[u8]) -> Option<RawClient> {
        let mut r = Reader(data);
        let files = (0..r.u32()?)
            .map(|_| Some((r.str()?.to_string(), r.bytes()?.to_vec(), r.u8()? == 1)))
            .collect::<Option<Vec<_>>>()?;
        let inputs = (0..r.u32()?).map(|_| r.path()).collect::<Option<Vec<_>>>()?;
        r.done().then_some(RawClient { files, inputs })
    }
}

/// Runs rolldown on `serve.build`: the files without banner, and every file read.
async fn build_client(root: &Path, options: &ClientOptions) -> Result<(RawClient, Vec<PathBuf>), BundleError> {
    let bundler_options = BundlerOptions {
        input: Some(
            options
                .entries
                .iter()
                .map(|(name, file)| InputItem { name: name.clone(), import: file.to_string_lossy().into_owned() })
                .collect(),
        ),
        cwd: Some(root.to_path_buf()),
        platform: Some(Platform::Browser),
        format: Some(options.format),
        sourcemap: options.sourcemap.then_some(SourceMapType::File),
        code_splitting: Some(CodeSplittingMode::Bool(options.splitting)),
        define: (!options.build.define.is_empty()).then(|| options.build.define.clone().into_iter().collect()),
        external: (!options.external.is_empty()).then(|| IsExternal::from(options.external.clone())),
        resolve: Some(ResolveOptions { alias: alias_options(root, &options.build.alias), ..Default::default() }),
        module_types: Some(module_types(&options.loaders).into_iter().collect()),
        minify: Some(RawMinifyOptions::Bool(options.build.minify)),
        dir: Some(options.outdir.to_string_lossy().into_owned()),
        ..Default::default()
    };
    let (outputs, read) = run(bundler_options, false).await?;
    let mut files = Vec::new();
    for output in outputs {
        match output {
            Output::Chunk(c) => {
                if let (Some(map), Some(name)) = (&c.map, &c.sourcemap_filename) {
                    files.push((name.clone(), map.to_json_string().into_bytes(), false));
                }
                files.push((c.filename.to_string(), c.code.clone().into_bytes(), c.is_entry));
            }
            Output::Asset(a) => {
                files.push((a.filename.to_string(), a.source.as_bytes().to_vec(), false));
            }
        }
    }
    Ok((RawClient { files, inputs: watchable(&read) }, read))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0, 97, 115, 109]), "AGFzbQ==");
    }

    #[tokio::test]
    async fn a_bundle_maps_back_to_the_typescript_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("server.ts"), "import { fail } from \"./lib/fail\";\nexport default class { onRequest(): Response { return fail(1); } }\n").unwrap();
        std::fs::create_dir_all(src.join("lib")).unwrap();
        std::fs::write(
            src.join("lib/fail.ts"),
            "type N = number;\nexport function fail(n: N): Response {\n  throw new Error(`failed ${n}`);\n}\n",
        )
        .unwrap();
        let bundle = server(dir.path(), &src.join("server.ts"), &BuildOptions::default(), "").await.unwrap();
        let (line, text) =
            bundle.code.lines().enumerate().find(|(_, l)| l.contains("throw new Error")).expect("the throw");
        let column = text.find("throw").unwrap() as u32 + 1;
        let (file, l, _) = bundle.map.original(line as u32 + 1, column).expect("a mapping");
        assert_eq!((file, l), ("src/lib/fail.ts", 3));
    }

    #[tokio::test]
    async fn a_cached_bundle_is_the_built_one() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("server.ts"), "import { n } from \"./n\";\nexport default class { onRequest(): Response { throw new Error(`n ${n}`); } }\n").unwrap();
        std::fs::write(src.join("n.ts"), "export const n: number = 1;\n").unwrap();
        let cache = BuildCache::new(dir.path(), b"{}");
        let entry = src.join("server.ts");
        let options = BuildOptions::default();
        let built = server_cached(Some(&cache), dir.path(), &entry, &options, "").await.unwrap();
        // Read back with another banner: the same code after it, the map shifted by its lines.
        let cached = server_cached(Some(&cache), dir.path(), &entry, &options, "let a;\nlet b;\n").await.unwrap();
        assert_eq!(cached.code, format!("let a;\nlet b;\n{}", built.code));
        assert_eq!(cached.files, built.files);
        let (line, text) = built.code.lines().enumerate().find(|(_, l)| l.contains("throw new Error")).unwrap();
        let column = text.find("throw").unwrap() as u32 + 1;
        assert_eq!(cached.map.original(line as u32 + 3, column), built.map.original(line as u32 + 1, column));
        assert_eq!(
            built.map.original(line as u32 + 1, column).map(|(f, l, _)| (f.to_string(), l)),
            Some(("src/server.ts".to_string(), 2))
        );
        // A changed import is rebuilt, not read back.
        std::fs::write(src.join("n.ts"), "export const n: number = 2;\n").unwrap();
        assert_eq!(cache.load("server", b"not the key").0, Lookup::Missing);
        let rebuilt = server_cached(Some(&cache), dir.path(), &entry, &options, "").await.unwrap();
        assert!(rebuilt.code.contains('2') && rebuilt.code != built.code, "{}", rebuilt.code);
    }

    #[test]
    fn paths_normalize_lexically() {
        assert_eq!(normalize(Path::new("/p/dist/../src/./a.ts")), PathBuf::from("/p/src/a.ts"));
    }

    #[test]
    fn locations_are_mapped_back() {
        let lookup = SourceLookup {
            sources: vec!["src/server.ts".into()],
            tokens: vec![(0, 0, 0, 4, 2), (2, 4, 0, 9, 0), (2, 10, 0, 9, 8)],
        };
        assert_eq!(lookup.original(3, 12), Some(("src/server.ts", 10, 9)));
        assert_eq!(lookup.original(3, 5), Some(("src/server.ts", 10, 1)));
        assert_eq!(lookup.original(2, 1), None);
        register_map("bundle:test:main", Arc::new(lookup));
        let text = "Error: boom\n    at onMessage (bundle:test:main:3:12)\n    at other (elsewhere.js:1:1)";
        assert_eq!(
            map_locations(text),
            "Error: boom\n    at onMessage (src/server.ts:10:9)\n    at other (elsewhere.js:1:1)"
        );
    }
}
