//! One-shot commands a person gives through the `serin.dev/command` annotation.

pub use serin_api::CommandKind;

/// A command and the nonce that makes it run once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// What to do.
    pub kind: CommandKind,
    /// Any string that differs from the last command's; status acknowledges it.
    pub nonce: String,
}

/// Reads `<command>/<nonce>`, for example `promote/1732201337`. The error says what
/// a valid value looks like.
pub fn parse(annotation: &str) -> Result<Command, String> {
    let (name, nonce) = annotation.split_once('/').unwrap_or((annotation, ""));
    let Some(kind) = CommandKind::from_name(name) else {
        return Err(format!(
            "unknown command {name:?}: use promote, promote-full, abort, retry or approve, as <command>/<nonce>"
        ));
    };
    if nonce.is_empty() {
        return Err(format!(
            "{name} has no nonce: write {name}/<nonce> with a value not used before, for example {name}/$(date +%s)"
        ));
    }
    Ok(Command {
        kind,
        nonce: nonce.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_command() {
        for kind in [
            CommandKind::Promote,
            CommandKind::PromoteFull,
            CommandKind::Abort,
            CommandKind::Retry,
        ] {
            let command = parse(&format!("{kind}/n1"));
            assert_eq!(
                command,
                Ok(Command {
                    kind,
                    nonce: "n1".into()
                })
            );
        }
    }

    #[test]
    fn refuses_unknown_commands_and_missing_nonces() {
        assert!(parse("rollback/1").unwrap_err().contains("unknown command"));
        assert!(parse("abort").unwrap_err().contains("no nonce"));
        assert!(parse("abort/").unwrap_err().contains("no nonce"));
    }
}
