//! A project's modules: resolution (oxc_resolver, with the conditions a Cloudflare worker
//! bundle uses), transpiling, and compiling each module to QuickJS bytecode once, shared by every
//! room. Rooms load modules through [`RoomLoader`].

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use oxc_resolver::{ModuleType, ResolveError, ResolveOptions, Resolver};
use partyline::sync::Lock;
use rquickjs::loader::{Bundle, ImportAttributes, Loader as QjsLoader, Resolver as QjsResolver};
use rquickjs::{Context, Ctx, Module, Runtime, WriteOptions};

use crate::bridge::{Api, Global};
use crate::transpile::{transpile, ModuleKind, Transpiled};

/// The module name of the Web API and PartyKit layer every room evaluates first.
pub const PRELUDE: &str = "partyline:prelude";

/// The prelude's source: its parts (`prelude/*.js`) joined into one module, so they share one
/// scope; their top-level code runs in this order.
pub(crate) const PRELUDE_SOURCE: &str = concat!(
    include_str!("prelude/web.js"),
    include_str!("prelude/fetch.js"),
    include_str!("prelude/partykit.js"),
    include_str!("prelude/host.js"),
);

/// Bytecode of one module, in the shape rquickjs' bundle loader takes.
type Code = &'static [(&'static str, &'static [u8])];

/// Why a module could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A syntax or type-strip error.
    #[error(transparent)]
    Syntax(#[from] crate::transpile::SyntaxError),
    /// An import that names nothing.
    #[error("{from}: cannot find module {spec:?}: {reason}")]
    Resolve {
        /// The importing file.
        from: String,
        /// The specifier.
        spec: String,
        /// Why.
        reason: String,
    },
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// QuickJS refused to compile the code.
    #[error("{path}: {message}")]
    Compile {
        /// The file.
        path: String,
        /// QuickJS's message.
        message: String,
    },
}

/// Bytecode compiled in this process, by module name and source hash: a module whose source did
/// not change is compiled once however often the project reloads. Bytecode lives for the process
/// (rquickjs loads bytecode only from `'static` data without unsafe code); only changed files add
/// to it.
fn code_cache() -> &'static Mutex<HashMap<(String, u64), Code>> {
    static CACHE: OnceLock<Mutex<HashMap<(String, u64), Code>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// A QuickJS runtime used only to compile.
struct Compiler {
    _rt: Runtime,
    ctx: Context,
}

/// QuickJS loads a module's imports when it compiles it; compiling needs only that they exist,
/// so the compiler's loader hands out empty modules (the bytecode keeps the specifiers, and each
/// room resolves them for real).
struct StubLoader;

impl QjsResolver for StubLoader {
    fn resolve<'js>(
        &mut self,
        _ctx: &Ctx<'js>,
        _base: &str,
        name: &str,
        _attributes: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<String> {
        Ok(name.to_string())
    }
}

impl QjsLoader for StubLoader {
    fn load<'js>(
        &mut self,
        ctx: &Ctx<'js>,
        name: &str,
        _attributes: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<Module<'js>> {
        Module::declare(ctx.clone(), name, "")
    }
}

fn compiler() -> &'static Mutex<Compiler> {
    static COMPILER: OnceLock<Mutex<Compiler>> = OnceLock::new();
    COMPILER.get_or_init(|| {
        let rt = Runtime::new().expect("a QuickJS runtime");
        rt.set_loader(StubLoader, StubLoader);
        let ctx = Context::full(&rt).expect("a QuickJS context");
        Mutex::new(Compiler { _rt: rt, ctx })
    })
}

/// Compiles an ES module to bytecode (cached by name and source).
fn compile(name: &str, code: &str) -> Result<Code, LoadError> {
    let hash = xxhash_rust::xxh3::xxh3_64(code.as_bytes());
    let key = (name.to_string(), hash);
    if let Some(code) = code_cache().locked().get(&key) {
        return Ok(code);
    }
    let bytes = {
        let c = compiler().locked();
        c.ctx.with(|ctx| {
            let module = Module::declare(ctx.clone(), name, code).map_err(|e| crate::engine::js_error(&ctx, e))?;
            module.write(WriteOptions::default()).map_err(|e| crate::engine::js_error(&ctx, e))
        })
    }
    .map_err(|message| LoadError::Compile { path: name.to_string(), message })?;
    let name: &'static str = Box::leak(name.to_string().into_boxed_str());
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    let code: Code = Box::leak(Box::new([(name, bytes)]));
    code_cache().locked().insert(key, code);
    Ok(code)
}

/// What a module name stands for.
#[derive(Clone)]
enum Entry {
    /// An ES module, compiled, with its static imports.
    Esm(Code, Arc<Vec<String>>),
    /// A CommonJS or JSON file, for `require`: its JavaScript source.
    Source { kind: ModuleKind, code: Arc<str> },
}

#[derive(Default)]
struct State {
    resolved: HashMap<(String, String), String>,
    modules: HashMap<String, Entry>,
    /// Every file read, for reloading on change.
    files: BTreeSet<PathBuf>,
}

/// The modules of one project (one load of it).
pub struct Modules {
    import: Resolver,
    require: Resolver,
    state: Mutex<State>,
}

impl Modules {
    /// Module resolution for a project: ES imports take the `workerd`, `worker`, `browser`,
    /// `import`, `module` and `default` export conditions (what PartyKit's bundler uses), in that
    /// package-given order; `require` takes `require` instead of `import`.
    pub fn new() -> Self {
        let options = |import: bool| ResolveOptions {
            condition_names: [
                "workerd",
                "worker",
                "browser",
                if import { "import" } else { "require" },
                "module",
                "default",
            ]
            .map(String::from)
            .to_vec(),
            extensions: [".ts", ".tsx", ".mts", ".js", ".mjs", ".cjs", ".jsx", ".json"].map(String::from).to_vec(),
            extension_alias: vec![
                (".js".into(), vec![".ts".into(), ".tsx".into(), ".js".into()]),
                (".mjs".into(), vec![".mts".into(), ".mjs".into()]),
            ],
            main_fields: if import { vec!["module".into(), "main".into()] } else { vec!["main".into()] },
            builtin_modules: true,
            module_type: true,
            ..ResolveOptions::default()
        };
        Modules {
            import: Resolver::new(options(true)),
            require: Resolver::new(options(false)),
            state: Mutex::default(),
        }
    }

    /// Every file read so far.
    pub fn files(&self) -> Vec<PathBuf> {
        self.state.locked().files.iter().cloned().collect()
    }

    fn resolve_with(&self, require: bool, from: &str, spec: &str) -> Result<(String, Option<ModuleType>), LoadError> {
        let dir = Path::new(from).parent().unwrap_or(Path::new("/"));
        let resolver = if require { &self.require } else { &self.import };
        let err = |reason: String| LoadError::Resolve { from: from.to_string(), spec: spec.to_string(), reason };
        match resolver.resolve(dir, spec) {
            Ok(r) => Ok((r.full_path().to_string_lossy().into_owned(), r.module_type())),
            Err(ResolveError::Builtin { resolved, .. }) => Err(err(format!(
                "{resolved} is a Node.js built-in module; parties run on a worker runtime without Node's modules"
            ))),
            Err(ResolveError::NotFound(_)) => {
                Err(err("no such file or package (is it installed? run npm install)".into()))
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// Resolves an `import` of `spec` from module `from` to a module name (an absolute path).
    pub fn resolve(&self, from: &str, spec: &str) -> Result<String, LoadError> {
        let key = (from.to_string(), spec.to_string());
        if let Some(name) = self.state.locked().resolved.get(&key) {
            return Ok(name.clone());
        }
        let (name, _) = self.resolve_with(false, from, spec)?;
        self.state.locked().resolved.insert(key, name.clone());
        Ok(name)
    }

    /// Resolves a `require(spec)` from a file in directory `dir`.
    pub fn resolve_require(&self, dir: &str, spec: &str) -> Result<String, LoadError> {
        let from = format!("{}/index.js", dir.trim_end_matches('/'));
        Ok(self.resolve_with(true, &from, spec)?.0)
    }

    fn read(&self, name: &str) -> Result<Transpiled, LoadError> {
        let path = Path::new(name);
        let source =
            std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: name.to_string(), source })?;
        self.state.locked().files.insert(path.to_path_buf());
        let commonjs_hint = match path.extension().and_then(|e| e.to_str()) {
            Some("cjs") => true,
            Some("js") => !package_is_module(path),
            _ => false,
        };
        Ok(transpile(path, &source, commonjs_hint)?)
    }

    /// The entry of module `name`, reading and compiling it on first use.
    fn entry(&self, name: &str) -> Result<Entry, LoadError> {
        if let Some(e) = self.state.locked().modules.get(name) {
            return Ok(e.clone());
        }
        let entry = if name == PRELUDE {
            Entry::Esm(compile(name, PRELUDE_SOURCE)?, Arc::default())
        } else {
            let t = self.read(name)?;
            match t.kind {
                ModuleKind::Esm => Entry::Esm(compile(name, &t.code)?, Arc::new(t.imports)),
                kind => Entry::Source { kind, code: Arc::from(t.code) },
            }
        };
        self.state.locked().modules.insert(name.to_string(), entry.clone());
        Ok(entry)
    }

    /// Bytecode for importing `name` as an ES module: CommonJS and JSON files get a stub that
    /// requires them and exports `module.exports` as the default export.
    fn esm(&self, name: &str) -> Result<Code, LoadError> {
        match self.entry(name)? {
            Entry::Esm(code, _) => Ok(code),
            Entry::Source { .. } => {
                let quoted = serde_json::to_string(name).expect("a string");
                let (api, require_file) = (Global::Api.name(), Api::RequireFile.name());
                let stub = format!("export default globalThis.{api}.{require_file}({quoted});\n");
                compile(name, &stub)
            }
        }
    }

    /// The source of a CommonJS or JSON file for `require`, wrapped as a function expression
    /// `(exports, require, module, __filename, __dirname) => ...`.
    pub fn commonjs(&self, name: &str) -> Result<String, LoadError> {
        match self.entry(name)? {
            Entry::Source { kind: ModuleKind::Json, code } => {
                Ok(format!("(function (exports, require, module) {{ module.exports = {code}\n}})"))
            }
            Entry::Source { code, .. } => {
                Ok(format!("(function (exports, require, module, __filename, __dirname) {{{code}\n}})"))
            }
            Entry::Esm(..) => Err(LoadError::Compile {
                path: name.to_string(),
                message: "require() of an ES module is not supported; use import".into(),
            }),
        }
    }

    /// Loads `entry` and every module it imports statically, so that errors show at start and
    /// every room then only loads bytecode.
    pub fn preload(&self, entry: &str) -> Result<(), LoadError> {
        let mut todo = vec![entry.to_string()];
        let mut seen = BTreeSet::new();
        while let Some(name) = todo.pop() {
            if !seen.insert(name.clone()) {
                continue;
            }
            self.esm(&name)?;
            if let Entry::Esm(_, imports) = self.entry(&name)? {
                for spec in imports.iter() {
                    todo.push(self.resolve(&name, spec)?);
                }
            }
        }
        Ok(())
    }
}

impl Default for Modules {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether the nearest package.json of `path` says `"type": "module"`.
fn package_is_module(path: &Path) -> bool {
    let mut dir = path.parent();
    while let Some(d) = dir {
        if let Ok(text) = std::fs::read_to_string(d.join("package.json")) {
            return serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(|t| t == "module"))
                .unwrap_or(false);
        }
        dir = d.parent();
    }
    false
}

/// The module resolver and loader of one room's runtime.
pub struct RoomLoader(pub Arc<Modules>);

fn to_js(ctx: &Ctx<'_>, e: LoadError) -> rquickjs::Error {
    let _ = ctx;
    rquickjs::Error::new_loading_message("module", e.to_string())
}

impl QjsResolver for RoomLoader {
    fn resolve<'js>(
        &mut self,
        ctx: &Ctx<'js>,
        base: &str,
        name: &str,
        _attributes: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<String> {
        if name == PRELUDE {
            return Ok(name.to_string());
        }
        self.0.resolve(base, name).map_err(|e| to_js(ctx, e))
    }
}

impl QjsLoader for RoomLoader {
    fn load<'js>(
        &mut self,
        ctx: &Ctx<'js>,
        name: &str,
        attributes: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<Module<'js>> {
        let code = self.0.esm(name).map_err(|e| to_js(ctx, e))?;
        Bundle { 0: code }.load(ctx, name, attributes)
    }
}
