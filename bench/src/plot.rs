//! PNG plots of the results, with plotters' bitmap backend and the DejaVu font that Debian
//! ships (registered by hand, so no fontconfig is needed).

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::cold::Cold;
use crate::warm::Warm;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Registers the font once; plotters needs one to draw any text.
pub fn init_font() -> anyhow::Result<()> {
    let bytes = std::fs::read(FONT)
        .with_context(|| format!("{FONT} (apt-get install fonts-dejavu-core)"))?;
    let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, leaked)
        .map_err(|_| anyhow::anyhow!("cannot register {FONT}"))?;
    Ok(())
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plot: {e:?}")
}

/// Grouped bars: p50/p90/p99 latency of each warm-path target.
pub fn warm_latency(warm: &Warm, path: &Path) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (1100, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let max = warm.targets.iter().map(|t| t.p99).fold(0.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption("Warm path latency (median of runs), ms", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..(warm.targets.len() as f64 * 4.0), 0f64..max.max(0.1))
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("ms")
        .draw()
        .map_err(err)?;
    let colors = [
        RGBColor(66, 133, 244),
        RGBColor(251, 188, 5),
        RGBColor(234, 67, 53),
    ];
    for (i, t) in warm.targets.iter().enumerate() {
        let base = i as f64 * 4.0 + 0.5;
        for (j, (name, v)) in [("p50", t.p50), ("p90", t.p90), ("p99", t.p99)]
            .iter()
            .enumerate()
        {
            let x0 = base + j as f64;
            let series = chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, 0.0), (x0 + 0.9, *v)],
                    colors[j].filled(),
                )))
                .map_err(err)?;
            if i == 0 {
                let color = colors[j];
                series.label(*name).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
            }
        }
        chart
            .draw_series(std::iter::once(Text::new(
                t.label.split(" (").next().unwrap_or(&t.label).to_owned(),
                (base, max * 0.72),
                ("sans-serif", 13),
            )))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .margin(30)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Bars: throughput of each warm-path target.
pub fn warm_throughput(warm: &Warm, path: &Path) -> anyhow::Result<()> {
    let bars: Vec<(String, f64)> = warm
        .targets
        .iter()
        .map(|t| (t.label.clone(), t.rps))
        .collect();
    bar_chart(
        "Warm path throughput (median of runs), requests/s",
        &bars,
        0,
        path,
    )
}

/// Bars: Envoy's CPU time per request of each Envoy target.
pub fn warm_cpu(warm: &Warm, path: &Path) -> anyhow::Result<()> {
    let bars: Vec<(String, f64)> = warm
        .targets
        .iter()
        .filter_map(|t| Some((t.label.clone(), t.envoy_cpu_us_per_request?)))
        .collect();
    bar_chart(
        "Envoy CPU time per warm request (median of runs), µs",
        &bars,
        1,
        path,
    )
}

fn bar_chart(
    title: &str,
    bars: &[(String, f64)],
    digits: usize,
    path: &Path,
) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (1100, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let max = bars.iter().map(|(_, v)| *v).fold(0.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..(bars.len().max(1) as f64), 0f64..max.max(1.0))
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .draw()
        .map_err(err)?;
    for (i, (label, v)) in bars.iter().enumerate() {
        let x = i as f64;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x + 0.15, 0.0), (x + 0.85, *v)],
                RGBColor(66, 133, 244).filled(),
            )))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{label} ({v:.digits$})"),
                (x + 0.05, v + max * 0.03),
                ("sans-serif", 13),
            )))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Each cold sample: first request through the gateway vs Triton's own load call.
pub fn cold(cold: &Cold, path: &Path) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (900, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let n = cold.gateway_ms.len().max(1);
    let max = cold
        .gateway_ms
        .iter()
        .chain(&cold.direct_load_ms)
        .fold(0.0f64, |a, b| a.max(*b))
        * 1.2;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Cold model: first request via gateway vs Triton load call, ms",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..(n as f64), 0f64..max.max(1.0))
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("sample")
        .draw()
        .map_err(err)?;
    for (i, (g, d)) in cold.gateway_ms.iter().zip(&cold.direct_load_ms).enumerate() {
        let x = i as f64;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x + 0.1, 0.0), (x + 0.45, *d)],
                RGBColor(251, 188, 5).filled(),
            )))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x + 0.5, 0.0), (x + 0.85, *g)],
                RGBColor(66, 133, 244).filled(),
            )))
            .map_err(err)?;
    }
    chart
        .draw_series(std::iter::once(Text::new(
            "yellow: Triton load call alone; blue: first request through the gateway".to_string(),
            (0.1, max * 0.95),
            ("sans-serif", 14),
        )))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// One trace's rows as `mm-sim --json` writes them.
#[derive(Debug, serde::Deserialize)]
pub struct EvictionTrace {
    pub trace: String,
    pub rows: Vec<EvictionRow>,
}

#[derive(Debug, serde::Deserialize)]
pub struct EvictionRow {
    pub name: String,
    pub hit_rate: f64,
    pub bound: bool,
}

/// Hit rate per trace: one bar per policy, and a black line at the best (lowest) upper
/// bound on any policy's hit rate.
pub fn eviction(traces: &[EvictionTrace], path: &Path) -> anyhow::Result<()> {
    let colors = [
        RGBColor(234, 67, 53),
        RGBColor(66, 133, 244),
        RGBColor(52, 168, 83),
        RGBColor(251, 188, 5),
    ];
    let root = BitMapBackend::new(path, (1200, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let n = traces.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Hit rate % per trace: policies (bars) and the best upper bound (black)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(150)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..(n as f64), 0f64..100f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("hit rate %")
        .draw()
        .map_err(err)?;
    for (i, t) in traces.iter().enumerate() {
        let x = i as f64;
        let policies: Vec<&EvictionRow> = t.rows.iter().filter(|r| !r.bound).collect();
        let width = 0.8 / policies.len().max(1) as f64;
        for (k, row) in policies.iter().enumerate() {
            let left = x + 0.1 + k as f64 * width;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(left, 0.0), (left + width * 0.9, row.hit_rate)],
                    colors[k % colors.len()].filled(),
                )))
                .map_err(err)?;
        }
        let best = t
            .rows
            .iter()
            .filter(|r| r.bound && r.name.contains("upper bound"))
            .map(|r| r.hit_rate)
            .fold(f64::INFINITY, f64::min);
        if best.is_finite() {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x + 0.05, best), (x + 0.95, best)],
                    BLACK.stroke_width(3),
                )))
                .map_err(err)?;
        }
        // On the root area, a few pixels below the axis: drawn in chart coordinates the
        // rotated text started inside the plot, which clipped its first letter.
        let (px, py) = chart.backend_coord(&(x + 0.4, 0.0));
        root.draw(&Text::new(
            t.trace.clone(),
            (px, py + 6),
            ("sans-serif", 12)
                .into_font()
                .transform(FontTransform::Rotate90),
        ))
        .map_err(err)?;
    }
    let names: Vec<String> = traces
        .first()
        .map(|t| {
            t.rows
                .iter()
                .filter(|r| !r.bound)
                .map(|r| r.name.clone())
                .collect()
        })
        .unwrap_or_default();
    let legend = names
        .iter()
        .enumerate()
        .map(|(k, name)| format!("{}: {name}", ["red", "blue", "green", "yellow"][k % 4]))
        .collect::<Vec<_>>()
        .join(", ");
    chart
        .draw_series(std::iter::once(Text::new(
            legend,
            (0.1, 96.0),
            ("sans-serif", 14),
        )))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
