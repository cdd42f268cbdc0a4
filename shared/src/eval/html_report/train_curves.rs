//! One iteration's training curves from its train_log rows: the loss and its self-play part,
//! each regularizer term, the gradient norm, and the mean log-ratios to pi_t and pi_ref, per
//! optimizer step.

use crate::data::TrainLogRow;
use crate::eval::{LineChart, Series};

fn series(name: &str, log: &[TrainLogRow], value: impl Fn(&TrainLogRow) -> f64) -> Series {
    Series {
        name: name.to_string(),
        points: log.iter().map(|r| (r.step as f64, value(r))).collect(),
    }
}

fn chart(model: &str, what: &str, y_label: &str, series: Vec<Series>) -> LineChart {
    LineChart {
        title: format!("{model}: {what}"),
        x_label: "optimizer step".into(),
        y_label: y_label.into(),
        series,
    }
}

/// The charts of one model's train log (none for an empty log); a log without regularizer
/// terms has no terms chart.
pub fn train_curve_charts(model: &str, log: &[TrainLogRow]) -> Vec<LineChart> {
    if log.is_empty() {
        return Vec::new();
    }
    let terms: Vec<Series> = log[0]
        .terms
        .keys()
        .map(|t| series(t, log, |r| r.terms.get(t).copied().unwrap_or(f64::NAN)))
        .collect();
    let charts = [
        (
            "loss",
            "loss (total and self-play part)",
            vec![
                series("loss", log, |r| r.loss),
                series("self_play", log, |r| r.self_play),
            ],
        ),
        (
            "regularizer terms",
            "term value T, before its coefficient",
            terms,
        ),
        (
            "gradient norm",
            "gradient L2 norm",
            vec![series("grad_norm", log, |r| r.grad_norm)],
        ),
        (
            "log-ratios",
            "mean sequence log-ratio (nats)",
            vec![
                series("log pi / pi_t", log, |r| r.mean_logratio_t),
                series("log pi / pi_ref", log, |r| r.mean_logratio_ref),
            ],
        ),
    ];
    charts
        .into_iter()
        .filter(|(_, _, series)| !series.is_empty())
        .map(|(what, y_label, series)| chart(model, what, y_label, series))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn step(step: u64, terms: &[(&str, f64)]) -> TrainLogRow {
        TrainLogRow {
            step,
            epoch: step as f64,
            loss: 1.0 / step as f64,
            self_play: 0.5,
            terms: terms
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<BTreeMap<_, _>>(),
            grad_norm: 2.0,
            lr: 1e-6,
            tokens: 10,
            mean_logratio_t: 0.01,
            mean_logratio_ref: 0.02,
        }
    }

    #[test]
    fn a_chart_per_quantity_with_a_series_per_term() {
        let log = [
            step(1, &[("chi2", 0.1), ("reverse_kl", 0.2)]),
            step(2, &[("chi2", 0.3), ("reverse_kl", 0.4)]),
        ];
        let charts = train_curve_charts("iter-1", &log);
        let titles: Vec<&str> = charts.iter().map(|c| c.title.as_str()).collect();
        assert_eq!(
            titles,
            [
                "iter-1: loss",
                "iter-1: regularizer terms",
                "iter-1: gradient norm",
                "iter-1: log-ratios"
            ]
        );
        assert_eq!(charts[1].series[1].name, "reverse_kl");
        assert_eq!(charts[1].series[1].points, [(1.0, 0.2), (2.0, 0.4)]);
        assert_eq!(charts[0].series[0].points, [(1.0, 1.0), (2.0, 0.5)]);
        // Without terms: no terms chart; without rows: no charts.
        assert_eq!(train_curve_charts("m", &[step(1, &[])]).len(), 3);
        assert!(train_curve_charts("m", &[]).is_empty());
    }
}
