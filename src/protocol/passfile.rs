//! The password file (`~/.pgpass`, `passfile`, `PGPASSFILE`) as libpq reads it.
//!
//! Pure: [`lookup`] takes the file's text; `connection.rs` reads the file,
//! checks its permissions and decides the fields to match. Each line is
//! `hostname:port:database:username:password`; a field that is exactly `*`
//! matches anything, `\` escapes the next character (`\:`, `\\`), lines
//! starting with `#` are comments, and the first matching line wins.

use std::path::Path;

/// The `database` field walvault matches: libpq matches the connection's
/// dbname, and PostgreSQL's own physical replication clients (walreceiver,
/// pg_basebackup, pg_receivewal) connect with `dbname=replication` so that
/// `.pgpass` lines for `replication` apply.
pub const REPLICATION_DATABASE: &str = "replication";

/// libpq's name for the local host in the password file.
const LOCALHOST: &str = "localhost";

/// Socket directories libpq builds may use as their default; a connection
/// through one of them matches `localhost`.
const DEFAULT_SOCKET_DIRS: &[&str] = &["/tmp", "/var/run/postgresql", "/run/postgresql"];

/// The `hostname` field a connection matches: the host name (or the
/// `hostaddr` when no host is given); `localhost` for the default socket
/// directory, the directory itself for other sockets.
pub fn host_field(host: &str) -> &str {
    if host.is_empty() {
        return LOCALHOST;
    }
    if host.starts_with('/') {
        let trimmed = if host.len() > 1 {
            host.trim_end_matches('/')
        } else {
            host
        };
        if DEFAULT_SOCKET_DIRS.contains(&trimmed) {
            return LOCALHOST;
        }
    }
    host
}

/// The password of the first line matching all four fields, if any.
pub fn lookup(
    contents: &str,
    host: &str,
    port: &str,
    database: &str,
    user: &str,
) -> Option<String> {
    for line in contents.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let rest = [host, port, database, user]
            .iter()
            .try_fold(line, |rest, token| match_field(rest, token));
        if let Some(rest) = rest {
            return Some(unescape_password(rest));
        }
    }
    None
}

/// Whether the password file's mode lets libpq use it: no group or other
/// permissions (libpq warns and ignores it otherwise).
pub fn is_private_mode(mode: u32) -> bool {
    mode & 0o077 == 0
}

/// Text for the warning when a password file is ignored for its permissions.
pub fn insecure_warning(path: &Path) -> String {
    format!(
        "password file {} has group or world access; permissions should be u=rw (0600) or less",
        path.display()
    )
}

/// Matches one field at the start of `line` against `token`; returns the
/// rest of the line after the field's `:`.
fn match_field<'a>(line: &'a str, token: &str) -> Option<&'a str> {
    if let Some(rest) = line.strip_prefix("*:") {
        return Some(rest);
    }
    let mut chars = line.char_indices();
    let mut expected = token.chars();
    loop {
        let (i, c) = chars.next()?;
        let (c, escaped) = if c == '\\' {
            match chars.next() {
                Some((_, n)) => (n, true),
                // A trailing backslash ends the line without a field separator.
                None => return None,
            }
        } else {
            (c, false)
        };
        if c == ':' && !escaped {
            return if expected.next().is_none() {
                Some(&line[i + 1..])
            } else {
                None
            };
        }
        if expected.next() != Some(c) {
            return None;
        }
    }
}

/// The password field: up to the first unescaped `:`, backslashes removed.
fn unescape_password(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ':' => break,
            '\\' if chars.peek().is_some() => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_line_wins() {
        let file = "\
# comment:*:*:*:nope
db.example:5432:replication:arch:first
*:*:*:arch:second
*:*:*:*:third
";
        let find = |h, p, d, u| lookup(file, h, p, d, u);
        assert_eq!(
            find("db.example", "5432", "replication", "arch").as_deref(),
            Some("first")
        );
        assert_eq!(
            find("db.example", "5433", "replication", "arch").as_deref(),
            Some("second")
        );
        assert_eq!(
            find("db.example", "5432", "postgres", "arch").as_deref(),
            Some("second")
        );
        assert_eq!(find("other", "1", "x", "someone").as_deref(), Some("third"));
        assert_eq!(lookup("", "h", "1", "d", "u"), None);
    }

    #[test]
    fn fields_must_match_exactly() {
        let file = "db:5432:replication:arch:pw\n";
        assert_eq!(lookup(file, "db2", "5432", "replication", "arch"), None);
        assert_eq!(lookup(file, "d", "5432", "replication", "arch"), None);
        assert_eq!(lookup(file, "db", "5432", "replication", "archer"), None);
        // "*" is a wildcard only as the whole field.
        assert_eq!(lookup("d*:*:*:*:pw", "db", "1", "d", "u"), None);
        assert_eq!(
            lookup("*x:*:*:*:pw", "*x", "1", "d", "u").as_deref(),
            Some("pw")
        );
        // A line with too few fields matches nothing.
        assert_eq!(
            lookup(
                "db:5432:replication:arch",
                "db",
                "5432",
                "replication",
                "arch"
            ),
            None
        );
    }

    #[test]
    fn escapes() {
        // "\:" and "\\" in the key fields and in the password.
        let file = "my\\:host:5432:*:us\\\\er:pa\\:ss\\\\word:ignored\r\n";
        assert_eq!(
            lookup(file, "my:host", "5432", "replication", "us\\er").as_deref(),
            Some("pa:ss\\word")
        );
        assert_eq!(lookup(file, "my", "5432", "replication", "us\\er"), None);
        // The password stops at the first unescaped ":" and may be empty.
        assert_eq!(
            lookup("*:*:*:*:a:b", "h", "1", "d", "u").as_deref(),
            Some("a")
        );
        assert_eq!(lookup("*:*:*:*:", "h", "1", "d", "u").as_deref(), Some(""));
    }

    #[test]
    fn host_field_follows_libpq() {
        assert_eq!(host_field("/tmp"), "localhost");
        assert_eq!(host_field("/var/run/postgresql/"), "localhost");
        assert_eq!(host_field("/srv/pg/sock"), "/srv/pg/sock");
        assert_eq!(host_field("db.example"), "db.example");
        assert_eq!(host_field(""), "localhost");
    }

    #[test]
    fn modes() {
        assert!(is_private_mode(0o600));
        assert!(is_private_mode(0o400));
        assert!(!is_private_mode(0o640));
        assert!(!is_private_mode(0o604));
    }
}
