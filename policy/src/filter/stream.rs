//! The streaming output filter.
//!
//! Model output arrives in small pieces; a card number or a denied phrase may be split
//! across them. The filter holds back the last [`HOLD_BACK`] bytes, and any redaction
//! match that would straddle the release point, so every match is examined whole. Released
//! text keeps a little context so `\b` behaves as it would on the whole text.
//!
//! A deny match ends the stream: the text released is everything up to [`HOLD_BACK`]
//! bytes before the end of the first deny match (earlier releases never pass that point,
//! since they always stay [`HOLD_BACK`] behind the text seen so far). That is a function
//! of the whole text alone, so any chunking, including one chunk (the non-streaming
//! path), gives the same result.

use std::ops::Deref;

use super::{FilterSet, HOLD_BACK};

/// Bytes of released text kept as context for the next matches.
const CONTEXT: usize = 8;

/// Least text released at once (see `push`).
const RELEASE_BATCH: usize = 64;

/// One response's output filter, over a borrowed (`&FilterSet`) or shared
/// (`Arc<FilterSet>`) set.
#[derive(Debug)]
pub struct StreamFilter<S: Deref<Target = FilterSet>> {
    set: S,
    /// Context (already released) followed by held-back text.
    buf: String,
    /// Where held-back text starts in `buf`.
    held: usize,
    denied: Option<String>,
    redactions: Vec<(String, usize)>,
}

impl<S: Deref<Target = FilterSet>> StreamFilter<S> {
    pub fn new(set: S) -> Self {
        Self {
            set,
            buf: String::new(),
            held: 0,
            denied: None,
            redactions: Vec::new(),
        }
    }

    /// Adds a piece of output; returns the text that may be sent now. After a deny
    /// ([`Self::denied`]), returns the last releasable text once, then nothing.
    pub fn push(&mut self, chunk: &str) -> String {
        if self.denied.is_some() {
            return String::new();
        }
        self.buf.push_str(chunk);
        // A match that ends where the text so far ends may not survive the next chunk
        // (`\b`, `$` look past it: "drop table" is not a match in "drop tables"): it is
        // decided once more text, or the end of the output, follows it.
        if let Some((end, rule)) = self.set.first_deny(&self.buf, self.held)
            && end < self.buf.len()
        {
            self.denied = Some(rule);
            return self.release(end.saturating_sub(HOLD_BACK));
        }
        // Release in batches: each release rescans the held window, so releasing per
        // token would cost a window scan per token. Where the release points fall does
        // not change the output, only when it is sent.
        let limit = self.buf.len().saturating_sub(HOLD_BACK);
        if limit < self.held + RELEASE_BATCH {
            return String::new();
        }
        self.release(limit)
    }

    /// The end of the output: releases everything still held, unless a deny rule matches
    /// at the very end (see `push`; check [`Self::denied`] after this too).
    pub fn finish(&mut self) -> String {
        if self.denied.is_some() {
            return String::new();
        }
        if let Some((end, rule)) = self.set.first_deny(&self.buf, self.held) {
            self.denied = Some(rule);
            return self.release(end.saturating_sub(HOLD_BACK));
        }
        self.release(self.buf.len())
    }

    /// The deny rule that ended the stream, if any.
    pub fn denied(&self) -> Option<&str> {
        self.denied.as_deref()
    }

    /// Redaction counts so far, for the audit log.
    pub fn redactions(&self) -> &[(String, usize)] {
        &self.redactions
    }

    /// Releases held text up to `limit` (moved back to a char boundary and to the start
    /// of any redaction match straddling it).
    fn release(&mut self, limit: usize) -> String {
        let mut safe = floor_char(&self.buf, limit.max(self.held));
        let spans = self.set.redactions(&self.buf, self.held);
        for s in &spans {
            if s.start < safe && s.end > safe {
                safe = s.start;
            }
        }
        let done: Vec<_> = spans.into_iter().filter(|s| s.end <= safe).collect();
        for (id, n) in self.set.count(&done) {
            match self.redactions.iter_mut().find(|(i, _)| *i == id) {
                Some((_, total)) => *total += n,
                None => self.redactions.push((id, n)),
            }
        }
        let out = self.set.apply(&self.buf, self.held, safe, &done);
        let keep_from = floor_char(&self.buf, safe.saturating_sub(CONTEXT));
        self.buf.drain(..keep_from);
        self.held = safe - keep_from;
        out
    }
}

fn floor_char(s: &str, mut at: usize) -> usize {
    at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::super::{Action, Detector, FilterSpec, Matcher, RuleSpec};
    use super::*;

    /// Found by the `stream_filter` fuzz target: after a redacted e-mail that ends in a hex
    /// letter (`…@exle.cclB`), the IPv6 detector's candidate `B::8f88` overlaps the e-mail and
    /// is dropped. Each rule used to continue from its own dropped match, so the whole text
    /// passed `::8f88` while a stream resuming after the e-mail redacted it, or the other way
    /// round: streamed and non-streamed output differed, and where the text was released
    /// decided whether an address got out. Every split point must now give the one-chunk
    /// result, and that result redacts both.
    #[test]
    fn a_redaction_after_an_overlapped_candidate_does_not_depend_on_chunking() {
        let set = FilterSet::compile(&FilterSpec {
            rules: [Detector::Email, Detector::Ipv6]
                .into_iter()
                .map(|d| RuleSpec {
                    id: d.name().into(),
                    action: Action::Redact,
                    matcher: Matcher::Detector(d),
                    case_insensitive: false,
                })
                .collect(),
            ..FilterSpec::default()
        })
        .unwrap();
        let text = format!(
            "{}mail filf@exle.cclB::8f88-er and lB::8f88 too",
            "filler ".repeat(60)
        );
        let whole = set.check_output_counted(&text);
        assert!(
            whole
                .text
                .ends_with("mail [REDACTED:email][REDACTED:ipv6]-er and l[REDACTED:ipv6] too"),
            "{}",
            whole.text
        );
        for cut in (1..text.len()).filter(|&c| text.is_char_boundary(c)) {
            let mut stream = StreamFilter::new(&set);
            let mut out = stream.push(&text[..cut]);
            out.push_str(&stream.push(&text[cut..]));
            out.push_str(&stream.finish());
            assert_eq!(out, whole.text, "split at {cut}");
            let mut counts = stream.redactions().to_vec();
            counts.sort();
            assert_eq!(
                counts,
                [("email".to_owned(), 1), ("ipv6".to_owned(), 2)],
                "split at {cut}"
            );
        }
    }

    /// Found by the `stream_filter` fuzz target: a deny pattern ending in `\b` matched the
    /// end of one chunk ("drop table") although the whole output ("drop tables") does not
    /// match, so streaming cut a response the non-streaming path sends whole.
    #[test]
    fn deny_at_the_end_of_a_chunk_waits_for_the_next() {
        let set = FilterSet::compile(&FilterSpec {
            rules: vec![RuleSpec {
                id: "no_sql".into(),
                action: Action::Deny,
                matcher: Matcher::Regex(r"drop\s{1,8}table\b".into()),
                case_insensitive: true,
            }],
            ..FilterSpec::default()
        })
        .unwrap();
        for (chunks, denied) in [
            (&["drop table", "s are fine"][..], None),
            (&["drop table", " users"][..], Some("no_sql")),
            (&["x drop table"][..], Some("no_sql")),
        ] {
            let whole = set.check_output_counted(&chunks.concat());
            let mut stream = StreamFilter::new(&set);
            let mut out: String = chunks.iter().map(|c| stream.push(c)).collect();
            if stream.denied().is_none() {
                out.push_str(&stream.finish());
            }
            assert_eq!(stream.denied(), denied, "{chunks:?}");
            assert_eq!(whole.denied.as_deref(), denied, "{chunks:?}");
            assert_eq!(out, whole.text, "{chunks:?}");
        }
    }
}
