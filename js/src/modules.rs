//! A project's modules as rooms load them: the prelude and one bundle per party (built by
//! [`crate::bundle`]), each compiled to QuickJS bytecode once and shared by every room. Rooms
//! load modules through [`RoomLoader`]; nothing is resolved or read from disk at run time.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use partyline::sync::Lock;
use rquickjs::loader::{Bundle, ImportAttributes, Loader as QjsLoader, Resolver as QjsResolver};
use rquickjs::{Context, Ctx, Module, Runtime, WriteOptions};

use crate::bundle::ServerBundle;

/// The module name of the Web API and PartyKit layer every room evaluates first.
pub const PRELUDE: &str = "partyline:prelude";

/// The prelude's source: its parts (`prelude/*.js`) joined into one module, so they share one
/// scope; their top-level code runs in this order. The parts of [`LAZY_PARTS`] are modules of
/// their own, loaded in a room when first used.
const EAGER_SOURCE: &str = concat!(
    include_str!("prelude/web.js"),
    include_str!("prelude/node.js"),
    include_str!("prelude/fetch.js"),
    include_str!("prelude/partykit.js"),
    include_str!("prelude/host.js"),
);

/// Parts of the prelude most rooms never use, each a module whose default export builds it
/// (`globalThis.__partyline_part(name)` returns it; the prelude defines the globals they make
/// as accessors that load them). What they cost a room (their bytecode read, their classes and
/// functions created) is paid on first use only.
const LAZY_PARTS: [(&str, &str); 2] = [
    (
        "partyline:prelude/wasm",
        concat!(
            "export default function wasmPart(N, asBytes) {\n",
            include_str!("prelude/wasm.js"),
            "\nreturn globalThis.WebAssembly;\n}\n"
        ),
    ),
    (
        "partyline:prelude/crypto",
        concat!(
            "export default function cryptoPart(N, asBytes, toLatin1) {\n",
            include_str!("prelude/crypto.js"),
            "\nreturn { CryptoKey, subtle };\n}\n"
        ),
    ),
];

/// The whole prelude's text, eager and lazy parts (what the checks of the names the prelude
/// and the host call each other by read).
#[cfg(test)]
pub(crate) const PRELUDE_SOURCE: &str = concat!(
    include_str!("prelude/web.js"),
    include_str!("prelude/node.js"),
    include_str!("prelude/fetch.js"),
    include_str!("prelude/partykit.js"),
    include_str!("prelude/host.js"),
    include_str!("prelude/wasm.js"),
    include_str!("prelude/crypto.js"),
);

/// Bytecode of the lazy part `name` of the prelude.
pub(crate) fn lazy_part(name: &str) -> Option<Result<Code, LoadError>> {
    LAZY_PARTS.iter().find(|(n, _)| *n == name).map(|(n, source)| compile(n, source))
}

/// Bytecode of one module, in the shape rquickjs' bundle loader takes.
pub(crate) type Code = &'static [(&'static str, &'static [u8])];

/// Why a module could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A module that is neither the prelude nor a party's bundle.
    #[error("cannot import {0:?} at run time: imports are bundled when the project loads")]
    Unknown(String),
    /// QuickJS refused to compile the code.
    #[error("{path}: {message}")]
    Compile {
        /// The module.
        path: String,
        /// QuickJS's message.
        message: String,
    },
}

/// Bytecode compiled in this process, by module name and source hash: a module whose source did
/// not change is compiled once however often the project reloads. Bytecode lives for the process
/// (rquickjs loads bytecode only from `'static` data without unsafe code); only changed bundles
/// add to it.
fn code_cache() -> &'static Mutex<HashMap<(String, u64), Code>> {
    static CACHE: OnceLock<Mutex<HashMap<(String, u64), Code>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// A QuickJS runtime used only to compile.
struct Compiler {
    _rt: Runtime,
    ctx: Context,
}

/// A bundle imports nothing but what QuickJS provides; compiling needs only that imports exist,
/// so the compiler's loader hands out empty modules (each room resolves them for real).
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
            // The prelude's functions keep no source text and no line tables (every room would
            // hold a copy of them, for `Function.prototype.toString` and the line numbers of the
            // prelude's own stack frames only); a party's keep theirs, as on PartyKit.
            let prelude = name == PRELUDE || LAZY_PARTS.iter().any(|(n, _)| *n == name);
            let options = WriteOptions { strip_source: prelude, strip_debug: prelude, ..WriteOptions::default() };
            module.write(options).map_err(|e| crate::engine::js_error(&ctx, e))
        })
    }
    .map_err(|message| LoadError::Compile { path: name.to_string(), message })?;
    let name: &'static str = Box::leak(name.to_string().into_boxed_str());
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    let code: Code = Box::leak(Box::new([(name, bytes)]));
    code_cache().locked().insert(key, code);
    Ok(code)
}

/// The modules of one project (one load of it).
#[derive(Default)]
pub struct Modules {
    bundles: Mutex<HashMap<String, Code>>,
}

impl Modules {
    /// No modules yet but the prelude.
    pub fn new() -> Self {
        Self::default()
    }

    /// Compiles the bundle of party `party` and returns the module name rooms import it by. The
    /// name carries the bundle's hash, so error locations map back through the right source map
    /// (see [`crate::bundle::map_locations`]).
    pub fn add_bundle(&self, party: &str, bundle: &ServerBundle) -> Result<String, LoadError> {
        let hash = xxhash_rust::xxh3::xxh3_64(bundle.code.as_bytes());
        let name = format!("bundle:{hash:016x}:{party}");
        crate::bundle::register_map(&name, bundle.map.clone());
        let code = compile(&name, &bundle.code)?;
        self.bundles.locked().insert(name.clone(), code);
        Ok(name)
    }

    /// Bytecode of module `name`.
    fn code(&self, name: &str) -> Result<Code, LoadError> {
        if name == PRELUDE {
            return compile(name, EAGER_SOURCE);
        }
        self.bundles.locked().get(name).copied().ok_or_else(|| LoadError::Unknown(name.to_string()))
    }

    fn known(&self, name: &str) -> bool {
        name == PRELUDE || self.bundles.locked().contains_key(name)
    }
}

/// The module resolver and loader of one room's runtime.
pub struct RoomLoader(pub std::sync::Arc<Modules>);

fn to_js(e: LoadError) -> rquickjs::Error {
    rquickjs::Error::new_loading_message("module", e.to_string())
}

impl QjsResolver for RoomLoader {
    fn resolve<'js>(
        &mut self,
        _ctx: &Ctx<'js>,
        _base: &str,
        name: &str,
        _attributes: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<String> {
        if self.0.known(name) {
            Ok(name.to_string())
        } else {
            Err(to_js(LoadError::Unknown(name.to_string())))
        }
    }
}

impl QjsLoader for RoomLoader {
    fn load<'js>(
        &mut self,
        ctx: &Ctx<'js>,
        name: &str,
        attributes: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<Module<'js>> {
        let code = self.0.code(name).map_err(to_js)?;
        Bundle { 0: code }.load(ctx, name, attributes)
    }
}
