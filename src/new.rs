//! `partyline new <dir>`: writes a crate of the user's own with one party (a chat with
//! storage, served as `main`), its tests on the SDK's test kit, a README and a `.gitignore`.
//! `cargo test` passes in it and `cargo run -- dev` serves the party on 127.0.0.1:1999.
//!
//! Until the crates are published, the new crate depends on the SDK and the server by the path
//! of the checkout this binary was built from; `--sdk-version` depends on them by version.

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

const FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("new/Cargo.toml.tmpl")),
    ("src/main.rs", include_str!("new/main.rs.tmpl")),
    ("src/chat.rs", include_str!("new/chat.rs.tmpl")),
    ("README.md", include_str!("new/README.md.tmpl")),
    (".gitignore", include_str!("new/gitignore.tmpl")),
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

/// Writes the crate; see the module docs.
pub fn run(args: NewArgs) -> anyhow::Result<()> {
    let name = match args.name {
        Some(n) => {
            check_name(&n)?;
            n
        }
        None => crate_name(&args.dir)?,
    };
    if args.dir.exists() {
        let mut entries =
            std::fs::read_dir(&args.dir).with_context(|| format!("cannot read {}", args.dir.display()))?;
        anyhow::ensure!(
            entries.next().is_none(),
            "{} exists and is not empty: pick a new directory",
            args.dir.display()
        );
    }
    let (sdk, server, sdk_testing) = dependencies(args.sdk_version.as_deref())?;
    for (path, template) in FILES {
        let text = template
            .replace("{{name}}", &name)
            .replace("{{sdk}}", &sdk)
            .replace("{{server}}", &server)
            .replace("{{sdk_testing}}", &sdk_testing);
        let file = args.dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
    }
    println!("Created {} (crate {name}) with one party, `main` (src/chat.rs).", args.dir.display());
    println!();
    println!("  cd {}", args.dir.display());
    println!("  cargo test         # its tests");
    println!("  cargo run -- dev   # serves http://127.0.0.1:1999/");
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
