//! Line charts as SVG text: one line per series over a shared numeric x axis, with a title,
//! axis labels that carry the units, and a legend. Reports (`evaluate study-report`, and later
//! the HTML report) draw every chart through [`line_chart_svg`].

use plotters::prelude::*;

/// One line: a name for the legend and its points `(x, y)`, drawn in this order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// What a chart shows. Labels should name the unit, e.g. `"win rate (%)"`.
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("chart `{title}`: no points to draw")]
    Empty { title: String },
    #[error("chart `{title}`: series `{series}` has a non-finite point ({x}, {y})")]
    NotFinite {
        title: String,
        series: String,
        x: f64,
        y: f64,
    },
    #[error("chart `{title}`: {message}")]
    Draw { title: String, message: String },
}

/// Size of every chart, in pixels.
const SIZE: (u32, u32) = (720, 400);

/// Distinguishable line colours (Okabe-Ito), reused in order when there are more series.
const COLORS: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
    RGBColor(240, 228, 66),
];

/// The axis range of `values` with 5% room on each side (a unit either side of a single value).
fn padded_range(values: impl Iterator<Item = f64> + Clone) -> std::ops::Range<f64> {
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.fold(f64::NEG_INFINITY, f64::max);
    if hi - lo < 1e-12 {
        return (lo - 1.0)..(hi + 1.0);
    }
    let pad = 0.05 * (hi - lo);
    (lo - pad)..(hi + pad)
}

/// Whether every x is a whole number: ticks then print without decimals.
fn whole_numbers(xs: &[f64]) -> bool {
    xs.iter().all(|x| x.fract() == 0.0)
}

/// The chart as a standalone SVG document. Every series gets a colour, round markers on its
/// points (so a one-point series shows) and a legend entry.
pub fn line_chart_svg(chart: &LineChart) -> Result<String, ChartError> {
    let points: Vec<(f64, f64)> = chart.series.iter().flat_map(|s| s.points.clone()).collect();
    if points.is_empty() {
        return Err(ChartError::Empty {
            title: chart.title.clone(),
        });
    }
    for s in &chart.series {
        if let Some(&(x, y)) = s
            .points
            .iter()
            .find(|(x, y)| !x.is_finite() || !y.is_finite())
        {
            return Err(ChartError::NotFinite {
                title: chart.title.clone(),
                series: s.name.clone(),
                x,
                y,
            });
        }
    }
    let mut svg = String::new();
    draw(chart, &points, &mut svg).map_err(|message| ChartError::Draw {
        title: chart.title.clone(),
        message,
    })?;
    Ok(svg)
}

fn draw(chart: &LineChart, points: &[(f64, f64)], svg: &mut String) -> Result<(), String> {
    let xs: Vec<f64> = points.iter().map(|p| p.0).collect();
    let x_range = padded_range(xs.iter().copied());
    let y_range = padded_range(points.iter().map(|p| p.1));
    let integer_x = whole_numbers(&xs);
    let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
    let e = |err: &dyn std::fmt::Display| err.to_string();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut plot = ChartBuilder::on(&root)
        .caption(&chart.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range, y_range)
        .map_err(|x| e(&x))?;
    let x_format = |x: &f64| {
        if integer_x {
            format!("{x:.0}")
        } else {
            format!("{x}")
        }
    };
    let ticks = if integer_x {
        let (lo, hi) = (
            xs.iter().copied().fold(f64::INFINITY, f64::min),
            xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        );
        (hi - lo) as usize + 1
    } else {
        10
    };
    plot.configure_mesh()
        .x_labels(ticks)
        .x_label_formatter(&x_format)
        .x_desc(&chart.x_label)
        .y_desc(&chart.y_label)
        .draw()
        .map_err(|x| e(&x))?;
    for (i, s) in chart.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        plot.draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(s.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
        plot.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|x| e(&x))?;
    }
    plot.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(series: Vec<Series>) -> LineChart {
        LineChart {
            title: "win rate".into(),
            x_label: "iteration".into(),
            y_label: "win rate (%)".into(),
            series,
        }
    }

    #[test]
    fn draws_a_line_and_a_legend_entry_per_series() {
        let svg = line_chart_svg(&chart(vec![
            Series {
                name: "sppo".into(),
                points: vec![(0.0, 50.0), (1.0, 60.0), (2.0, 70.0)],
            },
            Series {
                name: "rspo-paper".into(),
                points: vec![(0.0, 50.0), (1.0, 55.0), (2.0, 65.0)],
            },
        ]))
        .unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{svg}"
        );
        // Two data lines and two legend swatches (the axes are 1 wide).
        assert_eq!(
            svg.matches(r#"stroke-width="2" points"#).count(),
            4,
            "{svg}"
        );
        // The text of every element: legend, axis labels, whole-number iteration ticks.
        let texts: Vec<&str> = svg
            .split('<')
            .filter_map(|tag| tag.split_once('>').map(|(_, text)| text.trim()))
            .filter(|t| !t.is_empty())
            .collect();
        for text in [
            "sppo",
            "rspo-paper",
            "iteration",
            "win rate (%)",
            "0",
            "1",
            "2",
        ] {
            assert!(texts.contains(&text), "{text} missing: {texts:?}");
        }
        assert!(!texts.contains(&"0.5"), "{texts:?}");
        // Round markers on the 6 points.
        assert_eq!(svg.matches("<circle").count(), 6, "{svg}");
    }

    #[test]
    fn a_single_value_still_gets_a_range() {
        let svg = line_chart_svg(&chart(vec![Series {
            name: "flat".into(),
            points: vec![(0.0, 3.0), (1.0, 3.0)],
        }]))
        .unwrap();
        assert!(svg.contains("flat"));
    }

    #[test]
    fn refuses_no_points_and_non_finite_points() {
        let err = line_chart_svg(&chart(vec![])).unwrap_err();
        assert_eq!(err.to_string(), "chart `win rate`: no points to draw");
        let err = line_chart_svg(&chart(vec![Series {
            name: "sppo".into(),
            points: vec![(0.0, f64::NAN)],
        }]))
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("series `sppo` has a non-finite point"),
            "{err}"
        );
    }
}
