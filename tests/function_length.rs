//! No function in `src/` is longer than [`MAX_LINES`], counted from the line
//! of its `fn` to the line of its closing brace. A long function is a sign
//! that decisions and I/O, or several decisions, share one body; a function
//! that is only a table of data is the one exception ([`TABLES_OF_DATA`]).
//!
//! The scan is lexical, not a parser: comments, strings and character
//! literals are blanked out first, then `fn` items are matched to their
//! closing brace. `syn` would be exact but is not a dependency of this crate.

use std::path::{Path, PathBuf};

const MAX_LINES: usize = 80;

// Entries name a function by its file and qualified name
// (`src/telemetry.rs::Metrics::new`), or every function of a file
// (`src/cli.rs::*`).

/// Functions that are only a table of data, allowed to be long.
const TABLES_OF_DATA: &[&str] = &[];

/// TEMPORARY: functions over the limit that other branches are splitting
/// right now. Remove each entry as its split lands (the test below says when
/// one is stale); nothing new goes in. When it is empty, delete it.
const STILL_BEING_SPLIT: &[&str] = &[];

/// One `fn` with a body.
#[derive(Debug, PartialEq)]
struct Function {
    /// Enclosing `mod`, `impl`, `trait` and `fn` names, then its own.
    name: String,
    /// 1-based line of the `fn` keyword.
    line: usize,
    lines: usize,
}

/// The text with every comment, string and character literal replaced by
/// spaces, line breaks kept, so braces and `fn`s left are code.
fn blank_non_code(text: &str) -> Vec<char> {
    let src: Vec<char> = text.chars().collect();
    let mut out = src.clone();
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for c in &mut out[from..to.min(src.len())] {
            if *c != '\n' {
                *c = ' ';
            }
        }
    };
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < src.len() {
        let at = |k: usize| src.get(k).copied().unwrap_or('\0');
        let starts_token = i == 0 || !is_ident(src[i - 1]);
        if at(i) == '/' && at(i + 1) == '/' {
            let end = (i..src.len())
                .find(|&k| src[k] == '\n')
                .unwrap_or(src.len());
            blank(&mut out, i, end);
            i = end;
        } else if at(i) == '/' && at(i + 1) == '*' {
            let (mut depth, mut k) = (0usize, i);
            while k < src.len() {
                if at(k) == '/' && at(k + 1) == '*' {
                    depth += 1;
                    k += 2;
                } else if at(k) == '*' && at(k + 1) == '/' {
                    depth -= 1;
                    k += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    k += 1;
                }
            }
            blank(&mut out, i, k);
            i = k;
        } else if let Some(end) = starts_token.then(|| raw_string_end(&src, i)).flatten() {
            blank(&mut out, i, end);
            i = end;
        } else if at(i) == '"' {
            let mut k = i + 1;
            while k < src.len() && src[k] != '"' {
                k += if src[k] == '\\' { 2 } else { 1 };
            }
            blank(&mut out, i, k + 1);
            i = k + 1;
        } else if at(i) == '\'' && at(i + 1) == '\\' {
            // An escaped char: '\n', '\'', '\u{7b}'.
            let end = (i + 3..src.len())
                .find(|&k| src[k] == '\'')
                .unwrap_or(src.len());
            blank(&mut out, i, end + 1);
            i = end + 1;
        } else if at(i) == '\'' && at(i + 2) == '\'' {
            blank(&mut out, i, i + 3);
            i += 3;
        } else {
            // Anything else, lifetimes and labels (`'a`) included, is code.
            i += 1;
        }
    }
    out
}

/// Where a raw string (`r"…"`, `r#"…"#`, `br"…"`, `cr"…"`) starting at `i`
/// ends, one past its last character.
fn raw_string_end(src: &[char], i: usize) -> Option<usize> {
    let mut k = i;
    if matches!(src.get(k), Some('b' | 'c')) {
        k += 1;
    }
    if src.get(k) != Some(&'r') {
        return None;
    }
    k += 1;
    let hashes = src[k..].iter().take_while(|&&c| c == '#').count();
    k += hashes;
    if src.get(k) != Some(&'"') {
        return None;
    }
    k += 1;
    while k < src.len() {
        if src[k] == '"'
            && src[k + 1..]
                .iter()
                .take(hashes)
                .filter(|&&c| c == '#')
                .count()
                == hashes
        {
            return Some(k + 1 + hashes);
        }
        k += 1;
    }
    Some(src.len())
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Punct(&'static str),
}

/// Identifiers and the punctuation that shapes items, with their lines.
fn tokens(code: &[char]) -> Vec<(Token, usize)> {
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < code.len() {
        let c = code[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < code.len() && (code[i].is_alphanumeric() || code[i] == '_') {
                i += 1;
            }
            out.push((Token::Ident(code[start..i].iter().collect()), line));
        } else {
            let punct = match (c, code.get(i + 1)) {
                ('-', Some('>')) => Some("->"),
                ('{', _) => Some("{"),
                ('}', _) => Some("}"),
                ('(' | '[', _) => Some("("),
                (')' | ']', _) => Some(")"),
                (';', _) => Some(";"),
                ('<', _) => Some("<"),
                ('>', _) => Some(">"),
                _ => None,
            };
            if let Some(p) = punct {
                out.push((Token::Punct(p), line));
            }
            i += if punct == Some("->") { 2 } else { 1 };
        }
    }
    out
}

/// The type an `impl` header (the tokens between `impl` and `{`) is for:
/// `impl<T> Trait<T> for Type<T> where …` -> `Type`.
fn impl_type(header: &[Token]) -> String {
    let mut rest = header;
    if rest.first() == Some(&Token::Punct("<")) {
        let mut depth = 0;
        let end = rest.iter().position(|t| {
            match t {
                Token::Punct("<") => depth += 1,
                Token::Punct(">") => depth -= 1,
                _ => {}
            }
            depth == 0
        });
        rest = &rest[end.map_or(rest.len(), |e| e + 1)..];
    }
    let before_where = rest
        .iter()
        .position(|t| *t == Token::Ident("where".into()))
        .unwrap_or(rest.len());
    rest = &rest[..before_where];
    let mut depth = 0;
    let for_at = rest.iter().position(|t| {
        match t {
            Token::Punct("<") => depth += 1,
            Token::Punct(">") => depth -= 1,
            _ => {}
        }
        depth == 0 && *t == Token::Ident("for".into())
    });
    if let Some(f) = for_at {
        rest = &rest[f + 1..];
    }
    rest.iter()
        .take_while(|t| **t != Token::Punct("<"))
        .filter_map(|t| match t {
            Token::Ident(s) if s != "dyn" && s != "mut" => Some(s.clone()),
            _ => None,
        })
        .last()
        .unwrap_or_else(|| "?".into())
}

/// What an open brace belongs to.
enum Block {
    /// A function: its index in the output.
    Function(usize),
    /// A `mod`, `impl` or `trait`: its name.
    Named(String),
    Other,
}

/// Every `fn` with a body in one file's text.
fn functions(text: &str) -> Vec<Function> {
    let tokens = tokens(&blank_non_code(text));
    let mut found: Vec<Function> = Vec::new();
    let mut open: Vec<Block> = Vec::new();
    // A `fn`/`mod`/`impl`/`trait` header seen, its body not yet opened.
    let mut pending: Option<(Block, usize)> = None;
    let mut depth = 0usize; // parentheses and brackets, inside a header
    let path = |open: &[Block], found: &[Function]| -> Vec<String> {
        open.iter()
            .filter_map(|b| match b {
                Block::Function(i) => found[*i].name.rsplit("::").next().map(String::from),
                Block::Named(n) => Some(n.clone()),
                Block::Other => None,
            })
            .collect()
    };
    for (i, (token, line)) in tokens.iter().enumerate() {
        let next = tokens.get(i + 1).map(|t| &t.0);
        match token {
            Token::Ident(kw)
                if pending.is_none() && (kw == "fn" || kw == "mod" || kw == "trait") =>
            {
                if let Some(Token::Ident(name)) = next {
                    let block = if kw == "fn" {
                        let mut qualified = path(&open, &found);
                        qualified.push(name.clone());
                        found.push(Function {
                            name: qualified.join("::"),
                            line: *line,
                            lines: 0,
                        });
                        Block::Function(found.len() - 1)
                    } else {
                        Block::Named(name.clone())
                    };
                    pending = Some((block, 0));
                    depth = 0;
                }
            }
            Token::Ident(kw) if pending.is_none() && kw == "impl" => {
                let header: Vec<Token> = tokens[i + 1..]
                    .iter()
                    .map(|t| t.0.clone())
                    .take_while(|t| *t != Token::Punct("{") && *t != Token::Punct(";"))
                    .collect();
                pending = Some((Block::Named(impl_type(&header)), 0));
                depth = 0;
            }
            Token::Punct("(") if pending.is_some() => depth += 1,
            Token::Punct(")") if pending.is_some() => depth = depth.saturating_sub(1),
            Token::Punct(";") if pending.is_some() && depth == 0 => {
                // A declaration without a body: `fn f();` in a trait, `mod m;`.
                if let Some((Block::Function(f), _)) = pending.take() {
                    found.remove(f);
                }
            }
            Token::Punct("{") => match pending.take() {
                Some((block, _)) if depth == 0 => open.push(block),
                Some(p) => {
                    pending = Some(p);
                    open.push(Block::Other);
                }
                None => open.push(Block::Other),
            },
            Token::Punct("}") => {
                if let Some(Block::Function(f)) = open.pop() {
                    found[f].lines = line - found[f].line + 1;
                }
            }
            _ => {}
        }
    }
    found
}

fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = Vec::new();
    walk(&root.join("src"), &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("a source file");
            let relative = p.strip_prefix(root).unwrap().to_string_lossy();
            (relative.replace('\\', "/"), text)
        })
        .collect()
}

fn names(entry: &str, id: &str) -> bool {
    match entry.strip_suffix('*') {
        Some(prefix) => id.starts_with(prefix),
        None => id == entry,
    }
}

fn allowed() -> Vec<&'static str> {
    TABLES_OF_DATA
        .iter()
        .chain(STILL_BEING_SPLIT)
        .copied()
        .collect()
}

/// `file:line file::name (N lines)` for each function over the limit and
/// not in `allowed`.
fn too_long(files: &[(String, String)], allowed: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for (file, text) in files {
        for f in functions(text) {
            let id = format!("{file}::{}", f.name);
            if f.lines > MAX_LINES && !allowed.iter().any(|entry| names(entry, &id)) {
                out.push(format!("{file}:{} {id} ({} lines)", f.line, f.lines));
            }
        }
    }
    out
}

#[test]
fn no_function_in_src_is_over_the_limit() {
    let long = too_long(&sources(), &allowed());
    assert!(
        long.is_empty(),
        "functions over {MAX_LINES} lines (split them into helpers that each do one thing):\n{}",
        long.join("\n")
    );
}

/// An entry for a function that is no longer long, or no longer exists, is
/// stale: the lists only shrink.
#[test]
fn every_allowed_entry_names_a_long_function() {
    let files = sources();
    for entry in TABLES_OF_DATA.iter().chain(STILL_BEING_SPLIT) {
        let matched = files.iter().any(|(file, text)| {
            functions(text)
                .iter()
                .any(|f| f.lines > MAX_LINES && names(entry, &format!("{file}::{}", f.name)))
        });
        assert!(
            matched,
            "{entry} is allowed to be long but names no function over {MAX_LINES} lines: remove it"
        );
    }
}

/// The scanner itself, on braces and `fn`s that are not code.
#[test]
fn the_scanner_counts_bodies_and_ignores_braces_that_are_not_code() {
    let text = r####"
mod outer {
    struct S;
    impl<T: Into<String>> From<T> for S where T: Fn() -> u8 {
        fn from(_: T) -> S {
            let _ = "}}} fn fake() {";
            let _ = '}';
            let _ = '\'';
            let _ = '\u{7d}';
            let _ = r#"} " }"#;
            let _ = b"{";
            S
        }
    }
    trait T {
        fn declared(&self, x: [u8; 4]);
        fn provided<'a>(&'a self) -> &'a str {
            // } fn in_comment() {
            /* } /* nested } */ { */
            'label: loop { break 'label; }
            ""
        }
    }
    fn takes_pointer(f: fn(u8) -> u8) -> u8 {
        fn inner() {}
        f(1)
    }
}
"####;
    let found = functions(text);
    let summary: Vec<(&str, usize, usize)> = found
        .iter()
        .map(|f| (f.name.as_str(), f.line, f.lines))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("outer::S::from", 5, 9),
            ("outer::T::provided", 17, 6),
            ("outer::takes_pointer", 24, 4),
            ("outer::takes_pointer::inner", 25, 1),
        ]
    );
}

/// A function of one line over the limit is reported with its file, line,
/// name and length; one at the limit is not.
#[test]
fn a_function_over_the_limit_is_reported() {
    let body = |n: usize| "    let _ = 1;\n".repeat(n - 2);
    let files = vec![
        (
            "src/x.rs".to_string(),
            format!(
                "fn at_limit() {{\n{}}}\nimpl X {{\n    fn over() {{\n{}    }}\n}}\n",
                body(MAX_LINES),
                body(MAX_LINES + 1)
            ),
        ),
        (
            "src/cli.rs".to_string(),
            format!("fn allowed() {{\n{}}}\n", body(MAX_LINES + 1)),
        ),
    ];
    assert_eq!(
        too_long(&files, &["src/cli.rs::*"]),
        vec![format!(
            "src/x.rs:{} src/x.rs::X::over ({} lines)",
            MAX_LINES + 2,
            MAX_LINES + 1
        )]
    );
}
