//! `generate` end to end (filled in below).
