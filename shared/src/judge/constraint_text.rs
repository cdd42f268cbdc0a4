//! How the `instructions` judge measures a response: words, sentences, paragraphs, keywords,
//! bullets, highlights. IFEval's definitions where it has one (see each function); the
//! constraint kinds of [`super::constraints`] are thin checks on these numbers.

use std::sync::LazyLock;

use regex::Regex;

fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).expect("a valid built-in pattern")
}

static WORD: LazyLock<Regex> = LazyLock::new(|| regex(r"\w+"));

/// The words of a text: maximal runs of Unicode word characters (IFEval's `count_words`, NLTK's
/// `RegexpTokenizer(r"\w+")`), so "don't" is two words and "3.5" is two.
pub fn words(text: &str) -> impl Iterator<Item = &str> {
    WORD.find_iter(text).map(|m| m.as_str())
}

pub fn word_count(text: &str) -> usize {
    words(text).count()
}

/// Characters (Unicode scalar values) of the response without surrounding whitespace.
pub fn char_count(text: &str) -> usize {
    text.trim().chars().count()
}

/// A sentence ends at a run of `.`, `!`, `?` or `…` (with any closing quotes or brackets) that
/// is followed by whitespace or the end of the text, or at CJK full stops `。！？` wherever they
/// are. A `.` after a title or a Latin abbreviation (Mr., Dr., e.g., i.e., ...) ends nothing, and
/// neither does a `.` inside a number (3.5). Line breaks alone do not end a sentence (IFEval
/// joins lines before splitting). Pieces without a word character (a stray "...") are not
/// sentences.
static SENTENCE_END: LazyLock<Regex> =
    LazyLock::new(|| regex(r#"[.!?…]+["'”’»)\]]*(?:\s+|$)|[。！？]+["'”’」』)\]]*\s*"#));

/// Words that end with a `.` that does not end the sentence (lowercased, without the dot).
const ABBREVIATIONS: [&str; 11] = [
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "e.g", "i.e",
];

pub fn sentence_count(text: &str) -> usize {
    let mut count = 0;
    let mut start = 0;
    for end in SENTENCE_END.find_iter(text) {
        let before = &text[start..end.start()];
        let last_word = before
            .rsplit(char::is_whitespace)
            .next()
            .unwrap_or("")
            .to_lowercase();
        if end.as_str().starts_with('.')
            && !end.as_str().starts_with("..")
            && ABBREVIATIONS.contains(&last_word.as_str())
        {
            continue;
        }
        count += usize::from(WORD.is_match(before));
        start = end.end();
    }
    count + usize::from(WORD.is_match(&text[start..]))
}

/// A line that separates paragraphs besides a blank one: a Markdown divider (`***`, `---`,
/// `___`, IFEval's paragraph separator is `***`).
static DIVIDER: LazyLock<Regex> = LazyLock::new(|| regex(r"^\s*(?:\*{3,}|-{3,}|_{3,})\s*$"));

/// Paragraphs: maximal runs of non-blank lines, separated by blank lines (or lines of only
/// whitespace) or by Markdown dividers.
pub fn paragraph_count(text: &str) -> usize {
    let mut count = 0;
    let mut in_paragraph = false;
    for line in text.lines() {
        let separates = line.trim().is_empty() || DIVIDER.is_match(line);
        if !separates && !in_paragraph {
            count += 1;
        }
        in_paragraph = !separates;
    }
    count
}

/// Non-overlapping occurrences of `keyword` (a word or a phrase), ignoring case, as whole words:
/// "art" is not found in "start". (IFEval matches keywords as substrings but forbidden words as
/// whole words; whole words for both here, so "include" and "exclude" are each other's
/// opposite.)
pub fn keyword_count(text: &str, keyword: &str) -> usize {
    let keyword = keyword.trim();
    let edge = |c: Option<char>| match c {
        Some(c) if c.is_alphanumeric() || c == '_' => r"\b",
        _ => "",
    };
    let pattern = format!(
        "(?i){}{}{}",
        edge(keyword.chars().next()),
        regex::escape(keyword),
        edge(keyword.chars().last())
    );
    regex(&pattern).find_iter(text).count()
}

/// Occurrences of a letter, ignoring case (IFEval: `value.lower().count(letter.lower())`).
pub fn letter_count(text: &str, letter: char) -> usize {
    let lower: Vec<char> = letter.to_lowercase().collect();
    text.chars()
        .filter(|c| c.to_lowercase().eq(lower.iter().copied()))
        .count()
}

/// Words written in capitals: at least one uppercase letter and no lowercase one (IFEval's
/// `word.isupper()`, so "I" and "USA" count, "Paris" does not).
pub fn capital_word_count(text: &str) -> usize {
    words(text)
        .filter(|w| w.chars().any(char::is_uppercase) && !w.chars().any(char::is_lowercase))
        .count()
}

/// Bullet points: lines whose first non-blank character is `*`, `-`, `+` or `•` followed by
/// whitespace and some text (Markdown's unordered list items; `**bold**` and `---` are not).
static BULLET: LazyLock<Regex> = LazyLock::new(|| regex(r"(?m)^[ \t]*[*\-+•][ \t]+\S"));

pub fn bullet_count(text: &str) -> usize {
    BULLET.find_iter(text).count()
}

static ITALIC: LazyLock<Regex> = LazyLock::new(|| regex(r"\*[^\n*]*\*"));
static BOLD: LazyLock<Regex> = LazyLock::new(|| regex(r"\*\*[^\n*]*\*\*"));

/// Highlighted sections, as IFEval counts them: the `*text*` spans plus the `**text**` spans
/// within a line, each with some non-blank text inside.
pub fn highlight_count(text: &str) -> usize {
    let filled = |m: regex::Match<'_>| !m.as_str().trim_matches('*').trim().is_empty();
    ITALIC.find_iter(text).filter(|m| filled(*m)).count()
        + BOLD.find_iter(text).filter(|m| filled(*m)).count()
}

static PLACEHOLDER: LazyLock<Regex> = LazyLock::new(|| regex(r"\[.*?\]"));

/// Placeholders in square brackets, like `[name]` (IFEval's `\[.*?\]`, within a line).
pub fn placeholder_count(text: &str) -> usize {
    PLACEHOLDER.find_iter(text).count()
}

/// Sections: the marker followed by a number, like `SECTION 1` (IFEval's multiple_sections,
/// case-sensitive).
pub fn section_count(text: &str, marker: &str) -> usize {
    regex(&format!(r"{}\s?\d+", regex::escape(marker.trim())))
        .find_iter(text)
        .count()
}

static TITLE: LazyLock<Regex> = LazyLock::new(|| regex(r"<<[^\n]+>>"));

/// A title wrapped in double angle brackets, like `<<Morning Song>>`, with some text inside
/// (IFEval's title).
pub fn has_title(text: &str) -> bool {
    TITLE.find_iter(text).any(|m| {
        !m.as_str()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .trim()
            .is_empty()
    })
}

/// Lowercased, with every run of whitespace removed: how markers and repeated text are
/// compared ("P. S." is "P.S.").
fn squeezed(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Whether some line starts (after its indentation) with the marker, ignoring case and spaces
/// ("P. S." is "P.S."); IFEval's postscript.
pub fn has_postscript(text: &str, marker: &str) -> bool {
    let marker = squeezed(marker);
    text.lines().any(|line| squeezed(line).starts_with(&marker))
}

/// Lowercased, with every run of whitespace turned into one space and the ends trimmed.
pub fn normalized(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The response, fences of a ```json code block removed (IFEval's json_format strips them).
pub fn without_code_fence(text: &str) -> &str {
    let t = text.trim();
    let t = t.strip_prefix("```").map_or(t, |rest| {
        rest.strip_prefix("json")
            .or_else(|| rest.strip_prefix("JSON"))
            .or_else(|| rest.strip_prefix("Json"))
            .unwrap_or(rest)
    });
    t.strip_suffix("```").unwrap_or(t).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_runs_of_word_characters() {
        assert_eq!(word_count(""), 0);
        assert_eq!(word_count("  \n"), 0);
        // Don, t, stop, 3, 5, km.
        assert_eq!(word_count("Don't stop: 3.5 km!"), 6);
        assert_eq!(word_count("**Bold** _it_ - item"), 3);
        assert_eq!(word_count("Привет, мир. 你好 café"), 4);
    }

    #[test]
    fn sentences_end_at_terminal_punctuation() {
        assert_eq!(sentence_count(""), 0);
        assert_eq!(sentence_count("One"), 1);
        assert_eq!(sentence_count("One. Two! Three? Four"), 4);
        assert_eq!(
            sentence_count("Mr. Smith met Dr. Who, e.g. at 3.5 pm. Then left."),
            2
        );
        assert_eq!(sentence_count("Wait... What?! \"Yes.\" Fine"), 4);
        assert_eq!(sentence_count("A line\nanother line."), 1);
        assert_eq!(sentence_count("..."), 0);
        assert_eq!(sentence_count("我很好。你呢？好"), 3);
    }

    #[test]
    fn paragraphs_are_separated_by_blank_lines_or_dividers() {
        assert_eq!(paragraph_count(""), 0);
        assert_eq!(paragraph_count("\n \n"), 0);
        assert_eq!(paragraph_count("one\ntwo"), 1);
        assert_eq!(paragraph_count("one\n\n  \n two\r\n\r\nthree\n"), 3);
        assert_eq!(paragraph_count("one\n***\ntwo\n---\nthree"), 3);
        assert_eq!(paragraph_count("- a\n- b\n\n**c**"), 2);
    }

    #[test]
    fn keywords_match_whole_words_ignoring_case() {
        assert_eq!(keyword_count("Art is a start; ART.", "art"), 2);
        assert_eq!(keyword_count("I love New York, new york!", "new york"), 2);
        assert_eq!(keyword_count("C++ and c++17", "C++"), 2);
        assert_eq!(keyword_count("Ёлка и ёлки", "ёлка"), 1);
        assert_eq!(keyword_count("", "x"), 0);
        assert_eq!(keyword_count("a.b (x)", "(x)"), 1);
    }

    #[test]
    fn letters_capitals_bullets_highlights() {
        assert_eq!(letter_count("Banana", 'a'), 3);
        assert_eq!(letter_count("BANANA", 'a'), 3);
        assert_eq!(letter_count("Éé e", 'é'), 2);
        assert_eq!(capital_word_count("I saw the USA and Paris at NOON 2PM"), 4);
        assert_eq!(
            bullet_count("* a\n- b\n  + c\n• d\n**e**\n---\n-f\n1. g"),
            4
        );
        assert_eq!(highlight_count("*a* and **b** and ** ** and *\nc*"), 2);
        assert_eq!(highlight_count("* item\n* item"), 0);
        assert_eq!(placeholder_count("Dear [name], at [address]."), 2);
        assert_eq!(
            section_count("SECTION 1\nx\nSECTION 2\nSection 3", "SECTION"),
            2
        );
    }

    #[test]
    fn titles_postscripts_fences() {
        assert!(has_title("<<Morning Song>>\nla la"));
        assert!(!has_title("<< >> and <<\n>>"));
        assert!(has_postscript("Hi.\n\nP. S. see you", "P.S."));
        assert!(has_postscript("Hi.\n  p.s. later", "P.S."));
        assert!(!has_postscript("Hi. PS later", "P.S."));
        assert_eq!(
            without_code_fence(" ```json\n{\"a\": 1}\n``` "),
            "{\"a\": 1}"
        );
        assert_eq!(without_code_fence("[1]"), "[1]");
        assert_eq!(normalized("  Hello\n  World "), "hello world");
    }
}
