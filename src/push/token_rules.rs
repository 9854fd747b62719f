//! Deterministic per-token behaviour of the fake servers, keyed on a token's first four
//! characters. The generator makes such tokens (`--invalid-ratio`), the fakes obey them, and
//! tests and the bench use them to know in advance which pushes must fail and how.
//! The prefixes are hex so that they are valid APNs tokens too.

/// What a fake server does with a token, by its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenRule {
    /// `dead…`: APNs 410 Unregistered (with a timestamp); FCM 404 UNREGISTERED.
    Unregistered,
    /// `bad0…`: APNs 400 BadDeviceToken; FCM 400 INVALID_ARGUMENT naming the token.
    BadToken,
    /// `0ff0…`: APNs 400 DeviceTokenNotForTopic; FCM 403 SENDER_ID_MISMATCH.
    WrongTopic,
    /// `5030…`: the first attempt gets APNs 503 ServiceUnavailable / FCM 503 UNAVAILABLE,
    /// later attempts succeed.
    UnavailableOnce,
    /// `4290…`: the first attempt gets 429 (TooManyRequests / QUOTA_EXCEEDED) with
    /// `Retry-After: 1`, later attempts succeed.
    ThrottledOnce,
}

const RULES: &[(TokenRule, &str)] = &[
    (TokenRule::Unregistered, "dead"),
    (TokenRule::BadToken, "bad0"),
    (TokenRule::WrongTopic, "0ff0"),
    (TokenRule::UnavailableOnce, "5030"),
    (TokenRule::ThrottledOnce, "4290"),
];

impl TokenRule {
    /// The rule a token falls under, if any (case-insensitive).
    pub fn of(token: &str) -> Option<TokenRule> {
        let head = token.get(..4)?;
        RULES
            .iter()
            .find(|(_, p)| head.eq_ignore_ascii_case(p))
            .map(|(r, _)| *r)
    }

    pub fn prefix(self) -> &'static str {
        RULES
            .iter()
            .find(|(r, _)| *r == self)
            .map(|(_, p)| *p)
            .unwrap_or("")
    }

    /// Rewrites the start of `token` so that it falls under this rule.
    pub fn apply(self, token: &str) -> String {
        let rest = token.get(4..).unwrap_or("");
        format!("{}{}", self.prefix(), rest)
    }

    /// True when the push can never succeed (the token must be deleted).
    pub fn is_token_invalid(self) -> bool {
        matches!(
            self,
            TokenRule::Unregistered | TokenRule::BadToken | TokenRule::WrongTopic
        )
    }

    pub fn all() -> impl Iterator<Item = TokenRule> {
        RULES.iter().map(|(r, _)| *r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_then_of_is_identity() {
        let token = "ab".repeat(32);
        for rule in TokenRule::all() {
            let t = rule.apply(&token);
            assert_eq!(t.len(), token.len());
            assert_eq!(TokenRule::of(&t), Some(rule));
        }
        assert_eq!(TokenRule::of(&token), None);
        assert_eq!(TokenRule::of("de"), None);
    }
}
