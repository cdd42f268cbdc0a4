//! Writing systems by Unicode block, for the `script` constraint ("answer in Russian" is checked
//! as "written in Cyrillic": no language detector, only the letters' code points).

use serde::{Deserialize, Serialize};

/// A writing system the `script` constraint can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Script {
    Latin,
    Cyrillic,
    Greek,
    Armenian,
    Georgian,
    Hebrew,
    Arabic,
    Devanagari,
    Bengali,
    Thai,
    Hangul,
    /// Chinese characters (also Japanese kanji).
    Han,
    /// Hiragana and katakana.
    Kana,
    /// Han and kana together, as Japanese is written.
    Japanese,
}

/// The share of a response's letters that must be in the script: a Russian answer may name an
/// "iPhone" and still be a Russian answer.
pub const MIN_SHARE: f64 = 0.9;

type Ranges = &'static [(u32, u32)];

const LATIN: Ranges = &[
    (0x41, 0x5A),
    (0x61, 0x7A),
    (0xAA, 0xAA),
    (0xBA, 0xBA),
    (0xC0, 0xD6),
    (0xD8, 0xF6),
    (0xF8, 0x24F),
    (0x250, 0x2AF),
    (0x1E00, 0x1EFF),
    (0x2C60, 0x2C7F),
    (0xA720, 0xA7FF),
    (0xAB30, 0xAB6F),
    (0xFB00, 0xFB06),
    (0xFF21, 0xFF3A),
    (0xFF41, 0xFF5A),
];
const CYRILLIC: Ranges = &[
    (0x400, 0x52F),
    (0x1C80, 0x1C8F),
    (0x2DE0, 0x2DFF),
    (0xA640, 0xA69F),
];
const GREEK: Ranges = &[(0x370, 0x3FF), (0x1F00, 0x1FFF)];
const ARMENIAN: Ranges = &[(0x530, 0x58F), (0xFB13, 0xFB17)];
const GEORGIAN: Ranges = &[(0x10A0, 0x10FF), (0x1C90, 0x1CBF), (0x2D00, 0x2D2F)];
const HEBREW: Ranges = &[(0x590, 0x5FF), (0xFB1D, 0xFB4F)];
const ARABIC: Ranges = &[
    (0x600, 0x6FF),
    (0x750, 0x77F),
    (0x8A0, 0x8FF),
    (0xFB50, 0xFDFF),
    (0xFE70, 0xFEFF),
];
const DEVANAGARI: Ranges = &[(0x900, 0x97F), (0xA8E0, 0xA8FF)];
const BENGALI: Ranges = &[(0x980, 0x9FF)];
const THAI: Ranges = &[(0xE00, 0xE7F)];
const HANGUL: Ranges = &[
    (0x1100, 0x11FF),
    (0x3130, 0x318F),
    (0xA960, 0xA97F),
    (0xAC00, 0xD7AF),
    (0xD7B0, 0xD7FF),
];
const HAN: Ranges = &[
    (0x2E80, 0x2FDF),
    (0x3005, 0x3007),
    (0x3021, 0x3029),
    (0x3038, 0x303B),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2EBEF),
    (0x30000, 0x3134F),
];
const KANA: Ranges = &[
    (0x3040, 0x309F),
    (0x30A0, 0x30FF),
    (0x31F0, 0x31FF),
    (0xFF66, 0xFF9F),
];

impl Script {
    fn ranges(self) -> &'static [Ranges] {
        match self {
            Script::Latin => &[LATIN],
            Script::Cyrillic => &[CYRILLIC],
            Script::Greek => &[GREEK],
            Script::Armenian => &[ARMENIAN],
            Script::Georgian => &[GEORGIAN],
            Script::Hebrew => &[HEBREW],
            Script::Arabic => &[ARABIC],
            Script::Devanagari => &[DEVANAGARI],
            Script::Bengali => &[BENGALI],
            Script::Thai => &[THAI],
            Script::Hangul => &[HANGUL],
            Script::Han => &[HAN],
            Script::Kana => &[KANA],
            Script::Japanese => &[HAN, KANA],
        }
    }

    pub fn contains(self, c: char) -> bool {
        let c = c as u32;
        self.ranges()
            .iter()
            .flat_map(|r| r.iter())
            .any(|&(lo, hi)| (lo..=hi).contains(&c))
    }

    /// Whether the text has letters and at least [`MIN_SHARE`] of them are in this script.
    /// Letters are alphabetic characters (Indic vowel signs included); digits, punctuation and
    /// emoji do not count either way.
    pub fn writes(self, text: &str) -> bool {
        let (mut letters, mut inside) = (0usize, 0usize);
        for c in text.chars().filter(|c| c.is_alphabetic()) {
            letters += 1;
            inside += usize::from(self.contains(c));
        }
        letters > 0 && inside as f64 >= MIN_SHARE * letters as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_by_code_point() {
        assert!(Script::Latin.writes("Bonjour, ça va? Très bien."));
        assert!(!Script::Latin.writes("Привет"));
        assert!(Script::Cyrillic.writes("Привет! Я купил новый телефон GPS и очень рад этому."));
        assert!(!Script::Cyrillic.writes("Привет, my dear friend"));
        assert!(Script::Greek.writes("Καλημέρα κόσμε"));
        assert!(Script::Han.writes("你好，世界！123"));
        assert!(!Script::Han.writes("こんにちは"));
        assert!(Script::Kana.writes("こんにちは カタカナ"));
        assert!(Script::Japanese.writes("今日は良い天気です。"));
        assert!(Script::Arabic.writes("مرحبا بالعالم"));
        assert!(Script::Hebrew.writes("שלום עולם"));
        assert!(Script::Devanagari.writes("नमस्ते दुनिया"));
        assert!(Script::Hangul.writes("안녕하세요"));
        assert!(Script::Thai.writes("สวัสดีครับ"));
        assert!(Script::Bengali.writes("ওহে বিশ্ব"));
        assert!(Script::Armenian.writes("Բարեւ աշխարհ"));
        assert!(Script::Georgian.writes("გამარჯობა"));
        // No letters: nothing is written in any script.
        assert!(!Script::Latin.writes(""));
        assert!(!Script::Latin.writes("123 !? 🙂"));
    }
}
