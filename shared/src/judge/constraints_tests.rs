//! Every constraint kind on responses that pass and fail it, with the edge cases (an empty
//! response, Unicode, Markdown); and the errors of bad constraint lists.

use super::*;

const REQUEST: &str = "Write a haiku about the sea.";

/// Whether each response meets the one constraint `json`.
fn met(json: &str, responses: &[&str]) -> Vec<bool> {
    let parsed = parse_constraints(&format!("[{json}]")).unwrap();
    responses
        .iter()
        .map(|r| parsed[0].rule.is_met(r, REQUEST))
        .collect()
}

fn error(json: &str) -> String {
    parse_constraints(json).unwrap_err().to_string()
}

#[test]
fn word_count() {
    let c = r#"{"kind": "word_count", "at_least": 3, "at_most": 5}"#;
    assert_eq!(
        met(c, &["one two three", "one two", "a b c d e f", ""]),
        [true, false, false, false]
    );
    // "don't" is two words (don, t); Cyrillic runs are words; Markdown marks are not.
    assert_eq!(
        met(
            c,
            &[
                "don't stop",
                "stop now",
                "Привет мой друг",
                "**bold** - x y"
            ]
        ),
        [true, false, true, true]
    );
    assert_eq!(
        met(
            r#"{"kind": "word_count", "at_most": 0}"#,
            &["", " \n ", "a"]
        ),
        [true, true, false]
    );
}

#[test]
fn sentence_count() {
    let c = r#"{"kind": "sentence_count", "at_most": 2}"#;
    assert_eq!(
        met(
            c,
            &[
                "One. Two.",
                "One. Two. Three.",
                "",
                "Dr. Who met Mr. Bean. Then left."
            ]
        ),
        [true, false, true, true]
    );
    let c = r#"{"kind": "sentence_count", "at_least": 2}"#;
    assert_eq!(
        met(c, &["海很美。我喜欢海。", "Hi", "- a.\n- b."]),
        [true, false, true]
    );
}

#[test]
fn paragraph_count() {
    let c = r#"{"kind": "paragraph_count", "at_least": 2, "at_most": 2}"#;
    assert_eq!(
        met(
            c,
            &[
                "First.\n\nSecond.",
                "First.\nstill first.",
                "A\n***\nB",
                "A\n\nB\n\nC",
                "",
                "# Title\n\n- a\n- b\n"
            ]
        ),
        [true, false, true, false, false, true]
    );
}

#[test]
fn char_count() {
    let c = r#"{"kind": "char_count", "at_most": 5}"#;
    // Characters, not bytes; surrounding whitespace does not count.
    assert_eq!(
        met(c, &["héllo", "  héllo\n", "hello!", "", "日本語です"]),
        [true, true, false, true, true]
    );
    let c = r#"{"kind": "char_count", "at_least": 1}"#;
    assert_eq!(met(c, &["", " ", "x"]), [false, false, true]);
}

#[test]
fn include_and_exclude_keywords() {
    let c = r#"{"kind": "include_keywords", "keywords": ["ocean", "Blue Whale"]}"#;
    assert_eq!(
        met(
            c,
            &[
                "The OCEAN hides a blue whale.",
                "The ocean.",
                "oceanic blue whales",
                ""
            ]
        ),
        [true, false, false, false]
    );
    let c = r#"{"kind": "exclude_keywords", "keywords": ["very", "Очень"]}"#;
    assert_eq!(
        met(c, &["Every day.", "It is VERY good.", "очень хорошо", ""]),
        [true, false, false, true]
    );
}

#[test]
fn keyword_frequency() {
    let c = r#"{"kind": "keyword_frequency", "keyword": "tea", "at_least": 2}"#;
    assert_eq!(
        met(c, &["Tea, tea!", "tea and steam", "teapot tea", ""]),
        [true, false, false, false]
    );
    let c = r#"{"kind": "keyword_frequency", "keyword": "so", "at_most": 1}"#;
    assert_eq!(
        met(c, &["so", "so so", "", "also soon"]),
        [true, false, true, true]
    );
}

#[test]
fn letter_frequency() {
    let c = r#"{"kind": "letter_frequency", "letter": "z", "at_least": 2}"#;
    assert_eq!(
        met(c, &["Zebra pizza", "zoo", "", "ZZ"]),
        [true, false, false, true]
    );
    let c = r#"{"kind": "letter_frequency", "letter": "ё", "at_most": 1}"#;
    assert_eq!(met(c, &["Ёж", "Ёлка и ёж", "е"]), [true, false, true]);
}

#[test]
fn lowercase_and_uppercase() {
    let c = r#"{"kind": "lowercase"}"#;
    assert_eq!(
        met(
            c,
            &[
                "all quiet here, 42.",
                "Not quiet",
                "",
                "123 !",
                "привет мир",
                "你好",
                "**bold** `code`"
            ]
        ),
        // A response without cased letters (empty, digits, Han) is not "in lowercase".
        [true, false, false, false, true, false, true]
    );
    let c = r#"{"kind": "uppercase"}"#;
    assert_eq!(
        met(
            c,
            &["STOP NOW!", "STOP now", "", "ПРИВЕТ", "ÉTÉ 2024", "Straße"]
        ),
        [true, false, false, true, true, false]
    );
}

#[test]
fn capital_word_count() {
    let c = r#"{"kind": "capital_word_count", "at_least": 2, "at_most": 3}"#;
    assert_eq!(
        met(
            c,
            &[
                "NASA and the ESA",
                "NASA only",
                "I SAW THE USA",
                "",
                "МИР и ДРУЖБА"
            ]
        ),
        [true, false, false, false, true]
    );
}

#[test]
fn no_commas() {
    let c = r#"{"kind": "no_commas"}"#;
    assert_eq!(
        met(
            c,
            &[
                "No commas here.",
                "One, two",
                "",
                "中文，逗号",
                "日本、中国",
                "لا، شكرا"
            ]
        ),
        [true, false, true, false, false, false]
    );
}

#[test]
fn json_only() {
    let c = r#"{"kind": "json_only"}"#;
    assert_eq!(
        met(
            c,
            &[
                r#"{"name": "Ada", "age": 36}"#,
                "```json\n[1, 2, {\"ü\": \"ñ\"}]\n```",
                "Here it is: {\"a\": 1}",
                "",
                "42",
                "{\"a\": 1",
                "  [] \n"
            ]
        ),
        [true, true, false, false, false, false, true]
    );
}

#[test]
fn bullet_count() {
    let c = r#"{"kind": "bullet_count", "at_least": 3, "at_most": 3}"#;
    assert_eq!(
        met(
            c,
            &[
                "Fruits:\n* apple\n* pear\n* fig",
                "- a\n- b\n  - nested c",
                "- a\n- b",
                "**a**\n---\n1. b\n2. c\n3. d",
                "",
                "• un\n• deux\n+ trois"
            ]
        ),
        [true, true, false, false, false, true]
    );
}

#[test]
fn highlight_count() {
    let c = r#"{"kind": "highlight_count", "at_least": 2}"#;
    assert_eq!(
        met(
            c,
            &[
                "*one* and *two*",
                "**bold** and *italic*",
                "*one* only",
                "* a\n* b",
                "** ** and **",
                "",
                "*сердце* и *душа*"
            ]
        ),
        [true, true, false, false, false, false, true]
    );
}

#[test]
fn placeholder_count() {
    let c = r#"{"kind": "placeholder_count", "at_least": 2}"#;
    assert_eq!(
        met(
            c,
            &[
                "Dear [name], see you at [place].",
                "Dear [name].",
                "",
                "[a] [b]"
            ]
        ),
        [true, false, false, true]
    );
}

#[test]
fn section_count() {
    let c = r#"{"kind": "section_count", "marker": "SECTION", "at_least": 2}"#;
    assert_eq!(
        met(
            c,
            &[
                "SECTION 1\nIntro\nSECTION 2\nEnd",
                "SECTION 1 only",
                "Section 1\nSection 2",
                ""
            ]
        ),
        [true, false, false, false]
    );
}

#[test]
fn title() {
    let c = r#"{"kind": "title"}"#;
    assert_eq!(
        met(
            c,
            &[
                "<<The Sea>>\nWaves roll in.",
                "The Sea",
                "<< >>",
                "",
                "<<Море>> волны"
            ]
        ),
        [true, false, false, false, true]
    );
}

#[test]
fn postscript() {
    let c = r#"{"kind": "postscript", "marker": "P.S."}"#;
    assert_eq!(
        met(
            c,
            &[
                "See you soon.\n\nP.S. Bring a coat.",
                "See you.\np. s. bye",
                "See you. P.S. bye",
                "PS bye",
                ""
            ]
        ),
        [true, true, false, false, false]
    );
}

#[test]
fn start_and_end_phrases() {
    let c = r#"{"kind": "start_phrase", "phrase": "Dear friend,"}"#;
    assert_eq!(
        met(
            c,
            &[
                "Dear friend, hello.",
                "  DEAR   friend, hi",
                "Hello dear friend,",
                ""
            ]
        ),
        [true, true, false, false]
    );
    let c = r#"{"kind": "end_phrase", "phrase": "Any other questions?"}"#;
    assert_eq!(
        met(
            c,
            &[
                "Done. Any other questions?",
                "Done. any other\nquestions?  \n",
                "Any other questions? Done.",
                ""
            ]
        ),
        [true, true, false, false]
    );
}

#[test]
fn quoted() {
    let c = r#"{"kind": "quoted"}"#;
    assert_eq!(
        met(
            c,
            &[
                "\"The sea is calm.\"",
                " “Calm.” ",
                "«Спокойно»",
                "\"Half",
                "\"",
                "",
                "'single'"
            ]
        ),
        [true, true, true, false, false, false, false]
    );
}

#[test]
fn script() {
    let c = r#"{"kind": "script", "script": "cyrillic"}"#;
    assert_eq!(
        met(
            c,
            &[
                "Море сегодня удивительно спокойное и тёплое. Я взял GPS.",
                "The sea is calm.",
                "",
                "123"
            ]
        ),
        [true, false, false, false]
    );
    let c = r#"{"kind": "script", "script": "han"}"#;
    assert_eq!(met(c, &["大海很平静。", "The sea 大海"]), [true, false]);
    let c = r#"{"kind": "script", "script": "devanagari"}"#;
    assert_eq!(met(c, &["समुद्र शांत है।", "samudra"]), [true, false]);
}

#[test]
fn repeat_request() {
    let c = r#"{"kind": "repeat_request"}"#;
    assert_eq!(
        met(
            c,
            &[
                "Write a haiku about the sea.\n\nWaves fold into foam...",
                "write a  haiku about\nthe sea. Salt wind.",
                "Write a haiku about the sea.",
                "Here is a haiku about the sea.",
                ""
            ]
        ),
        [true, true, false, false, false]
    );
    let c = r#"{"kind": "repeat_request", "request": "Name a color."}"#;
    assert_eq!(
        met(
            c,
            &["Name a color. Blue.", "Write a haiku about the sea. Blue."]
        ),
        [true, false]
    );
}

#[test]
fn parsing_keeps_the_kind_and_canonical_json() {
    let got = parse_constraints(
        r#"[{"at_most": 40, "kind": "word_count"}, {"kind": "lowercase"}, {"kind": "script", "script": "greek"}]"#,
    )
    .unwrap();
    let kinds: Vec<&str> = got.iter().map(|c| c.kind.as_str()).collect();
    assert_eq!(kinds, ["word_count", "lowercase", "script"]);
    assert_eq!(got[0].json, r#"{"at_most":40,"kind":"word_count"}"#);
    assert_eq!(
        got[0].rule,
        Constraint::WordCount {
            at_least: None,
            at_most: Some(40)
        }
    );
    assert_eq!(
        got[2].rule,
        Constraint::Script {
            script: Script::Greek
        }
    );
}

#[test]
fn bad_constraints_are_clear_errors() {
    let cases: [(&str, &[&str]); 14] = [
        ("not json", &["not JSON"]),
        (
            r#"{"kind": "lowercase"}"#,
            &["is {\"kind\":\"lowercase\"}", "expected a JSON list"],
        ),
        ("[]", &["empty list"]),
        (
            r#"[{"kind": "lowercase"}, {"kind": "shout"}]"#,
            &[
                "constraints[1] {\"kind\":\"shout\"}",
                "unknown variant `shout`",
                "word_count",
            ],
        ),
        (r#"[{"at_most": 3}]"#, &["constraints[0]", "string `kind`"]),
        (
            r#"[{"kind": "word_count"}]"#,
            &["expected `at_least`, `at_most` or both"],
        ),
        (
            r#"[{"kind": "word_count", "at_least": 5, "at_most": 2}]"#,
            &["at_least 5 > at_most 2"],
        ),
        (r#"[{"kind": "word_count", "at_most": -1}]"#, &["-1", "u32"]),
        (
            r#"[{"kind": "word_count", "at_most": "ten"}]"#,
            &["\"ten\"", "u32"],
        ),
        (
            r#"[{"kind": "word_count", "most": 3}]"#,
            &["unknown field `most`"],
        ),
        (
            r#"[{"kind": "lowercase", "strict": true}]"#,
            &["unknown field `strict`"],
        ),
        (
            r#"[{"kind": "include_keywords", "keywords": []}]"#,
            &["`keywords` is an empty list"],
        ),
        (
            r#"[{"kind": "letter_frequency", "letter": "ab", "at_least": 1}]"#,
            &["\"ab\"", "character"],
        ),
        (
            r#"[{"kind": "script", "script": "klingon"}]"#,
            &["klingon", "cyrillic"],
        ),
    ];
    for (json, wants) in cases {
        let msg = error(json);
        for want in wants {
            assert!(msg.contains(want), "{json}: expected {want:?} in: {msg}");
        }
    }
    for json in [
        r#"[{"kind": "letter_frequency", "letter": "7", "at_least": 1}]"#,
        r#"[{"kind": "postscript", "marker": " "}]"#,
        r#"[{"kind": "end_phrase"}]"#,
        r#"[{"kind": "repeat_request", "request": ""}]"#,
    ] {
        assert!(
            matches!(
                parse_constraints(json),
                Err(ConstraintError::Bad { index: 0, .. })
            ),
            "{json}"
        );
    }
}
