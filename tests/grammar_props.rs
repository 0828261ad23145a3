//! Property tests for the command grammar and the values parsed from chat text:
//! nothing a person can type makes them panic, what they accept holds its
//! promises, and well-formed commands parse to what was meant.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use passport::domain::command::{Command, Grammar, ListFilter};
use passport::domain::time::Span;
use passport::domain::values::{
    DurationLimits, GrantDuration, InputError, InstanceId, Reason, RequestId, Ticket, TicketRules,
    Username,
};
use proptest::prelude::*;
use proptest::sample::select;
use regex::Regex;

// ---------------------------------------------------------------------------
// Strategies

/// Any text at all: arbitrary unicode, control characters, and very long lines.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "\\PC{0,40}",
        "[\\x00-\\x1f\\x7f\\u{85}\\u{2028}\\u{200b} a-zA-Z0-9#+,-]{0,60}",
        prop::collection::vec(any::<char>(), 0..10_000).prop_map(String::from_iter),
        (any::<char>(), 0usize..5_000).prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
}

/// Words the grammar knows, near misses, and junk, so that random lines reach
/// deep into the parser rather than stopping at the first word.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(vec![
            "request", "REQUEST", "/passport", "approve", "deny", "complete", "done", "extend",
            "cancel", "revoke", "list", "show", "audit", "help", "mine", "pending", "active",
            ",", ",,", "i-", "i-01234567", "i-0123456789abcdef0", "i-0123456789ABCDEF0",
            "i-01234567,i-89abcdef", "AR-1", "ar-2", "AR-0", "AR-", "AR-18446744073709551615",
            "AR-999999999999999999", "ticket#1", "#1", "#", "INC-7", "CHG0012345", "+", "+30m",
            "++1h", "2h", "1h30m", "90m", "0m", "13h", "99999h", "999999h", "2hrs", "1h30",
            "h", "m", "hm", "+h",
        ])
        .prop_map(str::to_owned),
        1 => "[a-zA-Z0-9#+,:-]{0,12}",
        1 => any::<String>(),
    ]
}

fn separator() -> impl Strategy<Value = String> {
    "[ \t\n\r\u{a0}\u{85}\u{3000}\u{2028}]{1,3}"
}

fn token_soup() -> impl Strategy<Value = String> {
    prop::collection::vec((token(), separator()), 0..12).prop_map(|parts| {
        parts
            .into_iter()
            .flat_map(|(token, sep)| [token, sep])
            .collect()
    })
}

fn any_line() -> impl Strategy<Value = String> {
    prop_oneof![any_text(), token_soup()]
}

fn instance_id() -> impl Strategy<Value = String> {
    (any::<bool>(), "[0-9a-f]{17}").prop_map(|(long, digits)| {
        if long {
            format!("i-{digits}")
        } else {
            format!("i-{}", &digits[..8])
        }
    })
}

/// How a duration of `minutes` may be written: `90m`, `2h`, `1h30m`, `0h45m`, with an
/// optional `+` and in either case.
fn spell_duration(minutes: i64, form: u8, upper: bool, plus: bool) -> String {
    let (h, m) = (minutes / 60, minutes % 60);
    let text = match form {
        0 => format!("{minutes}m"),
        1 if m == 0 => format!("{h}h"),
        1 if h == 0 => format!("{m}m"),
        _ => format!("{h}h{m}m"),
    };
    let text = if upper { text.to_uppercase() } else { text };
    if plus {
        format!("+{text}")
    } else {
        text
    }
}

/// A duration in `range` minutes and one way of writing it.
fn duration_in(range: std::ops::RangeInclusive<i64>) -> impl Strategy<Value = (i64, String)> {
    (range, 0u8..3, any::<bool>(), any::<bool>()).prop_map(|(minutes, form, upper, plus)| {
        (minutes, spell_duration(minutes, form, upper, plus))
    })
}

fn ticket() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,12}".prop_map(|n| format!("ticket#{n}")),
        "[0-9]{1,12}".prop_map(|n| format!("TICKET#{n}")),
        "[0-9]{1,12}".prop_map(|n| format!("#{n}")),
        "(INC|CHG|PROJ|ops)-[0-9]{1,12}",
        "[A-Za-z][A-Za-z0-9]{1,9}-[0-9]{1,12}",
        "[A-Z]{2,5}[0-9]{4,12}",
    ]
}

/// Words of a reason joined by one or two spaces, as typed.
fn reason() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (
            "[a-zA-Z0-9.,;:'!?()/éßü日本#-]{1,12}",
            select(vec![" ", "  "]),
        ),
        1..30,
    )
    .prop_map(|words| {
        let mut text = String::new();
        for (i, (word, sep)) in words.into_iter().enumerate() {
            if i > 0 {
                text.push_str(sep);
            }
            text.push_str(&word);
        }
        text
    })
}

fn request_id() -> impl Strategy<Value = RequestId> {
    (1u64..=999_999_999_999_999_999).prop_map(|n| RequestId::new(n).unwrap())
}

/// A well-formed request line and what it should parse to.
#[derive(Debug, Clone)]
struct RequestLine {
    line: String,
    instances: Vec<String>,
    minutes: i64,
    ticket: String,
    reason: Option<String>,
}

fn request_line() -> impl Strategy<Value = RequestLine> {
    let instances = prop::collection::vec(instance_id(), 1..4).prop_flat_map(|pool| {
        let n = pool.len();
        prop::collection::vec(
            (0..n, select(vec![" ", ",", ", ", " ,", " , ", "  "])),
            1..8,
        )
        .prop_map(move |picks| (pool.clone(), picks))
    });
    (
        select(vec!["", "/passport ", "  /passport   ", "\t"]),
        select(vec!["request", "REQUEST", "Request"]),
        instances,
        prop::option::of(duration_in(5..=720)),
        ticket(),
        prop::option::of(reason()),
        select(vec![" ", "  ", "\t", " \u{3000}"]),
        select(vec!["", " ", "\n", " \t "]),
    )
        .prop_map(
            |(prefix, word, (pool, picks), duration, ticket, reason, gap, trailing)| {
                let mut typed = String::new();
                let mut expected: Vec<String> = Vec::new();
                for (i, (pick, sep)) in picks.iter().enumerate() {
                    if i > 0 {
                        typed.push_str(sep);
                    }
                    typed.push_str(&pool[*pick]);
                    if !expected.contains(&pool[*pick]) {
                        expected.push(pool[*pick].clone());
                    }
                }
                let mut line = format!("{prefix}{word}{gap}{typed}");
                if let Some((_, text)) = &duration {
                    line.push_str(gap);
                    line.push_str(text);
                }
                line.push_str(gap);
                line.push_str(&ticket);
                if let Some(reason) = &reason {
                    line.push_str(gap);
                    line.push_str(reason);
                }
                line.push_str(trailing);
                RequestLine {
                    line,
                    instances: expected,
                    minutes: duration.map_or(60, |(minutes, _)| minutes),
                    ticket,
                    reason,
                }
            },
        )
}

// ---------------------------------------------------------------------------
// Checks

/// Error messages are for people: one line, lower-case start, no trailing period.
fn check_message(err: &InputError) -> Result<(), TestCaseError> {
    let m = &err.0;
    prop_assert!(!m.is_empty());
    prop_assert!(!m.contains('\n') && !m.contains('\r'), "{:?}", m);
    prop_assert!(!m.starts_with(char::is_uppercase), "{:?}", m);
    prop_assert!(!m.ends_with('.'), "{:?}", m);
    Ok(())
}

fn check_duration(d: GrantDuration, min: Span) -> Result<(), TestCaseError> {
    prop_assert!(d.span() >= min, "{}", d);
    prop_assert!(d.span() <= DurationLimits::HARD_MAX, "{}", d);
    prop_assert_eq!(d.span().as_millis() % 60_000, 0);
    Ok(())
}

/// Whatever the grammar accepts is within its promises; whatever it refuses says why.
fn check_command(result: Result<Command, InputError>) -> Result<(), TestCaseError> {
    match result {
        Err(err) => check_message(&err)?,
        Ok(Command::Request(spec)) => {
            prop_assert!(!spec.instances.is_empty());
            prop_assert!(spec.instances.len() <= Grammar::default().max_instances);
            check_duration(spec.duration, Span::from_minutes(5))?;
            prop_assert!(spec.ticket.as_str().len() <= 64);
            if let Some(reason) = spec.reason {
                prop_assert!(reason.as_str().chars().count() <= Reason::MAX_CHARS);
            }
        }
        Ok(Command::Extend(_, by)) => check_duration(by, Span::from_minutes(1))?,
        Ok(_) => {}
    }
    Ok(())
}

fn grammar() -> Grammar {
    Grammar::default()
}

fn limits() -> DurationLimits {
    DurationLimits::default()
}

// ---------------------------------------------------------------------------
// Nothing panics, and what is accepted keeps its promises

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn grammar_never_panics_on_any_line(line in any_line(), thread in request_id()) {
        let g = grammar();
        check_command(g.parse(&line))?;
        check_command(g.parse_in_context(&line, Some(thread)))?;
        check_command(g.parse(&format!("request {line}")))?;
        check_command(g.parse_in_context(&format!("/passport extend {line}"), Some(thread)))?;
    }

    #[test]
    fn instance_id_parse_never_panics_and_accepts_only_ec2_ids(text in any_line()) {
        let shape = Regex::new("^i-([0-9a-f]{8}|[0-9a-f]{17})$").unwrap();
        match InstanceId::parse(&text) {
            Ok(id) => {
                prop_assert_eq!(id.as_str(), text.as_str());
                prop_assert!(shape.is_match(id.as_str()), "{}", id);
            }
            Err(err) => check_message(&err)?,
        }
    }

    #[test]
    fn request_id_parse_never_panics_and_round_trips(text in any_line()) {
        match RequestId::parse(&text) {
            Ok(id) => {
                prop_assert!(id.number() > 0);
                prop_assert_eq!(RequestId::parse(&id.to_string()), Ok(id));
            }
            Err(err) => check_message(&err)?,
        }
    }

    #[test]
    fn grant_duration_parse_never_panics_and_stays_within_limits(text in any_line()) {
        match GrantDuration::parse(&text, &limits()) {
            Ok(d) => check_duration(d, limits().min)?,
            Err(err) => check_message(&err)?,
        }
    }

    #[test]
    fn span_parse_never_panics_and_what_it_reads_displays(text in any_line()) {
        if let Some(span) = Span::parse(&text) {
            prop_assert!(span >= Span::ZERO);
            prop_assert!(!span.to_string().is_empty());
        }
    }

    #[test]
    fn ticket_parse_never_panics_and_keeps_the_text(text in any_line()) {
        match Ticket::parse(&text, &TicketRules::default()) {
            Ok(ticket) => {
                prop_assert_eq!(ticket.as_str(), text.as_str());
                prop_assert!(ticket.as_str().len() <= 64);
                prop_assert!(!ticket.key().is_empty());
            }
            Err(err) => check_message(&err)?,
        }
    }

    #[test]
    fn reason_parse_never_panics_and_yields_one_trimmed_line(text in any_line()) {
        match Reason::parse(&text) {
            Ok(Some(reason)) => {
                let r = reason.as_str();
                prop_assert!(!r.is_empty());
                prop_assert_eq!(r, r.trim());
                prop_assert!(!r.chars().any(char::is_control), "{:?}", r);
                prop_assert!(r.chars().count() <= Reason::MAX_CHARS);
            }
            Ok(None) => prop_assert!(text.chars().all(|c| c.is_whitespace() || c.is_control())),
            Err(err) => {
                check_message(&err)?;
                prop_assert!(text.chars().count() > Reason::MAX_CHARS);
            }
        }
    }

    #[test]
    fn usernames_are_safe_short_and_end_in_the_request_number(
        handle in any_line(),
        n in 1u64..,
        other in 1u64..,
    ) {
        let shape = Regex::new("^pp-[a-z0-9_-]*[a-z0-9_]-[0-9]+$").unwrap();
        let id = RequestId::new(n).unwrap();
        let name = Username::for_request(&handle, id);
        let name = name.as_str();
        prop_assert!(shape.is_match(name), "{:?} from {:?}", name, handle);
        // At most 20 (what Windows accepts) unless the request number itself is too long for that.
        let digits = n.to_string().len();
        prop_assert!(name.len() <= Username::MAX_LEN.max(5 + digits), "{:?}", name);
        let suffix = format!("-{n}");
        prop_assert!(name.ends_with(&suffix), "{:?}", name);
        // Two requests never share a username, whatever the handle.
        if other != n {
            let second = Username::for_request(&handle, RequestId::new(other).unwrap());
            prop_assert_ne!(second.as_str(), name);
        }
    }
}

// ---------------------------------------------------------------------------
// Well-formed commands parse to what was meant

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn valid_request_lines_parse_to_the_expected_values(
        req in request_line(),
        thread in request_id(),
    ) {
        let g = grammar();
        let parsed = g.parse(&req.line);
        let Ok(Command::Request(spec)) = &parsed else {
            return Err(TestCaseError::fail(format!("{:?} parsed to {:?}", req.line, parsed)));
        };
        let instances: Vec<&str> = spec.instances.as_slice().iter().map(InstanceId::as_str).collect();
        prop_assert_eq!(instances, req.instances.iter().map(String::as_str).collect::<Vec<_>>());
        prop_assert_eq!(spec.duration.span(), Span::from_minutes(req.minutes));
        prop_assert_eq!(spec.ticket.as_str(), req.ticket.as_str());
        prop_assert_eq!(spec.reason.as_ref().map(Reason::as_str), req.reason.as_deref());
        // A request typed in a thread means the same.
        prop_assert_eq!(g.parse_in_context(&req.line, Some(thread)), parsed.clone());
    }

    #[test]
    fn durations_round_trip_through_display((minutes, text) in duration_in(5..=720)) {
        let d = GrantDuration::parse(&text, &limits()).unwrap();
        prop_assert_eq!(d.span(), Span::from_minutes(minutes));
        let shown = d.to_string();
        let again = GrantDuration::parse(&shown, &limits()).unwrap();
        prop_assert_eq!(again, d);
        prop_assert_eq!(&again.to_string(), &shown, "display is canonical");
        prop_assert_eq!(Span::parse(&shown), Some(d.span()));
    }

    #[test]
    fn any_accepted_duration_round_trips_through_display(text in any_line()) {
        if let Ok(d) = GrantDuration::parse(&text, &limits()) {
            prop_assert_eq!(GrantDuration::parse(&d.to_string(), &limits()), Ok(d));
        }
    }

    #[test]
    fn durations_outside_the_limits_are_refused_with_the_limit(
        minutes in prop_oneof![0i64..5, 721i64..100_000],
        form in 0u8..3,
    ) {
        let text = spell_duration(minutes, form, false, false);
        let err = GrantDuration::parse(&text, &limits()).unwrap_err();
        check_message(&err)?;
        let limit = if minutes < 5 { "minimum is 5m" } else { "maximum is 12h" };
        prop_assert!(err.0.contains(limit), "{}", err);
    }

    #[test]
    fn thread_short_forms_extend_the_threads_request(
        (minutes, text) in duration_in(1..=720),
        thread in request_id(),
        other in request_id(),
    ) {
        let g = grammar();
        let plus = if text.starts_with('+') { text.clone() } else { format!("+{text}") };
        for line in [plus.clone(), format!("extend {text}"), format!("/passport extend {text}")] {
            match g.parse_in_context(&line, Some(thread)) {
                Ok(Command::Extend(id, by)) => {
                    prop_assert_eq!(id, thread);
                    prop_assert_eq!(by.span(), Span::from_minutes(minutes));
                }
                parsed => return Err(TestCaseError::fail(format!("{line:?} parsed to {parsed:?}"))),
            }
        }
        // An explicit id wins over the thread's.
        let line = format!("extend {other} {text}");
        match g.parse_in_context(&line, Some(thread)) {
            Ok(Command::Extend(id, by)) => {
                prop_assert_eq!(id, other);
                prop_assert_eq!(by.span(), Span::from_minutes(minutes));
            }
            parsed => return Err(TestCaseError::fail(format!("{line:?} parsed to {parsed:?}"))),
        }
        // Outside a thread the short form is not a command.
        prop_assert!(g.parse(&plus).is_err());
    }

    #[test]
    fn thread_short_form_with_trailing_words_is_refused(
        (_, text) in duration_in(1..=720),
        extra in "[a-zA-Z0-9+]{1,6}",
        thread in request_id(),
    ) {
        // `+1h 30m` must not quietly extend by one hour.
        let plus = if text.starts_with('+') { text } else { format!("+{text}") };
        let line = format!("{plus} {extra}");
        let err = grammar().parse_in_context(&line, Some(thread)).unwrap_err();
        check_message(&err)?;
        prop_assert!(err.0.contains("unexpected"), "{}", err);
    }

    #[test]
    fn commands_on_a_request_parse_with_its_id(id in request_id(), reason in prop::option::of(reason())) {
        let g = grammar();
        let n = id.number();
        for written in [format!("AR-{n}"), format!("ar-{n}")] {
            prop_assert_eq!(g.parse(&format!("approve {written}")), Ok(Command::Approve(id)));
            prop_assert_eq!(g.parse(&format!("complete {written}")), Ok(Command::Complete(id)));
            prop_assert_eq!(g.parse(&format!("done {written}")), Ok(Command::Complete(id)));
            prop_assert_eq!(g.parse(&format!("cancel {written}")), Ok(Command::Cancel(id)));
            prop_assert_eq!(g.parse(&format!("show {written}")), Ok(Command::Show(id)));
            prop_assert_eq!(g.parse(&format!("audit {written}")), Ok(Command::Audit(id)));
            let because = reason.as_deref().unwrap_or("");
            let want = Reason::parse(because).unwrap();
            prop_assert_eq!(
                g.parse(&format!("/passport deny {written} {because}")),
                Ok(Command::Deny(id, want.clone()))
            );
            prop_assert_eq!(
                g.parse(&format!("REVOKE {written} {because}")),
                Ok(Command::Revoke(id, want))
            );
        }
        prop_assert_eq!(RequestId::parse(&id.to_string()), Ok(id));
    }
}

#[test]
fn list_filters_and_help_parse() {
    let g = grammar();
    assert_eq!(g.parse("list mine"), Ok(Command::List(ListFilter::Mine)));
    assert_eq!(
        g.parse("LIST Active"),
        Ok(Command::List(ListFilter::Active))
    );
    assert_eq!(g.parse("  /passport  "), Ok(Command::Help));
}
