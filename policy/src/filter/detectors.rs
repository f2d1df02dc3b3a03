//! Built-in detectors: a bounded regex that finds candidates, and for the ones where a
//! plain pattern would flag ordinary numbers, a checksum that confirms them (Luhn for
//! payment cards, mod-97 for IBANs, the CRC for Airlock keys, the SSA's never-issued
//! ranges for SSNs). Every pattern's match length is bounded well under
//! [`super::HOLD_BACK`], which is what makes streaming split-safe.

use std::net::Ipv6Addr;
use std::str::FromStr;

/// A built-in detector, named in config by its snake_case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Detector {
    Email,
    Phone,
    UsSsn,
    PaymentCard,
    Iban,
    Ipv4,
    Ipv6,
    PrivateKey,
    CloudKey,
    AirlockKey,
}

impl Detector {
    pub const ALL: [Detector; 10] = [
        Detector::Email,
        Detector::Phone,
        Detector::UsSsn,
        Detector::PaymentCard,
        Detector::Iban,
        Detector::Ipv4,
        Detector::Ipv6,
        Detector::PrivateKey,
        Detector::CloudKey,
        Detector::AirlockKey,
    ];

    /// The config name, also the `<type>` in `[REDACTED:<type>]`.
    pub fn name(self) -> &'static str {
        match self {
            Detector::Email => "email",
            Detector::Phone => "phone",
            Detector::UsSsn => "us_ssn",
            Detector::PaymentCard => "payment_card",
            Detector::Iban => "iban",
            Detector::Ipv4 => "ipv4",
            Detector::Ipv6 => "ipv6",
            Detector::PrivateKey => "private_key",
            Detector::CloudKey => "cloud_key",
            Detector::AirlockKey => "airlock_key",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }

    pub(super) fn pattern(self) -> &'static str {
        match self {
            Detector::Email => {
                r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,2}\.[A-Za-z]{2,24}\b"
            }
            Detector::Phone => r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{3}\) ?|\b\d{3}[ .-])\d{3}[ .-]\d{4}\b",
            Detector::UsSsn => r"\b\d{3}-\d{2}-\d{4}\b",
            // No trailing `\b` on the two checksum detectors: the regex takes the longest
            // run and `confirm_window` tries every group boundary inside it.
            Detector::PaymentCard => r"\b\d(?:[ -]?\d){12,18}",
            Detector::Iban => r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}",
            Detector::Ipv4 => {
                r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b"
            }
            Detector::Ipv6 => r"(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}",
            Detector::PrivateKey => r"-----BEGIN (?:[A-Z0-9]{1,16} ){0,3}PRIVATE KEY-----",
            Detector::CloudKey => {
                r"\b(?:(?:AKIA|ASIA)[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}|gh[pousr]_[A-Za-z0-9]{36,76}|github_pat_[A-Za-z0-9_]{82})\b"
            }
            Detector::AirlockKey => r"\balk_[0-9A-Za-z]{12}_[0-9A-Za-z]{28}\b",
        }
    }

    /// Whether candidates are confirmed window by window ([`Self::confirm_window`]).
    pub(super) fn windowed(self) -> bool {
        matches!(self, Detector::PaymentCard | Detector::Iban)
    }

    /// The end of the longest checksum-valid window of the candidate `text[start..end]` that
    /// starts at `start` and ends at a group boundary (before a separator, or where the run
    /// ends at a word boundary).
    ///
    /// A greedy candidate can swallow a neighbour (`4111111111111111 12/25`,
    /// `DE89 3704 0044 0532 0130 00 EUR`), fail the checksum as a whole, and so hide the
    /// real number inside it: each window is tested alone instead. Windows end only at
    /// group boundaries, never inside a run of digits, so long plain numbers (order ids,
    /// timestamps) do not turn into cards by chance.
    pub(super) fn confirm_window(self, text: &str, start: usize, end: usize) -> Option<usize> {
        let candidate = text.get(start..end)?;
        let word = |c: char| c.is_alphanumeric() || c == '_';
        (1..=candidate.len()).rev().find_map(|len| {
            // `\d` also matches non-ASCII digits: only cut between characters.
            if !candidate.is_char_boundary(len) {
                return None;
            }
            let at = start + len;
            let ends_group = candidate[..len].chars().next_back().is_some_and(word)
                && text.get(at..)?.chars().next().is_none_or(|c| !word(c));
            (ends_group && self.confirm(&candidate[..len])).then_some(at)
        })
    }

    /// Where to look for the next candidate after `text[start..end]` failed: its second
    /// group (a number may start at any group after the first), else its end.
    pub(super) fn next_group(text: &str, start: usize, end: usize) -> usize {
        text.get(start..end)
            .and_then(|c| c.find([' ', '-']))
            .map_or(end, |i| start + i + 1)
    }

    /// Confirms a candidate; detectors without a checksum accept every candidate.
    pub(super) fn confirm(self, candidate: &str) -> bool {
        match self {
            Detector::PaymentCard => luhn(candidate),
            Detector::Iban => iban_mod97(candidate),
            Detector::UsSsn => ssn_issuable(candidate),
            Detector::Ipv6 => {
                candidate.bytes().any(|b| b.is_ascii_hexdigit())
                    && Ipv6Addr::from_str(candidate).is_ok()
            }
            Detector::AirlockKey => crate::key::looks_like_key(candidate),
            _ => true,
        }
    }
}

fn luhn(candidate: &str) -> bool {
    let digits: Vec<u32> = candidate.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 { d2 - 9 } else { d2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn iban_mod97(candidate: &str) -> bool {
    let compact: Vec<u8> = candidate.bytes().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut rem: u32 = 0;
    for &b in tail.iter().chain(head) {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

fn ssn_issuable(candidate: &str) -> bool {
    let mut parts = candidate.split('-');
    let (Some(area), Some(group), Some(serial)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums() {
        assert!(luhn("4111 1111 1111 1111"));
        assert!(!luhn("4111 1111 1111 1112"));
        assert!(iban_mod97("DE89 3704 0044 0532 0130 00"));
        assert!(iban_mod97("GB82WEST12345698765432"));
        assert!(!iban_mod97("GB82WEST12345698765433"));
        assert!(ssn_issuable("123-45-6789"));
        assert!(!ssn_issuable("666-45-6789"));
        assert!(!ssn_issuable("123-00-6789"));
    }

    #[test]
    fn names_round_trip() {
        for d in Detector::ALL {
            assert_eq!(Detector::from_name(d.name()), Some(d));
        }
    }
}
