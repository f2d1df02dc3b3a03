//! Prompt and output filters.
//!
//! A [`FilterSet`] is compiled once per config load from a tenant's rules: deny literals
//! into Aho-Corasick automata, deny and redact patterns into a `RegexSet` prefilter plus
//! one `Regex` each (all linear time). A deny rule refuses the text naming only its rule
//! id; a redact rule replaces each match with `[REDACTED:<type>]`. Inputs above the size
//! limit are refused before any matching.
//!
//! Output filtering goes through [`stream::StreamFilter`] for streaming and non-streaming
//! responses alike, so both give the same result for the same text.

mod detectors;
pub mod stream;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

pub use detectors::Detector;
pub use stream::StreamFilter;

use crate::PolicyError;

/// How much output a stream holds back, in bytes: longer than any built-in detector's
/// match, so a match split across chunks is still whole when it is examined. Custom
/// patterns whose matches can be longer are only split-safe up to this length.
pub const HOLD_BACK: usize = 320;

/// The default input size limit.
pub const DEFAULT_MAX_INPUT_BYTES: usize = 1 << 20;

/// What a rule does with a match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Deny,
    Redact,
}

/// What a rule matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Matcher {
    Regex(String),
    Literal(String),
    Detector(Detector),
}

/// One rule as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSpec {
    /// Named in refusals and audit records (never the matched text).
    pub id: String,
    pub action: Action,
    pub matcher: Matcher,
    pub case_insensitive: bool,
}

/// A tenant's rules as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterSpec {
    pub rules: Vec<RuleSpec>,
    pub max_input_bytes: usize,
}

impl Default for FilterSpec {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            max_input_bytes: DEFAULT_MAX_INPUT_BYTES,
        }
    }
}

/// A refusal: the rule that fired (or `input_too_large`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    pub rule_id: String,
}

/// A pattern rule, compiled.
#[derive(Debug)]
struct PatternRule {
    id: String,
    /// `[REDACTED:<label>]`.
    label: String,
    regex: Regex,
    detector: Option<Detector>,
    ci: bool,
}

impl PatternRule {
    /// The first confirmed match starting at or after `from` (context before `from`
    /// still counts for `\b`).
    fn find_at(&self, text: &str, mut from: usize) -> Option<(usize, usize)> {
        while from <= text.len() {
            let m = self.regex.find_at(text, from)?;
            match self.detector {
                None => return Some((m.start(), m.end())),
                Some(d) if d.windowed() => {
                    if let Some(end) = d.confirm_window(text, m.start(), m.end()) {
                        return Some((m.start(), end));
                    }
                    from = Detector::next_group(text, m.start(), m.end());
                }
                Some(d) => {
                    if d.confirm(m.as_str()) {
                        return Some((m.start(), m.end()));
                    }
                    from = next_char(text, m.start());
                }
            }
        }
        None
    }
}

fn next_char(text: &str, at: usize) -> usize {
    text[at..]
        .chars()
        .next()
        .map_or(text.len() + 1, |c| at + c.len_utf8())
}

/// The result of filtering a whole model output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputCheck {
    /// The text to send (redacted; cut at a deny).
    pub text: String,
    /// The deny rule that fired, if any.
    pub denied: Option<String>,
    /// Redactions per rule id, with counts (never the matched text).
    pub redactions: Vec<(String, usize)>,
}

/// A compiled filter set.
#[derive(Debug)]
pub struct FilterSet {
    max_input_bytes: usize,
    deny_literals: Vec<(AhoCorasick, Vec<String>)>,
    deny_set: Option<RegexSet>,
    deny_patterns: Vec<PatternRule>,
    redact_set: Option<RegexSet>,
    redact_patterns: Vec<PatternRule>,
}

/// A replaced span (byte offsets in the examined text) and the rule that found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: usize,
    pub end: usize,
    pub rule: usize,
}

/// The outcome of filtering a prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filtered<'a> {
    pub text: Cow<'a, str>,
    /// (rule id, count) for each redact rule that fired: for the audit log.
    pub redactions: Vec<(String, usize)>,
}

impl FilterSet {
    /// A set that passes everything (still enforcing the default size limit).
    pub fn empty() -> Self {
        Self::compile(&FilterSpec::default()).unwrap_or_else(|_| Self {
            max_input_bytes: DEFAULT_MAX_INPUT_BYTES,
            deny_literals: Vec::new(),
            deny_set: None,
            deny_patterns: Vec::new(),
            redact_set: None,
            redact_patterns: Vec::new(),
        })
    }

    /// Compiles a spec. Fails on an invalid regex, an empty or over-long literal, a
    /// duplicate rule id, or a redacting literal (redact with a regex instead).
    pub fn compile(spec: &FilterSpec) -> Result<Self, PolicyError> {
        let bad = |id: &str, why: String| PolicyError::Config(format!("filter rule {id:?}: {why}"));
        let mut seen = std::collections::HashSet::new();
        let mut literals: [(Vec<String>, Vec<String>); 2] = Default::default();
        let mut deny_patterns = Vec::new();
        let mut redact_patterns = Vec::new();
        for rule in &spec.rules {
            if rule.id.is_empty() || !seen.insert(rule.id.as_str()) {
                return Err(bad(
                    &rule.id,
                    "rule ids must be unique and non-empty".into(),
                ));
            }
            let (pattern, detector, label) = match &rule.matcher {
                Matcher::Literal(lit) => {
                    if lit.is_empty() || lit.len() > HOLD_BACK / 2 {
                        return Err(bad(
                            &rule.id,
                            format!("literal must be 1..={} bytes", HOLD_BACK / 2),
                        ));
                    }
                    if rule.action == Action::Deny {
                        let slot = &mut literals[usize::from(rule.case_insensitive)];
                        slot.0.push(lit.clone());
                        slot.1.push(rule.id.clone());
                        continue;
                    }
                    (regex::escape(lit), None, rule.id.clone())
                }
                Matcher::Regex(p) => (p.clone(), None, rule.id.clone()),
                Matcher::Detector(d) => (d.pattern().to_owned(), Some(*d), d.name().to_owned()),
            };
            let regex = RegexBuilder::new(&pattern)
                .case_insensitive(rule.case_insensitive)
                .size_limit(1 << 22)
                .build()
                .map_err(|e| bad(&rule.id, e.to_string()))?;
            let compiled = PatternRule {
                id: rule.id.clone(),
                label,
                regex,
                detector,
                ci: rule.case_insensitive,
            };
            match rule.action {
                Action::Deny => deny_patterns.push(compiled),
                Action::Redact => redact_patterns.push(compiled),
            }
        }
        let mut deny_literals = Vec::new();
        for (ci, (pats, ids)) in literals.into_iter().enumerate() {
            if pats.is_empty() {
                continue;
            }
            // Standard semantics report the match that ends first: what streaming needs.
            let ac = AhoCorasickBuilder::new()
                .ascii_case_insensitive(ci == 1)
                .match_kind(MatchKind::Standard)
                .build(&pats)
                .map_err(|e| PolicyError::Config(format!("filter literals: {e}")))?;
            deny_literals.push((ac, ids));
        }
        Ok(Self {
            max_input_bytes: spec.max_input_bytes,
            deny_set: set_of(&deny_patterns)?,
            deny_patterns,
            redact_set: set_of(&redact_patterns)?,
            redact_patterns,
            deny_literals,
        })
    }

    /// Filters a prompt: refused if too large or a deny rule matches anywhere; otherwise
    /// redacted.
    pub fn check_input<'a>(&self, text: &'a str) -> Result<Filtered<'a>, Denied> {
        if text.len() > self.max_input_bytes {
            return Err(Denied {
                rule_id: "input_too_large".into(),
            });
        }
        if let Some((_, rule_id)) = self.first_deny(text, 0) {
            return Err(Denied { rule_id });
        }
        let spans = self.redactions(text, 0);
        let redactions = self.count(&spans);
        if spans.is_empty() {
            return Ok(Filtered {
                text: Cow::Borrowed(text),
                redactions,
            });
        }
        Ok(Filtered {
            text: Cow::Owned(self.apply(text, 0, text.len(), &spans)),
            redactions,
        })
    }

    /// Filters a whole model output: the same as streaming it in one chunk. Returns the
    /// text to send and, if a deny rule fired, its id (the response then ends with
    /// `finish_reason: "content_filter"`).
    pub fn check_output(&self, text: &str) -> (String, Option<String>) {
        let checked = self.check_output_counted(text);
        (checked.text, checked.denied)
    }

    /// [`Self::check_output`], with the redaction counts per rule for the audit log.
    pub fn check_output_counted(&self, text: &str) -> OutputCheck {
        let mut stream = StreamFilter::new(self);
        let mut out = stream.push(text);
        if stream.denied().is_none() {
            out.push_str(&stream.finish());
        }
        OutputCheck {
            text: out,
            denied: stream.denied().map(str::to_owned),
            redactions: stream.redactions().to_vec(),
        }
    }

    /// Whether any rule exists (callers skip filtering work for empty sets).
    pub fn is_empty(&self) -> bool {
        self.deny_literals.is_empty()
            && self.deny_patterns.is_empty()
            && self.redact_patterns.is_empty()
    }

    /// The deny match that ends first in `text[from..]`: (absolute end, rule id).
    pub(crate) fn first_deny(&self, text: &str, from: usize) -> Option<(usize, String)> {
        let mut best: Option<(usize, String)> = None;
        let mut consider = |end: usize, id: &str| {
            if best.as_ref().is_none_or(|(e, _)| end < *e) {
                best = Some((end, id.to_owned()));
            }
        };
        for (ac, ids) in &self.deny_literals {
            if let Some(m) = ac.find(&text[from..]) {
                consider(from + m.end(), &ids[m.pattern().as_usize()]);
            }
        }
        if let Some(set) = &self.deny_set {
            for i in set.matches_at(text, from).iter() {
                if let Some((_, end)) = self.deny_patterns[i].find_at(text, from) {
                    consider(end, &self.deny_patterns[i].id);
                }
            }
        }
        best
    }

    /// Non-overlapping redaction spans in `text[from..]`, in order, chosen greedily from the
    /// left: the match that starts first (at equal starts the longer, then the earlier rule)
    /// is kept, and every rule looks for its next match after the end of the kept one.
    ///
    /// Each choice depends only on the text and on where the previous kept span ended, never
    /// on `from` itself, so a stream that resumes after a released span chooses what a scan of
    /// the whole text chooses. (Collecting each rule's matches on its own and then dropping
    /// overlaps does not have that property: a rule's chain then depends on its own dropped
    /// matches, so `x@ex.ccB::8f88` hid the IPv6 `::8f88` in one chunk and not in two.)
    pub(crate) fn redactions(&self, text: &str, from: usize) -> Vec<Span> {
        let Some(set) = &self.redact_set else {
            return Vec::new();
        };
        // Each rule that can match, with its first match starting at or after `from`.
        let mut next: Vec<(usize, Option<(usize, usize)>)> = set
            .matches_at(text, from)
            .iter()
            .map(|rule| (rule, self.redact_patterns[rule].find_at(text, from)))
            .collect();
        let mut kept = Vec::new();
        loop {
            let best = next
                .iter()
                .filter_map(|&(rule, m)| m.map(|(start, end)| (start, end, rule)))
                .min_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
            let Some((start, end, rule)) = best else {
                return kept;
            };
            kept.push(Span { start, end, rule });
            let resume = if end > start {
                end
            } else {
                next_char(text, end)
            };
            for (rule, m) in &mut next {
                if m.is_some_and(|(s, _)| s < resume) {
                    *m = self.redact_patterns[*rule].find_at(text, resume);
                }
            }
        }
    }

    /// `text[from..to]` with the spans (all inside it) replaced.
    pub(crate) fn apply(&self, text: &str, from: usize, to: usize, spans: &[Span]) -> String {
        let mut out = String::with_capacity(to - from);
        let mut at = from;
        for s in spans {
            out.push_str(&text[at..s.start]);
            out.push_str("[REDACTED:");
            out.push_str(&self.redact_patterns[s.rule].label);
            out.push(']');
            at = s.end;
        }
        out.push_str(&text[at..to]);
        out
    }

    pub(crate) fn count(&self, spans: &[Span]) -> Vec<(String, usize)> {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for s in spans {
            let id = &self.redact_patterns[s.rule].id;
            match counts.iter_mut().find(|(i, _)| i == id) {
                Some((_, n)) => *n += 1,
                None => counts.push((id.clone(), 1)),
            }
        }
        counts
    }
}

fn set_of(rules: &[PatternRule]) -> Result<Option<RegexSet>, PolicyError> {
    if rules.is_empty() {
        return Ok(None);
    }
    // The per-rule regexes carry their case flag inline for the set.
    let patterns = rules.iter().map(|r| r.regex.as_str());
    let flags: Vec<bool> = rules.iter().map(|r| r.case_insensitive()).collect();
    let patterns: Vec<String> = patterns
        .zip(flags)
        .map(|(p, ci)| {
            if ci {
                format!("(?i:{p})")
            } else {
                p.to_owned()
            }
        })
        .collect();
    RegexSetBuilder::new(patterns)
        .size_limit(1 << 24)
        .build()
        .map(Some)
        .map_err(|e| PolicyError::Config(format!("filter patterns: {e}")))
}

impl PatternRule {
    fn case_insensitive(&self) -> bool {
        self.ci
    }
}
