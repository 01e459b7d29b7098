//! Identifiers in the fault's SQL: checked, then quoted, never spliced raw.
//! Values are always bound as parameters.

use super::DbError;

/// Accepts `name` or `schema.name` made of letters, digits, `_` and `$`.
pub(crate) fn check_identifier(name: &str) -> Result<(), DbError> {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 63
            && p.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    };
    let ok = match name.split_once('.') {
        Some((schema, table)) => part_ok(schema) && part_ok(table),
        None => part_ok(name),
    };
    if ok {
        Ok(())
    } else {
        Err(DbError::BadParams(format!(
            "`{name}` is not a plain identifier (letters, digits, `_`, optionally `schema.table`)"
        )))
    }
}

/// `"schema"."table"` for PostgreSQL and SQLite.
pub(crate) fn quote_pg(name: &str) -> String {
    name.split('.')
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// `` `schema`.`table` `` for MySQL.
pub(crate) fn quote_my(name: &str) -> String {
    name.split('.')
        .map(|p| format!("`{}`", p.replace('`', "``")))
        .collect::<Vec<_>>()
        .join(".")
}

pub(crate) fn op_sql(op: faultline_spec::fault::FilterOp) -> &'static str {
    use faultline_spec::fault::FilterOp::*;
    match op {
        Eq => "=",
        Ne => "<>",
        Lt => "<",
        Le => "<=",
        Gt => ">",
        Ge => ">=",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_pg("app.jobs"), "\"app\".\"jobs\"");
        assert_eq!(quote_my("jobs"), "`jobs`");
        assert!(check_identifier("jobs").is_ok());
        assert!(check_identifier("a.b").is_ok());
        for bad in ["", "1x", "a.b.c", "jobs;", "jo bs", "\"x\""] {
            assert!(check_identifier(bad).is_err(), "{bad:?}");
        }
    }
}
