//! The names Rust and the JS prelude (`js/src/prelude/`) meet by, each written once here: the
//! globals they share ([`Global`]), the prelude's entry points the host calls ([`Api`]), the
//! handlers a call dispatches to ([`Hook`]) and the natives the prelude calls: the realm's
//! ([`HostCall`]) and a room's ([`RoomCall`]).
//! Rust code uses the enums, so a misspelt name does not compile; the tests here check that the
//! prelude uses exactly the same names.

/// An enum of names, with the name each variant has on the JS side.
macro_rules! js_names {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $js:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every variant.
            #[cfg(test)]
            pub(crate) const ALL: &[$name] = &[$($name::$variant),*];

            /// The name on the JS side.
            pub(crate) const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $js,)*
                }
            }
        }
    };
}

js_names! {
    /// Globals the host and the prelude share.
    Global {
        /// The prelude's entry points ([`Api`]), set by the prelude.
        Api = "__partyline",
        /// The natives ([`HostCall`]), set by the host and taken off by the prelude.
        Natives = "__partyline_native",
        /// The party module's namespace, set by the host and taken off by `load`.
        Module = "__partyline_module",
    }
}

js_names! {
    /// The prelude's entry points, on `globalThis.__partyline`.
    Api {
        /// `load()`: the party module loaded (its namespace is [`Global::Module`]).
        Load = "load",
        /// `newScope(R)`: a room's scope, with its natives ([`RoomCall`]).
        NewScope = "newScope",
        /// `dispatch(scope, id, hook, a, b, c)`: starts call `id` of a [`Hook`] in a scope.
        Dispatch = "dispatch",
        /// `take(scope, id)`: the result of call `id` of the scope, once it settled.
        Take = "take",
        /// `complete(op, ok, value)`: a host operation finished.
        Complete = "complete",
        /// `timers(ids)`: timers are due.
        Timers = "timers",
        /// `rejection(promise, reason, handled)`: a promise was rejected with no handler, or got
        /// one later (the runtime's rejection tracker).
        Rejection = "rejection",
        /// `rejections()`: the texts of the rejections still unhandled, which it forgets.
        Rejections = "rejections",
        /// `forget(scope, timers, ops)`: a scope was dropped; its timers and host operations go.
        Forget = "forget",
        /// `cancel(timers)`: timers cancelled by the host (those a stopped call set) go.
        Cancel = "cancel",
    }
}

js_names! {
    /// Calls from the host into the prelude: the handlers `dispatch` runs.
    Hook {
        /// Creates the room's party instance from the module's default export.
        Init = "init",
        /// `onStart`.
        Start = "start",
        /// `getConnectionTags`.
        Tags = "tags",
        /// `onConnect`.
        Connect = "connect",
        /// `onMessage` (and `message` listeners).
        Message = "message",
        /// `onClose` (and `close` listeners).
        Close = "close",
        /// `onError` (and `error` listeners).
        Error = "error",
        /// `onRequest`.
        Request = "request",
        /// `onAlarm`.
        Alarm = "alarm",
        /// Reads the static options and which static hooks the module has.
        HooksInit = "hooksInit",
        /// The static `onBeforeConnect`.
        BeforeConnect = "beforeConnect",
        /// The static `onBeforeRequest`.
        BeforeRequest = "beforeRequest",
        /// The static `onFetch`.
        Fetch = "fetch",
        /// The static `onSocket`.
        Socket = "socket",
        /// The static `onCron`.
        Cron = "cron",
    }
}

js_names! {
    /// Calls from the prelude into the host: the realm's natives on
    /// `globalThis.__partyline_native` (installed by `host::install`), which the prelude calls
    /// as `N.<name>`.
    HostCall {
        /// `log(level, text)`: `console` into `tracing`.
        Log = "log",
        /// `now()`: milliseconds since the process's time origin.
        Now = "now",
        /// `setTimer(id, ms)`.
        SetTimer = "setTimer",
        /// `clearTimer(id)`.
        ClearTimer = "clearTimer",
        /// `utf8Encode(text)`: an ArrayBuffer.
        Utf8Encode = "utf8Encode",
        /// `utf8Decode(latin1, fatal)`.
        Utf8Decode = "utf8Decode",
        /// `randomBytes(n)`.
        RandomBytes = "randomBytes",
        /// `uuid()`: a random UUID.
        Uuid = "uuid",
        /// `digest(alg, latin1)`.
        Digest = "digest",
        /// `parseUrl(input, base)`: the parts of a URL, or null.
        ParseUrl = "parseUrl",
        /// `setUrl(href, part, value)`: the parts of a URL with one part changed.
        SetUrl = "setUrl",
        /// `fetch(request)`: an outbound HTTP request (a host operation).
        Fetch = "fetch",
        /// `wasmCompile(base64)`: a module id, or a `CompileError` (js/src/wasm.rs).
        WasmCompile = "wasmCompile",
        /// `wasmValidate(base64)`: whether the bytes are a valid module.
        WasmValidate = "wasmValidate",
        /// `wasmModuleInfo(module)`: `[imports, exports]` with their types.
        WasmModuleInfo = "wasmModuleInfo",
        /// `wasmInstantiate(module, imports, io)`: the exports as `[name, id, type]`.
        WasmInstantiate = "wasmInstantiate",
        /// `wasmCall(func, args, io)`: the results of a wasm function.
        WasmCall = "wasmCall",
        /// `wasmMemoryNew(initial, maximum)`: a memory id.
        WasmMemoryNew = "wasmMemoryNew",
        /// `wasmMemoryBuffer(memory)`: an ArrayBuffer with a copy of the memory.
        WasmMemoryBuffer = "wasmMemoryBuffer",
        /// `wasmMemoryWrite(memory, base64)`: copies a buffer into the memory.
        WasmMemoryWrite = "wasmMemoryWrite",
        /// `wasmMemoryGrow(memory, pages)`: the old size in pages.
        WasmMemoryGrow = "wasmMemoryGrow",
        /// `wasmDetach(buffer)`: detaches an ArrayBuffer.
        WasmDetach = "wasmDetach",
        /// `wasmGlobal(op, a, b, c)`: `WebAssembly.Global` operations.
        WasmGlobal = "wasmGlobal",
        /// `wasmTable(op, a, b, c)`: `WebAssembly.Table` operations.
        WasmTable = "wasmTable",
        /// `cryptoSign(alg, curve, hash, key, public, data)`: a signature (js/src/crypto.rs).
        CryptoSign = "cryptoSign",
        /// `cryptoVerify(alg, curve, hash, key, signature, data)`: whether it verifies.
        CryptoVerify = "cryptoVerify",
        /// `cryptoKey(op, alg, curve, a, b)`: key generation, checks and DER forms.
        CryptoKey = "cryptoKey",
    }
}

js_names! {
    /// A room's natives (installed by `host::room_natives` for each scope), which the prelude
    /// calls as `s.R.<name>` (or `this._s.R.<name>`).
    RoomCall {
        /// `storageGet(keys)`.
        StorageGet = "storageGet",
        /// `storagePut(entries)`.
        StoragePut = "storagePut",
        /// `storageDelete(keys)`.
        StorageDelete = "storageDelete",
        /// `storageDeleteAll()`.
        StorageDeleteAll = "storageDeleteAll",
        /// `storageList(start, startAfter, end, prefix, reverse, limit)`.
        StorageList = "storageList",
        /// `getAlarm()`.
        GetAlarm = "getAlarm",
        /// `setAlarm(ms)`.
        SetAlarm = "setAlarm",
        /// `deleteAlarm()`.
        DeleteAlarm = "deleteAlarm",
        /// `storageSync()`.
        StorageSync = "storageSync",
        /// `connUri(id)`.
        ConnUri = "connUri",
        /// `connTags(id)`.
        ConnTags = "connTags",
        /// `connState(id)`: the connection's state as JSON text.
        ConnState = "connState",
        /// `setConnState(id, json)`.
        SetConnState = "setConnState",
        /// `connList(tag)`: `[id, uri]` of the room's connections.
        ConnList = "connList",
        /// `send(id, data, binary)`.
        Send = "send",
        /// `close(id, code, reason)`.
        Close = "close",
        /// `broadcast(data, binary, without)`.
        Broadcast = "broadcast",
        /// `partyFetch(party, room, request)`: a request to another room (a host operation).
        PartyFetch = "partyFetch",
        /// `partySocket(party, room, id, request)`: a socket to another room, as client `id`
        /// (a host operation; its result is the socket's number).
        PartySocket = "partySocket",
        /// `socketRecv(socket)`: the socket's next event, `[0, text]`, `[1, ArrayBuffer]` or
        /// `[2, code, reason]` (the close, the last one), a host operation.
        SocketRecv = "socketRecv",
        /// `socketSend(socket, data, binary)`.
        SocketSend = "socketSend",
        /// `socketClose(socket, code, reason)`: closes it (if still open) and forgets it.
        SocketClose = "socketClose",
        /// `blockBegin()`: a `blockConcurrencyWhile` starts; its token.
        BlockBegin = "blockBegin",
        /// `blockEnd(token)`: it settled.
        BlockEnd = "blockEnd",
        /// `settled()`: a result of the scope's calls settled.
        Settled = "settled",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use rquickjs::{Context, Function, Object, Runtime};

    use super::*;
    use crate::modules::{Modules, PRELUDE_SOURCE};

    fn names<T: Copy>(all: &[T], name: fn(T) -> &'static str) -> BTreeSet<String> {
        all.iter().map(|&v| name(v).to_string()).collect()
    }

    fn is_ident(c: char) -> bool {
        c.is_ascii_alphanumeric() || c == '_' || c == '$'
    }

    /// The keys at the first level of the object literal that starts with `start` (two spaces of
    /// indentation, as the prelude writes them): `key(`, `async key(`, `key,` or `key:`.
    fn object_keys(start: &str) -> BTreeSet<String> {
        let from = PRELUDE_SOURCE.find(start).unwrap_or_else(|| panic!("the prelude has no {start:?}"));
        let body = &PRELUDE_SOURCE[from + start.len()..];
        let body = &body[..body.find("\n};").expect("the object ends")];
        body.lines()
            .filter_map(|line| line.strip_prefix("  "))
            .filter(|line| !line.starts_with(' ') && !line.starts_with("//"))
            .map(|line| line.strip_prefix("async ").unwrap_or(line))
            .filter_map(|line| {
                let end = line.find(|c: char| !is_ident(c))?;
                line[end..].starts_with(['(', ',', ':']).then(|| line[..end].to_string())
            })
            .collect()
    }

    /// The names called on `object` (`N` or `R`) in the prelude.
    fn called_on(object: char) -> BTreeSet<String> {
        let mut used = BTreeSet::new();
        let mut prev = ' ';
        for (i, c) in PRELUDE_SOURCE.char_indices() {
            if c == object && !is_ident(prev) && PRELUDE_SOURCE[i + 1..].starts_with('.') {
                let rest = &PRELUDE_SOURCE[i + 2..];
                let end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
                used.insert(rest[..end].to_string());
            }
            prev = c;
        }
        used
    }

    #[test]
    fn the_prelude_calls_the_natives_by_their_names() {
        assert_eq!(called_on('N'), names(HostCall::ALL, HostCall::name));
        assert_eq!(called_on('R'), names(RoomCall::ALL, RoomCall::name));
    }

    #[test]
    fn the_prelude_has_a_handler_per_hook() {
        assert_eq!(object_keys("\nconst handlers = {\n"), names(Hook::ALL, Hook::name));
    }

    #[test]
    fn the_prelude_has_the_entry_points() {
        let start = format!("\nglobalThis.{} = {{\n", Global::Api.name());
        assert_eq!(object_keys(&start), names(Api::ALL, Api::name));
    }

    #[test]
    fn the_prelude_uses_the_globals() {
        for global in Global::ALL {
            assert!(PRELUDE_SOURCE.contains(&format!("globalThis.{}", global.name())), "{global:?}");
        }
    }

    /// Loads a party (which runs `hooksInit` through the prelude) and checks that the host
    /// installs every native.
    #[tokio::test]
    async fn the_host_installs_every_native() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let entry = dir.path().join("party.js");
        std::fs::write(&entry, "export default class Party { static options = { hibernate: true }; }\n")
            .expect("writing the party");
        let bundle =
            crate::bundle::server(dir.path(), &entry, &Default::default(), "").await.expect("the party bundles");
        let modules = Arc::new(Modules::new());
        let module = modules.add_bundle("main", &bundle).expect("the bundle compiles");
        let factory = crate::party::load_party(
            "main",
            module,
            modules,
            &partyline::Limits::default(),
            &crate::JsSettings::default(),
            Default::default(),
        )
        .await
        .expect("the party loads");
        assert!(factory.def.hooks.hibernate);
        let host = factory.def.hook_engine.take().expect("the hook engine").host().clone();
        let rt = Runtime::new().expect("a runtime");
        let ctx = Context::full(&rt).expect("a context");
        ctx.with(|ctx| {
            crate::host::install(&ctx, host.shared.clone()).expect("the natives install");
            let natives: Object = ctx.globals().get(Global::Natives.name()).expect("the natives");
            for call in HostCall::ALL {
                assert!(natives.get::<_, Function>(call.name()).is_ok(), "{call:?} is not installed");
            }
            let natives = crate::host::room_natives(&ctx, &host).expect("a room's natives install");
            for call in RoomCall::ALL {
                assert!(natives.get::<_, Function>(call.name()).is_ok(), "{call:?} is not installed");
            }
        });
    }
}
