//! `edu.cmu.meteor.util.Normalizer.normalizeLine` for English with punctuation kept (`-norm`),
//! transcribed pattern by pattern. Each Java `Pattern.replaceAll` is a left-to-right scan of
//! non-overlapping matches; `String.replace` likewise. Java's `\p{Digit}`, `\s` and
//! `\p{Lower}` are ASCII-only (no `UNICODE_CHARACTER_CLASS`).

use rustc_hash::FxHashMap;

use super::resources::{java_tokens, Nbp};

/// `alpha`: `A-Za-zŠŽšžŸÀ-ÖØ-öø-ž` + Cyrillic `Ѐ-ӿԀ-ԧꙀ-ꙮ꙾-ꚗᴀ-ᵿ`.
pub fn is_alpha(c: char) -> bool {
    matches!(c,
        'A'..='Z' | 'a'..='z'
        | '\u{160}' | '\u{17d}' | '\u{161}' | '\u{17e}' | '\u{178}'
        | '\u{c0}'..='\u{d6}' | '\u{d8}'..='\u{f6}' | '\u{f8}'..='\u{17e}'
        | '\u{400}'..='\u{4ff}' | '\u{500}'..='\u{527}'
        | '\u{a640}'..='\u{a66e}' | '\u{a67e}'..='\u{a697}' | '\u{1d00}'..='\u{1d7f}')
}

/// `alnum`: `0-9` + alpha.
pub fn is_alnum(c: char) -> bool {
    c.is_ascii_digit() || is_alpha(c)
}

fn is_digit(c: char) -> bool {
    c.is_ascii_digit()
}

/// Java regex `\s`: `[ \t\n\x0B\f\r]`.
fn is_java_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// `r_white`: `[ \u2000-\u200a\u202f\u205f\u3000\u00a0]`.
fn is_white(c: char) -> bool {
    matches!(
        c,
        ' ' | '\u{2000}'..='\u{200a}' | '\u{202f}' | '\u{205f}' | '\u{3000}' | '\u{a0}'
    )
}

/// `String.replace(from, to)`.
fn replace_lit(s: &[char], from: &str, to: &str) -> Vec<char> {
    let f: Vec<char> = from.chars().collect();
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s.len() - i >= f.len() && s[i..i + f.len()] == f[..] {
            out.extend(to.chars());
            i += f.len();
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

fn contains(s: &[char], pat: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    // compare whole windows only where the first character matches
    s.windows(p.len()).any(|w| w[0] == p[0] && w == &p[..])
}

/// `Pattern.compile("([A])[x]([B])").matcher(s).replaceAll(rep(a, b))` for one-char classes.
fn replace3(
    s: &[char],
    a: impl Fn(char) -> bool,
    mid: char,
    b: impl Fn(char) -> bool,
    rep: impl Fn(char, char, &mut Vec<char>),
) -> Vec<char> {
    let mut out = Vec::with_capacity(s.len() + 8);
    let mut i = 0;
    while i < s.len() {
        if i + 2 < s.len() && a(s[i]) && s[i + 1] == mid && b(s[i + 2]) {
            rep(s[i], s[i + 2], &mut out);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

fn spaced(a: char, mid: &str, b: char, out: &mut Vec<char>) {
    out.push(a);
    out.extend(mid.chars());
    out.push(b);
}

/// Normalise one line as `Normalizer.normalizeLine(line, LANG_EN, keepPunctuation=true)`.
pub fn normalize_line(line: &str, nbp: &FxHashMap<String, Nbp>) -> String {
    let mut s: Vec<char> = Vec::with_capacity(line.len() + 2);
    s.push(' ');
    s.extend(line.chars());
    s.push(' ');
    // r_sep_other: ([^alnum\s\.\'\`\,\-\‘\’]) -> " $1 "
    let mut t = Vec::with_capacity(s.len() * 2);
    for &c in &s {
        if is_alnum(c) || is_java_space(c) || matches!(c, '.' | '\'' | '`' | ',' | '-' | '‘' | '’')
        {
            t.push(c);
        } else {
            t.push(' ');
            t.push(c);
            t.push(' ');
        }
    }
    let mut s = t;
    // Each pass below rewrites only at occurrences of its pattern's literal character(s): a
    // pass is skipped when the line has none (its output would equal its input).
    let has = |s: &[char], c: char| s.contains(&c);
    // r_multi_dot: \.([\.]+) -> " DOTMULTI$1"
    if s.windows(2).any(|w| w == ['.', '.']) {
        let mut t = Vec::with_capacity(s.len() + 16);
        let mut i = 0;
        while i < s.len() {
            if s[i] == '.' && i + 1 < s.len() && s[i + 1] == '.' {
                let mut j = i + 1;
                while j < s.len() && s[j] == '.' {
                    j += 1;
                }
                t.extend(" DOTMULTI".chars());
                t.extend(&s[i + 1..j]);
                i = j;
            } else {
                t.push(s[i]);
                i += 1;
            }
        }
        s = t;
    }
    // while contains "DOTMULTI.": DOTMULTI\.([^\.]) -> "DOTDOTMULTI $1"; "DOTMULTI." -> "DOTDOTMULTI"
    let dm: Vec<char> = "DOTMULTI.".chars().collect();
    while contains(&s, "DOTMULTI.") {
        let mut t = Vec::with_capacity(s.len() + 16);
        let mut i = 0;
        while i < s.len() {
            if s.len() - i >= 10 && s[i..i + 9] == dm[..] && s[i + 9] != '.' {
                t.extend("DOTDOTMULTI ".chars());
                t.push(s[i + 9]);
                i += 10;
            } else {
                t.push(s[i]);
                i += 1;
            }
        }
        s = replace_lit(&t, "DOTMULTI.", "DOTDOTMULTI");
    }
    // commas except within numbers
    if has(&s, ',') {
        let nd = |c: char| !is_digit(c);
        s = replace3(&s, nd, ',', nd, |a, b, o| spaced(a, " , ", b, o));
        s = replace3(&s, is_digit, ',', nd, |a, b, o| spaced(a, " , ", b, o));
        s = replace3(&s, nd, ',', is_digit, |a, b, o| spaced(a, " , ", b, o));
    }
    // quotes: ([`‘’]) -> "'"; ([“”]|'') -> " \" "
    for c in s.iter_mut() {
        if matches!(*c, '`' | '‘' | '’') {
            *c = '\'';
        }
    }
    if s.iter().any(|&c| matches!(c, '“' | '”' | '\'')) {
        let mut t = Vec::with_capacity(s.len() + 8);
        let mut i = 0;
        while i < s.len() {
            if matches!(s[i], '“' | '”') {
                t.extend(" \" ".chars());
                i += 1;
            } else if s[i] == '\'' && i + 1 < s.len() && s[i + 1] == '\'' {
                t.extend(" \" ".chars());
                i += 2;
            } else {
                t.push(s[i]);
                i += 1;
            }
        }
        s = t;
    }
    // dashes
    if has(&s, '–') {
        s = replace_lit(&s, "–", "-");
    }
    if has(&s, '-') {
        s = replace_lit(&s, "--", "-");
        // r_rm_dash: ([alnum\.])[\-]([alnum]) -> "$1 $2"
        s = replace3(
            &s,
            |c| is_alnum(c) || c == '.',
            '-',
            is_alnum,
            |a, b, o| spaced(a, " ", b, o),
        );
    }
    // English contractions
    if has(&s, '\'') {
        let na = |c: char| !is_alpha(c);
        s = replace3(&s, na, '\'', na, |a, b, o| spaced(a, " ' ", b, o));
        s = replace3(
            &s,
            |c| !is_alpha(c) && !is_digit(c),
            '\'',
            is_alpha,
            |a, b, o| spaced(a, " ' ", b, o),
        );
        s = replace3(&s, is_alpha, '\'', na, |a, b, o| spaced(a, " ' ", b, o));
        s = replace3(&s, is_alpha, '\'', is_alpha, |a, b, o| {
            spaced(a, " '", b, o)
        });
        s = replace3(
            &s,
            is_digit,
            '\'',
            |c| c == 's',
            |a, b, o| spaced(a, " '", b, o),
        );
    }
    // split words (dots attached), rebuild breaking dots unless nonbreaking
    let line: String = s.iter().collect();
    let words: Vec<&str> = java_tokens(&line).collect();
    let mut sb = String::with_capacity(line.len() + 8);
    for (i, w) in words.iter().enumerate() {
        if w.chars().count() > 1 && w.ends_with('.') {
            let pre = &w[..w.len() - 1];
            let ty = nbp.get(pre).copied();
            let next = words.get(i + 1).and_then(|n| n.chars().next());
            if pre.contains('.') && pre.chars().any(is_alpha) {
                sb.push_str(&w.replace('.', ""));
            } else if ty == Some(Nbp::Any)
                || next.is_some_and(|c| c.is_ascii_lowercase())
                || (ty == Some(Nbp::NumOnly) && next.is_some_and(|c| c.is_ascii_digit()))
            {
                // always nonbreaking, followed by lowercase, or numeric-only before a number
                sb.push_str(w);
            } else {
                sb.push_str(pre);
                sb.push_str(" .");
            }
        } else {
            sb.push_str(w);
        }
        sb.push(' ');
    }
    let mut out = sb;
    while out.contains("DOTDOTMULTI") {
        out = out.replace("DOTDOTMULTI", "DOTMULTI.");
    }
    if out.contains("DOTMULTI") {
        out = out.replace("DOTMULTI", ".");
    }
    // r_white -> " ", then String.trim (chars <= U+0020)
    let mut t = String::with_capacity(out.len());
    let mut in_white = false;
    for c in out.chars() {
        if is_white(c) {
            if !in_white {
                t.push(' ');
            }
            in_white = true;
        } else {
            t.push(c);
            in_white = false;
        }
    }
    java_trim(&t).to_string()
}

/// `String.trim`: strip chars `<= U+0020` at both ends.
pub fn java_trim(s: &str) -> &str {
    s.trim_matches(|c: char| c <= ' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nbp() -> FxHashMap<String, Nbp> {
        let mut d = FxHashMap::default();
        d.insert("Dr".to_string(), Nbp::Any);
        d.insert("No".to_string(), Nbp::NumOnly);
        d.insert("X".to_string(), Nbp::Any);
        d
    }

    #[test]
    fn normalizer_cases() {
        let d = nbp();
        // expected strings produced by the jar's Normalizer (edu.cmu.meteor.util.Normalizer)
        let cases = [
            ("Hello, world!", "Hello , world !"),
            ("a,b,c", "a , b,c"),
            ("1,000 and 2,5", "1,000 and 2,5"),
            ("U.S.-based firm.", "US based firm ."),
            (
                "Dr. Smith saw No. 5 and No. X.",
                "Dr. Smith saw No. 5 and No . X.",
            ),
            ("wait... what", "wait ... what"),
            ("don't stop", "don 't stop"),
            ("the 1990's", "the 1990 's"),
            ("“quoted” text", "\" quoted \" text"),
            ("a -- b – c", "a - b - c"),
            ("size 3.5 cm.", "size 3.5 cm ."),
            ("(left) lung/right", "( left ) lung / right"),
        ];
        for (inp, want) in cases {
            assert_eq!(normalize_line(inp, &d), want, "input {inp:?}");
        }
    }
}
