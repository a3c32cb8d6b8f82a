//! The SQL workspace: a directory of `.sql` files, applied in name order at start-up.
//!
//! Data engineers keep sources, views and (later) c360's own statements in git as plain SQL.
//! Applying a workspace is declarative: every `CREATE` replaces what an earlier application
//! made, so applying the same files twice leaves the same catalog. Relative `LOCATION`s are
//! resolved against the file that names them, so the workspace works from any directory.
//! `${name}` placeholders are replaced by the settings' variables before parsing, so one
//! workspace serves the bundled demo and a generated data set alike.
//! The first failing statement stops the whole application with its file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;

use crate::error::{C360Error, Result};
use crate::{Engine, ddl};

/// One statement of a workspace file, with the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceStatement {
    pub line: usize,
    pub sql: String,
}

/// What applying a workspace did, for the start-up log.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Applied {
    pub files: usize,
    pub statements: usize,
}

/// Applies every `*.sql` file of `dir` in name order. A missing directory is an error: a
/// typo in `--workspace` must not start an empty server.
pub async fn apply(
    engine: &Engine,
    dir: &Path,
    variables: &BTreeMap<String, String>,
) -> Result<Applied> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| C360Error::io(dir, e))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "sql") && path.is_file())
        .collect();
    files.sort();

    let mut applied = Applied::default();
    for file in &files {
        applied.statements += apply_file(engine, file, variables).await?;
        applied.files += 1;
    }
    Ok(applied)
}

/// Applies one file and returns how many statements it held.
pub async fn apply_file(
    engine: &Engine,
    file: &Path,
    variables: &BTreeMap<String, String>,
) -> Result<usize> {
    let raw = std::fs::read_to_string(file).map_err(|e| C360Error::io(file, e))?;
    let text = substitute(&raw, variables).map_err(|(line, name)| C360Error::Workspace {
        file: file.to_path_buf(),
        line,
        message: format!(
            "unknown variable ${{{name}}}: set it with --var {name}=VALUE or [variables] in c360.toml"
        ),
    })?;
    let base_dir = file.parent().unwrap_or(Path::new("."));
    let ctx = engine.context();
    let statements = split_statements(&text);
    for statement in &statements {
        let at = |message: String| C360Error::Workspace {
            file: file.to_path_buf(),
            line: statement.line,
            message,
        };
        if let Some(own) = ddl::parse(&statement.sql).map_err(|e| at(e.0))? {
            engine
                .execute_c360(own, true)
                .await
                .map_err(|e| at(e.to_string()))?;
            continue;
        }
        let parsed = parse_one(&statement.sql).map_err(at)?;
        let declarative = make_declarative(parsed, base_dir);
        let plan = ctx
            .state()
            .statement_to_plan(declarative)
            .await
            .map_err(|e| at(e.to_string()))?;
        let outcome = ctx
            .execute_logical_plan(plan)
            .await
            .map_err(|e| at(e.to_string()))?;
        // DDL takes effect on planning; collecting also runs anything else the file asks for.
        outcome.collect().await.map_err(|e| at(e.to_string()))?;
    }
    Ok(statements.len())
}

fn parse_one(sql: &str) -> std::result::Result<DfStatement, String> {
    let dialect = PostgreSqlDialect {};
    let mut parser = DFParserBuilder::new(sql)
        .with_dialect(&dialect)
        .build()
        .map_err(|e| e.to_string())?;
    let mut statements = parser.parse_statements().map_err(|e| e.to_string())?;
    match (statements.pop_front(), statements.is_empty()) {
        (Some(statement), true) => Ok(statement),
        _ => Err("expected exactly one statement".to_string()),
    }
}

/// Turns `CREATE` into `CREATE OR REPLACE` and anchors relative locations at `base_dir`.
fn make_declarative(statement: DfStatement, base_dir: &Path) -> DfStatement {
    match statement {
        DfStatement::CreateExternalTable(mut create) => {
            if !create.if_not_exists {
                create.or_replace = true;
            }
            create.locations = create
                .locations
                .into_iter()
                .map(|location| anchor_location(&location, base_dir))
                .collect();
            DfStatement::CreateExternalTable(create)
        }
        DfStatement::Statement(boxed) => match *boxed {
            SqlStatement::CreateView(mut view) => {
                view.or_replace = true;
                DfStatement::Statement(Box::new(SqlStatement::CreateView(view)))
            }
            other => DfStatement::Statement(Box::new(other)),
        },
        other => other,
    }
}

fn anchor_location(location: &str, base_dir: &Path) -> String {
    let has_scheme = location
        .split_once("://")
        .is_some_and(|(scheme, _)| !scheme.is_empty());
    if has_scheme || Path::new(location).is_absolute() {
        return location.to_string();
    }
    let joined = base_dir.join(location);
    let mut anchored = joined.to_string_lossy().into_owned();
    // DataFusion reads a trailing slash as "a directory of files": keep it.
    if location.ends_with('/') && !anchored.ends_with('/') {
        anchored.push('/');
    }
    anchored
}

/// Replaces every `${name}` with its value; an unknown name gives its line and name.
fn substitute(
    text: &str,
    variables: &BTreeMap<String, String>,
) -> std::result::Result<String, (usize, String)> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let Some(len) = rest[start + 2..].find('}') else {
            break;
        };
        let name = &rest[start + 2..start + 2 + len];
        out.push_str(&rest[..start]);
        match variables.get(name) {
            Some(value) => out.push_str(value),
            None => {
                let line = text[..text.len() - rest.len() + start]
                    .matches('\n')
                    .count()
                    + 1;
                return Err((line, name.to_string()));
            }
        }
        rest = &rest[start + 3 + len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Splits SQL text on top-level `;`, skipping quotes, comments and dollar-quoted bodies.
/// Each statement keeps the line it starts on, for error messages.
pub fn split_statements(text: &str) -> Vec<SourceStatement> {
    let chars: Vec<char> = text.chars().collect();
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut start_line: Option<usize> = None;
    let mut line = 1;
    let mut i = 0;

    let mut flush = |current: &mut String, start_line: &mut Option<usize>| {
        let sql = current.trim();
        if let Some(line) = start_line.take()
            && !sql.is_empty()
        {
            statements.push(SourceStatement {
                line,
                sql: sql.to_string(),
            });
        }
        current.clear();
    };

    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '-' && next == Some('-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '/' && next == Some('*') {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                if chars[i] == '\n' {
                    line += 1;
                }
                i += 1;
            }
            i += 2;
            current.push(' ');
            continue;
        }
        if c == '\n' {
            line += 1;
            current.push(c);
            i += 1;
            continue;
        }
        if c == ';' {
            flush(&mut current, &mut start_line);
            i += 1;
            continue;
        }
        if !c.is_whitespace() && start_line.is_none() {
            start_line = Some(line);
        }
        if c == '\'' || c == '"' {
            // Quoted literal or identifier; a doubled quote is an escaped one.
            current.push(c);
            i += 1;
            while i < chars.len() {
                let q = chars[i];
                current.push(q);
                i += 1;
                if q == '\n' {
                    line += 1;
                }
                if q == c {
                    if chars.get(i) == Some(&c) {
                        current.push(c);
                        i += 1;
                    } else {
                        break;
                    }
                }
            }
            continue;
        }
        if c == '$'
            && let Some(tag_len) = dollar_tag_len(&chars[i..])
        {
            let tag: String = chars[i..i + tag_len].iter().collect();
            current.push_str(&tag);
            i += tag_len;
            while i < chars.len() {
                if chars[i..].starts_with(&chars_of(&tag)) {
                    current.push_str(&tag);
                    i += tag_len;
                    break;
                }
                if chars[i] == '\n' {
                    line += 1;
                }
                current.push(chars[i]);
                i += 1;
            }
            continue;
        }
        current.push(c);
        i += 1;
    }
    flush(&mut current, &mut start_line);
    statements
}

/// Length of a `$tag$` opener at the start of `chars`, if there is one.
fn dollar_tag_len(chars: &[char]) -> Option<usize> {
    let close = chars.iter().skip(1).position(|&c| c == '$')? + 1;
    let tag_is_word = chars[1..close]
        .iter()
        .all(|c| c.is_alphanumeric() || *c == '_');
    let starts_like_identifier = chars.get(1).is_none_or(|c| !c.is_ascii_digit());
    (tag_is_word && starts_like_identifier).then_some(close + 1)
}

fn chars_of(s: &str) -> Vec<char> {
    s.chars().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_and_sql(text: &str) -> Vec<(usize, String)> {
        split_statements(text)
            .into_iter()
            .map(|s| (s.line, s.sql))
            .collect()
    }

    #[test]
    fn splits_on_semicolons_and_keeps_start_lines() {
        let text = "-- header\nSELECT 1;\n\n  SELECT\n  2;\nSELECT 3";
        assert_eq!(
            lines_and_sql(text),
            vec![
                (2, "SELECT 1".to_string()),
                (4, "SELECT\n  2".to_string()),
                (6, "SELECT 3".to_string())
            ]
        );
    }

    #[test]
    fn semicolons_inside_quotes_comments_and_dollar_bodies_do_not_split() {
        let text = "SELECT 'a;b', \"c;d\" /* x; y */;\nSELECT $$ e; f $$; SELECT 'it''s;'";
        let got = lines_and_sql(text);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0].1, "SELECT 'a;b', \"c;d\"");
        assert_eq!(got[1], (2, "SELECT $$ e; f $$".to_string()));
        assert_eq!(got[2].1, "SELECT 'it''s;'");
    }

    #[test]
    fn comment_only_text_has_no_statements() {
        assert!(split_statements("-- nothing\n/* here */\n;;\n").is_empty());
    }

    #[test]
    fn relative_locations_are_anchored_at_the_file() {
        let base = Path::new("/repo/sql");
        assert_eq!(anchor_location("../data/x/", base), "/repo/sql/../data/x/");
        assert_eq!(anchor_location("/abs/x", base), "/abs/x");
        assert_eq!(anchor_location("s3://b/x/", base), "s3://b/x/");
    }

    #[test]
    fn variables_are_substituted_and_unknown_ones_named() {
        let vars: BTreeMap<String, String> = [("sources".to_string(), "/d".to_string())].into();
        assert_eq!(
            substitute("LOCATION '${sources}/events/'", &vars).unwrap(),
            "LOCATION '/d/events/'"
        );
        assert_eq!(
            substitute("SELECT 1;\nSELECT '${nope}'", &vars).unwrap_err(),
            (2, "nope".to_string())
        );
    }

    #[tokio::test]
    async fn applying_twice_is_harmless_and_errors_name_file_and_line() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("10_t.sql"),
            "CREATE VIEW one AS SELECT 1 AS x;\n",
        )
        .unwrap();
        let settings = crate::Settings {
            data: data.path().display().to_string(),
            workspace: tmp.path().to_path_buf(),
            ..crate::Settings::default()
        };
        let engine = Engine::open(settings).await.unwrap();
        let vars = BTreeMap::new();
        let applied = apply(&engine, tmp.path(), &vars).await.unwrap();
        assert_eq!(
            applied,
            Applied {
                files: 1,
                statements: 1
            }
        );

        std::fs::write(
            tmp.path().join("20_bad.sql"),
            "SELECT 1;\n\nSELECT * FROM no_such_table;\n",
        )
        .unwrap();
        let err = apply(&engine, tmp.path(), &vars)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("20_bad.sql:3:"), "{err}");
        assert!(err.contains("no_such_table"), "{err}");
    }
}
