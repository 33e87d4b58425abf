//! A PartyKit project built into one file (`partyline build`), and loaded back from it by the
//! processes of a cluster (`partyline deploy`).
//!
//! An artifact holds what serving the project takes and nothing to build at run time: each
//! party's bundled server code with its source map (errors still name the TypeScript file and
//! line), `vars` (with their JSON types) and `crons`, and the static files of `serve` with the
//! output of `serve.build`. A JSON manifest says what is inside (project name and version, the
//! parties, the content hash). The layout:
//!
//! ```text
//! "PARTYLINE ARTIFACT\r\n"  u64 length + manifest (JSON)  u64 length + payload
//! ```
//!
//! The manifest's `hash` is the SHA-256 of the payload: a truncated or altered file fails to
//! open, whole. Authenticity is another matter: a deployed artifact is signed with the cluster
//! secret ([`sign`], [`verify`]) over its version number and content hash, so a process that can
//! write to Redis but does not know the secret cannot make nodes run its code.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use futures::future::BoxFuture;
use partyline::{CronSchedule, Limits, PartyRegistry};
use serde::{Deserialize, Serialize};

use crate::bundle::ServerBundle;
use crate::cache::{Reader, Writer};
use crate::modules::Modules;
use crate::party::{load_party, FromProject, JsSettings};
use crate::statics::StaticAssets;

/// The first bytes of every artifact.
const MAGIC: &[u8] = b"PARTYLINE ARTIFACT\r\n";

/// The layout version this build writes and reads.
pub const FORMAT: u32 = 1;

/// What an artifact holds, readable without loading it (`partyline deploy --list`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The layout version ([`FORMAT`]).
    pub format: u32,
    /// partykit.json's `name`.
    pub name: Option<String>,
    /// The project's own version (`version` of its package.json), when it has one.
    pub version: Option<String>,
    /// `sha256:` and the hex SHA-256 of the payload.
    pub hash: String,
    /// When it was built (milliseconds since the Unix epoch).
    pub built_at_ms: u64,
    /// The Partyline version that built it.
    pub built_by: String,
    /// The parties, by name.
    pub parties: Vec<String>,
    /// The names of `vars` (values are inside).
    pub vars: Vec<String>,
    /// `crons`: name to expression.
    pub crons: BTreeMap<String, String>,
    /// Static files (from `serve.path` and `serve.build`).
    pub files: usize,
    /// `serve.singlePageApp`.
    pub single_page_app: bool,
}

/// An artifact's contents.
struct Payload {
    parties: Vec<(String, ServerBundle)>,
    typed_vars: serde_json::Map<String, serde_json::Value>,
    crons: Vec<CronSchedule>,
    /// `serve`: single-page app, and every file by path.
    assets: Option<(bool, BTreeMap<String, Bytes>)>,
}

impl Payload {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u32(self.parties.len() as u32);
        for (name, bundle) in &self.parties {
            w.str(name);
            bundle.encode_into(&mut w);
        }
        w.str(&serde_json::Value::Object(self.typed_vars.clone()).to_string());
        w.u32(self.crons.len() as u32);
        for c in &self.crons {
            w.str(&c.name);
            w.str(&c.definition);
        }
        match &self.assets {
            None => w.u8(0),
            Some((spa, files)) => {
                w.u8(1 + u8::from(*spa));
                w.u32(files.len() as u32);
                for (path, bytes) in files {
                    w.str(path);
                    w.bytes(bytes);
                }
            }
        }
        w.0
    }

    fn decode(data: &[u8]) -> Option<Payload> {
        let mut r = Reader(data);
        let parties = (0..r.u32()?)
            .map(|_| Some((r.str()?.to_string(), ServerBundle::decode_from(&mut r)?)))
            .collect::<Option<Vec<_>>>()?;
        let typed_vars = match serde_json::from_str(r.str()?).ok()? {
            serde_json::Value::Object(m) => m,
            _ => return None,
        };
        let crons = (0..r.u32()?)
            .map(|_| Some(CronSchedule { name: r.str()?.to_string(), definition: r.str()?.to_string() }))
            .collect::<Option<Vec<_>>>()?;
        let assets = match r.u8()? {
            0 => None,
            kind @ (1 | 2) => {
                let files = (0..r.u32()?)
                    .map(|_| Some((r.str()?.to_string(), Bytes::copy_from_slice(r.bytes()?))))
                    .collect::<Option<BTreeMap<_, _>>>()?;
                Some((kind == 2, files))
            }
            _ => return None,
        };
        r.done().then_some(Payload { parties, typed_vars, crons, assets })
    }
}

/// `sha256:` and the hex SHA-256 of `data`.
pub fn content_hash(data: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    format!("sha256:{}", hex(digest.as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Files under `dir` by path relative to it (`/`-separated), skipping hidden files and
/// directories and `node_modules`.
fn files_under(dir: &Path) -> anyhow::Result<BTreeMap<String, Bytes>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", d.display()))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name == "node_modules" {
                continue;
            }
            let path = entry.path();
            let ty = entry.file_type().with_context(|| format!("reading {}", path.display()))?;
            if ty.is_dir() {
                stack.push(path);
            } else if path.is_file() {
                let rel = path.strip_prefix(dir).expect("under dir").to_string_lossy().replace('\\', "/");
                let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                out.insert(rel, Bytes::from(bytes));
            }
        }
    }
    Ok(out)
}

/// The `version` of the package.json beside the project's config, if any.
fn package_version(root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(root.join("package.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("version")?.as_str().map(String::from)
}

/// Builds the artifact of a loaded project (load it with [`JsSettings::default`]: no dev
/// server, pages take the host they are served from).
pub(crate) fn build(project: &crate::Project, bundles: &[(String, ServerBundle)]) -> anyhow::Result<Vec<u8>> {
    let config = &project.config;
    let assets = match &config.assets {
        Some(a) => {
            let mut files = if a.root.is_dir() { files_under(&a.root)? } else { BTreeMap::new() };
            files.extend(a.built().iter().map(|(k, v)| (k.clone(), v.clone())));
            Some((a.single_page_app, files))
        }
        None => None,
    };
    let payload = Payload {
        parties: bundles.iter().map(|(n, b)| (n.clone(), b.clone())).collect(),
        typed_vars: config.typed_vars.clone(),
        crons: config.crons.clone(),
        assets,
    };
    let bytes = payload.encode();
    let manifest = Manifest {
        format: FORMAT,
        name: config.name.clone(),
        version: package_version(&config.root),
        hash: content_hash(&bytes),
        built_at_ms: partyline::storage::now_ms().max(0) as u64,
        built_by: env!("CARGO_PKG_VERSION").to_string(),
        parties: payload.parties.iter().map(|(n, _)| n.clone()).collect(),
        vars: payload.typed_vars.keys().cloned().collect(),
        crons: payload.crons.iter().map(|c| (c.name.clone(), c.definition.clone())).collect(),
        files: payload.assets.as_ref().map_or(0, |(_, f)| f.len()),
        single_page_app: payload.assets.as_ref().is_some_and(|(spa, _)| *spa),
    };
    let mut w = Writer::default();
    w.0.extend_from_slice(MAGIC);
    w.str(&serde_json::to_string(&manifest).expect("a manifest serializes"));
    w.bytes(&bytes);
    Ok(w.0)
}

/// An artifact whose content hash checked out.
pub struct Artifact {
    /// What it holds.
    pub manifest: Manifest,
    payload: Payload,
}

impl std::fmt::Debug for Artifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Artifact").field("manifest", &self.manifest).finish_non_exhaustive()
    }
}

/// Reads the manifest only, checking nothing else (listing what a file is).
pub fn manifest_of(data: &[u8]) -> anyhow::Result<Manifest> {
    let rest =
        data.strip_prefix(MAGIC).ok_or_else(|| anyhow!("not a Partyline artifact (made by `partyline build`)"))?;
    let mut r = Reader(rest);
    let text = r.str().ok_or_else(|| anyhow!("the artifact is truncated (its manifest is cut short)"))?;
    let manifest: Manifest = serde_json::from_str(text).context("the artifact's manifest is not valid")?;
    if manifest.format != FORMAT {
        bail!("the artifact has layout {} and this Partyline reads layout {FORMAT}: rebuild it", manifest.format);
    }
    Ok(manifest)
}

impl Artifact {
    /// Opens an artifact: the layout, the manifest, the content hash and every part are
    /// checked; anything off refuses it whole.
    pub fn open(data: &[u8]) -> anyhow::Result<Artifact> {
        let manifest = manifest_of(data)?;
        let mut r = Reader(&data[MAGIC.len()..]);
        r.str().expect("read by manifest_of");
        let payload = r.bytes().ok_or_else(|| anyhow!("the artifact is truncated (its payload is cut short)"))?;
        if !r.done() {
            bail!("the artifact has {} bytes after its end: it is corrupt", r.0.len());
        }
        let hash = content_hash(payload);
        if hash != manifest.hash {
            bail!("the artifact is corrupt: its content hash is {hash}, its manifest says {}", manifest.hash);
        }
        let payload =
            Payload::decode(payload).ok_or_else(|| anyhow!("the artifact is corrupt: its payload does not read"))?;
        let names: Vec<&String> = payload.parties.iter().map(|(n, _)| n).collect();
        if names != manifest.parties.iter().collect::<Vec<_>>() {
            bail!("the artifact is corrupt: its manifest lists parties {:?}, it holds {names:?}", manifest.parties);
        }
        Ok(Artifact { manifest, payload })
    }

    /// Compiles every party and reads its static options, as [`crate::Project::load`] does
    /// for a project on disk: the parties to serve, ready to be added to a registry.
    /// Boxed, like [`crate::Project::load`].
    #[inline(never)]
    pub fn load<'a>(
        &'a self,
        limits: &'a Limits,
        settings: &'a JsSettings,
    ) -> BoxFuture<'a, anyhow::Result<PartyRegistry>> {
        Box::pin(self.load_unboxed(limits, settings))
    }

    async fn load_unboxed(&self, limits: &Limits, settings: &JsSettings) -> anyhow::Result<PartyRegistry> {
        let modules = Arc::new(Modules::new());
        let mut registry = PartyRegistry::new();
        for (name, bundle) in &self.payload.parties {
            if !partyline::party::valid_party_name(name) {
                bail!("party name {name:?} must match [a-z0-9_-]+");
            }
            let module = modules.add_bundle(name, bundle)?;
            let main = name == "main";
            let assets = match (&self.payload.assets, main) {
                (Some((spa, files)), true) => Some(StaticAssets::in_memory(files.clone(), *spa)),
                _ => None,
            };
            let from = FromProject {
                assets,
                typed_vars: self.payload.typed_vars.clone(),
                crons: if main { self.payload.crons.clone() } else { Vec::new() },
            };
            let factory = load_party(name, module, modules.clone(), limits, settings, from)
                .await
                .map_err(|e| anyhow!("{e:#}"))?;
            registry = registry.with_factory(name, Arc::new(factory));
        }
        Ok(registry)
    }
}

/// The key signatures are made with: derived from the cluster secret for this use only.
fn signing_key(secret: &str) -> ring::hmac::Key {
    let base = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let derived = ring::hmac::sign(&base, b"partyline deploy signing key v1");
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref())
}

fn signed_text(version: u64, hash: &str) -> String {
    format!("partyline deploy\nversion {version}\n{hash}\n")
}

/// The signature of version `version` of the cluster's deploys, whose artifact has content
/// hash `hash` ([`content_hash`] of the whole artifact), under the cluster secret.
pub fn sign(secret: &str, version: u64, hash: &str) -> String {
    hex(ring::hmac::sign(&signing_key(secret), signed_text(version, hash).as_bytes()).as_ref())
}

/// Whether `signature` is [`sign`]'s for these (compared in constant time).
pub fn verify(secret: &str, version: u64, hash: &str, signature: &str) -> bool {
    let Some(tag) = unhex(signature) else { return false };
    ring::hmac::verify(&signing_key(secret), signed_text(version, hash).as_bytes(), &tag).is_ok()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// A value that shows whether a process holds the cluster secret without revealing it: nodes
/// publish it, `partyline deploy` compares it with its own before uploading.
pub fn secret_check(secret: &str) -> String {
    hex(ring::hmac::sign(&signing_key(secret), b"partyline deploy secret check").as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let bundle = ServerBundle {
            code: "export default class P { onRequest() { return new Response('v1'); } }\n".into(),
            map: Default::default(),
            files: Vec::new(),
        };
        let payload = Payload {
            parties: vec![("main".into(), bundle)],
            typed_vars: serde_json::json!({"N": 3}).as_object().unwrap().clone(),
            crons: vec![CronSchedule { name: "tick".into(), definition: "* * * * *".into() }],
            assets: Some((true, BTreeMap::from([("index.html".to_string(), Bytes::from_static(b"<h1>hi</h1>"))]))),
        };
        let bytes = payload.encode();
        let manifest = Manifest {
            format: FORMAT,
            name: Some("sample".into()),
            version: None,
            hash: content_hash(&bytes),
            built_at_ms: 1,
            built_by: "test".into(),
            parties: vec!["main".into()],
            vars: vec!["N".into()],
            crons: BTreeMap::new(),
            files: 1,
            single_page_app: true,
        };
        let mut w = Writer::default();
        w.0.extend_from_slice(MAGIC);
        w.str(&serde_json::to_string(&manifest).unwrap());
        w.bytes(&bytes);
        w.0
    }

    #[test]
    fn an_artifact_reads_back_whole() {
        let data = sample();
        let a = Artifact::open(&data).expect("opens");
        assert_eq!(a.manifest.parties, ["main"]);
        assert_eq!(a.payload.typed_vars["N"], 3);
        assert_eq!(a.payload.crons[0].definition, "* * * * *");
        let (spa, files) = a.payload.assets.as_ref().unwrap();
        assert!(*spa);
        assert_eq!(files["index.html"].as_ref(), b"<h1>hi</h1>");
        assert!(a.payload.parties[0].1.code.contains("'v1'"));
    }

    #[test]
    fn truncated_altered_or_foreign_files_are_refused() {
        let data = sample();
        for cut in [5, MAGIC.len() + 3, data.len() / 2, data.len() - 1] {
            let err = Artifact::open(&data[..cut]).unwrap_err().to_string();
            assert!(err.contains("truncated") || err.contains("not a Partyline artifact"), "cut at {cut}: {err}");
        }
        let mut altered = data.clone();
        let at = altered.len() - 20;
        altered[at] ^= 1;
        let err = Artifact::open(&altered).unwrap_err().to_string();
        assert!(err.contains("content hash"), "{err}");
        let mut longer = data.clone();
        longer.push(0);
        assert!(Artifact::open(&longer).unwrap_err().to_string().contains("after its end"));
        assert!(Artifact::open(b"{\"not\": \"one\"}").unwrap_err().to_string().contains("not a Partyline artifact"));
    }

    #[test]
    fn signatures_bind_secret_version_and_content() {
        let hash = content_hash(b"artifact");
        let sig = sign("a-secret-of-the-cluster", 3, &hash);
        assert!(verify("a-secret-of-the-cluster", 3, &hash, &sig));
        assert!(!verify("another-secret-entirely", 3, &hash, &sig));
        assert!(!verify("a-secret-of-the-cluster", 4, &hash, &sig));
        assert!(!verify("a-secret-of-the-cluster", 3, &content_hash(b"other"), &sig));
        assert!(!verify("a-secret-of-the-cluster", 3, &hash, "zz"));
        assert_ne!(secret_check("a-secret-of-the-cluster"), secret_check("another-secret-entirely"));
    }
}
