//! Topic names and filters (MQTT-4.7): validation, matching, and `$share` groups.

/// Why a topic name or filter is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("empty topic")]
    Empty,
    #[error("wildcards are not allowed in a topic name")]
    WildcardInName,
    #[error("`#` must be the last level, alone")]
    MisplacedHash,
    #[error("`+` must fill a whole level")]
    MisplacedPlus,
    #[error("more than {0} levels")]
    TooDeep(usize),
    #[error("a shared subscription is $share/GROUP/FILTER")]
    BadShare,
}

fn depth_ok(s: &str, max_depth: usize) -> Result<(), TopicError> {
    if s.split('/').count() > max_depth {
        return Err(TopicError::TooDeep(max_depth));
    }
    Ok(())
}

/// Checks a topic name a client publishes to.
pub fn check_name(name: &str, max_depth: usize) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    depth_ok(name, max_depth)
}

/// Checks a topic filter a client subscribes with (without any `$share/GROUP/` prefix).
pub fn check_filter(filter: &str, max_depth: usize) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(TopicError::MisplacedHash);
        }
        if level.contains('+') && *level != "+" {
            return Err(TopicError::MisplacedPlus);
        }
    }
    depth_ok(filter, max_depth)
}

/// A subscription's filter split from its share group: `$share/g/a/b` → `(Some("g"), "a/b")`.
pub fn split_share(filter: &str) -> Result<(Option<&str>, &str), TopicError> {
    match filter.strip_prefix("$share/") {
        None => Ok((None, filter)),
        Some(rest) => {
            let (group, f) = rest.split_once('/').ok_or(TopicError::BadShare)?;
            if group.is_empty() || group.contains(['+', '#']) || f.is_empty() {
                return Err(TopicError::BadShare);
            }
            Ok((Some(group), f))
        }
    }
}

/// Whether `filter` (valid) matches topic `name` (valid). Leading wildcards never match a
/// `$`-topic (MQTT-4.7.2-1).
pub fn matches(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut n = name.split('/');
    loop {
        match (f.next(), n.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn filters_and_names_are_checked() {
        for ok in ["a", "a/b", "+", "#", "a/+/c", "a/#", "+/+", "/", "a//b"] {
            check_filter(ok, 16).unwrap();
        }
        for bad in ["", "a#", "a/#/b", "a+", "a/b+/c", "#/a"] {
            assert!(check_filter(bad, 16).is_err(), "{bad}");
        }
        check_name("a/b", 16).unwrap();
        assert_eq!(check_name("a/+", 16), Err(TopicError::WildcardInName));
        assert_eq!(check_name("a/b/c", 2), Err(TopicError::TooDeep(2)));
        assert_eq!(split_share("$share/g/a/#").unwrap(), (Some("g"), "a/#"));
        assert_eq!(split_share("a/b").unwrap(), (None, "a/b"));
        assert!(split_share("$share/g").is_err());
        assert!(split_share("$share//a").is_err());
    }

    #[test]
    fn matching_follows_the_specification() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("+/+", "a/b", true),
            ("+", "/a", false),
            ("+/a", "/a", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/b", "a/c", false),
        ];
        for (f, n, want) in cases {
            assert_eq!(matches(f, n), want, "{f} vs {n}");
        }
    }
}
