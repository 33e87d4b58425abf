//! # partyline-js: PartyKit projects on Partyline
//!
//! Runs a PartyKit project as it is (a `partykit.json`, TypeScript or JavaScript parties, npm
//! dependencies such as `y-partykit`) on an embedded JavaScript engine, QuickJS through
//! `rquickjs`. Each JS party becomes a [`partyline::PartyFactory`] and each of its rooms a
//! [`partyline::Party`], so `partyline dev`, gateways and nodes serve JS parties exactly like Rust
//! ones, with the same guarantees: one handler at a time per room, errors to `onError` / 1011 /
//! 500, the output gate, fenced storage, hibernation, moves and failover.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use partyline_js::{JsSettings, Project};
//! let limits = partyline::Limits::default();
//! let project = Project::load("partykit.json".as_ref(), &limits, &JsSettings::default()).await?;
//! let parties = project.registry(partyline::PartyRegistry::new())?; // Rust parties may be added
//! # Ok(()) }
//! ```
//!
//! Modules:
//! - [`project`]: `partykit.json` (JSON with comments), `.env`, `build.command`, and the
//!   registry built from them.
//! - [`party`]: [`JsFactory`] (static options, `onBeforeConnect` / `onBeforeRequest` /
//!   `onFetch`, static assets) and the room type implementing `Party`.
//! - [`engine`]: a party's realm (one QuickJS runtime and context), a room's scope in it, and the
//!   event loop of a call.
//! - `host`: the natives under the prelude (storage, connections, fetch, URL, crypto).
//! - `fetch`: the outbound HTTP(S) client behind `fetch` (rustls, redirects, the allow-list).
//! - `crypto`: the natives of `crypto.subtle` (HMAC, ECDSA, Ed25519 on `ring`).
//! - `wasm`: `WebAssembly` (modules, instances, memories, globals, tables) on the `wasmi`
//!   interpreter, with `prelude/wasm.js`; its docs tell how `memory.buffer` is kept in sync.
//! - `bridge`: the names Rust and the prelude call each other by, as enums (`Hook`, `HostCall`,
//!   `RoomCall`).
//! - `prelude/*.js`: the prelude, the Web APIs, Node's `process`/`Buffer`/`global` and PartyKit's
//!   API in JavaScript: `web.js`, `node.js`, `fetch.js`, `partykit.js` and `host.js` joined into
//!   one module at build time; `wasm.js` (`WebAssembly`) and `crypto.js` (`crypto.subtle`)
//!   loaded the first time a room touches them. All of it is compiled without source text.
//! - [`cache`]: the bundles kept on disk (`.partyline/cache/`), checked against every input.
//! - [`modules`]: the prelude and the bundles as bytecode shared by every room.
//! - [`bundle`]: each party's server code and `serve.build` bundled with rolldown, source maps.
//! - [`statics`]: `serve` (static assets, the built client files, live reload).
//!
//! ## One realm per party, run on the rooms' own tasks
//!
//! The rooms of a party share one QuickJS runtime and context per process (a realm), as the
//! Durable Objects of a Workers isolate share it: the prelude and the party's bundle are
//! evaluated once, module variables are the realm's (y-partykit keeps its documents in a module
//! `Map` keyed by room id, as on Cloudflare), and each room is an instance of the party's class
//! with its own scope in the prelude (its natives, connections, results, storage order). A room
//! costs its scope and instance, a few KB of heap, where a runtime of its own cost 340 KB: the
//! atoms, shapes, intrinsics, prelude and bundle that a realm holds once (QuickJS bytecode
//! belongs to a context, so sharing bytecode means sharing the context). What sharing gives up:
//! QuickJS sets the memory limit and the garbage collector per runtime, so the heap limit is the
//! realm's (a party over it in a process has its rooms there restarted), and module state lives
//! as long as the realm. A room that stops and runs again in the same process (idle, or moved
//! away and back, its state possibly changed elsewhere meanwhile) could find what its earlier
//! run left in module variables: such a room, and the rooms started after it, get a new realm
//! ([`partyline::Room::instance`] tells runs apart; hibernation keeps the run), and the old
//! realm goes once its rooms stop.
//!
//! `rquickjs` runtimes are not `Send` unless its `parallel` feature puts each runtime behind a
//! mutex. We use `parallel`: each room actor (a tokio task) owns its party value and calls its
//! async methods, which run the JS on that same task, no thread hop. A realm runs one piece of
//! JS at a time; a room's engine takes the realm's async gate before the runtime's mutex, so a
//! room waiting for another room's code yields its thread instead of blocking it, and rooms
//! interleave at awaits. The interrupt handler checks the deadline of the room whose code runs
//! (the handler time limit); timers and host operations started by a room's code are that
//! room's. The alternative, a dedicated thread per runtime (or a pool) fed by channels, would
//! add two thread hand-offs to every message, multiply threads on a two-core box, and still need
//! the host operations (storage, other rooms) to run on tokio. Running JS on a tokio worker
//! blocks that worker while JS runs, exactly as CPU-heavy Rust party code does; the interrupt
//! handler bounds it by the handler time limit.
//!
//! Host operations a handler awaits (storage reads that miss the cache, `fetch`, calls to other
//! rooms) run as tokio tasks and report back over a channel; writes (`put`, `delete`, alarms)
//! complete at once into the room's write buffer, and the output gate holds every frame that
//! follows a write until it is durable, as for Rust parties. Timers and I/O that outlive a
//! handler run through [`partyline::Party::wakeup`]: the room runs them as an event of their own,
//! never concurrently with a handler. A socket to another room (`stub.socket()`) is read the
//! same way, one host operation per frame, so its listeners run as the room's events.
//! `storage.transaction(fn)` keeps its writes in the prelude until `fn` resolves, then puts them
//! in the write buffer in one step (one commit); it drops them if `fn` throws or rolls back.
//!
//! Handlers interleave as on a Durable Object, whose input gate is closed only around storage:
//! a call of `onMessage`, `onClose`, `onError` or `onRequest` returns to the room once its
//! handler awaits nothing but non-storage operations (`fetch`, another room, a timer, a promise
//! another event settles), and the rest of it runs through `Party::wakeup` between the room's
//! other events; a request answers later ([`partyline::web::deferred`]). So a room called back
//! by the room it calls answers. A storage operation or a `blockConcurrencyWhile` in flight keeps
//! the gate closed: the event goes on until they are done. JS still runs one piece at a time.
//!
//! ## The Web API layer: written here rather than LLRT's `llrt_modules`
//!
//! AWS LLRT's `llrt_modules` implements many Web and Node APIs for rquickjs. We weighed it and
//! wrote the surface ourselves (a JS prelude of about 2,500 lines over a few Rust natives),
//! because: it brings its own event loop and async runtime integration, which would fight the
//! room's (timers and I/O must run as room events, under the output gate and the handler time
//! limit); it pins rquickjs versions and features of its own and pulls in a large dependency tree
//! (its fetch brings a TLS stack and more), a cost in build time on this project's small CI
//! machine; and PartyKit parties need a small, well-defined subset (Request, Response, Headers,
//! URL, TextEncoder, crypto, timers, fetch) whose exact behaviour we want to control (outbound
//! `fetch` allow-list and time limit, `console` into `tracing`).

pub mod artifact;
mod bridge;
mod crypto;
pub mod engine;
mod fetch;
mod host;
pub mod modules;
pub mod party;
pub mod project;
pub mod statics;
mod wasm;

pub use host::FetchPolicy;
pub use party::{JsFactory, JsParty, JsSettings};
/// Bundling, and the build cache: the `partyline-bundle` crate.
pub use partyline_bundle::{self as bundle, cache};
pub use project::{Project, ProjectConfig, CONFIG_FILE};
