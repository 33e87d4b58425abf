//! Turning a project file into JavaScript QuickJS can compile: TypeScript is stripped of its
//! types (oxc's transformer), JSON becomes a module with a default export, CommonJS is told apart
//! from ES modules. Errors name the file, line and column.

use std::path::Path;

use oxc_allocator::Allocator;
use oxc_codegen::{Codegen, CodegenOptions};
use oxc_parser::Parser;
use oxc_semantic::SemanticBuilder;
use oxc_span::SourceType;
use oxc_transformer::{TransformOptions, Transformer};

/// How a file is evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleKind {
    /// An ES module.
    Esm,
    /// A CommonJS file (`require`, `module.exports`), evaluated inside a function.
    Cjs,
    /// A JSON file, whose value is the module's default export (or `module.exports`).
    Json,
}

/// A file ready for QuickJS.
#[derive(Clone, Debug)]
pub struct Transpiled {
    /// JavaScript source: the file itself when it needed no change (so runtime line numbers are
    /// the file's), else the generated code.
    pub code: String,
    /// How to evaluate it.
    pub kind: ModuleKind,
    /// The specifiers of its static imports and re-exports (ES modules only; type-only imports
    /// left out).
    pub imports: Vec<String>,
}

/// A file that could not be parsed or transformed.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct SyntaxError {
    /// The file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

fn is_typescript(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("ts" | "tsx" | "mts" | "cts"))
}

/// 1-based line and column of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..source.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn syntax_error(path: &Path, source: &str, diag: &oxc_diagnostics::OxcDiagnostic) -> SyntaxError {
    let offset = diag.labels.first().map_or(0, |l| l.offset() as usize);
    let (line, column) = line_col(source, offset);
    SyntaxError { file: path.display().to_string(), line, column, message: diag.message.to_string() }
}

/// Prepares `source`, the contents of `path`, for QuickJS. `commonjs_hint` says the package
/// declares CommonJS (`.cjs`, or `.js` without `"type": "module"`); a file of such a package that
/// uses `import`/`export` is still an ES module.
pub fn transpile(path: &Path, source: &str, commonjs_hint: bool) -> Result<Transpiled, SyntaxError> {
    if path.extension().and_then(|e| e.to_str()) == Some("json") {
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(source) {
            return Err(SyntaxError {
                file: path.display().to_string(),
                line: e.line(),
                column: e.column(),
                message: format!("invalid JSON: {e}"),
            });
        }
        return Ok(Transpiled { code: source.to_string(), kind: ModuleKind::Json, imports: Vec::new() });
    }
    let typescript = is_typescript(path);
    let source_type = match path.extension().and_then(|e| e.to_str()) {
        Some("ts" | "mts" | "cts") => SourceType::ts(),
        Some("tsx") => SourceType::tsx(),
        Some("jsx") => SourceType::jsx(),
        Some("cjs") => SourceType::cjs(),
        _ => SourceType::mjs(),
    };
    let allocator = Allocator::default();
    let parsed = Parser::new(&allocator, source, source_type).parse();
    if let Some(diag) = parsed.diagnostics.errors().next() {
        // A CommonJS file may use what module code may not (`with`, octal literals, ...).
        if !typescript && commonjs_hint {
            return Ok(Transpiled { code: source.to_string(), kind: ModuleKind::Cjs, imports: Vec::new() });
        }
        return Err(syntax_error(path, source, diag));
    }
    let has_module_syntax = parsed.module_record.has_module_syntax;
    let mut imports: Vec<(u32, String)> = Vec::new();
    for (spec, requests) in parsed.module_record.requested_modules.iter() {
        if let Some(first) = requests.iter().find(|r| !r.is_type) {
            imports.push((first.span.start, spec.to_string()));
        }
    }
    imports.sort();
    let imports: Vec<String> = imports.into_iter().map(|(_, s)| s).collect();
    let kind = if has_module_syntax || (!commonjs_hint && !looks_commonjs(source)) {
        ModuleKind::Esm
    } else {
        ModuleKind::Cjs
    };
    if !typescript && source_type.is_javascript() && !source_type.is_jsx() {
        return Ok(Transpiled { code: source.to_string(), kind, imports });
    }
    let mut program = parsed.program;
    let semantic = SemanticBuilder::new().with_excess_capacity(2.0).build(&program);
    if let Some(diag) = semantic.diagnostics.errors().next() {
        return Err(syntax_error(path, source, diag));
    }
    let scoping = semantic.semantic.into_scoping();
    let options = TransformOptions::default();
    let ret = Transformer::new(&allocator, path, &options).build_with_scoping(scoping, &mut program);
    if let Some(diag) = ret.diagnostics.errors().next() {
        return Err(syntax_error(path, source, diag));
    }
    let code = Codegen::new().with_options(CodegenOptions::default()).build(&program).code;
    // Type-only imports are gone after stripping; keep the imports the output still has.
    let imports = imports.into_iter().filter(|s| code.contains(s.as_str())).collect();
    Ok(Transpiled { code, kind, imports })
}

/// A file without `import`/`export` that uses CommonJS's names.
fn looks_commonjs(source: &str) -> bool {
    source.contains("module.exports") || source.contains("exports.") || source.contains("require(")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_types_and_keeps_value_imports() {
        let src = r#"
import type * as Party from "partykit/server";
import { thing } from "./thing";
import { onlyType } from "./types";
export default class Chat implements Party.Server {
  constructor(readonly room: Party.Room) {}
  count: number = 0;
  onMessage(message: string, sender: Party.Connection): void {
    const x = thing as unknown as number;
    this.count += x;
  }
}
let y: onlyType;
"#;
        let out = transpile(Path::new("/p/server.ts"), src, false).unwrap();
        assert_eq!(out.kind, ModuleKind::Esm);
        assert!(!out.code.contains("Party.Room"), "{}", out.code);
        assert!(out.code.contains("this.room = room"), "{}", out.code);
        assert_eq!(out.imports, vec!["./thing".to_string()]);
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let src = "const a = 1;\nconst b: number = ;\n";
        let err = transpile(Path::new("/p/bad.ts"), src, false).unwrap_err();
        assert_eq!((err.file.as_str(), err.line), ("/p/bad.ts", 2), "{err}");
        assert!(err.to_string().starts_with("/p/bad.ts:2:"), "{err}");
    }

    #[test]
    fn javascript_is_kept_verbatim_and_commonjs_recognised() {
        let esm = transpile(Path::new("/p/a.js"), "export const a = 1;\n", true).unwrap();
        assert_eq!((esm.kind, esm.code.as_str()), (ModuleKind::Esm, "export const a = 1;\n"));
        let cjs = transpile(Path::new("/p/b.js"), "module.exports = function () {};\n", true).unwrap();
        assert_eq!(cjs.kind, ModuleKind::Cjs);
        let json = transpile(Path::new("/p/c.json"), "{\"a\": 1}", false).unwrap();
        assert_eq!(json.kind, ModuleKind::Json);
        let bad = transpile(Path::new("/p/d.json"), "{\n\"a\": }", false).unwrap_err();
        assert_eq!(bad.line, 2);
    }
}
