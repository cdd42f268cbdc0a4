//! Progress on long stages: a bar with rate and ETA on a terminal, a plain line every few
//! seconds otherwise (logs, CI, make).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    done: u64,
    /// A secondary count (tokens, pairs) for a rate.
    units: u64,
    unit_name: &'static str,
    start: Instant,
    last_log: Instant,
}

impl Progress {
    pub fn new(label: &str, total: u64, unit_name: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed} elapsed, ETA {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            bar
        });
        let now = Instant::now();
        Progress {
            bar,
            label: label.to_string(),
            total,
            done: 0,
            units: 0,
            unit_name,
            start: now,
            last_log: now,
        }
    }

    /// Counts units (tokens, pairs, ...) without finishing an item.
    pub fn add_units(&mut self, units: u64) {
        self.units += units;
        if let Some(bar) = &self.bar {
            bar.set_message(self.rate());
        }
    }

    /// Marks `n` items (prompts, rows) done.
    pub fn advance(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(bar) => {
                bar.set_position(self.done);
                bar.set_message(self.rate());
            }
            None => {
                if self.last_log.elapsed() > Duration::from_secs(5) || self.done == self.total {
                    self.last_log = Instant::now();
                    eprintln!(
                        "{}: {}/{} {}",
                        self.label,
                        self.done,
                        self.total,
                        self.rate()
                    );
                }
            }
        }
    }

    fn rate(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        if self.units > 0 {
            format!("{:.1} {}/s", self.units as f64 / secs, self.unit_name)
        } else {
            String::new()
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn units(&self) -> u64 {
        self.units
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
