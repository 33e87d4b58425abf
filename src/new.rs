//! `partyline new <dir>`: writes a crate of the user's own with one party (a chat with
//! storage, served as `main`), its tests on the SDK's test kit, a README and a `.gitignore`.
//! `cargo test` passes in it and `cargo run -- dev` serves the party on 127.0.0.1:1999.
//!
//! It also writes what runs the crate as a cluster, on Partyline's own deploy files rather than
//! a copy of them: a `Dockerfile` (deploy/Dockerfile's conventions: a dependency layer, one
//! distroless non-root image for `dev`, `gateway` and `node`, the binary installed as
//! /usr/local/bin/partyline), a `.dockerignore`, `deploy/docker-compose.yml` (which includes
//! Partyline's compose file and swaps in the crate's image, deploy/partyline.override.yml) and
//! `deploy/k8s` (a Kustomize overlay of Partyline's deploy/k8s/base). deploy/verify.sh checks
//! these files as it checks Partyline's own.
//!
//! Until the crates are published, the new crate depends on the SDK and the server by the path
//! of the checkout this binary was built from; `--sdk-version` depends on them by version. In
//! path mode the image build gets the checkout as a named build context (`docker build
//! --build-context partyline=<checkout>`) placed at the same absolute path, and the deploy
//! files use the checkout's deploy/ directory; in version mode the build needs nothing else,
//! the compose file takes Partyline's deploy/ from `$PARTYLINE_DEPLOY`, and the overlay a
//! remote base at the release's tag.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

/// Options of `partyline new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// Directory to create (it must not exist, or be empty).
    pub dir: PathBuf,
    /// The crate's name (default: the directory's name, with characters Cargo refuses
    /// replaced by `-`).
    #[arg(long)]
    pub name: Option<String>,
    /// Depend on the published `partyline` and `partyline-server` crates at this version
    /// instead of on this checkout's path.
    #[arg(long, value_name = "VERSION")]
    pub sdk_version: Option<String>,
}

/// The checkout this binary was built from.
const CHECKOUT: &str = env!("CARGO_MANIFEST_DIR");

/// The workspace manifest, for the repository's URL (remote Kustomize bases).
const WORKSPACE_MANIFEST: &str = include_str!("../Cargo.toml");

const FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("new/Cargo.toml.tmpl")),
    ("src/main.rs", include_str!("new/main.rs.tmpl")),
    ("src/chat.rs", include_str!("new/chat.rs.tmpl")),
    ("README.md", include_str!("new/README.md.tmpl")),
    (".gitignore", include_str!("new/gitignore.tmpl")),
    ("Dockerfile", include_str!("new/Dockerfile.tmpl")),
    (".dockerignore", include_str!("new/dockerignore.tmpl")),
    ("deploy/docker-compose.yml", include_str!("new/docker-compose.yml.tmpl")),
    ("deploy/partyline.override.yml", include_str!("new/partyline.override.yml.tmpl")),
    ("deploy/partyline.env.example", include_str!("new/partyline.env.example.tmpl")),
    ("deploy/k8s/kustomization.yaml", include_str!("new/kustomization.yaml.tmpl")),
    ("deploy/k8s/namespace.yaml", include_str!("new/namespace.yaml.tmpl")),
];

/// A crate name from a directory name: letters, digits, `-` and `_`, starting with a letter.
fn crate_name(dir: &Path) -> anyhow::Result<String> {
    let base = dir.file_name().and_then(|n| n.to_str()).with_context(|| {
        format!("{} has no usable last component to name the crate after; pass --name", dir.display())
    })?;
    let name: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '-' }).collect();
    check_name(&name)?;
    Ok(name)
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    anyhow::ensure!(ok, "{name:?} is not a crate name (letters, digits, - and _, starting with a letter); pass --name");
    Ok(())
}

/// TOML's basic-string form of `s`.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out + "\""
}

/// The dependency specs: (sdk, server, sdk with the test kit).
fn dependencies(sdk_version: Option<&str>) -> anyhow::Result<(String, String, String)> {
    Ok(match sdk_version {
        Some(v) => {
            let v = toml_string(v);
            (
                format!("{{ version = {v} }}"),
                format!("{{ version = {v}, default-features = false }}"),
                format!("{{ version = {v}, features = [\"testing\"] }}"),
            )
        }
        None => {
            let root = Path::new(CHECKOUT);
            anyhow::ensure!(
                root.join("core/Cargo.toml").is_file(),
                "the Partyline checkout this binary was built from ({}) is gone: pass --sdk-version",
                root.display()
            );
            let core = toml_string(&root.join("core").display().to_string());
            let server = toml_string(&root.display().to_string());
            (
                format!("{{ path = {core} }}"),
                format!("{{ path = {server}, default-features = false }}"),
                format!("{{ path = {core}, features = [\"testing\"] }}"),
            )
        }
    })
}

/// The crate's name as its image name, compose project and Kubernetes namespace: lowercase
/// letters, digits and `-`, at most 63 characters, ending in a letter or a digit (the name
/// starts with a letter).
fn slug(name: &str) -> String {
    let slug: String = name.chars().take(63).map(|c| if c == '_' { '-' } else { c.to_ascii_lowercase() }).collect();
    slug.trim_end_matches('-').to_string()
}

/// The `repository` of `[workspace.package]` in a workspace manifest (or of `[package]`, as in
/// a packaged crate's manifest, where inherited fields are written out).
fn workspace_repository(manifest: &str) -> Option<&str> {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[workspace.package]" || line == "[package]";
        } else if let Some((key, value)) = line.split_once('=').filter(|_| in_package) {
            if key.trim() == "repository" {
                return value.trim().strip_prefix('"')?.strip_suffix('"');
            }
        }
    }
    None
}

/// `to` relative to `from`; both absolute and canonical (no `.`, `..` or symbolic links).
fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out: PathBuf = from[common..].iter().map(|_| "..").collect();
    out.extend(&to[common..]);
    out
}

/// The checkout's path as it goes, unescaped, into double-quoted strings of the Dockerfile,
/// the compose files (inside `${...:-...}`), YAML and the shell.
fn plain_path(path: &Path) -> anyhow::Result<&str> {
    let text = path.to_str().filter(|t| !t.chars().any(|c| c.is_control() || "\"\\$`{}".contains(c)));
    text.with_context(|| {
        format!(
            "the Partyline checkout's path ({}) has characters the Dockerfile and the deploy files cannot \
             carry (quotes, backslashes, $, braces): move the checkout, or pass --sdk-version",
            path.display()
        )
    })
}

/// The Git tag of the release `sdk_version` names (`0.1.0`, `=0.1.0`: `v0.1.0`).
fn release_tag(sdk_version: &str) -> anyhow::Result<String> {
    let version = sdk_version.trim().trim_start_matches(['=', 'v']);
    anyhow::ensure!(
        version.starts_with(|c: char| c.is_ascii_digit())
            && version.chars().all(|c| c.is_ascii_alphanumeric() || ".+-".contains(c)),
        "--sdk-version {sdk_version:?}: the deploy files name Partyline's release, so give one version (like 0.1.0)"
    );
    Ok(format!("v{version}"))
}

/// The placeholders of the cluster files (Dockerfile, deploy/) and of the README's section on
/// them, for the crate `name` written in `dir` (absolute and canonical: the Kustomize base is a
/// path relative to it). A placeholder that ends in a newline stands for whole lines, maybe none.
fn cluster(name: &str, dir: &Path, sdk_version: Option<&str>) -> anyhow::Result<Vec<(&'static str, String)>> {
    let slug = slug(name);
    let image = format!("{slug}:local");
    let mut out = vec![("{{slug}}", slug)];
    match sdk_version {
        Some(v) => {
            let tag = release_tag(v)?;
            let repository =
                workspace_repository(WORKSPACE_MANIFEST).context("the workspace manifest names no repository")?;
            let deploy =
                format!("${{PARTYLINE_DEPLOY:?set PARTYLINE_DEPLOY to the deploy directory of Partyline {tag}}}");
            out.extend([
                ("{{docker_build}}", format!("docker build -t {image} .")),
                ("{{partyline_stage}}\n", String::new()),
                ("{{partyline_copy}}\n", String::new()),
                ("{{compose_contexts}}\n", String::new()),
                ("{{compose_base}}", format!("\"{deploy}/docker-compose.yml\"")),
                ("{{compose_haproxy}}", format!("\"{deploy}/haproxy.cfg\"")),
                (
                    "{{deploy_from}}",
                    format!(
                        "which has no default here: set it to the deploy/ directory of a Partyline checkout at \
                         {tag} (`git clone --branch {tag} {repository}`)"
                    ),
                ),
                ("{{k8s_base}}", format!("\"{repository}//deploy/k8s/base?ref={tag}\"")),
                ("{{k8s_from}}", format!("fetched from Partyline's repository at {tag} (`{repository}`)")),
            ]);
        }
        None => {
            let checkout = plain_path(Path::new(CHECKOUT))?;
            let base = Path::new(CHECKOUT)
                .join("deploy/k8s/base")
                .canonicalize()
                .with_context(|| format!("the Partyline checkout ({checkout}) has no deploy/k8s/base"))?;
            let k8s_base = relative_path(&dir.join("deploy/k8s"), &base);
            let k8s_base = plain_path(&k8s_base)?;
            let word = if checkout.contains(|c: char| !c.is_ascii_alphanumeric() && !"/._-+:@%,=".contains(c)) {
                format!("\"{checkout}\"")
            } else {
                checkout.to_string()
            };
            let deploy = format!("${{PARTYLINE_DEPLOY:-{checkout}/deploy}}");
            out.extend([
                ("{{docker_build}}", format!("docker build --build-context partyline={word} -t {image} .")),
                (
                    "{{partyline_stage}}\n",
                    "# The Partyline checkout: `--build-context partyline=<checkout>` replaces this empty stage.\n\
                     FROM scratch AS partyline\n\n"
                        .to_string(),
                ),
                (
                    "{{partyline_copy}}\n",
                    format!(
                        "# The checkout, at the path Cargo.toml names.\n\
                         COPY --from=partyline [\".\", \"{checkout}\"]\n\
                         RUN test -f \"{checkout}/core/Cargo.toml\" || \\\n    \
                         {{ echo \"no Partyline checkout: build with --build-context partyline={checkout}\" >&2; exit 1; }}\n\n"
                    ),
                ),
                ("{{compose_contexts}}\n", format!("    additional_contexts:\n      partyline: \"{checkout}\"\n")),
                ("{{compose_base}}", format!("\"{deploy}/docker-compose.yml\"")),
                ("{{compose_haproxy}}", format!("\"{deploy}/haproxy.cfg\"")),
                (
                    "{{deploy_from}}",
                    format!("by default `{checkout}/deploy`, in the checkout this crate depends on"),
                ),
                ("{{k8s_base}}", format!("\"{k8s_base}\"")),
                (
                    "{{k8s_from}}",
                    format!(
                        "in the checkout this crate depends on, `{checkout}/deploy/k8s/base`, by a path relative \
                         to deploy/k8s: kustomize takes no absolute one, so update it if you move the crate"
                    ),
                ),
            ]);
        }
    }
    Ok(out)
}

/// `template` with every placeholder replaced.
fn fill(template: &str, placeholders: &[(&str, String)]) -> String {
    placeholders.iter().fold(template.to_string(), |text, (key, value)| text.replace(key, value))
}

/// Writes the crate; see the module docs.
pub fn run(args: NewArgs) -> anyhow::Result<()> {
    let name = match args.name {
        Some(n) => {
            check_name(&n)?;
            n
        }
        None => crate_name(&args.dir)?,
    };
    let existed = args.dir.exists();
    if existed {
        let mut entries =
            std::fs::read_dir(&args.dir).with_context(|| format!("cannot read {}", args.dir.display()))?;
        anyhow::ensure!(
            entries.next().is_none(),
            "{} exists and is not empty: pick a new directory",
            args.dir.display()
        );
    }
    let (sdk, server, sdk_testing) = dependencies(args.sdk_version.as_deref())?;
    std::fs::create_dir_all(&args.dir).with_context(|| format!("cannot create {}", args.dir.display()))?;
    let dir = args.dir.canonicalize().with_context(|| format!("cannot resolve {}", args.dir.display()))?;
    let mut placeholders =
        vec![("{{name}}", name.clone()), ("{{sdk}}", sdk), ("{{server}}", server), ("{{sdk_testing}}", sdk_testing)];
    match cluster(&name, &dir, args.sdk_version.as_deref()) {
        Ok(more) => placeholders.extend(more),
        Err(e) => {
            if !existed {
                // Leaves no directory behind; it is still empty.
                let _ = std::fs::remove_dir(&args.dir);
            }
            return Err(e);
        }
    }
    for (path, template) in FILES {
        let text = fill(template, &placeholders);
        let file = args.dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
    }
    let docker_build = fill("{{docker_build}}", &placeholders);
    println!(
        "Created {} (crate {name}) with one party, `main` (src/chat.rs), and what runs it as a cluster: \
         a Dockerfile and deploy/ (Docker Compose, Kubernetes).",
        args.dir.display()
    );
    println!();
    println!("  cd {}", args.dir.display());
    println!("  cargo test         # its tests");
    println!("  cargo run -- dev   # serves http://127.0.0.1:1999/");
    println!();
    println!("As a cluster (README.md, \"Run it as a cluster\"):");
    println!();
    println!("  {docker_build}");
    println!("  cp deploy/partyline.env.example deploy/partyline.env   # then set the cluster secret");
    println!("  docker compose -f deploy/docker-compose.yml up -d");
    println!("  kubectl apply -k deploy/k8s                            # a local cluster (kind, minikube, k3d)");
    Ok(())
}

/// The template's party, compiled and tested with the workspace, so a change to the SDK that
/// breaks it fails here and not in a newcomer's first `cargo test`.
#[cfg(test)]
#[path = "new/chat.rs.tmpl"]
mod template_chat;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_directory_or_are_refused() {
        assert_eq!(crate_name(Path::new("/tmp/my party")).unwrap(), "my-party");
        assert_eq!(crate_name(Path::new("chat_2")).unwrap(), "chat_2");
        assert!(crate_name(Path::new("2fast")).is_err());
        assert!(check_name("ok-name").is_ok());
        assert!(check_name("").is_err());
    }

    #[test]
    fn versions_and_paths_become_toml() {
        let (sdk, server, testing) = dependencies(Some("0.1.0")).unwrap();
        assert_eq!(sdk, r#"{ version = "0.1.0" }"#);
        assert_eq!(server, r#"{ version = "0.1.0", default-features = false }"#);
        assert_eq!(testing, r#"{ version = "0.1.0", features = ["testing"] }"#);
        let (sdk, _, _) = dependencies(None).unwrap();
        assert!(sdk.starts_with("{ path = \"") && sdk.contains("core"), "{sdk}");
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn the_crate_is_written_with_every_placeholder_filled() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("my party");
        run(NewArgs { dir: target.clone(), name: None, sdk_version: Some("0.1.0".into()) }).unwrap();
        for (path, _) in FILES {
            let text = std::fs::read_to_string(target.join(path)).unwrap();
            assert!(!text.contains("{{"), "{path} still has a placeholder");
        }
        let manifest = std::fs::read_to_string(target.join("Cargo.toml")).unwrap();
        assert!(manifest.contains(r#"name = "my-party""#), "{manifest}");
        assert!(manifest.contains(r#"partyline-server = { version = "0.1.0", default-features = false }"#));
        let main = std::fs::read_to_string(target.join("src/main.rs")).unwrap();
        assert!(main.contains(r#".with::<chat::Chat>("main")"#));

        // Version mode: the image builds from this directory alone, and the bases are the release's.
        let dockerfile = std::fs::read_to_string(target.join("Dockerfile")).unwrap();
        assert!(!dockerfile.contains("--from=partyline") && !dockerfile.contains("AS partyline"), "{dockerfile}");
        assert!(dockerfile.contains("cargo build --release --bin my-party"), "{dockerfile}");
        assert!(dockerfile.contains("COPY --from=build /partyline /usr/local/bin/partyline"));
        let compose = std::fs::read_to_string(target.join("deploy/docker-compose.yml")).unwrap();
        assert!(compose.contains("name: my-party\n"), "{compose}");
        assert!(compose.contains(r#"- "${PARTYLINE_DEPLOY:?set PARTYLINE_DEPLOY to the deploy directory of Partyline v0.1.0}/docker-compose.yml""#), "{compose}");
        let overlay = std::fs::read_to_string(target.join("deploy/partyline.override.yml")).unwrap();
        assert!(overlay.contains("image: my-party:local") && !overlay.contains("additional_contexts"), "{overlay}");
        let k8s = std::fs::read_to_string(target.join("deploy/k8s/kustomization.yaml")).unwrap();
        assert!(k8s.contains(r#"- "https://example.invalid/partyline//deploy/k8s/base?ref=v0.1.0""#), "{k8s}");
        assert!(k8s.contains("namespace: my-party\n") && k8s.contains("newName: my-party\n"), "{k8s}");
        let readme = std::fs::read_to_string(target.join("README.md")).unwrap();
        assert!(readme.contains("\ndocker build -t my-party:local .\n"), "{readme}");
        assert!(readme.contains("git clone --branch v0.1.0 https://example.invalid/partyline"), "{readme}");
    }

    #[test]
    fn in_path_mode_the_cluster_files_use_the_checkout() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("Chat_App");
        run(NewArgs { dir: target.clone(), name: None, sdk_version: None }).unwrap();
        for (path, _) in FILES {
            let text = std::fs::read_to_string(target.join(path)).unwrap();
            assert!(!text.contains("{{"), "{path} still has a placeholder");
        }
        let dockerfile = std::fs::read_to_string(target.join("Dockerfile")).unwrap();
        assert!(dockerfile.contains("\nFROM scratch AS partyline\n"), "{dockerfile}");
        assert!(dockerfile.contains(&format!("COPY --from=partyline [\".\", \"{CHECKOUT}\"]\n")), "{dockerfile}");
        assert!(dockerfile.contains("cargo build --release --bin Chat_App"), "{dockerfile}");
        let build = format!("docker build --build-context partyline={CHECKOUT} -t chat-app:local .");
        assert!(dockerfile.contains(&format!("#   {build}\n")), "{dockerfile}");
        let readme = std::fs::read_to_string(target.join("README.md")).unwrap();
        assert!(readme.contains(&format!("\n{build}\n")), "{readme}");

        let compose = std::fs::read_to_string(target.join("deploy/docker-compose.yml")).unwrap();
        assert!(compose.contains(&format!("- \"${{PARTYLINE_DEPLOY:-{CHECKOUT}/deploy}}/docker-compose.yml\"")));
        let overlay = std::fs::read_to_string(target.join("deploy/partyline.override.yml")).unwrap();
        assert!(overlay.contains(&format!("    additional_contexts:\n      partyline: \"{CHECKOUT}\"\n")), "{overlay}");
        assert!(overlay.contains("image: chat-app:local"), "{overlay}");

        // The overlay's base is a relative path (kustomize refuses absolute ones) that leads to
        // the checkout's deploy/k8s/base.
        let k8s = std::fs::read_to_string(target.join("deploy/k8s/kustomization.yaml")).unwrap();
        let base = k8s.lines().find_map(|l| l.strip_prefix("  - \"")).and_then(|l| l.strip_suffix('"')).unwrap();
        assert!(Path::new(base).is_relative(), "{base}");
        let resolved = target.join("deploy/k8s").join(base).canonicalize().unwrap();
        assert_eq!(resolved, Path::new(CHECKOUT).join("deploy/k8s/base").canonicalize().unwrap());
        assert!(k8s.contains("namespace: chat-app\n"), "{k8s}");
    }

    #[test]
    fn names_paths_and_versions_for_the_deploy_files() {
        assert_eq!(slug("My_Party-2"), "my-party-2");
        assert_eq!(slug("a_"), "a");
        assert_eq!(slug(&"x".repeat(80)).len(), 63);
        assert_eq!(workspace_repository(WORKSPACE_MANIFEST), Some("https://example.invalid/partyline"));
        assert_eq!(
            workspace_repository("[package]\nrepository = \"https://x.invalid/p\"\n"),
            Some("https://x.invalid/p")
        );
        assert_eq!(workspace_repository("[dependencies]\nrepository = \"no\"\n"), None);
        assert_eq!(relative_path(Path::new("/a/b/c"), Path::new("/a/d")), Path::new("../../d"));
        assert_eq!(relative_path(Path::new("/a"), Path::new("/a/b")), Path::new("b"));
        assert!(plain_path(Path::new("/home/me/my checkout")).is_ok());
        assert!(plain_path(Path::new("/home/$me")).is_err());
        assert!(plain_path(Path::new("/home/\"me\"")).is_err());
        assert_eq!(release_tag("0.1.0").unwrap(), "v0.1.0");
        assert_eq!(release_tag("=0.2.0-rc.1").unwrap(), "v0.2.0-rc.1");
        assert!(release_tag(">=0.1, <0.3").is_err());
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("x");
        let err = run(NewArgs { dir: target.clone(), name: None, sdk_version: Some("^0.1".into()) }).unwrap_err();
        assert!(err.to_string().contains("give one version"), "{err}");
        assert!(!target.exists(), "a refused crate leaves no directory");
    }

    #[test]
    fn a_non_empty_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep"), "x").unwrap();
        let err =
            run(NewArgs { dir: dir.path().to_path_buf(), name: Some("x".into()), sdk_version: None }).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
    }
}
