//! `--plot`: each read operation's latency by percentile as an SVG line chart (plotters), latency on a log axis.
//!
//! The x axis is the percentile on the usual HDR-histogram scale, `-log10(1 - q)`: equal room
//! for 0–90 %, 90–99 %, 99–99.9 %, …, so the tail — the part a trading engine cares about —
//! is as visible as the median.

use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::output::fmt_nanos;

/// Plot size in pixels.
const SIZE: (u32, u32) = (1000, 620);
/// Deepest percentile drawn: 99.999 % (x = 5), or less when there are fewer samples.
const MAX_NINES: f64 = 5.0;
/// Points per halving of the remaining distance to 100 % (hdrhistogram's quantile iterator).
const TICKS_PER_HALF: u32 = 8;

/// `-log10(1 - q)`, capped at `cap`.
fn nines(q: f64, cap: f64) -> f64 {
    if q >= 1.0 {
        cap
    } else {
        (-(1.0 - q).log10()).min(cap)
    }
}

/// The label of x = `nines`: `0%`, `90%`, `99%`, `99.9%`, ...
fn percentile_label(nines: f64) -> String {
    let pct = 100.0 * (1.0 - 10f64.powf(-nines));
    let decimals = (nines.ceil() as usize).saturating_sub(2);
    format!("{pct:.decimals$}%")
}

/// A latency in microseconds as an axis label.
fn latency_label(us: f64) -> String {
    if us >= 1_000.0 {
        format!("{} ms", us / 1_000.0)
    } else {
        format!("{us} µs")
    }
}

/// Renders the percentile curves of `series` (name, latency histogram in nanoseconds) as an
/// SVG document, titled with `title`.
pub(crate) fn svg(title: &str, series: &[(&str, Histogram<u64>)]) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        draw(&root, title, series).map_err(|e| format!("cannot draw the plot: {e}"))?;
        root.present()
            .map_err(|e| format!("cannot draw the plot: {e}"))?;
    }
    Ok(out)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    series: &[(&str, Histogram<u64>)],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let samples = series.iter().map(|(_, h)| h.len()).max().unwrap_or(0);
    // No point drawing percentiles finer than one sample.
    let x_max = (samples.max(10) as f64)
        .log10()
        .floor()
        .clamp(1.0, MAX_NINES);
    let (lo, hi) = series
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .fold((f64::MAX, 0.0f64), |(lo, hi), (_, h)| {
            (lo.min(h.min().max(1) as f64), hi.max(h.max() as f64))
        });
    let (lo, hi) = if hi <= 0.0 { (1.0, 10.0) } else { (lo, hi) };
    // Whole decades around the data, in microseconds.
    let y_lo = 10f64.powf((lo / 1_000.0).log10().floor());
    let y_hi = 10f64.powf((hi / 1_000.0).log10().ceil()).max(y_lo * 10.0);

    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x_max, (y_lo..y_hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency")
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| latency_label(*y))
        .draw()?;

    let colors = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    for (i, (name, h)) in series.iter().enumerate() {
        if h.is_empty() {
            continue;
        }
        let color = colors[i % colors.len()];
        let points: Vec<(f64, f64)> = h
            .iter_quantiles(TICKS_PER_HALF)
            .map(|v| {
                (
                    nines(v.quantile_iterated_to(), x_max),
                    (h.highest_equivalent(v.value_iterated_to()) as f64 / 1_000.0).max(y_lo),
                )
            })
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(format!(
                "{name} (p50 {}, p99 {}, max {})",
                fmt_nanos(h.value_at_quantile(0.5)),
                fmt_nanos(h.value_at_quantile(0.99)),
                fmt_nanos(h.max())
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::record::latency_histogram;

    #[test]
    fn percentile_axis_labels() {
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(5.0), "99.999%");
        assert!((nines(0.99, 5.0) - 2.0).abs() < 1e-9);
        assert_eq!(nines(1.0, 4.0), 4.0);
    }

    #[test]
    fn the_plot_is_an_svg_with_one_curve_per_series() {
        let mut a = latency_histogram(3);
        let mut b = latency_histogram(3);
        for i in 1..=10_000u64 {
            a.record(100 + i).unwrap();
            b.record(20_000 + 7 * i).unwrap();
        }
        let empty = latency_histogram(3);
        let svg = svg(
            "test",
            &[("read_price", a), ("read_book", b), ("none", empty)],
        )
        .unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.contains("read_price") && svg.contains("read_book"));
        assert!(svg.contains("99.9%"));
        // Curves are drawn in their series' colors; the mesh is not.
        let (red, blue) = ("stroke=\"#FF0000\"", "stroke=\"#0000FF\"");
        assert!(svg.contains(red) && svg.contains(blue));
        if let Ok(path) = std::env::var("MDCACHE_PLOT_TEST_OUT") {
            std::fs::write(path, &svg).unwrap();
        }
    }
}
