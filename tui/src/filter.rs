//! The `/` filter: space-separated terms, all of which a row must match.
//!
//! `pid:N` matches a process id exactly, `comm:X`, `kind:X` and `chan:X`
//! match a substring (case-insensitive) of the command name, the event or
//! channel kind and the channel name; a bare word matches any of them.

use ipc_events::ChannelKind;

/// A filter term that could not be understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("unknown field {field:?}: use pid: comm: kind: chan:")]
    /// `field:` is not one of the filter's fields.
    UnknownField { field: String },
    #[error("pid:{value} is not a process id")]
    /// `pid:` followed by something that is not a number.
    BadPid { value: String },
    #[error("{field}: needs a value")]
    /// A field with nothing after its colon.
    Empty { field: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Term {
    Pid(u32),
    Comm(String),
    Kind(String),
    Chan(String),
    Any(String),
}

/// A parsed filter; the empty filter matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    terms: Vec<Term>,
}

/// What a row offers to be matched against.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fields<'a> {
    /// Process (and thread) ids the row involves.
    pub pids: &'a [u32],
    /// Their command names.
    pub comms: &'a [&'a str],
    /// Event and channel kinds.
    pub kinds: &'a [&'a str],
    /// The channel's name.
    pub chan: &'a str,
}

impl Filter {
    /// Parses the text typed after `/`.
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        let terms = text
            .split_whitespace()
            .map(|word| {
                let Some((field, value)) = word.split_once(':') else {
                    return Ok(Term::Any(word.to_lowercase()));
                };
                // Channel names contain colons ("pipe:[42]",
                // "socket:[7]<->[8]"): those are text, not fields.
                if names_a_channel(field) {
                    return Ok(Term::Any(word.to_lowercase()));
                }
                if !matches!(field, "pid" | "comm" | "kind" | "chan") {
                    return Err(FilterError::UnknownField {
                        field: field.to_owned(),
                    });
                }
                if value.is_empty() {
                    return Err(FilterError::Empty {
                        field: field.to_owned(),
                    });
                }
                let value_lc = value.to_lowercase();
                Ok(match field {
                    "pid" => Term::Pid(value.parse().map_err(|_| FilterError::BadPid {
                        value: value.to_owned(),
                    })?),
                    "comm" => Term::Comm(value_lc),
                    "kind" => Term::Kind(value_lc),
                    _ => Term::Chan(value_lc),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Filter { terms })
    }

    /// Whether the filter has no terms (and so matches everything).
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Whether a row with these fields passes every term.
    pub fn matches(&self, f: &Fields<'_>) -> bool {
        self.terms.iter().all(|term| match term {
            Term::Pid(pid) => f.pids.contains(pid),
            Term::Comm(s) => f.comms.iter().any(|c| contains(c, s)),
            Term::Kind(s) => f.kinds.iter().any(|k| contains(k, s)),
            Term::Chan(s) => contains(f.chan, s),
            Term::Any(s) => {
                s.parse().is_ok_and(|pid| f.pids.contains(&pid))
                    || f.comms.iter().any(|c| contains(c, s))
                    || f.kinds.iter().any(|k| contains(k, s))
                    || contains(f.chan, s)
            }
        })
    }
}

/// Whether `field` is how a channel name starts rather than a filter field.
fn names_a_channel(field: &str) -> bool {
    field.parse::<ChannelKind>().is_ok()
        || field == "socket"
        || !field.starts_with(|c: char| c.is_ascii_alphabetic())
}

/// Case-insensitive substring; `needle` is already lowercase.
fn contains(haystack: &str, needle: &str) -> bool {
    if haystack.is_ascii() {
        // The common case, without allocating per row.
        haystack
            .as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
            || needle.is_empty()
    } else {
        haystack.to_lowercase().contains(needle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(pids: &'a [u32], comms: &'a [&'a str], chan: &'a str) -> Fields<'a> {
        Fields {
            pids,
            comms,
            kinds: &["msg_send", "ipclib_channel"],
            chan,
        }
    }

    #[test]
    fn terms_must_all_match() {
        let row = fields(&[10, 11], &["Producer", "consumer"], "/jobs");
        let yes = |s| Filter::parse(s).unwrap().matches(&row);
        assert!(yes(""));
        assert!(yes("pid:10"));
        assert!(!yes("pid:1"), "pids match exactly, not as substrings");
        assert!(yes("comm:prod kind:SEND"));
        assert!(!yes("comm:prod chan:other"));
        assert!(yes("JOBS"));
        assert!(yes("11"), "a bare number matches a pid");
        assert!(yes("ipclib"));
    }

    #[test]
    fn bad_terms_are_precise_errors() {
        assert_eq!(
            Filter::parse("pdi:3"),
            Err(FilterError::UnknownField {
                field: "pdi".into()
            })
        );
        let err = Filter::parse("pid:abc").unwrap_err();
        assert_eq!(err.to_string(), "pid:abc is not a process id");
        assert_eq!(
            Filter::parse("comm:"),
            Err(FilterError::Empty {
                field: "comm".into()
            })
        );
    }

    #[test]
    fn channel_names_with_colons_are_plain_text() {
        let f = Filter::parse("[42]:x").unwrap();
        assert!(f.matches(&fields(&[], &[], "pipe:[42]:x")));
        let f = Filter::parse("pipe:[42]").unwrap();
        assert!(f.matches(&fields(&[], &[], "pipe:[42]")));
        assert!(Filter::parse("socket:[7]").is_ok());
    }
}
