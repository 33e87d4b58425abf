//! The on-disk build cache: a project's bundles kept under `.partyline/cache/` so the next
//! `partyline dev` (or reload) skips rolldown when nothing they were built from changed.
//!
//! An entry is found by its key: a hash of what the build was asked for (the kind of bundle, the
//! bundler options, the entry points, partykit.json's content, this crate's version and the
//! running executable). It records every input the build depended on, each with a content hash,
//! and is used only if every one of them still hashes the same:
//! - every file the bundler read (the project's modules and those under `node_modules`, the
//!   tsconfig.json governing them, the `.wasm`/`.bin` files loaded as modules);
//! - the files resolution reads on the way (`package.json`, `tsconfig.json`, `jsconfig.json`)
//!   and the lockfiles of npm, yarn, pnpm and bun, in every directory above an input, present or
//!   absent (a package installed or upgraded changes them);
//! - the listing of every directory holding one of the project's own inputs (hidden names left
//!   out), so a new file that would now win resolution (`./util.ts` beside `./util.js`) is
//!   noticed.
//!
//! The entry file ends with a checksum of all of it; a truncated, corrupt or foreign file, or one
//! written by another format, is ignored and rebuilt, never trusted. Writes go to a temporary
//! file renamed into place, so a reader never sees half an entry.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::{xxh3_128, Xxh3};

/// The first bytes of every entry; a new layout gets a new magic.
const MAGIC: &[u8; 8] = b"PLBLD\x001\n";

/// Files whose content decides how imports resolve, looked for in every directory above an input.
const RESOLUTION_FILES: [&str; 8] = [
    "package.json",
    "tsconfig.json",
    "jsconfig.json",
    "package-lock.json",
    "yarn.lock",
    "pnpm-lock.yaml",
    "bun.lock",
    "bun.lockb",
];

/// A project's build cache directory.
#[derive(Clone, Debug)]
pub struct BuildCache {
    dir: PathBuf,
    /// Hashed into every key: partykit.json's content, the versions, the executable.
    salt: Vec<u8>,
}

/// One thing an entry depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Input {
    /// A file's content hash (`None`: the file did not exist).
    File(PathBuf, Option<u128>),
    /// A directory's sorted names, hashed (`None`: not a readable directory).
    Dir(PathBuf, Option<u128>),
}

fn file_hash(path: &Path) -> Option<u128> {
    std::fs::read(path).ok().map(|b| xxh3_128(&b))
}

fn dir_hash(path: &Path) -> Option<u128> {
    // Hidden names (`.partyline` itself, `.git`, an editor's swap files) resolve nothing.
    let mut names: Vec<Vec<u8>> = std::fs::read_dir(path)
        .ok()?
        .flatten()
        .map(|e| e.file_name().into_encoded_bytes())
        .filter(|n| !n.starts_with(b"."))
        .collect();
    names.sort();
    let mut h = Xxh3::new();
    for n in &names {
        h.update(&(n.len() as u64).to_le_bytes());
        h.update(n);
    }
    Some(h.digest128())
}

impl Input {
    fn current(&self) -> Input {
        match self {
            Input::File(p, _) => Input::File(p.clone(), file_hash(p)),
            Input::Dir(p, _) => Input::Dir(p.clone(), dir_hash(p)),
        }
    }
}

fn in_node_modules(p: &Path) -> bool {
    p.components().any(|c| c.as_os_str() == "node_modules")
}

/// What a build that read `files` depends on (see the module docs), hashed now.
fn inputs_of(files: &[PathBuf]) -> Vec<Input> {
    let files: BTreeSet<&PathBuf> = files.iter().filter(|p| p.is_absolute()).collect();
    let mut dirs_listed = BTreeSet::new();
    let mut ancestors = BTreeSet::new();
    for f in &files {
        if let Some(parent) = f.parent() {
            if !in_node_modules(f) {
                dirs_listed.insert(parent.to_path_buf());
            }
            for a in parent.ancestors() {
                if !ancestors.insert(a.to_path_buf()) {
                    break;
                }
            }
        }
    }
    let mut extra = BTreeSet::new();
    for a in &ancestors {
        for name in RESOLUTION_FILES {
            let p = a.join(name);
            if !files.contains(&p) {
                extra.insert(p);
            }
        }
    }
    let mut out: Vec<Input> = files.iter().map(|p| Input::File((*p).clone(), file_hash(p))).collect();
    out.extend(extra.into_iter().map(|p| {
        let h = file_hash(&p);
        Input::File(p, h)
    }));
    out.extend(dirs_listed.into_iter().map(|p| {
        let h = dir_hash(&p);
        Input::Dir(p, h)
    }));
    out
}

/// Little-endian, length-prefixed encoding of entries and their payloads.
#[derive(Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u128(&mut self, v: u128) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(&(v.len() as u64).to_le_bytes());
        self.0.extend_from_slice(v);
    }
    pub fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    pub fn path(&mut self, p: &Path) {
        self.bytes(p.as_os_str().as_encoded_bytes());
    }
    pub fn opt(&mut self, v: Option<u128>) {
        match v {
            None => self.u8(0),
            Some(h) => {
                self.u8(1);
                self.u128(h);
            }
        }
    }
}

/// Reads what [`Writer`] wrote; `None` on anything malformed.
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    pub fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    pub fn u128(&mut self) -> Option<u128> {
        Some(u128::from_le_bytes(self.take(16)?.try_into().ok()?))
    }
    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = u64::from_le_bytes(self.take(8)?.try_into().ok()?);
        self.take(usize::try_from(n).ok()?)
    }
    pub fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
    pub fn path(&mut self) -> Option<PathBuf> {
        let b = self.bytes()?;
        // Written from an `OsStr` by this program on this platform.
        Some(PathBuf::from(std::str::from_utf8(b).ok()?))
    }
    pub fn opt(&mut self) -> Option<Option<u128>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.u128()?)),
            _ => None,
        }
    }
    pub fn done(&self) -> bool {
        self.0.is_empty()
    }
}

/// How a lookup went (for logs and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// No entry for this key.
    Missing,
    /// An entry whose inputs changed since.
    Stale,
    /// An unreadable entry (truncated, corrupt, another format).
    Corrupt,
    /// An entry every input of which is unchanged.
    Hit,
}

impl BuildCache {
    /// The cache of the project in `root` (`root/.partyline/cache`); `config` is partykit.json's
    /// content, part of every key.
    pub fn new(root: &Path, config: &[u8]) -> Self {
        Self::in_dir(root.join(".partyline").join("cache"), config)
    }

    /// A cache in `dir`.
    pub fn in_dir(dir: PathBuf, config: &[u8]) -> Self {
        let mut salt = Writer::default();
        salt.str(env!("CARGO_PKG_VERSION"));
        salt.str("rolldown 1.2.5");
        salt.bytes(config);
        // A rebuilt partyline may bundle differently under the same version.
        if let Some(meta) = std::env::current_exe().ok().and_then(|e| std::fs::metadata(e).ok()) {
            salt.bytes(format!("{:?} {}", meta.modified().ok(), meta.len()).as_bytes());
        }
        BuildCache { dir, salt: salt.0 }
    }

    /// The directory entries are kept in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry_path(&self, kind: &str, key: &[u8]) -> (PathBuf, u128) {
        let mut h = Xxh3::new();
        h.update(&self.salt);
        h.update(kind.as_bytes());
        h.update(&[0]);
        h.update(key);
        let hash = h.digest128();
        (self.dir.join(format!("{kind}-{hash:032x}")), hash)
    }

    /// The payload stored for `(kind, key)` if every input it was built from is unchanged.
    pub fn load(&self, kind: &str, key: &[u8]) -> (Lookup, Option<Vec<u8>>) {
        let (path, hash) = self.entry_path(kind, key);
        let Ok(data) = std::fs::read(&path) else { return (Lookup::Missing, None) };
        let Some((inputs, payload)) = parse_entry(&data, hash) else { return (Lookup::Corrupt, None) };
        if inputs.iter().any(|i| i.current() != *i) {
            return (Lookup::Stale, None);
        }
        (Lookup::Hit, Some(payload.to_vec()))
    }

    /// Stores `payload` for `(kind, key)`, built from `files` (every file the build read). A
    /// failure to write is logged and otherwise ignored: the cache is only an optimisation.
    pub fn store(&self, kind: &str, key: &[u8], files: &[PathBuf], payload: &[u8]) {
        let (path, hash) = self.entry_path(kind, key);
        let inputs = inputs_of(files);
        let mut w = Writer::default();
        w.0.extend_from_slice(MAGIC);
        w.u128(hash);
        w.u32(inputs.len() as u32);
        for i in &inputs {
            let (tag, p, h) = match i {
                Input::File(p, h) => (0, p, h),
                Input::Dir(p, h) => (1, p, h),
            };
            w.u8(tag);
            w.path(p);
            w.opt(*h);
        }
        w.bytes(payload);
        let sum = xxh3_128(&w.0);
        w.u128(sum);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let tmp = self.dir.join(format!(
                ".{}.{}.tmp",
                path.file_name().unwrap_or_default().display(),
                std::process::id()
            ));
            std::fs::write(&tmp, &w.0)?;
            std::fs::rename(&tmp, &path).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
        };
        if let Err(e) = write() {
            tracing::debug!(path = %path.display(), error = %e, "could not write the build cache");
        }
    }
}

/// The inputs and payload of an entry, if it is whole, of this format and for key `hash`.
fn parse_entry(data: &[u8], hash: u128) -> Option<(Vec<Input>, &[u8])> {
    let body_len = data.len().checked_sub(16)?;
    let (body, sum) = data.split_at(body_len);
    if xxh3_128(body) != u128::from_le_bytes(sum.try_into().ok()?) {
        return None;
    }
    let mut r = Reader(body);
    if r.take(MAGIC.len())? != MAGIC || r.u128()? != hash {
        return None;
    }
    let n = r.u32()?;
    let mut inputs = Vec::new();
    for _ in 0..n {
        let tag = r.u8()?;
        let p = r.path()?;
        let h = r.opt()?;
        inputs.push(match tag {
            0 => Input::File(p, h),
            1 => Input::Dir(p, h),
            _ => return None,
        });
    }
    let payload = r.bytes()?;
    r.done().then_some((inputs, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, BuildCache, Vec<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a.ts"), "export const a = 1;").unwrap();
        std::fs::write(src.join("b.ts"), "export const b = 2;").unwrap();
        // An input in the project root: the cache's own directory appearing there is no change.
        std::fs::write(dir.path().join("tsconfig.json"), "{}").unwrap();
        let cache = BuildCache::new(dir.path(), b"{\"main\":\"src/a.ts\"}");
        let files = vec![src.join("a.ts"), src.join("b.ts"), dir.path().join("tsconfig.json")];
        (dir, cache, files)
    }

    #[test]
    fn an_unchanged_build_hits() {
        let (_dir, cache, files) = setup();
        assert_eq!(cache.load("server", b"k").0, Lookup::Missing);
        cache.store("server", b"k", &files, b"payload");
        assert_eq!(cache.load("server", b"k"), (Lookup::Hit, Some(b"payload".to_vec())));
        // Another key or another config is another entry.
        assert_eq!(cache.load("server", b"other").0, Lookup::Missing);
        let other = BuildCache::new(cache.dir().parent().unwrap().parent().unwrap(), b"{}");
        assert_eq!(other.load("server", b"k").0, Lookup::Missing);
    }

    #[test]
    fn a_changed_input_is_stale() {
        let (dir, cache, files) = setup();
        cache.store("server", b"k", &files, b"payload");
        std::fs::write(&files[1], "export const b = 3;").unwrap();
        assert_eq!(cache.load("server", b"k").0, Lookup::Stale);
        // Rebuilt and stored again: a hit.
        cache.store("server", b"k", &files, b"payload 2");
        assert_eq!(cache.load("server", b"k"), (Lookup::Hit, Some(b"payload 2".to_vec())));
        // A new file beside the inputs may change resolution.
        std::fs::write(dir.path().join("src/b.js"), "").unwrap();
        assert_eq!(cache.load("server", b"k").0, Lookup::Stale);
        cache.store("server", b"k", &files, b"payload 3");
        // A package.json or lockfile above the inputs appearing or changing.
        std::fs::write(dir.path().join("package-lock.json"), "{}").unwrap();
        assert_eq!(cache.load("server", b"k").0, Lookup::Stale);
        cache.store("server", b"k", &files, b"payload 4");
        // A deleted input.
        std::fs::remove_file(&files[0]).unwrap();
        assert_eq!(cache.load("server", b"k").0, Lookup::Stale);
    }

    #[test]
    fn a_corrupt_entry_is_never_trusted() {
        let (_dir, cache, files) = setup();
        cache.store("server", b"k", &files, b"payload");
        let entry = std::fs::read_dir(cache.dir()).unwrap().flatten().map(|e| e.path()).next().unwrap();
        let good = std::fs::read(&entry).unwrap();
        // Every flipped byte and every truncation is caught by the checksum or the parser.
        for i in (0..good.len()).step_by(7) {
            let mut bad = good.clone();
            bad[i] ^= 0x55;
            std::fs::write(&entry, &bad).unwrap();
            assert_eq!(cache.load("server", b"k"), (Lookup::Corrupt, None), "flipped byte {i}");
        }
        for n in [0, 1, 8, good.len() / 2, good.len() - 1] {
            std::fs::write(&entry, &good[..n]).unwrap();
            assert_eq!(cache.load("server", b"k"), (Lookup::Corrupt, None), "truncated to {n}");
        }
        // An entry copied under another key's name is refused too.
        let (other, _) = cache.entry_path("server", b"other");
        std::fs::write(&other, &good).unwrap();
        assert_eq!(cache.load("server", b"other").0, Lookup::Corrupt);
        std::fs::write(&entry, &good).unwrap();
        assert_eq!(cache.load("server", b"k").0, Lookup::Hit);
    }
}
