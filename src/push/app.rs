//! App (game) names. An app name is part of its topics and names its token tables, so what a
//! valid one is is a domain rule, checked by the config and by the token deleter alike.

use super::Platform;

/// Letters, digits, '_' and '-' only (as `^[a-zA-Z0-9_-]+$`): such a name is safe in a topic
/// and, quoted, as a table name.
pub fn is_valid_name(app: &str) -> bool {
    // A char test needs no regex.
    !app.is_empty()
        && app
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The table holding an app's tokens for a platform (`game_apns`); `None` for an invalid name.
pub fn table_name(app: &str, platform: Platform) -> Option<String> {
    is_valid_name(app).then(|| format!("{app}_{platform}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            table_name("game", Platform::Apns).as_deref(),
            Some("game_apns")
        );
        assert_eq!(
            table_name("my-game_2", Platform::Gcm).as_deref(),
            Some("my-game_2_gcm")
        );
        for bad in ["", "a b", "a\"b", "a;drop", "é", "a.b"] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }
}
